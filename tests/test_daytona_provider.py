"""The Daytona provider, through the real SDK, against the HTTP fake of Daytona."""

from __future__ import annotations

import logging
import signal
import threading
import time
import urllib.request
from datetime import datetime, timedelta, timezone
from urllib.error import HTTPError

import pytest

from sandboxes.providers.base import ErrorKind, ProviderError, RemoteState, SandboxSpec
from sandboxes.providers.daytona import DaytonaProvider, remote_state
from tests.fake_daytona.fixtures import FAKE_DAYTONA_API_KEY

MANAGED = {"joepro-managed": "true", "joepro-deployment": "test"}


@pytest.fixture
def provider(fake_daytona) -> DaytonaProvider:
    return DaytonaProvider(
        api_key=FAKE_DAYTONA_API_KEY,
        api_url=fake_daytona.api_url,
        target="us",
        http_timeout=1.0,
        max_retries=3,
        max_retry_wait=3.0,
    )


def make_spec(name: str = "joepro-u42", **overrides) -> SandboxSpec:
    fields = dict(
        name=name,
        labels={**MANAGED, "joepro-owner": "42"},
        cpu=2,
        memory_gb=4,
        disk_gb=8,
        image="ubuntu:22.04",
        auto_stop_minutes=150,
        env={"GREETING": "hello"},
    )
    fields.update(overrides)
    return SandboxSpec(**fields)


def started_sandbox(fake, name: str = "joepro-u42") -> str:
    return fake.add_sandbox(name=name, labels={**MANAGED, "joepro-owner": "42"}, state="started")["id"]


def elapsed_since(start: float) -> float:
    return time.monotonic() - start


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
    sandbox = provider.create(make_spec(image="", snapshot="joepro-dev"), wait_seconds=5)

    remote = fake_daytona.sandbox(sandbox.id)
    unsized = fake_daytona.add_sandbox(name="unsized")
    assert remote["snapshot"] == "joepro-dev"
    resources = ("cpu", "memory", "disk")
    assert [remote[key] for key in resources] == [unsized[key] for key in resources]


def test_create_returns_creating_when_the_wait_runs_out(provider, fake_daytona):
    fake_daytona.transition_seconds = 5
    start = time.monotonic()

    sandbox = provider.create(make_spec(), wait_seconds=0.5)

    assert sandbox.state is RemoteState.CREATING
    assert 0.4 < elapsed_since(start) < 1.5
    assert fake_daytona.sandbox(sandbox.id) is not None


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
    start = time.monotonic()

    sandbox = provider.create(make_spec(), wait_seconds=0)

    assert sandbox.state is RemoteState.CREATING
    assert elapsed_since(start) < 0.5
    assert fake_daytona.calls == {"create": 1}


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


@pytest.mark.parametrize("kind", ["commit_then_hang", "commit_then_reset"])
def test_create_with_a_lost_answer_is_an_unknown_outcome(provider, fake_daytona, kind):
    fake_daytona.fault("create", kind, seconds=2)

    with pytest.raises(ProviderError) as caught:
        provider.create(make_spec(), wait_seconds=0)

    assert caught.value.kind is ErrorKind.TIMEOUT
    assert fake_daytona.calls["create"] == 1
    assert provider.find("joepro-u42") is not None


def test_create_with_a_reset_connection_is_not_repeated(provider, fake_daytona):
    fake_daytona.fault("create", "reset")

    with pytest.raises(ProviderError) as caught:
        provider.create(make_spec(), wait_seconds=0)

    assert caught.value.kind is ErrorKind.TIMEOUT
    assert fake_daytona.calls["create"] == 1


def test_create_with_a_malformed_answer_is_an_unknown_outcome(provider, fake_daytona):
    fake_daytona.fault("create", "bad_shape")

    with pytest.raises(ProviderError) as caught:
        provider.create(make_spec(), wait_seconds=0)

    assert caught.value.kind is ErrorKind.TIMEOUT
    assert provider.find("joepro-u42") is not None


def test_create_is_retried_after_a_503(provider, fake_daytona):
    fake_daytona.fault("create", "status", status=503)

    sandbox = provider.create(make_spec(), wait_seconds=5)

    assert sandbox.state is RemoteState.STARTED
    assert fake_daytona.calls["create"] == 2


