"""The toolbox under ``/toolbox/<sandboxId>``: Daytona's proxy and runner in front, the
sandbox daemon's PTY API and its ``POST /process/execute`` behind them.

Every request first meets the proxy (:mod:`.proxy`): authentication (401 once the sandbox
is destroyed), the runner lookup (400 for an archived sandbox), an activity post unless the
request carries ``X-Daytona-Skip-Last-Activity-Update: true`` (a websocket keeps re-posting
while open), then the runner's check that the container has an IP (400 when it is stopped).
Only a started sandbox's requests reach the daemon, which answers ``{"error": ...}``.
The daemon's routes and words are those of ``apps/daemon/pkg/toolbox/process/pty`` and
``.../process/execute``; what a command finds inside the sandbox is :mod:`.machine`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from aiohttp import WSMsgType, web

from .activity import skips_activity
from .clock import iso
from .faults import Fault
from .machine import CommandTimeout
from .middleware import FAKE_KEY, WEBSOCKET_FAULT_KEY, ApiResult, _answer, _apply_fault, fake_of, operation
from .proxy import (
    ProxyRefusal,
    check_key_or_preview_token,
    runner_info_refusal,
    runner_refusal,
    unauthorized,
)
from .pty_sessions import (
    CONNECTED_FRAME,
    ExitStatus,
    PtyClient,
    PtyManager,
    PtySession,
    PtyStartError,
    close_transport,
    control_frame,
    decode_envs,
)

MAX_DIMENSION = 1000
READ_LIMIT = 64 * 1024  # the daemon's websocket read limit; a bigger input frame closes 1009
WEBSOCKET_OPERATIONS = frozenset({"pty_create", "pty_connect"})


class DaemonError(Exception):
    """A refusal in the daemon's shape: ``{"error": message}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    def response(self) -> web.Response:
        return web.json_response({"error": self.message}, status=self.status)


def build_toolbox_app(fake: Any) -> web.Application:
    """The sub-application mounted at ``/toolbox``."""
    app = web.Application(middlewares=[_through_proxy])
    app[FAKE_KEY] = fake
    add = app.router.add_route
    add("GET", "/{sandbox}/process/pty/create-connect", create_and_connect)
    add("GET", "/{sandbox}/process/pty", list_sessions)
    add("GET", "/{sandbox}/process/pty/{session}/connect", connect)
    add("GET", "/{sandbox}/process/pty/{session}", session_info)
    add("POST", "/{sandbox}/process/pty/{session}/resize", resize)
    add("DELETE", "/{sandbox}/process/pty/{session}", kill)
    add("POST", "/{sandbox}/process/execute", execute)
    add("*", "/{sandbox}/{tail:.*}", unknown_daemon_route)
    add("*", "/{tail:.*}", no_sandbox_path)
    return app


@web.middleware
async def _through_proxy(request: web.Request, handler: Any) -> web.StreamResponse:
    """Record the request, then play the proxy and the runner before the daemon's handler."""
    fake = fake_of(request)
    name = getattr(request.match_info.handler, "operation", None)
    if name is None:
        return await handler(request)
    fake._record(name, request)
    sandbox_id = request.match_info["sandbox"]
    try:
        errors = check_key_or_preview_token(fake, request, sandbox_id)
        if errors is not None:
            raise unauthorized(errors)
        refusal = runner_info_refusal(fake, sandbox_id)
        if refusal is not None:
            raise refusal
        connection = None
        if not skips_activity(request.headers):
            source = "pty" if name in WEBSOCKET_OPERATIONS else "toolbox"
            connection = fake.activity.open_connection(sandbox_id, source)
        try:
            refusal = runner_refusal(fake, sandbox_id, _runner_path(request, sandbox_id))
            if refusal is not None:
                raise refusal
            return await _daemon(request, handler, fake, name)
        finally:
            # The proxy's re-posts stop when the request ends (for a websocket: when it closes).
            fake.activity.close(connection)
    except ProxyRefusal as refusal:
        return refusal.response(request, fake.clock.time())


