"""The access ledger of a sandbox: every credential handed out (SSH tokens, signed terminal
links) and every live session opened (web terminals, SSH connections through the portal's
gateway, preview sessions), each with when it was made, when it expires, when and from where it
was last used; each revocable on its own, and all at once.

Revoking ends what the grant stands for, where it lives: an SSH token at the provider (and the
stored access, so the next launch mints anew), a signed link at the provider, a web terminal's
shell, a preview session's cookie (the relay asks :func:`preview_session_live`), an SSH
connection (the gateway asks :func:`ssh_sessions_revoked` every second or two). Every revoke is
an ``access_revoked`` audit event naming the grant's kind and id.

The records themselves are written by :mod:`.grants` where credentials are minted and sessions
open; the doors call the ``ssh_session_*`` and ``preview_session_*`` functions here.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Iterable
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from sandboxes.models import AccessGrant, AuditEvent, Sandbox, TerminalSession
from sandboxes.providers.base import ProviderError

from .access import stored_access
from .errors import SandboxError, provider_failures_as_sandbox_errors
from .grants import Kind, fingerprint, grant_create, ip_address, live_grants, new_public_id
from .live import sandbox_changed
from .rows import Actor, audit_event, provider_for

log = logging.getLogger(__name__)

HISTORY = timedelta(hours=24)  # how long ended and revoked grants stay in the ledger
SESSIONS = (Kind.TERMINAL_SESSION, Kind.SSH_SESSION, Kind.PREVIEW_SESSION)

ACTIVE, ENDED, REVOKED, EXPIRED = "active", "ended", "revoked", "expired"


def grant_state(grant: AccessGrant, now: datetime) -> str:
    """``revoked``, ``ended`` (closed, or replaced by a newer credential), ``expired`` (past
    ``expires_at``), else ``active``."""
    if grant.revoked_at is not None:
        return REVOKED
    if grant.ended_at is not None:
        return ENDED
    if grant.expires_at is not None and grant.expires_at <= now:
        return EXPIRED
    return ACTIVE


def grant_revocable(grant: AccessGrant, now: datetime) -> bool:
    return grant_state(grant, now) == ACTIVE


def access_ledger(*, sandbox: Sandbox, now: datetime | None = None) -> list[AccessGrant]:
    """The sandbox's live grants and those that ended, were revoked or expired in the last 24
    hours, newest first (``parent`` loaded). Sessions that cannot be live any more are marked
    ended on the way: web terminals whose shell is gone (reaped, evicted, replaced), and every
    session of a sandbox that is not running (stopped where the portal did not stop it)."""
    now = now or timezone.now()
    if sandbox.is_running:
        _end_forgotten_terminals(sandbox, now)
    else:
        live_grants().filter(sandbox=sandbox, kind__in=SESSIONS).update(ended_at=now)
    since = now - HISTORY
    return list(
        AccessGrant.objects.filter(sandbox=sandbox)
        .filter(
            Q(ended_at__isnull=True, revoked_at__isnull=True, expires_at__isnull=True)
            | Q(ended_at__isnull=True, revoked_at__isnull=True, expires_at__gte=since)
            | Q(revoked_at__gte=since)
            | Q(revoked_at__isnull=True, ended_at__gte=since)
        )
        .select_related("parent")
        .order_by("-created_at", "-pk")
    )


def _end_forgotten_terminals(sandbox: Sandbox, now: datetime) -> None:
    live = live_grants().filter(sandbox=sandbox, kind=Kind.TERMINAL_SESSION)
    registered = {fingerprint(session_id) for session_id in _terminal_session_ids(sandbox)}
    live.exclude(fingerprint__in=registered).update(ended_at=now)


def _terminal_session_ids(sandbox: Sandbox) -> list[str]:
    return list(
        TerminalSession.objects.filter(sandbox=sandbox, remote_id=sandbox.remote_id).values_list(
            "session_id", flat=True
        )
    )


# --- revoking ---------------------------------------------------------------------------------


@provider_failures_as_sandbox_errors
def access_revoke(*, sandbox: Sandbox, public_id: str, actor, now: datetime | None = None) -> AccessGrant:
    """Revoke one grant of this sandbox and end what it stands for (see the module docstring);
    the live sessions opened with a revoked SSH token are revoked with it. A grant that is not
    active (ended, revoked, expired) is returned as it is. ``SandboxError("not_found",
    status=404)`` when ``public_id`` names no grant of this sandbox; a provider failure is
    raised as ``SandboxError`` and leaves the grant live."""
    now = now or timezone.now()
    grant = AccessGrant.objects.filter(sandbox=sandbox, public_id=public_id).first() if public_id else None
    if grant is None:
        raise SandboxError("not_found", "No such access.", status=404)
    if not grant_revocable(grant, now):
        return grant
    with transaction.atomic():
        row = Sandbox.objects.select_for_update().get(pk=sandbox.pk)
        grant = AccessGrant.objects.select_for_update().get(pk=grant.pk)
        if not grant_revocable(grant, now):
            return grant
        revoked = _revoke(row, [grant], actor, now)
        AuditEvent.objects.bulk_create(_events(row, revoked, actor))
        sandbox_changed(row)
    grant.refresh_from_db()
    return grant


@provider_failures_as_sandbox_errors
def access_revoke_all(*, sandbox: Sandbox, actor, now: datetime | None = None) -> int:
    """Revoke every active grant of this sandbox ("revoke everything"); how many were revoked.
    One ``access_revoked`` audit event per grant."""
    now = now or timezone.now()
    with transaction.atomic():
        row = Sandbox.objects.select_for_update().get(pk=sandbox.pk)
        grants = list(
            live_grants()
            .select_for_update()
            .filter(sandbox=row)
            .filter(Q(expires_at__isnull=True) | Q(expires_at__gt=now))
            .order_by("pk")
        )
        if not grants:
            return 0
        revoked = _revoke(row, grants, actor, now)
        AuditEvent.objects.bulk_create(_events(row, revoked, actor))
        sandbox_changed(row)
    return len(revoked)


def _revoke(sandbox: Sandbox, grants: list[AccessGrant], actor, now: datetime) -> list[AccessGrant]:
    """End at the provider and in the portal what ``grants`` stand for, then mark them (and
    the live sessions of a revoked SSH token) revoked; the grants revoked. Runs under the
    sandbox's row lock."""
    kinds = {grant.kind for grant in grants}
    provider = provider_for(sandbox) if sandbox.remote_id else None
    access = stored_access(sandbox)
    if provider is not None and Kind.SSH_TOKEN in kinds:
        provider.revoke_access(sandbox.remote_id, preview_port=settings.SANDBOX_PREVIEW_PORT, links=[])
    links = [grant for grant in grants if grant.kind == Kind.TERMINAL_LINK]
    if provider is not None and links and access is not None:
        current = access.terminal
        if current.token and any(hmac.compare_digest(grant.fingerprint, fingerprint(current.token)) for grant in links):
            provider.expire_links(sandbox.remote_id, preview_port=settings.SANDBOX_PREVIEW_PORT, links=[current])
    if kinds & {Kind.SSH_TOKEN, Kind.TERMINAL_LINK} and access is not None:
        # The stored access holds what was revoked: the next launch mints anew.
        sandbox.forget_access()
        sandbox.save(update_fields=["access_ciphertext", "access_expires_at"])
    terminals = {grant.fingerprint for grant in grants if grant.kind == Kind.TERMINAL_SESSION}
    if terminals:
        _end_terminals(sandbox, provider, terminals)
    ids = [grant.pk for grant in grants]
    tokens = [grant.pk for grant in grants if grant.kind == Kind.SSH_TOKEN]
    revoked = list(live_grants().filter(Q(pk__in=ids) | Q(parent_id__in=tokens, kind=Kind.SSH_SESSION)))
    AccessGrant.objects.filter(pk__in=[grant.pk for grant in revoked]).update(revoked_at=now, revoked_by=actor)
    return revoked


