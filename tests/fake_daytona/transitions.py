"""The sandboxes' transitions as phases, and the state the API shows for a stored one.

A :class:`Plan` is the list of states a sandbox passes through, each for a number of
seconds on the emulator's clock, then the state it ends in. Durations come from
:class:`~tests.fake_daytona.timings.Timings`. The shapes follow Daytona's sandbox manager
(v0.190.0): the API stores a state and a desired state, and the runner's progress moves
the state on.
"""

from __future__ import annotations

from dataclasses import dataclass

from .records import ERROR_STATES
from .timings import Timings

# How long an errored sandbox stays in the database once deleted (invisible, except to a
# listing with includeErroredDeleted): the server's cleanup removes such rows after a day.
ERRORED_DELETED_SECONDS = 24 * 3600.0


@dataclass(frozen=True)
class Phase:
    state: str
    seconds: float


@dataclass(frozen=True)
class Plan:
    """States in order, then ``final``; ``desired`` is the desiredState throughout."""

    phases: tuple[Phase, ...]
    final: str
    desired: str
    error_reason: str | None = None  # errorReason when ``final`` is an error state


def api_state(state: str, desired: str) -> str:
    """The state the API answers for a stored one (``SandboxDto.getSandboxState``).

    The API updates the desired state first and the runner catches up, so a started sandbox
    told to stop reads ``stopping`` before the runner has done anything; an archived one
    told to start or to go reads ``archived`` until its restore or its removal begins.
    """
    if state == "started":
        return {"stopped": "stopping", "destroyed": "destroying"}.get(desired, state)
    if state == "stopped":
        return {"started": "starting", "destroyed": "destroying", "archived": "archiving"}.get(desired, state)
    if state == "unknown" and desired == "started":
        return "creating"
    return state


def is_pending(state: str, desired: str) -> bool:
    """Whether a change is under way (the server's ``pending`` flag): the state differs from
    the desired one, except that errored sandboxes and archives never count as pending."""
    return state != desired and state not in ERROR_STATES and desired != "archived"


def create_plan(timings: Timings, fail_reason: str | None = None) -> Plan:
    """Create from a snapshot."""
    return _ending(Plan((Phase("creating", timings.create),), "started", "started"), fail_reason, "error")


def build_plan(timings: Timings, *, build_left: float | None, error_reason: str | None) -> Plan:
    """Create with ``buildInfo``; ``build_left`` is how long until the image is built (None:
    it is built already). A failed build ends in ``build_failed`` when the build ends."""
    boot = (Phase("unknown", timings.build_boot), Phase("starting", timings.build_start))
    if build_left is None:
        return _ending(Plan(boot, "started", "started"), error_reason, "build_failed")
    queued = min(timings.build_queue, build_left)
    building = (Phase("pending_build", queued), Phase("building_snapshot", build_left - queued))
    if error_reason is not None:
        return Plan(building, "build_failed", "started", error_reason)
    return Plan(building + boot, "started", "started")


def start_plan(state: str, timings: Timings, fail_reason: str | None = None) -> Plan:
    """Start of a stopped, archived, archiving or paused sandbox."""
    if state == "archived":
        phases = (Phase("archived", timings.restore_queue), Phase("restoring", timings.restore))
    elif state == "paused":
        phases = (Phase("resuming", timings.start),)
    else:
        phases = (Phase("starting", timings.start),)
    return _ending(Plan(phases, "started", "started"), fail_reason, "error")


def recover_plan(timings: Timings, fail_reason: str | None = None) -> Plan:
    return _ending(Plan((Phase("starting", timings.recover),), "started", "started"), fail_reason, "error")


def stop_plan(timings: Timings) -> Plan:
    return Plan((Phase("stopping", timings.stop),), "stopped", "stopped")


def archive_plan(timings: Timings) -> Plan:
    return Plan((Phase("archiving", timings.archive),), "archived", "archived")


def delete_plan(state: str, timings: Timings) -> Plan:
    """An accepted delete: the sandbox keeps its state (desiredState destroyed) until the
    runner acts. Archived and pending_build ones need no runner and go at once; errored
    ones stay where they are, invisible, until the cleanup removes them."""
    if state in ERROR_STATES:
        return Plan((Phase(state, ERRORED_DELETED_SECONDS),), "destroyed", "destroyed")
    if state in ("archived", "pending_build"):
        return Plan((Phase(state, timings.destroy_queue + timings.destroy),), "destroyed", "destroyed")
    phases = (Phase(state, timings.destroy_queue), Phase("destroying", timings.destroy))
    return Plan(phases, "destroyed", "destroyed")


def phase_seconds(transitional: str, timings: Timings) -> float:
    """How long a transitional state lasts when entered on its own (out-of-band changes)."""
    return {
        "creating": timings.create,
        "starting": timings.start,
        "resuming": timings.start,
        "stopping": timings.stop,
        "archiving": timings.archive,
        "restoring": timings.restore,
        "destroying": timings.destroy,
    }.get(transitional, timings.start)


def _ending(plan: Plan, fail_reason: str | None, error_state: str) -> Plan:
    if fail_reason is None:
        return plan
    return Plan(plan.phases, error_state, plan.desired, fail_reason)
