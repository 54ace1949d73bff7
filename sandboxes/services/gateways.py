"""The portal's own preview relay and SSH gateway, for sandboxes whose provider has no such
door of its own (:attr:`Capability.PREVIEW_RELAY`, :attr:`Capability.SSH_GATEWAY`)."""

from __future__ import annotations

import enum
import hmac
import logging
import socket
from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.utils import timezone

from sandboxes.models import ActivitySource, Sandbox
from sandboxes.providers import get_provider, names_supporting, provider_supports
from sandboxes.providers.base import Capability, ProcessSession, ProviderError, RemoteState

from .access import stored_access
from .activity import sandbox_record_activity
from .errors import SandboxError, provider_failures_as_sandbox_errors
from .rows import provider_for
from .terminals import Terminal

log = logging.getLogger(__name__)


# --- the preview relay ------------------------------------------------------------------------


def preview_sandbox(*, remote_id: str) -> Sandbox | None:
    """The sandbox ``remote_id`` if the portal serves its preview itself; None for an unknown
    id and for a sandbox whose provider serves previews on its own."""
    sandbox = (
        Sandbox.objects.filter(remote_id=remote_id)
        .only("user_id", "provider", "remote_id", "remote_name", "state")
        .first()
    )
    if sandbox is None or not provider_for(sandbox).supports(Capability.PREVIEW_RELAY):
        return None
    return sandbox


@provider_failures_as_sandbox_errors
def preview_link_nonce(*, sandbox: Sandbox) -> str | None:
    """The value the preview's signed links are bound to; it changes at every start, stop and
    revocation. None unless the sandbox runs."""
    return provider_for(sandbox).link_nonce(sandbox.remote_id)


def preview_record_activity(*, sandbox: Sandbox) -> None:
    """A request to the preview counts as use of the sandbox (at most one write a minute)."""
    sandbox_record_activity(sandbox=sandbox, source=ActivitySource.PREVIEW)


@provider_failures_as_sandbox_errors
def preview_connect(*, sandbox: Sandbox, port: int) -> socket.socket:
    """A connected stream to ``port`` inside the running sandbox (blocking, no timeout).
    ``SandboxError`` of kind ``port_closed`` when nothing listens there, ``invalid_state`` when
    the sandbox is not running, ``not_found`` when it is gone."""
    return provider_for(sandbox).open_relay(sandbox.remote_id, port)


# --- the SSH gateway --------------------------------------------------------------------------


class SshRefusal(enum.StrEnum):
    EXPIRED = "expired"  # unknown, expired or revoked (a stop through the portal revokes)
    STOPPED = "stopped"  # a live token of a sandbox that stopped without the portal stopping it
    UNAVAILABLE = "unavailable"  # the provider could not be asked
    # Ends an open connection (ssh_connection_check):
    REVOKED = "revoked"  # its token was revoked: a newer one minted, or revoke_access


@dataclass(frozen=True)
class SshTarget:
    """The sandbox an SSH token opens."""

    provider: str
    remote_id: str


@dataclass(frozen=True)
class SshTokenCheck:
    target: SshTarget | None
    refusal: SshRefusal | None = None
    expires_at: datetime | None = None  # when the accepted token expires, where the portal knows


def ssh_gateway_needed() -> bool:
    """Whether this deployment's sandboxes are reached through the portal's own SSH gateway."""
    return provider_supports(settings.SANDBOX_PROVIDER, Capability.SSH_GATEWAY)


def ssh_token_check(token: str) -> SshTokenCheck:
    """Where an SSH token leads: a running sandbox, or why it is refused. Blocking; the token is
    never logged."""
    refusal = SshRefusal.EXPIRED
    for name in names_supporting(Capability.SSH_GATEWAY):
        try:
            provider = get_provider(name)
            remote_id = provider.resolve_ssh_token(token)
            if remote_id is not None:
                target = SshTarget(name, remote_id)
                return SshTokenCheck(target, expires_at=_token_expiry(target, token))
            minted_for = provider.ssh_token_sandbox(token)
            remote = provider.get(minted_for) if minted_for else None
        except ProviderError as exc:
            log.warning("an SSH token could not be checked with the %s provider: %s", name, exc)
            refusal = SshRefusal.UNAVAILABLE
            continue
        if remote is not None and remote.state is not RemoteState.STARTED:
            return SshTokenCheck(None, SshRefusal.STOPPED)
    return SshTokenCheck(None, refusal)


def _token_expiry(target: SshTarget, token: str) -> datetime | None:
    """When ``token`` expires, from the access the portal keeps on the sandbox's row (None when
    the row keeps another token or none)."""
    sandbox = Sandbox.objects.filter(provider=target.provider, remote_id=target.remote_id).first()
    access = stored_access(sandbox) if sandbox is not None else None
    if access is None or not hmac.compare_digest(access.ssh.token.encode(), token.encode()):
        return None
    return access.ssh.expires_at


