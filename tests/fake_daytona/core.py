"""The store's core: one lock over every table, and the state machine the operations share.

Sandboxes move between states through :meth:`StoreCore._move`; a transition that takes time
is scheduled (``_Pending``) and completes when the fake clock passes its due time, checked
whenever the sandbox is looked at. The operations are mixins on top of this class
(:mod:`.lifecycle`, :mod:`.listing`, :mod:`.tokens`).
"""

from __future__ import annotations

import copy
import threading
import uuid
from collections.abc import Callable
from typing import Any

from .clock import FakeClock, iso, parse_iso
from .records import (
    DEFAULT_SNAPSHOT,
    ERROR_STATES,
    ORGANIZATION_ID,
    TRANSITION_TARGET,
    ApiError,
    _ListSnapshot,
    _Pending,
    _Sandbox,
    _SignedPreview,
    _SshToken,
    not_found,
    random_token,
)


class StoreCore:
    """One organisation's tables and the moves between states, under one lock."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.transition_seconds = 0.0
        self.base_url = "http://127.0.0.1:0"
        self.ssh_host = "127.0.0.1"
        self.ssh_port = 2222
        self.preview_counts_as_activity = True
        self.on_leave_started: Callable[[str], None] | None = None
        self._lock = threading.RLock()
        self._clear()

    def _clear(self) -> None:
        self._by_id: dict[str, _Sandbox] = {}
        self._by_name: dict[str, str] = {}
        self._pending_ids: set[str] = set()
        self._ssh: dict[str, _SshToken] = {}
        self._signed: dict[str, _SignedPreview] = {}
        self._seq = 0
        self._list_lag = 0.0
        self._snapshot: _ListSnapshot | None = None

    @property
    def toolbox_url(self) -> str:
        return f"{self.base_url}/toolbox"

    # ----- internals --------------------------------------------------------------------

    def _insert(
        self,
        *,
        name: str | None,
        labels: dict[str, str] | None,
        state: str,
        fields: dict[str, Any],
    ) -> _Sandbox:
        sandbox_id = fields.pop("id", None) or str(uuid.uuid4())
        name = name or sandbox_id
        if name in self._by_name:
            raise ApiError(409, f"Sandbox with name {name} already exists")
        if sandbox_id in self._by_id:
            raise ApiError(409, f"Sandbox with ID {sandbox_id} already exists")
        now = self.clock.time()
        self._seq += 1
        sb = _Sandbox(
            data=_default_data(sandbox_id, name, labels or {}, state, now),
            seq=self._seq,
            last_activity=now,
            updated=now,
            preview_token=random_token(32),
        )
        self._apply_fields(sb, fields)
        self._by_id[sandbox_id] = sb
        self._by_name[name] = sandbox_id
        return sb

    def _apply_fields(self, sb: _Sandbox, fields: dict[str, Any]) -> None:
        fields = dict(fields)
        if "lastActivityAt" in fields:
            sb.last_activity = parse_iso(fields.pop("lastActivityAt"))
        if "updatedAt" in fields:
            sb.updated = parse_iso(fields.pop("updatedAt"))
        if "name" in fields:
            self._rename(sb, fields.pop("name"))
        fields.pop("toolboxProxyUrl", None)
        sb.data.update(fields)

    def _rename(self, sb: _Sandbox, new_name: str) -> None:
        if self._by_name.get(sb.data["name"]) == sb.id:
            del self._by_name[sb.data["name"]]
        sb.data["name"] = new_name
        self._by_name[new_name] = sb.id

    def _render(self, sb: _Sandbox) -> dict[str, Any]:
        out = copy.deepcopy(sb.data)
        out["updatedAt"] = iso(sb.updated)
        out["lastActivityAt"] = iso(sb.last_activity)
        out["toolboxProxyUrl"] = self.toolbox_url
        return out

    def _revoke_ssh(self, sandbox_id: str, token: str | None) -> None:
        doomed = [
            t.token for t in self._ssh.values() if t.sandbox_id == sandbox_id and (token is None or t.token == token)
        ]
        for value in doomed:
            del self._ssh[value]

    def _find(self, id_or_name: str) -> _Sandbox | None:
        sb = self._by_id.get(id_or_name)
        if sb is None:
            sandbox_id = self._by_name.get(id_or_name)
            sb = self._by_id.get(sandbox_id) if sandbox_id else None
        if sb is not None:
            self._advance(sb)
            if sb.id not in self._by_id:
                return None
        return sb

    def _find_by_id(self, sandbox_id: str) -> _Sandbox | None:
        sb = self._by_id.get(sandbox_id)
        if sb is not None:
            self._advance(sb)
            if sb.id not in self._by_id:
                return None
        return sb

    def _require(self, id_or_name: str) -> _Sandbox:
        sb = self._find(id_or_name)
        if sb is None:
            raise not_found(id_or_name)
        return sb

    def _begin(self, sb: _Sandbox, transitional: str, target: str) -> None:
        """Enter a transition; with no transition time it completes at once."""
        if self.transition_seconds <= 0:
            self._move(sb, target)
            return
        self._move(sb, transitional, desired=target)
        self._schedule(sb, target, self.transition_seconds)

    def _begin_delete(self, sb: _Sandbox) -> dict[str, Any]:
        """Accept a delete: free the name at once, answer ``destroying``."""
        millis = int(self.clock.time() * 1000)
        self._rename(sb, f"DESTROYED_{sb.data['name']}_{millis}")
        self._move(sb, "destroying", desired="destroyed")
        answer = self._render(sb)
        self._schedule(sb, "destroyed", self.transition_seconds)
        self._advance(sb)
        return answer

    def _schedule(self, sb: _Sandbox, target: str, after: float) -> None:
        sb.pending = _Pending(target=target, due=self.clock.time() + max(0.0, after))
        self._pending_ids.add(sb.id)

    def _move(self, sb: _Sandbox, state: str, *, desired: str | None = None) -> None:
        was_started = sb.state == "started"
        now = self.clock.time()
        sb.data["state"] = state
        sb.data["desiredState"] = desired or TRANSITION_TARGET.get(state, state)
        sb.pending = None
        self._pending_ids.discard(sb.id)
        sb.updated = now
        sb.last_activity = now
        if state == "destroyed":
            self._forget(sb)
        if was_started and state != "started":
            self._notify_left_started(sb.id)

    def _forget(self, sb: _Sandbox) -> None:
        self._by_id.pop(sb.id, None)
        if self._by_name.get(sb.data["name"]) == sb.id:
            del self._by_name[sb.data["name"]]
        self._revoke_ssh(sb.id, None)
        for token in [t for t, s in self._signed.items() if s.sandbox_id == sb.id]:
            del self._signed[token]

    def _advance(self, sb: _Sandbox) -> None:
        pending = sb.pending
        if pending is not None and self.clock.time() >= pending.due:
            self._move(sb, pending.target)

    def _advance_pending(self) -> None:
        for sandbox_id in list(self._pending_ids):
            sb = self._by_id.get(sandbox_id)
            if sb is None:
                self._pending_ids.discard(sandbox_id)
            else:
                self._advance(sb)

    def _notify_left_started(self, sandbox_id: str) -> None:
        if self.on_leave_started is not None:
            self.on_leave_started(sandbox_id)


def _default_data(sandbox_id: str, name: str, labels: dict[str, str], state: str, now: float) -> dict[str, Any]:
    desired = TRANSITION_TARGET.get(state, "started" if state in ERROR_STATES else state)
    return {
        "id": sandbox_id,
        "organizationId": ORGANIZATION_ID,
        "name": name,
        "snapshot": DEFAULT_SNAPSHOT,
        "user": "daytona",
        "env": {},
        "labels": dict(labels),
        "public": False,
        "networkBlockAll": False,
        "kvm": False,
        "target": "us",
        "cpu": 1,
        "gpu": 0,
        "memory": 1,
        "disk": 3,
        "state": state,
        "desiredState": desired,
        "errorReason": None,
        "recoverable": False,
        "backupState": "None",
        "autoStopInterval": 15,
        "autoArchiveInterval": 10080,
        "autoDeleteInterval": -1,
        "volumes": [],
        "createdAt": iso(now),
    }
