"""The access ledger on Daytona (the HTTP fake through the real SDK): minting records the SSH
token and the signed terminal link, revoking ends them at Daytona, a revoked web terminal
session closes its open websocket within 5 s, and every revoke is audited."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import urllib.request
from datetime import timedelta
from urllib.error import HTTPError

import pytest
import time_machine
from asgiref.sync import async_to_sync, sync_to_async
from django.utils import timezone

from sandboxes import services
from sandboxes.models import AccessGrant, AuditEvent, Sandbox, TerminalSession
from sandboxes.services.access import stored_access
from sandboxes.services.errors import SandboxError
from sandboxes.services.ledger import access_ledger, access_revoke, access_revoke_all, grant_state
from tests.conftest import launch, signed_in
from tests.terminal_client import attach, launched, next_frame, run, socket

pytestmark = pytest.mark.django_db(transaction=True)

Kind = AccessGrant.Kind
LIMIT = 5.0  # seconds from a revoke to the end of what it revoked


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def page_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status
    except HTTPError as error:
        return error.code


def launched_sandbox(user, daytona) -> Sandbox:
    launched(user, daytona)
    return Sandbox.objects.get(user=user)


def by_kind(sandbox: Sandbox) -> dict[str, list[AccessGrant]]:
    found: dict[str, list[AccessGrant]] = {}
    for grant in access_ledger(sandbox=sandbox):
        found.setdefault(grant.kind, []).append(grant)
    return found


def revoked_events(sandbox: Sandbox) -> list[dict]:
    return [
        {**event.detail, "actor": event.actor_id}
        for event in AuditEvent.objects.filter(sandbox=sandbox, action=AuditEvent.Action.ACCESS_REVOKED).order_by("pk")
    ]


def test_minting_records_the_ssh_token_and_the_signed_terminal_link(owner, daytona, settings):
    before = timezone.now()
    sandbox = launched_sandbox(owner, daytona)
    access = stored_access(sandbox)

    grants = by_kind(sandbox)
    assert sorted(grants) == [Kind.SSH_TOKEN, Kind.TERMINAL_LINK]
    (token,), (link,) = grants[Kind.SSH_TOKEN], grants[Kind.TERMINAL_LINK]
    assert token.fingerprint == digest(access.ssh.token) and link.fingerprint == digest(access.terminal.token)
    assert token.expires_at == access.ssh.expires_at and link.expires_at == access.terminal.expires_at
    assert token.created_at >= before and grant_state(token, timezone.now()) == "active"
    assert token.last_used_at is None and token.parent is None
    stored = json.dumps(list(AccessGrant.objects.values()), default=str)
    assert access.ssh.token not in stored and access.terminal.token not in stored  # never a secret

    launch(signed_in(owner))  # the stored access is reused: nothing new
    assert AccessGrant.objects.count() == 2

    settings.SANDBOX_ACCESS_REUSE_MARGIN = timedelta(days=1)  # the next launch mints anew
    launch(signed_in(owner))
    newer = stored_access(Sandbox.objects.get(pk=sandbox.pk))
    states = {(grant.fingerprint, grant_state(grant, timezone.now())) for grant in access_ledger(sandbox=sandbox)}
    assert states == {
        (digest(access.ssh.token), "ended"),
        (digest(access.terminal.token), "ended"),
        (digest(newer.ssh.token), "active"),
        (digest(newer.terminal.token), "active"),
    }


def test_revoking_the_ssh_token_makes_daytona_refuse_it_and_the_next_launch_mint_anew(owner, daytona):
    sandbox = launched_sandbox(owner, daytona)
    access = stored_access(sandbox)
    assert daytona.ssh_tokens(sandbox.remote_id) == [access.ssh.token]
    token = by_kind(sandbox)[Kind.SSH_TOKEN][0]

    revoked = access_revoke(sandbox=sandbox, public_id=token.public_id, actor=owner)

    assert grant_state(revoked, timezone.now()) == "revoked" and revoked.revoked_by == owner
    assert daytona.ssh_tokens(sandbox.remote_id) == []
    assert daytona.store.validate_ssh(access.ssh.token)["valid"] is False
    assert stored_access(Sandbox.objects.get(pk=sandbox.pk)) is None
    assert revoked_events(sandbox) == [{"kind": Kind.SSH_TOKEN, "grant": token.public_id, "actor": owner.pk}]

    again = stored_access(Sandbox.objects.get(pk=launched_sandbox(owner, daytona).pk))
    assert again.ssh.token != access.ssh.token and daytona.ssh_tokens(sandbox.remote_id) == [again.ssh.token]


def test_revoking_the_terminal_link_expires_it_and_nothing_else(owner, daytona):
    sandbox = launched_sandbox(owner, daytona)
    access = stored_access(sandbox)
    assert page_status(access.terminal.url) == 200
    link = by_kind(sandbox)[Kind.TERMINAL_LINK][0]

    access_revoke(sandbox=sandbox, public_id=link.public_id, actor=owner)

    assert page_status(access.terminal.url) == 401  # Daytona's proxy refuses it
    assert daytona.ssh_tokens(sandbox.remote_id) == [access.ssh.token]  # the SSH token still works
    assert grant_state(by_kind(sandbox)[Kind.SSH_TOKEN][0], timezone.now()) == "active"
    assert revoked_events(sandbox) == [{"kind": Kind.TERMINAL_LINK, "grant": link.public_id, "actor": owner.pk}]


def test_a_grant_of_another_users_sandbox_is_not_found(owner, teammate, daytona):
    mine = launched_sandbox(owner, daytona)
    theirs = launched_sandbox(teammate, daytona)
    their_token = by_kind(theirs)[Kind.SSH_TOKEN][0]

    for public_id in (their_token.public_id, "", "nonsense"):
        with pytest.raises(SandboxError) as refused:
            access_revoke(sandbox=mine, public_id=public_id, actor=owner)
        assert (refused.value.code, refused.value.status) == ("not_found", 404)
    assert daytona.ssh_tokens(theirs.remote_id) == [stored_access(theirs).ssh.token]
    assert AuditEvent.objects.filter(action=AuditEvent.Action.ACCESS_REVOKED).count() == 0


def test_a_revoked_terminal_session_closes_its_open_websocket(owner, daytona):
    remote_id, client = launched(owner, daytona)
    sandbox = Sandbox.objects.get(user=owner)

    async def scenario():
        terminal = socket(client, remote_id)
        session = await attach(terminal)
        await run(terminal, "echo ready-$((1+1))", b"ready-2")
        grant = (await sync_to_async(by_kind)(sandbox))[Kind.TERMINAL_SESSION][0]
        assert grant.fingerprint == digest(session)
        assert grant.last_used_from == "127.0.0.1" and grant.last_used_at is not None

        started = time.monotonic()
        await sync_to_async(access_revoke)(sandbox=sandbox, public_id=grant.public_id, actor=owner)
        while True:
            frame = await terminal.receive_output(timeout=LIMIT)
            if frame["type"] == "websocket.close":
                break
        assert time.monotonic() - started < LIMIT
        await terminal.disconnect()
        return session

    session = async_to_sync(scenario)()
    assert session not in [s.id for s in daytona.ptys.list(remote_id)]  # the shell ended
    assert not TerminalSession.objects.filter(session_id=session).exists()
    (grant,) = by_kind(sandbox)[Kind.TERMINAL_SESSION]
    assert grant_state(grant, timezone.now()) == "revoked"


def test_reattaching_records_the_use_of_the_terminal_session(owner, daytona):
    remote_id, client = launched(owner, daytona)
    sandbox = Sandbox.objects.get(user=owner)

    async def scenario():
        first = socket(client, remote_id)
        session = await attach(first)
        await first.disconnect()
        return session

    session = async_to_sync(scenario)()
    grant = AccessGrant.objects.get(kind=Kind.TERMINAL_SESSION)
    first_use = grant.last_used_at
    again = services.terminal_open(sandbox=sandbox, session_id=session, cols=80, rows=24, client_address="203.0.113.9")
    again.detach()
    grant.refresh_from_db()
    assert grant.last_used_at > first_use and grant.last_used_from == "203.0.113.9"
    assert AccessGrant.objects.filter(kind=Kind.TERMINAL_SESSION).count() == 1  # the same session


def test_revoke_everything(owner, daytona):
    remote_id, client = launched(owner, daytona)
    sandbox = Sandbox.objects.get(user=owner)
    access = stored_access(sandbox)

    async def scenario():
        terminal = socket(client, remote_id)
        await attach(terminal)
        count = await sync_to_async(access_revoke_all)(sandbox=sandbox, actor=owner)
        frame = await next_frame(terminal)
        while frame["type"] != "websocket.close":
            frame = await next_frame(terminal)
        await terminal.disconnect()
        return count

    assert async_to_sync(scenario)() == 3
    assert {grant_state(grant, timezone.now()) for grant in access_ledger(sandbox=sandbox)} == {"revoked"}
    assert daytona.ssh_tokens(remote_id) == [] and page_status(access.terminal.url) == 401
    assert sorted(event["kind"] for event in revoked_events(sandbox)) == sorted(
        [Kind.SSH_TOKEN, Kind.TERMINAL_LINK, Kind.TERMINAL_SESSION]
    )
    assert access_revoke_all(sandbox=sandbox, actor=owner) == 0


def test_a_stop_ends_every_grant_and_the_ledger_keeps_a_day(owner, daytona):
    sandbox = launched_sandbox(owner, daytona)
    services.sandbox_stop(sandbox=sandbox, actor_type=AuditEvent.ActorType.ADMIN, reason="test")

    grants = access_ledger(sandbox=sandbox)
    assert {grant_state(grant, timezone.now()) for grant in grants} == {"ended"} and len(grants) == 2
    assert access_ledger(sandbox=sandbox, now=timezone.now() + timedelta(hours=25)) == []
    token = next(grant for grant in grants if grant.kind == Kind.SSH_TOKEN)
    assert grant_state(token, token.expires_at + timedelta(seconds=1)) == "ended"  # ended wins over expired
    revoked = access_revoke(sandbox=sandbox, public_id=token.public_id, actor=owner)
    assert grant_state(revoked, timezone.now()) == "ended"  # nothing left to revoke
    assert revoked_events(sandbox) == []


def test_an_unused_token_past_its_expiry_counts_as_expired(owner, daytona):
    sandbox = launched_sandbox(owner, daytona)
    token = by_kind(sandbox)[Kind.SSH_TOKEN][0]
    later = token.expires_at + timedelta(minutes=1)

    assert grant_state(token, later) == "expired"
    assert token in access_ledger(sandbox=sandbox, now=later)
    assert token not in access_ledger(sandbox=sandbox, now=later + timedelta(hours=24))
    assert access_revoke(sandbox=sandbox, public_id=token.public_id, actor=owner, now=later).revoked_at is None
    assert access_revoke_all(sandbox=sandbox, actor=owner, now=later) == 0  # the link expired with it


def test_a_delete_ends_every_grant(owner, daytona):
    sandbox = launched_sandbox(owner, daytona)
    services.sandbox_delete(sandbox=sandbox, actor_type=AuditEvent.ActorType.ADMIN, reason="test")

    assert {grant_state(grant, timezone.now()) for grant in access_ledger(sandbox=sandbox)} == {"ended"}


def test_sessions_of_a_sandbox_stopped_behind_the_portals_back_count_as_ended(owner, daytona):
    remote_id, client = launched(owner, daytona)
    sandbox = Sandbox.objects.get(user=owner)

    async def scenario():
        terminal = socket(client, remote_id)
        await attach(terminal)
        await terminal.disconnect()

    async_to_sync(scenario)()
    Sandbox.objects.filter(pk=sandbox.pk).update(state="stopped")  # as reconcile records it
    sandbox.refresh_from_db()

    states = {grant.kind: grant_state(grant, timezone.now()) for grant in access_ledger(sandbox=sandbox)}
    assert states[Kind.TERMINAL_SESSION] == "ended"
    assert states[Kind.SSH_TOKEN] == "active"  # credentials are the provider's to end


def test_the_owners_pages_are_told_of_a_revoke(owner, daytona):
    from channels.layers import get_channel_layer

    from sandboxes.services.live import owner_group

    sandbox = launched_sandbox(owner, daytona)
    token = by_kind(sandbox)[Kind.SSH_TOKEN][0]
    layer = get_channel_layer()
    assert layer is not None, "the tests run with a Redis channel layer"

    async def scenario():
        channel = await layer.new_channel()
        await layer.group_add(owner_group(owner.pk), channel)
        await sync_to_async(access_revoke)(sandbox=sandbox, public_id=token.public_id, actor=owner)
        return await asyncio.wait_for(layer.receive(channel), timeout=5)

    assert async_to_sync(scenario)() == {"type": "sandbox.changed"}


def test_typing_records_the_use_of_the_terminal_session_at_most_once_a_minute(owner, daytona):
    remote_id, client = launched(owner, daytona)

    def last_used():
        return AccessGrant.objects.get(kind=Kind.TERMINAL_SESSION).last_used_at

    async def scenario():
        terminal = socket(client, remote_id)
        await attach(terminal)
        attached = await sync_to_async(last_used)()
        await run(terminal, "echo one-$((0+1))", b"one-1")
        assert await sync_to_async(last_used)() == attached  # within the minute: not written again
        with time_machine.travel(timezone.now() + timedelta(minutes=2), tick=True):
            await run(terminal, "echo two-$((1+1))", b"two-2")
            deadline = time.monotonic() + 5
            while await sync_to_async(last_used)() == attached:
                assert time.monotonic() < deadline, "typing was not recorded"
                await asyncio.sleep(0.05)
            assert await sync_to_async(last_used)() > attached + timedelta(minutes=1)
        await terminal.disconnect()

    async_to_sync(scenario)()
