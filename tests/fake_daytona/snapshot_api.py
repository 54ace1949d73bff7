"""Daytona's snapshot endpoints under ``/api/snapshots`` and the build log the proxy streams at
``/snapshots/{id}/build-logs`` (the URL ``build-logs-url`` answers); the state is
:class:`~.snapshots.SnapshotStore` (``fake.store.snapshots``).

What the SDK's ``snapshot.create(..., on_logs=...)`` does with them (0.226.1): ``POST
/snapshots``, then ``GET /snapshots/{id}`` every second until ``active``, ``error`` or
``build_failed``; once the snapshot has left ``pending`` (a build only) ``GET
/snapshots/{id}/build-logs-url`` and ``GET <url>?follow=true``, read chunk by chunk until the
stream ends or, after the snapshot is done, two 2 s silences in a row. The runner ends a
followed log one second after the image exists; a failed build's log never ends, so the SDK
hangs up on it (v0.190.0 ``GetBuildLogs``).
"""

from __future__ import annotations

import asyncio
import json
import time
from http import HTTPStatus
from typing import Any

from aiohttp import web

from .builds import DEFAULT_BUILD_ERROR
from .holds import LOOK_SLICE_SECONDS
from .middleware import (
    TRANSITION_FAULT_KEY,
    ApiResult,
    error_response,
    fake_of,
    operation,
    reset_connection,
)
from .records import ApiError
from .snapshots import DEFAULT_PULL_ERROR, SnapshotStore

LOG_TAIL_SECONDS = 1.0  # the runner's wait for the last lines once the image exists
LOG_CHECK_SECONDS = 0.25  # how often the runner looks whether the image exists


def add_snapshot_routes(app: web.Application) -> None:
    """The endpoints on the API sub-application (before its catch-all)."""
    add = app.router.add_route
    add("POST", "/snapshots", create_snapshot)
    add("GET", "/snapshots", list_snapshots)
    add("GET", "/snapshots/{id}/build-logs-url", get_build_logs_url)
    add("GET", "/snapshots/{id}/build-logs", get_build_logs)
    add("POST", "/snapshots/{id}/activate", activate_snapshot)
    add("POST", "/snapshots/{id}/deactivate", deactivate_snapshot)
    add("GET", "/snapshots/{id}", get_snapshot)
    add("DELETE", "/snapshots/{id}", delete_snapshot)


def add_snapshot_log_routes(app: web.Application) -> None:
    """The proxy's build-log stream, on the root application (the proxy's domain)."""
    app.router.add_route("GET", "/snapshots/{id}/build-logs", stream_build_logs)


def _snapshots(request: web.Request) -> SnapshotStore:
    return fake_of(request).store.snapshots


def _id(request: web.Request) -> str:
    return request.match_info["id"]


@operation("snapshot_create")
async def create_snapshot(request: web.Request) -> ApiResult:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ApiError(400, "Request body must be valid JSON") from None
    fault = request.get(TRANSITION_FAULT_KEY)
    refused = None
    if fault is not None:
        building = isinstance(body, dict) and body.get("buildInfo") is not None
        refused = fault.message or (DEFAULT_BUILD_ERROR if building else DEFAULT_PULL_ERROR)
    return ApiResult(_snapshots(request).create(body, refused=refused))  # @HttpCode(200)


@operation("snapshot_get")
async def get_snapshot(request: web.Request) -> ApiResult:
    return ApiResult(_snapshots(request).get(_id(request)))


@operation("snapshot_list")
async def list_snapshots(request: web.Request) -> ApiResult:
    return ApiResult(_snapshots(request).list_page(request.query))


@operation("snapshot_delete")
async def delete_snapshot(request: web.Request) -> ApiResult:
    _snapshots(request).remove(_id(request))
    return ApiResult(None)  # a void handler: 200, no body


@operation("snapshot_activate")
async def activate_snapshot(request: web.Request) -> ApiResult:
    return ApiResult(_snapshots(request).activate(_id(request)))  # @HttpCode(200)


@operation("snapshot_deactivate")
async def deactivate_snapshot(request: web.Request) -> ApiResult:
    _snapshots(request).deactivate(_id(request))
    return ApiResult(None, status=204)


