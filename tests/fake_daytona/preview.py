"""The preview proxy: signed links and standard links, as Daytona's proxy serves them.

Hostnames per sandbox are not available on loopback, so a path prefix on the fake's own host
stands for each preview host, and cookies are scoped to that prefix instead of the host:

=====================================  ============================================
Daytona                                the fake
=====================================  ============================================
``https://<port>-<token>.<domain>/p``  ``http://127.0.0.1:<fake port>/preview/<token>/p``
``https://<port>-<id>.<domain>/p``     ``http://127.0.0.1:<fake port>/proxy/<port>-<id>/p``
cookie ``Domain=.<that host>``         cookie ``Path=/preview/<token>`` (or ``/proxy/...``)
OIDC login page                        ``/oidc/authorize`` (a page saying so)
=====================================  ============================================

What a request meets, in the order of ``apps/proxy`` (v0.190.0):

1. A browser (by User-Agent) sees the warning page first, unless the request carries
   ``X-Daytona-Skip-Preview-Warning: true``, is a websocket, has the acceptance cookie
   (``POST <prefix>/accept-daytona-preview-warning`` sets it for a day) or is for port
   22222, 2280 or 33333. The page comes before any authentication.
2. A public sandbox's standard link needs no authentication (except on those three ports).
3. Authentication, in order: bearer API key; ``X-Daytona-Preview-Token``;
   ``?DAYTONA_SANDBOX_AUTH_KEY=``; the cookie ``daytona-sandbox-auth-<token or id>``; then
   the signed token, whose success sets that cookie (HttpOnly, Max-Age 3600, signed and
   dated like gorilla/securecookie, so the server refuses it after an hour too). The cookie
   is checked before the token: a browser keeps access for up to an hour after the link
   expires or is expired early. Failing all: 307 to the login page for a browser or a
   request accepting HTML, 401 JSON for other clients (see :func:`.proxy.is_navigation`).
4. The runner lookup (400 for an archived sandbox), an activity post unless
   ``X-Daytona-Skip-Last-Activity-Update: true``, the runner's IP check (400 when stopped),
   then the page, a stand-in for what the sandbox serves on that port.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import json
import secrets
from dataclasses import dataclass, field
from urllib.parse import quote, urlencode, urlsplit

from aiohttp import web

from .activity import skips_activity
from .apps import forward
from .middleware import fake_of
from .proxy import (
    ProxyRefusal,
    check_key_or_preview_token,
    is_browser,
    is_navigation,
    is_websocket,
    runner_info_refusal,
    runner_refusal,
    unauthorized,
)

TERMINAL_PORT = 22222
PROTECTED_PORTS = frozenset({22222, 2280, 33333})  # terminal, toolbox, recording dashboard
AUTH_COOKIE_PREFIX = "daytona-sandbox-auth-"
AUTH_COOKIE_SECONDS = 3600
SKIP_WARNING_HEADER = "X-Daytona-Skip-Preview-Warning"
ACCEPTED_COOKIE = "daytona-preview-page-accepted"
ACCEPTED_COOKIE_SECONDS = 86400
ACCEPT_PATH = "/accept-daytona-preview-warning"
LOGIN_PATH = "/oidc/authorize"

# Signs the auth cookies; a fresh secret per process, as each proxy has its key.
_COOKIE_SECRET = secrets.token_bytes(32)


@dataclass
class PreviewHost:
    """What the request's "hostname" says: ``key`` is the signed token or the sandbox id."""

    key: str
    port: int | None
    prefix: str
    signed: bool
    tail: str
    cookies: list[tuple[str, str]] = field(default_factory=list)


class LoginRedirect(Exception):
    """Authentication failed for a browser: 307 to the login page."""


def add_preview_routes(app: web.Application) -> None:
    add = app.router.add_route
    add("*", "/preview/{token}", open_signed_preview)
    add("*", "/preview/{token}/{tail:.*}", open_signed_preview)
    add("*", "/proxy/{slug}", open_standard_preview)
    add("*", "/proxy/{slug}/{tail:.*}", open_standard_preview)
    add("GET", LOGIN_PATH, login_page)


