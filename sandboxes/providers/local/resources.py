"""What a running local sandbox uses of its memory and disk, read from the host.

Memory is the usage its memory cgroup charges (v2 ``memory.current`` against ``memory.max``,
v1 ``memory.usage_in_bytes`` against ``memory.limit_in_bytes``, page cache included as the
limit counts it). Where this machine gives sandboxes no memory cgroup, the limit is the
sandbox's ``memory_gb`` (enforced per process as an address-space rlimit) and the use is the
sum of its processes' proportional set sizes (PSS, shared pages split between their users;
the resident size where PSS cannot be read).

Disk is the home's filesystem as the quota sees it: with the workspace image mounted (as root),
the image's own used and total blocks; otherwise the home's allocated bytes, the measurement the
start's quota check makes (:func:`.isolation.disk_usage`), against ``disk_gb``.

Nothing here talks to the agent or writes the record, so measuring is never activity.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..base import ResourceUsage
from . import disk
from .isolation import GIB, disk_usage, namespace_members

# cgroup v1 writes "no limit" as the largest page-aligned signed 64-bit number.
_V1_UNLIMITED = 1 << 62


def measure(record: dict, directory: Path) -> ResourceUsage:
    """The use of the running sandbox of ``record`` (its directory in the store). Raises
    OSError when what it reads vanished (the sandbox stopped meanwhile)."""
    process = record.get("process") or {}
    memory_given = int(record.get("memory_gb") or 0) * GIB
    charged = cgroup_memory(process.get("cgroups") or [])
    if charged is not None:
        memory, limit = charged
        memory_limit = min(limit, memory_given) if limit and memory_given else (limit or memory_given)
    else:
        memory = processes_memory(process.get("pid_namespace"))
        memory_limit = memory_given
    home = directory / "home"
    if disk.is_mounted(home):
        info = os.statvfs(home)
        disk_used = (info.f_blocks - info.f_bfree) * info.f_frsize
        disk_limit = info.f_blocks * info.f_frsize
    else:
        disk_used = disk_usage(home)
        disk_limit = int(record.get("disk_gb") or 0) * GIB
        if not disk_limit:
            info = os.statvfs(home)
            disk_limit = info.f_blocks * info.f_frsize
    return ResourceUsage(
        memory_bytes=memory, memory_limit_bytes=memory_limit, disk_bytes=disk_used, disk_limit_bytes=disk_limit
    )


def cgroup_memory(directories: list[str]) -> tuple[int, int | None] | None:
    """(usage, limit or None when unlimited) of the sandbox's memory cgroup among its cgroup
    directories; None when it has none."""
    for directory in map(Path, directories):
        if (directory / "memory.current").exists():
            limit = (directory / "memory.max").read_text().strip()
            return int((directory / "memory.current").read_text()), None if limit == "max" else int(limit)
        if (directory / "memory.usage_in_bytes").exists():
            limit = int((directory / "memory.limit_in_bytes").read_text())
            usage = int((directory / "memory.usage_in_bytes").read_text())
            return usage, None if limit >= _V1_UNLIMITED else limit
    return None


def processes_memory(pid_namespace: int | None) -> int:
    """The summed PSS (else RSS) of every process in the sandbox's PID namespace."""
    if not pid_namespace:
        return 0
    page = os.sysconf("SC_PAGE_SIZE")
    total = 0
    for pid in namespace_members(pid_namespace):
        try:
            total += _pss(pid)
        except (OSError, ValueError):
            try:
                total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * page
            except (OSError, ValueError, IndexError):
                continue  # it exited meanwhile
    return total


def _pss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) * 1024
    raise ValueError("no Pss line")
