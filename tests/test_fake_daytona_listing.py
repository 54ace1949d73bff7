"""The Daytona emulator's listing (``GET /sandbox``), through the real ``daytona`` SDK and raw
HTTP: the default order by last activity and its cursor (unstable while activity moves), the
stable ``sort=createdAt`` walk, ``states=destroyed`` refused, a deleted sandbox still listed
for a moment, and errored sandboxes being deleted hidden unless asked for.

From Daytona's open-source server (v0.190.0: ``ListSandboxesQueryDto``,
``SandboxTypeormSearchAdapter``) and daytonaio/daytona#5138 for the lag after a delete; how
long the hosted listing lags is not published.
"""

from __future__ import annotations

import base64
import json
from datetime import timedelta

import pytest
from daytona import DaytonaBadRequestError, ListSandboxesQuery

from tests.daytona_fixtures import sdk  # noqa: F401 - fixtures
from tests.fake_daytona.fixtures import fake_daytona, fake_daytona_server  # noqa: F401
from tests.fake_daytona.raw import call
from tests.fake_daytona.timings import Timings


def _active_at(fake, name: str, minutes_ago: float) -> None:
    moment = fake.now() - timedelta(minutes=minutes_ago)
    fake.set_state(name, "started", lastActivityAt=moment.isoformat())


def _three_by_activity(fake) -> None:
    """``a`` created first and idle longest, ``c`` created last and active last."""
    for age, name in ((30, "a"), (20, "b"), (10, "c")):
        fake.add_sandbox(name=name, createdAt=(fake.now() - timedelta(minutes=age)).isoformat())
        _active_at(fake, name, age)


def test_the_default_order_is_last_activity_descending(fake_daytona, sdk):  # noqa: F811
    _three_by_activity(fake_daytona)
    assert [s.name for s in sdk.list()] == ["c", "b", "a"]

    _active_at(fake_daytona, "a", 0)

    assert [s.name for s in sdk.list()] == ["a", "c", "b"]
    assert "sort" not in fake_daytona.requests[-1].query


def test_paging_by_activity_skips_a_sandbox_whose_activity_moves(fake_daytona, sdk):  # noqa: F811
    _three_by_activity(fake_daytona)
    pages = sdk.list(ListSandboxesQuery(limit=1))

    first = next(pages)
    _active_at(fake_daytona, "a", 0)  # the oldest jumps ahead of the cursor
    rest = list(pages)

    assert [first.name] + [s.name for s in rest] == ["c", "b"]


def test_sort_by_created_at_walks_stably(fake_daytona, sdk):  # noqa: F811
    _three_by_activity(fake_daytona)
    pages = sdk.list(ListSandboxesQuery(limit=1, sort="createdAt", order="asc"))

    first = next(pages)
    _active_at(fake_daytona, "c", 60)
    rest = list(pages)

    assert [first.name] + [s.name for s in rest] == ["a", "b", "c"]
    queries = [r.query for r in fake_daytona.requests if r.operation == "list"]
    assert {(q["sort"], q["order"]) for q in queries} == {("createdAt", "asc")}
    assert [s.name for s in sdk.list(ListSandboxesQuery(sort="createdAt"))] == ["c", "b", "a"]


def test_the_cursor_carries_the_sort_value_and_id(fake_daytona):  # noqa: F811
    fake_daytona.seed(3)

    page = call(fake_daytona, "GET", "/sandbox?limit=2&sort=createdAt").body

    last = page["items"][-1]
    assert json.loads(base64.b64decode(page["nextCursor"])) == {"sortValue": last["createdAt"], "id": last["id"]}
    bad = call(fake_daytona, "GET", "/sandbox?cursor=not-a-cursor")
    assert (bad.status, bad.body["message"]) == (400, "Invalid cursor provided: not-a-cursor")


def test_states_destroyed_is_refused(fake_daytona, sdk):  # noqa: F811
    expected = (
        "each value must be one of the following values: creating, restoring, destroying, started, stopped, "
        "starting, stopping, error, build_failed, pending_build, building_snapshot, unknown, pulling_snapshot, "
        "archived, archiving, resizing, snapshotting, forking, pausing, paused, resuming"
    )
    with pytest.raises(DaytonaBadRequestError) as caught:
        list(sdk.list(ListSandboxesQuery(states=["destroyed"])))
    assert str(caught.value).endswith(expected)

    answer = call(fake_daytona, "GET", "/sandbox?states=started&states=destroyed")
    assert (answer.status, answer.body["message"]) == (400, expected)