async def _daemon(request: web.Request, handler: Any, fake: Any, name: str) -> web.StreamResponse:
    async def daemon_handler(request: web.Request) -> Any:
        try:
            return await handler(request)
        except DaemonError as error:
            return error.response()

    fault = fake.faults.take(name)
    if fault is None:
        return await _answer(request, daemon_handler)
    return await _apply_fault(request, daemon_handler, fault, fake, name)


def _runner_path(request: web.Request, sandbox_id: str) -> str:
    """The path the runner sees: ``/sandboxes/<id>/toolbox/<rest>``."""
    rest = request.path[len(f"/toolbox/{sandbox_id}") :]
    return f"/sandboxes/{sandbox_id}/toolbox{rest}"


def _ptys(request: web.Request) -> PtyManager:
    return fake_of(request).ptys


def _sandbox_id(request: web.Request) -> str:
    return request.match_info["sandbox"]


def _query_dimension(raw: str | None, default: int) -> int:
    """Go's ``strconv.ParseUint(s, 10, 16)``, falling back to the default on any error."""
    if not raw or not raw.isascii() or not raw.isdigit():
        return default
    value = int(raw)
    return value if value <= 0xFFFF else default


@operation("toolbox_other")
async def unknown_daemon_route(request: web.Request) -> web.Response:
    """Routes the fake does not emulate get gin's default 404."""
    return web.Response(status=404, text="404 page not found", content_type="text/plain")


async def no_sandbox_path(request: web.Request) -> web.Response:
    """``/toolbox/<id>`` without a path: the proxy's own 404."""
    fake = fake_of(request)
    return ProxyRefusal(404, "not found: not found").response(request, fake.clock.time())


@operation("process_execute")
async def execute(request: web.Request) -> web.Response:
    """``POST /process/execute`` ``{"command", "cwd"?, "envs"?, "timeout"?}``: run the command
    and answer ``{"exitCode", "result"}`` (stdout and stderr mixed) once it ends; 408 in the
    daemon's error shape when it outlives ``timeout`` seconds (it is killed)."""
    fake = fake_of(request)
    sandbox_id = _sandbox_id(request)
    try:
        body = await request.json()
    except ValueError:
        body = None
    command = body.get("command") if isinstance(body, dict) else None
    envs = body.get("envs") or {} if isinstance(body, dict) else {}
    timeout = body.get("timeout") if isinstance(body, dict) else None
    if not isinstance(command, str) or not command.strip() or not isinstance(envs, dict):
        return _daemon_error(request, 400, "command is required")
    record = fake.store.peek(sandbox_id) or {}
    resources = fake.machines.resources(
        sandbox_id, memory_gb=int(record.get("memory") or 1), disk_gb=int(record.get("disk") or 3)
    )
    try:
        exit_code, output = await fake.machines.execute(
            sandbox_id,
            command,
            resources=resources,
            home=fake.ptys.home_for(sandbox_id),
            cwd=body.get("cwd"),
            envs={str(k): str(v) for k, v in envs.items()},
            timeout=timeout if isinstance(timeout, int) and timeout > 0 else None,
        )
    except CommandTimeout:
        message = (
            f"Command execution timed out after {timeout} seconds. The timeout can be increased by "
            "adjusting the timeout parameter in the request."
        )
        return _daemon_error(request, 408, message)
    return web.json_response({"exitCode": exit_code, "result": output})


def _daemon_error(request: web.Request, status: int, message: str) -> web.Response:
    """The daemon's ``ErrorResponse`` (its error middleware's shape, unlike the PTY routes')."""
    return web.json_response(
        {
            "statusCode": status,
            "message": message,
            "code": "REQUEST_TIMEOUT" if status == 408 else "BAD_REQUEST",
            "timestamp": iso(fake_of(request).clock.time()),
            "path": request.path,
            "method": request.method,
        },
        status=status,
    )


