"""A template's app: its start command, run in the background after every start of the sandbox
(so the app on the preview port comes back after a resume), its log, and whether it is ready
(something listens on the template's readiness port)."""

from __future__ import annotations

import logging
import secrets
import shlex
from dataclasses import dataclass

from sandboxes.models import Sandbox
from sandboxes.providers.base import ProviderError, SandboxProvider
from sandboxes.providers.templates import APP_LOG

from .rows import provider_for

log = logging.getLogger(__name__)

APP_PID = ".joepro/app.pid"
KEPT_LOG_BYTES = 65536  # of the runs before, at each start: the log in the user's home stays small
SHOWN_LOG_BYTES = 16384
READY_MARK = "joepro-app-ready"
LOG_MARK = "joepro-app-log"


@dataclass(frozen=True)
class AppStatus:
    command: str
    port: int
    ready: bool
    log: str


def start_script(command: str) -> str:
    """Ends the app a previous start left (its whole process group, when the pid it kept is
    still that app: a pid from before a stop may name anything now), keeps the tail of the log
    and starts ``command`` in a session of its own, from the home, its output appended to the
    log. Returns at once."""
    token = secrets.token_hex(8)
    return f"""
cd ~ && mkdir -p .joepro
if read -r pid mark < {APP_PID} 2>/dev/null && tr '\\0' '\\n' < "/proc/$pid/environ" 2>/dev/null \\
    | grep -qx "JOEPRO_APP=$mark"; then kill -TERM -- "-$pid" 2>/dev/null; fi
tail -c {KEPT_LOG_BYTES} {APP_LOG} > {APP_LOG}.kept 2>/dev/null; mv {APP_LOG}.kept {APP_LOG}
echo "--- started $(date -u '+%Y-%m-%d %H:%M:%S') UTC: "{shlex.quote(command[:200])} >> {APP_LOG}
JOEPRO_APP={token} setsid sh -c {shlex.quote(command)} >> {APP_LOG} 2>&1 < /dev/null &
echo "$! {token}" > {APP_PID}
"""


def start_app(sandbox: Sandbox, provider: SandboxProvider) -> None:
    """Run the template's start command in the started sandbox; best effort: a failure is
    logged and the launch goes on (the user still has a terminal)."""
    command = sandbox.template.start_command.strip()
    if not command or not sandbox.remote_id:
        return
    try:
        result = provider.execute(sandbox.remote_id, start_script(command), timeout=15)
    except ProviderError as exc:
        log.warning("start command of %s could not run: %s", sandbox.remote_name, exc)
        return
    if result.exit_code != 0:
        log.warning("start command of %s: exit %s: %s", sandbox.remote_name, result.exit_code, result.output[-300:])


def app_status(*, sandbox: Sandbox) -> AppStatus | None:
    """The template's app in the running sandbox: its log's tail and whether its port is open.
    None when the sandbox does not run or could not be asked."""
    if not sandbox.is_running or not sandbox.remote_id:
        return None
    template = sandbox.template
    port = template.ready_port
    probe = f"bash -c 'exec 3<>/dev/tcp/127.0.0.1/{port}' 2>/dev/null"
    script = (
        f"if command -v bash >/dev/null && {probe}; then echo {READY_MARK}; fi; "
        f"echo {LOG_MARK}; tail -c {SHOWN_LOG_BYTES} ~/{APP_LOG} 2>/dev/null"
    )
    try:
        result = provider_for(sandbox).execute(sandbox.remote_id, script, timeout=10)
    except ProviderError as exc:
        log.info("app status of %s: %s", sandbox.remote_name, exc)
        return None
    head, _, tail = result.output.partition(LOG_MARK + "\n")
    return AppStatus(command=template.start_command, port=port, ready=READY_MARK in head, log=tail)
