"""PTY sessions of a local sandbox are freed as soon as they end, however they end, so a
sandbox never runs out of terminals; a sandbox at its cap of live sessions says so."""

import time

import pytest

from sandboxes.providers.base import ProviderError
from sandboxes.providers.local import agent_client
from tests.local_fixtures import local_root, make_provider, provider, read_until, spec  # noqa: F401 - fixtures


def live_sessions(provider, remote_id: str) -> list[str]:
    return agent_client.agent_status(provider.store.socket_path(remote_id))["sessions"]


def wait_for_no_sessions(provider, remote_id: str, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while live_sessions(provider, remote_id) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert live_sessions(provider, remote_id) == []


def test_a_hundred_ended_sessions_leave_no_trace(provider):
    sandbox = provider.create(spec(), wait_seconds=10)
    try:
        for index in range(100):
            session_id = f"churn-{index}"
            terminal = provider.open_terminal(sandbox.id, session_id=session_id, cols=80, rows=24)
            way = index % 4
            if way == 0:  # the user types exit
                terminal.write(b"exit\n")
                while terminal.read():
                    pass
                assert terminal.exit_code == 0
            elif way == 1:  # ended by the portal, nobody attached (a web terminal closed for good)
                terminal.detach()
                provider.end_terminal(sandbox.id, session_id)
            elif way == 2:  # ended as an SSH channel closes: kill, then hang up with output unread
                terminal.write(b"yes | head -c 5000000\n")
                time.sleep(0.05)
                terminal.kill()
                terminal.detach()
            else:  # ended through its own connection, the end read
                terminal.kill()
                while terminal.read():
                    pass
            if way in (1, 2, 3):
                assert session_id not in live_sessions(provider, sandbox.id)  # its slot is free at once
        wait_for_no_sessions(provider, sandbox.id)
        terminal = provider.open_terminal(sandbox.id, session_id="after-the-churn", cols=80, rows=24)
        terminal.write(b"echo still-$((6*7))\n")
        read_until(terminal, b"still-42")
        terminal.kill()
        terminal.detach()
    finally:
        provider.delete(sandbox.id)


def test_at_the_cap_of_live_sessions_the_error_says_so(local_root):  # noqa: F811
    capped = make_provider(local_root, pty_sessions=5)
    sandbox = capped.create(spec(), wait_seconds=10)
    try:
        terminals = [capped.open_terminal(sandbox.id, session_id=f"live-{i}", cols=80, rows=24) for i in range(5)]
        with pytest.raises(ProviderError) as caught:
            capped.open_terminal(sandbox.id, session_id="one-too-many", cols=80, rows=24)
        message = str(caught.value)
        assert "5 terminal sessions open" in message and "SANDBOX_LOCAL_PTY_SESSIONS" in message
        assert caught.value.code == "too_many_sessions"
        # Reattaching to a live one is no new session; ending one frees a slot at once.
        capped.open_terminal(sandbox.id, session_id="live-0", cols=80, rows=24).detach()
        capped.end_terminal(sandbox.id, "live-1")
        extra = capped.open_terminal(sandbox.id, session_id="one-more", cols=80, rows=24)
        extra.write(b"echo fits\n")
        read_until(extra, b"fits")
        for terminal in [*terminals, extra]:
            terminal.kill()
            terminal.detach()
    finally:
        capped.delete(sandbox.id)
