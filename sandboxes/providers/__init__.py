"""Provider registry: one instance per provider name and process, built from settings."""

from __future__ import annotations

import threading

from django.conf import settings

from .base import ProviderError, SandboxProvider

__all__ = ["ProviderError", "SandboxProvider", "get_provider", "reset_providers", "PROVIDER_NAMES"]

PROVIDER_NAMES = ("daytona", "local")

_instances: dict[str, SandboxProvider] = {}
_lock = threading.Lock()


def _build(name: str) -> SandboxProvider:
    if name == "daytona":
        from .daytona import DaytonaProvider

        return DaytonaProvider(
            api_key=settings.DAYTONA_API_KEY,
            api_url=settings.DAYTONA_API_URL,
            target=settings.DAYTONA_TARGET,
            image=settings.SANDBOX_IMAGE,
            snapshot=settings.SANDBOX_SNAPSHOT,
            http_timeout=settings.DAYTONA_HTTP_TIMEOUT,
        )
    if name == "local":
        from .local import LocalProvider

        return LocalProvider.from_settings()
    raise ProviderError(f"Unknown sandbox provider {name!r}.")


def get_provider(name: str | None = None) -> SandboxProvider:
    """The provider called ``name`` (default: settings.SANDBOX_PROVIDER), built once per process."""
    name = name or settings.SANDBOX_PROVIDER
    with _lock:
        if name not in _instances:
            _instances[name] = _build(name)
        return _instances[name]


def reset_providers() -> None:
    """Forget built providers (settings changed, e.g. in tests)."""
    with _lock:
        _instances.clear()
