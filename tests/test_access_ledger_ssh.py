"""The access ledger at the portal's SSH gateway (local sandboxes, the real OpenSSH client): each
accepted connection is an SSH session under its token, revoking the session or its token ends
the open connection within 5 s saying why, and a closed connection is marked ended."""

from __future__ import annotations

import subprocess
import time

import pytest
from django.utils import timezone

from sandboxes.local_only.ssh_gateway.messages import WITHDRAWN_MESSAGE
from sandboxes.models import AccessGrant, AuditEvent, Sandbox
from sandboxes.services.access import stored_access
from sandboxes.services.ledger import access_ledger, access_revoke, grant_state
from tests.local_fixtures import local_root, local_settings  # noqa: F401 - fixtures
from tests.ssh_fixtures import gateway, needs_ssh, read_until, refused, ssh, ssh_access, ssh_argv, wait_for  # noqa: F401

pytestmark = [pytest.mark.django_db(transaction=True), needs_ssh]

Kind = AccessGrant.Kind
LIMIT = 5.0


def open_shell(token: str, port: int) -> subprocess.Popen:
    shell = subprocess.Popen(
        ssh_argv(token, port=port, tty=True), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    read_until(shell.stdout, b"sandbox@")  # the prompt
    return shell


def ended_within(shell: subprocess.Popen, started: float) -> tuple[float, str]:
    try:
        shell.wait(timeout=LIMIT + 5)
    except subprocess.TimeoutExpired:
        shell.kill()
        shell.wait()
        raise AssertionError("the connection stayed open") from None
    elapsed = time.monotonic() - started
    stderr = shell.stderr.read().decode().replace("\r", "")
    for stream in (shell.stdin, shell.stdout, shell.stderr):
        stream.close()
    return elapsed, stderr


def live_session(sandbox: Sandbox) -> AccessGrant:
    sessions = [g for g in access_ledger(sandbox=sandbox) if g.kind == Kind.SSH_SESSION and g.is_live]
    assert len(sessions) == 1, sessions
    return sessions[0]


def test_a_connection_is_a_session_under_its_token_and_revoking_it_ends_the_connection(gateway, owner):
    token = ssh_access(owner)["token"]
    sandbox = Sandbox.objects.get(user=owner)
    shell = open_shell(token, gateway.port)

    session = live_session(sandbox)
    parent = AccessGrant.objects.get(sandbox=sandbox, kind=Kind.SSH_TOKEN)
    assert session.parent_id == parent.pk and session.last_used_from == "127.0.0.1"
    assert session.created_at <= session.last_used_at <= timezone.now()
    assert (parent.last_used_from, parent.last_used_at) == ("127.0.0.1", session.last_used_at)

    started = time.monotonic()
    access_revoke(sandbox=sandbox, public_id=session.public_id, actor=owner)
    elapsed, stderr = ended_within(shell, started)

    assert elapsed < LIMIT and shell.returncode == 255
    assert WITHDRAWN_MESSAGE in stderr and token not in stderr
    session.refresh_from_db()
    assert grant_state(session, timezone.now()) == "revoked"
    event = AuditEvent.objects.get(action=AuditEvent.Action.ACCESS_REVOKED)
    assert (event.actor, event.detail) == (owner, {"kind": Kind.SSH_SESSION, "grant": session.public_id})
    assert ssh(token, "true", port=gateway.port).returncode == 0  # the token itself still opens the sandbox


def test_revoking_the_token_ends_its_open_connection_and_refuses_new_ones(gateway, owner):
    token = ssh_access(owner)["token"]
    sandbox = Sandbox.objects.get(user=owner)
    shell = open_shell(token, gateway.port)
    session = live_session(sandbox)
    grant = AccessGrant.objects.get(sandbox=sandbox, kind=Kind.SSH_TOKEN)

    started = time.monotonic()
    access_revoke(sandbox=sandbox, public_id=grant.public_id, actor=owner)
    elapsed, stderr = ended_within(shell, started)

    assert elapsed < LIMIT and shell.returncode == 255
    assert WITHDRAWN_MESSAGE in stderr
    assert refused(ssh(token, "true", port=gateway.port))
    assert stored_access(Sandbox.objects.get(pk=sandbox.pk)) is None  # the next launch mints anew
    states = {g.public_id: grant_state(g, timezone.now()) for g in access_ledger(sandbox=sandbox)}
    assert states == {grant.public_id: "revoked", session.public_id: "revoked"}
    assert ssh(ssh_access(owner)["token"], "true", port=gateway.port).returncode == 0


def test_a_closed_connection_is_marked_ended(gateway, owner):
    token = ssh_access(owner)["token"]
    sandbox = Sandbox.objects.get(user=owner)

    assert ssh(token, "true", port=gateway.port).returncode == 0

    def ended() -> bool:
        sessions = [g for g in access_ledger(sandbox=sandbox) if g.kind == Kind.SSH_SESSION]
        return len(sessions) == 1 and grant_state(sessions[0], timezone.now()) == "ended"

    assert wait_for(ended, seconds=5)
