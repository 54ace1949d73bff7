"""The in-sandbox toolbox API under ``/toolbox/<sandboxId>``: PTY sessions only."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from aiohttp import WSMsgType, web

from .faults import Fault
from .middleware import (
    FAKE_KEY,
    WEBSOCKET_FAULT_KEY,
    ApiResult,
    error_response,
    fake_of,
    make_middleware,
    operation,
)
from .pty_sessions import (
    CONNECTED_FRAME,
    EXIT_CONTROL_PROTOCOL,
    ExitStatus,
    PtyClient,
    PtyManager,
    PtySession,
    decode_envs,
)
from .records import ApiError

MAX_DIMENSION = 1000


def build_toolbox_app(fake: Any) -> web.Application:
    """The sub-application mounted at ``/toolbox``."""
    app = web.Application(middlewares=[make_middleware(with_latency=False)])
    app[FAKE_KEY] = fake
    add = app.router.add_route
    add("GET", "/{sandbox}/process/pty/create-connect", create_and_connect)
    add("GET", "/{sandbox}/process/pty", list_sessions)
    add("GET", "/{sandbox}/process/pty/{session}/connect", connect)
    add("GET", "/{sandbox}/process/pty/{session}", session_info)
    add("POST", "/{sandbox}/process/pty/{session}/resize", resize)
    add("DELETE", "/{sandbox}/process/pty/{session}", kill)
    add("*", "/{tail:.*}", unknown_route)
    return app


def _ptys(request: web.Request) -> PtyManager:
    return fake_of(request).ptys


def _started_sandbox(request: web.Request) -> str:
    """The sandbox id from the path; refuse unless the sandbox is running."""
    sandbox_id = request.match_info["sandbox"]
    state = fake_of(request).store.state_of(sandbox_id)
    if state is None:
        raise ApiError(404, f"Sandbox with ID {sandbox_id} not found")
    if state != "started":
        raise ApiError(409, f"Sandbox is not started (state: {state})")
    return sandbox_id


def _session(request: web.Request) -> PtySession:
    sandbox_id = _started_sandbox(request)
    session_id = request.match_info["session"]
    session = _ptys(request).get(sandbox_id, session_id)
    if session is None:
        raise ApiError(404, f"PTY session {session_id} not found")
    return session


def _dimension(raw: Any, default: int, name: str) -> int:
    if raw is None or raw == "":
        return default
    if isinstance(raw, bool):
        raise ApiError(400, f"{name} must be an integer")
    try:
        value = int(raw)
    except (TypeError, ValueError):
        raise ApiError(400, f"{name} must be an integer") from None
    if not 1 <= value <= MAX_DIMENSION:
        raise ApiError(400, f"{name} must be between 1 and {MAX_DIMENSION}")
    return value


async def unknown_route(request: web.Request) -> web.Response:
    return error_response(request, 404, f"Cannot {request.method} {request.path}")


@operation("pty_create")
async def create_and_connect(request: web.Request) -> web.StreamResponse:
    sandbox_id = _started_sandbox(request)
    query = request.query
    session_id = query.get("id", "")
    if not session_id:
        raise ApiError(400, "id is required")
    cols = _dimension(query.get("cols"), 80, "cols")
    rows = _dimension(query.get("rows"), 24, "rows")
    ptys = _ptys(request)
    if ptys.get(sandbox_id, session_id) is not None:
        raise ApiError(409, f"PTY session {session_id} already exists")
    envs = decode_envs(request.headers.get("Sec-WebSocket-Protocol"))
    ws = await _upgrade(request)
    fault = request.get(WEBSOCKET_FAULT_KEY)
    if fault is not None:
        return await _misbehave(ws, fault)
    if ptys.get(sandbox_id, session_id) is not None:
        return await _refuse_after_upgrade(ws, f"PTY session {session_id} already exists")
    session = ptys.spawn(sandbox_id, session_id, cols=cols, rows=rows, cwd=query.get("cwd"), envs=envs)
    return await _serve(ws, session, request)


@operation("pty_connect")
async def connect(request: web.Request) -> web.StreamResponse:
    sandbox_id = _started_sandbox(request)
    session_id = request.match_info["session"]
    session = _ptys(request).get(sandbox_id, session_id)
    ws = await _upgrade(request)
    fault = request.get(WEBSOCKET_FAULT_KEY)
    if fault is not None:
        return await _misbehave(ws, fault)
    if session is None:
        return await _refuse_after_upgrade(ws, f"PTY session {session_id} not found")
    return await _serve(ws, session, request)


@operation("pty_list")
async def list_sessions(request: web.Request) -> ApiResult:
    sandbox_id = _started_sandbox(request)
    return ApiResult({"sessions": [s.info() for s in _ptys(request).list(sandbox_id)]})


@operation("pty_info")
async def session_info(request: web.Request) -> ApiResult:
    return ApiResult(_session(request).info())


@operation("pty_resize")
async def resize(request: web.Request) -> ApiResult:
    session = _session(request)
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ApiError(400, "Request body must be valid JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "Request body must be an object")
    cols = _dimension(body.get("cols"), session.cols, "cols")
    rows = _dimension(body.get("rows"), session.rows, "rows")
    _ptys(request).resize(session, cols, rows)
    return ApiResult(session.info())


@operation("pty_kill")
async def kill(request: web.Request) -> ApiResult:
    session = _session(request)
    await _ptys(request).kill(session)
    return ApiResult({"message": f"PTY session {session.id} killed"})


async def _refuse_after_upgrade(ws: web.WebSocketResponse, message: str) -> web.WebSocketResponse:
    """The daemon's way to refuse once upgraded: an error control frame, then close."""
    await ws.send_str(json.dumps({"type": "control", "status": "error", "error": message}))
    await ws.close(code=1011, message=b"error")
    return ws


async def _upgrade(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(protocols=(EXIT_CONTROL_PROTOCOL,), max_msg_size=0)
    await ws.prepare(request)
    return ws


async def _serve(ws: web.WebSocketResponse, session: PtySession, request: web.Request) -> web.WebSocketResponse:
    """Attach a client: output flows out, input frames go to the terminal."""
    fake = fake_of(request)
    client = PtyClient(ws)
    client.send_text(CONNECTED_FRAME)
    session.clients.add(client)
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


async def _misbehave(ws: web.WebSocketResponse, fault: Fault) -> web.WebSocketResponse:
    """Websocket-level faults, played without spawning a shell."""
    kind = fault.kind
    if kind == "no_connected":
        async for _ in ws:
            pass
        return ws
    if kind == "error_frame":
        return await _refuse_after_upgrade(ws, fault.message or "PTY session failed")
    await ws.send_str(CONNECTED_FRAME)
    if kind == "close_no_reason":
        await ws.close(code=1011)
    elif kind == "slow_consumer":
        await ws.close(code=1008, message=b"slow consumer")
    elif kind == "exit":
        code = int(fault.options.get("exit_code", 1))
        status = ExitStatus(code, fault.message or (f"exit status {code}" if code else None))
        client = PtyClient(ws)
        client.finish(status)
        await client.pump()
    return ws