@operation("pty_create")
async def create_and_connect(request: web.Request) -> web.StreamResponse:
    """``GET /process/pty/create-connect?id=&cols=&rows=[&cwd=]``: refuse before the upgrade
    (400, 409), or upgrade and start the shell (a failure now is an ``error`` frame)."""
    sandbox_id = _sandbox_id(request)
    query = request.query
    session_id = query.get("id", "")
    if not session_id:
        raise DaemonError(400, "session ID is required (query param 'id')")
    ptys = _ptys(request)
    if ptys.get(sandbox_id, session_id) is not None:
        raise DaemonError(409, f"PTY session with ID '{session_id}' already exists")
    cols = _query_dimension(query.get("cols"), 80)
    rows = _query_dimension(query.get("rows"), 24)
    if cols > MAX_DIMENSION or rows > MAX_DIMENSION:
        raise DaemonError(400, "cols and rows must be less than 1000")
    try:
        envs = decode_envs(request.headers.get("Sec-WebSocket-Protocol"))
    except ValueError as error:
        raise DaemonError(400, f"invalid envs subprotocol: {error}") from None
    ws, transport = await _upgrade(request)
    if ws is None:
        return _not_a_websocket()
    fault = request.get(WEBSOCKET_FAULT_KEY)
    if fault is not None:
        return await _misbehave(ws, transport, fault)
    if ptys.get(sandbox_id, session_id) is not None:
        message = f"Failed to start PTY session: PTY session with ID '{session_id}' already exists"
        return await _refuse_after_upgrade(ws, transport, message)
    try:
        session = ptys.spawn(sandbox_id, session_id, cols=cols, rows=rows, cwd=query.get("cwd"), envs=envs)
    except PtyStartError as error:
        return await _refuse_after_upgrade(ws, transport, f"Failed to start PTY session: {error}")
    if not fake_of(request).store.is_started(sandbox_id):
        ptys.kill_sandbox(sandbox_id)  # it stopped during the upgrade: the shell dies with it
    return await _serve(ws, transport, session, request)


@operation("pty_connect")
async def connect(request: web.Request) -> web.StreamResponse:
    """``GET /process/pty/{id}/connect``: always upgrades; an unknown or ended session gets an
    ``error`` frame and the connection dropped without a close frame."""
    session_id = request.match_info["session"]
    ws, transport = await _upgrade(request)
    if ws is None:
        return _not_a_websocket()
    fault = request.get(WEBSOCKET_FAULT_KEY)
    if fault is not None:
        return await _misbehave(ws, transport, fault)
    session = _ptys(request).get(_sandbox_id(request), session_id)
    if session is None:
        message = f"Failed to connect to PTY session: PTY session {session_id} not found"
        return await _refuse_after_upgrade(ws, transport, message)
    return await _serve(ws, transport, session, request)


@operation("pty_list")
async def list_sessions(request: web.Request) -> ApiResult:
    return ApiResult({"sessions": [s.info() for s in _ptys(request).list(_sandbox_id(request))]})


@operation("pty_info")
async def session_info(request: web.Request) -> ApiResult:
    session = _ptys(request).get(_sandbox_id(request), request.match_info["session"])
    if session is None:
        raise DaemonError(404, "PTY session not found")
    return ApiResult(session.info())


@operation("pty_resize")
async def resize(request: web.Request) -> ApiResult:
    """``POST /process/pty/{id}/resize`` with both ``cols`` and ``rows`` in 1..1000 (gin's
    binding and validator words), 410 for a session that is unknown or has ended."""
    cols, rows = _resize_body(await request.read())
    session_id = request.match_info["session"]
    ptys = _ptys(request)
    session = ptys.get(_sandbox_id(request), session_id)
    if session is None or session.done.is_set():
        raise DaemonError(410, f"PTY session {session_id} not found")
    ptys.resize(session, cols, rows)
    return ApiResult(session.info())


@operation("pty_kill")
async def kill(request: web.Request) -> ApiResult:
    ptys = _ptys(request)
    session = ptys.get(_sandbox_id(request), request.match_info["session"])
    if session is None:
        raise DaemonError(404, "PTY session not found")
    await ptys.kill(session)
    return ApiResult({"message": "PTY session deleted"})


