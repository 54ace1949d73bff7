"""The Daytona emulator's snapshots (``/api/snapshots`` and the proxy's build log), through the
real ``daytona`` SDK and raw HTTP: a build's states and log, get, list, delete, activate, the
server's refusals, and a sandbox created from a snapshot.

From Daytona's open-source server (v0.190.0: ``SnapshotController``, ``SnapshotService``,
``SnapshotManager``, the snapshot access guards, ``SandboxService.createFromSnapshot``, the
runner's ``GetBuildLogs``). The hosted service may have moved on; a failing Dockerfile ending
in ``error`` (not ``build_failed``) follows the runners' asynchronous builds since v0.152.
"""

from __future__ import annotations

import hashlib
import time

import pytest
from daytona import (
    CreateSandboxFromSnapshotParams,
    CreateSnapshotParams,
    DaytonaBadRequestError,
    DaytonaConflictError,
    DaytonaError,
    DaytonaNotFoundError,
    DaytonaServiceUnavailableError,
    Image,
    Resources,
)

from tests.daytona_fixtures import _fetch, sdk  # noqa: F401 - fixtures
from tests.fake_daytona.builds import build_ref
from tests.fake_daytona.fixtures import fake_daytona, fake_daytona_server  # noqa: F401
from tests.fake_daytona.raw import call
from tests.fake_daytona.records import DEFAULT_SNAPSHOT
from tests.fake_daytona.snapshots import INTERNAL_REGISTRY
from tests.fake_daytona.timings import Timings

NODE = Image.base("node:20-bookworm").run_commands("npm i -g pnpm", "pnpm --version")
NODE_DOCKERFILE = "FROM node:20-bookworm\nRUN npm i -g pnpm\nRUN pnpm --version\n"
SIZED = Resources(cpu=2, memory=4, disk=8)
REALISTIC = Timings.realistic()
NODE_DIGEST = hashlib.sha256(b"docker.io/library/node:20-bookworm").hexdigest()  # the fake's stand-in
BROKEN = 'process "/bin/sh -c pnpm --version" did not complete successfully: exit code: 127'


def _params(name: str = "node-dev", image=NODE, **extra) -> CreateSnapshotParams:
    return CreateSnapshotParams(name=name, image=image, resources=SIZED, **extra)


def _post(fake, name: str, dockerfile: str = NODE_DOCKERFILE, **extra):
    body = {"name": name, "buildInfo": {"dockerfileContent": dockerfile, "contextHashes": []}, **extra}
    return call(fake, "POST", "/snapshots", body)


def _lines(logs: list[str]) -> list[str]:
    return [line for chunk in logs for line in chunk.split("\n") if line]


# ----- create -----------------------------------------------------------------------------------


def test_create_with_logs_streams_the_build_and_returns_it_active(fake_daytona, sdk):  # noqa: F811
    fake_daytona.timings = Timings.instant().with_changes(snapshot_queue=0.5, snapshot_build=2.0)
    logs: list[str] = []
    started = time.monotonic()

    snapshot = sdk.snapshot.create(_params(), on_logs=logs.append)

    assert time.monotonic() - started >= 2.5  # waited for the build, polling once a second
    assert _lines(logs) == [
        "Creating snapshot node-dev (SnapshotState.PENDING)",
        "Creating snapshot node-dev (SnapshotState.BUILDING)",
        "#1 [internal] load build definition from Dockerfile",
        "#2 [internal] load metadata for docker.io/library/node:20-bookworm",
        "#3 [internal] load .dockerignore",
        f"#4 [1/3] FROM docker.io/library/node:20-bookworm@sha256:{NODE_DIGEST}",
        "#5 [2/3] RUN npm i -g pnpm",
        "#6 [3/3] RUN pnpm --version",
        "#7 exporting to image",
        "Created snapshot node-dev (SnapshotState.ACTIVE)",
    ]
    assert (snapshot.state, snapshot.cpu, snapshot.mem, snapshot.disk, snapshot.gpu) == ("active", 2, 4, 8, 0)
    ref = build_ref(NODE_DOCKERFILE)
    assert (snapshot.build_info.dockerfile_content, snapshot.build_info.snapshot_ref) == (NODE_DOCKERFILE, ref)
    assert snapshot.ref == f"{INTERNAL_REGISTRY}/{ref}"
    assert (snapshot.image_name, snapshot.entrypoint, snapshot.region_ids) == ("", ["sleep", "infinity"], ["us"])
    assert snapshot.size > 0 and snapshot.last_used_at is not None and snapshot.initial_runner_id
    operations = [request.operation for request in fake_daytona.requests]
    assert operations[:2] == ["snapshot_create", "snapshot_get"]
    assert fake_daytona.calls["snapshot_build_logs_url"] == fake_daytona.calls["snapshot_logs"] == 1
    stream = next(request for request in fake_daytona.requests if request.operation == "snapshot_logs")
    assert stream.path == f"/snapshots/{snapshot.id}/build-logs" and stream.query == {"follow": "true"}


