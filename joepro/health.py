"""``/healthz``, ``/readyz`` and ``/metrics``: the doors of machines (orchestrators, load
balancers, Prometheus), answered before every other middleware.

They are answered first, ahead of ``SecurityMiddleware`` and the host check, because their
callers reach the process by an address, not by the portal's public name: a healthcheck inside
the container asks ``127.0.0.1:8000`` and Prometheus asks ``web:8000``, neither of them in
``ALLOWED_HOSTS``, both over plain HTTP, which ``SECURE_SSL_REDIRECT`` would send to HTTPS.
Nothing here reads a session or a cookie or renders a page, so the host check and the HTTPS
redirect protect nothing on these paths; ``/metrics`` has its own access rule (bearer token or
allowed networks), and a scraper that sends its token over plain HTTP has sent it before any
redirect could answer.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse

from sandboxes import services
from sandboxes.http import no_store

log = logging.getLogger(__name__)

CHECK_TIMEOUT = 4.0  # seconds each readiness check may take (they run at the same time)


class HealthMiddleware:
    """Answers GET and HEAD of ``/healthz``, ``/readyz`` and ``/metrics``; everything else
    goes on to the rest of the stack, unadapted (under ASGI every request passes here)."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response):
        self.get_response = get_response
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest):
        if iscoroutinefunction(self):
            return self.__acall__(request)
        view = _route(request)
        return self.get_response(request) if view is None else _answer(view, request)

    async def __acall__(self, request: HttpRequest) -> HttpResponse:
        view = _route(request)
        if view is None:
            return await self.get_response(request)
        return await sync_to_async(_answer)(view, request)  # the checks block: off the event loop


def _route(request: HttpRequest) -> Callable[[HttpRequest], HttpResponse] | None:
    return ROUTES.get(request.path_info) if request.method in ("GET", "HEAD") else None


def _answer(view: Callable[[HttpRequest], HttpResponse], request: HttpRequest) -> HttpResponse:
    response = view(request)
    if request.method == "HEAD":
        response.content = b""
    return response


def healthz(request: HttpRequest) -> HttpResponse:
    """The process is up and serving requests; nothing else is asked."""
    return no_store(JsonResponse({"status": "ok"}))


def readyz(request: HttpRequest) -> HttpResponse:
    """200 when the database, Redis, the Celery broker and the sandbox provider all answer,
    503 naming those that do not. Error texts are fixed phrases, never a URL or a key."""
    checks = run_checks(READINESS_CHECKS, timeout=CHECK_TIMEOUT)
    ready = all(check["ok"] for check in checks.values())
    body = {"status": "ok" if ready else "unavailable", "checks": checks}
    return no_store(JsonResponse(body, status=200 if ready else 503))


def metrics(request: HttpRequest) -> HttpResponse:
    from usage.metrics import metrics_view

    return metrics_view(request)


ROUTES: dict[str, Callable[[HttpRequest], HttpResponse]] = {
    "/healthz": healthz,
    "/readyz": readyz,
    "/metrics": metrics,
}


# --- readiness checks ----------------------------------------------------------------------------


class CheckFailed(Exception):
    """A check's failure, with a message safe to show anyone."""


def check_database() -> str:
    from django.db import connections

    connection = connections["default"]
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    finally:
        connection.close()  # this thread is not reused: give the connection back now
    return ""


def check_redis() -> str:
    if not settings.REDIS_URL:
        return "not configured"
    import redis

    client = redis.Redis.from_url(
        settings.REDIS_URL, socket_connect_timeout=CHECK_TIMEOUT, socket_timeout=CHECK_TIMEOUT
    )
    try:
        client.ping()
    finally:
        client.close()
    return ""


def check_broker() -> str:
    options = getattr(settings, "CELERY_BROKER_TRANSPORT_OPTIONS", {})
    if settings.CELERY_BROKER_URL.startswith("filesystem:"):
        folders = {options[key] for key in ("data_folder_in", "data_folder_out", "processed_folder") if key in options}
        if not all(os.path.isdir(folder) and os.access(folder, os.W_OK | os.X_OK) for folder in folders):
            raise CheckFailed("broker folder not writable")
        return "filesystem"
    from kombu import Connection

    transport_options = {**options, "socket_connect_timeout": CHECK_TIMEOUT, "socket_timeout": CHECK_TIMEOUT}
    with Connection(
        settings.CELERY_BROKER_URL, connect_timeout=CHECK_TIMEOUT, transport_options=transport_options
    ) as connection:
        connection.ensure_connection(max_retries=0, interval_start=0, interval_step=0, timeout=CHECK_TIMEOUT)
    return ""


def check_provider() -> str:
    try:
        services.provider_reachable()
    except services.SandboxError as exc:
        raise CheckFailed(exc.message) from None  # a fixed phrase naming the provider
    return settings.SANDBOX_PROVIDER


READINESS_CHECKS: dict[str, Callable[[], str]] = {
    "database": check_database,
    "redis": check_redis,
    "broker": check_broker,
    "provider": check_provider,
}


def run_checks(checks: dict[str, Callable[[], str]], *, timeout: float) -> dict[str, dict]:
    """Run every check in a thread of its own, all at once, and wait up to ``timeout`` for
    them. Each result: ``{"ok": bool, "ms": float}`` with ``"detail"`` (what was checked, where
    it says) or ``"error"`` (a fixed phrase; a check still running says ``timed out``)."""
    results: dict[str, dict] = {}
    threads = []
    for name, check in checks.items():
        thread = threading.Thread(target=_run_check, args=(name, check, results), name=f"readyz-{name}", daemon=True)
        thread.start()
        threads.append((name, thread))
    deadline = time.monotonic() + timeout
    for _, thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    return {
        name: results.get(name) or {"ok": False, "ms": round(timeout * 1000, 1), "error": "timed out"}
        for name, _ in threads
    }


def _run_check(name: str, check: Callable[[], str], results: dict[str, dict]) -> None:
    began = time.perf_counter()
    try:
        detail = check()
    except CheckFailed as exc:
        result = {"ok": False, "error": str(exc)}
    except Exception as exc:
        # The exception's text may hold a URL with a password in it: only its type is logged.
        log.warning("readiness check %s failed: %s", name, type(exc).__name__)
        result = {"ok": False, "error": "not reachable"}
    else:
        result = {"ok": True, **({"detail": detail} if detail else {})}
    results[name] = {"ok": result.pop("ok"), "ms": round((time.perf_counter() - began) * 1000, 1), **result}
