"""Daytona's organisation webhooks as hosted Daytona sends them, through Svix.

Daytona (``apps/api/src/webhook``, v0.190.0) emits ``sandbox.created`` when a sandbox is
inserted and ``sandbox.state.updated`` whenever its stored state changes, each as one Svix
message (``message.create`` without an event id, so Svix names it ``msg_...``) with the
payload::

    {"event": "sandbox.state.updated", "timestamp": iso, "id": sandbox id,
     "organizationId": ..., "oldState": "started", "newState": "stopping", "updatedAt": iso}
    {"event": "sandbox.created", "timestamp": iso, "id": ..., "organizationId": ...,
     "state": "creating", "sandboxClass": "container", "createdAt": iso}

Svix POSTs it to every endpoint subscribed, signed with the endpoint's secret (headers
``svix-id``, ``svix-timestamp``, ``svix-signature``; signed again, with a new timestamp, on
every attempt), and retries any answer that is not 2xx or that fails to arrive on a schedule
(5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h; here ``retry_delays``, short by default). It
promises at least once, not in order: ``duplicates`` sends each attempt more than once, and
``hold()`` ... ``release(reverse=True)`` delivers what was held in the other order::

    fake.webhooks.subscribe("http://127.0.0.1:8000/api/webhooks/daytona", "whsec_...")
    fake.set_state(sandbox_id, "stopped")       # a sandbox.state.updated goes out at once
    fake.webhooks.wait_until_idle()             # every message delivered or given up
    fake.webhooks.attempts                      # what was sent and what the endpoint answered

Messages are sent from a background thread after the change, never under the store's lock.
"""

from __future__ import annotations

import base64
import heapq
import itertools
import json
import secrets
import string
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from svix.webhooks import Webhook

from .clock import iso

SANDBOX_EVENTS = ("sandbox.created", "sandbox.state.updated")
SVIX_RETRY_DELAYS = (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0)
TEST_RETRY_DELAYS = (0.2, 0.5, 1.0, 2.0)
SVIX_TIMEOUT_SECONDS = 15.0
_ALPHABET = string.ascii_letters + string.digits
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def new_secret() -> str:
    """A signing secret in Svix's form (``whsec_`` and 24 random bytes in base64)."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def new_message_id() -> str:
    """An id in Svix's form: ``msg_`` and 27 letters and digits."""
    return "msg_" + "".join(secrets.choice(_ALPHABET) for _ in range(27))


def signed_headers(secret: str, message_id: str, body: str, *, at: datetime | None = None) -> dict[str, str]:
    """The headers Svix sends with ``body``: id, timestamp and signature by ``secret``."""
    at = at or datetime.now(UTC)
    return {
        "content-type": "application/json",
        "user-agent": "Svix-Webhooks/1.0",
        "svix-id": message_id,
        "svix-timestamp": str(int(at.timestamp())),
        "svix-signature": Webhook(secret).sign(message_id, at, body),
    }


@dataclass(frozen=True)
class Subscription:
    url: str
    secret: str
    events: frozenset[str]


@dataclass(frozen=True)
class Message:
    id: str
    event: str
    sandbox_id: str
    body: str  # the JSON text, signed and sent byte for byte

    @property
    def payload(self) -> dict[str, Any]:
        return json.loads(self.body)


@dataclass(frozen=True)
class Attempt:
    """One POST of a message to an endpoint: ``status`` is the HTTP status, 0 when no answer."""

    message: Message
    url: str
    attempt: int
    status: int
    at: float = field(default_factory=time.time)

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


