"""PTY sessions as the sandbox daemon keeps them, through the real SDK and a raw websocket:
refusals before and after the upgrade, resize rules, how a shell's exit, a kill and a
sandbox stop end a session, and sessions that outlive their clients.

Read from the daemon's source (v0.190.0 plus its create-connect branch); the hosted daemon
may have moved on. A stop ending connections without a close frame is inferred (the daemon
dies with the container), not seen."""

from __future__ import annotations

import json
import time

import pytest
from daytona import (
    DaytonaBadGatewayError,
    DaytonaBadRequestError,
    DaytonaConflictError,
    DaytonaConnectionError,
    DaytonaError,
    DaytonaGoneError,
    DaytonaNotFoundError,
    PtySize,
)

from tests.daytona_fixtures import _create, sdk  # noqa: F401 - fixtures
from tests.fake_daytona.fixtures import FAKE_DAYTONA_API_KEY, fake_daytona, fake_daytona_server  # noqa: F401
from tests.fake_daytona.wire import OP_BINARY, OP_CLOSE, OP_TEXT, RawWebSocket, http, ws_url

AUTH = {"Authorization": f"Bearer {FAKE_DAYTONA_API_KEY}"}
EXIT_CONTROL = "X-Daytona-Pty-Exit-Control"
CONNECTED = '{"status":"connected","type":"control"}'


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


def _pty_url(fake, sandbox_id: str, path: str) -> str:
    return ws_url(f"{fake.toolbox_url}/{sandbox_id}/process/pty{path}")


def _attach(fake, sandbox_id: str, path: str, protocols=(EXIT_CONTROL,)) -> RawWebSocket:
    ws = RawWebSocket(_pty_url(fake, sandbox_id, path), headers=AUTH, protocols=protocols)
    assert ws.status == 101, ws.body
    assert "sec-websocket-protocol" not in ws.headers  # the daemon selects no subprotocol
    first = ws.read_frame()
    assert (first.opcode, first.text) == (OP_TEXT, CONNECTED)
    return ws


# ----- refusals ---------------------------------------------------------------------------


def test_create_with_a_taken_id_or_a_huge_size_is_refused_before_the_upgrade(fake_daytona, sdk):  # noqa: F811
    sandbox = _create(sdk)
    handle = sandbox.process.create_pty_session("term")
    with pytest.raises(DaytonaConflictError, match="HTTP 409"):
        sandbox.process.create_pty_session("term")
    taken = RawWebSocket(_pty_url(fake_daytona, sandbox.id, "/create-connect?id=term"), headers=AUTH)
    assert (taken.status, taken.json()) == (409, {"error": "PTY session with ID 'term' already exists"})

    with pytest.raises(DaytonaBadRequestError, match="HTTP 400"):
        sandbox.process.create_pty_session("wide", pty_size=PtySize(rows=24, cols=1001))
    for query in ("cols=1001&rows=24", "cols=80&rows=1001"):
        huge = RawWebSocket(_pty_url(fake_daytona, sandbox.id, f"/create-connect?id=big&{query}"), headers=AUTH)
        assert (huge.status, huge.json()) == (400, {"error": "cols and rows must be less than 1000"})
    missing = RawWebSocket(_pty_url(fake_daytona, sandbox.id, "/create-connect"), headers=AUTH)
    assert (missing.status, missing.json()) == (400, {"error": "session ID is required (query param 'id')"})
    bad_envs = RawWebSocket(
        _pty_url(fake_daytona, sandbox.id, "/create-connect?id=e"), headers=AUTH, protocols=("X-Daytona-Pty-Envs~!!",)
    )
    assert bad_envs.status == 400
    assert bad_envs.json()["error"].startswith("invalid envs subprotocol: failed to decode PTY envs subprotocol")

    largest = sandbox.process.create_pty_session("largest", pty_size=PtySize(rows=1000, cols=1000))
    assert (sandbox.process.get_pty_session_info("largest").cols, largest.session_id) == (1000, "largest")
    handle.disconnect()
    largest.disconnect()


