"""Run the emulator in the foreground: ``python -m tests.fake_daytona --port 8765``.

Transitions take realistic time unless ``--timings instant`` (or $FAKE_DAYTONA_TIMINGS),
``--time-scale``, ``--timing NAME=SECONDS`` or ``--transition-seconds`` say otherwise.
"""

from __future__ import annotations

import argparse
import os
import signal
import threading

from .ratelimits import GROUPS
from .server import FakeDaytona
from .timings import Timings


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.fake_daytona", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to every API call")
    parser.add_argument(
        "--timings",
        choices=("realistic", "instant"),
        default=os.environ.get("FAKE_DAYTONA_TIMINGS", "realistic"),
        help="transition durations (default: $FAKE_DAYTONA_TIMINGS or 'realistic')",
    )
    parser.add_argument("--time-scale", type=float, default=None, help="multiply every transition's duration")
    parser.add_argument(
        "--timing",
        action="append",
        default=[],
        metavar="NAME=SECONDS",
        help="one duration of tests/fake_daytona/timings.py, e.g. build=30 (repeatable)",
    )
    parser.add_argument(
        "--transition-seconds",
        type=float,
        default=None,
        help="every transition takes this long (overrides --timings)",
    )
    parser.add_argument(
        "--rate-limit",
        action="append",
        default=[],
        metavar="GROUP=N",
        help=f"requests per minute for one of {', '.join(GROUPS)}; 'none' is unlimited (repeatable)",
    )
    parser.add_argument(
        "--api-key",
        default=os.environ.get("FAKE_DAYTONA_API_KEY", "test-key"),
        help="accepted Bearer key (default: $FAKE_DAYTONA_API_KEY or 'test-key')",
    )
    parser.add_argument("--ssh-port", type=int, default=2222, help="port shown in sshCommand")
    return parser.parse_args(argv)


def timings_of(args: argparse.Namespace) -> Timings:
    if args.transition_seconds is not None:
        timings = Timings.uniform(args.transition_seconds)
    else:
        timings = Timings.named(args.timings)
    if args.time_scale is not None:
        timings = timings.scaled(args.time_scale)
    changes = dict(_pair(text, "--timing") for text in args.timing)
    return timings.with_changes(**{name: float(value) for name, value in changes.items()})


def _pair(text: str, option: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise SystemExit(f"{option} expects NAME=VALUE, got {text!r}")
    return name, value


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    fake = FakeDaytona(
        api_key=args.api_key,
        latency=args.latency,
        host=args.host,
        port=args.port,
        timings=timings_of(args),
    )
    for text in args.rate_limit:
        group, value = _pair(text, "--rate-limit")
        fake.set_rate_limit(group, None if value.lower() == "none" else int(value))
    fake.ssh_port = args.ssh_port
    stop_requested = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop_requested.set())
    fake.start()
    print(fake.api_url, flush=True)
    try:
        stop_requested.wait()
    finally:
        fake.stop()


if __name__ == "__main__":
    main()
