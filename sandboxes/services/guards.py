"""Checks another app makes before a sandbox is created or started (the usage app's budgets),
registered at start-up so that the launch does not import the apps that meter it."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from sandboxes.models import Sandbox

StartGuard = Callable[[Sandbox, object, datetime], None]

_start_guards: list[StartGuard] = []


def register_start_guard(guard: StartGuard) -> None:
    """Have ``guard(sandbox, user, now)`` called before every create or start by a launch; it
    refuses by raising ``SandboxError``. Registered once per process (an app's ``ready``)."""
    if guard not in _start_guards:
        _start_guards.append(guard)


def check_start(sandbox: Sandbox, user, now: datetime) -> None:
    for guard in _start_guards:
        guard(sandbox, user, now)
