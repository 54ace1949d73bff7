"""Sandboxes on this machine: a persistent home per sandbox, its processes isolated by bubblewrap.

Each sandbox is a directory under the root (``SANDBOX_LOCAL_ROOT``), which no sandbox can see::

    .lock                 held while a sandbox is created (the name index, uid slots)
    .system/agent.py      the agent (local_agent.py), bind-mounted read-only into every sandbox
    names/<name>          the id of the sandbox of that name
    tokens/<sha256>       the id of the sandbox an SSH token opens (the token itself is not kept)
    trash/                sandboxes being deleted
    <id>/state.json       the record: name, labels, resources, state, times, processes, token hash
    <id>/lock             held (flock) during every change of the sandbox
    <id>/log              what bwrap and the agent write to stderr
    <id>/etc/             passwd, group, hosts and hostname as seen inside
    <id>/run/agent.sock   the agent's socket: created here and handed to the agent as a descriptor
    <id>/home/            the workspace, /home/sandbox inside; kept across stop and start

state.json is replaced atomically and changed only under the sandbox's lock, so web workers,
Celery workers and the SSH gateway, in any number of processes, share one root.

A running sandbox is ``bwrap`` with its own user, mount, PID, IPC, UTS, network and cgroup
namespaces and no capabilities: ``/usr`` and a short list of ``/etc`` files read-only, the home
read-write, a private ``/tmp``, ``/proc`` and ``/dev``. Nothing else of the host is mounted: not
the portal's code, ``var/``, ``.env``, nor other sandboxes. When the portal runs as root, each
sandbox also runs as its own unprivileged host uid (``SANDBOX_LOCAL_UID_BASE`` + a slot), so
even a process that escaped its namespaces could not read another sandbox's files. Its PID 1 is
the agent; stopping the sandbox ends the agent, and the kernel then kills every process of the
namespace. The sandbox has only a loopback interface, which is also what lets every sandbox
serve its own port 3000.

Limits: per-sandbox cgroups (v1, or v2 with the controllers enabled) where their directories
are writable: memory, CPU quota and a process count. Otherwise rlimits: address space for
memory, process count when the sandbox has its own uid, a lower CPU priority. The disk quota
is a size check of the home at start (refused above quota), warnings inside when the agent
finds it exceeded, and RLIMIT_FSIZE per file. :meth:`LocalProvider.limits_in_force` says which.
"""

from __future__ import annotations

import base64
import errno
import fcntl
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import select
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from . import local_agent as protocol
from .base import (
    ErrorKind,
    ProviderError,
    RemoteSandbox,
    RemoteState,
    SandboxAccess,
    SandboxProvider,
    SandboxSpec,
    SignedLink,
    SshAccess,
    TerminalSession,
)

logger = logging.getLogger(__name__)

SANDBOX_ID = re.compile(r"[0-9a-f]{32}")
SANDBOX_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
GIB = 1 << 30

