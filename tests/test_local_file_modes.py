"""The portal's state (var/: the SQLite database with session keys and password hashes, the
secret key, the SSH host key, the broker) is readable by the portal's user only, and local
sandboxes still run with their root under that closed var/."""

import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from django.conf import settings

from tests.local_fixtures import ROOT_PREFIX, make_provider, run, spec

PROJECT = Path(settings.BASE_DIR)


def loose_entries(var: Path) -> list[str]:
    """Everything in ``var`` that the group or others may read, write or search."""
    found = []
    for directory, names, files in os.walk(var):
        for name in names + files:
            path = Path(directory, name)
            if path.lstat().st_mode & 0o077 and not path.is_symlink():
                found.append(f"{path.relative_to(var)} {stat.filemode(path.lstat().st_mode)}")
    return found


def manage(copy: Path, *arguments: str) -> None:
    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DATABASE_", "REDIS_", "CELERY_", "SANDBOX_", "DJANGO_", "TEST_"))
    }
    environment.update(DJANGO_SETTINGS_MODULE="joepro.settings", DJANGO_DEBUG="true", SANDBOX_PROVIDER="local")
    result = subprocess.run(
        [sys.executable, "manage.py", *arguments], cwd=copy, env=environment, capture_output=True, timeout=120
    )
    assert result.returncode == 0, result.stderr.decode()[-2000:]


@pytest.fixture
def project_copy(tmp_path):
    copy = tmp_path / "portal"
    shutil.copytree(
        PROJECT,
        copy,
        symlinks=True,
        ignore=shutil.ignore_patterns(".venv", ".git", "var", ".env", "node_modules", ".hypothesis", "*_cache"),
    )
    return copy


def test_var_is_private_after_start_up(project_copy):
    # A var/ from before: open to everyone, with a readable secret key and database.
    var = project_copy / "var"
    var.mkdir(mode=0o755)
    os.chmod(var, 0o755)
    (var / "secret_key").write_text("an old key from before")
    os.chmod(var / "secret_key", 0o644)
    (var / "broker" / "in").mkdir(parents=True)
    os.chmod(var / "broker", 0o755)
    (var / "ssh_host_ed25519_key").write_text("a host key")
    os.chmod(var / "ssh_host_ed25519_key", 0o644)

    manage(project_copy, "migrate", "--no-input")
    manage(project_copy, "check")

    assert stat.S_IMODE(var.stat().st_mode) == 0o700
    assert (var / "db.sqlite3").stat().st_size > 0  # migrate wrote the database here
    assert loose_entries(var) == []
    assert (var / "secret_key").read_text() == "an old key from before"  # kept, only tightened


def test_a_fresh_var_is_private_from_the_start(project_copy):
    manage(project_copy, "migrate", "--no-input")
    var = project_copy / "var"
    assert stat.S_IMODE(var.stat().st_mode) == 0o700
    assert {"db.sqlite3", "secret_key"} <= set(os.listdir(var))
    assert loose_entries(var) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="own uids need root")
def test_a_sandbox_runs_with_its_root_under_a_closed_var():
    base = Path(tempfile.mkdtemp(prefix=f"{ROOT_PREFIX}{os.getpid()}-"))
    var = base / "var"
    var.mkdir(mode=0o700)
    os.chmod(base, 0o755)
    (var / "db.sqlite3").write_text("session keys")
    os.chmod(var / "db.sqlite3", 0o600)
    provider = make_provider(var / "sandboxes")
    problems = provider.problems()
    if any(problem.code in ("bwrap_missing", "bwrap_fails") for problem in problems):
        pytest.skip(f"bubblewrap cannot run here: {problems[0].message}")
    assert problems == []
    sandbox = provider.create(spec(), wait_seconds=10)
    try:
        assert stat.S_IMODE(var.stat().st_mode) == 0o700
        assert run(provider, sandbox.id, "echo made > ~/file && cat ~/file && id -u") == "made\n1000\n"
        record = provider.record(sandbox.id)
        assert (var / "sandboxes" / sandbox.id / "home" / "file").stat().st_uid == record["uid"]
        # The sandbox's uid itself cannot reach var/, and the sandbox sees nothing of it.
        probe = subprocess.run(
            ["ls", str(var)], user=record["uid"], group=record["uid"], extra_groups=[], capture_output=True
        )
        assert probe.returncode != 0 and b"Permission denied" in probe.stderr
        result = provider.run(sandbox.id, ["bash", "-c", f"cat {var}/db.sqlite3; ls {var}"], timeout=20)
        assert result.exit_code != 0 and b"session keys" not in result.stdout
        provider.stop(sandbox.id, wait_seconds=5)
        provider.start(sandbox.id, wait_seconds=5)
        assert run(provider, sandbox.id, "cat ~/file") == "made\n"
    finally:
        provider.delete(sandbox.id)
        shutil.rmtree(base, ignore_errors=True)
