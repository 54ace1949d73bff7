"""Raw REST calls to the emulator, for tests that check what the SDK hides: the status, the
body and the headers of one answer."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any, NamedTuple

_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class Answer(NamedTuple):
    status: int
    body: Any
    headers: dict[str, str]


def call(fake: Any, method: str, path: str, body: Any = None, *, key: str | None = None, timeout: float = 60) -> Answer:
    """``method`` on ``<api_url><path>`` with the emulator's key (or ``key``)."""
    headers = {"Authorization": f"Bearer {key or fake.api_key}"}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(fake.api_url + path, data=data, headers=headers, method=method)
    try:
        with _DIRECT.open(request, timeout=timeout) as response:
            return Answer(response.status, _decoded(response.read()), dict(response.headers))
    except urllib.error.HTTPError as error:
        return Answer(error.code, _decoded(error.read()), dict(error.headers))


def _decoded(raw: bytes) -> Any:
    return json.loads(raw) if raw else None
