"""Fault injection: a FIFO queue of scripted misbehaviours per operation."""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any

API_OPERATIONS = (
    "create",
    "get",
    "list",
    "start",
    "stop",
    "delete",
    "recover",
    "archive",
    "set_labels",
    "autostop",
    "autoarchive",
    "autodelete",
    "public",
    "last_activity",
    "ssh_create",
    "ssh_revoke",
    "ssh_validate",
    "preview_url",
    "signed_preview_url",
    "expire_signed_preview_url",
    "toolbox_proxy_url",
    "snapshot_create",
    "snapshot_get",
    "snapshot_list",
    "snapshot_delete",
    "snapshot_activate",
    "snapshot_deactivate",
    "snapshot_build_logs_url",
    "snapshot_build_logs",
    "snapshot_logs",  # the proxy's build-log stream (``status``, ``reset`` and ``slow`` only)
)
PTY_OPERATIONS = ("pty_create", "pty_connect", "pty_resize", "pty_kill", "pty_list", "pty_info")
TOOLBOX_OPERATIONS = ("process_execute",)
OPERATIONS = API_OPERATIONS + PTY_OPERATIONS + TOOLBOX_OPERATIONS
WEBSOCKET_OPERATIONS = ("pty_create", "pty_connect")

# Kinds every HTTP operation understands.
HTTP_KINDS = ("status", "reset", "slow", "commit_then_hang", "commit_then_reset", "bad_shape")
# Kinds a websocket upgrade understands before it is accepted.
UPGRADE_KINDS = ("status", "reset", "slow")
# Kinds that only make sense once a PTY websocket has been upgraded.
WEBSOCKET_KINDS = ("no_connected", "error_frame", "close_no_reason", "slow_consumer", "exit")
# Kinds that let the operation happen and make the transition it starts end in an error
# state (``build_failed`` for an image build, else ``error``), errorReason = the message.
TRANSITION_KINDS = ("ends_in_error",)
TRANSITION_OPERATIONS = ("create", "start", "recover", "snapshot_create")
KINDS = HTTP_KINDS + WEBSOCKET_KINDS + TRANSITION_KINDS

DEFAULT_SECONDS = {"slow": 5.0, "commit_then_hang": 30.0}


@dataclass
class Fault:
    """One scripted misbehaviour.

    ``status`` is the error status for ``status`` faults and the success status to send for
    ``bad_shape``. ``options`` carries kind-specific settings: for ``bad_shape`` any of
    ``drop`` (field name or list of names to remove), ``set`` (fields to overwrite) and
    ``body`` (raw text replacing the body); for ``exit`` the ``exit_code``.
    """

    operation: str
    kind: str
    times: int = 1
    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    message: str | None = None
    seconds: float = 0.0
    options: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        """A JSON-friendly summary."""
        return {
            "operation": self.operation,
            "kind": self.kind,
            "times": self.times,
            "status": self.status,
            "headers": dict(self.headers),
            "message": self.message,
            "seconds": self.seconds,
            "options": dict(self.options),
        }


class FaultBook:
    """Thread-safe per-operation fault queues."""

    def __init__(self) -> None:
        self._queues: dict[str, deque[Fault]] = {}
        self._lock = threading.Lock()

    def add(
        self,
        operation: str,
        kind: str,
        *,
        times: int = 1,
        status: int | None = None,
        headers: dict[str, str] | None = None,
        message: str | None = None,
        seconds: float | None = None,
        **options: Any,
    ) -> Fault:
        """Queue a fault; see ``FakeDaytona.fault`` for the kinds."""
        validate(operation, kind)
        if times < 1:
            raise ValueError("times must be at least 1")
        if kind == "status" and status is None:
            status = 500
        fault = Fault(
            operation=operation,
            kind=kind,
            times=int(times),
            status=int(status) if status is not None else None,
            headers=dict(headers or {}),
            message=message,
            seconds=float(seconds) if seconds is not None else DEFAULT_SECONDS.get(kind, 0.0),
            options=options,
        )
        with self._lock:
            self._queues.setdefault(operation, deque()).append(fault)
        return fault

    def take(self, operation: str) -> Fault | None:
        """The fault to apply to this request, if any (consumes one repetition)."""
        with self._lock:
            queue = self._queues.get(operation)
            if not queue:
                return None
            fault = queue[0]
            fault.times -= 1
            if fault.times <= 0:
                queue.popleft()
            return fault

    def pending(self) -> dict[str, list[dict[str, Any]]]:
        """Faults still queued, by operation."""
        with self._lock:
            return {op: [f.describe() for f in queue] for op, queue in self._queues.items() if queue}

    def clear(self) -> None:
        """Drop every queued fault."""
        with self._lock:
            self._queues.clear()


def validate(operation: str, kind: str) -> None:
    """Reject unknown operations and kinds that cannot apply to the operation."""
    if operation not in OPERATIONS:
        raise ValueError(f"unknown operation {operation!r}; expected one of {', '.join(OPERATIONS)}")
    if kind not in KINDS:
        raise ValueError(f"unknown fault kind {kind!r}; expected one of {', '.join(KINDS)}")
    if kind in WEBSOCKET_KINDS and operation not in WEBSOCKET_OPERATIONS:
        raise ValueError(f"fault kind {kind!r} applies only to {', '.join(WEBSOCKET_OPERATIONS)}")
    if kind in TRANSITION_KINDS and operation not in TRANSITION_OPERATIONS:
        raise ValueError(f"fault kind {kind!r} applies only to {', '.join(TRANSITION_OPERATIONS)}")
    if operation in WEBSOCKET_OPERATIONS and kind not in UPGRADE_KINDS + WEBSOCKET_KINDS:
        raise ValueError(f"fault kind {kind!r} does not apply to a websocket upgrade")
