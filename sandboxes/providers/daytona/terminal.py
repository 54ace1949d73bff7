"""The PTY bridge: a Daytona PTY session as a :class:`TerminalSession`.

PTYs go through the sandbox's toolbox proxy, so they need the SDK's ``Sandbox`` object (the
provider builds one per attachment) and its ``PtyHandle``, whose blocking iterator is turned
here into the contract's read/write/resize/detach/kill.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

from daytona import DaytonaConflictError, DaytonaError, PtySize
from daytona.handle.pty_handle import PtyHandle

from ..base import ProviderError, TerminalSession
from .errors import gone_is_done

PTY_POLL_SECONDS = 1.0  # how soon a detached terminal's pump thread notices and ends
PTY_QUEUED_CHUNKS = 256  # output frames held for a slow reader before the pump waits
PTY_MAX_READ = 1 << 20  # bytes joined into one read when output arrives faster than it is read


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
        except Exception as exc:
            raise error(exc, "open terminal") from exc
        else:
            return DaytonaTerminal(handle, call=call)
        try:
            handle = process.connect_pty_session(session_id)
        except DaytonaError as exc:
            if exc.status_code:
                raise error(exc, "attach terminal") from exc
            continue  # no status: the daemon refused after the upgrade (no such session)
        except Exception as exc:
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
        except Exception as exc:
            raise ProviderError("The terminal connection to Daytona was lost.") from exc

    def resize(self, cols: int, rows: int) -> None:
        self._call("resize terminal", lambda: self._handle.resize(PtySize(rows=rows, cols=cols)))

    def detach(self) -> None:
        self._detached.set()
        self._handle.disconnect()
        self._wake_reader()

    def kill(self) -> None:
        with gone_is_done():
            self._call("kill terminal", self._handle.kill)

    @property
    def exit_code(self) -> int | None:
        return self._handle.exit_code

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
