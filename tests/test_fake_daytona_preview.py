"""Preview links through the fake's proxy, minted with the real SDK: expiring answers 201,
the order of the proxy's checks, the cookie a signed link leaves behind (a browser keeps
access for up to an hour after the link expires), the login redirect and the warning page.

Read from Daytona's open-source proxy (v0.190.0). Not verified against the hosted service:
API clients getting 401 JSON instead of the 307 (seen in reports, not in that code; the fake
tells them apart by User-Agent and Accept), and whether its user-agent parser takes
headless Chromium for a browser (the fake does). The fake's addressing stands in for
hostnames: ``/preview/<token>/`` for ``https://<port>-<token>.<domain>/`` and
``/proxy/<port>-<id>/`` for ``https://<port>-<id>.<domain>/``, cookies scoped to that path."""

from __future__ import annotations

import re

import pytest
from daytona import DaytonaNotFoundError

from tests.daytona_fixtures import _create, sdk  # noqa: F401 - fixtures
from tests.fake_daytona.fixtures import FAKE_DAYTONA_API_KEY, fake_daytona, fake_daytona_server  # noqa: F401
from tests.fake_daytona.wire import BROWSER_AGENT, Browser, http

AUTH = {"Authorization": f"Bearer {FAKE_DAYTONA_API_KEY}"}
SKIP_WARNING = {"X-Daytona-Skip-Preview-Warning": "true"}


def _expire(fake, sandbox_id: str, port: int, token: str):
    url = f"{fake.api_url}/sandbox/{sandbox_id}/ports/{port}/signed-preview-url/{token}/expire"
    return http("POST", url, headers=AUTH, body=b"")


# ----- minting and expiring ---------------------------------------------------------------


def test_expire_answers_201_without_a_body_even_for_an_unknown_token(fake_daytona, sdk):  # noqa: F811
    sandbox = _create(sdk)
    signed = sandbox.create_signed_preview_url(3000, expires_in_seconds=120)
    assert re.fullmatch(r"[a-z0-9]{16}", signed.token) and signed.port == 3000
    assert signed.url == f"{fake_daytona.url}/preview/{signed.token}/"

    wrong_port = _expire(fake_daytona, sandbox.id, 8080, signed.token)
    assert (wrong_port.status, wrong_port.text) == (201, "")
    assert http("GET", signed.url).status == 200  # the key is <port>:<token>: still valid
    answer = _expire(fake_daytona, sandbox.id, 3000, signed.token)
    assert (answer.status, answer.text, answer.headers.get("Content-Length")) == (201, "", "0")
    assert http("GET", signed.url).status == 401
    assert _expire(fake_daytona, sandbox.id, 3000, "0000000000000000").status == 201
    assert _expire(fake_daytona, "no-such-sandbox", 3000, signed.token).status == 404

    again = sandbox.create_signed_preview_url(3000, expires_in_seconds=60)
    assert sandbox.expire_signed_preview_url(3000, again.token) is None  # the SDK takes the 201
    assert sandbox.expire_signed_preview_url(3000, again.token) is None  # and again: nothing to expire
    sandbox.delete()
    with pytest.raises(DaytonaNotFoundError):
        sandbox.expire_signed_preview_url(3000, again.token)


def test_signed_links_outlive_a_stop_but_only_a_running_sandbox_serves(fake_daytona, sdk):  # noqa: F811
    sandbox = _create(sdk)
    sandbox.stop(timeout=10)
    signed = sandbox.create_signed_preview_url(3000, expires_in_seconds=600)  # minted while stopped
    stopped = http("GET", signed.url + "index.html")
    assert stopped.status == 400
    assert stopped.json()["message"].endswith("no IP address found. Is the Sandbox started?")
    assert stopped.json()["path"] == f"/sandboxes/{sandbox.id}/toolbox/proxy/3000/index.html"
    sandbox.archive()
    assert http("GET", signed.url).json()["message"] == (
        f"bad request: failed to get runner info: Sandbox with ID {sandbox.id} does not have a runner"
    )
    sandbox.start(timeout=10)
    page = http("GET", signed.url + "index.html")
    assert (page.status, "Preview of u-42 port 3000" in page.text) == (200, True)
    terminal = sandbox.create_signed_preview_url(22222, expires_in_seconds=60)
    assert "Daytona web terminal for u-42" in http("GET", terminal.url).text


# ----- the proxy's checks -----------------------------------------------------------------


def test_a_good_signed_token_sets_an_hour_long_http_only_cookie(fake_daytona, sdk):  # noqa: F811
    sandbox = _create(sdk)
    signed = sandbox.create_signed_preview_url(3000, expires_in_seconds=120)
    answer = http("GET", signed.url)
    assert answer.status == 200
    [cookie] = answer.set_cookies()
    name, _, rest = cookie.partition("=")
    assert name == f"daytona-sandbox-auth-{signed.token}"
    attributes = {part.strip().split("=")[0].lower(): part for part in rest.split(";")[1:]}
    assert "httponly" in attributes
    assert attributes["max-age"].strip() == "Max-Age=3600"
    assert attributes["path"].strip() == f"Path=/preview/{signed.token}"