INSIDE_UID = 1000
INSIDE_HOME = protocol.HOME
INSIDE_AGENT = "/run/joepro/agent.py"
INSIDE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Host /etc entries a sandbox sees (read-only). Files that may hold credentials (npmrc, pip.conf,
# gitconfig, environment, ssh/, ssl/private) are left out on purpose.
ETC_ENTRIES = (
    "alternatives", "bash.bashrc", "bash_completion.d", "ca-certificates", "ca-certificates.conf",
    "debian_version", "gai.conf", "host.conf", "inputrc", "ld.so.cache", "ld.so.conf", "ld.so.conf.d",
    "locale.alias", "localtime", "magic", "magic.mime", "mime.types", "nsswitch.conf", "os-release",
    "profile", "profile.d", "protocols", "python3", "python3.11", "resolv.conf", "services", "shells",
    "skel", "ssl/certs", "ssl/openssl.cnf", "terminfo", "timezone", "vim",
)

LOCK_TIMEOUT = 30.0
START_TIMEOUT = 15.0
AGENT_TIMEOUT = 5.0
STATUS_TIMEOUT = 0.5
MAX_REPLY = 1 << 20
MAX_EXEC_REPLY = 64 << 20
RECV_SIZE = 1 << 18
LOG_KEEP = 1 << 20

# The record's own words; RemoteState is the portal's vocabulary for them.
STOPPED, STARTING, STARTED, STOPPING, ERROR, DESTROYING = (
    "stopped", "starting", "started", "stopping", "error", "destroying",
)
REMOTE_STATES = {
    STOPPED: RemoteState.STOPPED,
    STARTING: RemoteState.STARTING,
    STARTED: RemoteState.STARTED,
    STOPPING: RemoteState.STOPPING,
    ERROR: RemoteState.ERROR,
    DESTROYING: RemoteState.DESTROYING,
}


class AgentError(ProviderError):
    """The agent answered, refusing the request; ``code`` is its error code."""

    def __init__(self, message: str, *, code: str):
        super().__init__(message, kind=ErrorKind.UNAVAILABLE)
        self.code = code


class PortClosed(ProviderError):
    """Nothing listens on the requested port inside the sandbox."""

    def __init__(self, port: int):
        super().__init__(f"Nothing is listening on port {port} in the sandbox.", kind=ErrorKind.UNAVAILABLE)
        self.port = port


@dataclass(frozen=True)
class Problem:
    """Something that keeps sandboxes from running on this machine, and how to fix it."""

    code: str  # bwrap_missing, bwrap_fails, python_missing, root_not_traversable, root_visible
    message: str
    hint: str


@dataclass(frozen=True)
class CommandResult:
    exit_code: int | None
    stdout: bytes
    stderr: bytes
    timed_out: bool = False


# --- processes --------------------------------------------------------------------------------


def process_start_time(pid: int | None) -> int | None:
    """The start time (clock ticks since boot) of a live process, None when it is gone or a
    zombie. With the pid it identifies a process across pid reuse."""
    if not pid:
        return None
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    fields = raw[raw.rindex(b")") + 2 :].split()
    if fields[0] in (b"Z", b"X"):
        return None
    return int(fields[19])


def is_alive(pid: int | None, start_time: int | None) -> bool:
    return bool(pid) and start_time is not None and process_start_time(pid) == start_time


def kill_process(pid: int, start_time: int, signum: int = signal.SIGKILL) -> None:
    """Signal the process only if it is still the one started at ``start_time`` (a pidfd
    pins it while the start time is checked)."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return
    try:
        if process_start_time(pid) == start_time:
            signal.pidfd_send_signal(pidfd, signum)
    except OSError:
        pass
    finally:
        os.close(pidfd)


def namespace_members(pid_namespace: int) -> list[int]:
    """Host pids of every process in the PID namespace with that inode number."""
    target = f"pid:[{pid_namespace}]"
    members = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if os.readlink(f"/proc/{entry.name}/ns/pid") == target:
                    members.append(int(entry.name))
            except OSError:
                continue
    return members


def disk_usage(path: Path) -> int:
    """Bytes allocated under ``path`` (one filesystem, symlinks not followed)."""
    try:
        device = path.lstat().st_dev
    except OSError:
        return 0
    total, stack = 0, [str(path)]
    while stack:
        try:
            entries = os.scandir(stack.pop())
        except OSError:
            continue
        with entries:
            for entry in entries:
                try:
                    info = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                total += info.st_blocks * 512
                if stat.S_ISDIR(info.st_mode) and info.st_dev == device:
                    stack.append(entry.path)
    return total


# --- cgroups ----------------------------------------------------------------------------------


class Cgroups:
    """Per-sandbox cgroups ``<hierarchy>/<parent>/<sandbox id>`` for memory, cpu and pids.

    cgroup v1 (one hierarchy per controller) where mounted, else the unified v2 hierarchy when
    it offers the controllers. Usable only where the directories are writable: as root on a
    host, or in a delegated subtree.
    """

    CONTROLLERS = ("memory", "cpu", "pids")
    LIMIT_FILES = {
        ("memory", 1): "memory.limit_in_bytes",
        ("cpu", 1): "cpu.cfs_quota_us",
        ("pids", 1): "pids.max",
        ("memory", 2): "memory.max",
        ("cpu", 2): "cpu.max",
        ("pids", 2): "pids.max",
    }

    def __init__(self, parent: str, mountinfo: str = "/proc/self/mountinfo"):
        self.parent = parent.strip("/")
        self.hierarchies = self._discover(mountinfo)
        self._lock = threading.Lock()
        self._usable: dict[str, tuple[Path, int]] | None = None

    @classmethod
    def _discover(cls, mountinfo: str) -> dict[str, tuple[Path, int]]:
        found: dict[str, tuple[Path, int]] = {}
        unified = None
        try:
            lines = Path(mountinfo).read_text().splitlines()
        except OSError:
            return found
        for line in lines:
            left, _, right = line.partition(" - ")
            fields, tail = left.split(), right.split()
            if len(fields) < 5 or len(tail) < 3:
                continue
            mount, fstype, options = Path(fields[4]), tail[0], tail[2].split(",")
            if fstype == "cgroup":
                for controller in cls.CONTROLLERS:
                    if controller in options and controller not in found:
                        found[controller] = (mount, 1)
            elif fstype == "cgroup2" and unified is None:
                unified = mount
        if unified is not None:
            try:
                offered = (unified / "cgroup.controllers").read_text().split()
            except OSError:
                offered = []
            for controller in cls.CONTROLLERS:
                if controller not in found and controller in offered:
                    found[controller] = (unified, 2)
        return found

    @property
    def usable(self) -> dict[str, tuple[Path, int]]:
        """The controllers whose sandbox cgroups can be created here (probed once)."""
        with self._lock:
            if self._usable is None:
                self._usable = {
                    controller: where
                    for controller, where in self.hierarchies.items()
                    if self._probe(controller, *where)
                }
            return self._usable

    def _probe(self, controller: str, mount: Path, version: int) -> bool:
        probe = mount / self.parent / f".probe-{os.getpid()}-{threading.get_ident()}"
        try:
            self._prepare_parent(mount, version)
            probe.mkdir()
        except OSError:
            return False
        try:
            return os.access(probe / self.LIMIT_FILES[(controller, version)], os.W_OK)
        finally:
            try:
                probe.rmdir()
            except OSError:
                pass

    def _prepare_parent(self, mount: Path, version: int) -> None:
        (mount / self.parent).mkdir(parents=True, exist_ok=True)
        if version == 2:
            wanted = " ".join(f"+{c}" for c in self.CONTROLLERS if self.hierarchies.get(c, (None, 0))[1] == 2)
            directory = mount
            for part in Path(self.parent).parts:
                (directory / "cgroup.subtree_control").write_text(wanted)
                directory = directory / part
            (directory / "cgroup.subtree_control").write_text(wanted)

    def create(self, sandbox_id: str, *, cpu: int, memory_bytes: int, pids: int) -> list[str]:
        """Make the sandbox's cgroups with their limits; returns their directories."""
        directories: list[str] = []
        for controller, (mount, version) in self.usable.items():
            directory = mount / self.parent / sandbox_id
            directory.mkdir(exist_ok=True)
            if version == 1:
                self._write_v1(controller, directory, cpu=cpu, memory_bytes=memory_bytes, pids=pids)
            else:
                self._write_v2(controller, directory, cpu=cpu, memory_bytes=memory_bytes, pids=pids)
            if str(directory) not in directories:
                directories.append(str(directory))
        return directories

    @staticmethod
    def _write_v1(controller: str, directory: Path, *, cpu: int, memory_bytes: int, pids: int) -> None:
        if controller == "memory":
            (directory / "memory.limit_in_bytes").write_text(str(memory_bytes))
            swap = directory / "memory.memsw.limit_in_bytes"
            if swap.exists():
                try:
                    swap.write_text(str(memory_bytes))  # memory + swap: no swapping beyond the limit
                except OSError:
                    pass
        elif controller == "cpu":
            (directory / "cpu.cfs_period_us").write_text("100000")
            (directory / "cpu.cfs_quota_us").write_text(str(cpu * 100000))
        elif controller == "pids":
            (directory / "pids.max").write_text(str(pids))

    @staticmethod
    def _write_v2(controller: str, directory: Path, *, cpu: int, memory_bytes: int, pids: int) -> None:
        if controller == "memory":
            (directory / "memory.max").write_text(str(memory_bytes))
            swap = directory / "memory.swap.max"
            if swap.exists():
                swap.write_text("0")
        elif controller == "cpu":
            (directory / "cpu.max").write_text(f"{cpu * 100000} 100000")
        elif controller == "pids":
            (directory / "pids.max").write_text(str(pids))

    @staticmethod
    def members(directories: list[str]) -> set[int]:
        pids: set[int] = set()
        for directory in directories:
            try:
                pids.update(int(line) for line in Path(directory, "cgroup.procs").read_text().split())
            except (OSError, ValueError):
                continue
        return pids

    @staticmethod
    def remove(directories: list[str], *, wait: float = 2.0) -> None:
        deadline = time.monotonic() + wait
        for directory in directories:
            while True:
                try:
                    os.rmdir(directory)
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:
                    if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                        logger.warning("could not remove cgroup %s: %s", directory, exc)
                        break
                    time.sleep(0.02)


# --- talking to the agent ---------------------------------------------------------------------


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    buffer = bytearray(size)
    view, received = memoryview(buffer), 0
    while received < size:
        count = sock.recv_into(view[received:])
        if not count:
            raise ConnectionError("the agent closed the connection")
        received += count
    return bytes(buffer)


def _recv_frame(sock: socket.socket, max_size: int) -> tuple[bytes, bytes]:
    kind, length = protocol.FRAME.unpack(_recv_exact(sock, protocol.HEADER))
    if length > max_size:
        raise ConnectionError("oversized frame from the agent")
    return kind, _recv_exact(sock, length)


class LocalTerminal(TerminalSession):
    """An attachment to a PTY session of the agent, over its unix socket.

    Output arrives in frames of up to 64 KiB; :meth:`read` parses every complete frame it has
    received and returns their bytes joined, so bulk output costs one call per large read.
    """

    def __init__(self, sock: socket.socket, session_id: str, *, created: bool):
        self.session_id = session_id
        self.created = created
        self._sock = sock
        self._buffer = bytearray()
        self._write_lock = threading.Lock()
        self._exit_code: int | None = None
        self._ended = False
        self._detached = False
        self._input_closed = False

    def read(self) -> bytes:
        while True:
            data = self._take_frames()
            if data:
                return data
            if self._ended or self._detached:
                return b""
            try:
                chunk = self._sock.recv(RECV_SIZE)
            except OSError:
                chunk = b""
            if not chunk:
                self._detached = True  # detached here, or the sandbox stopped
                return b""
            self._buffer += chunk

    def _take_frames(self) -> bytes:
        buffer, offset, parts = self._buffer, 0, []
        while not self._ended and len(buffer) - offset >= protocol.HEADER:
            kind, length = protocol.FRAME.unpack_from(buffer, offset)
            if length > protocol.MAX_FRAME:
                self._detached = True
                break
            end = offset + protocol.HEADER + length
            if end > len(buffer):
                break
            if kind == protocol.DATA:
                parts.append(buffer[offset + protocol.HEADER : end])
            elif kind == protocol.EXIT and length == protocol.STATUS.size:
                self._exit_code = protocol.STATUS.unpack_from(buffer, offset + protocol.HEADER)[0]
                self._ended = True
            offset = end
        if offset:
            data = b"".join(parts)
            del buffer[:offset]
            return data
        return b""

    def _send(self, kind: bytes, payload: bytes = b"") -> None:
        if self._ended or self._detached or self._input_closed:
            return
        with self._write_lock:
            try:
                self._sock.sendall(protocol.frame(kind, payload))
            except OSError:
                # The shell is ending; read() still delivers its last output and exit status.
                self._input_closed = True

    def write(self, data: bytes) -> None:
        for start in range(0, len(data), protocol.READ_SIZE):
            self._send(protocol.DATA, bytes(data[start : start + protocol.READ_SIZE]))

    def resize(self, cols: int, rows: int) -> None:
        self._send(protocol.RESIZE, protocol.WINSIZE.pack(max(1, min(cols, 1000)), max(1, min(rows, 1000))))

    def kill(self) -> None:
        self._send(protocol.KILL)

    def detach(self) -> None:
        if self._detached:
            return
        self._detached = True
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()

    @property
    def exit_code(self) -> int | None:
        return self._exit_code

    @property
    def ended(self) -> bool:
        return self._ended


# --- the provider -----------------------------------------------------------------------------


class LocalProvider(SandboxProvider):
    """Sandboxes on this machine under ``root``. Thread-safe; any number of processes may
    share one root."""

    name = "local"

    def __init__(
        self,
        root: Path | str,
        *,
        ssh_host: str = "localhost",
        ssh_port: int = 2222,
        bwrap: str = "bwrap",
        python: str = "/usr/bin/python3",
        uid_base: int = 2_000_000_000,
        cgroup_parent: str = "joepro-sandboxes",
        pids_max: int = 4096,
        tmp_size_mb: int = 1024,
        stop_grace: float = 1.0,
        disk_check_seconds: float = 120.0,
    ):
        self.root = Path(root).absolute()
        self.ssh_host = ssh_host
        self.ssh_port = int(ssh_port)
        self.bwrap = bwrap
        self.python = python
        self.uid_base = int(uid_base)
        self.pids_max = int(pids_max)
        self.tmp_size = int(tmp_size_mb) << 20
        self.stop_grace = float(stop_grace)
        self.disk_check_seconds = float(disk_check_seconds)
        self.cgroups = Cgroups(cgroup_parent)
        self.own_uids = os.geteuid() == 0
        self._logged_limits = False

    @classmethod
    def from_settings(cls) -> LocalProvider:
        from django.conf import settings

        return cls(
            settings.SANDBOX_LOCAL_ROOT,
            ssh_host=settings.SANDBOX_SSH_HOST,
            ssh_port=settings.SANDBOX_SSH_PORT,
            bwrap=settings.SANDBOX_BWRAP,
            uid_base=settings.SANDBOX_LOCAL_UID_BASE,
            cgroup_parent=settings.SANDBOX_LOCAL_CGROUP_PARENT,
        )

    # -- lookups ------------------------------------------------------------------------------

    def find(self, name: str) -> RemoteSandbox | None:
        if not SANDBOX_NAME.fullmatch(name or ""):
            return None
        try:
            sandbox_id = (self.root / "names" / name).read_text().strip()
        except OSError:
            return None
        remote = self.get(sandbox_id)
        if remote is None or remote.name != name or remote.state is RemoteState.DESTROYING:
            return None
        return remote

    def get(self, remote_id: str) -> RemoteSandbox | None:
        if not SANDBOX_ID.fullmatch(remote_id or ""):
            return None
        record = self._read(remote_id)
        if record is None:
            return None
        return self._remote(record)

    def list_managed(self, labels: Mapping[str, str]) -> Iterator[RemoteSandbox]:
        try:
            entries = sorted(entry.name for entry in os.scandir(self.root) if SANDBOX_ID.fullmatch(entry.name))
        except FileNotFoundError:
            return
        for sandbox_id in entries:
            record = self._read(sandbox_id)
            if record is None or record["state"] == DESTROYING:
                continue
            if all(record["labels"].get(key) == value for key, value in labels.items()):
                yield self._remote(record)

    # -- lifecycle ----------------------------------------------------------------------------

    def create(self, spec: SandboxSpec, *, wait_seconds: float) -> RemoteSandbox:
        """Creates the workspace and starts it. A local start takes well under a second, so
        the call returns once the sandbox runs, whatever ``wait_seconds``."""
        if not SANDBOX_NAME.fullmatch(spec.name or ""):
            raise ProviderError(f"{spec.name!r} is not a valid sandbox name.", kind=ErrorKind.REJECTED)
        for key, value in spec.env.items():
            if not ENV_NAME.fullmatch(key) or "\0" in value:
                raise ProviderError(f"Invalid environment variable {key!r}.", kind=ErrorKind.REJECTED)
        self._prepare_root()
        with self._root_lock():
            if self._name_taken(spec.name):
                raise ProviderError(f"A sandbox named {spec.name} exists already.", kind=ErrorKind.CONFLICT)
            sandbox_id = uuid.uuid4().hex
            uid = self.uid_base + self._free_slot() if self.own_uids else None
            now = time.time()
            record = {
                "id": sandbox_id,
                "name": spec.name,
                "labels": dict(spec.labels),
                "cpu": spec.cpu,
                "memory_gb": spec.memory_gb,
                "disk_gb": spec.disk_gb,
                "auto_stop_minutes": spec.auto_stop_minutes,
                "env": dict(spec.env),
                "uid": uid,
                "state": STOPPED,
                "error": "",
                "created_at": now,
                "started_at": None,
                "stopped_at": None,
                "last_activity_at": now,
                "process": None,
                "limits": {},
                "ssh": None,
                "link_nonce": None,
            }
            self._make_workspace(sandbox_id, uid)
            self._write(record)
            self._write_file(self.root / "names" / spec.name, sandbox_id)
        logger.info("local sandbox %s (%s) created", sandbox_id, spec.name)
        with self._locked(sandbox_id, timeout=LOCK_TIMEOUT):
            record = self._start_locked(self._load(sandbox_id))
        return self._remote(record)

    def start(self, remote_id: str, *, wait_seconds: float) -> RemoteSandbox:
        """Starts the sandbox and returns once its agent answers (well under a second)."""
        sandbox_id = self._existing(remote_id)
        with self._locked(sandbox_id, timeout=max(wait_seconds, 2.0)):
            record = self._settle_locked(self._load(sandbox_id))
            if record["state"] == STARTED:
                return self._remote(record)
            record = self._start_locked(record)
        return self._remote(record)

    def stop(self, remote_id: str, *, wait_seconds: float) -> RemoteSandbox:
        """Ends every process of the sandbox (verified: none is left in its PID namespace),
        removes its cgroups and revokes its SSH token and preview links. Files are kept."""
        sandbox_id = self._existing(remote_id)
        with self._locked(sandbox_id, timeout=max(wait_seconds, 2.0)):
            record = self._load(sandbox_id)
            if record["state"] in (STOPPED, ERROR) and not record.get("process"):
                return self._remote(record)
            record["state"] = STOPPING
            self._write(record)
            self._terminate(record)
            record = self._stopped(record)
        logger.info("local sandbox %s stopped", sandbox_id)
        return self._remote(record)

    def recover(self, remote_id: str, *, wait_seconds: float) -> RemoteSandbox:
        """An errored local sandbox is one whose start failed: recovering is starting again."""
        return self.start(remote_id, wait_seconds=wait_seconds)

    def delete(self, remote_id: str) -> None:
        if not SANDBOX_ID.fullmatch(remote_id or ""):
            return
        directory = self.root / remote_id
        try:
            with self._locked(remote_id, timeout=LOCK_TIMEOUT):
                record = self._read(remote_id)
                if record is None:
                    return
                record["state"] = DESTROYING
                self._write(record)
                self._terminate(record)
                self._drop_ssh_token(record)
                with self._root_lock():
                    index = self.root / "names" / record["name"]
                    try:
                        if index.read_text().strip() == remote_id:
                            index.unlink()
                    except OSError:
                        pass
                trash = self.root / "trash" / f"{remote_id}-{secrets.token_hex(4)}"
                trash.parent.mkdir(mode=0o700, exist_ok=True)
                os.rename(directory, trash)
        except ProviderError as exc:
            if exc.kind is ErrorKind.NOT_FOUND:
                return
            raise
        _remove_tree(trash)
        logger.info("local sandbox %s deleted", remote_id)

    # -- access -------------------------------------------------------------------------------

    def mint_access(
        self, remote_id: str, *, ssh_minutes: int, preview_port: int, link_seconds: int
    ) -> SandboxAccess:
        """An SSH token for the portal's SSH gateway (replacing the previous one), and the
        portal paths of the preview and the terminal. The links are relative: the portal
        serves them itself, for the owner only."""
        sandbox_id = self._existing(remote_id)
        token = secrets.token_hex(16)  # OpenSSH refuses user names that start with "-"
        digest = _token_digest(token)
        now = datetime.now(timezone.utc)
        ssh_expires = now + timedelta(minutes=ssh_minutes)
        with self._locked(sandbox_id, timeout=LOCK_TIMEOUT):
            record = self._settle_locked(self._load(sandbox_id))
            if record["state"] != STARTED:
                raise ProviderError("The sandbox is not running.", kind=ErrorKind.INVALID_STATE)
            self._drop_ssh_token(record)
            index = self.root / "tokens" / digest
            self._write_file(index, json.dumps({"id": sandbox_id, "expires_at": ssh_expires.timestamp()}))
            record["ssh"] = {"hash": digest, "expires_at": ssh_expires.timestamp()}
            self._write(record)
        links_expire = now + timedelta(seconds=link_seconds)
        return SandboxAccess(
            ssh=SshAccess(
                token=token,
                host=self.ssh_host,
                port=self.ssh_port,
                command=f"ssh -p {self.ssh_port} {token}@{self.ssh_host}",
                expires_at=ssh_expires,
            ),
            preview=SignedLink(url=f"/sandboxes/{sandbox_id}/preview/", expires_at=links_expire, port=preview_port),
            terminal=SignedLink(url=f"/sandboxes/{sandbox_id}/terminal/", expires_at=links_expire),
        )

    def revoke_access(self, remote_id: str, *, preview_port: int, links: list[SignedLink]) -> None:
        """Deletes the SSH token and invalidates every preview link handed out (see
        :meth:`link_nonce`)."""
        if not SANDBOX_ID.fullmatch(remote_id or ""):
            return
        try:
            with self._locked(remote_id, timeout=LOCK_TIMEOUT):
                record = self._read(remote_id)
                if record is None:
                    return
                self._drop_ssh_token(record)
                if record.get("link_nonce"):
                    record["link_nonce"] = secrets.token_hex(16)
                self._write(record)
        except ProviderError as exc:
            if exc.kind is not ErrorKind.NOT_FOUND:
                raise

    def resolve_ssh_token(self, token: str) -> str | None:
        """The id of the running sandbox this SSH token opens; None when the token is unknown,
        expired, revoked, or its sandbox is not running."""
        if not isinstance(token, str) or not 16 <= len(token) <= 256:
            return None
        digest = _token_digest(token)
        try:
            sandbox_id = json.loads((self.root / "tokens" / digest).read_text())["id"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if not isinstance(sandbox_id, str) or not SANDBOX_ID.fullmatch(sandbox_id):
            return None
        record = self._read(sandbox_id)
        ssh = (record or {}).get("ssh") or {}
        if not hmac.compare_digest(str(ssh.get("hash", "")), digest):
            return None
        if float(ssh.get("expires_at") or 0) <= time.time():
            return None
        if self._observed(record) != STARTED:
            return None
        return sandbox_id

    def link_nonce(self, remote_id: str) -> str | None:
        """A value that changes at every start, stop and :meth:`revoke_access`: preview links
        signed with it expire early with it. None unless the sandbox runs."""
        record = self._read(remote_id) if SANDBOX_ID.fullmatch(remote_id or "") else None
        if record is None or self._observed(record) != STARTED:
            return None
        return record.get("link_nonce")

    def refresh_activity(self, remote_id: str) -> None:
        sandbox_id = self._existing(remote_id)
        with self._locked(sandbox_id, timeout=LOCK_TIMEOUT):
            record = self._load(sandbox_id)
            record["last_activity_at"] = time.time()
            self._write(record)
        if record["state"] == STARTED:
            try:
                self._request(sandbox_id, {"op": "touch"}, timeout=STATUS_TIMEOUT)
            except ProviderError:
                pass

    # -- inside the sandbox -------------------------------------------------------------------

    def open_terminal(
        self, remote_id: str, *, session_id: str, cols: int, rows: int, command: list[str] | None = None
    ) -> LocalTerminal:
        """See :meth:`SandboxProvider.open_terminal`. ``command``, when given, runs instead of
        the login shell if the session is created (for an SSH client's command)."""
        if not protocol.SESSION_ID.fullmatch(session_id or ""):
            raise ProviderError(
                "Terminal session ids are 1 to 64 letters, digits or dashes.", kind=ErrorKind.REJECTED
            )
        sandbox_id = self._running(remote_id)
        request = {"op": "terminal", "session": session_id, "cols": cols, "rows": rows}
        if command:
            request["argv"] = list(command)
        reply, sock = self._request(sandbox_id, request, timeout=AGENT_TIMEOUT, keep=True)
        sock.settimeout(None)
        return LocalTerminal(sock, session_id, created=bool(reply.get("created")))

    def open_relay(self, remote_id: str, port: int) -> socket.socket:
        """A connected stream (blocking, no timeout) to ``127.0.0.1:port`` inside the running
        sandbox: raw bytes both ways, half-closes passed on. Raises :class:`PortClosed` when
        nothing listens there."""
        sandbox_id = self._running(remote_id)
        try:
            _, sock = self._request(sandbox_id, {"op": "relay", "port": int(port)}, timeout=AGENT_TIMEOUT, keep=True)
        except AgentError as exc:
            if exc.code == "refused":
                raise PortClosed(port) from exc
            raise
        sock.settimeout(None)
        return sock

    def run(self, remote_id: str, argv: list[str], *, timeout: float = 30.0) -> CommandResult:
        """Run a command in the sandbox's home (a new session, stdin /dev/null) and wait for
        it. Background children it leaves behind keep running."""
        sandbox_id = self._running(remote_id)
        reply, _ = self._request(
            sandbox_id,
            {"op": "exec", "argv": list(argv), "timeout": timeout},
            timeout=timeout + AGENT_TIMEOUT,
            max_reply=MAX_EXEC_REPLY,
        )
        return CommandResult(
            exit_code=reply.get("exit_code"),
            stdout=base64.b64decode(reply.get("stdout") or ""),
            stderr=base64.b64decode(reply.get("stderr") or ""),
            timed_out=bool(reply.get("timed_out")),
        )

    def record(self, remote_id: str) -> dict | None:
        """The sandbox's record as stored (state, times, processes, cgroups, uid, limits), for
        operators and tests; None when it does not exist. Secrets are stored only hashed."""
        return self._read(remote_id) if SANDBOX_ID.fullmatch(remote_id or "") else None

    def processes(self, remote_id: str) -> list[int]:
        """Host pids of every process of the sandbox (empty when it is not running)."""
        record = self._read(remote_id) if SANDBOX_ID.fullmatch(remote_id or "") else None
        process = (record or {}).get("process") or {}
        return namespace_members(process["pid_namespace"]) if process.get("pid_namespace") else []

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
            "home size checked at every start (refused over quota) and every "
            f"{self.disk_check_seconds:.0f} s inside (warning in the terminals); RLIMIT_FSIZE = quota per file"
        )
        describe["tmp"] = f"/tmp and /dev/shm are tmpfs of {self.tmp_size >> 20} MiB each"
        describe["uid"] = (
            f"each sandbox runs as its own host uid from {self.uid_base}"
            if self.own_uids
            else f"sandboxes run as the portal's uid {os.geteuid()} (unprivileged user namespaces)"
        )
        return describe

    def problems(self) -> list[Problem]:
        """What keeps sandboxes from running here (empty when nothing does)."""
        return local_problems(bwrap=self.bwrap, root=self.root, python=self.python, own_uids=self.own_uids)

    # -- the record ---------------------------------------------------------------------------

    def _existing(self, remote_id: str) -> str:
        if not SANDBOX_ID.fullmatch(remote_id or "") or not (self.root / remote_id / "state.json").exists():
            raise ProviderError("The sandbox does not exist.", kind=ErrorKind.NOT_FOUND)
        return remote_id

    def _running(self, remote_id: str) -> str:
        """The id of a sandbox that runs; NOT_FOUND or INVALID_STATE otherwise."""
        sandbox_id = self._existing(remote_id)
        record = self._load(sandbox_id)
        if self._observed(record) != STARTED:
            raise ProviderError("The sandbox is not running.", kind=ErrorKind.INVALID_STATE)
        return sandbox_id

    def _read(self, sandbox_id: str) -> dict | None:
        try:
            return json.loads((self.root / sandbox_id / "state.json").read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise ProviderError(f"The record of sandbox {sandbox_id} cannot be read.") from exc

    def _load(self, sandbox_id: str) -> dict:
        record = self._read(sandbox_id)
        if record is None or record["state"] == DESTROYING:
            raise ProviderError("The sandbox does not exist.", kind=ErrorKind.NOT_FOUND)
        return record

    def _write(self, record: dict) -> None:
        self._write_file(self.root / record["id"] / "state.json", json.dumps(record, indent=1, sort_keys=True))

    @staticmethod
    def _write_file(path: Path, text: str, mode: int = 0o600) -> None:
        temporary = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
        try:
            os.write(fd, text.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, path)

    @contextmanager
    def _locked(self, sandbox_id: str, *, timeout: float):
        try:
            fd = os.open(self.root / sandbox_id / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except FileNotFoundError as exc:
            raise ProviderError("The sandbox does not exist.", kind=ErrorKind.NOT_FOUND) from exc
        try:
            _flock(fd, timeout, "Another change of this sandbox is in progress.")
            yield
        finally:
            os.close(fd)

    @contextmanager
    def _root_lock(self):
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            _flock(fd, LOCK_TIMEOUT, "Another sandbox is being created; try again.")
            yield
        finally:
            os.close(fd)

    def _lock_is_free(self, sandbox_id: str) -> bool:
        try:
            fd = os.open(self.root / sandbox_id / "lock", os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            return True
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False
        finally:
            os.close(fd)

    def _observed(self, record: dict) -> str:
        """The state, corrected for what the record cannot know: a started sandbox whose
        processes died (machine restart, killed by hand) is stopped, and so is one whose start
        or stop was cut short (its lock is free: the process doing it died)."""
        word = record["state"]
        if word == STARTED:
            return STARTED if self._agent_alive(record) else STOPPED
        if word in (STARTING, STOPPING) and self._lock_is_free(record["id"]):
            return STOPPED
        return word

    @staticmethod
    def _agent_alive(record: dict) -> bool:
        process = record.get("process") or {}
        return is_alive(process.get("agent_pid"), process.get("agent_start"))

    def _settle_locked(self, record: dict) -> dict:
        """Under the sandbox's lock: a transition recorded here was cut short (whoever made
        it no longer holds the lock), and a started sandbox may have died. Both end stopped,
        with whatever was left of them cleaned up."""
        if record["state"] == STARTED and self._agent_alive(record):
            return record
        if record["state"] in (STARTED, STARTING, STOPPING):
            self._terminate(record)
            return self._stopped(record)
        return record

    def _remote(self, record: dict) -> RemoteSandbox:
        observed = self._observed(record)
        if observed != record["state"] and self._lock_is_free(record["id"]):
            try:
                with self._locked(record["id"], timeout=0):
                    record = self._settle_locked(self._load(record["id"]))
                    observed = self._observed(record)
            except ProviderError:
                pass
        last_activity = record.get("last_activity_at")
        if observed == STARTED:
            status = self._agent_status(record["id"])
            if status and status.get("last_activity"):
                last_activity = max(last_activity or 0, float(status["last_activity"]))
        return RemoteSandbox(
            id=record["id"],
            name=record["name"],
            state=REMOTE_STATES.get(observed, RemoteState.UNKNOWN),
            labels=dict(record["labels"]),
            backend_state=observed,
            cpu=record["cpu"],
            memory_gb=record["memory_gb"],
            disk_gb=record["disk_gb"],
            error_reason=(record.get("error") or "") if observed == ERROR else "",
            recoverable=observed == ERROR,
            last_activity_at=_datetime(last_activity),
            created_at=_datetime(record.get("created_at")),
        )

    def _name_taken(self, name: str) -> bool:
        try:
            sandbox_id = (self.root / "names" / name).read_text().strip()
        except OSError:
            return False
        record = self._read(sandbox_id) if SANDBOX_ID.fullmatch(sandbox_id) else None
        return record is not None and record["state"] != DESTROYING and record["name"] == name

    def _free_slot(self) -> int:
        used = set()
        for entry in os.scandir(self.root):
            if SANDBOX_ID.fullmatch(entry.name):
                record = self._read(entry.name)
                if record and record.get("uid") is not None:
                    used.add(record["uid"] - self.uid_base)
        return next(slot for slot in range(len(used) + 1) if slot not in used)

    def _drop_ssh_token(self, record: dict) -> None:
        ssh = record.get("ssh") or {}
        if ssh.get("hash"):
            try:
                (self.root / "tokens" / ssh["hash"]).unlink()
            except FileNotFoundError:
                pass
        record["ssh"] = None

    # -- files --------------------------------------------------------------------------------

    def _prepare_root(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o711)  # sandboxes' uids traverse it to reach their homes, nothing more
        for name in ("names", "tokens", "trash"):
            (self.root / name).mkdir(mode=0o700, exist_ok=True)
        system = self.root / ".system"
        system.mkdir(mode=0o755, exist_ok=True)
        source = Path(protocol.__file__).read_bytes()
        target = system / "agent.py"
        try:
            current = target.read_bytes()
        except FileNotFoundError:
            current = None
        if current != source:
            self._write_file(target, source.decode(), mode=0o644)
            os.chmod(target, 0o644)

    def _make_workspace(self, sandbox_id: str, uid: int | None) -> None:
        directory = self.root / sandbox_id
        directory.mkdir(mode=0o711)
        os.chmod(directory, 0o711)
        (directory / "run").mkdir(mode=0o700)
        (directory / "etc").mkdir(mode=0o755)
        home = directory / "home"
        home.mkdir(mode=0o700)
        skel = Path("/etc/skel")
        if skel.is_dir():
            shutil.copytree(skel, home, symlinks=True, dirs_exist_ok=True)
        if uid is not None:
            for path in [home, *home.rglob("*")]:
                os.lchown(path, uid, uid)

    def _write_etc(self, record: dict) -> None:
        etc = self.root / record["id"] / "etc"
        etc.mkdir(mode=0o755, exist_ok=True)
        hostname = _hostname(record["name"])
        files = {
            "passwd": "root:x:0:0:root:/root:/usr/sbin/nologin\n"
            f"sandbox:x:{INSIDE_UID}:{INSIDE_UID}:Sandbox:{INSIDE_HOME}:/bin/bash\n"
            "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
            "group": f"root:x:0:\nsandbox:x:{INSIDE_UID}:\nnogroup:x:65534:\n",
            "hosts": f"127.0.0.1\tlocalhost\n127.0.1.1\t{hostname}\n::1\tlocalhost ip6-localhost ip6-loopback\n",
            "hostname": f"{hostname}\n",
        }
        for name, text in files.items():
            self._write_file(etc / name, text, mode=0o644)

    # -- start and stop -----------------------------------------------------------------------

    def _start_locked(self, record: dict) -> dict:
        """Start under the sandbox's lock. Raises REJECTED over the disk quota (the sandbox
        stays stopped) and UNAVAILABLE when it cannot start (the sandbox is then in error,
        recoverable by starting again)."""
        sandbox_id = record["id"]
        problems = local_problems(bwrap=self.bwrap, root=self.root, python=self.python, own_uids=self.own_uids)
        if problems:
            raise ProviderError(
                f"Sandboxes cannot run on this machine: {problems[0].message} {problems[0].hint}",
                kind=ErrorKind.UNAVAILABLE,
            )
        quota = record["disk_gb"] * GIB
        used = disk_usage(self.root / sandbox_id / "home")
        if quota and used > quota:
            raise ProviderError(
                f"The sandbox uses {used / GIB:.1f} GiB of disk, over its {record['disk_gb']} GiB quota, so it "
                "cannot start. Ask an operator to free space.",
                kind=ErrorKind.REJECTED,
            )
        self._prepare_root()
        record.update(state=STARTING, error="")
        self._write(record)
        try:
            record["process"], record["limits"] = self._launch(record)
        except Exception as exc:
            self._terminate(record)
            reason = exc.message if isinstance(exc, ProviderError) else f"The sandbox could not start: {exc}"
            record.update(state=ERROR, error=reason[:500], process=None, stopped_at=time.time())
            self._write(record)
            logger.error("local sandbox %s failed to start: %s", sandbox_id, reason)
            if isinstance(exc, ProviderError):
                raise
            raise ProviderError(reason, kind=ErrorKind.UNAVAILABLE) from exc
        now = time.time()
        record.update(state=STARTED, started_at=now, last_activity_at=now, link_nonce=secrets.token_hex(16))
        self._write(record)
        logger.info("local sandbox %s started (agent pid %s)", sandbox_id, record["process"]["agent_pid"])
        return record

    def _launch(self, record: dict) -> tuple[dict, dict]:
        sandbox_id = record["id"]
        directory = self.root / sandbox_id
        home = directory / "home"
        uid = record.get("uid") if self.own_uids else None
        if uid is not None:
            os.chown(home, uid, uid)
        os.chmod(home, 0o700)
        self._write_etc(record)
        if not self._logged_limits:
            self._logged_limits = True
            logger.info("local sandboxes: %s", "; ".join(f"{k}: {v}" for k, v in self.limits_in_force().items()))

        memory = record["memory_gb"] * GIB
        cgroups = self.cgroups.create(sandbox_id, cpu=record["cpu"], memory_bytes=memory, pids=self.pids_max)
        process = {"cgroups": cgroups}
        record["process"] = process  # so that a failure from here on cleans the cgroups up
        limited = set(self.cgroups.usable)
        rlimits = {"RLIMIT_CORE": 0}
        if record["disk_gb"]:
            rlimits["RLIMIT_FSIZE"] = record["disk_gb"] * GIB
        if "memory" not in limited:
            rlimits["RLIMIT_AS"] = memory
        if "pids" not in limited and uid is not None:
            rlimits["RLIMIT_NPROC"] = self.pids_max
        nice = 0 if "cpu" in limited else 10

        socket_path = directory / "run" / "agent.sock"
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
            argv = self._bwrap_argv(record, listen_fd=listener.fileno(), info_fd=info_write)
            config = {
                "argv": argv,
                "cgroup_procs": [str(Path(d) / "cgroup.procs") for d in cgroups],
                "rlimits": rlimits,
                "nice": nice,
                "uid": uid,
                "gid": uid,
                "keep_fds": [listener.fileno(), info_write],
            }
            log = _open_log(directory / "log")
            try:
                launcher = subprocess.Popen(
                    [sys.executable, "-I", protocol.__file__, "launch", json.dumps(config)],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=log,
                    pass_fds=(listener.fileno(), info_write),
                    start_new_session=True,
                )
            finally:
                os.close(log)
            os.close(info_write)
            info_write = -1
            listener.close()
            output, _ = launcher.communicate(timeout=START_TIMEOUT)
            if launcher.returncode != 0 or not output.strip().isdigit():
                raise ProviderError(self._failure(sandbox_id, "the launcher failed"))
            bwrap_pid = int(output.strip())
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
            self._wait_for_agent(sandbox_id, deadline)
        finally:
            listener.close()
            os.close(info_read)
            if info_write >= 0:
                os.close(info_write)
        limits = {"rlimits": rlimits, "nice": nice, "cgroups": cgroups, "uid": uid}
        return process, limits

    def _bwrap_argv(self, record: dict, *, listen_fd: int, info_fd: int) -> list[str]:
        directory = self.root / record["id"]
        bwrap = shutil.which(self.bwrap)
        env = {
            "HOME": INSIDE_HOME,
            "PATH": INSIDE_PATH,
            "USER": "sandbox",
            "LOGNAME": "sandbox",
            "SHELL": "/bin/bash",
            "LANG": "C.UTF-8",
            "TERM": "xterm-256color",
            **record.get("env", {}),
        }
        argv = [bwrap, "--unshare-all", "--unshare-user"]
        if _bwrap_has_option(bwrap, "--disable-userns"):
            argv.append("--disable-userns")  # no nested user namespaces: less kernel surface
        argv += [
            "--as-pid-1",
            "--new-session",
            "--uid", str(INSIDE_UID),
            "--gid", str(INSIDE_UID),
            "--hostname", _hostname(record["name"]),
            "--cap-drop", "ALL",
            "--clearenv",
        ]
        for key, value in env.items():
            argv += ["--setenv", key, value]
        argv += ["--ro-bind", "/usr", "/usr"]
        for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
            host = Path("/", name)
            if host.is_symlink():
                argv += ["--symlink", os.readlink(host), f"/{name}"]
            elif host.is_dir():
                argv += ["--ro-bind", str(host), f"/{name}"]
        for entry in ETC_ENTRIES:
            if os.path.exists(f"/etc/{entry}"):
                argv += ["--ro-bind", f"/etc/{entry}", f"/etc/{entry}"]
        for name in ("passwd", "group", "hosts", "hostname"):
            argv += ["--ro-bind", str(directory / "etc" / name), f"/etc/{name}"]
        argv += [
            "--symlink", "../proc/self/mounts", "/etc/mtab",
            "--proc", "/proc",
            "--dev", "/dev",
            "--perms", "1777", "--size", str(self.tmp_size), "--tmpfs", "/dev/shm",
            "--perms", "1777", "--size", str(self.tmp_size), "--tmpfs", "/tmp",
            "--dir", "/var",
            "--symlink", "../tmp", "/var/tmp",
            "--bind", str(directory / "home"), INSIDE_HOME,
            "--ro-bind", str(self.root / ".system" / "agent.py"), INSIDE_AGENT,
            "--remount-ro", "/",
            "--chdir", INSIDE_HOME,
            "--info-fd", str(info_fd),
            "--",
            self.python, "-I", "-S", INSIDE_AGENT, "serve",
            "--listen-fd", str(listen_fd),
            "--auto-stop", str(max(0, record.get("auto_stop_minutes") or 0) * 60),
            "--disk-quota", str(record["disk_gb"] * GIB),
            "--disk-check", str(self.disk_check_seconds),
        ]
        return argv

    def _wait_for_agent(self, sandbox_id: str, deadline: float) -> None:
        while True:
            try:
                self._request(sandbox_id, {"op": "status"}, timeout=max(0.1, deadline - time.monotonic()))
                return
            except ProviderError as exc:
                if time.monotonic() >= deadline:
                    raise ProviderError(self._failure(sandbox_id, "its agent did not answer")) from exc
                time.sleep(0.02)

    def _failure(self, sandbox_id: str, what: str) -> str:
        """A message for a failed start, with the last line bwrap or the agent logged."""
        try:
            lines = (self.root / sandbox_id / "log").read_bytes()[-2000:].decode(errors="replace").splitlines()
        except OSError:
            lines = []
        detail = next((line.strip() for line in reversed(lines) if line.strip()), "")
        return f"The sandbox could not start: {what}" + (f" ({detail[:300]})." if detail else ".")

    def _terminate(self, record: dict) -> None:
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
                self._request(sandbox_id, {"op": "shutdown", "grace": self.stop_grace}, timeout=STATUS_TIMEOUT)
            except ProviderError:
                pass
            if not _wait_for_exit(agent_pid, agent_start, self.stop_grace + 0.5):
                kill_process(agent_pid, agent_start)
                _wait_for_exit(agent_pid, agent_start, 2.0)
        bwrap_pid, bwrap_start = process.get("bwrap_pid"), process.get("bwrap_start")
        if is_alive(bwrap_pid, bwrap_start) and not _wait_for_exit(bwrap_pid, bwrap_start, 1.0):
            kill_process(bwrap_pid, bwrap_start)
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
            (self.root / sandbox_id / "run" / "agent.sock").unlink()
        except FileNotFoundError:
            pass

    def _stopped(self, record: dict, *, error: str = "") -> dict:
        self._drop_ssh_token(record)
        record.update(
            state=ERROR if error else STOPPED,
            error=error,
            process=None,
            link_nonce=None,
            stopped_at=time.time(),
        )
        self._write(record)
        return record

    # -- the agent's socket -------------------------------------------------------------------

    def _request(
        self, sandbox_id: str, request: dict, *, timeout: float, keep: bool = False, max_reply: int = MAX_REPLY
    ) -> tuple[dict, socket.socket | None]:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(str(self.root / sandbox_id / "run" / "agent.sock"))
            sock.sendall(protocol.json_frame(request))
            kind, payload = _recv_frame(sock, max_reply)
            reply = json.loads(payload) if kind == protocol.JSON else None
            if not isinstance(reply, dict):
                raise ValueError("not a JSON reply")
        except (OSError, ValueError) as exc:
            sock.close()
            raise ProviderError(
                "The sandbox's agent does not answer.", kind=ErrorKind.UNAVAILABLE, retryable=True
            ) from exc
        if not reply.get("ok"):
            sock.close()
            raise AgentError(
                f"The sandbox refused the request: {str(reply.get('message', ''))[:200]}",
                code=str(reply.get("error", "")),
            )
        if keep:
            return reply, sock
        sock.close()
        return reply, None

    def _agent_status(self, sandbox_id: str) -> dict | None:
        try:
            reply, _ = self._request(sandbox_id, {"op": "status"}, timeout=STATUS_TIMEOUT)
        except ProviderError:
            return None
        return reply


# --- helpers ----------------------------------------------------------------------------------


def _flock(fd: int, timeout: float, busy_message: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise ProviderError(busy_message, kind=ErrorKind.CONFLICT, retryable=True, retry_after=1) from None
            time.sleep(0.01)


def _wait_for_exit(pid: int, start_time: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while is_alive(pid, start_time):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.005)
    return True


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


def _remove_tree(path: Path) -> None:
    def make_writable(function, name, exc_info):
        try:
            os.chmod(os.path.dirname(name), 0o700)
            os.chmod(name, 0o700)
            function(name)
        except OSError:
            pass

    shutil.rmtree(path, onerror=make_writable)


def _token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _hostname(name: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")[:63].strip("-") or "sandbox"


def _datetime(timestamp: float | None) -> datetime | None:
    return datetime.fromtimestamp(timestamp, timezone.utc) if timestamp else None


_option_cache: dict[tuple[str, str], bool] = {}


def _bwrap_has_option(bwrap: str, option: str) -> bool:
    key = (bwrap, option)
    if key not in _option_cache:
        try:
            help_text = subprocess.run([bwrap, "--help"], capture_output=True, text=True, timeout=5).stdout
        except (OSError, subprocess.SubprocessError):
            help_text = ""
        _option_cache[key] = option in help_text
    return _option_cache[key]


_probe_cache: dict[tuple, str | None] = {}
_probe_lock = threading.Lock()


def bwrap_failure(bwrap_path: str, *, as_uid: int | None) -> str | None:
    """Why bwrap cannot create a sandbox's namespaces here (its own words), None when it can.

    Runs ``bwrap --unshare-all ... /bin/true`` once per process and arguments (about 10 ms),
    as the uid sandboxes run as.
    """
    key = (bwrap_path, as_uid)
    with _probe_lock:
        if key not in _probe_cache:
            argv = [bwrap_path, "--unshare-all", "--unshare-user", "--ro-bind", "/usr", "/usr"]
            for name in ("bin", "lib", "lib64", "sbin"):
                host = Path("/", name)
                if host.is_symlink():
                    argv += ["--symlink", os.readlink(host), f"/{name}"]
                elif host.is_dir():
                    argv += ["--ro-bind", str(host), f"/{name}"]
            argv += ["--proc", "/proc", "--dev", "/dev", "--cap-drop", "ALL", "--", "/bin/true"]
            kwargs = {"user": as_uid, "group": as_uid, "extra_groups": []} if as_uid is not None else {}
            try:
                result = subprocess.run(argv, capture_output=True, text=True, timeout=10, **kwargs)
            except (OSError, subprocess.SubprocessError) as exc:
                _probe_cache[key] = str(exc)
            else:
                _probe_cache[key] = (
                    None if result.returncode == 0 else (result.stderr.strip() or f"exit status {result.returncode}")
                )
        return _probe_cache[key]


def local_problems(*, bwrap: str, root: Path, python: str, own_uids: bool) -> list[Problem]:
    """Everything that keeps the local provider from running sandboxes here. Nothing is ever
    run unisolated instead: a start fails with the first problem."""
    problems: list[Problem] = []
    bwrap_path = shutil.which(bwrap)
    if bwrap_path is None:
        problems.append(
            Problem(
                "bwrap_missing",
                f"bubblewrap was not found (SANDBOX_BWRAP is {bwrap!r}).",
                "Install it (Debian/Ubuntu: apt-get install bubblewrap; Fedora: dnf install bubblewrap) "
                "or set SANDBOX_BWRAP to its path.",
            )
        )
    else:
        probe_uid = 65534 if own_uids else None  # nobody: as unprivileged as a sandbox's own uid
        failure = bwrap_failure(bwrap_path, as_uid=probe_uid)
        if failure:
            problems.append(
                Problem(
                    "bwrap_fails",
                    f"bubblewrap cannot create the namespaces of a sandbox here: {failure[:300]}",
                    "Allow unprivileged user namespaces: sysctl -w kernel.unprivileged_userns_clone=1 (Debian "
                    "kernels) and user.max_user_namespaces=15000 (persist both in /etc/sysctl.d/); on Ubuntu "
                    "24.04+ also kernel.apparmor_restrict_unprivileged_userns=0 or an AppArmor profile for bwrap. "
                    "In a container, allow user namespaces (e.g. docker run --security-opt seccomp=unconfined "
                    "--security-opt apparmor=unconfined), or use Daytona (set DAYTONA_API_KEY).",
                )
            )
    if not python.startswith("/usr/") or not os.access(python, os.X_OK):
        problems.append(
            Problem(
                "python_missing",
                f"The sandboxes' agent needs Python 3 at {python}, inside /usr (the only host tree they see).",
                "Install python3 (Debian/Ubuntu: apt-get install python3).",
            )
        )
    if own_uids:
        for directory in [*reversed(root.parents), root]:
            try:
                mode = directory.stat().st_mode
            except FileNotFoundError:
                break
            if not mode & stat.S_IXOTH:
                problems.append(
                    Problem(
                        "root_not_traversable",
                        f"{directory} is not traversable by other users, so sandboxes (each with its own uid) "
                        f"cannot reach their homes under SANDBOX_LOCAL_ROOT ({root}).",
                        f"chmod o+x {directory}, or set SANDBOX_LOCAL_ROOT to a path whose parents are.",
                    )
                )
                break
    for visible in ("/usr", "/etc", "/proc", "/dev"):
        if root == Path(visible) or Path(visible) in root.parents:
            problems.append(
                Problem(
                    "root_visible",
                    f"SANDBOX_LOCAL_ROOT ({root}) is inside {visible}, which sandboxes see.",
                    "Set SANDBOX_LOCAL_ROOT to a directory outside /usr, /etc, /proc and /dev "
                    "(default: var/sandboxes).",
                )
            )
    return problems
