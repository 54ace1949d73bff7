"""The Daytona emulator, exercised through the real ``daytona`` SDK: SSH access, previews and
PTY sessions."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta

import pytest
from daytona import (
    DaytonaBadGatewayError,
    DaytonaBadRequestError,
    DaytonaConflictError,
    DaytonaConnectionError,
    DaytonaError,
    PtySize,
)

from tests.daytona_fixtures import _create, _fetch, _parse, sdk  # noqa: F401 - fixtures
from tests.fake_daytona.fixtures import fake_daytona, fake_daytona_server  # noqa: F401

# ----- SSH -------------------------------------------------------------------------------------


def test_ssh_access_keeps_one_token_and_revokes_one_or_all(fake_daytona, sdk):  # noqa: F811
    sandbox = _create(sdk)
    first = sandbox.create_ssh_access(expires_in_minutes=120)
    second = sandbox.create_ssh_access(expires_in_minutes=120)

    assert re.fullmatch(r"[A-Za-z0-9]{32}", second.token)
    assert second.ssh_command == f"ssh -p 2222 {second.token}@127.0.0.1"
    assert second.expires_at - datetime.now(UTC) > timedelta(minutes=119)
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
    handle = sandbox.process.create_pty_session("term", envs={"GREETING": "hi"}, pty_size=PtySize(rows=30, cols=100))
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
