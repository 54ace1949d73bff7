"""The idle policy measures a person, not an open tab or an open connection.

Shown with a moved clock (time-machine moves ``time.time()`` and ``datetime.now()`` in every
thread, the fake Daytona's included), in steps; after each step the two passes Celery beat runs
every ``SANDBOX_IDLE_CHECK_SECONDS`` (reconcile, then the idle stop) run at that moment. Real time
barely passes; the shells and the websockets are real.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta

import pytest
import time_machine
from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from django.conf import settings
from django.test import Client
from django.utils import timezone

from sandboxes import services
from sandboxes.models import ActivitySource, Sandbox, SandboxState
from sandboxes.tasks import refresh_sandbox_activity
from tests.conftest import csrf_headers, launch, signed_in
from tests.local_fixtures import local_root, local_settings  # noqa: F401 - fixtures
from tests.terminal_client import WAIT_SECONDS, attach, next_frame, run, socket

pytestmark = pytest.mark.django_db(transaction=True)  # the terminal's threads use the database too

LIMIT = timedelta(minutes=120)


class Clocks:
    """The moved clock. The fake Daytona runs in this process and reads the same clock."""

    def __init__(self, traveller):
        self.traveller = traveller
        self.started = timezone.now()

    def advance(self, delta: timedelta) -> datetime:
        self.traveller.shift(delta)
        return timezone.now()

    @property
    def elapsed(self) -> timedelta:
        return timezone.now() - self.started


@pytest.fixture
def clocks():
    with time_machine.travel(timezone.now(), tick=True) as traveller:
        yield Clocks(traveller)


def beat(now: datetime) -> None:
    """What Celery beat runs at every idle check."""
    services.sandboxes_reconcile(now=now)
    services.sandboxes_stop_idle(now=now)


def state_of(user) -> str:
    return Sandbox.objects.get(user=user).state


async def stopped_after(
    clocks: Clocks, user, *, until: timedelta, step: timedelta | None = None, on_step=None
) -> timedelta | None:
    """Move the clocks ``step`` at a time (default: one idle check interval), running the
    beat's passes after each move, until the sandbox is stopped or ``until`` has passed.

    Returns how long after the launch (the last thing that counted before this) the check
    that stopped it ran, or None. ``on_step(now)`` runs after each move, before the passes:
    what the user does meanwhile."""
    step = step or timedelta(seconds=settings.SANDBOX_IDLE_CHECK_SECONDS)
    launched_at = (await database_sync_to_async(Sandbox.objects.get)(user=user)).last_activity_at
    while clocks.elapsed < until:
        now = clocks.advance(step)
        if on_step is not None:
            await on_step(now)
        await database_sync_to_async(beat)(now)
        if await database_sync_to_async(state_of)(user) == SandboxState.STOPPED:
            return now - launched_at
    return None


async def open_terminal(client: Client, remote_id: str):
    """A terminal tab, once its shell has printed its prompt (before any clock moves: the
    prompt is the shell answering the tab being opened)."""
    terminal = socket(client, remote_id)
    await attach(terminal)
    while not (await next_frame(terminal)).get("bytes"):
        pass
    while True:  # the prompt may come in several pieces
        try:
            await asyncio.wait_for(next_frame(terminal), timeout=0.5)
        except TimeoutError:
            return terminal


async def closed_with(terminal) -> int:
    while True:
        frame = await next_frame(terminal)
        if frame["type"] == "websocket.close":
            return frame["code"]


def launched(client) -> str:
    response = launch(client)
    assert response.status_code == 200, response.content
    return response.json()["sandbox"]["id"]


# --- an open terminal that nobody uses --------------------------------------------------------


def test_an_untouched_terminal_tab_on_daytona_is_stopped_at_two_hours(owner, daytona, clocks):
    client = signed_in(owner)
    remote_id = launched(client)

    async def scenario():
        terminal = await open_terminal(client, remote_id)
        after = await stopped_after(clocks, owner, until=LIMIT + timedelta(minutes=30))
        return after, await closed_with(terminal)

    after, close_code = async_to_sync(scenario)()
    check = timedelta(seconds=settings.SANDBOX_IDLE_CHECK_SECONDS)
    assert after is not None, "the sandbox was never stopped"
    assert LIMIT < after <= LIMIT + check
    assert daytona.sandbox(remote_id)["state"] == "stopped"
    assert close_code == 4409  # the page offers to resume it


def test_an_untouched_terminal_tab_on_a_local_sandbox_is_stopped_at_two_hours(owner, local_settings, clocks):
    client = signed_in(owner)
    remote_id = launched(client)

    async def scenario():
        terminal = await open_terminal(client, remote_id)
        after = await stopped_after(clocks, owner, until=LIMIT + timedelta(minutes=30))
        return after, await closed_with(terminal)

    after, close_code = async_to_sync(scenario)()
    check = timedelta(seconds=settings.SANDBOX_IDLE_CHECK_SECONDS)
    assert after is not None, "the sandbox was never stopped"
    assert LIMIT < after <= LIMIT + check
    assert close_code == 4409


# --- a terminal where something happens --------------------------------------------------------


def test_a_command_printing_every_minute_keeps_the_sandbox_running(owner, daytona, clocks):
    client = signed_in(owner)
    remote_id = launched(client)

    async def scenario():
        terminal = await open_terminal(client, remote_id)
        # A build printing as it goes: output without any input from here on.
        await run(terminal, "while :; do echo tick-$((1+1)); sleep 0.05; done", b"tick-2")

        async def printed(now: datetime) -> None:
            await output_recorded(owner, terminal, since=now - timedelta(seconds=5))

        return await stopped_after(
            clocks, owner, until=LIMIT + timedelta(minutes=30), step=timedelta(minutes=1), on_step=printed
        )

    assert async_to_sync(scenario)() is None
    sandbox = Sandbox.objects.get(user=owner)
    assert sandbox.state == SandboxState.STARTED
    assert sandbox.last_activity_source == ActivitySource.TERMINAL_OUTPUT


async def output_recorded(user, terminal, *, since: datetime) -> None:
    """Read the terminal's output until the portal has recorded output activity at ``since`` or
    later (it writes at most once a minute, on the moved clock)."""
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        sandbox = await database_sync_to_async(Sandbox.objects.get)(user=user)
        if sandbox.last_activity_at >= since:
            return
        assert time.monotonic() < deadline, f"no activity recorded since {since}"
        try:
            await asyncio.wait_for(next_frame(terminal), timeout=0.5)
        except TimeoutError:
            pass


# --- the portal page ------------------------------------------------------------------------------


def heartbeat(client: Client, interacted: bool):
    return client.post(
        "/api/sandbox/heartbeat",
        data={"interacted": interacted},
        content_type="application/json",
        **csrf_headers(client),
    )


def test_a_portal_tab_open_but_untouched_is_stopped_at_two_hours(owner, daytona, clocks):
    client = signed_in(owner)
    launched(client)

    async def beats_untouched(now):
        for _ in range(5):  # one a minute
            response = await database_sync_to_async(heartbeat)(client, False)
            assert response.json() == {"ok": True, "counted": False}

    after = async_to_sync(stopped_after)(clocks, owner, until=LIMIT + timedelta(minutes=30), on_step=beats_untouched)
    assert after is not None and LIMIT < after <= LIMIT + timedelta(seconds=settings.SANDBOX_IDLE_CHECK_SECONDS)


def test_a_portal_tab_someone_uses_now_and_then_keeps_it_running(owner, daytona, clocks):
    client = signed_in(owner)
    launched(client)
    steps = iter(range(10_000))

    async def someone_scrolls_every_half_hour(now):
        if next(steps) % 6 == 5:
            response = await database_sync_to_async(heartbeat)(client, True)
            assert response.json() == {"ok": True, "counted": True}

    after = async_to_sync(stopped_after)(
        clocks, owner, until=LIMIT + timedelta(minutes=60), on_step=someone_scrolls_every_half_hour
    )
    assert after is None
    assert Sandbox.objects.get(user=owner).last_activity_source == ActivitySource.PAGE


# --- Daytona's own timestamp ---------------------------------------------------------------------


def test_daytonas_timer_moved_by_the_portal_itself_is_not_mistaken_for_a_user(owner, daytona, clocks):
    """The portal refreshes Daytona's idle timer (its backstop) when it sees the user; a refresh
    that runs late (a busy worker) moves Daytona's timestamp past the user's last activity.
    That is the portal's own doing: the sandbox still stops two hours after the user left."""
    client = signed_in(owner)
    launched(client)
    sandbox = Sandbox.objects.get(user=owner)
    last_used = clocks.advance(timedelta(minutes=10))
    assert heartbeat(client, True).json()["counted"] is True
    clocks.advance(timedelta(minutes=10))
    assert refresh_sandbox_activity(sandbox.pk) is True  # the refresh task, run late
    assert daytona.calls["last_activity"] == 1

    after = async_to_sync(stopped_after)(clocks, owner, until=LIMIT + timedelta(minutes=60))

    stopped_at = Sandbox.objects.get(user=owner).last_stopped_at
    assert after is not None
    assert LIMIT < stopped_at - last_used <= LIMIT + timedelta(seconds=settings.SANDBOX_IDLE_CHECK_SECONDS)


def test_ssh_through_daytonas_own_gateway_counts_through_daytonas_timestamp(owner, daytona, clocks):
    """SSH to a Daytona sandbox goes through Daytona's gateway, which the portal never sees;
    Daytona's lastActivityAt, which the session moves and the portal did not, is the evidence."""
    client = signed_in(owner)
    remote_id = launched(client)
    session = daytona.open_ssh_session(remote_id)

    kept = async_to_sync(stopped_after)(clocks, owner, until=LIMIT + timedelta(minutes=30))
    assert kept is None
    assert Sandbox.objects.get(user=owner).last_activity_source == ActivitySource.PROVIDER

    session.close()
    closed_at = timezone.now()
    async_to_sync(stopped_after)(clocks, owner, until=clocks.elapsed + LIMIT + timedelta(minutes=30))
    stopped_at = Sandbox.objects.get(user=owner).last_stopped_at
    # The session's last post came up to 45 s before it closed, and is kept to the whole minute.
    check = timedelta(seconds=settings.SANDBOX_IDLE_CHECK_SECONDS)
    assert LIMIT - timedelta(minutes=2) < stopped_at - closed_at <= LIMIT + check
