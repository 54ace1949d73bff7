"""Which pages may open the portal's websockets: its own exact origin and the trusted ones.

Browsers send the portal's cookies on a websocket upgrade from any page, so a page of another
origin must not get a shell with them. Channels' ``AllowedHostsOriginValidator`` compares host
names only: a page on another port or scheme of the portal's host (another app served there)
would pass. Here the ``Origin`` must equal, in scheme, host and port, the origin the request
itself was made to, or one of ``CSRF_TRUSTED_ORIGINS``.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from channels.security.websocket import WebsocketDenier
from django.conf import settings
from django.http.request import split_domain_port, validate_host

from .consumers import NO_CHANNEL_LAYER

DEFAULT_PORTS = {"http": 80, "https": 443}
Origin = tuple[str, str, int]


def parse_origin(value: str) -> Origin | None:
    """``(scheme, host, port)`` of a serialised origin (``scheme://host[:port]`` and nothing
    else), default ports filled in; None for ``null``, other schemes or anything with a path,
    credentials, query or fragment."""
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        return None
    if parts.path or parts.query or parts.fragment or "@" in parts.netloc or "*" in parts.netloc:
        return None
    return parts.scheme, parts.hostname.lower(), port if port is not None else DEFAULT_PORTS[parts.scheme]


def _header(scope: dict, name: bytes) -> str | None:
    for header, value in scope.get("headers", ()):
        if header == name:
            return value.decode("latin-1")
    return None


def _allowed_hosts() -> list[str]:
    # As Django's own Host check, so that a websocket is held to the same hosts as a page.
    if settings.DEBUG and not settings.ALLOWED_HOSTS:
        return [".localhost", "127.0.0.1", "[::1]"]
    return settings.ALLOWED_HOSTS


def own_origin(scope: dict) -> Origin | None:
    """The portal's origin for this request: ``https`` under ``wss``, else ``http``, with the
    ``Host`` header; None when that host is not one of ``ALLOWED_HOSTS``."""
    host = _header(scope, b"host")
    if not host:
        return None
    domain, _ = split_domain_port(host)
    if not domain or not validate_host(domain, _allowed_hosts()):
        return None
    scheme = "https" if scope.get("scheme") == "wss" else "http"
    return parse_origin(f"{scheme}://{host}")


def trusted_origins() -> set[Origin]:
    """The exact entries of ``CSRF_TRUSTED_ORIGINS``; wildcard entries are not exact, and left out."""
    return {origin for entry in settings.CSRF_TRUSTED_ORIGINS if (origin := parse_origin(entry)) is not None}


def origin_allowed(scope: dict) -> bool:
    value = _header(scope, b"origin")
    origin = parse_origin(value) if value is not None else None
    if origin is None:
        return False
    own = own_origin(scope)
    return own is not None and (origin == own or origin in trusted_origins())


class _Denier(WebsocketDenier):
    """Closes the upgrade before accepting it, without the channel layer: a refusal needs no
    channel of its own, nor a Redis connection waiting on one."""

    channel_layer_alias = NO_CHANNEL_LAYER


class ExactOriginValidator:
    """ASGI middleware for websockets: passes the upgrade on when its ``Origin`` is allowed
    (:func:`origin_allowed`), and otherwise closes it before accepting (the client sees 403)."""

    def __init__(self, application):
        self.application = application

    async def __call__(self, scope, receive, send):
        if scope["type"] != "websocket":
            raise ValueError("ExactOriginValidator is for websocket connections only")
        if origin_allowed(scope):
            return await self.application(scope, receive, send)
        return await _Denier()(scope, receive, send)