def test_a_rate_limited_create_waits_as_the_throttler_says(provider, fake_daytona):
    fake_daytona.fault("create", "status", status=429, headers={"retry-AFTER-Sandbox-Create": "1"})
    start = time.monotonic()

    sandbox = provider.create(make_spec(), wait_seconds=5)

    assert sandbox.state is RemoteState.STARTED
    assert elapsed_since(start) >= 1.0
    assert fake_daytona.calls["create"] == 2


def test_a_rate_limit_longer_than_the_budget_is_raised_at_once(provider, fake_daytona):
    fake_daytona.fault("create", "status", status=429, headers={"Retry-After-sandbox-create": "120"})
    start = time.monotonic()

    with pytest.raises(ProviderError) as caught:
        provider.create(make_spec(), wait_seconds=5)

    assert caught.value.kind is ErrorKind.RATE_LIMITED
    assert caught.value.retryable
    assert caught.value.retry_after == 120
    assert elapsed_since(start) < 0.5
    assert fake_daytona.calls["create"] == 1


@pytest.mark.parametrize(
    "headers",
    [{"Retry-After": "60"}, {"x-ratelimit-reset-authenticated": "60"}, {"RETRY-AFTER-AUTHENTICATED": "60"}],
)
def test_rate_limit_hints_on_reads_are_reported_not_slept_through(provider, fake_daytona, headers):
    fake_daytona.fault("get", "status", status=429, headers=headers)
    start = time.monotonic()

    with pytest.raises(ProviderError) as caught:
        provider.get("anything")

    assert (caught.value.kind, caught.value.retry_after) == (ErrorKind.RATE_LIMITED, 60)
    assert elapsed_since(start) < 0.5
    assert fake_daytona.calls["get"] == 1


def test_a_503_hint_within_the_budget_is_honoured(provider, fake_daytona):
    sandbox_id = started_sandbox(fake_daytona)
    fake_daytona.fault("get", "status", status=503, headers={"Retry-After": "1"})
    start = time.monotonic()

    assert provider.get(sandbox_id).state is RemoteState.STARTED
    assert elapsed_since(start) >= 1.0
    assert fake_daytona.calls["get"] == 2


def test_server_errors_are_retried_a_bounded_number_of_times(provider, fake_daytona):
    fake_daytona.fault("get", "status", status=502, times=10)

    with pytest.raises(ProviderError) as caught:
        provider.get("anything")

    assert caught.value.kind is ErrorKind.UNAVAILABLE
    assert caught.value.retryable
    assert fake_daytona.calls["get"] == 4  # the call and three retries


def test_an_unreachable_backend_is_unavailable_even_for_create(fake_daytona):
    closed = DaytonaProvider(
        api_key=FAKE_DAYTONA_API_KEY, api_url="http://127.0.0.1:9/api", target="us", max_retry_wait=0.5
    )

    with pytest.raises(ProviderError) as caught:
        closed.create(make_spec(), wait_seconds=0)

    assert caught.value.kind is ErrorKind.UNAVAILABLE
    assert caught.value.retryable


def test_a_refused_key_is_rejected_without_retrying(fake_daytona):
    wrong = DaytonaProvider(api_key="wrong-key", api_url=fake_daytona.api_url, target="us")

    with pytest.raises(ProviderError) as caught:
        wrong.get("anything")

    assert caught.value.kind is ErrorKind.REJECTED
    assert fake_daytona.calls["get"] == 1


@pytest.mark.parametrize(
    ("operation", "call"),
    [
        ("get", lambda provider, sandbox_id: provider.get(sandbox_id)),
        ("list", lambda provider, sandbox_id: list(provider.list_managed(MANAGED))),
        ("ssh_create", lambda provider, sandbox_id: provider.mint_access(
            sandbox_id, ssh_minutes=120, preview_port=3000, link_seconds=600
        )),
        ("signed_preview_url", lambda provider, sandbox_id: provider.mint_access(
            sandbox_id, ssh_minutes=120, preview_port=3000, link_seconds=600
        )),
    ],
)
def test_a_malformed_answer_is_a_provider_error(provider, fake_daytona, operation, call):
    sandbox_id = started_sandbox(fake_daytona)
    fake_daytona.fault(operation, "bad_shape")

    with pytest.raises(ProviderError) as caught:
        call(provider, sandbox_id)

    assert caught.value.kind is ErrorKind.UNAVAILABLE
    assert not caught.value.retryable


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


