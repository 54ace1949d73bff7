"""``/metrics``: the numbers move with what happens (launches of each kind, a stop, failures),
the database's gauges say what the rows say, every process group's files are merged, and only
the bearer token or an allowed network gets in.

Counters belong to the test process and only grow, so each test compares scrapes taken before
and after what it does."""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
import time
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from sandboxes.models import Sandbox, SandboxState, TerminalSession
from sandboxes.providers import timed
from sandboxes.providers.base import (
    Capability,
    ErrorKind,
    ProviderError,
    RemoteSandbox,
    RemoteState,
    SandboxProvider,
    SandboxSpec,
)
from sandboxes.services import sandbox_get_or_create_row, sandboxes_stop_idle
from tests.conftest import launch, signed_in
from usage.metering import utc_day
from usage.models import BudgetAlert, UsageDay

pytestmark = pytest.mark.django_db
ROOT = Path(__file__).resolve().parent.parent
TOKEN = "metrics-token-3b9d"
LATER = timedelta(hours=10)  # past everyone's idle period


@pytest.fixture(autouse=True)
def metrics_token(settings, monkeypatch):
    settings.METRICS_TOKEN = TOKEN
    settings.METRICS_ALLOWED_NETWORKS = []
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)


def scrape(**headers) -> dict[tuple, float]:
    """Every sample of a scrape with the token, keyed by name and sorted labels."""
    response = Client().get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}", **headers)
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain; version=")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.content.decode())
        for sample in family.samples
    }


def moved(before: dict, after: dict, name: str, **labels) -> float:
    key = (name, tuple(sorted(labels.items())))
    assert key in after, f"no {name}{labels} in the scrape"
    return after[key] - before.get(key, 0.0)


def users(count: int, prefix: str = "user") -> list:
    """Users without a password (hashing one takes a while): rows to count, not to sign in."""
    model = get_user_model()
    return model.objects.bulk_create(
        [model(username=f"{prefix}{n}@example.com", email=f"{prefix}{n}@example.com") for n in range(count)]
    )


def launch_ok(client) -> None:
    response = launch(client)
    assert response.status_code == 200, response.content


# --- what happens ------------------------------------------------------------------------------


def test_a_create_a_stop_a_resume_a_warm_launch_and_failures_move_their_metrics(daytona, owner):
    client = signed_in(owner)
    before = scrape()

    launch_ok(client)  # creates
    sandboxes_stop_idle(now=timezone.now() + LATER)  # the idle policy stops it
    launch_ok(client)  # starts the stopped sandbox
    launch_ok(client)  # finds it running
    after = scrape()

    for kind in ("create", "resume", "warm"):
        assert moved(before, after, "joepro_launch_duration_seconds_count", kind=kind) == 1
        assert moved(before, after, "joepro_launch_duration_seconds_bucket", kind=kind, le="+Inf") == 1
    assert moved(before, after, "joepro_idle_stops_total", reason="idle", outcome="stopped") == 1
    calls = "joepro_provider_call_duration_seconds_count"
    assert moved(before, after, calls, provider="daytona", operation="create", outcome="ok") == 1
    assert moved(before, after, calls, provider="daytona", operation="stop", outcome="ok") == 1
    assert moved(before, after, calls, provider="daytona", operation="start", outcome="ok") == 1
    assert moved(before, after, calls, provider="daytona", operation="mint_access", outcome="ok") >= 1
    assert after[("joepro_sandboxes", (("provider", "daytona"), ("state", "started")))] == 1
    assert after[("joepro_sandboxes", (("provider", "daytona"), ("state", "stopped")))] == 0

    # Daytona refuses to stop, then to start: the idle stop fails, then the launch does.
    daytona.fault("stop", "status", status=503, times=50)
    sandboxes_stop_idle(now=timezone.now() + LATER)
    failed = scrape()
    assert moved(after, failed, "joepro_idle_stops_total", reason="idle", outcome="failed") == 1
    assert moved(after, failed, calls, provider="daytona", operation="stop", outcome="unavailable") == 1

    daytona.clear_faults()
    sandboxes_stop_idle(now=timezone.now() + LATER)
    daytona.fault("start", "status", status=503, times=50)
    response = launch(client)
    assert response.status_code == 503
    final = scrape()
    assert moved(failed, final, "joepro_launch_failures_total", code="provider_unavailable") == 1
    assert moved(failed, final, calls, provider="daytona", operation="start", outcome="unavailable") == 1
    assert moved(failed, final, "joepro_launch_duration_seconds_count", kind="resume") == 0
    assert final[("joepro_sandboxes", (("provider", "daytona"), ("state", "stopped")))] == 1


