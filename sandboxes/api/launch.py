"""The launcher's endpoints and the owner's controls: open, poll, keep alive, extend, stop,
restart, reset."""

from __future__ import annotations

from django.conf import settings
from django.http import HttpResponse
from ninja import Status

from sandboxes import services
from sandboxes.http import no_store
from sandboxes.models import ActivitySource

from .core import api, named_template, no_sandbox, own_sandbox
from .out import access_out, sandbox_out, template_out
from .schemas import (
    ERRORS,
    AppOut,
    ExtendIn,
    HeartbeatIn,
    HeartbeatOut,
    LaunchIn,
    LaunchOut,
    PendingOut,
    ResetIn,
    TemplatesOut,
)


@api.post(
    "/sandbox/create",
    response={200: LaunchOut, 202: PendingOut, **ERRORS},
    summary="Open the signed-in user's sandbox",
    description="Creates the sandbox, resumes it if stopped, or reuses it if running, then returns access "
    '(SSH token, preview URL, terminal URL). With {"template": "<slug>"} the sandbox of that template '
    "(GET /api/templates lists them), else of the default one. Answers 202 with the state while it is still "
    "starting; poll GET /api/sandbox and call again. 409 sandbox_limit when the user keeps as many sandboxes "
    "as SANDBOX_MAX_PER_USER allows (error.sandboxes lists them: open one, or reset one to the new template); "
    "409 template_unavailable for a template not built yet or whose build failed; 400 for an unknown slug.",
)
def sandbox_create(request, response: HttpResponse, payload: LaunchIn | None = None):
    no_store(response)
    slug = (payload.template if payload is not None else None) or request.GET.get("template")
    template = services.template_named(slug)
    return _launched(request, response, services.sandbox_launch(user=request.auth, template=template))


@api.get(
    "/sandbox",
    response={200: PendingOut, **ERRORS},
    summary="The signed-in user's sandbox and its state",
)
def sandbox_detail(request, response: HttpResponse, template: str | None = None):
    no_store(response)
    sandbox = services.sandbox_status(user=request.auth, template_slug=template)
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
    sandbox = own_sandbox(request, named_template(payload))
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
    sandbox = services.sandbox_extend(
        sandbox=own_sandbox(request, named_template(payload)),
        minutes=minutes,
        actor=request.auth,
    )
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
    sandbox = services.sandbox_stop_own(sandbox=own_sandbox(request, named_template(payload)), user=request.auth)
    return Status(200, {"sandbox": sandbox_out(sandbox)})


@api.post(
    "/sandbox/restart",
    response={200: LaunchOut, 202: PendingOut, **ERRORS},
    summary="Stop the sandbox and start it again",
    description="Same files, a fresh boot and new access. Answers as POST /api/sandbox/create does.",
)
def sandbox_restart(request, response: HttpResponse, payload: LaunchIn | None = None):
    no_store(response)
    launch = services.sandbox_restart(sandbox=own_sandbox(request, named_template(payload)), user=request.auth)
    return _launched(request, response, launch)


@api.post(
    "/sandbox/reset",
    response={200: LaunchOut, 202: PendingOut, **ERRORS},
    summary="Delete the sandbox and every file in it, then create a new one",
    description='The body must name the sandbox: {"confirm": "<sandbox.name>"}; anything else is refused '
    'with 400 confirmation_mismatch and nothing is deleted. {"template": "<slug>"} picks which of the '
    'user\'s sandboxes; {"newTemplate": "<slug>"} makes the new one of another template (how a user at '
    "SANDBOX_MAX_PER_USER changes template). Answers as POST /api/sandbox/create does.",
)
def sandbox_reset(request, response: HttpResponse, payload: ResetIn | None = None):
    no_store(response)
    payload = payload or ResetIn()
    new_template = services.template_named(payload.newTemplate) if payload.newTemplate else None
    launch = services.sandbox_reset(
        sandbox=own_sandbox(request, payload.template),
        user=request.auth,
        confirm=payload.confirm,
        template=new_template,
    )
    return _launched(request, response, launch)


def _launched(request, response: HttpResponse, launch: services.Launch):
    """A launch's answer: 200 with access once it runs, 202 with the state while it starts."""
    if not launch.ready:
        response["Retry-After"] = "2"
        return Status(202, {"sandbox": sandbox_out(launch.sandbox)})
    return Status(
        200, {"sandbox": sandbox_out(launch.sandbox), "access": access_out(request, launch.sandbox, launch.access)}
    )


@api.get(
    "/sandbox/app",
    response={200: AppOut, **ERRORS},
    summary="The template's app in the running sandbox: its start command, log and readiness",
    description="The start command runs in the background after every start of the sandbox, its output kept "
    "in ~/.joepro/app.log; ready is true once something listens on port (the preview is live). "
    "?template=<slug> picks the sandbox; running false (and no log) when it is not running.",
)
def sandbox_app(request, response: HttpResponse, template: str | None = None):
    no_store(response)
    sandbox = own_sandbox(request, template)
    status = services.app_status(sandbox=sandbox)
    return Status(
        200,
        {
            "template": template_out(sandbox.template),
            "command": sandbox.template.start_command,
            "port": sandbox.template.ready_port,
            "running": status is not None,
            "ready": bool(status and status.ready),
            "log": status.log if status is not None else "",
        },
    )


@api.get(
    "/templates",
    response={200: TemplatesOut, **ERRORS},
    summary="The templates a sandbox can be made from here",
    description="Enabled templates whose current version is built for this deployment's provider, and the "
    "default always; each with whether the user has a sandbox of it. POST /api/sandbox/create takes the slug.",
)
def templates_list(request, response: HttpResponse):
    no_store(response)
    own = set(services.own_templates(request.auth))
    return Status(
        200,
        {
            "templates": [
                {
                    "slug": template.slug,
                    "name": template.name,
                    "description": template.description,
                    "default": template.is_default,
                    "hasSandbox": template.slug in own,
                }
                for template in services.templates_offered()
            ],
            "maxSandboxes": settings.SANDBOX_MAX_PER_USER,
        },
    )
