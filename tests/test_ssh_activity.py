"""SSH traffic through the gateway counts as use for the portal's idle policy: typing in a shell,
a forward's bytes, a file transfer. An open but untouched session does not. The portal's clock
is moved with time-machine (``time.time()`` and ``datetime.now()`` in every thread of the test
process, so the gateway's once-a-minute throttle moves with it); the idle stop runs at each step
as Celery beat runs it every ``SANDBOX_IDLE_CHECK_SECONDS``."""

import os
import subprocess
import time
from datetime import timedelta

import pytest
import time_machine
from django.conf import settings
from django.utils import timezone

from sandboxes import services
from sandboxes.local_only.ssh_gateway import ENDED_STOPPED_MESSAGE, SFTP_SERVER
from sandboxes.models import Sandbox, SandboxState
from sandboxes.providers import get_provider
from sandboxes.providers.base import RemoteState
from tests.local_fixtures import local_root, local_settings, run, wait_for_port  # noqa: F401 - fixtures
from tests.ssh_fixtures import (  # noqa: F401 - fixtures
    ANY_HOST_KEY,
    CLIENT,
    forwarding,
    free_port,
    gateway,
    http_get,
    needs_ssh,
    read_until,
    ssh_access,
    ssh_argv,
    wait_for,
)

pytestmark = [pytest.mark.django_db(transaction=True), needs_ssh]


def last_activity(sandbox: Sandbox):
    return Sandbox.objects.values_list("last_activity_at", flat=True).get(pk=sandbox.pk)


def open_shell(token: str, port: int) -> subprocess.Popen:
    shell = subprocess.Popen(
        ssh_argv(token, port=port, tty=True), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    read_until(shell.stdout, b"sandbox@")  # the prompt
    return shell


def close(shell: subprocess.Popen) -> None:
    shell.kill()
    shell.wait()
    for stream in (shell.stdin, shell.stdout, shell.stderr):
        stream.close()


def test_typing_in_ssh_keeps_the_sandbox_running(gateway, owner):
    token = ssh_access(owner)["token"]
    sandbox = Sandbox.objects.get(user=owner)
    limit = timedelta(minutes=settings.SANDBOX_IDLE_MINUTES)
    check_every = timedelta(seconds=settings.SANDBOX_IDLE_CHECK_SECONDS)
    shell = open_shell(token, gateway.port)
    try:
        with time_machine.travel(timezone.now(), tick=True) as clock:
            start = timezone.now()
            next_check = start + check_every
            while timezone.now() - start < limit + 2 * check_every:
                clock.shift(timedelta(minutes=1))
                typed_at = timezone.now()
                shell.stdin.write(b"#")  # a keystroke, echoed by the shell
                shell.stdin.flush()
                assert wait_for(lambda typed_at=typed_at: last_activity(sandbox) >= typed_at)
                if timezone.now() >= next_check:
                    next_check += check_every
                    report = services.sandboxes_stop_idle(now=timezone.now())
                    assert report.stopped == [], f"stopped after {timezone.now() - start} of typing"
            assert shell.poll() is None  # the session went on past its token's expiry
    finally:
        close(shell)

    sandbox.refresh_from_db()
    assert sandbox.state == SandboxState.STARTED
    assert get_provider("local").get(sandbox.remote_id).state is RemoteState.STARTED


def test_an_untouched_ssh_session_does_not_keep_the_sandbox_running(gateway, owner):
    token = ssh_access(owner)["token"]
    sandbox = Sandbox.objects.get(user=owner)
    limit = timedelta(minutes=settings.SANDBOX_IDLE_MINUTES)
    check_every = timedelta(seconds=settings.SANDBOX_IDLE_CHECK_SECONDS)
    shell = open_shell(token, gateway.port)
    try:
        with time_machine.travel(timezone.now(), tick=True) as clock:
            used_at = last_activity(sandbox)
            idle_when_stopped = None
            while idle_when_stopped is None and timezone.now() - used_at < limit + 3 * check_every:
                clock.shift(check_every)
                idle = timezone.now() - used_at
                if services.sandboxes_stop_idle(now=timezone.now()).stopped:
                    idle_when_stopped = idle
                else:
                    assert idle <= limit, f"still running after {idle} untouched"
            started = time.monotonic()
            shell.wait(timeout=10)  # the stop ends the session, saying so
            ended_after = time.monotonic() - started
        assert last_activity(sandbox) == used_at  # neither the open session nor its end was use
    finally:
        stderr = shell.stderr.read().decode()
        close(shell)

    assert idle_when_stopped is not None and limit < idle_when_stopped <= limit + check_every
    assert ended_after < 5 and ENDED_STOPPED_MESSAGE in stderr.replace("\r", "")
    assert Sandbox.objects.get(pk=sandbox.pk).state == SandboxState.STOPPED


def test_forwards_and_file_transfers_count_as_use(gateway, owner, tmp_path):
    token = ssh_access(owner)["token"]
    sandbox = Sandbox.objects.get(user=owner)
    provider = get_provider("local")
    run(provider, sandbox.remote_id, "(nohup python3 -m http.server 8000 --bind 127.0.0.1 >/dev/null 2>&1 &)")
    wait_for_port(provider, sandbox.remote_id, 8000)
    local = free_port()
    (tmp_path / "file.txt").write_text("some text\n")

    with time_machine.travel(timezone.now(), tick=True) as clock:
        with forwarding(token, f"{local}:localhost:8000", port=gateway.port):
            clock.shift(timedelta(minutes=30))
            forwarded_at = timezone.now()
            assert http_get(local).startswith(b"HTTP/1.0 200")
            assert wait_for(lambda: last_activity(sandbox) >= forwarded_at)
            clock.shift(timedelta(minutes=30))
            still_forwarding_at = timezone.now()  # the same connection, a while later
            assert http_get(local).startswith(b"HTTP/1.0 200")
            assert wait_for(lambda: last_activity(sandbox) >= still_forwarding_at)
        if os.access(SFTP_SERVER, os.X_OK):  # scp is SFTP underneath
            clock.shift(timedelta(minutes=30))
            copied_at = timezone.now()
            scp = ["scp", "-P", str(gateway.port), *CLIENT, *ANY_HOST_KEY, str(tmp_path / "file.txt")]
            assert subprocess.run([*scp, f"{token}@127.0.0.1:file.txt"], capture_output=True).returncode == 0
            assert wait_for(lambda: last_activity(sandbox) >= copied_at)

    assert Sandbox.objects.get(pk=sandbox.pk).last_activity_source == "ssh"
