"""The Daytona provider against a fake that answers as the hosted service does: deletes that
take time and refuse a second delete, desired states ahead of state words, restores from
archive, starts that fail, image builds, toolbox refusals, listings that move while paged.

Through the real SDK; the fake's transitions complete on its own clock (``advance_clock``).
"""

from __future__ import annotations

import threading
import time

import pytest

from sandboxes.providers.base import ErrorKind, ProviderError, RemoteState
from sandboxes.providers.daytona import convert
from sandboxes.providers.daytona.terminal import PTY_POLL_SECONDS
from tests.daytona_fixtures import MANAGED, make_spec, provider, started_sandbox  # noqa: F401 - fixtures
from tests.fake_daytona.timings import Timings


@pytest.fixture
def slow_transitions(fake_daytona):
    """The hosted service's timings, in the fake's own time (nothing completes until the test
    moves the fake's clock), and no server-side hold."""
    fake_daytona.timings = Timings.realistic().with_changes(hold_limit=0)
    return fake_daytona


# --- delete ----------------------------------------------------------------------------------------


def test_a_second_delete_while_destroying_and_one_after_are_success(provider, slow_transitions):
    sandbox_id = started_sandbox(slow_transitions)

    provider.delete(sandbox_id)
    provider.delete(sandbox_id)  # Daytona answers 409 "state change in progress" meanwhile
    assert slow_transitions.calls["delete"] == 2
    assert provider.get(sandbox_id).state is RemoteState.DESTROYING
    assert provider.find("joepro-u42") is None  # renamed DESTROYED_..., its name free at once

    slow_transitions.advance_clock(60)
    assert provider.get(sandbox_id) is None
    provider.delete(sandbox_id)  # 404 now


def test_a_delete_whose_answer_was_lost_is_success_when_retried(provider, fake_daytona):
    sandbox_id = started_sandbox(fake_daytona)
    fake_daytona.fault("delete", "commit_then_reset")

    provider.delete(sandbox_id)

    assert provider.get(sandbox_id) is None or provider.get(sandbox_id).state is RemoteState.DESTROYING


def test_a_delete_refused_by_another_change_in_progress_is_a_conflict(provider, slow_transitions):
    sandbox_id = started_sandbox(slow_transitions)
    provider.stop(sandbox_id, wait_seconds=0)  # stopping for a while

    with pytest.raises(ProviderError) as refused:
        provider.delete(sandbox_id)

    assert refused.value.kind is ErrorKind.CONFLICT
    assert provider.get(sandbox_id).state is RemoteState.STOPPING


def test_any_desired_state_destroyed_reads_as_destroying(provider, slow_transitions):
    sandbox_id = started_sandbox(slow_transitions)
    slow_transitions.set_state(sandbox_id, "archived")

    provider.delete(sandbox_id)

    seen = provider.get(sandbox_id)
    assert (seen.backend_state, seen.state) == ("archived", RemoteState.DESTROYING)
    slow_transitions.advance_clock(slow_transitions.timings.delete_list_lag + 0.1)  # the listing lags
    assert [s.state for s in provider.list_managed(MANAGED)] in ([], [RemoteState.DESTROYING])


# --- start ----------------------------------------------------------------------------------------


def test_starting_an_archived_sandbox_waits_for_the_restore_without_repeating_it(provider, slow_transitions):
    sandbox_id = started_sandbox(slow_transitions)
    slow_transitions.set_state(sandbox_id, "archived")

    first = provider.start(sandbox_id, wait_seconds=0)
    assert (first.backend_state, first.state) == ("archived", RemoteState.STARTING)  # desiredState started
    again = provider.start(sandbox_id, wait_seconds=0)  # a second click: Daytona answers 409
    assert again.state is RemoteState.STARTING
    assert slow_transitions.calls["start"] == 2

    slow_transitions.advance_clock(5)
    assert provider.get(sandbox_id).backend_state == "restoring"
    slow_transitions.advance_clock(60)
    assert provider.get(sandbox_id).state is RemoteState.STARTED


