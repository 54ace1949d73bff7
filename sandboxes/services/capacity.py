"""Deployment-wide caps on sandboxes: how many may exist (``SANDBOX_MAX_SANDBOXES``) and how many
may run at once (``SANDBOX_MAX_RUNNING``).

A launch claims a slot just before it creates or starts a remote sandbox. The claim is decided
under a deployment-wide guard (a PostgreSQL session advisory lock; elsewhere a process lock, as
SQLite serves one process) and counts the rows that already hold a slot plus the slots claimed
by launches still under way. Those claims live in the shared cache, each with its own expiry,
and are let go once the launch's row is committed, so a crashed launch frees its slot after
``SANDBOX_LAUNCH_WAIT_SECONDS`` plus a minute at most. The guard is held for the count only, not
for the provider call: launches by different users still run side by side.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from django.conf import settings
from django.core.cache import cache
from django.db import connection
from django.db.models import Q

from sandboxes.models import Sandbox, SandboxState

from .errors import SandboxError

EXISTING = "sandboxes"
RUNNING = "running"
RUNNING_STATES = (SandboxState.CREATING, SandboxState.STARTING, SandboxState.STARTED)

_process_guard = threading.Lock()


def _cap(kind: str) -> int:
    return settings.SANDBOX_MAX_SANDBOXES if kind == EXISTING else settings.SANDBOX_MAX_RUNNING


def _claims_key(kind: str) -> str:
    return f"sandbox-capacity-claims:{kind}"


def _claim_seconds() -> float:
    return settings.SANDBOX_LAUNCH_WAIT_SECONDS + 60


@contextmanager
def _guard() -> Iterator[None]:
    """Deployment-wide mutual exclusion for a count and a claim (a few milliseconds)."""
    if connection.vendor != "postgresql":
        with _process_guard:
            yield
        return
    key = int.from_bytes(hashlib.sha256(b"joepro:sandbox-capacity").digest()[:8], "big", signed=True)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_lock(%s)", [key])
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s)", [key])


def _holders(kind: str):
    """Rows that hold a slot of ``kind``, as committed."""
    rows = Sandbox.objects.exclude(remote_id="").exclude(state=SandboxState.GONE)
    if kind == RUNNING:
        rows = rows.filter(Q(state__in=RUNNING_STATES))
    return rows


def _live_claims(kind: str, now: float) -> dict[int, float]:
    claims = cache.get(_claims_key(kind)) or {}
    return {pk: until for pk, until in claims.items() if until > now}


def claim(sandbox: Sandbox, kind: str) -> None:
    """Claim a slot of ``kind`` for ``sandbox``, or raise ``SandboxError("capacity_reached")``
    (503) when every slot is held by another sandbox. ``SANDBOX_MAX_*`` of 0 means no cap."""
    cap = _cap(kind)
    if cap <= 0:
        return
    with _guard():
        now = time.time()
        claims = _live_claims(kind, now)
        holders = set(_holders(kind).exclude(pk=sandbox.pk).values_list("pk", flat=True))
        taken = holders | (set(claims) - {sandbox.pk})
        if len(taken) >= cap:
            if kind == EXISTING:
                message = (
                    f"All {cap} sandboxes this portal can hold are in use, so a new one cannot be created now. "
                    "Please try again later or ask an operator to make room."
                )
            else:
                message = (
                    f"{cap} sandboxes are already running, the most this portal runs at once. "
                    "Please try again in a few minutes, when idle ones have stopped."
                )
            raise SandboxError("capacity_reached", message, status=503, retry_after=60, retryable=True)
        claims[sandbox.pk] = now + _claim_seconds()
        cache.set(_claims_key(kind), claims, timeout=_claim_seconds())


def release(sandbox: Sandbox) -> None:
    """Let go of the launch's claims, once its row (which now holds the slot, or not) is committed."""
    for kind in (EXISTING, RUNNING):
        if _cap(kind) <= 0 or cache.get(_claims_key(kind)) is None:
            continue
        with _guard():
            claims = _live_claims(kind, time.time())
            if claims.pop(sandbox.pk, None) is not None:
                cache.set(_claims_key(kind), claims, timeout=_claim_seconds())
