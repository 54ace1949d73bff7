"""Listing sandboxes: label and state filters, cursor pages, and the list's lag behind the
store (a snapshot up to that old), as the real listing is eventually consistent."""

from __future__ import annotations

import base64
import copy
import json
from collections.abc import Iterable
from typing import Any

from .core import StoreCore
from .records import ApiError, _ListSnapshot, _Sandbox, _string_map

LIST_ITEM_KEYS = (
    "id",
    "organizationId",
    "name",
    "target",
    "state",
    "desiredState",
    "snapshot",
    "user",
    "errorReason",
    "recoverable",
    "public",
    "networkBlockAll",
    "cpu",
    "gpu",
    "memory",
    "disk",
    "labels",
    "autoStopInterval",
    "autoArchiveInterval",
    "autoDeleteInterval",
    "createdAt",
    "updatedAt",
    "lastActivityAt",
    "toolboxProxyUrl",
)

MAX_PAGE_SIZE = 200
DEFAULT_PAGE_SIZE = 100


class ListingMixin(StoreCore):
    """``GET /sandbox`` of :class:`~tests.fake_daytona.store.SandboxStore`."""

    def set_list_lag(self, seconds: float) -> None:
        with self._lock:
            self._list_lag = max(0.0, float(seconds))
            self._snapshot = None

    def list_page(
        self,
        *,
        labels: str | None = None,
        states: Iterable[str] = (),
        limit: str | None = None,
        cursor: str | None = None,
        id_prefix: str | None = None,
        name_prefix: str | None = None,
    ) -> dict[str, Any]:
        with self._lock:
            page_size = _page_size(limit)
            wanted_labels = _decode_labels(labels)
            wanted_states = set(states)
            before_seq = _decode_cursor(cursor) if cursor else None
            page: list[_Sandbox] = []
            more = False
            for sb in self._listing_rows():
                if before_seq is not None and sb.seq >= before_seq:
                    continue
                if not _matches(sb.data, wanted_labels, wanted_states, id_prefix, name_prefix):
                    continue
                if len(page) == page_size:
                    more = True
                    break
                page.append(sb)
            return {
                "items": [self._list_item(sb) for sb in page],
                "nextCursor": _encode_cursor(page[-1].seq) if more else None,
            }

    def _listing_rows(self) -> list[_Sandbox]:
        """Sandboxes newest first; with a list lag, a snapshot up to that old."""
        self._advance_pending()
        if self._list_lag <= 0:
            return list(reversed(self._by_id.values()))
        now = self.clock.time()
        if self._snapshot is None or now - self._snapshot.taken_at >= self._list_lag:
            rows = [
                _Sandbox(
                    data=copy.deepcopy(sb.data),
                    seq=sb.seq,
                    last_activity=sb.last_activity,
                    updated=sb.updated,
                    preview_token="",
                )
                for sb in reversed(self._by_id.values())
            ]
            self._snapshot = _ListSnapshot(taken_at=now, rows=rows)
        return self._snapshot.rows

    def _list_item(self, sb: _Sandbox) -> dict[str, Any]:
        full = self._render(sb)
        return {key: full[key] for key in LIST_ITEM_KEYS if key in full}


def _matches(
    data: dict[str, Any],
    labels: dict[str, str],
    states: set[str],
    id_prefix: str | None,
    name_prefix: str | None,
) -> bool:
    if states and data["state"] not in states:
        return False
    if id_prefix and not data["id"].lower().startswith(id_prefix.lower()):
        return False
    if name_prefix and not data["name"].lower().startswith(name_prefix.lower()):
        return False
    own = data["labels"]
    return all(own.get(key) == value for key, value in labels.items())


def _page_size(raw: str | None) -> int:
    if raw is None:
        return DEFAULT_PAGE_SIZE
    try:
        size = int(raw)
    except ValueError:
        raise ApiError(400, "limit must be an integer number") from None
    if size < 1:
        raise ApiError(400, "limit must not be less than 1")
    if size > MAX_PAGE_SIZE:
        raise ApiError(400, f"limit must not be greater than {MAX_PAGE_SIZE}")
    return size


def _decode_labels(raw: str | None) -> dict[str, str]:
    if not raw:
        return {}
    try:
        labels = json.loads(raw)
    except json.JSONDecodeError:
        raise ApiError(400, "Invalid labels JSON") from None
    return _string_map(labels, "labels")


def _encode_cursor(seq: int) -> str:
    return base64.urlsafe_b64encode(f"seq:{seq}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> int:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        prefix, _, number = base64.urlsafe_b64decode(padded).decode().partition(":")
        if prefix != "seq":
            raise ValueError(prefix)
        return int(number)
    except ValueError:
        raise ApiError(400, "Invalid cursor") from None
