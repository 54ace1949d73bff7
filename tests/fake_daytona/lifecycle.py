"""Sandbox lifecycle: create, start, stop, archive, recover, delete, settings; the test-facing
management (seeding, out-of-band state changes, the backend's own auto-stop)."""

from __future__ import annotations

from typing import Any

from .core import StoreCore
from .records import ERROR_STATES, TRANSITION_TARGET, ApiError, _string_map, not_found, random_token

STARTABLE_STATES = frozenset({"stopped", "archived", "archiving", "paused"})
STOPPABLE_STATES = frozenset({"started", "paused"})


class LifecycleMixin(StoreCore):
    """The sandboxes' lifecycle operations of :class:`~tests.fake_daytona.store.SandboxStore`."""

    # ----- test-facing management -------------------------------------------------------

    def reset(self) -> None:
        """Forget every sandbox and token (and the list lag); shells are the caller's job."""
        with self._lock:
            self._clear()

    def all(self) -> list[dict[str, Any]]:
        with self._lock:
            self._advance_pending()
            return [self._render(sb) for sb in self._by_id.values()]

    def peek(self, id_or_name: str) -> dict[str, Any] | None:
        with self._lock:
            sb = self._find(id_or_name)
            return self._render(sb) if sb else None

    def count(self) -> int:
        with self._lock:
            self._advance_pending()
            return len(self._by_id)

    def add(
        self,
        name: str | None = None,
        labels: dict[str, str] | None = None,
        state: str = "started",
        **fields: Any,
    ) -> dict[str, Any]:
        with self._lock:
            sb = self._insert(name=name, labels=labels, state=state, fields=fields)
            return self._render(sb)

    def add_many(self, count: int, labels: dict[str, str] | None, state: str, name_prefix: str) -> list[str]:
        with self._lock:
            return [
                self._insert(name=f"{name_prefix}{index}", labels=labels, state=state, fields={}).id
                for index in range(count)
            ]

    def set_state(
        self,
        id_or_name: str,
        state: str,
        *,
        error_reason: str | None = None,
        recoverable: bool = False,
        then: str | None = None,
        after: float = 0.0,
        **fields: Any,
    ) -> dict[str, Any] | None:
        with self._lock:
            sb = self._require(id_or_name)
            if state in ERROR_STATES:
                desired = sb.data["desiredState"]
            else:
                desired = TRANSITION_TARGET.get(state, state)
            self._move(sb, state, desired=fields.pop("desiredState", desired))
            if then:
                self._schedule(sb, then, after)
            sb.data["errorReason"] = error_reason if state in ERROR_STATES else None
            sb.data["recoverable"] = bool(recoverable)
            self._apply_fields(sb, fields)
            if state == "destroyed":
                return None
            return self._render(sb)

    def destroy_now(self, id_or_name: str) -> None:
        with self._lock:
            sb = self._require(id_or_name)
            self._move(sb, "destroyed")

    def run_autostop(self) -> list[str]:
        """Stop (or, when ephemeral, delete) started sandboxes idle past their interval."""
        with self._lock:
            self._advance_pending()
            now = self.clock.time()
            acted = []
            for sb in list(self._by_id.values()):
                minutes = sb.data.get("autoStopInterval") or 0
                if sb.state != "started" or sb.data["desiredState"] != "started" or minutes <= 0:
                    continue
                if now - sb.last_activity <= minutes * 60:
                    continue
                if sb.data.get("autoDeleteInterval") == 0:
                    self._begin_delete(sb)
                else:
                    self._begin(sb, "stopping", "stopped")
                acted.append(sb.id)
            return acted

    def touch(self, sandbox_id: str) -> None:
        """Record activity (toolbox or preview traffic)."""
        with self._lock:
            sb = self._by_id.get(sandbox_id)
            if sb is not None:
                sb.last_activity = self.clock.time()

    def is_started(self, sandbox_id: str) -> bool:
        with self._lock:
            sb = self._find_by_id(sandbox_id)
            return sb is not None and sb.state == "started"

    def state_of(self, sandbox_id: str) -> str | None:
        with self._lock:
            sb = self._find_by_id(sandbox_id)
            return sb.state if sb else None

    # ----- API operations ---------------------------------------------------------------

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            labels = _string_map(body.get("labels"), "labels")
            env = _string_map(body.get("env"), "env")
            name = body.get("name")
            if name is not None and (not isinstance(name, str) or not name):
                raise ApiError(400, "name must be a non-empty string")
            fields = _create_fields(body, env)
            initial = "creating" if self.transition_seconds > 0 else "started"
            sb = self._insert(name=name, labels=labels, state=initial, fields=fields)
            if initial == "creating":
                self._schedule(sb, "started", self.transition_seconds)
            return self._render(sb)

    def get(self, id_or_name: str) -> dict[str, Any]:
        with self._lock:
            return self._render(self._require(id_or_name))

    def start(self, id_or_name: str) -> dict[str, Any]:
        with self._lock:
            sb = self._require(id_or_name)
            state, desired = sb.state, sb.data["desiredState"]
            if state == "started" and desired == "started":
                return self._render(sb)
            if state in ERROR_STATES:
                raise ApiError(400, "Sandbox is in an errored state")
            archiving_allowed = state in ("stopped", "archiving") and desired == "archived"
            if state != desired and not archiving_allowed:
                raise ApiError(409, "Sandbox state change in progress")
            if state not in STARTABLE_STATES:
                raise ApiError(400, "Sandbox is not in valid state")
            sb.preview_token = random_token(32)
            transitional = "restoring" if state in ("archived", "archiving") else "starting"
            if state == "paused":
                transitional = "resuming"
            self._begin(sb, transitional, "started")
            return self._render(sb)

    def stop(self, id_or_name: str) -> dict[str, Any]:
        with self._lock:
            sb = self._require(id_or_name)
            if sb.state not in ERROR_STATES and sb.state != sb.data["desiredState"]:
                raise ApiError(409, "Sandbox state change in progress")
            if sb.state not in STOPPABLE_STATES:
                raise ApiError(400, "Sandbox is not in a stoppable state")
            self._begin(sb, "stopping", "stopped")
            return self._render(sb)

    def delete(self, id_or_name: str) -> dict[str, Any]:
        with self._lock:
            sb = self._require(id_or_name)
            in_progress = sb.state not in ERROR_STATES and sb.state != sb.data["desiredState"]
            if in_progress and sb.state != "pending_build":
                raise ApiError(409, "Sandbox state change in progress")
            return self._begin_delete(sb)

    def archive(self, id_or_name: str) -> dict[str, Any]:
        with self._lock:
            sb = self._require(id_or_name)
            if sb.state != "stopped":
                raise ApiError(400, "Sandbox is not stopped")
            self._begin(sb, "archiving", "archived")
            return self._render(sb)

    def recover(self, id_or_name: str) -> dict[str, Any]:
        with self._lock:
            sb = self._require(id_or_name)
            if sb.state not in ERROR_STATES:
                raise ApiError(400, "Sandbox is not in an errored state")
            if not sb.data.get("recoverable"):
                raise ApiError(400, "Sandbox error is not recoverable")
            sb.data["errorReason"] = None
            sb.data["recoverable"] = False
            self._begin(sb, "starting", "started")
            return self._render(sb)

    def set_labels(self, id_or_name: str, body: Any) -> dict[str, Any]:
        with self._lock:
            sb = self._require(id_or_name)
            if not isinstance(body, dict) or "labels" not in body:
                raise ApiError(400, "labels must be an object")
            sb.data["labels"] = _string_map(body["labels"], "labels")
            sb.updated = self.clock.time()
            return {"labels": dict(sb.data["labels"])}

    def set_interval(self, id_or_name: str, field_name: str, raw: str, minimum: int) -> dict[str, Any]:
        with self._lock:
            sb = self._require(id_or_name)
            try:
                value = int(raw)
            except ValueError:
                raise ApiError(400, f"{field_name} must be an integer") from None
            if value < minimum:
                raise ApiError(400, f"{field_name} must be at least {minimum}")
            sb.data[field_name] = value
            sb.updated = self.clock.time()
            return self._render(sb)

    def set_public(self, id_or_name: str, raw: str) -> dict[str, Any]:
        with self._lock:
            sb = self._require(id_or_name)
            if raw not in ("true", "false"):
                raise ApiError(400, "isPublic must be true or false")
            sb.data["public"] = raw == "true"
            sb.updated = self.clock.time()
            return self._render(sb)

    def record_activity(self, sandbox_id: str) -> None:
        with self._lock:
            sb = self._find_by_id(sandbox_id)
            if sb is None:
                raise not_found(sandbox_id)
            sb.last_activity = self.clock.time()


def _create_fields(body: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
    """The create body's settings, translated to stored fields."""
    fields: dict[str, Any] = {"env": env}
    if body.get("snapshot"):
        fields["snapshot"] = body["snapshot"]
    elif body.get("buildInfo"):
        fields["snapshot"] = None
    for key in ("user", "target"):
        if body.get(key):
            fields[key] = str(body[key])
    for key in ("public", "networkBlockAll", "kvm"):
        if key in body and body[key] is not None:
            fields[key] = bool(body[key])
    for key in ("cpu", "gpu", "memory", "disk"):
        if body.get(key) is not None:
            fields[key] = _int_field(body[key], key, minimum=0)
    intervals = (("autoStopInterval", 0), ("autoArchiveInterval", 0), ("autoDeleteInterval", -1))
    for key, minimum in intervals:
        if body.get(key) is not None:
            fields[key] = _int_field(body[key], key, minimum=minimum)
    if isinstance(body.get("volumes"), list):
        fields["volumes"] = body["volumes"]
    return fields


def _int_field(value: Any, name: str, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
        raise ApiError(400, f"{name} must be an integer")
    if value < minimum:
        raise ApiError(400, f"{name} must not be less than {minimum}")
    return int(value)
