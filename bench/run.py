"""Benchmarks of the portal as its users and operators feel it.

    python -m bench.run [--latency-ms 50] [--quick] [--only SCENARIO ...] [--workers N]
                        [--env KEY=VALUE] [--uvicorn ARG] [--profile] [--no-write]

Starts the fake Daytona with the chosen per-call latency, a PostgreSQL database of its own
(dropped and recreated each run), the portal under uvicorn against them, runs each scenario and
prints one markdown table, also written to ``docs/benchmarks.md``. Everything listens on
loopback; every loop is bounded. This is a benchmark, not a test: nothing fails on a slow
number, but a run whose scenario breaks exits non-zero.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import threading
import time
import traceback
from datetime import UTC, datetime
from importlib import metadata

from . import accounts, lifecycle, scenarios, terminal
from .report import Row, notes, table, unavailable_row
from .stack import (
    ROOT,
    FakeDaytonaProcess,
    Portal,
    database_url,
    manage,
    portal_env,
    recreate_database,
    redis_url,
    stop_everything,
)

DOC_PATH = ROOT / "docs" / "benchmarks.md"
TIME_LIMIT = 15 * 60  # seconds; a full run takes a few minutes
WHY_MARKER = "<!-- hand-written analysis below; kept when the table above is regenerated -->"

# name -> (runner, what it needs)
SCENARIOS = {
    "warm": scenarios.warm_launch,
    "overhead": scenarios.portal_overhead,
    "resume": scenarios.resume,
    "first": scenarios.first_launch,
    "burst": scenarios.burst,
    "reconcile": lifecycle.reconcile_at_scale,
    "stop": lifecycle.bulk_stop,
    "terminal": terminal.terminal,
}
TARGETS = {
    "warm": ("warm launch (sandbox running)", "1 provider round trip; ≤ 1.3×RTT+10 ms; ≤ 0.35× reference"),
    "overhead": ("portal overhead (warm launch, 0 ms latency)", "median < 15 ms"),
    "resume": ("resume (sandbox stopped)", "no avoidable sequential call; ≤ 0.6× reference"),
    "first": ("first launch (no sandbox)", "one create; access minted concurrently"),
    "burst": ("burst", "all succeed, 0 duplicates"),
    "reconcile": ("reconcile at scale", "provider calls ≤ pages + 1% of sandboxes"),
    "stop": ("bulk stop", "< 10 s"),
    "terminal": ("terminal", "echo median < 10 ms; cat ≥ 20 MB/s"),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--latency-ms", type=float, default=50.0, help="latency the fake adds to every call")
    parser.add_argument("--quick", action="store_true", help="fewer samples and smaller fleets (a smoke run)")
    parser.add_argument(
        "--only", nargs="+", choices=list(SCENARIOS), metavar="SCENARIO",
        help=f"run only these scenarios (of: {', '.join(SCENARIOS)})",
    )  # fmt: skip
    parser.add_argument(
        "--workers", type=int, default=1,
        help="uvicorn worker processes of the portal (default 1, as the Dockerfile runs it)",
    )  # fmt: skip
    parser.add_argument(
        "--env", action="append", default=[], metavar="KEY=VALUE",
        help="extra environment for the portal processes (to try a setting); repeatable",
    )  # fmt: skip
    parser.add_argument(
        "--uvicorn", action="append", default=[], metavar="ARG",
        help="extra argument for the portal's uvicorn, e.g. --uvicorn=--ws-per-message-deflate=false; repeatable",
    )  # fmt: skip
    parser.add_argument(
        "--profile", action="store_true",
        help="record py-spy profiles of the portal (overhead, burst, terminal output) into var/bench/",
    )  # fmt: skip
    parser.add_argument("--no-write", action="store_true", help="print the table, leave docs/benchmarks.md alone")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    load_before = os.getloadavg()[0]
    selected = args.only or list(SCENARIOS)
    # The overhead scenario reuses the warm launch's sandbox; the burst restarts the portal
    # (see scenarios.burst); the fleets of reconcile and stop replace every sandbox.
    order = ["warm", "overhead", "resume", "first", "burst", "reconcile", "stop", "terminal"]
    if "overhead" in selected and "warm" not in selected:
        selected.append("warm")
    selected = [name for name in order if name in selected]
    latency = args.latency_ms / 1000

    print(f"Benchmark: latency {args.latency_ms:g} ms, scenarios {', '.join(selected)}", flush=True)
    watchdog = threading.Timer(TIME_LIMIT, _give_up)
    watchdog.daemon = True
    watchdog.start()
    recreate_database(database_url())
    _flush_redis()
    fake = FakeDaytonaProcess(latency=latency)
    ctx = None
    rows: list[Row] = []
    failed: list[str] = []
    try:
        base_env = portal_env(api_url=fake.api_url)
        manage(base_env, "migrate", "--no-input")
        accounts.setup(base_env)
        env = {**base_env, **dict(item.split("=", 1) for item in args.env)}
        ctx = scenarios.Context(
            fake=fake,
            portal=Portal("portal", env, workers=args.workers, extra_args=args.uvicorn),
            latency=latency,
            samples=10 if args.quick else 30,
            overhead_samples=30 if args.quick else 100,
            burst_users=50 if args.quick else 200,
            profile=args.profile,
        )
        ctx.extra.update(quick=args.quick, env=env)
        for name in selected:
            print(f"- {name} ...", flush=True)
            step = time.monotonic()
            try:
                rows.extend(SCENARIOS[name](ctx))
            except Exception as exc:  # a broken scenario is reported, and the others still run
                traceback.print_exc()
                failed.append(name)
                label, target = TARGETS[name]
                rows.append(unavailable_row(label, target, f"the scenario failed: {exc}"[:300]))
            print(f"  done in {time.monotonic() - step:.1f} s", flush=True)
    finally:
        accounts.close_connections()
        if ctx is not None:
            ctx.portal.stop()
        fake.stop()

    watchdog.cancel()
    wall = time.monotonic() - started
    markdown = render(rows, args=args, wall=wall, load=(load_before, os.getloadavg()[0]))
    print()
    print(markdown)
    if args.no_write:
        return 1 if failed else 0
    if args.quick or selected != list(SCENARIOS):
        # docs/benchmarks.md keeps the last complete run; a partial one goes beside the others.
        partial = ROOT / "var" / "bench" / "partial.md"
        partial.parent.mkdir(parents=True, exist_ok=True)
        partial.write_text(markdown + "\n")
        print(f"\nA partial run: written to {partial.relative_to(ROOT)}, not to {DOC_PATH.relative_to(ROOT)}.")
    else:
        write_doc(markdown)
        print(f"\nWritten to {DOC_PATH.relative_to(ROOT)}.")
    return 1 if failed else 0


def _give_up() -> None:
    """The whole run is bounded: past the limit, stop every process it started and exit."""
    print(f"The benchmark ran past {TIME_LIMIT // 60} minutes; stopping it.", file=sys.stderr, flush=True)
    stop_everything()
    os._exit(3)


def _flush_redis() -> None:
    import redis

    redis.Redis.from_url(redis_url()).flushdb()


def render(rows: list[Row], *, args: argparse.Namespace, wall: float, load: tuple[float, float]) -> str:
    versions = ", ".join(f"{name} {_version(name)}" for name in ("Django", "uvicorn", "daytona", "psycopg", "channels"))
    lines = [
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {os.cpu_count()} CPUs ({platform.machine()}), "
        f"Python {platform.python_version()}, {_postgres_version()}; {versions}.",
        "",
        f"Fake Daytona latency {args.latency_ms:g} ms per call (the overhead row: 0 ms); portal: uvicorn, "
        f"{args.workers} worker(s); {'quick run' if args.quick else 'full run'}; harness wall time {wall:.0f} s; "
        f"load average {load[0]:.1f} at the start, {load[1]:.1f} at the end (every process on the machine "
        "shares its CPUs with the portal, the fake and the load generator).",
        "",
        table(rows),
    ]
    extra = notes(rows)
    if extra:
        lines += ["", extra]
    return "\n".join(lines)


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "?"


def _postgres_version() -> str:
    try:
        from django.db import connection

        with connection.cursor() as cursor:
            cursor.execute("SHOW server_version")
            return f"PostgreSQL {cursor.fetchone()[0].split()[0]}"
    except Exception:
        return "PostgreSQL"


def write_doc(markdown: str) -> None:
    """Replace the generated part of docs/benchmarks.md; keep the hand-written analysis."""
    DOC_PATH.parent.mkdir(parents=True, exist_ok=True)
    analysis = ""
    if DOC_PATH.exists():
        text = DOC_PATH.read_text()
        if WHY_MARKER in text:
            analysis = text[text.index(WHY_MARKER) :]
    header = (
        "# Benchmarks\n\n"
        "Generated by `bin/bench` (`make bench`, `python -m bench.run`); what it runs: "
        "[Tests and checks](tests.md#benchmarks). Timings are wall-clock times seen by a client "
        "on the same machine; provider calls are counted by the fake Daytona.\n\n"
    )
    body = header + markdown + "\n"
    if analysis:
        body += "\n" + analysis.rstrip() + "\n"
    DOC_PATH.write_text(body)


if __name__ == "__main__":
    sys.exit(main())