def test_connect_to_an_unknown_or_ended_session_upgrades_then_drops(fake_daytona, sdk):  # noqa: F811
    sandbox = _create(sdk)
    with pytest.raises(DaytonaConnectionError) as refused:
        sandbox.process.connect_pty_session("nope")
    assert str(refused.value) == (
        "Failed to connect PTY session: Failed to connect to PTY session: PTY session nope not found"
    )

    ws = RawWebSocket(_pty_url(fake_daytona, sandbox.id, "/nope/connect"), headers=AUTH, protocols=(EXIT_CONTROL,))
    assert ws.status == 101
    frames, ending = ws.read_until_end()
    assert ending == "eof"  # no close frame: the daemon closes the TCP connection
    assert [(f.opcode, json.loads(f.text)) for f in frames] == [
        (
            OP_TEXT,
            {
                "error": "Failed to connect to PTY session: PTY session nope not found",
                "status": "error",
                "type": "control",
            },
        )
    ]

    ended = sandbox.process.create_pty_session("ended")
    ended.send_input("exit\n")
    assert ended.wait(timeout=5).exit_code == 0
    with pytest.raises(DaytonaConnectionError, match="PTY session ended not found"):
        sandbox.process.connect_pty_session("ended")


def test_resize_needs_both_sides_in_range_and_a_live_session(fake_daytona, sdk):  # noqa: F811
    sandbox = _create(sdk)
    handle = sandbox.process.create_pty_session("term")
    url = f"{fake_daytona.toolbox_url}/{sandbox.id}/process/pty/term/resize"
    headers = {**AUTH, "Content-Type": "application/json"}

    def resize(body: bytes, target: str = url):
        answer = http("POST", target, headers=headers, body=body)
        return answer.status, answer.json()

    required = "Key: 'PTYResizeRequest.{0}' Error:Field validation for '{0}' failed on the 'required' tag"
    over = "Key: 'PTYResizeRequest.{0}' Error:Field validation for '{0}' failed on the 'max' tag"
    assert resize(b'{"cols": 100}') == (400, {"error": required.format("Rows")})
    assert resize(b'{"cols": 0, "rows": 0}') == (
        400,
        {"error": required.format("Cols") + "\n" + required.format("Rows")},
    )
    assert resize(b'{"cols": 1001, "rows": 30}') == (400, {"error": over.format("Cols")})
    assert resize(b'{"cols": -1, "rows": 30}')[0] == 400
    assert resize(b"") == (400, {"error": "EOF"})
    status, info = resize(b'{"cols": 1000, "rows": 1}')
    assert (status, info["cols"], info["rows"]) == (200, 1000, 1)

    gone = url.replace("/term/", "/nope/")
    assert resize(b'{"cols": 100, "rows": 30}', gone) == (410, {"error": "PTY session nope not found"})
    assert resize(b'{"cols": 100}', gone)[0] == 400  # the body is checked first

    info = handle.resize(PtySize(rows=40, cols=120))
    assert (info.rows, info.cols) == (40, 120)
    handle.send_input("exit\n")
    handle.wait(timeout=5)
    with pytest.raises(DaytonaGoneError, match="PTY session term not found"):
        sandbox.process.resize_pty_session("term", PtySize(rows=30, cols=100))
    with pytest.raises(DaytonaError, match="Failed to resize PTY"):
        handle.resize(PtySize(rows=30, cols=100))


# ----- how sessions end -------------------------------------------------------------------


def test_a_shell_that_exits_sends_exited_then_closes_with_its_code(fake_daytona, sdk):  # noqa: F811
    sandbox = _create(sdk)
    for protocols in ((EXIT_CONTROL,), ()):  # the frame comes whether or not it was offered
        session = f"exit-{len(protocols)}"
        ws = _attach(fake_daytona, sandbox.id, f"/create-connect?id={session}", protocols)
        ws.send(b"exit 3\n")
        frames, ending = ws.read_until_end()
        assert ending == "close"
        exited, close = frames[-2], frames[-1]
        assert (exited.opcode, exited.text) == (
            OP_TEXT,
            '{"exitCode":3,"exitReason":"(non-zero exit)","status":"exited","type":"control"}',
        )
        assert {f.opcode for f in frames[:-2]} <= {OP_BINARY}
        assert (close.opcode, close.close_code, close.close_reason) == (
            OP_CLOSE,
            1011,
            '{"exitCode":3,"exitReason":"non-zero exit"}',
        )
        ws.close()

    clean = _attach(fake_daytona, sandbox.id, "/create-connect?id=clean")
    clean.send(b"exit\n")
    frames, _ = clean.read_until_end()
    assert frames[-2].text == '{"exitCode":0,"status":"exited","type":"control"}'
    assert (frames[-1].close_code, frames[-1].close_reason) == (1000, '{"exitCode":0}')

    handle = sandbox.process.create_pty_session("sdk")
    handle.send_input("exit 3\n")
    result = handle.wait(timeout=5)
    assert (result.exit_code, result.error) == (3, "non-zero exit")
    assert sandbox.process.list_pty_sessions() == []


