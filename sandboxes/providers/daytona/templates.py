"""Template versions as Daytona snapshots, and short scripts through the toolbox
(:class:`Snapshots`, part of :class:`~.provider.DaytonaProvider`).

A template version is the snapshot of the same name (``<slug>-<hash>``), built once from the
declarative ``Image`` of its recipe (:func:`recipe_image`) through the SDK's snapshot API, which
streams the build log while it polls the snapshot's state. Creates from it build nothing.
"""

from __future__ import annotations

import base64
import logging
import posixpath
import re
import time
from typing import Any

from daytona import CreateSnapshotParams, Image, Resources

from ..base import ErrorKind, ProviderError
from ..templates import BuildLog, ScriptResult, TemplateRecipe
from .convert import state_word
from .errors import SDK_FAILURES, provider_error

logger = logging.getLogger(__name__)

HOME = "/home/daytona"
TEMPLATE_ROOT = "/opt/template"
TEMPLATE_PATH = f"{TEMPLATE_ROOT}/python/bin:{TEMPLATE_ROOT}/node/bin"
READY = "active"
FAILED = frozenset({"build_failed", "error"})
BUILDING = frozenset({"pending", "building", "pulling"})
SDK_STATE = re.compile(r"\(SnapshotState\.(\w+)\)")
SNAPSHOT_POLL_SECONDS = 2.0
SNAPSHOT_WAIT_SECONDS = 1800.0  # a build another worker started, waited for at most this long


def recipe_image(recipe: TemplateRecipe) -> Image:
    """The Dockerfile of a template version, in the order its definition gives: Debian
    packages, the template's own bin directories on ``PATH``, pip and npm packages, the build
    commands, then the starter files in the sandbox user's home."""
    image = Image.base(recipe.base_image).dockerfile_commands([f"ENV PATH={TEMPLATE_PATH}:$PATH"])
    if recipe.apt_packages:
        packages = " ".join(recipe.apt_packages)
        image = image.run_commands(
            "apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "
            f"{packages} && rm -rf /var/lib/apt/lists/*"
        )
    if recipe.pip_packages:
        image = image.run_commands(
            f"python3 -m venv {TEMPLATE_ROOT}/python",
            f"{TEMPLATE_ROOT}/python/bin/pip install {' '.join(recipe.pip_packages)}",
        )
    if recipe.npm_packages:
        image = image.run_commands(
            f"npm install --global --prefix {TEMPLATE_ROOT}/node {' '.join(recipe.npm_packages)}"
        )
    if recipe.commands:
        image = image.run_commands(*recipe.commands)
    for path, text in sorted(recipe.starter_files.items()):
        target = posixpath.join(HOME, _relative(path))
        encoded = base64.b64encode(text.encode()).decode()
        image = image.run_commands(f"mkdir -p {posixpath.dirname(target)} && echo {encoded} | base64 -d > {target}")
    return image


def _relative(path: str) -> str:
    normal = posixpath.normpath(path)
    if (
        posixpath.isabs(path)
        or normal.startswith("..")
        or not all(part.replace(".", "").replace("-", "").replace("_", "").isalnum() for part in normal.split("/"))
    ):
        raise ProviderError(f"The starter file {path!r} is not a plain path in the home.", kind=ErrorKind.REJECTED)
    return normal


