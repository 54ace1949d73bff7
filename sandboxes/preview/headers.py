"""What passes between the browser and the app, in both directions.

To the app: the browser's headers, minus hop-by-hop ones, the preview session cookie, the
client's own forwarding and provider headers; plus the upstream's ``Host`` and our forwarding
headers. To the browser: the app's headers, minus hop-by-hop ones and those that would reach
beyond the app's own host or pose as someone else: cookies for other hosts or named like the
portal's, authentication prompts (a password dialog over a page the user did not choose to
trust), ``Refresh``, provider headers. Redirects to another site are shown as a page that says
so. ``X-Content-Type-Options``, ``X-Frame-Options`` and the cache policy are the relay's.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from .sessions import COOKIE_NAMES

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
DROPPED_REQUEST = HOP_BY_HOP | {
    b"host",
    b"expect",  # the relay sends the body at once
    b"content-length",
    b"forwarded",
    b"x-forwarded-for",
    b"x-forwarded-host",
    b"x-forwarded-proto",
    b"x-forwarded-port",
    b"x-forwarded-prefix",
    b"x-real-ip",
    b"sec-websocket-key",
    b"sec-websocket-version",
    b"sec-websocket-extensions",
    b"sec-websocket-protocol",
}
DROPPED_RESPONSE = HOP_BY_HOP | {
    b"www-authenticate",
    b"refresh",
    b"strict-transport-security",
    b"public-key-pins",
    b"alt-svc",
    b"x-content-type-options",
    b"x-frame-options",
    b"cache-control",
    b"server",
}
PROVIDER_PREFIXES = (b"x-daytona-",)
PROVIDER_COOKIE_PREFIXES = ("daytona-",)
_DOMAIN_ATTRIBUTE = re.compile(r";\s*domain\s*=[^;]*", re.IGNORECASE)

Headers = list[tuple[bytes, bytes]]


def to_app(
    headers: Headers, *, upstream_host: str, upstream_origin: str, preview_origin: str, scheme: str, extra
) -> Headers:
    """The request headers the app receives (``extra``: the provider's, e.g. a token)."""
    connection_tokens = {
        token.strip().lower().encode()
        for name, value in headers
        if name == b"connection"
        for token in value.decode("latin-1").split(",")
    }
    kept: Headers = []
    for name, value in headers:
        if name in DROPPED_REQUEST or name in connection_tokens or name.startswith(PROVIDER_PREFIXES):
            continue
        if name == b"cookie":
            value = _without_session_cookie(value)
            if not value:
                continue
        elif name == b"origin" and value.decode("latin-1") == preview_origin:
            value = upstream_origin.encode()  # dev servers check the origin of their websockets
        kept.append((name, value))
    preview_host = urlsplit(preview_origin).netloc
    kept += [
        (b"host", upstream_host.encode("latin-1")),
        (b"x-forwarded-host", preview_host.encode("latin-1")),
        (b"x-forwarded-proto", scheme.encode()),
    ]
    kept += [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in extra.items()]
    return kept


def to_browser(headers: Headers, *, upstream_url: str, preview_origin: str) -> tuple[Headers, str | None]:
    """The response headers the browser receives, and the other site a redirect pointed to
    (the caller shows a page instead)."""
    kept: Headers = []
    offsite = None
    no_store = False
    for name, value in headers:
        name = name.lower()
        if name == b"cache-control":
            no_store = no_store or b"no-store" in value.lower()
        if name in DROPPED_RESPONSE or name.startswith(PROVIDER_PREFIXES):
            continue
        if name == b"set-cookie":
            cookie = _host_only_cookie(value.decode("latin-1"))
            if cookie is None:
                continue
            value = cookie.encode("latin-1")
        elif name == b"location":
            location, inside = _location(
                value.decode("latin-1"), upstream_url=upstream_url, preview_origin=preview_origin
            )
            if not inside:
                offsite = location
                continue
            value = location.encode("latin-1")
        kept.append((name, value))
    kept += [
        (b"x-content-type-options", b"nosniff"),
        (b"x-frame-options", b"SAMEORIGIN"),
        (b"cache-control", b"private, no-store" if no_store else b"private, no-cache"),
    ]
    return kept, offsite


def _without_session_cookie(value: bytes) -> bytes:
    pairs = [pair.strip() for pair in value.decode("latin-1").split(";")]
    kept = [pair for pair in pairs if pair and pair.partition("=")[0].strip() not in COOKIE_NAMES]
    return "; ".join(kept).encode("latin-1")


def _host_only_cookie(value: str) -> str | None:
    """The app's cookie for its own host only; None for one named like the preview session or
    a provider's."""
    name = value.partition("=")[0].strip()
    if name in COOKIE_NAMES or name.startswith(PROVIDER_COOKIE_PREFIXES):
        return None
    return _DOMAIN_ATTRIBUTE.sub("", value)


def _location(value: str, *, upstream_url: str, preview_origin: str) -> tuple[str, bool]:
    """A redirect's target as the browser should see it, and whether it stays in the preview."""
    try:
        parts = urlsplit(value)
        upstream = urlsplit(upstream_url)
        preview = urlsplit(preview_origin)
    except ValueError:
        return value, False
    if not parts.scheme and not parts.netloc:
        return value, not value.startswith("//") and "\\" not in value
    if parts.scheme not in ("http", "https"):
        return value, False
    if (parts.hostname, parts.port) == (preview.hostname, preview.port) and parts.scheme == preview.scheme:
        return value, True
    upstream_port = upstream.port or (443 if upstream.scheme == "https" else 80)
    local = parts.hostname in ("localhost", "127.0.0.1", "::1", "0.0.0.0")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    if (parts.hostname == upstream.hostname or (local and upstream.hostname == "localhost")) and port == upstream_port:
        path = parts.path or "/"
        prefix = upstream.path.rstrip("/")
        if prefix and path.startswith(prefix):
            path = path[len(prefix) :] or "/"
        rewritten = path + (f"?{parts.query}" if parts.query else "") + (f"#{parts.fragment}" if parts.fragment else "")
        return rewritten, True
    return value, False
