"""SSH traffic as use of the sandbox, for the portal's idle policy."""

from __future__ import annotations

import logging
import time

from django.db import connections

from sandboxes import services

log = logging.getLogger(__name__)

ACTIVITY_INTERVAL = 60.0  # seconds between two activity records of one connection


class ActivityClock:
    """The use of one SSH connection (its sessions, forwards and file transfers): every byte
    either way counts, recorded at most once a minute.

    The minute is the wall clock's (``time.time()``), the clock the idle policy measures with,
    so a test that moves the clock moves both. A clock set back counts as a new minute.
    """

    def __init__(self, gateway, target: services.SshTarget):
        self._gateway = gateway
        self._target = target
        self._last: float | None = None

    def touch(self) -> None:
        """Note traffic; on the event loop, cheap."""
        now = time.time()
        if self._last is not None and 0 <= now - self._last < ACTIVITY_INTERVAL:
            return
        self._last = now
        self._gateway.run_blocking(record_activity, self._target)


def record_activity(target: services.SshTarget) -> None:
    """Count SSH use towards the idle policy. Blocking; best effort."""
    try:
        services.ssh_record_activity(target=target)
    except Exception:  # a database hiccup must not end the session
        log.exception("could not record SSH activity on sandbox %s", target.remote_id)
    finally:
        # A minute passes between two calls of a connection, on any executor thread: keeping
        # a database connection open per thread would only hold database slots.
        connections.close_all()
