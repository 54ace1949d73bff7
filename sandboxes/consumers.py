"""The browser terminal: a websocket bridged to a PTY session in the user's sandbox.

Protocol, at ``ws/sandboxes/<remote_id>/terminal/?cols=<C>&rows=<R>[&session=<id>]``:

- Binary frames from the browser are keystrokes and pasted text (UTF-8); binary frames to the
  browser are the shell's output, raw.
- Text frames are JSON control messages. From the browser: ``{"type": "resize", "cols", "rows"}``,
  and ``{"type": "pause"}`` / ``{"type": "resume"}`` while its terminal cannot keep up. To the
  browser: ``{"type": "attached", "session"}`` once the shell is there (the session to name when
  reconnecting),
  ``{"type": "status", "state", "message"}`` when the sandbox is not running (then close 4409),
  ``{"type": "exit", "code"}`` when the shell ended (then close 1000), and
  ``{"type": "error", "message"}`` before a close that invites a reconnect.
- Close codes: 4400 bad request, 4401 signed out, 4404 no such sandbox of this user, 4408 no
  input or output for longer than the idle period (reconnect only when the user asks), 4409 the
  sandbox is not running, 4429 too many terminal sessions in this sandbox, 4430 too many terminal
  websockets open by this user (``SANDBOX_TERMINAL_CONNECTIONS_PER_USER``), 1013 the provider or
  the shell's connection failed (reconnect with backoff), 1000 the shell exited.

The PTY session is minted by the portal (``services.terminal_open``) when the browser names
none, or one that no longer exists, and belongs to the sandbox: a closed websocket detaches from
it and a reconnect naming it finds the same shell. While attached, the bridge renews its claim on
the session every ``SANDBOX_TERMINAL_RENEW_SECONDS``; sessions nobody is attached to are ended
after ``SANDBOX_TERMINAL_DETACHED_MINUTES``.

Input and output count as use of the sandbox (recorded at most once a minute); an open,
quiet bridge does not, and one without input or output for longer than the idle period closes.

Threads do the blocking work: per connection, one reads the terminal (large reads, handed to
the event loop in one call each) and one writes input and resizes in arrival order. Output
waiting for the browser is coalesced into as few frames as possible and bounded: when the
browser falls behind, the reader stops reading and the shell blocks on its own output.
"""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import re
import threading
import time
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from django.db import connections

from joepro.request_context import ContextThreadPool

from . import services
from .models import ActivitySource, Sandbox, SandboxState
from .services.scrollback import with_scrollback
from .websocket_slots import Slot, claim_slot, lease_for, release_slot, renew_slot

log = logging.getLogger(__name__)

CLOSE_BAD_REQUEST = 4400
CLOSE_SIGNED_OUT = 4401
CLOSE_NOT_FOUND = 4404
CLOSE_IDLE = 4408
CLOSE_NOT_RUNNING = 4409
CLOSE_TOO_MANY = 4429
CLOSE_TOO_MANY_CONNECTIONS = 4430
CLOSE_TRY_AGAIN = 1013
CLOSE_NORMAL = 1000

NO_CHANNEL_LAYER = ""  # an alias no configuration has: get_channel_layer() gives None
SESSION_ID = re.compile(r"[A-Za-z0-9-]{1,64}")
MAX_DIMENSION = 1000
DEFAULT_COLS, DEFAULT_ROWS = 80, 24
OUTPUT_HIGH_WATER = 4 << 20  # bytes waiting for the browser before the reader stops reading
MAX_FRAME = 1 << 20
INPUT_HIGH_WATER = 1 << 20  # bytes waiting for the shell before browser frames stop being read

# Calls that may take seconds (attach, detach, state lookups), kept off the event loop
# and off the default executor that the rest of the process shares.
_blocking_calls = ContextThreadPool(max_workers=32, thread_name_prefix="terminal")


