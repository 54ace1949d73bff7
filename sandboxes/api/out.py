"""What the API says of a sandbox, its access and its ledger: rows and records into JSON objects."""

from __future__ import annotations

from datetime import datetime

from django.conf import settings
from django.http import HttpRequest
from django.urls import reverse
from django.utils import timezone

from sandboxes import services
from sandboxes.models import AccessGrant, Sandbox


def sandbox_out(sandbox: Sandbox) -> dict:
    """The API's ``sandbox`` object (:class:`SandboxOut`)."""
    return {
        "id": sandbox.remote_id or None,
        "name": sandbox.remote_name,
        "template": template_out(sandbox.template),
        "state": sandbox.state,
        "provider": sandbox.provider,
        "resources": {"cpu": sandbox.cpu, "memoryGb": sandbox.memory_gb, "diskGb": sandbox.disk_gb},
        "createdAt": _iso(sandbox.created_at),
        "lastStartedAt": _iso(sandbox.last_started_at),
        "lastActivityAt": _iso(sandbox.last_activity_at),
        "idleStopAt": _iso(services.idle_stop_at(sandbox)),
        "lastError": {"code": sandbox.last_error_code, "message": sandbox.last_error} if sandbox.last_error else None,
        "lastStoppedAt": _iso(sandbox.last_stopped_at),
        "stateChangedAt": _iso(sandbox.state_changed_at),
        "lastActivitySource": sandbox.last_activity_source or None,
        "idleMinutes": int(sandbox.idle_period.total_seconds() // 60),
        "idleWarningAt": _iso(services.idle_warning_at(sandbox)),
        "keepAwakeUntil": _iso(sandbox.keep_awake_until),
    }


def template_out(template) -> dict:
    """The API's ``template`` reference (:class:`TemplateRef`)."""
    return {"slug": template.slug, "name": template.name}


def access_out(request: HttpRequest, sandbox: Sandbox, access) -> dict:
    """The API's ``access`` object (:class:`AccessOut`), links as full URLs on the host the user
    reached the portal by. The terminal is always the portal's own page (it works for every
    user); a provider's direct terminal link, where there is one, is ``daytonaUrl``, for members
    of the Daytona organisation."""
    terminal_page = reverse("sandbox-terminal", args=[sandbox.remote_id])
    ssh, preview, terminal = access.ssh, access.preview, access.terminal
    return {
        "ssh": {
            "command": ssh.command,
            "token": ssh.token,
            "host": ssh.host,
            "port": ssh.port,
            "expiresAt": ssh.expires_at.isoformat(),
        },
        "preview": {
            "url": request.build_absolute_uri(preview.url),
            "port": settings.SANDBOX_PREVIEW_PORT,
            "expiresAt": preview.expires_at.isoformat(),
        },
        "terminal": {
            "url": request.build_absolute_uri(terminal_page),
            "expiresAt": terminal.expires_at.isoformat(),
            "daytonaUrl": terminal.url if terminal.url != terminal_page else None,
        },
    }


def editor_out(sandbox: Sandbox, access) -> dict:
    """The ``editor`` object: an ``~/.ssh/config`` entry for the sandbox (its user is the SSH
    token, so it works until the token expires) and a VS Code Remote-SSH link to that entry."""
    ssh = access.ssh
    alias = sandbox.remote_name  # "<deployment>-user-<n>": one name per sandbox of this deployment
    lines = [
        f"Host {alias}",
        f"    HostName {ssh.host}",
        f"    Port {ssh.port}",
        f"    User {ssh.token}",
        "    # The token expires at " + ssh.expires_at.strftime("%Y-%m-%d %H:%M UTC") + "; copy a new entry then.",
    ]
    home = services.home_directory(sandbox)
    return {
        "hostAlias": alias,
        "sshConfig": "\n".join(lines) + "\n",
        "vscodeUrl": f"vscode://vscode-remote/ssh-remote+{alias}{home}",
    }


def ledger_entry_out(grant: AccessGrant, now: datetime | None = None) -> dict:
    """One ``LedgerEntry``: a credential or live session, never its secret."""
    state = services.grant_state(grant, now or timezone.now())
    return {
        "id": grant.public_id,
        "kind": grant.kind,
        "label": grant.label or grant.get_kind_display(),
        "createdAt": _iso(grant.created_at),
        "expiresAt": _iso(grant.expires_at),
        "lastUsedAt": _iso(grant.last_used_at),
        "lastUsedFrom": grant.last_used_from,
        "parentId": grant.parent.public_id if grant.parent_id and grant.parent else None,
        "state": state,
        "revocable": services.grant_revocable(grant, now or timezone.now()),
    }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None
