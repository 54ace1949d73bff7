"""The emulated organisation: sandboxes, their state machine, SSH and preview tokens.

Everything here is synchronous and guarded by one lock, so the aiohttp handlers (event-loop
thread) and the test-facing methods (any thread) can share it. Results are plain dicts in
the API's camelCase wire shape; refusals raise ``ApiError`` with the server's message.
"""

from __future__ import annotations

import base64
import copy
import json
import secrets
import threading
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from .clock import FakeClock, iso, parse_iso

ORGANIZATION_ID = "9f3b6c1e-0d2a-4c55-8a71-0fa4e5d2c001"
DEFAULT_SNAPSHOT = "daytonaio/sandbox:0.4.3"

# Where a transitional state goes when its time is up.
TRANSITION_TARGET = {
    "creating": "started",
    "pulling_snapshot": "started",
    "pending_build": "started",
    "building_snapshot": "started",
    "starting": "started",
    "restoring": "started",
    "resuming": "started",
    "resizing": "started",
    "stopping": "stopped",
    "pausing": "paused",
    "archiving": "archived",
    "destroying": "destroyed",
}
ERROR_STATES = frozenset({"error", "build_failed"})
STARTABLE_STATES = frozenset({"stopped", "archived", "archiving", "paused"})
STOPPABLE_STATES = frozenset({"started", "paused"})

LIST_ITEM_KEYS = (
    "id",
    "organizationId",
    "name",
    "target",
    "state",
    "desiredState",
    "snapshot",
    "user",
    "errorReason",
    "recoverable",
    "public",
    "networkBlockAll",
    "cpu",
    "gpu",
    "memory",
    "disk",
    "labels",
    "autoStopInterval",
    "autoArchiveInterval",
    "autoDeleteInterval",
    "createdAt",
    "updatedAt",
    "lastActivityAt",
    "toolboxProxyUrl",
)

MAX_PAGE_SIZE = 200
DEFAULT_PAGE_SIZE = 100
DEFAULT_SSH_MINUTES = 60
DEFAULT_SIGNED_SECONDS = 60
MAX_SIGNED_SECONDS = 86400



