"""The emulator's records: stored sandboxes and tokens, and the refusals the API answers.

Shared by the parts of :class:`~tests.fake_daytona.store.SandboxStore`, with the check of
string maps (labels, env) that several operations make.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any

ORGANIZATION_ID = "9f3b6c1e-0d2a-4c55-8a71-0fa4e5d2c001"
DEFAULT_SNAPSHOT = "daytonaio/sandbox:0.4.3"

# Where a transitional state goes when its time is up.
TRANSITION_TARGET = {
    "creating": "started",
    "unknown": "started",
    "pulling_snapshot": "started",
    "pending_build": "started",
    "building_snapshot": "started",
    "starting": "started",
    "restoring": "started",
    "resuming": "started",
    "resizing": "started",
    "stopping": "stopped",
    "pausing": "paused",
    "archiving": "archived",
    "destroying": "destroyed",
}
ERROR_STATES = frozenset({"error", "build_failed"})


class ApiError(Exception):
    """A refusal the API answers with an error body."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def not_found(id_or_name: str) -> ApiError:
    return ApiError(404, f"Sandbox with ID or name {id_or_name} not found")


def random_token(length: int) -> str:
    """Lowercase hex: URL-safe, without ``-`` or ``_``."""
    return secrets.token_hex((length + 1) // 2)[:length]


@dataclass
class _Pending:
    """A transition under way: the states still to enter, each with the time it is due."""

    steps: list[tuple[str, float]]
    desired: str | None = None  # desiredState kept through the steps (None: each state's own)
    error_reason: str | None = None  # errorReason set when the last step is an error state

    @property
    def target(self) -> str:
        return self.steps[0][0]

    @property
    def due(self) -> float:
        return self.steps[0][1]


@dataclass
class _Sandbox:
    data: dict[str, Any]
    seq: int
    last_activity: float
    updated: float
    preview_token: str
    pending: _Pending | None = None

    @property
    def id(self) -> str:
        return self.data["id"]

    @property
    def state(self) -> str:
        return self.data["state"]


@dataclass
class _SshToken:
    id: str
    token: str
    sandbox_id: str
    created: float
    expires: float


@dataclass
class _SignedPreview:
    token: str
    sandbox_id: str
    port: int
    expires: float
    revoked: bool = False


@dataclass
class PreviewAccess:
    """Outcome of opening a signed preview link."""

    status: int
    message: str
    sandbox_name: str = ""
    port: int = 0


@dataclass
class _ListGhost:
    """How a deleted sandbox keeps appearing in the listing for a moment."""

    row: _Sandbox
    until: float


@dataclass
class _ListSnapshot:
    taken_at: float
    rows: list[_Sandbox] = field(default_factory=list)


def _string_map(value: Any, name: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise ApiError(400, f"{name} must be an object of strings")
    return dict(value)
