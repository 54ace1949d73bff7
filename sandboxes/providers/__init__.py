"""Provider registry: one instance per provider name and process, built from settings, its
calls timed for the metrics."""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Iterator

from django.conf import settings

from usage.instruments import PROVIDER_CALL_DURATION

from .base import Capability, ProviderError, SandboxProvider
from .templates import TemplateMethods

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
    "timed",
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
            _instances[name] = timed(build_provider(name))
        return _instances[name]


# --- call metrics -----------------------------------------------------------------------------

# Methods of the contract that are not calls to a backend.
UNTIMED = frozenset({"from_settings", "supports", "problems"})
_in_call = threading.local()


def contract_operations() -> list[str]:
    """The provider methods recorded as operations: every public method of the contract."""
    return sorted(
        name
        for name, member in {**vars(TemplateMethods), **vars(SandboxProvider)}.items()
        if callable(member) and not name.startswith("_") and name not in UNTIMED
    )


def timed(provider: SandboxProvider) -> SandboxProvider:
    """``provider`` with each contract method's calls recorded in
    ``joepro_provider_call_duration_seconds`` (operation: the method's name; outcome: ``ok``
    or the ``ProviderError`` kind). The same object, so its class, capabilities and own
    methods stay as they are; a contract method called by another one counts only once, as
    the outer call. An iterator's time runs until it is exhausted or closed."""
    for operation in contract_operations():
        setattr(provider, operation, _timed_method(provider, operation))
    return provider


def _timed_method(provider: SandboxProvider, operation: str):
    method = getattr(type(provider), operation)

    @functools.wraps(method)
    def call(*args, **kwargs):
        if getattr(_in_call, "active", False):
            return method(provider, *args, **kwargs)
        began = time.perf_counter()
        _in_call.active = True
        try:
            result = method(provider, *args, **kwargs)
        except BaseException as exc:
            _observe(provider, operation, began, exc)
            raise
        finally:
            _in_call.active = False
        if isinstance(result, Iterator):
            return _timed_iterator(provider, operation, began, result)
        _observe(provider, operation, began, None)
        return result

    return call


def _timed_iterator(provider: SandboxProvider, operation: str, began: float, items: Iterator):
    # The caller's own provider calls between items are calls of their own: nothing marks
    # them as nested here.
    error: BaseException | None = None
    try:
        yield from items
    except GeneratorExit:  # closed early: what was read went fine
        raise
    except BaseException as exc:
        error = exc
        raise
    finally:
        _observe(provider, operation, began, error)


def _observe(provider: SandboxProvider, operation: str, began: float, error: BaseException | None) -> None:
    if error is None:
        outcome = "ok"
    elif isinstance(error, ProviderError):
        outcome = error.kind.value
    else:
        outcome = "error"  # not a provider failure: a bug, or the call was interrupted
    PROVIDER_CALL_DURATION.labels(provider=provider.name, operation=operation, outcome=outcome).observe(
        time.perf_counter() - began
    )


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
