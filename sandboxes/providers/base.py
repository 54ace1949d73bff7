"""The contract between the portal and a sandbox backend.

A provider manages remote sandboxes on one backend (Daytona, or this machine). The portal's
services (:mod:`sandboxes.services`) call it; nothing else does: API, pages, websockets, the
SSH gateway, admin, tasks and commands all go through the services. Every method is
synchronous, safe to call from several threads at once, and raises only :class:`ProviderError`
(chained ``from`` the backend's own exception). No backend object or exception crosses this
boundary: results are the frozen dataclasses below.

Remote sandboxes are addressed by ``remote_id`` (the backend's id). The portal names each
sandbox deterministically (:func:`sandboxes.services.remote_name_for`); the name is the
idempotency key of :meth:`SandboxProvider.create`, and :meth:`SandboxProvider.find` looks a name
up authoritatively.

Some abilities only some backends have; each is a :class:`Capability`, listed in the provider's
``capabilities`` and asked for with :meth:`SandboxProvider.supports`. Their methods are part of
this contract, and a provider without the capability raises ``ProviderError(kind=REJECTED)``
from them.
"""

from __future__ import annotations

import enum
import socket
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from .templates import TemplateMethods


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
    DESTROYING = "destroying"  # being destroyed, or asked to be (whatever state it shows meanwhile)
    UNKNOWN = "unknown"  # the provider does not know, or says a word the portal does not: waited out

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
    PORT_CLOSED = "port_closed"  # nothing listens on the sandbox port asked for


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


class PortClosed(ProviderError):
    """Nothing listens on the requested port inside the sandbox (:meth:`SandboxProvider.open_relay`)."""

    def __init__(self, port: int):
        super().__init__(f"Nothing is listening on port {port} in the sandbox.", kind=ErrorKind.PORT_CLOSED)
        self.port = port


@dataclass(frozen=True)
class Problem:
    """Something that keeps a provider from running sandboxes here, and how to fix it."""

    code: str  # stable, e.g. bwrap_missing
    message: str
    hint: str


class Capability(enum.StrEnum):
    """An optional part of the contract. A provider lists those it has in ``capabilities``."""

    # open_terminal(command=[...]) runs that program instead of the login shell (the portal's
    # own SSH gateway runs an SSH client's command that way).
    TERMINAL_COMMAND = "terminal_command"
    # open_relay(): raw streams to ports inside the sandbox (the SSH gateway's forwards, and how
    # the portal reaches a local sandbox's preview).
    PREVIEW_RELAY = "preview_relay"
    # The portal's own SSH gateway serves the sandboxes: resolve_ssh_token() and ssh_token_sandbox().
    SSH_GATEWAY = "ssh_gateway"
    # open_process(): a program on pipes rather than a PTY, binary-safe (the SSH gateway's
    # commands without a terminal, sftp, scp).
    PROCESS = "process"
    # The backend has doors of its own that the portal never sees (Daytona's SSH gateway and
    # preview proxy), so RemoteSandbox.last_activity_at can show use the portal did not record.
    # Without it, everything that reaches a sandbox goes through the portal, which records the
    # use it counts, and the backend's timestamp is no evidence of anything more.
    OUTSIDE_ACTIVITY = "outside_activity"


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
    # A prepared template version (TemplateRecipe.name) to create from; it comes before image
    # and snapshot. On Daytona it is a snapshot (resources then come from it).
    template: str = ""
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
    # ERROR because the sandbox's image failed to build (error_reason says why): a new sandbox
    # from the same image most likely fails the same way.
    build_failed: bool = False
    # When the backend last saw the sandbox used (moved by the backend's own doors, lifecycle
    # changes and refresh_activity); see Capability.OUTSIDE_ACTIVITY for when it means a person.
    last_activity_at: datetime | None = None
    created_at: datetime | None = None
    # When the backend says the sandbox entered its current state, if it says: the portal
    # backdates a change it learns of late (a stop behind its back) to this, for metering.
    state_changed_at: datetime | None = None


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
class PreviewUpstream:
    """How the portal's preview relay reaches what a running sandbox serves on one port.

    Requests go to ``url`` plus the request's path (``url`` may carry a path prefix of its
    own), with ``headers`` added; ``connect``, where set, opens the stream instead of dialling
    ``url``'s host. ``nonce`` changes at every start and stop of the sandbox and at
    :meth:`SandboxProvider.revoke_access` where the backend allows: preview sessions are bound
    to it and end with it. Everything here is secret."""

    url: str
    nonce: str
    headers: Mapping[str, str] = field(default_factory=dict)
    connect: Callable[[], socket.socket] | None = None


