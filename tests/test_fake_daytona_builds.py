"""The Daytona emulator's creates with ``buildInfo`` (``CreateSandboxFromImageParams``), through
the real ``daytona`` SDK and raw HTTP: answered at once, the build's phases, the cache keyed
by the Dockerfile's text, failing builds, and the combinations the server refuses.

From Daytona's open-source server (v0.190.0: ``SandboxController.createSandbox``,
``createFromBuildInfo``, ``SandboxStartAction``). How long builds take on the hosted service
varies; the realistic profile's 165 s for a first build follows published reports.
"""

from __future__ import annotations

import time
import warnings

import pytest
from daytona import CreateSandboxFromImageParams, Daytona, DaytonaConfig, DaytonaError, Image, Resources

from tests.daytona_fixtures import _fetch, sdk  # noqa: F401 - fixtures
from tests.fake_daytona.builds import build_ref
from tests.fake_daytona.fixtures import FAKE_DAYTONA_API_KEY, fake_daytona, fake_daytona_server  # noqa: F401
from tests.fake_daytona.raw import call
from tests.fake_daytona.timings import Timings

REALISTIC = Timings.realistic()
NODE = "FROM node:20-bookworm\n"


def _build(fake, name: str, dockerfile: str = NODE, **extra):
    return call(fake, "POST", "/sandbox", {"name": name, "buildInfo": {"dockerfileContent": dockerfile}, **extra})


def _state(fake, name: str) -> str:
    return call(fake, "GET", f"/sandbox/{name}").body["state"]


def test_a_build_is_answered_at_once_and_goes_through_its_phases(fake_daytona):  # noqa: F811
    # No server-side hold on this path: were there one, this answer would wait an hour.
    fake_daytona.timings = REALISTIC.with_changes(hold_limit=3600)

    answer = _build(fake_daytona, "img")

    assert answer.status == 200
    assert (answer.body["state"], answer.body["desiredState"], answer.body["snapshot"]) == (
        "pending_build",
        "started",
        None,
    )
    assert answer.body["buildInfo"]["snapshotRef"] == build_ref(NODE)
    seen = []
    for seconds in (REALISTIC.build_queue, REALISTIC.build, REALISTIC.build_boot, REALISTIC.build_start):
        seen.append(_state(fake_daytona, "img"))
        fake_daytona.advance_clock(seconds)
    seen.append(_state(fake_daytona, "img"))
    assert seen == ["pending_build", "building_snapshot", "creating", "starting", "started"]
    assert REALISTIC.first_build() == pytest.approx(165)


def test_the_api_shows_creating_while_the_runner_says_unknown(fake_daytona):  # noqa: F811
    fake_daytona.timings = REALISTIC
    sandbox_id = _build(fake_daytona, "img").body["id"]
    fake_daytona.advance_clock(REALISTIC.build_queue + REALISTIC.build + 0.1)

    assert call(fake_daytona, "GET", f"/sandbox/{sandbox_id}").body["state"] == "creating"
    assert call(fake_daytona, "GET", "/sandbox").body["items"][0]["state"] == "creating"
    assert fake_daytona.store.state_of(sandbox_id) == "unknown"


def test_the_same_dockerfile_later_is_built_in_seconds(fake_daytona):  # noqa: F811
    fake_daytona.timings = REALISTIC.scaled(0.01)  # a first build in 1.65 s
    sdk = _polling_sdk(fake_daytona)  # polls every 0.1 s, so the cached build shows
    params = dict(image="node:20-bookworm", resources=Resources(cpu=2, memory=4, disk=8))

    started = time.monotonic()
    first = sdk.create(CreateSandboxFromImageParams(name="first", **params), timeout=30)
    first_seconds = time.monotonic() - started
    second = sdk.create(CreateSandboxFromImageParams(name="second", **params), timeout=30)

    assert first.state == second.state == "started"
    assert (second.cpu, second.memory, second.disk) == (2, 4, 8)
    assert first_seconds >= 1.6
    # On the fake's clock: the same Dockerfile again boots at once, without a build.
    fake_daytona.timings = REALISTIC.with_changes(hold_limit=0)
    third = _build(fake_daytona, "third", Image.base("node:20-bookworm").dockerfile()).body
    assert third["state"] == "creating"
    fake_daytona.advance_clock(REALISTIC.cached_build() + 0.1)
    assert _state(fake_daytona, "third") == "started"
    dockerfile = Image.base("node:20-bookworm").dockerfile()
    assert first.build_info.snapshot_ref == second.build_info.snapshot_ref == build_ref(dockerfile)
    # A runner holding the image takes the sandbox at once: no pending_build this time.
    assert [r.operation for r in fake_daytona.requests].count("create") == 3