def test_a_launch_completed_by_a_later_call_is_observed_once_from_its_first_call(daytona, owner, settings):
    settings.SANDBOX_LAUNCH_WAIT_SECONDS = 0.2
    daytona.transition_seconds = 600  # the sandbox builds until the test says it is done
    client = signed_in(owner)
    before = scrape()

    first = launch(client)
    first_answered = time.monotonic()
    assert first.status_code == 202
    assert launch(client).status_code == 202  # still building
    pending = scrape()
    daytona.set_state(first.json()["sandbox"]["id"], "started")
    completing = time.monotonic()
    launch_ok(client)
    after = scrape()

    assert moved(before, pending, "joepro_launch_duration_seconds_count", kind="create") == 0
    assert moved(before, after, "joepro_launch_duration_seconds_count", kind="create") == 1
    assert moved(before, after, "joepro_launch_duration_seconds_count", kind="warm") == 0
    # Its duration began at the first call, before the test waited on the second one.
    assert moved(before, after, "joepro_launch_duration_seconds_sum", kind="create") >= completing - first_answered


def test_a_refused_launch_counts_under_its_code(daytona, owner, settings):
    settings.SANDBOX_LAUNCH_RATE = "1/m"
    client = signed_in(owner)
    before = scrape()

    launch_ok(client)
    assert launch(client).status_code == 429

    assert moved(before, scrape(), "joepro_launch_failures_total", code="rate_limited") == 1


class Backend(SandboxProvider):
    """A backend whose create reads through the contract, as real ones wait for a sandbox."""

    name = "counted"
    capabilities = frozenset({Capability.PROCESS})

    def get(self, remote_id):
        return None

    def create(self, spec, *, wait_seconds):
        self.get("new")
        self.get("new")
        return RemoteSandbox(id="new", name=spec.name, state=RemoteState.STARTED)

    def start(self, remote_id, *, wait_seconds):
        raise ProviderError("busy", kind=ErrorKind.CONFLICT)

    def list_managed(self, labels):
        yield RemoteSandbox(id="a", name="a", state=RemoteState.STOPPED)
        self.get("a")
        yield RemoteSandbox(id="b", name="b", state=RemoteState.STOPPED)


def test_provider_calls_are_timed_once_each_and_the_provider_stays_itself():
    provider = timed(Backend())
    before = scrape()

    provider.create(SandboxSpec(name="n", labels={}, cpu=1, memory_gb=1, disk_gb=1), wait_seconds=0)
    with pytest.raises(ProviderError):
        provider.start("new", wait_seconds=0)
    listed = [remote.id for remote in provider.list_managed({})]
    provider.get("x")
    after = scrape()

    assert isinstance(provider, Backend) and provider.supports(Capability.PROCESS) and listed == ["a", "b"]
    calls = "joepro_provider_call_duration_seconds_count"
    assert moved(before, after, calls, provider="counted", operation="create", outcome="ok") == 1
    assert moved(before, after, calls, provider="counted", operation="start", outcome="conflict") == 1
    assert moved(before, after, calls, provider="counted", operation="list_managed", outcome="ok") == 1
    # The reads inside create are part of it; one made while listing, between two items, and the
    # last one are calls of their own.
    assert moved(before, after, calls, provider="counted", operation="get", outcome="ok") == 2


