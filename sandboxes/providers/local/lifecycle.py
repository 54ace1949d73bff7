"""Starting and stopping local sandboxes: the record's states, and the processes behind them.

A start writes the sandbox's /etc files, makes its cgroups, binds the agent's socket and runs
the launcher (:func:`.agent.launch`), which detaches, confines itself and executes bwrap; bwrap's
``--info-fd`` names the agent's pid and PID namespace, and the start is done once the agent
answers and, with the network on, its slirp4netns is up (:mod:`.network`). A stop asks the agent
to end everything, kills what is left (verified: none remains in the PID namespace or the
cgroups, and no slirp4netns) and removes the cgroups.

The record cannot know when its processes die without the portal (machine restart, killed by
hand) nor when whoever was starting or stopping it died: :meth:`Lifecycle.observed` corrects for
both, and :meth:`Lifecycle.settle_locked` cleans up after them.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import select
import socket
import time
from pathlib import Path

from ..base import ErrorKind, ProviderError
from . import agent as protocol
from . import disk, network, templates
from .agent_client import STATUS_TIMEOUT, request
from .isolation import (
    GIB,
    Cgroups,
    bwrap_argv,
    disk_usage,
    etc_files,
    fallback_limits,
    is_alive,
    kill_process,
    namespace_members,
    process_start_time,
    run_launcher,
    wait_for_exit,
)
from .preflight import local_problems
from .store import ERROR, STARTED, STARTING, STOPPED, STOPPING, Store

logger = logging.getLogger(__name__)

START_TIMEOUT = 15.0
LOG_KEEP = 1 << 20


class Lifecycle:
    """Starts and stops the sandboxes of one store, confined as configured here."""

    def __init__(
        self,
        store: Store,
        cgroups: Cgroups,
        *,
        bwrap: str,
        python: str,
        own_uids: bool,
        uid_base: int,
        pids_max: int,
        tmp_size: int,
        stop_grace: float,
        disk_check_seconds: float,
        uids=None,
        pty_sessions: int = protocol.MAX_SESSIONS,
        network: bool = True,
    ):
        self.store = store
        self.cgroups = cgroups
        self.bwrap = bwrap
        self.python = python
        self.own_uids = own_uids
        self.uid_base = uid_base
        self.pids_max = pids_max
        self.tmp_size = tmp_size
        self.stop_grace = stop_grace
        self.disk_check_seconds = disk_check_seconds
        self.uids = uids  # the host-wide UidRegistry, when sandboxes have their own uids
        self.pty_sessions = pty_sessions  # live PTY sessions (web terminals, SSH) per sandbox
        self.network = network  # outbound network through slirp4netns (.network)
        # Quotas are enforced by a loop-mounted image per workspace when the portal runs as
        # root (local_problems refuses to start sandboxes when it cannot mount one). Without
        # root (sandboxes run as the portal's own uid) the quota is only checked at start.
        self.disk_images = own_uids
        self._logged_limits = False

    # -- the record's state -------------------------------------------------------------------

    def observed(self, record: dict) -> str:
        """The state, corrected for what the record cannot know: a started sandbox whose
        processes died (machine restart, killed by hand) is stopped, and so is one whose start
        or stop was cut short (its lock is free: the process doing it died)."""
        word = record["state"]
        if word == STARTED:
            return STARTED if self.agent_alive(record) else STOPPED
        if word in (STARTING, STOPPING) and self.store.lock_is_free(record["id"]):
            return STOPPED
        return word

    @staticmethod
    def agent_alive(record: dict) -> bool:
        process = record.get("process") or {}
        return is_alive(process.get("agent_pid"), process.get("agent_start"))

    def settle_locked(self, record: dict) -> dict:
        """Under the sandbox's lock: a transition recorded here was cut short (whoever made
        it no longer holds the lock), and a started sandbox may have died. Both end stopped,
        with whatever was left of them cleaned up."""
        if record["state"] == STARTED and self.agent_alive(record):
            return record
        if record["state"] in (STARTED, STARTING, STOPPING):
            self.terminate(record)
            return self.stopped(record)
        return record

    def stopped(self, record: dict, *, error: str = "") -> dict:
        """Record a sandbox whose processes have all ended as stopped (or in error), its SSH
        token and preview links revoked."""
        self.store.drop_ssh_token(record)
        record.update(
            state=ERROR if error else STOPPED,
            error=error,
            process=None,
            link_nonce=None,
            stopped_at=time.time(),
        )
        self.store.write(record)
        return record

    # -- start --------------------------------------------------------------------------------

    def start_locked(self, record: dict) -> dict:
        """Start under the sandbox's lock. Raises REJECTED over the disk quota (the sandbox
        stays stopped) and UNAVAILABLE when it cannot start (the sandbox is then in error,
        recoverable by starting again)."""
        sandbox_id = record["id"]
        problems = local_problems(
            bwrap=self.bwrap, root=self.store.root, python=self.python, own_uids=self.own_uids, network=self.network
        )
        if problems:
            raise ProviderError(
                f"Sandboxes cannot run on this machine: {problems[0].message} {problems[0].hint}",
                kind=ErrorKind.UNAVAILABLE,
            )
        quota = record["disk_gb"] * GIB
        directory = self.store.directory(sandbox_id)
        if quota and self.disk_images and disk.image_path(directory).exists():
            used = 0  # the image is the quota: it cannot hold more
        else:
            used = disk_usage(directory / "home")
        if quota and used > quota:
            raise ProviderError(
                f"The sandbox uses {used / GIB:.1f} GiB of disk, over its {record['disk_gb']} GiB quota, so it "
                "cannot start. Ask an operator to free space.",
                kind=ErrorKind.REJECTED,
            )
        self.store.prepare()
        record.update(state=STARTING, error="")
        self.store.write(record)
        try:
            record["process"], record["limits"] = self._launch(record)
        except Exception as exc:
            self.terminate(record)
            reason = exc.message if isinstance(exc, ProviderError) else f"The sandbox could not start: {exc}"
            record.update(state=ERROR, error=reason[:500], process=None, stopped_at=time.time())
            self.store.write(record)
            logger.error("local sandbox %s failed to start: %s", sandbox_id, reason)
            if isinstance(exc, ProviderError):
                raise
            raise ProviderError(reason, kind=ErrorKind.UNAVAILABLE) from exc
        now = time.time()
        record.update(state=STARTED, started_at=now, last_activity_at=now, link_nonce=secrets.token_hex(16))
        self.store.write(record)
        logger.info("local sandbox %s started (agent pid %s)", sandbox_id, record["process"]["agent_pid"])
        return record

    def _launch(self, record: dict) -> tuple[dict, dict]:
        sandbox_id = record["id"]
        directory = self.store.directory(sandbox_id)
        home = directory / "home"
        uid = record.get("uid") if self.own_uids else None
        previous_uid = None
        if uid is not None and self.uids is not None and not self.uids.ensure(uid, self.store.root, sandbox_id):
            # A sandbox from before the registry whose uid another deployment's sandbox holds.
            previous_uid, uid = uid, self.uids.claim(self.store.root, sandbox_id, avoid=self.store.used_uids())
            record["uid"] = uid
            self.store.write(record)
            logger.warning("local sandbox %s: uid %s is taken on this host, moved to %s", sandbox_id, previous_uid, uid)
        if self.disk_images and record["disk_gb"]:
            try:
                disk.mount_workspace(directory, record["disk_gb"] * GIB, uid)
            except disk.DiskError as exc:
                raise ProviderError(f"The sandbox's disk could not be mounted: {exc}") from exc
        if uid is not None:
            os.chown(home, uid, uid)
        os.chmod(home, 0o700)
        if previous_uid is not None:
            _reown(home, previous_uid, uid)
        toolchain = templates.toolchain_for(self.store.root, record)
        etc = etc_files(record["name"], nameserver=network.DNS if self.network else None)
        if toolchain is not None:
            etc["profile"] = toolchain.login_profile()
        self.store.write_etc(sandbox_id, etc)
        if not self._logged_limits:
            self._logged_limits = True
            logger.info("local sandboxes: %s", "; ".join(f"{k}: {v}" for k, v in self.limits_in_force().items()))

        memory = record["memory_gb"] * GIB
        cgroups = self.cgroups.create(sandbox_id, cpu=record["cpu"], memory_bytes=memory, pids=self.pids_max)
        process = {"cgroups": cgroups}
        record["process"] = process  # so that a failure from here on cleans the cgroups up
        rlimits, nice = fallback_limits(record, limited=set(self.cgroups.usable), uid=uid, pids_max=self.pids_max)
        if self.disk_images and record["disk_gb"]:
            rlimits.pop("RLIMIT_FSIZE", None)  # the image's size is the limit: ENOSPC, not SIGXFSZ

        socket_path = self.store.socket_path(sandbox_id)
        try:
            socket_path.unlink()
        except FileNotFoundError:
            pass
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        info_read, info_write = os.pipe()
        try:
            listener.bind(str(socket_path))
            os.chmod(socket_path, 0o600)
            listener.listen(64)
            argv = bwrap_argv(
                record,
                directory=directory,
                agent=self.store.agent,
                bwrap=self.bwrap,
                python=self.python,
                tmp_size=self.tmp_size,
                disk_check_seconds=self.disk_check_seconds,
                listen_fd=listener.fileno(),
                info_fd=info_write,
                max_sessions=self.pty_sessions,
                toolchain=toolchain.directory if toolchain else None,
                toolchain_path=toolchain.path if toolchain else (),
                network=self.network,
            )
            config = {
                "argv": argv,
                "cgroup_procs": [str(Path(d) / "cgroup.procs") for d in cgroups],
                "rlimits": rlimits,
                "nice": nice,
                "uid": uid,
                "gid": uid,
                "keep_fds": [listener.fileno(), info_write],
                "root": str(self.store.root),  # reached even below a closed var/ (agent.reveal_root)
            }
            log = _open_log(directory / "log")
            try:
                bwrap_pid = run_launcher(config, log_fd=log, timeout=START_TIMEOUT)
            finally:
                os.close(log)
            os.close(info_write)
            info_write = -1
            listener.close()
            if bwrap_pid is None:
                raise ProviderError(self._failure(sandbox_id, "the launcher failed"))
            process.update(bwrap_pid=bwrap_pid, bwrap_start=process_start_time(bwrap_pid))
            deadline = time.monotonic() + START_TIMEOUT
            info = _read_info(info_read, deadline)
            if info is None:
                raise ProviderError(self._failure(sandbox_id, "bubblewrap did not start the sandbox"))
            agent_pid = int(info["child-pid"])
            process.update(
                agent_pid=agent_pid,
                agent_start=process_start_time(agent_pid),
                pid_namespace=info.get("pid-namespace"),
            )
            if self.network:  # in place before the start is done: nothing but the agent runs inside until then
                process.update(
                    network.start(
                        agent_pid,
                        process["agent_start"],
                        uid=uid,
                        cgroup_procs=config["cgroup_procs"],
                        nice=nice,
                        log_path=directory / "network.log",
                        deadline=deadline,
                    )
                )
            self._wait_for_agent(sandbox_id, deadline)
        finally:
            listener.close()
            os.close(info_read)
            if info_write >= 0:
                os.close(info_write)
        limits = {"rlimits": rlimits, "nice": nice, "cgroups": cgroups, "uid": uid}
        return process, limits

    def _wait_for_agent(self, sandbox_id: str, deadline: float) -> None:
        while True:
            try:
                request(
                    self.store.socket_path(sandbox_id), {"op": "status"}, timeout=max(0.1, deadline - time.monotonic())
                )
                return
            except ProviderError as exc:
                if time.monotonic() >= deadline:
                    raise ProviderError(self._failure(sandbox_id, "its agent did not answer")) from exc
                time.sleep(0.02)

    def _failure(self, sandbox_id: str, what: str) -> str:
        """A message for a failed start, with the last line bwrap or the agent logged."""
        try:
            tail = (self.store.directory(sandbox_id) / "log").read_bytes()[-2000:]
            lines = tail.decode(errors="replace").splitlines()
        except OSError:
            lines = []
        detail = next((line.strip() for line in reversed(lines) if line.strip()), "")
        return f"The sandbox could not start: {what}" + (f" ({detail[:300]})." if detail else ".")

    # -- stop ---------------------------------------------------------------------------------

    def terminate(self, record: dict) -> None:
        """End every process of the sandbox and clean up after them; safe when none runs.

        The agent is asked to hang up its sessions and SIGTERM everything; if it has not exited
        after the grace period it is killed. Its exit makes the kernel kill every process left
        in the PID namespace. Returns once none is left there, or raises.
        """
        sandbox_id = record["id"]
        process = record.get("process") or {}
        agent_pid, agent_start = process.get("agent_pid"), process.get("agent_start")
        if is_alive(agent_pid, agent_start):
            try:
                request(
                    self.store.socket_path(sandbox_id),
                    {"op": "shutdown", "grace": self.stop_grace},
                    timeout=STATUS_TIMEOUT,
                )
            except ProviderError:
                pass
            if not wait_for_exit(agent_pid, agent_start, self.stop_grace + 0.5):
                kill_process(agent_pid, agent_start)
                wait_for_exit(agent_pid, agent_start, 2.0)
        bwrap_pid, bwrap_start = process.get("bwrap_pid"), process.get("bwrap_start")
        if is_alive(bwrap_pid, bwrap_start) and not wait_for_exit(bwrap_pid, bwrap_start, 1.0):
            kill_process(bwrap_pid, bwrap_start)
        network.stop(process)  # whatever the setting is now
        namespace = process.get("pid_namespace")
        cgroups = process.get("cgroups") or []
        deadline = time.monotonic() + 5.0
        while True:
            left = set(namespace_members(namespace)) if namespace else set()
            left |= Cgroups.members(cgroups)
            if not left:
                break
            if time.monotonic() > deadline:
                raise ProviderError(
                    f"{len(left)} processes of the sandbox did not end; an operator has to look at it.",
                    kind=ErrorKind.UNAVAILABLE,
                    retryable=True,
                )
            for pid in left:
                start = process_start_time(pid)
                if start is not None:
                    kill_process(pid, start)
            time.sleep(0.02)
        Cgroups.remove(cgroups)
        try:
            self.store.socket_path(sandbox_id).unlink()
        except FileNotFoundError:
            pass
        try:
            disk.unmount(self.store.directory(sandbox_id) / "home")
        except disk.DiskError as exc:
            raise ProviderError(
                f"The sandbox's disk could not be unmounted: {exc}", kind=ErrorKind.UNAVAILABLE, retryable=True
            ) from exc

    # -- what this machine enforces -----------------------------------------------------------

    def limits_in_force(self) -> dict[str, str]:
        """How each limit is enforced on this machine, for operators and the README."""
        usable = self.cgroups.usable
        describe = {}

        def cgroup(controller: str) -> str | None:
            if controller not in usable:
                return None
            mount, version = usable[controller]
            limit_file = Cgroups.LIMIT_FILES[(controller, version)]
            return f"cgroup v{version} {limit_file} ({mount}/{self.cgroups.parent}/<id>)"

        describe["memory"] = cgroup("memory") or "RLIMIT_AS (address space) per process"
        describe["cpu"] = cgroup("cpu") or "not limited; sandboxes run at nice 10"
        describe["processes"] = cgroup("pids") or (
            f"RLIMIT_NPROC {self.pids_max} (the sandbox's own uid)" if self.own_uids else "not limited"
        )
        describe["disk"] = (
            "a sparse ext4 image of the quota's size per sandbox, loop-mounted at its home while it runs "
            "(writes past the quota fail with ENOSPC)"
            if self.disk_images
            else "home size checked at every start (refused over quota) and every "
            f"{self.disk_check_seconds:.0f} s inside (warning in the terminals); RLIMIT_FSIZE = quota per file"
        )
        describe["tmp"] = f"/tmp and /dev/shm are tmpfs of {self.tmp_size >> 20} MiB each"
        describe["uid"] = (
            f"each sandbox runs as its own host uid from {self.uid_base}"
            if self.own_uids
            else f"sandboxes run as the portal's uid {os.geteuid()} (unprivileged user namespaces)"
        )
        describe["network"] = (
            "outbound through slirp4netns (DNS at 10.0.2.3); private, link-local and reserved ranges and the "
            "host's own addresses unreachable"
            if self.network
            else "none (loopback only)"
        )
        return describe


def _reown(home: Path, old: int, new: int) -> None:
    """Give ``new`` every file of the workspace that ``old`` owned (one filesystem)."""
    device = home.lstat().st_dev
    for directory, names, files in os.walk(home):
        for name in names + files:
            path = os.path.join(directory, name)
            info = os.lstat(path)
            if info.st_dev == device and (info.st_uid == old or info.st_gid == old):
                os.lchown(path, new if info.st_uid == old else -1, new if info.st_gid == old else -1)
        names[:] = [n for n in names if os.lstat(os.path.join(directory, n)).st_dev == device]


def _read_info(fd: int, deadline: float) -> dict | None:
    """bwrap's --info-fd JSON (child-pid and namespaces), or None if it exited without it."""
    buffer = b""
    decoder = json.JSONDecoder()
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        ready, _, _ = select.select([fd], [], [], remaining)
        if not ready:
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            return None
        buffer += chunk
        try:
            info, _ = decoder.raw_decode(buffer.decode(errors="replace").lstrip())
        except ValueError:
            continue
        return info if isinstance(info, dict) and "child-pid" in info else None


def _open_log(path: Path) -> int:
    """The sandbox's log for this start, keeping the end of the previous ones."""
    try:
        if path.stat().st_size > LOG_KEEP:
            tail = path.read_bytes()[-LOG_KEEP // 2 :]
            path.write_bytes(tail)
    except FileNotFoundError:
        pass
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
