"""Listing sandboxes (``GET /sandbox``) as Daytona's search does it (v0.190.0).

Filters: labels (containment), states (the stored state, never ``destroyed``), id and name
prefixes; errored sandboxes being deleted only with ``includeErroredDeleted=true``. Order:
``sort`` (``lastActivityAt`` by default, or ``createdAt``, ``name``, ``cpu``, ``memoryGib``,
``diskGib``) and ``order`` (``desc`` by default), with the id as tie-breaker; the cursor holds
the last item's sort value and id, so under the default order a sandbox whose activity moves
while someone pages can be skipped or seen twice, and ``sort=createdAt`` walks stably.

The listing is eventually consistent: a deleted sandbox is still listed as it was (old
name, old state) for ``Timings.delete_list_lag`` seconds, and with a list lag every answer
comes from a snapshot up to that old.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Iterable
from typing import Any

from .clock import iso, parse_iso
from .core import StoreCore, _errored_deleted, _listing_copy
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
    "backupState",
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

# Every SandboxState but ``destroyed``, in the server's order (its validation message
# lists them so).
LISTABLE_STATES = (
    "creating",
    "restoring",
    "destroying",
    "started",
    "stopped",
    "starting",
    "stopping",
    "error",
    "build_failed",
    "pending_build",
    "building_snapshot",
    "unknown",
    "pulling_snapshot",
    "archived",
    "archiving",
    "resizing",
    "snapshotting",
    "forking",
    "pausing",
    "paused",
    "resuming",
)
SORT_FIELDS = ("name", "cpu", "memoryGib", "diskGib", "lastActivityAt", "createdAt")
SORT_ORDERS = ("asc", "desc")
DATE_FIELDS = frozenset({"lastActivityAt", "createdAt"})


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
        sort: str | None = None,
        order: str | None = None,
        include_errored_deleted: str | None = None,
    ) -> dict[str, Any]:
        with self._lock:
            page_size = _page_size(limit)
            wanted_labels = _decode_labels(labels)
            wanted_states = _states(states)
            field = _choice(sort, "sort", SORT_FIELDS, "lastActivityAt")
            descending = _choice(order, "order", SORT_ORDERS, "desc") == "desc"
            with_errored_deleted = include_errored_deleted == "true"
            key_of = self._sort_key(field)
            after = _decode_cursor(cursor, field) if cursor else None
            keyed = []
            for sb in self._visible_rows():
                if not _matches(sb, wanted_labels, wanted_states, id_prefix, name_prefix, with_errored_deleted):
                    continue
                key = (key_of(sb), sb.id)
                if after is not None and not (key < after if descending else key > after):
                    continue
                keyed.append((key, sb))
            keyed.sort(key=lambda pair: pair[0], reverse=descending)
            page = keyed[: page_size + 1]
            more = len(page) > page_size
            page = page[:page_size]
            return {
                "items": [self._list_item(sb) for _, sb in page],
                "nextCursor": _encode_cursor(page[-1][0], field) if more and page else None,
            }

    def _visible_rows(self) -> list[_Sandbox]:
        """What the listing sees: the store (or its lagging snapshot), with sandboxes deleted
        a moment ago still as they were."""
        rows = self._listing_rows()
        now = self.clock.time()
        for sandbox_id in [key for key, ghost in self._ghosts.items() if ghost.until <= now]:
            del self._ghosts[sandbox_id]
        if not self._ghosts:
            return rows
        ghosts = dict(self._ghosts)
        mixed = [ghosts.pop(sb.id).row if sb.id in ghosts else sb for sb in rows]
        return mixed + [ghost.row for ghost in ghosts.values()]

    def _listing_rows(self) -> list[_Sandbox]:
        """The sandboxes; with a list lag, a snapshot up to that old."""
        self._advance_pending()
        if self._list_lag <= 0:
            return list(self._by_id.values())
        now = self.clock.time()
        if self._snapshot is None or now - self._snapshot.taken_at >= self._list_lag:
            rows = [_listing_copy(sb) for sb in self._by_id.values()]
            self._snapshot = _ListSnapshot(taken_at=now, rows=rows)
        return self._snapshot.rows

    def _sort_key(self, field: str) -> Callable[[_Sandbox], Any]:
        if field == "lastActivityAt":
            return lambda sb: _millis(self._last_activity_at(sb))
        if field == "createdAt":
            return lambda sb: _millis(parse_iso(sb.data["createdAt"]))
        name = {"memoryGib": "memory", "diskGib": "disk"}.get(field, field)
        return lambda sb: sb.data[name]

    def _list_item(self, sb: _Sandbox) -> dict[str, Any]:
        full = self._render(sb)
        return {key: full[key] for key in LIST_ITEM_KEYS if key in full}


def _matches(
    sb: _Sandbox,
    labels: dict[str, str],
    states: set[str] | None,
    id_prefix: str | None,
    name_prefix: str | None,
    with_errored_deleted: bool,
) -> bool:
    data = sb.data
    # The server filters on the stored state, not the one its answers show.
    if states is not None and data["state"] not in states:
        return False
    if _errored_deleted(sb) and not with_errored_deleted:
        return False
    if id_prefix and not data["id"].lower().startswith(id_prefix.lower()):
        return False
    if name_prefix and not data["name"].lower().startswith(name_prefix.lower()):
        return False
    own = data["labels"]
    return all(own.get(key) == value for key, value in labels.items())


def _states(raw: Iterable[str]) -> set[str] | None:
    wanted = list(raw)
    if not wanted:
        return None
    if any(state not in LISTABLE_STATES for state in wanted):
        raise ApiError(400, f"each value must be one of the following values: {', '.join(LISTABLE_STATES)}")
    return set(wanted)


def _choice(raw: str | None, name: str, allowed: tuple[str, ...], default: str) -> str:
    if raw is None:
        return default
    if raw not in allowed:
        raise ApiError(400, f"{name} must be one of the following values: {', '.join(allowed)}")
    return raw


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
        raise ApiError(400, "Invalid labels JSON format") from None
    return _string_map(labels, "labels")


def _millis(timestamp: float) -> int:
    """Milliseconds, as the API's timestamps carry them."""
    return int(timestamp * 1000)


def _encode_cursor(key: tuple[Any, str], field: str) -> str:
    """Base64 of ``{"sortValue", "id"}``, as the server encodes its cursor."""
    value, sandbox_id = key
    sort_value = iso(value / 1000) if field in DATE_FIELDS else value
    return base64.b64encode(json.dumps({"sortValue": sort_value, "id": sandbox_id}).encode()).decode()


def _decode_cursor(cursor: str, field: str) -> tuple[Any, str]:
    try:
        decoded = json.loads(base64.b64decode(cursor + "=" * (-len(cursor) % 4)).decode())
        sort_value, sandbox_id = decoded["sortValue"], decoded["id"]
        if field in DATE_FIELDS:
            sort_value = _millis(parse_iso(sort_value))
        elif field != "name" and (isinstance(sort_value, bool) or not isinstance(sort_value, int)):
            raise ValueError(sort_value)
        if not isinstance(sandbox_id, str) or not isinstance(sort_value, (int, str)):
            raise ValueError(sandbox_id)
        return sort_value, sandbox_id
    except (ValueError, KeyError, TypeError, UnicodeDecodeError, binascii.Error):
        raise ApiError(400, f"Invalid cursor provided: {cursor}") from None
