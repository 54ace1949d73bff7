"""Test hooks (``/__...``) so another process, such as a benchmark, can drive the emulator."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from .clock import iso
from .middleware import fake_of
from .timings import timings_from

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
    add("POST", "/__ssh", _hook(ssh_session))
    add("GET", "/__activity", _hook(activity))
    add("POST", "/__activity", _hook(configure_activity))
    add("POST", "/__resources", _hook(set_resources))
    add("GET", "/__snapshots", _hook(snapshots))
    add("POST", "/__snapshots", _hook(add_snapshot))


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


def snapshots(request: web.Request, body: dict[str, Any]) -> dict[str, Any]:
    return {"snapshots": fake_of(request).snapshots()}


def add_snapshot(request: web.Request, body: dict[str, Any]) -> dict[str, Any]:
    """``{"name": ..., "state"?: "active", ...camelCase fields}``: a seeded snapshot (409 as 400)."""
    options = dict(body)
    name = str(options.pop("name"))
    return fake_of(request).add_snapshot(name, str(options.pop("state", "active")), **options)


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


def set_resources(request: web.Request, body: dict[str, Any]) -> dict[str, Any]:
    """``{"id": ..., "memory_bytes"?, "memory_limit_bytes"?, "disk_bytes"?, "disk_limit_bytes"?}``:
    what a command in the sandbox measures (see ``.machine``)."""
    options = dict(body)
    sandbox_id = str(options.pop("id"))
    if fake_of(request).sandbox(sandbox_id) is None:
        raise KeyError(sandbox_id)
    return dataclasses.asdict(fake_of(request).machines.set_resources(sandbox_id, **options))


def reset(request: web.Request, body: dict[str, Any]) -> None:
    fake_of(request).reset()


def configure(request: web.Request, body: dict[str, Any]) -> dict[str, Any]:
    """Change settings; each key is optional and applied in this order:

    ``latency`` (seconds added to every API call), ``timings`` (``"realistic"``,
    ``"instant"``, or an object of durations applied on top of the current ones, e.g.
    ``{"build": 30}``), ``transition_seconds`` (every transition that long),
    ``time_scale`` (multiply the current durations), ``list_lag``, ``ssh_host``,
    ``ssh_port``, ``rate_limits`` (``{"sandbox-create": 2, "authenticated": null}``; null is
    unlimited), ``rate_limit_window`` (seconds), ``failing_builds`` (``{"text in the
    Dockerfile": "errorReason" or null}``, replacing the set), ``create_answer_after_hold``
    (``"current"`` or ``"as_created"``). Answers the resulting settings.
    """
    fake = fake_of(request)
    if "latency" in body:
        fake.latency = float(body["latency"])
    if "timings" in body:
        fake.timings = timings_from(body["timings"], fake.timings)
    if "transition_seconds" in body:
        fake.transition_seconds = float(body["transition_seconds"])
    if "time_scale" in body:
        fake.timings = fake.timings.scaled(float(body["time_scale"]))
    if "list_lag" in body:
        fake.list_lag(float(body["list_lag"]))
    if "ssh_host" in body:
        fake.ssh_host = str(body["ssh_host"])
    if "ssh_port" in body:
        fake.ssh_port = int(body["ssh_port"])
    if "rate_limits" in body:
        limits = body["rate_limits"]
        if not isinstance(limits, dict):
            raise ValueError("rate_limits must be an object")
        for group, limit in limits.items():
            fake.set_rate_limit(group, limit)
    if "rate_limit_window" in body:
        window = float(body["rate_limit_window"])
        if window <= 0:
            raise ValueError("rate_limit_window must be positive")
        fake.rate_limits.window_seconds = window
    if "failing_builds" in body:
        fake.store.builds.set_failing(body["failing_builds"])
    if "create_answer_after_hold" in body:
        answer = body["create_answer_after_hold"]
        if answer not in ("current", "as_created"):
            raise ValueError("create_answer_after_hold must be 'current' or 'as_created'")
        fake.create_answer_after_hold = answer
    return {
        "latency": fake.latency,
        "transition_seconds": fake.transition_seconds,
        "timings": fake.timings.describe(),
        "rate_limits": fake.rate_limits.describe(),
        "failing_builds": dict(fake.store.builds.failing),
        "create_answer_after_hold": fake.create_answer_after_hold,
    }


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


def ssh_session(request: web.Request, body: dict[str, Any]) -> dict[str, Any]:
    """``{"action": "open", "sandbox_id": ...}`` answers ``{"session": id}`` (null when the
    ``ssh`` source is off; 400 if the sandbox is not started); ``{"action": "close",
    "session": id}`` ends it."""
    fake = fake_of(request)
    action = body.get("action")
    if action == "open":
        return {"session": fake.open_ssh_session(str(body["sandbox_id"])).id}
    if action == "close":
        fake.close_ssh_session(int(body["session"]))
        return {}
    raise ValueError("action must be 'open' or 'close'")


def activity(request: web.Request, body: dict[str, Any]) -> dict[str, Any]:
    """``?sandbox=<id>``: its activity posts (re-posts up to now included) and open
    connections by source."""
    fake = fake_of(request)
    sandbox_id = request.query["sandbox"]
    posts = [{"at": iso(p.at), "source": p.source, "outcome": p.outcome} for p in fake.activity_posts(sandbox_id)]
    return {"posts": posts, "connections": fake.activity.open_connections(sandbox_id)}


def configure_activity(request: web.Request, body: dict[str, Any]) -> dict[str, Any]:
    """Optional keys: ``switches`` (``{"pty": false, ...}``), ``proxy_cache_seconds``,
    ``preview_warning`` (bool). Answers the resulting settings."""
    fake = fake_of(request)
    switches = body.get("switches", {})
    if not isinstance(switches, dict) or not set(switches) <= set(fake.activity_switches):
        raise ValueError(f"switches must be an object with keys among {sorted(fake.activity_switches)}")
    fake.activity_switches.update({key: bool(value) for key, value in switches.items()})
    if "proxy_cache_seconds" in body:
        fake.proxy_activity_cache_seconds = float(body["proxy_cache_seconds"])
    if "preview_warning" in body:
        fake.preview_warning = bool(body["preview_warning"])
    return {
        "switches": dict(fake.activity_switches),
        "proxy_cache_seconds": fake.proxy_activity_cache_seconds,
        "preview_warning": fake.preview_warning,
    }
