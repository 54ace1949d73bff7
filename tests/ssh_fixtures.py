"""The SSH gateway of local sandboxes on a loop of its own, and helpers to drive it with the real
OpenSSH client (``ssh``, ``scp``, ``sftp``)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import shutil
import socket
import subprocess
import threading
import time

import pytest

from sandboxes.local_only.ssh_gateway import EXPIRED_MESSAGE, SshGateway, load_or_create_host_key
from sandboxes.providers import reset_providers
from tests.conftest import launch, signed_in

CLIENT = ["-o", "BatchMode=yes", "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=5"]
CLIENT_INFO = ["-o", "BatchMode=yes", "-o", "ConnectTimeout=5"]  # OpenSSH's default LogLevel, as users have it
ANY_HOST_KEY = ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"]

needs_ssh = pytest.mark.skipif(shutil.which("ssh") is None, reason="needs the OpenSSH client (Debian: openssh-client)")


class RunningGateway:
    """The gateway on an event loop of its own in a background thread."""

    def __init__(self, host_key_path, *, port: int = 0):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="ssh-gateway", daemon=True)
        self.thread.start()
        key = load_or_create_host_key(host_key_path)
        self.gateway = SshGateway(host_key=key, bind="127.0.0.1", port=port)
        self.port = self.call(self.gateway.start())

    def call(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=15)

    def stop(self) -> None:
        self.call(self.gateway.stop())
        self.call(self.loop.shutdown_default_executor())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


@pytest.fixture
def gateway(local_settings, tmp_path):
    running = RunningGateway(tmp_path / "ssh_host_ed25519_key")
    local_settings.SANDBOX_SSH_HOST = "127.0.0.1"
    local_settings.SANDBOX_SSH_PORT = running.port
    reset_providers()  # the portal's provider now hands out this host and port
    yield running
    running.stop()


def ssh_argv(
    token: str, *command: str, port: int, tty=False, options=ANY_HOST_KEY, extra=(), client=CLIENT
) -> list[str]:
    return [
        "ssh",
        "-p",
        str(port),
        *client,
        *options,
        *extra,
        *(["-tt"] if tty else []),
        f"{token}@127.0.0.1",
        *command,
    ]


def ssh(
    token: str,
    *command: str,
    port: int,
    tty=False,
    stdin: bytes = b"",
    options=ANY_HOST_KEY,
    extra=(),
    client=CLIENT,
    env=None,
):
    argv = ssh_argv(token, *command, port=port, tty=tty, options=options, extra=extra, client=client)
    return subprocess.run(argv, input=stdin, capture_output=True, timeout=20, env=env)


def ssh_access(owner) -> dict:
    response = launch(signed_in(owner))
    assert response.status_code == 200, response.content
    access = response.json()["access"]["ssh"]
    assert not access["token"].startswith("-"), "OpenSSH refuses usernames that begin with '-'"
    return access


def refused(result, message: str = EXPIRED_MESSAGE) -> bool:
    return result.returncode == 255 and message in result.stderr.decode() and result.stdout == b""


def wait_for(condition, *, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def read_until(stream, marker: bytes, *, seconds: float = 10.0) -> bytes:
    """Read a client's output pipe until ``marker`` shows up, for at most ``seconds``."""
    seen, deadline = b"", time.monotonic() + seconds
    while marker not in seen:
        remaining = deadline - time.monotonic()
        ready, _, _ = select.select([stream], [], [], max(0.0, remaining))
        if not ready:
            raise AssertionError(f"no {marker!r} within {seconds} s; got {seen[-300:]!r}")
        chunk = os.read(stream.fileno(), 65536)
        if not chunk:
            raise AssertionError(f"output ended before {marker!r}; got {seen[-300:]!r}")
        seen += chunk
    return seen


@contextlib.contextmanager
def forwarding(token: str, *forwards: str, port: int, client=CLIENT):
    """``ssh -N -L <forward> ...`` running; yields the client (its stderr a pipe) once every
    local port accepts connections."""
    extra = ["-N", *(arg for forward in forwards for arg in ("-L", forward))]
    process = subprocess.Popen(
        ssh_argv(token, port=port, extra=extra, client=client), stdin=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        for forward in forwards:
            local = int(forward.split(":", 1)[0])
            assert wait_for(lambda local=local: _accepts(local) or process.poll() is not None), local
            assert process.poll() is None, process.stderr.read().decode()
        yield process
    finally:
        process.terminate()
        process.wait(timeout=10)
        process.stderr.close()


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def http_get(port: int, path: str = "/", *, timeout: float = 10.0) -> bytes:
    """A raw HTTP/1.0 GET to 127.0.0.1:port: the whole answer (b"" when the connection was
    closed without one)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as connection:
        connection.sendall(f"GET {path} HTTP/1.0\r\nHost: sandbox\r\n\r\n".encode())
        answer = b""
        try:
            while chunk := connection.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass
    return answer
