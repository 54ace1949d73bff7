"""Every state change of a sandbox, written once, one module per capability.

The API, the pages, the terminal's websocket, the preview relay and the SSH gateway, the admin,
Celery tasks and management commands all call these functions, and none of them talks to a
provider: only the services do. Failures reach them as one error type, :class:`SandboxError`.

- :mod:`.errors`     ``SandboxError`` and the translation of provider failures into it
- :mod:`.rows`       names and labels, one row per user, the audit log, mirroring a provider's answer
- :mod:`.locks`      the row lock of one action, row locks in bulk, exclusive runs
- :mod:`.launch`     create, resume or reuse the user's sandbox; the launcher's status poll
- :mod:`.access`     access (SSH token, links): minted, kept sealed, reused, expired early
- :mod:`.activity`   what keeps a sandbox from the idle stop; the provider's idle timer
- :mod:`.lifecycle`  stop (one, many, the idle policy), start, delete, sync
- :mod:`.reconcile`  make the rows true to what really runs
- :mod:`.terminals`  PTY sessions: the web terminal's (minted, bounded, reaped), the SSH gateway's
- :mod:`.gateways`   the preview relay's routes (every provider), the SSH gateway where a provider has none
- :mod:`.controls`   the owner's stop, restart and reset
- :mod:`.ledger`     the access ledger: every credential and live session, and their revokes
- :mod:`.timeline`   why a sandbox runs or stopped, from the audit log and the activity marks
- :mod:`.warnings`   the email before an idle stop
- :mod:`.webhooks`   providers' webhooks, verified and applied once
- :mod:`.live`       telling the owner's open pages that their sandbox changed
- :mod:`.apps`       a template's app: its start command after every start, its log, its readiness
- :mod:`.templates`  template versions prepared with the providers (``environments`` decides when)
- :mod:`.configuration`  what keeps the configured provider from working, for system checks and readiness
"""

from sandboxes.providers.base import ErrorKind

from .access import home_directory, links_to_expire, stored_access, valid_access
from .activity import (
    backstop_minutes,
    idle_period_bounds,
    idle_stop_at,
    idle_warning_at,
    sandbox_apply_backstop,
    sandbox_extend,
    sandbox_record_activity,
    sandbox_refresh_activity,
    sandbox_set_preferences,
)
from .apps import AppStatus, app_status
from .configuration import PROVIDER_NAMES, provider_problems, provider_reachable
from .controls import sandbox_reset, sandbox_restart, sandbox_stop_own
from .errors import SandboxError
from .gateways import (
    PreviewRoute,
    Process,
    SshRefusal,
    SshTarget,
    SshTokenCheck,
    preview_open_stream,
    preview_owner,
    preview_record_activity,
    preview_route,
    ssh_connection_check,
    ssh_gateway_needed,
    ssh_port_connect,
    ssh_process_open,
    ssh_record_activity,
    ssh_terminal_open,
    ssh_token_check,
)
from .launch import Launch, sandbox_launch, sandbox_status
from .ledger import access_ledger, access_revoke, access_revoke_all, grant_revocable, grant_state
from .lifecycle import (
    StopReport,
    sandbox_delete,
    sandbox_start,
    sandbox_stop,
    sandbox_sync,
    sandboxes_for_stop,
    sandboxes_stop_idle,
    sandboxes_stop_many,
    will_stop,
)
from .locks import exclusive_lock
from .reconcile import Orphan, ReconcileReport, sandboxes_reconcile
from .rows import (
    LABEL_DEPLOYMENT,
    LABEL_MANAGED,
    LABEL_OWNER,
    SandboxLimit,
    managed_labels,
    own_row,
    own_templates,
    owner_labels,
    remote_name_for,
    sandbox_get_or_create_row,
    template_named,
    templates_offered,
)
from .templates import template_prepare, template_prepared
from .terminals import (
    Terminal,
    sandbox_remote_state,
    terminal_open,
    terminal_release,
    terminal_renew,
    terminals_reap,
)
from .timeline import TimelineEntry, sandbox_timeline
from .webhooks import webhook_secret_valid

__all__ = [
    "own_templates",
    "template_named",
    "templates_offered",
    "AppStatus",
    "app_status",
    "own_row",
    "SandboxLimit",
    "template_prepare",
    "template_prepared",
    "TimelineEntry",
    "access_ledger",
    "access_revoke",
    "access_revoke_all",
    "grant_revocable",
    "grant_state",
    "sandbox_timeline",
    "LABEL_DEPLOYMENT",
    "LABEL_MANAGED",
    "LABEL_OWNER",
    "PROVIDER_NAMES",
    "ErrorKind",
    "Launch",
    "Orphan",
    "Process",
    "ReconcileReport",
    "SandboxError",
    "SshRefusal",
    "SshTarget",
    "SshTokenCheck",
    "StopReport",
    "Terminal",
    "backstop_minutes",
    "exclusive_lock",
    "home_directory",
    "idle_period_bounds",
    "idle_stop_at",
    "idle_warning_at",
    "links_to_expire",
    "managed_labels",
    "owner_labels",
    "PreviewRoute",
    "preview_open_stream",
    "preview_owner",
    "preview_record_activity",
    "preview_route",
    "provider_problems",
    "provider_reachable",
    "remote_name_for",
    "sandbox_apply_backstop",
    "sandbox_delete",
    "sandbox_extend",
    "sandbox_get_or_create_row",
    "sandbox_launch",
    "sandbox_record_activity",
    "sandbox_reset",
    "sandbox_restart",
    "sandbox_refresh_activity",
    "sandbox_remote_state",
    "sandbox_set_preferences",
    "sandbox_start",
    "sandbox_status",
    "sandbox_stop_own",
    "sandbox_stop",
    "sandbox_sync",
    "sandboxes_for_stop",
    "sandboxes_reconcile",
    "sandboxes_stop_idle",
    "sandboxes_stop_many",
    "ssh_connection_check",
    "ssh_gateway_needed",
    "ssh_port_connect",
    "ssh_process_open",
    "ssh_record_activity",
    "ssh_terminal_open",
    "ssh_token_check",
    "stored_access",
    "valid_access",
    "terminal_open",
    "terminal_release",
    "terminal_renew",
    "terminals_reap",
    "webhook_secret_valid",
    "will_stop",
]
