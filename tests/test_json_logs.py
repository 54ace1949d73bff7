"""JSON logs, the ids on every line, and the redaction that keeps secrets out of all lines.

The canary: the portal runs a launch, a failing launch, a terminal and a stop on the Daytona
fake with a random API key and every logger at DEBUG, captured through the formatters and the
context filter of the project's LOGGING; neither the key nor the SSH token, the signed links or
the webhook secret is in what they wrote, although the records before redaction held them.
"""

from __future__ import annotations

import io
import json
import logging
import logging.config
import os
import re
import secrets
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from asgiref.sync import async_to_sync
from django.conf import settings

from joepro.logging import redact, remember_secret
from sandboxes.models import Sandbox
from sandboxes.providers import get_provider, reset_providers
from sandboxes.tasks import refresh_sandbox_activity
from tests.conftest import csrf_headers, launch, signed_in
from tests.fake_daytona.webhooks import new_secret
from tests.serve_fixtures import Served, bin_serve
from tests.terminal_client import attach, run, socket

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
FIELDS = {"time", "level", "logger", "message", "request_id", "user_id", "sandbox_id"}
LOGGERS = (
    "",
    "daytona",
    "daytona_api_client",
    "daytona_toolbox_api_client",
    "urllib3",
    "httpx",
    "httpcore",
    "django",
    "django.request",
    "sandboxes",
    "joepro",
    "accounts",
    "usage",
    "channels",
    "celery",
    "svix",
)


class RawFormatter(logging.Formatter):
    """What a record held before any redaction: its message, exception and every attribute."""

    def format(self, record: logging.LogRecord) -> str:
        return super().format(record) + " " + repr(vars(record))


class Captured:
    def __init__(self):
        self.streams = {name: io.StringIO() for name in ("plain", "json", "raw")}

    def text(self, name: str) -> str:
        return self.streams[name].getvalue()

    def json_lines(self) -> list[dict]:
        return [json.loads(line) for line in self.text("json").splitlines()]


@contextmanager
def capturing():
    """Every logger at DEBUG, written through the project's formatters (plain and JSON) and
    context filter as LOGGING configures them, and once more unredacted."""
    configurator = logging.config.DictConfigurator({})
    context = configurator.configure_filter(dict(settings.LOGGING["filters"]["context"]))
    captured = Captured()
    handlers = []
    for name, stream in captured.streams.items():
        handler = logging.StreamHandler(stream)
        if name == "raw":
            handler.setFormatter(RawFormatter())
        else:
            handler.setFormatter(configurator.configure_formatter(dict(settings.LOGGING["formatters"][name])))
        handler.addFilter(context)
        handlers.append(handler)
    loggers = [logging.getLogger(name) for name in LOGGERS]
    levels = [logger.level for logger in loggers]
    root = logging.getLogger()
    for logger in loggers:
        logger.setLevel(logging.DEBUG)
    for handler in handlers:
        root.addHandler(handler)
    try:
        yield captured
    finally:
        for handler in handlers:
            root.removeHandler(handler)
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


@pytest.fixture
def canary(daytona, settings):
    """A random Daytona API key, in the settings and on the fake."""
    key = f"canary-{secrets.token_hex(16)}"
    previous, daytona.api_key = daytona.api_key, key
    settings.DAYTONA_API_KEY = key
    reset_providers()
    # The SDK sets its loggers and urllib3's to WARNING when its client is built: built first,
    # so that they stay at DEBUG while captured.
    assert get_provider("daytona").get("00000000-0000-0000-0000-000000000000") is None
    yield key
    daytona.api_key = previous
    reset_providers()


