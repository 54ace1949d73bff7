"""Talking to a sandbox's agent over its unix socket (``<root>/<id>/run/agent.sock``).

One request per connection, in the frames of :mod:`.agent`: a JSON request, a JSON reply, and
for terminals, programs on pipes and relays the connection then carries the session's frames or
raw bytes. The
socket lies outside the sandbox, so nothing inside can replace or redirect it.
"""

from __future__ import annotations

import base64
import json
import socket
import threading
from dataclasses import dataclass
from pathlib import Path

from ..base import ErrorKind, PortClosed, ProcessSession, ProviderError, TerminalSession
from . import agent as protocol

AGENT_TIMEOUT = 5.0
STATUS_TIMEOUT = 0.5
MAX_REPLY = 1 << 20
MAX_EXEC_REPLY = 64 << 20
RECV_SIZE = 1 << 18


class AgentError(ProviderError):
    """The agent answered, refusing the request; ``code`` is its error code."""

    def __init__(self, message: str, *, code: str):
        super().__init__(message, kind=ErrorKind.UNAVAILABLE)
        self.code = code


@dataclass(frozen=True)
class CommandResult:
    exit_code: int | None
    stdout: bytes
    stderr: bytes
    timed_out: bool = False


# --- frames and terminals ---------------------------------------------------------------------


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    buffer = bytearray(size)
    view, received = memoryview(buffer), 0
    while received < size:
        count = sock.recv_into(view[received:])
        if not count:
            raise ConnectionError("the agent closed the connection")
        received += count
    return bytes(buffer)


def _recv_frame(sock: socket.socket, max_size: int) -> tuple[bytes, bytes]:
    kind, length = protocol.FRAME.unpack(_recv_exact(sock, protocol.HEADER))
    if length > max_size:
        raise ConnectionError("oversized frame from the agent")
    return kind, _recv_exact(sock, length)


class _AgentStream:
    """What a terminal attachment and a program on pipes share: a connection to the agent that
    carries frames both ways once the agent has replied.

    ``_closed`` once this side closed it or the agent did (the sandbox stopped); ``_ended``
    once the agent sent the exit frame; ``_input_closed`` once nothing more may be written.
    """

    def __init__(self, sock: socket.socket):
        self._sock = sock
        self._buffer = bytearray()
        self._write_lock = threading.Lock()
        self._exit_code: int | None = None
        self._ended = False
        self._closed = False
        self._input_closed = False

    def _receive(self) -> bool:
        """More bytes from the agent into the buffer; False once the connection is closed."""
        try:
            chunk = self._sock.recv(RECV_SIZE)
        except OSError:
            chunk = b""
        if not chunk:
            self._closed = True  # closed here, or the sandbox stopped
            return False
        self._buffer += chunk
        return True

    def _frame_at(self, offset: int) -> tuple[bytes, int, int] | None:
        """The complete frame at ``offset`` of the buffer: its kind, where its payload starts and
        where it ends. None once the exit frame was read, while the frame is not all there yet,
        and for an oversized one (which closes the connection). The exit frame sets
        :attr:`exit_code`."""
        buffer = self._buffer
        if self._ended or len(buffer) - offset < protocol.HEADER:
            return None
        kind, length = protocol.FRAME.unpack_from(buffer, offset)
        if length > protocol.MAX_FRAME:
            self._closed = True
            return None
        start = offset + protocol.HEADER
        end = start + length
        if end > len(buffer):
            return None
        if kind == protocol.EXIT and length == protocol.STATUS.size:
            self._exit_code = protocol.STATUS.unpack_from(buffer, start)[0]
            self._ended = True
        return kind, start, end

    def _send(self, kind: bytes, payload: bytes = b"") -> None:
        if self._ended or self._closed or self._input_closed:
            return
        with self._write_lock:
            try:
                self._sock.sendall(protocol.frame(kind, payload))
            except OSError:
                # The program is ending; reads still deliver its last output and exit status.
                self._input_closed = True

    def write(self, data: bytes) -> None:
        for start in range(0, len(data), protocol.READ_SIZE):
            self._send(protocol.DATA, bytes(data[start : start + protocol.READ_SIZE]))

    def _close_connection(self) -> None:
        self._closed = True
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()

    @property
    def exit_code(self) -> int | None:
        return self._exit_code


