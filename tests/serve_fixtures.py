"""The portal's own web server, ``bin/serve``, in a process of its own on the test database."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
from django.db import connections

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # nothing listens once the probe is closed


def database_url() -> str:
    """DATABASE_URL naming the test database the test process uses."""
    parts = urlsplit(os.environ["DATABASE_URL"])
    return urlunsplit(parts._replace(path="/" + connections["default"].settings_dict["NAME"]))


@dataclass
class Served:
    url: str
    output: str = ""  # what the server wrote, once it has stopped


@contextmanager
def bin_serve(**environment: str) -> Iterator[Served]:
    """``bin/serve`` on a free loopback port with DEBUG off and ``environment`` on top, once it
    answers ``/healthz``; stopped with SIGTERM at the end, its output kept in ``output``."""
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": database_url(),
        "DJANGO_DEBUG": "false",
        "HOST": "127.0.0.1",
        "PORT": str(port),
        **environment,
    }
    server = subprocess.Popen(
        [ROOT / "bin" / "serve"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    served = Served(url=f"http://127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + 30
        while True:
            assert server.poll() is None, server.stdout.read().decode()
            assert time.monotonic() < deadline, "bin/serve did not start"
            try:
                httpx.get(f"{served.url}/healthz", timeout=2)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        yield served
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            output, _ = server.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            output, _ = server.communicate()
        served.output = output.decode(errors="replace")
