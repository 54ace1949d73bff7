"""Real Celery processes against Redis and the test database (not eager mode).

A worker killed mid-task leaves the message unacknowledged; once the visibility timeout has
passed, another worker receives it again and the work is done once. Beat fires reconcile.
"""

import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from celery import Celery
from django.conf import settings
from django.db import connection
from django.utils import timezone

from sandboxes.models import AuditEvent, Sandbox, SandboxState
from tests.conftest import CANARY_KEY, launch, signed_in

VISIBILITY_TIMEOUT = 3
BROKER_URL = os.environ.get("TEST_CELERY_REDIS_URL", "redis://127.0.0.1:6379/11")


def _redis():
    import redis

    return redis.Redis.from_url(BROKER_URL)


def _redis_available() -> bool:
    try:
        return bool(_redis().ping())
    except Exception:
        return False


pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(connection.vendor != "postgresql", reason="workers share the test database on PostgreSQL"),
    pytest.mark.skipif(not _redis_available(), reason=f"no Redis at {BROKER_URL}"),
]


BROKER_LOCK = "tests:celery-worker:lock"


@pytest.fixture
def broker():
    """A Redis database of its own, empty before and after. Test sessions sharing the machine
    take turns (a lock key in that database), so no worker consumes another session's tasks."""
    client = _redis()
    deadline = time.monotonic() + 180
    while not client.set(BROKER_LOCK, "held", nx=True, ex=180):
        if time.monotonic() > deadline:
            pytest.fail(f"another test session holds {BROKER_URL} for too long")
        time.sleep(0.5)
    _empty(client)
    try:
        yield client
    finally:
        _empty(client)
        client.delete(BROKER_LOCK)


def _empty(client) -> None:
    for key in client.scan_iter():
        if key != BROKER_LOCK.encode():
            client.delete(key)


@pytest.fixture
def celery_env(daytona, broker):
    db = connection.settings_dict
    database_url = (
        f"postgres://{db['USER']}:{db['PASSWORD'] or ''}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"
    )
    return {
        **os.environ,
        "DATABASE_URL": database_url,
        "DATABASE_CONN_MAX_AGE": "0",
        "REDIS_URL": BROKER_URL,
        "CELERY_VISIBILITY_TIMEOUT": str(VISIBILITY_TIMEOUT),
        "SANDBOX_PROVIDER": "daytona",
        "DAYTONA_API_URL": daytona.api_url,
        "DAYTONA_API_KEY": CANARY_KEY,
        "SANDBOX_RECONCILE_SECONDS": "3600",
        "SANDBOX_IDLE_CHECK_SECONDS": "3600",
        "CELERY_TASK_ALWAYS_EAGER": "false",
        "TEMPLATE_BUILDS_AT_WORKER_START": "false",  # builds are tested in test_environments
    }


class Processes:
    """Celery processes started by a test, each logging to a file; all ended at teardown."""

    def __init__(self, env: dict, logs: Path):
        self.env, self.logs, self.running = env, logs, []

    def start(self, name: str, *args: str, **env) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "wb")
        process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "joepro", *args],
            cwd=settings.BASE_DIR,
            env={**self.env, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.running.append(process)
        return process

    def worker(self, name: str) -> subprocess.Popen:
        return self.start(
            name,
            "worker",
            "--pool",
            "solo",
            "--without-mingle",
            "--without-gossip",
            "--without-heartbeat",
            "--loglevel",
            "INFO",
            "-n",
            f"{name}@%h",
        )

    def output(self) -> str:
        return "\n".join(
            f"--- {path.name}\n{path.read_text(errors='replace')[-3000:]}" for path in self.logs.glob("*.log")
        )

    def stop_all(self):
        for process in self.running:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.running:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture
def processes(celery_env, tmp_path):
    started = Processes(celery_env, tmp_path)
    yield started
    started.stop_all()


def wait_until(condition, processes: Processes, seconds: float = 60, what: str = "") -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}\n{processes.output()}")
        time.sleep(0.1)


def send(task_name: str) -> None:
    sender = Celery(broker=BROKER_URL)
    sender.conf.update(task_serializer="json", accept_content=["json"])
    with sender.connection_for_write() as conn:
        sender.send_task(task_name, connection=conn)


def row_state(sandbox: Sandbox) -> str:
    return Sandbox.objects.get(pk=sandbox.pk).state


def test_a_worker_killed_mid_task_has_the_task_redelivered_and_done_once(daytona, owner, processes, broker):
    assert launch(signed_in(owner)).status_code == 200
    sandbox = Sandbox.objects.get(user=owner)
    three_hours_ago = timezone.now() - timedelta(hours=3)
    Sandbox.objects.filter(pk=sandbox.pk).update(last_activity_at=three_hours_ago, last_started_at=three_hours_ago)
    daytona.fault("stop", "slow", seconds=15)  # Daytona holds the first stop; the worker dies waiting

    first = processes.worker("first")
    send("sandboxes.tasks.stop_idle_sandboxes")
    wait_until(lambda: daytona.calls["stop"] >= 1, processes, what="the first worker's stop call")
    first.kill()  # SIGKILL: no chance to acknowledge, requeue or clean up
    first.wait()

    assert daytona.sandbox(sandbox.remote_id)["state"] == "started"
    assert row_state(sandbox) == SandboxState.STARTED
    assert broker.hlen("unacked") == 1  # delivered, never acknowledged
    time.sleep(VISIBILITY_TIMEOUT + 1)  # past the visibility timeout, the message is free again

    processes.worker("second")
    wait_until(lambda: row_state(sandbox) == SandboxState.STOPPED, processes, what="the redelivered stop")

    assert daytona.sandbox(sandbox.remote_id)["state"] == "stopped"
    assert AuditEvent.objects.filter(sandbox=sandbox, action="stop").count() == 1
    assert daytona.calls["stop"] == 2  # the killed attempt and the one that completed
    wait_until(lambda: broker.hlen("unacked") == 0, processes, seconds=10, what="the acknowledgement")
    assert CANARY_KEY not in processes.output()


def test_beat_fires_reconcile(daytona, owner, processes, tmp_path):
    assert launch(signed_in(owner)).status_code == 200
    sandbox = Sandbox.objects.get(user=owner)
    daytona.set_state(sandbox.remote_id, "stopped")  # behind the portal's back

    processes.worker("worker")
    processes.start(
        "beat",
        "beat",
        "--loglevel",
        "INFO",
        "--schedule",
        str(tmp_path / "beat-schedule"),
        "--max-interval",
        "1",
        SANDBOX_RECONCILE_SECONDS="1",
    )
    wait_until(lambda: row_state(sandbox) == SandboxState.STOPPED, processes, what="a reconcile fired by beat")

    event = AuditEvent.objects.get(sandbox=sandbox, action="state_synced")
    assert event.reason == "reconcile" and event.actor_type == "system"
    assert "sandboxes.tasks.reconcile_sandboxes" in (tmp_path / "beat.log").read_text()
