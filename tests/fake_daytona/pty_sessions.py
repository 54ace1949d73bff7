"""Real interactive shells on pseudo-terminals, standing in for the sandbox daemon's PTYs.

As the daemon (``apps/daemon/pkg/toolbox/process/pty``) keeps them: sessions are keyed by
(sandbox id, session id) and are never reaped; closing a websocket detaches that client
only; several clients may attach and all receive the output from the moment they attach
(no replay). A session ends when its shell exits (each client gets an ``exited`` control
frame, then a close 1000 or 1011 with the exit code as JSON reason), when it is deleted
(close 1011, exit code 137, no ``exited`` frame) or when the sandbox stops (the daemon dies
with the container: connections drop without a close frame). The session is forgotten at
once, so a later connect is refused. All asyncio work happens on the server's loop; the
``kill_*`` methods only send signals, so any thread may call them.
"""

from __future__ import annotations

import asyncio
import base64
import fcntl
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import termios
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from .clock import iso

ENVS_PROTOCOL_PREFIX = "X-Daytona-Pty-Envs~"
SEND_QUEUE_LIMIT = 256
EXIT_POLL_SECONDS = 0.05
KILL_FLUSH_SECONDS = 2.0
SANDBOX_HOME = "/home/daytona"


def control_frame(status: str, **fields: Any) -> str:
    """A control message as the daemon writes it: a Go map, so keys sorted, no spaces."""
    return json.dumps({"type": "control", "status": status, **fields}, sort_keys=True, separators=(",", ":"))


CONNECTED_FRAME = control_frame("connected")

# Makes the new session leader's terminal (its stdin) the controlling terminal, then execs
# the shell, so job control and Ctrl-C behave as in a real terminal.
_LAUNCHER = (
    "import fcntl, os, sys, termios; "
    "fcntl.ioctl(0, termios.TIOCSCTTY, 0); "
    "os.execvpe(sys.argv[1], sys.argv[1:], os.environ)"
)


@dataclass
class ExitStatus:
    """How a shell ended, in the daemon's terms.

    The daemon reaps with ``WaitStatus.ExitStatus()``, which is -1 for a shell killed by a
    signal; a deleted session reports 137 instead (see :data:`KILLED`).
    """

    code: int

    @classmethod
    def from_returncode(cls, returncode: int) -> ExitStatus:
        return cls(-1 if returncode < 0 else returncode)

    def exited_frame(self) -> str:
        """The ``exited`` control frame, sent before the close (reason only when non-zero)."""
        if self.code == 0:
            return control_frame("exited", exitCode=0)
        return control_frame("exited", exitCode=self.code, exitReason=self._reap_reason())

    def close_reason(self) -> str:
        """The close frame's reason: a Go struct, so ``exitCode`` first."""
        reason = self._close_reason()
        payload: dict[str, Any] = {"exitCode": self.code}
        if reason is not None:
            payload["exitReason"] = reason
        return json.dumps(payload, separators=(",", ":"))

    def close_code(self) -> int:
        return 1000 if self.code == 0 else 1011

    def _reap_reason(self) -> str:
        code = self.code
        if code == 137:
            return "(SIGKILL)"
        if code == 130:
            return "(SIGINT - Ctrl+C)"
        if code == 143:
            return "(SIGTERM)"
        if code > 128:
            return f"(signal {code - 128})"
        return "(non-zero exit)"

    def _close_reason(self) -> str | None:
        code = self.code
        if code == 0:
            return None
        if code == 130:
            return "Ctrl+C"
        if code == 137:
            return "SIGKILL"
        if code == 143:
            return "SIGTERM"
        if code > 128:
            return f"signal {code - 128}"
        return "non-zero exit"


KILLED = ExitStatus(137)


class PtyStartError(Exception):
    """The daemon could not start the shell (sent as an ``error`` control frame)."""


