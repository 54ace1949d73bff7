"""The access ledger's records: one :class:`AccessGrant` per credential handed out and per live
session opened with one, written where the credential is minted or the session opens, and
ended where it closes. Never a secret: a grant holds the SHA-256 of what it stands for.

The reads and the revocations are :mod:`.ledger`'s; this module is the part that the minting,
stopping and terminal services write through.
"""

from __future__ import annotations

import hashlib
import ipaddress
import secrets
from collections.abc import Iterable
from datetime import datetime

from sandboxes.models import AccessGrant, Sandbox
from sandboxes.providers.base import SandboxAccess

from .live import sandbox_changed

Kind = AccessGrant.Kind
CREDENTIALS = (Kind.SSH_TOKEN, Kind.TERMINAL_LINK, Kind.PREVIEW_LINK)


def fingerprint(secret: str) -> str:
    """What a grant keeps of the token or session id it stands for."""
    return hashlib.sha256(secret.encode()).hexdigest()


def new_public_id() -> str:
    return secrets.token_hex(16)


def grant_create(
    *,
    sandbox: Sandbox,
    kind: str,
    secret: str,
    label: str,
    now: datetime,
    expires_at: datetime | None = None,
    parent: AccessGrant | None = None,
    used_from: str | None = None,
    public_id: str = "",
) -> AccessGrant:
    """A new live grant; a session (``used_from`` set) counts as used when it opens."""
    return AccessGrant.objects.create(
        sandbox=sandbox,
        kind=kind,
        public_id=public_id or new_public_id(),
        fingerprint=fingerprint(secret),
        parent=parent,
        label=label[:128],
        created_at=now,
        expires_at=expires_at,
        last_used_at=now if used_from else None,
        last_used_from=ip_address(used_from),
    )


def ip_address(value: str | None) -> str | None:
    """``value`` when it is an IP address (what a grant keeps as where it was used), else None."""
    try:
        return str(ipaddress.ip_address(value)) if value else None
    except ValueError:
        return None


def live_grants():
    return AccessGrant.objects.filter(ended_at__isnull=True, revoked_at__isnull=True)


def record_minted_access(sandbox: Sandbox, access: SandboxAccess, now: datetime) -> None:
    """New access was minted for the sandbox: it replaces the credentials handed out before
    (the provider revoked the older SSH tokens), and its SSH token, and its terminal link where
    the provider signs one, go into the ledger."""
    live_grants().filter(sandbox=sandbox, kind__in=[Kind.SSH_TOKEN, Kind.TERMINAL_LINK]).update(ended_at=now)
    grant_create(
        sandbox=sandbox,
        kind=Kind.SSH_TOKEN,
        secret=access.ssh.token,
        label="SSH token",
        now=now,
        expires_at=access.ssh.expires_at,
    )
    if access.terminal.token:
        grant_create(
            sandbox=sandbox,
            kind=Kind.TERMINAL_LINK,
            secret=access.terminal.token,
            label="Signed terminal link",
            now=now,
            expires_at=access.terminal.expires_at,
        )
    sandbox_changed(sandbox)


def end_sandboxes_grants(sandbox_ids: Iterable[int], now: datetime) -> int:
    """The sandboxes stopped or were deleted: every live grant of theirs ended (one UPDATE)."""
    ids = list(sandbox_ids)
    if not ids:
        return 0
    return live_grants().filter(sandbox_id__in=ids).update(ended_at=now)


def end_terminal_grant(session_id: str, now: datetime) -> None:
    """The web terminal session ``session_id`` ended (its shell exited)."""
    live_grants().filter(kind=Kind.TERMINAL_SESSION, fingerprint=fingerprint(session_id)).update(ended_at=now)


def touch_terminal_grant(*, sandbox_pk: int, session_id: str, used_from: str | None, now: datetime) -> None:
    """The web terminal session was attached to, or typed into."""
    changes = {"last_used_at": now}
    if ip_address(used_from):
        changes["last_used_from"] = ip_address(used_from)
    grants = live_grants().filter(sandbox_id=sandbox_pk, kind=Kind.TERMINAL_SESSION)
    grants.filter(fingerprint=fingerprint(session_id)).update(**changes)