def test_a_start_that_ends_in_an_error_returns_the_errored_sandbox(provider, fake_daytona):
    sandbox_id = started_sandbox(fake_daytona)
    fake_daytona.set_state(sandbox_id, "stopped")
    fake_daytona.fault("start", "ends_in_error", message="no runner available")

    sandbox = provider.start(sandbox_id, wait_seconds=5)  # Daytona: 400 "Sandbox failed to start"

    assert sandbox.state is RemoteState.ERROR
    assert "no runner available" in sandbox.error_reason


def test_a_stop_answers_at_once_and_is_waited_for(provider, slow_transitions):
    sandbox_id = started_sandbox(slow_transitions)

    assert provider.stop(sandbox_id, wait_seconds=0).state is RemoteState.STOPPING
    slow_transitions.advance_clock(5)
    assert provider.get(sandbox_id).state is RemoteState.STOPPED


# --- builds ---------------------------------------------------------------------------------------


def test_a_create_from_an_image_answers_at_once_while_it_builds(provider, slow_transitions):
    sandbox = provider.create(make_spec(), wait_seconds=0)

    assert (sandbox.backend_state, sandbox.state) == ("pending_build", RemoteState.CREATING)
    slow_transitions.advance_clock(slow_transitions.timings.first_build() + 1)
    assert provider.get(sandbox.id).state is RemoteState.STARTED


def test_a_failed_build_is_an_error_that_says_so(provider, fake_daytona):
    fake_daytona.fail_builds_containing("ubuntu:22.04", reason="failed to pull ubuntu:22.04")

    sandbox = provider.create(make_spec(), wait_seconds=5)

    assert sandbox.state is RemoteState.ERROR and sandbox.build_failed
    assert "failed to pull" in sandbox.error_reason


def test_the_states_daytona_does_not_know_yet_are_waited_out_not_failures():
    # "unknown" (a runner that has not reported) and a word newer than the SDK.
    assert convert.remote_state("unknown") is RemoteState.UNKNOWN
    assert convert.remote_state("unknown_default_open_api") is RemoteState.UNKNOWN
    assert convert.remote_state("hibernating") is RemoteState.UNKNOWN


# --- the toolbox ----------------------------------------------------------------------------------


@pytest.mark.parametrize("state, kind", [("stopped", ErrorKind.INVALID_STATE), ("archived", ErrorKind.INVALID_STATE)])
def test_a_terminal_of_a_sandbox_that_is_not_started_is_refused_for_its_state(provider, fake_daytona, state, kind):
    sandbox_id = started_sandbox(fake_daytona)
    fake_daytona.set_state(sandbox_id, state)

    with pytest.raises(ProviderError) as refused:
        provider.open_terminal(sandbox_id, session_id="web-1", cols=80, rows=24)

    assert refused.value.kind is kind
    assert fake_daytona.calls["pty_create"] == 0


def test_a_sandbox_that_stops_while_its_terminal_opens_is_not_running_not_an_error(provider, fake_daytona):
    sandbox_id = started_sandbox(fake_daytona)
    # The lookup sees it started; its answer is held back while the sandbox stops.
    fake_daytona.fault("get", "commit_then_hang", seconds=0.5)
    threading.Timer(0.2, fake_daytona.set_state, args=(sandbox_id, "stopped")).start()

    with pytest.raises(ProviderError) as refused:
        provider.open_terminal(sandbox_id, session_id="web-1", cols=80, rows=24)

    # The toolbox answered 400 "... Is the Sandbox started?"; the state, read again, says why.
    assert refused.value.kind is ErrorKind.INVALID_STATE
    assert fake_daytona.calls["pty_create"] == 1


def test_ending_a_terminal_ends_its_shell_and_is_idempotent(provider, fake_daytona):
    sandbox_id = started_sandbox(fake_daytona)
    terminal = provider.open_terminal(sandbox_id, session_id="web-1", cols=80, rows=24)
    terminal.detach()
    assert [s.id for s in fake_daytona.ptys.list(sandbox_id)] == ["web-1"]

    provider.end_terminal(sandbox_id, "web-1")
    provider.end_terminal(sandbox_id, "web-1")  # gone already
    assert fake_daytona.ptys.list(sandbox_id) == []

    fake_daytona.set_state(sandbox_id, "stopped")
    provider.end_terminal(sandbox_id, "web-2")  # not running: nothing to end
    fake_daytona.delete_out_of_band(sandbox_id)
    provider.end_terminal(sandbox_id, "web-3")  # gone
    kills = [r for r in fake_daytona.requests if r.operation == "pty_kill"]
    assert kills and all(r.headers.get("X-Daytona-Skip-Last-Activity-Update") == "true" for r in kills)