def _end_terminals(sandbox: Sandbox, provider, fingerprints: set[str]) -> None:
    """End the web terminal sessions named by ``fingerprints``: their shells, so the websockets
    attached to them close, and their registrations."""
    for session_id in _terminal_session_ids(sandbox):
        if fingerprint(session_id) not in fingerprints:
            continue
        if provider is not None:
            try:
                provider.end_terminal(sandbox.remote_id, session_id)
            except ProviderError as exc:
                log.warning("ending terminal session %s failed: %s", session_id, exc)
                raise
        TerminalSession.objects.filter(sandbox=sandbox, session_id=session_id).delete()


def _events(sandbox: Sandbox, grants: Iterable[AccessGrant], actor) -> list[AuditEvent]:
    return [
        audit_event(
            sandbox,
            AuditEvent.Action.ACCESS_REVOKED,
            actor_type=Actor.USER,
            actor=actor,
            kind=grant.kind,
            grant=grant.public_id,
        )
        for grant in grants
    ]


# --- the SSH gateway --------------------------------------------------------------------------


def ssh_session_opened(
    *, provider: str, remote_id: str, token: str, client_address: str | None, now: datetime | None = None
) -> str | None:
    """An SSH connection was accepted with ``token`` into the sandbox ``remote_id``: its
    ``ssh_session`` grant (under the token's grant, whose last use it records). Returns the new
    grant's public id; None when the sandbox has no row. Blocking: short queries."""
    now = now or timezone.now()
    sandbox = Sandbox.objects.filter(provider=provider, remote_id=remote_id).exclude(remote_id="").first()
    if sandbox is None:
        return None
    parent = (
        AccessGrant.objects.filter(sandbox=sandbox, kind=Kind.SSH_TOKEN, fingerprint=fingerprint(token))
        .order_by("-created_at")
        .first()
    )
    if parent is not None:
        AccessGrant.objects.filter(pk=parent.pk).update(last_used_at=now, last_used_from=ip_address(client_address))
    grant = grant_create(
        sandbox=sandbox,
        kind=Kind.SSH_SESSION,
        secret=new_public_id(),  # a connection has no secret of its own
        label="SSH connection",
        now=now,
        parent=parent,
        used_from=client_address,
    )
    sandbox_changed(sandbox)
    return grant.public_id


