"""A sandbox's workspace as a disk image: a sparse ext4 file as large as its quota, loop-mounted
at the workspace (``<id>/home``) for each run, so writes past the quota fail with ENOSPC.

The image (``<id>/home.img``) is made at the first start, or at the first start of a workspace
from before images (its files are copied in; the old directory is removed once they are). The
portal mounts it (``mount -o loop,nosuid,nodev``) before bwrap starts and unmounts it once every
process of the sandbox has ended: at stop and in every repair path (a crashed start or stop, a
sandbox found dead, delete). Mounting needs root and loop devices; :func:`unavailable` says
why they are missing. Every function here runs under the sandbox's lock.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

from .store import remove_tree

IMAGE_NAME = "home.img"
MOUNT_OPTIONS = "loop,nosuid,nodev,noatime"
_TIMEOUT = 120


class DiskError(Exception):
    """The image could not be made, mounted or unmounted (the message says why)."""


def image_path(directory: Path) -> Path:
    return directory / IMAGE_NAME


def unavailable() -> str | None:
    """Why workspaces cannot be loop-mounted images here (not root, no loop devices, no
    mkfs.ext4 or mount), None when they can."""
    if os.geteuid() != 0:
        return "the portal does not run as root, and only root can mount disk images"
    if not os.path.exists("/dev/loop-control") and not any(Path("/dev").glob("loop[0-9]*")):
        return "this machine has no loop devices (/dev/loop-control)"
    for tool in ("mkfs.ext4", "mount", "umount"):
        if not os.path.exists(_tool(tool)):
            return f"{tool} was not found"
    return None


def _tool(name: str) -> str:
    return shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/sbin/{name}", f"/usr/bin/{name}") if os.path.exists(p)), name
    )


def _run(argv: list[str]) -> None:
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=_TIMEOUT)
    except (OSError, subprocess.SubprocessError) as exc:
        raise DiskError(f"{argv[0]} failed: {exc}") from exc
    if result.returncode != 0:
        raise DiskError(f"{Path(argv[0]).name} failed: {(result.stderr or result.stdout).strip()[:300]}")


def is_mounted(path: Path) -> bool:
    return os.path.ismount(path)


def make_image(image: Path, size: int, uid: int | None) -> None:
    """A sparse ext4 image of ``size`` bytes whose root directory ``uid`` owns."""
    try:
        fd = os.open(image, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.ftruncate(fd, size)
        finally:
            os.close(fd)
        owner = uid if uid is not None else os.geteuid()
        _run(
            [
                _tool("mkfs.ext4"),
                "-q",
                "-F",
                "-m",
                "0",
                "-L",
                "sandbox-home",
                "-E",
                f"root_owner={owner}:{owner},nodiscard",
                str(image),
            ]
        )
    except BaseException:
        try:
            image.unlink()
        except FileNotFoundError:
            pass
        raise


def mount(image: Path, mountpoint: Path) -> None:
    mountpoint.mkdir(mode=0o700, exist_ok=True)
    _run([_tool("mount"), "-t", "ext4", "-o", MOUNT_OPTIONS, str(image), str(mountpoint)])


def unmount(mountpoint: Path, *, wait: float = 5.0) -> None:
    """Unmount ``mountpoint`` if something is mounted there; when it stays busy past ``wait``
    seconds it is detached lazily (freed once the last user goes)."""
    deadline = time.monotonic() + wait
    while is_mounted(mountpoint):
        try:
            _run([_tool("umount"), str(mountpoint)])
            return
        except DiskError:
            if time.monotonic() >= deadline:
                _run([_tool("umount"), "-l", str(mountpoint)])
                return
            time.sleep(0.05)


def mount_workspace(directory: Path, size: int, uid: int | None) -> None:
    """Mount the sandbox's image at ``<directory>/home``, making it first (from the files of an
    old plain-directory workspace, if there is one). The image's root is ``uid``'s, 0700."""
    home = directory / "home"
    image = image_path(directory)
    unmount(home)  # left over by a portal that died while the sandbox ran
    old = directory / ".home-old"
    if old.exists() and not image.exists() and not home.exists():
        os.rename(old, home)  # a migration cut short before its image was in place
    if not image.exists():
        # Made, filled and checked under a temporary name: a start cut short anywhere here
        # leaves the old workspace as it was, and the next start begins again.
        temporary = directory / f".{IMAGE_NAME}.tmp"
        staging = directory / ".home-new"
        unmount(staging)
        make_image(temporary, size, uid)
        try:
            mount(temporary, staging)
            try:
                try:
                    (staging / "lost+found").rmdir()
                except OSError:
                    pass
                if home.is_dir():
                    _run(["cp", "-a", "--", f"{home}/.", f"{staging}/"])
            finally:
                unmount(staging)
            staging.rmdir()
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        if home.is_dir():
            os.rename(home, old)  # the copy is complete: the old directory goes (below)
        os.replace(temporary, image)
    if old.exists():
        remove_tree(old)
    home.mkdir(mode=0o700, exist_ok=True)
    os.chmod(home, 0o700)  # the mount point itself: nobody's business but the portal's
    mount(image, home)
    if uid is not None:
        os.chown(home, uid, uid)
    os.chmod(home, 0o700)
