"""Daytona's snapshots as the emulated organisation keeps them, and what a sandbox create from
``snapshot=<name>`` is checked against. The HTTP side is :mod:`.snapshot_api`.

From Daytona's open-source server (v0.190.0): ``SnapshotController`` and ``SnapshotService``
(validation, the 409, paging), ``SnapshotManager`` (the states), the snapshot access guards
(the 404s), ``SandboxService.createFromSnapshot`` (the 400s a sandbox create answers) and the
runner's ``BuildSnapshot`` and ``GetBuildLogs`` (the build and its log).

A new snapshot is ``pending`` until the manager gives it a runner, then ``building`` (a
Dockerfile, ``buildInfo``) or ``pulling`` (an ``imageName``), then ``active``; a Dockerfile
already built for an active snapshot makes the new one ``active`` at once. Runners build in the
background since v0.152, so a Dockerfile that fails to build (one containing a text of
``BuildCache.failing``) ends in ``error`` with the runner's reason; ``build_failed`` is what the
API sets when the runner refuses the build request itself (here an ``ends_in_error`` fault on
``snapshot_create``). A delete makes the snapshot ``removing`` until the cleanup job drops it,
and its name stays taken until then; an active snapshot unused for 14 days turns ``inactive``
and must be activated again (a new build). Durations are the ``snapshot_*`` fields of
:class:`~.timings.Timings`, on the emulator's clock. What a request may hold is checked in
:mod:`.snapshot_requests`; the build log a build writes is :mod:`.snapshot_builds`.
"""

from __future__ import annotations

import copy
import hashlib
import math
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .builds import BuildCache, build_ref
from .clock import FakeClock, iso
from .records import DEFAULT_SNAPSHOT, ORGANIZATION_ID, ApiError
from .snapshot_builds import EMPTY_DOCKERFILE_ERROR, BuildLogs, build_log, image_size, instructions
from .snapshot_requests import (
    DEFAULT_REGION,
    REGIONS,
    UNEXPECTED,
    UUID,
    CreateRequest,
    list_query,
    read_create,
    require_uuid,
)
from .timings import Timings

# Where runners push what they build or pull (``<registry url>/<project>``). The hosted name
# is not public; this has the form of the example in the runner's ``GetBuildLogFilePath``.
INTERNAL_REGISTRY = "cr.app.daytona.io/sbox/daytona"
RUNNER_ID = "5d0c6f0e-8d7b-4c1f-9a52-2b7e3c41a9d0"  # the runner every build and pull is given
ADMIN_ORGANIZATION_ID = "2c4f1d9a-7e3b-4a60-b8d5-61c0e9f7a002"  # owns the general snapshots
DEFAULT_PULL_ERROR = "Failed to pull snapshot"
DEACTIVATE_AFTER_SECONDS = 14 * 24 * 3600.0  # DEFAULT_SNAPSHOT_DEACTIVATION_TIMEOUT_MINUTES
ACTIVATION_COOLDOWN_SECONDS = 10 * 60.0
LAST_USED_EVERY_SECONDS = 60.0  # a sandbox create marks its snapshot used at most once a minute
STATE_ORDER = ("building", "pending", "pulling", "active", "inactive", "error", "build_failed", "removing")
GONE = "gone"  # the step that deletes the row


@dataclass
class _Step:
    state: str  # the state entered when due, or GONE
    due: float
    error_reason: str | None = None


@dataclass
class _Snapshot:
    data: dict[str, Any]  # the SnapshotDto fields but the dates
    created: float
    updated: float
    last_used: float | None = None
    size: float | None = None  # what the runner reports once built or pulled
    steps: list[_Step] = field(default_factory=list)
    built_at: float | None = None  # when its image exists on the runner (a followed log ends)

    @property
    def id(self) -> str:
        return self.data["id"]

    @property
    def name(self) -> str:
        return self.data["name"]

    @property
    def state(self) -> str:
        return self.data["state"]

    @property
    def ours(self) -> bool:
        return self.data["organizationId"] == ORGANIZATION_ID

    @property
    def general(self) -> bool:
        return bool(self.data["general"])


