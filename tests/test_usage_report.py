"""The operators' usage and cost report in admin: who may see it, what its figures, chart and
CSV export say for constructed daily usage rows, and that it costs the same few queries for 5
users as for 200."""

from __future__ import annotations

import csv
import io
import re
from datetime import date, timedelta
from decimal import Decimal

import pytest
from asgiref.sync import async_to_sync
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.test import AsyncClient, Client
from django.utils import timezone

from tests.conftest import make_user
from usage.metering import utc_day
from usage.models import RollupRun, UsageDay

pytestmark = pytest.mark.django_db
REPORT = "/admin/usage/report/"
DECEMBER = {"start": "2026-12-01", "end": "2026-12-31"}


def used(
    user, day: date, *, provider="local", hours=1, cpu=2, memory=4, disk=0, stopped_disk=0, cost="0.10", name=None
):
    """A roll-up row: ``hours`` running at ``cpu`` vCPUs and ``memory`` GiB, ``disk`` billable
    GiB-hours and ``stopped_disk`` GiB-hours while stopped."""
    return UsageDay(
        user=user,
        sandbox_name=name or f"{user.username if user else 'gone'}-{provider}",
        provider=provider,
        day=day,
        running_seconds=hours * 3600,
        cpu_seconds=hours * cpu * 3600,
        memory_gib_seconds=hours * memory * 3600,
        disk_gib_seconds=disk * 3600,
        stopped_disk_gib_seconds=stopped_disk * 3600,
        cost=Decimal(cost),
        computed_at=timezone.now(),
    )


@pytest.fixture
def december(owner, teammate):
    """Owner: two local days and one on Daytona; teammate: one local day with stopped disk."""
    UsageDay.objects.bulk_create(
        [
            used(owner, date(2026, 12, 1), hours=2, cost="0.30"),
            used(owner, date(2026, 12, 3), hours=1, disk=3, cost="0.15"),
            used(owner, date(2026, 12, 3), provider="daytona", hours=4, cpu=1, memory=2, cost="1.00"),
            used(teammate, date(2026, 12, 3), hours=3, stopped_disk=24, cost="2.25"),
            used(teammate, date(2026, 11, 30), hours=10, cost="9.00"),  # outside December
        ]
    )


def rows_of(response) -> dict[str, tuple]:
    return {
        row.name: (
            row.figures.sandboxes,
            row.figures.running_hours,
            row.figures.vcpu_hours,
            row.figures.memory_gib_hours,
            row.figures.disk_gib_hours,
            row.figures.stopped_disk_gib_hours,
            row.figures.cost,
        )
        for row in response.context["rows"]
    }


def test_operators_see_it_and_others_are_refused(client, console, owner, december):
    staff = make_user("staff@example.com")
    staff.is_staff = True
    staff.save()
    bare_staff = Client()
    bare_staff.force_login(staff)
    viewer = make_user("viewer@example.com")
    viewer.is_staff = True
    viewer.save()
    viewer.user_permissions.add(Permission.objects.get(codename="view_usageday"))
    allowed = Client()
    allowed.force_login(viewer)
    plain = Client()
    plain.force_login(owner)

    assert console.get(REPORT, DECEMBER).status_code == 200
    assert allowed.get(REPORT, DECEMBER).status_code == 200
    anonymous = client.get(REPORT, DECEMBER)
    assert anonymous.status_code == 302 and "/login/" in anonymous["Location"]
    not_staff = plain.get(REPORT, DECEMBER, follow=True)
    assert not_staff.status_code == 403 and "owner@example.com" not in not_staff.content.decode()
    assert bare_staff.get(REPORT, DECEMBER).status_code == 403
    assert client.get(REPORT, {**DECEMBER, "format": "csv"}).status_code == 302
    assert bare_staff.get(REPORT, {**DECEMBER, "format": "csv"}).status_code == 403


def test_the_admin_index_links_to_the_report(console):
    page = console.get("/admin/").content.decode()

    assert f'href="{REPORT}"' in page and "Usage and cost" in page


def test_figures_and_totals_add_up_the_rows_of_the_period(console, december):
    response = console.get(REPORT, DECEMBER)

    assert rows_of(response) == {
        "teammate@example.com": (1, 3, 6, 12, 0, 24, Decimal("2.25")),
        "owner@example.com": (2, 7, 10, 20, 3, 0, Decimal("1.45")),
    }
    assert [row.name for row in response.context["rows"]] == ["teammate@example.com", "owner@example.com"]
    totals = response.context["totals"]
    assert totals.name == "All 2 users"
    assert (totals.figures.sandboxes, totals.figures.running_hours, totals.figures.cost) == (3, 10, Decimal("3.70"))
    page = response.content.decode()
    assert "$3.70" in page and "$2.25" in page and "24.00" in page


