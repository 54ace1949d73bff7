"""SSH session channels: a shell, a command or the SFTP subsystem, each bridged to a program of
its own in the sandbox (:mod:`.programs`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading

import asyncssh

from sandboxes import services

from .messages import AGENT_FORWARD_REFUSED, STOPPED_MESSAGE, X11_FORWARD_REFUSED
from .programs import DEFAULT_SIZE, STDERR, SUBSYSTEMS, PipeProgram, PtyProgram

log = logging.getLogger(__name__)

INPUT_HIGH_WATER = 64  # queued input chunks before the client is asked to pause


def refuse_forwarding_requests(chan: asyncssh.SSHServerChannel, note) -> None:
    """Refuse agent and X11 forwarding on a session channel, calling ``note(message)`` for each
    request so that the session can tell the user why.

    asyncssh refuses both by itself (the gateway runs with ``agent_forwarding=False`` and
    ``x11_forwarding=False``) but tells the application nothing, and OpenSSH says nothing about
    a refused agent (it asks without wanting a reply). asyncssh hands a channel request named
    ``N`` to the channel's ``_process_N_request`` (asyncssh 2.x, pinned), so those two are
    replaced here by handlers that note the request and refuse it.
    """

    def refusing(message: str):
        def handler(packet) -> bool:
            note(message)
            return False

        return handler

    chan._process_auth_agent_req_at_openssh_dot_com_request = refusing(AGENT_FORWARD_REFUSED)
    chan._process_x11_req_request = refusing(X11_FORWARD_REFUSED)


class SandboxSession(asyncssh.SSHServerSession):
    """One SSH session channel of ``client`` (the :class:`.connection.GatewayConnection`).

    Output is read by a thread per session (a read blocks while the program is quiet); input,
    resizes and the final end go through the default executor. Every byte either way counts
    as use of the sandbox (``client.activity``).
    """

    def __init__(self, client):
        self._client = client
        self._chan: asyncssh.SSHServerChannel | None = None
        self._size: tuple[int, int] | None = None  # (cols, rows) once a PTY was requested
        self._command: str | None = None
        self._subsystem: str | None = None
        self._program: PtyProgram | PipeProgram | None = None
        self._input: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._reading_paused = False
        self._writable = threading.Event()
        self._writable.set()
        self._closed = False
        self._running = False
        self.notes: list[str] = []  # lines for the user's stderr once the program runs

    # asyncssh callbacks, on the event loop

    def connection_made(self, chan) -> None:
        self._chan = chan

    def pty_requested(self, term_type, term_size, term_modes) -> bool:
        cols, rows = term_size[0] or DEFAULT_SIZE[0], term_size[1] or DEFAULT_SIZE[1]
        self._size = (cols, rows)
        return True

    def shell_requested(self) -> bool:
        return True

    def exec_requested(self, command: str) -> bool:
        self._command = command
        return True

    def subsystem_requested(self, subsystem: str) -> bool:
        if subsystem not in SUBSYSTEMS:
            return False
        self._subsystem = subsystem
        return True

    def session_started(self) -> None:
        self._client.gateway.track(self._run())

    def data_received(self, data: bytes, datatype) -> None:
        self._input.put_nowait(data)
        if self._input.qsize() >= INPUT_HIGH_WATER and not self._reading_paused:
            self._reading_paused = True
            self._chan.pause_reading()

    def eof_received(self) -> bool:
        self._input.put_nowait(None)
        return True  # half-closed: the output still comes

    def terminal_size_changed(self, width: int, height: int, pixwidth: int, pixheight: int) -> None:
        if self._size is None or not (width and height):
            return
        self._size = (width, height)
        if self._program is not None:
            self._client.gateway.run_blocking(self._program.resize, width, height)

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    def connection_lost(self, exc) -> None:
        # Ending the program ends the output thread, and with it _run.
        self._closed = True
        self._running = False
        self._writable.set()
        self._client.session_ended(self)
        if self._program is not None:
            self._client.gateway.run_blocking(self._program.end)

    # for the connection

    def tell(self, message: str) -> None:
        """A line on the user's stderr."""
        if not self._closed:
            self._chan.write_stderr(f"{message}\r\n".encode() if self._size else f"{message}\n".encode())

    # the bridge

    def _make_program(self) -> PtyProgram | PipeProgram:
        target = self._client.target
        if self._subsystem is not None:
            return PipeProgram(target, SUBSYSTEMS[self._subsystem])
        if self._size is not None:
            return PtyProgram(target, self._command, self._size)
        return PipeProgram.for_command(target, self._command)

    async def _run(self) -> None:
        program = self._make_program()
        label, remote_id = self._client.label, self._client.target.remote_id
        try:
            await asyncio.to_thread(program.open)
        except services.SandboxError as exc:
            log.info("ssh session %s on %s not opened: %s", label, remote_id, exc)
            if exc.kind in (services.ErrorKind.INVALID_STATE, services.ErrorKind.NOT_FOUND):
                self._finish(1, STOPPED_MESSAGE)
            else:
                self._finish(1, str(exc))
            return
        self._program = program
        if self._closed:  # the client went away while the program was being started
            self._client.gateway.run_blocking(program.end)
            return
        kind = self._subsystem or ("terminal" if self._size else "pipes")
        log.info("ssh session %s opened on %s (%s)", label, remote_id, kind)
        self._running = True
        for message in [*self.notes, *self._client.session_running(self)]:
            self.tell(message)
        self._client.activity.touch()
        writer = asyncio.ensure_future(self._forward_input())
        try:
            await self._forward_output()
        finally:
            writer.cancel()
        code = program.exit_code
        log.info("ssh session %s on %s ended (exit status %s)", label, remote_id, code)
        if (code is None or code > 128) and not self._closed and await self._client.check_now():
            return  # cut off or killed because the sandbox stopped: the connection ends, saying so
        self._finish(code)

    async def _forward_output(self) -> None:
        loop = asyncio.get_running_loop()
        finished = loop.create_future()
        program = self._program

        def pump() -> None:
            try:
                while not self._closed:
                    self._writable.wait()
                    stream, data = program.read()
                    if not stream:
                        break
                    loop.call_soon_threadsafe(self._output, stream, data)
            except services.SandboxError as exc:
                log.info("ssh session %s: output failed: %s", self._client.label, exc)
            except RuntimeError:  # the gateway stopped: its loop is closed
                return
            finally:
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(lambda: finished.done() or finished.set_result(None))

        threading.Thread(target=pump, name=f"ssh-output-{self._client.label}", daemon=True).start()
        await finished

    def _output(self, stream: int, data: bytes) -> None:
        if self._closed:
            return
        if stream == STDERR:
            self._chan.write_stderr(data)
        else:
            self._chan.write(data)
        self._client.activity.touch()

    async def _forward_input(self) -> None:
        program = self._program
        try:
            while True:
                data = await self._input.get()
                if data is None:
                    await asyncio.to_thread(program.end_input)
                    return
                await asyncio.to_thread(program.write, data)
                self._client.activity.touch()
                if self._reading_paused and self._input.qsize() < INPUT_HIGH_WATER // 2:
                    self._reading_paused = False
                    self._chan.resume_reading()
        except services.SandboxError as exc:
            log.info("ssh session %s: input failed: %s", self._client.label, exc)

    def _finish(self, code: int | None, message: str = "") -> None:
        if self._closed:
            return
        if message:
            self.tell(message)
        if code is None:
            self._chan.close()  # the session was cut off (the sandbox stopped): no exit status
        else:
            self._chan.exit(code)
