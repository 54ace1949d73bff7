"""Whether sandboxes can run on this machine: bubblewrap, Python for the agent, the root's place,
slirp4netns for their network.

:func:`local_problems` lists what keeps them from running, each with a fix; the provider refuses
to start a sandbox while there is any (nothing is ever run unisolated instead), and the portal's
system checks report them. bwrap is probed at most once per process and arguments.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from pathlib import Path

from ..base import Problem
from . import disk

# Problem codes: bwrap_missing, bwrap_fails, python_missing, root_visible,
# disk_images_unavailable, slirp4netns_missing, network_unavailable


_option_cache: dict[tuple[str, str], bool] = {}


def bwrap_has_option(bwrap: str, option: str) -> bool:
    """Whether this bwrap knows ``option`` (its ``--help`` names it); asked once per process."""
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


def local_problems(*, bwrap: str, root: Path, python: str, own_uids: bool, network: bool = False) -> list[Problem]:
    """Everything that keeps the local provider from running sandboxes here, with their
    outbound ``network`` when asked (``SANDBOX_LOCAL_NETWORK``). Nothing is ever run unisolated
    instead: a start fails with the first problem."""
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
    # The parents of the root need not be traversable by the sandboxes' uids (var/ is 0700):
    # the launcher reveals the root to bwrap in a mount namespace of its own (agent.reveal_root).
    if own_uids and (why := disk.unavailable()):
        problems.append(
            Problem(
                "disk_images_unavailable",
                f"Disk quotas cannot be enforced: each sandbox's workspace is a loop-mounted disk image, but {why}.",
                "Give the portal loop devices (modprobe loop; in a container, --device /dev/loop-control and "
                "/dev/loop* or --privileged) and e2fsprogs (apt-get install e2fsprogs).",
            )
        )
    if network:
        problems += _network_problems()
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


def _network_problems() -> list[Problem]:
    """What the sandboxes' outbound network needs (see :mod:`.network`): slirp4netns, nsenter and
    ip to set it up, /dev/net/tun for its interface. Sandboxes without it would start without
    any network, which is not what the setting asks for: so they do not start."""
    off = "or turn the sandboxes' network off: SANDBOX_LOCAL_NETWORK=false."
    if shutil.which("slirp4netns") is None:
        return [
            Problem(
                "slirp4netns_missing",
                "Sandboxes get their outbound network from slirp4netns (SANDBOX_LOCAL_NETWORK is on), which "
                "was not found.",
                f"Install it (Debian/Ubuntu: apt-get install slirp4netns; Fedora: dnf install slirp4netns) {off}",
            )
        ]
    missing = [name for name in ("nsenter", "ip") if shutil.which(name) is None]
    if not os.path.exists("/dev/net/tun"):
        missing.append("/dev/net/tun")
    if missing:
        return [
            Problem(
                "network_unavailable",
                f"The sandboxes' outbound network (SANDBOX_LOCAL_NETWORK is on) needs {', '.join(missing)}, "
                "which this machine lacks.",
                "Install util-linux (nsenter) and iproute2 (ip); in a container, give it /dev/net/tun "
                f"(docker run --device /dev/net/tun); {off}",
            )
        ]
    return []
