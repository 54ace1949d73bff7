"""Forwarding headers are believed from the configured proxies only.

The attack: a password sprayer puts a different ``X-Forwarded-For`` on every failed sign-in, so
that the per-address limit on failed sign-ins never adds up. Run against the real server
command (``bin/serve`` as a subprocess, with the test database), once trusting no proxy (the
default) and once trusting loopback as a proxy in front would be trusted.
"""

from __future__ import annotations

import os
import re
import subprocess
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest

from tests.conftest import make_user
from tests.serve_fixtures import bin_serve

ROOT = Path(__file__).resolve().parent.parent
PYTHON = ROOT / ".venv" / "bin" / "python"
OWNER = "owner@example.com"
PASSWORD = "correct horse 42"  # make_user's
PER_ADDRESS = 10  # allauth's default: 10 failed sign-ins a minute per client address
TOO_MANY = re.compile(rb"Too many failed login attempts")

pytestmark = pytest.mark.django_db(transaction=True)  # the server process reads committed rows


@pytest.fixture(scope="module")
def static_root(tmp_path_factory) -> Path:
    """Static files collected as bin/run collects them: with DEBUG off the pages name hashed files."""
    root = tmp_path_factory.mktemp("static")
    env = {**os.environ, "DJANGO_DEBUG": "false", "DJANGO_STATIC_ROOT": str(root)}
    command = [PYTHON, "manage.py", "collectstatic", "--no-input"]
    subprocess.run(command, cwd=ROOT, env=env, check=True, capture_output=True)
    return root


@pytest.fixture
def serve(transactional_db, static_root):
    """Starts ``bin/serve`` with ``TRUSTED_PROXIES``; yields the server's URL."""
    with ExitStack() as servers:

        def start(trusted_proxies: str) -> str:
            served = servers.enter_context(
                bin_serve(
                    DJANGO_SECURE_SSL_REDIRECT="false",
                    DJANGO_SECURE_COOKIES="false",
                    DJANGO_HSTS_SECONDS="0",
                    DJANGO_STATIC_ROOT=str(static_root),
                    TRUSTED_PROXIES=trusted_proxies,
                )
            )
            return served.url

        yield start


def sign_in(url: str, email: str, password: str, *, forwarded_for: str | None) -> httpx.Response:
    """One sign-in, as a script would make it: fetch the form (and its CSRF cookie), post it."""
    headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else {}
    with httpx.Client(base_url=url, headers=headers, timeout=10) as client:
        client.get("/accounts/login/").raise_for_status()
        return client.post(
            "/accounts/login/",
            data={"login": email, "password": password},
            headers={"X-CSRFToken": client.cookies["csrftoken"], "Referer": f"{url}/accounts/login/"},
        )


def refused(response: httpx.Response) -> bool:
    return response.status_code == 429 or bool(TOO_MANY.search(response.content))


def signed_in(response: httpx.Response) -> bool:
    return response.status_code == 302 and response.headers["location"] == "/sandbox-portal/"


def spray(url: str, attempts: int) -> list[httpx.Response]:
    """Failed sign-ins against as many accounts, each claiming another client address."""
    return [
        sign_in(url, f"victim-{n}@example.com", "guess", forwarded_for=f"198.51.100.{n + 1}") for n in range(attempts)
    ]


def test_without_trusted_proxies_a_spoofed_forwarded_for_does_not_escape_the_limit(serve):
    make_user(OWNER)
    url = serve("")

    answers = spray(url, PER_ADDRESS + 5)

    assert [refused(answer) for answer in answers] == [False] * PER_ADDRESS + [True] * 5
    # The sprayer's own address is locked out, the right password included, whatever it claims.
    assert refused(sign_in(url, OWNER, PASSWORD, forwarded_for="203.0.113.99"))
    assert refused(sign_in(url, OWNER, PASSWORD, forwarded_for=None))


def test_behind_a_trusted_proxy_the_forwarded_address_is_the_client(serve):
    make_user(OWNER)
    url = serve("127.0.0.1")

    # Every forwarded address is a client of its own: none reaches the limit ...
    answers = spray(url, PER_ADDRESS + 5)
    assert not any(refused(answer) for answer in answers)

    # ... and one address that fails too often is locked out alone.
    for n in range(PER_ADDRESS):
        assert not refused(sign_in(url, f"other-{n}@example.com", "guess", forwarded_for="203.0.113.7"))
    assert refused(sign_in(url, OWNER, PASSWORD, forwarded_for="203.0.113.7"))
    assert signed_in(sign_in(url, OWNER, PASSWORD, forwarded_for="203.0.113.8"))


def test_bin_serve_trusts_forwarding_headers_only_when_told(tmp_path):
    """The arguments it hands uvicorn, read back from a stand-in for the image's Python."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "python3").write_text(f'#!/bin/sh\n[ "$1" = -c ] && exec {PYTHON} "$@"\necho "$@" > {tmp_path}/argv\n')
    (fake_bin / "python3").chmod(0o755)
    checkout = tmp_path / "checkout"
    (checkout / "bin").mkdir(parents=True)
    (checkout / "bin" / "serve").write_bytes((ROOT / "bin" / "serve").read_bytes())
    (checkout / "bin" / "serve").chmod(0o755)
    (checkout / "joepro").symlink_to(ROOT / "joepro")

    def argv(trusted: str) -> str:
        env = {**os.environ, "PATH": f"{fake_bin}:{os.environ['PATH']}", "TRUSTED_PROXIES": trusted, "PORT": "9000"}
        subprocess.run([checkout / "bin" / "serve", "--lifespan", "off"], env=env, check=True, cwd=tmp_path)
        return (tmp_path / "argv").read_text().strip()

    assert argv("") == (
        "-m uvicorn joepro.asgi:application --host 127.0.0.1 --port 9000 --no-proxy-headers "
        "--ws-per-message-deflate false --lifespan off"
    )
    assert argv("10.0.0.5, 192.168.0.0/16") == (
        "-m uvicorn joepro.asgi:application --host 127.0.0.1 --port 9000 --proxy-headers "
        "--forwarded-allow-ips 10.0.0.5,192.168.0.0/16 --ws-per-message-deflate false --lifespan off"
    )
