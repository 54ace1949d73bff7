"""The SSH server: listens, and ends connections whose token no longer holds."""

from __future__ import annotations

import asyncio
import logging

import asyncssh

from sandboxes import services

from .connection import GatewayConnection, withdrawn
from .messages import SHUTDOWN_MESSAGE

log = logging.getLogger(__name__)

CHECK_INTERVAL = 1.5  # seconds between two checks of the open connections' tokens


class SshGateway:
    """The SSH server. ``await start()``, then ``await stop()`` (which ends every session).

    Every ``check_interval`` seconds the token of each open connection is checked again
    (:func:`services.ssh_connection_check`), so that a revoked token, or a sandbox stopped or
    deleted, ends its connections (sessions, commands, file transfers, forwards) within a few
    seconds, with a message saying why; so does a connection revoked in the access ledger (it,
    or its token: one query for every open connection).
    """

    def __init__(self, *, host_key: asyncssh.SSHKey, bind: str, port: int, check_interval: float = CHECK_INTERVAL):
        self.host_key = host_key
        self.bind = bind
        self.port = port
        self.check_interval = check_interval
        self.clients: set[GatewayConnection] = set()
        self._sessions: set[asyncio.Task] = set()
        self._acceptor: asyncssh.SSHAcceptor | None = None
        self._watcher: asyncio.Task | None = None

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
            allow_scp=False,  # scp runs inside the sandbox, as any command does
            line_editor=False,  # keystrokes go to the sandbox's PTY as they are typed
            login_timeout=30,
            keepalive_interval=60,
            keepalive_count_max=3,
        )
        self.port = self._acceptor.get_port()
        self._watcher = asyncio.ensure_future(self._watch())
        return self.port

    async def stop(self) -> None:
        if self._acceptor is None:
            return
        self._watcher.cancel()
        self._acceptor.close()
        for client in list(self.clients):
            client.conn.disconnect(asyncssh.DISC_BY_APPLICATION, SHUTDOWN_MESSAGE)
        await self._acceptor.wait_closed()
        for client in list(self.clients):
            await client.conn.wait_closed()
        if self._sessions:
            await asyncio.wait(self._sessions, timeout=5)
        self._acceptor = None

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.check_interval)
            try:
                await self.check_connections()
            except Exception:  # the next round tries again
                log.exception("checking the SSH connections failed")

    async def check_connections(self) -> None:
        """Check the token of every open connection once (one check per token, one thread for
        them all), and end the connections whose token no longer holds."""
        clients = [client for client in self.clients if client.target is not None]
        checks = {client.token: (client.target, client.expires_at) for client in clients}
        if not checks:
            return
        grant_ids = {client.grant_id for client in clients if client.grant_id is not None}

        def check_all() -> tuple[set[str], dict[str, services.SshRefusal | None]]:
            revoked = withdrawn(grant_ids) if grant_ids else set()
            return revoked, {
                token: services.ssh_connection_check(token=token, target=target, expires_at=expires_at)
                for token, (target, expires_at) in checks.items()
            }

        revoked, verdicts = await asyncio.to_thread(check_all)
        for client in clients:
            refusal = services.SshRefusal.WITHDRAWN if client.grant_id in revoked else verdicts.get(client.token)
            if refusal is not None:
                client.end(refusal)

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
