"""The processes a benchmark runs against, all on loopback: a PostgreSQL database of its own,
the fake Daytona, and the portal under uvicorn.

Each runs as a subprocess, so the portal, the fake and the load generator never share a GIL.
Their output goes to ``var/bench/*.log``.
"""

from __future__ import annotations

import os
import resource
import select
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx

ROOT = Path(__file__).resolve().parent.parent
LOG_DIR = ROOT / "var" / "bench"
PYTHON = sys.executable
API_KEY = "bench-daytona-key-7c41"
SECRET_KEY = "bench-secret-key-not-for-production-3f9a1c77e2b54d0e8a6f"
DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/joepro_bench"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/14"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


def database_url() -> str:
    return os.environ.get("BENCH_DATABASE_URL", DEFAULT_DATABASE_URL)


def redis_url() -> str:
    return os.environ.get("BENCH_REDIS_URL", DEFAULT_REDIS_URL)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_client(**kwargs) -> httpx.Client:
    # trust_env=False: a proxy configured in the environment must never see loopback traffic.
    return httpx.Client(trust_env=False, timeout=kwargs.pop("timeout", 30.0), **kwargs)


def portal_env(*, api_url: str = "", provider: str = "daytona", **extra: str) -> dict[str, str]:
    """The environment of every portal process (web server, management commands)."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DAYTONA_", "SANDBOX_", "DJANGO_", "DATABASE_", "REDIS_", "CELERY_"))
    }
    env.update(
        DATABASE_URL=database_url(),
        REDIS_URL=redis_url(),
        DJANGO_SECRET_KEY=SECRET_KEY,
        DJANGO_DEBUG="false",
        DJANGO_SECURE_SSL_REDIRECT="false",
        DJANGO_SECURE_COOKIES="false",
        DJANGO_ALLOWED_HOSTS="127.0.0.1,localhost",
        SANDBOX_PROVIDER=provider,
        SANDBOX_LAUNCH_RATE="100000/m",
        LOG_LEVEL="WARNING",
        PYTHONUNBUFFERED="1",
        NO_PROXY="127.0.0.1,localhost",
    )
    if provider == "daytona":
        # Sandboxes from a prebuilt snapshot, as a production deployment makes them: with the fake's
        # realistic timings a create then takes about a second (an image would be built first).
        env.update(DAYTONA_API_URL=api_url, DAYTONA_API_KEY=API_KEY, DAYTONA_TARGET="us", SANDBOX_SNAPSHOT="joepro-dev")
    env.update(extra)
    return env


# --- PostgreSQL -------------------------------------------------------------------------------


def recreate_database(url: str) -> None:
    """Drop and create the benchmark's database (never another one: its name must end in
    ``_bench``)."""
    import psycopg

    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    if not name.endswith("_bench"):
        raise SystemExit(f"Refusing to recreate {name!r}: the benchmark database's name must end in _bench.")
    admin_url = urlunsplit(parts._replace(path="/postgres"))
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            [name],
        )
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')


@dataclass
class CommandRun:
    wall: float  # seconds
    cpu: float  # user + system seconds of the command's process
    stdout: str


def manage(env: dict[str, str], *args: str, timeout: float = 300.0) -> CommandRun:
    """Run ``manage.py`` with ``args`` and wait for it. Raises on failure."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    result = subprocess.run(
        [PYTHON, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise RuntimeError(f"manage.py {' '.join(args)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return CommandRun(wall=elapsed, cpu=cpu, stdout=result.stdout)


# --- subprocesses -----------------------------------------------------------------------------


def group_cpu_seconds(pgid: int) -> float:
    """User + system CPU seconds of the live processes in process group ``pgid`` (Linux)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # fields[0] is the state (field 3 of stat); pgrp is field 5, utime 14, stime 15.
        if int(fields[2]) == pgid:
            total += int(fields[11]) + int(fields[12])
    return total / ticks


_running: set[Service] = set()


def stop_everything() -> None:
    """Stop every service still running (the harness's watchdog calls this)."""
    for service in list(_running):
        service.stop()


class Service:
    """A subprocess in its own process group, logged to ``var/bench/<name>.log``."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str]):
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.log_path = LOG_DIR / f"{name}.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=self._log,
            start_new_session=True,
        )
        _running.add(self)

    def read_line(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            raise RuntimeError(f"{self.name} printed nothing within {timeout:.0f}s (see {self.log_path})")
        return self.proc.stdout.readline().decode().strip()

    def cpu_seconds(self) -> float:
        """CPU time used so far by every process of its group (uvicorn's workers too)."""
        return group_cpu_seconds(self.proc.pid)

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited ({self.proc.returncode}); see {self.log_path}")

    def stop(self) -> None:
        _running.discard(self)
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(STOP_TIMEOUT)
        if self.proc.stdout:
            self.proc.stdout.close()
        self._log.close()


class FakeDaytonaProcess(Service):
    """``python -m tests.fake_daytona`` with its test hooks (``/__stats``, ``/__config``...)."""

    def __init__(self, *, latency: float):
        env = {**os.environ, "NO_PROXY": "127.0.0.1,localhost", "PYTHONUNBUFFERED": "1"}
        super().__init__(
            "fake-daytona",
            [PYTHON, "-m", "tests.fake_daytona", "--port", "0", "--latency", str(latency), "--api-key", API_KEY],
            env,
        )
        self.http = None
        try:
            self.api_url = self.read_line(START_TIMEOUT)
            if not self.api_url.startswith("http://127.0.0.1:"):
                raise RuntimeError(f"unexpected first line from the fake Daytona: {self.api_url!r}")
        except BaseException:
            self.stop()
            raise
        self.base_url = self.api_url.removesuffix("/api")
        self.http = http_client(base_url=self.base_url, timeout=120.0)

    def stop(self) -> None:
        if self.http is not None:
            self.http.close()
        super().stop()

    def hook(self, method: str, path: str, body: dict | None = None) -> dict:
        response = self.http.request(method, path, json=body)
        response.raise_for_status()
        return response.json() if response.content else {}

    def calls(self) -> dict[str, int]:
        return self.hook("GET", "/__stats")["calls"]

    def total_calls(self) -> int:
        return sum(self.calls().values())

    def configure(self, **settings) -> dict:
        return self.hook("POST", "/__config", settings)

    def reset(self) -> None:
        self.hook("POST", "/__reset")

    def set_state(self, id_or_name: str, state: str) -> None:
        self.hook("POST", "/__state", {"id_or_name": id_or_name, "state": state})

    def sandboxes(self) -> list[dict]:
        return self.hook("GET", "/__sandboxes")["sandboxes"]

    def seed(self, count: int, *, labels: dict, state: str, name_prefix: str) -> int:
        body = {"count": count, "labels": labels, "state": state, "name_prefix": name_prefix}
        return self.hook("POST", "/__seed", body)["created"]


class Portal(Service):
    """The portal's ASGI application under uvicorn on a free loopback port."""

    def __init__(self, name: str, env: dict[str, str], *, workers: int = 1, extra_args: list[str] = ()):
        self.env, self.workers, self.extra_args = env, workers, list(extra_args)
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        argv = [
            PYTHON, "-m", "uvicorn", "joepro.asgi:application",
            "--host", "127.0.0.1", "--port", str(self.port),
            "--workers", str(workers), "--lifespan", "off", "--no-access-log", "--log-level", "warning",
            "--backlog", "1024", "--ws-per-message-deflate", "false", *self.extra_args,
        ]  # fmt: skip
        super().__init__(name, argv, env)
        try:
            self._wait_until_up()
        except BaseException:
            self.stop()
            raise

    def restart(self) -> Portal:
        """Stop this server and start a new one with the same settings (on another port)."""
        self.stop()
        return Portal(self.name, self.env, workers=self.workers, extra_args=self.extra_args)

    def _wait_until_up(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        with http_client(timeout=2.0) as client:
            while time.monotonic() < deadline:
                self.check_alive()
                try:
                    client.get(f"{self.base_url}/api/openapi.json")
                    return
                except httpx.TransportError:
                    time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not answer within {START_TIMEOUT:.0f}s (see {self.log_path})")
