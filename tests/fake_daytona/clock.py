"""An injectable wall clock shared by every part of the emulator."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime


class FakeClock:
    """Real time plus an offset that tests can push forward."""

    def __init__(self) -> None:
        self._offset = 0.0
        self._lock = threading.Lock()

    def time(self) -> float:
        """Current time as epoch seconds."""
        with self._lock:
            return time.time() + self._offset

    def now(self) -> datetime:
        """Current time as an aware UTC datetime."""
        return datetime.fromtimestamp(self.time(), UTC)

    def advance(self, seconds: float) -> None:
        """Move the clock forward (a negative value moves it back)."""
        with self._lock:
            self._offset += float(seconds)

    def reset(self) -> None:
        """Return to real time."""
        with self._lock:
            self._offset = 0.0


def iso(timestamp: float) -> str:
    """ISO-8601 UTC with milliseconds and a trailing Z, as the Daytona API writes it."""
    moment = datetime.fromtimestamp(timestamp, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_iso(text: str) -> float:
    """Epoch seconds of an ISO-8601 timestamp (a naive one is taken as UTC)."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()
