"""The dashboard's live state: a change made in any process reaches the owner's open pages.

The owner's page is a real websocket client against the project's ASGI application under
uvicorn (origin check, session auth, routing); the change is made by another process (the idle
policy, an operator's ``stop_sandboxes``, reconcile) with the same database and Redis, and
reaches the page through the Redis channel layer. Sandboxes run on the fake Daytona.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from datetime import timedelta
from urllib.parse import urlsplit

import httpx
import pytest
from channels_redis.core import RedisChannelLayer
from django.conf import settings as django_settings
from django.db import connection, connections, transaction
from django.utils import timezone
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from sandboxes.models import ActivitySource, AuditEvent, Sandbox, SandboxState
from sandboxes.services.activity import sandbox_record_activity
from sandboxes.services.lifecycle import sandboxes_stop_many
from sandboxes.services.live import owner_group, sandbox_changed
from tests.conftest import CANARY_KEY, launch, signed_in
from tests.terminal_client import launched
from tests.test_terminal_browser import asgi_server  # noqa: F401

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(connection.vendor != "postgresql", reason="other processes share the test database"),
    pytest.mark.skipif(not django_settings.CHANNEL_LAYERS, reason="live push needs REDIS_URL"),
]

Actor = AuditEvent.ActorType
PUSH_SECONDS = 2  # what the issue promises: the page updates within 2 s of the change
PROCESS_SECONDS = 60  # a Django process starting, doing its work and exiting
QUIET_SECONDS = 1.5
BLOCKING_READ_SECONDS = RedisChannelLayer.brpop_timeout  # how long the layer's receive blocks in Redis


@pytest.fixture(autouse=True)
def fresh_channel_layer(settings):
    """A channel layer of this test's own: each test's server runs its own event loop, and a
    layer receives on one loop only (a process of the portal has one)."""
    settings.CHANNEL_LAYERS = dict(settings.CHANNEL_LAYERS)


def events_socket(server: str, client=None, *, origin: str | None = "same"):
    """A page's live-state websocket, signed in as ``client``'s user (None: signed out)."""
    headers = {}
    if client is not None:
        name = django_settings.SESSION_COOKIE_NAME
        headers["Cookie"] = f"{name}={client.cookies[name].value}"
    url = f"ws://{urlsplit(server).netloc}/ws/sandbox/events/"
    return connect(url, origin=server if origin == "same" else origin, additional_headers=headers, open_timeout=10)


@contextmanager
def listening(server: str, client):
    """An open page's websocket, once it listens (its first frame says so)."""
    with events_socket(server, client) as socket:
        assert json.loads(socket.recv(timeout=10)) == {"type": "changed"}
        yield socket


def closed_with(opening) -> int | None:
    """The code the server closed the websocket with before its first frame; None if it
    sent one (the page was let in)."""
    with opening as socket:
        try:
            assert json.loads(socket.recv(timeout=10)) == {"type": "changed"}
        except ConnectionClosed as closed:
            return closed.rcvd.code
    return None


def wait_changed(socket, timeout: float) -> float:
    """Wait for a ``changed`` frame; when it came (wall clock)."""
    assert json.loads(socket.recv(timeout=timeout)) == {"type": "changed"}
    return time.time()


def assert_quiet(socket, seconds: float = QUIET_SECONDS) -> None:
    with pytest.raises(TimeoutError):
        frame = socket.recv(timeout=seconds)
        pytest.fail(f"unexpected frame {frame!r}")


def process_env(daytona) -> dict:
    db = connection.settings_dict
    database_url = (
        f"postgres://{db['USER']}:{db['PASSWORD'] or ''}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"
    )
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "joepro.settings",
        "DATABASE_URL": database_url,
        "DATABASE_CONN_MAX_AGE": "0",
        "REDIS_URL": django_settings.REDIS_URL,
        "SANDBOX_PROVIDER": "daytona",
        "DAYTONA_API_URL": daytona.api_url,
        "DAYTONA_API_KEY": CANARY_KEY,
    }


def manage(daytona, *args: str) -> str:
    """``manage.py <args>`` in a process of its own; its output."""
    result = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=django_settings.BASE_DIR,
        env=process_env(daytona),
        capture_output=True,
        text=True,
        timeout=PROCESS_SECONDS,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def shell(daytona, code: str) -> str:
    return manage(daytona, "shell", "-c", code)


def assert_pushed_soon_after(socket, sandbox: Sandbox, action: str) -> None:
    """The page got a frame no later than PUSH_SECONDS after ``action`` was written."""
    received_at = wait_changed(socket, PROCESS_SECONDS)
    event = AuditEvent.objects.filter(sandbox=sandbox, action=action).latest("created_at")
    assert received_at - event.created_at.timestamp() < PUSH_SECONDS


