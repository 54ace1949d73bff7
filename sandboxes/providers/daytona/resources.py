"""Measuring a Daytona sandbox's memory and disk from inside it: one short shell command run
through the toolbox (``POST /process/execute``), and what its output means.

The command reads the memory cgroup the sandbox's processes are charged to (cgroup v2
``memory.current``/``memory.max`` at the namespace's root, else at the path
``/proc/self/cgroup`` names; v1 ``memory.usage_in_bytes``/``memory.limit_in_bytes``) and the
home filesystem's blocks (``df -P -B1``, which GNU coreutils and BusyBox both print). It holds
no single quote: daemons before the shell-on-stdin one split the command on spaces outside
quotes and run ``sh -c '<script>'`` as three arguments, newer ones hand the line to a shell.
"""

from __future__ import annotations

import shlex

from ..base import ResourceUsage

GIB = 1 << 30
MEASURE_SECONDS = 5  # the daemon's own timeout for the command (it answers 408 past it)
# cgroup v1 says "no limit" with a number near 2**63; anything this large is no limit.
UNLIMITED = 1 << 60

SCRIPT = """
c=/sys/fs/cgroup
p=$(sed -n "s/^0:://p" /proc/self/cgroup 2>/dev/null)
for d in "$c" "$c$p" "$c/memory"; do
  if [ -r "$d/memory.current" ]; then
    echo "memory: $(cat "$d/memory.current") $(cat "$d/memory.max")"; break
  elif [ -r "$d/memory.usage_in_bytes" ]; then
    echo "memory: $(cat "$d/memory.usage_in_bytes") $(cat "$d/memory.limit_in_bytes")"; break
  fi
done
echo "disk: $( (df -P -B1 ~ 2>/dev/null || df -P -B1 /) | tail -n 1)"
"""
assert "'" not in SCRIPT
COMMAND = f"sh -c {shlex.quote(SCRIPT)}"


def parse_usage(output: str, *, memory_gb: int | None, disk_gb: int | None) -> ResourceUsage:
    """The figures in the command's output (stdout and stderr mixed, as the daemon returns
    them). A limit the sandbox does not see (``max``, or v1's huge number) is the size it was
    given (``memory_gb``, ``disk_gb``); where both are known the smaller counts, since that
    is the one that fills first. Raises ValueError when a figure is missing."""
    memory = disk = None
    for line in output.splitlines():
        label, _, rest = line.strip().partition(": ")
        if label == "memory" and memory is None:
            memory = _memory(rest.split())
        elif label == "disk" and disk is None:
            disk = _disk(rest.split())
    if memory is None or disk is None:
        raise ValueError("the measurement printed no " + ("memory" if memory is None else "disk") + " figures")
    (memory_used, memory_limit), (disk_used, disk_limit) = memory, disk
    return ResourceUsage(
        memory_bytes=memory_used,
        memory_limit_bytes=_smaller(memory_limit, (memory_gb or 0) * GIB),
        disk_bytes=disk_used,
        disk_limit_bytes=_smaller(disk_limit, (disk_gb or 0) * GIB),
    )


def _memory(fields: list[str]) -> tuple[int, int | None] | None:
    if len(fields) != 2 or not fields[0].isdigit():
        return None
    limit = int(fields[1]) if fields[1].isdigit() else None  # "max": no limit of its own
    return int(fields[0]), limit if limit is not None and limit < UNLIMITED else None


def _disk(fields: list[str]) -> tuple[int, int] | None:
    """``<filesystem> <total> <used> <available> <capacity>% <mount point>``, read from the
    capacity column (a filesystem or mount point name may hold spaces)."""
    at = next((i for i, field in enumerate(fields) if field.endswith("%") and field[:-1].isdigit()), None)
    if at is None or at < 3 or not (fields[at - 3].isdigit() and fields[at - 2].isdigit()):
        return None
    return int(fields[at - 2]), int(fields[at - 3])


def _smaller(seen: int | None, given: int) -> int:
    if seen and given:
        return min(seen, given)
    return seen or given
