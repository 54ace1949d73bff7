"""The server's wait before it answers a create from a snapshot, a start or a recover.

Daytona's controller (``waitForSandboxStarted``, v0.190.0) holds these requests until the
sandbox is ``started`` (answered), or errored (400 "Sandbox failed to start: <reason>"), or
30 s of real time have passed (answered as last seen). Transitions run on the emulator's
clock, so the hold looks again in short slices and ends as soon as a test moves that clock
past the due time.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from .records import ERROR_STATES, ApiError

# Longest real sleep between two looks: what a moved clock may wait before it is noticed.
LOOK_SLICE_SECONDS = 0.05


async def hold_until_started(fake: Any, answer: dict[str, Any]) -> dict[str, Any]:
    """The sandbox once started, or as last seen when the hold limit passes.

    Raises ``ApiError`` 400 when it errors meanwhile. A sandbox deleted meanwhile keeps
    the hold going until its limit, as the server's wait only ends on started or errored.
    """
    store = fake.store
    deadline = time.monotonic() + fake.timings.hold_limit
    latest = answer
    while True:
        seen, due_in = store.watch(answer["id"])
        if seen is not None:
            latest = seen
            if seen["state"] == "started":
                return seen
            if seen["state"] in ERROR_STATES:
                raise ApiError(400, f"Sandbox failed to start: {seen['errorReason']}")
        left = deadline - time.monotonic()
        if left <= 0:
            return latest
        pause = min(left, LOOK_SLICE_SECONDS)
        if due_in is not None:
            pause = min(pause, max(due_in, 0.001))
        await asyncio.sleep(pause)
