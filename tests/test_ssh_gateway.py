"""The SSH gateway of local sandboxes, driven by the real OpenSSH client, with a real bubblewrap."""

import asyncio
import os
import re
import secrets
import shlex
import shutil
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
from sandboxes.local_only.ssh_gateway import EXPIRED_MESSAGE, STOPPED_MESSAGE, SshGateway, load_or_create_host_key
from sandboxes.models import AuditEvent, Sandbox
from sandboxes.providers import get_provider, reset_providers
from tests.conftest import launch, signed_in
from tests.local_fixtures import local_root, local_settings  # noqa: F401 - fixtures

pytestmark = [
    pytest.mark.django_db(transaction=True),  # the gateway's threads use the database too
    pytest.mark.skipif(shutil.which("ssh") is None, reason="needs the OpenSSH client (Debian: openssh-client)"),
]

CLIENT = ["-o", "BatchMode=yes", "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=5"]
ANY_HOST_KEY = ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"]


class RunningGateway:
    """The gateway on an event loop of its own in a background thread."""

    def __init__(self, host_key_path, *, port: int = 0):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="ssh-gateway", daemon=True)
        self.thread.start()
        key = load_or_create_host_key(host_key_path)
        self.gateway = SshGateway(host_key=key, bind="127.0.0.1", port=port)
        self.port = self._call(self.gateway.start())

    def _call(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=15)

    def stop(self) -> None:
        self._call(self.gateway.stop())
        self._call(self.loop.shutdown_default_executor())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


@pytest.fixture
def gateway(local_settings, tmp_path):  # noqa: F811
    running = RunningGateway(tmp_path / "ssh_host_ed25519_key")
    local_settings.SANDBOX_SSH_HOST = "127.0.0.1"
    local_settings.SANDBOX_SSH_PORT = running.port
    reset_providers()  # the portal's provider now hands out this host and port
    yield running
    running.stop()


def ssh(token: str, *command: str, port: int, tty=False, stdin: bytes = b"", options=ANY_HOST_KEY):
    argv = ["ssh", "-p", str(port), *CLIENT, *options, *(["-tt"] if tty else []), f"{token}@127.0.0.1", *command]
    return subprocess.run(argv, input=stdin, capture_output=True, timeout=20)


def ssh_access(owner) -> dict:
    response = launch(signed_in(owner))
    assert response.status_code == 200, response.content
    access = response.json()["access"]["ssh"]
    assert not access["token"].startswith("-"), "OpenSSH refuses usernames that begin with '-'"
    return access


def wait_for(condition, *, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


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

    assert (exact.returncode, exact.stdout) == (7, b"a\nb\nto-stderr\n")  # byte for byte, no CRs
    assert piped.returncode == 1 and piped.stdout.startswith(b"3\n")  # the unfinished line counts
    assert (script.returncode, script.stdout) == (0, b"script-in-/tmp\n")


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


def refused(result, message: str = EXPIRED_MESSAGE) -> bool:
    return result.returncode == 255 and message in result.stderr.decode() and result.stdout == b""


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
