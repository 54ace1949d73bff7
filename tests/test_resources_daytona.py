"""Memory and disk of Daytona sandboxes, measured through the toolbox (the real SDK against the
HTTP fake, whose sandboxes' figures the tests set), the alert at 90 % with its email, and that
measuring is not activity: neither the portal's record of use nor Daytona's idle timer moves."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from sandboxes.models import Sandbox, SandboxState
from sandboxes.providers.base import ErrorKind, ProviderError, ResourceUsage
from sandboxes.providers.daytona.resources import parse_usage
from tests.daytona_fixtures import _parse, provider, started_sandbox  # noqa: F401 - fixtures
from tests.fake_daytona.fixtures import FAKE_DAYTONA_API_KEY
from tests.fake_daytona.wire import http
from usage.models import ResourceSample
from usage.resources import resources_sample

MIB, GIB = 1 << 20, 1 << 30
SKIP = {"X-Daytona-Skip-Last-Activity-Update": "true"}


@pytest.fixture
def isolated_commands(fake_daytona):
    if not fake_daytona.machines.bwrap:
        pytest.skip("the fake's sandbox figures need bubblewrap")


def _row(user, remote_id: str, **fields) -> Sandbox:
    values = dict(
        user=user,
        provider="daytona",
        remote_name=f"joepro-u{user.pk}",
        remote_id=remote_id,
        state=SandboxState.STARTED,
        cpu=2,
        memory_gb=4,
        disk_gb=8,
        last_activity_at=timezone.now() - timedelta(minutes=30),
        last_activity_source="terminal",
    )
    values.update(fields)
    return Sandbox.objects.create(**values)


def _last_activity(fake, sandbox_id: str) -> float:
    return _parse(fake.sandbox(sandbox_id)["lastActivityAt"]).timestamp()


def test_the_provider_reads_the_figures_inside_the_sandbox(fake_daytona, provider, isolated_commands):  # noqa: F811
    sandbox_id = fake_daytona.add_sandbox(name="joepro-u42", state="started", memory=4, disk=8)["id"]
    fake_daytona.machines.set_resources(
        sandbox_id, memory_bytes=700 * MIB, memory_limit_bytes=GIB, disk_bytes=12 * MIB, disk_limit_bytes=64 * MIB
    )

    usage = provider.resource_usage(sandbox_id)

    assert usage == ResourceUsage(
        memory_bytes=700 * MIB, memory_limit_bytes=GIB, disk_bytes=12 * MIB, disk_limit_bytes=64 * MIB
    )
    (request,) = [r for r in fake_daytona.requests if r.operation == "process_execute"]
    assert request.skips_activity


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        (  # cgroup v2 without a limit of its own, GNU df
            "memory: 314572800 max\ndisk: overlay 10737418240 1073741824 9663676416 10% /\n",
            (300 * MIB, 2 * GIB, GIB, 8 * GIB),
        ),
        (  # cgroup v1's "no limit", BusyBox df, a warning on stderr first, a mount point with a space
            "sed: /proc/self/cgroup: Permission denied\nmemory: 52428800 9223372036854771712\n"
            "disk: /dev/vdb 1048576000 524288000 524288000 50% /home/my files\n",
            (50 * MIB, 2 * GIB, 500 * MIB, 1000 * MIB),
        ),
    ],
)
def test_the_measurement_s_output_is_read_whatever_the_tools(output, expected):
    usage = parse_usage(output, memory_gb=2, disk_gb=8)
    assert (usage.memory_bytes, usage.memory_limit_bytes, usage.disk_bytes, usage.disk_limit_bytes) == expected


def test_output_without_figures_is_refused():
    with pytest.raises(ValueError, match="memory"):
        parse_usage("disk: overlay 10 5 5 50% /\n", memory_gb=2, disk_gb=8)
    with pytest.raises(ValueError, match="disk"):
        parse_usage("memory: 5 10\ndisk: df: not found\n", memory_gb=2, disk_gb=8)


def test_stopped_and_gone_sandboxes_are_refused(fake_daytona, provider):  # noqa: F811
    stopped = fake_daytona.add_sandbox(name="joepro-u43", state="stopped")["id"]
    with pytest.raises(ProviderError) as refused:
        provider.resource_usage(stopped)
    assert refused.value.kind is ErrorKind.INVALID_STATE
    with pytest.raises(ProviderError) as gone:
        provider.resource_usage("no-such-sandbox")
    assert gone.value.kind is ErrorKind.NOT_FOUND
    assert not [r for r in fake_daytona.requests if r.operation == "process_execute"]


@pytest.mark.django_db
def test_sampling_is_not_activity_anywhere(daytona, owner, isolated_commands):
    sandbox_id = started_sandbox(daytona)
    daytona.machines.set_resources(sandbox_id, disk_limit_bytes=32 * MIB)
    row = _row(owner, sandbox_id)
    daytona.advance_clock(600)
    before = _last_activity(daytona, sandbox_id)

    report = resources_sample(now=timezone.now())
    daytona.advance_clock(20)  # past Daytona's 10 s flush of buffered activity

    assert report["sampled"] == 1
    assert daytona.activity_posts(sandbox_id) == []
    assert _last_activity(daytona, sandbox_id) == before
    fresh = Sandbox.objects.get(pk=row.pk)
    assert (fresh.last_activity_at, fresh.last_activity_source) == (row.last_activity_at, "terminal")
    assert fresh.remote_touched_at is None

    # The same request without the header counts: the assertions above would catch a leak.
    url = f"{daytona.toolbox_url}/{sandbox_id}/process/execute"
    auth = {"Authorization": f"Bearer {FAKE_DAYTONA_API_KEY}", "Content-Type": "application/json"}
    answer = http("POST", url, headers=auth, body=b'{"command": "true"}')
    assert answer.status == 200
    daytona.advance_clock(20)
    assert [post.source for post in daytona.activity_posts(sandbox_id)] == ["toolbox"]
    assert _last_activity(daytona, sandbox_id) > before


@pytest.mark.django_db
def test_the_alert_at_90_percent_emails_once_clears_below_80_and_comes_back(
    daytona, owner, mailoutbox, isolated_commands
):
    sandbox_id = started_sandbox(daytona)
    row = _row(owner, sandbox_id)
    machines = daytona.machines
    machines.set_resources(sandbox_id, memory_bytes=100 * MIB, memory_limit_bytes=GIB, disk_limit_bytes=40 * MIB)
    now = timezone.now()

    first = resources_sample(now=now)
    sample = ResourceSample.objects.get(sandbox=row)
    assert first["sampled"] == 1 and first["alerted"] == 0
    assert (sample.memory_bytes, sample.memory_limit_bytes) == (100 * MIB, GIB)
    assert sample.disk_limit_bytes == 40 * MIB and sample.disk_bytes < MIB
    assert sample.memory_alerted_at is None and sample.disk_alerted_at is None

    machines.set_resources(sandbox_id, disk_bytes=37 * MIB)  # 92.5 %
    resources_sample(now=now + timedelta(minutes=1))
    sample.refresh_from_db()
    assert sample.disk_alerted_at == now + timedelta(minutes=1) and sample.memory_alerted_at is None
    assert len(mailoutbox) == 1
    assert mailoutbox[0].to == ["owner@example.com"]
    assert "disk" in mailoutbox[0].subject and "92 %" in mailoutbox[0].subject
    assert "37 MiB of its 40 MiB of disk" in mailoutbox[0].body

    machines.set_resources(sandbox_id, disk_bytes=34 * MIB)  # 85 %: still alerted, no new email
    resources_sample(now=now + timedelta(minutes=2))
    sample.refresh_from_db()
    assert sample.disk_alerted_at == now + timedelta(minutes=1)
    assert len(mailoutbox) == 1

    machines.set_resources(sandbox_id, disk_bytes=30 * MIB)  # 75 %: cleared
    cleared = resources_sample(now=now + timedelta(minutes=3))
    sample.refresh_from_db()
    assert cleared["cleared"] == 1 and sample.disk_alerted_at is None

    machines.set_resources(sandbox_id, disk_bytes=38 * MIB, memory_bytes=950 * MIB)  # both over
    again = resources_sample(now=now + timedelta(minutes=4))
    sample.refresh_from_db()
    assert again["alerted"] == 2
    assert sample.disk_alerted_at == sample.memory_alerted_at == now + timedelta(minutes=4)
    assert sorted("memory" in mail.subject for mail in mailoutbox[1:]) == [False, True]
    assert len(mailoutbox) == 3


@pytest.mark.django_db
def test_a_failed_measurement_is_skipped_and_stopped_sandboxes_lose_their_sample(
    daytona, owner, teammate, isolated_commands
):
    running = started_sandbox(daytona, name="joepro-running")
    daytona.machines.set_resources(running, disk_limit_bytes=32 * MIB)
    broken = started_sandbox(daytona, name="joepro-broken")
    running_row = _row(owner, running)
    broken_row = _row(teammate, broken)
    resources_sample(now=timezone.now())
    assert ResourceSample.objects.filter(sandbox__in=[running_row, broken_row]).count() == 2

    daytona.fault("process_execute", "status", status=500, times=10)
    Sandbox.objects.filter(pk=running_row.pk).update(state=SandboxState.STOPPED)
    report = resources_sample(now=timezone.now())

    assert report["failed"] == 1 and report["removed"] == 1
    assert not ResourceSample.objects.filter(sandbox=running_row).exists()
    assert ResourceSample.objects.filter(sandbox=broken_row).exists()  # its last figures stand
