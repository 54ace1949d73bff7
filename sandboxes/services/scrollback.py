"""The recent output of a web terminal session, shown first when a browser reattaches, so that a
reload, a second launch or the dashboard's button never opens on a blank screen.

Where it is kept depends on who reads the PTY while nobody is attached:

- A provider whose sessions keep their own scrollback (``replays_output`` on its terminal
  session) needs nothing here. The local sandboxes' agent reads every PTY all the time and keeps
  each session's last output, attached or not, and sends it to each new attachment before
  anything else: output printed while the browser was away (a build still running) is there too.
- Daytona's daemon keeps none: it hands a PTY's output to the websockets attached at that moment
  and drops it otherwise, and a new websocket gets output from then on only. For such sessions
  the portal keeps the last ``SANDBOX_TERMINAL_SCROLLBACK_BYTES`` that the bridge relayed, in
  the shared cache under a digest of the sandbox's and the session's ids (never the id itself,
  which is a secret), so a reattach served by another process finds it. What the shell prints
  while nobody is attached is lost with the daemon, and is not replayed.

The cache is written cheaply: the bytes are gathered in memory and a background thread writes a
session whose output changed at most once every :data:`FLUSH_SECONDS`; a detach writes the last
state at once. The scrollback goes with its session: when the shell ends, and whenever the
portal forgets the session (its :class:`~sandboxes.models.TerminalSession` row is deleted:
reaped, evicted to make room, revoked, its sandbox stopped, replaced or deleted). Its cache entry
also expires by itself a while after the session would have been reaped.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time

from django.conf import settings
from django.core.cache import cache
from django.db.models.signals import post_delete
from django.dispatch import receiver

from sandboxes.models import TerminalSession

from .terminals import Terminal, lease_length

log = logging.getLogger(__name__)

FLUSH_SECONDS = 1.0
EXPIRY_MARGIN_SECONDS = 600


def scrollback_key(remote_id: str, session_id: str) -> str:
    digest = hashlib.sha256(f"{remote_id}\0{session_id}".encode()).hexdigest()
    return f"terminal-scrollback:{digest}"


def replay_start(data: bytes | bytearray, trimmed: bool) -> int:
    """Where a replay of ``data`` begins: at 0 unless older output was cut off, else after the
    first newline in its first half, or at least on a UTF-8 character boundary."""
    if not trimmed:
        return 0
    newline = data.find(b"\n", 0, len(data) // 2)
    if newline >= 0:
        return newline + 1
    start = 0
    while start < len(data) and 0x80 <= data[start] < 0xC0:
        start += 1
    return start


def stored_scrollback(remote_id: str, session_id: str) -> bytes:
    """The scrollback the portal keeps for the session (``b""`` when none)."""
    return cache.get(scrollback_key(remote_id, session_id)) or b""


def scrollback_forget(remote_id: str, session_id: str) -> None:
    cache.delete(scrollback_key(remote_id, session_id))


@receiver(post_delete, sender=TerminalSession, dispatch_uid="terminal-scrollback-forget")
def _forget_with_the_session(sender, instance: TerminalSession, **kwargs) -> None:
    try:
        scrollback_forget(instance.remote_id, instance.session_id)
    except Exception:  # the entry expires by itself
        log.warning("forgetting the scrollback of an ended terminal session failed", exc_info=True)


def with_scrollback(terminal: Terminal, *, remote_id: str) -> Terminal | KeptScrollback:
    """``terminal`` as the web terminal's bridge should read it: its first read is the recent
    output of the session, then its live output. Unchanged when the provider replays itself."""
    if terminal.replays_output:
        return terminal
    return KeptScrollback(terminal, remote_id=remote_id)


class KeptScrollback:
    """A web terminal attachment whose recent output the portal keeps (see the module
    docstring): :meth:`read` returns the stored scrollback first (when there is any), then what
    the terminal reads, and keeps the last ``SANDBOX_TERMINAL_SCROLLBACK_BYTES`` of both. The
    rest is the terminal's. One thread reads; any may detach."""

    def __init__(self, terminal: Terminal, *, remote_id: str):
        self._terminal = terminal
        self._remote_id = remote_id
        self._limit = settings.SANDBOX_TERMINAL_SCROLLBACK_BYTES
        self._lock = threading.Lock()
        self._data = bytearray()
        self._trimmed = False
        self._dirty = False
        self._ended = False
        self._replayed = False

    @property
    def session_id(self) -> str:
        return self._terminal.session_id

    @property
    def exit_code(self) -> int | None:
        return self._terminal.exit_code

    def read(self) -> bytes:
        if not self._replayed:
            self._replayed = True
            replay = self._load()
            if replay:
                return replay
        data = self._terminal.read()
        if data:
            self._keep(data)
        elif self._terminal.exit_code is not None:
            self._end()
        else:
            self.save()
        return data

    def write(self, data: bytes) -> None:
        self._terminal.write(data)

    def resize(self, cols: int, rows: int) -> None:
        self._terminal.resize(cols, rows)

    def detach(self) -> None:
        try:
            self._terminal.detach()
        finally:
            self.save()

    def kill(self) -> None:
        self._terminal.kill()

    def save(self) -> None:
        """Write the kept bytes to the cache if they changed (not once the shell has ended)."""
        with self._lock:
            if not self._dirty or self._ended:
                return
            self._dirty = False
            data = bytes(self._data[replay_start(self._data, self._trimmed) :])
            try:
                cache.set(scrollback_key(self._remote_id, self.session_id), data, timeout=_expiry_seconds())
            except Exception:  # the next save, or the detach, tries again
                self._dirty = True
                log.warning("saving a terminal's scrollback failed", exc_info=True)

    def _load(self) -> bytes:
        try:
            replay = stored_scrollback(self._remote_id, self.session_id)
        except Exception:  # a reattach without its scrollback is still a terminal
            log.warning("loading a terminal's scrollback failed", exc_info=True)
            return b""
        with self._lock:
            self._data[:] = replay[-self._limit :] if self._limit else b""
        return bytes(self._data)

    def _keep(self, data: bytes) -> None:
        if not self._limit:
            return
        with self._lock:
            self._data += data
            excess = len(self._data) - self._limit
            if excess > 0:
                del self._data[:excess]
                self._trimmed = True
            first_change = not self._dirty
            self._dirty = True
        if first_change:
            _flusher.add(self)

    def _end(self) -> None:
        with self._lock:
            self._ended = True
            self._data.clear()
        try:
            scrollback_forget(self._remote_id, self.session_id)
        except Exception:
            log.warning("forgetting the scrollback of an ended terminal failed", exc_info=True)


def _expiry_seconds() -> int:
    """A while after a session nobody attaches to any more would have been reaped."""
    detached = settings.SANDBOX_TERMINAL_DETACHED_MINUTES * 60
    return int(detached + lease_length().total_seconds() + EXPIRY_MARGIN_SECONDS)


class _Flusher:
    """One thread per process that writes the scrollbacks that changed, every FLUSH_SECONDS."""

    def __init__(self):
        self._lock = threading.Lock()
        self._pending: set[KeptScrollback] = set()
        self._thread: threading.Thread | None = None

    def add(self, scrollback: KeptScrollback) -> None:
        with self._lock:
            self._pending.add(scrollback)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="terminal-scrollback", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            time.sleep(FLUSH_SECONDS)
            with self._lock:
                pending, self._pending = self._pending, set()
                if not pending:
                    self._thread = None
                    return
            for scrollback in pending:
                scrollback.save()


_flusher = _Flusher()
