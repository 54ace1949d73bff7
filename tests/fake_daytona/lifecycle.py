"""Sandbox lifecycle: create, start, stop, archive, recover, delete, settings; the test-facing
management (seeding, out-of-band state changes, the backend's own auto-stop)."""

from __future__ import annotations

from typing import Any

from .clock import iso
from .core import StoreCore, _errored_deleted
from .records import ERROR_STATES, TRANSITION_TARGET, ApiError, _string_map, not_found, random_token
from .transitions import (
    Plan,
    archive_plan,
    build_plan,
    create_plan,
    is_pending,
    recover_plan,
    start_plan,
    stop_plan,
)

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
            return [self._render(sb) for sb in self._by_id.values() if not _errored_deleted(sb)]

    def peek(self, id_or_name: str) -> dict[str, Any] | None:
        with self._lock:
            sb = self._find(id_or_name)
            return self._render(sb) if sb else None

    def count(self) -> int:
        with self._lock:
            self._advance_pending()
            return sum(1 for sb in self._by_id.values() if not _errored_deleted(sb))

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
        """Stop (or, when ephemeral, delete) started sandboxes idle past their interval.

        Idle is judged on ``lastActivityAt`` as stored (:meth:`_last_activity_at`), as the
        service's job reads the database: posts not flushed yet do not count.
        """
        with self._lock:
            self._advance_pending()
            now = self.clock.time()
            acted = []
            for sb in list(self._by_id.values()):
                minutes = sb.data.get("autoStopInterval") or 0
                if sb.state != "started" or sb.data["desiredState"] != "started" or minutes <= 0:
                    continue
                if now - self._last_activity_at(sb) <= minutes * 60:
                    continue
                if sb.data.get("autoDeleteInterval") == 0:
                    self._begin_delete(sb)
                else:
                    self._begin(sb, "stopping", "stopped")
                acted.append(sb.id)
            return acted

    def is_started(self, sandbox_id: str) -> bool:
        with self._lock:
            sb = self._find_by_id(sandbox_id)
            return sb is not None and sb.state == "started"

    def state_of(self, sandbox_id: str) -> str | None:
        with self._lock:
            sb = self._find_by_id(sandbox_id)
            return sb.state if sb else None

    # ----- API operations ---------------------------------------------------------------

    def create(self, body: dict[str, Any], *, fail_reason: str | None = None) -> dict[str, Any]:
        """Insert a sandbox and answer it as it reads before any wait of the server's.

        With ``buildInfo`` the image is built first (or found built); otherwise the sandbox
        boots from its snapshot. ``fail_reason`` makes the transition end in ``error``
        (``build_failed`` for a build) with that errorReason.
        """
        with self._lock:
            labels = _string_map(body.get("labels"), "labels")
            env = _string_map(body.get("env"), "env")
            name = body.get("name")
            if name is not None and (not isinstance(name, str) or not name):
                raise ApiError(400, "name must be a non-empty string")
            build_info = _build_info(body)
            fields = _create_fields(body, env)
            if build_info is not None:
                if body.get("snapshot"):
                    raise ApiError(400, "Cannot specify a snapshot when using a build info entry")
                plan, fields["buildInfo"] = self._plan_build(build_info, fail_reason)
            else:
                if any(body.get(key) for key in ("cpu", "gpu", "memory", "disk")):
                    raise ApiError(400, "Cannot specify Sandbox resources when using a snapshot")
                # The snapshot (the default one when none is named) must exist and be active;
                # the sandbox takes its name and resources (see .snapshots).
                fields.update(self.snapshots.for_sandbox(body.get("snapshot"), fields.get("target")))
                plan = create_plan(self.timings, fail_reason)
            sb = self._insert(name=name, labels=labels, state=plan.phases[0].state, fields=fields)
            if build_info is None:
                self.snapshots.record_use(sb.data["snapshot"])
            self._run_plan(sb, plan)
            self._advance(sb)
            return self._render(sb)

    def _plan_build(self, build_info: dict[str, Any], fail_reason: str | None) -> tuple[Plan, dict[str, Any]]:
        """The create's phases, after claiming (or joining, or reusing) the image build."""
        now = self.clock.time()
        timings = self.timings
        build, waits = self.builds.claim(
            build_info["dockerfileContent"],
            build_info["contextHashes"],
            now=now,
            takes=timings.build_queue + timings.build,
            fail_reason=fail_reason,
        )
        left = build.ready_at - now if waits else None
        plan = build_plan(timings, build_left=left, error_reason=build.error_reason if waits else None)
        record = {
            "dockerfileContent": build.dockerfile,
            "contextHashes": list(build.context_hashes),
            "createdAt": iso(build.created),
            "updatedAt": iso(now),
            "snapshotRef": build.ref,
        }
        return plan, record

    def watch(self, sandbox_id: str) -> tuple[dict[str, Any] | None, float | None]:
        """The sandbox as the API shows it now (None once it is gone) and the seconds on the
        emulator's clock until its transition's next step (None when none is due)."""
        with self._lock:
            sb = self._find_by_id(sandbox_id)
            if sb is None:
                return None, None
            wait = sb.pending.due - self.clock.time() if sb.pending and sb.pending.steps else None
            return self._render(sb), wait

    def get(self, id_or_name: str) -> dict[str, Any]:
        with self._lock:
            return self._render(self._require(id_or_name))

    def start(self, id_or_name: str, *, fail_reason: str | None = None) -> dict[str, Any]:
        """Accept a start; the answer is before any wait of the server's (an archived
        sandbox answers ``archived`` with desiredState ``started``, then restores)."""
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
            if is_pending(state, desired):
                raise ApiError(409, "Sandbox state change in progress")
            if state != "paused":  # a resume keeps the preview token, a start issues a new one
                sb.preview_token = random_token(32)
            self._run_plan(sb, start_plan(state, self.timings, fail_reason))
            self._advance(sb)
            return self._render(sb)

    def stop(self, id_or_name: str) -> dict[str, Any]:
        """Accept a stop: answered at once (``stopping``). An ephemeral sandbox
        (autoDeleteInterval 0) is deleted instead."""
        with self._lock:
            sb = self._require(id_or_name)
            if sb.state in ERROR_STATES:
                raise ApiError(400, "Sandbox is in an errored state")
            if sb.state != sb.data["desiredState"]:
                raise ApiError(409, "Sandbox state change in progress")
            if sb.state not in STOPPABLE_STATES:
                raise ApiError(400, "Sandbox is not in a stoppable state")
            if sb.data.get("autoDeleteInterval") == 0:
                return self._begin_delete(sb)
            self._run_plan(sb, stop_plan(self.timings))
            self._advance(sb)
            return self._render(sb)

    def delete(self, id_or_name: str) -> dict[str, Any]:
        """Accept a delete (409 while another change is pending, except a pending build)."""
        with self._lock:
            sb = self._require(id_or_name)
            if is_pending(sb.state, sb.data["desiredState"]) and sb.state != "pending_build":
                raise ApiError(409, "Sandbox state change in progress")
            return self._begin_delete(sb)

    def archive(self, id_or_name: str) -> dict[str, Any]:
        with self._lock:
            sb = self._require(id_or_name)
            if sb.state in ERROR_STATES:
                raise ApiError(400, "Sandbox is in an errored state")
            if sb.state != sb.data["desiredState"]:
                raise ApiError(409, "Sandbox state change in progress")
            if sb.state != "stopped":
                raise ApiError(400, "Sandbox is not stopped")
            if sb.data.get("autoDeleteInterval") == 0:
                raise ApiError(400, "Ephemeral sandboxes cannot be archived")
            self._run_plan(sb, archive_plan(self.timings))
            self._advance(sb)
            return self._render(sb)

    def recover(self, id_or_name: str, *, fail_reason: str | None = None) -> dict[str, Any]:
        with self._lock:
            sb = self._require(id_or_name)
            if not sb.data.get("recoverable"):
                raise ApiError(400, "Sandbox is not in a recoverable state")
            if sb.state != "error":
                raise ApiError(400, "Sandbox must be in error state to recover")
            sb.data["errorReason"] = None
            sb.data["recoverable"] = False
            self._run_plan(sb, recover_plan(self.timings, fail_reason))
            self._advance(sb)
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
        """``POST /sandbox/{id}/last-activity``: in any state; throttled and buffered like
        every activity post (:mod:`.activity`)."""
        with self._lock:
            sb = self._find_by_id(sandbox_id)
            if sb is None:
                raise not_found(sandbox_id)
            self.activity.explicit_post(sb.id)


def _build_info(body: dict[str, Any]) -> dict[str, Any] | None:
    """The create body's ``buildInfo``, checked, or None.

    The real server validates only that it is an object; a missing Dockerfile there is not
    refused up front (what it then does is not known), so the emulator refuses it.
    """
    info = body.get("buildInfo")
    if info is None:
        return None
    if not isinstance(info, dict):
        raise ApiError(400, "buildInfo must be an object")
    dockerfile = info.get("dockerfileContent")
    if not isinstance(dockerfile, str) or not dockerfile:
        raise ApiError(400, "buildInfo.dockerfileContent must be a non-empty string")
    hashes = info.get("contextHashes") or []
    if not isinstance(hashes, list) or not all(isinstance(item, str) for item in hashes):
        raise ApiError(400, "each value in contextHashes must be a string")
    return {"dockerfileContent": dockerfile, "contextHashes": hashes}


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
