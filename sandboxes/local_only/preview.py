"""The preview relay: the app a sandbox's owner runs on port 3000, served by the portal, for
sandboxes whose provider serves no preview of its own (``Capability.PREVIEW_RELAY``: local ones).

``/sandboxes/<id>/preview/<path>``
    For the signed-in owner: redirects to the same path under a capability (below). Anyone
    else who is signed in gets 404; signed-out visitors are sent to sign in.

``/sandboxes/<id>/preview/~<capability>/<path>``
    Proxied to ``127.0.0.1:3000`` inside the sandbox through its agent.

Responses carry ``Content-Security-Policy: sandbox ...``, so the user's app runs in an opaque
origin and can neither read the portal's cookies nor act with the portal session. Browsers then
treat every request that page makes (its scripts, styles, fetches) as cross-site and send no
cookies with it, which is why those requests authenticate with a capability in the path: the
owner's id signed with a key bound to the sandbox and to its current run (the provider's link
nonce), so it expires after ``SANDBOX_SSH_TOKEN_MINUTES`` or as soon as the sandbox stops or
its access is revoked. Like Daytona's signed preview URLs, whoever holds it can open the
preview until then; a signed-in user other than the owner still gets 404.
"""

from __future__ import annotations

import html
import http.client
import logging
from urllib.parse import urlsplit

from asgiref.sync import sync_to_async
from csp.decorators import csp_exempt
from django.conf import settings
from django.contrib.auth.views import redirect_to_login
from django.core import signing
from django.core.handlers.asgi import ASGIRequest
from django.http import Http404, HttpResponse, HttpResponseRedirect, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt

from sandboxes import services
from sandboxes.http import no_store

log = logging.getLogger(__name__)

PREVIEW_CSP = "sandbox allow-scripts allow-forms allow-popups allow-modals"
PAGE_CSP = "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
UPSTREAM_TIMEOUT = 120.0  # dev servers compile on the first request
CHUNK = 1 << 16
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# The portal's credentials and our own forwarding headers never reach the app.
DROPPED_REQUEST_HEADERS = HOP_BY_HOP | {
    "cookie",
    "host",
    "content-length",
    "x-csrftoken",
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-forwarded-prefix",
    "x-real-ip",
}
# Headers that would act on the portal's origin rather than on the preview.
DROPPED_RESPONSE_HEADERS = HOP_BY_HOP | {
    "set-cookie",
    "set-cookie2",
    "content-security-policy",
    "content-security-policy-report-only",
    "strict-transport-security",
    "clear-site-data",
    "public-key-pins",
    "alt-svc",
    "service-worker-allowed",
    "report-to",
    "reporting-endpoints",
    "nel",
}
LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", "0.0.0.0"}


@csrf_exempt  # requests from the sandboxed page come from an opaque origin; the capability authorises them
@csp_exempt()
def preview(request, remote_id: str, path: str = ""):
    """Owner or capability check, then the redirect to a capability URL or the proxied answer
    (see the module docstring). Someone else's sandbox, or none, is a 404 to the signed in."""
    sandbox = services.preview_sandbox(remote_id=remote_id)
    user = request.user if request.user.is_authenticated else None
    if user is not None and (sandbox is None or sandbox.user_id != user.pk):
        raise Http404("No such sandbox.")

    capability, rest = _split_capability(path)
    if capability is not None and sandbox is not None:
        nonce = _link_nonce(sandbox)
        if nonce is not None and _capability_owner(capability, remote_id, nonce) == sandbox.user_id:
            return _proxy(request, sandbox, rest, base=f"/sandboxes/{remote_id}/preview/~{capability}")

    if user is None:
        return redirect_to_login(request.get_full_path())
    nonce = _link_nonce(sandbox)
    if nonce is None:
        return _not_running()
    target = f"/sandboxes/{remote_id}/preview/~{_capability(remote_id, user.pk, nonce)}/{rest}"
    if request.META.get("QUERY_STRING"):
        target += "?" + request.META["QUERY_STRING"]
    response = HttpResponseRedirect(target)
    if request.method not in ("GET", "HEAD"):
        response.status_code = 307  # keep the method and body
    response["Referrer-Policy"] = "no-referrer"
    return no_store(response)


