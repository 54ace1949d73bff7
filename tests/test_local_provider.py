"""The local provider's lifecycle, terminal, access and limits, with a real bubblewrap."""

import json
import os
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError

from sandboxes.providers.base import ErrorKind, ProviderError, RemoteState
from sandboxes.providers.local import GIB, is_alive, namespace_members
from tests.local_fixtures import (  # noqa: F401 - fixtures
    local_root,
    make_provider,
    provider,
    read_until,
    run,
    sandbox,
    spec,
)

# --- lifecycle ---------------------------------------------------------------------------------


def test_create_starts_the_sandbox(provider, local_root):
    created = provider.create(spec(name="lifecycle-create"), wait_seconds=10)

    assert created.state is RemoteState.STARTED
    assert provider.get(created.id).state is RemoteState.STARTED
    assert provider.find("lifecycle-create").id == created.id
    assert created.id in {r.id for r in provider.list_managed({"joepro-deployment": "test"})}
    assert created.id not in {r.id for r in provider.list_managed({"joepro-deployment": "other"})}
    assert (created.cpu, created.memory_gb, created.disk_gb) == (2, 4, 8)
    assert created.created_at is not None and created.last_activity_at is not None
    assert (local_root / created.id / "home").is_dir()
    assert run(provider, created.id, "id -un; pwd") == "sandbox\n/home/sandbox\n"


def test_a_taken_name_conflicts(provider, sandbox):
    with pytest.raises(ProviderError) as caught:
        provider.create(spec(name=sandbox.name), wait_seconds=10)
    assert caught.value.kind is ErrorKind.CONFLICT


def test_files_in_the_home_survive_stop_and_start(provider):
    remote = provider.create(spec(), wait_seconds=10)
    run(provider, remote.id, "echo kept > ~/notes.txt; mkdir -p ~/project && echo ok > ~/project/a")

    stopped = provider.stop(remote.id, wait_seconds=10)
    assert stopped.state is RemoteState.STOPPED
    assert provider.get(remote.id).state is RemoteState.STOPPED
    assert provider.stop(remote.id, wait_seconds=10).state is RemoteState.STOPPED  # idempotent

    started = provider.start(remote.id, wait_seconds=10)
    assert started.state is RemoteState.STARTED
    assert provider.start(remote.id, wait_seconds=10).state is RemoteState.STARTED  # idempotent
    assert run(provider, remote.id, "cat ~/notes.txt ~/project/a") == "kept\nok\n"


def test_stop_ends_every_process_of_the_sandbox(provider):
    remote = provider.create(spec(), wait_seconds=10)
    run(
        provider,
        remote.id,
        "sleep 1000 >/dev/null 2>&1 & nohup sleep 1001 >/dev/null 2>&1 & "
        # one that ignores SIGTERM and SIGHUP: only the end of the namespace kills it
        "setsid bash -c \"trap '' TERM HUP; exec sleep 1002\" >/dev/null 2>&1 &",
    )
    terminal = provider.open_terminal(remote.id, session_id="stop-test", cols=80, rows=24)
    terminal.write(b"sleep 1003 & echo started-$((1+1))\n")
    read_until(terminal, b"started-2")
    record = provider.record(remote.id)
    namespace = record["process"]["pid_namespace"]
    cgroups = record["process"]["cgroups"]
    wanted = {b"sleep 1000", b"sleep 1001", b"sleep 1002", b"sleep 1003"}
    deadline = time.monotonic() + 5
    while not wanted <= _commands(members := namespace_members(namespace)) and time.monotonic() < deadline:
        time.sleep(0.02)  # a job forked by bash shows up before it has exec'd sleep
    assert wanted <= _commands(members)

    provider.stop(remote.id, wait_seconds=10)

    assert namespace_members(namespace) == []
    assert not [pid for pid in members if os.path.exists(f"/proc/{pid}") and _not_zombie(pid)]
    assert all(not os.path.exists(path) for path in cgroups)
    while terminal.read():  # the shell's last words, then the end of the attachment
        pass


