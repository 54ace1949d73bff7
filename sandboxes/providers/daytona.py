"""Sandboxes on Daytona, through its official SDK (the only module that imports it).

Every REST call goes through the SDK's generated ``SandboxApi`` by sandbox id, with our own
deadline and retry policy around it:

- The SDK's own waits (``create``/``start``/``stop`` with ``timeout=``) arm ``SIGALRM`` in the
  main thread, cancelling any alarm the caller had, and inject an asynchronous exception in
  other threads, which can land anywhere (inside a connection-pool lock, say). Waiting here is
  a plain loop of ``GET /sandbox/{id}`` against ``time.monotonic()``, so a wait that runs out
  leaves no alarm and no half-finished request behind, in any thread.
- Methods on the SDK's ``Sandbox`` need a ``GET`` first to build the object; calling the API by
  id saves that round trip on every launch. Only the terminal needs the object (its PTY goes
  through the sandbox's toolbox proxy), and it builds one per attachment.
- The SDK leaves retries to urllib3, which repeats some failed GETs at once and would sleep
  through any ``Retry-After`` on them, however long. The policy here retries what is safe to
  repeat, with backoff, within a bounded budget, and reports longer hints to the caller.

Socket.IO state events only shorten the SDK's own waits, which are not used, so the client runs
in polling mode: no background websocket and no connection attempts per sandbox object.
"""

from __future__ import annotations

import http.client
import json
import logging
import math
import queue
import random
import re
import shlex
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from email.utils import parsedate_to_datetime
from http import HTTPStatus
from typing import Any, TypeVar

import urllib3.exceptions
from daytona import Daytona, DaytonaConfig, DaytonaConflictError, DaytonaError, Image, PtySize
from daytona.handle.pty_handle import PtyHandle
from daytona_api_client import CreateBuildInfo, CreateSandbox, SandboxApi
from daytona_api_client.exceptions import ApiException