# --- the canary -----------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)  # the terminal's consumer closes connections in an atomic block
def test_no_secret_reaches_a_log_line_through_a_launch_a_failure_a_terminal_and_a_stop(
    daytona, canary, owner, teammate, settings
):
    settings.DAYTONA_WEBHOOK_SECRET = webhook_secret = new_secret()
    log = logging.getLogger("sandboxes.canary")
    client = signed_in(owner)

    with capturing() as logs:
        launched = launch(client)
        assert launched.status_code == 200, launched.content
        access = launched.json()["access"]
        ssh_token, ssh_command = access["ssh"]["token"], access["ssh"]["command"]
        terminal_link = access["terminal"]["daytonaUrl"]
        link_token = re.search(r"/preview/([a-z0-9]+)/", terminal_link).group(1)
        remote_id = launched.json()["sandbox"]["id"]

        daytona.fault("create", "status", status=503, times=20)
        assert launch(signed_in(teammate)).status_code == 503

        async def terminal():
            websocket = socket(client, remote_id)
            await attach(websocket)
            await run(websocket, "echo $((6*7))", b"42")
            await websocket.disconnect()

        async_to_sync(terminal)()

        # Secrets logged on purpose, as a careless line would: in arguments, an exception
        # message and its traceback, and an extra field.
        log.warning("key %s, webhook secret %s", canary, webhook_secret)
        try:
            raise RuntimeError(f"could not reach {ssh_command} (terminal {terminal_link})")
        except RuntimeError:
            log.exception("a careless line")
        log.info("minted", extra={"access": {"token": ssh_token, "url": terminal_link}})

        stopped = client.post("/api/sandbox/stop", content_type="application/json", **csrf_headers(client))
        assert stopped.status_code == 200, stopped.content  # expiring the signed link logs its URL

    found = [canary, ssh_token, ssh_command, terminal_link, link_token, webhook_secret]
    found.append(webhook_secret.removeprefix("whsec_"))
    raw = logs.text("raw")
    assert all(secret in raw for secret in found)  # the records held every one of them
    expire_lines = [line for line in raw.splitlines() if "signed-preview-url/" in line and "/expire" in line]
    assert any(link_token in line for line in expire_lines)  # a library DEBUG line, not ours

    for name in ("plain", "json"):
        written = logs.text(name)
        assert "[redacted]" in written and "could not reach" in written
        assert [secret for secret in found if secret in written] == [], name
    lines = logs.json_lines()
    assert all(FIELDS <= line.keys() for line in lines)
    careless = next(line for line in lines if line["message"] == "a careless line")
    assert "RuntimeError: could not reach ssh" in careless["exc_info"]
    assert next(line for line in lines if line["message"] == "minted")["access"]["token"] == "[redacted]"


def test_secret_shapes_are_redacted_without_knowing_the_values():
    token, signed = secrets.token_hex(16), secrets.token_hex(8)
    lines = {
        f"ssh -p 2222 {token}@127.0.0.1": token,
        f"ssh {token}@ssh.app.daytona.io": token,
        f"Host x\n    User {token}\n": token,
        f"GET /_joepro/handshake?code={token}&next=/": token,
        f"https://22222-{signed}.proxy.daytona.works/": signed,
        f"http://127.0.0.1:9/preview/{signed}/": signed,
        f'"POST /api/sandbox/x/ports/22222/signed-preview-url/{signed}/expire HTTP/1.1" 201': signed,
        f"{{'Authorization': 'Bearer {token}'}}": token,
        f"X-Daytona-Preview-Token: {token}": token,
        f"/p?DAYTONA_SANDBOX_AUTH_KEY={token}&x=1": token,
        f'{{"token": "{token}"}}': token,
        f'{{"message": "d={{\\"token\\": \\"{token}\\"}}"}}': token,
        f"redis://:{token}@redis:6379/0": token,
        f"key dtn_{token}": token,
        f"svix-signature: v1,{token}": token,
    }
    for line, secret in lines.items():
        assert secret not in redact(line), line
    json.loads(redact(f'{{"message": "d={{\\"token\\": \\"{token}\\"}}"}}'))  # still JSON
    standard = "https://3000-1a2b3c4d-1111-2222-3333-444455556666.proxy.daytona.works/"
    assert redact(standard) == standard  # a sandbox id is no secret
    assert redact("launch failed (code: provider_unavailable)") == "launch failed (code: provider_unavailable)"


def test_a_remembered_secret_is_redacted_in_any_form():
    value = f's3cret/{secrets.token_hex(8)}"x'
    remember_secret(value)
    assert redact(f"a {value} b") == "a [redacted] b"
    assert "s3cret" not in redact(json.dumps({"message": value}))
    assert "s3cret" not in redact("?next=" + value.replace("/", "%2F").replace('"', "%22"))


# --- ids on the lines -----------------------------------------------------------------------


@pytest.mark.django_db
def test_a_launch_s_lines_carry_its_request_user_and_sandbox(daytona, owner):
    client = signed_in(owner)
    with capturing() as logs:
        response = launch(client)
    assert response.status_code == 200
    request_id = response["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", request_id)
    sandbox = Sandbox.objects.get(user=owner)

    lines = [line for line in logs.json_lines() if line["request_id"] == request_id]
    created = next(
        line for line in lines if line["message"].startswith("Daytona sandbox") and "created" in line["message"]
    )
    assert (created["user_id"], created["sandbox_id"]) == (owner.pk, sandbox.pk)
    assert all(line["user_id"] == owner.pk for line in lines)
    other = signed_in(owner).get("/sandbox-portal/")
    assert other["X-Request-ID"] not in (None, request_id)


@pytest.mark.django_db
def test_a_request_id_from_a_client_is_not_taken(client, settings):
    settings.TRUSTED_PROXIES = []
    response = client.get("/accounts/login/", HTTP_X_REQUEST_ID="forged-id-1234")
    assert response["X-Request-ID"] != "forged-id-1234"

    settings.TRUSTED_PROXIES = ["127.0.0.1"]  # the test client's address: a proxy in front
    assert client.get("/accounts/login/", HTTP_X_REQUEST_ID="edge-1234")["X-Request-ID"] == "edge-1234"
    for unsafe in ("two words", "x" * 65, "a\nb", "<script>"):
        assert client.get("/accounts/login/", HTTP_X_REQUEST_ID=unsafe)["X-Request-ID"] != unsafe