class PtyClient:
    """One attached websocket and the queue of frames waiting to be sent to it."""

    def __init__(self, ws: web.WebSocketResponse, transport: asyncio.BaseTransport | None) -> None:
        self.ws = ws
        self.transport = transport
        self.closing = False
        self.done = asyncio.Event()
        self._queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._pending = 0

    def send_text(self, text: str) -> None:
        self._queue.put_nowait(("text", text))

    def send_output(self, data: bytes) -> bool:
        """Queue output; False when the client has fallen too far behind."""
        if self._pending >= SEND_QUEUE_LIMIT:
            return False
        self._pending += 1
        self._queue.put_nowait(("bytes", data))
        return True

    def finish(self, status: ExitStatus) -> None:
        """Report the shell's exit: the ``exited`` frame, then the close.

        The daemon sends the frame whether or not the client offered the
        ``X-Daytona-Pty-Exit-Control`` subprotocol (it never selects it).
        """
        self.send_text(status.exited_frame())
        self.close(status.close_code(), status.close_reason())

    def close(self, code: int, reason: str = "") -> None:
        self.closing = True
        self._queue.put_nowait(("close", (code, reason)))

    def drop(self) -> None:
        """End the TCP connection after what is queued, without a close frame."""
        self.closing = True
        self._queue.put_nowait(("drop", None))

    def drop_as_slow(self) -> None:
        """Discard what is queued and close with 1008, as the daemon does."""
        while not self._queue.empty():
            self._queue.get_nowait()
        self._pending = 0
        self.close(1008, "slow consumer")

    async def pump(self) -> None:
        """Send queued frames until a close is sent, the connection drops or fails."""
        try:
            while True:
                kind, payload = await self._queue.get()
                if kind == "bytes":
                    self._pending -= 1
                    await self.ws.send_bytes(payload)
                elif kind == "text":
                    await self.ws.send_str(payload)
                elif kind == "drop":
                    close_transport(self.transport)
                    return
                else:
                    code, reason = payload
                    await self.ws.close(code=code, message=reason.encode())
                    return
        except (ConnectionError, RuntimeError):
            return
        finally:
            self.done.set()


def close_transport(transport: asyncio.BaseTransport | None) -> None:
    """Close the TCP connection (FIN after buffered data), as Go's ``conn.Close()`` does."""
    if transport is not None and not transport.is_closing():
        transport.close()


@dataclass
class PtySession:
    sandbox_id: str
    id: str
    process: subprocess.Popen[bytes]
    master_fd: int
    cwd: str
    envs: dict[str, str]
    cols: int
    rows: int
    created_at: str
    clients: set[PtyClient] = field(default_factory=set)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    ended_by: str | None = None  # "delete" or "sandbox"; None while alive or on its own exit

    def info(self) -> dict[str, Any]:
        """The toolbox's ``PtySessionInfo`` (the daemon adds ``TERM`` to the envs)."""
        return {
            "id": self.id,
            "cwd": self.cwd,
            "envs": {"TERM": "xterm-256color", **self.envs},
            "cols": self.cols,
            "rows": self.rows,
            "createdAt": self.created_at,
            "active": not self.done.is_set(),
            "lazyStart": False,
        }


