"""Sandboxes on this machine: a persistent home per sandbox, its processes isolated by bubblewrap.

Each sandbox is a directory under the root (``SANDBOX_LOCAL_ROOT``), which no sandbox can see::

    .lock                 held while a sandbox is created (the name index, uid slots)
    .system/agent.py      the agent (agent.py of this package), bind-mounted read-only into every sandbox
    names/<name>          the id of the sandbox of that name
    tokens/<sha256>       {"id", "expires_at"}: the sandbox an SSH token opens (the token itself is not kept)
    trash/                sandboxes being deleted
    templates/<name>/     a prepared template version: toolchain/ (/opt/template inside, read-only),
                          starter/ (copied into new homes), prepared.json (see :mod:`.templates`)
    <id>/state.json       the record: name, labels, resources, state, times, processes, token hash
    <id>/lock             held (flock) during every change of the sandbox
    <id>/log              what bwrap and the agent write to stderr
    <id>/network.log      what slirp4netns wrote at the sandbox's last start (network on)
    <id>/etc/             passwd, group, hosts, hostname (and resolv.conf, network on) as seen inside
    <id>/run/agent.sock   the agent's socket: created here and handed to the agent as a descriptor
    <id>/home/            the workspace, /home/sandbox inside; kept across stop and start
    <id>/home.img         as root: the workspace's ext4 image (the quota's size), mounted at home/ while it runs

state.json is replaced atomically and changed only under the sandbox's lock, so web workers,
Celery workers and the SSH gateway, in any number of processes, share one root.

A running sandbox is ``bwrap`` with its own user, mount, PID, IPC, UTS, network and cgroup
namespaces and no capabilities: ``/usr`` and a short list of ``/etc`` files read-only, the home
read-write, a private ``/tmp``, ``/proc`` and ``/dev``. Nothing else of the host is mounted: not
the portal's code, ``var/``, ``.env``, nor other sandboxes. When the portal runs as root, each
sandbox also runs as its own unprivileged host uid (``SANDBOX_LOCAL_UID_BASE`` + a slot), so
even a process that escaped its namespaces could not read another sandbox's files. Its PID 1 is
the agent; stopping the sandbox ends the agent, and the kernel then kills every process of the
namespace. The network namespace is its own too, which is what lets every sandbox serve its own
port 3000: a loopback and, with ``SANDBOX_LOCAL_NETWORK`` on, slirp4netns's ``tap0`` for
outbound connections, with the host and private ranges unreachable (:mod:`.network`).

Limits: the disk quota is the size of the workspace's image (:mod:`.disk`; as root), and
per-sandbox cgroups (v1, or v2 with the controllers enabled) where their directories
are writable: memory, CPU quota and a process count. Otherwise rlimits: address space for
memory, process count when the sandbox has its own uid, a lower CPU priority. Without root the disk quota
is a size check of the home at start (refused above quota), warnings inside when the agent
finds it exceeded, and RLIMIT_FSIZE per file. :meth:`LocalProvider.limits_in_force` says which.

Modules, each importing only those listed before it:

``agent``         the agent and its launcher: one standard-library-only file, run inside sandboxes
``disk``          the workspace's ext4 image: made, migrated into, loop-mounted and unmounted
``preflight``     whether sandboxes can run here (:func:`local_problems`, bwrap probes)
``isolation``     bwrap's arguments, cgroups, rlimits, processes by pid and start time
``network``       outbound network through slirp4netns: blocked ranges, routes, start and stop
``agent_client``  requests to an agent over its socket; terminals, programs on pipes, relays, commands
``store``         records, the name and token indexes, locks, workspaces
``templates``     template versions: prepared in a build container, mounted into their sandboxes
``lifecycle``     start and stop: the record's states and the processes behind them
``resources``     what a running sandbox uses of its memory and disk, read from the host
``provider``      :class:`LocalProvider`, the portal's contract
"""

from ..base import PortClosed
from .agent_client import AgentError, CommandResult, LocalProcess, LocalTerminal
from .isolation import (
    GIB,
    Cgroups,
    disk_usage,
    is_alive,
    kill_process,
    namespace_members,
    process_start_time,
)
from .preflight import Problem, bwrap_failure, local_problems
from .provider import LocalProvider
from .store import SANDBOX_ID, SANDBOX_NAME

__all__ = [
    "GIB",
    "SANDBOX_ID",
    "SANDBOX_NAME",
    "AgentError",
    "Cgroups",
    "CommandResult",
    "LocalProcess",
    "LocalProvider",
    "LocalTerminal",
    "PortClosed",
    "Problem",
    "bwrap_failure",
    "disk_usage",
    "is_alive",
    "kill_process",
    "local_problems",
    "namespace_members",
    "process_start_time",
]