class SnapshotStore:
    """The organisation's snapshots and the general ones every organisation sees; thread-safe.

    Results are dicts in the API's camelCase shape; refusals raise ``ApiError`` with the
    server's status and message. A sandbox create (under the sandbox store's lock) calls in
    here; nothing here calls out, so the two locks never wait on each other.
    """

    def __init__(self, clock: FakeClock, builds: BuildCache, timings: Callable[[], Timings]) -> None:
        self.clock = clock
        self.builds = builds
        self._timings = timings
        self._lock = threading.RLock()
        self.clear()

    def clear(self) -> None:
        """Forget every snapshot, build record and build log; the general default snapshot
        (``DEFAULT_SNAPSHOT``, what a sandbox create without a snapshot uses) is back."""
        with self._lock:
            self._by_id: dict[str, _Snapshot] = {}
            self._build_infos: dict[str, dict[str, Any]] = {}
            self._logs = BuildLogs()
            self.add(
                DEFAULT_SNAPSHOT,
                imageName=DEFAULT_SNAPSHOT,
                general=True,
                organizationId=ADMIN_ORGANIZATION_ID,
                regionIds=list(REGIONS),
            )

    # ----- test-facing ----------------------------------------------------------------------

    def add(self, name: str, state: str = "active", **fields: Any) -> dict[str, Any]:
        """Seed a snapshot pulled from ``imageName`` (default ``ubuntu:22.04``) with camelCase
        overrides (``cpu``, ``mem``, ``disk``, ``errorReason``, ``organizationId``,
        ``general``...). A transitional state set here never ends."""
        with self._lock:
            organization = fields.get("organizationId", ORGANIZATION_ID)
            if self._named(name, organization) is not None:
                raise ApiError(409, f'Snapshot with name "{name}" already exists for this organization')
            now = self.clock.time()
            image = fields.pop("imageName", "ubuntu:22.04")
            seeded = CreateRequest(name, image, None, [], None, DEFAULT_REGION, "container", {})
            snap = _Snapshot(data=_new_data(seeded), created=now, updated=now)
            snap.data.update(state=state, ref=_pulled_ref(image), initialRunnerId=RUNNER_ID, size=1.0)
            snap.data.update(fields)
            snap.size = snap.data["size"]
            snap.last_used = now if state == "active" else None
            self._by_id[snap.id] = snap
            return self._render(snap)

    def all(self) -> list[dict[str, Any]]:
        with self._lock:
            return [self._render(snap) for snap in self._live()]

    def peek(self, id_or_name: str) -> dict[str, Any] | None:
        """A snapshot by id, or by name (the organisation's, else a general one), or None."""
        with self._lock:
            snap = self._find_id(id_or_name) or self._by_name(id_or_name)
            return self._render(snap) if snap else None

    # ----- API operations -------------------------------------------------------------------

    def create(self, body: Any, *, refused: str | None = None) -> dict[str, Any]:
        """``POST /snapshots``: the snapshot as inserted, its build or pull scheduled.

        ``refused`` (a scripted fault) makes the runner refuse the work at once: the build
        ends in ``build_failed``, a pull in ``error``, with that reason (no build log).
        """
        request = read_create(body)
        with self._lock:
            now = self.clock.time()
            snap = _Snapshot(data=_new_data(request), created=now, updated=now)
            if request.dockerfile is not None:
                record = self._build_info(request.dockerfile, request.context_hashes, now)
                snap.data.update(buildInfo=record, ref=f"{INTERNAL_REGISTRY}/{record['snapshotRef']}")
            name = request.name
            if self._named(name, ORGANIZATION_ID) is not None:
                raise ApiError(409, f'Snapshot with name "{name}" already exists for this organization')
            built = self._built_elsewhere(snap) if request.dockerfile is not None and refused is None else None
            if built is not None:
                snap.data.update(state="active", size=built.size)
                snap.size, snap.last_used = built.size, now
            else:
                self._schedule(snap, now, refused)
            self._by_id[snap.id] = snap
            self._advance(snap)
            return self._render(snap)

    def get(self, id_or_name: str) -> dict[str, Any]:
        with self._lock:
            return self._render(self._guarded(id_or_name, read=True))

    def list_page(self, query: Mapping[str, str]) -> dict[str, Any]:
        """``GET /snapshots``: the organisation's snapshots, then the general ones, each group
        by ``sort`` (default ``lastUsedAt``, never-used last) and ``order`` (default ``desc``),
        ties newest first; ``page`` from 1, ``limit`` 1..200 (default 100)."""
        page, limit, sort, order = list_query(query)
        with self._lock:
            rows = [snap for snap in self._live() if snap.ours or snap.general]
            if query.get("name"):
                rows = [snap for snap in rows if query["name"].lower() in snap.name.lower()]
            if query.get("sourceSandboxId") is not None:
                rows = [snap for snap in rows if snap.data["sourceSandboxId"] == query["sourceSandboxId"]]
            if sort != "createdAt":
                rows.sort(key=lambda snap: snap.created, reverse=True)
            valued = [snap for snap in rows if _sort_value(snap, sort) is not None]
            valued.sort(key=lambda snap: _sort_value(snap, sort), reverse=order == "desc")
            rows = valued + [snap for snap in rows if _sort_value(snap, sort) is None]  # NULLS LAST
            rows.sort(key=lambda snap: snap.general)
            items = rows[(page - 1) * limit : page * limit]
            return {
                "items": [self._render(snap) for snap in items],
                "total": len(rows),
                "page": page,
                "totalPages": math.ceil(len(rows) / limit),
            }

    def remove(self, snapshot_id: str) -> None:
        """``DELETE /snapshots/{id}``: ``removing`` now, gone after the cleanup job's pass."""
        with self._lock:
            snap = self._guarded(snapshot_id, read=False)
            require_uuid(snapshot_id)
            if snap.state != "removing":
                self._enter(snap, "removing", self.clock.time())
                snap.steps = [_Step(GONE, self.clock.time() + self._timings().snapshot_remove)]
            self._advance(snap)

    def deactivate(self, snapshot_id: str) -> None:
        with self._lock:
            snap = self._guarded(snapshot_id, read=False)
            require_uuid(snapshot_id)
            if snap.state != "inactive":
                snap.steps = []  # the manager leaves inactive snapshots alone
                self._enter(snap, "inactive", self.clock.time())

    def activate(self, snapshot_id: str) -> dict[str, Any]:
        """``POST /snapshots/{id}/activate``: an inactive snapshot goes through its build or
        pull again; anything else is refused, as is one deactivated under 10 minutes ago."""
        with self._lock:
            snap = self._guarded(snapshot_id, read=False)
            require_uuid(snapshot_id)
            if snap.state == "active":
                raise ApiError(400, f"Snapshot {snapshot_id} is already active")
            if snap.state != "inactive":
                raise ApiError(400, f"Snapshot {snapshot_id} cannot be activated - it is in {snap.state} state")
            now = self.clock.time()
            if now - snap.updated < ACTIVATION_COOLDOWN_SECONDS:
                raise ApiError(400, "Snapshot deactivation is still in progress. Please try again in a few minutes.")
            self._enter(snap, "pending", now)
            self._schedule(snap, now, None)
            self._advance(snap)
            return self._render(snap)

    def runner_wait(self, snapshot_id: str) -> float | None:
        """For ``build-logs-url`` and ``build-logs``: None once the snapshot's build has a
        runner, else the seconds (emulator's clock) until it may have one."""
        with self._lock:
            snap = self._controller_lookup(snapshot_id)
            if snap.data.get("initialRunnerId"):
                return None
            return snap.steps[0].due - self.clock.time() if snap.steps else math.inf

    def is_active(self, snapshot_id: str) -> bool:
        with self._lock:
            return self._controller_lookup(snapshot_id).state == "active"

    def log_source(self, id_or_name: str) -> tuple[str, str]:
        """The proxy's checks before it streams a build log: the snapshot's id and the ref
        of the build whose log the runner has (400/404 otherwise)."""
        with self._lock:
            snap = self._guarded(id_or_name, read=True)
            if not snap.data.get("ref"):
                raise ApiError(400, "snapshot has no snapshot reference")
            if not snap.data.get("initialRunnerId"):
                raise ApiError(400, "snapshot has no initial runner")
            build = snap.data.get("buildInfo")
            ref = build["snapshotRef"] if build else snap.data["ref"]
            if not self._logs.exists(ref, self.clock.time()):
                raise ApiError(404, f"build logs not found for ref: {snap.data['ref']}")
            return snap.id, ref

    def log_progress(self, snapshot_id: str, ref: str, sent: int) -> tuple[list[str], bool, float]:
        """The log's lines written since the first ``sent``, whether its image now exists
        (a followed log then ends; it never does for a failed build, unless the snapshot is
        gone), and the seconds until the next line."""
        with self._lock:
            now = self.clock.time()
            lines, next_line_in = self._logs.written(ref, now, sent)
            snap = self._find_id(snapshot_id)
            finished = snap is None or (snap.built_at is not None and snap.built_at <= now)
            return lines, finished, next_line_in

    # ----- a sandbox create ---------------------------------------------------------------------

    def for_sandbox(self, requested: Any, target: str | None) -> dict[str, Any]:
        """What a sandbox create from ``requested`` (a name or id; the default snapshot when
        empty) takes from it: its name and resources. Raises the server's 400s."""
        if requested is not None and not isinstance(requested, str):
            raise ApiError(400, "snapshot must be a string")
        wanted = (requested or "").strip() or DEFAULT_SNAPSHOT
        with self._lock:
            by_id = UUID.fullmatch(wanted) is not None
            found = [
                snap
                for snap in self._live()
                if (snap.ours or snap.general) and (snap.name == wanted or (by_id and snap.id == wanted))
            ]
            if not found:
                raise ApiError(400, f"Snapshot {wanted} not found. Did you add it through the Daytona Dashboard?")
            snap = next((candidate for candidate in found if candidate.state == "active"), found[0])
            region = target or DEFAULT_REGION
            if not snap.general and region not in snap.data["regionIds"]:
                raise ApiError(400, f"Snapshot {wanted} is not available in region {region}")
            if snap.state != "active":
                raise ApiError(400, f"Snapshot {wanted} is {snap.state}")
            if not snap.data.get("ref"):
                raise ApiError(400, "Snapshot ref is not defined")
            data = snap.data
            return {
                "snapshot": snap.name,
                "cpu": data["cpu"],
                "gpu": data["gpu"],
                "memory": data["mem"],
                "disk": data["disk"],
            }

    def record_use(self, name: str) -> None:
        """A sandbox was created from the snapshot ``name``: its ``lastUsedAt`` moves (at most
        once a minute), which keeps it from being deactivated."""
        with self._lock:
            snap = self._by_name(name)
            now = self.clock.time()
            if snap is not None and (snap.last_used is None or now - snap.last_used >= LAST_USED_EVERY_SECONDS):
                snap.last_used = snap.updated = now

    # ----- internals ----------------------------------------------------------------------------

    def _schedule(self, snap: _Snapshot, now: float, refused: str | None) -> None:
        """The steps from ``pending``: a runner is picked, then the build or pull runs."""
        timings = self._timings()
        picked = now + timings.snapshot_queue
        build = snap.data.get("buildInfo")
        snap.built_at = None
        if build is None:
            if refused is not None:
                snap.steps = [_Step("pulling", picked), _Step("error", picked, refused)]
            else:
                snap.size = 0.8
                snap.steps = [_Step("pulling", picked), _Step("active", picked + timings.snapshot_pull)]
            return
        if refused is not None:
            snap.steps = [_Step("building", picked), _Step("build_failed", picked, refused)]
            return
        dockerfile = build["dockerfileContent"]
        failure = self.builds.failing_match(dockerfile)
        if not instructions(dockerfile):
            failure = ("", EMPTY_DOCKERFILE_ERROR)
        lines, ends_at, steps = build_log(dockerfile, failure)
        seconds = timings.snapshot_build
        self._logs.append(build["snapshotRef"], ((picked + fraction * seconds, text) for fraction, text in lines))
        done = picked + ends_at * seconds
        if failure is not None:
            snap.steps = [_Step("building", picked), _Step("error", done, failure[1])]
        else:
            snap.size = image_size(steps)
            snap.steps = [_Step("building", picked), _Step("active", done)]
            snap.built_at = done

    def _enter(self, snap: _Snapshot, state: str, at: float, error_reason: str | None = None) -> None:
        snap.data["state"] = state
        snap.updated = max(snap.updated, at)
        if state in ("building", "pulling"):
            snap.data["initialRunnerId"] = RUNNER_ID
            snap.data["ref"] = snap.data.get("ref") or _pulled_ref(snap.data["imageName"])
        elif state == "active":
            snap.last_used = at
            snap.data["size"] = snap.size
        if error_reason is not None:
            snap.data["errorReason"] = error_reason

    def _advance(self, snap: _Snapshot) -> bool:
        """Take the snapshot's due steps (and the deactivation of an unused one); False once
        it is gone."""
        now = self.clock.time()
        while snap.steps and snap.steps[0].due <= now:
            step = snap.steps.pop(0)
            if step.state == GONE:
                self._by_id.pop(snap.id, None)
                return False
            self._enter(snap, step.state, step.due, step.error_reason)
        if snap.state == "active" and not snap.general:
            idle_since = snap.last_used if snap.last_used is not None else snap.created
            if now - idle_since > DEACTIVATE_AFTER_SECONDS:
                self._enter(snap, "inactive", idle_since + DEACTIVATE_AFTER_SECONDS)
        return True

    def _live(self) -> list[_Snapshot]:
        return [snap for snap in list(self._by_id.values()) if self._advance(snap)]

    def _find_id(self, snapshot_id: str) -> _Snapshot | None:
        snap = self._by_id.get(snapshot_id)
        return snap if snap is not None and self._advance(snap) else None

    def _named(self, name: str, organization: str | None) -> _Snapshot | None:
        return next((s for s in self._live() if s.name == name and s.data["organizationId"] == organization), None)

    def _by_name(self, name: str) -> _Snapshot | None:
        """``getSnapshotByName``: the organisation's snapshot of that name, else a general one."""
        return self._named(name, ORGANIZATION_ID) or next(
            (snap for snap in self._live() if snap.name == name and snap.general), None
        )

    def _guarded(self, key: str, *, read: bool) -> _Snapshot:
        """The snapshot access guards: by id (any organisation's), else by name; another
        organisation's answers 404 (a general one may be read, not changed)."""
        snap = self._find_id(key)
        if snap is None:
            snap = self._by_name(key)
            if snap is None:
                raise ApiError(404, f"Snapshot with name {key} not found")
        if not snap.ours and not (read and snap.general):
            raise ApiError(404, f"Snapshot with ID or name {key} not found")
        return snap

    def _controller_lookup(self, key: str) -> _Snapshot:
        """The guard, then ``getSnapshot`` by id only, as the build-log endpoints do: a name
        fails the uuid column's parse (500); then the snapshot must have a build."""
        self._guarded(key, read=False)
        if not UUID.fullmatch(key):
            raise ApiError(500, UNEXPECTED)
        snap = self._find_id(key)
        if snap is None:
            raise ApiError(404, f"Snapshot {key} not found")
        if not snap.data.get("buildInfo"):
            raise ApiError(404, f"Snapshot {key} has no build info")
        return snap

    def _build_info(self, dockerfile: str, hashes: list[str], now: float) -> dict[str, Any]:
        """The build record for the Dockerfile, shared by every snapshot of the same text."""
        ref = build_ref(dockerfile, hashes)
        record = self._build_infos.get(ref)
        if record is None:
            record = {
                "dockerfileContent": dockerfile,
                "contextHashes": hashes,
                "createdAt": iso(now),
                "updatedAt": iso(now),
                "snapshotRef": ref,
            }
            self._build_infos[ref] = record
        return copy.deepcopy(record)

    def _built_elsewhere(self, snap: _Snapshot) -> _Snapshot | None:
        """An active snapshot whose image (the same ref) is ready on a runner of the region."""
        region = snap.data["regionIds"][0]
        return next(
            (
                other
                for other in self._live()
                if other.data.get("ref") == snap.data["ref"]
                and other.state == "active"
                and other.size is not None
                and region in other.data["regionIds"]
            ),
            None,
        )

    def _render(self, snap: _Snapshot) -> dict[str, Any]:
        out = copy.deepcopy(snap.data)
        out["createdAt"], out["updatedAt"] = iso(snap.created), iso(snap.updated)
        out["lastUsedAt"] = iso(snap.last_used) if snap.last_used is not None else None
        return out


# ----- rows ---------------------------------------------------------------------------------


def _new_data(request: CreateRequest) -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "organizationId": ORGANIZATION_ID,
        "general": False,
        "name": request.name,
        "imageName": request.image,
        "state": "pending",
        "size": None,
        "entrypoint": request.entrypoint,
        "cpu": request.resources.get("cpu", 1),
        "gpu": request.resources.get("gpu", 0),
        "mem": request.resources.get("mem", 1),
        "disk": request.resources.get("disk", 3),
        "errorReason": None,
        "regionIds": [request.region],
        "sourceSandboxId": None,
        "sandboxClass": request.sandbox_class,
    }


def _pulled_ref(image: str) -> str:
    """The internal registry's name for a pulled image (``daytona-<digest>:daytona``)."""
    return f"{INTERNAL_REGISTRY}/daytona-{hashlib.sha256(image.encode()).hexdigest()}:daytona"


def _sort_value(snap: _Snapshot, sort: str) -> Any:
    if sort == "name":
        return snap.name
    if sort == "state":
        return STATE_ORDER.index(snap.state) if snap.state in STATE_ORDER else len(STATE_ORDER)
    if sort == "lastUsedAt":
        return snap.last_used
    return snap.created