def test_filters_change_the_numbers(console, december):
    by_provider = rows_of(console.get(REPORT, {**DECEMBER, "provider": "daytona"}))
    by_user = rows_of(console.get(REPORT, {**DECEMBER, "user": "TEAM"}))
    one_day = console.get(REPORT, {"start": "2026-12-01", "end": "2026-12-02"})
    november = console.get(REPORT, {"start": "2026-11-01", "end": "2026-11-30"})
    cheapest_first = console.get(REPORT, {**DECEMBER, "sort": "cost"})

    assert by_provider == {"owner@example.com": (1, 4, 4, 8, 0, 0, Decimal("1.00"))}
    assert list(by_user) == ["teammate@example.com"]
    assert rows_of(one_day) == {"owner@example.com": (1, 2, 4, 8, 0, 0, Decimal("0.30"))}
    assert one_day.context["totals"].figures.cost == Decimal("0.30")
    assert november.context["totals"].figures.cost == Decimal("9.00")
    assert [row.name for row in cheapest_first.context["rows"]] == ["owner@example.com", "teammate@example.com"]


def test_dates_choose_the_custom_period_and_deleted_users_keep_their_cost(console, december):
    used(None, date(2026, 12, 2), cost="0.50").save()

    response = console.get(REPORT, DECEMBER)

    assert '<option value="custom" selected>' in response.content.decode()
    assert rows_of(response)["(deleted user)"][-1] == Decimal("0.50")
    assert response.context["totals"].figures.cost == Decimal("4.20")


def test_named_periods_end_today(console, owner):
    today = utc_day(timezone.now())
    UsageDay.objects.bulk_create(
        [used(owner, today, cost="1.00", name="a"), used(owner, today - timedelta(days=10), cost="2.00", name="b")]
    )

    week = console.get(REPORT, {"period": "last_7_days"})
    month = console.get(REPORT, {"period": "last_30_days"})

    assert (week.context["report"].start, week.context["report"].end) == (today - timedelta(days=6), today)
    assert week.context["totals"].figures.cost == Decimal("1.00")
    assert month.context["totals"].figures.cost == Decimal("3.00")
    assert len(month.context["chart"].bars) == 30


def test_rows_by_provider(console, december):
    response = console.get(REPORT, {**DECEMBER, "by": "provider"})

    assert rows_of(response) == {
        "local": (2, 6, 12, 24, 3, 24, Decimal("2.70")),
        "daytona": (1, 4, 4, 8, 0, 0, Decimal("1.00")),
    }
    assert response.context["totals"].name == "All 2 providers"


def test_bad_filters_are_explained(console, december):
    backwards = console.get(REPORT, {"start": "2026-12-31", "end": "2026-12-01"})
    too_long = console.get(REPORT, {"start": "2025-01-01", "end": "2026-12-31"})

    assert "comes after its last" in backwards.content.decode()
    assert "at most 366 days" in too_long.content.decode()
    assert console.get(REPORT, {"start": "2026-12-31", "end": "2026-12-01", "format": "csv"}).status_code == 400


def test_the_chart_has_one_bar_per_day_with_its_spend(console, december):
    page = console.get(REPORT, DECEMBER).content.decode()

    svg = re.search(r"<svg viewBox.*?</svg>", page, re.S).group(0)
    assert 'role="img"' in svg and '<title id="spend-title">Daily spend, 2026-12-01 to 2026-12-31</title>' in svg
    assert svg.count('class="bar"') == 31
    tooltips = re.findall(r"<g class=\"day\"><title>([^<]*)</title>", svg)
    assert len(tooltips) == 31
    assert tooltips[0] == "2026-12-01: $0.30"
    assert tooltips[1] == "2026-12-02: $0.00"
    assert tooltips[2] == "2026-12-03: $3.40"
    assert "$3.70 over 31 days; the most on 2026-12-03: $3.40." in page
    heights = [float(h) for h in re.findall(r'class="bar" x="[^"]*" y="[^"]*" width="[^"]*" height="([^"]*)"', svg)]
    assert heights[2] == max(heights) and heights[1] == 0 and 0 < heights[0] < heights[2]


def test_the_chart_follows_the_filters(console, december):
    page = console.get(REPORT, {**DECEMBER, "user": "owner"}).content.decode()

    assert "<title>2026-12-03: $1.15</title>" in page


def read_csv(content: bytes) -> list[list[str]]:
    return list(csv.reader(io.StringIO(content.decode())))


