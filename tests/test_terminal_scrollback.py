"""A reattached web terminal shows the session's recent output at once, never a blank screen.

Through the project's ASGI application, for both backends: the Daytona fake through the real
SDK (whose daemon, like the real one, keeps no output and replays none: the portal keeps what it
relayed) and a local sandbox (whose agent keeps each session's output, attached or not).
"""

from __future__ import annotations

import asyncio
import re
import time
from datetime import timedelta

import pytest
from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from django.conf import settings
from django.utils import timezone

from sandboxes import services
from sandboxes.models import TerminalSession
from sandboxes.providers import get_provider
from sandboxes.services.scrollback import stored_scrollback
from tests.conftest import launch, signed_in
from tests.local_fixtures import local_root, local_settings, read_until  # noqa: F401 - fixtures
from tests.terminal_client import WAIT_SECONDS, attach, next_frame, run, socket

pytestmark = pytest.mark.django_db(transaction=True)  # the terminal's threads use the database too

QUIET_SECONDS = 0.7
MARKER = re.compile(rb"marker-(\d{6})")


@pytest.fixture(params=["daytona", "local"])
def backend(request):
    """The sandbox backend: ``daytona`` (the fake) or ``local`` (this machine)."""
    if request.param == "daytona":
        request.getfixturevalue("daytona")
    else:
        request.getfixturevalue("local_settings")
    return request.param


def launched(user) -> tuple[str, object]:
    client = signed_in(user)
    response = launch(client)
    assert response.status_code == 200, response.content
    return response.json()["sandbox"]["id"], client


async def output_until_quiet(communicator, *, seconds: float = WAIT_SECONDS) -> list[bytes]:
    """The binary frames received until nothing came for ``QUIET_SECONDS``."""
    frames = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if await communicator.receive_nothing(timeout=QUIET_SECONDS):
            break
        frame = await next_frame(communicator)
        assert frame["type"] == "websocket.send", frame
        if frame.get("bytes"):
            frames.append(frame["bytes"])
    return frames


async def print_marker(communicator) -> tuple[bytes, bytes]:
    """Print a random marker line; the marker and the prompt shown after it."""
    await communicator.send_to(bytes_data=b"echo marker-$((RANDOM + 100000))\r")
    seen = b""
    deadline = time.monotonic() + WAIT_SECONDS
    while not MARKER.search(seen):
        assert time.monotonic() < deadline, seen[-300:]
        seen += (await next_frame(communicator)).get("bytes") or b""
    seen += b"".join(await output_until_quiet(communicator))
    marker = MARKER.search(seen).group(0)
    prompt = seen.rsplit(b"\n", 1)[-1]
    assert prompt.strip(), seen[-300:]
    return marker, prompt


async def reattach(client, remote_id: str, session: str) -> tuple[bytes, bytes]:
    """Reattach to ``session`` without typing: the first output frame, and all output until quiet."""
    again = socket(client, remote_id, session=session)
    assert await attach(again) == session
    frames = await output_until_quiet(again)
    await again.disconnect()
    return (frames[0] if frames else b""), b"".join(frames)


def test_a_reattached_terminal_shows_the_prompt_and_the_last_output_at_once(owner, backend):
    remote_id, client = launched(owner)

    async def scenario():
        first = socket(client, remote_id)
        session = await attach(first)
        marker, prompt = await print_marker(first)
        await first.disconnect()
        first_frame, _ = await reattach(client, remote_id, session)
        return marker, prompt, first_frame

    marker, prompt, first_frame = async_to_sync(scenario)()
    assert marker + b"\r\n" in first_frame
    assert first_frame.rstrip().endswith(prompt.rstrip())


