"""The web terminal, as a browser tab uses it: keystroke echo and bulk output through the
portal's websocket (``ws/sandboxes/<remote_id>/terminal/``) to a sandbox of the local provider.

A second portal process runs with ``SANDBOX_PROVIDER=local`` and a temporary sandbox root;
the sandbox is launched through the API and stopped through ``stop_sandboxes`` afterwards.
The first tab offers permessage-deflate, as browsers do, and the second does not, so the cost
of compression shows. The file is random base64 text, 120 columns wide: deflate shrinks it by
a quarter, where a run of one byte would shrink to nothing and flatter the numbers.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

from websockets.asyncio.client import connect

from . import accounts
from .profiling import recording
from .report import Row, median, ms, p95, unavailable_row
from .scenarios import LAUNCH, profiled_note
from .stack import ROOT, Portal, http_client, manage

SCENARIO = "terminal (local provider)"
TARGET = "echo median < 10 ms; cat ≥ 20 MB/s"
FILE_BYTES = 50_000_000
ECHO_SAMPLES = 200
ECHO_LINE = 40  # characters typed before the line is cleared
CATS = 3
TIMEOUT = 120.0  # for any single step
QUIET = 0.3  # seconds without output that count as "the shell is waiting"


def terminal(ctx) -> list[Row]:
    needed = ("sandboxes/consumers.py", "sandboxes/providers/local/__init__.py")
    missing = [path for path in needed if not (ROOT / path).exists()]
    if missing:
        return [unavailable_row(SCENARIO, TARGET, f"{', '.join(missing)} not there yet")]
    problem = _bubblewrap_problem()
    if problem:
        return [unavailable_row(SCENARIO, TARGET, problem)]
    root = Path(tempfile.mkdtemp(prefix="joepro-bench-sandboxes-"))
    os.chmod(root, 0o755)
    cgroup_parent = f"joepro-bench-{os.getpid()}"
    env = {
        **ctx.extra["env"],
        "SANDBOX_PROVIDER": "local",
        "SANDBOX_LOCAL_ROOT": str(root),
        "SANDBOX_LOCAL_CGROUP_PARENT": cgroup_parent,
    }
    for key in ("DAYTONA_API_KEY", "DAYTONA_API_URL"):
        env.pop(key, None)
    visitor = accounts.new_visitors("terminal-", 1)[0]
    portal = None
    try:
        portal = Portal("portal-local", env, workers=1, extra_args=ctx.portal.extra_args)
        remote_id, launch_seconds = _launch(portal, visitor)
        with recording(ctx.profile, "terminal", portal.proc.pid) as profile:
            browser = asyncio.run(asyncio.wait_for(_session(portal, visitor, remote_id, deflate=True), 6 * TIMEOUT))
        plain = asyncio.run(asyncio.wait_for(_session(portal, visitor, remote_id, deflate=False), 6 * TIMEOUT))
    finally:
        try:
            manage(env, "stop_sandboxes", "--user", visitor.email, "--reason", "benchmark finished", timeout=120)
        finally:
            if portal is not None:
                portal.stop()
            shutil.rmtree(root, ignore_errors=True)
            _remove_empty_cgroups(cgroup_parent)
    echoes = browser["echoes"]
    rates = [received / seconds / 1e6 for received, seconds in browser["cats"]]
    plain_rates = [received / seconds / 1e6 for received, seconds in plain["cats"]]
    received = browser["cats"][0][0]
    return [
        Row(
            scenario=f"{SCENARIO}: keystroke echo",
            samples=len(echoes),
            median=ms(median(echoes)),
            p95=ms(p95(echoes)),
            calls="—",
            target="echo median < 10 ms",
            met=median(echoes) < 0.010,
            notes=[
                f"first launch of the local sandbox took {launch_seconds:.2f} s; a second tab not offering "
                f"compression: echo median {ms(median(plain['echoes']))}"
            ],
        ),
        Row(
            scenario=f"{SCENARIO}: `cat` of a 50 MB file",
            samples=len(rates),
            median=f"{median(rates):.1f} MB/s",
            p95=f"slowest {min(rates):.1f} MB/s",
            calls="—",
            target="≥ 20 MB/s",
            met=median(rates) >= 20,
            notes=[
                f"the client offered permessage-deflate, as browsers do, and the portal "
                f"{'accepted' if browser['deflate'] else 'declined'} it; "
                f"{received / 1e6:.1f} MB received per cat (the PTY turns each newline into CR LF); "
                f"a client not offering it: median {median(plain_rates):.1f} MB/s "
                f"({', '.join(f'{rate:.1f}' for rate in plain_rates)})",
                f"CPU seconds per cat: portal {browser['cpu'][0] / CATS:.2f} (client offering compression), "
                f"{plain['cpu'][0] / CATS:.2f} (not offering it); this client {browser['cpu'][1] / CATS:.2f} and "
                f"{plain['cpu'][1] / CATS:.2f}",
                *profiled_note(profile),
            ],
        ),
    ]


def _bubblewrap_problem() -> str:
    if shutil.which("bwrap") is None:
        return "bubblewrap (bwrap) is not installed; the local provider needs it (Debian: apt-get install bubblewrap)"
    return ""


def _launch(portal: Portal, visitor: accounts.Visitor) -> tuple[str, float]:
    """Launch through the API, polling while it answers 202. Returns (remote id, seconds)."""
    started = time.perf_counter()
    deadline = time.monotonic() + TIMEOUT
    with http_client(timeout=TIMEOUT) as client:
        while time.monotonic() < deadline:
            response = client.post(portal.base_url + LAUNCH, headers=visitor.headers, content=b"{}")
            if response.status_code == 200:
                return response.json()["sandbox"]["id"], time.perf_counter() - started
            if response.status_code != 202:
                raise RuntimeError(f"local launch answered {response.status_code}: {response.text[:300]}")
            time.sleep(0.5)
    raise RuntimeError("the local sandbox did not start in time")


class Screen:
    """What the terminal has sent, and waiting for something to appear in it."""

    def __init__(self, socket):
        self.socket = socket
        self.tail = b""
        self.received = 0

    async def frame(self, timeout: float) -> bytes:
        message = await asyncio.wait_for(self.socket.recv(), timeout)
        if isinstance(message, str):
            control = json.loads(message)
            if control.get("type") in ("exit", "status", "error"):
                raise RuntimeError(f"terminal ended: {control}")
            return b""
        self.received += len(message)
        return message

    async def until(self, needle: bytes, timeout: float = TIMEOUT) -> None:
        """Read until ``needle`` has been sent (it may span frames)."""
        deadline = time.monotonic() + timeout
        window = b""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{needle!r} did not appear within {timeout:.0f} s")
            data = await self.frame(left)
            window = window[-len(needle) :] + data
            if needle in window:
                return

    async def settle(self, quiet: float = QUIET, limit: float = 10.0) -> None:
        """Read until nothing has come for ``quiet`` seconds (at most ``limit`` seconds)."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            try:
                await self.frame(quiet)
            except TimeoutError:
                return


