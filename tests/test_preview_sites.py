"""Previews on a site of their own, written as the attacks they stop: a user's app served on the
portal's origin could read the portal's cookies, pose as its sign-in page, prompt for passwords
or send visitors elsewhere as if the portal did. Each test drives the real ASGI application
under uvicorn, with the app running in a real local sandbox."""

from __future__ import annotations

import json
import threading
import time
from urllib.parse import parse_qs, urlsplit

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from sandboxes.providers import get_provider
from tests.conftest import launch, make_user, signed_in
from tests.local_fixtures import local_root, local_settings, run, wait_for_port  # noqa: F401
from tests.preview_fixtures import APP, PreviewVisit, open_door, sign_in_to_preview
from tests.test_terminal_browser import asgi_server  # noqa: F401

pytestmark = pytest.mark.django_db(transaction=True)


def start_app(sandbox_id: str, label: str, port: int = 3000) -> None:
    provider = get_provider("local")
    script = f"cat > ~/app.py <<'EOF'\n{APP}\nEOF\nnohup python3 ~/app.py {label} {port} >/dev/null 2>&1 &"
    run(provider, sandbox_id, script)
    wait_for_port(provider, sandbox_id, port)


@pytest.fixture
def portal(asgi_server, local_settings, settings):  # noqa: F811
    settings.SANDBOX_PREVIEW_URL = f"http://localhost:{urlsplit(asgi_server).port}"
    settings.PORTAL_URL = asgi_server
    return asgi_server


@pytest.fixture
def owned(portal):
    client = signed_in(make_user("owner@example.com"))
    sandbox_id = launch(client).json()["sandbox"]["id"]
    start_app(sandbox_id, "owner")
    return client, sandbox_id


def test_the_preview_lives_on_a_host_of_its_own_and_needs_no_portal_cookie(portal, owned):
    client, sandbox_id = owned
    door = open_door(portal, client, sandbox_id, next_path="/docs/page?q=1")

    assert door.status_code == 302
    target = urlsplit(door.headers["location"])
    assert target.netloc == f"3000-{sandbox_id}.localhost:{urlsplit(portal).port}"
    assert target.path == "/_joepro/handshake" and door.headers["referrer-policy"] == "no-referrer"

    visit = PreviewVisit(server=portal, host=target.netloc)
    handshake = visit.get(f"{target.path}?{target.query}")
    assert handshake.status_code == 303 and handshake.headers["location"] == "/docs/page?q=1"
    cookie = handshake.headers["set-cookie"]
    assert cookie.startswith("joepro_preview=")
    attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")[1:]}
    assert "domain" not in attributes  # that one host only
    assert {"httponly", "samesite", "path", "max-age"} <= attributes

    visit.cookie = cookie.split(";", 1)[0]
    page = visit.get("/docs/page?q=1")
    assert page.status_code == 200 and page.text == "<h1>app of owner at /docs/page?q=1</h1>"
    assert visit.get("/static/app.js").text == "<h1>app of owner at /static/app.js</h1>"  # absolute paths work

    answer = visit.get("/headers", headers={"Cookie": "theirs=1", "Authorization": "Bearer app"})
    seen = {name.lower(): value for name, value in json.loads(answer.text).items()}
    assert seen["host"] == "localhost:3000"
    assert seen["cookie"] == "theirs=1"  # the app's own cookies, never the preview session's
    assert seen["authorization"] == "Bearer app"
    assert seen["x-forwarded-host"] == target.netloc


def test_the_handshake_code_works_once_and_only_for_its_host(portal, owned):
    client, sandbox_id = owned
    target = urlsplit(open_door(portal, client, sandbox_id).headers["location"])
    visit = PreviewVisit(server=portal, host=target.netloc)
    code_path = f"{target.path}?{target.query}"

    assert visit.get(code_path).status_code == 303
    replay = visit.get(code_path)
    assert replay.status_code == 400 and "set-cookie" not in replay.headers

    other_port = PreviewVisit(server=portal, host=target.netloc.replace("3000-", "3001-", 1))
    fresh = urlsplit(open_door(portal, client, sandbox_id).headers["location"])
    assert other_port.get(f"{fresh.path}?{fresh.query}").status_code == 400
    code = parse_qs(fresh.query)["code"][0]
    assert visit.get(f"{fresh.path}?code={code[:-2]}xx").status_code == 400