async def open_signed_preview(request: web.Request) -> web.StreamResponse:
    """``/preview/<token>/...``: the port is the one the token was minted for."""
    fake = fake_of(request)
    token = request.match_info["token"]
    prefix = f"/preview/{token}"
    host = PreviewHost(token, fake.store.signed_preview_port(token), prefix, True, _tail(request, prefix))
    return await _serve(request, host)


async def open_standard_preview(request: web.Request) -> web.StreamResponse:
    """``/proxy/<port>-<sandboxId>/...``."""
    fake = fake_of(request)
    slug = request.match_info["slug"]
    port_text, _, sandbox_id = slug.partition("-")
    if not port_text.isdigit() or not sandbox_id:
        fake._record("preview", request)
        return ProxyRefusal(404, "not found: not found").response(request, fake.clock.time())
    prefix = f"/proxy/{slug}"
    host = PreviewHost(sandbox_id, int(port_text), prefix, False, _tail(request, prefix))
    return await _serve(request, host)


async def login_page(request: web.Request) -> web.Response:
    """Where a failed check sends a browser (Daytona's OIDC sign-in)."""
    return web.Response(text=_html("Sign in to Daytona", "Sign in to Daytona"), content_type="text/html")


async def _serve(request: web.Request, host: PreviewHost) -> web.StreamResponse:
    fake = fake_of(request)
    fake._record("preview", request)
    if request.method == "POST" and host.tail == ACCEPT_PATH:
        return _accept_warning(request, host)
    if _shows_warning(fake, request, host):
        return _warning_page(request, host)
    try:
        sandbox_id = _authenticate(fake, request, host)
        refusal = runner_info_refusal(fake, sandbox_id)
        if refusal is not None:
            raise refusal
        if not skips_activity(request.headers):
            fake.activity.proxied_request(sandbox_id, "preview")
        refusal = runner_refusal(fake, sandbox_id, f"/sandboxes/{sandbox_id}/toolbox/proxy/{host.port}{host.tail}")
        if refusal is not None:
            raise refusal
        app = fake.apps.lookup(sandbox_id, host.port)
        if app is not None:
            return await forward(fake, request, sandbox_id, app, host.tail, host.cookies)
        response: web.StreamResponse = _page(fake.store.sandbox_name_of(sandbox_id) or sandbox_id, host.port)
    except ProxyRefusal as refusal:
        response = refusal.response(request, fake.clock.time())
    except LoginRedirect:
        response = web.Response(status=307, headers={"Location": _login_url(fake, request, host)})
    # The proxy sets the cookie on the context before forwarding, so any answer carries it.
    for name, value in host.cookies:
        response.set_cookie(name, value, max_age=AUTH_COOKIE_SECONDS, path=host.prefix, httponly=True)
    return response


def _authenticate(fake: object, request: web.Request, host: PreviewHost) -> str:
    """The proxy's ``Authenticate``: the sandbox id, or LoginRedirect / a 401 refusal."""
    if not host.signed and host.port not in PROTECTED_PORTS and fake.store.is_public(host.key):
        return host.key
    errors = check_key_or_preview_token(fake, request, host.key)
    if errors is None:
        return host.key
    now = fake.clock.time()
    cookie_name = AUTH_COOKIE_PREFIX + host.key
    raw = request.cookies.get(cookie_name)
    if raw:
        sandbox_id, problem = _decode_cookie(cookie_name, raw, now)
        if sandbox_id is not None:
            return sandbox_id
        errors.append(f"Cookie decoding error: {problem}")
    sandbox_id = fake.store.signed_preview_sandbox(host.key) if host.signed else None
    if sandbox_id is not None:
        host.cookies.append((cookie_name, _encode_cookie(cookie_name, sandbox_id, now)))
        return sandbox_id
    # The API's answer for a token it does not hold (403, which the proxy reports as text).
    errors.append("Invalid or expired token")
    if is_navigation(request):
        raise LoginRedirect
    raise unauthorized(errors)


def _shows_warning(fake: object, request: web.Request, host: PreviewHost) -> bool:
    if not fake.preview_warning or request.headers.get(SKIP_WARNING_HEADER) == "true":
        return False
    if not is_browser(request) or is_websocket(request):
        return False
    if request.cookies.get(ACCEPTED_COOKIE) == "true":
        return False
    # An unknown token's port is unknown here: it gets the warning like most ports.
    return host.tail != ACCEPT_PATH and host.port not in PROTECTED_PORTS


