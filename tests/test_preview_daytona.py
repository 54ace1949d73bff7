"""The preview of a Daytona sandbox, relayed by the portal to the fake Daytona's preview proxy,
which forwards to a real HTTP server standing in for the sandbox's app: users meet neither a
Daytona page nor a Daytona link, and the relay's own traffic never counts as use there."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from urllib.parse import urlsplit

import pytest
from websockets.exceptions import ConnectionClosed

from sandboxes.providers import get_provider
from tests.conftest import launch, make_user, signed_in
from tests.preview_fixtures import APP, sign_in_to_preview
from tests.test_terminal_browser import asgi_server  # noqa: F401

pytestmark = pytest.mark.django_db(transaction=True)
BROWSER = "Mozilla/5.0 (X11; Linux x86_64) Chrome/156.0 Safari/537.36"


@pytest.fixture
def app_server():
    """The test app on a free loopback port, as a process of its own."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen([sys.executable, "-c", APP, "daytona-app", str(port)])
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert time.monotonic() < deadline, "the app did not start"
            time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    process.kill()
    process.wait()


@pytest.fixture
def owned(asgi_server, daytona, app_server):  # noqa: F811
    client = signed_in(make_user("owner@example.com"))
    sandbox_id = launch(client).json()["sandbox"]["id"]
    daytona.apps.serve(sandbox_id, 3000, app_server)
    return client, sandbox_id


def test_the_preview_is_relayed_with_the_token_and_without_daytonas_pages(asgi_server, daytona, owned):  # noqa: F811
    client, sandbox_id = owned
    visit = sign_in_to_preview(asgi_server, client, sandbox_id)
    assert visit.host.startswith(f"3000-{sandbox_id}.localhost:")
    before = len(daytona.requests)

    page = visit.get("/docs?q=1", headers={"User-Agent": BROWSER, "Sec-Fetch-Mode": "navigate"})

    assert page.status_code == 200 and page.text == "<h1>app of daytona-app at /docs?q=1</h1>"  # no warning page
    seen = {k.lower(): v for k, v in json.loads(visit.get("/headers", headers={"Cookie": "mine=1"}).text).items()}
    assert not any(name.startswith("x-daytona") for name in seen)
    assert seen["cookie"] == "mine=1"
    proxied = [r for r in daytona.requests[before:] if r.operation == "preview"]
    assert proxied and all(r.path.startswith(f"/proxy/3000-{sandbox_id}/") for r in proxied)
    for recorded in proxied:
        headers = {k.lower(): v for k, v in recorded.headers.items()}
        assert headers["x-daytona-preview-token"]
        assert headers["x-daytona-skip-preview-warning"] == "true"
        assert headers["x-daytona-skip-last-activity-update"] == "true"
    assert daytona.calls["signed_preview_url"] == 1  # the terminal's link only: no Daytona preview link


def test_streams_and_websockets_pass_both_relays(asgi_server, daytona, owned):  # noqa: F811
    client, sandbox_id = owned
    visit = sign_in_to_preview(asgi_server, client, sandbox_id)

    arrivals = visit.arrivals("/stream")
    assert b"".join(chunk for chunk, _ in arrivals) == b"first second"
    assert arrivals[-1][1] - arrivals[0][1] > 0.5
    assert visit.request("POST", "/form", content=b"a=1").text == "got a=1"

    with visit.websocket("/hmr") as socket_:
        socket_.send("hello")
        assert socket_.recv(timeout=5) == "echo hello"
        socket_.send(b"\x01")
        assert socket_.recv(timeout=5) == b"echo \x01"


def test_a_stop_cuts_open_connections_and_a_restart_needs_a_new_session(asgi_server, daytona, owned):  # noqa: F811
    client, sandbox_id = owned
    visit = sign_in_to_preview(asgi_server, client, sandbox_id)
    with visit.websocket("/hmr") as socket_:
        socket_.send("before")
        assert socket_.recv(timeout=5) == "echo before"
        get_provider("daytona").stop(sandbox_id, wait_seconds=5)
        with pytest.raises(ConnectionClosed):
            socket_.recv(timeout=5)

    launch(client)  # resumes it: Daytona issues a new preview token, the old session ends
    time.sleep(5.2)  # the relay keeps routes for 5 s
    again = visit.get("/", headers={"Sec-Fetch-Mode": "navigate"})
    assert again.status_code == 303 and urlsplit(again.headers["location"]).path.endswith("/preview/")
    assert sign_in_to_preview(asgi_server, client, sandbox_id).get("/").status_code == 200
