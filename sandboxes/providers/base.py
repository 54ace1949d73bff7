"""The contract between the portal and a sandbox backend.

A provider manages remote sandboxes on one backend (Daytona, or this machine). The portal's
services call it; nothing else does. Every method is synchronous, safe to call from several
threads at once, and raises only :class:`ProviderError` (chained ``from`` the backend's own
exception). No backend object or exception crosses this boundary: results are the frozen
dataclasses below.

Remote sandboxes are addressed by ``remote_id`` (the backend's id). The portal names each
sandbox deterministically (:func:`sandboxes.naming.remote_name`); the name is the idempotency
key of :meth:`SandboxProvider.create`, and :meth:`SandboxProvider.find` looks a name up
authoritatively.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime


class RemoteState(enum.StrEnum):
    """The portal's own vocabulary for a remote sandbox's state.

    Each provider maps its backend's states onto these in one function.
    """

    CREATING = "creating"  # being created or provisioned
    STARTING = "starting"  # starting, restoring from archive, resuming
    STARTED = "started"
    STOPPING = "stopping"
    STOPPED = "stopped"
    ARCHIVED = "archived"  # stopped with files moved to cold storage; start restores it
    ERROR = "error"
    DESTROYING = "destroying"
    UNKNOWN = "unknown"  # a state the provider does not recognise

    @property
    def is_transition(self) -> bool:
        return self in {self.CREATING, self.STARTING, self.STOPPING, self.DESTROYING}


class ErrorKind(enum.StrEnum):
    NOT_FOUND = "not_found"  # the remote object does not exist (or no longer)
    CONFLICT = "conflict"  # name taken, or a state change already in progress
    INVALID_STATE = "invalid_state"  # the call does not apply in the current state
    RATE_LIMITED = "rate_limited"
    UNAVAILABLE = "unavailable"  # backend down, 5xx, transport failure
    TIMEOUT = "timeout"  # outcome unknown: the backend may or may not have acted
    REJECTED = "rejected"  # credentials, quota, validation: retrying will not help


class ProviderError(Exception):
    """Any failure of a provider call.

    ``retryable`` says whether the same call may succeed later; ``retry_after`` is the
    backend's hint in seconds, if it gave one. ``str(error)`` is safe to show a user and to
    log: providers never put credentials, tokens or signed URLs in it.
    """

    def __init__(
        self,
        message: str,
        *,
        kind: ErrorKind = ErrorKind.UNAVAILABLE,
        retryable: bool = False,
        retry_after: float | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.kind = kind
        self.retryable = retryable
        self.retry_after = retry_after

    def __repr__(self) -> str:
        return f"ProviderError({self.message!r}, kind={self.kind.value}, retryable={self.retryable})"


@dataclass(frozen=True)
class SandboxSpec:
    """What :meth:`SandboxProvider.create` builds. Resources in whole CPUs and GiB."""

    name: str
    labels: Mapping[str, str]
    cpu: int
    memory_gb: int
    disk_gb: int
    image: str = ""
    snapshot: str = ""  # when set, resources come from the snapshot
    auto_stop_minutes: int = 0  # the backend's own idle stop, a backstop to the portal's
    env: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RemoteSandbox:
    id: str
    name: str
    state: RemoteState
    labels: Mapping[str, str] = field(default_factory=dict)
    backend_state: str = ""  # the backend's own word, for operators
    cpu: int | None = None
    memory_gb: int | None = None
    disk_gb: int | None = None
    error_reason: str = ""
    recoverable: bool = False
    last_activity_at: datetime | None = None
    created_at: datetime | None = None


@dataclass(frozen=True)
class SshAccess:
    token: str
    host: str
    port: int
    command: str
    expires_at: datetime


@dataclass(frozen=True)
class SignedLink:
    url: str
    expires_at: datetime
    token: str = ""  # what revokes the link early, where the backend supports that
    port: int = 0  # the sandbox port it opens (0: unknown; revoke_access then assumes the preview port)


@dataclass(frozen=True)
class SandboxAccess:
    """Everything a user needs to reach a started sandbox. All of it is secret."""

    ssh: SshAccess
    preview: SignedLink
    terminal: SignedLink


class TerminalSession:
    """One attachment to a PTY session (a login shell) inside a sandbox.

    Blocking and thread-safe in the usual way: one thread reads while others write or resize.
    The shell belongs to the sandbox, not to this object: :meth:`detach` leaves it running, so
    a later :meth:`SandboxProvider.open_terminal` with the same ``session_id`` finds the same
    shell (its scrollback is not replayed). The shell ends when it exits, when :meth:`kill`
    is called, or when the sandbox stops.
    """

    session_id: str = ""

    def read(self) -> bytes:
        """The next output bytes, waiting for them. ``b""`` once the shell has ended or the
        attachment was detached; :attr:`exit_code` is then set if the shell ended."""
        raise NotImplementedError

    def write(self, data: bytes) -> None:
        """Send input (keystrokes, pasted text) to the shell."""
        raise NotImplementedError

    def resize(self, cols: int, rows: int) -> None:
        raise NotImplementedError

    def detach(self) -> None:
        """Close this attachment; the shell keeps running. Idempotent."""
        raise NotImplementedError

    def kill(self) -> None:
        """End the shell. Idempotent."""
        raise NotImplementedError

    @property
    def exit_code(self) -> int | None:
        """The shell's exit status once it has ended, else None."""
        raise NotImplementedError


