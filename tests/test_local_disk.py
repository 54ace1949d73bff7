"""The disk quota of a local sandbox holds while it runs: its home is an ext4 image of the
quota's size, so writing past it fails inside, and the host's filesystem does not fill up."""

import os
import shutil

import pytest

from sandboxes.providers.local import GIB
from sandboxes.providers.local.disk import image_path
from tests.local_fixtures import local_root, provider, run, spec  # noqa: F401 - fixtures

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="disk images need root (the fallback is the start check)")


def host_free(path) -> int:
    return shutil.disk_usage(path).free


def write(provider, remote_id: str, command: str) -> tuple[int, str]:
    result = provider.run(remote_id, ["bash", "-c", command], timeout=120)
    return result.exit_code, (result.stdout + result.stderr).decode()


def test_writes_past_the_quota_fail_and_the_host_does_not_fill(provider):
    sandbox = provider.create(spec(disk_gb=1), wait_seconds=10)
    try:
        free_before = host_free(provider.root)
        code, output = write(provider, sandbox.id, "fallocate -l 1536M ~/big")
        assert code != 0 and "No space left on device" in output, output
        assert free_before - host_free(provider.root) < 1.1 * GIB
        code, output = write(provider, sandbox.id, "rm -f ~/big; dd if=/dev/zero of=~/big bs=1M count=1536")
        assert code != 0 and "No space left on device" in output, output
        assert free_before - host_free(provider.root) < 1.1 * GIB
        image = image_path(provider.root / sandbox.id)
        assert image.stat().st_blocks * 512 <= 1.05 * GIB  # sparse, never above its size
        assert run(provider, sandbox.id, "rm -f ~/big; echo small > ~/small; cat ~/small") == "small\n"
        assert run(provider, sandbox.id, "stat -c %U:%a ~") == "sandbox:700\n"
    finally:
        provider.delete(sandbox.id)


def test_files_survive_stop_and_start_and_delete_removes_the_image(provider):
    sandbox = provider.create(spec(disk_gb=1), wait_seconds=10)
    directory = provider.root / sandbox.id
    run(provider, sandbox.id, "echo kept > ~/notes.txt")
    provider.stop(sandbox.id, wait_seconds=5)
    assert not os.path.ismount(directory / "home")  # unmounted at stop
    assert not (directory / "home" / "notes.txt").exists()
    provider.start(sandbox.id, wait_seconds=5)
    assert os.path.ismount(directory / "home")
    assert run(provider, sandbox.id, "cat ~/notes.txt") == "kept\n"
    provider.delete(sandbox.id)
    assert not directory.exists() and not image_path(directory).exists()
    assert not any(provider.root.glob("trash/*"))


def test_a_sandbox_found_dead_is_unmounted(provider):
    """Repair path: its processes were killed behind the portal's back."""
    sandbox = provider.create(spec(disk_gb=1), wait_seconds=10)
    try:
        home = provider.root / sandbox.id / "home"
        pid = provider.record(sandbox.id)["process"]["agent_pid"]
        os.kill(pid, 9)
        for _ in range(200):
            if provider.get(sandbox.id).state.value == "stopped":
                break
        assert provider.get(sandbox.id).state.value == "stopped"
        assert not os.path.ismount(home)
    finally:
        provider.delete(sandbox.id)


def test_an_old_plain_workspace_is_migrated_into_an_image(provider):
    sandbox = provider.create(spec(disk_gb=1), wait_seconds=10)
    try:
        provider.stop(sandbox.id, wait_seconds=5)
        directory = provider.root / sandbox.id
        # As a workspace from before images: a plain directory, owned by the sandbox's uid.
        image_path(directory).unlink()
        uid = provider.record(sandbox.id)["uid"]
        home = directory / "home"
        (home / "project").mkdir()
        (home / "project" / "main.py").write_text("print('hello')\n")
        os.symlink("project/main.py", home / "link")
        for path in (home / "project", home / "project" / "main.py"):
            os.chown(path, uid, uid)
        os.lchown(home / "link", uid, uid)
        provider.start(sandbox.id, wait_seconds=5)
        assert os.path.ismount(home) and image_path(directory).exists()
        assert (
            run(provider, sandbox.id, "cat ~/project/main.py; readlink ~/link") == "print('hello')\nproject/main.py\n"
        )
        assert "project" in run(provider, sandbox.id, "echo more >> ~/project/main.py && ls -A ~").split()
        assert not (directory / ".home-old").exists()
    finally:
        provider.delete(sandbox.id)
