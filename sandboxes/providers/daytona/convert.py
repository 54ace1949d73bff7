"""Daytona's words and DTOs in the portal's terms, and the portal's sandbox spec in Daytona's.

State words map onto :class:`RemoteState` in one place (:func:`remote_state`); API answers
become the contract's frozen dataclasses, so no SDK object leaves the package.
"""

from __future__ import annotations

import shlex
from datetime import UTC, datetime
from typing import Any

from daytona import Image
from daytona_api_client import CreateBuildInfo, CreateSandbox

from ..base import RemoteSandbox, RemoteState, SandboxSpec, SignedLink, SshAccess

_REMOTE_STATES = {
    "creating": RemoteState.CREATING,
    "pending_build": RemoteState.CREATING,
    "building_snapshot": RemoteState.CREATING,
    "pulling_snapshot": RemoteState.CREATING,
    "starting": RemoteState.STARTING,
    "restoring": RemoteState.STARTING,
    "resuming": RemoteState.STARTING,
    # Operator-initiated operations that leave the sandbox as it was: callers wait them out
    # like a start rather than acting on a sandbox that is busy.
    "snapshotting": RemoteState.STARTING,
    "forking": RemoteState.STARTING,
    "resizing": RemoteState.STARTING,
    "started": RemoteState.STARTED,
    "stopping": RemoteState.STOPPING,
    "archiving": RemoteState.STOPPING,
    "pausing": RemoteState.STOPPING,
    "stopped": RemoteState.STOPPED,
    "paused": RemoteState.STOPPED,
    "archived": RemoteState.ARCHIVED,
    "error": RemoteState.ERROR,
    "build_failed": RemoteState.ERROR,
    "destroying": RemoteState.DESTROYING,
    "destroyed": RemoteState.DESTROYING,
}

RUNNING = frozenset({RemoteState.STARTED})
AT_REST = frozenset({RemoteState.STOPPED, RemoteState.ARCHIVED})
HEADING_TO_RUNNING = frozenset({RemoteState.STARTING, RemoteState.STARTED})
HEADING_TO_REST = frozenset({RemoteState.STOPPING}) | AT_REST


def remote_state(daytona_state: str, desired_state: str = "") -> RemoteState:
    """The portal's state for a Daytona state word and the state Daytona is taking it to
    (``destroyed`` means gone: see callers).

    The desired state wins where a change was accepted but the state word has not moved yet:
    any state with ``desiredState: destroyed`` is being destroyed (an archived sandbox keeps
    the word ``archived`` until it is gone), and a stopped or archived sandbox asked to start is
    starting (an archived one shows ``archived`` until its restore begins).
    """
    state = _REMOTE_STATES.get(daytona_state, RemoteState.UNKNOWN)
    if desired_state == "destroyed":
        return RemoteState.DESTROYING
    if desired_state == "started" and state in (RemoteState.STOPPED, RemoteState.ARCHIVED):
        return RemoteState.STARTING
    if desired_state in ("stopped", "archived") and state is RemoteState.STARTED:
        return RemoteState.STOPPING
    return state


def state_word(state: Any) -> str:
    return str(getattr(state, "value", state) or "unknown")


def remote_sandbox(dto: Any) -> RemoteSandbox:
    """A sandbox (the API's DTO, a list item or the SDK's ``Sandbox``) in the portal's terms."""
    word = state_word(dto.state)
    desired = state_word(getattr(dto, "desired_state", None) or "")
    return RemoteSandbox(
        id=dto.id,
        name=dto.name,
        state=remote_state(word, "" if desired == "unknown" else desired),
        labels=dict(dto.labels or {}),
        backend_state=word,
        cpu=dto.cpu,
        memory_gb=dto.memory,
        disk_gb=dto.disk,
        error_reason=dto.error_reason or "",
        recoverable=bool(dto.recoverable),
        build_failed=word == "build_failed",
        last_activity_at=timestamp(dto.last_activity_at),
        created_at=timestamp(dto.created_at),
        # An upper bound, not the moment itself: Daytona moves ``updatedAt`` on every write to
        # the sandbox's row (labels, intervals, a state change). A change the portal learns of
        # late (a stop behind its back) is dated no later than this, so it is billed up to
        # this at most.
        state_changed_at=timestamp(getattr(dto, "updated_at", None)),
    )


def sandbox_page(response: Any) -> tuple[list[RemoteSandbox], str | None]:
    sandboxes = [remote_sandbox(item) for item in response.items if state_word(item.state) != "destroyed"]
    return sandboxes, response.next_cursor or None


def timestamp(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def ssh_access(dto: Any) -> SshAccess:
    host, port = ssh_destination(dto.ssh_command)
    return SshAccess(token=dto.token, host=host, port=port, command=dto.ssh_command, expires_at=dto.expires_at)


def signed_link(dto: Any, expires_at: datetime) -> SignedLink:
    return SignedLink(url=dto.url, expires_at=expires_at, token=dto.token, port=dto.port)


def ssh_destination(command: str) -> tuple[str, int]:
    """Host and port of an ``ssh [-p PORT] TOKEN@HOST`` command line."""
    host, port = "", 22
    words = shlex.split(command)
    for index, word in enumerate(words):
        if word == "-p" and index + 1 < len(words) and words[index + 1].isdigit():
            port = int(words[index + 1])
        elif word.startswith("-p") and word[2:].isdigit():
            port = int(word[2:])
        elif "@" in word and not word.startswith("-"):
            host = word.rsplit("@", 1)[1]
    return host, port


def create_request(spec: SandboxSpec, *, target: str, default_image: str, default_snapshot: str) -> CreateSandbox:
    """The body of ``POST /sandbox`` for ``spec``; the provider's default image and snapshot
    serve when the spec names neither. A template version is the snapshot of its name."""
    fields: dict[str, Any] = {
        "name": spec.name,
        "labels": dict(spec.labels),
        "env": dict(spec.env),
        "auto_stop_interval": spec.auto_stop_minutes,
        "public": False,
        "target": target or None,
    }
    snapshot = spec.template or spec.snapshot or ("" if spec.image else default_snapshot)
    image = spec.image or default_image
    if snapshot:
        fields["snapshot"] = snapshot  # resources come from the snapshot
    elif image:
        fields["build_info"] = CreateBuildInfo(dockerfile_content=Image.base(image).dockerfile())
        fields.update(cpu=spec.cpu, memory=spec.memory_gb, disk=spec.disk_gb)
    return CreateSandbox(**fields)
