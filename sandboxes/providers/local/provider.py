"""The local provider: the portal's contract (:class:`sandboxes.providers.base.SandboxProvider`)
for sandboxes on this machine, over the store, the lifecycle and the agents of this package."""

from __future__ import annotations

import logging
import os
import re
import socket
import time
import uuid
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path

from ..base import (
    Capability,
    ErrorKind,
    ProviderError,
    RemoteSandbox,
    RemoteState,
    ResourceUsage,
    SandboxProvider,
    SandboxSpec,
)
from ..templates import BuildLog, ScriptResult, TemplateRecipe
from . import agent as protocol
from . import agent_client, templates
from .access import LocalAccess
from .agent_client import STATUS_TIMEOUT, CommandResult, LocalProcess, LocalTerminal
from .isolation import Cgroups, namespace_members
from .lifecycle import Lifecycle
from .preflight import Problem, local_problems
from .resources import measure
from .store import (
    DESTROYING,
    ERROR,
    LOCK_TIMEOUT,
    SANDBOX_ID,
    SANDBOX_NAME,
    STARTED,
    STARTING,
    STOPPED,
    STOPPING,
    Store,
    remove_tree,
)
from .uids import DEFAULT_REGISTRY, UidRegistry

logger = logging.getLogger(__name__)

ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
REMOTE_STATES = {
    STOPPED: RemoteState.STOPPED,
    STARTING: RemoteState.STARTING,
    STARTED: RemoteState.STARTED,
    STOPPING: RemoteState.STOPPING,
    ERROR: RemoteState.ERROR,
    DESTROYING: RemoteState.DESTROYING,
}