def _resize_body(raw: bytes) -> tuple[int, int]:
    text = raw.decode("utf-8", errors="replace").strip()
    if not text:
        raise DaemonError(400, "EOF")
    try:
        body = json.loads(text)
    except json.JSONDecodeError:
        raise DaemonError(400, f"invalid character {text[0]!r} looking for beginning of value") from None
    if not isinstance(body, dict):
        raise DaemonError(400, f"json: cannot unmarshal {_go_kind(body)} into Go value of type pty.PTYResizeRequest")
    values = {}
    for key in ("cols", "rows"):
        value = body.get(key)
        if value is None:
            value = 0  # absent or null: the zero value, which ``required`` refuses below
        elif isinstance(value, (bool, str, list, dict)):
            raise DaemonError(400, _unmarshal_error(_go_kind(value), key))
        elif value != int(value) or not 0 <= value <= 0xFFFF:
            raise DaemonError(400, _unmarshal_error(f"number {value}", key))
        values[key] = int(value)
    failures = [
        f"Key: 'PTYResizeRequest.{key.title()}' Error:Field validation for '{key.title()}' failed on the '{tag}' tag"
        for key in ("cols", "rows")
        for tag in ["required" if values[key] == 0 else "max" if values[key] > MAX_DIMENSION else ""]
        if tag
    ]
    if failures:
        raise DaemonError(400, "\n".join(failures))
    return values["cols"], values["rows"]


def _unmarshal_error(kind: str, key: str) -> str:
    return f"json: cannot unmarshal {kind} into Go struct field PTYResizeRequest.{key} of type uint16"


def _go_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return "number"


def _not_a_websocket() -> web.Response:
    """gorilla's answer when the request is no websocket handshake."""
    return web.Response(status=400, text="Bad Request\n", headers={"Sec-Websocket-Version": "13"})


async def _upgrade(request: web.Request) -> tuple[web.WebSocketResponse | None, asyncio.BaseTransport | None]:
    """Accept the handshake selecting no subprotocol (the daemon selects only an SDK-version
    one, which the Python SDK does not offer)."""
    if request.headers.get("Upgrade", "").lower() != "websocket":
        return None, None
    transport = request.transport
    ws = web.WebSocketResponse(max_msg_size=READ_LIMIT)
    await ws.prepare(request)
    return ws, transport


async def _refuse_after_upgrade(
    ws: web.WebSocketResponse, transport: asyncio.BaseTransport | None, message: str
) -> web.WebSocketResponse:
    """The daemon's way to refuse once upgraded: an ``error`` frame, then ``conn.Close()``
    (the TCP connection ends, no close frame)."""
    with contextlib.suppress(ConnectionError, RuntimeError):
        await ws.send_str(control_frame("error", error=message))
    close_transport(transport)
    return ws


async def _serve(
    ws: web.WebSocketResponse,
    transport: asyncio.BaseTransport | None,
    session: PtySession,
    request: web.Request,
) -> web.WebSocketResponse:
    """Attach a client: output flows out, input frames (text or binary) go to the terminal."""
    fake = fake_of(request)
    client = PtyClient(ws, transport)
    client.send_text(CONNECTED_FRAME)
    session.clients.add(client)
    if session.done.is_set():  # it ended while this client attached
        session.clients.discard(client)
        client.drop()
    pump = asyncio.create_task(client.pump())
    try:
        async for message in ws:
            if message.type == WSMsgType.BINARY:
                fake.ptys.write(session, message.data)
            elif message.type == WSMsgType.TEXT:
                fake.ptys.write(session, message.data.encode())
    finally:
        session.clients.discard(client)
        await _finish_pump(pump, client)
    return ws


async def _finish_pump(pump: asyncio.Task[None], client: PtyClient) -> None:
    if client.closing:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(pump), timeout=2)
    if not pump.done():
        pump.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await pump


async def _misbehave(
    ws: web.WebSocketResponse, transport: asyncio.BaseTransport | None, fault: Fault
) -> web.WebSocketResponse:
    """Websocket-level faults, played without spawning a shell."""
    kind = fault.kind
    if kind == "no_connected":
        async for _ in ws:
            pass
        return ws
    if kind == "error_frame":
        return await _refuse_after_upgrade(ws, transport, fault.message or "PTY session failed")
    await ws.send_str(CONNECTED_FRAME)
    if kind == "close_no_reason":
        await ws.close(code=1011)
    elif kind == "slow_consumer":
        await ws.close(code=1008, message=b"slow consumer")
    elif kind == "exit":
        client = PtyClient(ws, transport)
        client.finish(ExitStatus(int(fault.options.get("exit_code", 1))))
        await client.pump()
    return ws