async def _session(portal: Portal, visitor: accounts.Visitor, remote_id: str, *, deflate: bool) -> dict:
    """One browser tab: echo samples, then ``cat`` of the file ``CATS`` times (the file is made
    on first use and kept for the next tab: the PTY session and its shell are the same)."""
    url = (
        portal.base_url.replace("http://", "ws://")
        + f"/ws/sandboxes/{remote_id}/terminal/?session=bench&cols=120&rows=40"
    )
    headers = {"Cookie": visitor.headers["Cookie"]}
    options = dict(max_size=None, open_timeout=TIMEOUT, proxy=None, compression="deflate" if deflate else None)
    async with connect(url, additional_headers=headers, origin=portal.base_url, **options) as socket:
        negotiated = "permessage-deflate" in socket.response.headers.get("Sec-WebSocket-Extensions", "")
        first = json.loads(await asyncio.wait_for(socket.recv(), TIMEOUT))
        if first.get("type") != "attached":
            raise RuntimeError(f"the terminal did not attach: {first}")
        screen = Screen(socket)
        await socket.send(b"\x15")
        await screen.settle()

        echoes = []
        letters = b"abcdefghijklmnopqrstuvwxyz"
        for index in range(ECHO_SAMPLES):
            key = letters[index % len(letters) : index % len(letters) + 1]
            started = time.perf_counter()
            await socket.send(key)
            await screen.until(key, timeout=10)
            echoes.append(time.perf_counter() - started)
            if index % ECHO_LINE == ECHO_LINE - 1:
                await socket.send(b"\x15")  # Ctrl-U: clear the line
                await screen.settle(quiet=0.1)
        await socket.send(b"\x15")
        await screen.settle(quiet=0.1)

        # The markers are typed in two halves, so that the echo of the typed command never matches.
        make = (
            f"test -s bench.txt || head -c {FILE_BYTES} /dev/urandom | base64 -w 120"
            f" | head -c {FILE_BYTES} > bench.txt;"
            ' echo "MA""DE-$(stat -c %s bench.txt)"\r'
        )
        await socket.send(make.encode())
        await screen.until(f"MADE-{FILE_BYTES}".encode())
        await screen.settle()

        cats = []
        cpu_before = (portal.cpu_seconds(), _own_cpu())
        for _ in range(CATS):
            before = screen.received
            started = time.perf_counter()
            await socket.send(b'cat bench.txt; echo "EN""D-OF-CAT"\r')
            await screen.until(b"END-OF-CAT")
            cats.append((screen.received - before, time.perf_counter() - started))
            await screen.settle()
        cpu = (portal.cpu_seconds() - cpu_before[0], _own_cpu() - cpu_before[1])
    return {"echoes": echoes, "cats": cats, "deflate": negotiated, "cpu": cpu}


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _remove_empty_cgroups(name: str) -> None:
    """The run's cgroup parent, once its sandboxes (and their cgroups) are gone."""
    for directory in [*Path("/sys/fs/cgroup").glob(f"*/{name}"), Path("/sys/fs/cgroup") / name]:
        try:
            directory.rmdir()
        except OSError:
            pass