def test_a_killed_session_closes_1011_with_137_and_no_exited_frame(fake_daytona, sdk):  # noqa: F811
    sandbox = _create(sdk)
    ws = _attach(fake_daytona, sandbox.id, "/create-connect?id=term")
    deleted = http("DELETE", f"{fake_daytona.toolbox_url}/{sandbox.id}/process/pty/term", headers=AUTH)
    assert (deleted.status, deleted.json()) == (200, {"message": "PTY session deleted"})
    frames, ending = ws.read_until_end()
    assert ending == "close"
    assert all(f.opcode != OP_TEXT for f in frames)
    assert (frames[-1].close_code, frames[-1].close_reason) == (1011, '{"exitCode":137,"exitReason":"SIGKILL"}')

    again = http("DELETE", f"{fake_daytona.toolbox_url}/{sandbox.id}/process/pty/term", headers=AUTH)
    assert (again.status, again.json()) == (404, {"error": "PTY session not found"})
    with pytest.raises(DaytonaNotFoundError, match="PTY session not found"):
        sandbox.process.kill_pty_session("term")

    handle = sandbox.process.create_pty_session("sdk")
    handle.kill()
    result = handle.wait(timeout=5)
    assert (result.exit_code, result.error) == (137, "SIGKILL")
    assert sandbox.process.list_pty_sessions() == []


def test_a_stop_drops_every_client_without_a_close_frame(fake_daytona, sdk):  # noqa: F811
    sandbox = _create(sdk)
    ws = _attach(fake_daytona, sandbox.id, "/create-connect?id=raw")
    handle = sandbox.process.create_pty_session("sdk")
    sandbox.stop(timeout=10)

    frames, ending = ws.read_until_end()
    assert ending == "eof" and all(f.opcode == OP_BINARY for f in frames)
    result = handle.wait(timeout=5)
    assert result.exit_code is None and result.error.startswith("WebSocket error")
    sandbox.start(timeout=10)
    assert sandbox.process.list_pty_sessions() == []


# ----- sessions outlive their clients -----------------------------------------------------


def test_sessions_are_shared_detached_never_replayed_and_never_reaped(fake_daytona, sdk):  # noqa: F811
    sandbox = _create(sdk)
    first = sandbox.process.create_pty_session("term", envs={"GREETING": "hi"}, pty_size=PtySize(rows=30, cols=100))
    second = sandbox.process.connect_pty_session("term")
    first.send_input("echo $((6*7)) $GREETING\n")
    _read_until(first, b"42 hi")
    _read_until(second, b"42 hi")  # every client gets the output

    first.disconnect()  # detaches that client only
    second.send_input("echo $((6*8))\n")
    _read_until(second, b"48")
    info = sandbox.process.get_pty_session_info("term")
    assert (info.active, info.envs["GREETING"], info.envs["TERM"]) == (True, "hi", "xterm-256color")

    second.disconnect()
    fake_daytona.advance_clock(7 * 24 * 3600)  # nobody attached for a week: still there
    assert [s.id for s in sandbox.process.list_pty_sessions()] == ["term"]
    late = _attach(fake_daytona, sandbox.id, "/term/connect")
    late.send(b"echo $((6*9))\n")
    frames = late.read_text_until("54")
    output = b"".join(f.payload for f in frames)
    assert b"42 hi" not in output and b"48" not in output  # no replay of earlier output
    late.close()
    assert fake_daytona.calls["pty_create"] == 1 and fake_daytona.calls["pty_connect"] == 2


def test_an_input_frame_over_64_kib_closes_the_connection(fake_daytona, sdk):  # noqa: F811
    sandbox = _create(sdk)
    ws = _attach(fake_daytona, sandbox.id, "/create-connect?id=big")
    ws.send(b"x" * (64 * 1024 + 1))
    frames, ending = ws.read_until_end()
    assert ending == "close" and frames[-1].close_code == 1009
    assert [s.id for s in sandbox.process.list_pty_sessions()] == ["big"]  # only the client went


# ----- scripted faults --------------------------------------------------------------------


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
    result = sandbox.process.connect_pty_session("d").wait(timeout=5)
    assert (result.exit_code, result.error) == (2, "non-zero exit")
