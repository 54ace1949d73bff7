"""The Daytona provider, through the real SDK, against the HTTP fake of Daytona: states, the
client, create and its waits, lookups, start, stop, recover and delete."""

from __future__ import annotations

import signal
import threading
import time

import pytest

from sandboxes.providers.base import ErrorKind, ProviderError, RemoteState
from sandboxes.providers.daytona import DaytonaProvider, remote_state
from tests.daytona_fixtures import (  # noqa: F401 - fixtures
    MANAGED,
    elapsed_since,
    make_spec,
    provider,
    started_sandbox,
)
from tests.fake_daytona.fixtures import FAKE_DAYTONA_API_KEY

# --- states ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("word", "expected"),
    [
        ("pending_build", RemoteState.CREATING),
        ("pulling_snapshot", RemoteState.CREATING),
        ("restoring", RemoteState.STARTING),
        ("started", RemoteState.STARTED),
        ("archiving", RemoteState.STOPPING),
        ("paused", RemoteState.STOPPED),
        ("archived", RemoteState.ARCHIVED),
        ("build_failed", RemoteState.ERROR),
        ("destroyed", RemoteState.DESTROYING),
        ("unknown_default_open_api", RemoteState.UNKNOWN),
    ],
)
def test_daytona_states_map_onto_remote_states(word, expected):
    assert remote_state(word) is expected


# --- the client --------------------------------------------------------------------------


def test_the_client_is_built_on_first_use_once_for_all_threads(fake_daytona):
    sandbox_id = started_sandbox(fake_daytona)
    provider = DaytonaProvider(api_key=FAKE_DAYTONA_API_KEY, api_url=fake_daytona.api_url, target="us")
    assert fake_daytona.calls == {}
    results = []

    threads = [threading.Thread(target=lambda: results.append(provider.get(sandbox_id))) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)

    assert len(results) == 20 and all(sandbox.id == sandbox_id for sandbox in results)
    assert fake_daytona.calls == {"get": 20}
    assert {request.headers["X-Daytona-Source"] for request in fake_daytona.requests} == {"sdk-python"}
    assert fake_daytona.stats()["socket_io_hits"] == 0


# --- create ---------------------------------------------------------------------------


def test_create_sends_every_field_and_costs_one_request(provider, fake_daytona):
    sandbox = provider.create(make_spec(), wait_seconds=5)

    assert sandbox.state is RemoteState.STARTED
    assert (sandbox.name, sandbox.cpu, sandbox.memory_gb, sandbox.disk_gb) == ("joepro-u42", 2, 4, 8)
    remote = fake_daytona.sandbox("joepro-u42")
    assert remote["labels"] == {**MANAGED, "joepro-owner": "42"}
    assert remote["env"] == {"GREETING": "hello"}
    assert (remote["cpu"], remote["memory"], remote["disk"]) == (2, 4, 8)
    assert remote["autoStopInterval"] == 150
    assert remote["public"] is False
    assert remote["target"] == "us"
    assert fake_daytona.calls == {"create": 1}


def test_create_always_sends_auto_stop_even_when_zero(provider, fake_daytona):
    provider.create(make_spec(auto_stop_minutes=0), wait_seconds=5)

    assert fake_daytona.sandbox("joepro-u42")["autoStopInterval"] == 0


def test_create_from_snapshot_sends_no_resources(provider, fake_daytona):
    fake_daytona.add_snapshot("joepro-dev", cpu=3, mem=6, disk=9)

    sandbox = provider.create(make_spec(image="", snapshot="joepro-dev"), wait_seconds=5)

    remote = fake_daytona.sandbox(sandbox.id)
    assert remote["snapshot"] == "joepro-dev"
    # The snapshot's, not the spec's (the server refuses resources beside a snapshot).
    assert [remote[key] for key in ("cpu", "memory", "disk")] == [3, 6, 9]


def test_create_returns_creating_when_the_wait_runs_out(provider, fake_daytona):
    fake_daytona.transition_seconds = 5
    start = time.monotonic()

    sandbox = provider.create(make_spec(), wait_seconds=0.5)

    assert sandbox.state is RemoteState.CREATING
    assert elapsed_since(start) >= 0.5  # it waited as long as it was told
    assert fake_daytona.calls["get"] >= 1  # polled meanwhile
    assert fake_daytona.sandbox(sandbox.id)["state"] != "started"  # and gave up before the end


