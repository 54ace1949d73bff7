"""Fixtures for sandboxes on this machine: a real bubblewrap, a temporary root per test module,
and a teardown that stops every sandbox and checks that none of their processes is left."""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from sandboxes.providers import reset_providers
from sandboxes.providers.base import SandboxSpec
from sandboxes.providers.local import LocalProvider, namespace_members

CGROUP_PARENT = f"joepro-test-{os.getpid()}"
_names = itertools.count(1)


def make_provider(root: Path, **options) -> LocalProvider:
    return LocalProvider(root, cgroup_parent=CGROUP_PARENT, **options)


def spec(name: str | None = None, **overrides) -> SandboxSpec:
    values = {
        "name": name or f"test-sandbox-{os.getpid()}-{next(_names)}",
        "labels": {"joepro-managed": "true", "joepro-deployment": "test", "joepro-owner": "1"},
        "cpu": 2,
        "memory_gb": 4,
        "disk_gb": 8,
    }
    values.update(overrides)
    return SandboxSpec(**values)


ROOT_PREFIX = "joepro-local-"


@pytest.fixture(scope="module")
def local_root():
    """A fresh root (under /tmp, whose parents every sandbox uid can traverse). At the end
    every sandbox in it is stopped, and no process of any of them may remain. Roots left by
    a test run that was killed before its teardown are cleaned up first."""
    clean_up_after_dead_runs()
    provider = make_provider(Path(tempfile.mkdtemp(prefix=f"{ROOT_PREFIX}{os.getpid()}-")))
    problems = provider.problems()
    if any(problem.code in ("bwrap_missing", "bwrap_fails") for problem in problems):
        pytest.skip(f"bubblewrap cannot run here: {problems[0].message}")
    yield provider.root
    stop_everything(provider.root)


def clean_up_after_dead_runs() -> None:
    for root in Path(tempfile.gettempdir()).glob(f"{ROOT_PREFIX}*-*"):
        owner = root.name[len(ROOT_PREFIX) :].split("-", 1)[0]
        if owner.isdigit() and not os.path.exists(f"/proc/{owner}"):
            stop_everything(root, cgroup_parent=f"joepro-test-{owner}")


def stop_everything(root: Path, cgroup_parent: str = CGROUP_PARENT) -> None:
    provider = LocalProvider(root, cgroup_parent=cgroup_parent)
    namespaces = []
    for remote in list(provider.list_managed({})):
        record = provider.record(remote.id) or {}
        if (record.get("process") or {}).get("pid_namespace"):
            namespaces.append(record["process"]["pid_namespace"])
        provider.stop(remote.id, wait_seconds=5)
    deadline = time.monotonic() + 5
    while any(namespace_members(ns) for ns in namespaces) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = [pid for ns in namespaces for pid in namespace_members(ns)]
    shutil.rmtree(root, ignore_errors=True)
    for mount, _ in provider.cgroups.hierarchies.values():
        try:
            os.rmdir(mount / cgroup_parent)
        except OSError:
            pass
    assert not left, f"sandbox processes survived the test session: {left}"


@pytest.fixture(scope="module")
def provider(local_root):
    return make_provider(local_root)


@pytest.fixture(scope="module")
def sandbox(provider):
    """One started sandbox shared by a module's tests (they leave it started)."""
    return provider.create(spec(), wait_seconds=10)


@pytest.fixture
def local_settings(settings, local_root):
    """The portal configured for local sandboxes under the module's root."""
    settings.SANDBOX_PROVIDER = "local"
    settings.SANDBOX_LOCAL_ROOT = local_root
    settings.SANDBOX_LOCAL_CGROUP_PARENT = CGROUP_PARENT
    settings.SANDBOX_LAUNCH_RATE = "1000/m"
    reset_providers()
    yield settings
    reset_providers()


def run(provider: LocalProvider, remote_id: str, script: str, *, timeout: float = 20) -> str:
    """Run a bash script in the sandbox; its stdout, asserting it succeeded."""
    result = provider.run(remote_id, ["bash", "-c", script], timeout=timeout)
    assert result.exit_code == 0, (result.exit_code, result.stdout, result.stderr)
    return result.stdout.decode()


def read_until(terminal, marker: bytes, *, seconds: float = 10) -> bytes:
    """Read terminal output until ``marker`` shows up (a watchdog detaches a stuck read)."""
    import threading

    seen = b""
    timer = threading.Timer(seconds, terminal.detach)
    timer.start()
    try:
        while marker not in seen:
            data = terminal.read()
            if not data:
                raise AssertionError(f"terminal ended before {marker!r}; got {seen[-300:]!r}")
            seen += data
    finally:
        timer.cancel()
    return seen


def wait_for_port(provider: LocalProvider, remote_id: str, port: int, *, seconds: float = 10) -> None:
    from sandboxes.providers.local import PortClosed

    deadline = time.monotonic() + seconds
    while True:
        try:
            provider.open_relay(remote_id, port).close()
            return
        except PortClosed:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