def _link_nonce(sandbox) -> str | None:
    """None when the sandbox does not run, or cannot be asked (a preview then is not served)."""
    try:
        return services.preview_link_nonce(sandbox=sandbox)
    except services.SandboxError as exc:
        log.warning("preview of %s: %s", sandbox.remote_id, exc)
        return None


# --- capabilities -------------------------------------------------------------------------------


def _signer(remote_id: str, nonce: str) -> signing.TimestampSigner:
    return signing.TimestampSigner(salt=f"joepro.preview:{remote_id}:{nonce}")


def _capability(remote_id: str, user_pk: int, nonce: str) -> str:
    return _signer(remote_id, nonce).sign(str(user_pk))


def _capability_owner(capability: str, remote_id: str, nonce: str) -> int | None:
    try:
        value = _signer(remote_id, nonce).unsign(capability, max_age=settings.SANDBOX_SSH_TOKEN_MINUTES * 60)
        return int(value)
    except (signing.BadSignature, ValueError):
        return None


def _split_capability(path: str) -> tuple[str | None, str]:
    if not path.startswith("~"):
        return None, path
    capability, _, rest = path[1:].partition("/")
    return capability, rest


# --- the proxy ----------------------------------------------------------------------------------


def _proxy(request, sandbox, path: str, *, base: str):
    port = settings.SANDBOX_PREVIEW_PORT
    remote_id = sandbox.remote_id
    services.preview_record_activity(sandbox=sandbox)
    try:
        sock = services.preview_connect(sandbox=sandbox, port=port)
    except services.SandboxError as exc:
        return _relay_refused(exc, remote_id, port)

    sock.settimeout(UPSTREAM_TIMEOUT)
    connection = http.client.HTTPConnection("localhost", port, timeout=UPSTREAM_TIMEOUT)
    connection.sock = sock
    target = "/" + path
    if request.META.get("QUERY_STRING"):
        target += "?" + request.META["QUERY_STRING"]
    try:
        connection.request(request.method, target, body=_body(request), headers=_request_headers(request, port, base))
        upstream = connection.getresponse()
    except (OSError, http.client.HTTPException) as exc:
        connection.close()
        log.info("preview of %s: the app did not answer: %s", remote_id, exc)
        return _page(
            502,
            f"The app on port {port} did not answer",
            "It accepted the connection but sent no valid HTTP response. Check its output in the terminal.",
        )

    body = _AsyncBody(upstream, connection) if isinstance(request, ASGIRequest) else _SyncBody(upstream, connection)
    response = StreamingHttpResponse(body, status=upstream.status, reason=upstream.reason)
    for name, value in upstream.getheaders():
        lowered = name.lower()
        if lowered in DROPPED_RESPONSE_HEADERS or (lowered == "content-length" and upstream.chunked):
            continue
        if lowered == "location":
            value = _rewrite_location(value, base, port)
        if name in response.headers:
            response.headers[name] = f"{response.headers[name]}, {value}"
        else:
            response.headers[name] = value
    response["Content-Security-Policy"] = PREVIEW_CSP
    response["Referrer-Policy"] = "no-referrer"
    response.setdefault("Cache-Control", "private, no-cache")
    return response


def _relay_refused(exc, remote_id: str, port: int) -> HttpResponse:
    if exc.kind == services.ErrorKind.PORT_CLOSED:
        return _page(
            502,
            f"Nothing is listening on port {port}",
            f"Start your app on port {port} in your sandbox's terminal (for example "
            f"<code>npm run dev -- --port {port}</code> or <code>python3 -m http.server {port}</code>), "
            "then reload this page.",
        )
    if exc.kind == services.ErrorKind.NOT_FOUND:
        raise Http404("No such sandbox.") from exc
    if exc.kind == services.ErrorKind.INVALID_STATE:
        return _not_running()
    log.warning("preview of %s failed: %s", remote_id, exc)
    return _page(502, "The sandbox did not answer", "Please reload in a moment.")


