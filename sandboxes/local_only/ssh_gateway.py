"""The portal's own SSH gateway, for sandboxes whose provider has none (``Capability.SSH_GATEWAY``:
local ones): ``ssh -p 2222 <token>@<host>`` opens a shell in one.

As with Daytona's gateway, the username *is* the SSH access token minted at launch, so there
is no password or key prompt: a live token authenticates by itself (SSH "none"
authentication). Any other is refused at once, the connection closed with a message saying
what to do (OpenSSH prints it even with ``LogLevel=ERROR``): an unknown, expired or revoked
token (stopping a sandbox revokes its token) and the token of a sandbox that stopped by
itself each get their own.

Each SSH session channel gets a PTY session of its own in the sandbox, ended when the channel
closes (unlike the web terminal, which detaches so that a reload finds the same shell). With a
PTY (``ssh <token>@<host>``, ``ssh -t ...``) that is the user's login shell or command as on
any SSH server. Without one (``ssh ... 'make test'``, ``ssh ... < script.sh``) the program still
runs on a PTY, set up to behave like pipes: output is passed on byte for byte as it comes
(stdout and stderr together, on the client's stdout), input line by line, and the exit status
is the program's.

Daytona runs its own gateway. Everything that blocks (services, the database) runs off the event
loop. Tokens are never logged; :func:`token_digest` names one in logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import secrets
import threading
import time
from pathlib import Path

import asyncssh
from django.db import connections

from sandboxes import services

log = logging.getLogger(__name__)

EXPIRED_MESSAGE = "This access token is expired or revoked. Open the portal to get a new SSH command."
STOPPED_MESSAGE = "Your sandbox is stopped. Open the portal to resume it."
UNAVAILABLE_MESSAGE = "Sandboxes are not reachable right now. Please try again in a moment."
ACTIVITY_INTERVAL = 60.0  # seconds between two activity records of one SSH session
INPUT_HIGH_WATER = 64  # queued input chunks before the client is asked to pause
DEFAULT_SIZE = (80, 24)


def token_digest(token: str) -> str:
    """A short, non-reversible name of a token for logs."""
    return hashlib.sha256(token.encode()).hexdigest()[:10]


# --- host key ---------------------------------------------------------------------------------


def load_or_create_host_key(path: str | os.PathLike) -> asyncssh.SSHKey:
    """The gateway's ed25519 host key, generated at the first start and kept at ``path``
    (mode 0600), so clients see the same host key across restarts.

    Two gateways starting at once agree on one key: the new key is written to a private
    temporary file and linked into place only if no key exists yet.
    """
    path = Path(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        key = asyncssh.generate_private_key("ssh-ed25519", comment="joepro-ssh-gateway")
        temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(key.export_private_key())
            os.link(temporary, path)
            log.info("generated the SSH host key %s", path)
        except FileExistsError:
            pass
        finally:
            temporary.unlink(missing_ok=True)
    return asyncssh.read_private_key(path)


# --- tokens and activity ---------------------------------------------------------------------

REFUSALS = {
    services.SshRefusal.EXPIRED: EXPIRED_MESSAGE,
    services.SshRefusal.STOPPED: STOPPED_MESSAGE,
    services.SshRefusal.UNAVAILABLE: UNAVAILABLE_MESSAGE,
}


def record_activity(target: services.SshTarget) -> None:
    """Count SSH use towards the idle policy. Blocking; best effort."""
    try:
        services.ssh_record_activity(target=target)
    except Exception:  # a database hiccup must not end the session
        log.exception("could not record SSH activity on sandbox %s", target.remote_id)
    finally:
        # A minute passes between two calls of a session, on any executor thread: keeping
        # a connection open per thread would only hold database slots.
        connections.close_all()


# --- sessions ---------------------------------------------------------------------------------

READY = b"\x1e"  # written by PIPE_WRAPPER once the terminal is set up
# A session without a PTY still runs on one (the only way the agent streams output and takes
# input), made to behave like pipes. The terminal gets no echo, no CRLF translation, no signal
# or editing characters; input stays line-based so that the end of the client's input can be
# passed on as ^D. Output goes through a real pipe, so programs see what they would see over
# any SSH server without a PTY (no pager, no colours, no columns). The marker tells the
# gateway when input may flow and where the program's output starts.
PIPE_WRAPPER = (
    "stty -echo -opost -isig -iexten -ixon -icrnl erase undef kill undef 2>/dev/null; "
    "printf '\\036'; "
    '/bin/bash -lc "$1" 2>&1 | cat; exit "${PIPESTATUS[0]}"'
)
EOF_CHAR = b"\x04"
SCRIPT_FROM_STDIN = "cat | /bin/bash -s"  # a shell without a PTY runs its input as a script


def terminal_argv(command: str | None, *, pty: bool) -> list[str] | None:
    """What the PTY session runs: None for the login shell."""
    if pty:
        return None if command is None else ["/bin/bash", "-lc", command]
    return ["/bin/bash", "-c", PIPE_WRAPPER, "bash", SCRIPT_FROM_STDIN if command is None else command]


class SandboxSession(asyncssh.SSHServerSession):
    """One SSH session channel: a shell or a command, on a PTY session of its own in the
    sandbox. Output is read by a thread per session (a read blocks while the program is
    quiet); input, resizes and the final kill go through the default executor."""

    def __init__(self, gateway: SshGateway, target: services.SshTarget, label: str):
        self._gateway = gateway
        self._target = target
        self._remote_id = target.remote_id
        self._label = label  # token digest, for logs
        self._chan = None
        self._size: tuple[int, int] | None = None  # (cols, rows) once a PTY was requested
        self._command: str | None = None
        self._terminal: services.Terminal | None = None
        self._input: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._ready = asyncio.Event()  # input may reach the program
        self._reading_paused = False
        self._writable = threading.Event()
        self._writable.set()
        self._closed = False
        self._last_activity = 0.0

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
        return False  # no sftp

    def session_started(self) -> None:
        self._gateway.track(self._run())

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
        if self._terminal is not None:
            self._gateway.run_blocking(self._terminal.resize, width, height)

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    def connection_lost(self, exc) -> None:
        # Ending the program ends the output thread, and with it _run.
        self._closed = True
        self._writable.set()
        if self._terminal is not None:
            self._gateway.run_blocking(_end, self._terminal)

    # the bridge

    async def _run(self) -> None:
        try:
            self._terminal = await asyncio.to_thread(self._open)
        except services.SandboxError as exc:
            log.info("ssh session %s on %s not opened: %s", self._label, self._remote_id, exc)
            if exc.kind in (services.ErrorKind.INVALID_STATE, services.ErrorKind.NOT_FOUND):
                self._finish(1, STOPPED_MESSAGE)
            else:
                self._finish(1, str(exc))
            return
        if self._closed:  # the client went away while the session was being opened
            self._gateway.run_blocking(_end, self._terminal)
            return
        log.info("ssh session %s opened on %s", self._label, self._remote_id)
        if self._size is not None:
            self._ready.set()
        self._touch()
        writer = asyncio.ensure_future(self._forward_input())
        try:
            await self._forward_output()
        finally:
            writer.cancel()
        code = self._terminal.exit_code
        log.info("ssh session %s on %s ended (exit status %s)", self._label, self._remote_id, code)
        self._finish(code)

    def _open(self) -> services.Terminal:
        cols, rows = self._size or DEFAULT_SIZE
        return services.ssh_terminal_open(
            target=self._target,
            session_id=f"ssh-{secrets.token_hex(8)}",
            cols=cols,
            rows=rows,
            command=terminal_argv(self._command, pty=self._size is not None),
        )

    async def _forward_output(self) -> None:
        loop = asyncio.get_running_loop()
        finished = loop.create_future()
        terminal = self._terminal

        def pump() -> None:
            try:
                while not self._closed:
                    self._writable.wait()
                    data = terminal.read()
                    if not data:
                        break
                    loop.call_soon_threadsafe(self._output, data)
            except RuntimeError:  # the gateway stopped: its loop is closed
                return
            finally:
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(lambda: finished.done() or finished.set_result(None))

        threading.Thread(target=pump, name=f"ssh-output-{self._label}", daemon=True).start()
        await finished

    def _output(self, data: bytes) -> None:
        if self._closed:
            return
        if not self._ready.is_set():
            # Everything up to the marker is the wrapper's, not the command's.
            _, marker, data = data.partition(READY)
            if not marker:
                return
            self._ready.set()
        if data:
            self._chan.write(data)
        self._touch()

    async def _forward_input(self) -> None:
        line_open = False
        while True:
            data = await self._input.get()
            if data is None:
                if self._size is None:
                    # ^D ends the program's input (a first one sends an unfinished line). It
                    # means the same before the terminal is set up, so it need not wait: sent
                    # early, it cannot arrive after a quick program has exited.
                    await asyncio.to_thread(self._terminal.write, EOF_CHAR * (2 if line_open else 1))
                return
            await self._ready.wait()
            await asyncio.to_thread(self._terminal.write, data)
            line_open = not data.endswith(b"\n")
            self._touch()
            if self._reading_paused and self._input.qsize() < INPUT_HIGH_WATER // 2:
                self._reading_paused = False
                self._chan.resume_reading()

    def _touch(self) -> None:
        now = time.monotonic()
        if now - self._last_activity >= ACTIVITY_INTERVAL:
            self._last_activity = now
            self._gateway.run_blocking(record_activity, self._target)

    def _finish(self, code: int | None, message: str = "") -> None:
        if self._closed:
            return
        if message:
            self._chan.write_stderr(f"{message}\r\n".encode() if self._size else f"{message}\n".encode())
        if code is None:
            self._chan.close()  # the session was cut off (the sandbox stopped): no exit status
        else:
            self._chan.exit(code)


def _end(terminal: services.Terminal) -> None:
    """End the program and close the attachment (the web terminal detaches instead)."""
    terminal.kill()
    terminal.detach()


# --- connections ------------------------------------------------------------------------------


class GatewayConnection(asyncssh.SSHServer):
    """One SSH connection: authenticates by token, then opens sessions in that sandbox."""

    def __init__(self, gateway: SshGateway):
        self._gateway = gateway
        self._conn: asyncssh.SSHServerConnection | None = None
        self._target: services.SshTarget | None = None
        self._label = ""

    def connection_made(self, conn) -> None:
        self._conn = conn
        self._gateway.connections.add(conn)

    def connection_lost(self, exc) -> None:
        self._gateway.connections.discard(self._conn)

    async def begin_auth(self, username: str) -> bool:
        self._label = token_digest(username)
        check = await asyncio.to_thread(services.ssh_token_check, username)
        peer = self._conn.get_extra_info("peername") if self._conn else None
        if check.target is None:
            log.info("ssh token %s from %s refused: %s", self._label, peer and peer[0], check.refusal)
            raise asyncssh.PermissionDenied(REFUSALS[check.refusal])
        self._target = check.target
        log.info("ssh token %s from %s accepted for sandbox %s", self._label, peer and peer[0], check.target.remote_id)
        return False  # no further authentication: the token was the credential

    def password_auth_supported(self) -> bool:
        return False

    def kbdint_auth_supported(self) -> bool:
        return False

    def public_key_auth_supported(self) -> bool:
        return False

    def session_requested(self):
        if self._target is None:
            return False
        chan = self._conn.create_server_channel(encoding=None)
        return chan, SandboxSession(self._gateway, self._target, self._label)


# --- the gateway ------------------------------------------------------------------------------


class SshGateway:
    """The SSH server. ``await start()``, then ``await stop()`` (which ends every session)."""

    def __init__(self, *, host_key: asyncssh.SSHKey, bind: str, port: int):
        self.host_key = host_key
        self.bind = bind
        self.port = port
        self.connections: set[asyncssh.SSHServerConnection] = set()
        self._sessions: set[asyncio.Task] = set()
        self._acceptor: asyncssh.SSHAcceptor | None = None

    @property
    def fingerprint(self) -> str:
        return self.host_key.get_fingerprint()

    async def start(self) -> int:
        """Listen; returns the port (useful with ``port=0``)."""
        # asyncssh logs usernames at INFO, and here a username is a token.
        logging.getLogger("asyncssh").setLevel(logging.WARNING)
        self._acceptor = await asyncssh.create_server(
            lambda: GatewayConnection(self),
            self.bind,
            self.port,
            server_host_keys=[self.host_key],
            server_version="JoePro",
            agent_forwarding=False,
            x11_forwarding=False,
            allow_scp=False,
            line_editor=False,  # keystrokes go to the sandbox's PTY as they are typed
            login_timeout=30,
            keepalive_interval=60,
            keepalive_count_max=3,
        )
        self.port = self._acceptor.get_port()
        return self.port

    async def stop(self) -> None:
        if self._acceptor is None:
            return
        self._acceptor.close()
        for conn in list(self.connections):
            conn.disconnect(asyncssh.DISC_BY_APPLICATION, "The SSH gateway is shutting down.")
        await self._acceptor.wait_closed()
        for conn in list(self.connections):
            await conn.wait_closed()
        if self._sessions:
            await asyncio.wait(self._sessions, timeout=5)
        self._acceptor = None

    def track(self, coroutine) -> None:
        """Run a session's bridge as a task that :meth:`stop` waits for."""
        task = asyncio.ensure_future(coroutine)
        self._sessions.add(task)
        task.add_done_callback(self._sessions.discard)

    def run_blocking(self, func, *args) -> None:
        """Run a blocking call off the event loop without waiting for it; failures are logged."""

        def call() -> None:
            try:
                func(*args)
            except services.SandboxError as exc:
                log.info("%s failed: %s", getattr(func, "__name__", func), exc)

        asyncio.get_running_loop().run_in_executor(None, call)
