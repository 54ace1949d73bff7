"""Daytona's webhooks: a sandbox changed on Daytona's side, so its row is made true at once.

Daytona sends organisation webhooks through Svix: a JSON body such as ``{"event":
"sandbox.state.updated", "timestamp", "id", "organizationId", "oldState", "newState",
"updatedAt"}`` (``sandbox.created`` carries ``state``, ``sandboxClass`` and ``createdAt``
instead), signed with the endpoint's secret in the ``svix-id``, ``svix-timestamp`` and
``svix-signature`` headers. Svix delivers at least once, retries every answer that is not 2xx
and may deliver out of order, so an event is only a hint: the sandbox is read again from the
provider under its row lock, and the payload's states are never written as such. Reconcile
stays the backstop for events that never arrive.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.db import DatabaseError, IntegrityError, connection, transaction
from django.utils import timezone
from svix.webhooks import Webhook, WebhookVerificationError

from sandboxes.models import AuditEvent, Sandbox, WebhookDelivery
from sandboxes.providers.base import ProviderError, RemoteSandbox, RemoteState

from .activity import fold_outside_activity
from .errors import SandboxError
from .rows import Actor, apply_remote, audit_event, provider_for, save_changes, snapshot

log = logging.getLogger(__name__)

PROVIDER = "daytona"
SANDBOX_EVENTS = frozenset({"sandbox.created", "sandbox.state.updated"})
# Longer than Svix's whole retry schedule (about 28 hours), so every retry of an event taken
# in finds its id; a replay after that re-reads the provider and changes nothing either.
DELIVERY_RETENTION = timedelta(days=3)
# A launch holds the row for its provider calls; past this the event is answered 503 and
# Svix delivers it again a little later.
ROW_LOCK_TIMEOUT_MS = 5000


def daytona_webhook_receive(*, body: bytes, headers: Mapping[str, str], now: datetime | None = None) -> str:
    """Take in one webhook delivery from Daytona and answer what became of it: ``applied``
    (a known sandbox was read again from the provider and its row saved; the owner's pages are
    told if what they show changed), ``duplicate`` (this event id was taken in before: nothing
    changes), ``unknown_sandbox`` (no Daytona row has that remote id; reconcile adopts what
    needs adopting) or ``ignored`` (an event about something else than a sandbox).

    Raises ``SandboxError``: ``not_configured`` (404) without ``DAYTONA_WEBHOOK_SECRET``;
    ``misconfigured`` (503) when that secret is not a Svix signing secret (``whsec_...``);
    ``invalid_signature`` (400) for a message without a valid Svix signature by that secret,
    one altered after signing, or one timestamped more than five minutes from now;
    ``provider_unavailable`` (503, and ``busy`` 503 while the row is locked for longer than a
    launch takes) when the sandbox cannot be read now. On a 503 the event id is not recorded,
    so the retry Svix makes is applied.
    """
    payload = _verified_payload(body, headers)
    event_type = str(payload.get("event") or "")
    remote_id = payload.get("id")
    event_id = _message_id(headers)
    if event_type not in SANDBOX_EVENTS or not _fits(event_id, "event_id") or not _fits(remote_id, "remote_id"):
        log.info("daytona webhook %s (%s) ignored", event_id, event_type or "no event type")
        return "ignored"
    if WebhookDelivery.objects.filter(event_id=event_id).exists():
        log.info("daytona webhook %s (%s) for %s: duplicate", event_id, event_type, remote_id)
        return "duplicate"
    outcome = _apply(event_id, event_type, remote_id, now or timezone.now(), _event_change(payload))
    log.info("daytona webhook %s (%s) for %s: %s", event_id, event_type, remote_id, outcome)
    return outcome


def webhook_secret_valid(secret: str) -> bool:
    """Whether ``secret`` is a signing secret Svix can verify with (``whsec_<base64>``)."""
    try:
        Webhook(secret)
    except Exception:
        return False
    return True


def _verified_payload(body: bytes, headers: Mapping[str, str]) -> dict:
    secret = settings.DAYTONA_WEBHOOK_SECRET
    if not secret:
        raise SandboxError("not_configured", "Daytona webhooks are not configured here.", status=404)
    try:
        verifier = Webhook(secret)
    except Exception:
        log.error("DAYTONA_WEBHOOK_SECRET is not a valid Svix signing secret (whsec_<base64>)")
        raise SandboxError(
            "misconfigured", "Daytona webhooks are misconfigured here.", status=503, retryable=True
        ) from None
    try:
        verifier.verify(body, dict(headers.items()))
    except WebhookVerificationError as exc:
        log.warning("daytona webhook refused: %s", exc)
        raise SandboxError(
            "invalid_signature", "The webhook's signature is missing, invalid or too old.", status=400
        ) from None
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        payload = None
    if not isinstance(payload, dict):
        # Signed by Daytona, so a retry would carry the same: take it in and say so.
        log.warning("daytona webhook %s is not a JSON object; ignored", _message_id(headers))
        return {}
    return payload


def _fits(value, field_name: str) -> bool:
    limit = WebhookDelivery._meta.get_field(field_name).max_length
    return isinstance(value, str) and 0 < len(value) <= limit


def _message_id(headers: Mapping[str, str]) -> str:
    """The message's id: ``svix-id``, or ``webhook-id`` as the Standard Webhooks headers name it."""
    found = {key.lower(): value for key, value in headers.items()}
    return found.get("svix-id") or found.get("webhook-id", "")