def test_a_build_goes_pending_then_building_then_active_on_the_clock(fake_daytona):  # noqa: F811
    fake_daytona.timings = REALISTIC
    created = _post(fake_daytona, "slow", cpu=2, memory=4, disk=8)

    assert created.status == 200  # @HttpCode(200), not NestJS's 201
    body = created.body
    assert (body["state"], body["size"], body["lastUsedAt"], body["errorReason"]) == ("pending", None, None, None)
    assert "initialRunnerId" not in body and body["ref"].endswith(build_ref(NODE_DOCKERFILE))
    fake_daytona.advance_clock(REALISTIC.snapshot_queue)
    building = call(fake_daytona, "GET", f"/snapshots/{body['id']}").body
    assert building["state"] == "building" and building["initialRunnerId"]
    fake_daytona.advance_clock(REALISTIC.snapshot_build - 1)
    assert call(fake_daytona, "GET", "/snapshots/slow").body["state"] == "building"
    fake_daytona.advance_clock(1)
    active = call(fake_daytona, "GET", "/snapshots/slow").body
    assert (active["state"], active["mem"]) == ("active", 4) and active["lastUsedAt"] and active["size"]
    assert REALISTIC.snapshot_queue + REALISTIC.snapshot_build >= 165  # minutes, as a first build is


def test_the_fixture_builds_at_once_and_the_same_dockerfile_is_not_built_twice(fake_daytona, sdk):  # noqa: F811
    first = sdk.snapshot.create(_params("first"))
    assert first.state == "active" and fake_daytona.calls == {"snapshot_create": 1}  # nothing to poll

    fake_daytona.timings = REALISTIC
    second = _post(fake_daytona, "second").body
    assert second["state"] == "active" and second["size"] == first.size  # the runner has the image
    assert "initialRunnerId" not in second


def test_an_image_name_is_pulled(fake_daytona, sdk):  # noqa: F811
    fake_daytona.timings = REALISTIC
    pulled = call(fake_daytona, "POST", "/snapshots", {"name": "py", "imageName": "python:3.12-slim"}).body
    assert (pulled["state"], pulled["imageName"], pulled["entrypoint"]) == ("pending", "python:3.12-slim", None)
    assert "ref" not in pulled and "buildInfo" not in pulled
    fake_daytona.advance_clock(REALISTIC.snapshot_queue)
    assert fake_daytona.snapshot("py")["state"] == "pulling" and fake_daytona.snapshot("py")["ref"]
    no_log = call(fake_daytona, "GET", f"/snapshots/{pulled['id']}/build-logs-url")
    assert (no_log.status, no_log.body["message"]) == (404, f"Snapshot {pulled['id']} has no build info")
    fake_daytona.advance_clock(REALISTIC.snapshot_pull)
    assert sdk.snapshot.get("py").state == "active"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"name": "my snapshot", "imageName": "ubuntu:22.04"}, "Invalid snapshot name format."),
        ({"name": "ok", "imageName": "ubuntu"}, "Image name must include a tag (e.g., ubuntu:22.04)"),
        ({"name": "ok", "imageName": "ubuntu:latest"}, 'Images with tag ":latest" are not allowed'),
        ({"name": "ok"}, "Must specify an image name when not using a build info entry"),
        ({"name": "<b>x</b>", "imageName": "a:1"}, "name must not contain HTML tags, URLs, or control characters"),
        ({"name": "ok", "imageName": "a:1", "gpu": 2}, "gpu must not be greater than 1"),
        ({"name": "ok", "imageName": "a:1", "regionId": "mars"}, "Region not found"),
        (
            {"name": "ok", "imageName": "a:1", "buildInfo": {"dockerfileContent": "FROM a:1"}},
            "Cannot specify an image name when using a build info entry",
        ),
    ],
)
def test_the_server_refuses_what_it_refuses(fake_daytona, body, message):  # noqa: F811
    answer = call(fake_daytona, "POST", "/snapshots", body)

    assert answer.status == (404 if message == "Region not found" else 400)
    assert answer.body["message"].startswith(message)
    assert [snap["name"] for snap in fake_daytona.snapshots()] == [DEFAULT_SNAPSHOT]


