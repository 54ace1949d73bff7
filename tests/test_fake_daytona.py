"""The Daytona emulator, exercised through the real ``daytona`` SDK."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from daytona import (
    CreateSandboxFromImageParams,
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
    ListSandboxesQuery,
    PtySize,
    Resources,
)

from tests.fake_daytona import FakeDaytona
from tests.fake_daytona.fixtures import FAKE_DAYTONA_API_KEY, fake_daytona, fake_daytona_server  # noqa: F401

REPO_ROOT = Path(__file__).resolve().parent.parent
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@pytest.fixture
def sdk(fake_daytona: FakeDaytona) -> Daytona:  # noqa: F811
    return Daytona(DaytonaConfig(api_key=FAKE_DAYTONA_API_KEY, api_url=fake_daytona.api_url, target="us"))


def _create(sdk: Daytona, name: str = "u-42", **kwargs):
    labels = kwargs.pop("labels", {"portal-user": "42"})
    return sdk.create(CreateSandboxFromSnapshotParams(name=name, labels=labels, **kwargs), timeout=10)


def _fetch(url: str, data: dict | None = None, headers: dict | None = None) -> tuple[int, str]:
    body = json.dumps(data).encode() if data is not None else None
    request = urllib.request.Request(url, data=body, headers=headers or {}, method="POST" if body else "GET")
    try:
        with _DIRECT.open(request, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def _parse(timestamp: str) -> datetime:
    return datetime.fromisoformat(timestamp.replace("Z", "+00:00"))


# ----- lifecycle ----------------------------------------------------------------------------


def test_create_answers_full_sandbox_and_get_finds_it_by_id_or_name(fake_daytona, sdk):  # noqa: F811
    params = CreateSandboxFromImageParams(
        name="u-1",
        image="python:3.12-slim",
        labels={"portal-user": "1"},
        resources=Resources(cpu=2, memory=4, disk=8),
        auto_stop_interval=0,
    )
    sandbox = sdk.create(params, timeout=10)

    assert sandbox.state == "started"
    assert (sandbox.cpu, sandbox.memory, sandbox.disk) == (2, 4, 8)
    assert sandbox.labels == {"portal-user": "1", "code-toolbox-language": "python"}
    assert sandbox.auto_stop_interval == 0
    assert sdk.get("u-1").id == sandbox.id
    assert sdk.get(sandbox.id).name == "u-1"
    stored = fake_daytona.sandbox(sandbox.id)
    assert stored["kvm"] is False and stored["toolboxProxyUrl"] == f"{fake_daytona.url}/toolbox"
    _, method, path, _, headers = fake_daytona.requests[0]
    assert (method, path) == ("POST", "/api/sandbox")
    assert headers["Authorization"] == f"Bearer {FAKE_DAYTONA_API_KEY}"


def test_wrong_api_key_is_refused(fake_daytona):  # noqa: F811
    other = Daytona(DaytonaConfig(api_key="wrong", api_url=fake_daytona.api_url, target="us"))
    with pytest.raises(DaytonaAuthenticationError) as caught:
        other.get("anything")
    assert caught.value.status_code == 401


def test_duplicate_name_is_a_conflict(sdk):
    _create(sdk)
    with pytest.raises(DaytonaConflictError, match="Sandbox with name u-42 already exists"):
        _create(sdk)


def test_get_unknown_sandbox_is_not_found(sdk):
    expected = "Failed to get sandbox: Sandbox with ID or name nope not found"
    with pytest.raises(DaytonaNotFoundError, match=expected):
        sdk.get("nope")


def test_stop_start_and_second_calls(fake_daytona, sdk):  # noqa: F811
    sandbox = _create(sdk)
    sandbox.stop(timeout=10)
    assert sandbox.state == "stopped"
    with pytest.raises(DaytonaBadRequestError, match="Sandbox is not in a stoppable state"):
        sandbox.stop(timeout=10)
    sandbox.start(timeout=10)
    assert sandbox.state == "started"
    sandbox.start(timeout=10)
    assert fake_daytona.calls["start"] == 2


def test_mid_transition_and_errored_sandboxes_refuse_changes(fake_daytona, sdk):  # noqa: F811
    sandbox = _create(sdk)
    fake_daytona.set_state(sandbox.id, "stopping")
    with pytest.raises(DaytonaConflictError, match="Sandbox state change in progress"):
        sandbox.start(timeout=10)
    with pytest.raises(DaytonaConflictError):
        sandbox.delete()
    fake_daytona.set_state(sandbox.id, "error", error_reason="disk full", recoverable=False)
    with pytest.raises(DaytonaBadRequestError, match="errored state"):
        sandbox.start(timeout=10)


def test_transitions_take_time_and_the_sdk_waits(fake_daytona, sdk):  # noqa: F811
    fake_daytona.transition_seconds = 0.3
    sandbox = _create(sdk)
    assert sandbox.state == "started"
    assert fake_daytona.calls["get"] >= 1
    sandbox.delete()
    assert fake_daytona.sandbox(sandbox.id)["name"].startswith("DESTROYED_u-42_")
    assert _create(sdk).id != sandbox.id


def test_delete_frees_the_name_and_get_answers_404(sdk):
    sandbox = _create(sdk)
    sandbox.delete()
    with pytest.raises(DaytonaNotFoundError):
        sdk.get(sandbox.id)
    with pytest.raises(DaytonaNotFoundError):
        sdk.get("u-42")
    assert _create(sdk).name == "u-42"


def test_archive_then_start_restores(fake_daytona, sdk):  # noqa: F811
    sandbox = _create(sdk)
    with pytest.raises(DaytonaBadRequestError):
        sandbox.archive()
    sandbox.stop(timeout=10)
    sandbox.archive()
    assert sandbox.state == "archived"
    sandbox.start(timeout=10)
    assert sandbox.state == "started"


def test_recover_from_recoverable_error(fake_daytona, sdk):  # noqa: F811
    sandbox = _create(sdk)
    fake_daytona.set_state(sandbox.id, "error", error_reason="out of memory", recoverable=True)
    sandbox.refresh_data()
    assert (sandbox.state, sandbox.error_reason, sandbox.recoverable) == ("error", "out of memory", True)
    sandbox.recover(timeout=10)
    assert sandbox.state == "started"


def test_wait_reports_error_state(fake_daytona, sdk):  # noqa: F811
    sandbox = _create(sdk)
    sandbox.stop(timeout=10)
    fake_daytona.set_state(sandbox.id, "build_failed", error_reason="bad image")
    with pytest.raises(DaytonaError, match="entered error state"):
        sandbox.wait_for_sandbox_start(timeout=5)


def test_out_of_band_changes_are_seen_by_the_sdk(fake_daytona, sdk):  # noqa: F811
    _create(sdk)
    with pytest.raises(ValueError, match="already exists"):
        fake_daytona.add_sandbox(name="u-42")
    fake_daytona.delete_out_of_band("u-42")
    fake_daytona.add_sandbox(name="u-42", labels={"portal-user": "99"})
    assert sdk.get("u-42").labels["portal-user"] == "99"
    fake_daytona.set_state("u-42", "archived")
    assert sdk.get("u-42").state == "archived"
    fake_daytona.set_state("u-42", "restoring", then="started", after=60)
    assert sdk.get("u-42").state == "restoring"
    fake_daytona.advance_clock(61)
    assert sdk.get("u-42").state == "started"


def test_latency_delays_calls_without_serialising_them(fake_daytona, sdk):  # noqa: F811
    sandbox = _create(sdk)
    fake_daytona.latency = 0.3
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=10) as pool:
        found = list(pool.map(lambda _: sdk.get(sandbox.id).id, range(10)))
    elapsed = time.monotonic() - started
    assert found == [sandbox.id] * 10
    assert 0.3 <= elapsed < 1.5


def test_labels_are_replaced_and_autostop_set(fake_daytona, sdk):  # noqa: F811
    sandbox = _create(sdk)
    result = sandbox.set_labels({"portal-user": "42", "code-toolbox-language": "python", "tier": "free"})
    assert result == {"portal-user": "42", "code-toolbox-language": "python", "tier": "free"}
    sandbox.set_labels({"code-toolbox-language": "python"})
    assert fake_daytona.sandbox(sandbox.id)["labels"] == {"code-toolbox-language": "python"}
    sandbox.set_autostop_interval(0)
    assert fake_daytona.sandbox(sandbox.id)["autoStopInterval"] == 0


# ----- list -----------------------------------------------------------------------------------


def test_list_pages_with_cursor_and_filters_by_label_containment(fake_daytona, sdk):  # noqa: F811
    fake_daytona.seed(450, labels={"portal": "prod", "extra": "x"}, name_prefix="p-")
    fake_daytona.seed(30, labels={"portal": "staging"}, name_prefix="s-")

    found = list(sdk.list(ListSandboxesQuery(labels={"portal": "prod"}, limit=100)))

    assert len(found) == 450 and len({s.id for s in found}) == 450
    assert fake_daytona.calls["list"] == 5
    first_query = fake_daytona.requests[0].query
    assert json.loads(first_query["labels"]) == {"portal": "prod"} and "cursor" not in first_query
    assert all("cursor" in r.query for r in fake_daytona.requests[1:])


def test_list_filters_states_and_pages_through_ten_thousand(fake_daytona, sdk):  # noqa: F811
    fake_daytona.seed(10_000, labels={"portal": "prod"})
    fake_daytona.add_sandbox(name="off", labels={"portal": "prod"}, state="stopped")

    stopped = list(sdk.list(ListSandboxesQuery(states=["stopped", "archived"])))
    assert [s.name for s in stopped] == ["off"]
    assert fake_daytona.requests[-1].query["states"] == ["stopped", "archived"]

    count = sum(1 for _ in sdk.list(ListSandboxesQuery(labels={"portal": "prod"}, limit=200)))
    assert count == 10_001


def test_list_lag_shows_a_stale_snapshot(fake_daytona, sdk):  # noqa: F811
    sandbox = _create(sdk)
    fake_daytona.list_lag(5)
    assert [s.id for s in sdk.list()] == [sandbox.id]
    sandbox.delete()
    assert [s.id for s in sdk.list()] == [sandbox.id]
    fake_daytona.advance_clock(6)
    assert list(sdk.list()) == []


# ----- activity and auto-stop -----------------------------------------------------------------


def test_refresh_activity_and_autostop_pass(fake_daytona, sdk):  # noqa: F811
    idle = _create(sdk, name="idle", auto_stop_interval=15)
    busy = _create(sdk, name="busy", auto_stop_interval=15)
    never = _create(sdk, name="never", auto_stop_interval=0)
    fake_daytona.advance_clock(16 * 60)
    busy.refresh_activity()

    assert fake_daytona.calls["last_activity"] == 1
    last_activity = _parse(fake_daytona.sandbox(busy.id)["lastActivityAt"])
    assert abs(last_activity - fake_daytona.now()) < timedelta(seconds=2)
    assert fake_daytona.run_autostop() == [idle.id]
    assert fake_daytona.sandbox(idle.id)["state"] == "stopped"
    assert fake_daytona.sandbox(never.id)["state"] == "started"


# ----- SSH -------------------------------------------------------------------------------------


def test_ssh_access_keeps_one_token_and_revokes_one_or_all(fake_daytona, sdk):  # noqa: F811
    sandbox = _create(sdk)
    first = sandbox.create_ssh_access(expires_in_minutes=120)
    second = sandbox.create_ssh_access(expires_in_minutes=120)

    assert re.fullmatch(r"[A-Za-z0-9]{32}", second.token)
    assert second.ssh_command == f"ssh -p 2222 {second.token}@127.0.0.1"
    assert second.expires_at - datetime.now(timezone.utc) > timedelta(minutes=119)
    assert fake_daytona.ssh_tokens(sandbox.id) == [second.token] != [first.token]
    assert sandbox.validate_ssh_access(second.token).sandbox_id == sandbox.id
    with pytest.raises(DaytonaError):
        sandbox.validate_ssh_access(first.token)  # the server answers sandboxId: null

    sandbox._sandbox_api.revoke_ssh_access(sandbox.id, token=first.token)
    assert fake_daytona.ssh_tokens(sandbox.id) == [second.token]
    sandbox._sandbox_api.revoke_ssh_access(sandbox.id, token=second.token)
    assert fake_daytona.requests[-1].query == {"token": second.token}
    assert fake_daytona.ssh_tokens(sandbox.id) == []

    third = sandbox.create_ssh_access()
    sandbox.revoke_ssh_access("stale-token")  # the SDK drops the token: revokes all
    assert fake_daytona.requests[-1].query == {}
    assert third.token not in fake_daytona.ssh_tokens(sandbox.id) == []


# ----- previews --------------------------------------------------------------------------------


def test_signed_preview_is_served_until_expired(fake_daytona, sdk):  # noqa: F811
    sandbox = _create(sdk)
    signed = sandbox.create_signed_preview_url(3000, expires_in_seconds=120)
    terminal = sandbox.create_signed_preview_url(22222, expires_in_seconds=120)

    assert re.fullmatch(r"[a-z0-9]{16}", signed.token) and signed.port == 3000
    assert signed.url == f"{fake_daytona.url}/preview/{signed.token}/"
    assert _fetch(signed.url) == (200, _fetch(signed.url)[1])
    assert "Preview of u-42 port 3000" in _fetch(signed.url + "index.html")[1]
    assert "Daytona web terminal for u-42" in _fetch(terminal.url)[1]

    sandbox.expire_signed_preview_url(3000, signed.token)
    assert _fetch(signed.url)[0] == 410
    fake_daytona.advance_clock(121)
    assert _fetch(terminal.url)[0] == 410
    assert _fetch(f"{fake_daytona.url}/preview/0000000000000000/")[0] == 403


def test_signed_preview_needs_a_running_sandbox_and_a_valid_lifetime(fake_daytona, sdk):  # noqa: F811
    sandbox = _create(sdk)
    sandbox.stop(timeout=10)
    signed = sandbox.create_signed_preview_url(3000)
    assert _fetch(signed.url)[0] == 409
    for bad in (0, 86401):
        with pytest.raises(DaytonaBadRequestError):
            sandbox.create_signed_preview_url(3000, expires_in_seconds=bad)
    assert sandbox.create_signed_preview_url(3000, expires_in_seconds=86400).port == 3000


def test_standard_preview_needs_its_token_which_rotates_on_start(fake_daytona, sdk):  # noqa: F811
    sandbox = _create(sdk)
    link = sandbox.get_preview_link(3000)
    assert _fetch(link.url)[0] == 401
    assert _fetch(link.url, headers={"X-Daytona-Preview-Token": link.token})[0] == 200
    sandbox.stop(timeout=10)
    sandbox.start(timeout=10)
    assert sandbox.get_preview_link(3000).token != link.token


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


# ----- PTY ------------------------------------------------------------------------------------


def _read_until(handle, needle: bytes, seconds: float = 5.0) -> bytes:
    seen = b""
    deadline = time.monotonic() + seconds
    while needle not in seen and time.monotonic() < deadline:
        for chunk in handle._handle_events(deadline=min(deadline, time.monotonic() + 0.5)):
            seen += chunk
            if needle in seen:
                break
    assert needle in seen, seen[-500:]
    return seen


def test_pty_session_survives_disconnect_resizes_and_is_killed(fake_daytona, sdk):  # noqa: F811
    sandbox = _create(sdk)
    handle = sandbox.process.create_pty_session(
        "term", envs={"GREETING": "hi"}, pty_size=PtySize(rows=30, cols=100)
    )
    handle.send_input("echo $((6*7)) $GREETING\n")
    _read_until(handle, b"42 hi")
    handle.disconnect()
    assert [s.id for s in sandbox.process.list_pty_sessions()] == ["term"]

    fake_daytona.advance_clock(3600)
    again = sandbox.process.connect_pty_session("term")
    again.send_input("echo $((6*8))\n")
    _read_until(again, b"48")
    last_activity = _parse(fake_daytona.sandbox(sandbox.id)["lastActivityAt"])
    assert abs(last_activity - fake_daytona.now()) < timedelta(seconds=5)
    info = again.resize(PtySize(rows=40, cols=120))
    assert (info.rows, info.cols) == (40, 120)
    again.send_input("stty size\n")
    _read_until(again, b"40 120")

    again.kill()
    result = again.wait(timeout=5)
    assert (result.exit_code, result.error) == (137, "SIGKILL")
    assert sandbox.process.list_pty_sessions() == []
    assert fake_daytona.calls["pty_create"] == fake_daytona.calls["pty_connect"] == 1


def test_pty_shell_exit_and_stop_end_sessions(fake_daytona, sdk):  # noqa: F811
    sandbox = _create(sdk)
    handle = sandbox.process.create_pty_session("exit")
    handle.send_input("exit 3\n")
    assert handle.wait(timeout=5).exit_code == 3

    other = sandbox.process.create_pty_session("stopped")
    sandbox.stop(timeout=10)
    assert other.wait(timeout=5).exit_code == 137
    with pytest.raises(DaytonaConflictError):
        sandbox.process.create_pty_session("late")
    with pytest.raises(DaytonaError):
        sandbox.process.connect_pty_session("stopped")


def test_pty_faults(fake_daytona, sdk):  # noqa: F811
    sandbox = _create(sdk)
    fake_daytona.fault("pty_create", "status", status=502)
    with pytest.raises(DaytonaBadGatewayError):
        sandbox.process.create_pty_session("a")
    fake_daytona.fault("pty_create", "error_frame", message="no shell")
    with pytest.raises(DaytonaConnectionError, match="no shell"):
        sandbox.process.create_pty_session("b")
    fake_daytona.fault("pty_create", "close_no_reason")
    handle = sandbox.process.create_pty_session("c")
    assert handle.wait(timeout=5).exit_code is None
    fake_daytona.fault("pty_connect", "exit", exit_code=2)
    assert sandbox.process.connect_pty_session("d").wait(timeout=5).exit_code == 2


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
    assert status == 200 and _parse(json.loads(body)["now"]) > datetime.now(timezone.utc)
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
