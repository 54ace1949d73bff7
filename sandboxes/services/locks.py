"""Locks: a sandbox's row for one action, many rows for a bulk change, and process-wide
exclusive runs (reconcile, the idle policy)."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from contextlib import contextmanager

from django.core.cache import cache
from django.db import DatabaseError, connection, transaction

from joepro.request_context import sandbox_in_play
from sandboxes.models import Sandbox
from sandboxes.providers.base import ProviderError

from .errors import SandboxError
from .live import sandbox_changed
from .rows import record_failure

log = logging.getLogger(__name__)


@contextmanager
def locked_for_action(sandbox: Sandbox, *, related: tuple[str, ...] = ()) -> Iterator[Sandbox]:
    """The sandbox's row, locked for one action on the provider and saved when it ends.

    A ``ProviderError`` or ``SandboxError`` raised by the action is recorded as the row's last
    error and committed with the row, then raised again: a failed call never rolls back what
    the portal learnt before it (a new remote id, a state). The owner's pages are told once it
    commits.
    """
    failure: ProviderError | SandboxError | None = None
    with sandbox_in_play(sandbox.pk), transaction.atomic():
        row = Sandbox.objects.select_for_update().select_related(*related).get(pk=sandbox.pk)
        try:
            yield row
        except (ProviderError, SandboxError) as exc:
            record_failure(row, exc)
            failure = exc
        row.save()
        sandbox_changed(row)
    if failure is not None:
        raise failure


def lock_rows(queryset, *, skip_locked: bool = False):
    """``select_for_update`` of the sandbox rows only (not joined users), where supported."""
    of = ("self",) if connection.features.has_select_for_update_of else ()
    return queryset.select_for_update(skip_locked=skip_locked, of=of)


@contextmanager
def exclusive_lock(name: str) -> Iterator[bool]:
    """Yield whether this process now holds the lock ``name``; never waits for it.

    PostgreSQL: a session-level advisory lock on this thread's connection, released on exit or
    when the connection dies (a killed worker cannot leave it behind). It needs a session that
    stays with the process, i.e. no transaction-pooling proxy in between. Elsewhere (SQLite,
    the embedded default): a cache entry that expires after an hour.
    """
    if connection.vendor == "postgresql":
        key = int.from_bytes(hashlib.sha256(f"joepro:{name}".encode()).digest()[:8], "big", signed=True)
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_try_advisory_lock(%s)", [key])
            acquired = bool(cursor.fetchone()[0])
        try:
            yield acquired
        finally:
            if acquired:
                try:
                    with connection.cursor() as cursor:
                        cursor.execute("SELECT pg_advisory_unlock(%s)", [key])
                except DatabaseError:  # the connection is gone, and the lock with it
                    log.warning("could not release lock %s; its connection is gone", name)
        return
    cache_key = f"sandbox-lock:{name}"
    acquired = cache.add(cache_key, "held", timeout=3600)
    try:
        yield acquired
    finally:
        if acquired:
            cache.delete(cache_key)