def test_the_sdk_sees_a_bad_name_as_a_bad_request(fake_daytona, sdk):  # noqa: F811
    with pytest.raises(DaytonaBadRequestError, match="Failed to create snapshot: Invalid snapshot name format"):
        sdk.snapshot.create(_params("not ok"))


def test_a_duplicate_name_is_a_conflict(fake_daytona, sdk):  # noqa: F811
    sdk.snapshot.create(_params())

    with pytest.raises(DaytonaConflictError) as raised:
        sdk.snapshot.create(_params(image="python:3.12-slim"))

    assert raised.value.status_code == 409
    assert str(raised.value) == (
        'Failed to create snapshot: Snapshot with name "node-dev" already exists for this organization'
    )


# ----- failing builds ---------------------------------------------------------------------------


def test_a_failing_dockerfile_ends_in_error_with_the_runners_reason(fake_daytona, sdk):  # noqa: F811
    fake_daytona.fail_builds_containing("pnpm --version", BROKEN)

    with pytest.raises(DaytonaError) as raised:
        sdk.snapshot.create(_params("bad"))

    assert str(raised.value) == f"Failed to create snapshot: Failed to create snapshot bad, reason: {BROKEN}"
    assert (fake_daytona.snapshot("bad")["state"], fake_daytona.snapshot("bad")["errorReason"]) == ("error", BROKEN)
    fake_daytona.store.builds.set_failing({})
    sdk.snapshot.delete("bad")
    assert sdk.snapshot.create(_params("bad")).state == "active"  # built again, not cached


def test_a_failed_builds_log_never_ends_so_the_sdk_hangs_up(fake_daytona, sdk):  # noqa: F811
    fake_daytona.timings = Timings.instant().with_changes(snapshot_queue=0.3, snapshot_build=2.0)
    fake_daytona.fail_builds_containing("pnpm --version", BROKEN)
    logs: list[str] = []
    started = time.monotonic()

    with pytest.raises(DaytonaError, match="reason: process"):
        sdk.snapshot.create(_params("bad"), on_logs=logs.append)

    lines = _lines(logs)
    assert lines[-2:] == ["#6 [3/3] RUN pnpm --version", f"ERROR: {BROKEN}"]
    assert "#7 exporting to image" not in lines
    assert time.monotonic() - started >= 4  # two silent 2 s reads after the error, then it hangs up


def test_a_runner_refusing_the_build_is_build_failed(fake_daytona, sdk):  # noqa: F811
    fake_daytona.fault("snapshot_create", "ends_in_error", message="failed to build image: no space left on device")

    with pytest.raises(DaytonaError, match="reason: failed to build image: no space left on device"):
        sdk.snapshot.create(_params("full"))

    assert fake_daytona.snapshot("full")["state"] == "build_failed"


# ----- get, list, delete, activate --------------------------------------------------------------


def test_get_by_name_and_by_id_and_an_unknown_one_is_404(fake_daytona, sdk):  # noqa: F811
    created = sdk.snapshot.create(_params())

    assert sdk.snapshot.get("node-dev").id == created.id
    assert sdk.snapshot.get(created.id).name == "node-dev"
    assert sdk.snapshot.get(DEFAULT_SNAPSHOT).general is True  # a name with a slash, in the path
    with pytest.raises(DaytonaNotFoundError, match="Failed to get snapshot: Snapshot with name nope not found"):
        sdk.snapshot.get("nope")
    other = fake_daytona.add_snapshot("theirs", organizationId="0c8e4d2a-5b1f-4f3e-9d6a-7a2b9c1e0003")
    with pytest.raises(DaytonaNotFoundError, match=f"Snapshot with ID or name {other['id']} not found"):
        sdk.snapshot.get(other["id"])


