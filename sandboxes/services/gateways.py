"""The portal's own doors into sandboxes: the preview relay (every provider's previews are
served through it, on a site of their own) and the SSH gateway, for sandboxes whose provider
has none of its own (:attr:`Capability.SSH_GATEWAY`)."""

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
from sandboxes.providers.base import Capability, ErrorKind, PreviewUpstream, ProcessSession, ProviderError, RemoteState

from .access import stored_access
from .activity import sandbox_record_activity
from .errors import SandboxError, provider_failures_as_sandbox_errors
from .rows import provider_for
from .terminals import Terminal

log = logging.getLogger(__name__)


# --- the preview relay ------------------------------------------------------------------------


@dataclass(frozen=True)
class PreviewRoute:
    """Where the preview of one port of a running sandbox comes from, and whose it is."""

    sandbox_pk: int
    user_id: int
    remote_id: str
    port: int
    upstream: PreviewUpstream


@provider_failures_as_sandbox_errors
def preview_route(*, remote_id: str, port: int) -> PreviewRoute:
    """The route to ``port`` of the running sandbox ``remote_id``, whatever its provider.
    ``SandboxError`` of kind ``not_found`` for an unknown id, ``invalid_state`` when the sandbox
    is not running (by the portal's record or the provider's). Blocking: one database read and
    the provider's answer; the caller caches it for a few seconds."""
    sandbox = (
        Sandbox.objects.filter(remote_id=remote_id)
        .exclude(remote_id="")
        .only("pk", "user_id", "provider", "remote_id", "state")
        .first()
    )
    if sandbox is None:
        raise ProviderError("No such sandbox.", kind=ErrorKind.NOT_FOUND)
    if not sandbox.is_running:
        raise ProviderError("The sandbox is not running.", kind=ErrorKind.INVALID_STATE)
    upstream = provider_for(sandbox).preview_upstream(remote_id, port)
    return PreviewRoute(sandbox.pk, sandbox.user_id, remote_id, port, upstream)


@provider_failures_as_sandbox_errors
def preview_open_stream(*, route: PreviewRoute) -> socket.socket | None:
    """A connected stream to the route's app where the provider opens it itself (a local
    sandbox: through its agent), or None: the relay dials ``route.upstream.url``. Blocking.
    ``SandboxError`` of kind ``port_closed`` when nothing listens there, ``invalid_state`` when
    the sandbox stopped, ``not_found`` when it is gone."""
    return route.upstream.connect() if route.upstream.connect is not None else None


def preview_owner(*, remote_id: str) -> int | None:
    """The id of the user whose sandbox ``remote_id`` is; None for an unknown id."""
    return Sandbox.objects.filter(remote_id=remote_id).exclude(remote_id="").values_list("user_id", flat=True).first()


def preview_record_activity(*, sandbox_pk: int) -> None:
    """A person loading a page of the preview uses the sandbox (at most one write a minute)."""
    sandbox = Sandbox.objects.filter(pk=sandbox_pk).only("pk", "state", "remote_id").first()
    if sandbox is not None:
        sandbox_record_activity(sandbox=sandbox, source=ActivitySource.PREVIEW)


# --- the SSH gateway --------------------------------------------------------------------------


class SshRefusal(enum.StrEnum):
    EXPIRED = "expired"  # unknown, expired or revoked (a stop through the portal revokes)
    STOPPED = "stopped"  # a live token of a sandbox that stopped without the portal stopping it
    UNAVAILABLE = "unavailable"  # the provider could not be asked
    # Ends an open connection (ssh_connection_check):
    REVOKED = "revoked"  # its token was revoked: a newer one minted, or revoke_access
    WITHDRAWN = "withdrawn"  # the connection or its token was revoked in the access ledger


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
