"""Operator-scale scenarios: a reconcile pass over 10,000 managed sandboxes and
``stop_sandboxes --all`` over 1,000 running ones, each run as its management command in a
subprocess of its own (as an operator or Celery beat would run it).

Both start from an empty fake and no sandbox rows: the fake is seeded through its test hook
(orphans through its REST API, with their owner's labels, as the portal creates sandboxes) and
the rows are written with the ORM, pointing at the same remote ids and names.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from datetime import timedelta

import httpx

from . import accounts
from .report import Row, duration, unavailable_row
from .stack import API_KEY, ROOT, manage

COMMANDS = ROOT / "sandboxes" / "management" / "commands"
PAGE_SIZE = 200  # the provider's page size for GET /sandbox (sandboxes/providers/daytona/provider.py)
SEED_CONCURRENCY = 32


def _missing(command: str) -> str | None:
    if not (COMMANDS / f"{command}.py").exists():
        return f"`manage.py {command}` does not exist yet"
    return None


# --- filling the fake and the database ----------------------------------------------------------


def fill(ctx, *, prefix: str, count: int) -> list[dict]:
    """``count`` users, each with a started sandbox in the fake and a matching row. Returns the
    rows' data.

    The sandboxes are seeded in one call (``/__seed``): they carry the deployment's managed
    labels, which is what a listing filters on, but not each owner's label, which only the
    adoption of orphans reads (see :func:`add_orphans`). Creating 10,000 through the API, one
    request each, would take the fake most of a minute.
    """
    from sandboxes.services import managed_labels

    users = accounts.make_users(prefix, count)
    ctx.fake.seed(count, labels=managed_labels(), state="started", name_prefix=prefix)
    ids = {sandbox["name"]: sandbox["id"] for sandbox in ctx.fake.sandboxes()}
    return [
        {
            "user_id": user.pk,
            "remote_name": f"{prefix}{index}",
            "remote_id": ids[f"{prefix}{index}"],
            "labels": accounts.owner_labels_of(user.pk),
            "state": "started",
        }
        for index, user in enumerate(users)
    ]


def add_orphans(ctx, *, prefix: str, count: int) -> None:
    """Sandboxes created for users who have no row (a launch that died before its row was
    written): created through the API with their owner's labels, as the portal creates them."""
    users = accounts.make_users(prefix, count)
    specs = [{"remote_name": f"{prefix}{user.pk}", "labels": accounts.owner_labels_of(user.pk)} for user in users]
    ctx.fake.configure(latency=0.0)
    try:
        asyncio.run(_create_remote(ctx.fake.api_url, specs))
    finally:
        ctx.fake.configure(latency=ctx.latency)


async def _create_remote(api_url: str, specs: list[dict]) -> list[str]:
    headers = {"Authorization": f"Bearer {API_KEY}"}
    limits = httpx.Limits(max_connections=SEED_CONCURRENCY)
    gate = asyncio.Semaphore(SEED_CONCURRENCY)
    async with httpx.AsyncClient(trust_env=False, timeout=60.0, limits=limits, headers=headers) as client:

        async def one(spec: dict) -> str:
            async with gate:
                response = await client.post(
                    f"{api_url}/sandbox", json={"name": spec["remote_name"], "labels": spec["labels"]}
                )
                response.raise_for_status()
                return response.json()["id"]

        return list(await asyncio.gather(*(one(spec) for spec in specs)))


def start_clean(ctx) -> None:
    """No sandbox in the fake, no sandbox row."""
    ctx.fake.reset()
    accounts.forget_sandboxes()


def rows_settled_since(rows: list[dict], age: timedelta) -> None:
    """Mark the rows' last state change ``age`` ago: a reconcile treats changes younger than
    the listing's lag as ambiguous, and fleets at rest are not all that young."""
    from django.utils import timezone

    from sandboxes.models import Sandbox

    moment = timezone.now() - age
    Sandbox.objects.filter(remote_id__in=[row["remote_id"] for row in rows]).update(
        state_changed_at=moment, last_synced_at=moment
    )


def process_start_seconds(ctx) -> float:
    """Wall time of a management command's process that only starts: the interpreter, Django
    and the provider (the Daytona SDK's import is most of it). Reported beside wall times."""
    code = "from sandboxes.providers import get_provider; get_provider('daytona')"
    return manage(ctx.extra["env"], "shell", "--no-imports", "-c", code).wall


# --- reconcile at scale -------------------------------------------------------------------------