def _warning_page(request: web.Request, host: PreviewHost) -> web.Response:
    target = str(request.url)
    action = f"{host.prefix}{ACCEPT_PATH}?redirect={quote(target, safe='')}"
    body = (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        "<title>Daytona Preview - Warning</title></head>\n<body>"
        '<h1 class="warning-title">Preview URL Warning</h1>'
        f"<p>You are about to visit <strong>{html.escape(target)}</strong></p>"
        f'<form action="{action}" method="POST"><button type="submit">I Understand, Continue</button></form>'
        "</body></html>\n"
    )
    headers = {
        "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'",
        "X-Content-Type-Options": "nosniff",
    }
    return web.Response(text=body, content_type="text/html", headers=headers)


def _accept_warning(request: web.Request, host: PreviewHost) -> web.Response:
    """Set the acceptance cookie and go back, only to the same preview host."""
    redirect = request.query.get("redirect", "")
    location = _safe_redirect(request, host, redirect) or f"{host.prefix}/"
    response = web.Response(status=302, headers={"Location": location})
    response.set_cookie(
        ACCEPTED_COOKIE, "true", max_age=ACCEPTED_COOKIE_SECONDS, path=host.prefix, httponly=True, samesite="Lax"
    )
    return response


def _safe_redirect(request: web.Request, host: PreviewHost, redirect: str) -> str | None:
    normalized = redirect.replace("\\", "/")
    parts = urlsplit(normalized)
    if parts.netloc:
        if parts.scheme not in ("", "http", "https") or parts.netloc.lower() != request.host.lower():
            return None
        path = parts.path or "/"
        inside = path == host.prefix or path.startswith(host.prefix + "/")
        return redirect if inside else None
    if normalized.startswith("/") and not normalized.startswith("//"):
        # A path on the preview host: under the prefix that stands for it here.
        return normalized if normalized.startswith(host.prefix + "/") else host.prefix + normalized
    return None


def _login_url(fake: object, request: web.Request, host: PreviewHost) -> str:
    state = {"returnTo": str(request.url), "sandboxId": host.key, "state": secrets.token_urlsafe(16)}
    query = {
        "audience": "daytona",
        "client_id": "daytona",
        "redirect_uri": f"{fake.url}/callback",
        "response_type": "code",
        "scope": "openid profile",
        "state": base64.urlsafe_b64encode(json.dumps(state).encode()).decode(),
    }
    return f"{fake.url}{LOGIN_PATH}?{urlencode(query)}"


def _encode_cookie(name: str, sandbox_id: str, now: float) -> str:
    stamp = str(int(now))
    mac = _mac(name, stamp, sandbox_id)
    return base64.urlsafe_b64encode(f"{stamp}|{sandbox_id}|{mac}".encode()).decode().rstrip("=")


def _decode_cookie(name: str, value: str, now: float) -> tuple[str | None, str]:
    """securecookie's checks: the signature, then the age (at most an hour)."""
    try:
        decoded = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).decode()
        stamp, sandbox_id, mac = decoded.split("|")
        issued = int(stamp)
    except ValueError:
        return None, "securecookie: the value is not valid"
    if not hmac.compare_digest(mac, _mac(name, stamp, sandbox_id)):
        return None, "securecookie: the value is not valid"
    if issued < now - AUTH_COOKIE_SECONDS:
        return None, "securecookie: expired timestamp"
    return sandbox_id, ""


def _mac(name: str, stamp: str, sandbox_id: str) -> str:
    return hmac.new(_COOKIE_SECRET, f"{name}|{stamp}|{sandbox_id}".encode(), hashlib.sha256).hexdigest()


def _tail(request: web.Request, prefix: str) -> str:
    return request.path[len(prefix) :] or "/"


def _page(name: str, port: int | None) -> web.Response:
    label = html.escape(name)
    if port == TERMINAL_PORT:
        heading = f"Daytona web terminal for {label}"
    else:
        heading = f"Preview of {label} port {port}"
    return web.Response(text=_html(heading, heading), content_type="text/html")


def _html(title: str, heading: str) -> str:
    return (
        '<!doctype html>\n<html><head><meta charset="utf-8">'
        f"<title>{title}</title></head>\n<body><h1>{heading}</h1></body></html>\n"
    )
