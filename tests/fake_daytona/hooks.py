"""Test hooks (``/__...``) so another process, such as a benchmark, can drive the emulator."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from .clock import iso
from .middleware import fake_of

HookHandler = Callable[[web.Request], Awaitable[web.Response]]


def add_hook_routes(app: web.Application) -> None:
    add = app.router.add_route
    add("POST", "/__faults", _hook(add_fault))
    add("DELETE", "/__faults", _hook(clear_faults))
    add("GET", "/__stats", _hook(stats))
    add("GET", "/__sandboxes", _hook(sandboxes))
    add("POST", "/__state", _hook(set_state))
    add("POST", "/__delete", _hook(delete_out_of_band))
    add("POST", "/__clock", _hook(advance_clock))
    add("POST", "/__reset", _hook(reset))
    add("POST", "/__config", _hook(configure))
    add("POST", "/__seed", _hook(seed))
    add("POST", "/__autostop", _hook(autostop))


def _hook(handler: Callable[[web.Request, dict[str, Any]], Any]) -> HookHandler:
    """Parse an optional JSON object body; map bad input to 400 and unknown sandboxes to 404."""

    async def run(request: web.Request) -> web.Response:
        body: dict[str, Any] = {}
        if request.can_read_body:
            try:
                body = await request.json()
            except (json.JSONDecodeError, UnicodeDecodeError):
                return web.json_response({"error": "body must be JSON"}, status=400)
            if not isinstance(body, dict):
                return web.json_response({"error": "body must be a JSON object"}, status=400)
        try:
            result = handler(request, body)
        except KeyError as error:
            return web.json_response({"error": f"not found: {error.args[0]}"}, status=404)
        except (TypeError, ValueError) as error:
            return web.json_response({"error": str(error)}, status=400)
        return web.json_response(result if result is not None else {})

    return run


def add_fault(request: web.Request, body: dict[str, Any]) -> dict[str, Any]:
    options = dict(body)
    operation = options.pop("operation")
    kind = options.pop("kind")
    return fake_of(request).fault(operation, kind, **options).describe()


def clear_faults(request: web.Request, body: dict[str, Any]) -> None:
    fake_of(request).clear_faults()


def stats(request: web.Request, body: dict[str, Any]) -> dict[str, Any]:
    return fake_of(request).stats()


def sandboxes(request: web.Request, body: dict[str, Any]) -> dict[str, Any]:
    return {"sandboxes": fake_of(request).sandboxes()}


def set_state(request: web.Request, body: dict[str, Any]) -> dict[str, Any] | None:
    options = dict(body)
    id_or_name = options.pop("id_or_name")
    state = options.pop("state")
    return fake_of(request).set_state(id_or_name, state, **options)


def delete_out_of_band(request: web.Request, body: dict[str, Any]) -> None:
    fake_of(request).delete_out_of_band(body["id_or_name"])


def advance_clock(request: web.Request, body: dict[str, Any]) -> dict[str, Any]:
    fake = fake_of(request)
    fake.advance_clock(float(body.get("advance", 0)))
    return {"now": iso(fake.now().timestamp())}


def reset(request: web.Request, body: dict[str, Any]) -> None:
    fake_of(request).reset()


def configure(request: web.Request, body: dict[str, Any]) -> dict[str, Any]:
    fake = fake_of(request)
    if "latency" in body:
        fake.latency = float(body["latency"])
    if "transition_seconds" in body:
        fake.transition_seconds = float(body["transition_seconds"])
    if "list_lag" in body:
        fake.list_lag(float(body["list_lag"]))
    if "ssh_host" in body:
        fake.ssh_host = str(body["ssh_host"])
    if "ssh_port" in body:
        fake.ssh_port = int(body["ssh_port"])
    return {"latency": fake.latency, "transition_seconds": fake.transition_seconds}


def seed(request: web.Request, body: dict[str, Any]) -> dict[str, Any]:
    ids = fake_of(request).seed(
        int(body.get("count", 1)),
        labels=body.get("labels"),
        state=body.get("state", "started"),
        name_prefix=body.get("name_prefix", "seed-"),
    )
    return {"created": len(ids)}


def autostop(request: web.Request, body: dict[str, Any]) -> dict[str, Any]:
    return {"stopped": fake_of(request).run_autostop()}