def reconcile_at_scale(ctx) -> list[Row]:
    scenario = "reconcile at scale"
    target_text = "provider calls ≤ pages + 1% of sandboxes"
    missing = _missing("reconcile_sandboxes")
    if missing:
        return [unavailable_row(scenario, target_text, missing)]
    total = 1000 if ctx.extra.get("quick") else 10_000
    drifted, ghosts, orphans = total // 200, total // 1000, total // 1000
    start_clean(ctx)
    prepare = time.perf_counter()
    rows = fill(ctx, prefix="scale-", count=total - orphans + ghosts)
    # Orphans: sandboxes whose owners have no row (adopted by the pass after a lookup each).
    add_orphans(ctx, prefix="orphan-", count=orphans)
    # Ghosts: rows whose sandbox was deleted behind the portal's back (a lookup each).
    ghost_rows = rows[:ghosts]
    # Drift: sandboxes stopped behind the portal's back (visible in the listing, no lookup).
    drifted_rows = rows[ghosts : ghosts + drifted]
    accounts.add_sandbox_rows(rows)
    rows_settled_since(rows, timedelta(hours=1))
    for row in ghost_rows:
        ctx.fake.hook("POST", "/__delete", {"id_or_name": row["remote_id"]})
    for row in drifted_rows:
        ctx.fake.set_state(row["remote_id"], "stopped")
    remote_count = ctx.fake.hook("GET", "/__stats")["sandboxes"]
    prepare = time.perf_counter() - prepare
    accounts.close_connections()

    startup = process_start_seconds(ctx)
    calls_before, fake_cpu = ctx.fake.calls(), ctx.fake.cpu_seconds()
    run = manage(ctx.extra["env"], "reconcile_sandboxes", timeout=300)
    wall, output = run.wall, run.stdout
    calls_after, fake_cpu = ctx.fake.calls(), ctx.fake.cpu_seconds() - fake_cpu
    used = {op: calls_after.get(op, 0) - calls_before.get(op, 0) for op in calls_after}
    used = {op: count for op, count in used.items() if count}
    calls = sum(used.values())
    pages = math.ceil(remote_count / PAGE_SIZE)
    budget = pages + remote_count // 100
    states = accounts.sandbox_states()
    correct = (
        states.get("stopped", 0) == drifted
        and states.get("gone", 0) == ghosts
        and sum(states.values()) == len(rows) + orphans
    )
    summary = " ".join(line.strip() for line in output.strip().splitlines()[:3])
    notes = [
        f"{remote_count} managed sandboxes in the fake ({pages} pages of {PAGE_SIZE}), {len(rows)} rows; "
        f"{drifted} stopped and {ghosts} deleted behind the portal's back, {orphans} orphans; "
        f"calls by operation {used}; rows afterwards {states}",
        f"wall time includes about {duration(startup)} of process start (Django and the Daytona SDK's import); "
        f"CPU: the command {run.cpu:.1f} s, the fake {fake_cpu:.1f} s; "
        f"preparing the fleet took {prepare:.1f} s (not measured)",
        f"command output: {_clean(summary)}",
    ]
    return [
        Row(
            scenario=f"reconcile at scale ({remote_count:,} sandboxes, {ctx.latency * 1000:.0f} ms latency)",
            samples=1,
            median=duration(wall),
            p95="—",
            calls=f"{calls} ({pages} pages + {calls - used.get('list', 0)} lookups)",
            target=f"calls ≤ pages + 1% = {budget}; wall time reported",
            met=calls <= budget and correct,
            notes=notes,
        )
    ]


# --- bulk stop ----------------------------------------------------------------------------------


def bulk_stop(ctx) -> list[Row]:
    scenario = "bulk stop"
    target_text = "< 10 s"
    missing = _missing("stop_sandboxes")
    if missing:
        return [unavailable_row(scenario, target_text, missing)]
    total = 200 if ctx.extra.get("quick") else 1000
    start_clean(ctx)
    rows = fill(ctx, prefix="stop-", count=total)
    accounts.add_sandbox_rows(rows)
    rows_settled_since(rows, timedelta(hours=1))
    accounts.close_connections()

    startup = process_start_seconds(ctx)
    calls_before, fake_cpu = ctx.fake.calls(), ctx.fake.cpu_seconds()
    run = manage(ctx.extra["env"], "stop_sandboxes", "--all", timeout=300)
    wall, output = run.wall, run.stdout
    calls_after, fake_cpu = ctx.fake.calls(), ctx.fake.cpu_seconds() - fake_cpu
    used = {op: calls_after.get(op, 0) - calls_before.get(op, 0) for op in calls_after}
    used = {op: count for op, count in used.items() if count}
    remote_states: dict[str, int] = {}
    for sandbox in ctx.fake.sandboxes():
        remote_states[sandbox["state"]] = remote_states.get(sandbox["state"], 0) + 1
    # Daytona answers a stop at once with "stopping": the stop is sent, the rest is Daytona's.
    stopped = remote_states.get("stopped", 0) + remote_states.get("stopping", 0)
    rows_after = accounts.sandbox_states()
    rows_at_rest = rows_after.get("stopped", 0) + rows_after.get("stopping", 0)
    sequential = sum(used.values()) * ctx.latency
    notes = [
        f"{total} started sandboxes; calls by operation {used}; remote states afterwards {remote_states}; "
        f"rows afterwards {rows_after}",
        f"one call after another these calls would take {sequential:.0f} s at {ctx.latency * 1000:.0f} ms each; "
        f"wall time includes about {duration(startup)} of process start (Django and the Daytona SDK's import); "
        f"CPU: the command {run.cpu:.1f} s, the fake {fake_cpu:.1f} s",
        f"command output: {_clean(output.strip().splitlines()[-1] if output.strip() else '')}",
    ]
    return [
        Row(
            scenario=f"bulk stop (`stop_sandboxes --all`, {total:,} started, {ctx.latency * 1000:.0f} ms latency)",
            samples=1,
            median=duration(wall),
            p95="—",
            calls=str(sum(used.values())),
            target="< 10 s, every sandbox stopping or stopped",
            met=wall < 10 and stopped == total and rows_at_rest == total,
            notes=notes,
        )
    ]


def _clean(text: str) -> str:
    return re.sub(r"\s+", " ", text)[:400]
