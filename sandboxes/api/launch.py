"""The launcher's endpoints and the owner's controls: open, poll, keep alive, extend, stop,
restart, reset."""

from __future__ import annotations

from django.http import HttpResponse
from ninja import Status

from sandboxes import services
from sandboxes.http import no_store
from sandboxes.models import ActivitySource

from .core import api, no_sandbox, own_sandbox
from .out import access_out, sandbox_out
from .schemas import ERRORS, ExtendIn, HeartbeatIn, HeartbeatOut, LaunchIn, LaunchOut, PendingOut, ResetIn


@api.post(
    "/sandbox/create",
    response={200: LaunchOut, 202: PendingOut, **ERRORS},
    summary="Open the signed-in user's sandbox",
    description="Creates the sandbox, resumes it if stopped, or reuses it if running, then returns access "
    "(SSH token, preview URL, terminal URL). Answers 202 with the state while it is still starting; "
    "poll GET /api/sandbox and call again.",
)
def sandbox_create(request, response: HttpResponse, payload: LaunchIn | None = None):
    no_store(response)
    return _launched(request, response, services.sandbox_launch(user=request.auth))


@api.get(
    "/sandbox",
    response={200: PendingOut, **ERRORS},
    summary="The signed-in user's sandbox and its state",
)
def sandbox_detail(request, response: HttpResponse):
    no_store(response)
    sandbox = services.sandbox_status(user=request.auth)
    if sandbox is None:
        raise no_sandbox()
    return Status(200, {"sandbox": sandbox_out(sandbox)})


@api.post(
    "/sandbox/heartbeat",
    response={200: HeartbeatOut, **ERRORS},
    summary="Tell the portal whether the user worked on the page",
    description="Sent every minute by the portal's pages while they are visible, with interacted: true when "
    "someone pressed a key or used the pointer on the page since the last beat. Only that counts as activity "
    "for the idle policy (sandboxes stop after SANDBOX_IDLE_MINUTES without activity); an open, untouched "
    "page does not (counted: false). 404 when the user has no sandbox.",
)
def sandbox_heartbeat(request, response: HttpResponse, payload: HeartbeatIn | None = None):
    no_store(response)
    sandbox = own_sandbox(request)
    counted = bool(payload and payload.interacted)
    if counted:
        services.sandbox_record_activity(sandbox=sandbox, source=ActivitySource.PAGE)
    return Status(200, {"ok": True, "counted": counted})


@api.post(
    "/sandbox/extend",
    response={200: PendingOut, **ERRORS},
    summary="Keep the running sandbox from the idle stop for longer",
    description='With {"minutes": 60} or {"minutes": 240} (idle.extendChoicesMinutes of the dashboard), '
    "the idle stop (sandbox.idleStopAt) moves that much later, never further than SANDBOX_EXTEND_MAX_MINUTES "
    "from now. Without a body, the idle clock starts again now. 400 invalid_request for other minutes, "
    "409 not_running when it is not running, 404 when the user has none.",
)
def sandbox_extend(request, response: HttpResponse, payload: ExtendIn | None = None):
    no_store(response)
    minutes = payload.minutes if payload is not None else None
    sandbox = services.sandbox_extend(sandbox=own_sandbox(request), minutes=minutes, actor=request.auth)
    return Status(200, {"sandbox": sandbox_out(sandbox)})


@api.post(
    "/sandbox/stop",
    response={200: PendingOut, **ERRORS},
    summary="Stop the signed-in user's sandbox now",
    description="Files are kept and access (SSH tokens, links, open sessions) is revoked; the next launch "
    "resumes it. A sandbox already at rest is left as it is.",
)
def sandbox_stop(request, response: HttpResponse, payload: LaunchIn | None = None):
    no_store(response)
    sandbox = services.sandbox_stop_own(sandbox=own_sandbox(request), user=request.auth)
    return Status(200, {"sandbox": sandbox_out(sandbox)})


@api.post(
    "/sandbox/restart",
    response={200: LaunchOut, 202: PendingOut, **ERRORS},
    summary="Stop the sandbox and start it again",
    description="Same files, a fresh boot and new access. Answers as POST /api/sandbox/create does.",
)
def sandbox_restart(request, response: HttpResponse, payload: LaunchIn | None = None):
    no_store(response)
    return _launched(request, response, services.sandbox_restart(sandbox=own_sandbox(request), user=request.auth))


@api.post(
    "/sandbox/reset",
    response={200: LaunchOut, 202: PendingOut, **ERRORS},
    summary="Delete the sandbox and every file in it, then create a new one",
    description='The body must name the sandbox: {"confirm": "<sandbox.name>"}; anything else is refused '
    "with 400 confirmation_mismatch and nothing is deleted. Answers as POST /api/sandbox/create does.",
)
def sandbox_reset(request, response: HttpResponse, payload: ResetIn | None = None):
    no_store(response)
    confirm = payload.confirm if payload is not None else ""
    launch = services.sandbox_reset(sandbox=own_sandbox(request), user=request.auth, confirm=confirm)
    return _launched(request, response, launch)


def _launched(request, response: HttpResponse, launch: services.Launch):
    """A launch's answer: 200 with access once it runs, 202 with the state while it starts."""
    if not launch.ready:
        response["Retry-After"] = "2"
        return Status(202, {"sandbox": sandbox_out(launch.sandbox)})
    return Status(
        200, {"sandbox": sandbox_out(launch.sandbox), "access": access_out(request, launch.sandbox, launch.access)}
    )