@dataclass(frozen=True)
class SandboxAccess:
    """Everything a user needs to reach a started sandbox. All of it is secret."""

    ssh: SshAccess
    preview: SignedLink
    terminal: SignedLink


@dataclass(frozen=True)
class ResourceUsage:
    """What a running sandbox uses of its memory and disk, in bytes, as measured now.

    Memory is what the kernel charges to the sandbox (its cgroup's usage, page cache
    included, as the limit counts it); disk is what its home filesystem holds. A limit is the
    sandbox's own (never 0 for a sandbox with resources: where the backend enforces none it is
    the size the sandbox was given)."""

    memory_bytes: int
    memory_limit_bytes: int
    disk_bytes: int
    disk_limit_bytes: int


def preview_page_link(remote_id: str, port: int, expires_at: datetime) -> SignedLink:
    """The portal's own page that opens the preview of ``port`` (it signs the owner in on the
    preview's site, then sends them there): the preview link of every provider."""
    return SignedLink(url=f"/sandboxes/{remote_id}/preview/?port={port}", expires_at=expires_at, port=port)


class TerminalSession:
    """One attachment to a PTY session (a login shell) inside a sandbox.

    Blocking and thread-safe in the usual way: one thread reads while others write or resize.
    The shell belongs to the sandbox, not to this object: :meth:`detach` leaves it running, so
    a later :meth:`SandboxProvider.open_terminal` with the same ``session_id`` finds the same
    shell. Where the backend keeps the shell's recent output itself, ``replays_output`` is
    true and a new attachment's first bytes are that output (otherwise the portal keeps what
    it relayed: ``sandboxes.services.scrollback``). The shell ends when it exits, when
    :meth:`kill` is called, or when the sandbox stops.
    """

    session_id: str = ""
    replays_output: bool = False

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


class ProcessSession:
    """A program running in a sandbox on pipes (:meth:`SandboxProvider.open_process`): its
    stdin, stdout and stderr as byte streams, binary-safe.

    Blocking and thread-safe in the usual way: one thread reads while others write. Input has
    flow control: :meth:`write` waits while the program does not read, and :meth:`kill` and
    :meth:`close` still work from another thread meanwhile. Unlike a terminal session it belongs
    to this object: :meth:`close` kills the program. The session ends once the program has
    exited and its stdout and stderr are closed (a background child that keeps them open keeps
    the session going, as over OpenSSH), or when the sandbox stops.
    """

    STDOUT = 1
    STDERR = 2

    def read(self) -> tuple[int, bytes]:
        """The next output: ``(STDOUT, data)`` or ``(STDERR, data)``, waiting for it (each call
        returns bytes of one stream, in the order the program wrote them); ``(0, b"")`` once
        the program has ended and all its output was read (:attr:`exit_code` is then set), the
        session was closed, or the sandbox stopped."""
        raise NotImplementedError

    def write(self, data: bytes) -> None:
        """Send bytes to the program's stdin. Dropped once the program has ended or closed its
        stdin."""
        raise NotImplementedError

    def close_input(self) -> None:
        """End the program's stdin: it reads end of file after what was written before.
        Idempotent."""
        raise NotImplementedError

    def kill(self) -> None:
        """End the program and its background children (SIGKILL to its process group); its last
        output and exit status (137) still come through :meth:`read`. Idempotent."""
        raise NotImplementedError

    def close(self) -> None:
        """Kill the program if it still runs and drop the connection. Idempotent."""
        raise NotImplementedError

    @property
    def exit_code(self) -> int | None:
        """The program's exit status once it has ended (128 + N when killed by signal N); None
        while it runs, and when the session was cut off (the sandbox stopped)."""
        raise NotImplementedError


