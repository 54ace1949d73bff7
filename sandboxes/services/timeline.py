"""The timeline: why a sandbox runs and why it stopped, in a few words per moment.

Read from two records: the audit log (who started, stopped, extended, reset it, what the
provider was found doing) and the activity marks (what kind of use kept it awake). Texts say
times in UTC as ``HH:MM UTC``; each entry's ``at`` is there for a page to show in the reader's
own zone. Nothing secret goes in: audit details hold states, reasons and expiry times only.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.core.cache import cache
from django.utils import timezone

from sandboxes.durations import format_duration
from sandboxes.models import AccessGrant, ActivityMark, ActivitySource, AuditEvent, Sandbox, SandboxState

Action = AuditEvent.Action
ActorType = AuditEvent.ActorType

MARKS_KEPT = timedelta(days=30)
PRUNE_EVERY_SECONDS = 3600
# Marks of one kind of use this close to each other read as one stretch of use.
MARK_FOLD_GAP = timedelta(hours=1)
# A launch's own audit events (create or start, access, launch) land within this of each other.
LAUNCH_SPAN = timedelta(seconds=60)
# Sources the audit log already tells of (a launch, an extend): no mark of their own.
UNMARKED_SOURCES = frozenset({ActivitySource.LAUNCH.value, ActivitySource.EXTEND.value})
RUNNING_STATES = frozenset(
    {SandboxState.STARTED, SandboxState.STARTING, SandboxState.STOPPING, SandboxState.UNKNOWN, SandboxState.CREATING}
)

SOURCE_PHRASES = {
    ActivitySource.PAGE: "use of the portal page",
    ActivitySource.TERMINAL_INPUT: "terminal input",
    ActivitySource.TERMINAL_OUTPUT: "terminal output",
    ActivitySource.SSH: "SSH",
    ActivitySource.PREVIEW: "requests to the preview",
    ActivitySource.PROVIDER: "use the provider saw (its SSH or preview)",
}
ACTORS = {ActorType.USER: "you", ActorType.ADMIN: "operator", ActorType.SYSTEM: "system"}


@dataclass(frozen=True)
class TimelineEntry:
    """One moment of the timeline. ``kind``: created, resumed, started, stopped, idle-stopped,
    kept-awake, extended, revoked, reset, synced, warned, settings or access; ``actor``: "you",
    "operator", "system" or "provider"."""

    at: datetime
    kind: str
    text: str
    actor: str


# --- activity marks -----------------------------------------------------------------------------


def note_activity_mark(sandbox: Sandbox, source: ActivitySource | str, now: datetime) -> bool:
    """Remember that ``source`` kept the sandbox awake at ``now``: at most one mark per sandbox
    and source in each ``SANDBOX_ACTIVITY_MARK_MINUTES`` slot of the clock. The throttle is an
    atomic cache add keyed by the slot (no read, and a moved clock gets its own slots).
    Only a running sandbox is marked. Returns whether a mark was written."""
    source = str(source)
    if source in UNMARKED_SOURCES or sandbox.pk is None or not sandbox.is_running:
        return False
    every = max(1, settings.SANDBOX_ACTIVITY_MARK_MINUTES) * 60
    slot = int(now.timestamp()) // every
    if not cache.add(f"sandbox-activity-mark:{sandbox.pk}:{source}:{slot}", 1, every):
        return False
    ActivityMark.objects.create(sandbox=sandbox, source=source, at=now)
    return True


def activity_marks_prune(*, now: datetime, force: bool = False) -> int:
    """Delete marks older than 30 days, at most once an hour across processes (unless
    ``force``). One bulk ``DELETE``; returns how many went."""
    if not force and not cache.add("sandbox-activity-marks-pruned", 1, PRUNE_EVERY_SECONDS):
        return 0
    deleted, _ = ActivityMark.objects.filter(at__lt=now - MARKS_KEPT).delete()
    return deleted


# --- the timeline -------------------------------------------------------------------------------


def sandbox_timeline(*, sandbox: Sandbox, now: datetime | None = None, limit: int = 50) -> list[TimelineEntry]:
    """The sandbox's timeline, newest first, at most ``limit`` entries and none after ``now``.

    Audit events and activity marks of this sandbox only. Marks of one source that follow each
    other within an hour, with no audit event between them, fold into one entry ("Kept awake
    by terminal input, 13:02-13:47 UTC"); a launch's create or start, access and launch events
    read as one; a sync that found nothing changed is left out.
    """
    now = now or timezone.now()
    event_page, mark_page = limit * 4, limit * 20
    events = list(
        AuditEvent.objects.filter(sandbox=sandbox, created_at__lte=now)
        .order_by("-created_at", "-pk")
        .only("action", "actor_type", "reason", "detail", "created_at")[:event_page]
    )
    marks = list(
        ActivityMark.objects.filter(sandbox=sandbox, at__lte=now)
        .order_by("-at", "-pk")
        .only("source", "at")[:mark_page]
    )
    # A stream cut short by its page may miss moments older than its last row: stop there.
    horizons = []
    if len(events) == event_page:
        horizons.append(events[-1].created_at)
    if len(marks) == mark_page:
        horizons.append(marks[-1].at)
    horizon = max(horizons, default=None)

    events.reverse()
    marks.reverse()
    entries = _event_entries(events) + _mark_entries(marks, [event.created_at for event in events])
    if horizon is not None:
        entries = [entry for entry in entries if entry.at >= horizon]
    entries.sort(key=lambda entry: entry.at, reverse=True)
    return entries[:limit]


def _event_entries(events: list[AuditEvent]) -> list[TimelineEntry]:
    """Entries for audit events given oldest first."""
    entries = []
    launch_began: datetime | None = None
    for event in events:
        if event.action in (Action.CREATE, Action.START, Action.RECOVER) and event.actor_type == ActorType.USER:
            launch_began = event.created_at
        part_of_launch = launch_began is not None and event.created_at - launch_began <= LAUNCH_SPAN
        if event.action == Action.ACCESS_MINTED:
            continue  # always minted by a launch; its entry stands for it (the ledger lists the access)
        if event.action == Action.LAUNCH:
            launch_began = None
            if part_of_launch:
                continue
        entry = describe_event(event)
        if entry is not None:
            entries.append(entry)
    return entries


def describe_event(event: AuditEvent) -> TimelineEntry | None:
    """The timeline entry for one audit event, or None for one that says nothing to the owner
    (a sync that found no change)."""
    actor = ACTORS.get(event.actor_type, "system")
    detail = event.detail if isinstance(event.detail, dict) else {}
    reason = (event.reason or "").strip()
    by = {"you": " by you", "operator": " by an operator"}.get(actor, "")
    action = event.action

    def entry(kind: str, text: str, who: str = actor) -> TimelineEntry:
        return TimelineEntry(at=event.created_at, kind=kind, text=text, actor=who)

    if action == Action.CREATE:
        return entry("created", "Created")
    if action == Action.LAUNCH:
        return entry("access", f"Opened{by}")
    if action == Action.START:
        if actor == "you":
            return entry("resumed", "Restarted by you" if "restart" in reason.lower() else "Resumed by you")
        return entry("started", _with_reason(f"Started{by}", reason))
    if action == Action.RECOVER:
        return entry("started", f"Recovered from an error{by}")
    if action == Action.STOP:
        if actor == "system" and "idle" in reason.lower():
            idle_seconds = detail.get("idle_seconds")
            if isinstance(idle_seconds, int):
                return entry(
                    "idle-stopped",
                    f"Stopped: idle for {format_duration(timedelta(seconds=idle_seconds), style='words')}",
                )
            return entry("idle-stopped", _with_reason("Stopped", reason))
        if actor == "system":
            return entry("stopped", _with_reason("Stopped", reason))
        return entry("stopped", _with_reason(f"Stopped{by}", reason if actor == "operator" else ""))
    if action == Action.DELETE:
        return entry("reset", _with_reason(f"Deleted with its files{by}", reason))
    if action == Action.RESET:
        return entry("reset", f"Reset{by}: files deleted, new sandbox")
    if action == Action.ADOPT:
        return entry("synced", "Linked to the sandbox found under its name", "system")
    if action == Action.STATE_SYNCED:
        return _sync_entry(event, detail, reason)
    if action == Action.EXTEND:
        return entry("extended", _extension_text(detail))
    if action == Action.ACCESS_REVOKED:
        return entry("revoked", f"Access revoked{by}: {_revoked_what(detail)}")
    if action == Action.SETTINGS:
        return entry("settings", _settings_text(detail))
    if action == Action.WARNED:
        stops_at = _moment(detail.get("stops_at"))
        if stops_at is None:
            return entry("warned", "Warned: stops soon unless you are active")
        return entry("warned", f"Warned: stops at {clock(stops_at)} unless you are active")
    return entry("synced", event.get_action_display())


def _sync_entry(event: AuditEvent, detail: dict, reason: str) -> TimelineEntry | None:
    before, after = detail.get("from"), detail.get("to")
    if after is None or before == after:
        return None
    if after == SandboxState.STOPPED:
        text = "Found stopped by the provider" if before in RUNNING_STATES else "Found stopped at the provider"
    elif after == SandboxState.ARCHIVED:
        text = "Archived by the provider"
    elif after == SandboxState.GONE:
        text = "Found deleted at the provider: the next launch creates a new sandbox"
    elif after == SandboxState.STARTED:
        text = "Found running at the provider"
    elif after == SandboxState.ERROR:
        text = "The provider reports an error"
    else:
        text = f"The provider reports it {SandboxState(after).label.lower() if after in SandboxState.values else after}"
    return TimelineEntry(at=event.created_at, kind="synced", text=text, actor="provider")


def _extension_text(detail: dict) -> str:
    minutes = detail.get("minutes")
    until = _moment(detail.get("until") or detail.get("keep_awake_until"))
    if isinstance(minutes, int) and minutes > 0:
        text = f"Extended by {format_duration(timedelta(minutes=minutes), style='words')}"
        return f"{text}, until {clock(until)}" if until else text
    if until:
        return f"Extended until {clock(until)}"
    return "Idle clock restarted"


def _revoked_what(detail: dict) -> str:
    if detail.get("all") or detail.get("everything"):
        count = detail.get("count")
        return f"everything ({count})" if isinstance(count, int) else "everything"
    kind = detail.get("kind") or detail.get("grant_kind")
    if kind in AccessGrant.Kind.values:
        return AccessGrant.Kind(kind).label
    return "a credential"


def _settings_text(detail: dict) -> str:
    changes = []
    if "idle_minutes" in detail:
        minutes = detail["idle_minutes"]
        if isinstance(minutes, int) and minutes > 0:
            changes.append(f"idle period {format_duration(timedelta(minutes=minutes), style='words')}")
        else:
            default = format_duration(timedelta(minutes=settings.SANDBOX_IDLE_MINUTES), style="words")
            changes.append(f"idle period back to the default ({default})")
    if "warn_by_email" in detail:
        changes.append("email before the idle stop " + ("on" if detail["warn_by_email"] else "off"))
    return "Settings changed: " + ", ".join(changes) if changes else "Settings changed"


def _mark_entries(marks: list[ActivityMark], event_times: list[datetime]) -> list[TimelineEntry]:
    """Entries for marks given oldest first: a source's marks fold while each follows the last
    within ``MARK_FOLD_GAP`` and no audit event falls between them."""
    entries = []
    open_runs: dict[str, tuple[datetime, datetime]] = {}

    def close(source: str) -> None:
        first, last = open_runs.pop(source)
        entries.append(_kept_awake(source, first, last))

    for mark in marks:
        run = open_runs.get(mark.source)
        if run is not None:
            _, last = run
            interrupted = any(last < moment < mark.at for moment in event_times)
            if mark.at - last <= MARK_FOLD_GAP and not interrupted:
                open_runs[mark.source] = (run[0], mark.at)
                continue
            close(mark.source)
        open_runs[mark.source] = (mark.at, mark.at)
    for source in list(open_runs):
        close(source)
    return entries


def _kept_awake(source: str, first: datetime, last: datetime) -> TimelineEntry:
    phrase = SOURCE_PHRASES.get(source, source.replace("-", " "))
    when = clock(first) if clock(first) == clock(last) else f"{_hhmm(first)}-{clock(last)}"
    actor = "provider" if source == ActivitySource.PROVIDER else "you"
    return TimelineEntry(at=last, kind="kept-awake", text=f"Kept awake by {phrase}, {when}", actor=actor)


# --- words --------------------------------------------------------------------------------------


def _with_reason(text: str, reason: str) -> str:
    return f"{text}: {reason}" if reason else text


def _moment(value) -> datetime | None:
    if isinstance(value, datetime):
        return value
    if isinstance(value, str) and value:
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            return None
        return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return None


def _hhmm(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%H:%M")


def clock(moment: datetime) -> str:
    """A moment as the timeline and the warning email write it: ``15:32 UTC``."""
    return f"{_hhmm(moment)} UTC"