def test_a_second_reattach_shows_it_again_with_what_came_since(owner, backend):
    remote_id, client = launched(owner)

    async def scenario():
        first = socket(client, remote_id)
        session = await attach(first)
        marker, _ = await print_marker(first)
        await first.disconnect()
        again = socket(client, remote_id, session=session)
        await attach(again)
        await output_until_quiet(again)
        second, prompt = await print_marker(again)
        await again.disconnect()
        _, replay = await reattach(client, remote_id, session)
        return marker, second, prompt, replay

    marker, second, prompt, replay = async_to_sync(scenario)()
    assert replay.count(marker + b"\r\n") == 1 and replay.count(second + b"\r\n") == 1
    assert replay.index(marker) < replay.index(second)
    assert replay.rstrip().endswith(prompt.rstrip())


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_output_printed_while_nobody_was_attached_is_replayed_on_a_local_sandbox(owner, backend):
    remote_id, client = launched(owner)

    async def scenario():
        first = socket(client, remote_id)
        session = await attach(first)
        await run(first, "sleep 1; echo later-$((3*5))", b"sleep 1;")
        await first.disconnect()
        await asyncio.sleep(2)
        return await reattach(client, remote_id, session)

    first_frame, _ = async_to_sync(scenario)()
    assert b"later-15\r\n" in first_frame


@pytest.mark.parametrize("backend", ["daytona"], indirect=True)
def test_daytonas_daemon_drops_what_is_printed_while_nobody_is_attached(owner, backend):
    """As the real daemon does: the portal can replay only what it relayed."""
    remote_id, client = launched(owner)

    async def scenario():
        first = socket(client, remote_id)
        session = await attach(first)
        await run(first, "sleep 1; echo later-$((3*5))", b"sleep 1;")
        await first.disconnect()
        await asyncio.sleep(2)
        return await reattach(client, remote_id, session)

    _, replay = async_to_sync(scenario)()
    assert b"sleep 1; echo later-$((3*5))" in replay
    assert b"later-15" not in replay


def test_the_replay_is_bounded_and_starts_on_a_line(owner, backend):
    remote_id, client = launched(owner)
    bound = settings.SANDBOX_TERMINAL_SCROLLBACK_BYTES

    async def scenario():
        first = socket(client, remote_id)
        session = await attach(first)
        await run(first, "seq 100000 140000; echo done-$((2*3))", b"done-6\r\n")
        await output_until_quiet(first)
        await first.disconnect()
        return await reattach(client, remote_id, session)

    _, replay = async_to_sync(scenario)()
    assert 140000 - 100000 > bound // 7  # more was printed than is kept
    assert 0 < len(replay) <= bound
    assert b"done-6\r\n" in replay
    lines = replay.split(b"\r\n")
    first, second = int(lines[0]), int(lines[1])  # a whole line first, then the next one
    assert second == first + 1 and first > 100000


def test_no_other_sessions_output_is_replayed(owner, teammate, backend):
    remote_id, client = launched(owner)
    teammates_id, teammates_client = launched(teammate)

    async def scenario():
        first = socket(client, remote_id)
        session = await attach(first)
        marker, _ = await print_marker(first)
        await first.disconnect()

        # Another tab of the owner's, without the session: a new shell, with nothing of the first.
        other_tab = socket(client, remote_id)
        other = await attach(other_tab)
        other_output = b"".join(await output_until_quiet(other_tab))
        await other_tab.disconnect()

        # The teammate naming the owner's session in their own sandbox gets a shell of their own.
        theirs = socket(teammates_client, teammates_id, session=session)
        their_session = await attach(theirs)
        their_output = b"".join(await output_until_quiet(theirs))
        await theirs.disconnect()
        return marker, session, other, other_output, their_session, their_output

    marker, session, other, other_output, their_session, their_output = async_to_sync(scenario)()
    assert len({session, other, their_session}) == 3
    assert marker not in other_output
    assert marker not in their_output


