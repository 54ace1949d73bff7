"""Websockets per user, bounded across processes.

Each open websocket of a kind holds one of the user's slots: a key in the shared cache, claimed
atomically (``cache.add``) and held under a lease that its consumer renews while the websocket is
open, so the slots of a process that died come free when their leases run out.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from django.core.cache import cache


@dataclass(frozen=True)
class Slot:
    """One claimed slot; ``key`` is empty when the kind has no cap."""

    key: str
    holder: str
    lease_seconds: int


def lease_for(renew_seconds: int) -> int:
    """A lease that outlives one missed renewal every ``renew_seconds``."""
    return 2 * renew_seconds + 30


def claim_slot(kind: str, user_id: int, *, limit: int, lease_seconds: int) -> Slot | None:
    """A free slot of the user's among ``limit`` of ``kind``, or None when all are taken
    (``limit`` <= 0: no cap)."""
    holder = uuid.uuid4().hex
    if limit <= 0:
        return Slot("", holder, lease_seconds)
    for index in range(limit):
        key = f"{kind}:{user_id}:{index}"
        if cache.add(key, holder, timeout=lease_seconds):
            return Slot(key, holder, lease_seconds)
    return None


def renew_slot(slot: Slot) -> None:
    if slot.key and cache.get(slot.key) in (slot.holder, None):
        cache.set(slot.key, slot.holder, timeout=slot.lease_seconds)


def release_slot(slot: Slot) -> None:
    if slot.key and cache.get(slot.key) == slot.holder:
        cache.delete(slot.key)