from .base import (
    ErrorKind,
    ProviderError,
    RemoteSandbox,
    RemoteState,
    SandboxAccess,
    SandboxProvider,
    SandboxSpec,
    SignedLink,
    SshAccess,
    TerminalSession,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")

PAGE_SIZE = 200  # the API's maximum page size for GET /sandbox
FIRST_POLL_SECONDS = 0.1
POLL_GROWTH = 1.25  # a wait overshoots the transition by at most a quarter of its length
MAX_POLL_SECONDS = 1.0
FIRST_BACKOFF_SECONDS = 0.25
MAX_SERVER_MESSAGE = 200
POOL_THREADS = 32  # for the concurrent calls of mint_access and revoke_access
RETRIED_KINDS = frozenset({ErrorKind.UNAVAILABLE, ErrorKind.RATE_LIMITED})
TROUBLE_KINDS = RETRIED_KINDS | {ErrorKind.TIMEOUT}
PTY_POLL_SECONDS = 1.0  # how soon a detached terminal's pump thread notices and ends
PTY_QUEUED_CHUNKS = 256  # output frames held for a slow reader before the pump waits
PTY_MAX_READ = 1 << 20  # bytes joined into one read when output arrives faster than it is read

_REMOTE_STATES = {
    "creating": RemoteState.CREATING,
    "pending_build": RemoteState.CREATING,
    "building_snapshot": RemoteState.CREATING,
    "pulling_snapshot": RemoteState.CREATING,
    "starting": RemoteState.STARTING,
    "restoring": RemoteState.STARTING,
    "resuming": RemoteState.STARTING,
    # Operator-initiated operations that leave the sandbox as it was: callers wait them out
    # like a start rather than acting on a sandbox that is busy.
    "snapshotting": RemoteState.STARTING,
    "forking": RemoteState.STARTING,
    "resizing": RemoteState.STARTING,
    "started": RemoteState.STARTED,
    "stopping": RemoteState.STOPPING,
    "archiving": RemoteState.STOPPING,
    "pausing": RemoteState.STOPPING,
    "stopped": RemoteState.STOPPED,
    "paused": RemoteState.STOPPED,
    "archived": RemoteState.ARCHIVED,
    "error": RemoteState.ERROR,
    "build_failed": RemoteState.ERROR,
    "destroying": RemoteState.DESTROYING,
    "destroyed": RemoteState.DESTROYING,
}

RUNNING = frozenset({RemoteState.STARTED})
AT_REST = frozenset({RemoteState.STOPPED, RemoteState.ARCHIVED})
HEADING_TO_RUNNING = frozenset({RemoteState.STARTING, RemoteState.STARTED})
HEADING_TO_REST = frozenset({RemoteState.STOPPING}) | AT_REST


def remote_state(daytona_state: str) -> RemoteState:
    """The portal's state for a Daytona state word (``destroyed`` means gone: see callers)."""
    return _REMOTE_STATES.get(daytona_state, RemoteState.UNKNOWN)


class DaytonaProvider(SandboxProvider):
    """Daytona sandboxes. One SDK client per instance, built on first use; thread-safe."""

    name = "daytona"

    def __init__(
        self,
        *,
        api_key: str,
        api_url: str,
        target: str,
        image: str = "",
        snapshot: str = "",
        http_timeout: float = 10.0,
        max_retries: int = 3,
        max_retry_wait: float = 8.0,
        terminal_port: int = 22222,
    ):
        self._api_key = api_key
        self._api_url = api_url
        self._target = target
        self._image = image
        self._snapshot = snapshot
        self._http_timeout = float(http_timeout)
        self._max_retries = max_retries
        self._max_retry_wait = max_retry_wait
        self._terminal_port = terminal_port
        self._lock = threading.Lock()
        self._client: Daytona | None = None
        self._sandbox_api: SandboxApi | None = None
        self._executor: ThreadPoolExecutor | None = None

    # -- lookups ------------------------------------------------------------------------

    def find(self, name: str) -> RemoteSandbox | None:
        sandbox = self._read(name)
        # The API matches ids before names; a hit by id is not a sandbox of that name.
        if sandbox is None or sandbox.name != name or sandbox.state is RemoteState.DESTROYING:
            return None
        return sandbox

    def get(self, remote_id: str) -> RemoteSandbox | None:
        return self._read(remote_id)

    def list_managed(self, labels: Mapping[str, str]) -> Iterator[RemoteSandbox]:
        label_filter = json.dumps(dict(labels))
        cursor: str | None = None
        while True:
            sandboxes, cursor = self._list_page(label_filter, cursor)
            yield from sandboxes
            if not cursor:
                return

    # -- lifecycle ----------------------------------------------------------------------

    def create(self, spec: SandboxSpec, *, wait_seconds: float) -> RemoteSandbox:
        deadline = _deadline(wait_seconds)
        request = self._create_request(spec)
        # A hosted create may hold the response until the sandbox runs, so the read timeout
        # stretches to the caller's wait instead of declaring the outcome unknown early.
        read_timeout = max(self._http_timeout, float(wait_seconds))
        sandbox = self._call(
            "create",
            lambda: _remote_sandbox(self._api.create_sandbox(request, _request_timeout=read_timeout)),
            idempotent=False,
        )
        logger.info("Daytona sandbox %s created (%s)", sandbox.id, sandbox.backend_state)
        return self._wait_for(sandbox, RUNNING, deadline)

    def start(self, remote_id: str, *, wait_seconds: float) -> RemoteSandbox:
        deadline = _deadline(wait_seconds)
        sandbox = self._change_state("start", remote_id, self._api.start_sandbox, HEADING_TO_RUNNING)
        return self._wait_for(sandbox, RUNNING, deadline)

    def stop(self, remote_id: str, *, wait_seconds: float) -> RemoteSandbox:
        deadline = _deadline(wait_seconds)
        sandbox = self._change_state("stop", remote_id, self._api.stop_sandbox, HEADING_TO_REST)
        self._revoke_ssh_tokens(remote_id)
        return self._wait_for(sandbox, AT_REST, deadline)

    def recover(self, remote_id: str, *, wait_seconds: float) -> RemoteSandbox:
        deadline = _deadline(wait_seconds)
        sandbox = self._change_state("recover", remote_id, self._api.recover_sandbox, HEADING_TO_RUNNING)
        return self._wait_for(sandbox, RUNNING, deadline)

    def delete(self, remote_id: str) -> None:
        with _gone_is_done():
            self._call(
                "delete", lambda: self._api.delete_sandbox(remote_id, _request_timeout=self._http_timeout)
            )
        logger.info("Daytona sandbox %s deleted", remote_id)

    # -- access -------------------------------------------------------------------------

    def mint_access(
        self, remote_id: str, *, ssh_minutes: int, preview_port: int, link_seconds: int
    ) -> SandboxAccess:
        ssh, preview, terminal = self._run_concurrently(
            lambda: self._create_ssh_access(remote_id, ssh_minutes),
            lambda: self._sign_link(remote_id, preview_port, link_seconds),
            lambda: self._sign_link(remote_id, self._terminal_port, link_seconds),
        )
        return SandboxAccess(ssh=ssh, preview=preview, terminal=terminal)

    def revoke_access(self, remote_id: str, *, preview_port: int, links: list[SignedLink]) -> None:
        self._run_concurrently(
            lambda: self._revoke_ssh_tokens(remote_id),
            *(lambda link=link: self._expire_link(remote_id, link, preview_port) for link in links),
        )

    def refresh_activity(self, remote_id: str) -> None:
        self._call(
            "refresh activity",
            lambda: self._api.update_last_activity(remote_id, _request_timeout=self._http_timeout),
        )

    # -- terminal -----------------------------------------------------------------------

    def open_terminal(self, remote_id: str, *, session_id: str, cols: int, rows: int) -> TerminalSession:
        """Through the toolbox API: create the PTY session, or attach when it exists (the
        create is refused with 409 then, before any upgrade), and size it to the caller's
        window, which may differ from the one it was created for."""
        sandbox = self._call("get", lambda: self._sdk.get(remote_id, request_timeout=self._http_timeout))
        state = remote_state(_state_word(sandbox.state))
        if state is RemoteState.DESTROYING:
            raise ProviderError("The Daytona sandbox no longer exists.", kind=ErrorKind.NOT_FOUND)
        if state is not RemoteState.STARTED:
            raise ProviderError(
                f"The sandbox is not running ({_state_word(sandbox.state)}).", kind=ErrorKind.INVALID_STATE
            )
        size = PtySize(rows=rows, cols=cols)
        process = sandbox.process
        for _ in range(2):  # a shell that exits between the refused create and the attach is made again
            try:
                handle = process.create_pty_session(session_id, pty_size=size)
            except DaytonaConflictError:
                pass
            except Exception as exc:
                raise self._terminal_error(exc, "open terminal") from exc
            else:
                return DaytonaTerminal(handle, call=self._call)
            try:
                handle = process.connect_pty_session(session_id)
            except DaytonaError as exc:
                if exc.status_code:
                    raise self._terminal_error(exc, "attach terminal") from exc
                continue  # no status: the daemon refused after the upgrade (no such session)
            except Exception as exc:
                raise self._terminal_error(exc, "attach terminal") from exc
            terminal = DaytonaTerminal(handle, call=self._call)
            try:
                terminal.resize(cols, rows)
            except ProviderError:
                terminal.detach()
                raise
            return terminal
        raise ProviderError("Daytona attach terminal failed: the session ended while attaching.")

    def _terminal_error(self, exc: Exception, operation: str) -> ProviderError:
        error = provider_error(exc, operation, idempotent=True, secrets=(self._api_key,))
        if error.kind is ErrorKind.CONFLICT:
            # The sandbox stopped after the lookup: the toolbox refuses its PTYs with 409.
            error = ProviderError(error.message, kind=ErrorKind.INVALID_STATE)
        _log_failure(operation, error)
        return error

    # -- building blocks ----------------------------------------------------------------

    @property
    def _api(self) -> SandboxApi:
        if self._sandbox_api is None:
            with self._lock:
                if self._sandbox_api is None:
                    self._sandbox_api = self._connect()
        return self._sandbox_api

    @property
    def _sdk(self) -> Daytona:
        self._api  # noqa: B018  (builds the client on first use)
        assert self._client is not None
        return self._client

    def _connect(self) -> SandboxApi:
        if not self._api_key:
            raise ProviderError("Daytona is not configured (no API key).", kind=ErrorKind.REJECTED)
        config = DaytonaConfig(
            api_key=self._api_key,
            api_url=self._api_url,
            target=self._target,
            use_deprecated_polling=True,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            client = Daytona(config)
        self._client = client
        # The generated API addresses sandboxes by id; the SDK keeps it on the client.
        api: SandboxApi = client._sandbox_api
        # urllib3's default retry sleeps through any Retry-After on a GET, however long;
        # hints are honoured by ``_Backoff`` instead, within its budget.
        pool = api.api_client.rest_client.pool_manager
        pool.connection_pool_kw["retries"] = urllib3.Retry(total=3, respect_retry_after_header=False)
        return api

    def _pool(self) -> ThreadPoolExecutor:
        if self._executor is None:
            with self._lock:
                if self._executor is None:
                    self._executor = ThreadPoolExecutor(max_workers=POOL_THREADS, thread_name_prefix="daytona")
        return self._executor

    def _run_concurrently(self, first: Callable[[], Any], *others: Callable[[], Any]) -> list[Any]:
        """Run ``first`` here and the others on the pool; return every result in order.

        Waits for all of them before raising the first failure, so nothing keeps running
        behind the caller's back.
        """
        futures: list[Future[Any]] = [self._pool().submit(call) for call in others]
        outcomes: list[Any] = []
        failure: BaseException | None = None
        try:
            outcomes.append(first())
        except BaseException as exc:  # collected, re-raised below once the pool is done
            failure = exc
        for future in futures:
            try:
                outcomes.append(future.result())
            except BaseException as exc:
                failure = failure or exc
        if failure is not None:
            raise failure
        return outcomes

    def _list_page(self, label_filter: str, cursor: str | None) -> tuple[list[RemoteSandbox], str | None]:
        """One page of sandboxes and the cursor of the next page (``None`` after the last)."""
        return self._call(
            "list sandboxes",
            lambda: _page(
                self._api.list_sandboxes(
                    labels=label_filter, cursor=cursor, limit=PAGE_SIZE, _request_timeout=self._http_timeout
                )
            ),
        )

    def _read(self, id_or_name: str, deadline: float | None = None) -> RemoteSandbox | None:
        try:
            sandbox = self._call(
                "get",
                lambda: _remote_sandbox(
                    self._api.get_sandbox(id_or_name, _request_timeout=self._http_timeout)
                ),
                deadline=deadline,
            )
        except ProviderError as error:
            if error.kind is ErrorKind.NOT_FOUND:
                return None
            raise
        return None if sandbox.backend_state == "destroyed" else sandbox

    def _change_state(
        self,
        operation: str,
        remote_id: str,
        post: Callable[..., Any],
        heading: frozenset[RemoteState],
    ) -> RemoteSandbox:
        """POST a state change; a refusal counts as success when the sandbox already is, or
        is becoming, what was asked (a repeated call, or a retry after a lost response)."""
        try:
            return self._call(
                operation,
                lambda: _remote_sandbox(post(remote_id, _request_timeout=self._http_timeout)),
            )
        except ProviderError as error:
            if error.kind not in (ErrorKind.CONFLICT, ErrorKind.INVALID_STATE):
                raise
            current = self._read(remote_id)
            if current is None:
                raise ProviderError(
                    f"Daytona {operation} failed: the sandbox no longer exists.", kind=ErrorKind.NOT_FOUND
                ) from error
            if current.state not in heading:
                raise
            return current

    def _wait_for(
        self, sandbox: RemoteSandbox, targets: frozenset[RemoteState], deadline: float
    ) -> RemoteSandbox:
        """Poll until ``sandbox`` reaches one of ``targets`` or errors, or the deadline passes.

        Returns the last state seen. A read that keeps failing ends the wait early with that
        state too: the sandbox exists, and the caller polls :meth:`get` later.
        """
        interval = FIRST_POLL_SECONDS
        while sandbox.state not in targets and sandbox.state is not RemoteState.ERROR:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            time.sleep(min(interval, remaining))
            interval = min(interval * POLL_GROWTH, MAX_POLL_SECONDS)
            try:
                current = self._read(sandbox.id, deadline)
            except ProviderError as error:
                if not error.retryable:
                    raise
                logger.info("Daytona sandbox %s: wait ended early (%s)", sandbox.id, error.kind.value)
                break
            if current is None:
                raise ProviderError("The Daytona sandbox no longer exists.", kind=ErrorKind.NOT_FOUND)
            sandbox = current
        return sandbox

    def _create_request(self, spec: SandboxSpec) -> CreateSandbox:
        fields: dict[str, Any] = {
            "name": spec.name,
            "labels": dict(spec.labels),
            "env": dict(spec.env),
            "auto_stop_interval": spec.auto_stop_minutes,
            "public": False,
            "target": self._target or None,
        }
        snapshot = spec.snapshot or ("" if spec.image else self._snapshot)
        image = spec.image or self._image
        if snapshot:
            fields["snapshot"] = snapshot  # resources come from the snapshot
        elif image:
            fields["build_info"] = CreateBuildInfo(dockerfile_content=Image.base(image).dockerfile())
            fields.update(cpu=spec.cpu, memory=spec.memory_gb, disk=spec.disk_gb)
        return CreateSandbox(**fields)

    def _create_ssh_access(self, remote_id: str, minutes: int) -> SshAccess:
        return self._call(
            "create SSH access",
            lambda: _ssh_access(
                self._api.create_ssh_access(
                    remote_id, expires_in_minutes=minutes, _request_timeout=self._http_timeout
                )
            ),
        )

    def _revoke_ssh_tokens(self, remote_id: str) -> None:
        # Without ``token`` the API revokes every token of the sandbox. (The SDK's
        # ``Sandbox.revoke_ssh_access(token)`` sends the token in the wrong place, which
        # also revokes all of them.)
        with _gone_is_done():
            self._call(
                "revoke SSH access",
                lambda: self._api.revoke_ssh_access(remote_id, _request_timeout=self._http_timeout),
            )

    def _sign_link(self, remote_id: str, port: int, seconds: int) -> SignedLink:
        expires_at = datetime.now(timezone.utc) + timedelta(seconds=seconds)
        return self._call(
            "sign preview link",
            lambda: _signed_link(
                self._api.get_signed_port_preview_url(
                    remote_id, port, expires_in_seconds=seconds, _request_timeout=self._http_timeout
                ),
                expires_at,
            ),
        )

    def _expire_link(self, remote_id: str, link: SignedLink, default_port: int) -> None:
        if not link.token:
            return
        with _gone_is_done():
            self._call(
                "expire preview link",
                lambda: self._api.expire_signed_port_preview_url(
                    remote_id, link.port or default_port, link.token, _request_timeout=self._http_timeout
                ),
                secrets=(link.token,),
            )

    def _call(
        self,
        operation: str,
        call: Callable[[], T],
        *,
        idempotent: bool = True,
        deadline: float | None = None,
        secrets: tuple[str, ...] = (),
    ) -> T:
        """Make one API call, retrying transient failures within the retry budget.

        ``idempotent=False`` marks a call that must not be repeated when the backend may have
        acted: it is retried only after a response proves it did not.
        """
        backoff = _Backoff(self._max_retries, self._max_retry_wait, deadline)
        while True:
            try:
                return call()
            except ProviderError:
                raise
            except Exception as exc:
                error = provider_error(
                    exc, operation, idempotent=idempotent, secrets=(self._api_key, *secrets)
                )
                delay = backoff.next_delay(error)
                if delay is None:
                    _log_failure(operation, error)
                    raise error from exc
            logger.info("Daytona %s: %s, retrying in %.2fs", operation, error.kind.value, delay)
            time.sleep(delay)


class DaytonaTerminal(TerminalSession):
    """A PTY session attached through the SDK's ``PtyHandle``.

    The handle only offers a blocking iterator, which a disconnect does not wake, so a pump
    thread waits on it in slices of ``PTY_POLL_SECONDS`` and hands output over through a
    bounded queue; :meth:`detach` wakes the reader at once.
    """

    def __init__(self, handle: PtyHandle, *, call: Callable[..., Any]):
        self.session_id = handle.session_id
        self._handle = handle
        self._call = call
        self._output: queue.Queue[bytes | None] = queue.Queue(PTY_QUEUED_CHUNKS)
        self._detached = threading.Event()
        self._at_end = False
        self._pump = threading.Thread(target=self._run_pump, name=f"pty-{self.session_id}", daemon=True)
        self._pump.start()

    def read(self) -> bytes:
        if self._at_end:
            return b""
        chunk = self._output.get()
        if chunk is None:
            self._at_end = True
            return b""
        parts, size = [chunk], len(chunk)
        while size < PTY_MAX_READ:
            try:
                chunk = self._output.get_nowait()
            except queue.Empty:
                break
            if chunk is None:
                self._at_end = True
                break
            parts.append(chunk)
            size += len(chunk)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def write(self, data: bytes) -> None:
        # Not retried: the bytes may have reached the shell.
        try:
            self._handle.send_input(data)
        except Exception as exc:
            raise ProviderError("The terminal connection to Daytona was lost.") from exc

    def resize(self, cols: int, rows: int) -> None:
        self._call("resize terminal", lambda: self._handle.resize(PtySize(rows=rows, cols=cols)))

    def detach(self) -> None:
        self._detached.set()
        self._handle.disconnect()
        self._wake_reader()

    def kill(self) -> None:
        with _gone_is_done():
            self._call("kill terminal", self._handle.kill)

    @property
    def exit_code(self) -> int | None:
        return self._handle.exit_code

    def _run_pump(self) -> None:
        handle = self._handle
        try:
            while not self._detached.is_set():
                handle.wait(on_data=self._deliver, timeout=PTY_POLL_SECONDS)
                # The handle records why its stream ended: an exit code, an error, or closed.
                if handle.exit_code is not None or handle.error is not None or not handle.is_connected():
                    break
        finally:
            self._wake_reader()

    def _deliver(self, chunk: bytes) -> None:
        while not self._detached.is_set():
            try:
                self._output.put(chunk, timeout=PTY_POLL_SECONDS)
                return
            except queue.Full:
                continue

    def _wake_reader(self) -> None:
        """Queue the end marker, dropping unread output if the queue is full (the reader has
        gone, or is about to learn that the stream ended)."""
        while True:
            try:
                self._output.put_nowait(None)
                return
            except queue.Full:
                try:
                    self._output.get_nowait()
                except queue.Empty:
                    pass


@contextmanager
def _gone_is_done() -> Iterator[None]:
    """For calls whose purpose is met when the thing is already gone."""
    try:
        yield
    except ProviderError as error:
        if error.kind is not ErrorKind.NOT_FOUND:
            raise


def _log_failure(operation: str, error: ProviderError) -> None:
    # Lookups of absent sandboxes and refused transitions are routine; outages are not.
    level = logging.WARNING if error.kind in TROUBLE_KINDS else logging.DEBUG
    logger.log(level, "Daytona %s failed: %s", operation, error.kind.value)


@dataclass
class _Backoff:
    """Exponential backoff with jitter, bounded in retries and in total sleep."""

    retries_left: int
    sleep_left: float
    deadline: float | None = None
    attempt: int = 0

    def next_delay(self, error: ProviderError) -> float | None:
        """Seconds to sleep before the next attempt, or ``None`` to give up now."""
        if not error.retryable or error.kind not in RETRIED_KINDS or self.retries_left <= 0:
            return None
        budget = self.sleep_left
        if self.deadline is not None:
            budget = min(budget, self.deadline - time.monotonic())
        if error.retry_after is not None:
            delay = error.retry_after  # the backend's hint, never shortened
        else:
            delay = min(FIRST_BACKOFF_SECONDS * 2**self.attempt * random.uniform(0.5, 1.0), budget)
        if delay > budget or budget <= 0:
            return None
        self.retries_left -= 1
        self.sleep_left -= delay
        self.attempt += 1
        return delay


# -- error mapping ----------------------------------------------------------------------


def provider_error(
    exc: Exception, operation: str, *, idempotent: bool, secrets: tuple[str, ...] = ()
) -> ProviderError:
    """The :class:`ProviderError` for any failure of a Daytona call.

    ``idempotent`` decides what an unanswered request means: for a call that may be
    repeated, a transient failure; otherwise an unknown outcome (``TIMEOUT``), which the
    caller resolves by looking the sandbox up. ``secrets`` are scrubbed from the message.
    """
    exc = _unwrapped(exc)
    if isinstance(exc, ApiException) and exc.status:
        detail = _server_message(exc.body, secrets)
        return _http_error(int(exc.status), detail, exc.headers, operation, idempotent=idempotent)
    if isinstance(exc, DaytonaError) and exc.status_code:
        detail = _scrubbed(exc.message, secrets)
        return _http_error(int(exc.status_code), detail, exc.headers, operation, idempotent=idempotent)
    if _never_sent(exc):
        return ProviderError(
            f"Daytona {operation} failed: could not connect to Daytona.",
            kind=ErrorKind.UNAVAILABLE,
            retryable=True,
        )
    unanswered = _is_transport_failure(exc)
    if not idempotent:
        reason = "no response from Daytona" if unanswered else "unexpected response from Daytona"
        return ProviderError(
            f"Daytona {operation}: {reason}; the request may have taken effect.", kind=ErrorKind.TIMEOUT
        )
    if unanswered:
        return ProviderError(
            f"Daytona {operation} failed: no response from Daytona.",
            kind=ErrorKind.UNAVAILABLE,
            retryable=True,
        )
    return ProviderError(f"Daytona {operation} failed: unexpected response from Daytona.")


def _unwrapped(exc: Exception) -> Exception:
    """The failure behind the SDK's ``DaytonaError`` wrappers (the SDK objects' methods raise
    them ``from`` the API or transport exception), as far as the cause says more."""
    while isinstance(exc, DaytonaError) and isinstance(exc.__cause__, Exception):
        cause = exc.__cause__
        if exc.status_code and not isinstance(cause, (ApiException, DaytonaError)):
            break  # e.g. a refused websocket upgrade: the wrapper holds its status
        exc = cause
    return exc


def _http_error(
    status: int, detail: str, headers: Mapping[str, Any] | None, operation: str, *, idempotent: bool
) -> ProviderError:
    detail = detail or _status_phrase(status)
    message = f"Daytona {operation} failed: {detail} (HTTP {status})."
    retry_after = _retry_after(headers or {})
    if status in (404, 410):
        return ProviderError(message, kind=ErrorKind.NOT_FOUND)
    if status == 409:
        return ProviderError(message, kind=ErrorKind.CONFLICT)
    if status == 400 and "state" in detail.lower():
        return ProviderError(message, kind=ErrorKind.INVALID_STATE)
    if status == 429:
        return ProviderError(message, kind=ErrorKind.RATE_LIMITED, retryable=True, retry_after=retry_after)
    if status in (408, 504) and not idempotent:
        # A gateway gave up waiting; the backend may still have acted.
        return ProviderError(
            f"Daytona {operation}: {detail} (HTTP {status}); the request may have taken effect.",
            kind=ErrorKind.TIMEOUT,
        )
    if status >= 500 or status == 408:
        return ProviderError(message, kind=ErrorKind.UNAVAILABLE, retryable=True, retry_after=retry_after)
    return ProviderError(message, kind=ErrorKind.REJECTED)


def _never_sent(exc: BaseException) -> bool:
    """Whether the request certainly never reached Daytona (no connection was made)."""
    reason = exc.reason if isinstance(exc, urllib3.exceptions.MaxRetryError) else exc
    return isinstance(reason, (urllib3.exceptions.NewConnectionError, urllib3.exceptions.ConnectTimeoutError))


def _is_transport_failure(exc: BaseException) -> bool:
    return isinstance(exc, (urllib3.exceptions.HTTPError, http.client.HTTPException, OSError)) or (
        isinstance(exc, ApiException) and not exc.status
    )


def _server_message(body: str | None, secrets: tuple[str, ...]) -> str:
    """The error envelope's message, without secrets or URLs, shortened."""
    if not body:
        return ""
    try:
        envelope = json.loads(body)
    except ValueError:
        return ""
    if not isinstance(envelope, dict):
        return ""
    text = envelope.get("message") or envelope.get("error")
    if isinstance(text, list):
        text = "; ".join(str(part) for part in text)
    if not isinstance(text, str):
        return ""
    return _scrubbed(text, secrets)


def _scrubbed(text: str, secrets: tuple[str, ...]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    text = re.sub(r"\b\w+://\S+", "<url>", text)
    return text[:MAX_SERVER_MESSAGE]


def _status_phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "error"


def _retry_after(headers: Mapping[str, Any]) -> float | None:
    """Seconds the backend asks us to wait: the longest ``Retry-After-<throttler>``, then
    ``Retry-After``, then the longest ``X-RateLimit-Reset-<throttler>``. Names are matched
    case-insensitively (the SDK keeps the server's casing; proxies may lowercase it)."""
    lowered = {str(name).lower(): value for name, value in headers.items()}
    for matches in (
        lambda name: name.startswith("retry-after-"),
        lambda name: name == "retry-after",
        lambda name: name.startswith("x-ratelimit-reset"),
    ):
        hints = [_seconds(value) for name, value in lowered.items() if matches(name)]
        known = [hint for hint in hints if hint is not None]
        if known:
            return max(known)
    return None


def _seconds(value: Any) -> float | None:
    """A delay in seconds from a header value: a number of seconds, an epoch timestamp or an
    HTTP date."""
    text = str(value).strip()
    try:
        number = float(text)
    except ValueError:
        moment = _http_date(text)
        return None if moment is None else max(0.0, moment.timestamp() - time.time())
    if not math.isfinite(number):
        return None
    if number > 1e9:  # an epoch timestamp rather than a delay
        number -= time.time()
    return max(0.0, number)


def _http_date(text: str) -> datetime | None:
    try:
        moment = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


# -- conversions ------------------------------------------------------------------------


def _remote_sandbox(dto: Any) -> RemoteSandbox:
    word = _state_word(dto.state)
    return RemoteSandbox(
        id=dto.id,
        name=dto.name,
        state=remote_state(word),
        labels=dict(dto.labels or {}),
        backend_state=word,
        cpu=dto.cpu,
        memory_gb=dto.memory,
        disk_gb=dto.disk,
        error_reason=dto.error_reason or "",
        recoverable=bool(dto.recoverable),
        last_activity_at=_timestamp(dto.last_activity_at),
        created_at=_timestamp(dto.created_at),
    )


def _page(response: Any) -> tuple[list[RemoteSandbox], str | None]:
    sandboxes = [_remote_sandbox(item) for item in response.items if _state_word(item.state) != "destroyed"]
    return sandboxes, response.next_cursor or None


def _state_word(state: Any) -> str:
    return str(getattr(state, "value", state) or "unknown")


def _timestamp(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _ssh_access(dto: Any) -> SshAccess:
    host, port = _ssh_destination(dto.ssh_command)
    return SshAccess(
        token=dto.token, host=host, port=port, command=dto.ssh_command, expires_at=dto.expires_at
    )


def _signed_link(dto: Any, expires_at: datetime) -> SignedLink:
    return SignedLink(url=dto.url, expires_at=expires_at, token=dto.token, port=dto.port)


def _ssh_destination(command: str) -> tuple[str, int]:
    """Host and port of an ``ssh [-p PORT] TOKEN@HOST`` command line."""
    host, port = "", 22
    words = shlex.split(command)
    for index, word in enumerate(words):
        if word == "-p" and index + 1 < len(words) and words[index + 1].isdigit():
            port = int(words[index + 1])
        elif word.startswith("-p") and word[2:].isdigit():
            port = int(word[2:])
        elif "@" in word and not word.startswith("-"):
            host = word.rsplit("@", 1)[1]
    return host, port


def _deadline(wait_seconds: float) -> float:
    return time.monotonic() + max(0.0, float(wait_seconds))