# --- what the database says ----------------------------------------------------------------------


def test_the_database_gauges_count_the_rows(settings):
    settings.METRICS_ACTIVE_USER_MINUTES = 15
    settings.USAGE_CURRENCY = "EUR"
    now = timezone.now()
    people = users(4)
    rows = [sandbox_get_or_create_row(user=user) for user in people]
    states = [SandboxState.STARTED, SandboxState.STARTED, SandboxState.STARTING, SandboxState.STOPPED]
    for row, state, used in zip(rows, states, [1, 20, None, 5], strict=True):
        Sandbox.objects.filter(pk=row.pk).update(
            provider="local",
            state=state,
            state_changed_at=now - timedelta(minutes=3),
            last_activity_at=now - timedelta(minutes=used) if used is not None else None,
        )
    TerminalSession.objects.create(
        sandbox=rows[0], session_id="attached", remote_id="r", created_at=now, clients=1, attached_until=now + LATER
    )
    TerminalSession.objects.create(
        sandbox=rows[1], session_id="detached", remote_id="r", created_at=now, clients=0, attached_until=now
    )
    today = utc_day(now)
    for user, row, cost in [(people[0], rows[0], "1.250000"), (people[1], rows[1], "0.500000")]:
        UsageDay.objects.create(
            user=user,
            sandbox=row,
            sandbox_name=row.remote_name,
            provider="local",
            day=today,
            cost=Decimal(cost),
            computed_at=now,
        )
    UsageDay.objects.create(
        user=people[0],
        sandbox=rows[0],
        sandbox_name=rows[0].remote_name,
        provider="local",
        day=today.replace(day=1) - timedelta(days=1),
        cost=Decimal("99"),
        computed_at=now,
    )  # last month
    month = today.replace(day=1)
    for user, limit, threshold in [
        (people[0], "cost", 100),
        (people[0], "running_hours", 100),
        (people[1], "cost", 100),
        (people[2], "cost", 80),
    ]:
        BudgetAlert.objects.create(
            user=user, month=month, limit=limit, threshold=threshold, used=1, allowed=1, raised_at=now
        )

    samples = scrape()

    assert samples[("joepro_sandboxes", (("provider", "local"), ("state", "started")))] == 2
    assert samples[("joepro_sandboxes", (("provider", "local"), ("state", "starting")))] == 1
    assert samples[("joepro_sandboxes", (("provider", "local"), ("state", "stopped")))] == 1
    assert samples[("joepro_sandboxes", (("provider", "local"), ("state", "error")))] == 0
    starting = samples[("joepro_sandbox_oldest_transition_seconds", (("state", "starting"),))]
    assert 180 <= starting < 3600
    assert samples[("joepro_sandbox_oldest_transition_seconds", (("state", "stopping"),))] == 0
    assert samples[("joepro_terminal_sessions_open", ())] == 1
    assert samples[("joepro_active_users", ())] == 2  # used 1 and 5 minutes ago; not 20
    assert samples[("joepro_cost_month_to_date", (("currency", "EUR"),))] == pytest.approx(1.75)
    assert samples[("joepro_budget_exceeded_users", (("limit", "cost"),))] == 2
    assert samples[("joepro_budget_exceeded_users", (("limit", "running_hours"),))] == 1


def test_a_scrape_makes_the_same_few_queries_however_many_rows(django_assert_max_num_queries):
    for user in users(30, prefix="many"):
        sandbox_get_or_create_row(user=user)
    with django_assert_max_num_queries(8):
        scrape()


# --- who may scrape ------------------------------------------------------------------------------


def status(**headers) -> int:
    return Client().get("/metrics", **headers).status_code


