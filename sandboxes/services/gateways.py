"""The portal's own preview relay and SSH gateway, for sandboxes whose provider has no such
door of its own (:attr:`Capability.PREVIEW_RELAY`, :attr:`Capability.SSH_GATEWAY`)."""

from __future__ import annotations

import enum
import logging
import socket
from dataclasses import dataclass

from django.conf import settings

from sandboxes.models import Sandbox
from sandboxes.providers import get_provider, names_supporting, provider_supports
from sandboxes.providers.base import Capability, ProviderError, RemoteState

from .activity import sandbox_record_activity
from .errors import provider_failures_as_sandbox_errors
from .rows import provider_for
from .terminals import Terminal

log = logging.getLogger(__name__)


# --- the preview relay ------------------------------------------------------------------------


def preview_sandbox(*, remote_id: str) -> Sandbox | None:
    """The sandbox ``remote_id`` if the portal serves its preview itself; None for an unknown
    id and for a sandbox whose provider serves previews on its own."""
    sandbox = Sandbox.objects.filter(remote_id=remote_id).only("user_id", "provider", "remote_id").first()
    if sandbox is None or not provider_for(sandbox).supports(Capability.PREVIEW_RELAY):
        return None
    return sandbox


@provider_failures_as_sandbox_errors
def preview_link_nonce(*, sandbox: Sandbox) -> str | None:
    """The value the preview's signed links are bound to; it changes at every start, stop and
    revocation. None unless the sandbox runs."""
    return provider_for(sandbox).link_nonce(sandbox.remote_id)


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


@dataclass(frozen=True)
class SshTarget:
    """The sandbox an SSH token opens."""

    provider: str
    remote_id: str


@dataclass(frozen=True)
class SshTokenCheck:
    target: SshTarget | None
    refusal: SshRefusal | None = None


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
                return SshTokenCheck(SshTarget(name, remote_id))
            minted_for = provider.ssh_token_sandbox(token)
            remote = provider.get(minted_for) if minted_for else None
        except ProviderError as exc:
            log.warning("an SSH token could not be checked with the %s provider: %s", name, exc)
            refusal = SshRefusal.UNAVAILABLE
            continue
        if remote is not None and remote.state is not RemoteState.STARTED:
            return SshTokenCheck(None, SshRefusal.STOPPED)
    return SshTokenCheck(None, refusal)


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
    """Count SSH use towards the idle policy, as terminal use in the portal does. Blocking."""
    sandbox = Sandbox.objects.filter(provider=target.provider, remote_id=target.remote_id).first()
    if sandbox is not None:
        sandbox_record_activity(sandbox=sandbox, source="ssh")