def test_visitors_without_the_session_are_sent_to_the_portal_and_others_get_404(portal, owned):
    client, sandbox_id = owned
    host = f"3000-{sandbox_id}.localhost:{urlsplit(portal).port}"
    stranger = PreviewVisit(server=portal, host=host)

    page = stranger.get("/secret?x=1", headers={"Sec-Fetch-Mode": "navigate"})
    assert page.status_code == 303
    assert page.headers["location"].startswith(f"{portal}/sandboxes/{sandbox_id}/preview/?port=3000&next=")
    fetched = stranger.get("/api/data", headers={"Sec-Fetch-Mode": "cors", "Accept": "*/*"})
    assert fetched.status_code == 401 and "www-authenticate" not in fetched.headers

    forged = PreviewVisit(server=portal, host=host, cookie="joepro_preview=1:forged:sig")
    assert forged.get("/", headers={"Sec-Fetch-Mode": "navigate"}).status_code == 303

    teammate = signed_in(make_user("teammate@example.com"))
    assert open_door(portal, teammate, sandbox_id).status_code == 404
    theirs = sign_in_to_preview(portal, teammate, launch(teammate).json()["sandbox"]["id"])
    stolen = PreviewVisit(server=portal, host=host, cookie=theirs.cookie)  # a session for another host
    assert stolen.get("/", headers={"Sec-Fetch-Mode": "navigate"}).status_code == 303


def test_the_app_cannot_prompt_for_passwords_refresh_away_or_set_the_portals_headers(portal, owned):
    client, sandbox_id = owned
    visit = sign_in_to_preview(portal, client, sandbox_id)

    prompt = visit.get("/prompt")
    assert prompt.status_code == 401 and "www-authenticate" not in prompt.headers

    hostile = visit.get("/hostile")
    assert hostile.text == "hostile" and hostile.headers["x-app"] == "yes"
    assert "refresh" not in hostile.headers
    assert hostile.headers["x-frame-options"] == "SAMEORIGIN"
    assert hostile.headers["x-content-type-options"] == "nosniff"
    assert hostile.headers["cache-control"] == "private, no-cache"
    assert not any(name.startswith("x-daytona") for name in hostile.headers)
    cookies = hostile.headers.get_list("set-cookie")
    assert "tossed=1; Path=/" in cookies  # its own host only
    assert "app_session=ok; Path=/; HttpOnly" in cookies
    assert not any(cookie.startswith("joepro_preview") for cookie in cookies)

    assert visit.get("/go").headers["location"] == "/landed?x=1"
    assert visit.get("/go-local").headers["location"] == "/landed"
    away = visit.get("/go-away")
    assert away.status_code == 200 and "location" not in away.headers
    assert "another site" in away.text and "https://phish.example/login" in away.text


def test_bodies_stream_both_ways(portal, owned):
    client, sandbox_id = owned
    visit = sign_in_to_preview(portal, client, sandbox_id)

    arrivals = visit.arrivals("/stream")
    assert b"".join(chunk for chunk, _ in arrivals) == b"first second"
    assert arrivals[0][0] == b"first " and arrivals[-1][1] - arrivals[0][1] > 0.5

    posted = visit.request("POST", "/form", content=b"name=value")
    assert posted.status_code == 201 and posted.text == "got name=value"


def test_websockets_reach_the_app_from_the_previews_own_pages_only(portal, owned):
    client, sandbox_id = owned
    visit = sign_in_to_preview(portal, client, sandbox_id)

    with visit.websocket("/hmr") as socket:
        socket.send("hello")
        assert socket.recv(timeout=5) == "echo hello"
        socket.send(b"\x00\x01")
        assert socket.recv(timeout=5) == b"echo \x00\x01"
        socket.send("close-me")
        with pytest.raises(ConnectionClosed) as closed:
            socket.recv(timeout=5)
    assert closed.value.rcvd.code == 4001

    for origin, cookie in ((portal, None), ("http://evil.localhost", None), (visit.origin, "")):
        with pytest.raises(InvalidStatus) as refused:
            visit.websocket("/hmr", origin=origin, cookie=cookie).close()
        assert refused.value.response.status_code == 403


