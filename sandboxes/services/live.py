"""Live updates: tell the owner's open pages that their sandbox changed.

Every service that changes what the dashboard shows calls :func:`sandbox_changed`; the message
goes out once the transaction commits, to the channel-layer group of the owner, whose pages
then read the dashboard again (the push says only *that* something changed, never what: what a
page shows always comes through the session-checked API). A push too many costs a page one
read; a push missed is caught up by the page's next reconnect or poll.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

from django.conf import settings
from django.db import transaction

from sandboxes.models import Sandbox

log = logging.getLogger(__name__)

CHANGED = {"type": "sandbox.changed"}
# The longest a commit waits for the channel layer (a slow or unreachable Redis): a stop of
# thousands of rows or a request must not hang on pushes that pages catch up on anyway.
SEND_TIMEOUT_SECONDS = 1.0
# Sends in flight at once: each takes a Redis connection from the layer's pool.
SEND_CONCURRENCY = 16


def owner_group(user_id: int) -> str:
    """The channel-layer group of one user's open pages."""
    return f"sandbox-owner-{user_id}"


def sandbox_changed(*sandboxes: Sandbox) -> None:
    """After the current transaction commits (at once outside one), tell the owners' open
    pages that these sandboxes changed. Never raises; a no-op without a channel layer.

    Calls within one transaction are coalesced: one send per distinct owner at commit, in one
    trip to the event loop, bounded by ``SEND_TIMEOUT_SECONDS``.
    """
    if not settings.CHANNEL_LAYERS:
        return
    user_ids = {sandbox.user_id for sandbox in sandboxes if sandbox is not None and sandbox.user_id}
    if not user_ids:
        return
    connection = transaction.get_connection()
    if not connection.in_atomic_block:
        announce(user_ids)
        return
    pending = _pending_announcement(connection)
    if pending is not None:
        pending.user_ids.update(user_ids)
    else:
        transaction.on_commit(_Announcement(user_ids), robust=True)


class _Announcement:
    """The owners to tell when the transaction it was registered in commits."""

    def __init__(self, user_ids: set[int]):
        self.user_ids = set(user_ids)

    def __call__(self) -> None:
        announce(self.user_ids)


def _pending_announcement(connection) -> _Announcement | None:
    """The announcement already waiting for this transaction's commit, if any. Any one will
    do: it runs unless the transaction, or a savepoint this call is inside of, rolls back (then
    the extra owners get a push too many, which is harmless)."""
    for _savepoints, callback, _robust in connection.run_on_commit:
        if isinstance(callback, _Announcement):
            return callback
    return None


def announce(user_ids: Iterable[int]) -> None:
    """Send ``sandbox.changed`` to each owner's group now. Never raises."""
    from asgiref.sync import async_to_sync
    from channels.layers import get_channel_layer

    groups = [owner_group(user_id) for user_id in sorted(set(user_ids))]
    try:
        layer = get_channel_layer()
        if layer is None or not groups:
            return
        async_to_sync(_send_all)(layer, groups)
    except Exception:  # a page that misses a push catches up at its next poll or reconnect
        log.warning("announcing a change to %d owners failed", len(groups), exc_info=True)


async def _send_all(layer, groups: list[str]) -> None:
    room = asyncio.Semaphore(SEND_CONCURRENCY)

    async def send(group: str) -> None:
        async with room:
            await layer.group_send(group, dict(CHANGED))

    try:
        await asyncio.wait_for(asyncio.gather(*(send(group) for group in groups)), timeout=SEND_TIMEOUT_SECONDS)
    except TimeoutError:
        log.warning("announcing a change to %d owners timed out", len(groups))
