"""``FakeDaytona``: the emulator's server, run on loopback in a background thread."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import Counter, deque
from datetime import datetime
from typing import Any, NamedTuple

from aiohttp import web

from .activity import ActivityPost, SshSession, skips_activity
from .api import build_api_app
from .apps import AppRoutes
from .clock import FakeClock, iso
from .faults import Fault, FaultBook
from .hooks import add_hook_routes
from .machine import Machines
from .middleware import FAKE_KEY
from .preview import add_preview_routes
from .pty_sessions import PtyManager
from .ratelimits import RateLimiter
from .records import ORGANIZATION_ID, ApiError
from .snapshot_api import add_snapshot_log_routes
from .store import SandboxStore
from .timings import Timings
from .toolbox import build_toolbox_app
from .webhooks import WebhookSender

MAX_RECORDED_REQUESTS = 50_000
LISTEN_BACKLOG = 512
START_TIMEOUT_SECONDS = 10
STOP_TIMEOUT_SECONDS = 15


class RecordedRequest(NamedTuple):
    """One request to an emulated operation (a plain tuple when unpacked)."""

    operation: str
    method: str
    path: str
    query: dict[str, Any]
    headers: dict[str, str]

    @property
    def skips_activity(self) -> bool:
        """Whether it carried ``X-Daytona-Skip-Last-Activity-Update: true``."""
        return skips_activity(self.headers)


class FakeDaytona:
    """An HTTP emulator of Daytona's API, toolbox PTYs and preview proxy.

    Example::

        fake = FakeDaytona(api_key="test-key").start()
        client = Daytona(DaytonaConfig(api_key="test-key", api_url=fake.api_url, target="us"))
        ...
        fake.stop()

    Transitions take realistic time unless ``timings`` (or ``transition_seconds``) say otherwise.
    """

    def __init__(
        self,
        api_key: str = "test-key",
        latency: float = 0.0,
        transition_seconds: float | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        timings: Timings | None = None,
    ) -> None:
        self.api_key = api_key
        self.host = host
        self.port = port
        self.latency = float(latency)
        self.clock = FakeClock()
        self.faults = FaultBook()
        self.store = SandboxStore(self.clock)
        self.store.timings = timings or Timings.realistic()
        if transition_seconds is not None:
            self.transition_seconds = transition_seconds
        self.rate_limits = RateLimiter(self.clock.time)
        self.create_answer_after_hold = "current"  # or "as_created" (see api.create_sandbox)
        self.store.on_leave_started = self._on_leave_started
        # Svix-signed webhooks to the endpoints subscribed (see .webhooks).
        self.webhooks = WebhookSender()
        self.store.on_event = self.webhooks.emit
        self.ptys = PtyManager(now=self.clock.time)
        # What commands find inside sandboxes: their memory and disk figures (see .machine).
        self.machines = Machines()
        self.activity = self.store.activity
        # Browsers see Daytona's warning page before a preview (organisations can turn it off).
        self.preview_warning = True
        # Real HTTP servers standing in for sandboxes' apps (see .apps.AppRoutes.serve).
        self.apps = AppRoutes()
        self._record_lock = threading.Lock()
        self._calls: Counter[str] = Counter()
        self._requests: deque[RecordedRequest] = deque(maxlen=MAX_RECORDED_REQUESTS)
        self._socket_io_hits = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._closing: asyncio.Event | None = None

    # ----- addresses and settings -------------------------------------------------------

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:PORT``."""
        return f"http://{self.host}:{self.port}"

    @property
    def api_url(self) -> str:
        """The value for ``DaytonaConfig(api_url=...)``."""
        return f"{self.url}/api"

    @property
    def toolbox_url(self) -> str:
        """What sandboxes report as ``toolboxProxyUrl``."""
        return f"{self.url}/toolbox"

    @property
    def timings(self) -> Timings:
        """How long each transition's phases last (see :mod:`.timings`)."""
        return self.store.timings

    @timings.setter
    def timings(self, timings: Timings) -> None:
        self.store.timings = timings

    @property
    def transition_seconds(self) -> float | None:
        """Every transition that long (``Timings.uniform``; 0: instant); None when the
        timings were set otherwise."""
        timings = self.store.timings
        if timings == Timings.instant():
            return 0.0
        return timings.create if timings == Timings.uniform(timings.create) else None

    @transition_seconds.setter
    def transition_seconds(self, seconds: float) -> None:
        self.store.timings = Timings.uniform(float(seconds))

    def fail_builds_containing(self, text: str, reason: str | None = None) -> None:
        """New image builds of a Dockerfile containing ``text`` end in ``build_failed``."""
        self.store.builds.fail_builds_containing(text, reason)

    def set_rate_limit(self, group: str, limit: int | None) -> None:
        """Requests per minute of one group of :mod:`.ratelimits` (None: unlimited)."""
        self.rate_limits.set_limit(group, limit)

    @property
    def ssh_host(self) -> str:
        """Host named in ``sshCommand``."""
        return self.store.ssh_host

    @ssh_host.setter
    def ssh_host(self, host: str) -> None:
        self.store.ssh_host = host

    @property
    def ssh_port(self) -> int:
        """Port named in ``sshCommand`` (22 is left out, as the real service does)."""
        return self.store.ssh_port

    @ssh_port.setter
    def ssh_port(self, port: int) -> None:
        self.store.ssh_port = int(port)

    @property
    def activity_switches(self) -> dict[str, bool]:
        """Which activity posts happen, by source (a live dict; ``False`` turns one off for
        requests and connections opened afterwards): ``toolbox`` (toolbox HTTP calls),
        ``pty`` (PTY websocket upgrades and their 50 s re-posts), ``preview`` (preview page
        loads), ``ssh`` (emulated SSH sessions, every 45 s), ``explicit``
        (``POST /sandbox/{id}/last-activity``). State changes always count."""
        return self.activity.switches

    @property
    def pty_counts_as_activity(self) -> bool:
        """``activity_switches["pty"]``."""
        return self.activity.switches["pty"]

    @pty_counts_as_activity.setter
    def pty_counts_as_activity(self, value: bool) -> None:
        self.activity.switches["pty"] = bool(value)

    @property
    def preview_counts_as_activity(self) -> bool:
        """``activity_switches["preview"]``."""
        return self.activity.switches["preview"]

    @preview_counts_as_activity.setter
    def preview_counts_as_activity(self, value: bool) -> None:
        self.activity.switches["preview"] = bool(value)

    @property
    def proxy_activity_cache_seconds(self) -> float:
        """How long the proxy skips posting again for a sandbox it posted for (45 s; 0 makes
        every proxied request post)."""
        return self.activity.proxy_cache_seconds

    @proxy_activity_cache_seconds.setter
    def proxy_activity_cache_seconds(self, seconds: float) -> None:
        self.activity.proxy_cache_seconds = max(0.0, float(seconds))

    # ----- running ----------------------------------------------------------------------

    def start(self) -> FakeDaytona:
        """Serve in a daemon thread with its own event loop; returns once listening."""
        if self._thread is not None:
            raise RuntimeError("FakeDaytona is already running")
        ready = threading.Event()
        failure: list[BaseException] = []
        self._thread = threading.Thread(target=self._run_loop, args=(ready, failure), name="fake-daytona", daemon=True)
        self._thread.start()
        if not ready.wait(START_TIMEOUT_SECONDS):
            raise RuntimeError("FakeDaytona did not start in time")
        if failure:
            self._thread.join()
            self._thread = None
            raise failure[0]
        return self

    def stop(self) -> None:
        """Kill every shell, close every connection and end the thread."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        future = asyncio.run_coroutine_threadsafe(self._shutdown(), loop)
        try:
            future.result(STOP_TIMEOUT_SECONDS)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(STOP_TIMEOUT_SECONDS)
            self.webhooks.close()
            self.machines.reset()
            self._thread = None
            self._loop = None

    def __enter__(self) -> FakeDaytona:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ----- faults and observation -------------------------------------------------------

    def fault(
        self,
        operation: str,
        kind: str,
        *,
        times: int = 1,
        status: int | None = None,
        headers: dict[str, str] | None = None,
        message: str | None = None,
        seconds: float | None = None,
        **options: Any,
    ) -> Fault:
        """Queue a fault for the next ``times`` requests of ``operation`` (FIFO per operation).

        Kinds: ``status`` (error ``status``, default 500, with ``headers`` and ``message``);
        ``reset`` (connection dropped, no effect); ``slow`` (wait ``seconds``, default 5,
        then answer normally); ``commit_then_hang`` (effect happens, answer delayed
        ``seconds``, default 30); ``commit_then_reset`` (effect happens, connection dropped);
        ``bad_shape`` (effect happens, success answer malformed: ``status=201``,
        ``drop="kvm"``, ``set={"cpu": 1.5}`` or ``body=""``; default 201 for create, an
        empty 200 otherwise). For ``create``, ``start`` and ``recover``: ``ends_in_error``
        (accepted, but the transition ends in ``error``, or ``build_failed`` for an image
        build, which then runs even if the Dockerfile was built before; errorReason =
        ``message``; a held create or start then answers 400 "Sandbox failed to start:
        <reason>"). For ``snapshot_create``: ``ends_in_error`` (the runner refuses the work:
        a build ends in ``build_failed``, a pull in ``error``, errorReason = ``message``).
        The proxy's build-log stream (``snapshot_logs``) takes ``status``, ``reset``, ``slow``.
        Rate limits are not faults: see ``set_rate_limit``; a ``status`` or ``bad_shape``
        answer carries no rate-limit header but the fault's.
        For ``pty_create``/``pty_connect`` after the upgrade:
        ``no_connected``, ``error_frame``, ``close_no_reason``, ``slow_consumer``,
        ``exit`` (``exit_code=N``).
        """
        return self.faults.add(
            operation,
            kind,
            times=times,
            status=status,
            headers=headers,
            message=message,
            seconds=seconds,
            **options,
        )

    def clear_faults(self) -> None:
        """Drop every queued fault."""
        self.faults.clear()

    @property
    def calls(self) -> Counter[str]:
        """Requests per operation so far (a snapshot)."""
        with self._record_lock:
            return Counter(self._calls)

    @property
    def requests(self) -> list[RecordedRequest]:
        """Recorded ``(operation, method, path, query, headers)``, newest last (a snapshot)."""
        with self._record_lock:
            return list(self._requests)

    def stats(self) -> dict[str, Any]:
        """Counters for ``GET /__stats``."""
        by_sandbox = self.store.ssh_token_counts()
        return {
            "calls": dict(self.calls),
            "sandboxes": self.store.count(),
            "live_ssh_tokens": sum(by_sandbox.values()),
            "ssh_tokens_by_sandbox": by_sandbox,
            "live_signed_previews": self.store.live_signed_previews(),
            "pty_sessions": self.ptys.count(),
            "activity_connections": self.activity.open_connections(),
            "socket_io_hits": self._socket_io_hits,
            "pending_faults": self.faults.pending(),
            "now": iso(self.clock.time()),
        }

    # ----- sandboxes, out of band -------------------------------------------------------

    def sandboxes(self) -> list[dict[str, Any]]:
        """Every live sandbox as the API would return it (transitions advanced)."""
        return self.store.all()

    def sandbox(self, id_or_name: str) -> dict[str, Any] | None:
        """One sandbox by id or exact name, or None."""
        return self.store.peek(id_or_name)

    def add_sandbox(
        self,
        name: str | None = None,
        labels: dict[str, str] | None = None,
        state: str = "started",
        **fields: Any,
    ) -> dict[str, Any]:
        """Pre-seed a sandbox (an orphan, a same-name sandbox of another owner...).

        ``fields`` are camelCase overrides of the stored JSON (``lastActivityAt`` as ISO
        text, ``id``, ``autoStopInterval``...). A transitional ``state`` never ends. Raises
        ValueError if the name is taken.
        """
        try:
            return self.store.add(name=name, labels=labels, state=state, **fields)
        except ApiError as error:
            raise ValueError(error.message) from None

    def seed(
        self,
        count: int,
        labels: dict[str, str] | None = None,
        state: str = "started",
        name_prefix: str = "seed-",
    ) -> list[str]:
        """Add ``count`` sandboxes named ``<name_prefix><i>``; returns their ids."""
        try:
            return self.store.add_many(count, labels, state, name_prefix)
        except ApiError as error:
            raise ValueError(error.message) from None

    def set_state(
        self,
        id_or_name: str,
        state: str,
        error_reason: str | None = None,
        recoverable: bool = False,
        **fields: Any,
    ) -> dict[str, Any] | None:
        """Change a sandbox behind the client's back (auto-stop, archive, error...).

        A transitional state set here never ends unless ``then="<state>"`` (and ``after``
        seconds) is given. ``"destroyed"`` removes the sandbox. Raises KeyError if unknown.
        """
        try:
            return self.store.set_state(id_or_name, state, error_reason=error_reason, recoverable=recoverable, **fields)
        except ApiError:
            raise KeyError(id_or_name) from None

    def delete_out_of_band(self, id_or_name: str) -> None:
        """Destroy a sandbox at once, as if deleted elsewhere. Raises KeyError if unknown."""
        try:
            self.store.destroy_now(id_or_name)
        except ApiError:
            raise KeyError(id_or_name) from None

    # ----- snapshots, out of band -------------------------------------------------------

    def snapshots(self) -> list[dict[str, Any]]:
        """Every snapshot as the API shows it (steps due taken), the general default included."""
        return self.store.snapshots.all()

    def snapshots_by_name(self) -> dict[str, dict[str, Any]]:
        """The organisation's own snapshots (no general or other organisation's ones) by name."""
        return {snap["name"]: snap for snap in self.snapshots() if snap["organizationId"] == ORGANIZATION_ID}

    def snapshot(self, id_or_name: str) -> dict[str, Any] | None:
        """One snapshot by id or name (the organisation's, else a general one), or None."""
        return self.store.snapshots.peek(id_or_name)

    def add_snapshot(self, name: str, state: str = "active", **fields: Any) -> dict[str, Any]:
        """Pre-seed a snapshot (pulled from ``imageName``, default ``ubuntu:22.04``), e.g.
        one a sandbox create may name. ``fields`` are camelCase overrides (``cpu``, ``mem``,
        ``disk``, ``errorReason``, ``organizationId`` for another organisation's). A
        transitional ``state`` never ends. Raises ValueError if the name is taken."""
        try:
            return self.store.snapshots.add(name, state, **fields)
        except ApiError as error:
            raise ValueError(error.message) from None

    def ssh_tokens(self, sandbox_id: str) -> list[str]:
        """Live (unrevoked, unexpired) SSH tokens of a sandbox."""
        return self.store.live_ssh_tokens(sandbox_id)

    def list_lag(self, seconds: float) -> None:
        """Make list answers come from a snapshot up to ``seconds`` old (0 turns it off)."""
        self.store.set_list_lag(seconds)

    def advance_clock(self, seconds: float) -> None:
        """Move the emulator's clock forward (activity, token expiry, transitions)."""
        self.clock.advance(seconds)

    def now(self) -> datetime:
        """The emulator's current time (aware UTC)."""
        return self.clock.now()

    def run_autostop(self) -> list[str]:
        """One auto-stop pass; returns the ids of the sandboxes it stopped or deleted."""
        return self.store.run_autostop()

    # ----- activity -----------------------------------------------------------------------

    def activity_posts(self, sandbox_id: str) -> list[ActivityPost]:
        """Every activity post for a sandbox so far, periodic re-posts up to now included,
        each ``accepted``, ``throttled`` or ``cached`` (see :mod:`.activity`)."""
        return self.activity.posts(sandbox_id)

    def open_ssh_session(self, sandbox_id: str) -> SshSession:
        """Emulate a session on Daytona's SSH gateway: it posts activity now and every 45 s
        until ``close()`` (or the sandbox stops), even if nobody types. Raises KeyError for
        an unknown sandbox, ValueError for one that is not started (the gateway refuses)."""
        state = self.store.state_of(sandbox_id)
        if state is None:
            raise KeyError(sandbox_id)
        if state != "started":
            raise ValueError(f"sandbox {sandbox_id} is not started (state: {state})")
        return SshSession(self.activity, sandbox_id, self.activity.open_connection(sandbox_id, "ssh"))

    def close_ssh_session(self, session_id: int) -> None:
        """End an emulated SSH session by its id (``SshSession.id``)."""
        self.activity.close(session_id)

    def reset(self) -> None:
        """Forget all sandboxes, built images, faults, counters (rate limits' too), tokens and
        clock offset; kill all shells. Settings (timings, limits, failing builds) stay."""
        self.webhooks.reset()
        self.store.reset()
        self.ptys.kill_all()
        self.machines.reset()
        self.faults.clear()
        self.clock.reset()
        self.rate_limits.clear()
        with self._record_lock:
            self._calls.clear()
            self._requests.clear()
            self._socket_io_hits = 0

    # ----- used by the request handlers -------------------------------------------------

    def _record(self, operation: str, request: web.Request) -> None:
        query = {
            key: values[0] if len(values) == 1 else values
            for key in dict.fromkeys(request.query.keys())
            for values in [request.query.getall(key)]
        }
        entry = RecordedRequest(operation, request.method, request.path, query, dict(request.headers))
        with self._record_lock:
            self._calls[operation] += 1
            self._requests.append(entry)

    def _count_socket_io(self) -> None:
        with self._record_lock:
            self._socket_io_hits += 1

    async def _sleep(self, seconds: float) -> None:
        """Sleep, cut short when the server shuts down."""
        if self._closing is None:
            await asyncio.sleep(seconds)
            return
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._closing.wait(), timeout=seconds)

    def _on_leave_started(self, sandbox_id: str) -> None:
        # The container stops: its shells die and every proxied or SSH connection ends.
        self.ptys.kill_sandbox(sandbox_id)
        self.activity.end_sandbox(sandbox_id)

    # ----- event loop -------------------------------------------------------------------

    def _run_loop(self, ready: threading.Event, failure: list[BaseException]) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._listen())
        except BaseException as error:
            failure.append(error)
            ready.set()
            loop.run_until_complete(loop.shutdown_default_executor())
            loop.close()
            return
        self._loop = loop
        ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
            loop.close()

    async def _listen(self) -> None:
        self._closing = asyncio.Event()
        self._runner = web.AppRunner(self._build_app(), access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(
            self._runner,
            self.host,
            self.port,
            backlog=LISTEN_BACKLOG,
            reuse_address=True,
        )
        await site.start()
        self.port = self._runner.addresses[0][1]
        self.store.base_url = self.url

    def _build_app(self) -> web.Application:
        app = web.Application()
        app[FAKE_KEY] = self
        app.add_subapp("/api", build_api_app(self))
        app.add_subapp("/toolbox", build_toolbox_app(self))
        add_preview_routes(app)
        add_snapshot_log_routes(app)
        add_hook_routes(app)
        return app

    async def _shutdown(self) -> None:
        assert self._closing is not None
        self._closing.set()
        await self.ptys.shutdown()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        current = asyncio.current_task()
        leftovers = [task for task in asyncio.all_tasks() if task is not current]
        for task in leftovers:
            task.cancel()
        await asyncio.gather(*leftovers, return_exceptions=True)