def ssh_session_closed(*, public_id: str, now: datetime | None = None) -> None:
    """The SSH connection of this grant closed. Blocking."""
    grant = AccessGrant.objects.filter(public_id=public_id).select_related("sandbox").first()
    if grant is None:
        return
    if live_grants().filter(pk=grant.pk).update(ended_at=now or timezone.now(), last_used_at=now or timezone.now()):
        sandbox_changed(grant.sandbox)


def ssh_sessions_revoked(public_ids: Iterable[str]) -> set[str]:
    """Which of these ``ssh_session`` grants were revoked, themselves or through their SSH
    token: their connections are to end. One indexed query."""
    ids = [public_id for public_id in set(public_ids) if public_id]
    if not ids:
        return set()
    return set(
        AccessGrant.objects.filter(public_id__in=ids)
        .filter(Q(revoked_at__isnull=False) | Q(parent__revoked_at__isnull=False))
        .values_list("public_id", flat=True)
    )


# --- preview sessions -------------------------------------------------------------------------


def preview_session_opened(
    *, sandbox_pk: int, public_id: str, cookie: str, client_address: str | None, now: datetime | None = None
) -> None:
    """A one-time code was redeemed for a preview session cookie (``cookie``, which names
    ``public_id``): its ``preview_session`` grant, expiring with the cookie. Blocking."""
    now = now or timezone.now()
    sandbox = Sandbox.objects.filter(pk=sandbox_pk).first()
    if sandbox is None:
        return
    grant_create(
        sandbox=sandbox,
        kind=Kind.PREVIEW_SESSION,
        secret=cookie,
        label="Preview session",
        now=now,
        expires_at=now + timedelta(minutes=settings.SANDBOX_SSH_TOKEN_MINUTES),
        used_from=client_address,
        public_id=public_id,
    )
    sandbox_changed(sandbox)


def preview_session_live(*, public_id: str, now: datetime | None = None) -> bool:
    """Whether the preview session of this grant may still be used: not ended, not revoked, not
    expired. One indexed query. Blocking."""
    now = now or timezone.now()
    return (
        live_grants()
        .filter(public_id=public_id, kind=Kind.PREVIEW_SESSION)
        .filter(Q(expires_at__isnull=True) | Q(expires_at__gt=now))
        .exists()
    )


def preview_session_used(*, public_id: str, client_address: str | None, now: datetime | None = None) -> None:
    """A page of the preview was loaded with this session (the relay calls it at most once a
    minute per session). Blocking."""
    changes = {"last_used_at": now or timezone.now()}
    if ip_address(client_address):
        changes["last_used_from"] = ip_address(client_address)
    live_grants().filter(public_id=public_id, kind=Kind.PREVIEW_SESSION).update(**changes)
