"""The terminal's websocket opens for the portal's own exact origin only.

Browsers send the portal's cookies on a websocket upgrade from any page. The attack: a page on
another port or scheme of the portal's host, or on another name of it, opens the owner's shell
with the owner's cookies. Driven against the project's ASGI application under uvicorn with a
raw websocket client that sends whatever ``Origin`` an attacker's page would; the sandbox runs
on the fake Daytona.
"""

from __future__ import annotations

import json
import time
from urllib.parse import urlsplit

import pytest
import redis
from django.conf import settings as django_settings
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from tests.terminal_client import launched
from tests.test_terminal_browser import asgi_server  # noqa: F401

pytestmark = pytest.mark.django_db(transaction=True)


def open_terminal(server: str, remote_id: str, client, origin: str | None):
    """The owner's terminal websocket, with their session cookie and ``origin`` (None: no header)."""
    cookie = f"{django_settings.SESSION_COOKIE_NAME}={client.cookies[django_settings.SESSION_COOKIE_NAME].value}"
    url = f"ws://{urlsplit(server).netloc}/ws/sandboxes/{remote_id}/terminal/?cols=80&rows=24"
    return connect(url, origin=origin, additional_headers={"Cookie": cookie}, open_timeout=10)


def assert_refused(server, remote_id, client, origin):
    with pytest.raises(InvalidStatus) as refusal:
        open_terminal(server, remote_id, client, origin).close()
    assert refusal.value.response.status_code == 403  # closed before the accept


def assert_attached(server, remote_id, client, origin):
    with open_terminal(server, remote_id, client, origin) as terminal:
        control = json.loads(terminal.recv(timeout=10))
    assert control["type"] == "attached"


@pytest.fixture
def owners_sandbox(owner, daytona, asgi_server):  # noqa: F811
    remote_id, client = launched(owner, daytona)
    return asgi_server, remote_id, client


def other_origins(server: str) -> list[str | None]:
    port = urlsplit(server).port
    return [
        f"http://127.0.0.1:{port + 1 if port < 65535 else port - 1}",  # another port of the portal's host
        f"https://127.0.0.1:{port}",  # another scheme
        f"http://localhost:{port}",  # another name of the same machine
        f"http://127.0.0.1:{port}/",  # not a serialised origin
        "http://127.0.0.1",  # the default port, not the portal's
        "null",  # sandboxed frames, file: pages
        None,  # no Origin at all
    ]


def test_other_origins_of_the_portals_host_get_no_shell(owners_sandbox, daytona):
    server, remote_id, client = owners_sandbox

    for origin in other_origins(server):
        assert_refused(server, remote_id, client, origin)

    assert daytona.calls["pty_create"] == 0


def test_a_refusal_leaves_nothing_waiting_on_redis(owners_sandbox):
    """A refused upgrade opens no channel: nothing is left blocked on Redis for it, however many
    a hostile page tries."""
    server, remote_id, client = owners_sandbox
    redis_server = redis.Redis.from_url(django_settings.REDIS_URL)

    def waiting_on_redis() -> int:
        return sum(1 for entry in redis_server.client_list() if entry["cmd"].startswith(("bzpopmin", "blpop", "brpop")))

    before = waiting_on_redis()
    for _ in range(5):
        assert_refused(server, remote_id, client, "https://evil.example")
    time.sleep(0.5)
    assert waiting_on_redis() == before


def test_the_portals_own_exact_origin_gets_the_shell(owners_sandbox, daytona):
    server, remote_id, client = owners_sandbox

    assert_attached(server, remote_id, client, server)

    assert daytona.calls["pty_create"] == 1


def test_an_exact_trusted_origin_gets_the_shell_and_a_wildcard_one_does_not(owners_sandbox, daytona, settings):
    server, remote_id, client = owners_sandbox
    settings.CSRF_TRUSTED_ORIGINS = ["https://portal.example.com", "https://*.example.org"]

    assert_attached(server, remote_id, client, "https://portal.example.com")
    assert_attached(server, remote_id, client, "https://portal.example.com:443")  # the same origin
    for origin in ("http://portal.example.com", "https://portal.example.com:8443", "https://evil.example.org"):
        assert_refused(server, remote_id, client, origin)

    assert daytona.calls["pty_create"] == 2  # a shell per attachment, none for the refused


def test_a_host_outside_allowed_hosts_gets_no_shell_even_from_its_own_origin(owners_sandbox, daytona, settings):
    server, remote_id, client = owners_sandbox
    settings.ALLOWED_HOSTS = ["portal.example.com"]
    settings.CSRF_TRUSTED_ORIGINS = [server]

    assert_refused(server, remote_id, client, server)

    assert daytona.calls["pty_create"] == 0
