"""How Daytona's ``lastActivityAt`` moves: who posts activity, and what the API keeps of it.

Read from the open-source service (tag v0.190.0); the hosted one may have moved on:

- The **proxy** (toolbox calls, PTY websockets, preview pages) posts activity when a request
  arrives, unless it carries ``X-Daytona-Skip-Last-Activity-Update: true``, and again every
  50 s while the request stays open (a websocket). It skips a post when it made one for the
  same sandbox less than 45 s before (its ``sandboxLastActivityUpdateCache``), so two
  requests a few seconds apart post once.
- The **SSH gateway** posts when a session channel opens and every 45 s while it stays open,
  without that cache; a session whose client vanished without closing TCP keeps posting.
- ``POST /sandbox/{id}/last-activity`` is the endpoint all of them call. The API takes a
  post only if it took none for that sandbox in the last 5 s (a Redis lock), buffers it,
  and flushes the buffer to the database every 10 s (wall-clock multiples of 10 s). The
  sandbox's ``lastActivityAt`` (and the auto-stop job) read the database, so they lag.
- A **state change** writes the database directly (see ``StoreCore._move``).

Nothing here runs on a timer: an open connection remembers when it opened, and its re-posts
(at open, open + period, open + 2 periods, ...) are worked out when the sandbox is next
looked at, so moving the fake clock forward by hours behaves as if they had happened.
"""

from __future__ import annotations

import heapq
import itertools
import math
import threading
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

PROXY_REPOST_SECONDS = 50.0
SSH_REPOST_SECONDS = 45.0
# The proxy caches "posted" for its poll interval minus 5 s.
PROXY_CACHE_SECONDS = 45.0
API_THROTTLE_SECONDS = 5.0
FLUSH_SECONDS = 10.0
SKIP_HEADER = "X-Daytona-Skip-Last-Activity-Update"
POST_LOG_LIMIT = 2000

# Where posts come from; each can be switched off (``FakeDaytona.activity_switches``).
SOURCES = ("toolbox", "pty", "preview", "ssh", "explicit")


@dataclass(frozen=True)
class ActivityPost:
    """One post of activity for a sandbox, and what became of it.

    ``outcome`` is ``accepted`` (buffered, flushed at the next multiple of 10 s),
    ``throttled`` (the API took another one less than 5 s before) or ``cached`` (the proxy
    posted for this sandbox less than 45 s before, so it did not call the API at all).
    """

    at: float
    source: str
    outcome: str


@dataclass
class _Connection:
    id: int
    sandbox_id: str
    source: str
    opened: float
    period: float
    via_proxy: bool
    next_tick: float
    closed: float | None = None


@dataclass
class _Ledger:
    """One sandbox's side of the activity pipeline."""

    proxy_cached_until: float = -math.inf
    throttled_until: float = -math.inf
    unflushed: deque[float] = field(default_factory=deque)
    connections: dict[int, _Connection] = field(default_factory=dict)
    log: deque[ActivityPost] = field(default_factory=lambda: deque(maxlen=POST_LOG_LIMIT))


