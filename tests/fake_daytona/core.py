"""The store's core: one lock over every table, and the state machine the operations share.

Sandboxes move between states through :meth:`StoreCore._move`; a transition that takes time
is a plan of phases (:mod:`.transitions`, durations from :mod:`.timings`) whose steps are
scheduled (``_Pending``) and happen when the fake clock passes their due times, checked
whenever the sandbox is looked at. The state stored is the server's; the API shows it through
:func:`~tests.fake_daytona.transitions.api_state`. The operations are mixins on top of this
class (:mod:`.lifecycle`, :mod:`.listing`, :mod:`.tokens`).
"""

from __future__ import annotations

import copy
import threading
import uuid
from collections.abc import Callable
from typing import Any

from .activity import ActivityTracker
from .builds import BuildCache
from .clock import FakeClock, iso, parse_iso
from .records import (
    DEFAULT_SNAPSHOT,
    ERROR_STATES,
    ORGANIZATION_ID,
    TRANSITION_TARGET,
    ApiError,
    _ListGhost,
    _ListSnapshot,
    _Pending,
    _Sandbox,
    _SignedPreview,
    _SshToken,
    not_found,
    random_token,
)
from .snapshots import SnapshotStore
from .timings import Timings
from .transitions import Phase, Plan, api_state, delete_plan, phase_seconds


