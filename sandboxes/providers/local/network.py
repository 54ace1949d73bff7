"""A local sandbox's outbound network: slirp4netns, a user-mode TCP/IP stack, in front of the
sandbox's own network namespace.

bwrap gives every sandbox an empty network namespace (loopback only). With the network on
(``SANDBOX_LOCAL_NETWORK``), :func:`start` gives it a ``tap0`` interface whose other end is a
slirp4netns process on the host: the sandbox's TCP and UDP connections become connections that
process makes from the host, and its DNS queries go to 10.0.2.3, which slirp4netns forwards to
the host's resolver. No IPv6.

What the sandbox must not reach is blocked inside its namespace, before the interface exists:
routes make private, shared, link-local and reserved ranges and every address of the host
unreachable (a connection slirp4netns made to one of them would reach the host's services, or
its neighbours'), and rules let nothing but DNS (port 53 of 10.0.2.3) reach slirp4netns's own
subnet, where 10.0.2.2 would be the host's loopback (``--disable-host-loopback`` refuses it too).
The sandbox's processes have no capabilities, so they can change neither routes nor rules.

slirp4netns parses what the sandbox sends, so it runs with as little as it needs: as the
sandbox's own host uid (the portal's when that is not root), root only inside the sandbox's user
namespace, in a mount namespace of its own (``--enable-sandbox``) and under its seccomp filter.
It exits by itself once the sandbox's agent is reaped (its exit descriptor is a pidfd of the
agent); :func:`stop` kills it in any case, by the pid and start time kept in the record.
"""

from __future__ import annotations

import fcntl
import ipaddress
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path

from ..base import ProviderError
from .isolation import is_alive, kill_process, process_start_time, run_launcher, wait_for_exit

SUBNET = ipaddress.ip_network("10.0.2.0/24")  # slirp4netns's: the sandbox is .100, the gateway .2
DNS = "10.0.2.3"
BLOCKED = (
    "0.0.0.0/8",  # "this network"
    "10.0.0.0/8",  # private (and the DNS servers of many hosts); slirp4netns's /24 is more specific
    "100.64.0.0/10",  # carrier-grade NAT
    "169.254.0.0/16",  # link-local: cloud metadata services (169.254.169.254)
    "172.16.0.0/12",  # private
    "192.168.0.0/16",  # private
    "198.18.0.0/15",  # benchmarking
    "224.0.0.0/4",  # multicast
    "240.0.0.0/4",  # reserved, and the limited broadcast address
)
# Inside the sandbox, before slirp4netns's own routes: DNS to 10.0.2.3 passes, anything else to
# its subnet is refused (EACCES) whatever slirp4netns would make of it.
RULES = (
    f"rule add pref 100 to {DNS}/32 ipproto udp dport 53 lookup main",
    f"rule add pref 101 to {DNS}/32 ipproto tcp dport 53 lookup main",
    f"rule add pref 102 to {SUBNET} ipproto tcp prohibit",
    f"rule add pref 103 to {SUBNET} ipproto udp prohibit",
)
NS_GET_USERNS = 0xB701  # ioctl (linux/nsfs.h): the user namespace that owns a namespace
TIMEOUT = 10.0


