"""What moves ``lastActivityAt``, through the real SDK, raw requests and the fake's SSH hook:
proxied requests (unless they carry ``X-Daytona-Skip-Last-Activity-Update: true``), the
50 s re-posts of an open websocket, the 45 s re-posts of an SSH session, explicit posts and
state changes, and not plain REST calls; posts throttled (5 s), flushed every 10 s, and the
fake's auto-stop reading what was flushed. The clock is moved by hours: re-posts are worked
out from when each connection opened.

Read from Daytona's open-source proxy, SSH gateway and API (v0.190.0); the hosted service
may differ, notably in the proxy's 45 s "already posted" cache, which the fake keeps."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from tests.daytona_fixtures import _create, _parse, sdk  # noqa: F401 - fixtures
from tests.fake_daytona.fixtures import FAKE_DAYTONA_API_KEY, fake_daytona, fake_daytona_server  # noqa: F401
from tests.fake_daytona.wire import RawWebSocket, http, ws_url

AUTH = {"Authorization": f"Bearer {FAKE_DAYTONA_API_KEY}"}
SKIP = {"X-Daytona-Skip-Last-Activity-Update": "true"}
HOUR = 3600


def _align(fake, offset: float = 1.0) -> None:
    """Move the clock to ``offset`` seconds past a flush (a multiple of 10 s)."""
    fake.advance_clock((offset - fake.clock.time() % 10) % 10)


def _last_activity(fake, sandbox_id: str) -> float:
    return _parse(fake.sandbox(sandbox_id)["lastActivityAt"]).timestamp()


def _close_to(value: float, expected: float) -> bool:
    return abs(value - expected) < 0.002  # lastActivityAt has milliseconds


def _outcomes(fake, sandbox_id: str) -> list[tuple[str, str]]:
    return [(post.source, post.outcome) for post in fake.activity_posts(sandbox_id)]


def _wait_closed(fake, sandbox_id: str) -> None:
    deadline = time.monotonic() + 5
    while fake.activity.open_connections(sandbox_id) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert fake.activity.open_connections(sandbox_id) == {}


def _stamp(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat()


# ----- what counts ------------------------------------------------------------------------


def test_rest_calls_do_not_count_and_state_changes_count_at_once(fake_daytona, sdk):  # noqa: F811
    sandbox = _create(sdk)
    created = _last_activity(fake_daytona, sandbox.id)
    fake_daytona.advance_clock(600)
    sdk.get(sandbox.id)
    list(sdk.list())
    sandbox.set_labels({"portal-user": "42", "code-toolbox-language": "python"})
    sandbox.get_preview_link(3000)
    sandbox.create_signed_preview_url(3000, expires_in_seconds=60)
    sandbox.create_ssh_access(expires_in_minutes=30)
    fake_daytona.advance_clock(20)
    assert _close_to(_last_activity(fake_daytona, sandbox.id), created)
    assert fake_daytona.activity_posts(sandbox.id) == []

    sandbox.stop(timeout=10)  # written to the database directly: no lag
    assert abs(_last_activity(fake_daytona, sandbox.id) - fake_daytona.now().timestamp()) < 1


def test_explicit_posts_are_throttled_and_show_after_the_next_flush(fake_daytona, sdk):  # noqa: F811
    sandbox = _create(sdk)
    created = _last_activity(fake_daytona, sandbox.id)
    fake_daytona.advance_clock(600)
    _align(fake_daytona)
    sandbox.refresh_activity()
    fake_daytona.advance_clock(2)
    sandbox.refresh_activity()  # within 5 s of the last one taken
    assert _outcomes(fake_daytona, sandbox.id) == [("explicit", "accepted"), ("explicit", "throttled")]
    assert _close_to(_last_activity(fake_daytona, sandbox.id), created)  # buffered, not flushed yet
    fake_daytona.advance_clock(8)
    posted = fake_daytona.activity_posts(sandbox.id)[0].at
    assert _close_to(_last_activity(fake_daytona, sandbox.id), posted)

    sandbox.stop(timeout=10)
    fake_daytona.advance_clock(HOUR)
    _align(fake_daytona)
    raw = http("POST", f"{fake_daytona.api_url}/sandbox/{sandbox.id}/last-activity", headers=AUTH, body=b"")
    assert (raw.status, raw.text) == (201, "")  # in any state
    fake_daytona.advance_clock(10)
    assert _close_to(_last_activity(fake_daytona, sandbox.id), fake_daytona.activity_posts(sandbox.id)[-1].at)


def test_toolbox_requests_count_unless_they_skip_and_the_proxy_posts_once_per_45s(fake_daytona, sdk):  # noqa: F811
    sandbox = _create(sdk)
    pty_list = f"{fake_daytona.toolbox_url}/{sandbox.id}/process/pty"
    fake_daytona.advance_clock(600)
    _align(fake_daytona)

    assert http("GET", pty_list, headers={**AUTH, **SKIP}).status == 200
    assert fake_daytona.activity_posts(sandbox.id) == []
    sandbox.process.list_pty_sessions()
    skipped, counted = [r for r in fake_daytona.requests if r.operation == "pty_list"]
    assert (skipped.skips_activity, counted.skips_activity) == (True, False)
    fake_daytona.advance_clock(10)
    first = fake_daytona.activity_posts(sandbox.id)[0]
    assert (first.source, first.outcome) == ("toolbox", "accepted")
    assert _close_to(_last_activity(fake_daytona, sandbox.id), first.at)

    fake_daytona.advance_clock(20)
    sandbox.process.list_pty_sessions()  # the proxy posted for this sandbox 30 s ago
    fake_daytona.advance_clock(30)
    sandbox.process.list_pty_sessions()
    assert _outcomes(fake_daytona, sandbox.id) == [
        ("toolbox", "accepted"),
        ("toolbox", "cached"),
        ("toolbox", "accepted"),
    ]

    # A stopped sandbox's request is refused by the runner after the proxy posted; an
    # archived one's by the proxy before it.
    sandbox.stop(timeout=10)
    fake_daytona.advance_clock(60)
    assert http("GET", pty_list, headers=AUTH).status == 400
    assert _outcomes(fake_daytona, sandbox.id)[-1] == ("toolbox", "accepted")
    sandbox.archive()
    fake_daytona.advance_clock(60)
    assert http("GET", pty_list, headers=AUTH).status == 400
    assert len(fake_daytona.activity_posts(sandbox.id)) == 4


def test_preview_loads_count_but_not_the_warning_page_or_a_refusal(fake_daytona, sdk):  # noqa: F811
    sandbox = _create(sdk)
    signed = sandbox.create_signed_preview_url(3000, expires_in_seconds=HOUR)
    browser_agent = {"User-Agent": "Mozilla/5.0 (X11; Linux x86_64) Chrome/126.0 Safari/537.36"}
    assert "Warning" in http("GET", signed.url, headers=browser_agent).text
    assert http("GET", f"{fake_daytona.url}/preview/0000000000000000/").status == 401
    assert http("GET", signed.url, headers=SKIP).status == 200
    assert fake_daytona.activity_posts(sandbox.id) == []
    assert http("GET", signed.url).status == 200
    assert _outcomes(fake_daytona, sandbox.id) == [("preview", "accepted")]
    previews = [r.skips_activity for r in fake_daytona.requests if r.operation == "preview"]
    assert previews == [False, False, True, False]


# ----- connections that stay open ---------------------------------------------------------


def test_an_open_pty_reposts_every_50s_for_hours_even_when_idle(fake_daytona, sdk):  # noqa: F811
    sandbox = _create(sdk, auto_stop_interval=15)
    _align(fake_daytona)
    handle = sandbox.process.create_pty_session("term")
    opened = fake_daytona.activity_posts(sandbox.id)[0]
    assert (opened.source, opened.outcome) == ("pty", "accepted")

    fake_daytona.advance_clock(3 * HOUR + 25)
    assert _close_to(_last_activity(fake_daytona, sandbox.id), opened.at + 3 * HOUR)
    assert fake_daytona.run_autostop() == []
    assert _outcomes(fake_daytona, sandbox.id) == [("pty", "accepted")] * (1 + int(3 * HOUR / 50))

    handle.disconnect()
    _wait_closed(fake_daytona, sandbox.id)
    fake_daytona.advance_clock(15 * 60)
    assert fake_daytona.run_autostop() == [sandbox.id]
    assert fake_daytona.sandbox(sandbox.id)["state"] == "stopped"


def test_a_pty_opened_with_the_skip_header_keeps_nothing_alive(fake_daytona, sdk):  # noqa: F811
    sandbox = _create(sdk, auto_stop_interval=15)
    url = ws_url(f"{fake_daytona.toolbox_url}/{sandbox.id}/process/pty/create-connect?id=bridge")
    ws = RawWebSocket(url, headers={**AUTH, **SKIP})
    assert ws.status == 101
    assert [r.skips_activity for r in fake_daytona.requests if r.operation == "pty_create"] == [True]

    fake_daytona.advance_clock(16 * 60)
    assert fake_daytona.activity_posts(sandbox.id) == []
    assert fake_daytona.run_autostop() == [sandbox.id]
    frames, ending = ws.read_until_end()
    assert ending == "eof"  # the stop ended the session under the open websocket


def test_ssh_sessions_repost_every_45s_until_closed_or_stopped(fake_daytona, sdk):  # noqa: F811
    sandbox = _create(sdk, auto_stop_interval=15)
    _align(fake_daytona)
    session = fake_daytona.open_ssh_session(sandbox.id)
    opened = fake_daytona.activity_posts(sandbox.id)[0]
    assert (opened.source, opened.outcome) == ("ssh", "accepted")

    fake_daytona.advance_clock(HOUR + 10)  # nobody typed: a dead session posts all the same
    assert _close_to(_last_activity(fake_daytona, sandbox.id), opened.at + HOUR)
    assert len(fake_daytona.activity_posts(sandbox.id)) == 1 + int(HOUR / 45)
    assert fake_daytona.run_autostop() == []

    session.close()
    fake_daytona.advance_clock(16 * 60)
    assert fake_daytona.run_autostop() == [sandbox.id]

    sandbox.start(timeout=10)
    with fake_daytona.open_ssh_session(sandbox.id):
        assert fake_daytona.activity.open_connections(sandbox.id) == {"ssh": 1}
        sandbox.stop(timeout=10)  # the gateway's channel closes with the container
        assert fake_daytona.activity.open_connections(sandbox.id) == {}


def test_another_process_opens_ssh_sessions_and_reads_posts_over_http(fake_daytona, sdk):  # noqa: F811
    sandbox = _create(sdk)
    other = _create(sdk, name="u-43")
    other.stop(timeout=10)
    hook = f"{fake_daytona.url}/__ssh"

    def post(url: str, body: str):
        answer = http("POST", url, headers={"Content-Type": "application/json"}, body=body.encode())
        return answer.status, answer.json()

    status, opened = post(hook, f'{{"action": "open", "sandbox_id": "{sandbox.id}"}}')
    assert status == 200 and isinstance(opened["session"], int)
    assert fake_daytona.activity.open_connections(sandbox.id) == {"ssh": 1}
    assert post(hook, f'{{"action": "close", "session": {opened["session"]}}}') == (200, {})
    assert fake_daytona.activity.open_connections(sandbox.id) == {}
    assert post(hook, f'{{"action": "open", "sandbox_id": "{other.id}"}}')[0] == 400
    assert post(hook, '{"action": "open", "sandbox_id": "nope"}')[0] == 404

    seen = http("GET", f"{fake_daytona.url}/__activity?sandbox={sandbox.id}").json()
    assert [(p["source"], p["outcome"]) for p in seen["posts"]] == [("ssh", "accepted")]
    assert post(f"{fake_daytona.url}/__activity", '{"switches": {"ssh": false}}')[1]["switches"]["ssh"] is False
    assert post(hook, f'{{"action": "open", "sandbox_id": "{sandbox.id}"}}') == (200, {"session": None})


# ----- knobs and the fake's own auto-stop -------------------------------------------------


def test_sources_can_be_switched_off_and_the_proxy_cache_turned_off(fake_daytona, sdk):  # noqa: F811
    sandbox = _create(sdk)
    fake_daytona.pty_counts_as_activity = False
    fake_daytona.activity_switches["explicit"] = False
    sandbox.process.create_pty_session("term").disconnect()
    sandbox.refresh_activity()
    assert fake_daytona.activity_posts(sandbox.id) == []

    fake_daytona.proxy_activity_cache_seconds = 0
    sandbox.process.list_pty_sessions()
    fake_daytona.advance_clock(2)
    sandbox.process.list_pty_sessions()  # not cached by the proxy, throttled by the API
    fake_daytona.advance_clock(4)
    sandbox.process.list_pty_sessions()
    assert [o for _, o in _outcomes(fake_daytona, sandbox.id)] == ["accepted", "throttled", "accepted"]


def test_the_fakes_auto_stop_reads_only_what_was_flushed(fake_daytona, sdk):  # noqa: F811
    sandbox = _create(sdk, auto_stop_interval=15)
    fake_daytona.advance_clock(16 * 60)
    _align(fake_daytona)
    sandbox.refresh_activity()  # taken, but not in the database before the next flush
    assert fake_daytona.run_autostop() == [sandbox.id]  # as daytonaio/daytona#5154 describes

    sandbox.start(timeout=10)
    fake_daytona.set_state(sandbox.id, "started", lastActivityAt=_stamp(fake_daytona.now().timestamp() - 16 * 60))
    assert fake_daytona.run_autostop() == [sandbox.id]
