"""Memory and disk of sandboxes on this machine, read from the host (the sandbox's cgroup, or
its processes where this machine gives it none, and its home's filesystem): a file written in
the home raises the disk figure, a process holding memory raises the memory figure, and
measuring is no activity."""

from __future__ import annotations

import pytest
from django.utils import timezone

from sandboxes import services
from sandboxes.models import Sandbox
from sandboxes.providers import get_provider
from sandboxes.providers.base import ErrorKind, ProviderError
from sandboxes.providers.local import GIB
from sandboxes.providers.local.resources import processes_memory
from tests.conftest import launch, signed_in
from tests.local_fixtures import local_root, local_settings, run  # noqa: F401 - fixtures
from usage.models import ResourceSample
from usage.resources import resources_sample

MIB = 1 << 20

pytestmark = pytest.mark.django_db

HOLD_MEMORY = (
    "nohup python3 -c \"import time; held = b'x' * (96 << 20); open('/tmp/held', 'w').close(); time.sleep(120)\" "
    ">/dev/null 2>&1 & for i in $(seq 100); do [ -e /tmp/held ] && exit 0; sleep 0.05; done; exit 1"
)


def test_a_file_in_the_home_raises_disk_and_a_process_raises_memory(local_settings, owner):
    body = launch(signed_in(owner)).json()
    sandbox_id = body["sandbox"]["id"]
    provider = get_provider("local")
    row = Sandbox.objects.get(remote_id=sandbox_id)

    resources_sample(now=timezone.now())
    first = ResourceSample.objects.get(sandbox=row)
    assert first.memory_limit_bytes == 4 * GIB
    assert 0 < first.disk_limit_bytes <= 8 * GIB

    run(provider, sandbox_id, "head -c 40M /dev/urandom > ~/big.bin && sync")
    resources_sample(now=timezone.now())
    written = ResourceSample.objects.get(sandbox=row)
    assert written.disk_bytes >= first.disk_bytes + 38 * MIB

    run(provider, sandbox_id, HOLD_MEMORY)
    before = provider.get(sandbox_id).last_activity_at
    row.refresh_from_db()
    report = resources_sample(now=timezone.now())
    held = ResourceSample.objects.get(sandbox=row)
    assert report["sampled"] == 1
    assert held.memory_bytes >= written.memory_bytes + 80 * MIB
    # Where this machine gives sandboxes no memory cgroup, their processes' PSS counts instead.
    assert processes_memory(provider.record(sandbox_id)["process"]["pid_namespace"]) >= 90 * MIB

    # Measuring is nobody's activity: neither the agent's idle clock nor the portal's moved.
    assert provider.get(sandbox_id).last_activity_at == before
    fresh = Sandbox.objects.get(pk=row.pk)
    assert (fresh.last_activity_at, fresh.last_activity_source) == (row.last_activity_at, row.last_activity_source)


def test_a_stopped_local_sandbox_is_not_measured_and_loses_its_sample(local_settings, owner):
    body = launch(signed_in(owner)).json()
    sandbox_id = body["sandbox"]["id"]
    provider = get_provider("local")
    row = Sandbox.objects.get(remote_id=sandbox_id)
    resources_sample(now=timezone.now())
    assert ResourceSample.objects.filter(sandbox=row).exists()

    services.sandbox_stop(sandbox=row, actor_type="user", actor=owner, reason="stopped by its owner")

    with pytest.raises(ProviderError) as refused:
        provider.resource_usage(sandbox_id)
    assert refused.value.kind is ErrorKind.INVALID_STATE
    report = resources_sample(now=timezone.now())
    assert report["removed"] == 1 and report["sampled"] == 0
    assert not ResourceSample.objects.filter(sandbox=row).exists()
