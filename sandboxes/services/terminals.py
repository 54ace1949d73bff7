"""Terminal sessions in a sandbox: the web terminal's PTY sessions, which the portal names,
counts and ends, and the :class:`Terminal` the doors bridge (the web terminal, the SSH gateway).

A web terminal session is minted here (a browser only ever names a session it was given),
registered as a :class:`TerminalSession` row, and lives in the sandbox beyond its websockets:
a reload or a reconnect finds the same shell. At most ``SANDBOX_TERMINAL_SESSIONS`` exist per
sandbox; a session nobody has been attached to for ``SANDBOX_TERMINAL_DETACHED_MINUTES`` is
ended by :func:`terminals_reap` (Daytona never reaps PTY sessions by itself).
"""

from __future__ import annotations

import logging
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connections, transaction
from django.db.models import F, Q
from django.db.models.functions import Greatest
from django.utils import timezone

from sandboxes.models import AccessGrant, Sandbox, SandboxState, TerminalSession
from sandboxes.providers.base import ProviderError
from sandboxes.providers.base import TerminalSession as ProviderTerminal

from .errors import SandboxError, provider_failures_as_sandbox_errors
from .grants import end_terminal_grant, grant_create, touch_terminal_grant
from .live import sandbox_changed
from .rows import portal_state, provider_for

log = logging.getLogger(__name__)

SESSION_PREFIX = "web-"


def lease_length() -> timedelta:
    """How long an attachment counts without being renewed: two renewals and a margin."""
    return timedelta(seconds=2.5 * settings.SANDBOX_TERMINAL_RENEW_SECONDS)


class Terminal:
    """One attachment to a PTY session in a sandbox: the provider's terminal session (whose
    docstrings say what each call does), with failures raised as :class:`SandboxError`."""

    __slots__ = ("_session",)

    def __init__(self, session: ProviderTerminal):
        self._session = session

    @property
    def session_id(self) -> str:
        return self._session.session_id

    @property
    def exit_code(self) -> int | None:
        return self._session.exit_code

    @property
    def replays_output(self) -> bool:
        """Whether a new attachment's first output is the session's recent output, kept by the
        provider itself (``replays_output`` of its terminal session)."""
        return bool(getattr(self._session, "replays_output", False))

    def read(self) -> bytes:
        try:
            return self._session.read()
        except ProviderError as error:
            raise SandboxError.from_provider(error) from error

    def write(self, data: bytes) -> None:
        try:
            self._session.write(data)
        except ProviderError as error:
            raise SandboxError.from_provider(error) from error

    def resize(self, cols: int, rows: int) -> None:
        try:
            self._session.resize(cols, rows)
        except ProviderError as error:
            raise SandboxError.from_provider(error) from error

    def detach(self) -> None:
        try:
            self._session.detach()
        except ProviderError as error:
            raise SandboxError.from_provider(error) from error

    def kill(self) -> None:
        try:
            self._session.kill()
        except ProviderError as error:
            raise SandboxError.from_provider(error) from error


class WebTerminal(Terminal):
    """A web terminal's attachment: typing into it counts as use of its session in the access
    ledger, written at most once every ``LEDGER_TOUCH_SECONDS`` (by the thread that writes)."""

    LEDGER_TOUCH_SECONDS = 60.0
    __slots__ = ("_sandbox_pk", "_used_from", "_touched")

    def __init__(self, session: ProviderTerminal, *, sandbox_pk: int, used_from: str | None):
        super().__init__(session)
        self._sandbox_pk = sandbox_pk
        self._used_from = used_from
        self._touched = time.time()  # the attach itself was recorded

    def write(self, data: bytes) -> None:
        super().write(data)
        now = time.time()
        if 0 <= now - self._touched < self.LEDGER_TOUCH_SECONDS:
            return
        self._touched = now
        try:
            touch_terminal_grant(
                sandbox_pk=self._sandbox_pk, session_id=self.session_id, used_from=self._used_from, now=timezone.now()
            )
        except Exception:  # the ledger's last use is best effort; the terminal carries on
            log.warning("recording the use of terminal session %s failed", self.session_id, exc_info=True)
        finally:
            connections.close_all()  # this writer thread's: it may not write again for hours


@dataclass(frozen=True)
class _Claim:
    session_id: str
    created: bool
    evicted: str = ""  # a detached session ended to make room


@provider_failures_as_sandbox_errors
def terminal_open(
    *,
    sandbox: Sandbox,
    session_id: str | None,
    cols: int,
    rows: int,
    now: datetime | None = None,
    client_address: str | None = None,
) -> Terminal:
    """Attach to the web terminal session ``session_id`` of the running sandbox (a login
    shell), or to a new one when ``session_id`` is None or names no session of this sandbox
    (ended, or never handed out): the returned terminal's ``session_id`` says which.

    Bounded: with ``SANDBOX_TERMINAL_SESSIONS`` sessions already, the one detached the longest
    is ended to make room; when every one of them is attached, ``SandboxError`` with code
    ``too_many_terminals`` (429). Never starts the sandbox: ``SandboxError`` of kind
    ``invalid_state`` when it is not running, ``not_found`` when it is gone. The attachment
    counts until :func:`terminal_release`, renewed by :func:`terminal_renew`. Each session is a
    ``terminal_session`` grant in the access ledger, used from ``client_address``. Blocking.
    """
    now = now or timezone.now()
    claim = _claim(sandbox, session_id, now, client_address)
    provider = provider_for(sandbox)
    if claim.evicted:
        _end_quietly(provider, sandbox.remote_id, claim.evicted)
    try:
        session = provider.open_terminal(sandbox.remote_id, session_id=claim.session_id, cols=cols, rows=rows)
    except BaseException:
        if claim.created:
            TerminalSession.objects.filter(session_id=claim.session_id).delete()
            end_terminal_grant(claim.session_id, now)
        else:
            terminal_release(session_id=claim.session_id, now=now)
        raise
    return WebTerminal(session, sandbox_pk=sandbox.pk, used_from=client_address)


