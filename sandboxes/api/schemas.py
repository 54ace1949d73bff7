"""The shapes of the JSON API's bodies, as the OpenAPI schema shows them."""

from __future__ import annotations

from ninja import Field, Schema
from pydantic import ConfigDict

# --- schemas ----------------------------------------------------------------------------------


class LaunchIn(Schema):
    """The launch takes at most a template's slug from the body (none: the default template);
    unknown fields (userId, email...) are ignored."""

    model_config = ConfigDict(extra="ignore")
    template: str | None = Field(default=None, max_length=32)


class Resources(Schema):
    cpu: int
    memoryGb: int
    diskGb: int


class BudgetRefusal(Schema):
    """The monthly limit a ``budget_exceeded`` refusal is about: money as decimal strings in
    ``currency`` (cost only), hours as decimal strings."""

    limit: str
    allowed: str
    used: str
    currency: str | None = None
    resetsAt: str
    action: str


class ErrorDetail(Schema):
    code: str
    message: str
    budget: BudgetRefusal | None = None


class TemplateRef(Schema):
    slug: str
    name: str


class AppOut(Schema):
    template: TemplateRef
    command: str
    port: int
    running: bool
    ready: bool
    log: str


class TemplateOut(Schema):
    slug: str
    name: str
    description: str
    default: bool
    hasSandbox: bool


class TemplatesOut(Schema):
    templates: list[TemplateOut]
    maxSandboxes: int


class SandboxOut(Schema):
    id: str | None
    name: str
    template: TemplateRef
    state: str
    provider: str
    resources: Resources
    createdAt: str | None
    lastStartedAt: str | None
    lastActivityAt: str | None
    idleStopAt: str | None
    lastError: ErrorDetail | None
    lastStoppedAt: str | None
    stateChangedAt: str | None
    lastActivitySource: str | None
    idleMinutes: int
    idleWarningAt: str | None
    keepAwakeUntil: str | None


class SshOut(Schema):
    command: str
    token: str
    host: str
    port: int
    expiresAt: str


class PreviewOut(Schema):
    url: str
    port: int
    expiresAt: str


class TerminalOut(Schema):
    url: str
    expiresAt: str
    daytonaUrl: str | None = None


class AccessOut(Schema):
    ssh: SshOut
    preview: PreviewOut
    terminal: TerminalOut


class LaunchOut(Schema):
    sandbox: SandboxOut
    access: AccessOut


class PendingOut(Schema):
    sandbox: SandboxOut


class ErrorOut(Schema):
    error: ErrorDetail


class InternalErrorDetail(ErrorDetail):
    id: str


class InternalErrorOut(Schema):
    error: InternalErrorDetail


ERRORS = {
    400: ErrorOut,
    401: ErrorOut,
    403: ErrorOut,
    404: ErrorOut,
    409: ErrorOut,
    429: ErrorOut,
    500: InternalErrorOut,
    503: ErrorOut,
}


class HeartbeatIn(Schema):
    """What the page saw since its last beat. Unknown fields are ignored."""

    model_config = ConfigDict(extra="ignore")
    interacted: bool = False
    template: str | None = Field(default=None, max_length=32)


class HeartbeatOut(Schema):
    ok: bool
    counted: bool


# --- the dashboard ----------------------------------------------------------------------------


class BodyIn(Schema):
    """Unknown fields (userId, email...) are ignored, never trusted."""

    model_config = ConfigDict(extra="ignore")


class ExtendIn(BodyIn):
    minutes: int | None = None
    template: str | None = Field(default=None, max_length=32)


class ResetIn(BodyIn):
    confirm: str = ""
    template: str | None = Field(default=None, max_length=32)  # the sandbox to reset (by its template)
    newTemplate: str | None = Field(default=None, max_length=32)  # what it becomes (default: what it was)


class PreferencesIn(BodyIn):
    template: str | None = Field(default=None, max_length=32)
    idleMinutes: int | None = None
    emailBeforeStop: bool | None = None


class PreferencesOut(Schema):
    idleMinutes: int | None
    emailBeforeStop: bool
    minMinutes: int
    maxMinutes: int
    defaultMinutes: int


class EditorOut(Schema):
    hostAlias: str
    sshConfig: str
    vscodeUrl: str


class IdleOut(Schema):
    minMinutes: int
    maxMinutes: int
    defaultMinutes: int
    warningMinutes: int
    extendChoicesMinutes: list[int]
    extendMaxMinutes: int
    emailBeforeStop: bool


class LiveOut(Schema):
    websocketUrl: str | None
    pollSeconds: int


class DashboardOut(Schema):
    sandbox: SandboxOut
    access: AccessOut | None
    editor: EditorOut | None
    idle: IdleOut
    live: LiveOut
    now: str


class LedgerEntryOut(Schema):
    id: str
    kind: str
    label: str
    createdAt: str | None
    expiresAt: str | None
    lastUsedAt: str | None
    lastUsedFrom: str | None
    parentId: str | None
    state: str
    revocable: bool


class LedgerOut(Schema):
    entries: list[LedgerEntryOut]


class RevokedOut(Schema):
    entry: LedgerEntryOut


class RevokedAllOut(Schema):
    revoked: int


class TimelineEntryOut(Schema):
    at: str
    kind: str
    text: str
    actor: str


class TimelineOut(Schema):
    entries: list[TimelineEntryOut]
