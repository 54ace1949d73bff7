"""How long the emulated sandboxes take over their transitions: one place for every duration.

Durations are seconds on the emulator's clock (``FakeDaytona.advance_clock`` moves them on),
except ``hold_limit``, the real-time bound of the server's wait before it answers a create
from a snapshot, a start or a recover. :meth:`Timings.realistic` is what the hosted service
has been seen to take and the emulator's default; :meth:`Timings.instant` is the test
profile (every transition completes before the answer is sent).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

# The server's own wait (``waitForSandboxStarted(sandbox, 30)`` in the API's controller).
HOLD_LIMIT_SECONDS = 30.0


@dataclass(frozen=True)
class Timings:
    """Seconds each phase lasts.

    A phase is the time a sandbox spends in one state before it moves on; a transition is
    its phases in order (see :mod:`.transitions`). The realistic figures are estimates from
    published reports and Daytona's notes (start from stopped about 0.7 s, create from a
    snapshot about 1 s, a first image build minutes, about 165 s); the hosted service varies
    with load and image size, so treat them as typical, not exact.
    """

    create: float  # create from a snapshot: ``creating`` until ``started``
    start: float  # start of a stopped sandbox: ``starting`` until ``started``
    stop: float  # ``stopping`` until ``stopped``
    archive: float  # ``archiving`` until ``archived``
    restore_queue: float  # start of an archived one: still ``archived`` (desiredState started)
    restore: float  # then ``restoring`` until ``started``
    recover: float  # recover of an errored one: ``starting`` until ``started``
    build_queue: float  # create with buildInfo: ``pending_build``, waiting for a runner
    build: float  # ``building_snapshot``: a Dockerfile the runners have not built yet
    build_boot: float  # built or cached image: ``creating`` (the runner says ``unknown``)
    build_start: float  # then ``starting`` until ``started``
    destroy_queue: float  # an accepted delete, the sandbox still in its old state
    destroy: float  # ``destroying`` until gone (404)
    delete_list_lag: float  # the listing still shows a deleted sandbox as it was
    snapshot_queue: float  # a new snapshot: ``pending`` until the snapshot manager picks a runner
    snapshot_build: float  # then ``building`` (a Dockerfile) until built, pushed and seen ``active``
    snapshot_pull: float  # or ``pulling`` (an image name) until pulled, pushed and seen ``active``
    snapshot_remove: float  # a deleted snapshot: ``removing`` until the cleanup job drops it (404)
    hold_limit: float = HOLD_LIMIT_SECONDS  # real seconds; not scaled

    @classmethod
    def realistic(cls) -> Timings:
        """What the hosted service typically takes; a first build adds up to 165 s."""
        return cls(
            create=1.0,
            start=0.7,
            stop=1.5,
            archive=20.0,
            restore_queue=2.0,
            restore=40.0,
            recover=5.0,
            build_queue=5.0,
            build=155.0,
            build_boot=3.0,
            build_start=2.0,
            destroy_queue=0.5,
            destroy=2.5,
            delete_list_lag=1.5,
            # The manager picks a runner at once unless every runner is busy (then on its
            # 10 s pass); a build is the 155 s above plus the push to the internal registry
            # and up to 10 s until the state check sees it; the cleanup job runs every 10 s.
            snapshot_queue=2.0,
            snapshot_build=170.0,
            snapshot_pull=40.0,
            snapshot_remove=10.0,
        )

    @classmethod
    def instant(cls) -> Timings:
        """Every transition completes before the answer is sent (a delete still answers
        ``destroying``; the next look finds the sandbox gone)."""
        return cls(**{name: 0.0 for name in _DURATIONS})

    @classmethod
    def uniform(cls, seconds: float) -> Timings:
        """Every transition takes ``seconds`` in total (the ``transition_seconds`` knob).

        No queues and no build cache effect: an image build spends half of it ``creating``
        and half ``starting``; a deleted sandbox leaves the listing at once.
        """
        seconds = max(0.0, float(seconds))
        if seconds == 0:
            return cls.instant()
        each = dict.fromkeys(("create", "start", "stop", "archive", "restore", "recover", "destroy"), seconds)
        return cls(
            **each,
            restore_queue=0.0,
            build_queue=0.0,
            build=0.0,
            build_boot=seconds / 2,
            build_start=seconds / 2,
            destroy_queue=0.0,
            delete_list_lag=0.0,
            snapshot_queue=0.0,
            snapshot_build=seconds,
            snapshot_pull=seconds,
            snapshot_remove=seconds,
        )

    @classmethod
    def named(cls, name: str) -> Timings:
        """``"realistic"`` or ``"instant"``."""
        profiles = {"realistic": cls.realistic, "instant": cls.instant}
        if name not in profiles:
            raise ValueError(f"unknown timings profile {name!r}; expected one of {', '.join(profiles)}")
        return profiles[name]()

    def scaled(self, factor: float) -> Timings:
        """Every duration multiplied by ``factor`` (the hold limit stays as it is)."""
        if factor < 0:
            raise ValueError("the scale factor must not be negative")
        return dataclasses.replace(self, **{name: getattr(self, name) * factor for name in _DURATIONS})

    def with_changes(self, **seconds: float) -> Timings:
        """A copy with some durations replaced; unknown names raise ValueError."""
        unknown = set(seconds) - set(_FIELDS)
        if unknown:
            raise ValueError(f"unknown timing {sorted(unknown)[0]!r}; expected one of {', '.join(_FIELDS)}")
        values = {name: float(value) for name, value in seconds.items()}
        if any(value < 0 for value in values.values()):
            raise ValueError("timings must not be negative")
        return dataclasses.replace(self, **values)

    def first_build(self) -> float:
        """Seconds from a create with a Dockerfile never built before to ``started``."""
        return self.build_queue + self.build + self.build_boot + self.build_start

    def cached_build(self) -> float:
        """Seconds from a create with an image already built to ``started``."""
        return self.build_boot + self.build_start

    def describe(self) -> dict[str, float]:
        """A JSON-friendly copy."""
        return dataclasses.asdict(self)


def timings_from(spec: Any, current: Timings) -> Timings:
    """Timings from a hook or command-line value: a profile name, or an object of durations
    applied on top of ``current``."""
    if isinstance(spec, str):
        return Timings.named(spec)
    if isinstance(spec, dict):
        return current.with_changes(**spec)
    raise ValueError("timings must be a profile name or an object of durations")


_FIELDS = tuple(field.name for field in dataclasses.fields(Timings))
_DURATIONS = tuple(name for name in _FIELDS if name != "hold_limit")