class WebhookSender:
    """The organisation's webhook endpoints and Svix's delivery to them (see the module)."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._subscriptions: list[Subscription] = []
        self._queue: list[tuple[float, int, Message, Subscription, int]] = []
        self._held: list[Message] | None = None
        self._sequence = itertools.count()
        self._in_flight = 0
        self._messages: list[Message] = []
        self._attempts: list[Attempt] = []
        self._closed = False
        self._generation = 0  # bumped by reset: attempts under way then are forgotten
        self.retry_delays: tuple[float, ...] = TEST_RETRY_DELAYS
        self.duplicates = 1
        self._thread: threading.Thread | None = None

    # ----- endpoints ----------------------------------------------------------------------

    def subscribe(self, url: str, secret: str, *, events: Iterable[str] = SANDBOX_EVENTS) -> Subscription:
        """Add an endpoint, as registered in Daytona's dashboard, for these event types."""
        subscription = Subscription(url=url, secret=secret, events=frozenset(events))
        with self._lock:
            self._subscriptions.append(subscription)
            if self._thread is None:
                self._closed = False
                self._thread = threading.Thread(target=self._deliver_forever, name="fake-daytona-webhooks", daemon=True)
                self._thread.start()
        return subscription

    def reset(self) -> None:
        """Forget every endpoint, message, attempt and option; nothing queued is sent."""
        with self._lock:
            self._generation += 1
            self._subscriptions.clear()
            self._queue.clear()
            self._held = None
            self._messages.clear()
            self._attempts.clear()
            self.retry_delays = TEST_RETRY_DELAYS
            self.duplicates = 1
            self._lock.notify_all()

    def close(self) -> None:
        """End the delivery thread (a later :meth:`subscribe` starts another)."""
        with self._lock:
            thread, self._thread = self._thread, None
            self._closed = True
            self._lock.notify_all()
        if thread is not None:
            thread.join(SVIX_TIMEOUT_SECONDS + 1)

    # ----- what happened ------------------------------------------------------------------

    @property
    def messages(self) -> list[Message]:
        with self._lock:
            return list(self._messages)

    @property
    def attempts(self) -> list[Attempt]:
        with self._lock:
            return list(self._attempts)

    def wait_until_idle(self, timeout: float = 10.0) -> bool:
        """Wait until nothing is queued or being sent (held messages aside); whether it was."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._queue or self._in_flight:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._lock.wait(min(left, 0.05))
        return True

    # ----- out of order -------------------------------------------------------------------

    def hold(self) -> None:
        """Keep new messages back until :meth:`release`."""
        with self._lock:
            if self._held is None:
                self._held = []

    def release(self, *, reverse: bool = False) -> list[Message]:
        """Send what was held, newest first with ``reverse``; returns those messages."""
        with self._lock:
            held, self._held = self._held or [], None
            for message in reversed(held) if reverse else held:
                self._enqueue(message, delay=0.0)
            return held

    def redeliver(self, message: Message) -> None:
        """Send a message again under the same id (Svix's "resend" in the dashboard)."""
        with self._lock:
            self._enqueue(message, delay=0.0)

    # ----- events (called by the store, under its lock: only queue) ------------------------

    def emit(self, event: str, fields: dict[str, Any], now: float) -> None:
        if not self._subscriptions:
            return
        payload = {"event": event, "timestamp": iso(now), **fields}
        message = Message(
            id=new_message_id(), event=event, sandbox_id=str(fields.get("id", "")), body=json.dumps(payload)
        )
        with self._lock:
            self._messages.append(message)
            if self._held is not None:
                self._held.append(message)
            else:
                self._enqueue(message, delay=0.0)

    def _enqueue(self, message: Message, *, delay: float) -> None:
        for subscription in self._subscriptions:
            if message.event in subscription.events:
                self._schedule(message, subscription, attempt=1, delay=delay)

    def _schedule(self, message: Message, subscription: Subscription, *, attempt: int, delay: float) -> None:
        entry = (time.monotonic() + delay, next(self._sequence), message, subscription, attempt)
        heapq.heappush(self._queue, entry)
        self._lock.notify_all()

    # ----- delivery -----------------------------------------------------------------------

    def _deliver_forever(self) -> None:
        while True:
            with self._lock:
                while not self._closed and (not self._queue or self._queue[0][0] > time.monotonic()):
                    wait = self._queue[0][0] - time.monotonic() if self._queue else None
                    self._lock.wait(wait)
                if self._closed:
                    return
                _, _, message, subscription, attempt = heapq.heappop(self._queue)
                copies, generation = self.duplicates, self._generation
                self._in_flight += 1
            statuses = []
            try:
                for _ in range(max(1, copies)):
                    statuses.append(self._post(message, subscription))
            finally:
                with self._lock:
                    self._in_flight -= 1
                    if generation != self._generation:
                        statuses = []
                    for status in statuses:
                        self._attempts.append(Attempt(message, subscription.url, attempt, status))
                    delivered = any(200 <= status < 300 for status in statuses)
                    if statuses and not delivered and subscription in self._subscriptions:
                        if attempt <= len(self.retry_delays):
                            delay = self.retry_delays[attempt - 1]
                            self._schedule(message, subscription, attempt=attempt + 1, delay=delay)
                    self._lock.notify_all()

    def _post(self, message: Message, subscription: Subscription) -> int:
        headers = signed_headers(subscription.secret, message.id, message.body)
        request = urllib.request.Request(subscription.url, data=message.body.encode(), headers=headers, method="POST")
        try:
            with _DIRECT.open(request, timeout=SVIX_TIMEOUT_SECONDS) as response:
                return response.status
        except urllib.error.HTTPError as error:
            return error.code
        except Exception:  # refused, reset, timed out, garbled: no answer
            return 0