def _commands(pids: list[int]) -> set[bytes]:
    commands = set()
    for pid in pids:
        try:
            commands.add(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").strip())
        except OSError:
            continue
    return commands


def _not_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def test_delete_removes_the_workspace(provider, local_root):
    remote = provider.create(spec(name="to-delete"), wait_seconds=10)
    run(provider, remote.id, "echo x > ~/file")

    provider.delete(remote.id)

    assert not (local_root / remote.id).exists()
    assert provider.get(remote.id) is None
    assert provider.find("to-delete") is None
    provider.delete(remote.id)  # idempotent
    again = provider.create(spec(name="to-delete"), wait_seconds=10)  # the name is free again
    assert again.id != remote.id
    assert run(provider, again.id, "ls -A ~ | grep -c '^file$' || true") == "0\n"


def test_gone_sandboxes_are_reported_as_such(provider):
    unknown = "0" * 32
    assert provider.get(unknown) is None
    assert provider.get("../../etc") is None
    for call in (
        lambda: provider.start(unknown, wait_seconds=1),
        lambda: provider.stop(unknown, wait_seconds=1),
        lambda: provider.open_terminal(unknown, session_id="a", cols=80, rows=24),
    ):
        with pytest.raises(ProviderError) as caught:
            call()
        assert caught.value.kind is ErrorKind.NOT_FOUND


def test_state_survives_a_portal_restart(provider, local_root):
    remote = provider.create(spec(), wait_seconds=10)
    run(provider, remote.id, "echo before > ~/f")

    restarted = make_provider(local_root)  # a new process would build exactly this
    assert restarted.get(remote.id).state is RemoteState.STARTED
    assert run(restarted, remote.id, "cat ~/f") == "before\n"

    record = restarted.record(remote.id)
    namespace = record["process"]["pid_namespace"]
    os.kill(record["process"]["agent_pid"], signal.SIGKILL)  # the sandbox dies behind our back
    deadline = time.monotonic() + 5
    while is_alive(record["process"]["agent_pid"], record["process"]["agent_start"]) and time.monotonic() < deadline:
        time.sleep(0.01)

    again = make_provider(local_root)
    assert again.get(remote.id).state is RemoteState.STOPPED
    assert namespace_members(namespace) == []
    assert again.start(remote.id, wait_seconds=10).state is RemoteState.STARTED
    assert run(again, remote.id, "cat ~/f") == "before\n"


def test_an_interrupted_start_is_not_reported_as_in_progress(provider, local_root):
    remote = provider.create(spec(), wait_seconds=10)
    provider.stop(remote.id, wait_seconds=10)
    record = provider.record(remote.id)
    record["state"] = "starting"  # as left by a portal process killed mid-start
    (local_root / remote.id / "state.json").write_text(json.dumps(record))

    assert provider.get(remote.id).state is RemoteState.STOPPED
    assert provider.start(remote.id, wait_seconds=10).state is RemoteState.STARTED


# --- terminal ----------------------------------------------------------------------------------


def test_terminal_runs_a_login_shell_in_the_home(provider, sandbox):
    terminal = provider.open_terminal(sandbox.id, session_id="term-basic", cols=100, rows=30)
    assert terminal.created
    terminal.write(b"echo $((6*7)) $TERM $PWD\n")
    output = read_until(terminal, b"42 xterm-256color /home/sandbox")
    assert b"42" in output
    terminal.kill()


def test_terminal_sessions_survive_a_detach(provider, sandbox):
    first = provider.open_terminal(sandbox.id, session_id="term-reattach", cols=80, rows=24)
    first.write(b"REMEMBERED=yes-$((20+1)); echo set-$((1+1))\n")
    read_until(first, b"set-2")
    first.detach()
    first.detach()  # idempotent
    assert first.read() == b""

    second = provider.open_terminal(sandbox.id, session_id="term-reattach", cols=80, rows=24)
    assert not second.created
    second.write(b"echo value=$REMEMBERED\n")
    read_until(second, b"value=yes-21")
    second.kill()


def test_terminal_resize_reaches_the_shell(provider, sandbox):
    terminal = provider.open_terminal(sandbox.id, session_id="term-resize", cols=80, rows=24)
    terminal.write(b"stty size\n")
    read_until(terminal, b"24 80")
    terminal.resize(132, 43)
    terminal.write(b"stty size\n")
    read_until(terminal, b"43 132")
    terminal.kill()


def test_terminal_reports_how_the_shell_ended(provider, sandbox):
    terminal = provider.open_terminal(sandbox.id, session_id="term-exit", cols=80, rows=24)
    terminal.write(b"exit 3\n")
    while terminal.read():
        pass
    assert terminal.exit_code == 3

    killed = provider.open_terminal(sandbox.id, session_id="term-kill", cols=80, rows=24)
    killed.write(b"echo up-$((1+1))\n")
    read_until(killed, b"up-2")
    killed.kill()
    while killed.read():
        pass
    # SIGHUP, which bash sometimes survives while readline redraws; then SIGKILL
    assert killed.exit_code in (128 + signal.SIGHUP, 128 + signal.SIGKILL)
    assert provider.open_terminal(sandbox.id, session_id="term-kill", cols=80, rows=24).created


def test_terminal_needs_a_started_sandbox(provider):
    remote = provider.create(spec(), wait_seconds=10)
    provider.stop(remote.id, wait_seconds=10)
    with pytest.raises(ProviderError) as caught:
        provider.open_terminal(remote.id, session_id="x", cols=80, rows=24)
    assert caught.value.kind is ErrorKind.INVALID_STATE
    assert provider.get(remote.id).state is RemoteState.STOPPED  # never started by it
    with pytest.raises(ProviderError) as caught:
        provider.open_terminal(remote.id, session_id="../../bad", cols=80, rows=24)
    assert caught.value.kind is ErrorKind.REJECTED


def test_terminal_echoes_each_keystroke_and_carries_bulk_output_whole(provider, sandbox):
    """Keystrokes come back one by one and 20 MB of output arrive complete. How fast is
    measured by bin/bench (terminal echo and cat), not asserted here."""
    terminal = provider.open_terminal(sandbox.id, session_id="term-speed", cols=120, rows=40)
    terminal.write(b"stty -echo; echo ready-$((2+2))\n")
    read_until(terminal, b"ready-4")
    run(provider, sandbox.id, "head -c 20000000 /dev/zero | tr '\\0' x | fold -w 99 > /tmp/big")
    terminal.write(b"stty echo; cat\n")
    time.sleep(0.2)
    terminal.write(b"warm")
    read_until(terminal, b"warm")
    for char in b"abcdefghijklmnopqrstuvwxyz":
        terminal.write(bytes([char]))
        read_until(terminal, bytes([char]))

    terminal.write(b"\x03")  # ends cat; the line discipline flushes whatever was typed ahead
    time.sleep(0.3)
    terminal.write(b"echo sync-$((5+5))\n")
    read_until(terminal, b"sync-10")
    terminal.write(b"cat /tmp/big; echo END-$((3+3))\n")
    watchdog = threading.Timer(30, terminal.detach)
    watchdog.start()
    total, tail = 0, b""
    while True:
        data = terminal.read()
        assert data, tail
        total += len(data)
        if b"END-6" in tail + data:
            break
        tail = data[-8:]
    watchdog.cancel()
    assert total > 20_000_000
    terminal.kill()


# --- access ------------------------------------------------------------------------------------


def test_mint_access_gives_an_ssh_token_and_portal_links(provider, sandbox, local_root):
    access = provider.mint_access(sandbox.id, ssh_minutes=120, preview_port=3000, link_seconds=7200)

    assert len(access.ssh.token) == 32
    assert access.ssh.command == f"ssh -p 2222 {access.ssh.token}@localhost"
    assert (access.ssh.host, access.ssh.port) == ("localhost", 2222)
    assert access.preview.url == f"/sandboxes/{sandbox.id}/preview/?port=3000"
    assert access.terminal.url == f"/sandboxes/{sandbox.id}/terminal/"
    assert access.preview.port == 3000
    assert provider.resolve_ssh_token(access.ssh.token) == sandbox.id
    stored = json.dumps(provider.record(sandbox.id)) + "".join(p.name for p in (local_root / "tokens").iterdir())
    assert access.ssh.token not in stored  # only its hash is kept

    newer = provider.mint_access(sandbox.id, ssh_minutes=120, preview_port=3000, link_seconds=7200)
    assert provider.resolve_ssh_token(access.ssh.token) is None  # replaced
    assert provider.resolve_ssh_token(newer.ssh.token) == sandbox.id
    assert provider.resolve_ssh_token(newer.ssh.token[:-1] + "x") is None
    assert provider.resolve_ssh_token("") is None

    provider.revoke_access(sandbox.id, preview_port=3000, links=[newer.preview])
    assert provider.resolve_ssh_token(newer.ssh.token) is None


def test_ssh_tokens_expire_and_die_with_the_sandbox(provider):
    remote = provider.create(spec(), wait_seconds=10)
    expired = provider.mint_access(remote.id, ssh_minutes=0, preview_port=3000, link_seconds=60)
    assert provider.resolve_ssh_token(expired.ssh.token) is None

    live = provider.mint_access(remote.id, ssh_minutes=120, preview_port=3000, link_seconds=60)
    nonce = provider.preview_upstream(remote.id, 3000).nonce
    assert provider.resolve_ssh_token(live.ssh.token) == remote.id and nonce
    provider.stop(remote.id, wait_seconds=10)
    assert provider.resolve_ssh_token(live.ssh.token) is None
    for refused in (
        lambda: provider.preview_upstream(remote.id, 3000),
        lambda: provider.mint_access(remote.id, ssh_minutes=120, preview_port=3000, link_seconds=60),
    ):
        with pytest.raises(ProviderError) as caught:
            refused()
        assert caught.value.kind is ErrorKind.INVALID_STATE
    provider.start(remote.id, wait_seconds=10)
    assert provider.preview_upstream(remote.id, 3000).nonce not in (None, nonce)


def test_activity_is_reported(provider, sandbox):
    before = provider.get(sandbox.id).last_activity_at
    time.sleep(0.01)
    terminal = provider.open_terminal(sandbox.id, session_id="term-activity", cols=80, rows=24)
    terminal.write(b"true\n")
    read_until(terminal, b"$")
    assert provider.get(sandbox.id).last_activity_at > before
    terminal.kill()
    provider.refresh_activity(sandbox.id)


# --- limits ------------------------------------------------------------------------------------


def test_resource_limits_are_applied(provider, sandbox):
    record = provider.record(sandbox.id)
    limits = provider.limits_in_force()
    inside = run(provider, sandbox.id, "cat /proc/self/limits")
    # With disk images the image's size is the limit (ENOSPC); without, RLIMIT_FSIZE per file.
    assert _limit(inside, "Max file size") == ("unlimited" if provider.lifecycle.disk_images else str(8 * GIB))
    assert _limit(inside, "Max core file size") == "0"
    agent_pid = record["process"]["agent_pid"]
    if "memory" in provider.cgroups.usable:
        assert limits["memory"].startswith("cgroup")
        by_controller = {Path(d).parts[-3]: Path(d) for d in record["process"]["cgroups"]}
        if "cpu" in by_controller:  # cgroup v1
            assert (by_controller["memory"] / "memory.limit_in_bytes").read_text().strip() == str(4 * GIB)
            assert (by_controller["cpu"] / "cpu.cfs_quota_us").read_text().strip() == "200000"
            assert (by_controller["cpu"] / "cpu.cfs_period_us").read_text().strip() == "100000"
            assert (by_controller["pids"] / "pids.max").read_text().strip() == str(provider.pids_max)
            for directory in by_controller.values():
                assert str(agent_pid) in (directory / "cgroup.procs").read_text().split()
        else:  # cgroup v2: one directory
            (directory,) = record["process"]["cgroups"]
            assert Path(directory, "memory.max").read_text().strip() == str(4 * GIB)
            assert Path(directory, "cpu.max").read_text().split() == ["200000", "100000"]
    else:
        assert _limit(inside, "Max address space") == str(4 * GIB)
    if os.geteuid() == 0:
        home = provider.root / sandbox.id / "home"
        assert home.stat().st_uid == record["uid"] >= provider.uid_base
        assert Path(f"/proc/{agent_pid}/status").read_text().count(f"\t{record['uid']}\t") >= 1


def _limit(limits: str, name: str) -> str:
    line = next(line for line in limits.splitlines() if line.startswith(name))
    return line[len(name) :].split()[0]


def test_a_sandbox_over_its_disk_quota_does_not_start(provider):
    remote = provider.create(spec(disk_gb=1), wait_seconds=10)
    provider.stop(remote.id, wait_seconds=10)
    home = provider.root / remote.id / "home"
    # With disk images only a workspace from before them (a plain directory) can be over quota.
    (provider.root / remote.id / "home.img").unlink(missing_ok=True)
    for index in range(2):
        with open(home / f"big-{index}", "wb") as handle:
            os.posix_fallocate(handle.fileno(), 0, 600 << 20)

    with pytest.raises(ProviderError) as caught:
        provider.start(remote.id, wait_seconds=10)
    assert caught.value.kind is ErrorKind.REJECTED
    assert "quota" in str(caught.value)
    assert provider.get(remote.id).state is RemoteState.STOPPED

    (home / "big-0").unlink()
    assert provider.start(remote.id, wait_seconds=10).state is RemoteState.STARTED


# --- system checks -----------------------------------------------------------------------------


def test_system_check_fails_without_bubblewrap(settings, tmp_path):
    settings.SANDBOX_PROVIDER = "local"
    settings.SANDBOX_BWRAP = str(tmp_path / "no-such-bwrap")
    with pytest.raises(SystemCheckError, match="apt-get install bubblewrap") as caught:
        call_command("check")
    assert "sandboxes.E005" in str(caught.value)


def test_system_check_fails_when_bubblewrap_cannot_make_namespaces(settings):
    directory = Path(tempfile.mkdtemp(prefix="joepro-fake-bwrap-"))
    directory.chmod(0o755)  # the probe runs it as an unprivileged uid
    broken = directory / "bwrap"
    broken.write_text("#!/bin/sh\necho 'bwrap: No permissions to creating new namespace' >&2\nexit 1\n")
    broken.chmod(0o755)
    settings.SANDBOX_PROVIDER = "local"
    settings.SANDBOX_BWRAP = str(broken)
    with pytest.raises(SystemCheckError, match="unprivileged_userns_clone") as caught:
        call_command("check")
    assert "sandboxes.E006" in str(caught.value) and "No permissions" in str(caught.value)
    shutil.rmtree(directory)


def test_a_start_without_bubblewrap_fails_instead_of_running_unisolated(provider, local_root, tmp_path):
    remote = provider.create(spec(), wait_seconds=10)
    provider.stop(remote.id, wait_seconds=10)
    broken = make_provider(local_root, bwrap=str(tmp_path / "missing"))
    with pytest.raises(ProviderError, match="bubblewrap"):
        broken.start(remote.id, wait_seconds=10)
    assert broken.get(remote.id).state is RemoteState.STOPPED
    assert provider.processes(remote.id) == []


def test_system_check_passes_here(settings):
    settings.SANDBOX_PROVIDER = "local"
    call_command("check")
