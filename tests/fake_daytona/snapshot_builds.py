"""What a runner does with a snapshot's Dockerfile, as far as the API shows it: the build log
with when each line is written, where a failing build stops, and the size of the image.

The runner (v0.190.0 ``BuildImage`` with its default BuildKit engine) writes each build step
as it starts, in BuildKit's plain form, to a file named after the Dockerfile's hash::

    #1 [internal] load build definition from Dockerfile
    #2 [internal] load metadata for docker.io/library/node:20-bookworm
    #3 [internal] load .dockerignore
    #4 [1/2] FROM docker.io/library/node:20-bookworm@sha256:<digest>
    #5 [2/2] RUN npm i -g pnpm
    #6 exporting to image

and ``ERROR: <reason>`` where a step fails. The file is opened for appending, so a rebuild of
the same Dockerfile shows the earlier attempts first.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable

EMPTY_DOCKERFILE_ERROR = "file with no instructions"  # BuildKit's parser
_STEP_KEYWORDS = frozenset({"FROM", "RUN", "COPY", "ADD", "WORKDIR"})


class BuildLogs:
    """The runners' build log files, one per Dockerfile hash (``daytona-<hash>``), appended to
    by every build of it, each line with when it is written."""

    def __init__(self) -> None:
        self._files: dict[str, list[tuple[float, str]]] = {}

    def append(self, ref: str, lines: Iterable[tuple[float, str]]) -> None:
        self._files.setdefault(ref, []).extend(lines)

    def exists(self, ref: str, now: float) -> bool:
        """Whether a build has opened the file by ``now``."""
        lines = self._files.get(ref)
        return bool(lines) and lines[0][0] <= now

    def written(self, ref: str, now: float, sent: int) -> tuple[list[str], float]:
        """The lines written by ``now`` after the first ``sent``, and the seconds to the next."""
        lines = self._files.get(ref, [])
        written = [text for at, text in lines if at <= now]
        return written[sent:], min((at - now for at, _ in lines if at > now), default=math.inf)


def build_log(dockerfile: str, failure: tuple[str, str] | None) -> tuple[list[tuple[float, str]], float, int]:
    """The runner's log of a build of ``dockerfile``: each line with the fraction of the build
    at which it is written, the fraction at which the build ends, and the number of steps.
    ``failure`` (a text and a reason) fails the first step containing the text (else the
    last one) with that reason."""
    steps = [text for text in instructions(dockerfile) if text.split(None, 1)[0].upper() in _STEP_KEYWORDS]
    lines = [(0.0, "#1 [internal] load build definition from Dockerfile")]
    base = next((_base_image(text) for text in steps if text.upper().startswith("FROM ")), None)
    if base:
        lines.append((0.0, f"#2 [internal] load metadata for {base}"))
    lines.append((0.0, f"#{len(lines) + 1} [internal] load .dockerignore"))
    parts = len(steps) + 1  # the steps, then the export
    failing = None
    if failure is not None:
        failing = next((index for index, text in enumerate(steps) if failure[0] and failure[0] in text), len(steps) - 1)
    for index, text in enumerate(steps):
        label = f"FROM {_pinned(_base_image(text))}" if text.upper().startswith("FROM ") else text
        lines.append((index / parts, f"#{len(lines) + 1} [{index + 1}/{len(steps)}] {label}"))
        if index == failing:
            return [*lines, ((index + 1) / parts, f"ERROR: {failure[1]}")], (index + 1) / parts, len(steps)
    if failure is not None:
        return [*lines, (0.0, f"ERROR: {failure[1]}")], 0.0, len(steps)
    return [*lines, (len(steps) / parts, f"#{len(lines) + 1} exporting to image")], 1.0, len(steps)


def instructions(dockerfile: str) -> list[str]:
    """The Dockerfile's instructions, continuation lines joined, comments and blanks left out."""
    found, pending = [], ""
    for raw in dockerfile.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        found.append((pending + line).strip())
        pending = ""
    if pending.strip():
        found.append(pending.strip())
    return found


def _base_image(from_line: str) -> str:
    """The image a ``FROM`` names, as BuildKit shows it (``docker.io/library/node:20``)."""
    words = [word for word in from_line.split()[1:] if not word.startswith("--")]
    image = words[0] if words else ""
    first = image.split("/", 1)[0]
    if "/" in image and ("." in first or ":" in first or first == "localhost"):
        return image
    return f"docker.io/{image}" if "/" in image else f"docker.io/library/{image}"


def _pinned(image: str) -> str:
    """The image with the digest BuildKit resolved it to (here a stand-in: a hash of its name)."""
    if "@sha256:" in image:
        return image
    return f"{image}@sha256:{hashlib.sha256(image.encode()).hexdigest()}"


def image_size(steps: int) -> float:
    """The GB the runner reports for an image built in ``steps`` steps (an estimate)."""
    return round(0.35 + 0.2 * steps, 2)
