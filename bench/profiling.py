"""``--profile``: py-spy attached to a portal process while a scenario runs.

py-spy samples the process from outside (every thread, native waits excluded), so the portal
runs unchanged; the profile is written as a speedscope file to ``var/bench/<name>.speedscope.json``
(open it at speedscope.app or with ``py-spy``'s own viewer). Sampling slows the process a little:
timings of a profiled scenario are marked as such.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from .stack import LOG_DIR

ATTACH_SECONDS = 1.0
RATE = 200  # samples per second


def py_spy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


@contextmanager
def recording(enabled: bool, name: str, pid: int):
    """Profile process ``pid`` (and its children) for the duration of the block."""
    binary = py_spy() if enabled else None
    if binary is None:
        yield None
        return
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    output = LOG_DIR / f"{name}.speedscope.json"
    spy = subprocess.Popen(
        [binary, "record", "--pid", str(pid), "--subprocesses", "--rate", str(RATE),
         "--format", "speedscope", "--output", str(output)],
        stdout=subprocess.DEVNULL,
        stderr=open(LOG_DIR / f"{name}.py-spy.log", "wb"),
    )  # fmt: skip
    time.sleep(ATTACH_SECONDS)
    try:
        yield output
    finally:
        spy.send_signal(signal.SIGINT)
        try:
            spy.wait(60)
        except subprocess.TimeoutExpired:
            spy.kill()
            spy.wait(10)
