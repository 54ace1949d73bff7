"""Access to a started sandbox: minted by the provider, kept sealed on the row, reused while it
stays valid, and its links expired early when the sandbox stops.

The sealed record holds the access in the provider's terms (:class:`SandboxAccess`); what API
clients see of it is the API's business (``sandboxes.api``).
"""

from __future__ import annotations

from datetime import datetime

from django.conf import settings

from joepro.logging import remember_secret
from sandboxes import secrets
from sandboxes.models import AuditEvent, Sandbox
from sandboxes.providers.base import SandboxAccess, SandboxProvider, SignedLink, SshAccess

from .grants import record_minted_access
from .rows import Actor, audit, provider_for


def access_for(sandbox: Sandbox, provider: SandboxProvider, user, *, fresh: bool, now: datetime) -> SandboxAccess:
    """Access to a started sandbox: the stored access while it stays valid for at least
    ``SANDBOX_ACCESS_REUSE_MARGIN`` (and the sandbox was not started since: ``fresh``), new
    access otherwise. Minting replaces the stored access (the provider revokes older SSH tokens)."""
    if not fresh and sandbox.has_reusable_access(now, settings.SANDBOX_ACCESS_REUSE_MARGIN):
        stored = stored_access(sandbox)
        if stored is not None:
            return stored
    access = provider.mint_access(
        sandbox.remote_id,
        ssh_minutes=settings.SANDBOX_SSH_TOKEN_MINUTES,
        preview_port=settings.SANDBOX_PREVIEW_PORT,
        link_seconds=settings.SANDBOX_SSH_TOKEN_MINUTES * 60,
    )
    for secret in (access.ssh.token, access.preview.token, access.terminal.token):
        remember_secret(secret)  # kept out of this process's log lines, whatever logs them
    # Sealed with the link tokens, so that stopping the sandbox can expire the links early.
    sandbox.access_ciphertext = secrets.seal(_record(access))
    sandbox.access_expires_at = min(access.ssh.expires_at, access.preview.expires_at, access.terminal.expires_at)
    audit(
        sandbox,
        AuditEvent.Action.ACCESS_MINTED,
        actor_type=Actor.USER,
        actor=user,
        expires_at=sandbox.access_expires_at.isoformat(),
    )
    record_minted_access(sandbox, access, now)
    return access


def stored_access(sandbox: Sandbox) -> SandboxAccess | None:
    """The access kept on the row, or None (none kept, or unreadable after a key rotation)."""
    record = secrets.unseal(sandbox.access_ciphertext)
    try:
        return _access(record) if record else None
    except (KeyError, TypeError, ValueError):  # kept in an older shape: mint anew
        return None


def links_to_expire(sandbox: Sandbox, now: datetime) -> list[SignedLink]:
    """Signed links handed out for this sandbox that are still valid and can be revoked."""
    access = stored_access(sandbox)
    if access is None:
        return []
    return [link for link in (access.preview, access.terminal) if link.token and link.expires_at > now]


def _record(access: SandboxAccess) -> dict:
    ssh = access.ssh
    return {
        "ssh": {
            "token": ssh.token,
            "host": ssh.host,
            "port": ssh.port,
            "command": ssh.command,
            "expiresAt": ssh.expires_at.isoformat(),
        },
        "preview": _link_record(access.preview),
        "terminal": _link_record(access.terminal),
    }


def _link_record(link: SignedLink) -> dict:
    return {"url": link.url, "token": link.token, "port": link.port, "expiresAt": link.expires_at.isoformat()}


def _access(record: dict) -> SandboxAccess:
    ssh = record["ssh"]
    return SandboxAccess(
        ssh=SshAccess(
            token=ssh["token"],
            host=ssh["host"],
            port=ssh["port"],
            command=ssh["command"],
            expires_at=datetime.fromisoformat(ssh["expiresAt"]),
        ),
        preview=_link(record["preview"]),
        terminal=_link(record["terminal"]),
    )


def _link(record: dict) -> SignedLink:
    return SignedLink(
        url=record["url"],
        token=record["token"],
        port=record["port"],
        expires_at=datetime.fromisoformat(record["expiresAt"]),
    )


def home_directory(sandbox: Sandbox) -> str:
    """Where the sandbox user's files are: the folder an editor opens over SSH."""
    return provider_for(sandbox).home_directory


def valid_access(sandbox: Sandbox, now: datetime) -> SandboxAccess | None:
    """The access handed out at the last launch while the sandbox runs and it is still valid;
    None otherwise (a launch mints new access)."""
    if not sandbox.is_running or sandbox.access_expires_at is None or sandbox.access_expires_at <= now:
        return None
    return stored_access(sandbox)