def test_list_pages_the_last_used_first_and_the_general_ones_last(fake_daytona, sdk):  # noqa: F811
    for name in ("a", "b", "c"):
        sdk.snapshot.create(_params(name, image=Image.base("node:20-bookworm").run_commands(f"echo {name}")))
    fake_daytona.timings = REALISTIC
    _post(fake_daytona, "never-used", "FROM node:22\n")

    first = sdk.snapshot.list(page=1, limit=3)
    second = sdk.snapshot.list(page=2, limit=3)

    assert (first.total, first.page, first.total_pages) == (5, 1, 2)
    assert [snap.name for snap in first.items] == ["c", "b", "a"]
    assert [snap.name for snap in second.items] == ["never-used", DEFAULT_SNAPSHOT]
    assert sdk.snapshot.list(page=3, limit=3).items == []
    by_name = call(fake_daytona, "GET", "/snapshots?sort=name&order=asc&name=E").body  # ILIKE %E%
    assert [snap["name"] for snap in by_name["items"]] == ["never-used"]
    too_many = call(fake_daytona, "GET", "/snapshots?limit=500")
    assert (too_many.status, too_many.body["message"]) == (400, "limit must not be greater than 200")


def test_delete_leaves_it_removing_then_it_is_gone(fake_daytona, sdk):  # noqa: F811
    fake_daytona.timings = REALISTIC
    snapshot_id = fake_daytona.add_snapshot("old")["id"]

    sdk.snapshot.delete("old")

    assert sdk.snapshot.get("old").state == "removing"
    taken = call(fake_daytona, "POST", "/snapshots", {"name": "old", "imageName": "ubuntu:22.04"})
    assert taken.status == 409  # the name is free only once the row is gone
    fake_daytona.advance_clock(REALISTIC.snapshot_remove)
    with pytest.raises(DaytonaNotFoundError, match="Snapshot with name old not found"):
        sdk.snapshot.get("old")
    assert call(fake_daytona, "GET", f"/snapshots/{snapshot_id}").status == 404
    by_name = call(fake_daytona, "DELETE", f"/snapshots/{fake_daytona.add_snapshot('named')['name']}")
    assert (by_name.status, by_name.body["message"]) == (400, "Validation failed (uuid is expected)")


def test_the_general_default_cannot_be_deleted(fake_daytona, sdk):  # noqa: F811
    default_id = sdk.snapshot.get(DEFAULT_SNAPSHOT).id

    with pytest.raises(DaytonaNotFoundError, match=f"Snapshot with ID or name {default_id} not found"):
        sdk.snapshot.delete(DEFAULT_SNAPSHOT)


def test_an_unused_snapshot_is_deactivated_and_activated_again(fake_daytona, sdk):  # noqa: F811
    snapshot = sdk.snapshot.create(_params())
    fake_daytona.advance_clock(15 * 24 * 3600)

    assert sdk.snapshot.get("node-dev").state == "inactive"  # 14 days unused
    with pytest.raises(DaytonaBadRequestError, match="Snapshot node-dev is inactive"):
        sdk.create(CreateSandboxFromSnapshotParams(name="u-42", snapshot="node-dev"), timeout=10)
    assert sdk.snapshot.activate("node-dev").state == "active"  # rebuilt (instantly, here)
    assert call(fake_daytona, "POST", f"/snapshots/{snapshot.id}/deactivate").status == 204
    refused = call(fake_daytona, "POST", f"/snapshots/{snapshot.id}/activate")
    assert refused.body["message"] == "Snapshot deactivation is still in progress. Please try again in a few minutes."
    fake_daytona.advance_clock(600)
    assert sdk.snapshot.activate(snapshot).state == "active"
    again = call(fake_daytona, "POST", f"/snapshots/{snapshot.id}/activate")
    assert (again.status, again.body["message"]) == (400, f"Snapshot {snapshot.id} is already active")


# ----- the build log ----------------------------------------------------------------------------


