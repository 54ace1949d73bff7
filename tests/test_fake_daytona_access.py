"""The Daytona emulator, exercised through the real ``daytona`` SDK: SSH access.

Previews are in ``test_fake_daytona_preview.py``, PTY sessions in ``test_fake_daytona_pty.py``,
the toolbox of a sandbox that is not started in ``test_fake_daytona_toolbox_states.py`` and
activity in ``test_fake_daytona_activity.py``."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from daytona import (
    DaytonaError,
)

from tests.daytona_fixtures import _create, sdk  # noqa: F401 - fixtures
from tests.fake_daytona.fixtures import fake_daytona, fake_daytona_server  # noqa: F401

# ----- SSH -------------------------------------------------------------------------------------


def test_ssh_access_keeps_one_token_and_revokes_one_or_all(fake_daytona, sdk):  # noqa: F811
    sandbox = _create(sdk)
    first = sandbox.create_ssh_access(expires_in_minutes=120)
    second = sandbox.create_ssh_access(expires_in_minutes=120)

    assert re.fullmatch(r"[A-Za-z0-9]{32}", second.token)
    assert second.ssh_command == f"ssh -p 2222 {second.token}@127.0.0.1"
    assert second.expires_at - datetime.now(UTC) > timedelta(minutes=119)
    assert fake_daytona.ssh_tokens(sandbox.id) == [second.token] != [first.token]
    assert sandbox.validate_ssh_access(second.token).sandbox_id == sandbox.id
    with pytest.raises(DaytonaError):
        sandbox.validate_ssh_access(first.token)  # the server answers sandboxId: null

    sandbox._sandbox_api.revoke_ssh_access(sandbox.id, token=first.token)
    assert fake_daytona.ssh_tokens(sandbox.id) == [second.token]
    sandbox._sandbox_api.revoke_ssh_access(sandbox.id, token=second.token)
    assert fake_daytona.requests[-1].query == {"token": second.token}
    assert fake_daytona.ssh_tokens(sandbox.id) == []

    third = sandbox.create_ssh_access()
    sandbox.revoke_ssh_access("stale-token")  # the SDK drops the token: revokes all
    assert fake_daytona.requests[-1].query == {}
    assert third.token not in fake_daytona.ssh_tokens(sandbox.id) == []