def test_a_stop_ends_the_preview_session(portal, owned):
    client, sandbox_id = owned
    visit = sign_in_to_preview(portal, client, sandbox_id)
    get_provider("local").stop(sandbox_id, wait_seconds=5)
    get_provider("local").start(sandbox_id, wait_seconds=5)
    start_app(sandbox_id, "owner")
    time.sleep(5.2)  # the relay keeps routes for 5 s

    again = visit.get("/", headers={"Sec-Fetch-Mode": "navigate"})
    assert again.status_code == 303 and again.headers["location"].startswith(portal)  # signed in anew
    assert sign_in_to_preview(portal, client, sandbox_id).get("/").status_code == 200


def test_open_requests_are_bounded_per_client(portal, owned, settings):
    settings.SANDBOX_PREVIEW_CONNECTIONS_PER_CLIENT = 2
    client, sandbox_id = owned
    visit = sign_in_to_preview(portal, client, sandbox_id)
    with visit.stream("/forever") as first, visit.stream("/forever") as second:
        assert first.status_code == second.status_code == 200
        refused = visit.get("/")
        assert refused.status_code == 429 and refused.headers["retry-after"] == "5"
    deadline = time.monotonic() + 5
    while visit.get("/").status_code == 429 and time.monotonic() < deadline:
        time.sleep(0.1)  # the relay notices the closed streams
    assert visit.get("/").status_code == 200


def test_held_open_previews_hold_no_database_connection(portal, owned, settings):
    """Streaming answers and idle apps once kept a pooled database connection each, so a few
    dozen open previews timed out everyone else."""
    from django.db import connections

    settings.SANDBOX_PREVIEW_CONNECTIONS_PER_CLIENT = 100
    settings.SANDBOX_PREVIEW_CONNECTIONS_PER_SANDBOX = 100
    client, sandbox_id = owned
    visit = sign_in_to_preview(portal, client, sandbox_id)
    started = threading.Barrier(31)
    release = threading.Event()

    def hold():
        with visit.stream("/forever") as response:
            next(response.iter_raw())
            started.wait(30)
            release.wait(60)

    holders = [threading.Thread(target=hold, daemon=True) for _ in range(30)]
    for holder in holders:
        holder.start()
    try:
        started.wait(30)
        if connections["default"].vendor == "postgresql":
            stats = connections["default"].pool.get_stats()
            assert stats["pool_size"] - stats["pool_available"] <= 1, stats
        other = signed_in(make_user("other@example.com"))
        began = time.monotonic()
        answer = launch(other)
        assert answer.status_code in (200, 202) and time.monotonic() - began < 10
    finally:
        release.set()
        for holder in holders:
            holder.join(10)


def test_nothing_listening_shows_how_to_start_the_app(portal):
    client = signed_in(make_user("owner@example.com"))
    sandbox_id = launch(client).json()["sandbox"]["id"]
    visit = sign_in_to_preview(portal, client, sandbox_id, port=5173)

    page = visit.get("/")

    assert page.status_code == 502
    assert "port 5173" in page.text and "python3 -m http.server 5173" in page.text
    assert "default-src 'none'" in page.headers["content-security-policy"]


def test_handshake_codes_never_reach_the_access_log():
    import logging

    import joepro.asgi  # noqa: F401 - installs the filter

    record = logging.LogRecord(
        "uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5000", "GET", "/_joepro/handshake?code=eyJzIjoi.secret&x=1", "1.1", 303), None,
    )  # fmt: skip
    for log_filter in logging.getLogger("uvicorn.access").filters:
        log_filter.filter(record)
    assert "secret" not in record.getMessage() and "code=[redacted]&x=1" in record.getMessage()
