"""What a first launch of each shipped template costs with local sandboxes, measured here.

    python -m bench.first_launch

For each template: preparing its version once (outside any sandbox; what the worker does before
anyone can choose it), then a first sandbox made from it, its start command run, and the time
until its app answers on the readiness port where it has one. Prints one markdown table. A
benchmark, not a test: nothing fails on a slow number.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "joepro.settings")
django.setup()

from environments.models import Template  # noqa: E402
from environments.shipped import TEMPLATES  # noqa: E402
from sandboxes.providers.base import SandboxSpec  # noqa: E402
from sandboxes.providers.local import LocalProvider  # noqa: E402
from sandboxes.services.apps import start_script  # noqa: E402

READY_WAIT_SECONDS = 60


def measure(provider: LocalProvider, fields: dict) -> tuple[float, float, float | None]:
    template = Template(**fields)
    began = time.perf_counter()
    provider.prepare_template(template.recipe(), on_log=lambda line: None)
    prepared = time.perf_counter() - began
    spec = SandboxSpec(
        name=f"bench-{template.slug}", labels={"joepro-managed": "bench"}, cpu=2, memory_gb=4, disk_gb=8,
        template=template.artifact_name,
    )  # fmt: skip
    began = time.perf_counter()
    remote = provider.create(spec, wait_seconds=30)
    if template.start_command:
        provider.execute(remote.id, start_script(template.start_command), timeout=15)
    created = time.perf_counter() - began
    ready = None
    if template.start_command and template.starter_files:
        probe = f"bash -c 'exec 3<>/dev/tcp/127.0.0.1/{template.ready_port}' 2>/dev/null"
        while time.perf_counter() - began < READY_WAIT_SECONDS:
            if provider.execute(remote.id, probe, timeout=5).exit_code == 0:
                ready = time.perf_counter() - began
                break
            time.sleep(0.05)
    provider.stop(remote.id, wait_seconds=10)
    return prepared, created, ready


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="joepro-bench-templates-"))
    try:
        provider = LocalProvider(root, cgroup_parent=f"joepro-bench-{os.getpid()}")
        print("| template | prepare once (s) | first sandbox, start command run (s) | app answers (s) |")
        print("|---|---:|---:|---:|")
        for fields in TEMPLATES:
            prepared, created, ready = measure(provider, {key: value for key, value in fields.items()})
            answered = f"{ready:.2f}" if ready is not None else "no app of its own"
            print(f"| {fields['name']} | {prepared:.2f} | {created:.2f} | {answered} |")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
