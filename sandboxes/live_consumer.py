"""The live-state websocket: tells a signed-in user's open pages that their sandbox changed.

Protocol, at ``ws/sandbox/events/``: the server sends a text frame ``{"type": "changed"}``
whenever a service announced a change of the user's sandbox (``services.live.sandbox_changed``,
from any process, through the channel layer); the page then reads the dashboard again through
the API. The frame carries nothing else, and what the browser sends is ignored. The first such
frame comes as soon as the websocket listens for changes: a page that (re)connects reads the
dashboard once then, since a change may have come while it was not listening.

Close codes: 4401 signed out; 4430 too many of these websockets open by this user
(``SANDBOX_LIVE_CONNECTIONS_PER_USER``); 4503 this deployment pushes nothing (no channel layer:
the page polls instead); 1013 the channel layer failed (reconnect with backoff, polling
meanwhile).
"""

from __future__ import annotations

import asyncio
import json
import logging

from asgiref.sync import sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings

from .services.live import owner_group
from .websocket_slots import Slot, claim_slot, lease_for, release_slot, renew_slot

log = logging.getLogger(__name__)

CLOSE_SIGNED_OUT = 4401
CLOSE_TOO_MANY_CONNECTIONS = 4430
CLOSE_NO_PUSH = 4503
CLOSE_TRY_AGAIN = 1013

CHANGED_FRAME = json.dumps({"type": "changed"})
# Joining or leaving the owner's group waits no longer than this for the channel layer.
GROUP_TIMEOUT_SECONDS = 5


class SandboxEventsConsumer(AsyncWebsocketConsumer):
    """One open page of a user's. See the module docstring for the protocol."""

    async def connect(self) -> None:
        # Accepted first so that every refusal reaches the page with its close code.
        await self.accept()
        self.group: str | None = None
        self.slot: Slot | None = None
        self.keeper: asyncio.Task | None = None
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(CLOSE_SIGNED_OUT)
            return
        if self.channel_layer is None:
            await self.close(CLOSE_NO_PUSH)
            return
        self.slot = await sync_to_async(_claim_slot, thread_sensitive=False)(user.pk)
        if self.slot is None:
            await self.close(CLOSE_TOO_MANY_CONNECTIONS)
            return
        group = owner_group(user.pk)
        try:
            await asyncio.wait_for(self.channel_layer.group_add(group, self.channel_name), GROUP_TIMEOUT_SECONDS)
        except Exception:
            log.warning("live events: joining %s failed", group, exc_info=True)
            await self.close(CLOSE_TRY_AGAIN)
            return
        self.group = group
        self.keeper = asyncio.ensure_future(self._keep_slot())
        await self.send(text_data=CHANGED_FRAME)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        return  # the page has nothing to say here

    async def sandbox_changed(self, event: dict) -> None:
        """A ``sandbox.changed`` message sent to the owner's group."""
        await self.send(text_data=CHANGED_FRAME)

    async def disconnect(self, code: int) -> None:
        keeper, self.keeper = getattr(self, "keeper", None), None
        if keeper is not None:
            keeper.cancel()
        group, self.group = getattr(self, "group", None), None
        if group is not None:
            try:
                await asyncio.wait_for(
                    self.channel_layer.group_discard(group, self.channel_name), GROUP_TIMEOUT_SECONDS
                )
            except Exception:  # the membership expires with the layer's group expiry
                log.info("live events: leaving %s failed", group, exc_info=True)
        slot, self.slot = getattr(self, "slot", None), None
        if slot is not None:
            await sync_to_async(release_slot, thread_sensitive=False)(slot)

    async def _keep_slot(self) -> None:
        while True:
            await asyncio.sleep(settings.SANDBOX_TERMINAL_RENEW_SECONDS)
            if self.slot is not None:
                await sync_to_async(renew_slot, thread_sensitive=False)(self.slot)


def _claim_slot(user_id: int) -> Slot | None:
    return claim_slot(
        "live-websocket",
        user_id,
        limit=settings.SANDBOX_LIVE_CONNECTIONS_PER_USER,
        lease_seconds=lease_for(settings.SANDBOX_TERMINAL_RENEW_SECONDS),
    )