class PtyManager:
    """Spawns, tracks and reaps the shells."""

    def __init__(self, now: Callable[[], float]) -> None:
        self._now = now
        self._sessions: dict[tuple[str, str], PtySession] = {}
        self._lock = threading.Lock()
        self._watchers: set[asyncio.Task[None]] = set()
        self._homes_root: str | None = None

    # ----- lookup -----------------------------------------------------------------------

    def get(self, sandbox_id: str, session_id: str) -> PtySession | None:
        with self._lock:
            return self._sessions.get((sandbox_id, session_id))

    def list(self, sandbox_id: str) -> list[PtySession]:
        with self._lock:
            return [s for (sid, _), s in self._sessions.items() if sid == sandbox_id]

    def count(self) -> int:
        with self._lock:
            return len(self._sessions)

    # ----- lifecycle --------------------------------------------------------------------

    def spawn(
        self,
        sandbox_id: str,
        session_id: str,
        *,
        cols: int,
        rows: int,
        cwd: str | None,
        envs: dict[str, str],
    ) -> PtySession:
        """Start ``bash -i`` on a fresh pseudo-terminal (call on the event loop).

        ``cwd`` under ``/home/daytona`` (the sandbox user's home) is the sandbox's own home
        directory here; another path is taken as it is. Raises :class:`PtyStartError` when it
        is not a directory, as the daemon fails to start the shell there.
        """
        home = self.home_for(sandbox_id)
        workdir = _local_workdir(cwd, home)
        if not os.path.isdir(workdir):
            raise PtyStartError(f"pty.StartWithSize: chdir {cwd}: no such file or directory")
        master_fd, slave_fd = os.openpty()
        _set_window_size(master_fd, rows, cols)
        try:
            process = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", _LAUNCHER, shutil.which("bash") or "/bin/bash", "-i"],
                stdin=slave_fd,
                stdout=slave_fd,
                stderr=slave_fd,
                cwd=workdir,
                env=_shell_environment(home, envs),
                start_new_session=True,
                close_fds=True,
            )
        except BaseException:
            os.close(master_fd)
            raise
        finally:
            os.close(slave_fd)
        os.set_blocking(master_fd, False)
        session = PtySession(
            sandbox_id=sandbox_id,
            id=session_id,
            process=process,
            master_fd=master_fd,
            cwd=cwd or SANDBOX_HOME,
            envs=dict(envs),
            cols=cols,
            rows=rows,
            created_at=iso(self._now()),
        )
        with self._lock:
            self._sessions[(sandbox_id, session_id)] = session
        loop = asyncio.get_running_loop()
        loop.add_reader(master_fd, self._read_output, session)
        watcher = loop.create_task(self._watch(session))
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)
        return session

    def write(self, session: PtySession, data: bytes) -> None:
        """Type into the terminal (best effort, like a full terminal buffer)."""
        view = memoryview(data)
        while view:
            try:
                written = os.write(session.master_fd, view)
            except (BlockingIOError, OSError):
                return
            view = view[written:]

    def resize(self, session: PtySession, cols: int, rows: int) -> None:
        _set_window_size(session.master_fd, rows, cols)
        session.cols, session.rows = cols, rows

    def kill_sandbox(self, sandbox_id: str) -> None:
        """The sandbox stopped: SIGKILL its shells, drop their clients (thread-safe)."""
        with self._lock:
            doomed = [key for key in self._sessions if key[0] == sandbox_id]
            sessions = [self._sessions.pop(key) for key in doomed]
        for session in sessions:
            session.ended_by = "sandbox"
            _kill(session)

    def kill_all(self) -> None:
        """SIGKILL every shell, dropping their clients (thread-safe)."""
        with self._lock:
            sessions = list(self._sessions.values())
            self._sessions.clear()
        for session in sessions:
            session.ended_by = "sandbox"
            _kill(session)

    async def kill(self, session: PtySession) -> None:
        """``DELETE``: forget the session, close its clients 1011 with exit code 137, then
        SIGKILL the shell; returns once the close frames are sent."""
        with self._lock:
            if self._sessions.get((session.sandbox_id, session.id)) is session:
                del self._sessions[(session.sandbox_id, session.id)]
        session.ended_by = "delete"
        clients = list(session.clients)
        session.clients.clear()
        for client in clients:
            client.close(KILLED.close_code(), KILLED.close_reason())
        _kill(session)
        if clients:
            await asyncio.wait([asyncio.ensure_future(c.done.wait()) for c in clients], timeout=KILL_FLUSH_SECONDS)

    async def shutdown(self) -> None:
        """Kill and reap everything, then remove the home directories."""
        self.kill_all()
        if self._watchers:
            await asyncio.wait(list(self._watchers), timeout=5)
        self.remove_homes()

    def remove_homes(self) -> None:
        if self._homes_root is not None:
            shutil.rmtree(self._homes_root, ignore_errors=True)
            self._homes_root = None

    # ----- internals --------------------------------------------------------------------

    def home_for(self, sandbox_id: str) -> str:
        """The sandbox's home directory on this machine, made on first use."""
        if self._homes_root is None:
            self._homes_root = tempfile.mkdtemp(prefix="fake-daytona-homes-")
        home = os.path.join(self._homes_root, sandbox_id)
        os.makedirs(home, exist_ok=True)
        return home

    def _read_output(self, session: PtySession) -> None:
        try:
            data = os.read(session.master_fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            asyncio.get_running_loop().remove_reader(session.master_fd)
            return
        self._broadcast(session, data)

    def _broadcast(self, session: PtySession, data: bytes) -> None:
        for client in list(session.clients):
            if not client.send_output(data):
                session.clients.discard(client)
                client.drop_as_slow()

    async def _watch(self, session: PtySession) -> None:
        """Wait for the shell to end, then flush its output and tell the clients.

        The daemon writes the ``exited`` frame and the close past its send queues, so output
        still queued can be lost there; the fake delivers it first, to stay deterministic.
        """
        while session.process.poll() is None:
            await asyncio.sleep(EXIT_POLL_SECONDS)
        loop = asyncio.get_running_loop()
        loop.remove_reader(session.master_fd)
        if session.ended_by is None:
            for chunk in _drain(session.master_fd):
                self._broadcast(session, chunk)
        os.close(session.master_fd)
        status = ExitStatus.from_returncode(session.process.returncode)
        for client in list(session.clients):
            if session.ended_by == "sandbox":
                client.drop()
            else:
                client.finish(status)
        session.clients.clear()
        with self._lock:
            if self._sessions.get((session.sandbox_id, session.id)) is session:
                del self._sessions[(session.sandbox_id, session.id)]
        session.done.set()


def decode_envs(protocol_header: str | None) -> dict[str, str]:
    """Envs the SDK sends as an ``X-Daytona-Pty-Envs~<base64url JSON>`` subprotocol.

    Raises ValueError, worded as the daemon's 400, when the token is malformed (Go's
    unpadded base64url decoder and a JSON object of strings).
    """
    for offered in (protocol_header or "").split(","):
        offered = offered.strip()
        if not offered.startswith(ENVS_PROTOCOL_PREFIX):
            continue
        encoded = offered[len(ENVS_PROTOCOL_PREFIX) :]
        bad = next((i for i, ch in enumerate(encoded) if ch not in _BASE64URL), None)
        if bad is None and len(encoded) % 4 == 1:
            bad = len(encoded) - 1
        if bad is not None:
            raise ValueError(f"failed to decode PTY envs subprotocol: illegal base64 data at input byte {bad}")
        raw = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
        try:
            envs = json.loads(raw)
        except ValueError as error:
            raise ValueError(f"failed to unmarshal PTY envs subprotocol: {error}") from None
        if not isinstance(envs, dict) or not all(isinstance(v, str) for v in envs.values()):
            raise ValueError("failed to unmarshal PTY envs subprotocol: json: cannot unmarshal into map[string]string")
        return dict(envs)
    return {}


_BASE64URL = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def _local_workdir(cwd: str | None, home: str) -> str:
    if not cwd or cwd == "~":
        return home
    if cwd == SANDBOX_HOME or cwd.startswith(SANDBOX_HOME + "/"):
        return home + cwd[len(SANDBOX_HOME) :]
    return cwd


def _shell_environment(home: str, envs: dict[str, str]) -> dict[str, str]:
    # A fresh environment: nothing from the test process (keys, settings) reaches the shell.
    env = {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "HOME": home,
        "USER": "daytona",
        "SHELL": "/bin/bash",
        "TERM": "xterm-256color",
        "LANG": "C.UTF-8",
    }
    env.update(envs)
    return env


def _set_window_size(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def _kill(session: PtySession) -> None:
    try:
        os.killpg(session.process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _drain(fd: int) -> list[bytes]:
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return chunks