class ApiError(Exception):
    """A refusal the API answers with an error body."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def not_found(id_or_name: str) -> ApiError:
    return ApiError(404, f"Sandbox with ID or name {id_or_name} not found")


def random_token(length: int) -> str:
    """Lowercase hex: URL-safe, without ``-`` or ``_``."""
    return secrets.token_hex((length + 1) // 2)[:length]


@dataclass
class _Pending:
    target: str
    due: float


@dataclass
class _Sandbox:
    data: dict[str, Any]
    seq: int
    last_activity: float
    updated: float
    preview_token: str
    pending: _Pending | None = None

    @property
    def id(self) -> str:
        return self.data["id"]

    @property
    def state(self) -> str:
        return self.data["state"]


@dataclass
class _SshToken:
    id: str
    token: str
    sandbox_id: str
    created: float
    expires: float


@dataclass
class _SignedPreview:
    token: str
    sandbox_id: str
    port: int
    expires: float
    revoked: bool = False


@dataclass
class PreviewAccess:
    """Outcome of opening a signed preview link."""

    status: int
    message: str
    sandbox_name: str = ""
    port: int = 0


@dataclass
class _ListSnapshot:
    taken_at: float
    rows: list[_Sandbox] = field(default_factory=list)


class SandboxStore:
    """One organisation's sandboxes and access tokens."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.transition_seconds = 0.0
        self.base_url = "http://127.0.0.1:0"
        self.ssh_host = "127.0.0.1"
        self.ssh_port = 2222
        self.preview_counts_as_activity = True
        self.on_leave_started: Callable[[str], None] | None = None
        self._lock = threading.RLock()
        self._clear()

    def _clear(self) -> None:
        self._by_id: dict[str, _Sandbox] = {}
        self._by_name: dict[str, str] = {}
        self._pending_ids: set[str] = set()
        self._ssh: dict[str, _SshToken] = {}
        self._signed: dict[str, _SignedPreview] = {}
        self._seq = 0
        self._list_lag = 0.0
        self._snapshot: _ListSnapshot | None = None

    @property
    def toolbox_url(self) -> str:
        return f"{self.base_url}/toolbox"

    # ----- test-facing management -------------------------------------------------------

    def reset(self) -> None:
        """Forget every sandbox and token (and the list lag); shells are the caller's job."""
        with self._lock:
            self._clear()

    def all(self) -> list[dict[str, Any]]:
        with self._lock:
            self._advance_pending()
            return [self._render(sb) for sb in self._by_id.values()]

    def peek(self, id_or_name: str) -> dict[str, Any] | None:
        with self._lock:
            sb = self._find(id_or_name)
            return self._render(sb) if sb else None

    def count(self) -> int:
        with self._lock:
            self._advance_pending()
            return len(self._by_id)

    def add(
        self,
        name: str | None = None,
        labels: dict[str, str] | None = None,
        state: str = "started",
        **fields: Any,
    ) -> dict[str, Any]:
        with self._lock:
            sb = self._insert(name=name, labels=labels, state=state, fields=fields)
            return self._render(sb)

    def add_many(
        self, count: int, labels: dict[str, str] | None, state: str, name_prefix: str
    ) -> list[str]:
        with self._lock:
            return [
                self._insert(name=f"{name_prefix}{index}", labels=labels, state=state, fields={}).id
                for index in range(count)
            ]

    def set_state(
        self,
        id_or_name: str,
        state: str,
        *,
        error_reason: str | None = None,
        recoverable: bool = False,
        then: str | None = None,
        after: float = 0.0,
        **fields: Any,
    ) -> dict[str, Any] | None:
        with self._lock:
            sb = self._require(id_or_name)
            if state in ERROR_STATES:
                desired = sb.data["desiredState"]
            else:
                desired = TRANSITION_TARGET.get(state, state)
            self._move(sb, state, desired=fields.pop("desiredState", desired))
            if then:
                self._schedule(sb, then, after)
            sb.data["errorReason"] = error_reason if state in ERROR_STATES else None
            sb.data["recoverable"] = bool(recoverable)
            self._apply_fields(sb, fields)
            if state == "destroyed":
                return None
            return self._render(sb)

    def destroy_now(self, id_or_name: str) -> None:
        with self._lock:
            sb = self._require(id_or_name)
            self._move(sb, "destroyed")

    def live_ssh_tokens(self, sandbox_id: str | None = None) -> list[str]:
        with self._lock:
            now = self.clock.time()
            return [
                t.token
                for t in self._ssh.values()
                if t.expires > now and (sandbox_id is None or t.sandbox_id == sandbox_id)
            ]

    def ssh_token_counts(self) -> dict[str, int]:
        """Live SSH tokens per sandbox id."""
        with self._lock:
            now = self.clock.time()
            counts: dict[str, int] = {}
            for access in self._ssh.values():
                if access.expires > now:
                    counts[access.sandbox_id] = counts.get(access.sandbox_id, 0) + 1
            return counts

    def live_signed_previews(self) -> int:
        with self._lock:
            now = self.clock.time()
            return sum(1 for s in self._signed.values() if not s.revoked and s.expires > now)

    def set_list_lag(self, seconds: float) -> None:
        with self._lock:
            self._list_lag = max(0.0, float(seconds))
            self._snapshot = None

    def run_autostop(self) -> list[str]:
        """Stop (or, when ephemeral, delete) started sandboxes idle past their interval."""
        with self._lock:
            self._advance_pending()
            now = self.clock.time()
            acted = []
            for sb in list(self._by_id.values()):
                minutes = sb.data.get("autoStopInterval") or 0
                if sb.state != "started" or sb.data["desiredState"] != "started" or minutes <= 0:
                    continue
                if now - sb.last_activity <= minutes * 60:
                    continue
                if sb.data.get("autoDeleteInterval") == 0:
                    self._begin_delete(sb)
                else:
                    self._begin(sb, "stopping", "stopped")
                acted.append(sb.id)
            return acted

    def touch(self, sandbox_id: str) -> None:
        """Record activity (toolbox or preview traffic)."""
        with self._lock:
            sb = self._by_id.get(sandbox_id)
            if sb is not None:
                sb.last_activity = self.clock.time()

    def is_started(self, sandbox_id: str) -> bool:
        with self._lock:
            sb = self._find_by_id(sandbox_id)
            return sb is not None and sb.state == "started"

    def state_of(self, sandbox_id: str) -> str | None:
        with self._lock:
            sb = self._find_by_id(sandbox_id)
            return sb.state if sb else None

    # ----- API operations ---------------------------------------------------------------

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            labels = _string_map(body.get("labels"), "labels")
            env = _string_map(body.get("env"), "env")
            name = body.get("name")
            if name is not None and (not isinstance(name, str) or not name):
                raise ApiError(400, "name must be a non-empty string")
            fields = _create_fields(body, env)
            initial = "creating" if self.transition_seconds > 0 else "started"
            sb = self._insert(name=name, labels=labels, state=initial, fields=fields)
            if initial == "creating":
                self._schedule(sb, "started", self.transition_seconds)
            return self._render(sb)

    def get(self, id_or_name: str) -> dict[str, Any]:
        with self._lock:
            return self._render(self._require(id_or_name))

    def list_page(
        self,
        *,
        labels: str | None = None,
        states: Iterable[str] = (),
        limit: str | None = None,
        cursor: str | None = None,
        id_prefix: str | None = None,
        name_prefix: str | None = None,
    ) -> dict[str, Any]:
        with self._lock:
            page_size = _page_size(limit)
            wanted_labels = _decode_labels(labels)
            wanted_states = set(states)
            before_seq = _decode_cursor(cursor) if cursor else None
            page: list[_Sandbox] = []
            more = False
            for sb in self._listing_rows():
                if before_seq is not None and sb.seq >= before_seq:
                    continue
                if not _matches(sb.data, wanted_labels, wanted_states, id_prefix, name_prefix):
                    continue
                if len(page) == page_size:
                    more = True
                    break
                page.append(sb)
            return {
                "items": [self._list_item(sb) for sb in page],
                "nextCursor": _encode_cursor(page[-1].seq) if more else None,
            }

    def start(self, id_or_name: str) -> dict[str, Any]:
        with self._lock:
            sb = self._require(id_or_name)
            state, desired = sb.state, sb.data["desiredState"]
            if state == "started" and desired == "started":
                return self._render(sb)
            if state in ERROR_STATES:
                raise ApiError(400, "Sandbox is in an errored state")
            archiving_allowed = state in ("stopped", "archiving") and desired == "archived"
            if state != desired and not archiving_allowed:
                raise ApiError(409, "Sandbox state change in progress")
            if state not in STARTABLE_STATES:
                raise ApiError(400, "Sandbox is not in valid state")
            sb.preview_token = random_token(32)
            transitional = "restoring" if state in ("archived", "archiving") else "starting"
            if state == "paused":
                transitional = "resuming"
            self._begin(sb, transitional, "started")
            return self._render(sb)

    def stop(self, id_or_name: str) -> dict[str, Any]:
        with self._lock:
            sb = self._require(id_or_name)
            if sb.state not in ERROR_STATES and sb.state != sb.data["desiredState"]:
                raise ApiError(409, "Sandbox state change in progress")
            if sb.state not in STOPPABLE_STATES:
                raise ApiError(400, "Sandbox is not in a stoppable state")
            self._begin(sb, "stopping", "stopped")
            return self._render(sb)

    def delete(self, id_or_name: str) -> dict[str, Any]:
        with self._lock:
            sb = self._require(id_or_name)
            in_progress = sb.state not in ERROR_STATES and sb.state != sb.data["desiredState"]
            if in_progress and sb.state != "pending_build":
                raise ApiError(409, "Sandbox state change in progress")
            return self._begin_delete(sb)

    def archive(self, id_or_name: str) -> dict[str, Any]:
        with self._lock:
            sb = self._require(id_or_name)
            if sb.state != "stopped":
                raise ApiError(400, "Sandbox is not stopped")
            self._begin(sb, "archiving", "archived")
            return self._render(sb)

    def recover(self, id_or_name: str) -> dict[str, Any]:
        with self._lock:
            sb = self._require(id_or_name)
            if sb.state not in ERROR_STATES:
                raise ApiError(400, "Sandbox is not in an errored state")
            if not sb.data.get("recoverable"):
                raise ApiError(400, "Sandbox error is not recoverable")
            sb.data["errorReason"] = None
            sb.data["recoverable"] = False
            self._begin(sb, "starting", "started")
            return self._render(sb)

    def set_labels(self, id_or_name: str, body: Any) -> dict[str, Any]:
        with self._lock:
            sb = self._require(id_or_name)
            if not isinstance(body, dict) or "labels" not in body:
                raise ApiError(400, "labels must be an object")
            sb.data["labels"] = _string_map(body["labels"], "labels")
            sb.updated = self.clock.time()
            return {"labels": dict(sb.data["labels"])}

    def set_interval(self, id_or_name: str, field_name: str, raw: str, minimum: int) -> dict[str, Any]:
        with self._lock:
            sb = self._require(id_or_name)
            try:
                value = int(raw)
            except ValueError:
                raise ApiError(400, f"{field_name} must be an integer") from None
            if value < minimum:
                raise ApiError(400, f"{field_name} must be at least {minimum}")
            sb.data[field_name] = value
            sb.updated = self.clock.time()
            return self._render(sb)

    def set_public(self, id_or_name: str, raw: str) -> dict[str, Any]:
        with self._lock:
            sb = self._require(id_or_name)
            if raw not in ("true", "false"):
                raise ApiError(400, "isPublic must be true or false")
            sb.data["public"] = raw == "true"
            sb.updated = self.clock.time()
            return self._render(sb)

    def record_activity(self, sandbox_id: str) -> None:
        with self._lock:
            sb = self._find_by_id(sandbox_id)
            if sb is None:
                raise not_found(sandbox_id)
            sb.last_activity = self.clock.time()

    def create_ssh(self, id_or_name: str, minutes_raw: str | None) -> dict[str, Any]:
        with self._lock:
            sb = self._require(id_or_name)
            minutes = _positive_int(minutes_raw, DEFAULT_SSH_MINUTES, "expiresInMinutes")
            self._revoke_ssh(sb.id, None)
            now = self.clock.time()
            access = _SshToken(
                id=str(uuid.uuid4()),
                token=random_token(32),
                sandbox_id=sb.id,
                created=now,
                expires=now + minutes * 60,
            )
            self._ssh[access.token] = access
            return self._ssh_dto(access)

    def revoke_ssh(self, id_or_name: str, token: str | None) -> dict[str, Any]:
        with self._lock:
            sb = self._require(id_or_name)
            self._revoke_ssh(sb.id, token)
            return self._render(sb)

    def validate_ssh(self, token: str | None) -> dict[str, Any]:
        with self._lock:
            access = self._ssh.get(token or "")
            if access is None or access.expires <= self.clock.time():
                return {"valid": False, "sandboxId": None}
            return {"valid": True, "sandboxId": access.sandbox_id}

    def preview_url(self, id_or_name: str, port_raw: str) -> dict[str, Any]:
        with self._lock:
            sb = self._require(id_or_name)
            port = _port(port_raw)
            return {
                "sandboxId": sb.id,
                "url": f"{self.base_url}/proxy/{port}-{sb.id}/",
                "token": sb.preview_token,
            }

    def signed_preview_url(
        self, id_or_name: str, port_raw: str, seconds_raw: str | None
    ) -> dict[str, Any]:
        with self._lock:
            sb = self._require(id_or_name)
            port = _port(port_raw)
            seconds = _signed_lifetime(seconds_raw)
            signed = _SignedPreview(
                token=random_token(16),
                sandbox_id=sb.id,
                port=port,
                expires=self.clock.time() + seconds,
            )
            self._signed[signed.token] = signed
            return {
                "sandboxId": sb.id,
                "port": port,
                "token": signed.token,
                "url": f"{self.base_url}/preview/{signed.token}/",
            }

    def expire_signed_preview(self, id_or_name: str, port_raw: str, token: str) -> None:
        with self._lock:
            sb = self._require(id_or_name)
            port = _port(port_raw)
            signed = self._signed.get(token)
            if signed is None or signed.sandbox_id != sb.id or signed.port != port:
                raise ApiError(404, "Signed preview URL not found")
            signed.revoked = True

    def toolbox_proxy_url(self, id_or_name: str) -> dict[str, Any]:
        with self._lock:
            self._require(id_or_name)
            return {"url": self.toolbox_url}

    # ----- preview proxy ----------------------------------------------------------------

    def open_signed_preview(self, token: str) -> PreviewAccess:
        with self._lock:
            signed = self._signed.get(token)
            if signed is None:
                return PreviewAccess(403, "Invalid preview token")
            if signed.revoked or signed.expires <= self.clock.time():
                return PreviewAccess(410, "This preview link has expired")
            sb = self._find_by_id(signed.sandbox_id)
            if sb is None:
                return PreviewAccess(410, "This sandbox no longer exists")
            if sb.state != "started":
                return PreviewAccess(409, f"Sandbox is not running (state: {sb.state})")
            self._preview_visited(sb)
            return PreviewAccess(200, "ok", sandbox_name=sb.data["name"], port=signed.port)

    def open_standard_preview(self, sandbox_id: str, port: int, token: str | None) -> PreviewAccess:
        with self._lock:
            sb = self._find_by_id(sandbox_id)
            if sb is None:
                return PreviewAccess(404, "Sandbox not found")
            if not token or token != sb.preview_token:
                return PreviewAccess(401, "Missing or invalid preview token")
            if sb.state != "started":
                return PreviewAccess(409, f"Sandbox is not running (state: {sb.state})")
            self._preview_visited(sb)
            return PreviewAccess(200, "ok", sandbox_name=sb.data["name"], port=port)

    def preview_token_of(self, sandbox_id: str) -> str | None:
        with self._lock:
            sb = self._find_by_id(sandbox_id)
            return sb.preview_token if sb else None

    def _preview_visited(self, sb: _Sandbox) -> None:
        if self.preview_counts_as_activity:
            sb.last_activity = self.clock.time()

    # ----- internals --------------------------------------------------------------------

    def _insert(
        self,
        *,
        name: str | None,
        labels: dict[str, str] | None,
        state: str,
        fields: dict[str, Any],
    ) -> _Sandbox:
        sandbox_id = fields.pop("id", None) or str(uuid.uuid4())
        name = name or sandbox_id
        if name in self._by_name:
            raise ApiError(409, f"Sandbox with name {name} already exists")
        if sandbox_id in self._by_id:
            raise ApiError(409, f"Sandbox with ID {sandbox_id} already exists")
        now = self.clock.time()
        self._seq += 1
        sb = _Sandbox(
            data=_default_data(sandbox_id, name, labels or {}, state, now),
            seq=self._seq,
            last_activity=now,
            updated=now,
            preview_token=random_token(32),
        )
        self._apply_fields(sb, fields)
        self._by_id[sandbox_id] = sb
        self._by_name[name] = sandbox_id
        return sb

    def _apply_fields(self, sb: _Sandbox, fields: dict[str, Any]) -> None:
        fields = dict(fields)
        if "lastActivityAt" in fields:
            sb.last_activity = parse_iso(fields.pop("lastActivityAt"))
        if "updatedAt" in fields:
            sb.updated = parse_iso(fields.pop("updatedAt"))
        if "name" in fields:
            self._rename(sb, fields.pop("name"))
        fields.pop("toolboxProxyUrl", None)
        sb.data.update(fields)

    def _rename(self, sb: _Sandbox, new_name: str) -> None:
        if self._by_name.get(sb.data["name"]) == sb.id:
            del self._by_name[sb.data["name"]]
        sb.data["name"] = new_name
        self._by_name[new_name] = sb.id

    def _render(self, sb: _Sandbox) -> dict[str, Any]:
        out = copy.deepcopy(sb.data)
        out["updatedAt"] = iso(sb.updated)
        out["lastActivityAt"] = iso(sb.last_activity)
        out["toolboxProxyUrl"] = self.toolbox_url
        return out

    def _list_item(self, sb: _Sandbox) -> dict[str, Any]:
        full = self._render(sb)
        return {key: full[key] for key in LIST_ITEM_KEYS if key in full}

    def _ssh_dto(self, access: _SshToken) -> dict[str, Any]:
        port_part = "" if self.ssh_port == 22 else f"-p {self.ssh_port} "
        return {
            "id": access.id,
            "sandboxId": access.sandbox_id,
            "token": access.token,
            "expiresAt": iso(access.expires),
            "createdAt": iso(access.created),
            "updatedAt": iso(access.created),
            "sshCommand": f"ssh {port_part}{access.token}@{self.ssh_host}",
        }

    def _revoke_ssh(self, sandbox_id: str, token: str | None) -> None:
        doomed = [
            t.token
            for t in self._ssh.values()
            if t.sandbox_id == sandbox_id and (token is None or t.token == token)
        ]
        for value in doomed:
            del self._ssh[value]

    def _find(self, id_or_name: str) -> _Sandbox | None:
        sb = self._by_id.get(id_or_name)
        if sb is None:
            sandbox_id = self._by_name.get(id_or_name)
            sb = self._by_id.get(sandbox_id) if sandbox_id else None
        if sb is not None:
            self._advance(sb)
            if sb.id not in self._by_id:
                return None
        return sb

    def _find_by_id(self, sandbox_id: str) -> _Sandbox | None:
        sb = self._by_id.get(sandbox_id)
        if sb is not None:
            self._advance(sb)
            if sb.id not in self._by_id:
                return None
        return sb

    def _require(self, id_or_name: str) -> _Sandbox:
        sb = self._find(id_or_name)
        if sb is None:
            raise not_found(id_or_name)
        return sb

    def _begin(self, sb: _Sandbox, transitional: str, target: str) -> None:
        """Enter a transition; with no transition time it completes at once."""
        if self.transition_seconds <= 0:
            self._move(sb, target)
            return
        self._move(sb, transitional, desired=target)
        self._schedule(sb, target, self.transition_seconds)

    def _begin_delete(self, sb: _Sandbox) -> dict[str, Any]:
        """Accept a delete: free the name at once, answer ``destroying``."""
        millis = int(self.clock.time() * 1000)
        self._rename(sb, f"DESTROYED_{sb.data['name']}_{millis}")
        self._move(sb, "destroying", desired="destroyed")
        answer = self._render(sb)
        self._schedule(sb, "destroyed", self.transition_seconds)
        self._advance(sb)
        return answer

    def _schedule(self, sb: _Sandbox, target: str, after: float) -> None:
        sb.pending = _Pending(target=target, due=self.clock.time() + max(0.0, after))
        self._pending_ids.add(sb.id)

    def _move(self, sb: _Sandbox, state: str, *, desired: str | None = None) -> None:
        was_started = sb.state == "started"
        now = self.clock.time()
        sb.data["state"] = state
        sb.data["desiredState"] = desired or TRANSITION_TARGET.get(state, state)
        sb.pending = None
        self._pending_ids.discard(sb.id)
        sb.updated = now
        sb.last_activity = now
        if state == "destroyed":
            self._forget(sb)
        if was_started and state != "started":
            self._notify_left_started(sb.id)

    def _forget(self, sb: _Sandbox) -> None:
        self._by_id.pop(sb.id, None)
        if self._by_name.get(sb.data["name"]) == sb.id:
            del self._by_name[sb.data["name"]]
        self._revoke_ssh(sb.id, None)
        for token in [t for t, s in self._signed.items() if s.sandbox_id == sb.id]:
            del self._signed[token]

    def _advance(self, sb: _Sandbox) -> None:
        pending = sb.pending
        if pending is not None and self.clock.time() >= pending.due:
            self._move(sb, pending.target)

    def _advance_pending(self) -> None:
        for sandbox_id in list(self._pending_ids):
            sb = self._by_id.get(sandbox_id)
            if sb is None:
                self._pending_ids.discard(sandbox_id)
            else:
                self._advance(sb)

    def _listing_rows(self) -> list[_Sandbox]:
        """Sandboxes newest first; with a list lag, a snapshot up to that old."""
        self._advance_pending()
        if self._list_lag <= 0:
            return list(reversed(self._by_id.values()))
        now = self.clock.time()
        if self._snapshot is None or now - self._snapshot.taken_at >= self._list_lag:
            rows = [
                _Sandbox(
                    data=copy.deepcopy(sb.data),
                    seq=sb.seq,
                    last_activity=sb.last_activity,
                    updated=sb.updated,
                    preview_token="",
                )
                for sb in reversed(self._by_id.values())
            ]
            self._snapshot = _ListSnapshot(taken_at=now, rows=rows)
        return self._snapshot.rows

    def _notify_left_started(self, sandbox_id: str) -> None:
        if self.on_leave_started is not None:
            self.on_leave_started(sandbox_id)


