"""Files over the SSH gateway of local sandboxes: ``scp`` (OpenSSH 9's SFTP-based default and
legacy ``scp -O``) and ``sftp``, all running inside the sandbox as its user. Driven by the real
OpenSSH clients against real bubblewrap sandboxes."""

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from sandboxes.local_only.ssh_gateway import SFTP_SERVER
from sandboxes.models import Sandbox
from sandboxes.providers import get_provider
from tests.local_fixtures import local_root, local_settings, run  # noqa: F401 - fixtures
from tests.ssh_fixtures import (  # noqa: F401 - fixtures
    ANY_HOST_KEY,
    CLIENT,
    gateway,
    needs_ssh,
    read_until,
    ssh_access,
    wait_for,
)

pytestmark = [
    pytest.mark.django_db(transaction=True),
    needs_ssh,
    pytest.mark.skipif(not os.access(SFTP_SERVER, os.X_OK), reason="needs Debian's openssh-sftp-server"),
    pytest.mark.skipif(shutil.which("scp") is None or shutil.which("sftp") is None, reason="needs scp and sftp"),
]


def scp(*arguments: str, port: int, legacy: bool = False):
    argv = ["scp", *(["-O"] if legacy else []), "-P", str(port), *CLIENT, *ANY_HOST_KEY, *arguments]
    return subprocess.run(argv, capture_output=True, timeout=30)


def sftp_argv(token: str, port: int, batch: str) -> list[str]:
    return ["sftp", "-P", str(port), *CLIENT, *ANY_HOST_KEY, "-b", batch, f"{token}@127.0.0.1"]


def home_on_host(local_settings, remote_id: str) -> Path:
    return Path(local_settings.SANDBOX_LOCAL_ROOT) / remote_id / "home"


@pytest.mark.parametrize("legacy", [False, True], ids=["sftp-based", "legacy-O"])
def test_scp_copies_files_both_ways_as_the_sandboxs_user(gateway, owner, tmp_path, local_settings, legacy):
    token = ssh_access(owner)["token"]
    remote_id = Sandbox.objects.get(user=owner).remote_id
    provider = get_provider("local")
    payload = os.urandom(2 << 20) + b"\x00\r\n\x04"
    (tmp_path / "upload.bin").write_bytes(payload)
    run(provider, remote_id, "mkdir -p project && printf 'made inside\\n' > project/inside.txt")

    up = scp(str(tmp_path / "upload.bin"), f"{token}@127.0.0.1:project/copied.bin", port=gateway.port, legacy=legacy)
    down = scp(f"{token}@127.0.0.1:project/inside.txt", str(tmp_path / "inside.txt"), port=gateway.port, legacy=legacy)
    back = scp(f"{token}@127.0.0.1:project/copied.bin", str(tmp_path / "back.bin"), port=gateway.port, legacy=legacy)
    outside = scp(str(tmp_path / "upload.bin"), f"{token}@127.0.0.1:/usr/copied.bin", port=gateway.port, legacy=legacy)

    assert (up.returncode, down.returncode, back.returncode) == (0, 0, 0), (up.stderr, down.stderr, back.stderr)
    assert (tmp_path / "inside.txt").read_bytes() == b"made inside\n"
    assert (tmp_path / "back.bin").read_bytes() == payload
    # Seen from inside: the sandbox's user wrote it, byte for byte.
    inside = run(provider, remote_id, "stat -c '%u %U' project/copied.bin; sha256sum < project/copied.bin")
    assert inside.split("\n")[0] == "1000 sandbox"
    assert inside.split("\n")[1].split()[0] == hashlib.sha256(payload).hexdigest()
    # Seen from the host: owned by the sandbox's own uid, never by the portal's.
    host_file = home_on_host(local_settings, remote_id) / "project" / "copied.bin"
    expected_uid = provider.record(remote_id)["uid"]
    assert host_file.stat().st_uid == (expected_uid if expected_uid is not None else os.geteuid())
    # The sandbox's /usr is the host's, read-only: nothing can be written outside the home.
    assert outside.returncode != 0 and not Path("/usr/copied.bin").exists()


def test_sftp_in_batch_mode(gateway, owner, tmp_path):
    token = ssh_access(owner)["token"]
    remote_id = Sandbox.objects.get(user=owner).remote_id
    provider = get_provider("local")
    (tmp_path / "notes.md").write_text("# notes\n")
    batch = tmp_path / "batch"
    batch.write_text(
        f"mkdir docs\ncd docs\nput {tmp_path / 'notes.md'}\nrename notes.md README.md\nls -1\n"
        f"get README.md {tmp_path / 'fetched.md'}\npwd\n-get no-such-file\n"
    )

    result = subprocess.run(sftp_argv(token, gateway.port, str(batch)), capture_output=True, timeout=30)

    assert result.returncode == 0, result.stderr
    output = result.stdout.decode()
    assert "README.md" in output and "Remote working directory: /home/sandbox/docs" in output
    assert (tmp_path / "fetched.md").read_text() == "# notes\n"
    assert run(provider, remote_id, "cat docs/README.md; stat -c %U docs/README.md") == "# notes\nsandbox\n"


def test_the_sftp_server_runs_inside_the_sandbox(gateway, owner, tmp_path):
    token = ssh_access(owner)["token"]
    remote_id = Sandbox.objects.get(user=owner).remote_id
    provider = get_provider("local")
    client = subprocess.Popen(
        sftp_argv(token, gateway.port, "-"), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        assert wait_for(lambda: any(_is_sftp_server(pid) for pid in provider.processes(remote_id)))
        (pid,) = [pid for pid in provider.processes(remote_id) if _is_sftp_server(pid)]
        status = Path(f"/proc/{pid}/status").read_text()
        uid = next(line.split()[1] for line in status.splitlines() if line.startswith("Uid:"))
        sandbox_uid = provider.record(remote_id)["uid"]
    finally:
        listing, _ = client.communicate(b"ls -1 /\nls /home\n", timeout=20)

    # The server is a process of the sandbox's PID namespace, as the sandbox's uid, and what it
    # sees is the sandbox's file system (its /home holds one home, no /root, /work or /srv).
    assert uid == str(sandbox_uid if sandbox_uid is not None else os.geteuid())
    names = set(listing.decode().split())
    assert {"/usr", "/home", "/tmp", "/etc"} <= names and not {"/root", "/work", "/srv"} & names
    assert client.returncode == 0
    assert wait_for(lambda: not [pid for pid in provider.processes(remote_id) if _is_sftp_server(pid)])


def _is_sftp_server(pid: int) -> bool:
    try:
        return "sftp-server" in Path(f"/proc/{pid}/cmdline").read_text()
    except OSError:
        return False


def test_a_large_transfer_arrives_whole_both_ways(gateway, owner, tmp_path):
    # How fast is for bin/bench to measure; here, that 32 MiB cross the pipes intact.
    token = ssh_access(owner)["token"]
    (tmp_path / "big.bin").write_bytes(os.urandom(32 << 20))

    up = scp(str(tmp_path / "big.bin"), f"{token}@127.0.0.1:big.bin", port=gateway.port)
    down = scp(f"{token}@127.0.0.1:big.bin", str(tmp_path / "again.bin"), port=gateway.port)

    assert (up.returncode, down.returncode) == (0, 0), (up.stderr, down.stderr)
    assert (tmp_path / "again.bin").read_bytes() == (tmp_path / "big.bin").read_bytes()
