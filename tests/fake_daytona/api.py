"""The Daytona REST API under ``/api``: sandboxes, SSH access, preview links.

A create from a snapshot, a start and a recover are held until the sandbox runs
(:mod:`.holds`); everything else answers at once.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from .builds import DEFAULT_BUILD_ERROR
from .holds import hold_until_started
from .middleware import (
    FAKE_KEY,
    TRANSITION_FAULT_KEY,
    ApiResult,
    error_response,
    fake_of,
    make_middleware,
    operation,
)
from .records import ApiError
from .snapshot_api import add_snapshot_routes
from .store import SandboxStore


def build_api_app(fake: Any) -> web.Application:
    """The sub-application mounted at ``/api``."""
    app = web.Application(middlewares=[make_middleware(with_latency=True, with_rate_limits=True)])
    app[FAKE_KEY] = fake
    add = app.router.add_route
    add("*", "/socket.io/{tail:.*}", socket_io_unavailable)
    add("POST", "/sandbox", create_sandbox)
    add("GET", "/sandbox", list_sandboxes)
    add("GET", "/sandbox/ssh-access/validate", validate_ssh_access)
    add("GET", "/sandbox/{id}", get_sandbox)
    add("DELETE", "/sandbox/{id}", delete_sandbox)
    add("POST", "/sandbox/{id}/start", start_sandbox)
    add("POST", "/sandbox/{id}/stop", stop_sandbox)
    add("POST", "/sandbox/{id}/recover", recover_sandbox)
    add("POST", "/sandbox/{id}/archive", archive_sandbox)
    add("PUT", "/sandbox/{id}/labels", replace_labels)
    add("POST", "/sandbox/{id}/autostop/{interval}", set_autostop)
    add("POST", "/sandbox/{id}/autoarchive/{interval}", set_autoarchive)
    add("POST", "/sandbox/{id}/autodelete/{interval}", set_autodelete)
    add("POST", "/sandbox/{id}/public/{public}", set_public)
    add("POST", "/sandbox/{id}/last-activity", update_last_activity)
    add("POST", "/sandbox/{id}/ssh-access", create_ssh_access)
    add("DELETE", "/sandbox/{id}/ssh-access", revoke_ssh_access)
    add("GET", "/sandbox/{id}/ports/{port}/preview-url", get_preview_url)
    add("GET", "/sandbox/{id}/ports/{port}/signed-preview-url", get_signed_preview_url)
    add("POST", "/sandbox/{id}/ports/{port}/signed-preview-url/{token}/expire", expire_signed_preview_url)
    add("GET", "/sandbox/{id}/toolbox-proxy-url", get_toolbox_proxy_url)
    add_snapshot_routes(app)
    add("*", "/{tail:.*}", unknown_route)
    return app


def _store(request: web.Request) -> SandboxStore:
    return fake_of(request).store


def _id(request: web.Request) -> str:
    return request.match_info["id"]


async def _json_body(request: web.Request) -> Any:
    try:
        return await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ApiError(400, "Request body must be valid JSON") from None


async def socket_io_unavailable(request: web.Request) -> web.Response:
    """The SDK's event stream is not emulated; the SDK falls back to polling."""
    fake_of(request)._count_socket_io()
    return error_response(request, 404, f"Cannot {request.method} {request.path}")


async def unknown_route(request: web.Request) -> web.Response:
    return error_response(request, 404, f"Cannot {request.method} {request.path}")


# errorReason of a scripted ``ends_in_error`` fault without a message.
DEFAULT_START_ERROR = "Sandbox entered error state on runner during startup wait loop"


def _fail_reason(request: web.Request, default: str) -> str | None:
    """The errorReason a scripted ``ends_in_error`` fault gives this request's transition."""
    fault = request.get(TRANSITION_FAULT_KEY)
    if fault is None:
        return None
    return fault.message or default


@operation("create")
async def create_sandbox(request: web.Request) -> ApiResult:
    body = await _json_body(request)
    if not isinstance(body, dict):
        raise ApiError(400, "Request body must be an object")
    fake = fake_of(request)
    building = body.get("buildInfo") is not None
    reason = _fail_reason(request, DEFAULT_BUILD_ERROR if building else DEFAULT_START_ERROR)
    created = _store(request).create(body, fail_reason=reason)
    if building or created["state"] == "started":
        return ApiResult(created)  # an image build is answered at once
    held = await hold_until_started(fake, created)
    # v0.190.0's controller discards the wait's outcome and answers the sandbox as inserted;
    # whether the hosted service still does is not known, so both answers are available.
    return ApiResult(created if fake.create_answer_after_hold == "as_created" else held)