class LocalProvider(LocalAccess, SandboxProvider):
    """Sandboxes on this machine under ``root``. Thread-safe; any number of processes may
    share one root."""

    name = "local"
    home_directory = "/home/sandbox"
    capabilities = frozenset(
        {Capability.TERMINAL_COMMAND, Capability.PREVIEW_RELAY, Capability.SSH_GATEWAY, Capability.PROCESS}
    )

    def __init__(
        self,
        root: Path | str,
        *,
        ssh_host: str = "localhost",
        ssh_port: int = 2222,
        bwrap: str = "bwrap",
        python: str = "/usr/bin/python3",
        uid_base: int = 2_000_000_000,
        cgroup_parent: str = "joepro-sandboxes",
        pids_max: int = 4096,
        tmp_size_mb: int = 1024,
        stop_grace: float = 1.0,
        disk_check_seconds: float = 120.0,
        uid_registry: Path | str = DEFAULT_REGISTRY,
        pty_sessions: int = protocol.MAX_SESSIONS,
        scrollback_bytes: int | None = None,
        network: bool = True,
    ):
        self.root = Path(root).absolute()
        self.ssh_host = ssh_host
        self.ssh_port = int(ssh_port)
        self.bwrap = bwrap
        self.python = python
        self.uid_base = int(uid_base)
        self.pids_max = int(pids_max)
        self.tmp_size = int(tmp_size_mb) << 20
        self.stop_grace = float(stop_grace)
        self.disk_check_seconds = float(disk_check_seconds)
        self.scrollback_bytes = scrollback_bytes
        self.network = bool(network)
        self.cgroups = Cgroups(cgroup_parent)
        self.own_uids = os.geteuid() == 0
        self.store = Store(self.root)
        # Host-wide: sandboxes of every deployment on this host get distinct uids.
        self.uids = UidRegistry(uid_registry, self.uid_base) if self.own_uids else None
        self._claimed_existing = False
        self.lifecycle = Lifecycle(
            self.store,
            self.cgroups,
            bwrap=self.bwrap,
            python=self.python,
            own_uids=self.own_uids,
            uid_base=self.uid_base,
            pids_max=self.pids_max,
            tmp_size=self.tmp_size,
            stop_grace=self.stop_grace,
            disk_check_seconds=self.disk_check_seconds,
            uids=self.uids,
            pty_sessions=int(pty_sessions),
            network=self.network,
        )

    @classmethod
    def from_settings(cls) -> LocalProvider:
        from django.conf import settings

        return cls(
            settings.SANDBOX_LOCAL_ROOT,
            ssh_host=settings.SANDBOX_SSH_HOST,
            ssh_port=settings.SANDBOX_SSH_PORT,
            bwrap=settings.SANDBOX_BWRAP,
            uid_base=settings.SANDBOX_LOCAL_UID_BASE,
            cgroup_parent=settings.SANDBOX_LOCAL_CGROUP_PARENT,
            uid_registry=settings.SANDBOX_LOCAL_UID_REGISTRY,
            pty_sessions=settings.SANDBOX_LOCAL_PTY_SESSIONS,
            scrollback_bytes=settings.SANDBOX_TERMINAL_SCROLLBACK_BYTES,
            network=settings.SANDBOX_LOCAL_NETWORK,
        )

    def _claim_existing(self) -> None:
        """Once per provider: claim the uids of this root's sandboxes from before the registry
        (one another sandbox holds is replaced at that sandbox's start)."""
        if self.uids is None or self._claimed_existing:
            return
        self._claimed_existing = True
        for sandbox_id in self.store.ids():
            try:
                record = self.store.read(sandbox_id)
            except ProviderError:
                continue  # an unreadable record claims nothing; its start says what is wrong
            if record and record.get("uid") is not None and record["state"] != DESTROYING:
                self.uids.ensure(int(record["uid"]), self.root, record["id"])

    # -- lookups ------------------------------------------------------------------------------

    def find(self, name: str) -> RemoteSandbox | None:
        if not SANDBOX_NAME.fullmatch(name or ""):
            return None
        sandbox_id = self.store.named(name)
        if sandbox_id is None:
            return None
        remote = self.get(sandbox_id)
        if remote is None or remote.name != name or remote.state is RemoteState.DESTROYING:
            return None
        return remote

    def get(self, remote_id: str) -> RemoteSandbox | None:
        if not SANDBOX_ID.fullmatch(remote_id or ""):
            return None
        record = self.store.read(remote_id)
        if record is None:
            return None
        return self._remote(record)

    def list_managed(self, labels: Mapping[str, str]) -> Iterator[RemoteSandbox]:
        """Oldest first (then by id), from the records as they are when the listing starts."""
        records = [record for record in map(self.store.read, self.store.ids()) if record is not None]
        records.sort(key=lambda record: (record.get("created_at") or 0, record["id"]))
        for record in records:
            if record["state"] == DESTROYING:
                continue
            if all(record["labels"].get(key) == value for key, value in labels.items()):
                yield self._remote(record)

    # -- lifecycle ----------------------------------------------------------------------------

    def create(self, spec: SandboxSpec, *, wait_seconds: float) -> RemoteSandbox:
        """Creates the workspace and starts it. A local start takes well under a second, so
        the call returns once the sandbox runs, whatever ``wait_seconds``."""
        if not SANDBOX_NAME.fullmatch(spec.name or ""):
            raise ProviderError(f"{spec.name!r} is not a valid sandbox name.", kind=ErrorKind.REJECTED)
        for key, value in spec.env.items():
            if not ENV_NAME.fullmatch(key) or "\0" in value:
                raise ProviderError(f"Invalid environment variable {key!r}.", kind=ErrorKind.REJECTED)
        if spec.template and not self.template_prepared(spec.template):
            message = f"The template version {spec.template} is not prepared on this machine."
            raise ProviderError(message, kind=ErrorKind.REJECTED)
        self.store.prepare()
        self._claim_existing()
        with self.store.root_lock():
            if self.store.name_taken(spec.name):
                raise ProviderError(f"A sandbox named {spec.name} exists already.", kind=ErrorKind.CONFLICT)
            sandbox_id = uuid.uuid4().hex
            uid = self.uids.claim(self.root, sandbox_id, avoid=self.store.used_uids()) if self.uids else None
            now = time.time()
            record = {
                "id": sandbox_id,
                "name": spec.name,
                "labels": dict(spec.labels),
                "cpu": spec.cpu,
                "memory_gb": spec.memory_gb,
                "disk_gb": spec.disk_gb,
                "auto_stop_minutes": spec.auto_stop_minutes,
                "env": dict(spec.env),
                "template": spec.template,
                "uid": uid,
                "state": STOPPED,
                "error": "",
                "created_at": now,
                "started_at": None,
                "stopped_at": None,
                "last_activity_at": now,
                "process": None,
                "limits": {},
                "ssh": None,
                "link_nonce": None,
            }
            self.store.make_workspace(sandbox_id, uid)
            if spec.template:
                templates.copy_starter(self.root, spec.template, self.store.directory(sandbox_id) / "home", uid)
            self.store.write(record)
            self.store.add_name(spec.name, sandbox_id)
        logger.info("local sandbox %s (%s) created", sandbox_id, spec.name)
        with self.store.locked(sandbox_id, timeout=LOCK_TIMEOUT):
            record = self.lifecycle.start_locked(self.store.load(sandbox_id))
        return self._remote(record)

    def start(self, remote_id: str, *, wait_seconds: float) -> RemoteSandbox:
        """Starts the sandbox and returns once its agent answers (well under a second)."""
        sandbox_id = self._existing(remote_id)
        self._claim_existing()
        with self.store.locked(sandbox_id, timeout=max(wait_seconds, 2.0)):
            record = self.lifecycle.settle_locked(self.store.load(sandbox_id))
            if record["state"] == STARTED:
                return self._remote(record)
            record = self.lifecycle.start_locked(record)
        return self._remote(record)

    def stop(self, remote_id: str, *, wait_seconds: float) -> RemoteSandbox:
        """Ends every process of the sandbox (verified: none is left in its PID namespace),
        removes its cgroups and revokes its SSH token and preview links. Files are kept."""
        sandbox_id = self._existing(remote_id)
        with self.store.locked(sandbox_id, timeout=max(wait_seconds, 2.0)):
            record = self.store.load(sandbox_id)
            if record["state"] in (STOPPED, ERROR) and not record.get("process"):
                return self._remote(record)
            record["state"] = STOPPING
            self.store.write(record)
            self.lifecycle.terminate(record)
            record = self.lifecycle.stopped(record)
        logger.info("local sandbox %s stopped", sandbox_id)
        return self._remote(record)

    def recover(self, remote_id: str, *, wait_seconds: float) -> RemoteSandbox:
        """An errored local sandbox is one whose start failed: recovering is starting again."""
        return self.start(remote_id, wait_seconds=wait_seconds)

    def delete(self, remote_id: str) -> None:
        if not SANDBOX_ID.fullmatch(remote_id or ""):
            return
        try:
            with self.store.locked(remote_id, timeout=LOCK_TIMEOUT):
                record = self.store.read(remote_id)
                if record is None:
                    return
                record["state"] = DESTROYING
                self.store.write(record)
                self.lifecycle.terminate(record)
                self.store.drop_ssh_token(record)
                with self.store.root_lock():
                    self.store.remove_name(record["name"], remote_id)
                trash = self.store.move_to_trash(remote_id)
        except ProviderError as exc:
            if exc.kind is ErrorKind.NOT_FOUND:
                return
            raise
        remove_tree(trash)
        if self.uids is not None:
            self.uids.release(record.get("uid"), self.root, remote_id)
        logger.info("local sandbox %s deleted", remote_id)

    def refresh_activity(self, remote_id: str) -> None:
        sandbox_id = self._existing(remote_id)
        with self.store.locked(sandbox_id, timeout=LOCK_TIMEOUT):
            record = self.store.load(sandbox_id)
            record["last_activity_at"] = time.time()
            self.store.write(record)
        if record["state"] == STARTED:
            try:
                agent_client.request(self.store.socket_path(sandbox_id), {"op": "touch"}, timeout=STATUS_TIMEOUT)
            except ProviderError:
                pass

    def set_auto_stop(self, remote_id: str, minutes: int) -> None:
        """Records the idle stop (0: never) for every later start, and tells a running agent at
        once: it stops the sandbox after ``minutes`` without activity (terminal, program or relay
        traffic inside, :meth:`refresh_activity`), checked at least every 30 s."""
        sandbox_id = self._existing(remote_id)
        minutes = max(0, int(minutes))
        with self.store.locked(sandbox_id, timeout=LOCK_TIMEOUT):
            record = self.store.load(sandbox_id)
            record["auto_stop_minutes"] = minutes
            self.store.write(record)
        if self.lifecycle.observed(record) == STARTED:
            try:
                agent_client.configure(self.store.socket_path(sandbox_id), auto_stop_seconds=minutes * 60)
            except ProviderError:
                if self.lifecycle.observed(self.store.load(sandbox_id)) == STARTED:
                    raise
                # It stopped meanwhile: the next start reads the record.

    # -- inside the sandbox -------------------------------------------------------------------

    def open_terminal(
        self, remote_id: str, *, session_id: str, cols: int, rows: int, command: list[str] | None = None
    ) -> LocalTerminal:
        """See :meth:`SandboxProvider.open_terminal`. ``command``, when given, runs instead of
        the login shell if the session is created (for an SSH client's command)."""
        if not protocol.SESSION_ID.fullmatch(session_id or ""):
            raise ProviderError("Terminal session ids are 1 to 64 letters, digits or dashes.", kind=ErrorKind.REJECTED)
        sandbox_id = self._running(remote_id)
        return agent_client.attach_terminal(
            self.store.socket_path(sandbox_id),
            session_id,
            cols=cols,
            rows=rows,
            command=command,
            scrollback=self.scrollback_bytes,
        )

    def end_terminal(self, remote_id: str, session_id: str) -> None:
        """Ends the PTY session as ``kill`` does (SIGHUP to its process group, SIGKILL a second
        later). Idempotent; never counts as use."""
        if not protocol.SESSION_ID.fullmatch(session_id or "") or not SANDBOX_ID.fullmatch(remote_id or ""):
            return  # no such session can exist
        record = self.store.read(remote_id)
        if record is None or self.lifecycle.observed(record) != STARTED:
            return
        try:
            agent_client.end_session(self.store.socket_path(remote_id), session_id)
        except ProviderError:
            record = self.store.read(remote_id)
            if record is not None and self.lifecycle.observed(record) == STARTED:
                raise
            # The sandbox stopped meanwhile, and every session with it.

    def open_process(self, remote_id: str, argv: list[str]) -> LocalProcess:
        """See :meth:`SandboxProvider.open_process`. The program runs in a session and process
        group of its own, with the sandbox's environment but no ``TERM``; :meth:`LocalProcess.kill`
        and ``close`` kill the whole group (its background children too). At most 64 run at once
        in one sandbox."""
        if not (isinstance(argv, list) and argv and all(isinstance(a, str) and "\0" not in a for a in argv)):
            raise ProviderError("A program is a non-empty list of strings.", kind=ErrorKind.REJECTED)
        sandbox_id = self._running(remote_id)
        return agent_client.open_process(self.store.socket_path(sandbox_id), argv)

    def open_relay(self, remote_id: str, port: int) -> socket.socket:
        """A connected stream (blocking, no timeout) to ``127.0.0.1:port`` inside the running
        sandbox: raw bytes both ways, half-closes passed on. Raises :class:`PortClosed` when
        nothing listens there."""
        sandbox_id = self._running(remote_id)
        return agent_client.open_relay(self.store.socket_path(sandbox_id), port)

    def run(self, remote_id: str, argv: list[str], *, timeout: float = 30.0) -> CommandResult:
        """Run a command in the sandbox's home (a new session, stdin /dev/null) and wait for
        it. Background children it leaves behind keep running."""
        sandbox_id = self._running(remote_id)
        return agent_client.run_command(self.store.socket_path(sandbox_id), argv, timeout=timeout)

    def execute(self, remote_id: str, script: str, *, timeout: float = 10.0, max_output: int = 65536) -> ScriptResult:
        """Through the agent's ``exec`` (as :meth:`run`), which is told not to count it as use."""
        sandbox_id = self._running(remote_id)
        try:
            result = agent_client.run_command(
                self.store.socket_path(sandbox_id), ["sh", "-c", script], timeout=timeout, activity=False
            )
        except ProviderError:
            self._running(sandbox_id)  # it stopped meanwhile: INVALID_STATE
            raise
        return templates.script_result(result, max_output)

    def resource_usage(self, remote_id: str) -> ResourceUsage:
        """Read from the host (see :mod:`.resources`), never through the agent: not activity."""
        sandbox_id = self._running(remote_id)
        try:
            return measure(self.store.load(sandbox_id), self.store.directory(sandbox_id))
        except (OSError, ValueError) as exc:
            self._running(sandbox_id)  # it stopped meanwhile: INVALID_STATE
            raise ProviderError(f"The sandbox's memory and disk could not be read: {exc}") from exc

    def record(self, remote_id: str) -> dict | None:
        """The sandbox's record as stored (state, times, processes, cgroups, uid, limits), for
        operators and tests; None when it does not exist. Secrets are stored only hashed."""
        return self.store.read(remote_id) if SANDBOX_ID.fullmatch(remote_id or "") else None

    def processes(self, remote_id: str) -> list[int]:
        """Host pids of every process of the sandbox (empty when it is not running)."""
        record = self.store.read(remote_id) if SANDBOX_ID.fullmatch(remote_id or "") else None
        process = (record or {}).get("process") or {}
        return namespace_members(process["pid_namespace"]) if process.get("pid_namespace") else []

    # -- templates (see .templates) ------------------------------------------------------------

    def prepare_template(self, recipe: TemplateRecipe, *, on_log: BuildLog) -> None:
        """Builds ``<root>/templates/<name>/`` (a toolchain and starter files) outside any sandbox."""
        self.store.prepare()
        templates.prepare(self.root, recipe, on_log=on_log, bwrap=self.bwrap)

    def template_prepared(self, name: str) -> bool:
        return templates.is_prepared(self.root, name)

    # -- what this machine enforces -----------------------------------------------------------

    def limits_in_force(self) -> dict[str, str]:
        """How each limit is enforced on this machine, for operators and the README."""
        return self.lifecycle.limits_in_force()

    def problems(self) -> list[Problem]:
        """What keeps sandboxes from running here (empty when nothing does)."""
        return local_problems(
            bwrap=self.bwrap, root=self.root, python=self.python, own_uids=self.own_uids, network=self.network
        )

    def check_reachable(self) -> None:
        """This machine is the backend: reachable when nothing keeps sandboxes from running."""
        problems = self.problems()
        if problems:
            raise ProviderError(
                f"Sandboxes cannot run on this machine ({', '.join(p.code for p in problems)}).",
                kind=ErrorKind.UNAVAILABLE,
            )

    # -- the record ---------------------------------------------------------------------------

    def _existing(self, remote_id: str) -> str:
        if not self.store.exists(remote_id):
            raise ProviderError("The sandbox does not exist.", kind=ErrorKind.NOT_FOUND)
        return remote_id

    def _running(self, remote_id: str) -> str:
        """The id of a sandbox that runs; NOT_FOUND or INVALID_STATE otherwise."""
        sandbox_id = self._existing(remote_id)
        record = self.store.load(sandbox_id)
        if self.lifecycle.observed(record) != STARTED:
            raise ProviderError("The sandbox is not running.", kind=ErrorKind.INVALID_STATE)
        return sandbox_id

    def _remote(self, record: dict) -> RemoteSandbox:
        observed = self.lifecycle.observed(record)
        if observed != record["state"] and self.store.lock_is_free(record["id"]):
            try:
                with self.store.locked(record["id"], timeout=0):
                    record = self.lifecycle.settle_locked(self.store.load(record["id"]))
                    observed = self.lifecycle.observed(record)
            except ProviderError:
                pass
        last_activity = record.get("last_activity_at")
        if observed == STARTED:
            status = agent_client.agent_status(self.store.socket_path(record["id"]))
            if status and status.get("last_activity"):
                last_activity = max(last_activity or 0, float(status["last_activity"]))
        return RemoteSandbox(
            id=record["id"],
            name=record["name"],
            state=REMOTE_STATES.get(observed, RemoteState.UNKNOWN),
            labels=dict(record["labels"]),
            backend_state=observed,
            cpu=record["cpu"],
            memory_gb=record["memory_gb"],
            disk_gb=record["disk_gb"],
            error_reason=(record.get("error") or "") if observed == ERROR else "",
            recoverable=observed == ERROR,
            last_activity_at=_datetime(last_activity),
            created_at=_datetime(record.get("created_at")),
            state_changed_at=_state_changed_at(record, observed),
        )


def _state_changed_at(record: dict, observed: str) -> datetime | None:
    """When the record entered the state observed: its start for a started sandbox, its stop
    for a stopped (or failed) one. Unknown when the record has not caught up with what is
    observed (its processes died and it could not be settled yet)."""
    if observed != record["state"]:
        return None
    if observed == STARTED:
        return _datetime(record.get("started_at"))
    if observed in (STOPPED, ERROR):
        return _datetime(record.get("stopped_at") or record.get("created_at"))
    return None


def _datetime(timestamp: float | None) -> datetime | None:
    return datetime.fromtimestamp(timestamp, UTC) if timestamp else None
