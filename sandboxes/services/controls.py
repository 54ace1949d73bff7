"""What owners do to their own sandbox from the dashboard: stop it now, restart it, reset it.

Each is the operators' service (stop, delete) with the owner as the actor, followed by a launch
where the sandbox is to run again; the launch's own rules (rate, caps, row lock) apply.
"""

from __future__ import annotations

from sandboxes.models import AuditEvent, Sandbox

from .errors import SandboxError
from .launch import Launch, check_offered, sandbox_launch
from .lifecycle import sandbox_delete, sandbox_stop
from .live import sandbox_changed
from .rows import Actor, audit, remote_name_for, sandbox_labels

STOPPED_BY_OWNER = "stopped by its owner"


def sandbox_stop_own(*, sandbox: Sandbox, user) -> Sandbox:
    """The owner stops their sandbox now (files kept, access revoked); a sandbox at rest is
    left as it is."""
    sandbox_stop(sandbox=sandbox, actor_type=Actor.USER, actor=user, reason=STOPPED_BY_OWNER)
    return sandbox


def sandbox_restart(*, sandbox: Sandbox, user) -> Launch:
    """Stop the sandbox (when it runs) and start it again: a fresh boot with the same files and
    new access. Returns the launch, which may still be starting (``Launch.ready`` False)."""
    sandbox_stop(sandbox=sandbox, actor_type=Actor.USER, actor=user, reason="restarted by its owner")
    if sandbox.is_transitioning:
        raise SandboxError(
            "still_stopping", "Your sandbox is still stopping; try again in a few seconds.", status=409, retry_after=5
        )
    return sandbox_launch(user=user, template=sandbox.template)


def sandbox_reset(*, sandbox: Sandbox, user, confirm: str, template=None) -> Launch:
    """Delete the remote sandbox with every file in it and create a new one, of ``template``
    when given (how a user at ``SANDBOX_MAX_PER_USER`` changes template). ``confirm`` must be
    the sandbox's name, typed by the owner (``SandboxError("confirmation_mismatch")``, 400,
    otherwise, and nothing is done). The row, the owner's preferences and the audit log stay."""
    template = template or sandbox.template
    changing = template.pk != sandbox.template_id
    if changing:
        if Sandbox.objects.filter(user=user, template=template).exists():
            raise SandboxError(
                "template_taken", f"You have a {template.name} sandbox already: open that one.", status=409
            )
        check_offered(template, provider_name=sandbox.provider)
    if confirm.strip() != sandbox.remote_name:
        raise SandboxError(
            "confirmation_mismatch",
            f"Type the sandbox's name, {sandbox.remote_name}, to confirm that its files will be deleted.",
            status=400,
        )
    sandbox_delete(sandbox=sandbox, actor_type=Actor.USER, actor=user, reason="reset by its owner")
    changes = {"keep_awake_until": None, "stop_warning_sent_for": None}
    if changing:
        changes.update(
            template=template,
            remote_name=remote_name_for(user, template),
            labels=sandbox_labels(user, template),
            template_idle_minutes=template.idle_minutes,
        )
    Sandbox.objects.filter(pk=sandbox.pk).update(**changes)
    audit(
        sandbox,
        AuditEvent.Action.RESET,
        actor_type=Actor.USER,
        actor=user,
        **({"template": template.slug} if changing else {}),
    )
    sandbox_changed(sandbox)
    return sandbox_launch(user=user, template=template)
