"""Host uids of sandboxes, allocated host-wide: every deployment on this machine (each with a
root of its own) claims its sandboxes' uids in one registry directory
(``SANDBOX_LOCAL_UID_REGISTRY``, default ``/var/lib/joepro/uids``).

A claim is a file named after the uid, created with O_EXCL under the registry's lock, holding
``{"root", "sandbox"}``; it is released when the sandbox is deleted. A claim whose sandbox is
gone (no ``<root>/<sandbox>/state.json``: its root was removed, or it was deleted without the
release) is stale and taken over. A sandbox from before the registry claims its uid when it is
first seen (at its next start), or is given a new one when another sandbox holds it.
"""

from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager
from pathlib import Path

from .store import SANDBOX_ID, flock

DEFAULT_REGISTRY = Path("/var/lib/joepro/uids")
SLOTS = 1 << 20
FRESH = 300.0  # seconds a claim is kept whatever: its sandbox's record is being written


class UidRegistry:
    """Claims of host uids ``base`` to ``base + SLOTS - 1``, shared by every root on the host."""

    def __init__(self, path: Path | str, base: int):
        self.path = Path(path)
        self.base = int(base)

    @contextmanager
    def locked(self):
        self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.path / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            flock(fd, 30.0, "Another sandbox's uid is being allocated; try again.")
            yield
        finally:
            os.close(fd)

    def holder(self, uid: int) -> dict | None:
        """The claim on ``uid`` (``{"root", "sandbox"}``), None when there is none."""
        try:
            claim = json.loads((self.path / str(uid)).read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {"root": "", "sandbox": "", "unreadable": True}
        return claim if isinstance(claim, dict) else {"root": "", "sandbox": "", "unreadable": True}

    @staticmethod
    def stale(claim: dict) -> bool:
        """Whether the claimed sandbox is gone (a claim just made, or one that cannot be read,
        is kept: its record, or the claim itself, may be being written)."""
        if claim.get("unreadable"):
            return False
        try:
            if time.time() - float(claim.get("claimed_at") or 0) < FRESH:
                return False
        except (TypeError, ValueError):
            pass
        sandbox, root = str(claim.get("sandbox") or ""), str(claim.get("root") or "")
        if not SANDBOX_ID.fullmatch(sandbox) or not root:
            return True
        return not (Path(root) / sandbox / "state.json").exists()

    def _try_claim(self, uid: int, root: Path, sandbox_id: str) -> bool:
        """Claim ``uid`` for the sandbox, taking over a stale claim. Under the lock."""
        path = self.path / str(uid)
        mine = {"root": str(root), "sandbox": sandbox_id}
        claim = self.holder(uid)
        if claim is not None:
            if {k: claim.get(k) for k in mine} == mine:
                return True
            if not self.stale(claim):
                return False
            path.unlink(missing_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            return False
        try:
            os.write(fd, json.dumps({**mine, "claimed_at": time.time()}).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        return True

    def claim(self, root: Path, sandbox_id: str, *, avoid: set[int] = frozenset()) -> int:
        """A uid for a new sandbox: the lowest one no live claim holds (nor ``avoid``: uids
        of this root's sandboxes that have not claimed theirs yet)."""
        with self.locked():
            for slot in range(SLOTS):
                uid = self.base + slot
                if uid not in avoid and self._try_claim(uid, root, sandbox_id):
                    return uid
        raise RuntimeError("every sandbox uid is taken")

    def ensure(self, uid: int, root: Path, sandbox_id: str) -> bool:
        """Whether the sandbox holds ``uid`` (claimed now if nobody else does)."""
        with self.locked():
            return self._try_claim(uid, root, sandbox_id)

    def release(self, uid: int | None, root: Path, sandbox_id: str) -> None:
        """Drop the sandbox's claim on ``uid`` (not someone else's)."""
        if uid is None:
            return
        with self.locked():
            claim = self.holder(uid)
            if claim and claim.get("root") == str(root) and claim.get("sandbox") == sandbox_id:
                (self.path / str(uid)).unlink(missing_ok=True)
