"""Revoking an SSH token ends the connections it opened, within 5 seconds, saying why: a newer
token minted by the next launch, a stop through the portal, the provider's ``revoke_access``,
a deleted sandbox. Expiry alone does not end an open connection. Driven by the real OpenSSH
clients against real bubblewrap sandboxes."""

import os
import subprocess
import time
from datetime import timedelta
from pathlib import Path

import pytest
import time_machine
from django.utils import timezone

from sandboxes import services
from sandboxes.local_only.ssh_gateway import ENDED_STOPPED_MESSAGE, REVOKED_MESSAGE, SFTP_SERVER
from sandboxes.models import AuditEvent, Sandbox
from sandboxes.providers import get_provider
from tests.local_fixtures import local_root, local_settings  # noqa: F401 - fixtures
from tests.ssh_fixtures import (  # noqa: F401 - fixtures
    ANY_HOST_KEY,
    CLIENT,
    CLIENT_INFO,
    forwarding,
    free_port,
    gateway,
    needs_ssh,
    read_until,
    refused,
    ssh,
    ssh_access,
    ssh_argv,
    wait_for,
)

pytestmark = [pytest.mark.django_db(transaction=True), needs_ssh]

LIMIT = 5.0  # seconds from the revocation to the end of the connection


@pytest.fixture
def fresh_tokens(local_settings):
    local_settings.SANDBOX_ACCESS_REUSE_MARGIN = timedelta(days=1)  # every launch mints a new token


def ended_within(client: subprocess.Popen, started: float) -> tuple[float, str]:
    """Seconds from ``started`` until the client exited, and its stderr."""
    try:
        client.wait(timeout=LIMIT + 5)
    except subprocess.TimeoutExpired:
        client.kill()
        client.wait()
        raise AssertionError("the connection stayed open") from None
    return time.monotonic() - started, client.stderr.read().decode()


def in_sandbox(remote_id: str, name: str) -> bool:
    """Whether a process called ``name`` runs in the sandbox."""
    for pid in get_provider("local").processes(remote_id):
        try:
            if name in Path(f"/proc/{pid}/cmdline").read_text():
                return True
        except OSError:
            continue
    return False


def test_a_newer_token_ends_an_open_shell(gateway, owner, fresh_tokens):
    token = ssh_access(owner)["token"]
    shell = subprocess.Popen(
        ssh_argv(token, port=gateway.port, tty=True),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    read_until(shell.stdout, b"sandbox@")  # the prompt

    started = time.monotonic()
    newer = ssh_access(owner)["token"]  # the next launch
    elapsed, stderr = ended_within(shell, started)

    assert elapsed < LIMIT and shell.returncode == 255
    assert REVOKED_MESSAGE in stderr.replace("\r", "")
    assert token not in stderr
    assert ssh(newer, "true", port=gateway.port).returncode == 0  # the sandbox is still there


def test_stopping_the_sandbox_ends_an_open_forward(gateway, owner):
    token = ssh_access(owner)["token"]
    sandbox = Sandbox.objects.get(user=owner)
    local = free_port()

    with forwarding(token, f"{local}:localhost:3000", port=gateway.port) as forward:
        started = time.monotonic()
        services.sandbox_stop(sandbox=sandbox, actor_type=AuditEvent.ActorType.ADMIN, reason="test")
        elapsed, stderr = ended_within(forward, started)

    assert elapsed < LIMIT and forward.returncode == 255
    assert ENDED_STOPPED_MESSAGE in stderr


@pytest.mark.skipif(not os.access(SFTP_SERVER, os.X_OK), reason="needs Debian's openssh-sftp-server")
def test_revoking_access_ends_an_open_sftp_session(gateway, owner):
    token = ssh_access(owner)["token"]
    remote_id = Sandbox.objects.get(user=owner).remote_id
    argv = ["sftp", "-P", str(gateway.port), *CLIENT, *ANY_HOST_KEY, "-b", "-", f"{token}@127.0.0.1"]
    sftp = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert wait_for(lambda: in_sandbox(remote_id, "sftp-server"))

    started = time.monotonic()
    get_provider("local").revoke_access(remote_id, preview_port=3000, links=[])
    assert wait_for(lambda: not gateway.gateway.clients, seconds=LIMIT + 1)
    elapsed = time.monotonic() - started
    sftp.stdin.write(b"ls\n")  # sftp itself learns of it at its next command
    sftp.stdin.close()
    _, stderr = ended_within(sftp, started)

    assert elapsed < LIMIT and sftp.returncode != 0
    assert REVOKED_MESSAGE in stderr
    assert wait_for(lambda: not in_sandbox(remote_id, "sftp-server"))  # the server ended with it


def test_deleting_the_sandbox_ends_a_running_command(gateway, owner):
    token = ssh_access(owner)["token"]
    sandbox = Sandbox.objects.get(user=owner)
    command = subprocess.Popen(
        ssh_argv(token, "sleep 300", port=gateway.port), stdin=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    assert wait_for(lambda: in_sandbox(sandbox.remote_id, "sleep"))

    started = time.monotonic()
    services.sandbox_delete(sandbox=sandbox, actor_type=AuditEvent.ActorType.ADMIN, reason="test")
    elapsed, stderr = ended_within(command, started)

    assert elapsed < LIMIT and command.returncode == 255
    assert ENDED_STOPPED_MESSAGE in stderr


def test_a_connection_outlives_its_tokens_expiry(gateway, owner):
    token = ssh_access(owner)["token"]
    shell = subprocess.Popen(
        ssh_argv(token, port=gateway.port, tty=True),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        read_until(shell.stdout, b"sandbox@")
        with time_machine.travel(timezone.now() + timedelta(hours=3), tick=True):
            later = ssh(token, "true", port=gateway.port)
            time.sleep(gateway.gateway.check_interval * 2)  # two checks of the open connection
            shell.stdin.write(b"echo still-$((40+2))\n")
            shell.stdin.flush()
            read_until(shell.stdout, b"still-42")
        assert shell.poll() is None
    finally:
        shell.kill()
        shell.wait()
        shell.stdin.close()
        shell.stderr.close()
        shell.stdout.close()

    assert refused(later)  # a new connection needs a valid token
