"""The toolbox of a sandbox that is not started, through the real SDK and raw HTTP: the
runner refuses a stopped one (400, no IP address), the proxy an archived one (400, no
runner) and a destroyed one (401), on every route, both PTY websocket upgrades included.

The answers are read from Daytona's open-source proxy and runner (v0.190.0); the hosted
service may word them differently."""

from __future__ import annotations

import pytest
from daytona import DaytonaAuthenticationError, DaytonaBadRequestError, DaytonaError

from tests.daytona_fixtures import _create, sdk  # noqa: F401 - fixtures
from tests.fake_daytona.fixtures import FAKE_DAYTONA_API_KEY, fake_daytona, fake_daytona_server  # noqa: F401
from tests.fake_daytona.wire import RawWebSocket, http, ws_url

NO_IP = "bad request: failed to resolve container IP after 3 attempts: no IP address found. Is the Sandbox started?"
AUTH = {"Authorization": f"Bearer {FAKE_DAYTONA_API_KEY}"}

# (method, path under /toolbox/<id>) of every emulated route, and one the fake does not emulate.
HTTP_ROUTES = [
    ("GET", "/process/pty"),
    ("GET", "/process/pty/term"),
    ("POST", "/process/pty/term/resize"),
    ("DELETE", "/process/pty/term"),
    ("GET", "/files?path=/home/daytona"),
]
WEBSOCKET_ROUTES = ["/process/pty/create-connect?id=term&cols=80&rows=24", "/process/pty/term/connect"]


def _go_body(answer_json: dict, status: int, message: str, path: str, method: str) -> None:
    assert list(answer_json) == ["statusCode", "message", "code", "timestamp", "path", "method"]
    assert answer_json["statusCode"] == status
    assert answer_json["message"] == message
    assert answer_json["code"] == {400: "BAD_REQUEST", 401: "UNAUTHORIZED"}[status]
    assert answer_json["path"] == path
    assert answer_json["method"] == method
    assert answer_json["timestamp"].endswith("Z")


def _every_route_refused(fake, sandbox_id: str, status: int, message: str, *, runner: bool) -> None:
    """Each route answers ``status`` with the Go body of the layer that refused."""
    base = f"{fake.toolbox_url}/{sandbox_id}"
    for method, path in HTTP_ROUTES:
        body = b'{"cols": 100, "rows": 30}' if method == "POST" else None
        answer = http(method, base + path, headers={**AUTH, "Content-Type": "application/json"}, body=body)
        assert answer.status == status, (method, path, answer.text)
        bare = path.split("?")[0]
        seen_path = f"/sandboxes/{sandbox_id}/toolbox{bare}" if runner else f"/toolbox/{sandbox_id}{bare}"
        _go_body(answer.json(), status, message, seen_path, method)
    for path in WEBSOCKET_ROUTES:
        ws = RawWebSocket(ws_url(base + path), headers=AUTH, protocols=("X-Daytona-Pty-Exit-Control",))
        try:
            assert ws.status == status, (path, ws.body)
            bare = path.split("?")[0]
            seen_path = f"/sandboxes/{sandbox_id}/toolbox{bare}" if runner else f"/toolbox/{sandbox_id}{bare}"
            _go_body(ws.json(), status, message, seen_path, "GET")
        finally:
            ws.close()


def test_a_stopped_sandbox_is_refused_by_the_runner(fake_daytona, sdk):  # noqa: F811
    sandbox = _create(sdk)
    sandbox.stop(timeout=10)

    _every_route_refused(fake_daytona, sandbox.id, 400, NO_IP, runner=True)

    with pytest.raises(DaytonaBadRequestError) as listed:
        sandbox.process.list_pty_sessions()
    assert str(listed.value) == f"Failed to list PTY sessions: {NO_IP}"
    assert str(listed.value).endswith("no IP address found. Is the Sandbox started?")
    with pytest.raises(DaytonaBadRequestError, match="WebSocket upgrade failed with HTTP 400"):
        sandbox.process.create_pty_session("term")
    # The SDK's connect path does not map a refused upgrade to a status.
    with pytest.raises(DaytonaError) as connected:
        sandbox.process.connect_pty_session("term")
    assert connected.value.status_code is None and "400" in str(connected.value)


def test_an_archived_sandbox_is_refused_by_the_proxy(fake_daytona, sdk):  # noqa: F811
    sandbox = _create(sdk)
    sandbox.stop(timeout=10)
    sandbox.archive()
    message = f"bad request: failed to get runner info: Sandbox with ID {sandbox.id} does not have a runner"

    _every_route_refused(fake_daytona, sandbox.id, 400, message, runner=False)

    with pytest.raises(DaytonaBadRequestError, match="failed to get runner info"):
        sandbox.process.list_pty_sessions()
    with pytest.raises(DaytonaBadRequestError, match="HTTP 400"):
        sandbox.process.create_pty_session("term")


def test_a_destroyed_sandbox_is_unauthorized(fake_daytona, sdk):  # noqa: F811
    sandbox = _create(sdk)
    sandbox.delete()
    assert fake_daytona.sandbox(sandbox.id) is None
    message = "unauthorized: authentication failed: Bearer token is invalid"

    _every_route_refused(fake_daytona, sandbox.id, 401, message, runner=False)

    with pytest.raises(DaytonaAuthenticationError, match="Bearer token is invalid"):
        sandbox.process.list_pty_sessions()
    with pytest.raises(DaytonaAuthenticationError, match="HTTP 401"):
        sandbox.process.create_pty_session("term")
    with pytest.raises(DaytonaError):
        sandbox.process.connect_pty_session("term")


def test_the_proxy_wants_a_key_or_the_preview_token(fake_daytona, sdk):  # noqa: F811
    sandbox = _create(sdk)
    base = f"{fake_daytona.toolbox_url}/{sandbox.id}/process/pty"

    missing = http("GET", base)
    assert missing.status == 401
    assert missing.json()["message"].startswith("unauthorized: missing authentication: provide a preview access")
    wrong = http("GET", base, headers={"Authorization": "Bearer nope"})
    assert (wrong.status, wrong.json()["message"]) == (
        401,
        "unauthorized: authentication failed: Bearer token is invalid",
    )
    # The proxy accepts the standard preview token on the toolbox too.
    token = sandbox.get_preview_link(3000).token
    assert http("GET", base, headers={"X-Daytona-Preview-Token": token}).json() == {"sessions": []}


def test_a_started_sandbox_answers_in_the_daemons_words(fake_daytona, sdk):  # noqa: F811
    sandbox = _create(sdk)
    base = f"{fake_daytona.toolbox_url}/{sandbox.id}"

    unknown = http("GET", f"{base}/process/pty/nope", headers=AUTH)
    assert (unknown.status, unknown.json()) == (404, {"error": "PTY session not found"})
    other = http("GET", f"{base}/files?path=/", headers=AUTH)
    assert (other.status, other.text) == (404, "404 page not found")
    assert http("GET", f"{fake_daytona.toolbox_url}/{sandbox.id}", headers=AUTH).json()["message"] == (
        "not found: not found"
    )
