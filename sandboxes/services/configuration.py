"""What the system checks and the readiness check ask of the providers."""

from __future__ import annotations

import threading
import time

from django.conf import settings

from sandboxes.providers import PROVIDER_NAMES, build_provider, get_provider
from sandboxes.providers.base import ErrorKind, Problem, ProviderError, SandboxProvider

from .errors import SandboxError

__all__ = ["PROVIDER_NAMES", "provider_problems", "provider_reachable"]

# The readiness check runs every few seconds in every web process; Daytona's rate limits are
# per organisation, so one answer serves the checks of this many seconds.
REACHABLE_CACHE_SECONDS = 10.0
UNREACHABLE = {
    ErrorKind.TIMEOUT: "no answer in time",
    ErrorKind.REJECTED: "refused the credentials or the request",
    ErrorKind.RATE_LIMITED: "rate limited",
}
_reachable: dict[str, tuple[SandboxProvider, float, ProviderError | None]] = {}
_reachable_lock = threading.Lock()


def provider_problems(name: str) -> list[Problem]:
    """What keeps the provider ``name`` from running sandboxes here (empty when nothing does),
    with the settings as they are now: the checks may run after a setting changed."""
    return build_provider(name).problems()


def provider_reachable(*, name: str | None = None) -> None:
    """Return when the provider ``name`` (default: ``SANDBOX_PROVIDER``, the one new sandboxes
    go to) answers; raise ``SandboxError("provider_unavailable")`` with a short fixed message
    (never a URL or a key) otherwise. The outcome is kept ``REACHABLE_CACHE_SECONDS`` per
    process and provider instance, success or failure, so frequent checks make one backend call
    at most that often."""
    name = name or settings.SANDBOX_PROVIDER
    try:
        provider = get_provider(name)
    except ProviderError:
        raise SandboxError("provider_unavailable", f"{name}: not configured", status=503) from None
    with _reachable_lock:
        kept_for, checked_at, failure = _reachable.get(name, (None, 0.0, None))
        if kept_for is not provider or time.monotonic() - checked_at > REACHABLE_CACHE_SECONDS:
            failure = _check(provider)
            _reachable[name] = (provider, time.monotonic(), failure)
    if failure is not None:
        reason = UNREACHABLE.get(failure.kind, "not reachable")
        raise SandboxError("provider_unavailable", f"{name}: {reason}", status=503, kind=failure.kind)


def _check(provider: SandboxProvider) -> ProviderError | None:
    try:
        provider.check_reachable()
    except ProviderError as exc:
        return exc
    return None