def test_a_detached_terminal_reports_no_exit(provider, fake_daytona):
    sandbox_id = started_sandbox(fake_daytona)
    terminal = provider.open_terminal(sandbox_id, session_id="web-1", cols=80, rows=24)

    terminal.detach()

    assert terminal.exit_code is None  # the shell still runs
    assert [s.id for s in fake_daytona.ptys.list(sandbox_id)] == ["web-1"]


def test_a_terminal_quiet_for_a_while_still_carries_what_comes_after(provider, fake_daytona):
    """The pump waits on the SDK's handle in slices: a slice that ends with no output is not
    the end of the stream (whatever the websocket library raises for it)."""
    sandbox_id = started_sandbox(fake_daytona)
    terminal = provider.open_terminal(sandbox_id, session_id="web-1", cols=80, rows=24)
    time.sleep(PTY_POLL_SECONDS * 2.5)  # the prompt, then nothing for several slices

    terminal.write(b"echo after-$((6*7))\r")
    seen = b""
    deadline = time.monotonic() + 10
    while b"after-42" not in seen and time.monotonic() < deadline:
        chunk = terminal.read()
        assert chunk, f"the terminal ended: exit {terminal.exit_code}, output {seen[-200:]!r}"
        seen += chunk
    terminal.detach()
    assert b"after-42" in seen


def test_an_open_terminal_does_not_keep_daytonas_activity_timer_fresh(provider, fake_daytona):
    sandbox_id = started_sandbox(fake_daytona)
    fake_daytona.advance_clock(60)
    before = provider.get(sandbox_id).last_activity_at
    terminal = provider.open_terminal(sandbox_id, session_id="web-1", cols=80, rows=24)

    fake_daytona.advance_clock(3600)  # an hour with the websocket open, nobody typing

    assert provider.get(sandbox_id).last_activity_at == before
    terminal.detach()


# --- settings and listing -------------------------------------------------------------------------


def test_the_auto_stop_backstop_is_set_on_an_existing_sandbox(provider, fake_daytona):
    sandbox_id = fake_daytona.add_sandbox(name="joepro-u42", labels=MANAGED, state="started", autoStopInterval=15)["id"]

    provider.set_auto_stop(sandbox_id, 150)

    assert fake_daytona.sandbox(sandbox_id)["autoStopInterval"] == 150


def test_the_listing_walks_oldest_first_so_moving_activity_skips_nothing(provider, fake_daytona):
    ids = fake_daytona.seed(450, labels=MANAGED)
    seen = []
    for sandbox in provider.list_managed(MANAGED):
        seen.append(sandbox.id)
        if len(seen) % 200 == 1:  # between pages, users work in some sandboxes: activity moves
            for sandbox_id in ids[::7]:
                fake_daytona.store.record_activity(sandbox_id)
            fake_daytona.advance_clock(30)

    assert sorted(seen) == sorted(ids) and len(seen) == len(set(seen))
    lists = [r for r in fake_daytona.requests if r.operation == "list"]
    assert len(lists) == 3
    assert all((r.query.get("sort"), r.query.get("order")) == ("createdAt", "asc") for r in lists)


# --- bugs are bugs -----------------------------------------------------------------------------------


def test_a_bug_in_the_provider_is_not_disguised_as_daytona_failing(provider, fake_daytona, monkeypatch):
    sandbox_id = started_sandbox(fake_daytona)

    def broken(dto):
        raise TypeError("a bug in the conversion")

    # The only way to have the provider's own code fail: what matters is what leaves it.
    monkeypatch.setattr("sandboxes.providers.daytona.provider.remote_sandbox", broken)
    with pytest.raises(TypeError):
        provider.get(sandbox_id)
    assert convert.remote_sandbox is not broken
