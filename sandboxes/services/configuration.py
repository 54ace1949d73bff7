"""What the system checks ask of the providers."""

from __future__ import annotations

from sandboxes.providers import PROVIDER_NAMES, build_provider
from sandboxes.providers.base import Problem

__all__ = ["PROVIDER_NAMES", "provider_problems"]


def provider_problems(name: str) -> list[Problem]:
    """What keeps the provider ``name`` from running sandboxes here (empty when nothing does),
    with the settings as they are now: the checks may run after a setting changed."""
    return build_provider(name).problems()
