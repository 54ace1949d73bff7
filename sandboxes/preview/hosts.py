"""Preview hosts: ``<port>-<sandbox id>.<preview host>``, one per sandbox and port."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from django.conf import settings

LABEL = re.compile(r"(?P<port>[1-9][0-9]{0,4})-(?P<id>[a-z0-9](?:[a-z0-9-]{0,56}[a-z0-9])?)")


@dataclass(frozen=True)
class PreviewHost:
    port: int
    remote_id: str

    @property
    def origin(self) -> str:
        return preview_origin(self.remote_id, self.port)


def preview_base() -> tuple[str, str, int | None]:
    """Scheme, host name and port of ``SANDBOX_PREVIEW_URL``."""
    parts = urlsplit(settings.SANDBOX_PREVIEW_URL)
    return parts.scheme or "http", (parts.hostname or "localhost").lower(), parts.port


def preview_origin(remote_id: str, port: int) -> str:
    scheme, host, server_port = preview_base()
    suffix = f":{server_port}" if server_port else ""
    return f"{scheme}://{port}-{remote_id}.{host}{suffix}"


def parse_host(header: str) -> PreviewHost | None:
    """The preview a ``Host`` header names, or None when it names no preview host."""
    host = header.strip().lower()
    name, colon, port = host.rpartition(":")
    if colon and port.isdigit() and not name.endswith("]"):
        host = name
    _, base, _ = preview_base()
    if not host.endswith("." + base):
        return None
    match = LABEL.fullmatch(host[: -len(base) - 1])
    if match is None or int(match["port"]) > 65535:
        return None
    return PreviewHost(int(match["port"]), match["id"])


def host_of(scope: dict) -> str:
    for name, value in scope.get("headers", ()):
        if name == b"host":
            return value.decode("latin-1")
    return ""
