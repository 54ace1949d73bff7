"""The Daytona emulator's rate limits, through the real ``daytona`` SDK and raw HTTP: three
per-organisation counters a minute on the emulator's clock (``sandbox-create``,
``sandbox-lifecycle``, ``authenticated``), their headers on every answer, and the 429 with
``Retry-After-<group>``.

From Daytona's open-source server (v0.190.0: ``AuthenticatedRateLimitGuard``,
``@ThrottlerScope`` on the routes) over @nestjs/throttler's fixed window; the published tier-1
limits are the defaults. Whether the hosted service still counts in fixed windows is not
published.
"""

from __future__ import annotations

import pytest
from daytona import CreateSandboxFromSnapshotParams, DaytonaRateLimitError

from tests.daytona_fixtures import _create, _fetch, sdk  # noqa: F401 - fixtures
from tests.fake_daytona.fixtures import fake_daytona, fake_daytona_server  # noqa: F401
from tests.fake_daytona.raw import call


def _limit_headers(answer) -> dict[str, str]:
    return {
        name: value for name, value in answer.headers.items() if "ratelimit" in name.lower() or "retry" in name.lower()
    }


def test_every_answer_carries_its_own_groups_headers(fake_daytona):  # noqa: F811
    created = call(fake_daytona, "POST", "/sandbox", {"name": "u-1"})
    got = call(fake_daytona, "GET", "/sandbox/u-1")
    missing = call(fake_daytona, "GET", "/sandbox/nope")
    stopped = call(fake_daytona, "POST", f"/sandbox/{created.body['id']}/stop")

    assert _limit_headers(created) == {
        "X-RateLimit-Limit-sandbox-create": "300",
        "X-RateLimit-Remaining-sandbox-create": "299",
        "X-RateLimit-Reset-sandbox-create": "60",
    }
    assert _limit_headers(got) == {
        "X-RateLimit-Limit-authenticated": "10000",
        "X-RateLimit-Remaining-authenticated": "9999",
        "X-RateLimit-Reset-authenticated": "60",
    }
    assert missing.status == 404 and _limit_headers(missing)["X-RateLimit-Remaining-authenticated"] == "9998"
    assert _limit_headers(stopped) == {
        "X-RateLimit-Limit-sandbox-lifecycle": "10000",
        "X-RateLimit-Remaining-sandbox-lifecycle": "9999",
        "X-RateLimit-Reset-sandbox-lifecycle": "60",
    }


def test_the_third_create_over_a_limit_of_two_is_refused(fake_daytona, sdk):  # noqa: F811
    fake_daytona.set_rate_limit("sandbox-create", 2)
    _create(sdk, name="one")
    fake_daytona.advance_clock(15)
    _create(sdk, name="two")

    with pytest.raises(DaytonaRateLimitError) as caught:
        _create(sdk, name="three")

    error = caught.value
    assert error.status_code == 429
    assert str(error) == "Failed to create sandbox: ThrottlerException: Too Many Requests"
    assert error.headers["Retry-After-sandbox-create"] == "60"
    assert not any(name.startswith("X-RateLimit") for name in error.headers)
    assert fake_daytona.sandbox("three") is None
    assert sdk.get("one").name == "one"  # the other groups are untouched


def test_a_refused_group_stays_refused_for_a_window_then_opens(fake_daytona, sdk):  # noqa: F811
    fake_daytona.set_rate_limit("sandbox-create", 1)
    _create(sdk, name="one")
    refused = call(fake_daytona, "POST", "/sandbox", {"name": "two"})
    assert (refused.status, refused.body["message"]) == (429, "ThrottlerException: Too Many Requests")

    fake_daytona.advance_clock(45)
    later = call(fake_daytona, "POST", "/sandbox", {"name": "two"})
    assert later.status == 429 and later.headers["Retry-After-sandbox-create"] == "15"

    fake_daytona.advance_clock(15)
    opened = call(fake_daytona, "POST", "/sandbox", {"name": "two"})
    assert opened.status == 200
    assert opened.headers["X-RateLimit-Remaining-sandbox-create"] == "0"


def test_start_stop_and_delete_share_the_lifecycle_counter(fake_daytona, sdk):  # noqa: F811
    fake_daytona.set_rate_limit("sandbox-lifecycle", 3)
    sandbox = _create(sdk)
    sandbox.stop(timeout=10)
    sandbox.start(timeout=10)
    sandbox.stop(timeout=10)

    with pytest.raises(DaytonaRateLimitError) as caught:
        sandbox.delete()

    assert caught.value.headers["Retry-After-sandbox-lifecycle"] == "60"
    assert sdk.get(sandbox.id).state == "stopped"
    assert call(fake_daytona, "POST", "/sandbox", {"name": "more"}).status == 200


def test_the_window_runs_on_the_emulators_clock(fake_daytona):  # noqa: F811
    fake_daytona.set_rate_limit("authenticated", 2)
    assert call(fake_daytona, "GET", "/sandbox").status == 200
    fake_daytona.advance_clock(59)
    second = call(fake_daytona, "GET", "/sandbox")
    assert (second.status, second.headers["X-RateLimit-Reset-authenticated"]) == (200, "1")
    fake_daytona.advance_clock(1)
    third = call(fake_daytona, "GET", "/sandbox")
    assert (third.status, third.headers["X-RateLimit-Remaining-authenticated"]) == (200, "1")


def test_unauthenticated_requests_and_scripted_faults(fake_daytona):  # noqa: F811
    fake_daytona.set_rate_limit("authenticated", 1)
    assert call(fake_daytona, "GET", "/sandbox", key="wrong").status == 401
    fake_daytona.fault("list", "status", status=503, headers={"Retry-After": "2"})

    scripted = call(fake_daytona, "GET", "/sandbox")

    assert scripted.status == 503 and _limit_headers(scripted) == {"Retry-After": "2"}
    assert call(fake_daytona, "GET", "/sandbox").status == 429  # the 401 did not count, the fault did


def test_limits_are_set_over_http_and_reset_with_the_fixture(fake_daytona, sdk):  # noqa: F811
    status, body = _fetch(f"{fake_daytona.url}/__config", {"rate_limits": {"sandbox-create": 1, "authenticated": None}})
    assert status == 200 and '"sandbox-create": 1' in body

    assert call(fake_daytona, "GET", "/sandbox").headers.get("X-RateLimit-Limit-authenticated") is None
    sdk.create(CreateSandboxFromSnapshotParams(name="one"), timeout=10)
    with pytest.raises(DaytonaRateLimitError):
        sdk.create(CreateSandboxFromSnapshotParams(name="two"), timeout=10)
    assert _fetch(f"{fake_daytona.url}/__config", {"rate_limits": {"teleport": 1}})[0] == 400

    fake_daytona.rate_limits.restore_defaults()
    assert fake_daytona.rate_limits.describe()["limits"] == {
        "authenticated": 10_000,
        "sandbox-create": 300,
        "sandbox-lifecycle": 10_000,
    }