class LocalTerminal(_AgentStream, TerminalSession):
    """An attachment to a PTY session of the agent, over its unix socket.

    Output arrives in frames of up to 64 KiB; :meth:`read` parses every complete frame it has
    received and returns their bytes joined, so bulk output costs one call per large read.

    The agent reads every PTY all the time and keeps each session's recent output, attached or
    not: the first bytes read from a new attachment are that scrollback (``replays_output``).
    """

    replays_output = True

    def __init__(self, sock: socket.socket, session_id: str, *, created: bool):
        super().__init__(sock)
        self.session_id = session_id
        self.created = created

    def read(self) -> bytes:
        while True:
            data = self._take_frames()
            if data:
                return data
            if self._ended or self._closed or not self._receive():
                return b""

    def _take_frames(self) -> bytes:
        parts, offset = [], 0
        while (found := self._frame_at(offset)) is not None:
            kind, start, offset = found
            if kind == protocol.DATA:
                parts.append(self._buffer[start:offset])
        if offset:
            data = b"".join(parts)
            del self._buffer[:offset]
            return data
        return b""

    def resize(self, cols: int, rows: int) -> None:
        self._send(protocol.RESIZE, protocol.WINSIZE.pack(max(1, min(cols, 1000)), max(1, min(rows, 1000))))

    def kill(self) -> None:
        self._send(protocol.KILL)

    def detach(self) -> None:
        if not self._closed:
            self._close_connection()

    @property
    def ended(self) -> bool:
        return self._ended


class LocalProcess(_AgentStream, ProcessSession):
    """A program on pipes run by the agent (op ``process``), over its unix socket.

    :meth:`read` returns the bytes of every complete frame it has received that belong to the
    same stream, joined. :meth:`kill` goes to the agent on a connection of its own, so it works
    even while this one is not being read (a program that does not read its input).
    """

    def __init__(self, sock: socket.socket, socket_path: Path, process_id: str):
        super().__init__(sock)
        self.process_id = process_id
        self._socket_path = socket_path
        self._killed = False

    def read(self) -> tuple[int, bytes]:
        while True:
            item = self._take_frames()
            if item is not None:
                return item
            if self._ended or self._closed or not self._receive():
                return 0, b""

    def _take_frames(self) -> tuple[int, bytes] | None:
        parts, offset, stream = [], 0, 0
        while (found := self._frame_at(offset)) is not None:
            kind, start, end = found
            if kind in (protocol.DATA, protocol.STDERR):
                this = self.STDOUT if kind == protocol.DATA else self.STDERR
                if stream and this != stream:
                    break  # the other stream's bytes come with the next call
                stream = this
                parts.append(self._buffer[start:end])
            offset = end
        if offset:
            del self._buffer[:offset]
        return (stream, b"".join(parts)) if parts else None

    def close_input(self) -> None:
        self._send(protocol.CLOSE_INPUT)
        self._input_closed = True

    def kill(self) -> None:
        if self._killed or self._ended:
            return
        self._killed = True
        try:
            request(self._socket_path, {"op": "end", "process": self.process_id}, timeout=AGENT_TIMEOUT)
        except ProviderError:
            pass  # the agent is gone, and the program with it

    def close(self) -> None:
        if self._closed:
            return
        self.kill()
        self._close_connection()


# --- requests ---------------------------------------------------------------------------------