class ActivityTracker:
    """Activity posts per sandbox, the API's throttle and buffer, and open connections.

    Thread-safe (its own lock; callers may hold the store's lock, never the reverse).
    Times are the fake clock's epoch seconds.
    """

    def __init__(self, now: Callable[[], float]) -> None:
        self._now = now
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self.switches: dict[str, bool] = dict.fromkeys(SOURCES, True)
        self.proxy_cache_seconds = PROXY_CACHE_SECONDS
        self._ledgers: dict[str, _Ledger] = {}
        self._connection_sandbox: dict[int, str] = {}

    def reset(self) -> None:
        """Forget every post and connection (the switches stay as they are)."""
        with self._lock:
            self._ledgers.clear()
            self._connection_sandbox.clear()

    # ----- what the proxy, the gateway and the API receive ---------------------------------

    def proxied_request(self, sandbox_id: str, source: str) -> None:
        """A request through the proxy that is over at once (one post, no re-posts)."""
        self.close(self.open_connection(sandbox_id, source))

    def open_connection(self, sandbox_id: str, source: str) -> int | None:
        """A request through the proxy, or an SSH session (``source="ssh"``), opening now.

        Returns a handle for :meth:`close`, or None when ``source`` is switched off.
        """
        if not self.switches.get(source, True):
            return None
        via_proxy = source != "ssh"
        period = PROXY_REPOST_SECONDS if via_proxy else SSH_REPOST_SECONDS
        with self._lock:
            now = self._now()
            ledger = self._settle(sandbox_id, now)
            connection = _Connection(
                id=next(self._ids),
                sandbox_id=sandbox_id,
                source=source,
                opened=now,
                period=period,
                via_proxy=via_proxy,
                next_tick=now + period,
            )
            ledger.connections[connection.id] = connection
            self._connection_sandbox[connection.id] = sandbox_id
            self._post(ledger, now, source, via_proxy)
            return connection.id

    def close(self, connection_id: int | None) -> None:
        """The request or session ended now (a second call, or None, does nothing)."""
        if connection_id is None:
            return
        with self._lock:
            sandbox_id = self._connection_sandbox.pop(connection_id, None)
            ledger = self._ledgers.get(sandbox_id) if sandbox_id else None
            if ledger is None or connection_id not in ledger.connections:
                return
            now = self._now()
            self._settle(sandbox_id, now)
            ledger.connections.pop(connection_id)

    def end_sandbox(self, sandbox_id: str) -> None:
        """The sandbox stopped: every connection to it ends now."""
        with self._lock:
            ledger = self._ledgers.get(sandbox_id)
            if ledger is None:
                return
            self._settle(sandbox_id, self._now())
            for connection_id in ledger.connections:
                self._connection_sandbox.pop(connection_id, None)
            ledger.connections.clear()

    def explicit_post(self, sandbox_id: str) -> None:
        """``POST /sandbox/{id}/last-activity`` from a client (only the API's throttle)."""
        if not self.switches.get("explicit", True):
            return
        with self._lock:
            now = self._now()
            self._post(self._settle(sandbox_id, now), now, "explicit", via_proxy=False)

    def discard_unflushed(self, sandbox_id: str) -> None:
        """Drop posts taken but not flushed yet (a test set the stored value by hand)."""
        with self._lock:
            ledger = self._ledgers.get(sandbox_id)
            if ledger is not None:
                self._settle(sandbox_id, self._now())
                ledger.unflushed.clear()

    # ----- what the database holds --------------------------------------------------------

    def settle(self, sandbox_id: str) -> float | None:
        """Bring the sandbox's posts up to now; the newest one flushed since the last call.

        The caller keeps the stored ``lastActivityAt`` and raises it to this value (a flush
        only ever moves it forward).
        """
        with self._lock:
            now = self._now()
            ledger = self._ledgers.get(sandbox_id)
            if ledger is None:
                return None
            self._settle(sandbox_id, now)
            flushed_by = math.floor(now / FLUSH_SECONDS) * FLUSH_SECONDS
            newest = None
            while ledger.unflushed and ledger.unflushed[0] <= flushed_by:
                newest = ledger.unflushed.popleft()
            return newest

    def posts(self, sandbox_id: str) -> list[ActivityPost]:
        """Every post for the sandbox so far (re-posts included), oldest first."""
        with self._lock:
            ledger = self._ledgers.get(sandbox_id)
            if ledger is None:
                return []
            self._settle(sandbox_id, self._now())
            return list(ledger.log)

    def open_connections(self, sandbox_id: str | None = None) -> dict[str, int]:
        """Open connections per source (of one sandbox, or of all)."""
        with self._lock:
            counts: dict[str, int] = {}
            for sid, ledger in self._ledgers.items():
                if sandbox_id is not None and sid != sandbox_id:
                    continue
                for connection in ledger.connections.values():
                    counts[connection.source] = counts.get(connection.source, 0) + 1
            return counts

    # ----- internals (under the lock) -----------------------------------------------------

    def _settle(self, sandbox_id: str, now: float) -> _Ledger:
        """Play the re-posts due up to ``now``, in time order, across the connections."""
        ledger = self._ledgers.setdefault(sandbox_id, _Ledger())
        due: list[tuple[float, int, _Connection]] = []
        for connection in ledger.connections.values():
            tick = connection.next_tick
            while tick <= now:
                due.append((tick, connection.id, connection))
                tick += connection.period
            connection.next_tick = tick
        heapq.heapify(due)
        while due:
            at, _, connection = heapq.heappop(due)
            self._post(ledger, at, connection.source, connection.via_proxy)
        return ledger

    def _post(self, ledger: _Ledger, at: float, source: str, via_proxy: bool) -> None:
        if via_proxy:
            if at < ledger.proxy_cached_until:
                ledger.log.append(ActivityPost(at, source, "cached"))
                return
            # The API answers 201 whether or not it throttles, so the proxy caches either way.
            ledger.proxy_cached_until = at + self.proxy_cache_seconds
        if at < ledger.throttled_until:
            ledger.log.append(ActivityPost(at, source, "throttled"))
            return
        ledger.throttled_until = at + API_THROTTLE_SECONDS
        ledger.unflushed.append(at)
        ledger.log.append(ActivityPost(at, source, "accepted"))


class SshSession:
    """An emulated SSH gateway session (see ``FakeDaytona.open_ssh_session``)."""

    def __init__(self, tracker: ActivityTracker, sandbox_id: str, connection_id: int | None) -> None:
        self._tracker = tracker
        self.sandbox_id = sandbox_id
        self.id = connection_id  # None when the ``ssh`` source is switched off

    def close(self) -> None:
        """The client disconnects now (a second call does nothing)."""
        self._tracker.close(self.id)

    def __enter__(self) -> SshSession:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def skips_activity(headers: Mapping[str, str]) -> bool:
    """Whether a request's headers opt it out of activity (the proxy compares with "true")."""
    wanted = SKIP_HEADER.lower()
    return any(key.lower() == wanted and value == "true" for key, value in headers.items())
