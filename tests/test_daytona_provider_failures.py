"""The Daytona provider when Daytona fails: lost answers, retries and their budget, rate
limits, refusals, malformed answers, and no API key in any error or log."""

from __future__ import annotations

import logging
import time

import pytest

from sandboxes.providers.base import ErrorKind, ProviderError, RemoteState
from sandboxes.providers.daytona import DaytonaProvider
from tests.daytona_fixtures import (  # noqa: F401 - fixtures
    MANAGED,
    elapsed_since,
    make_spec,
    provider,
    started_sandbox,
)
from tests.fake_daytona.fixtures import FAKE_DAYTONA_API_KEY

# --- failures and retries ---------------------------------------------------------------


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

    with pytest.raises(ProviderError) as caught:
        provider.create(make_spec(), wait_seconds=5)

    assert caught.value.kind is ErrorKind.RATE_LIMITED
    assert caught.value.retryable
    assert caught.value.retry_after == 120
    assert fake_daytona.calls["create"] == 1  # not tried again: the hint is the caller's


@pytest.mark.parametrize(
    "headers",
    [{"Retry-After": "60"}, {"x-ratelimit-reset-authenticated": "60"}, {"RETRY-AFTER-AUTHENTICATED": "60"}],
)
def test_rate_limit_hints_on_reads_are_reported_not_slept_through(provider, fake_daytona, headers):
    fake_daytona.fault("get", "status", status=429, headers=headers)

    with pytest.raises(ProviderError) as caught:
        provider.get("anything")

    assert (caught.value.kind, caught.value.retry_after) == (ErrorKind.RATE_LIMITED, 60)
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
        (
            "ssh_create",
            lambda provider, sandbox_id: provider.mint_access(
                sandbox_id, ssh_minutes=120, preview_port=3000, link_seconds=600
            ),
        ),
        (
            "signed_preview_url",
            lambda provider, sandbox_id: provider.mint_access(
                sandbox_id, ssh_minutes=120, preview_port=3000, link_seconds=600
            ),
        ),
    ],
)
def test_a_malformed_answer_is_a_provider_error(provider, fake_daytona, operation, call):
    sandbox_id = started_sandbox(fake_daytona)
    fake_daytona.fault(operation, "bad_shape")

    with pytest.raises(ProviderError) as caught:
        call(provider, sandbox_id)

    assert caught.value.kind is ErrorKind.UNAVAILABLE
    assert not caught.value.retryable


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