# --- access -----------------------------------------------------------------------------


def test_mint_access_returns_ssh_preview_and_terminal(provider, fake_daytona):
    sandbox_id = started_sandbox(fake_daytona)
    before = datetime.now(timezone.utc)

    access = provider.mint_access(sandbox_id, ssh_minutes=120, preview_port=3000, link_seconds=600)

    assert fake_daytona.ssh_tokens(sandbox_id) == [access.ssh.token]
    assert (access.ssh.host, access.ssh.port) == (fake_daytona.ssh_host, fake_daytona.ssh_port)
    assert access.ssh.token in access.ssh.command
    assert access.ssh.expires_at - before > timedelta(minutes=119)
    assert (access.preview.port, access.terminal.port) == (3000, 22222)
    assert access.preview.token != access.terminal.token
    assert timedelta(seconds=590) < access.preview.expires_at - before <= timedelta(seconds=601)
    sign_requests = [r for r in fake_daytona.requests if r.operation == "signed_preview_url"]
    assert {r.query["expiresInSeconds"] for r in sign_requests} == {"600"}


def test_warm_mint_costs_three_concurrent_requests(provider, fake_daytona):
    sandbox_id = started_sandbox(fake_daytona)
    provider.get(sandbox_id)  # the client exists: a warm process
    before = fake_daytona.calls
    fake_daytona.latency = 0.2
    start = time.monotonic()

    provider.mint_access(sandbox_id, ssh_minutes=120, preview_port=3000, link_seconds=600)

    assert elapsed_since(start) < 0.4  # three calls of 0.2 s each, side by side
    assert fake_daytona.calls - before == {"ssh_create": 1, "signed_preview_url": 2}


def test_mint_access_keeps_one_live_ssh_token(provider, fake_daytona):
    sandbox_id = started_sandbox(fake_daytona)

    provider.mint_access(sandbox_id, ssh_minutes=120, preview_port=3000, link_seconds=600)
    latest = provider.mint_access(sandbox_id, ssh_minutes=120, preview_port=3000, link_seconds=600)

    assert fake_daytona.ssh_tokens(sandbox_id) == [latest.ssh.token]


def test_revoke_access_expires_links_and_ssh(provider, fake_daytona):
    sandbox_id = started_sandbox(fake_daytona)
    access = provider.mint_access(sandbox_id, ssh_minutes=120, preview_port=3000, link_seconds=600)
    assert page_status(access.preview.url) == 200
    assert page_status(access.terminal.url) == 200

    provider.revoke_access(sandbox_id, preview_port=3000, links=[access.preview, access.terminal])
    provider.revoke_access(sandbox_id, preview_port=3000, links=[access.preview, access.terminal])

    assert page_status(access.preview.url) == 410
    assert page_status(access.terminal.url) == 410
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

    assert provider.get(sandbox_id).last_activity_at - before >= timedelta(seconds=600)
    assert fake_daytona.calls["last_activity"] == 1


# --- secrets ----------------------------------------------------------------------------


def test_the_api_key_never_reaches_errors_or_logs(fake_daytona, caplog):
    caplog.set_level(logging.DEBUG)
    leaky = f"bad key {FAKE_DAYTONA_API_KEY} at https://api.example/x?token=abc"
    fake_daytona.fault("get", "status", status=500, message=leaky, times=10)
    fake_daytona.fault("create", "status", status=403, message=leaky)
    provider = DaytonaProvider(
        api_key=FAKE_DAYTONA_API_KEY, api_url=fake_daytona.api_url, target="us", max_retry_wait=0.5
    )
    errors = []
    for call in (lambda: provider.get("x"), lambda: provider.create(make_spec(), wait_seconds=0)):
        with pytest.raises(ProviderError) as caught:
            call()
        errors.append(caught.value)
    wrong = DaytonaProvider(api_key="other-key", api_url=fake_daytona.api_url, target="us")
    with pytest.raises(ProviderError) as caught:
        wrong.get("x")
    errors.append(caught.value)

    texts = [str(error) for error in errors] + [repr(error) for error in errors]
    texts += [record.getMessage() for record in caplog.records]
    assert texts
    assert not [text for text in texts if FAKE_DAYTONA_API_KEY in text or "token=abc" in text]


def page_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status
    except HTTPError as error:
        return error.code