@operation("snapshot_build_logs_url")
async def get_build_logs_url(request: web.Request) -> ApiResult:
    fake = fake_of(request)
    snapshot_id = _id(request)
    await _wait_for_build_runner(fake, snapshot_id)
    return ApiResult({"url": f"{fake.url}/snapshots/{snapshot_id}/build-logs"})


@operation("snapshot_build_logs")
async def get_build_logs(request: web.Request) -> web.StreamResponse:
    """The deprecated ``GET /api/snapshots/{id}/build-logs``: an active snapshot's answer is
    empty; otherwise, once a runner has the build, its log as the proxy streams it."""
    fake = fake_of(request)
    snapshot_id = _id(request)
    follow = _follow(request.query.get("follow"))
    snapshots = _snapshots(request)
    if snapshots.is_active(snapshot_id):
        return web.Response(status=200)
    await _wait_for_build_runner(fake, snapshot_id)
    return await _stream(request, *snapshots.log_source(snapshot_id), follow=follow)


async def stream_build_logs(request: web.Request) -> web.StreamResponse:
    """``GET /snapshots/{id}/build-logs[?follow=true]`` on the proxy: the caller's key, the
    snapshot as the API shows it to that key, then the runner's log file."""
    fake = fake_of(request)
    fake._record("snapshot_logs", request)
    if request.headers.get("Authorization") != f"Bearer {fake.api_key}":
        return error_response(request, 401, "Unauthorized")
    fault = fake.faults.take("snapshot_logs")
    if fault is not None and fault.kind == "status":
        status = fault.status or 500
        return error_response(request, status, fault.message or HTTPStatus(status).phrase, fault.headers)
    if fault is not None and fault.kind == "reset":
        return reset_connection(request)
    if fault is not None and fault.kind == "slow":
        await asyncio.sleep(fault.seconds)
    try:
        snapshot_id, ref = _snapshots(request).log_source(_id(request))
    except ApiError as error:
        return error_response(request, error.status, error.message)
    return await _stream(request, snapshot_id, ref, follow=request.query.get("follow") == "true")


async def _wait_for_build_runner(fake: Any, snapshot_id: str) -> None:
    """The controller's wait (up to 30 s of real time) until a runner has the build."""
    deadline = time.monotonic() + fake.timings.hold_limit
    while True:
        due_in = fake.store.snapshots.runner_wait(snapshot_id)
        if due_in is None:
            return
        left = deadline - time.monotonic()
        if left <= 0:
            raise ApiError(404, f"Timeout waiting for build runner assignment for snapshot {snapshot_id}")
        await asyncio.sleep(min(left, LOOK_SLICE_SECONDS, max(due_in, 0.001)))


async def _stream(request: web.Request, snapshot_id: str, ref: str, *, follow: bool) -> web.StreamResponse:
    """The runner's ``GetBuildLogs``: the file so far; when following, each line as it is
    written, until a second after the image exists (for a failed build: until the client
    hangs up)."""
    snapshots = _snapshots(request)
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    await response.prepare(request)
    sent = 0
    try:
        while True:
            lines, finished, next_line_in = snapshots.log_progress(snapshot_id, ref, sent)
            for line in lines:
                await response.write(line.encode() + b"\n")
            sent += len(lines)
            if not follow:
                break
            if finished:
                await asyncio.sleep(LOG_TAIL_SECONDS)
                lines, _, _ = snapshots.log_progress(snapshot_id, ref, sent)
                for line in lines:
                    await response.write(line.encode() + b"\n")
                break
            transport = request.transport
            if transport is None or transport.is_closing():
                return response
            await asyncio.sleep(max(0.001, min(LOG_CHECK_SECONDS, next_line_in)))
        await response.write_eof()
    except ConnectionError:
        pass  # the client hung up
    return response


def _follow(raw: str | None) -> bool:
    """``ParseBoolPipe({optional: true})``."""
    if raw is None:
        return False
    if raw not in ("true", "false"):
        raise ApiError(400, "Validation failed (boolean string is expected)")
    return raw == "true"
