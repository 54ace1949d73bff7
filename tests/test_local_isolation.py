"""What a local sandbox can and cannot reach: tried from inside, with the host's real paths."""

import os

import pytest
from django.conf import settings

from tests.local_fixtures import local_root, provider, run, spec  # noqa: F401 - fixtures


@pytest.fixture(scope="module")
def pair(provider):
    """Two running sandboxes; the first one keeps a secret in its home."""
    first = provider.create(spec(), wait_seconds=10)
    second = provider.create(spec(), wait_seconds=10)
    run(provider, first.id, "echo first-secret > ~/secret.txt; sleep 600 >/dev/null 2>&1 &")
    return first, second


def attempt(provider, remote_id: str, script: str) -> tuple[int, str]:
    result = provider.run(remote_id, ["bash", "-c", script], timeout=20)
    return result.exit_code, (result.stdout + result.stderr).decode()


def test_a_sandbox_cannot_read_another_sandboxs_home(provider, pair):
    first, second = pair
    other_home = provider.root / first.id / "home"

    code, output = attempt(provider, second.id, f"cat {other_home}/secret.txt; ls {provider.root}")
    assert code != 0 and "first-secret" not in output
    assert "No such file or directory" in output
    assert run(provider, second.id, "ls -A /home") == "sandbox\n"
    assert "secret.txt" not in run(provider, second.id, "ls -A ~")
    code, output = attempt(provider, second.id, "grep -rs first-secret /etc /home /tmp /var /run; echo searched")
    assert "first-secret" not in output and "searched" in output


def test_a_sandbox_cannot_read_the_portals_files(provider, pair):
    _, sandbox = pair
    base = settings.BASE_DIR
    for path in (base / "joepro" / "settings.py", base / ".env", base / "var", base / "var" / "secret_key"):
        code, output = attempt(provider, sandbox.id, f"ls -la {path}; cat {path}")
        assert code != 0, output
        assert "No such file or directory" in output
    code, output = attempt(provider, sandbox.id, f"ls {base.parent}; ls /root; cat /etc/shadow /etc/npmrc")
    assert code != 0
    assert "SECRET_KEY" not in output


def test_a_sandbox_sees_only_its_own_processes(provider, pair):
    first, second = pair
    listing = run(provider, second.id, "ps -eo pid=,comm=")
    commands = [line.split(None, 1) for line in listing.strip().splitlines()]
    assert commands[0] == ["1", "python3"]  # the agent is PID 1
    assert {comm for _, comm in commands} <= {"python3", "bash", "ps"}
    assert "sleep" not in listing  # the other sandbox's sleep 600
    visible = {int(name) for name in run(provider, second.id, "ls /proc").split() if name.isdigit()}
    assert 1 in visible and len(visible) <= 3  # the agent, the command (and its bash)


def test_a_sandbox_runs_without_capabilities_or_privileges(provider, pair):
    _, sandbox = pair
    status = run(provider, sandbox.id, "cat /proc/self/status")
    for field in ("CapEff", "CapPrm", "CapBnd", "CapAmb"):
        assert f"{field}:\t0000000000000000" in status
    assert run(provider, sandbox.id, "id -u; id -un") == "1000\nsandbox\n"
    code, output = attempt(provider, sandbox.id, "unshare -U true")  # no nested user namespaces
    assert code != 0
    code, output = attempt(provider, sandbox.id, "mount -t tmpfs none /tmp")
    assert code != 0


def test_system_directories_are_read_only(provider, pair):
    _, sandbox = pair
    for path in ("/usr/bin/evil", "/etc/evil", "/evil", "/usr/lib/evil"):
        code, output = attempt(provider, sandbox.id, f"touch {path}")
        assert code != 0 and "Read-only file system" in output, output
    run(provider, sandbox.id, "touch ~/ok /tmp/ok /var/tmp/ok /dev/shm/ok")


def test_a_sandbox_has_a_network_namespace_of_its_own(provider, pair):
    # Only its loopback and slirp4netns's tap0: what it reaches through tap0 (and what not, and
    # no network at all with SANDBOX_LOCAL_NETWORK off) is in test_local_network.py.
    _, sandbox = pair
    interfaces = run(provider, sandbox.id, "cat /proc/net/dev")
    assert "lo:" in interfaces and "tap0:" in interfaces and "eth0" not in interfaces


def test_node_npm_and_git_are_usable(provider, pair):
    _, sandbox = pair
    assert run(provider, sandbox.id, "node --version").startswith("v20.")
    assert run(provider, sandbox.id, "npm --version").strip()
    assert run(provider, sandbox.id, "git --version").startswith("git version")
    out = run(
        provider,
        sandbox.id,
        "cd ~ && mkdir -p repo && cd repo && git init -q && git -c user.email=a@b -c user.name=a "
        "commit -q --allow-empty -m first && git log --oneline | wc -l",
    )
    assert out == "1\n"
    assert run(provider, sandbox.id, "node -e 'console.log(6*7)'") == "42\n"


@pytest.mark.skipif(os.geteuid() != 0, reason="sandboxes get their own host uid only when the portal runs as root")
def test_each_sandbox_runs_as_its_own_host_uid(provider, pair):
    first, second = pair
    uids = [provider.record(remote.id)["uid"] for remote in pair]
    assert len(set(uids)) == 2 and all(uid >= provider.uid_base for uid in uids)
    secret = provider.root / first.id / "home" / "secret.txt"
    assert secret.stat().st_uid == uids[0]
    assert (provider.root / first.id / "home").stat().st_mode & 0o777 == 0o700
    for remote, uid in zip(pair, uids, strict=True):
        for pid in provider.processes(remote.id):
            with open(f"/proc/{pid}/status") as status:
                line = next(line for line in status if line.startswith("Uid:"))
            assert line.split()[1:] == [str(uid)] * 4