class StoreCore:
    """One organisation's tables and the moves between states, under one lock."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.timings = Timings.realistic()
        self.builds = BuildCache()
        self.snapshots = SnapshotStore(clock, self.builds, lambda: self.timings)
        self.base_url = "http://127.0.0.1:0"
        self.ssh_host = "127.0.0.1"
        self.ssh_port = 2222
        self.activity = ActivityTracker(clock.time)
        self.on_leave_started: Callable[[str], None] | None = None
        # Called with an event type and its fields for Daytona's webhooks (see .webhooks).
        self.on_event: Callable[[str, dict[str, Any], float], None] | None = None
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
        self._ghosts: dict[str, _ListGhost] = {}
        self.builds.clear()
        self.snapshots.clear()
        self.activity.reset()

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
        self._announce(
            "sandbox.created",
            {
                "id": sandbox_id,
                "organizationId": ORGANIZATION_ID,
                "state": sb.data["state"],
                "sandboxClass": "container",
                "createdAt": sb.data["createdAt"],
            },
        )
        return sb

    def _apply_fields(self, sb: _Sandbox, fields: dict[str, Any]) -> None:
        fields = dict(fields)
        if "lastActivityAt" in fields:
            sb.last_activity = parse_iso(fields.pop("lastActivityAt"))
            # Read as "idle since then": posts still buffered would flush over it.
            self.activity.discard_unflushed(sb.id)
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
        out["state"] = api_state(sb.data["state"], sb.data["desiredState"])
        out["updatedAt"] = iso(sb.updated)
        out["lastActivityAt"] = iso(self._last_activity_at(sb))
        out["toolboxProxyUrl"] = self.toolbox_url
        return out

    def _last_activity_at(self, sb: _Sandbox) -> float:
        """The ``lastActivityAt`` the API shows (also the listing's default sort key): the
        stored value, raised by the activity posts flushed to it by now (:mod:`.activity`)."""
        if self._by_id.get(sb.id) is sb:
            flushed = self.activity.settle(sb.id)
            if flushed is not None and flushed > sb.last_activity:
                sb.last_activity = flushed
        return sb.last_activity

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
            if sb.id not in self._by_id or _errored_deleted(sb):
                return None
        return sb

    def _find_by_id(self, sandbox_id: str) -> _Sandbox | None:
        sb = self._by_id.get(sandbox_id)
        if sb is not None:
            self._advance(sb)
            if sb.id not in self._by_id or _errored_deleted(sb):
                return None
        return sb

    def _require(self, id_or_name: str) -> _Sandbox:
        sb = self._find(id_or_name)
        if sb is None:
            raise not_found(id_or_name)
        return sb

    def _begin(self, sb: _Sandbox, transitional: str, target: str) -> None:
        """Enter ``transitional`` for as long as the timings say, then ``target``."""
        seconds = phase_seconds(transitional, self.timings)
        self._run_plan(sb, Plan((Phase(transitional, seconds),), target, target))
        self._advance(sb)

    def _run_plan(self, sb: _Sandbox, plan: Plan) -> None:
        """Enter the plan's first phase now and schedule the rest (not advanced here)."""
        now = self.clock.time()
        phases = plan.phases or (Phase(plan.final, 0.0),)
        self._move(sb, phases[0].state, desired=plan.desired)
        steps, due = [], now
        for index, phase in enumerate(phases):
            due += max(0.0, phase.seconds)
            following = phases[index + 1].state if index + 1 < len(phases) else plan.final
            steps.append((following, due))
        if not plan.phases:
            steps = []
        if steps:
            sb.pending = _Pending(steps=steps, desired=plan.desired, error_reason=plan.error_reason)
            self._pending_ids.add(sb.id)

    def _begin_delete(self, sb: _Sandbox) -> dict[str, Any]:
        """Accept a delete: free the name at once and answer the sandbox as it now reads
        (``destroying`` for a started or stopped one; an archived one still ``archived``)."""
        lag = self.timings.delete_list_lag
        if lag > 0 and not _errored_deleted(sb):
            # The listing lags behind a delete (daytonaio/daytona#5138): for a moment it
            # still shows the sandbox as it was, old name and state included.
            self._ghosts[sb.id] = _ListGhost(row=_listing_copy(sb), until=self.clock.time() + lag)
        millis = int(self.clock.time() * 1000)
        self._rename(sb, f"DESTROYED_{sb.data['name']}_{millis}")
        self._run_plan(sb, delete_plan(sb.state, self.timings))
        sb.data["backupState"] = "None"
        answer = self._render(sb)
        self._advance(sb)
        return answer

    def _schedule(self, sb: _Sandbox, target: str, after: float) -> None:
        sb.pending = _Pending(steps=[(target, self.clock.time() + max(0.0, after))])
        self._pending_ids.add(sb.id)

    def _move(self, sb: _Sandbox, state: str, *, desired: str | None = None, at: float | None = None) -> None:
        """Enter ``state`` at ``at`` (default now): a scheduled step taken late is dated when it
        was due, as the hosted service's row would read (``updatedAt``, ``lastActivityAt``)."""
        was_started = sb.state == "started"
        changed = sb.state != state
        old_state = sb.state
        now = self.clock.time() if at is None else min(at, self.clock.time())
        sb.data["state"] = state
        sb.data["desiredState"] = desired or TRANSITION_TARGET.get(state, state)
        sb.pending = None
        self._pending_ids.discard(sb.id)
        sb.updated = max(sb.updated, now)
        if changed:
            # A state change writes lastActivityAt straight to the database (the
            # repository's upsert), past the activity throttle and buffer.
            sb.last_activity = max(sb.last_activity, now)
            self._announce(
                "sandbox.state.updated",
                {
                    "id": sb.id,
                    "organizationId": ORGANIZATION_ID,
                    "oldState": old_state,
                    "newState": state,
                    "updatedAt": iso(now),
                },
            )
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
        """Take every step of the sandbox's transition that is due by now."""
        pending = sb.pending
        now = self.clock.time()
        while pending is not None and pending.steps and now >= pending.due:
            state, due = pending.steps.pop(0)
            self._move(sb, state, desired=pending.desired if state != "destroyed" else None, at=due)
            if sb.id not in self._by_id:
                return
            if pending.steps:
                sb.pending = pending
                self._pending_ids.add(sb.id)
            elif state in ERROR_STATES:
                sb.data["errorReason"] = pending.error_reason
                sb.data["recoverable"] = False

    def _advance_pending(self) -> None:
        for sandbox_id in list(self._pending_ids):
            sb = self._by_id.get(sandbox_id)
            if sb is None:
                self._pending_ids.discard(sandbox_id)
            else:
                self._advance(sb)

    def _announce(self, event: str, fields: dict[str, Any]) -> None:
        if self.on_event is not None:
            self.on_event(event, fields, self.clock.time())

    def _notify_left_started(self, sandbox_id: str) -> None:
        if self.on_leave_started is not None:
            self.on_leave_started(sandbox_id)


def _errored_deleted(sb: _Sandbox) -> bool:
    """Errored sandboxes being deleted answer 404 at once (``findOneByIdOrName``)."""
    return sb.state in ERROR_STATES and sb.data["desiredState"] == "destroyed"


def _listing_copy(sb: _Sandbox) -> _Sandbox:
    """A frozen copy of a sandbox for a listing that lags behind."""
    return _Sandbox(
        data=copy.deepcopy(sb.data),
        seq=sb.seq,
        last_activity=sb.last_activity,
        updated=sb.updated,
        preview_token="",
    )


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
