"""Durations as operators type them and as the portal writes them."""

from __future__ import annotations

import argparse
import re
from datetime import timedelta

DURATION_PART = re.compile(r"(\d+)([dhms])")
UNIT_SECONDS = {"d": 86400, "h": 3600, "m": 60, "s": 1}


def parse_duration(text: str) -> timedelta:
    """``2h``, ``90m``, ``1h30m``, ``45s``, ``1d``; a bare number means minutes. For argparse:
    a bad value raises ``argparse.ArgumentTypeError``."""
    text = text.strip().lower()
    if text.isdigit():
        return timedelta(minutes=int(text))
    parts = DURATION_PART.findall(text)
    if not parts or "".join(number + unit for number, unit in parts) != text:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration such as 2h, 90m or 1h30m")
    return timedelta(seconds=sum(int(number) * UNIT_SECONDS[unit] for number, unit in parts))


def format_duration(delta: timedelta, *, style: str = "short") -> str:
    """Whole minutes (a negative duration counts as zero), in one of four looks:

    - ``short``: ``2h``, ``1h05m``, ``45m`` (in sentences);
    - ``fixed``: ``2h00m``, ``1h05m``, ``0h45m`` (columns that line up);
    - ``spaced``: ``2h 00m``, ``1h 05m``, ``45m`` (the admin's tables);
    - ``words``: ``2 h``, ``1 h 5 min``, ``45 min`` (what users read: the timeline, emails).
    """
    hours, minutes = divmod(max(0, int(delta.total_seconds() // 60)), 60)
    if style == "words":
        if hours and minutes:
            return f"{hours} h {minutes} min"
        return f"{hours} h" if hours else f"{minutes} min"
    if style == "fixed":
        return f"{hours}h{minutes:02d}m"
    if not hours:
        return f"{minutes}m"
    if style == "spaced":
        return f"{hours}h {minutes:02d}m"
    return f"{hours}h{minutes:02d}m" if minutes else f"{hours}h"
