"""Run the emulator in the foreground: ``python -m tests.fake_daytona --port 8765``."""

from __future__ import annotations

import argparse
import os
import signal
import threading

from .server import FakeDaytona


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.fake_daytona", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to every API call")
    parser.add_argument(
        "--transition-seconds", type=float, default=0.0, help="duration of start/stop/create transitions"
    )
    parser.add_argument(
        "--api-key",
        default=os.environ.get("FAKE_DAYTONA_API_KEY", "test-key"),
        help="accepted Bearer key (default: $FAKE_DAYTONA_API_KEY or 'test-key')",
    )
    parser.add_argument("--ssh-port", type=int, default=2222, help="port shown in sshCommand")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    fake = FakeDaytona(
        api_key=args.api_key,
        latency=args.latency,
        transition_seconds=args.transition_seconds,
        host=args.host,
        port=args.port,
    )
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
