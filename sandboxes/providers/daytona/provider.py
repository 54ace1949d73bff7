"""The Daytona provider: the contract of :class:`SandboxProvider` on Daytona's REST API.

Every REST call goes through the SDK's generated ``SandboxApi`` by sandbox id, with our own
deadline and retry policy around it (:mod:`.errors`):

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

import hashlib
import json
import logging
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import urllib3
from daytona import Daytona, DaytonaConfig
from daytona_api_client import SandboxApi, SandboxListSortDirection, SandboxListSortField

from joepro.request_context import ContextThreadPool

from ..base import (
    Capability,
    ErrorKind,
    PreviewUpstream,
    ProviderError,
    RemoteSandbox,
    RemoteState,
    SandboxAccess,
    SandboxProvider,
    SandboxSpec,
    SignedLink,
    SshAccess,
    preview_page_link,
)
from .convert import (
    AT_REST,
    HEADING_TO_REST,
    HEADING_TO_RUNNING,
    RUNNING,
    create_request,
    remote_sandbox,
    sandbox_page,
    signed_link,
    ssh_access,
)
from .errors import SDK_FAILURES, Backoff, EmptyAnswer, gone_is_done, log_failure, provider_error
from .templates import Snapshots
from .terminal import Toolbox

logger = logging.getLogger(__name__)

T = TypeVar("T")

PAGE_SIZE = 200  # the API's maximum page size for GET /sandbox
FIRST_POLL_SECONDS = 0.1
POLL_GROWTH = 1.25  # a wait overshoots the transition by at most a quarter of its length
MAX_POLL_SECONDS = 1.0
POOL_THREADS = 32  # for the concurrent calls of mint_access and revoke_access
SKIP_ACTIVITY_HEADER = "X-Daytona-Skip-Last-Activity-Update"
REACHABLE_TIMEOUT = 3.0  # seconds, for the readiness check


class DaytonaProvider(Snapshots, Toolbox, SandboxProvider):
    """Daytona sandboxes. One SDK client per instance, built on first use; thread-safe."""

    name = "daytona"
    home_directory = "/home/daytona"
    # Daytona's SSH gateway and preview proxy are its own doors: their use shows only in its
    # lastActivityAt, which the portal's own toolbox traffic leaves alone (see _connect).
    capabilities = frozenset({Capability.OUTSIDE_ACTIVITY})

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
        self._executor: ContextThreadPool | None = None

    # -- lookups ------------------------------------------------------------------------

    @classmethod
    def from_settings(cls) -> DaytonaProvider:
        from django.conf import settings

        return cls(
            api_key=settings.DAYTONA_API_KEY,
            api_url=settings.DAYTONA_API_URL,
            target=settings.DAYTONA_TARGET,
            image=settings.SANDBOX_IMAGE,
            snapshot=settings.SANDBOX_SNAPSHOT,
            http_timeout=settings.DAYTONA_HTTP_TIMEOUT,
        )

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

    def check_reachable(self) -> None:
        # The smallest authenticated read there is (one sandbox of the list), tried once: the
        # readiness check asks again soon enough.
        timeout = min(self._http_timeout, REACHABLE_TIMEOUT)
        self._call(
            "check",
            lambda: self._api.list_sandboxes(limit=1, _request_timeout=timeout),
            deadline=time.monotonic(),
        )

    # -- lifecycle ----------------------------------------------------------------------

    def create(self, spec: SandboxSpec, *, wait_seconds: float) -> RemoteSandbox:
        deadline = _deadline(wait_seconds)
        request = create_request(spec, target=self._target, default_image=self._image, default_snapshot=self._snapshot)
        # A hosted create may hold the response until the sandbox runs, so the read timeout
        # stretches to the caller's wait instead of declaring the outcome unknown early.
        read_timeout = max(self._http_timeout, float(wait_seconds))
        sandbox = remote_sandbox(
            self._call(
                "create",
                lambda: self._api.create_sandbox(request, _request_timeout=read_timeout),
                idempotent=False,
            )
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
        """Idempotent as the contract says: Daytona answers a second delete 409 while the
        sandbox is being destroyed and 404 once it is gone; both mean it is done."""
        try:
            self._call("delete", lambda: self._api.delete_sandbox(remote_id, _request_timeout=self._http_timeout))
        except ProviderError as error:
            if error.kind is ErrorKind.NOT_FOUND:
                return
            if error.kind is not ErrorKind.CONFLICT:
                raise
            current = self._read(remote_id)
            if current is not None and current.state is not RemoteState.DESTROYING:
                raise  # another change is in progress: the caller tries again later
            return
        logger.info("Daytona sandbox %s deleted", remote_id)

    # -- access -------------------------------------------------------------------------

    def mint_access(self, remote_id: str, *, ssh_minutes: int, preview_port: int, link_seconds: int) -> SandboxAccess:
        ssh, terminal = self._run_concurrently(
            lambda: self._create_ssh_access(remote_id, ssh_minutes),
            lambda: self._sign_link(remote_id, self._terminal_port, link_seconds),
        )
        preview = preview_page_link(remote_id, preview_port, datetime.now(UTC) + timedelta(seconds=link_seconds))
        return SandboxAccess(ssh=ssh, preview=preview, terminal=terminal)

    def preview_upstream(self, remote_id: str, port: int) -> PreviewUpstream:
        """The sandbox's standard preview URL with its token (``GET .../ports/{port}/preview-url``),
        and the headers that skip Daytona's warning page and keep the relay's own traffic from
        counting as use (the portal counts the use it relays itself). The token changes at every
        start, so it is the nonce too."""
        remote, link = self._run_concurrently(
            lambda: self._read(remote_id),
            lambda: self._call(
                "get preview URL",
                lambda: self._api.get_port_preview_url(remote_id, port, _request_timeout=self._http_timeout),
            ),
        )
        if remote is None:
            raise ProviderError("No such sandbox.", kind=ErrorKind.NOT_FOUND)
        if remote.state is not RemoteState.STARTED:
            raise ProviderError("The sandbox is not running.", kind=ErrorKind.INVALID_STATE)
        return PreviewUpstream(
            url=link.url.rstrip("/"),
            nonce=hashlib.sha256(link.token.encode()).hexdigest()[:32],
            headers={
                "X-Daytona-Preview-Token": link.token,
                "X-Daytona-Skip-Preview-Warning": "true",
                SKIP_ACTIVITY_HEADER: "true",
            },
        )

    def revoke_access(self, remote_id: str, *, preview_port: int, links: list[SignedLink]) -> None:
        self._run_concurrently(
            lambda: self._revoke_ssh_tokens(remote_id),
            *(lambda link=link: self._expire_link(remote_id, link, preview_port) for link in links),
        )

    def expire_links(self, remote_id: str, *, preview_port: int, links: list[SignedLink]) -> None:
        calls = [lambda link=link: self._expire_link(remote_id, link, preview_port) for link in links]
        if calls:
            self._run_concurrently(*calls)

    def refresh_activity(self, remote_id: str) -> None:
        self._call(
            "refresh activity",
            lambda: self._api.update_last_activity(remote_id, _request_timeout=self._http_timeout),
            answers=False,
        )

    def set_auto_stop(self, remote_id: str, minutes: int) -> None:
        """``POST /sandbox/{id}/autostop/{minutes}``; applies at once."""
        self._call(
            "set auto-stop",
            lambda: self._api.set_autostop_interval(remote_id, minutes, _request_timeout=self._http_timeout),
        )

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
        # The portal's own toolbox traffic (its PTY bridge above all) is nobody working: without
        # this header Daytona's proxy counts every request and re-posts activity every 50 s while
        # a websocket stays open, so an idle open terminal would look busy for ever.
        client._toolbox_api_client.default_headers[SKIP_ACTIVITY_HEADER] = "true"
        self._client = client
        # The generated API addresses sandboxes by id; the SDK keeps it on the client.
        api: SandboxApi = client._sandbox_api
        # urllib3's default retry sleeps through any Retry-After on a GET, however long;
        # hints are honoured by ``Backoff`` instead, within its budget.
        pool = api.api_client.rest_client.pool_manager
        pool.connection_pool_kw["retries"] = urllib3.Retry(total=3, respect_retry_after_header=False)
        return api

    def _pool(self) -> ContextThreadPool:
        if self._executor is None:
            with self._lock:
                if self._executor is None:
                    self._executor = ContextThreadPool(max_workers=POOL_THREADS, thread_name_prefix="daytona")
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
        """One page of sandboxes, oldest first, and the cursor of the next page (``None``
        after the last). Daytona's default order is by last activity, which moves while the
        pages are read, so a sandbox could be skipped or seen twice; creation time does not."""
        response = self._call(
            "list sandboxes",
            lambda: self._api.list_sandboxes(
                labels=label_filter,
                cursor=cursor,
                limit=PAGE_SIZE,
                sort=SandboxListSortField.CREATEDAT,
                order=SandboxListSortDirection.ASC,
                _request_timeout=self._http_timeout,
            ),
        )
        return sandbox_page(response)

    def _read(self, id_or_name: str, deadline: float | None = None) -> RemoteSandbox | None:
        try:
            dto = self._call(
                "get",
                lambda: self._api.get_sandbox(id_or_name, _request_timeout=self._http_timeout),
                deadline=deadline,
            )
        except ProviderError as error:
            if error.kind is ErrorKind.NOT_FOUND:
                return None
            raise
        sandbox = remote_sandbox(dto)
        return None if sandbox.backend_state == "destroyed" else sandbox

    def _change_state(
        self,
        operation: str,
        remote_id: str,
        post: Callable[..., Any],
        heading: frozenset[RemoteState],
    ) -> RemoteSandbox:
        """POST a state change; a refusal counts as success when the sandbox already is, or
        is becoming, what was asked (a repeated call, or a retry after a lost response).

        A start refused because the sandbox errored meanwhile (Daytona answers 400 "Sandbox
        failed to start: <reason>") returns the errored sandbox, for the caller to recover or
        replace."""
        try:
            dto = self._call(operation, lambda: post(remote_id, _request_timeout=self._http_timeout))
        except ProviderError as error:
            if error.kind not in (ErrorKind.CONFLICT, ErrorKind.INVALID_STATE, ErrorKind.REJECTED):
                raise
            current = self._read(remote_id)
            if current is None:
                raise ProviderError(
                    f"Daytona {operation} failed: the sandbox no longer exists.", kind=ErrorKind.NOT_FOUND
                ) from error
            errored_on_its_way_up = current.state is RemoteState.ERROR and RemoteState.STARTED in heading
            if current.state not in heading and not errored_on_its_way_up:
                raise
            return current
        return remote_sandbox(dto)

    def _wait_for(self, sandbox: RemoteSandbox, targets: frozenset[RemoteState], deadline: float) -> RemoteSandbox:
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

    def _create_ssh_access(self, remote_id: str, minutes: int) -> SshAccess:
        dto = self._call(
            "create SSH access",
            lambda: self._api.create_ssh_access(
                remote_id, expires_in_minutes=minutes, _request_timeout=self._http_timeout
            ),
        )
        return ssh_access(dto)

    def _revoke_ssh_tokens(self, remote_id: str) -> None:
        # Without ``token`` the API revokes every token of the sandbox. (The SDK's
        # ``Sandbox.revoke_ssh_access(token)`` sends the token in the wrong place, which
        # also revokes all of them.)
        with gone_is_done():
            self._call(
                "revoke SSH access",
                lambda: self._api.revoke_ssh_access(remote_id, _request_timeout=self._http_timeout),
            )

    def _sign_link(self, remote_id: str, port: int, seconds: int) -> SignedLink:
        expires_at = datetime.now(UTC) + timedelta(seconds=seconds)
        dto = self._call(
            "sign preview link",
            lambda: self._api.get_signed_port_preview_url(
                remote_id, port, expires_in_seconds=seconds, _request_timeout=self._http_timeout
            ),
        )
        return signed_link(dto, expires_at)

    def _expire_link(self, remote_id: str, link: SignedLink, default_port: int) -> None:
        if not link.token:
            return
        with gone_is_done():
            self._call(
                "expire preview link",
                lambda: self._api.expire_signed_port_preview_url(
                    remote_id, link.port or default_port, link.token, _request_timeout=self._http_timeout
                ),
                secrets=(link.token,),
                answers=False,
            )

    def _call(
        self,
        operation: str,
        call: Callable[[], T],
        *,
        idempotent: bool = True,
        deadline: float | None = None,
        secrets: tuple[str, ...] = (),
        answers: bool = True,
    ) -> T:
        """Make one API call, retrying transient failures within the retry budget. Only the
        SDK's and the transports' failures become :class:`ProviderError`; anything else is a
        bug and leaves as itself.

        ``idempotent=False`` marks a call that must not be repeated when the backend may have
        acted: it is retried only after a response proves it did not. ``answers=False`` marks a
        call whose success has no body.
        """
        backoff = Backoff(self._max_retries, self._max_retry_wait, deadline)
        while True:
            try:
                result = call()
                if result is None and answers:
                    # The generated client hands back None for a success status other than
                    # the one it declares (a 201 for a 200), or for an empty body.
                    raise EmptyAnswer(f"no {operation} answer in the body")
                return result
            except SDK_FAILURES as exc:
                error = provider_error(exc, operation, idempotent=idempotent, secrets=(self._api_key, *secrets))
                delay = backoff.next_delay(error)
                if delay is None:
                    log_failure(operation, error)
                    raise error from exc
            logger.info("Daytona %s: %s, retrying in %.2fs", operation, error.kind.value, delay)
            time.sleep(delay)


def _deadline(wait_seconds: float) -> float:
    return time.monotonic() + max(0.0, float(wait_seconds))