class SandboxProvider:
    """A sandbox backend. Subclasses implement every method below.

    ``name`` is stored on each ``Sandbox`` row, so a row always goes back to the provider
    that made it, whatever the current default.
    """

    name: str = ""

    def find(self, name: str) -> RemoteSandbox | None:
        """Look a sandbox up by its exact name. Authoritative (not eventually consistent).

        Returns ``None`` when no sandbox of that name exists (destroyed ones do not count).
        """
        raise NotImplementedError

    def get(self, remote_id: str) -> RemoteSandbox | None:
        """Current state of one sandbox by id; ``None`` when it is gone. Authoritative."""
        raise NotImplementedError

    def create(self, spec: SandboxSpec, *, wait_seconds: float) -> RemoteSandbox:
        """Create a sandbox and wait up to ``wait_seconds`` for it to start.

        Returns the sandbox in whatever state it reached: ``STARTED``, or still
        ``CREATING``/``STARTING`` when the wait ran out (the backend carries on; poll with
        :meth:`get`). Raises ``ProviderError(kind=CONFLICT)`` when ``spec.name`` exists
        already (the caller decides whether to adopt it) and ``kind=TIMEOUT`` when the
        outcome is unknown (the request may have created it: resolve with :meth:`find`,
        never by creating under another name). Not idempotent by itself; the unique name
        makes a repeated call fail with ``CONFLICT`` instead of creating twice.
        """
        raise NotImplementedError

    def start(self, remote_id: str, *, wait_seconds: float) -> RemoteSandbox:
        """Start (or resume, or restore) a stopped or archived sandbox.

        Waits up to ``wait_seconds`` and returns the state reached. Idempotent: starting a
        started sandbox returns it unchanged. ``kind=CONFLICT`` when another state change is
        in progress, ``kind=NOT_FOUND`` when it is gone.
        """
        raise NotImplementedError

    def stop(self, remote_id: str, *, wait_seconds: float) -> RemoteSandbox:
        """Stop a sandbox (files are kept) and revoke every SSH token of it.

        Idempotent: stopping a stopped or archived sandbox returns it. ``kind=NOT_FOUND``
        when it is gone.
        """
        raise NotImplementedError

    def recover(self, remote_id: str, *, wait_seconds: float) -> RemoteSandbox:
        """Bring an errored sandbox back when the backend says it is recoverable."""
        raise NotImplementedError

    def delete(self, remote_id: str) -> None:
        """Destroy a sandbox and its files. Returns once accepted. Idempotent: a sandbox
        that is already gone is not an error."""
        raise NotImplementedError

    def list_managed(self, labels: Mapping[str, str]) -> Iterator[RemoteSandbox]:
        """Every sandbox whose labels contain ``labels``, page by page (lazy).

        Eventually consistent: an item may be missing or stale for a moment. Confirm with
        :meth:`get` before acting on what it says.
        """
        raise NotImplementedError

    def mint_access(
        self, remote_id: str, *, ssh_minutes: int, preview_port: int, link_seconds: int
    ) -> SandboxAccess:
        """New SSH token (valid ``ssh_minutes``), signed preview URL for ``preview_port`` and
        terminal URL (each valid ``link_seconds``). Minting an SSH token revokes the older
        ones of the same sandbox. Independent backend calls run concurrently."""
        raise NotImplementedError

    def revoke_access(self, remote_id: str, *, preview_port: int, links: list[SignedLink]) -> None:
        """Revoke every SSH token of the sandbox and expire the given signed links early.
        Best effort per item; idempotent."""
        raise NotImplementedError

    def refresh_activity(self, remote_id: str) -> None:
        """Tell the backend the sandbox is in use, resetting its own idle timer."""
        raise NotImplementedError

    def open_terminal(self, remote_id: str, *, session_id: str, cols: int, rows: int) -> TerminalSession:
        """Attach to the PTY session ``session_id`` of a started sandbox, creating it (a login
        shell in the sandbox's home directory, ``TERM=xterm-256color``) when it does not exist.

        ``session_id`` is chosen by the caller (letters, digits, ``-``; at most 64). Raises
        ``ProviderError(kind=INVALID_STATE)`` when the sandbox is not started and
        ``kind=NOT_FOUND`` when it is gone. Never starts a sandbox by itself.
        """
        raise NotImplementedError
