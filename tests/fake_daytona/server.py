"""``FakeDaytona``: the emulator's server, run on loopback in a background thread."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import Counter, deque
from datetime import datetime
from typing import Any, NamedTuple

from aiohttp import web

from .api import build_api_app
from .clock import FakeClock, iso
from .faults import Fault, FaultBook
from .hooks import add_hook_routes
from .middleware import FAKE_KEY
from .preview import add_preview_routes
from .pty_sessions import PtyManager
from .records import ApiError
from .store import SandboxStore
from .toolbox import build_toolbox_app

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


class FakeDaytona:
    """An HTTP emulator of Daytona's API, toolbox PTYs and preview proxy.

    Example::

        fake = FakeDaytona(api_key="test-key").start()
        client = Daytona(DaytonaConfig(api_key="test-key", api_url=fake.api_url, target="us"))
        ...
        fake.stop()
    """

    def __init__(
        self,
        api_key: str = "test-key",
        latency: float = 0.0,
        transition_seconds: float = 0.0,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.api_key = api_key
        self.host = host
        self.port = port
        self.latency = float(latency)
        self.pty_counts_as_activity = True
        self.clock = FakeClock()
        self.faults = FaultBook()
        self.store = SandboxStore(self.clock)
        self.store.transition_seconds = float(transition_seconds)
        self.store.on_leave_started = self._on_leave_started
        self.ptys = PtyManager(now=self.clock.time, on_activity=self._on_pty_activity)
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
    def transition_seconds(self) -> float:
        """How long creating/starting/stopping/restoring/destroying last (0: instant)."""
        return self.store.transition_seconds

    @transition_seconds.setter
    def transition_seconds(self, seconds: float) -> None:
        self.store.transition_seconds = float(seconds)

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
    def preview_counts_as_activity(self) -> bool:
        """Whether opening a preview page moves ``lastActivityAt``."""
        return self.store.preview_counts_as_activity

    @preview_counts_as_activity.setter
    def preview_counts_as_activity(self, value: bool) -> None:
        self.store.preview_counts_as_activity = bool(value)

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
        empty 200 otherwise). For ``pty_create``/``pty_connect`` after the upgrade:
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

    def reset(self) -> None:
        """Forget all sandboxes, faults, counters, tokens and clock offset; kill all shells."""
        self.store.reset()
        self.ptys.kill_all()
        self.faults.clear()
        self.clock.reset()
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
        self.ptys.kill_sandbox(sandbox_id)

    def _on_pty_activity(self, sandbox_id: str) -> None:
        if self.pty_counts_as_activity:
            self.store.touch(sandbox_id)

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
