"""Provider faults end in success or the documented JSON error, never a duplicate or an
untracked remote sandbox."""

import pytest

from sandboxes.models import Sandbox
from sandboxes.providers import reset_providers
from sandboxes.services import remote_name_for
from tests.conftest import launch, signed_in

pytestmark = pytest.mark.django_db


def _assert_at_most_one_tracked(daytona, user):
    sandboxes = [s for s in daytona.sandboxes() if s["labels"].get("joepro-owner") == str(user.pk)]
    assert len(sandboxes) <= 1
    row = Sandbox.objects.filter(user=user).first()
    if sandboxes and row and row.remote_id:
        assert row.remote_id == sandboxes[0]["id"]


@pytest.mark.parametrize("status", [500, 502, 503])
def test_one_transient_server_error_is_retried(daytona, owner, status):
    daytona.fault("create", "status", status=status, times=1)
    response = launch(signed_in(owner))
    assert response.status_code == 200
    assert len(daytona.sandboxes()) == 1


def test_persistent_unavailability_is_a_503_with_retry_after(daytona, owner):
    daytona.fault("create", "status", status=503, times=20)
    response = launch(signed_in(owner))
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "provider_unavailable"
    assert int(response["Retry-After"]) >= 1
    assert daytona.sandboxes() == []


def test_rate_limit_with_a_long_hint_is_a_429_with_retry_after(daytona, owner):
    daytona.fault("create", "status", status=429, times=20, headers={"retry-after-Sandbox-Create": "120"})
    response = launch(signed_in(owner))
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "rate_limited"
    assert int(response["Retry-After"]) >= 100


def test_short_rate_limit_is_waited_out(daytona, owner):
    daytona.fault("create", "status", status=429, times=1, headers={"Retry-After-sandbox-create": "1"})
    assert launch(signed_in(owner)).status_code == 200
    assert len(daytona.sandboxes()) == 1


def test_a_create_reset_before_it_took_effect_is_a_503_then_a_retry_creates_one(daytona, owner):
    daytona.fault("create", "reset", times=1)
    client = signed_in(owner)

    first = launch(client)

    # The outcome was unknown: the name was looked up again, and nothing was there.
    assert first.status_code == 503
    assert first.json()["error"]["code"] == "provider_unavailable"
    assert first["Retry-After"] == "2"
    assert daytona.sandboxes() == []
    assert launch(client).status_code == 200
    assert len(daytona.sandboxes()) == 1
    _assert_at_most_one_tracked(daytona, owner)


def test_a_create_that_took_effect_but_lost_its_answer_is_adopted(daytona, owner):
    daytona.fault("create", "commit_then_reset", times=1)

    response = launch(signed_in(owner))

    assert response.status_code == 200
    assert len(daytona.sandboxes()) == 1
    assert daytona.calls["create"] == 1
    _assert_at_most_one_tracked(daytona, owner)


def test_a_create_that_took_effect_but_hangs_is_adopted_without_a_second_create(daytona, owner, settings):
    settings.SANDBOX_LAUNCH_WAIT_SECONDS = 1.0  # the create's read timeout, with the one below
    settings.DAYTONA_HTTP_TIMEOUT = 1.0
    reset_providers()
    daytona.fault("create", "commit_then_hang", seconds=30, times=1)

    response = launch(signed_in(owner))

    assert response.status_code == 200
    assert daytona.calls["create"] == 1
    assert response.json()["sandbox"]["id"] == daytona.sandbox(remote_name_for(owner))["id"]
    _assert_at_most_one_tracked(daytona, owner)


def test_a_state_check_slower_than_the_timeout_is_retried_to_an_answer(daytona, owner, settings):
    settings.DAYTONA_HTTP_TIMEOUT = 1.0
    reset_providers()
    client = signed_in(owner)
    sandbox_id = launch(client).json()["sandbox"]["id"]
    daytona.fault("get", "slow", seconds=5, times=4)  # urllib3 itself tries a GET four times

    response = launch(client)

    assert response.status_code == 200
    assert response.json()["sandbox"]["id"] == sandbox_id


@pytest.mark.parametrize("status", [401, 403])
def test_provider_refusing_credentials_is_a_503_not_a_500(daytona, owner, status):
    daytona.fault("get", "status", status=status, times=10)
    daytona.fault("create", "status", status=status, times=10)
    response = launch(signed_in(owner))
    assert response.status_code == 503
    assert set(response.json()["error"]) == {"code", "message"}
    assert response.json()["error"]["code"] == "provider_unavailable"


def test_start_fault_on_resume_then_success(daytona, owner):
    client = signed_in(owner)
    sandbox_id = launch(client).json()["sandbox"]["id"]
    daytona.set_state(sandbox_id, "stopped")
    daytona.fault("start", "commit_then_reset", times=1)

    response = launch(client)

    # A start may be repeated: retried, it finds the sandbox started.
    assert response.status_code == 200
    assert response.json()["sandbox"]["id"] == sandbox_id
    assert daytona.calls["start"] == 2
    assert len(daytona.sandboxes()) == 1


def test_failure_is_recorded_as_last_error(daytona, owner):
    daytona.fault("create", "status", status=503, times=20)
    client = signed_in(owner)
    response = launch(client)
    assert (response.status_code, response.json()["error"]["code"]) == (503, "provider_unavailable")
    body = client.get("/api/sandbox").json()
    assert body["sandbox"]["lastError"]["code"] == "unavailable"
