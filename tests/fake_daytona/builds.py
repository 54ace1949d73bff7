"""Image builds for creates with ``buildInfo``: the runners' cache of built Dockerfiles and the
builds made to fail.

Daytona keys a built image by ``daytona-<sha256 of the Dockerfile text and the sorted
context hashes>:daytona`` (``generateBuildInfoHash``, v0.190.0). The first create with a
Dockerfile builds it (minutes); a create while that build runs joins it; a later create
with the same text finds the image on a runner and skips the build. Images unused for a day
are forgotten (the documented cache lifetime is 24 h; the open-source cleanup waits 7 days).
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass

CACHE_SECONDS = 24 * 3600.0
DEFAULT_BUILD_ERROR = "Failed to build snapshot"


def build_ref(dockerfile: str, context_hashes: list[str] | None = None) -> str:
    """The snapshot ref Daytona gives the image a Dockerfile builds."""
    combined = dockerfile + "".join(sorted(context_hashes or []))
    return "daytona-" + hashlib.sha256(combined.encode()).hexdigest() + ":daytona"


@dataclass
class Build:
    """One image: when it is (or was) ready, and why it failed if it did."""

    ref: str
    dockerfile: str
    context_hashes: list[str]
    created: float
    ready_at: float
    last_used: float
    error_reason: str | None = None


class BuildCache:
    """Built and building images, and the Dockerfile texts whose builds fail; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._builds: dict[str, Build] = {}
        self.failing: dict[str, str] = {}

    def clear(self) -> None:
        """Forget every image (the failing texts stay)."""
        with self._lock:
            self._builds.clear()

    def fail_builds_containing(self, text: str, reason: str | None = None) -> None:
        """Make every new build of a Dockerfile containing ``text`` end in ``build_failed``."""
        if not text:
            raise ValueError("the text to match must not be empty")
        with self._lock:
            self.failing[text] = reason or DEFAULT_BUILD_ERROR

    def set_failing(self, failing: dict[str, str | None]) -> None:
        """Replace the failing texts (``{text: reason or None}``)."""
        if not isinstance(failing, dict) or not all(isinstance(key, str) and key for key in failing):
            raise ValueError("failing_builds must be an object of non-empty texts")
        with self._lock:
            self.failing = {key: reason or DEFAULT_BUILD_ERROR for key, reason in failing.items()}

    def built(self, ref: str) -> Build | None:
        with self._lock:
            return self._builds.get(ref)

    def claim(
        self, dockerfile: str, context_hashes: list[str], *, now: float, takes: float, fail_reason: str | None
    ) -> tuple[Build, bool]:
        """The image for this Dockerfile, and whether this create has to wait for a build.

        A Dockerfile not built yet (or forgotten, or whose last build failed) starts a build
        that is ready ``takes`` seconds from ``now``; one being built is joined; one built is
        reused. A failing text the Dockerfile contains makes a new build fail; ``fail_reason``
        (a scripted fault) makes this create build again, whatever is cached, and fail.
        """
        ref = build_ref(dockerfile, context_hashes)
        with self._lock:
            build = self._builds.get(ref)
            stale = build is not None and build.ready_at <= now and now - build.last_used > CACHE_SECONDS
            # A failed build leaves no image behind: the next create builds again.
            failed = build is not None and build.error_reason is not None and build.ready_at <= now
            if build is None or stale or failed or fail_reason:
                reason = fail_reason or self._failing_reason(dockerfile)
                build = Build(
                    ref=ref,
                    dockerfile=dockerfile,
                    context_hashes=list(context_hashes),
                    created=now,
                    ready_at=now + takes,
                    last_used=now,
                    error_reason=reason,
                )
                self._builds[ref] = build
                return build, True
            build.last_used = now
            return build, build.ready_at > now

    def failing_match(self, dockerfile: str) -> tuple[str, str] | None:
        """The first failing text ``dockerfile`` contains, with its reason (None: it builds)."""
        with self._lock:
            for text, reason in self.failing.items():
                if text in dockerfile:
                    return text, reason
        return None

    def _failing_reason(self, dockerfile: str) -> str | None:
        for text, reason in self.failing.items():
            if text in dockerfile:
                return reason
        return None