class Snapshots:
    """The template part of :class:`~.provider.DaytonaProvider` (which provides ``_call``,
    ``_sdk``, ``_api_key`` and ``_started_sdk_sandbox``)."""

    def prepare_template(self, recipe: TemplateRecipe, *, on_log: BuildLog) -> None:
        """Build the snapshot ``recipe.name`` unless it exists: an active one returns at once,
        an inactive one is activated, one being built (by another worker) is waited for, a
        failed one is deleted and built again."""
        snapshot = self._find_snapshot(recipe.name)
        if snapshot is not None:
            state = state_word(snapshot.state)
            if state == READY:
                on_log(f"Snapshot {recipe.name} is built already.")
                return
            if state == "inactive":
                on_log(f"Snapshot {recipe.name} is inactive: activating it.")
                self._call("activate snapshot", lambda: self._sdk.snapshot.activate(snapshot))
                self._wait_for_snapshot(recipe.name, on_log)
                return
            if state in BUILDING:
                on_log(f"Snapshot {recipe.name} is being built already ({state}): waiting for it.")
                self._wait_for_snapshot(recipe.name, on_log)
                return
            on_log(f"Snapshot {recipe.name} failed before ({snapshot.error_reason or state}): building it again.")
            self._call("delete snapshot", lambda: self._sdk.snapshot.delete(snapshot), answers=False)
        params = CreateSnapshotParams(
            name=recipe.name,
            image=recipe_image(recipe),
            resources=Resources(cpu=recipe.cpu, memory=recipe.memory_gb, disk=recipe.disk_gb),
        )
        try:
            self._sdk.snapshot.create(params, on_logs=lambda chunk: _lines(chunk, on_log), timeout=0)
        except SDK_FAILURES as exc:
            error = provider_error(exc, "create snapshot", idempotent=False, secrets=(self._api_key,))
            if error.kind is ErrorKind.CONFLICT:
                on_log(f"Snapshot {recipe.name} was asked for elsewhere meanwhile: waiting for it.")
                self._wait_for_snapshot(recipe.name, on_log)
                return
            current = self._find_snapshot(recipe.name)
            if current is not None and state_word(current.state) in FAILED:
                raise ProviderError(
                    f"The snapshot build failed: {current.error_reason or error.message}", kind=ErrorKind.REJECTED
                ) from exc
            raise error from exc
        logger.info("Daytona snapshot %s built", recipe.name)

    def template_prepared(self, name: str) -> bool:
        snapshot = self._find_snapshot(name)
        return snapshot is not None and state_word(snapshot.state) == READY

    def execute(self, remote_id: str, script: str, *, timeout: float = 10.0, max_output: int = 65536) -> ScriptResult:
        """Through the toolbox (``POST /process/execute``), which the portal's traffic never
        counts as use (``_connect``). The script travels base64-encoded: daemons differ in how
        they split a command line, and a line of base64 means the same to all of them."""
        sandbox = self._started_sdk_sandbox(remote_id)
        encoded = base64.b64encode(script.encode()).decode()
        command = f"sh -c 'echo {encoded} | base64 -d | sh'"
        try:
            answer = self._call(
                "execute",
                lambda: sandbox.process.exec(command, timeout=max(1, int(timeout))),
                idempotent=False,
                deadline=time.monotonic() + timeout,
            )
        except ProviderError as error:
            raise self._toolbox_refusal(remote_id, error) from error
        output = answer.result or ""
        return ScriptResult(exit_code=int(answer.exit_code), output=output[-max_output:])

    def _find_snapshot(self, name: str) -> Any | None:
        try:
            return self._call("get snapshot", lambda: self._sdk.snapshot.get(name))
        except ProviderError as error:
            if error.kind is ErrorKind.NOT_FOUND:
                return None
            raise

    def _wait_for_snapshot(self, name: str, on_log: BuildLog) -> None:
        deadline = time.monotonic() + SNAPSHOT_WAIT_SECONDS
        seen = ""
        while True:
            snapshot = self._find_snapshot(name)
            if snapshot is None:
                raise ProviderError(f"The snapshot {name} went away while it was built.", kind=ErrorKind.REJECTED)
            state = state_word(snapshot.state)
            if state != seen:
                on_log(f"Snapshot {name}: {state}")
                seen = state
            if state == READY:
                return
            if state in FAILED:
                raise ProviderError(
                    f"The snapshot build failed: {snapshot.error_reason or state}", kind=ErrorKind.REJECTED
                )
            if time.monotonic() > deadline:
                raise ProviderError(f"The snapshot {name} is still {state}.", kind=ErrorKind.TIMEOUT)
            time.sleep(SNAPSHOT_POLL_SECONDS)


def _lines(chunk: str, on_log: BuildLog) -> None:
    """The SDK's log chunks as lines, its state words as Daytona writes them ("(building)",
    not "(SnapshotState.BUILDING)")."""
    for line in chunk.splitlines():
        if line.strip():
            on_log(SDK_STATE.sub(lambda match: f"({match[1].lower()})", line))
