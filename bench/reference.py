"""The original design's launch flow, kept as the yardstick the portal is measured against.

One call after another through the Daytona SDK, as that design described it: list the user's
sandbox by its labels, get it, start it if it is stopped (create it if there is none), then
create the SSH access, the preview link for port 3000 and the link for port 22222 (the
terminal). It runs against the same fake Daytona and the same sandbox state as the portal.

The client is built with ``use_deprecated_polling=True``, as the portal's provider builds its
own: the fake does not emulate Daytona's event stream, and a client that tried to open it
would pay for that in every run, which is no part of either flow.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

from daytona import CreateSandboxFromSnapshotParams, Daytona, DaytonaConfig, ListSandboxesQuery

PREVIEW_PORT = 3000
TERMINAL_PORT = 22222
SSH_MINUTES = 120
STOPPED_STATES = {"stopped", "archived", "paused"}


@dataclass
class ReferenceAccess:
    sandbox_id: str
    ssh_command: str
    preview_url: str
    terminal_url: str


def client(*, api_key: str, api_url: str, target: str = "us") -> Daytona:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return Daytona(DaytonaConfig(api_key=api_key, api_url=api_url, target=target, use_deprecated_polling=True))


def launch(daytona: Daytona, *, labels: dict[str, str], name: str) -> ReferenceAccess:
    """The user's sandbox, running, with access to it. Must run in the main thread: the SDK's
    waits arm ``SIGALRM``."""
    found = next(iter(daytona.list(ListSandboxesQuery(labels=labels))), None)
    if found is None:
        sandbox = daytona.create(CreateSandboxFromSnapshotParams(name=name, labels=labels), timeout=60)
    else:
        sandbox = daytona.get(found.id)
        if _state(sandbox) in STOPPED_STATES:
            sandbox.start(timeout=60)
    ssh = sandbox.create_ssh_access(expires_in_minutes=SSH_MINUTES)
    preview = sandbox.get_preview_link(PREVIEW_PORT)
    terminal = sandbox.get_preview_link(TERMINAL_PORT)
    return ReferenceAccess(
        sandbox_id=sandbox.id, ssh_command=ssh.ssh_command, preview_url=preview.url, terminal_url=terminal.url
    )


def _state(sandbox) -> str:
    state = sandbox.state
    return str(getattr(state, "value", state))