@pytest.fixture
def pages(owner, teammate, daytona, asgi_server):  # noqa: F811
    """The owner's and the teammate's running sandboxes, each with an open dashboard page.
    The teammate's is kept awake, so only the owner's is ever stopped."""
    _, owner_client = launched(owner, daytona)
    _, teammate_client = launched(teammate, daytona)
    Sandbox.objects.filter(user=teammate).update(keep_awake_until=timezone.now() + timedelta(hours=8))
    with listening(asgi_server, owner_client) as owner_page, listening(asgi_server, teammate_client) as teammate_page:
        yield owner_page, teammate_page


def test_the_idle_policy_in_another_process_reaches_the_owners_page(pages, owner, teammate, daytona):
    owner_page, teammate_page = pages
    moved_clock = "timezone.now() + timedelta(hours=3)"
    out = shell(
        daytona,
        "from datetime import timedelta; from django.utils import timezone; "
        "from sandboxes.services.lifecycle import sandboxes_stop_idle; "
        f"print('stopped', len(sandboxes_stop_idle(now={moved_clock}).stopped))",
    )

    assert "stopped 1" in out
    sandbox = Sandbox.objects.get(user=owner)
    assert sandbox.state == SandboxState.STOPPED
    assert_pushed_soon_after(owner_page, sandbox, AuditEvent.Action.STOP)
    assert_quiet(teammate_page)
    assert Sandbox.objects.get(user=teammate).state == SandboxState.STARTED


def test_an_operators_stop_command_reaches_the_owners_page(pages, owner, daytona):
    owner_page, teammate_page = pages

    out = manage(daytona, "stop_sandboxes", "--user", owner.email, "--reason", "maintenance window")

    assert "Stopped: 1," in out
    sandbox = Sandbox.objects.get(user=owner)
    assert sandbox.state == SandboxState.STOPPED
    assert_pushed_soon_after(owner_page, sandbox, AuditEvent.Action.STOP)
    assert_quiet(teammate_page)


def test_reconcile_in_another_process_reaches_the_owners_page(pages, owner, daytona):
    owner_page, teammate_page = pages
    sandbox = Sandbox.objects.get(user=owner)
    daytona.set_state(sandbox.remote_id, "stopped")  # stopped behind the portal's back
    reconcile = (
        "from datetime import timedelta; from django.utils import timezone; "
        "from sandboxes.services.reconcile import sandboxes_reconcile; "
        "print('updated', sandboxes_reconcile(now=timezone.now() + timedelta(minutes=5)).updated)"
    )

    assert "updated 1" in shell(daytona, reconcile)

    sandbox.refresh_from_db()
    assert sandbox.state == SandboxState.STOPPED
    assert_pushed_soon_after(owner_page, sandbox, AuditEvent.Action.STATE_SYNCED)
    assert_quiet(teammate_page)

    # A pass that finds everything as it was announces nothing.
    assert "updated 0" in shell(daytona, reconcile)
    assert_quiet(owner_page)


def test_a_launch_in_another_tab_reaches_the_owners_page(pages, owner, teammate):
    owner_page, teammate_page = pages

    assert launch(signed_in(owner)).status_code == 200

    wait_changed(owner_page, PUSH_SECONDS)
    assert_quiet(teammate_page)


def test_an_extend_in_another_tab_through_the_portals_server_reaches_the_owners_page(
    pages,
    owner,
    asgi_server,  # noqa: F811
):
    owner_page, teammate_page = pages
    other_tab = signed_in(owner)
    cookies = {name: morsel.value for name, morsel in other_tab.cookies.items()}

    response = httpx.post(
        f"{asgi_server}/api/sandbox/extend",
        json={"minutes": 60},
        cookies=cookies,
        headers={"X-CSRFToken": cookies["csrftoken"], "Origin": asgi_server},
        timeout=30,
    )

    assert response.status_code == 200, response.text
    wait_changed(owner_page, PUSH_SECONDS)
    assert_quiet(teammate_page)


def test_recorded_activity_moves_the_idle_countdown_on_the_owners_page(pages, owner):
    owner_page, _ = pages
    sandbox = Sandbox.objects.get(user=owner)
    later = timezone.now() + timedelta(minutes=10)

    assert sandbox_record_activity(sandbox=sandbox, source=ActivitySource.TERMINAL_INPUT, now=later)
    wait_changed(owner_page, PUSH_SECONDS)

    # Activity within the write interval writes nothing, and so announces nothing.
    assert not sandbox_record_activity(sandbox=sandbox, source=ActivitySource.TERMINAL_INPUT, now=later)
    assert_quiet(owner_page)


