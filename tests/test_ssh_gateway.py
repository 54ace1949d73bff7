"""The SSH gateway of local sandboxes, driven by the real OpenSSH client, with a real bubblewrap."""

import os
import re
import secrets
import shlex
import signal
import stat
import subprocess
import sys
import threading
import time
from datetime import timedelta

import pytest
from django.conf import settings as django_settings
from django.core.management import call_command

from sandboxes import services
from sandboxes.local_only.ssh_gateway import STOPPED_MESSAGE, load_or_create_host_key
from sandboxes.models import AuditEvent, Sandbox
from sandboxes.providers import get_provider
from tests.local_fixtures import local_root, local_settings  # noqa: F401 - fixtures
from tests.ssh_fixtures import (  # noqa: F401 - fixtures
    ANY_HOST_KEY,
    CLIENT,
    RunningGateway,
    gateway,
    needs_ssh,
    refused,
    ssh,
    ssh_access,
    wait_for,
)

pytestmark = [
    pytest.mark.django_db(transaction=True),  # the gateway's threads use the database too
    needs_ssh,
]


# --- sessions ---------------------------------------------------------------------------------


def test_the_ssh_command_runs_a_command_in_the_users_sandbox(gateway, owner, local_settings):
    local_settings.SANDBOX_ACTIVITY_WRITE_SECONDS = 0
    access = ssh_access(owner)
    sandbox = Sandbox.objects.get(user=owner)
    launched_activity = sandbox.last_activity_at

    assert access["command"] == f"ssh -p {gateway.port} {access['token']}@127.0.0.1"
    program, *arguments = shlex.split(access["command"])
    script = 'echo $((6*7)); whoami; hostname; cat /proc/1/cmdline | tr "\\0" " "; echo; echo via-ssh > ~/note'
    result = subprocess.run([program, *CLIENT, *ANY_HOST_KEY, *arguments, script], capture_output=True, timeout=20)

    assert result.returncode == 0, result.stderr
    answer, user, hostname, pid1 = result.stdout.decode().splitlines()
    assert (answer, user, hostname) == ("42", "sandbox", sandbox.remote_name)
    assert "agent.py serve" in pid1  # PID 1 is the sandbox's agent: the command ran inside it
    note = get_provider("local").run(sandbox.remote_id, ["cat", "note"])
    assert note.stdout == b"via-ssh\n"
    assert wait_for(lambda: Sandbox.objects.get(pk=sandbox.pk).last_activity_at > launched_activity)


def test_commands_behave_as_over_any_ssh_server(gateway, owner):
    token = ssh_access(owner)["token"]

    exact = ssh(token, "printf 'a\\nb\\n'; printf 'to-stderr\\n' >&2; exit 7", port=gateway.port)
    piped = ssh(token, "wc -w; cat ~/.no-such-file", port=gateway.port, stdin=b"one\ntwo\nthree")
    script = ssh(token, port=gateway.port, stdin=b"cd /tmp\necho script-in-$PWD\n")
    binary = bytes(range(256)) * 512 + b"\x04no end of input here\x04"
    echoed = ssh(token, "cat; echo; tty; printenv TERM || echo no-term", port=gateway.port, stdin=binary)

    # byte for byte, no CRs, each stream on its own
    assert (exact.returncode, exact.stdout, exact.stderr) == (7, b"a\nb\n", b"to-stderr\n")
    assert piped.returncode == 1 and piped.stdout == b"3\n"  # the unfinished line counts
    assert b"No such file or directory" in piped.stderr
    assert (script.returncode, script.stdout) == (0, b"script-in-/tmp\n")
    # binary-safe input (^D is a byte like any other), the end of input is end of file, no terminal
    assert echoed.stdout == binary + b"\nnot a tty\nno-term\n"


def test_an_interactive_session_is_a_login_shell_on_a_terminal(gateway, owner):
    token = ssh_access(owner)["token"]

    result = ssh(token, port=gateway.port, tty=True, stdin=b"echo hi-$((1+1)) $TERM\nexit\n")

    assert result.returncode == 0, result.stderr
    assert b"hi-2 xterm-256color" in result.stdout
    assert b"sandbox@" in result.stdout  # the prompt of the sandbox's login shell


def test_closing_the_connection_ends_the_session(gateway, owner):
    token = ssh_access(owner)["token"]
    remote_id = Sandbox.objects.get(user=owner).remote_id
    provider = get_provider("local")

    def sleeping() -> bool:
        return provider.run(remote_id, ["pgrep", "-x", "sleep"]).exit_code == 0

    argv = ["ssh", "-p", str(gateway.port), *CLIENT, *ANY_HOST_KEY, f"{token}@127.0.0.1", "sleep 300"]
    client = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_for(sleeping)
    finally:
        client.kill()
        client.wait()

    assert wait_for(lambda: not sleeping())  # unlike the web terminal, nothing is left running


# --- refusals ---------------------------------------------------------------------------------