def test_the_cache_is_keyed_by_the_dockerfile_text(fake_daytona):  # noqa: F811
    fake_daytona.timings = REALISTIC
    _build(fake_daytona, "warm-up")
    fake_daytona.advance_clock(REALISTIC.first_build() + 1)

    assert _build(fake_daytona, "same").body["state"] == "creating"
    assert _build(fake_daytona, "other", NODE + "RUN echo hi\n").body["state"] == "pending_build"
    fake_daytona.advance_clock(REALISTIC.cached_build() + 0.1)
    assert _state(fake_daytona, "same") == "started"
    assert _state(fake_daytona, "other") == "building_snapshot"


def test_a_create_during_a_build_of_the_same_dockerfile_joins_it(fake_daytona):  # noqa: F811
    fake_daytona.timings = REALISTIC
    _build(fake_daytona, "first")
    fake_daytona.advance_clock(100)

    assert _build(fake_daytona, "joiner").body["state"] == "pending_build"
    fake_daytona.advance_clock(REALISTIC.build_queue + 1)
    assert _state(fake_daytona, "joiner") == "building_snapshot"
    fake_daytona.advance_clock(REALISTIC.build_queue + REALISTIC.build - 100 - REALISTIC.build_queue)
    assert _state(fake_daytona, "first") == _state(fake_daytona, "joiner") == "creating"


def test_a_failing_dockerfile_ends_in_build_failed(fake_daytona, sdk):  # noqa: F811
    fake_daytona.fail_builds_containing("no-such-image", "failed to build image: manifest unknown")

    expected = "entered error state: SandboxState.BUILD_FAILED, error reason: failed to build image: manifest unknown"
    with pytest.raises(DaytonaError, match=expected):
        sdk.create(CreateSandboxFromImageParams(name="bad", image="no-such-image:1"), timeout=10)

    seen = sdk.get("bad")
    assert (seen.state, seen.error_reason, seen.recoverable) == (
        "build_failed",
        "failed to build image: manifest unknown",
        False,
    )


def test_a_build_fails_when_its_build_ends(fake_daytona):  # noqa: F811
    fake_daytona.timings = REALISTIC
    fake_daytona.fault("create", "ends_in_error", message="failed to build image: exit code 1")

    assert _build(fake_daytona, "bad").body["state"] == "pending_build"
    fake_daytona.advance_clock(REALISTIC.build_queue + REALISTIC.build - 1)
    assert _state(fake_daytona, "bad") == "building_snapshot"
    fake_daytona.advance_clock(2)
    seen = call(fake_daytona, "GET", "/sandbox/bad").body
    assert (seen["state"], seen["errorReason"]) == ("build_failed", "failed to build image: exit code 1")
    # A failed build leaves no image: the next create with that Dockerfile builds again.
    assert _build(fake_daytona, "retry").body["state"] == "pending_build"


def test_failing_builds_are_set_over_http(fake_daytona):  # noqa: F811
    config = {"failing_builds": {"RUN exit 1": "failed to build image: RUN exit 1"}}
    assert _fetch(f"{fake_daytona.url}/__config", config)[0] == 200

    seen = _build(fake_daytona, "bad", NODE + "RUN exit 1\n").body
    assert (seen["state"], seen["errorReason"]) == ("build_failed", "failed to build image: RUN exit 1")
    assert _build(fake_daytona, "good").body["state"] == "started"


def test_build_info_with_a_snapshot_is_refused(fake_daytona):  # noqa: F811
    answer = _build(fake_daytona, "both", snapshot="daytonaio/sandbox:0.4.3")

    assert answer.status == 400
    assert answer.body["message"] == "Cannot specify a snapshot when using a build info entry"
    assert fake_daytona.sandboxes() == []


@pytest.mark.parametrize("resource", ["cpu", "memory", "disk", "gpu"])
def test_resources_without_build_info_are_refused(fake_daytona, resource):  # noqa: F811
    body = {"name": "sized", "snapshot": "daytonaio/sandbox:0.4.3", resource: 2}

    answer = call(fake_daytona, "POST", "/sandbox", body)

    assert answer.status == 400
    assert answer.body["message"] == "Cannot specify Sandbox resources when using a snapshot"
    assert call(fake_daytona, "POST", "/sandbox", {"name": "default-snapshot", resource: 1}).status == 400
    assert fake_daytona.sandboxes() == []


def test_a_build_info_without_a_dockerfile_is_refused(fake_daytona):  # noqa: F811
    answer = call(fake_daytona, "POST", "/sandbox", {"name": "empty", "buildInfo": {}})

    assert answer.status == 400
    assert answer.body["message"] == "buildInfo.dockerfileContent must be a non-empty string"


def _polling_sdk(fake) -> Daytona:
    config = dict(api_key=FAKE_DAYTONA_API_KEY, api_url=fake.api_url, target="us", use_deprecated_polling=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return Daytona(DaytonaConfig(**config))