def test_a_wait_that_runs_out_leaves_no_alarm_armed(provider, fake_daytona):
    fake_daytona.transition_seconds = 5
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)

    provider.create(make_spec(), wait_seconds=1.2)

    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    assert signal.alarm(0) == 0


def test_a_wait_keeps_the_callers_own_alarm(provider, fake_daytona):
    fake_daytona.transition_seconds = 5
    previous = signal.signal(signal.SIGALRM, lambda *_: None)
    signal.setitimer(signal.ITIMER_REAL, 30)
    try:
        provider.create(make_spec(), wait_seconds=1.2)
        remaining, _ = signal.getitimer(signal.ITIMER_REAL)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)

    assert remaining > 28


def test_a_wait_in_a_worker_thread_leaves_the_thread_and_provider_usable(provider, fake_daytona):
    fake_daytona.transition_seconds = 5
    outcome = {}

    def launch():
        created = provider.create(make_spec(), wait_seconds=0.5)
        time.sleep(1.0)  # a stray timeout injected into this thread would land here
        outcome["created"] = created
        outcome["again"] = provider.get(created.id)

    worker = threading.Thread(target=launch)
    worker.start()
    worker.join(10)

    assert outcome["created"].state is RemoteState.CREATING
    assert outcome["again"].state is RemoteState.CREATING
    assert provider.find("joepro-u42") is not None


def test_wait_zero_returns_right_after_the_post(provider, fake_daytona):
    fake_daytona.transition_seconds = 5

    sandbox = provider.create(make_spec(), wait_seconds=0)

    assert sandbox.state is RemoteState.CREATING
    assert fake_daytona.calls == {"create": 1}  # no poll after the answer


def test_create_polls_until_started(provider, fake_daytona):
    fake_daytona.transition_seconds = 0.3

    sandbox = provider.create(make_spec(), wait_seconds=5)

    assert sandbox.state is RemoteState.STARTED
    assert 1 <= fake_daytona.calls["get"] <= 4


def test_create_of_a_taken_name_is_a_conflict(provider, fake_daytona):
    provider.create(make_spec(), wait_seconds=5)

    with pytest.raises(ProviderError) as caught:
        provider.create(make_spec(), wait_seconds=5)

    assert caught.value.kind is ErrorKind.CONFLICT
    assert not caught.value.retryable
    assert "already exists" in str(caught.value)


# --- lookups ----------------------------------------------------------------------------


def test_get_and_find_of_absent_sandboxes_are_none(provider, fake_daytona):
    assert provider.get("no-such-id") is None
    assert provider.find("no-such-name") is None


def test_find_does_not_count_a_sandbox_matched_by_id(provider, fake_daytona):
    sandbox_id = started_sandbox(fake_daytona)

    assert provider.find(sandbox_id) is None
    assert provider.get(sandbox_id).name == "joepro-u42"


def test_a_deleted_name_is_gone(provider, fake_daytona):
    sandbox_id = started_sandbox(fake_daytona)

    provider.delete(sandbox_id)

    assert provider.find("joepro-u42") is None
    assert provider.create(make_spec(), wait_seconds=5).id != sandbox_id


def test_get_converts_every_field(provider, fake_daytona):
    sandbox_id = fake_daytona.add_sandbox(name="broken", labels=MANAGED, state="started")["id"]
    fake_daytona.set_state(sandbox_id, "error", error_reason="disk full", recoverable=True)

    sandbox = provider.get(sandbox_id)

    assert sandbox.state is RemoteState.ERROR
    assert sandbox.backend_state == "error"
    assert (sandbox.error_reason, sandbox.recoverable) == ("disk full", True)
    assert sandbox.labels == MANAGED
    assert sandbox.created_at.tzinfo is not None


def test_list_managed_pages_lazily_through_every_match(provider, fake_daytona):
    fake_daytona.seed(450, labels={**MANAGED, "joepro-owner": "7"})
    fake_daytona.seed(5, labels={"someone": "else"}, name_prefix="other-")

    listing = provider.list_managed(MANAGED)
    assert fake_daytona.calls["list"] == 0
    names = {sandbox.name for sandbox in listing}

    assert len(names) == 450
    assert not any(name.startswith("other-") for name in names)
    assert fake_daytona.calls["list"] == 3


# --- start, stop, recover, delete -------------------------------------------------------


