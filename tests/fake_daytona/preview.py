"""The preview proxy: pages behind signed links (``/preview/<token>/``) and standard links."""

from __future__ import annotations

import html

from aiohttp import web

from .middleware import fake_of
from .records import PreviewAccess

TERMINAL_PORT = 22222


def add_preview_routes(app: web.Application) -> None:
    app.router.add_get("/preview/{token}", open_signed_preview)
    app.router.add_get("/preview/{token}/{tail:.*}", open_signed_preview)
    app.router.add_get("/proxy/{slug}/{tail:.*}", open_standard_preview)


async def open_signed_preview(request: web.Request) -> web.Response:
    """Serve a page if the signed token is valid, unexpired and its sandbox is running."""
    fake = fake_of(request)
    access = fake.store.open_signed_preview(request.match_info["token"])
    return _page(access)


async def open_standard_preview(request: web.Request) -> web.Response:
    """``/proxy/<port>-<sandboxId>/``: needs the preview token header (or the API key)."""
    fake = fake_of(request)
    port_text, _, sandbox_id = request.match_info["slug"].partition("-")
    if not port_text.isdigit() or not sandbox_id:
        return _page(PreviewAccess(404, "Unknown preview address"))
    token = request.headers.get("X-Daytona-Preview-Token") or request.query.get("DAYTONA_SANDBOX_AUTH_KEY")
    if request.headers.get("Authorization") == f"Bearer {fake.api_key}":
        token = fake.store.preview_token_of(sandbox_id)
    access = fake.store.open_standard_preview(sandbox_id, int(port_text), token)
    return _page(access)


def _page(access: PreviewAccess) -> web.Response:
    if access.status != 200:
        title = html.escape(access.message)
        return web.Response(status=access.status, text=_html(title, title), content_type="text/html")
    name = html.escape(access.sandbox_name)
    if access.port == TERMINAL_PORT:
        heading = f"Daytona web terminal for {name}"
    else:
        heading = f"Preview of {name} port {access.port}"
    return web.Response(text=_html(heading, heading), content_type="text/html")


def _html(title: str, heading: str) -> str:
    return (
        '<!doctype html>\n<html><head><meta charset="utf-8">'
        f"<title>{title}</title></head>\n<body><h1>{heading}</h1></body></html>\n"
    )
