"""Provider registry: one instance per provider name and process, built from settings."""

from __future__ import annotations

import threading

from django.conf import settings

from .base import Capability, ProviderError, SandboxProvider

__all__ = [
    "PROVIDER_NAMES",
    "ProviderError",
    "SandboxProvider",
    "build_provider",
    "configured_names",
    "get_provider",
    "names_supporting",
    "provider_supports",
    "reset_providers",
]

PROVIDER_NAMES = ("daytona", "local")

_instances: dict[str, SandboxProvider] = {}
_lock = threading.Lock()


def provider_class(name: str) -> type[SandboxProvider]:
    if name == "daytona":
        from .daytona import DaytonaProvider

        return DaytonaProvider
    if name == "local":
        from .local import LocalProvider

        return LocalProvider
    raise ProviderError(f"Unknown sandbox provider {name!r}.")


def build_provider(name: str) -> SandboxProvider:
    """A new provider called ``name`` from the current settings, not kept (see :func:`get_provider`)."""
    return provider_class(name).from_settings()


def get_provider(name: str | None = None) -> SandboxProvider:
    """The provider called ``name`` (default: settings.SANDBOX_PROVIDER), built once per process."""
    name = name or settings.SANDBOX_PROVIDER
    with _lock:
        if name not in _instances:
            _instances[name] = build_provider(name)
        return _instances[name]


def provider_supports(name: str, capability: Capability) -> bool:
    """Whether the provider called ``name`` has ``capability``, without building it."""
    return name in PROVIDER_NAMES and capability in provider_class(name).capabilities


def configured_names() -> list[str]:
    """The providers this deployment can use: Daytona once it has an API key, local always."""
    return [name for name in PROVIDER_NAMES if name != "daytona" or settings.DAYTONA_API_KEY]


def names_supporting(capability: Capability) -> list[str]:
    """The providers this deployment can use that have ``capability``. Only their classes are
    loaded (the Daytona SDK weighs some 50 MB in a process that never needs it)."""
    return [name for name in configured_names() if provider_supports(name, capability)]


def reset_providers() -> None:
    """Forget built providers (settings changed, e.g. in tests)."""
    with _lock:
        _instances.clear()
