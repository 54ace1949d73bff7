"""The Daytona emulator, exercised through the real ``daytona`` SDK: scripted faults, the HTTP
hooks another process drives it with, the command line, and a clean shutdown."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest
from daytona import (
    CreateSandboxFromSnapshotParams,
    Daytona,
    DaytonaAuthenticationError,
    DaytonaBadGatewayError,
    DaytonaBadRequestError,
    DaytonaConfig,
    DaytonaConflictError,
    DaytonaConnectionError,
    DaytonaError,
    DaytonaForbiddenError,
    DaytonaGoneError,
    DaytonaInternalServerError,
    DaytonaNotFoundError,
    DaytonaRateLimitError,
    DaytonaServiceUnavailableError,
    DaytonaTimeoutError,
    DaytonaUnprocessableEntityError,
)

from tests.daytona_fixtures import _create, _fetch, _parse, sdk  # noqa: F401 - fixtures
from tests.fake_daytona import FakeDaytona
from tests.fake_daytona.fixtures import fake_daytona, fake_daytona_server  # noqa: F401

REPO_ROOT = Path(__file__).resolve().parent.parent


# ----- faults ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error_class"),
    [
        (400, DaytonaBadRequestError),
        (401, DaytonaAuthenticationError),
        (403, DaytonaForbiddenError),
        (404, DaytonaNotFoundError),
        (408, DaytonaTimeoutError),
        (409, DaytonaConflictError),
        (410, DaytonaGoneError),
        (422, DaytonaUnprocessableEntityError),
        (429, DaytonaRateLimitError),
        (500, DaytonaInternalServerError),
        (502, DaytonaBadGatewayError),
        (503, DaytonaServiceUnavailableError),
        (504, DaytonaTimeoutError),
    ],
)
def test_status_faults_become_typed_errors(fake_daytona, sdk, status, error_class):  # noqa: F811
    sandbox = _create(sdk)
    fake_daytona.fault("get", "status", status=status, message="scripted failure")
    with pytest.raises(error_class, match="scripted failure") as caught:
        sdk.get(sandbox.id)
    assert caught.value.status_code == status
    assert sdk.get(sandbox.id).id == sandbox.id


def test_rate_limit_headers_keep_their_casing(fake_daytona, sdk):  # noqa: F811
    headers = {"Retry-After-sandbox-create": "7", "X-RateLimit-Remaining-sandbox-create": "0"}
    fake_daytona.fault("create", "status", status=429, headers=headers)
    with pytest.raises(DaytonaRateLimitError) as caught:
        _create(sdk)
    assert caught.value.headers["Retry-After-sandbox-create"] == "7"
    assert fake_daytona.sandboxes() == []


def test_faults_queue_in_order_and_repeat(fake_daytona, sdk):  # noqa: F811
    sandbox = _create(sdk)
    fake_daytona.fault("get", "status", status=503, times=2)
    fake_daytona.fault("get", "status", status=500)
    raised = []
    for _ in range(3):
        with pytest.raises(DaytonaError) as caught:
            sdk.get(sandbox.id)
        raised.append(caught.value.status_code)
    assert raised == [503, 503, 500]


def test_reset_on_create_is_a_connection_error_without_effect(fake_daytona, sdk):  # noqa: F811
    fake_daytona.fault("create", "reset")
    with pytest.raises(DaytonaConnectionError):
        _create(sdk)
    assert fake_daytona.sandboxes() == []


def test_get_survives_three_resets_but_not_four(fake_daytona, sdk):  # noqa: F811
    sandbox = _create(sdk)
    fake_daytona.fault("get", "reset", times=3)
    assert sdk.get(sandbox.id).id == sandbox.id
    fake_daytona.fault("get", "reset", times=4)
    with pytest.raises(DaytonaError) as caught:
        sdk.get(sandbox.id)
    assert caught.value.status_code is None
    assert fake_daytona.calls["get"] == 8


def test_commit_then_hang_times_out_but_the_sandbox_exists(fake_daytona, sdk):  # noqa: F811
    fake_daytona.fault("create", "commit_then_hang", seconds=5)
    with pytest.raises(DaytonaTimeoutError) as caught:
        sdk.create(CreateSandboxFromSnapshotParams(name="u-7"), timeout=1)
    assert caught.value.sandbox_id is None
    assert sdk.get("u-7").state == "started"


def test_commit_then_reset_on_start_loses_the_answer_not_the_effect(fake_daytona, sdk):  # noqa: F811
    sandbox = _create(sdk)
    sandbox.stop(timeout=10)
    fake_daytona.fault("start", "commit_then_reset")
    with pytest.raises(DaytonaConnectionError):
        sandbox.start(timeout=10)
    assert sdk.get(sandbox.id).state == "started"


def test_slow_get_is_retried_after_the_client_timeout(fake_daytona, sdk):  # noqa: F811
    sandbox = _create(sdk)
    fake_daytona.fault("get", "slow", seconds=3)
    assert sdk.get(sandbox.id, request_timeout=1).id == sandbox.id
    assert fake_daytona.calls["get"] == 2


def test_bad_shapes_fail_validation(fake_daytona, sdk):  # noqa: F811
    fake_daytona.fault("create", "bad_shape")
    with pytest.raises(DaytonaError, match="'NoneType' object has no attribute 'id'"):
        _create(sdk)
    fake_daytona.fault("get", "bad_shape", drop="kvm")
    with pytest.raises(DaytonaError, match="kvm"):
        sdk.get("u-42")
    fake_daytona.fault("get", "bad_shape", set={"cpu": 1.5})
    with pytest.raises(DaytonaError, match="cpu"):
        sdk.get("u-42")
    fake_daytona.fault("stop", "bad_shape")
    with pytest.raises(DaytonaError):
        sdk.get("u-42").stop(timeout=10)


def test_unknown_fault_is_rejected(fake_daytona):  # noqa: F811
    with pytest.raises(ValueError):
        fake_daytona.fault("create", "explode")
    with pytest.raises(ValueError):
        fake_daytona.fault("teleport", "reset")
    with pytest.raises(ValueError, match="applies only to create, start, recover"):
        fake_daytona.fault("get", "ends_in_error")


def test_ends_in_error_lets_the_start_happen_and_the_sandbox_error(fake_daytona, sdk):  # noqa: F811
    sandbox = _create(sdk)
    sandbox.stop(timeout=10)
    fault = {"operation": "start", "kind": "ends_in_error", "message": "runner lost"}
    assert _fetch(f"{fake_daytona.url}/__faults", fault)[0] == 200

    with pytest.raises(DaytonaBadRequestError, match="^Failed to start sandbox: Sandbox failed to start: runner lost$"):
        sandbox.start(timeout=10)

    seen = sdk.get(sandbox.id)
    assert (seen.state, seen.error_reason) == ("error", "runner lost")
    assert fake_daytona.calls["start"] == 1


# ----- hooks, CLI, shutdown ---------------------------------------------------------------------


def test_http_hooks_drive_the_emulator(fake_daytona, sdk):  # noqa: F811
    base = fake_daytona.url
    seed = {"count": 3, "labels": {"portal": "bench"}, "name_prefix": "b-"}
    assert _fetch(f"{base}/__seed", seed)[0] == 200
    assert _fetch(f"{base}/__state", {"id_or_name": "b-1", "state": "stopped"})[0] == 200
    assert _fetch(f"{base}/__faults", {"operation": "get", "kind": "status", "status": 503})[0] == 200
    assert _fetch(f"{base}/__config", {"latency": 0.01})[0] == 200
    with pytest.raises(DaytonaServiceUnavailableError):
        sdk.get("b-0")
    assert sdk.get("b-1").state == "stopped"
    status, body = _fetch(f"{base}/__clock", {"advance": 60})
    assert status == 200 and _parse(json.loads(body)["now"]) > datetime.now(UTC)
    stats = json.loads(_fetch(f"{base}/__stats")[1])
    assert stats["calls"]["get"] == 2 and stats["sandboxes"] == 3
    assert _fetch(f"{base}/__state", {"id_or_name": "ghost", "state": "stopped"})[0] == 404
    assert _fetch(f"{base}/__reset", {})[0] == 200
    assert fake_daytona.sandboxes() == [] and fake_daytona.calls == {}
    assert _fetch(f"{fake_daytona.api_url}/socket.io/?EIO=4&transport=websocket")[0] == 404


def test_stop_leaves_no_thread_or_shell_behind():
    threads_before = set(threading.enumerate())
    fake = FakeDaytona(api_key="k").start()
    sdk = Daytona(DaytonaConfig(api_key="k", api_url=fake.api_url, target="us"))
    sandbox = sdk.create(CreateSandboxFromSnapshotParams(name="x"), timeout=10)
    handle = sandbox.process.create_pty_session("t")
    shell_pids = [s.process.pid for s in fake.ptys.list(sandbox.id)]
    fake.stop()
    handle.disconnect()
    new_threads = set(threading.enumerate()) - threads_before
    assert not [t for t in new_threads if t.name == "fake-daytona"]
    for pid in shell_pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_cli_prints_api_url_and_serves():
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    command = [sys.executable, "-m", "tests.fake_daytona", "--port", "0", "--api-key", "cli-key"]
    with subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, text=True) as process:
        try:
            api_url = process.stdout.readline().strip()
            assert re.fullmatch(r"http://127\.0\.0\.1:\d+/api", api_url)
            cli_sdk = Daytona(DaytonaConfig(api_key="cli-key", api_url=api_url, target="us"))
            assert cli_sdk.create(CreateSandboxFromSnapshotParams(name="c"), timeout=10).state == "started"
        finally:
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=10) == 0