def request(
    socket_path: Path, message: dict, *, timeout: float, keep: bool = False, max_reply: int = MAX_REPLY
) -> tuple[dict, socket.socket | None]:
    """Send ``message`` to the agent listening on ``socket_path`` and read its reply. With
    ``keep``, the connection is returned open for what follows the reply, else closed. Raises
    ``UNAVAILABLE`` (retryable) when the agent does not answer and :class:`AgentError` when it
    refuses."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(str(socket_path))
        sock.sendall(protocol.json_frame(message))
        kind, payload = _recv_frame(sock, max_reply)
        reply = json.loads(payload) if kind == protocol.JSON else None
        if not isinstance(reply, dict):
            raise ValueError("not a JSON reply")
    except (OSError, ValueError) as exc:
        sock.close()
        raise ProviderError("The sandbox's agent does not answer.", kind=ErrorKind.UNAVAILABLE, retryable=True) from exc
    if not reply.get("ok"):
        sock.close()
        raise AgentError(
            f"The sandbox refused the request: {str(reply.get('message', ''))[:200]}",
            code=str(reply.get("error", "")),
        )
    if keep:
        return reply, sock
    sock.close()
    return reply, None


def agent_status(socket_path: Path) -> dict | None:
    """The agent's status reply (sessions, last activity, disk use); None when it does not answer."""
    try:
        reply, _ = request(socket_path, {"op": "status"}, timeout=STATUS_TIMEOUT)
    except ProviderError:
        return None
    return reply


def attach_terminal(
    socket_path: Path,
    session_id: str,
    *,
    cols: int,
    rows: int,
    command: list[str] | None = None,
    scrollback: int | None = None,
) -> LocalTerminal:
    """Attach to the agent's PTY session ``session_id``, creating it (running ``command``
    instead of the login shell when given, keeping the last ``scrollback`` bytes of its output
    for the next attachment: by default the agent's :data:`~.agent.SCROLLBACK`)."""
    message = {"op": "terminal", "session": session_id, "cols": cols, "rows": rows}
    if command:
        message["argv"] = list(command)
    if scrollback is not None:
        message["scrollback"] = int(scrollback)
    reply, sock = request(socket_path, message, timeout=AGENT_TIMEOUT, keep=True)
    sock.settimeout(None)
    return LocalTerminal(sock, session_id, created=bool(reply.get("created")))


def open_process(socket_path: Path, argv: list[str]) -> LocalProcess:
    """Have the agent run ``argv`` on pipes; returns once it runs."""
    reply, sock = request(socket_path, {"op": "process", "argv": list(argv)}, timeout=AGENT_TIMEOUT, keep=True)
    sock.settimeout(None)
    return LocalProcess(sock, socket_path, str(reply.get("process", "")))


def end_session(socket_path: Path, session_id: str) -> bool:
    """Have the agent end the PTY session ``session_id``; whether there was one."""
    reply, _ = request(socket_path, {"op": "end", "session": session_id}, timeout=AGENT_TIMEOUT)
    return bool(reply.get("ended"))


def configure(socket_path: Path, *, auto_stop_seconds: float) -> None:
    """Tell the running agent its idle stop (0: never)."""
    request(socket_path, {"op": "configure", "auto_stop": auto_stop_seconds}, timeout=AGENT_TIMEOUT)


def open_relay(socket_path: Path, port: int) -> socket.socket:
    """A blocking stream to ``127.0.0.1:port`` inside the sandbox, relayed by the agent.
    Raises :class:`PortClosed` when nothing listens there."""
    try:
        _, sock = request(socket_path, {"op": "relay", "port": int(port)}, timeout=AGENT_TIMEOUT, keep=True)
    except AgentError as exc:
        if exc.code == "refused":
            raise PortClosed(port) from exc
        raise
    sock.settimeout(None)
    return sock


def run_command(socket_path: Path, argv: list[str], *, timeout: float, activity: bool = True) -> CommandResult:
    """Have the agent run ``argv`` and wait for it (up to ``timeout`` seconds); without
    ``activity`` it does not count as use of the sandbox (its idle timer stays)."""
    reply, _ = request(
        socket_path,
        {"op": "exec", "argv": list(argv), "timeout": timeout, "activity": activity},
        timeout=timeout + AGENT_TIMEOUT,
        max_reply=MAX_EXEC_REPLY,
    )
    return CommandResult(
        exit_code=reply.get("exit_code"),
        stdout=base64.b64decode(reply.get("stdout") or ""),
        stderr=base64.b64decode(reply.get("stderr") or ""),
        timed_out=bool(reply.get("timed_out")),
    )
