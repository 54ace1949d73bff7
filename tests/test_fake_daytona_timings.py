"""The Daytona emulator's timings: realistic by default, instant in the pytest fixture, and
settable from tests, over HTTP and on the command line; the older ``transition_seconds`` knob
still means "every transition takes this long".

The realistic figures are estimates from Daytona's notes and published reports (start from
stopped about 0.7 s, create from a snapshot about 1 s, a first image build about 165 s); the
hosted service varies with load and image size.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from daytona import CreateSandboxFromImageParams, CreateSandboxFromSnapshotParams, Daytona, DaytonaConfig

from tests.daytona_fixtures import _create, _fetch, sdk  # noqa: F401 - fixtures
from tests.fake_daytona import FakeDaytona
from tests.fake_daytona.fixtures import fake_daytona, fake_daytona_server  # noqa: F401
from tests.fake_daytona.raw import call
from tests.fake_daytona.timings import Timings

REPO_ROOT = Path(__file__).resolve().parent.parent


def test_the_emulator_is_realistic_by_default():
    timings = FakeDaytona().timings

    assert timings == Timings.realistic()
    assert (timings.create, timings.start) == (1.0, 0.7)
    assert 1 <= timings.stop <= 2
    assert timings.first_build() == pytest.approx(165)
    assert 1 <= timings.cached_build() < 10
    assert 10 <= timings.restore_queue + timings.restore < 100
    assert 1 <= timings.destroy_queue + timings.destroy < 10
    assert 1 <= timings.delete_list_lag <= 2
    assert timings.hold_limit == 30


def test_the_fixture_is_instant(fake_daytona, sdk):  # noqa: F811
    assert fake_daytona.timings == Timings.instant()
    started = time.monotonic()

    sandbox = sdk.create(CreateSandboxFromImageParams(name="img", image="node:20-bookworm"), timeout=10)
    sandbox.stop(timeout=10)
    sandbox.start(timeout=10)

    assert sandbox.state == "started"
    assert time.monotonic() - started < 5


def test_scaled_and_edited_profiles():
    realistic = Timings.realistic()

    assert realistic.scaled(0.5).build == realistic.build / 2
    assert realistic.scaled(0.5).hold_limit == 30
    assert realistic.with_changes(build=30).first_build() == pytest.approx(40)
    with pytest.raises(ValueError, match="unknown timing 'teleport'"):
        realistic.with_changes(teleport=1)
    with pytest.raises(ValueError):
        realistic.with_changes(build=-1)


def test_transition_seconds_makes_every_transition_that_long(fake_daytona, sdk):  # noqa: F811
    fake_daytona.transition_seconds = 0.3
    assert fake_daytona.transition_seconds == 0.3

    started = time.monotonic()
    sandbox = _create(sdk)  # held by the server until started
    assert sandbox.state == "started" and 0.25 < time.monotonic() - started < 5
    answer = call(fake_daytona, "POST", f"/sandbox/{sandbox.id}/stop")
    assert answer.body["state"] == "stopping"
    fake_daytona.advance_clock(0.3)
    assert sdk.get(sandbox.id).state == "stopped"
    built = call(fake_daytona, "POST", "/sandbox", {"name": "img", "buildInfo": {"dockerfileContent": "FROM x\n"}})
    assert built.body["state"] == "creating"
    fake_daytona.advance_clock(0.3)
    assert sdk.get("img").state == "started"

    fake_daytona.transition_seconds = 0
    assert fake_daytona.timings == Timings.instant()


def test_timings_are_set_over_http(fake_daytona):  # noqa: F811
    config = f"{fake_daytona.url}/__config"

    status, body = _fetch(config, {"timings": "realistic", "time_scale": 0.5})
    assert status == 200 and json.loads(body)["timings"]["build"] == Timings.realistic().build / 2
    status, body = _fetch(config, {"timings": {"create": 7}})
    assert json.loads(body)["timings"]["create"] == 7
    assert fake_daytona.timings.create == 7 and fake_daytona.timings.start == Timings.realistic().start / 2
    assert json.loads(_fetch(config, {"transition_seconds": 2})[1])["transition_seconds"] == 2
    assert _fetch(config, {"timings": "glacial"})[0] == 400
    assert _fetch(config, {"timings": "instant"})[0] == 200
    assert fake_daytona.timings == Timings.instant()


def _run_cli(*arguments: str, env: dict[str, str] | None = None):
    command = [sys.executable, "-m", "tests.fake_daytona", "--port", "0", "--api-key", "cli-key", *arguments]
    inherited = {key: value for key, value in os.environ.items() if key != "FAKE_DAYTONA_TIMINGS"}
    full_env = {**inherited, "PYTHONPATH": str(REPO_ROOT), **(env or {})}
    return subprocess.Popen(command, cwd=REPO_ROOT, env=full_env, stdout=subprocess.PIPE, text=True)


def _cli_settings(process) -> dict:
    api_url = process.stdout.readline().strip()
    status, body = _fetch(api_url.removesuffix("/api") + "/__config", {})
    assert status == 200
    return {**json.loads(body), "api_url": api_url}


@pytest.mark.parametrize(
    ("arguments", "env", "expected"),
    [
        ((), {}, Timings.realistic()),
        (("--timings", "instant"), {}, Timings.instant()),
        ((), {"FAKE_DAYTONA_TIMINGS": "instant"}, Timings.instant()),
        (("--time-scale", "0.1", "--timing", "build=30"), {}, Timings.realistic().scaled(0.1).with_changes(build=30)),
        (("--transition-seconds", "2"), {}, Timings.uniform(2)),
    ],
)
def test_the_command_line_sets_timings(arguments, env, expected):
    with _run_cli(*arguments, env=env) as process:
        try:
            settings = _cli_settings(process)
            assert settings["timings"] == expected.describe()
        finally:
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=10) == 0


def test_the_command_line_sets_rate_limits_and_serves_realistically():
    with _run_cli("--rate-limit", "sandbox-create=1", "--rate-limit", "authenticated=none") as process:
        try:
            settings = _cli_settings(process)
            assert settings["rate_limits"]["limits"]["sandbox-create"] == 1
            assert settings["rate_limits"]["limits"]["authenticated"] is None
            client = Daytona(DaytonaConfig(api_key="cli-key", api_url=settings["api_url"], target="us"))
            started = time.monotonic()
            assert client.create(CreateSandboxFromSnapshotParams(name="c"), timeout=10).state == "started"
            assert time.monotonic() - started >= 0.9  # held about a second, as the hosted service
        finally:
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=10) == 0