def test_csv_has_a_row_per_user_and_day(console, december):
    response = console.get(REPORT, {**DECEMBER, "format": "csv"})

    assert response.streaming and response["Content-Type"].startswith("text/csv")
    assert 'filename="usage-by-user-2026-12-01-to-2026-12-31.csv"' in response["Content-Disposition"]
    header, *rows = read_csv(b"".join(response.streaming_content))
    assert header == [
        "date",
        "user_id",
        "user_email",
        "sandboxes",
        "running_hours",
        "vcpu_hours",
        "memory_gib_hours",
        "disk_gib_hours_billable",
        "stopped_disk_gib_hours",
        "cost_usd",
    ]
    owner_id = str(get_user_model().objects.get(email="owner@example.com").pk)
    teammate_id = str(get_user_model().objects.get(email="teammate@example.com").pk)
    assert [row[:4] + row[-1:] for row in rows] == [
        ["2026-12-01", owner_id, "owner@example.com", "1", "0.300000"],
        ["2026-12-03", owner_id, "owner@example.com", "2", "1.150000"],
        ["2026-12-03", teammate_id, "teammate@example.com", "1", "2.250000"],
    ]
    assert rows[2][4:9] == ["3.000000", "6.000000", "12.000000", "0.000000", "24.000000"]
    assert sum(Decimal(row[-1]) for row in rows) == Decimal("3.70")


def test_csv_by_provider_with_filters(console, december):
    response = console.get(REPORT, {**DECEMBER, "format": "csv", "by": "provider", "user": "owner"})

    header, *rows = read_csv(b"".join(response.streaming_content))
    assert header[:3] == ["date", "provider", "sandboxes"]
    assert [(row[0], row[1], row[-1]) for row in rows] == [
        ("2026-12-01", "local", "0.300000"),
        ("2026-12-03", "daytona", "1.000000"),
        ("2026-12-03", "local", "0.150000"),
    ]


def test_csv_streams_under_asgi(operator, december):
    """Served by uvicorn, the export is an asynchronous stream read a chunk of rows at a time."""

    async def download():
        client = AsyncClient()
        await client.aforce_login(operator)
        response = await client.get(REPORT, {**DECEMBER, "format": "csv"})
        assert response.is_async
        return b"".join([chunk async for chunk in response.streaming_content])

    header, *rows = read_csv(async_to_sync(download)())
    assert header[-1] == "cost_usd" and len(rows) == 3


def test_the_page_says_when_the_rollup_last_ran(console, december):
    before = console.get(REPORT, DECEMBER).content.decode()
    RollupRun.objects.create(finished_at=timezone.now() - timedelta(minutes=12), days=1, rows=4)

    after = console.get(REPORT, DECEMBER).content.decode()

    assert "has not run yet" in before
    assert "last run" in after and "12\xa0minutes ago" in after


def many_users(count: int, days: int = 3) -> None:
    users = get_user_model().objects.bulk_create(
        [get_user_model()(username=f"user{n:04}@example.com", email=f"user{n:04}@example.com") for n in range(count)]
    )
    UsageDay.objects.bulk_create(
        [
            used(user, date(2026, 12, 1) + timedelta(days=d), cost=f"{n % 7 + 1}.00")
            for n, user in enumerate(users)
            for d in range(days)
        ]
    )


@pytest.mark.parametrize("users", [5, 200])
def test_queries_do_not_grow_with_the_number_of_users(console, users, django_assert_max_num_queries):
    many_users(users)

    with django_assert_max_num_queries(8):
        page = console.get(REPORT, DECEMBER)
    with django_assert_max_num_queries(6):
        export = console.get(REPORT, {**DECEMBER, "format": "csv"})
        lines = b"".join(export.streaming_content).splitlines()

    assert page.context["totals"].name == f"All {users} users"
    assert len(page.context["rows"]) == min(users, 100)
    assert len(lines) == 1 + 3 * users


def test_pages_of_a_hundred_users_keep_the_filters(console):
    many_users(150, days=1)

    first = console.get(REPORT, {**DECEMBER, "sort": "name"})
    second = console.get(REPORT, {**DECEMBER, "sort": "name", "page": 2})

    assert len(first.context["rows"]) == 100 and len(second.context["rows"]) == 50
    assert first.context["rows"][0].name == "user0000@example.com"
    assert second.context["rows"][0].name == "user0100@example.com"
    assert "page=2" in first.content.decode() and "sort=name" in first.content.decode()
    assert second.context["totals"].figures.cost == first.context["totals"].figures.cost
