"""The portal's page that opens a preview: ``/sandboxes/<id>/preview/?port=<port>&next=<path>``.

For the signed-in owner of a running sandbox it mints a one-time code and sends the browser to
the preview's own site, which turns the code into a session there (:mod:`.sessions`). Anyone
else who is signed in gets 404; signed-out visitors are sent to sign in first.
"""

from __future__ import annotations

import logging
from urllib.parse import urlencode

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpResponse, HttpResponseRedirect
from django.views.decorators.http import require_GET

from sandboxes import services
from sandboxes.http import no_store

from . import pages, sessions
from .hosts import PreviewHost

log = logging.getLogger(__name__)


@require_GET
@login_required
def open_preview(request, remote_id: str, path: str = ""):
    port = _port(request.GET.get("port"))
    if port is None:
        return _page(*pages.page(400, "No such port", "A preview port is a number from 1 to 65535."))
    if services.preview_owner(remote_id=remote_id) != request.user.pk:
        raise Http404("No such sandbox.")
    next_path = sessions.safe_next("/" + path if path else request.GET.get("next", "/"))
    try:
        route = services.preview_route(remote_id=remote_id, port=port)
    except services.SandboxError as exc:
        if exc.kind == "not_found":
            raise Http404("No such sandbox.") from exc
        if exc.kind == "invalid_state":
            return _page(*pages.page(503, "Your sandbox is not running", _start_hint(), portal_url=""))
        log.warning("preview of %s: %s", remote_id, exc)
        return _page(*pages.page(502, "The sandbox did not answer", "Please reload in a moment."))
    services.preview_record_activity(sandbox_pk=route.sandbox_pk)
    host = PreviewHost(port, remote_id)
    code = sessions.mint_code(host=host, user_id=request.user.pk, nonce=route.upstream.nonce, next_path=next_path)
    response = HttpResponseRedirect(f"{host.origin}{sessions.HANDSHAKE_PATH}?{urlencode({'code': code})}")
    response["Referrer-Policy"] = "no-referrer"
    return no_store(response)


def _port(value: str | None) -> int | None:
    if value is None or value == "":
        return settings.SANDBOX_PREVIEW_PORT
    if not value.isdigit() or not 1 <= int(value) <= 65535:
        return None
    return int(value)


def _start_hint() -> str:
    return 'Open it from the <a href="/sandbox-portal/">sandbox portal</a>, then open the preview again.'


def _page(status: int, headers, body: bytes) -> HttpResponse:
    response = HttpResponse(body, status=status)
    for name, value in headers:
        if name not in (b"content-length", b"x-frame-options"):
            response[name.decode()] = value.decode()
    return no_store(response)
