"""Metering: usage integrated from the state log, the log itself, and its daily roll-up."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import time_machine
from django.contrib.auth import get_user_model
from django.db import connection, connections
from django.db.models import Q
from django.test.utils import CaptureQueriesContext

from sandboxes.models import Sandbox, SandboxState, StateChange
from sandboxes.services import exclusive_lock
from sandboxes.services.rows import save_changes, snapshot
from usage.metering import Usage, integrate, usage_between, user_month_to_date
from usage.models import RollupRun, UsageDay
from usage.rollup import roll_up

pytestmark = pytest.mark.django_db

T0 = datetime(2026, 3, 10, 12, 0, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)


def entry(state: str, at: datetime, *, cpu=2, memory_gb=4, disk_gb=8, name="joepro-u1", user=None) -> StateChange:
    return StateChange(
        sandbox_name=name,
        provider="daytona",
        state=state,
        cpu=cpu,
        memory_gb=memory_gb,
        disk_gb=disk_gb,
        at=at,
        user=user,
    )


def logged(*entries: StateChange) -> list[StateChange]:
    """Entries written to the log (recorded when the clock says: see :func:`at`)."""
    return StateChange.objects.bulk_create(entries)


def at(moment: datetime):
    """The clock stopped at ``moment``, as when the portal writes the log and the roll-up runs."""
    return time_machine.travel(moment, tick=False)


def roll_up_at(moment: datetime):
    with at(moment):
        return roll_up(now=moment)


# --- integrate ------------------------------------------------------------------------------


def test_running_counts_seconds_cpu_memory_and_billable_disk(settings):
    settings.USAGE_FREE_DISK_GIB = 5
    usage = integrate([entry("started", T0)], T0, T0 + HOUR)
    assert usage == Usage(running_seconds=3600, cpu_seconds=7200, memory_gib_seconds=14400, disk_gib_seconds=3 * 3600)


@pytest.mark.parametrize("state", ["stopped", "creating", "starting", "stopping", "error", "unknown"])
def test_a_sandbox_that_exists_but_does_not_run_counts_its_disk_only(settings, state):
    settings.USAGE_FREE_DISK_GIB = 5
    usage = integrate([entry(state, T0)], T0, T0 + HOUR)
    assert usage == Usage(disk_gib_seconds=3 * 3600, stopped_disk_gib_seconds=8 * 3600)


@pytest.mark.parametrize("state", ["pending", "archived", "gone"])
def test_a_sandbox_without_disk_counts_nothing(state):
    assert integrate([entry(state, T0)], T0, T0 + HOUR) == Usage()


def test_disk_within_the_free_allowance_costs_nothing_but_is_counted_stopped(settings):
    settings.USAGE_FREE_DISK_GIB = 5
    usage = integrate([entry("stopped", T0, disk_gb=4)], T0, T0 + HOUR)
    assert usage == Usage(disk_gib_seconds=0, stopped_disk_gib_seconds=4 * 3600)
    assert usage.cost == Decimal("0")


def test_each_interval_counts_at_the_resources_of_its_entry(settings):
    settings.USAGE_FREE_DISK_GIB = 0
    changes = [
        entry("started", T0, cpu=1, memory_gb=2, disk_gb=10),
        entry("stopped", T0 + HOUR, cpu=1, memory_gb=2, disk_gb=10),
        entry("started", T0 + 2 * HOUR, cpu=4, memory_gb=8, disk_gb=20),
    ]
    usage = integrate(changes, T0, T0 + 3 * HOUR)
    assert usage.running_seconds == 7200
    assert usage.cpu_seconds == 3600 * 1 + 3600 * 4
    assert usage.memory_gib_seconds == 3600 * 2 + 3600 * 8
    assert usage.disk_gib_seconds == 3600 * 10 * 2 + 3600 * 20
    assert usage.stopped_disk_gib_seconds == 3600 * 10


def test_the_window_cuts_intervals_at_both_ends():
    changes = [entry("started", T0 - HOUR), entry("stopped", T0 + HOUR / 2), entry("started", T0 + HOUR)]
    usage = integrate(changes, T0, T0 + HOUR)  # the start at the window's end is not counted
    assert usage.running_seconds == 30 * 60
    assert usage.stopped_disk_gib_seconds == 8 * 30 * 60


def test_nothing_is_counted_before_the_first_entry():
    assert integrate([entry("started", T0 + HOUR / 6)], T0, T0 + HOUR).running_seconds == 50 * 60
    assert integrate([entry("started", T0 + HOUR)], T0, T0 + HOUR) == Usage()
    assert integrate([], T0, T0 + HOUR) == Usage()


def test_an_entry_at_the_window_start_opens_it():
    changes = [entry("stopped", T0 - HOUR), entry("started", T0)]
    assert integrate(changes, T0, T0 + HOUR).running_seconds == 3600


def test_cost_is_the_hand_computation_at_the_rates(settings):
    settings.USAGE_FREE_DISK_GIB = 5
    settings.USAGE_RATE_VCPU_HOUR = Decimal("0.0504")
    settings.USAGE_RATE_MEMORY_GIB_HOUR = Decimal("0.0162")
    settings.USAGE_RATE_DISK_GIB_HOUR = Decimal("0.000108")
    usage = integrate([entry("started", T0)], T0, T0 + HOUR)
    assert usage.cost == Decimal("2") * Decimal("0.0504") + 4 * Decimal("0.0162") + 3 * Decimal("0.000108")


# --- the log ----------------------------------------------------------------------------------


@pytest.fixture
def row(owner) -> Sandbox:
    sandbox = Sandbox.objects.create(
        user=owner, provider="daytona", remote_name="joepro-u1", cpu=2, memory_gb=4, disk_gb=8
    )
    assert not StateChange.objects.exists()  # pending is no change
    return sandbox


def test_saving_a_row_logs_its_state_changes_in_whole_seconds(row):
    row.set_state(SandboxState.STARTING, T0 + timedelta(microseconds=700_000))
    row.set_state(SandboxState.STARTED, T0 + timedelta(seconds=3, microseconds=1))
    row.set_state(SandboxState.STARTED, T0 + timedelta(seconds=9))  # no change: not logged
    row.save()
    log = list(StateChange.objects.values_list("state", "at", "source", "sandbox_name", "user", "cpu"))
    assert log == [
        ("starting", T0, "portal", "joepro-u1", row.user_id, 2),
        ("started", T0 + timedelta(seconds=3), "portal", "joepro-u1", row.user_id, 2),
    ]
    row.save()
    assert StateChange.objects.count() == 2  # taken once


def test_save_changes_logs_the_changes_of_every_row(row, teammate):
    other = Sandbox.objects.create(
        user=teammate, provider="daytona", remote_name="joepro-u2", cpu=1, memory_gb=1, disk_gb=1
    )
    changes = []
    for sandbox in (row, other):
        changes.append((sandbox, snapshot(sandbox)))
        sandbox.set_state(SandboxState.STOPPED, T0)
    save_changes(changes)
    assert sorted(StateChange.objects.values_list("sandbox_name", "state")) == [
        ("joepro-u1", "stopped"),
        ("joepro-u2", "stopped"),
    ]


def test_a_change_the_provider_dates_is_backdated_within_bounds(row):
    row.set_state(SandboxState.STARTED, T0)
    row.set_state(SandboxState.STOPPED, T0 + 2 * HOUR, since=T0 + HOUR + timedelta(microseconds=5))
    row.save()
    assert list(StateChange.objects.values_list("state", "at", "source")) == [
        ("started", T0, "portal"),
        ("stopped", T0 + HOUR, "provider"),
    ]
    assert (
        row.last_stopped_at == row.state_changed_at == T0 + HOUR + timedelta(microseconds=5)
    )  # the log: whole seconds


def test_a_backdated_change_is_never_before_the_previous_one_nor_after_now(row):
    row.set_state(SandboxState.STARTED, T0)
    row.set_state(SandboxState.STOPPED, T0 + HOUR, since=T0 - HOUR)  # before the start: at the start
    row.set_state(SandboxState.STARTED, T0 + 2 * HOUR, since=T0 + 5 * HOUR)  # in the future: now
    row.save()
    assert list(StateChange.objects.values_list("state", "at")) == [
        ("started", T0),
        ("stopped", T0),
        ("started", T0 + 2 * HOUR),
    ]


def test_usage_between_and_the_month_to_date_read_the_log(row, settings):
    settings.USAGE_FREE_DISK_GIB = 5
    logged(entry("started", T0, user=row.user), entry("stopped", T0 + HOUR, user=row.user))
    assert usage_between(Q(user=row.user), T0, T0 + 2 * HOUR)["joepro-u1"].running_seconds == 3600
    month = user_month_to_date(row.user, T0 + 2 * HOUR)
    assert month.month.running_seconds == month.today.running_seconds == 3600
    assert month.month.stopped_disk_gib_seconds == 8 * 3600


# --- the roll-up ------------------------------------------------------------------------------


def rows_by_day() -> dict:
    return {
        (row.sandbox_name, row.day.isoformat()): (row.running_seconds, row.stopped_disk_gib_seconds, row.cost)
        for row in UsageDay.objects.all()
    }


def test_the_roll_up_writes_one_row_per_sandbox_and_day_and_is_idempotent(owner, settings):
    settings.USAGE_FREE_DISK_GIB = 5
    with at(T0):
        logged(
            entry("started", T0, user=owner),  # 12:00 on the 10th, running over midnight
            entry("stopped", T0 + 14 * HOUR, user=owner),  # 02:00 on the 11th
            entry("started", T0, name="joepro-u2"),
            entry("gone", T0 + HOUR, name="joepro-u2"),
        )
    now = T0 + 36 * HOUR  # 00:00 on the 12th

    report = roll_up_at(now)

    expected = {
        ("joepro-u1", "2026-03-10"): 12 * 3600,
        ("joepro-u1", "2026-03-11"): 2 * 3600,
        ("joepro-u2", "2026-03-10"): 3600,
    }
    assert {key: value[0] for key, value in rows_by_day().items()} == expected  # none on the 12th yet
    assert rows_by_day()[("joepro-u1", "2026-03-11")][1] == 8 * 22 * 3600
    day = UsageDay.objects.get(sandbox_name="joepro-u1", day="2026-03-10")
    assert day.user == owner and day.provider == "daytona"
    assert (
        day.cost == integrate(StateChange.objects.filter(sandbox_name="joepro-u1"), T0 - 12 * HOUR, T0 + 12 * HOUR).cost
    )
    assert (report.days, report.rows) == (3, 3)
    first = rows_by_day()
    ids = set(UsageDay.objects.values_list("pk", flat=True))

    again = roll_up_at(now)

    assert rows_by_day() == first
    assert set(UsageDay.objects.values_list("pk", flat=True)) == ids  # updated in place
    assert again.days == 1  # only the day of the last run: nothing was recorded since
    assert RollupRun.objects.count() == 2


def test_a_backdated_stop_rewrites_the_past_days_it_reaches(owner):
    with at(T0):
        logged(entry("started", T0, user=owner))
    roll_up_at(T0 + 48 * HOUR)  # the 12th at 12:00: thought running all along
    assert rows_by_day()[("joepro-u1", "2026-03-11")][0] == 86400

    # Found later: it stopped at 18:00 on the 10th, and was deleted on the 11th.
    with at(T0 + 49 * HOUR):
        logged(entry("stopped", T0 + 6 * HOUR, user=owner), entry("gone", T0 + 20 * HOUR, user=owner))
        report = roll_up(now=T0 + 49 * HOUR)

    assert report.days == 3
    assert {key: value[:2] for key, value in rows_by_day().items()} == {
        ("joepro-u1", "2026-03-10"): (6 * 3600, 8 * 6 * 3600),
        ("joepro-u1", "2026-03-11"): (0, 8 * 8 * 3600),
    }  # nothing left to count on the 12th: its row is gone


def test_the_roll_up_runs_one_at_a_time(owner):
    logged(entry("started", T0, user=owner))
    held, release = threading.Event(), threading.Event()

    def hold():
        try:
            with exclusive_lock("usage-rollup") as acquired:
                assert acquired
                held.set()
                release.wait(10)
        finally:
            connections.close_all()

    thread = threading.Thread(target=hold)
    thread.start()
    try:
        assert held.wait(10)
        report = roll_up_at(T0 + HOUR)
    finally:
        release.set()
        thread.join()
    assert report.skipped and not UsageDay.objects.exists() and not RollupRun.objects.exists()


def _many_sandboxes(count: int, prefix: str) -> None:
    users = get_user_model().objects.bulk_create(
        get_user_model()(username=f"{prefix}{index}", email=f"{prefix}{index}@example.com") for index in range(count)
    )
    entries = []
    for index, user in enumerate(users):
        name = f"joepro-{prefix}{index}"
        entries += [
            entry("started", T0 - 30 * HOUR, user=user, name=name),
            entry("stopped", T0 - 20 * HOUR + timedelta(seconds=index), user=user, name=name),
            entry("started", T0 + timedelta(seconds=index), user=user, name=name),
        ]
    logged(*entries)


def test_the_roll_up_makes_as_many_queries_for_fifty_sandboxes_as_for_five():
    counts = []
    for count in (5, 50):
        StateChange.objects.all().delete()
        UsageDay.objects.all().delete()
        RollupRun.objects.all().delete()
        with at(T0):
            _many_sandboxes(count, prefix=f"c{count}-")
        with CaptureQueriesContext(connection) as queries:
            report = roll_up_at(T0 + 14 * HOUR)
        assert (report.days, report.rows) == (3, 3 * count)
        counts.append(len(queries))
    assert counts[0] == counts[1] <= 3 * 5 + 6  # a handful per day, none per sandbox


# --- the log of sandboxes that existed before it --------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_the_migration_seeds_the_log_with_every_existing_sandbox():
    from django.db.migrations.executor import MigrationExecutor

    before = [("sandboxes", "0003_dashboard")]
    executor = MigrationExecutor(connection)
    leaves = executor.loader.graph.leaf_nodes()
    try:
        executor.migrate(before)
        old = executor.loader.project_state(before).apps
        user_model = old.get_model("auth", "User")
        Old = old.get_model("sandboxes", "Sandbox")
        rows = {}
        for index, (state, changed) in enumerate(
            [("started", T0 + timedelta(microseconds=400)), ("stopped", None), ("pending", None), ("gone", T0)]
        ):
            user = user_model.objects.create(username=f"seed{index}", email=f"seed{index}@example.com")
            rows[state] = Old.objects.create(
                user_id=user.pk,
                provider="local",
                remote_name=f"joepro-seed{index}",
                state=state,
                cpu=2,
                memory_gb=4,
                disk_gb=8,
                state_changed_at=changed,
            )
        executor = MigrationExecutor(connection)
        executor.migrate(leaves)
    finally:
        MigrationExecutor(connection).migrate(leaves)
    log = sorted(StateChange.objects.values_list("sandbox_name", "state", "at", "source", "user_id", "cpu"))
    assert log == [
        ("joepro-seed0", "started", T0, "portal", rows["started"].user_id, 2),
        (
            "joepro-seed1",
            "stopped",
            rows["stopped"].created_at.replace(microsecond=0),
            "portal",
            rows["stopped"].user_id,
            2,
        ),
    ]