def test_a_shell_that_exited_takes_its_scrollback_with_it(owner, backend):
    remote_id, client = launched(owner)

    async def scenario():
        first = socket(client, remote_id)
        session = await attach(first)
        marker, _ = await print_marker(first)
        await first.send_to(bytes_data=b"exit\r")
        while (await next_frame(first))["type"] != "websocket.close":
            pass
        await first.disconnect()  # as the server reports the closed connection
        stored = await database_sync_to_async(stored_scrollback)(remote_id, session)

        again = socket(client, remote_id, session=session)
        new_session = await attach(again)
        output = b"".join(await output_until_quiet(again))
        await again.disconnect()
        return marker, session, stored, new_session, output

    marker, session, stored, new_session, output = async_to_sync(scenario)()
    assert stored == b""
    assert new_session != session
    assert marker not in output


def test_a_reaped_session_takes_its_scrollback_with_it(owner, backend):
    remote_id, client = launched(owner)
    in_thread = database_sync_to_async(lambda function, **kwargs: function(**kwargs))

    async def scenario():
        first = socket(client, remote_id)
        session = await attach(first)
        marker, _ = await print_marker(first)
        await first.disconnect()
        kept = await database_sync_to_async(stored_scrollback)(remote_id, session)
        later = timezone.now() + timedelta(minutes=settings.SANDBOX_TERMINAL_DETACHED_MINUTES + 5)
        assert await in_thread(services.terminals_reap, now=later) == 1
        gone = await database_sync_to_async(stored_scrollback)(remote_id, session)
        return marker, session, kept, gone

    marker, session, kept, gone = async_to_sync(scenario)()
    assert not TerminalSession.objects.filter(session_id=session).exists()
    if backend == "daytona":
        assert marker in kept  # kept by the portal while the session lived
    assert gone == b""


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_a_local_session_ended_and_opened_again_under_its_id_starts_blank(owner, backend):
    """The agent's scrollback belongs to the shell: a new shell under the same id has none."""
    remote_id, _ = launched(owner)
    provider = get_provider("local")
    terminal = provider.open_terminal(remote_id, session_id="reused-id", cols=80, rows=24)
    terminal.write(b"echo old-$((40+2))\n")
    read_until(terminal, b"old-42\r\n")
    terminal.detach()
    provider.end_terminal(remote_id, "reused-id")  # its slot is free at once
    terminal = provider.open_terminal(remote_id, session_id="reused-id", cols=80, rows=24)
    assert terminal.created
    terminal.write(b"echo new-$((40+3))\n")
    seen = read_until(terminal, b"new-43\r\n")
    terminal.kill()
    terminal.detach()
    assert b"old-42" not in seen


def replayed_then_live_ticks(owner) -> list[int]:
    """Ticks printed while a tab detaches and another reattaches: what the second one read."""
    remote_id, client = launched(owner)

    async def scenario():
        first = socket(client, remote_id)
        session = await attach(first)
        await run(first, "for i in $(seq 1 60); do echo tick-$i; sleep 0.05; done", b"tick-5\r\n")
        await first.disconnect()
        again = socket(client, remote_id, session=session)
        await attach(again)
        seen = b""
        deadline = time.monotonic() + WAIT_SECONDS
        while b"tick-60\r\n" not in seen:
            assert time.monotonic() < deadline, seen[-300:]
            frame = await next_frame(again)
            seen += frame.get("bytes") or b""
        await again.disconnect()
        return seen

    seen = async_to_sync(scenario)()
    return [int(n) for n in re.findall(rb"tick-(\d+)\r\n", seen)]


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_replay_then_live_output_has_no_gap_and_no_repeat_on_a_local_sandbox(owner, backend):
    assert replayed_then_live_ticks(owner) == list(range(1, 61))


@pytest.mark.parametrize("backend", ["daytona"], indirect=True)
def test_replay_then_live_output_repeats_nothing_on_daytona(owner, backend):
    ticks = replayed_then_live_ticks(owner)
    assert ticks[:5] == [1, 2, 3, 4, 5]  # replayed, then live: in order, none twice
    assert ticks == sorted(set(ticks)) and ticks[-1] == 60
