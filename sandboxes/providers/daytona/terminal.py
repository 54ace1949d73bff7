"""The PTY bridge: a Daytona PTY session as a :class:`TerminalSession`, and the provider's
toolbox methods (:class:`Toolbox`: open and end terminals, measure memory and disk).

PTYs go through the sandbox's toolbox proxy, so they need the SDK's ``Sandbox`` object (the
provider builds one per attachment) and its ``PtyHandle``, whose blocking iterator is turned
here into the contract's read/write/resize/detach/kill.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from daytona import DaytonaConflictError, DaytonaError, PtySize
from daytona.handle.pty_handle import PtyHandle

from ..base import Capability, ErrorKind, ProviderError, RemoteState, ResourceUsage, TerminalSession
from .convert import remote_sandbox, state_word
from .errors import SDK_FAILURES, gone_is_done, log_failure, provider_error
from .resources import COMMAND, MEASURE_SECONDS, parse_usage

PTY_POLL_SECONDS = 1.0  # how soon a detached terminal's pump thread notices and ends
PTY_QUEUED_CHUNKS = 256  # output frames held for a slow reader before the pump waits
PTY_MAX_READ = 1 << 20  # bytes joined into one read when output arrives faster than it is read


class Toolbox:
    """The toolbox part of :class:`~.provider.DaytonaProvider` (which provides ``_call``,
    ``_sdk``, ``_read``, ``_lacks`` and ``_api_key``)."""

    def open_terminal(
        self, remote_id: str, *, session_id: str, cols: int, rows: int, command: list[str] | None = None
    ) -> TerminalSession:
        """Through the toolbox API: create the PTY session, or attach when it exists (the
        create is refused with 409 then, before any upgrade), and size it to the caller's
        window, which may differ from the one it was created for.

        Always the login shell: without ``Capability.TERMINAL_COMMAND``, a ``command`` is
        refused (``kind=REJECTED``) before any call."""
        if command is not None:
            raise self._lacks(Capability.TERMINAL_COMMAND)
        sandbox = self._started_sdk_sandbox(remote_id)
        try:
            return attach(
                sandbox.process, session_id, cols=cols, rows=rows, call=self._call, error=self._terminal_error
            )
        except ProviderError as error:
            raise self._toolbox_refusal(remote_id, error) from error

    def end_terminal(self, remote_id: str, session_id: str) -> None:
        """``DELETE /process/pty/{id}`` through the toolbox (which never counts as activity:
        see ``_connect``); a session, or a sandbox, that is gone or not running is already
        ended."""
        try:
            sandbox = self._started_sdk_sandbox(remote_id)
            self._call("end terminal", lambda: sandbox.process.kill_pty_session(session_id), answers=False)
        except ProviderError as error:
            if error.kind in (ErrorKind.NOT_FOUND, ErrorKind.INVALID_STATE):
                return
            refusal = self._toolbox_refusal(remote_id, error)
            if refusal.kind not in (ErrorKind.NOT_FOUND, ErrorKind.INVALID_STATE):
                raise refusal from error

    def resource_usage(self, remote_id: str) -> ResourceUsage:
        """One short command through the toolbox (``POST /process/execute``, see
        :mod:`.resources`), which carries ``X-Daytona-Skip-Last-Activity-Update`` as all the
        portal's toolbox traffic does (see ``_connect``), so Daytona's idle timer does not move.
        The daemon ends the command after a few seconds (``kind=UNAVAILABLE`` then), and a
        failed attempt is retried only within twice that."""
        sandbox = self._started_sdk_sandbox(remote_id)
        try:
            answer = self._call(
                "measure resources",
                lambda: sandbox.process.exec(COMMAND, timeout=MEASURE_SECONDS),
                deadline=time.monotonic() + 2 * MEASURE_SECONDS,
            )
        except ProviderError as error:
            raise self._toolbox_refusal(remote_id, error) from error
        try:
            return parse_usage(answer.result or "", memory_gb=int(sandbox.memory or 0), disk_gb=int(sandbox.disk or 0))
        except ValueError as exc:
            raise ProviderError(f"The sandbox's memory and disk could not be read: {exc}.") from exc

    def _started_sdk_sandbox(self, remote_id: str) -> Any:
        """The SDK's ``Sandbox`` (its toolbox is where PTYs live) of a started sandbox;
        ``NOT_FOUND`` when it is gone, ``INVALID_STATE`` when it does not run."""
        sandbox = self._call("get", lambda: self._sdk.get(remote_id, request_timeout=self._http_timeout))
        state = remote_sandbox(sandbox).state
        if state is RemoteState.DESTROYING:
            raise ProviderError("The Daytona sandbox no longer exists.", kind=ErrorKind.NOT_FOUND)
        if state is not RemoteState.STARTED:
            raise ProviderError(
                f"The sandbox is not running ({state_word(sandbox.state)}).", kind=ErrorKind.INVALID_STATE
            )
        return sandbox

    def _toolbox_refusal(self, remote_id: str, error: ProviderError) -> ProviderError:
        """What a refused toolbox call means. The toolbox answers a sandbox that stopped since
        it was looked up with 400 ("Is the Sandbox started?"), an archived one with 400
        ("failed to get runner info") and a destroyed one with 401: the sandbox's state, read
        again, says which (``INVALID_STATE``, ``NOT_FOUND``); otherwise the error stands."""
        if error.kind not in (ErrorKind.REJECTED, ErrorKind.INVALID_STATE, ErrorKind.CONFLICT, ErrorKind.NOT_FOUND):
            return error
        try:
            current = self._read(remote_id)
        except ProviderError:
            return error
        if current is None or current.state is RemoteState.DESTROYING:
            return ProviderError("The Daytona sandbox no longer exists.", kind=ErrorKind.NOT_FOUND)
        if current.state is not RemoteState.STARTED:
            return ProviderError(f"The sandbox is not running ({current.backend_state}).", kind=ErrorKind.INVALID_STATE)
        return error

    def _terminal_error(self, exc: Exception, operation: str) -> ProviderError:
        error = provider_error(exc, operation, idempotent=True, secrets=(self._api_key,))
        log_failure(operation, error)
        return error


def attach(
    process: Any,
    session_id: str,
    *,
    cols: int,
    rows: int,
    call: Callable[..., Any],
    error: Callable[[Exception, str], ProviderError],
) -> DaytonaTerminal:
    """The PTY session ``session_id`` of a started sandbox, through the SDK sandbox's
    ``process``: created, or attached to and resized when it exists (see
    ``DaytonaProvider.open_terminal``).

    ``call`` makes a retried API call (the provider's); ``error`` turns the failure of an
    operation into the :class:`ProviderError` to raise.
    """
    size = PtySize(rows=rows, cols=cols)
    for _ in range(2):  # a shell that exits between the refused create and the attach is made again
        try:
            handle = process.create_pty_session(session_id, pty_size=size)
        except DaytonaConflictError:
            pass
        except SDK_FAILURES as exc:
            raise error(exc, "open terminal") from exc
        else:
            return DaytonaTerminal(handle, call=call)
        try:
            handle = process.connect_pty_session(session_id)
        except DaytonaError as exc:
            if exc.status_code:
                raise error(exc, "attach terminal") from exc
            continue  # no status: the daemon refused after the upgrade (no such session)
        except SDK_FAILURES as exc:
            raise error(exc, "attach terminal") from exc
        terminal = DaytonaTerminal(handle, call=call)
        try:
            terminal.resize(cols, rows)
        except ProviderError:
            terminal.detach()
            raise
        return terminal
    raise ProviderError("Daytona attach terminal failed: the session ended while attaching.")


class DaytonaTerminal(TerminalSession):
    """A PTY session attached through the SDK's ``PtyHandle``.

    The handle only offers a blocking iterator, which a disconnect does not wake, so a pump
    thread waits on it in slices of ``PTY_POLL_SECONDS`` and hands output over through a
    bounded queue; :meth:`detach` wakes the reader at once.
    """

    def __init__(self, handle: PtyHandle, *, call: Callable[..., Any]):
        self.session_id = handle.session_id
        self._handle = handle
        self._call = call
        self._output: queue.Queue[bytes | None] = queue.Queue(PTY_QUEUED_CHUNKS)
        self._detached = threading.Event()
        self._at_end = False
        self._pump = threading.Thread(target=self._run_pump, name=f"pty-{self.session_id}", daemon=True)
        self._pump.start()

    def read(self) -> bytes:
        if self._at_end:
            return b""
        chunk = self._output.get()
        if chunk is None:
            self._at_end = True
            return b""
        parts, size = [chunk], len(chunk)
        while size < PTY_MAX_READ:
            try:
                chunk = self._output.get_nowait()
            except queue.Empty:
                break
            if chunk is None:
                self._at_end = True
                break
            parts.append(chunk)
            size += len(chunk)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def write(self, data: bytes) -> None:
        # Not retried: the bytes may have reached the shell.
        try:
            self._handle.send_input(data)
        except SDK_FAILURES as exc:
            raise ProviderError("The terminal connection to Daytona was lost.") from exc

    def resize(self, cols: int, rows: int) -> None:
        self._call("resize terminal", lambda: self._handle.resize(PtySize(rows=rows, cols=cols)), answers=False)

    def detach(self) -> None:
        self._detached.set()
        self._handle.disconnect()
        self._wake_reader()

    def kill(self) -> None:
        with gone_is_done():
            self._call("kill terminal", self._handle.kill, answers=False)

    @property
    def exit_code(self) -> int | None:
        # Once detached, the handle reports the close of our own connection as an exit: the
        # shell itself still runs.
        return None if self._detached.is_set() else self._handle.exit_code

    def _run_pump(self) -> None:
        handle = self._handle
        try:
            while not self._detached.is_set():
                handle.wait(on_data=self._deliver, timeout=PTY_POLL_SECONDS)
                # The handle records why its stream ended: an exit code, an error, or closed.
                if handle.exit_code is not None or handle.error is not None or not handle.is_connected():
                    break
        finally:
            self._wake_reader()

    def _deliver(self, chunk: bytes) -> None:
        while not self._detached.is_set():
            try:
                self._output.put(chunk, timeout=PTY_POLL_SECONDS)
                return
            except queue.Full:
                continue

    def _wake_reader(self) -> None:
        """Queue the end marker, dropping unread output if the queue is full (the reader has
        gone, or is about to learn that the stream ended)."""
        while True:
            try:
                self._output.put_nowait(None)
                return
            except queue.Full:
                try:
                    self._output.get_nowait()
                except queue.Empty:
                    pass