def test_a_page_quiet_for_longer_than_the_layers_blocking_read_still_hears_changes(pages, owner):
    owner_page, _ = pages
    sandbox = Sandbox.objects.get(user=owner)
    time.sleep(BLOCKING_READ_SECONDS + 2)  # nothing happens for a while

    sandbox_changed(sandbox)

    wait_changed(owner_page, PUSH_SECONDS)


def test_a_bulk_stop_tells_each_owner_once(pages, owner, teammate, daytona):
    owner_page, teammate_page = pages

    ids = list(Sandbox.objects.filter(user__in=[owner, teammate]).values_list("pk", flat=True))

    report = sandboxes_stop_many(sandbox_ids=ids, actor_type=Actor.ADMIN, reason="maintenance")

    assert len(report.stopped) == 2
    wait_changed(owner_page, PUSH_SECONDS)
    wait_changed(teammate_page, PUSH_SECONDS)
    assert_quiet(owner_page)
    assert_quiet(teammate_page)


def test_changes_in_one_transaction_are_announced_once_at_commit(pages, owner):
    owner_page, _ = pages
    sandbox = Sandbox.objects.get(user=owner)

    with transaction.atomic():
        sandbox_changed(sandbox)
        with transaction.atomic():
            sandbox_changed(sandbox, sandbox)
        assert_quiet(owner_page, 0.5)  # nothing before the commit

    wait_changed(owner_page, PUSH_SECONDS)
    assert_quiet(owner_page)


def test_a_rolled_back_change_is_not_announced(pages, owner):
    owner_page, _ = pages
    sandbox = Sandbox.objects.get(user=owner)

    with pytest.raises(RuntimeError), transaction.atomic():
        sandbox_changed(sandbox)
        raise RuntimeError("rolled back")

    assert_quiet(owner_page)


def test_signed_out_pages_are_closed_4401(asgi_server):  # noqa: F811
    assert closed_with(events_socket(asgi_server)) == 4401


@pytest.mark.parametrize("origin", ["http://evil.example", "null", None])
def test_a_foreign_or_missing_origin_is_refused(owner, asgi_server, origin):  # noqa: F811
    with pytest.raises(InvalidStatus) as refusal, events_socket(asgi_server, signed_in(owner), origin=origin):
        pass
    assert refusal.value.response.status_code == 403


def test_live_websockets_are_bounded_per_user(owner, asgi_server, settings):  # noqa: F811
    settings.SANDBOX_LIVE_CONNECTIONS_PER_USER = 2
    client = signed_in(owner)
    with listening(asgi_server, client):
        with listening(asgi_server, client):
            assert closed_with(events_socket(asgi_server, client)) == 4430

        deadline = time.monotonic() + 5
        while (code := closed_with(events_socket(asgi_server, client))) == 4430:
            # The slot comes free as soon as the server has seen the close.
            assert time.monotonic() < deadline, "the closed websocket's slot never came free"
            time.sleep(0.1)
        assert code is None


def test_without_a_channel_layer_nothing_is_pushed_and_pages_are_told_to_poll(
    owner,
    daytona,
    asgi_server,
    settings,  # noqa: F811
):
    _, client = launched(owner, daytona)
    sandbox = Sandbox.objects.get(user=owner)
    layers = settings.CHANNEL_LAYERS

    def stop() -> int:
        try:
            return len(sandboxes_stop_many(sandbox_ids=[sandbox.pk], actor_type=Actor.ADMIN, reason="test").stopped)
        finally:
            connections.close_all()

    async def scenario() -> None:
        # A listener in the owner's group, through Redis itself.
        watcher = RedisChannelLayer(hosts=[django_settings.REDIS_URL], prefix=layers["default"]["CONFIG"]["prefix"])
        channel = await watcher.new_channel()
        await watcher.group_add(owner_group(owner.pk), channel)
        loop = asyncio.get_running_loop()
        try:
            settings.CHANNEL_LAYERS = {}
            assert await loop.run_in_executor(None, closed_with, events_socket(asgi_server, client)) == 4503
            assert await loop.run_in_executor(None, stop) == 1
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(watcher.receive(channel), timeout=QUIET_SECONDS)
            # The listener hears the owner's group once there is a layer again.
            settings.CHANNEL_LAYERS = layers
            await loop.run_in_executor(None, sandbox_changed, sandbox)
            assert await asyncio.wait_for(watcher.receive(channel), timeout=PUSH_SECONDS) == {"type": "sandbox.changed"}
        finally:
            await watcher.group_discard(owner_group(owner.pk), channel)
            await watcher.close_pools()

    asyncio.run(scenario())
    assert Sandbox.objects.get(pk=sandbox.pk).state == SandboxState.STOPPED
