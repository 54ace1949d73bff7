"""The dashboard's endpoints: everything about the sandbox at once, the owner's preferences,
the access ledger with its revokes, and the timeline."""

from __future__ import annotations

from django.conf import settings
from django.http import HttpResponse
from django.utils import timezone
from ninja import Status

from sandboxes import services
from sandboxes.http import no_store

from .core import api, named_template, own_sandbox
from .out import access_out, editor_out, ledger_entry_out, sandbox_out
from .schemas import (
    ERRORS,
    DashboardOut,
    LaunchIn,
    LedgerOut,
    PreferencesIn,
    PreferencesOut,
    RevokedAllOut,
    RevokedOut,
    TimelineOut,
)

EVENTS_SOCKET = "/ws/sandbox/events/"


@api.get(
    "/sandbox/dashboard",
    response={200: DashboardOut, **ERRORS},
    summary="Everything the dashboard shows of the signed-in user's sandbox",
    description="The sandbox and its idle stop, the access handed out at the last launch while it is valid "
    "(null otherwise: launching mints new access), an ~/.ssh/config entry and a VS Code link, the idle "
    "settings, where live updates come from (live.websocketUrl, or polling every live.pollSeconds) and the "
    "server's clock. 404 when the user has no sandbox.",
)
def sandbox_dashboard(request, response: HttpResponse, template: str | None = None):
    no_store(response)
    sandbox = own_sandbox(request, template)
    now = timezone.now()
    access = services.valid_access(sandbox, now)
    low, high = services.idle_period_bounds()
    return Status(
        200,
        {
            "sandbox": sandbox_out(sandbox),
            "access": access_out(request, sandbox, access) if access else None,
            "editor": editor_out(sandbox, access) if access else None,
            "idle": {
                "minMinutes": low,
                "maxMinutes": high,
                "defaultMinutes": settings.SANDBOX_IDLE_MINUTES,
                "warningMinutes": settings.SANDBOX_IDLE_WARNING_MINUTES,
                "extendChoicesMinutes": list(settings.SANDBOX_EXTEND_CHOICES_MINUTES),
                "extendMaxMinutes": settings.SANDBOX_EXTEND_MAX_MINUTES,
                "emailBeforeStop": sandbox.warn_by_email,
            },
            "live": {
                "websocketUrl": EVENTS_SOCKET if settings.SANDBOX_LIVE_PUSH else None,
                "pollSeconds": settings.SANDBOX_LIVE_POLL_SECONDS,
            },
            "now": now.isoformat(),
        },
    )


def _own_or_new(request, template: str | None):
    """The user's sandbox (of that template), its row made now when there is none: preferences
    may be chosen before a first launch."""
    sandbox = services.own_row(request.auth, template)
    if sandbox is not None:
        return sandbox
    return services.sandbox_get_or_create_row(user=request.auth, template=services.template_named(template))


def _preferences_out(sandbox) -> dict:
    low, high = services.idle_period_bounds()
    return {
        "idleMinutes": sandbox.idle_minutes,
        "emailBeforeStop": sandbox.warn_by_email,
        "minMinutes": low,
        "maxMinutes": high,
        "defaultMinutes": settings.SANDBOX_IDLE_MINUTES,
    }


@api.get(
    "/sandbox/preferences",
    response={200: PreferencesOut, **ERRORS},
    summary="The signed-in user's idle period and email choice",
    description="idleMinutes null means the deployment's default (defaultMinutes).",
)
def preferences_detail(request, response: HttpResponse, template: str | None = None):
    no_store(response)
    return Status(200, _preferences_out(_own_or_new(request, template)))


@api.put(
    "/sandbox/preferences",
    response={200: PreferencesOut, **ERRORS},
    summary="Choose the idle period and whether to be emailed before an idle stop",
    description="idleMinutes between minMinutes and maxMinutes, or null for the default; 400 "
    "invalid_idle_period otherwise. A field left out keeps its value. The idle policy honours the new period "
    "from its next pass.",
)
def preferences_update(request, response: HttpResponse, payload: PreferencesIn):
    no_store(response)
    sandbox = _own_or_new(request, payload.template)
    given = payload.model_fields_set
    idle_minutes = payload.idleMinutes if "idleMinutes" in given else sandbox.idle_minutes
    email = payload.emailBeforeStop if "emailBeforeStop" in given and payload.emailBeforeStop is not None else None
    sandbox = services.sandbox_set_preferences(
        sandbox=sandbox,
        idle_minutes=idle_minutes,
        warn_by_email=sandbox.warn_by_email if email is None else email,
        actor=request.auth,
    )
    return Status(200, _preferences_out(sandbox))


@api.get(
    "/sandbox/access",
    response={200: LedgerOut, **ERRORS},
    summary="The access ledger: every credential and live session of the sandbox",
    description="SSH tokens, signed links, open terminal, SSH and preview sessions, each with when it was "
    "created, when it expires, when and from which address it was last used, and its state; those that ended "
    "or were revoked in the last 24 hours too. Never the secrets themselves.",
)
def access_ledger(request, response: HttpResponse, template: str | None = None):
    no_store(response)
    sandbox = own_sandbox(request, template)
    now = timezone.now()
    grants = services.access_ledger(sandbox=sandbox, now=now)
    return Status(200, {"entries": [ledger_entry_out(grant, now) for grant in grants]})


@api.post(
    "/sandbox/access/revoke-all",
    response={200: RevokedAllOut, **ERRORS},
    summary="Revoke every credential and end every live session of the sandbox",
)
def access_revoke_all(request, response: HttpResponse, payload: LaunchIn | None = None):
    no_store(response)
    revoked = services.access_revoke_all(sandbox=own_sandbox(request, named_template(payload)), actor=request.auth)
    return Status(200, {"revoked": revoked})


@api.post(
    "/sandbox/access/{entry_id}/revoke",
    response={200: RevokedOut, **ERRORS},
    summary="Revoke one credential or end one live session",
    description="Live sessions opened with a revoked credential end within seconds. 404 for an entry that "
    "is not the signed-in user's.",
)
def access_revoke(request, response: HttpResponse, entry_id: str, payload: LaunchIn | None = None):
    no_store(response)
    grant = services.access_revoke(
        sandbox=own_sandbox(request, named_template(payload)), public_id=entry_id, actor=request.auth
    )
    return Status(200, {"entry": ledger_entry_out(grant)})


@api.get(
    "/sandbox/timeline",
    response={200: TimelineOut, **ERRORS},
    summary="Why the sandbox runs, why it stopped: its recent history, newest first",
    description="Launches, stops and their reasons (the idle policy, an operator, the owner), extensions, "
    "revokes and what kept it awake (terminal input, SSH, the preview...), at most 50 entries.",
)
def sandbox_timeline(request, response: HttpResponse, template: str | None = None):
    no_store(response)
    entries = services.sandbox_timeline(sandbox=own_sandbox(request, template))
    return Status(
        200,
        {
            "entries": [
                {"at": entry.at.isoformat(), "kind": entry.kind, "text": entry.text, "actor": entry.actor}
                for entry in entries
            ]
        },
    )