@pytest.mark.parametrize("state", ["stopped", "archived"])
def test_start_brings_a_resting_sandbox_up(provider, fake_daytona, state):
    sandbox_id = fake_daytona.add_sandbox(name="resting", labels=MANAGED, state=state)["id"]
    fake_daytona.transition_seconds = 0.2

    sandbox = provider.start(sandbox_id, wait_seconds=5)

    assert sandbox.state is RemoteState.STARTED


def test_start_without_waiting_reports_the_transition(provider, fake_daytona):
    sandbox_id = fake_daytona.add_sandbox(name="archived", labels=MANAGED, state="archived")["id"]
    fake_daytona.transition_seconds = 5

    sandbox = provider.start(sandbox_id, wait_seconds=0)

    assert sandbox.state is RemoteState.STARTING
    assert sandbox.backend_state == "restoring"


def test_start_is_idempotent(provider, fake_daytona):
    sandbox_id = started_sandbox(fake_daytona)
    fake_daytona.transition_seconds = 5
    provider.start(sandbox_id, wait_seconds=0)

    assert provider.start(sandbox_id, wait_seconds=0).state is RemoteState.STARTED  # already started
    fake_daytona.set_state(sandbox_id, "stopped")
    assert provider.start(sandbox_id, wait_seconds=0).state is RemoteState.STARTING
    assert provider.start(sandbox_id, wait_seconds=0).state is RemoteState.STARTING  # already starting


def test_start_during_a_stop_is_a_conflict(provider, fake_daytona):
    sandbox_id = started_sandbox(fake_daytona)
    fake_daytona.transition_seconds = 5
    provider.stop(sandbox_id, wait_seconds=0)

    with pytest.raises(ProviderError) as caught:
        provider.start(sandbox_id, wait_seconds=0)

    assert caught.value.kind is ErrorKind.CONFLICT


def test_start_of_a_missing_sandbox_is_not_found(provider, fake_daytona):
    with pytest.raises(ProviderError) as caught:
        provider.start("no-such-id", wait_seconds=1)

    assert caught.value.kind is ErrorKind.NOT_FOUND


def test_start_after_a_lost_answer_is_retried_safely(provider, fake_daytona):
    sandbox_id = fake_daytona.add_sandbox(name="resting", labels=MANAGED, state="stopped")["id"]
    fake_daytona.transition_seconds = 0.2
    fake_daytona.fault("start", "commit_then_reset")

    sandbox = provider.start(sandbox_id, wait_seconds=5)

    assert sandbox.state is RemoteState.STARTED
    assert fake_daytona.calls["start"] == 2


def test_stop_revokes_ssh_and_is_idempotent(provider, fake_daytona):
    sandbox_id = started_sandbox(fake_daytona)
    provider.mint_access(sandbox_id, ssh_minutes=120, preview_port=3000, link_seconds=600)
    assert fake_daytona.ssh_tokens(sandbox_id)
    fake_daytona.transition_seconds = 0.2

    assert provider.stop(sandbox_id, wait_seconds=5).state is RemoteState.STOPPED
    assert fake_daytona.ssh_tokens(sandbox_id) == []
    assert provider.stop(sandbox_id, wait_seconds=5).state is RemoteState.STOPPED


def test_stop_of_an_archived_sandbox_returns_it(provider, fake_daytona):
    sandbox_id = fake_daytona.add_sandbox(name="cold", labels=MANAGED, state="archived")["id"]

    assert provider.stop(sandbox_id, wait_seconds=1).state is RemoteState.ARCHIVED


def test_stop_of_an_errored_sandbox_is_invalid(provider, fake_daytona):
    sandbox_id = started_sandbox(fake_daytona)
    fake_daytona.set_state(sandbox_id, "error", error_reason="boom")

    with pytest.raises(ProviderError) as caught:
        provider.stop(sandbox_id, wait_seconds=1)

    assert caught.value.kind is ErrorKind.INVALID_STATE


def test_recover_brings_back_a_recoverable_sandbox(provider, fake_daytona):
    sandbox_id = started_sandbox(fake_daytona)
    fake_daytona.set_state(sandbox_id, "error", error_reason="oom", recoverable=True)
    fake_daytona.transition_seconds = 0.2

    assert provider.recover(sandbox_id, wait_seconds=5).state is RemoteState.STARTED


def test_delete_is_idempotent(provider, fake_daytona):
    sandbox_id = started_sandbox(fake_daytona)

    provider.delete(sandbox_id)
    provider.delete(sandbox_id)

    assert provider.get(sandbox_id) is None
