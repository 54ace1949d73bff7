"""pytest fixtures: one emulator per test session, reset before each test that uses it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .server import FakeDaytona

FAKE_DAYTONA_API_KEY = "canary-daytona-key-5f1e"


@pytest.fixture(scope="session")
def fake_daytona_server() -> Iterator[FakeDaytona]:
    """The session's emulator, listening on a free loopback port."""
    fake = FakeDaytona(api_key=FAKE_DAYTONA_API_KEY).start()
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture
def fake_daytona(fake_daytona_server: FakeDaytona) -> Iterator[FakeDaytona]:
    """The emulator, emptied and with no latency or transition time."""
    fake = fake_daytona_server
    _restore(fake)
    yield fake
    _restore(fake)


def _restore(fake: FakeDaytona) -> None:
    fake.reset()
    fake.latency = 0.0
    fake.transition_seconds = 0.0
    fake.list_lag(0)
    fake.ssh_host = "127.0.0.1"
    fake.ssh_port = 2222
    fake.pty_counts_as_activity = True
    fake.preview_counts_as_activity = True
