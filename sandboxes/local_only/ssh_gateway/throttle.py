"""Failed token checks per client address, counted in the shared cache so that every gateway
process agrees: after ``SANDBOX_SSH_FAILED_TOKENS_PER_MINUTE`` wrong tokens in a minute, the
address is refused for ``SANDBOX_SSH_THROTTLE_SECONDS`` without any token being checked."""

from __future__ import annotations

import time

from django.conf import settings
from django.core.cache import cache

WINDOW_SECONDS = 60


def _blocked_key(address: str) -> str:
    return f"ssh-throttle-blocked:{address}"


def blocked_for(address: str) -> float:
    """Seconds the address is still refused for; 0 when it may try a token."""
    until = cache.get(_blocked_key(address))
    return max(0.0, until - time.time()) if until else 0.0


def note_failure(address: str) -> bool:
    """Count a wrong token from the address; whether that starts its cool-down."""
    limit = settings.SANDBOX_SSH_FAILED_TOKENS_PER_MINUTE
    if limit <= 0:
        return False
    window = int(time.time() // WINDOW_SECONDS)
    key = f"ssh-throttle-failures:{address}:{window}"
    if cache.add(key, 1, timeout=WINDOW_SECONDS + 1):
        count = 1
    else:
        try:
            count = cache.incr(key)
        except ValueError:  # expired in between
            count = 1 if cache.add(key, 1, timeout=WINDOW_SECONDS + 1) else cache.incr(key)
    if count < limit:
        return False
    cooldown = settings.SANDBOX_SSH_THROTTLE_SECONDS
    cache.set(_blocked_key(address), time.time() + cooldown, timeout=cooldown + 1)
    cache.delete(key)  # after the cool-down, the address starts afresh
    return True