def test_the_build_log_url_waits_for_a_runner_and_the_log_needs_the_key(fake_daytona):  # noqa: F811
    fake_daytona.timings = REALISTIC.with_changes(hold_limit=0.3)
    snapshot_id = _post(fake_daytona, "slow").body["id"]

    waited = call(fake_daytona, "GET", f"/snapshots/{snapshot_id}/build-logs-url")
    assert (waited.status, waited.body["message"]) == (
        404,
        f"Timeout waiting for build runner assignment for snapshot {snapshot_id}",
    )
    fake_daytona.advance_clock(REALISTIC.snapshot_queue)
    url = call(fake_daytona, "GET", f"/snapshots/{snapshot_id}/build-logs-url").body["url"]
    assert url == f"{fake_daytona.url}/snapshots/{snapshot_id}/build-logs"
    assert _fetch(url)[0] == 401
    status, text = _fetch(url, headers={"Authorization": f"Bearer {fake_daytona.api_key}"})
    assert status == 200 and text.splitlines()[-1].startswith("#4 [1/3] FROM docker.io/library/node:20-bookworm@")
    fake_daytona.advance_clock(REALISTIC.snapshot_build)
    status, text = _fetch(url + "?follow=true", headers={"Authorization": f"Bearer {fake_daytona.api_key}"})
    assert status == 200 and text.splitlines()[-1] == "#7 exporting to image"  # ended: the image exists


# ----- sandboxes from snapshots -----------------------------------------------------------------


def test_a_sandbox_from_the_snapshot_starts_with_its_resources(fake_daytona, sdk):  # noqa: F811
    snapshot = sdk.snapshot.create(_params())

    sandbox = sdk.create(CreateSandboxFromSnapshotParams(name="u-42", snapshot="node-dev"), timeout=10)
    by_id = sdk.create(CreateSandboxFromSnapshotParams(name="u-43", snapshot=snapshot.id), timeout=10)

    assert (sandbox.state, sandbox.snapshot, sandbox.cpu, sandbox.memory, sandbox.disk) == (
        "started",
        "node-dev",
        2,
        4,
        8,
    )
    assert by_id.snapshot == "node-dev"  # the name, whatever the create named it by
    assert "buildInfo" not in fake_daytona.sandbox("u-42") and fake_daytona.calls["create"] == 2


def test_a_sandbox_without_a_snapshot_gets_the_general_default(fake_daytona, sdk):  # noqa: F811
    sandbox = sdk.create(CreateSandboxFromSnapshotParams(name="plain"), timeout=10)

    assert (sandbox.snapshot, sandbox.cpu, sandbox.memory, sandbox.disk) == (DEFAULT_SNAPSHOT, 1, 1, 3)


def test_a_sandbox_from_an_unknown_or_unfinished_snapshot_is_refused(fake_daytona, sdk):  # noqa: F811
    fake_daytona.timings = REALISTIC
    _post(fake_daytona, "slow")
    fake_daytona.add_snapshot("theirs", organizationId="0c8e4d2a-5b1f-4f3e-9d6a-7a2b9c1e0003")
    fake_daytona.add_snapshot("broken", state="error", errorReason=BROKEN)

    def refusal(snapshot: str) -> str:
        with pytest.raises(DaytonaBadRequestError) as raised:
            sdk.create(CreateSandboxFromSnapshotParams(name="u-42", snapshot=snapshot), timeout=10)
        assert raised.value.status_code == 400
        return str(raised.value).removeprefix("Failed to create sandbox: ")

    assert refusal("nope") == "Snapshot nope not found. Did you add it through the Daytona Dashboard?"
    assert refusal("theirs") == "Snapshot theirs not found. Did you add it through the Daytona Dashboard?"
    assert refusal("slow") == "Snapshot slow is pending"
    fake_daytona.advance_clock(REALISTIC.snapshot_queue)
    assert refusal("slow") == "Snapshot slow is building"
    assert refusal("broken") == "Snapshot broken is error"
    assert fake_daytona.sandboxes() == []


# ----- control --------------------------------------------------------------------------------


def test_hooks_seed_list_and_break_snapshots(fake_daytona, sdk):  # noqa: F811
    base = fake_daytona.url
    status, _ = _fetch(f"{base}/__snapshots", {"name": "seeded", "cpu": 4, "mem": 8})
    assert status == 200
    assert sdk.create(CreateSandboxFromSnapshotParams(name="u-42", snapshot="seeded"), timeout=10).cpu == 4
    status, text = _fetch(f"{base}/__snapshots")
    assert status == 200 and "seeded" in text
    assert _fetch(f"{base}/__config", {"failing_builds": {"pnpm": BROKEN}})[0] == 200
    with pytest.raises(DaytonaError, match="reason: process"):
        sdk.snapshot.create(_params("bad"))
    assert _fetch(f"{base}/__faults", {"operation": "snapshot_get", "kind": "status", "status": 503})[0] == 200
    with pytest.raises(DaytonaServiceUnavailableError):
        sdk.snapshot.get("seeded")