def test_a_browser_keeps_access_for_an_hour_after_the_link_is_expired(fake_daytona, sdk):  # noqa: F811
    sandbox = _create(sdk)
    signed = sandbox.create_signed_preview_url(3000, expires_in_seconds=120)
    browser = Browser()
    assert browser.get(signed.url, SKIP_WARNING).status == 200

    sandbox.expire_signed_preview_url(3000, signed.token)
    assert browser.get(signed.url + "app.js", SKIP_WARNING).status == 200  # the cookie is checked first
    stranger = Browser().get(signed.url, SKIP_WARNING)
    assert stranger.status == 307

    fake_daytona.advance_clock(3000)  # the link itself would be long expired
    assert browser.get(signed.url, SKIP_WARNING).status == 200
    fake_daytona.advance_clock(601)  # the proxy refuses the cookie after an hour
    late = browser.get(signed.url, SKIP_WARNING)
    assert late.status == 307

    sandbox.stop(timeout=10)  # a stop is what cuts a browser off early
    fresh = sandbox.create_signed_preview_url(3000, expires_in_seconds=120)
    holder = Browser()
    assert holder.get(fresh.url, SKIP_WARNING).status == 400
    assert holder.cookies  # set even on the runner's refusal
    assert holder.get(fresh.url, SKIP_WARNING).status == 400


def test_failed_checks_redirect_browsers_and_refuse_api_clients(fake_daytona, sdk):  # noqa: F811
    sandbox = _create(sdk)
    signed = sandbox.create_signed_preview_url(3000, expires_in_seconds=60)
    fake_daytona.advance_clock(61)

    redirect = Browser().get(signed.url, SKIP_WARNING)
    assert redirect.status == 307
    assert redirect.headers["Location"].startswith(f"{fake_daytona.url}/oidc/authorize?")
    assert http("GET", redirect.headers["Location"]).status == 200  # the login page
    # An HTML navigation without a browser User-Agent is redirected too.
    assert http("GET", signed.url, headers={"Accept": "text/html"}).status == 307

    api = http("GET", signed.url)
    assert api.status == 401
    body = api.json()
    assert (body["statusCode"], body["code"], body["message"]) == (
        401,
        "UNAUTHORIZED",
        "unauthorized: authentication failed: Invalid or expired token",
    )
    assert http("GET", f"{fake_daytona.url}/preview/0000000000000000/").status == 401


def test_the_checks_run_in_the_proxys_order(fake_daytona, sdk):  # noqa: F811
    sandbox = _create(sdk)
    link = sandbox.get_preview_link(3000)
    assert link.url == f"{fake_daytona.url}/proxy/3000-{sandbox.id}/"

    assert http("GET", link.url, headers=AUTH).status == 200
    assert http("GET", link.url, headers={"X-Daytona-Preview-Token": link.token}).status == 200
    query = http("GET", f"{link.url}?DAYTONA_SANDBOX_AUTH_KEY={link.token}")
    assert (query.status, query.set_cookies()) == (200, [])  # the query key sets no cookie
    wrong = http("GET", link.url, headers={"X-Daytona-Preview-Token": "nope", "Authorization": "Bearer nope"})
    assert wrong.json()["message"] == (
        "unauthorized: authentication failed: Bearer token is invalid,Auth key header is invalid,"
        "Invalid or expired token"
    )
    # On a signed link a bearer key names no sandbox; the signed token, checked last, still opens it.
    signed = sandbox.create_signed_preview_url(3000, expires_in_seconds=60)
    assert http("GET", signed.url, headers=AUTH).status == 200

    sandbox.stop(timeout=10)
    sandbox.start(timeout=10)
    assert http("GET", link.url, headers={"X-Daytona-Preview-Token": link.token}).status == 401  # rotated
    sandbox.set_public(True)
    assert http("GET", link.url).status == 200  # public: no check, except on the protected ports
    terminal = f"{fake_daytona.url}/proxy/22222-{sandbox.id}/"
    assert http("GET", terminal).status == 401


# ----- the warning page -------------------------------------------------------------------


def test_browsers_see_the_warning_page_first_except_on_daytonas_ports(fake_daytona, sdk):  # noqa: F811
    sandbox = _create(sdk)
    signed = sandbox.create_signed_preview_url(3000, expires_in_seconds=600)
    browser = Browser()

    warning = browser.get(signed.url + "page?x=1")
    assert warning.status == 200 and "<title>Daytona Preview - Warning</title>" in warning.text
    assert warning.headers["Content-Security-Policy"].startswith("default-src 'none'")
    assert browser.cookies == {}  # shown before any authentication
    assert "Warning" in Browser().get(f"{fake_daytona.url}/preview/0000000000000000/").text

    assert "Preview of" in browser.get(signed.url, SKIP_WARNING).text
    assert "Preview of" in http("GET", signed.url, headers={"User-Agent": "curl/8.5.0"}).text
    terminal = sandbox.create_signed_preview_url(22222, expires_in_seconds=60)
    assert "web terminal" in Browser().get(terminal.url).text

    action = re.search(r'action="([^"]+)"', warning.text).group(1).replace("&amp;", "&")
    accepted = browser.post(f"{fake_daytona.url}{action}")
    assert (accepted.status, accepted.headers["Location"]) == (302, f"{signed.url}page?x=1")
    assert browser.cookies["daytona-preview-page-accepted"].path == f"/preview/{signed.token}"
    assert "Preview of" in browser.get(signed.url).text
    other = sandbox.create_signed_preview_url(3000, expires_in_seconds=60)
    assert "Warning" in browser.get(other.url).text  # accepted per preview host
    evil = browser.post(f"{signed.url}accept-daytona-preview-warning?redirect=http://evil.example/")
    assert evil.headers["Location"] == f"/preview/{signed.token}/"

    fake_daytona.preview_warning = False
    assert "Preview of" in Browser().get(other.url).text
    assert BROWSER_AGENT.startswith("Mozilla/5.0")