class TerminalConsumer(AsyncWebsocketConsumer):
    """One browser tab's terminal. See the module docstring for the protocol."""

    # No other consumer sends to a terminal: no channel of its own on the channel layer, so an
    # open terminal holds no blocking read on Redis.
    channel_layer_alias = NO_CHANNEL_LAYER

    async def connect(self) -> None:
        # Accepted first so that every refusal reaches the page with its close code.
        await self.accept()
        self.loop = asyncio.get_running_loop()
        self.terminal: services.Terminal | None = None
        self.closing = False
        self.shell_exited = False
        self.slot: Slot | None = None
        try:
            await self._attach()
        except OSError:
            # The browser left while the shell was being attached (the server's
            # ClientDisconnected is an OSError); disconnect() detaches.
            log.debug("terminal: browser gone during attach", exc_info=True)

    async def _attach(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(CLOSE_SIGNED_OUT)
            return
        self.slot = await self._in_thread(_claim_slot, user.pk)
        if self.slot is None:
            limit = settings.SANDBOX_TERMINAL_CONNECTIONS_PER_USER
            await self._send_control(
                type="error",
                message=f"You already have {limit} terminals open, the most one person may have. "
                "Close one of them, then reconnect.",
            )
            await self.close(CLOSE_TOO_MANY_CONNECTIONS)
            return
        query = parse_qs(self.scope.get("query_string", b"").decode("latin-1"))
        session_id = query.get("session", [""])[0] or None
        if session_id is not None and not SESSION_ID.fullmatch(session_id):
            await self.close(CLOSE_BAD_REQUEST)
            return
        cols = _dimension(query.get("cols", [""])[0], DEFAULT_COLS)
        rows = _dimension(query.get("rows", [""])[0], DEFAULT_ROWS)

        remote_id = self.scope["url_route"]["kwargs"]["remote_id"]
        self.sandbox = await _own_sandbox(user, remote_id)
        if self.sandbox is None:
            await self.close(CLOSE_NOT_FOUND)
            return
        if self.sandbox.state != SandboxState.STARTED:
            await self._refuse_not_running(self.sandbox.state)
            return
        try:
            self.terminal = await self._in_thread(
                services.terminal_open,
                sandbox=self.sandbox,
                session_id=session_id,
                cols=cols,
                rows=rows,
                client_address=(self.scope.get("client") or [None])[0],
            )
        except services.SandboxError as error:
            if error.kind == services.ErrorKind.NOT_FOUND:
                await self._refuse_not_running(SandboxState.GONE, str(error))
            elif error.kind == services.ErrorKind.INVALID_STATE:
                await self._refuse_not_running(SandboxState.STOPPED, str(error))
            elif error.code == "too_many_terminals":
                await self._send_control(type="error", message=str(error))
                await self.close(CLOSE_TOO_MANY)
            else:
                log.warning("terminal of %s: attach failed: %s", self.sandbox.remote_name, error)
                await self._send_control(type="error", message=str(error))
                await self.close(CLOSE_TRY_AGAIN)
            return
        self._start_bridge()
        await self._send_control(type="attached", session=self.terminal.session_id)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self.terminal is None or self.closing:
            return
        if bytes_data is not None:
            if not bytes_data:
                return
            self.input_pending += len(bytes_data)
            self.inbox.put(bytes_data)
            self._note_activity(ActivitySource.TERMINAL_INPUT)
            if self.input_pending > INPUT_HIGH_WATER:
                # Not reading further frames until the shell has taken most of this in.
                self.input_drained.clear()
                await self.input_drained.wait()
            return
        self._control(text_data or "")

    async def disconnect(self, code: int) -> None:
        self.closing = True
        slot, self.slot = getattr(self, "slot", None), None
        if slot is not None:
            await self._in_thread(release_slot, slot)
        terminal = getattr(self, "terminal", None)
        if terminal is None:
            return
        self.inbox.put(None)
        self.output_room.set()
        self.sender.cancel()
        self.keeper.cancel()
        try:
            await self._in_thread(terminal.detach)
        except services.SandboxError as error:
            log.info("terminal detach failed: %s", error)
        await _release(terminal.session_id, ended=self.shell_exited)
        if self.activity_task is not None:
            await self.activity_task

    # -- the bridge ---------------------------------------------------------------------

    def _start_bridge(self) -> None:
        # A reattach shows the session's recent output first (its scrollback), then live output.
        self.terminal = with_scrollback(self.terminal, remote_id=self.sandbox.remote_id)
        self.outbox: list[bytes] = []
        self.outbox_size = 0
        self.output_room = threading.Event()  # cleared while the browser is behind
        self.output_room.set()
        self.output_ready = asyncio.Event()
        self.output_ended = False
        self.paused = False
        self.inbox: queue.SimpleQueue[bytes | tuple[int, int] | None] = queue.SimpleQueue()
        self.input_pending = 0
        self.input_drained = asyncio.Event()
        self.last_activity = float("-inf")
        self.last_traffic = time.time()
        self.activity_task: asyncio.Future | None = None
        name = f"terminal-{self.terminal.session_id}"
        threading.Thread(target=self._read_terminal, name=f"{name}-out", daemon=True).start()
        threading.Thread(target=self._write_terminal, name=f"{name}-in", daemon=True).start()
        self.sender = asyncio.ensure_future(self._send_output())
        self.keeper = asyncio.ensure_future(self._keep_session())

    def _read_terminal(self) -> None:
        """Reader thread: terminal output to the event loop, one call per read."""
        terminal = self.terminal
        while not self.closing:
            try:
                data = terminal.read()
            except services.SandboxError as error:
                log.info("terminal read failed: %s", error)
                data = b""
            except Exception:
                log.exception("terminal read failed")
                data = b""
            if not data:
                break
            if not self._on_loop(self._output_arrived, data):
                return
            self.output_room.wait()
        self._on_loop(self._output_finished)

    def _write_terminal(self) -> None:
        """Writer thread: input and resizes, in the order they came."""
        terminal = self.terminal
        while (item := self.inbox.get()) is not None:
            try:
                if isinstance(item, bytes):
                    terminal.write(item)
                else:
                    terminal.resize(*item)
            except services.SandboxError as error:
                # A lost connection shows up on the reading side, which ends the session.
                log.info("terminal write failed: %s", error)
            except Exception:
                log.exception("terminal write failed")
            if isinstance(item, bytes) and not self._on_loop(self._input_written, len(item)):
                return

    def _on_loop(self, callback, *args) -> bool:
        """Run ``callback`` on the event loop (from a thread); False once the loop has closed."""
        try:
            self.loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # the server is shutting down
            return False
        return True

    def _output_arrived(self, data: bytes) -> None:
        self.outbox.append(data)
        self.outbox_size += len(data)
        if self.outbox_size >= OUTPUT_HIGH_WATER:
            self.output_room.clear()
        self.output_ready.set()

    def _output_finished(self) -> None:
        self.output_ended = True
        self.output_ready.set()

    def _input_written(self, size: int) -> None:
        self.input_pending -= size
        if self.input_pending <= INPUT_HIGH_WATER // 2:
            self.input_drained.set()

    async def _send_output(self) -> None:
        """Sends what the reader collected, coalesced, until the terminal ends."""
        try:
            while True:
                await self.output_ready.wait()
                self.output_ready.clear()
                while self.outbox and not self.paused:
                    data = self.outbox[0] if len(self.outbox) == 1 else b"".join(self.outbox)
                    self.outbox.clear()
                    self.outbox_size = 0
                    self.output_room.set()
                    if len(data) <= MAX_FRAME:
                        await self.send(bytes_data=data)
                    else:
                        for start in range(0, len(data), MAX_FRAME):
                            await self.send(bytes_data=data[start : start + MAX_FRAME])
                    self._note_activity(ActivitySource.TERMINAL_OUTPUT)
                if self.output_ended and not self.outbox:
                    await self._finish()
                    return
        except asyncio.CancelledError:
            raise
        except Exception:  # the browser went away mid-send; disconnect() cleans up
            log.debug("terminal output stopped", exc_info=True)

    async def _finish(self) -> None:
        """The shell ended, or the connection to it did: tell the browser why, then close."""
        if self.closing:
            return
        exit_code = self.terminal.exit_code
        state = await self._remote_state()
        if self.closing:
            return
        self.closing = True
        if state is not None and state != SandboxState.STARTED:
            await self._refuse_not_running(state)
        elif exit_code is not None:
            self.shell_exited = True
            await self._send_control(type="exit", code=exit_code)
            await self.close(CLOSE_NORMAL)
        else:
            await self._send_control(type="error", message="The connection to the shell was lost.")
            await self.close(CLOSE_TRY_AGAIN)

    def _control(self, text: str) -> None:
        try:
            message = json.loads(text)
        except ValueError:
            return
        if not isinstance(message, dict):
            return
        kind = message.get("type")
        if kind == "resize":
            cols = _dimension(message.get("cols"), 0)
            rows = _dimension(message.get("rows"), 0)
            if cols and rows:
                self.inbox.put((cols, rows))
        elif kind == "pause":
            self.paused = True
        elif kind == "resume":
            self.paused = False
            self.output_ready.set()

    # -- helpers ------------------------------------------------------------------------

    def _note_activity(self, source: ActivitySource) -> None:
        """Input and output count as use of the sandbox, recorded at most every
        ``SANDBOX_ACTIVITY_WRITE_SECONDS`` (on the wall clock, which tests move)."""
        now = time.time()
        self.last_traffic = now
        if now - self.last_activity < settings.SANDBOX_ACTIVITY_WRITE_SECONDS:
            return
        self.last_activity = now
        self.activity_task = asyncio.ensure_future(_record_activity(self.sandbox, source))

    async def _keep_session(self) -> None:
        """Renew the claim on the session while attached; close a bridge that carried no input
        or output for longer than the idle period (an open, quiet terminal is nobody working)."""
        idle_limit = self.sandbox.idle_period.total_seconds()
        while not self.closing:
            await asyncio.sleep(settings.SANDBOX_TERMINAL_RENEW_SECONDS)
            if self.closing:
                return
            if time.time() - self.last_traffic > idle_limit:
                self.closing = True
                await self._send_control(
                    type="idle", message="Disconnected: no input or output for longer than the idle period."
                )
                await self.close(CLOSE_IDLE)
                return
            await _renew(self.terminal.session_id)
            if self.slot is not None:
                await self._in_thread(renew_slot, self.slot)

    async def _remote_state(self) -> SandboxState | None:
        return await self._in_thread(services.sandbox_remote_state, sandbox=self.sandbox)

    async def _refuse_not_running(self, state: str, message: str = "") -> None:
        await self._send_control(type="status", state=str(state), message=message or "The sandbox is not running.")
        await self.close(CLOSE_NOT_RUNNING)

    async def _send_control(self, **message) -> None:
        await self.send(text_data=json.dumps(message))

    async def _in_thread(self, function, *args, **kwargs):
        return await self.loop.run_in_executor(_blocking_calls, lambda: _closing_connections(function, args, kwargs))


def _closing_connections(function, args, kwargs):
    """Run ``function`` on a pool thread; whatever database connection it opened goes back at
    the end rather than staying with a thread that may not touch the database for hours."""
    try:
        return function(*args, **kwargs)
    finally:
        connections.close_all()


def _claim_slot(user_id: int) -> Slot | None:
    """One of the user's ``SANDBOX_TERMINAL_CONNECTIONS_PER_USER`` terminal websockets."""
    return claim_slot(
        "terminal-websocket",
        user_id,
        limit=settings.SANDBOX_TERMINAL_CONNECTIONS_PER_USER,
        lease_seconds=lease_for(settings.SANDBOX_TERMINAL_RENEW_SECONDS),
    )


@database_sync_to_async
def _own_sandbox(user, remote_id: str) -> Sandbox | None:
    return Sandbox.objects.filter(user=user, remote_id=remote_id).first()


@database_sync_to_async
def _record_activity(sandbox: Sandbox, source: ActivitySource) -> None:
    try:
        services.sandbox_record_activity(sandbox=sandbox, source=source)
    except Exception:  # activity is best effort; the terminal carries on
        log.warning("recording terminal activity of %s failed", sandbox.remote_name, exc_info=True)


@database_sync_to_async
def _renew(session_id: str) -> None:
    try:
        services.terminal_renew(session_id=session_id)
    except Exception:  # the claim lapses and the session counts as detached: not worth a close
        log.warning("renewing terminal session %s failed", session_id, exc_info=True)


@database_sync_to_async
def _release(session_id: str, *, ended: bool) -> None:
    try:
        services.terminal_release(session_id=session_id, ended=ended)
    except Exception:  # its lease runs out by itself
        log.warning("releasing terminal session %s failed", session_id, exc_info=True)


def _dimension(raw, default: int) -> int:
    try:
        value = int(raw)
    except (TypeError, ValueError):
        return default
    return min(max(value, 1), MAX_DIMENSION)
