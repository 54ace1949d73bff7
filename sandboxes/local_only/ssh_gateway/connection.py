"""One SSH connection: authenticated by its token, then sessions and forwards in that sandbox,
at most :data:`MAX_CHANNELS` at once, until it closes or the gateway ends it."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from datetime import datetime

import asyncssh
from django.db import connections

from sandboxes import services
from sandboxes.services import ledger

from .activity import ActivityClock
from .forwarding import ChannelSide, check_destination, open_forward
from .messages import (
    ENDED_STOPPED_MESSAGE,
    EXPIRED_MESSAGE,
    REMOTE_FORWARD_REFUSED,
    REVOKED_MESSAGE,
    SOCKET_FORWARD_PROHIBITED,
    STOPPED_MESSAGE,
    THROTTLED_MESSAGE,
    TOO_MANY_CHANNELS,
    UNAVAILABLE_MESSAGE,
    WITHDRAWN_MESSAGE,
)
from .sessions import SandboxSession, refuse_forwarding_requests
from .throttle import blocked_for, note_failure

log = logging.getLogger(__name__)

MAX_CHANNELS = 32  # sessions and forwards open at once on one connection

REFUSALS = {
    services.SshRefusal.EXPIRED: EXPIRED_MESSAGE,
    services.SshRefusal.STOPPED: STOPPED_MESSAGE,
    services.SshRefusal.UNAVAILABLE: UNAVAILABLE_MESSAGE,
}
ENDINGS = {
    services.SshRefusal.REVOKED: REVOKED_MESSAGE,
    services.SshRefusal.STOPPED: ENDED_STOPPED_MESSAGE,
    services.SshRefusal.WITHDRAWN: WITHDRAWN_MESSAGE,
}


def token_digest(token: str) -> str:
    """A short, non-reversible name of a token for logs."""
    return hashlib.sha256(token.encode()).hexdigest()[:10]


def check_token(token: str) -> services.SshTokenCheck:
    """Where the token leads. Blocking (the provider, and the database for its expiry)."""
    try:
        return services.ssh_token_check(token)
    finally:
        connections.close_all()  # an executor thread: keep no database connection open in it


def throttled_check(token: str, address: str) -> tuple[services.SshTokenCheck | None, float]:
    """The token's check, unless the address is cooling down after too many wrong tokens:
    then ``(None, seconds left)``, and the token is not checked. Blocking (the shared cache)."""
    wait = blocked_for(address)
    if wait:
        return None, wait
    check = check_token(token)
    if check.target is None and check.refusal is services.SshRefusal.EXPIRED and note_failure(address):
        log.warning("ssh: too many wrong tokens from %s, refused for a while", address)
    return check, 0.0


def open_session(target: services.SshTarget, token: str, address: str | None) -> str | None:
    """The access ledger's grant of an accepted connection (its public id), or None when it
    could not be written. Blocking (short queries)."""
    try:
        return ledger.ssh_session_opened(
            provider=target.provider, remote_id=target.remote_id, token=token, client_address=address
        )
    except Exception:  # the ledger is a record; the connection goes on without its entry
        log.exception("could not record an SSH connection to sandbox %s", target.remote_id)
        return None
    finally:
        connections.close_all()


def close_session(grant_id: str) -> None:
    try:
        ledger.ssh_session_closed(public_id=grant_id)
    except Exception:
        log.exception("could not record the end of an SSH connection")
    finally:
        connections.close_all()


def withdrawn(grant_ids: set[str]) -> set[str]:
    """Which of these connections' grants were revoked in the access ledger (one query); none
    when the database cannot be asked. Blocking."""
    try:
        return ledger.ssh_sessions_revoked(grant_ids)
    except Exception:
        log.warning("could not check the SSH connections in the access ledger", exc_info=True)
        return set()
    finally:
        connections.close_all()


class GatewayConnection(asyncssh.SSHServer):
    """Authenticates by token (the SSH user name), then opens sessions and forwards in that
    sandbox. The token stays in memory, for :meth:`SshGateway.check_connections
    <.server.SshGateway.check_connections>` to check again; logs name it by its digest."""

    def __init__(self, gateway):
        self.gateway = gateway
        self.conn: asyncssh.SSHServerConnection | None = None
        self.target: services.SshTarget | None = None
        self.token: str | None = None
        self.expires_at: datetime | None = None
        self.label = ""
        self.grant_id: str | None = None  # the connection's entry in the access ledger
        self.activity: ActivityClock | None = None
        self.forwards: set[ChannelSide] = set()
        self._channels = 0
        self._sessions: list[SandboxSession] = []  # those whose program runs
        self._notes: list[str] = []  # for the next session that runs
        self._ended = False

    # asyncssh callbacks

    def connection_made(self, conn) -> None:
        self.conn = conn
        self.gateway.clients.add(self)

    def connection_lost(self, exc) -> None:
        self.gateway.clients.discard(self)
        for forward in list(self.forwards):
            forward.close()
        if self.grant_id is not None:
            self.gateway.run_blocking(close_session, self.grant_id)

    async def begin_auth(self, username: str) -> bool:
        self.label = token_digest(username)
        peer = self.conn.get_extra_info("peername") if self.conn else None
        check, wait = await asyncio.to_thread(throttled_check, username, str(peer and peer[0]))
        if check is None:
            log.info("ssh token %s from %s refused unchecked: too many wrong tokens", self.label, peer and peer[0])
            raise asyncssh.PermissionDenied(THROTTLED_MESSAGE.format(seconds=max(1, round(wait))))
        if check.target is None:
            log.info("ssh token %s from %s refused: %s", self.label, peer and peer[0], check.refusal)
            raise asyncssh.PermissionDenied(REFUSALS[check.refusal])
        self.target, self.token, self.expires_at = check.target, username, check.expires_at
        self.activity = ActivityClock(self.gateway, check.target)
        self.grant_id = await asyncio.to_thread(open_session, check.target, username, peer and peer[0])
        log.info("ssh token %s from %s accepted for sandbox %s", self.label, peer and peer[0], check.target.remote_id)
        return False  # no further authentication: the token was the credential

    def password_auth_supported(self) -> bool:
        return False

    def kbdint_auth_supported(self) -> bool:
        return False

    def public_key_auth_supported(self) -> bool:
        return False

    def session_requested(self):
        if self.target is None:
            return False
        self._claim_channel()
        chan = self.conn.create_server_channel(encoding=None)
        session = SandboxSession(self)
        refuse_forwarding_requests(chan, session.notes.append)
        return chan, session

    def connection_requested(self, dest_host: str, dest_port: int, orig_host: str, orig_port: int):
        if self.target is None:
            return False
        check_destination(dest_host, dest_port)
        self._claim_channel()
        log.info("ssh forward %s to port %s of %s", self.label, dest_port, self.target.remote_id)
        return self.conn.create_tcp_channel(), open_forward(self, dest_port)

    def unix_connection_requested(self, dest_path: str):
        raise asyncssh.ChannelOpenError(asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, SOCKET_FORWARD_PROHIBITED)

    def server_requested(self, listen_host: str, listen_port: int) -> bool:
        # OpenSSH says only "remote port forwarding failed", and only at the default LogLevel.
        self._note(REMOTE_FORWARD_REFUSED)
        return False

    def unix_server_requested(self, listen_path: str) -> bool:
        self._note(REMOTE_FORWARD_REFUSED)
        return False

    # channels

    def _claim_channel(self) -> None:
        if self._channels >= MAX_CHANNELS:
            log.info("ssh token %s: channel refused, %s open", self.label, self._channels)
            reason = TOO_MANY_CHANNELS.format(limit=MAX_CHANNELS)
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_RESOURCE_SHORTAGE, reason)
        self._channels += 1

    @property
    def open_channels(self) -> int:
        return self._channels

    def release_channel(self) -> None:
        self._channels = max(0, self._channels - 1)

    # what the user is told

    def _note(self, message: str) -> None:
        """Tell the user on a running session's stderr, or on the next one's."""
        if self._sessions:
            self._sessions[0].tell(message)
        elif message not in self._notes:
            self._notes.append(message)

    def session_running(self, session: SandboxSession) -> list[str]:
        """A session's program runs: the notes it is to show."""
        self._sessions.append(session)
        notes, self._notes = self._notes, []
        return notes

    def session_ended(self, session: SandboxSession) -> None:
        self.release_channel()
        if session in self._sessions:
            self._sessions.remove(session)

    # the end

    async def check_now(self) -> bool:
        """Check the token at once (a program was cut off: its sandbox may have stopped) and
        end the connection if it no longer holds; whether it was ended."""
        if self.grant_id is not None and await asyncio.to_thread(withdrawn, {self.grant_id}):
            self.end(services.SshRefusal.WITHDRAWN)
            return True
        refusal = await asyncio.to_thread(
            services.ssh_connection_check, token=self.token, target=self.target, expires_at=self.expires_at
        )
        if refusal is not None:
            self.end(refusal)
        return refusal is not None

    def end(self, refusal: services.SshRefusal) -> None:
        """Close the connection, every session and forward with it, saying why. Idempotent."""
        if self._ended or self.conn is None:
            return
        self._ended = True
        log.info("ssh token %s on %s: connection ended (%s)", self.label, self.target.remote_id, refusal)
        message = ENDINGS.get(refusal, EXPIRED_MESSAGE)
        # OpenSSH prints a disconnect's message, but exits without reading it once its session
        # channel closed (and asyncssh closes the channels first): sessions get it on stderr.
        for session in self._sessions:
            session.tell(message)
        self.conn.disconnect(asyncssh.DISC_BY_APPLICATION, message)