def _event_change(payload: dict) -> tuple[str, datetime] | None:
    """The state a ``sandbox.state.updated`` event says the sandbox entered, and when."""
    if payload.get("event") != "sandbox.state.updated":
        return None
    state, moment = payload.get("newState"), payload.get("updatedAt") or payload.get("timestamp")
    if not isinstance(state, str) or not isinstance(moment, str):
        return None
    try:
        at = datetime.fromisoformat(moment.replace("Z", "+00:00"))
    except ValueError:
        return None
    return state, at if at.tzinfo else at.replace(tzinfo=UTC)


def _apply(event_id: str, event_type: str, remote_id: str, now: datetime, change=None) -> str:
    try:
        with transaction.atomic():
            try:
                with transaction.atomic():
                    WebhookDelivery.objects.create(event_id=event_id, event_type=event_type, remote_id=remote_id)
            except IntegrityError:  # the same event, delivered twice at once
                return "duplicate"
            WebhookDelivery.objects.filter(received_at__lt=now - DELIVERY_RETENTION).delete()
            _limit_lock_wait()
            row = (
                Sandbox.objects.select_for_update()
                .filter(provider=PROVIDER, remote_id=remote_id)
                .order_by("pk")
                .first()
            )
            if row is None:
                return "unknown_sandbox"
            _sync_locked(row, event_type, event_id, now, change)
    except ProviderError as exc:
        raise SandboxError.from_provider(exc) from exc
    except DatabaseError as exc:
        if not _is_lock_timeout(exc):
            raise
        raise SandboxError(
            "busy", "The sandbox is busy; deliver the event again later.", status=503, retryable=True
        ) from None
    return "applied"


def _sync_locked(row: Sandbox, event_type: str, event_id: str, now: datetime, change=None) -> None:
    """Mirror the provider's answer into the locked row. ``save_changes`` tells the owner's
    pages when what they show changed."""
    remote = provider_for(row).get(row.remote_id)
    if remote is not None and remote.state is RemoteState.DESTROYING:
        remote = None
    if remote is not None:
        remote = _dated_by_event(row, remote, change)
    before_state, before = row.state, snapshot(row)
    apply_remote(row, remote, now)
    fold_outside_activity(row, remote, now)
    save_changes([(row, before)])
    if row.state != before_state:
        audit_event(
            row,
            AuditEvent.Action.STATE_SYNCED,
            actor_type=Actor.SYSTEM,
            reason=f"daytona webhook {event_type}",
            event_id=event_id,
            **{"from": before_state, "to": row.state},
        ).save()


def _dated_by_event(row: Sandbox, remote: RemoteSandbox, change: tuple[str, datetime] | None) -> RemoteSandbox:
    """The sandbox as read, its state change dated by the event where the event is about the
    state it is in now: the event's time is when the change happened, while the sandbox's own
    ``updatedAt`` moves on at every later write. An event older than the row's last change, or
    about another state (delivered out of order), leaves the date to the provider."""
    if change is None or change[0] != remote.backend_state:
        return remote
    _, at = change
    if row.state_changed_at is not None and at < row.state_changed_at:
        return remote
    if remote.state_changed_at is not None and at > remote.state_changed_at:
        return remote
    return replace(remote, state_changed_at=at)


def _limit_lock_wait() -> None:
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(f"SET LOCAL lock_timeout = '{ROW_LOCK_TIMEOUT_MS}ms'")


def _is_lock_timeout(exc: DatabaseError) -> bool:
    return getattr(exc.__cause__, "sqlstate", None) == "55P03"  # lock_not_available