def test_only_the_bearer_token_gets_in(settings):
    assert status() == 403
    assert status(HTTP_AUTHORIZATION="Bearer wrong-token") == 403
    assert status(HTTP_AUTHORIZATION=f"Basic {TOKEN}") == 403
    assert status(HTTP_AUTHORIZATION=f"Bearer {TOKEN}x") == 403
    assert status(HTTP_AUTHORIZATION=f"Bearer {TOKEN}") == 200
    assert status(HTTP_AUTHORIZATION=f"bearer {TOKEN}") == 200


def test_nobody_gets_in_when_nothing_is_configured(settings):
    settings.METRICS_TOKEN = ""
    assert status() == 403
    assert status(HTTP_AUTHORIZATION="Bearer ") == 403
    assert status(HTTP_AUTHORIZATION="Bearer") == 403


def test_an_allowed_network_gets_in_and_others_do_not(settings):
    settings.METRICS_TOKEN = ""
    settings.METRICS_ALLOWED_NETWORKS = [ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("2001:db8::/32")]

    assert status(REMOTE_ADDR="10.1.2.3") == 200
    assert status(REMOTE_ADDR="2001:db8::7") == 200
    assert status(REMOTE_ADDR="::ffff:10.9.9.9") == 200
    assert status(REMOTE_ADDR="192.0.2.1") == 403
    # The address is the one the server resolved, never a header a client sets.
    assert status(REMOTE_ADDR="192.0.2.1", HTTP_X_FORWARDED_FOR="10.1.2.3") == 403
    assert status(REMOTE_ADDR="192.0.2.1", HTTP_X_REAL_IP="10.1.2.3") == 403


def test_refusals_and_scrapes_are_not_kept_by_caches():
    response = Client().get("/metrics")
    assert response.status_code == 403
    assert response["Cache-Control"] == "no-store"
    assert TOKEN not in response.content.decode()


# --- several processes ---------------------------------------------------------------------------

RECORD = """
import sys
from usage.instruments import LAUNCH_DURATION, LAUNCH_FAILURES
LAUNCH_FAILURES.labels(code="capacity_reached").inc(int(sys.argv[1]))
for seconds in sys.argv[2:]:
    LAUNCH_DURATION.labels(kind="warm").observe(float(seconds))
"""


def record_in(directory: Path, *args: str) -> None:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)}
    subprocess.run([sys.executable, "-c", RECORD, *args], cwd=ROOT, env=env, check=True, timeout=60)


def test_a_scrape_merges_the_files_of_every_process_group(tmp_path, monkeypatch):
    record_in(tmp_path / "web", "2", "0.3")
    record_in(tmp_path / "worker", "3", "7")
    record_in(tmp_path / "worker", "1")  # a second worker process, since exited
    (tmp_path / "notes.db").write_bytes(b"not metrics")  # beside the groups: ignored
    (tmp_path / "web" / "notes.db").write_bytes(b"not metrics")  # no metric type: ignored
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "web"))

    samples = scrape()

    assert samples[("joepro_launch_failures_total", (("code", "capacity_reached"),))] == 6
    assert samples[("joepro_launch_duration_seconds_count", (("kind", "warm"),))] == 2
    assert samples[("joepro_launch_duration_seconds_sum", (("kind", "warm"),))] == pytest.approx(7.3)
    assert samples[("joepro_launch_duration_seconds_bucket", (("kind", "warm"), ("le", "0.5")))] == 1
    assert samples[("joepro_launch_duration_seconds_bucket", (("kind", "warm"), ("le", "10.0")))] == 2
    assert ("joepro_active_users", ()) in samples  # the database's gauges are there too
    # This process's own collectors would describe only the one process that answered.
    assert not any(name.startswith("python_") for name, _ in samples)


def test_without_a_directory_the_process_serves_its_own_registry():
    samples = scrape()
    assert any(name.startswith("python_") for name, _ in samples)
    assert ("joepro_active_users", ()) in samples