class SandboxProvider(TemplateMethods):
    """A sandbox backend. Subclasses implement every method below.

    ``name`` is stored on each ``Sandbox`` row, so a row always goes back to the provider
    that made it, whatever the current default.
    """

    name: str = ""
    capabilities: frozenset[Capability] = frozenset()
    home_directory: str = "/"  # the sandbox user's home, where SSH sessions and editors start

    @classmethod
    def from_settings(cls) -> SandboxProvider:
        """A provider configured from Django's settings as they are now."""
        raise NotImplementedError

    def supports(self, capability: Capability) -> bool:
        return capability in self.capabilities

    def _lacks(self, capability: Capability) -> ProviderError:
        return ProviderError(f"The {self.name} provider cannot do this ({capability}).", kind=ErrorKind.REJECTED)

    def problems(self) -> list[Problem]:
        """What keeps this provider from running sandboxes on this machine with this
        configuration (empty when nothing does), for the system checks. Cheap after the first
        call in a process."""
        return []

    def check_reachable(self) -> None:
        """Return once the backend answered one cheap authenticated request, within a few
        seconds; raise ``ProviderError`` otherwise (``kind=UNAVAILABLE`` or ``TIMEOUT`` when
        it cannot be reached, ``REJECTED`` when it refuses the credentials). For the readiness
        check: no retries beyond a short one, nothing is changed, no sandbox counts as used."""
        raise NotImplementedError

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
        """Destroy a sandbox and its files. Returns once accepted. Idempotent: a sandbox that
        is already gone or being destroyed is not an error, so a repeated or retried delete
        succeeds."""
        raise NotImplementedError

    def list_managed(self, labels: Mapping[str, str]) -> Iterator[RemoteSandbox]:
        """Every sandbox whose labels contain ``labels``, page by page (lazy), in an order that
        does not change while it is read (oldest first), so no sandbox is skipped or repeated.

        Eventually consistent: an item may be missing or stale for a moment. Confirm with
        :meth:`get` before acting on what it says.
        """
        raise NotImplementedError

    def mint_access(self, remote_id: str, *, ssh_minutes: int, preview_port: int, link_seconds: int) -> SandboxAccess:
        """New SSH token (valid ``ssh_minutes``), the portal's preview page for ``preview_port``
        (:func:`preview_page_link`) and terminal URL (each valid ``link_seconds``). Minting an
        SSH token revokes the older ones of the same sandbox. Independent backend calls run concurrently."""
        raise NotImplementedError

    def revoke_access(self, remote_id: str, *, preview_port: int, links: list[SignedLink]) -> None:
        """Revoke every SSH token of the sandbox and expire the given signed links early.
        Best effort per item; idempotent."""
        raise NotImplementedError

    def expire_links(self, remote_id: str, *, preview_port: int, links: list[SignedLink]) -> None:
        """Expire the given signed links early, and nothing else (SSH tokens stay valid).
        Links without a ``token`` are the portal's own pages and are skipped. Best effort per
        item; idempotent."""
        raise NotImplementedError

    def refresh_activity(self, remote_id: str) -> None:
        """Tell the backend the sandbox is in use, resetting its own idle timer."""
        raise NotImplementedError

    def set_auto_stop(self, remote_id: str, minutes: int) -> None:
        """Set the backend's own idle stop of an existing sandbox to ``minutes`` without use
        (0: never), as :attr:`SandboxSpec.auto_stop_minutes` does at creation: a backstop to the
        portal's idle policy, set again on every sandbox the portal adopts. Idempotent;
        ``kind=NOT_FOUND`` when the sandbox is gone. Where the backend applies it only from the
        next start, the provider says so in its docstring."""
        raise NotImplementedError

    def open_terminal(
        self, remote_id: str, *, session_id: str, cols: int, rows: int, command: list[str] | None = None
    ) -> TerminalSession:
        """Attach to the PTY session ``session_id`` of a started sandbox, creating it (a login
        shell in the sandbox's home directory, ``TERM=xterm-256color``) when it does not exist.

        ``session_id`` names the session (letters, digits, ``-``; at most 64). Raises
        ``ProviderError(kind=INVALID_STATE)`` when the sandbox is not started and
        ``kind=NOT_FOUND`` when it is gone. Never starts a sandbox by itself.

        ``command`` (only with :attr:`Capability.TERMINAL_COMMAND`, else ``kind=REJECTED``): the
        program a newly created session runs instead of the login shell.

        The portal mints ``session_id`` and keeps a registry of the sessions it opened; the
        portal's own traffic to the session never counts as use with the backend (Daytona:
        ``X-Daytona-Skip-Last-Activity-Update``).
        """
        raise NotImplementedError

    def end_terminal(self, remote_id: str, session_id: str) -> None:
        """End the PTY session ``session_id`` (its program is killed, its attachments see the
        end). Idempotent: a session that does not exist or has ended, a sandbox that is not
        running or is gone, are not errors. Never counts as use of the sandbox."""
        raise NotImplementedError

    def preview_upstream(self, remote_id: str, port: int) -> PreviewUpstream:
        """Where the portal's preview relay sends requests for ``port`` of the running sandbox
        (see :class:`PreviewUpstream`). Previews are always served through the portal, on a
        site of their own, never by the backend's own preview pages. Raises
        ``kind=INVALID_STATE`` when the sandbox is not running and ``kind=NOT_FOUND`` when it is
        gone; whether anything listens on ``port`` shows only when the relay connects."""
        raise NotImplementedError

    def resource_usage(self, remote_id: str) -> ResourceUsage:
        """Memory and disk use of the running sandbox now (see :class:`ResourceUsage`).

        Never counts as use of the sandbox, with the backend or the portal: the measurement
        moves no activity timestamp and resets no idle timer. Bounded: returns or raises within
        a few seconds (``kind=TIMEOUT`` when the measurement did not answer in time). Raises
        ``kind=INVALID_STATE`` when the sandbox is not running and ``kind=NOT_FOUND`` when it is
        gone; ``kind=UNAVAILABLE`` when it could not be measured."""
        raise NotImplementedError

    # -- optional: Capability.PREVIEW_RELAY ---------------------------------------------------

    def open_relay(self, remote_id: str, port: int) -> socket.socket:
        """A connected stream (blocking, no timeout) to ``127.0.0.1:port`` inside the running
        sandbox: raw bytes both ways, half-closes passed on. Raises :class:`PortClosed` when
        nothing listens there, ``kind=INVALID_STATE`` when the sandbox is not running and
        ``kind=NOT_FOUND`` when it is gone."""
        raise self._lacks(Capability.PREVIEW_RELAY)

    # -- optional: Capability.PROCESS ---------------------------------------------------------

    def open_process(self, remote_id: str, argv: list[str]) -> ProcessSession:
        """Run ``argv`` in the running sandbox, as its user, in its home directory, with pipes
        for stdin, stdout and stderr (no terminal, no ``TERM``), in a process group of its own.
        Returns once the program runs; a program that cannot be executed ends at once with
        status 127 and the reason on its stderr. Raises ``kind=INVALID_STATE`` when the sandbox
        is not running, ``kind=NOT_FOUND`` when it is gone and ``kind=REJECTED`` for an empty
        ``argv``. The program is killed when the session is closed."""
        raise self._lacks(Capability.PROCESS)

    # -- optional: Capability.SSH_GATEWAY -----------------------------------------------------

    def resolve_ssh_token(self, token: str) -> str | None:
        """The id of the running sandbox this SSH token opens; None when the token is unknown,
        expired, revoked, or its sandbox is not running."""
        raise self._lacks(Capability.SSH_GATEWAY)

    def ssh_token_sandbox(self, token: str) -> str | None:
        """The id of the sandbox an unexpired, unrevoked SSH token was minted for, whatever
        that sandbox's state (so a refusal can say "stopped" rather than "revoked"); None for an
        unknown, expired or revoked token."""
        raise self._lacks(Capability.SSH_GATEWAY)