@pytest.mark.django_db
def test_a_task_s_lines_carry_its_id_and_its_sandbox(daytona, owner):
    assert launch(signed_in(owner)).status_code == 200
    sandbox = Sandbox.objects.get(user=owner)
    with capturing() as logs:
        refresh_sandbox_activity.apply(args=[sandbox.pk], task_id="task-5f1e")
    lines = [line for line in logs.json_lines() if line["request_id"] == "task-5f1e"]
    assert any(line["sandbox_id"] == sandbox.pk and line["logger"] == "urllib3.connectionpool" for line in lines)
    assert all(line["user_id"] is None for line in lines)


# --- the settings, in real processes --------------------------------------------------------


def test_log_format_json_writes_one_object_per_line():
    script = (
        "import logging, django; django.setup()\n"
        "from joepro import request_context\n"
        "log = logging.getLogger('sandboxes.demo')\n"
        "with request_context.bound(request_id='r-1', user_id=7, sandbox_id=9):\n"
        "    log.warning('hello %s', 'there', extra={'attempt': 2})\n"
        "try:\n"
        "    raise ValueError('line one\\nline two')\n"
        "except ValueError:\n"
        "    log.exception('it failed')\n"
    )
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "joepro.settings", "LOG_FORMAT": "json"}
    result = subprocess.run([PYTHON, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    hello, failed = [json.loads(line) for line in result.stderr.splitlines()]
    assert list(hello)[:7] == ["time", "level", "logger", "message", "request_id", "user_id", "sandbox_id"]
    assert hello["time"].endswith("+00:00") and hello["level"] == "WARNING" and hello["logger"] == "sandboxes.demo"
    assert (hello["message"], hello["request_id"], hello["user_id"], hello["sandbox_id"]) == (
        "hello there",
        "r-1",
        7,
        9,
    )
    assert hello["attempt"] == 2
    assert failed["request_id"] is None and "ValueError: line one\nline two" in failed["exc_info"]


def test_an_unknown_log_format_is_refused():
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "joepro.settings", "LOG_FORMAT": "xml"}
    result = subprocess.run(
        [PYTHON, "-c", "import django; django.setup()"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert result.returncode != 0 and "LOG_FORMAT must be plain or json" in result.stderr


@contextmanager
def serving(trusted_proxies: str):
    """``bin/serve`` with JSON logs; yields its URL, and leaves what it wrote in ``serving.output``."""
    served = Served(url="")
    try:
        with bin_serve(
            DJANGO_SECURE_SSL_REDIRECT="false", TRUSTED_PROXIES=trusted_proxies, LOG_FORMAT="json"
        ) as served:
            yield served.url
    finally:
        serving.output = served.output


def get_from(address: str, url: str, headers: dict) -> httpx.Response:
    """A GET from this loopback address (the server trusts 127.0.0.1 only)."""
    with httpx.Client(transport=httpx.HTTPTransport(local_address=address), timeout=10) as client:
        return client.get(url, headers=headers)


@pytest.mark.django_db
def test_under_bin_serve_every_line_is_json_and_only_a_proxy_s_request_id_is_kept():
    headers = {"X-Forwarded-For": "203.0.113.9", "X-Request-ID": "edge-7f3a9c"}
    with serving("127.0.0.1") as url:
        kept = get_from("127.0.0.1", f"{url}/api/sandbox?token=abc123secret", headers)
        forged = get_from("127.0.0.2", f"{url}/api/sandbox?from=elsewhere", headers)  # bypassed the proxy
    lines = [json.loads(line) for line in serving.output.splitlines()]  # every line is an object
    assert all(FIELDS <= line.keys() for line in lines)
    assert any(line["logger"].startswith("uvicorn") and "Uvicorn running on" in line["message"] for line in lines)

    assert kept.status_code == 401 and kept.headers["x-request-id"] == "edge-7f3a9c"
    access = next(line for line in lines if line["logger"] == "uvicorn.access" and "203.0.113.9" in line["message"])
    assert access["request_id"] == "edge-7f3a9c" and "token=[redacted]" in access["message"]
    assert any(line["logger"] == "django.request" and line["request_id"] == "edge-7f3a9c" for line in lines)
    assert "abc123secret" not in serving.output

    assert re.fullmatch(r"[0-9a-f]{32}", forged.headers["x-request-id"])
    access = next(line for line in lines if line["logger"] == "uvicorn.access" and "from=elsewhere" in line["message"])
    assert access["request_id"] == forged.headers["x-request-id"] and "127.0.0.2" in access["message"]
