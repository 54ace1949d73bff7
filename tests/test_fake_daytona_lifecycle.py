"""The Daytona emulator, exercised through the real ``daytona`` SDK: the sandboxes' lifecycle,
listing, activity and auto-stop."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from daytona import (
    CreateSandboxFromImageParams,
    Daytona,
    DaytonaAuthenticationError,
    DaytonaBadRequestError,
    DaytonaConfig,
    DaytonaConflictError,
    DaytonaError,
    DaytonaNotFoundError,
    ListSandboxesQuery,
    Resources,
)

from tests.daytona_fixtures import _create, _parse, sdk  # noqa: F401 - fixtures
from tests.fake_daytona.fixtures import FAKE_DAYTONA_API_KEY, fake_daytona, fake_daytona_server  # noqa: F401

# ----- lifecycle ----------------------------------------------------------------------------


def test_create_answers_full_sandbox_and_get_finds_it_by_id_or_name(fake_daytona, sdk):  # noqa: F811
    params = CreateSandboxFromImageParams(
        name="u-1",
        image="python:3.12-slim",
        labels={"portal-user": "1"},
        resources=Resources(cpu=2, memory=4, disk=8),
        auto_stop_interval=0,
    )
    sandbox = sdk.create(params, timeout=10)

    assert sandbox.state == "started"
    assert (sandbox.cpu, sandbox.memory, sandbox.disk) == (2, 4, 8)
    assert sandbox.labels == {"portal-user": "1", "code-toolbox-language": "python"}
    assert sandbox.auto_stop_interval == 0
    assert sdk.get("u-1").id == sandbox.id
    assert sdk.get(sandbox.id).name == "u-1"
    stored = fake_daytona.sandbox(sandbox.id)
    assert stored["kvm"] is False and stored["toolboxProxyUrl"] == f"{fake_daytona.url}/toolbox"
    _, method, path, _, headers = fake_daytona.requests[0]
    assert (method, path) == ("POST", "/api/sandbox")
    assert headers["Authorization"] == f"Bearer {FAKE_DAYTONA_API_KEY}"


def test_wrong_api_key_is_refused(fake_daytona):  # noqa: F811
    other = Daytona(DaytonaConfig(api_key="wrong", api_url=fake_daytona.api_url, target="us"))
    with pytest.raises(DaytonaAuthenticationError) as caught:
        other.get("anything")
    assert caught.value.status_code == 401


def test_duplicate_name_is_a_conflict(sdk):
    _create(sdk)
    with pytest.raises(DaytonaConflictError, match="Sandbox with name u-42 already exists"):
        _create(sdk)


def test_get_unknown_sandbox_is_not_found(sdk):
    expected = "Failed to get sandbox: Sandbox with ID or name nope not found"
    with pytest.raises(DaytonaNotFoundError, match=expected):
        sdk.get("nope")


def test_stop_start_and_second_calls(fake_daytona, sdk):  # noqa: F811
    sandbox = _create(sdk)
    sandbox.stop(timeout=10)
    assert sandbox.state == "stopped"
    with pytest.raises(DaytonaBadRequestError, match="Sandbox is not in a stoppable state"):
        sandbox.stop(timeout=10)
    sandbox.start(timeout=10)
    assert sandbox.state == "started"
    sandbox.start(timeout=10)
    assert fake_daytona.calls["start"] == 2


def test_mid_transition_and_errored_sandboxes_refuse_changes(fake_daytona, sdk):  # noqa: F811
    sandbox = _create(sdk)
    fake_daytona.set_state(sandbox.id, "stopping")
    with pytest.raises(DaytonaConflictError, match="Sandbox state change in progress"):
        sandbox.start(timeout=10)
    with pytest.raises(DaytonaConflictError):
        sandbox.delete()
    fake_daytona.set_state(sandbox.id, "error", error_reason="disk full", recoverable=False)
    with pytest.raises(DaytonaBadRequestError, match="errored state"):
        sandbox.start(timeout=10)


def test_transitions_take_time_and_the_sdk_waits(fake_daytona, sdk):  # noqa: F811
    fake_daytona.transition_seconds = 0.3
    params = CreateSandboxFromImageParams(name="u-42", image="python:3.12-slim")
    sandbox = sdk.create(params, timeout=10)  # an image build is answered at once, so the SDK polls
    assert sandbox.state == "started"
    assert fake_daytona.calls["get"] >= 1
    sandbox.delete()
    assert fake_daytona.sandbox(sandbox.id)["name"].startswith("DESTROYED_u-42_")
    assert _create(sdk).id != sandbox.id


def test_delete_frees_the_name_and_get_answers_404(sdk):
    sandbox = _create(sdk)
    sandbox.delete()
    with pytest.raises(DaytonaNotFoundError):
        sdk.get(sandbox.id)
    with pytest.raises(DaytonaNotFoundError):
        sdk.get("u-42")
    assert _create(sdk).name == "u-42"


def test_archive_then_start_restores(fake_daytona, sdk):  # noqa: F811
    sandbox = _create(sdk)
    with pytest.raises(DaytonaBadRequestError):
        sandbox.archive()
    sandbox.stop(timeout=10)
    sandbox.archive()
    assert sandbox.state == "archived"
    sandbox.start(timeout=10)
    assert sandbox.state == "started"


def test_recover_from_recoverable_error(fake_daytona, sdk):  # noqa: F811
    sandbox = _create(sdk)
    fake_daytona.set_state(sandbox.id, "error", error_reason="out of memory", recoverable=True)
    sandbox.refresh_data()
    assert (sandbox.state, sandbox.error_reason, sandbox.recoverable) == ("error", "out of memory", True)
    sandbox.recover(timeout=10)
    assert sandbox.state == "started"


def test_wait_reports_error_state(fake_daytona, sdk):  # noqa: F811
    sandbox = _create(sdk)
    sandbox.stop(timeout=10)
    fake_daytona.set_state(sandbox.id, "build_failed", error_reason="bad image")
    with pytest.raises(DaytonaError, match="entered error state"):
        sandbox.wait_for_sandbox_start(timeout=5)


def test_out_of_band_changes_are_seen_by_the_sdk(fake_daytona, sdk):  # noqa: F811
    _create(sdk)
    with pytest.raises(ValueError, match="already exists"):
        fake_daytona.add_sandbox(name="u-42")
    fake_daytona.delete_out_of_band("u-42")
    fake_daytona.add_sandbox(name="u-42", labels={"portal-user": "99"})
    assert sdk.get("u-42").labels["portal-user"] == "99"
    fake_daytona.set_state("u-42", "archived")
    assert sdk.get("u-42").state == "archived"
    fake_daytona.set_state("u-42", "restoring", then="started", after=60)
    assert sdk.get("u-42").state == "restoring"
    fake_daytona.advance_clock(61)
    assert sdk.get("u-42").state == "started"


def test_latency_delays_calls_without_serialising_them(fake_daytona, sdk):  # noqa: F811
    sandbox = _create(sdk)
    fake_daytona.latency = 0.3
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=10) as pool:
        found = list(pool.map(lambda _: sdk.get(sandbox.id).id, range(10)))
    elapsed = time.monotonic() - started
    assert found == [sandbox.id] * 10
    assert 0.3 <= elapsed < 1.5


def test_labels_are_replaced_and_autostop_set(fake_daytona, sdk):  # noqa: F811
    sandbox = _create(sdk)
    result = sandbox.set_labels({"portal-user": "42", "code-toolbox-language": "python", "tier": "free"})
    assert result == {"portal-user": "42", "code-toolbox-language": "python", "tier": "free"}
    sandbox.set_labels({"code-toolbox-language": "python"})
    assert fake_daytona.sandbox(sandbox.id)["labels"] == {"code-toolbox-language": "python"}
    sandbox.set_autostop_interval(0)
    assert fake_daytona.sandbox(sandbox.id)["autoStopInterval"] == 0


# ----- list -----------------------------------------------------------------------------------


def test_list_pages_with_cursor_and_filters_by_label_containment(fake_daytona, sdk):  # noqa: F811
    fake_daytona.seed(450, labels={"portal": "prod", "extra": "x"}, name_prefix="p-")
    fake_daytona.seed(30, labels={"portal": "staging"}, name_prefix="s-")

    found = list(sdk.list(ListSandboxesQuery(labels={"portal": "prod"}, limit=100)))

    assert len(found) == 450 and len({s.id for s in found}) == 450
    assert fake_daytona.calls["list"] == 5
    first_query = fake_daytona.requests[0].query
    assert json.loads(first_query["labels"]) == {"portal": "prod"} and "cursor" not in first_query
    assert all("cursor" in r.query for r in fake_daytona.requests[1:])


def test_list_filters_states_and_pages_through_ten_thousand(fake_daytona, sdk):  # noqa: F811
    fake_daytona.seed(10_000, labels={"portal": "prod"})
    fake_daytona.add_sandbox(name="off", labels={"portal": "prod"}, state="stopped")

    stopped = list(sdk.list(ListSandboxesQuery(states=["stopped", "archived"])))
    assert [s.name for s in stopped] == ["off"]
    assert fake_daytona.requests[-1].query["states"] == ["stopped", "archived"]

    count = sum(1 for _ in sdk.list(ListSandboxesQuery(labels={"portal": "prod"}, limit=200)))
    assert count == 10_001


def test_list_lag_shows_a_stale_snapshot(fake_daytona, sdk):  # noqa: F811
    sandbox = _create(sdk)
    fake_daytona.list_lag(5)
    assert [s.id for s in sdk.list()] == [sandbox.id]
    sandbox.delete()
    assert [s.id for s in sdk.list()] == [sandbox.id]
    fake_daytona.advance_clock(6)
    assert list(sdk.list()) == []


# ----- activity and auto-stop -----------------------------------------------------------------


def test_refresh_activity_and_autostop_pass(fake_daytona, sdk):  # noqa: F811
    idle = _create(sdk, name="idle", auto_stop_interval=15)
    busy = _create(sdk, name="busy", auto_stop_interval=15)
    never = _create(sdk, name="never", auto_stop_interval=0)
    fake_daytona.advance_clock(16 * 60)
    busy.refresh_activity()
    fake_daytona.advance_clock(10)  # the API flushes buffered activity every 10 s

    assert fake_daytona.calls["last_activity"] == 1
    last_activity = _parse(fake_daytona.sandbox(busy.id)["lastActivityAt"])
    assert abs(last_activity - fake_daytona.now()) < timedelta(seconds=12)
    assert fake_daytona.run_autostop() == [idle.id]
    assert fake_daytona.sandbox(idle.id)["state"] == "stopped"
    assert fake_daytona.sandbox(never.id)["state"] == "started"