def ssh_connection_check(
    *, token: str, target: SshTarget, expires_at: datetime | None, now: datetime | None = None
) -> SshRefusal | None:
    """Whether an open SSH connection, accepted with ``token`` for ``target``, may go on: None
    while it may; ``REVOKED`` once the token was revoked (a newer token minted, the provider's
    ``revoke_access``), ``STOPPED`` once the sandbox stopped (a stop through the portal revokes
    the token too) or is gone. Blocking; never raises (a provider that cannot be asked keeps the
    connection open); reads no database. Cheap enough to be asked every second or two.

    Expiry alone does not end a connection (as with any SSH server, credentials are checked when
    a connection opens): ``expires_at`` is when the token expires (:class:`SshTokenCheck`). The
    provider cannot tell an expired token from a revoked one, so after ``expires_at`` (or when it
    is unknown: never) only the sandbox's stop or deletion ends the connection.
    """
    try:
        provider = get_provider(target.provider)
        if provider.resolve_ssh_token(token) == target.remote_id:
            return None
        remote = provider.get(target.remote_id)
    except ProviderError as exc:
        log.debug("the SSH connections of %s could not be checked: %s", target.remote_id, exc)
        return None
    if remote is None or remote.state is not RemoteState.STARTED:
        return SshRefusal.STOPPED
    if expires_at is not None and (now or timezone.now()) >= expires_at:
        return None
    return SshRefusal.REVOKED


@provider_failures_as_sandbox_errors
def ssh_port_connect(*, target: SshTarget, port: int) -> socket.socket:
    """A connected stream (blocking, no timeout) to ``port`` on the loopback inside the running
    sandbox, for an SSH forward (``ssh -L``): the connection is made in the sandbox's own
    network namespace, so nothing outside the sandbox can be reached. ``SandboxError`` of kind
    ``port_closed`` when nothing listens there, ``invalid_state`` when the sandbox is not
    running, ``not_found`` when it is gone, ``rejected`` when the provider cannot relay."""
    return get_provider(target.provider).open_relay(target.remote_id, port)


class Process:
    """A program running in a sandbox on pipes: the provider's :class:`ProcessSession` (whose
    docstrings say what each call does), with failures raised as :class:`SandboxError`."""

    STDOUT = ProcessSession.STDOUT
    STDERR = ProcessSession.STDERR
    __slots__ = ("_session",)

    def __init__(self, session: ProcessSession):
        self._session = session

    @property
    def exit_code(self) -> int | None:
        return self._session.exit_code

    def read(self) -> tuple[int, bytes]:
        return self._call(self._session.read)

    def write(self, data: bytes) -> None:
        self._call(self._session.write, data)

    def close_input(self) -> None:
        self._call(self._session.close_input)

    def kill(self) -> None:
        self._call(self._session.kill)

    def close(self) -> None:
        self._call(self._session.close)

    @staticmethod
    def _call(method, *args):
        try:
            return method(*args)
        except ProviderError as error:
            raise SandboxError.from_provider(error) from error


@provider_failures_as_sandbox_errors
def ssh_process_open(*, target: SshTarget, argv: list[str]) -> Process:
    """A program on pipes for one SSH session channel without a PTY (a command, a shell reading
    a script, the SFTP server, scp), run as the sandbox's user in its home directory. The caller
    closes it when the channel closes. ``SandboxError`` of kind ``rejected`` when the provider
    cannot run programs on pipes (no ``Capability.PROCESS``). Blocking."""
    return Process(get_provider(target.provider).open_process(target.remote_id, argv))


@provider_failures_as_sandbox_errors
def ssh_terminal_open(
    *, target: SshTarget, session_id: str, cols: int, rows: int, command: list[str] | None
) -> Terminal:
    """A new PTY session for one SSH session channel, running ``command`` (None: the login
    shell). The caller ends it (kill, then detach) when the channel closes. Blocking."""
    session = get_provider(target.provider).open_terminal(
        target.remote_id, session_id=session_id, cols=cols, rows=rows, command=command
    )
    return Terminal(session)


def ssh_record_activity(*, target: SshTarget) -> None:
    """Count SSH use (sessions, forwards, file transfers) of the running sandbox towards the idle
    policy, as terminal use in the portal does. What reaches the gateway once the sandbox is
    stopping (a shell's last words as the stop kills it) is not use. Blocking."""
    try:
        remote = get_provider(target.provider).get(target.remote_id)
    except ProviderError:
        remote = None  # cannot tell: the use counts
    else:
        if remote is None or remote.state is not RemoteState.STARTED:
            return
    sandbox = Sandbox.objects.filter(provider=target.provider, remote_id=target.remote_id).first()
    if sandbox is not None:
        sandbox_record_activity(sandbox=sandbox, source=ActivitySource.SSH)
