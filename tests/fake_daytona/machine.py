"""What a command sent to ``POST /process/execute`` finds inside a fake sandbox.

The daemon runs the command with the sandbox's shell (the command on its stdin) in a process
group of its own, stdout and stderr mixed, and kills the group at the request's timeout. Here
the shell is this machine's ``sh``; with bubblewrap available it runs in a view of this
machine where two things are the sandbox's own, so tests can set what a measurement sees:

- ``/sys/fs/cgroup`` holds the sandbox's memory cgroup, as at the root of a container's cgroup
  namespace (v2): ``memory.current`` and ``memory.max``;
- the home, ``/home/daytona``, is a filesystem (a tmpfs) the size of the sandbox's disk,
  holding its disk figure in a file of its own (``.fake-daytona-used``). It is the sandbox's
  own: what one command writes there the next one finds, as in a container (where this
  machine cannot mount one, each command gets a scratch tmpfs instead).

The figures are set with :meth:`Machines.set_resources` (or ``POST /__resources``); a
sandbox nobody set uses 256 MiB of its memory and nothing of its disk. The home is not the PTY
shells' home (:mod:`.pty_sessions`): files written in a terminal are not seen by a command.
Without bubblewrap the command runs in the PTY shells' home with this machine's figures.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import tempfile
import threading
from dataclasses import dataclass, replace

GIB = 1 << 30
DEFAULT_MEMORY_BYTES = 256 << 20
SANDBOX_HOME = "/home/daytona"
FILLER = ".fake-daytona-used"
DEFAULT_TIMEOUT_SECONDS = 360  # the daemon's, when the request names none


@dataclass(frozen=True)
class Resources:
    """A sandbox's figures in bytes; a limit of None is the sandbox's ``memory``/``disk`` GiB."""

    memory_bytes: int = DEFAULT_MEMORY_BYTES
    memory_limit_bytes: int | None = None
    disk_bytes: int = 0
    disk_limit_bytes: int | None = None


class CommandTimeout(Exception):
    """The command outlived the request's timeout and was killed."""


class Machines:
    """Per-sandbox figures and the commands run against them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._resources: dict[str, Resources] = {}
        self._root: str | None = None
        self._homes: dict[str, int] = {}  # sandbox id: size of its mounted home
        self.bwrap = shutil.which("bwrap")

    def set_resources(self, sandbox_id: str, **figures: int | None) -> Resources:
        """Set some of a sandbox's figures (``memory_bytes``, ``memory_limit_bytes``,
        ``disk_bytes``, ``disk_limit_bytes``); the others stay. Raises TypeError for another
        name, ValueError for a negative figure or a disk figure above its limit."""
        if any(value is not None and (not isinstance(value, int) or value < 0) for value in figures.values()):
            raise ValueError("figures are non-negative integers (bytes)")
        with self._lock:
            resources = replace(self._resources.get(sandbox_id, Resources()), **figures)
            if resources.disk_limit_bytes is not None and resources.disk_bytes > resources.disk_limit_bytes:
                raise ValueError("disk_bytes is above disk_limit_bytes")
            self._resources[sandbox_id] = resources
            return resources

    def resources(self, sandbox_id: str, *, memory_gb: int, disk_gb: int) -> Resources:
        """The sandbox's figures, limits filled in from its resources in GiB."""
        with self._lock:
            resources = self._resources.get(sandbox_id, Resources())
        return replace(
            resources,
            memory_limit_bytes=resources.memory_limit_bytes or memory_gb * GIB,
            disk_limit_bytes=resources.disk_limit_bytes or disk_gb * GIB,
        )

    def reset(self) -> None:
        with self._lock:
            self._resources.clear()
            root, self._root = self._root, None
            homes, self._homes = list(self._homes), {}
        for sandbox_id in homes:
            subprocess.run(["umount", "-l", os.path.join(root or "", "homes", sandbox_id)], capture_output=True)
        if root is not None:
            shutil.rmtree(root, ignore_errors=True)

    async def execute(
        self,
        sandbox_id: str,
        command: str,
        *,
        resources: Resources,
        home: str,
        cwd: str | None,
        envs: dict[str, str],
        timeout: int | None,
    ) -> tuple[int, str]:
        """Run ``command``; its exit status (-1 when it could not start) and its output.
        Raises :class:`CommandTimeout` when it ran past ``timeout`` seconds."""
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "USER": "daytona", "LANG": "C.UTF-8", **envs}
        if self.bwrap:
            env["HOME"] = SANDBOX_HOME
            argv = self._isolated(sandbox_id, resources, cwd or SANDBOX_HOME)
            workdir = "/"
        else:
            env["HOME"] = home
            argv = ["sh"]
            workdir = home if not cwd or cwd == SANDBOX_HOME else cwd
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                cwd=workdir,
                env=env,
                start_new_session=True,
            )
        except OSError as error:
            return -1, str(error)
        try:
            output, _ = await asyncio.wait_for(
                process.communicate(command.encode()), timeout or DEFAULT_TIMEOUT_SECONDS
            )
        except TimeoutError:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            await process.wait()
            raise CommandTimeout from None
        return process.returncode if process.returncode is not None else -1, output.decode(errors="replace")

    def _isolated(self, sandbox_id: str, resources: Resources, cwd: str) -> list[str]:
        cgroup = self._cgroup_directory(sandbox_id, resources)
        fill = f"rm -f {SANDBOX_HOME}/{FILLER}; "
        if resources.disk_bytes:
            fill += f"fallocate -l {resources.disk_bytes} {SANDBOX_HOME}/{FILLER} && "
        home = self._home_directory(sandbox_id, resources.disk_limit_bytes)
        if home is not None:
            mount = ["--bind", home, SANDBOX_HOME]
        else:
            mount = ["--size", str(resources.disk_limit_bytes), "--tmpfs", SANDBOX_HOME]
        return [
            self.bwrap,
            "--dev-bind", "/", "/",
            "--ro-bind", cgroup, "/sys/fs/cgroup",
            *mount,
            "--die-with-parent",
            "sh", "-c", f'{fill}cd "$0" && exec sh', cwd,
        ]  # fmt: skip

    def _home_directory(self, sandbox_id: str, size: int) -> str | None:
        """The sandbox's own home: a tmpfs of ``size`` bytes mounted on this machine on first use
        (resized when the disk figure changes); None where mounting is not allowed."""
        with self._lock:
            if self._root is None:
                self._root = tempfile.mkdtemp(prefix="fake-daytona-machines-")
            directory = os.path.join(self._root, "homes", sandbox_id)
            mounted = self._homes.get(sandbox_id)
            if mounted == size:
                return directory
            os.makedirs(directory, exist_ok=True)
            options = f"size={size}" if mounted is None else f"remount,size={size}"
            done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", directory], capture_output=True)
            if done.returncode != 0:
                return None
            os.chmod(directory, 0o755)
            self._homes[sandbox_id] = size
            return directory

    def _cgroup_directory(self, sandbox_id: str, resources: Resources) -> str:
        with self._lock:
            if self._root is None:
                self._root = tempfile.mkdtemp(prefix="fake-daytona-machines-")
            directory = os.path.join(self._root, sandbox_id)
        os.makedirs(directory, exist_ok=True)
        for name, value in (("memory.current", resources.memory_bytes), ("memory.max", resources.memory_limit_bytes)):
            with open(os.path.join(directory, name), "w") as file:
                file.write(f"{value}\n")
        return directory
