"""The on-disk store of local sandboxes under the root: records, indexes, locks and workspaces.

A record (``<id>/state.json``) is replaced atomically and changed only under the sandbox's lock
(:meth:`Store.locked`, a flock on ``<id>/lock``), so any number of processes share one root. The
name index (``names/<name>``) and the SSH token index (``tokens/<sha256 of the token>``) are
changed under the root's lock and the sandbox's lock respectively. The layout is described in
:mod:`sandboxes.providers.local`.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from ..base import ErrorKind, ProviderError
from . import agent as protocol

SANDBOX_ID = re.compile(r"[0-9a-f]{32}")
SANDBOX_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
LOCK_TIMEOUT = 30.0

# The record's own words; RemoteState is the portal's vocabulary for them.
STOPPED, STARTING, STARTED, STOPPING, ERROR, DESTROYING = (
    "stopped",
    "starting",
    "started",
    "stopping",
    "error",
    "destroying",
)


def write_file(path: Path, text: str, mode: int = 0o600) -> None:
    """Replace ``path`` atomically with ``text`` (written and synced under a temporary name)."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, path)


def flock(fd: int, timeout: float, busy_message: str) -> None:
    """Take an exclusive flock on ``fd``, waiting up to ``timeout`` seconds; CONFLICT
    (retryable) with ``busy_message`` when it stays taken."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise ProviderError(busy_message, kind=ErrorKind.CONFLICT, retryable=True, retry_after=1) from None
            time.sleep(0.01)


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def remove_tree(path: Path) -> None:
    """Remove a directory tree, including the parts a sandbox made read-only."""

    def make_writable(function, name, exc_info):
        try:
            os.chmod(os.path.dirname(name), 0o700)
            os.chmod(name, 0o700)
            function(name)
        except OSError:
            pass

    shutil.rmtree(path, onerror=make_writable)


class Store:
    """The sandboxes' files under ``root``. Thread-safe; any number of processes may share it."""

    def __init__(self, root: Path):
        self.root = root

    def directory(self, sandbox_id: str) -> Path:
        return self.root / sandbox_id

    def socket_path(self, sandbox_id: str) -> Path:
        """Where the sandbox's agent listens (created by the portal, handed over as a descriptor)."""
        return self.root / sandbox_id / "run" / "agent.sock"

    @property
    def agent(self) -> Path:
        """The root's copy of the agent, mounted read-only into every sandbox."""
        return self.root / ".system" / "agent.py"

    # -- records ------------------------------------------------------------------------------

    def exists(self, sandbox_id: str) -> bool:
        return bool(SANDBOX_ID.fullmatch(sandbox_id or "")) and (self.root / sandbox_id / "state.json").exists()

    def ids(self) -> list[str]:
        """The ids of every sandbox in the root, sorted (whatever their state)."""
        try:
            return sorted(entry.name for entry in os.scandir(self.root) if SANDBOX_ID.fullmatch(entry.name))
        except FileNotFoundError:
            return []

    def read(self, sandbox_id: str) -> dict | None:
        """The record as stored; None when there is none. Raises when it cannot be read."""
        try:
            return json.loads((self.root / sandbox_id / "state.json").read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise ProviderError(f"The record of sandbox {sandbox_id} cannot be read.") from exc

    def load(self, sandbox_id: str) -> dict:
        """The record of a sandbox that exists and is not being destroyed; NOT_FOUND otherwise."""
        record = self.read(sandbox_id)
        if record is None or record["state"] == DESTROYING:
            raise ProviderError("The sandbox does not exist.", kind=ErrorKind.NOT_FOUND)
        return record

    def write(self, record: dict) -> None:
        write_file(self.root / record["id"] / "state.json", json.dumps(record, indent=1, sort_keys=True))

    # -- locks --------------------------------------------------------------------------------

    @contextmanager
    def locked(self, sandbox_id: str, *, timeout: float):
        """Hold the sandbox's lock (every change of it takes it); NOT_FOUND when it is gone,
        CONFLICT when it stays taken for ``timeout`` seconds."""
        try:
            fd = os.open(self.root / sandbox_id / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except FileNotFoundError as exc:
            raise ProviderError("The sandbox does not exist.", kind=ErrorKind.NOT_FOUND) from exc
        try:
            flock(fd, timeout, "Another change of this sandbox is in progress.")
            yield
        finally:
            os.close(fd)

    @contextmanager
    def root_lock(self):
        """Hold the root's lock: the name index and the uid slots change under it."""
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            flock(fd, LOCK_TIMEOUT, "Another sandbox is being created; try again.")
            yield
        finally:
            os.close(fd)

    def lock_is_free(self, sandbox_id: str) -> bool:
        """Whether nobody holds the sandbox's lock (nor could: it has none)."""
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

    # -- the name index -----------------------------------------------------------------------

    def named(self, name: str) -> str | None:
        """The id the name index holds for ``name`` (unchecked), None when it holds none."""
        try:
            return (self.root / "names" / name).read_text().strip()
        except OSError:
            return None

    def name_taken(self, name: str) -> bool:
        sandbox_id = self.named(name)
        if sandbox_id is None:
            return False
        record = self.read(sandbox_id) if SANDBOX_ID.fullmatch(sandbox_id) else None
        return record is not None and record["state"] != DESTROYING and record["name"] == name

    def add_name(self, name: str, sandbox_id: str) -> None:
        write_file(self.root / "names" / name, sandbox_id)

    def remove_name(self, name: str, sandbox_id: str) -> None:
        """Drop ``name`` from the index if it still leads to ``sandbox_id``. Under the root's lock."""
        index = self.root / "names" / name
        try:
            if index.read_text().strip() == sandbox_id:
                index.unlink()
        except OSError:
            pass

    def used_uids(self) -> set[int]:
        """The uids the records of this root name."""
        used = set()
        for sandbox_id in self.ids():
            try:
                record = self.read(sandbox_id)
            except ProviderError:
                continue
            if record and record.get("uid") is not None:
                used.add(int(record["uid"]))
        return used

    def free_slot(self, uid_base: int) -> int:
        """The lowest uid slot no sandbox uses. Under the root's lock."""
        used = set()
        for entry in os.scandir(self.root):
            if SANDBOX_ID.fullmatch(entry.name):
                record = self.read(entry.name)
                if record and record.get("uid") is not None:
                    used.add(record["uid"] - uid_base)
        return next(slot for slot in range(len(used) + 1) if slot not in used)

    # -- the SSH token index ------------------------------------------------------------------

    def add_token(self, digest: str, sandbox_id: str, expires_at: float) -> None:
        write_file(self.root / "tokens" / digest, json.dumps({"id": sandbox_id, "expires_at": expires_at}))

    def token_entry(self, token: str) -> tuple[str, str, object] | None:
        """``(digest, sandbox id, expires_at as stored)`` of an SSH token in the index; None
        when the token is malformed, not there (never minted, revoked) or its entry unusable."""
        if not isinstance(token, str) or not 16 <= len(token) <= 256:
            return None
        digest = token_digest(token)
        try:
            entry = json.loads((self.root / "tokens" / digest).read_text())
            sandbox_id = entry["id"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if not isinstance(sandbox_id, str) or not SANDBOX_ID.fullmatch(sandbox_id):
            return None
        return digest, sandbox_id, entry.get("expires_at")

    def drop_ssh_token(self, record: dict) -> None:
        """Revoke the record's SSH token (the caller writes the record)."""
        ssh = record.get("ssh") or {}
        if ssh.get("hash"):
            try:
                (self.root / "tokens" / ssh["hash"]).unlink()
            except FileNotFoundError:
                pass
        record["ssh"] = None

    # -- files --------------------------------------------------------------------------------

    def prepare(self) -> None:
        """Make the root and its indexes, and bring its copy of the agent up to date."""
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o711)  # sandboxes' uids traverse it to reach their homes, nothing more
        for name in ("names", "tokens", "trash"):
            (self.root / name).mkdir(mode=0o700, exist_ok=True)
        system = self.root / ".system"
        system.mkdir(mode=0o755, exist_ok=True)
        source = Path(protocol.__file__).read_bytes()
        target = self.agent
        try:
            current = target.read_bytes()
        except FileNotFoundError:
            current = None
        if current != source:
            write_file(target, source.decode(), mode=0o644)
            os.chmod(target, 0o644)

    def make_workspace(self, sandbox_id: str, uid: int | None) -> None:
        """The sandbox's directory with an empty ``run/`` and ``etc/`` and a home from /etc/skel,
        owned by ``uid`` when the sandbox has its own."""
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

    def write_etc(self, sandbox_id: str, files: dict[str, str]) -> None:
        """The sandbox's own /etc files (see :func:`.isolation.etc_files`)."""
        etc = self.root / sandbox_id / "etc"
        etc.mkdir(mode=0o755, exist_ok=True)
        for name, text in files.items():
            write_file(etc / name, text, mode=0o644)

    def move_to_trash(self, sandbox_id: str) -> Path:
        """Move the sandbox's directory out of the root's sandboxes (to be removed after)."""
        trash = self.root / "trash" / f"{sandbox_id}-{secrets.token_hex(4)}"
        trash.parent.mkdir(mode=0o700, exist_ok=True)
        os.rename(self.root / sandbox_id, trash)
        return trash
