"""Per-organisation rate limits, as Daytona's API throttles authenticated calls.

Three counters per organisation: ``sandbox-create`` (create), ``sandbox-lifecycle`` (start,
stop, delete, recover, resize, archive) and ``authenticated`` (every other API call; the
create and lifecycle routes skip it). Each counts requests in a fixed window of
``window_seconds`` on the emulator's clock, opened by the window's first request. Every answer
carries ``X-RateLimit-Limit-<group>``, ``X-RateLimit-Remaining-<group>`` and
``X-RateLimit-Reset-<group>`` (seconds left in the window); the request that goes over the
limit and every one after it for ``window_seconds`` is refused with 429 and
``Retry-After-<group>`` (seconds left of that block), and no other rate-limit header.

This follows @nestjs/throttler behind Daytona's ``AuthenticatedRateLimitGuard`` (v0.190.0)
with its Redis storage: a window counter, and a block as long as the window once the limit
is passed. Whether the hosted service still uses a fixed window is not published.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

CREATE = "sandbox-create"
LIFECYCLE = "sandbox-lifecycle"
AUTHENTICATED = "authenticated"
GROUPS = (AUTHENTICATED, CREATE, LIFECYCLE)

# Tier 1 of the published per-minute limits (general / create / lifecycle).
DEFAULT_LIMITS = {AUTHENTICATED: 10_000, CREATE: 300, LIFECYCLE: 10_000}
WINDOW_SECONDS = 60.0

_GROUP_OF_OPERATION = {
    "create": CREATE,
    "start": LIFECYCLE,
    "stop": LIFECYCLE,
    "delete": LIFECYCLE,
    "recover": LIFECYCLE,
    "resize": LIFECYCLE,
    "archive": LIFECYCLE,
}

THROTTLED_MESSAGE = "ThrottlerException: Too Many Requests"


def group_of(operation: str) -> str:
    """The counter an API operation is charged to."""
    return _GROUP_OF_OPERATION.get(operation, AUTHENTICATED)


@dataclass
class Verdict:
    """Whether a request may go on, and the headers its answer carries."""

    allowed: bool
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class _Window:
    opened: float
    hits: int = 0
    blocked_until: float = 0.0


class RateLimiter:
    """Fixed-window counters per (organisation, group); thread-safe."""

    def __init__(self, now: Callable[[], float]) -> None:
        self._now = now
        self._lock = threading.Lock()
        self.window_seconds = WINDOW_SECONDS
        self.limits: dict[str, int | None] = dict(DEFAULT_LIMITS)
        self._windows: dict[tuple[str, str], _Window] = {}

    def set_limit(self, group: str, limit: int | None) -> None:
        """Requests per window for ``group``; ``None`` turns the group's limit off."""
        if group not in GROUPS:
            raise ValueError(f"unknown rate-limit group {group!r}; expected one of {', '.join(GROUPS)}")
        if limit is not None and (isinstance(limit, bool) or int(limit) != limit or limit < 0):
            raise ValueError("a rate limit must be a non-negative integer or null")
        with self._lock:
            self.limits[group] = None if limit is None else int(limit)

    def restore_defaults(self) -> None:
        """Tier-1 limits, a one-minute window and no request counted."""
        with self._lock:
            self.limits = dict(DEFAULT_LIMITS)
            self.window_seconds = WINDOW_SECONDS
            self._windows.clear()

    def clear(self) -> None:
        """Forget every count (limits stay)."""
        with self._lock:
            self._windows.clear()

    def describe(self) -> dict[str, object]:
        with self._lock:
            return {"limits": dict(self.limits), "window_seconds": self.window_seconds}

    def hit(self, organization_id: str, group: str) -> Verdict:
        """Count one request of ``group`` and judge it."""
        with self._lock:
            limit = self.limits.get(group)
            if limit is None:
                return Verdict(True)
            now = self._now()
            ttl = self.window_seconds
            key = (organization_id, group)
            window = self._windows.get(key)
            # A block outlives the window it began in; once it runs out, this request opens
            # a new window.
            over = window is not None and (
                now >= window.blocked_until if window.blocked_until else now >= window.opened + ttl
            )
            if window is None or over:
                window = self._windows[key] = _Window(opened=now)
            window.hits += 1
            if not window.blocked_until and window.hits > limit:
                window.blocked_until = now + ttl
            if window.blocked_until:
                left = _whole_seconds(window.blocked_until - now)
                return Verdict(False, {f"Retry-After-{group}": str(left)})
            return Verdict(
                True,
                {
                    f"X-RateLimit-Limit-{group}": str(limit),
                    f"X-RateLimit-Remaining-{group}": str(max(0, limit - window.hits)),
                    f"X-RateLimit-Reset-{group}": str(_whole_seconds(window.opened + ttl - now)),
                },
            )


def _whole_seconds(seconds: float) -> int:
    return max(0, math.ceil(seconds))