def _body(request):
    if request.method in ("GET", "HEAD", "OPTIONS", "DELETE", "TRACE") and not request.META.get("CONTENT_LENGTH"):
        return None
    length = request.META.get("CONTENT_LENGTH")
    if length and length.isdigit():
        return request if int(length) else b""
    return request.read()


def _request_headers(request, port: int, base: str) -> dict[str, str]:
    connection_tokens = {t.strip().lower() for t in request.headers.get("Connection", "").split(",")}
    headers = {
        name: value
        for name, value in request.headers.items()
        if name.lower() not in DROPPED_REQUEST_HEADERS and name.lower() not in connection_tokens
    }
    length = request.META.get("CONTENT_LENGTH")
    if length and length.isdigit():
        headers["Content-Length"] = length
    headers.update(
        {
            "Host": f"localhost:{port}",  # what dev servers accept (Vite, webpack check the host)
            "X-Forwarded-Host": request.get_host(),
            "X-Forwarded-Proto": request.scheme,
            "X-Forwarded-Prefix": base,
            "Connection": "close",
        }
    )
    return headers


class _Body:
    """The app's response body as it arrives (server-sent events and long polls included);
    closing it closes the connection to the app."""

    def __init__(self, upstream: http.client.HTTPResponse, connection: http.client.HTTPConnection):
        self.upstream = upstream
        self.connection = connection

    def read(self) -> bytes:
        try:
            return self.upstream.read1(CHUNK)
        except (OSError, http.client.HTTPException):
            return b""  # the app went away mid-response: the client sees a truncated body

    def close(self) -> None:
        self.upstream.close()
        self.connection.close()


class _SyncBody(_Body):
    def __iter__(self):
        while chunk := self.read():
            yield chunk


class _AsyncBody(_Body):
    """Under ASGI, Django would read a synchronous body to its end before sending any of it
    (and it must not be iterable synchronously, or Django takes it for a synchronous one)."""

    async def __aiter__(self):
        read = sync_to_async(self.read, thread_sensitive=False)
        while chunk := await read():
            yield chunk


def _rewrite_location(value: str, base: str, port: int) -> str:
    """Keep the app's redirects inside the preview."""
    try:
        parts = urlsplit(value)
        local = parts.hostname in LOCAL_HOSTS and parts.port in (None, port)
    except ValueError:
        return value
    if parts.scheme in ("http", "https") and local:
        path = parts.path or "/"
    elif not parts.scheme and not parts.netloc and value.startswith("/"):
        path = parts.path
    else:
        return value
    rewritten = base + path
    if parts.query:
        rewritten += "?" + parts.query
    if parts.fragment:
        rewritten += "#" + parts.fragment
    return rewritten


def _not_running() -> HttpResponse:
    return _page(503, "Your sandbox is not running", "Open it from the sandbox portal, then reload this page.")


def _page(status: int, title: str, hint_html: str) -> HttpResponse:
    body = (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>{html.escape(title)}</title>"
        "<style>body{font:16px/1.5 system-ui,sans-serif;max-width:40rem;margin:4rem auto;padding:0 1rem;color:#222}"
        "code{background:#f2f2f2;padding:.1em .3em;border-radius:3px}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><p>{hint_html}</p>"
        '<p><a href="/sandbox-portal/">Back to the sandbox portal</a></p></body></html>'
    )
    response = HttpResponse(body, status=status, content_type="text/html; charset=utf-8")
    response["Content-Security-Policy"] = PAGE_CSP
    if status == 503:
        response["Retry-After"] = "5"
    return no_store(response)
