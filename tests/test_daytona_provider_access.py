"""The Daytona provider's access: SSH tokens, signed preview and terminal links, their
revocation, and activity."""

from __future__ import annotations

import urllib.request
from datetime import UTC, datetime, timedelta
from urllib.error import HTTPError

from tests.daytona_fixtures import elapsed_since, provider, started_sandbox  # noqa: F401 - fixtures

# --- access -----------------------------------------------------------------------------


def test_mint_access_returns_ssh_preview_and_terminal(provider, fake_daytona):
    sandbox_id = started_sandbox(fake_daytona)
    before = datetime.now(UTC)

    access = provider.mint_access(sandbox_id, ssh_minutes=120, preview_port=3000, link_seconds=600)

    assert fake_daytona.ssh_tokens(sandbox_id) == [access.ssh.token]
    assert (access.ssh.host, access.ssh.port) == (fake_daytona.ssh_host, fake_daytona.ssh_port)
    assert access.ssh.token in access.ssh.command
    assert access.ssh.expires_at - before > timedelta(minutes=119)
    assert (access.preview.port, access.terminal.port) == (3000, 22222)
    # The preview is the portal's own page (it relays the app on a site of its own); only the
    # terminal is a link Daytona signs.
    assert access.preview.url == f"/sandboxes/{sandbox_id}/preview/?port=3000" and not access.preview.token
    assert timedelta(seconds=590) < access.preview.expires_at - before <= timedelta(seconds=601)
    sign_requests = [r for r in fake_daytona.requests if r.operation == "signed_preview_url"]
    assert [(r.query["expiresInSeconds"], r.path.split("/ports/")[1].split("/")[0]) for r in sign_requests] == [
        ("600", "22222")
    ]


def test_warm_mint_costs_two_requests(provider, fake_daytona):
    # They are made side by side; what that saves is measured by bin/bench (warm launch).
    sandbox_id = started_sandbox(fake_daytona)
    provider.get(sandbox_id)  # the client exists: a warm process
    before = fake_daytona.calls

    provider.mint_access(sandbox_id, ssh_minutes=120, preview_port=3000, link_seconds=600)

    assert fake_daytona.calls - before == {"ssh_create": 1, "signed_preview_url": 1}


def test_mint_access_keeps_one_live_ssh_token(provider, fake_daytona):
    sandbox_id = started_sandbox(fake_daytona)

    provider.mint_access(sandbox_id, ssh_minutes=120, preview_port=3000, link_seconds=600)
    latest = provider.mint_access(sandbox_id, ssh_minutes=120, preview_port=3000, link_seconds=600)

    assert fake_daytona.ssh_tokens(sandbox_id) == [latest.ssh.token]


def test_revoke_access_expires_links_and_ssh(provider, fake_daytona):
    sandbox_id = started_sandbox(fake_daytona)
    access = provider.mint_access(sandbox_id, ssh_minutes=120, preview_port=3000, link_seconds=600)
    assert page_status(access.terminal.url) == 200

    provider.revoke_access(sandbox_id, preview_port=3000, links=[access.preview, access.terminal])
    provider.revoke_access(sandbox_id, preview_port=3000, links=[access.preview, access.terminal])

    # Expired early: Daytona's proxy refuses them (401 to an API client; a browser is sent to log in).
    assert page_status(access.terminal.url) == 401
    assert fake_daytona.ssh_tokens(sandbox_id) == []
    revokes = [r for r in fake_daytona.requests if r.operation == "ssh_revoke"]
    assert all("token" not in r.query for r in revokes)


def test_revoke_access_of_a_deleted_sandbox_is_a_no_op(provider, fake_daytona):
    sandbox_id = started_sandbox(fake_daytona)
    access = provider.mint_access(sandbox_id, ssh_minutes=120, preview_port=3000, link_seconds=600)
    provider.delete(sandbox_id)

    provider.revoke_access(sandbox_id, preview_port=3000, links=[access.preview, access.terminal])


def test_refresh_activity_moves_last_activity(provider, fake_daytona):
    sandbox_id = started_sandbox(fake_daytona)
    before = provider.get(sandbox_id).last_activity_at
    fake_daytona.advance_clock(600)

    provider.refresh_activity(sandbox_id)
    fake_daytona.advance_clock(20)  # Daytona writes activity in batches every 10 s

    assert provider.get(sandbox_id).last_activity_at - before >= timedelta(seconds=600)
    assert fake_daytona.calls["last_activity"] == 1


def page_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status
    except HTTPError as error:
        return error.code