def _claim(sandbox: Sandbox, session_id: str | None, now: datetime, client_address: str | None) -> _Claim:
    """Register the attachment under the sandbox's row lock, so that simultaneous tabs never
    exceed the bound; no provider call is made while the lock is held."""
    attached_until = now + lease_length()
    with transaction.atomic():
        Sandbox.objects.select_for_update().filter(pk=sandbox.pk).first()
        sessions = TerminalSession.objects.filter(sandbox=sandbox)
        sessions.exclude(remote_id=sandbox.remote_id).delete()  # shells of a sandbox that was replaced
        if session_id:
            reattached = sessions.filter(session_id=session_id).update(
                clients=F("clients") + 1, attached_until=Greatest(F("attached_until"), attached_until)
            )
            if reattached:
                touch_terminal_grant(sandbox_pk=sandbox.pk, session_id=session_id, used_from=client_address, now=now)
                return _Claim(session_id, created=False)
        evicted = ""
        if sessions.count() >= settings.SANDBOX_TERMINAL_SESSIONS:
            oldest_detached = sessions.filter(attached_until__lt=now).order_by("attached_until").first()
            if oldest_detached is None:
                raise SandboxError(
                    "too_many_terminals",
                    f"You have {settings.SANDBOX_TERMINAL_SESSIONS} terminals open already. Close one and try again.",
                    status=429,
                )
            evicted = oldest_detached.session_id
            oldest_detached.delete()
        new_id = SESSION_PREFIX + secrets.token_hex(12)
        TerminalSession.objects.create(
            sandbox=sandbox,
            session_id=new_id,
            remote_id=sandbox.remote_id,
            created_at=now,
            clients=1,
            attached_until=attached_until,
        )
        grant_create(
            sandbox=sandbox,
            kind=AccessGrant.Kind.TERMINAL_SESSION,
            secret=new_id,
            label="Web terminal",
            now=now,
            used_from=client_address,
        )
        sandbox_changed(sandbox)
    return _Claim(new_id, created=True, evicted=evicted)


def terminal_renew(*, session_id: str, now: datetime | None = None) -> None:
    """An attached client is still there: its attachment counts for another lease."""
    now = now or timezone.now()
    TerminalSession.objects.filter(session_id=session_id).update(
        attached_until=Greatest(F("attached_until"), now + lease_length())
    )


def terminal_release(*, session_id: str, ended: bool = False, now: datetime | None = None) -> None:
    """A client detached (``ended``: because the shell ended, which forgets the session). The
    last one to leave starts the session's detached clock."""
    if ended:
        TerminalSession.objects.filter(session_id=session_id).delete()
        end_terminal_grant(session_id, now or timezone.now())
        return
    now = now or timezone.now()
    sessions = TerminalSession.objects.filter(session_id=session_id)
    sessions.update(clients=Greatest(F("clients") - 1, 0))
    sessions.filter(clients=0).update(attached_until=now)


def terminals_reap(*, now: datetime) -> int:
    """End the web terminal sessions nobody has been attached to for
    ``SANDBOX_TERMINAL_DETACHED_MINUTES`` (their lease ran out that long ago), and forget those
    whose sandbox stopped or was replaced (their shells ended with it). Returns how many were
    ended; a session the provider could not end is kept for the next pass."""
    TerminalSession.objects.filter(
        ~Q(sandbox__state=SandboxState.STARTED) | ~Q(sandbox__remote_id=F("remote_id"))
    ).delete()
    cutoff = now - timedelta(minutes=settings.SANDBOX_TERMINAL_DETACHED_MINUTES)
    ended = 0
    for session in TerminalSession.objects.filter(attached_until__lt=cutoff).select_related("sandbox"):
        try:
            provider_for(session.sandbox).end_terminal(session.remote_id, session.session_id)
        except ProviderError as exc:
            log.warning("ending terminal session %s failed: %s", session.session_id, exc)
            continue
        # Deleted only if nobody attached meanwhile.
        ended += TerminalSession.objects.filter(pk=session.pk, attached_until__lt=cutoff).delete()[0]
    if ended:
        log.info("ended %s detached terminal sessions", ended)
    return ended


def _end_quietly(provider, remote_id: str, session_id: str) -> None:
    try:
        provider.end_terminal(remote_id, session_id)
    except ProviderError as exc:
        log.warning("ending terminal session %s failed: %s", session_id, exc)


def sandbox_remote_state(*, sandbox: Sandbox) -> SandboxState | None:
    """The portal's state for what the provider reports now (``gone`` when it is gone); None
    when the provider cannot be asked. Reads only: the row is left as it is. Blocking."""
    try:
        remote = provider_for(sandbox).get(sandbox.remote_id)
    except ProviderError:
        return None
    return portal_state(remote)
