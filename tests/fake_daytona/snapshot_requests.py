"""Reading a snapshot request as Daytona's API does (v0.190.0): the validation pipe's texts
for ``CreateSnapshotDto`` and ``ListSnapshotsQueryDto``, the service's name and image checks,
and the values the service derives from the body (region, Dockerfile, entrypoint)."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .records import ApiError

REGIONS = ("us", "eu")
DEFAULT_REGION = "us"
SANDBOX_CLASSES = ("linux-vm", "container", "android", "windows")
SORT_FIELDS = ("name", "state", "lastUsedAt", "createdAt")
UNEXPECTED = "An unexpected error occurred."  # the API's answer to an uncaught error (500)
INVALID_NAME = "Invalid snapshot name format. May contain letters, digits, dots, colons, and dashes"
NAME = re.compile(r"[a-zA-Z0-9_.\-:]+(/[a-zA-Z0-9_.\-:]+)*(@sha256:[a-f0-9]{64})?")  # IMAGE_NAME_REGEX
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[1-8][0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", re.IGNORECASE)
_HTML_TAG = re.compile(r"<[a-zA-Z/][^>]*>?")
_URL = re.compile(
    r"https?://|ftps?://|sftp://|ssh://|wss?://|file://|ldaps?://|javascript:|data:|mailto:|tel:|www\.", re.IGNORECASE
)
_CONTROL = re.compile(r"[\x00-\x08\x0B\x0C\x0E-\x1F\x7F]")
WINDOWS_REFUSED = (
    "Windows snapshots cannot be created via this endpoint; they are produced by snapshot-from-sandbox flows."
)


@dataclass(frozen=True)
class CreateRequest:
    """A ``POST /snapshots`` body the API accepts, with what the service derives from it."""

    name: str
    image: str  # the image to pull; "" for a build
    dockerfile: str | None  # None: a pull
    context_hashes: list[str]
    entrypoint: list[str] | None
    region: str
    sandbox_class: str
    resources: dict[str, Any]  # cpu, gpu, mem, disk: as asked, else the columns' defaults


def read_create(body: Any) -> CreateRequest:
    """The controller's and the service's checks, in their order, up to the insert (the
    duplicate name is the insert's 409, the store's)."""
    if not isinstance(body, dict):
        raise ApiError(400, "Request body must be an object")
    problems = create_problems(body)
    if problems:
        raise ApiError(400, ", ".join(problems))
    build_info, image = body.get("buildInfo"), body.get("imageName")
    if build_info is not None:
        if image:
            raise ApiError(400, "Cannot specify an image name when using a build info entry")
        if body.get("entrypoint") is not None:
            raise ApiError(400, "Cannot specify an entrypoint when using a build info entry")
    elif not image:
        raise ApiError(400, "Must specify an image name when not using a build info entry")
    region = region_of(body.get("regionId"))
    if not NAME.fullmatch(body["name"]):
        raise ApiError(400, INVALID_NAME)
    if build_info is None and (problem := image_problem(image)):
        raise ApiError(400, problem)
    sandbox_class = body.get("sandboxClass") or "container"
    if sandbox_class == "windows":
        raise ApiError(400, WINDOWS_REFUSED)
    dockerfile, hashes, entrypoint = None, [], kept_entrypoint(body.get("entrypoint"))
    if build_info is not None:
        dockerfile, hashes = dockerfile_of(build_info)
        entrypoint = entrypoint_from_dockerfile(dockerfile)
    defaults = {"cpu": 1, "gpu": 0, "memory": 1, "disk": 3}
    resources = {key: default if body.get(key) is None else body[key] for key, default in defaults.items()}
    resources["mem"] = resources.pop("memory")
    return CreateRequest(body["name"], image or "", dockerfile, hashes, entrypoint, region, sandbox_class, resources)


def create_problems(body: dict[str, Any]) -> list[str]:
    """What the validation pipe says about a ``CreateSnapshotDto`` (class-validator's texts)."""
    problems = []
    name = body.get("name")
    if not isinstance(name, str):
        problems.append("name must be a string")
    if name is not None and not (isinstance(name, str) and _safe_display(name)):
        problems.append("name must not contain HTML tags, URLs, or control characters")
    for key in ("imageName", "regionId"):
        if body.get(key) is not None and not isinstance(body[key], str):
            problems.append(f"{key} must be a string")
    entrypoint = body.get("entrypoint")
    if entrypoint is not None and not isinstance(entrypoint, list):
        problems.append("entrypoint must be an array")
    elif entrypoint is not None and not all(isinstance(item, str) for item in entrypoint):
        problems.append("each value in entrypoint must be a string")
    for key, maximum in (("cpu", None), ("gpu", 1), ("memory", None), ("disk", None)):
        value = body.get(key)
        if value is None:
            continue
        number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if not number:
            problems.append(f"{key} must be a number conforming to the specified constraints")
        if not number or value < 0:
            problems.append(f"{key} must not be less than 0")
        if maximum is not None and (not number or value > maximum):
            problems.append(f"{key} must not be greater than {maximum}")
    if body.get("buildInfo") is not None and not isinstance(body["buildInfo"], dict):
        problems.append("buildInfo must be an object")
    sandbox_class = body.get("sandboxClass")
    if sandbox_class is not None and sandbox_class not in SANDBOX_CLASSES:
        problems.append(f"sandboxClass must be one of the following values: {', '.join(SANDBOX_CLASSES)}")
    return problems


def _safe_display(text: str) -> bool:
    return not (_HTML_TAG.search(text) or _URL.search(text) or _CONTROL.search(text))


def region_of(requested: str | None) -> str:
    """``getValidatedOrDefaultRegion``: the organisation's default, or a known region."""
    region = (requested or "").strip()
    if not region:
        return DEFAULT_REGION
    if region not in REGIONS:
        raise ApiError(404, "Region not found")
    return region


def image_problem(image: str) -> str | None:
    """``validateImageName``."""
    if "@sha256:" in image:
        name, digest = image.split("@sha256:")[:2]
        if not name or not digest or not re.fullmatch(r"[a-f0-9]{64}", digest):
            return "Invalid digest format. Must be image@sha256:64_hex_characters"
        return None
    if ":" not in image or image.endswith(":") or re.search(r":\s*$", image):
        return "Image name must include a tag (e.g., ubuntu:22.04) or digest (@sha256:...)"
    if image.endswith(":latest"):
        return 'Images with tag ":latest" are not allowed'
    if not NAME.fullmatch(image):
        return (
            "Invalid image name format. Must be lowercase, may contain digits, dots, dashes, "
            "and single slashes between components"
        )
    return None


def dockerfile_of(build_info: dict[str, Any]) -> tuple[str, list[str]]:
    """The Dockerfile and context hashes. The server does not validate inside ``buildInfo``
    (no nested validation); a missing Dockerfile or odd hashes throw in its code (500)."""
    dockerfile, hashes = build_info.get("dockerfileContent"), build_info.get("contextHashes")
    if not isinstance(dockerfile, str) or not (hashes is None or isinstance(hashes, list)):
        raise ApiError(500, UNEXPECTED)
    return dockerfile, [str(item) for item in hashes or []]


def entrypoint_from_dockerfile(dockerfile: str) -> list[str] | None:
    """``getEntrypointFromDockerfile``: the last ENTRYPOINT (JSON array or plain text), else
    ``sleep infinity``."""
    matches = re.findall(r"ENTRYPOINT\s+(.*)", dockerfile)
    entrypoint: list[Any] = ["sleep", "infinity"]
    if matches:
        raw = matches[-1].strip()
        try:
            parsed = json.loads(raw)
        except ValueError:
            entrypoint = [raw.replace('"', "").replace("'", "")]
        else:
            if isinstance(parsed, list):
                entrypoint = parsed
    return kept_entrypoint(entrypoint)


def kept_entrypoint(entrypoint: Any) -> list[str] | None:
    """``processEntrypoint``: empty commands dropped; nothing left is no entrypoint."""
    kept = [item for item in entrypoint or [] if isinstance(item, str) and item.strip()]
    return kept or None


def require_uuid(value: str) -> None:
    if not UUID.fullmatch(value):
        raise ApiError(400, "Validation failed (uuid is expected)")


def page_value(query: Mapping[str, str], key: str, default: int, maximum: int | None) -> tuple[int, list[str]]:
    """A paging parameter as the pipe reads it (``Number()``, then IsInt, Min 1, Max)."""
    raw = query.get(key)
    if raw is None:
        return default, []
    try:
        number = float(raw.strip()) if raw.strip() else 0.0
    except ValueError:
        number = math.nan
    problems = []
    if not (math.isfinite(number) and number == int(number)):
        problems.append(f"{key} must be an integer number")
    if not number >= 1:
        problems.append(f"{key} must not be less than 1")
    if maximum is not None and not number <= maximum:
        problems.append(f"{key} must not be greater than {maximum}")
    return (default if problems else int(number)), problems


def list_query(query: Mapping[str, str]) -> tuple[int, int, str, str]:
    """``page``, ``limit``, ``sort`` and ``order`` of ``GET /snapshots`` (400 with every
    problem, joined, as the exception filter writes them)."""
    page, problems = page_value(query, "page", 1, None)
    limit, more = page_value(query, "limit", 100, 200)
    problems += more
    sort, order = query.get("sort", "lastUsedAt"), query.get("order", "desc")
    if sort not in SORT_FIELDS:
        problems.append(f"sort must be one of the following values: {', '.join(SORT_FIELDS)}")
    if order not in ("asc", "desc"):
        problems.append("order must be one of the following values: asc, desc")
    if problems:
        raise ApiError(400, ", ".join(problems))
    return page, limit, sort, order
