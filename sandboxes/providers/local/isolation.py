"""How a local sandbox is confined: bubblewrap's arguments, cgroups, rlimits, its processes.

A running sandbox is ``bwrap`` with its own user, mount, PID, IPC, UTS, network and cgroup
namespaces and no capabilities (:func:`bwrap_argv`). Its limits are cgroups where their
directories are writable (:class:`Cgroups`), else rlimits and a lower CPU priority
(:func:`fallback_limits`). Processes are named by pid and start time, so that pid reuse never
gets a stranger signalled (:func:`process_start_time`, :func:`kill_process`).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

from . import agent as protocol
from .preflight import bwrap_has_option

logger = logging.getLogger(__name__)

GIB = 1 << 30

INSIDE_UID = 1000
INSIDE_HOME = protocol.HOME
INSIDE_AGENT = "/run/joepro/agent.py"
INSIDE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
INSIDE_TOOLCHAIN = "/opt/template"  # a template version's toolchain (.templates)
# Host /etc entries a sandbox sees (read-only). Files that may hold credentials (npmrc, pip.conf,
# gitconfig, environment, ssh/, ssl/private) are left out on purpose.
ETC_ENTRIES = (
    "alternatives",
    "bash.bashrc",
    "bash_completion.d",
    "ca-certificates",
    "ca-certificates.conf",
    "debian_version",
    "gai.conf",
    "host.conf",
    "inputrc",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "locale.alias",
    "localtime",
    "magic",
    "magic.mime",
    "mime.types",
    "nsswitch.conf",
    "os-release",
    "profile",
    "profile.d",
    "protocols",
    "python3",
    "python3.11",
    "resolv.conf",
    "services",
    "shells",
    "skel",
    "ssl/certs",
    "ssl/openssl.cnf",
    "terminfo",
    "timezone",
    "vim",
)
# The host's certificate store (in ssl/certs above), named to the tools that would otherwise trust
# only their own list (pip's certifi, Node.js's): a TLS-intercepting proxy the operator trusts is
# then trusted inside too.
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
CA_BUNDLE_VARIABLES = ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "PIP_CERT", "NODE_EXTRA_CA_CERTS")


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


def wait_for_exit(pid: int, start_time: int, seconds: float) -> bool:
    """Whether the process has ended within ``seconds``."""
    deadline = time.monotonic() + seconds
    while is_alive(pid, start_time):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.005)
    return True


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


def run_launcher(config: dict, *, log_fd: int, timeout: float) -> int | None:
    """Start ``config["argv"]`` detached through the sandboxes' launcher (``agent.py launch``:
    it joins the cgroups, sets the limits, drops privileges, keeps ``config["keep_fds"]``);
    the pid it started, None when it failed (its reason is in the log ``log_fd`` writes to)."""
    launcher = subprocess.Popen(
        [sys.executable, "-I", protocol.__file__, "launch", json.dumps(config)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=log_fd,
        pass_fds=tuple(config["keep_fds"]),
        start_new_session=True,
    )
    output, _ = launcher.communicate(timeout=timeout)
    if launcher.returncode != 0 or not output.strip().isdigit():
        return None
    return int(output.strip())


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


# --- limits without cgroups -------------------------------------------------------------------


def fallback_limits(record: dict, *, limited: set[str], uid: int | None, pids_max: int) -> tuple[dict, int]:
    """The rlimits and niceness of a sandbox's processes: a file size cap and no core dumps
    always, and stand-ins for the cgroup controllers not ``limited`` here (address space for
    memory, a process count when the sandbox has its own uid, a lower priority for CPU)."""
    rlimits = {"RLIMIT_CORE": 0}
    if record["disk_gb"]:
        rlimits["RLIMIT_FSIZE"] = record["disk_gb"] * GIB
    if "memory" not in limited:
        rlimits["RLIMIT_AS"] = record["memory_gb"] * GIB
    if "pids" not in limited and uid is not None:
        rlimits["RLIMIT_NPROC"] = pids_max
    nice = 0 if "cpu" in limited else 10
    return rlimits, nice


# --- what the sandbox sees --------------------------------------------------------------------


def hostname_for(name: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")[:63].strip("-") or "sandbox"


def etc_files(name: str, *, nameserver: str | None = None) -> dict[str, str]:
    """The sandbox's own /etc files (passwd, group, hosts, hostname, and resolv.conf naming
    ``nameserver`` when it has one of its own) by name."""
    hostname = hostname_for(name)
    files = {
        "passwd": "root:x:0:0:root:/root:/usr/sbin/nologin\n"
        f"sandbox:x:{INSIDE_UID}:{INSIDE_UID}:Sandbox:{INSIDE_HOME}:/bin/bash\n"
        "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
        "group": f"root:x:0:\nsandbox:x:{INSIDE_UID}:\nnogroup:x:65534:\n",
        "hosts": f"127.0.0.1\tlocalhost\n127.0.1.1\t{hostname}\n::1\tlocalhost ip6-localhost ip6-loopback\n",
        "hostname": f"{hostname}\n",
    }
    if nameserver:
        files["resolv.conf"] = f"nameserver {nameserver}\n"
    return files


def system_binds() -> list[str]:
    """bwrap's arguments that show this machine's programs read-only: ``/usr``, and ``/bin``,
    ``/lib`` and the like as the symlinks or directories they are here."""
    argv = ["--ro-bind", "/usr", "/usr"]
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        host = Path("/", name)
        if host.is_symlink():
            argv += ["--symlink", os.readlink(host), f"/{name}"]
        elif host.is_dir():
            argv += ["--ro-bind", str(host), f"/{name}"]
    return argv


def bwrap_argv(
    record: dict,
    *,
    directory: Path,
    agent: Path,
    bwrap: str,
    python: str,
    tmp_size: int,
    disk_check_seconds: float,
    listen_fd: int,
    info_fd: int,
    max_sessions: int = protocol.MAX_SESSIONS,
    toolchain: Path | None = None,
    toolchain_path: tuple[str, ...] = (),
    network: bool = False,
) -> list[str]:
    """bwrap's command line for the sandbox of ``record`` (its files in ``directory``), whose
    PID 1 is the agent (``agent``, mounted read-only) serving the socket ``listen_fd``; bwrap
    writes its child's pid and namespaces to ``info_fd``. A sandbox of a template version gets
    its ``toolchain`` read-only at /opt/template, ``toolchain_path`` first on its ``PATH``, and
    ``<directory>/etc/profile`` (which says the same to login shells) as /etc/profile. With
    ``network`` it gets ``<directory>/etc/resolv.conf`` instead of the host's, whose servers it
    cannot reach."""
    bwrap = shutil.which(bwrap)
    trusted = dict.fromkeys(CA_BUNDLE_VARIABLES, CA_BUNDLE) if os.path.exists(CA_BUNDLE) else {}
    env = {
        "HOME": INSIDE_HOME,
        "PATH": ":".join([*toolchain_path, INSIDE_PATH]),
        "USER": "sandbox",
        "LOGNAME": "sandbox",
        "SHELL": "/bin/bash",
        "LANG": "C.UTF-8",
        "TERM": "xterm-256color",
        **trusted,
        **record.get("env", {}),
    }
    argv = [bwrap, "--unshare-all", "--unshare-user"]
    if bwrap_has_option(bwrap, "--disable-userns"):
        argv.append("--disable-userns")  # no nested user namespaces: less kernel surface
    argv += [
        "--as-pid-1",
        "--new-session",
        "--uid",
        str(INSIDE_UID),
        "--gid",
        str(INSIDE_UID),
        "--hostname",
        hostname_for(record["name"]),
        "--cap-drop",
        "ALL",
        "--clearenv",
    ]
    for key, value in env.items():
        argv += ["--setenv", key, value]
    argv += system_binds()
    own_files = ("passwd", "group", "hosts", "hostname") + (("resolv.conf",) if network else ())
    for entry in ETC_ENTRIES:
        if entry not in own_files and os.path.exists(f"/etc/{entry}"):
            argv += ["--ro-bind", f"/etc/{entry}", f"/etc/{entry}"]
    for name in own_files:
        argv += ["--ro-bind", str(directory / "etc" / name), f"/etc/{name}"]
    if toolchain is not None:
        argv += ["--ro-bind", str(directory / "etc" / "profile"), "/etc/profile"]
        argv += ["--ro-bind", str(toolchain), INSIDE_TOOLCHAIN]
    argv += [
        "--symlink",
        "../proc/self/mounts",
        "/etc/mtab",
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "--perms",
        "1777",
        "--size",
        str(tmp_size),
        "--tmpfs",
        "/dev/shm",
        "--perms",
        "1777",
        "--size",
        str(tmp_size),
        "--tmpfs",
        "/tmp",
        "--dir",
        "/var",
        "--symlink",
        "../tmp",
        "/var/tmp",
        "--bind",
        str(directory / "home"),
        INSIDE_HOME,
        "--ro-bind",
        str(agent),
        INSIDE_AGENT,
        "--remount-ro",
        "/",
        "--chdir",
        INSIDE_HOME,
        "--info-fd",
        str(info_fd),
        "--",
        python,
        "-I",
        "-S",
        INSIDE_AGENT,
        "serve",
        "--listen-fd",
        str(listen_fd),
        "--auto-stop",
        str(max(0, record.get("auto_stop_minutes") or 0) * 60),
        "--disk-quota",
        str(record["disk_gb"] * GIB),
        "--disk-check",
        str(disk_check_seconds),
        "--max-sessions",
        str(max_sessions),
    ]
    return argv