def test_an_unknown_sort_or_order_is_refused(fake_daytona):  # noqa: F811
    sort = call(fake_daytona, "GET", "/sandbox?sort=state")
    order = call(fake_daytona, "GET", "/sandbox?order=up")

    expected = "sort must be one of the following values: name, cpu, memoryGib, diskGib, lastActivityAt, createdAt"
    assert (sort.status, sort.body["message"]) == (400, expected)
    assert (order.status, order.body["message"]) == (400, "order must be one of the following values: asc, desc")


def test_a_deleted_sandbox_is_still_listed_as_it_was_for_a_moment(fake_daytona, sdk):  # noqa: F811
    fake_daytona.timings = Timings.realistic()
    sandbox_id = fake_daytona.add_sandbox(name="u-42", state="started")["id"]

    assert call(fake_daytona, "DELETE", f"/sandbox/{sandbox_id}").body["state"] == "destroying"

    listed = list(sdk.list())
    assert [(s.id, s.name, s.state) for s in listed] == [(sandbox_id, "u-42", "started")]
    fake_daytona.advance_clock(Timings.realistic().delete_list_lag + 0.1)
    assert [(s.name, s.state) for s in sdk.list()] == [(sdk.get(sandbox_id).name, "destroying")]
    fake_daytona.advance_clock(10)
    assert list(sdk.list()) == []


def test_the_lag_after_a_delete_is_configurable(fake_daytona, sdk):  # noqa: F811
    fake_daytona.timings = Timings.instant().with_changes(delete_list_lag=5)
    sandbox_id = fake_daytona.add_sandbox(name="u-42", state="started")["id"]
    call(fake_daytona, "DELETE", f"/sandbox/{sandbox_id}")

    assert fake_daytona.sandbox(sandbox_id) is None
    assert [s.state for s in sdk.list()] == ["started"]
    fake_daytona.advance_clock(5)
    assert list(sdk.list()) == []


def test_errored_sandboxes_being_deleted_are_hidden_unless_asked_for(fake_daytona, sdk):  # noqa: F811
    fake_daytona.timings = Timings.realistic()
    broken_id = fake_daytona.add_sandbox(name="broken", state="started")["id"]
    fake_daytona.set_state(broken_id, "error", error_reason="disk full")
    fake_daytona.add_sandbox(name="fine", state="started")
    fake_daytona.advance_clock(1)
    call(fake_daytona, "DELETE", f"/sandbox/{broken_id}")
    fake_daytona.advance_clock(Timings.realistic().delete_list_lag + 0.1)

    assert [s.name for s in sdk.list()] == ["fine"]
    assert [s.name for s in sdk.list(ListSandboxesQuery(states=["error"]))] == []
    # The SDK's list() has no switch for it; its generated API client does.
    page = sdk._sandbox_api.list_sandboxes(include_errored_deleted=True)
    assert [(item.state, item.desired_state) for item in page.items if item.id == broken_id] == [("error", "destroyed")]
    raw = call(fake_daytona, "GET", "/sandbox?includeErroredDeleted=true&states=error").body["items"]
    assert [item["id"] for item in raw] == [broken_id]


def test_the_states_filter_reads_the_stored_state(fake_daytona, sdk):  # noqa: F811
    # The server filters its stored state: a started sandbox told to go still matches
    # ``started`` while its answers read ``destroying``.
    fake_daytona.timings = Timings.realistic().with_changes(delete_list_lag=0)
    sandbox_id = fake_daytona.add_sandbox(name="going", state="started")["id"]
    call(fake_daytona, "DELETE", f"/sandbox/{sandbox_id}")

    assert [s.state for s in sdk.list(ListSandboxesQuery(states=["started"]))] == ["destroying"]
    fake_daytona.advance_clock(Timings.realistic().destroy_queue + 0.1)
    assert list(sdk.list(ListSandboxesQuery(states=["started"]))) == []
