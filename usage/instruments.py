"""The portal's own Prometheus instruments, recorded where things happen (launches, provider
calls, idle stops). Gauges read from the database at scrape time live in ``usage.metrics``.

Several processes record (web processes, Celery workers): with ``PROMETHEUS_MULTIPROC_DIR``
set, prometheus_client keeps each process's values in files there, and ``/metrics`` merges them.
This module imports nothing of the project, so any module may record."""

from __future__ import annotations

import os

from prometheus_client import Counter, Histogram, disable_created_metrics

# A process that records writes its files into this directory; its group's start command
# creates (and wipes) it, but a process started otherwise must not fail its first record.
if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.makedirs(os.environ["PROMETHEUS_MULTIPROC_DIR"], mode=0o700, exist_ok=True)
# No *_created series: they double the series count, and Prometheus sees counter resets anyway.
disable_created_metrics()

LAUNCH_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300)
PROVIDER_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

LAUNCH_DURATION = Histogram(
    "joepro_launch_duration_seconds",
    "Time from a launch's first request to access handed out, by what it had to do.",
    ["kind"],  # warm | resume | create
    buckets=LAUNCH_BUCKETS,
)
LAUNCH_FAILURES = Counter(
    "joepro_launch_failures",
    "Launches that failed, by the error code the user was given.",
    ["code"],
)
PROVIDER_CALL_DURATION = Histogram(
    "joepro_provider_call_duration_seconds",
    "Calls to sandbox providers, by provider, operation and outcome (ok or the error kind).",
    ["provider", "operation", "outcome"],
    buckets=PROVIDER_BUCKETS,
)
IDLE_STOPS = Counter(
    "joepro_idle_stops",
    "Sandboxes the portal stopped by policy, by reason (idle, budget) and outcome (stopped, failed).",
    ["reason", "outcome"],
)