def test_unknown_revoked_and_expired_tokens_are_refused(gateway, owner, local_settings):
    local_settings.SANDBOX_ACCESS_REUSE_MARGIN = timedelta(days=1)  # every launch mints a new token
    first = ssh_access(owner)["token"]
    second = ssh_access(owner)["token"]
    local_settings.SANDBOX_SSH_TOKEN_MINUTES = 0
    expired = ssh_access(owner)["token"]

    assert len({first, second, expired}) == 3
    assert refused(ssh(secrets.token_hex(16), "true", port=gateway.port))
    assert refused(ssh(first, "true", port=gateway.port))  # replaced by the second launch
    assert refused(ssh(second, "true", port=gateway.port))  # replaced by the third
    assert refused(ssh(expired, "true", port=gateway.port))


def test_the_token_of_a_stopped_sandbox_is_refused(gateway, owner):
    token = ssh_access(owner)["token"]
    assert ssh(token, "true", port=gateway.port).returncode == 0

    services.sandbox_stop(sandbox=Sandbox.objects.get(user=owner), actor_type=AuditEvent.ActorType.ADMIN, reason="test")

    assert refused(ssh(token, "true", port=gateway.port))  # stopping revoked it


def test_a_sandbox_that_died_is_reported_stopped(gateway, owner):
    token = ssh_access(owner)["token"]
    remote_id = Sandbox.objects.get(user=owner).remote_id
    provider = get_provider("local")

    for pid in provider.processes(remote_id):  # as a machine restart would
        os.kill(pid, signal.SIGKILL)
    assert wait_for(lambda: not provider.processes(remote_id))

    assert refused(ssh(token, "true", port=gateway.port), STOPPED_MESSAGE)


# --- the host key and the command ---------------------------------------------------------------


def test_the_host_key_is_generated_once_and_kept(local_settings, tmp_path):  # noqa: F811
    key_path = tmp_path / "var" / "ssh_host_ed25519_key"
    known_hosts = tmp_path / "known_hosts"

    def remembering(checking: str) -> list[str]:
        return ["-o", f"StrictHostKeyChecking={checking}", "-o", f"UserKnownHostsFile={known_hosts}"]

    first = RunningGateway(key_path)
    port = first.port
    try:
        seen = ssh("x" * 32, port=port, options=remembering("accept-new"))
    finally:
        first.stop()
    second = RunningGateway(key_path, port=port)  # a restart
    try:
        again = ssh("x" * 32, port=port, options=remembering("yes"))
    finally:
        second.stop()

    assert refused(seen) and refused(again)  # the client accepted the same host key both times
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert second.gateway.fingerprint == first.gateway.fingerprint


def test_the_command_serves_until_sigterm(local_root, tmp_path):  # noqa: F811
    key_path = tmp_path / "ssh_host_ed25519_key"
    env = {**os.environ, "SANDBOX_LOCAL_ROOT": str(local_root), "SANDBOX_SSH_HOST_KEY": str(key_path)}
    gateway = subprocess.Popen(
        [sys.executable, "manage.py", "run_ssh_gateway", "--port", "0", "--bind", "127.0.0.1"],
        cwd=django_settings.BASE_DIR,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    watchdog = threading.Timer(20, gateway.kill)
    watchdog.start()
    try:
        lines = []
        while not any("listening" in line for line in lines):
            line = gateway.stderr.readline()
            assert line, "".join(lines)
            lines.append(line)
        port = int(re.search(r"port (\d+)", lines[-1]).group(1))
        assert load_or_create_host_key(key_path).get_fingerprint() in lines[-1]
        token = secrets.token_hex(16)

        assert refused(ssh(token, "true", port=port))

        gateway.send_signal(signal.SIGTERM)
        assert gateway.wait(timeout=10) == 0
        assert token not in "".join(lines) + gateway.stderr.read()
    finally:
        watchdog.cancel()
        gateway.kill()
        gateway.wait()


def test_the_gateway_is_needed_with_local_sandboxes_only(settings):
    settings.SANDBOX_PROVIDER = "local"
    with pytest.raises(SystemExit) as local:
        call_command("run_ssh_gateway", "--needed")
    settings.SANDBOX_PROVIDER = "daytona"
    with pytest.raises(SystemExit) as daytona:
        call_command("run_ssh_gateway", "--needed")

    assert (local.value.code, daytona.value.code) == (0, 1)


# --- token guessing -----------------------------------------------------------------------------


def test_wrong_tokens_from_one_address_are_throttled_then_let_through_after_the_cool_down(
    gateway, owner, local_settings
):
    from sandboxes.local_only.ssh_gateway import THROTTLED_MESSAGE

    local_settings.SANDBOX_SSH_FAILED_TOKENS_PER_MINUTE = 3
    local_settings.SANDBOX_SSH_THROTTLE_SECONDS = 3
    token = ssh_access(owner)["token"]
    throttled = THROTTLED_MESSAGE.split(".")[0]

    guesses = [ssh(secrets.token_urlsafe(24), "true", port=gateway.port) for _ in range(3)]
    assert all(refused(guess) for guess in guesses)  # each told the token is wrong

    right_but_throttled = ssh(token, "echo in", port=gateway.port)
    assert refused(right_but_throttled, throttled), right_but_throttled.stderr
    assert "Wait" in right_but_throttled.stderr.decode()
    assert refused(ssh(secrets.token_urlsafe(24), "true", port=gateway.port), throttled)

    time.sleep(3.2)
    after = ssh(token, "echo in", port=gateway.port)
    assert (after.returncode, after.stdout) == (0, b"in\n"), after.stderr