@operation("list")
async def list_sandboxes(request: web.Request) -> ApiResult:
    query = request.query
    page = _store(request).list_page(
        labels=query.get("labels"),
        states=query.getall("states", []),
        limit=query.get("limit"),
        cursor=query.get("cursor"),
        id_prefix=query.get("id"),
        name_prefix=query.get("name"),
        sort=query.get("sort"),
        order=query.get("order"),
        include_errored_deleted=query.get("includeErroredDeleted"),
    )
    return ApiResult(page)


@operation("get")
async def get_sandbox(request: web.Request) -> ApiResult:
    return ApiResult(_store(request).get(_id(request)))


@operation("delete")
async def delete_sandbox(request: web.Request) -> ApiResult:
    return ApiResult(_store(request).delete(_id(request)))


@operation("start")
async def start_sandbox(request: web.Request) -> ApiResult:
    started = _store(request).start(_id(request), fail_reason=_fail_reason(request, DEFAULT_START_ERROR))
    if started["state"] in ("archived", "restoring", "started"):
        return ApiResult(started)  # a restore is answered at once
    return ApiResult(await hold_until_started(fake_of(request), started))


@operation("stop")
async def stop_sandbox(request: web.Request) -> ApiResult:
    return ApiResult(_store(request).stop(_id(request)))


@operation("recover")
async def recover_sandbox(request: web.Request) -> ApiResult:
    recovered = _store(request).recover(_id(request), fail_reason=_fail_reason(request, DEFAULT_START_ERROR))
    if recovered["state"] == "started":
        return ApiResult(recovered)
    return ApiResult(await hold_until_started(fake_of(request), recovered))


@operation("archive")
async def archive_sandbox(request: web.Request) -> ApiResult:
    return ApiResult(_store(request).archive(_id(request)))


@operation("set_labels")
async def replace_labels(request: web.Request) -> ApiResult:
    body = await _json_body(request)
    return ApiResult(_store(request).set_labels(_id(request), body))


@operation("autostop")
async def set_autostop(request: web.Request) -> ApiResult:
    interval = request.match_info["interval"]
    return ApiResult(_store(request).set_interval(_id(request), "autoStopInterval", interval, 0))


@operation("autoarchive")
async def set_autoarchive(request: web.Request) -> ApiResult:
    interval = request.match_info["interval"]
    return ApiResult(_store(request).set_interval(_id(request), "autoArchiveInterval", interval, 0))


@operation("autodelete")
async def set_autodelete(request: web.Request) -> ApiResult:
    interval = request.match_info["interval"]
    return ApiResult(_store(request).set_interval(_id(request), "autoDeleteInterval", interval, -1))


@operation("public")
async def set_public(request: web.Request) -> ApiResult:
    return ApiResult(_store(request).set_public(_id(request), request.match_info["public"]))


@operation("last_activity")
async def update_last_activity(request: web.Request) -> ApiResult:
    _store(request).record_activity(_id(request))
    return ApiResult(None, status=201)


@operation("ssh_create")
async def create_ssh_access(request: web.Request) -> ApiResult:
    minutes = request.query.get("expiresInMinutes")
    return ApiResult(_store(request).create_ssh(_id(request), minutes))


@operation("ssh_revoke")
async def revoke_ssh_access(request: web.Request) -> ApiResult:
    token = request.query.get("token")
    return ApiResult(_store(request).revoke_ssh(_id(request), token))


@operation("ssh_validate")
async def validate_ssh_access(request: web.Request) -> ApiResult:
    return ApiResult(_store(request).validate_ssh(request.query.get("token")))


@operation("preview_url")
async def get_preview_url(request: web.Request) -> ApiResult:
    return ApiResult(_store(request).preview_url(_id(request), request.match_info["port"]))


@operation("signed_preview_url")
async def get_signed_preview_url(request: web.Request) -> ApiResult:
    seconds = request.query.get("expiresInSeconds")
    return ApiResult(_store(request).signed_preview_url(_id(request), request.match_info["port"], seconds))


@operation("expire_signed_preview_url")
async def expire_signed_preview_url(request: web.Request) -> ApiResult:
    info = request.match_info
    _store(request).expire_signed_preview(info["id"], info["port"], info["token"])
    # NestJS answers a @Post without @HttpCode 201, with no body (the spec says 200).
    return ApiResult(None, status=201)


@operation("toolbox_proxy_url")
async def get_toolbox_proxy_url(request: web.Request) -> ApiResult:
    return ApiResult(_store(request).toolbox_proxy_url(_id(request)))
