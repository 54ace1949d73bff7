"""pytest fixtures: one emulator per test session, reset before each test that uses it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .activity import PROXY_CACHE_SECONDS
from .server import FakeDaytona
from .timings import Timings

FAKE_DAYTONA_API_KEY = "canary-daytona-key-5f1e"


@pytest.fixture(scope="session")
def fake_daytona_server() -> Iterator[FakeDaytona]:
    """The session's emulator, listening on a free loopback port."""
    fake = FakeDaytona(api_key=FAKE_DAYTONA_API_KEY, timings=Timings.instant()).start()
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture
def fake_daytona(fake_daytona_server: FakeDaytona) -> Iterator[FakeDaytona]:
    """The emulator, emptied, with no latency and **instant timings**: every transition
    completes before its answer, so tests are fast and need no waiting. The emulator's own
    default is realistic; a test about timing sets ``fake_daytona.timings =
    Timings.realistic()`` (or ``.scaled(...)``) and moves ``fake_daytona.advance_clock``.
    Rate limits are the published tier 1; failing builds and the create answer are reset."""
    fake = fake_daytona_server
    _restore(fake)
    yield fake
    _restore(fake)


def _restore(fake: FakeDaytona) -> None:
    fake.reset()
    fake.latency = 0.0
    fake.timings = Timings.instant()
    fake.list_lag(0)
    fake.rate_limits.restore_defaults()
    fake.store.builds.set_failing({})
    fake.create_answer_after_hold = "current"
    fake.ssh_host = "127.0.0.1"
    fake.ssh_port = 2222
    fake.activity_switches.update(dict.fromkeys(fake.activity_switches, True))
    fake.proxy_activity_cache_seconds = PROXY_CACHE_SECONDS
    fake.preview_warning = True
    fake.apps.clear()