def start(
    agent_pid: int,
    agent_start: int,
    *,
    uid: int | None,
    cgroup_procs: list[str],
    nice: int,
    log_path: Path,
    deadline: float,
) -> dict:
    """Connect the sandbox whose agent (PID 1) is ``agent_pid`` to the outside: block what it
    must not reach, start slirp4netns (as ``uid``, in the sandbox's cgroups and niceness) and
    return once the sandbox's interface is configured, with ``network_pid`` and
    ``network_start`` for the record. Raises ProviderError, with nothing left running, when the
    network cannot be set up (slirp4netns's output is in ``log_path``)."""
    slirp = shutil.which("slirp4netns")
    nsenter = shutil.which("nsenter")
    if slirp is None or nsenter is None:
        raise ProviderError("The sandbox's network could not be set up: slirp4netns or nsenter is missing.")
    netns = os.open(f"/proc/{agent_pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    descriptors = [netns]
    try:
        userns = fcntl.ioctl(netns, NS_GET_USERNS)
        descriptors.append(userns)
        pidfd = os.pidfd_open(agent_pid)
        descriptors.append(pidfd)
        _wait_mapped(agent_pid, agent_start, deadline)
        _block(nsenter, netns=netns, userns=userns, uid=uid)
        ready_read, ready_write = os.pipe()
        descriptors += [ready_read, ready_write]
        # bwrap maps the uid it runs as to root in the sandbox's outer user namespace (the owner
        # of its network namespace): joined there, slirp4netns can configure the interface and
        # sandbox itself, with no privilege on the host.
        argv = [nsenter, f"--user=/proc/self/fd/{userns}", "--preserve-credentials", "--", slirp]
        argv += ["--configure", "--mtu=65520", "--disable-host-loopback", "--enable-sandbox", "--enable-seccomp"]
        argv += [f"--ready-fd={ready_write}", f"--exit-fd={pidfd}", "--netns-type=path", f"/proc/self/fd/{netns}"]
        argv.append("tap0")
        config = {
            "argv": argv,
            "cgroup_procs": cgroup_procs,
            "nice": nice,
            "uid": uid,
            "gid": uid,
            "keep_fds": [netns, userns, pidfd, ready_write],
        }
        pid = _launch(config, log_path)
        started = process_start_time(pid)
        descriptors.remove(ready_write)
        os.close(ready_write)  # so that a slirp4netns that exits is seen at once
        ready = False
        try:
            ready = started is not None and _wait_ready(ready_read, deadline)
        finally:
            if not ready and started is not None:
                kill_process(pid, started)
        if not ready:
            raise ProviderError(f"The sandbox's network could not be set up: slirp4netns {_last_line(log_path)}.")
    except OSError as exc:
        raise ProviderError(f"The sandbox's network could not be set up: {exc}") from exc
    finally:
        for fd in descriptors:
            os.close(fd)
    return {"network_pid": pid, "network_start": started}


def stop(process: dict) -> None:
    """Kill the sandbox's slirp4netns if it still runs (it is named by pid and start time, so a
    process that reused the pid is left alone); safe when there is none."""
    pid, started = process.get("network_pid"), process.get("network_start")
    if is_alive(pid, started):
        kill_process(pid, started)
        wait_for_exit(pid, started, 1.0)


def host_addresses() -> set[str]:
    """The host's own IPv4 addresses (its local routing table) and the networks it is directly
    on (the LAN beside it, whatever its range), outside loopback and slirp4netns's subnet:
    slirp4netns would connect to them from the host itself."""
    addresses = set()
    for table in (["table", "local", "type", "local"], ["table", "main", "scope", "link"]):
        output = subprocess.run(
            ["ip", "-json", "-4", "route", "show", *table], capture_output=True, text=True, timeout=TIMEOUT, check=True
        ).stdout
        for route in json.loads(output or "[]"):
            if route.get("dst") in (None, "default"):
                continue
            network = ipaddress.ip_network(route["dst"], strict=False)
            if not network.is_loopback and not network.overlaps(SUBNET):
                addresses.add(str(network))
    return addresses


def _wait_mapped(agent_pid: int, agent_start: int, deadline: float) -> None:
    """Wait until bwrap has mapped the ids of the sandbox's outer user namespace, which it does
    after naming the agent's pid: the agent's uid_map and gid_map (of that namespace, or of the
    inner one bwrap makes once it is mapped) are empty until then."""
    maps = (Path(f"/proc/{agent_pid}/uid_map"), Path(f"/proc/{agent_pid}/gid_map"))
    while not all(path.read_text().strip() for path in maps):
        if process_start_time(agent_pid) != agent_start or time.monotonic() > deadline:
            raise ProviderError("The sandbox's network could not be set up: its agent did not start.")
        time.sleep(0.002)
    if process_start_time(agent_pid) != agent_start:
        raise ProviderError("The sandbox's network could not be set up: its agent has exited.")


def _block(nsenter: str, *, netns: int, userns: int, uid: int | None) -> None:
    """Add the unreachable routes and the rules in the sandbox's network namespace, as ``uid``
    (root in the namespace's owner, as slirp4netns is); raises when any of them fails."""
    commands = [f"route add unreachable {prefix}" for prefix in sorted(set(BLOCKED) | host_addresses())]
    commands += RULES
    argv = [nsenter, f"--user=/proc/self/fd/{userns}", f"--net=/proc/self/fd/{netns}", "--preserve-credentials"]
    as_uid = {"user": uid, "group": uid, "extra_groups": []} if uid is not None else {}
    result = subprocess.run(
        [*argv, "ip", "-batch", "-"],
        input="\n".join(commands) + "\n",
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        pass_fds=(netns, userns),
        **as_uid,
    )
    if result.returncode != 0:
        detail = " ".join(result.stderr.split()) or f"exit status {result.returncode}"
        raise ProviderError(f"The sandbox's network could not be set up: its routes: {detail[:300]}")


def _launch(config: dict, log_path: Path) -> int:
    """Run slirp4netns detached through the sandboxes' launcher (:func:`.agent.launch`), which
    joins the cgroups and drops privileges first; its pid."""
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        pid = run_launcher(config, log_fd=log, timeout=TIMEOUT)
    finally:
        os.close(log)
    if pid is None:
        raise ProviderError(f"The sandbox's network could not be set up: its launcher {_last_line(log_path)}.")
    return pid


def _wait_ready(fd: int, deadline: float) -> bool:
    """Whether slirp4netns wrote to its ready descriptor (the interface is up) by ``deadline``;
    False when it exited first."""
    while (remaining := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            return os.read(fd, 1) == b"1"
    return False


def _last_line(log_path: Path) -> str:
    try:
        lines = log_path.read_bytes()[-2000:].decode(errors="replace").splitlines()
    except OSError:
        lines = []
    detail = next((line.strip() for line in reversed(lines) if line.strip()), "")
    return f"failed ({detail[:300]})" if detail else "did not start"