def _default_data(
    sandbox_id: str, name: str, labels: dict[str, str], state: str, now: float
) -> dict[str, Any]:
    desired = TRANSITION_TARGET.get(state, "started" if state in ERROR_STATES else state)
    return {
        "id": sandbox_id,
        "organizationId": ORGANIZATION_ID,
        "name": name,
        "snapshot": DEFAULT_SNAPSHOT,
        "user": "daytona",
        "env": {},
        "labels": dict(labels),
        "public": False,
        "networkBlockAll": False,
        "kvm": False,
        "target": "us",
        "cpu": 1,
        "gpu": 0,
        "memory": 1,
        "disk": 3,
        "state": state,
        "desiredState": desired,
        "errorReason": None,
        "recoverable": False,
        "backupState": "None",
        "autoStopInterval": 15,
        "autoArchiveInterval": 10080,
        "autoDeleteInterval": -1,
        "volumes": [],
        "createdAt": iso(now),
    }


def _create_fields(body: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
    """The create body's settings, translated to stored fields."""
    fields: dict[str, Any] = {"env": env}
    if body.get("snapshot"):
        fields["snapshot"] = body["snapshot"]
    elif body.get("buildInfo"):
        fields["snapshot"] = None
    for key in ("user", "target"):
        if body.get(key):
            fields[key] = str(body[key])
    for key in ("public", "networkBlockAll", "kvm"):
        if key in body and body[key] is not None:
            fields[key] = bool(body[key])
    for key in ("cpu", "gpu", "memory", "disk"):
        if body.get(key) is not None:
            fields[key] = _int_field(body[key], key, minimum=0)
    intervals = (("autoStopInterval", 0), ("autoArchiveInterval", 0), ("autoDeleteInterval", -1))
    for key, minimum in intervals:
        if body.get(key) is not None:
            fields[key] = _int_field(body[key], key, minimum=minimum)
    if isinstance(body.get("volumes"), list):
        fields["volumes"] = body["volumes"]
    return fields


def _int_field(value: Any, name: str, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
        raise ApiError(400, f"{name} must be an integer")
    if value < minimum:
        raise ApiError(400, f"{name} must not be less than {minimum}")
    return int(value)


def _string_map(value: Any, name: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ApiError(400, f"{name} must be an object of strings")
    return dict(value)


def _matches(
    data: dict[str, Any],
    labels: dict[str, str],
    states: set[str],
    id_prefix: str | None,
    name_prefix: str | None,
) -> bool:
    if states and data["state"] not in states:
        return False
    if id_prefix and not data["id"].lower().startswith(id_prefix.lower()):
        return False
    if name_prefix and not data["name"].lower().startswith(name_prefix.lower()):
        return False
    own = data["labels"]
    return all(own.get(key) == value for key, value in labels.items())


def _page_size(raw: str | None) -> int:
    if raw is None:
        return DEFAULT_PAGE_SIZE
    try:
        size = int(raw)
    except ValueError:
        raise ApiError(400, "limit must be an integer number") from None
    if size < 1:
        raise ApiError(400, "limit must not be less than 1")
    if size > MAX_PAGE_SIZE:
        raise ApiError(400, f"limit must not be greater than {MAX_PAGE_SIZE}")
    return size


def _decode_labels(raw: str | None) -> dict[str, str]:
    if not raw:
        return {}
    try:
        labels = json.loads(raw)
    except json.JSONDecodeError:
        raise ApiError(400, "Invalid labels JSON") from None
    return _string_map(labels, "labels")


def _encode_cursor(seq: int) -> str:
    return base64.urlsafe_b64encode(f"seq:{seq}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> int:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        prefix, _, number = base64.urlsafe_b64decode(padded).decode().partition(":")
        if prefix != "seq":
            raise ValueError(prefix)
        return int(number)
    except ValueError:
        raise ApiError(400, "Invalid cursor") from None


def _port(raw: str) -> int:
    try:
        port = int(raw)
    except ValueError:
        raise ApiError(400, "Invalid port") from None
    if not 1 <= port <= 65535:
        raise ApiError(400, "Invalid port")
    return port


def _positive_int(raw: str | None, default: int, name: str) -> int:
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, f"{name} must be an integer") from None
    if value < 1:
        raise ApiError(400, f"{name} must be a positive integer")
    return value


def _signed_lifetime(raw: str | None) -> int:
    message = f"expiresInSeconds must be between 1 and {MAX_SIGNED_SECONDS}"
    if raw is None or raw == "":
        return DEFAULT_SIGNED_SECONDS
    try:
        seconds = int(raw)
    except ValueError:
        raise ApiError(400, message) from None
    if not 1 <= seconds <= MAX_SIGNED_SECONDS:
        raise ApiError(400, message)
    return seconds
