#!/usr/bin/python3
"""The agent of a local sandbox, and the launcher that starts one.

Standard library only: the agent runs inside the sandbox with the host's ``/usr/bin/python3``,
where nothing of the portal is visible; the launcher runs on the host. This one file is what
sandboxes see of the portal (copied to ``<root>/.system/agent.py`` and mounted read-only), so it
imports nothing from its package; the package imports it for the protocol's constants.

``serve``
    PID 1 of the sandbox's PID namespace. It accepts connections on a unix socket that the
    portal created and handed over as an open file descriptor (``--listen-fd``): the socket's
    path lies outside the sandbox, so nothing inside can replace or redirect it. It spawns PTY
    sessions and programs on pipes, relays TCP connections to ports inside the sandbox's own
    network namespace, runs one-shot commands and reaps every orphan. When it exits, the kernel kills every other
    process of the namespace: that is how a sandbox stops.

``launch CONFIG_JSON``
    Runs on the host as the portal's user. Detaches (double fork, so no portal process has to
    reap it), joins the sandbox's cgroups, applies rlimits and niceness, drops to the
    sandbox's host uid and executes bwrap. Prints the pid of bwrap on stdout.

Protocol: one request per connection
------------------------------------
Every message, in either direction, is a frame: 1 byte kind, 4 bytes big-endian payload
length, payload.

====  ======================================================================================
J     a JSON object (UTF-8)
d     terminal or stdin bytes from the client; terminal or stdout bytes from the agent
e     stderr bytes of a program on pipes, from the agent
c     end of the program's input (its stdin is closed once what came before is written)
r     resize: two big-endian uint16, columns then rows
k     end the session (SIGHUP to its process group, SIGKILL a second later; a program on
      pipes gets SIGKILL at once)
x     the session ended: big-endian int32 exit status (128 + N when killed by signal N)
====  ======================================================================================

A connection opens with one ``J`` request ``{"op": ...}``; the agent answers with one ``J``
reply, ``{"ok": true, ...}`` or ``{"ok": false, "error": CODE, "message": TEXT}``. Then:

``status``     reply ``{"sessions": [ids], "processes": [ids], "last_activity": epoch,
               "auto_stop": seconds, "disk_used": bytes|null}``; closed.
``touch``      counts as activity (resets the idle timer); closed.
``terminal``   ``{"session", "cols", "rows", "argv"?, "scrollback"?}``: attach to the PTY
               session, creating it (a login shell unless ``argv`` is given, keeping its last
               ``scrollback`` bytes of output, default :data:`SCROLLBACK`); reply ``{"created":
               bool}``. Then the session's scrollback as one ``d`` frame (none when empty),
               then ``d``, ``r`` and ``k`` frames from the client, ``d`` frames and one final
               ``x`` frame from the agent. Closing the connection detaches; the session keeps
               running and its output meanwhile still goes to its scrollback, so the next
               attachment sees the last of it first (from the start of a line where possible).
               Several attachments to one session all see its output.
``relay``      ``{"port"}``: connect to ``127.0.0.1:port`` (then ``[::1]:port``) inside the
               sandbox; error ``refused`` when nothing listens. Then raw bytes both ways until
               both sides have closed; a half-close is passed on.
``process``    ``{"argv"}``: run a program in the home directory in a new session, on pipes (no
               terminal, no ``TERM``); reply ``{"process": id}`` once it runs. Then ``d``, ``c``
               and ``k`` frames from the client; ``d`` (stdout) and ``e`` (stderr) frames and one
               final ``x`` frame from the agent, sent once the program has exited and both its
               outputs are closed (background children holding them keep the session open, as
               over OpenSSH). Closing the connection kills the program's process group.
``end``        ``{"session"}`` or ``{"process"}``: end that PTY session (as ``k`` does) or program
               (SIGKILL to its process group); reply ``{"ended": bool}`` (false when there was
               none); closed. Works while the session's own connection is not being read.
``configure``  ``{"auto_stop"}``: seconds without activity before the agent stops the sandbox
               (0: never), from now on; closed.
``exec``       ``{"argv", "timeout", "activity"?}``: run a command in the home directory in a
               new session, stdin ``/dev/null``; reply once it exits: ``{"exit_code",
               "timed_out", "stdout", "stderr"}`` (base64, each capped at 8 MiB). Background
               children that keep its output open are not waited for. Counts as activity unless
               ``activity`` is false (the portal's own scripts).
``shutdown``   ``{"grace"}``: reply, hang up every session, SIGTERM every process, exit once
               none is left or after ``grace`` seconds.
"""

from __future__ import annotations

import argparse
import base64
import fcntl
import functools
import heapq
import itertools
import json
import os
import pty
import re
import resource
import selectors
import signal
import socket
import struct
import sys
import termios
import time
import traceback

FRAME = struct.Struct("!cI")
HEADER = FRAME.size
JSON, DATA, RESIZE, KILL, EXIT = b"J", b"d", b"r", b"k", b"x"
STDERR, CLOSE_INPUT = b"e", b"c"
WINSIZE = struct.Struct("!HH")
STATUS = struct.Struct("!i")

READ_SIZE = 1 << 16
HIGH_WATER = 1 << 18  # bytes queued towards a peer before its source stops being read
MAX_REQUEST = 1 << 16
MAX_FRAME = 1 << 20
EXEC_OUTPUT_CAP = 8 << 20
MAX_SESSIONS = 64
SCROLLBACK = 1 << 16  # recent output a PTY session keeps for its next attachment
MAX_SCROLLBACK = 1 << 20
MAX_PROCESSES = 64
KILL_GRACE = 1.0
EXEC_DRAIN = 0.2  # after a command exits, how long its output pipes may stay open
HOME = "/home/sandbox"
LOGIN_SHELL = ["/bin/bash", "-l"]
SESSION_ID = re.compile(r"[A-Za-z0-9-]{1,64}")
QUOTA_WARNING_EVERY = 600.0


def frame(kind: bytes, payload: bytes = b"") -> bytes:
    return FRAME.pack(kind, len(payload)) + payload


def json_frame(message: dict) -> bytes:
    return frame(JSON, json.dumps(message, separators=(",", ":")).encode())


def error_reply(code: str, message: str) -> dict:
    return {"ok": False, "error": code, "message": message}


def exit_status(wait_status: int) -> int:
    code = os.waitstatus_to_exitcode(wait_status)
    return 128 - code if code < 0 else code


def exec_child(argv: list[str], env: dict, prepare=None, newline: str = "\r\n") -> None:
    """In a freshly forked child: ``prepare()``, restore what Python changed, exec. Never
    returns, whatever fails: the child must not go on running the agent's loop."""
    try:
        if prepare is not None:
            prepare()
        for signum in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGCHLD, signal.SIGINT):
            signal.signal(signum, signal.SIG_DFL)
        os.chdir(HOME)
        os.execvpe(argv[0], argv, env)
    except BaseException as exc:  # noqa: BLE001 - nothing may escape a forked child
        try:
            os.write(2, f"{argv[0]}: {exc}{newline}".encode())
        finally:
            os._exit(127)


# --- the event loop ----------------------------------------------------------------------------


class Channel:
    """A non-blocking descriptor in the loop. Reads go to ``owner.on_data`` / ``on_eof``;
    writes are queued and flushed when the descriptor is writable."""

    def __init__(
        self, agent: Agent, fd: int, owner, *, sock: socket.socket | None = None, pty_master=False, reading=True
    ):
        self.agent = agent
        self.fd = fd
        self.sock = sock
        self.owner = owner
        self.pty_master = pty_master
        self.out = bytearray()
        self.reading = reading
        self.eof = False
        self.closed = False
        self.close_pending = False
        self.shutdown_pending = False
        self.write_closed = False
        if sock is not None:
            sock.setblocking(False)  # also drops any timeout, which would make sends wait
        else:
            os.set_blocking(fd, False)
        agent.watch(self)

    @property
    def backlog(self) -> int:
        return len(self.out)

    def _recv(self) -> bytes:
        if self.sock is not None:
            return self.sock.recv(READ_SIZE)
        if not self.pty_master:
            return os.read(self.fd, READ_SIZE)
        # A PTY hands out at most one line-discipline buffer (4 KiB) per read: gather a few
        # so that bulk output travels in large frames.
        chunks, total = [], 0
        while total < READ_SIZE:
            try:
                chunk = os.read(self.fd, READ_SIZE)
            except (BlockingIOError, OSError):
                if chunks:
                    break
                raise
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if len(chunk) < 1024:
                break
        return b"".join(chunks)

    def _send(self, data) -> int:
        if self.sock is not None:
            return self.sock.send(data)
        return os.write(self.fd, data)

    def write(self, data: bytes) -> None:
        if self.closed or self.write_closed:
            return
        if not self.out:
            try:
                sent = self._send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self.owner.on_error(self)
                return
            if sent == len(data):
                return
            data = memoryview(data)[sent:]
        self.out += data
        self.agent.watch(self)

    def on_writable(self) -> None:
        try:
            sent = self._send(self.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.owner.on_error(self)
            return
        del self.out[:sent]
        if self.out:
            return
        if self.close_pending:
            self.close()
            return
        if self.shutdown_pending:
            self._shutdown_write()
        self.agent.watch(self)
        self.owner.on_drained(self)

    def on_readable(self) -> None:
        try:
            data = self._recv()
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # EIO from a PTY master once every slave is closed; resets
            data = b""
        if data:
            self.owner.on_data(self, data)
            return
        self.eof = True
        self.reading = False
        self.agent.watch(self)
        self.owner.on_eof(self)

    def pause(self) -> None:
        if self.reading:
            self.reading = False
            self.agent.watch(self)

    def resume(self) -> None:
        if not self.reading and not self.eof and not self.closed:
            self.reading = True
            self.agent.watch(self)

    def shutdown_write(self) -> None:
        """Half-close once the queue is flushed."""
        if self.out:
            self.shutdown_pending = True
        else:
            self._shutdown_write()

    def _shutdown_write(self) -> None:
        self.write_closed = True
        if self.sock is not None:
            try:
                self.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def close_when_flushed(self) -> None:
        self.reading = False
        if self.out and not self.closed:
            self.close_pending = True
            self.agent.watch(self)
        else:
            self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.out.clear()
        self.agent.forget(self)
        if self.sock is not None:
            self.sock.close()
        else:
            os.close(self.fd)


class Endpoint:
    """Default callbacks of a channel owner."""

    def on_data(self, channel: Channel, data: bytes) -> None:
        pass

    def on_eof(self, channel: Channel) -> None:
        channel.close()

    def on_error(self, channel: Channel) -> None:
        channel.close()

    def on_drained(self, channel: Channel) -> None:
        pass


class Pending(Endpoint):
    """A new connection, until its request frame is complete."""

    def __init__(self, agent: Agent, sock: socket.socket):
        self.agent = agent
        self.buffer = bytearray()
        self.channel = Channel(agent, sock.fileno(), self, sock=sock)

    def on_data(self, channel: Channel, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) < HEADER:
            return
        kind, length = FRAME.unpack_from(self.buffer)
        if kind != JSON or length > MAX_REQUEST:
            self.agent.reply(channel, error_reply("bad_request", "Expected a JSON request frame."))
            return
        if len(self.buffer) < HEADER + length:
            return
        try:
            request = json.loads(self.buffer[HEADER : HEADER + length])
            if not isinstance(request, dict):
                raise ValueError("not an object")
        except ValueError:
            self.agent.reply(channel, error_reply("bad_request", "The request is not a JSON object."))
            return
        self.agent.dispatch(channel, request, bytes(self.buffer[HEADER + length :]))


class Attachment(Endpoint):
    """One client attached to a PTY session."""

    def __init__(self, session: Session, channel: Channel):
        self.session = session
        self.channel = channel
        self.buffer = bytearray()
        channel.owner = self

    def on_data(self, channel: Channel, data: bytes) -> None:
        self.buffer += data
        view, offset = self.buffer, 0
        while len(view) - offset >= HEADER:
            kind, length = FRAME.unpack_from(view, offset)
            if length > MAX_FRAME:
                self.detach()
                return
            end = offset + HEADER + length
            if len(view) < end:
                break
            payload = bytes(view[offset + HEADER : end])
            offset = end
            if kind == DATA:
                self.session.input(payload)
                if self.session.master.backlog > HIGH_WATER:
                    channel.pause()  # the program in the terminal is not reading its input
            elif kind == RESIZE and length == WINSIZE.size:
                self.session.resize(*WINSIZE.unpack(payload))
            elif kind == KILL:
                self.session.kill()
        if offset:
            del self.buffer[:offset]

    def on_eof(self, channel: Channel) -> None:
        self.detach()

    def on_error(self, channel: Channel) -> None:
        # Sending to the client failed (it hung up with output unread): what it sent before
        # hanging up, a KILL above all, still counts.
        if channel.sock is not None and not channel.closed:
            while True:
                try:
                    data = channel.sock.recv(READ_SIZE)
                except OSError:
                    break
                if not data:
                    break
                self.on_data(channel, data)
        self.detach()

    def on_drained(self, channel: Channel) -> None:
        self.session.resume_if_drained()

    def detach(self) -> None:
        self.session.attachments.discard(self)
        self.channel.close()
        self.session.resume_if_drained()


class Scrollback:
    """The last ``limit`` bytes a PTY session printed, whether anyone was attached or not."""

    def __init__(self, limit: int):
        self.limit = limit
        self.data = bytearray()
        self.trimmed = False

    def add(self, data: bytes) -> None:
        if not self.limit:
            return
        self.data += data
        excess = len(self.data) - self.limit
        if excess > 0:
            del self.data[:excess]
            self.trimmed = True

    def replay(self) -> bytes:
        """What a new attachment is shown first: the kept bytes, from the first line that is
        kept whole (or at least from a character boundary)."""
        data = self.data
        start = 0
        if self.trimmed:
            newline = data.find(b"\n", 0, len(data) // 2)
            if newline >= 0:
                start = newline + 1
            else:
                while start < len(data) and 0x80 <= data[start] < 0xC0:  # inside a UTF-8 character
                    start += 1
        return bytes(data[start:])


class Session(Endpoint):
    """A PTY with a login shell (or a given command) in its own session."""

    def __init__(self, agent: Agent, session_id: str, argv: list[str], cols: int, rows: int, scrollback: int):
        self.agent = agent
        self.id = session_id
        self.attachments: set[Attachment] = set()
        self.scrollback = Scrollback(scrollback)
        self.ended = False
        env = dict(agent.env, TERM="xterm-256color")
        pid, fd = pty.fork()
        if pid == 0:
            exec_child(argv, env, lambda: fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0)))
        self.pid = pid
        self.master = Channel(agent, fd, self, pty_master=True)
        agent.children[pid] = self

    def attach(self, channel: Channel, rest: bytes) -> None:
        replay = self.scrollback.replay()
        if replay:
            channel.write(frame(DATA, replay))
        attachment = Attachment(self, channel)
        self.attachments.add(attachment)
        if rest:
            attachment.on_data(channel, rest)

    def input(self, data: bytes) -> None:
        self.agent.touch()
        self.master.write(data)

    def resize(self, cols: int, rows: int) -> None:
        if self.ended or not (0 < cols <= 1000 and 0 < rows <= 1000):
            return
        try:
            fcntl.ioctl(self.master.fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        except OSError:
            pass

    def kill(self) -> None:
        if self.ended:
            return
        self.release()  # its slot is free at once; the shell is still reaped when it exits
        self.signal(signal.SIGHUP)
        self.signal(signal.SIGCONT)
        self.agent.later(KILL_GRACE, lambda: self.signal(signal.SIGKILL))

    def signal(self, signum: int) -> None:
        if not self.ended:
            try:
                os.killpg(self.pid, signum)
            except OSError:
                pass

    def broadcast(self, data: bytes) -> None:
        self.scrollback.add(data)
        if not self.attachments:
            return  # nobody is looking: the scrollback alone keeps it
        message = frame(DATA, data)
        for attachment in list(self.attachments):
            attachment.channel.write(message)
        if any(a.channel.backlog > HIGH_WATER for a in self.attachments):
            self.master.pause()

    def resume_if_drained(self) -> None:
        if all(a.channel.backlog <= HIGH_WATER for a in self.attachments):
            self.master.resume()

    # the PTY master
    def on_data(self, channel: Channel, data: bytes) -> None:
        self.broadcast(data)

    def on_eof(self, channel: Channel) -> None:
        pass  # every slave is closed; the end comes with the shell's exit status

    def on_error(self, channel: Channel) -> None:
        channel.out.clear()  # input to a PTY nobody reads any more
        self.on_drained(channel)

    def on_drained(self, channel: Channel) -> None:
        for attachment in self.attachments:
            attachment.channel.resume()

    # the shell
    def exited(self, wait_status: int) -> None:
        self.ended = True
        drained = 0
        while not self.master.eof and drained < READ_SIZE * 16:  # what the shell wrote last
            try:
                more = os.read(self.master.fd, READ_SIZE)
            except OSError:  # EAGAIN: nothing left; EIO: every slave is closed
                break
            if not more:
                break
            drained += len(more)
            self.broadcast(more)
        message = frame(EXIT, STATUS.pack(exit_status(wait_status)))
        for attachment in list(self.attachments):
            attachment.channel.write(message)
            attachment.channel.close_when_flushed()
        self.attachments.clear()
        self.master.close()
        self.release()

    def release(self) -> None:
        """Take the session out of the sandbox's sessions (not a newer one of the same id)."""
        if self.agent.sessions.get(self.id) is self:
            del self.agent.sessions[self.id]


class Relay(Endpoint):
    """Bytes between a client connection and a TCP connection inside the sandbox."""

    def __init__(self, agent: Agent, client: Channel, upstream: socket.socket, rest: bytes):
        self.client = client
        client.owner = self
        self.upstream = Channel(agent, upstream.fileno(), self, sock=upstream)
        self.ended: set[int] = set()
        if rest:
            self.upstream.write(rest)

    def peer(self, channel: Channel) -> Channel:
        return self.upstream if channel is self.client else self.client

    def on_data(self, channel: Channel, data: bytes) -> None:
        peer = self.peer(channel)
        peer.write(data)
        if peer.backlog > HIGH_WATER:
            channel.pause()

    def on_drained(self, channel: Channel) -> None:
        self.peer(channel).resume()

    def on_eof(self, channel: Channel) -> None:
        self.ended.add(id(channel))
        if len(self.ended) == 2:
            self.client.close_when_flushed()
            self.upstream.close_when_flushed()
        else:
            self.peer(channel).shutdown_write()

    def on_error(self, channel: Channel) -> None:
        self.client.close()
        self.upstream.close()


class Job(Endpoint):
    """A one-shot command; ``done`` gets the result once it exits."""

    def __init__(self, agent: Agent, argv: list[str], timeout: float, done):
        self.agent = agent
        self.done = done
        self.output = {"stdout": bytearray(), "stderr": bytearray()}
        self.status: int | None = None
        self.timed_out = False
        self.finished = False
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        pid = os.fork()
        if pid == 0:

            def prepare() -> None:
                os.setsid()
                os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
                os.dup2(out_w, 1)
                os.dup2(err_w, 2)

            exec_child(argv, dict(agent.env), prepare)
        os.close(out_w)
        os.close(err_w)
        self.pid = pid
        self.pipes = {
            Channel(agent, out_r, self): "stdout",
            Channel(agent, err_r, self): "stderr",
        }
        agent.children[pid] = self
        agent.later(timeout, self.expire)

    def on_data(self, channel: Channel, data: bytes) -> None:
        buffer = self.output[self.pipes[channel]]
        if len(buffer) < EXEC_OUTPUT_CAP:
            buffer += data[: EXEC_OUTPUT_CAP - len(buffer)]

    def on_eof(self, channel: Channel) -> None:
        channel.close()
        self.maybe_finish()

    def expire(self) -> None:
        if self.status is None:
            self.timed_out = True
            self.kill()

    def kill(self) -> None:
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except OSError:
            pass

    def exited(self, wait_status: int) -> None:
        self.status = exit_status(wait_status)
        self.maybe_finish()
        self.agent.later(EXEC_DRAIN, lambda: self.maybe_finish(force=True))

    def maybe_finish(self, force: bool = False) -> None:
        if self.finished or self.status is None:
            return
        if not force and not all(channel.closed for channel in self.pipes):
            return
        self.finished = True
        drain_and_close(self.pipes)
        self.done(
            {
                "ok": True,
                "exit_code": self.status,
                "timed_out": self.timed_out,
                "stdout": base64.b64encode(self.output["stdout"]).decode(),
                "stderr": base64.b64encode(self.output["stderr"]).decode(),
            }
        )


def drain_and_close(outputs) -> None:
    """Close the output pipes of a program that has exited, after taking what is already in
    them (a pipe paused for flow control is closed as it is)."""
    for channel in outputs:
        if not channel.closed:
            if channel.reading:
                channel.on_readable()
            channel.close()


class ClientOfJob(Endpoint):
    """The connection that asked for a job: closing it early kills the job."""

    def __init__(self, job_holder: list):
        self.job_holder = job_holder

    def on_eof(self, channel: Channel) -> None:
        job = self.job_holder[0] if self.job_holder else None
        if job is not None and not job.finished:
            job.kill()
        channel.close()

    on_error = on_eof


class Process(Endpoint):
    """A program on pipes (op ``process``), for the one connection that asked for it.

    Its stdin takes the connection's ``d`` frames until a ``c`` frame closes it; its stdout and
    stderr go back as ``d`` and ``e`` frames; the final ``x`` frame comes once it has exited and
    both outputs are closed. Flow control both ways: a program that does not read its input
    stops the connection being read, a connection that does not keep up stops the outputs being
    read. Losing the connection kills the program's process group.
    """

    def __init__(self, agent: Agent, process_id: str, argv: list[str], client: Channel):
        self.agent = agent
        self.id = process_id
        self.client = client
        self.buffer = bytearray()
        self.status: int | None = None
        self.finished = False
        self.killed = False
        env = {key: value for key, value in agent.env.items() if key != "TERM"}  # no terminal
        fds = [*os.pipe(), *os.pipe(), *os.pipe()]
        in_r, in_w, out_r, out_w, err_r, err_w = fds
        try:
            pid = os.fork()
        except OSError:
            for fd in fds:
                os.close(fd)
            raise
        if pid == 0:

            def prepare() -> None:
                os.setsid()
                os.dup2(in_r, 0)
                os.dup2(out_w, 1)
                os.dup2(err_w, 2)

            exec_child(argv, env, prepare, newline="\n")
        for fd in (in_r, out_w, err_w):
            os.close(fd)
        self.pid = pid
        self.stdin = Channel(agent, in_w, self, reading=False)
        self.outputs = {Channel(agent, out_r, self): DATA, Channel(agent, err_r, self): STDERR}
        agent.children[pid] = self
        agent.processes[process_id] = self

    def start(self, rest: bytes) -> None:
        """Take over the client connection (its reply is written)."""
        self.client.owner = self
        if rest:
            self.on_data(self.client, rest)

    def on_data(self, channel: Channel, data: bytes) -> None:
        if channel is self.client:
            self.on_frames(data)
            return
        self.client.write(frame(self.outputs[channel], data))
        if self.client.backlog > HIGH_WATER:
            for output in self.outputs:
                output.pause()

    def on_frames(self, data: bytes) -> None:
        self.buffer += data
        view, offset = self.buffer, 0
        while len(view) - offset >= HEADER:
            kind, length = FRAME.unpack_from(view, offset)
            if length > MAX_FRAME:
                self.kill()
                self.client.close()
                return
            end = offset + HEADER + length
            if len(view) < end:
                break
            payload = bytes(view[offset + HEADER : end])
            offset = end
            if kind == DATA:
                self.agent.touch()
                self.stdin.write(payload)
                if self.stdin.backlog > HIGH_WATER:
                    self.client.pause()  # the program is not reading its input
            elif kind == CLOSE_INPUT:
                self.stdin.close_when_flushed()
            elif kind == KILL:
                self.kill()
        if offset:
            del self.buffer[:offset]

    def on_eof(self, channel: Channel) -> None:
        if channel is self.client:  # the client went away
            self.kill()
            channel.close()
            return
        channel.close()
        self.maybe_finish()

    def on_error(self, channel: Channel) -> None:
        if channel is self.stdin:  # the program closed its stdin: the rest of the input is dropped
            channel.close()
            self.client.resume()
            return
        self.on_eof(channel)

    def on_drained(self, channel: Channel) -> None:
        if channel is self.stdin:
            self.client.resume()
        elif channel is self.client:
            for output in self.outputs:
                output.resume()

    def kill(self) -> None:
        """SIGKILL to the process group (background children too). Outputs still held open
        by a process that left the group are closed a moment later."""
        if self.finished:
            return  # its pid may belong to someone else by now
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except OSError:
            pass
        if not self.killed:
            self.killed = True
            self.agent.later(KILL_GRACE, lambda: self.maybe_finish(force=True))

    def exited(self, wait_status: int) -> None:
        self.status = exit_status(wait_status)
        self.stdin.close()
        self.client.resume()  # input is dropped from now on, but a lost client must be noticed
        if self.killed:
            self.agent.later(KILL_GRACE, lambda: self.maybe_finish(force=True))
        self.maybe_finish()

    def maybe_finish(self, force: bool = False) -> None:
        if self.finished or self.status is None:
            return
        if not force and not all(channel.closed for channel in self.outputs):
            return
        self.finished = True
        drain_and_close(self.outputs)
        self.client.write(frame(EXIT, STATUS.pack(self.status)))
        self.client.close_when_flushed()
        self.agent.processes.pop(self.id, None)


class Agent:
    def __init__(
        self,
        listener: socket.socket,
        *,
        auto_stop: float,
        disk_quota: int,
        disk_check: float,
        max_sessions: int = MAX_SESSIONS,
    ):
        self.selector = selectors.DefaultSelector()
        self.registered: dict[int, int] = {}
        self.listener = listener
        self.sessions: dict[str, Session] = {}  # live ones: an ended session leaves at once
        self.max_sessions = max(1, max_sessions)
        self.processes: dict[str, Process] = {}
        self.process_ids = itertools.count(1)
        self.children: dict[int, object] = {}
        self.timers: list = []
        self.sequence = itertools.count()
        self.env = dict(os.environ)
        self.last_activity = time.time()
        self.auto_stop = auto_stop
        self.disk_quota = disk_quota
        self.disk_used: int | None = None
        self.last_quota_warning = 0.0
        self.stopping_until: float | None = None
        self.no_children = True
        self.idle_check_due = False

        listener.setblocking(False)
        self.selector.register(listener, selectors.EVENT_READ, self.accept)
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        self.wake_r = wake_r
        self.selector.register(wake_r, selectors.EVENT_READ, self.on_signal)
        if auto_stop > 0:
            self.idle_check_due = True
            self.later(min(30.0, auto_stop / 4), self.check_idle)
        if disk_check > 0 and disk_quota > 0:
            self.disk_check = disk_check
            self.later(1.0, self.check_disk)

    # -- loop plumbing --------------------------------------------------------------------

    def watch(self, channel: Channel) -> None:
        if channel.closed:
            return
        events = (selectors.EVENT_READ if channel.reading else 0) | (selectors.EVENT_WRITE if channel.out else 0)
        current = self.registered.get(channel.fd)
        if events == (current or 0):
            return
        if current is None:
            self.selector.register(channel.fd, events, channel)
        elif events:
            self.selector.modify(channel.fd, events, channel)
        else:
            self.selector.unregister(channel.fd)
            del self.registered[channel.fd]
            return
        self.registered[channel.fd] = events

    def forget(self, channel: Channel) -> None:
        if self.registered.pop(channel.fd, None) is not None:
            self.selector.unregister(channel.fd)

    def later(self, delay: float, callback) -> None:
        heapq.heappush(self.timers, (time.monotonic() + delay, next(self.sequence), callback))

    def run(self) -> None:
        while True:
            now = time.monotonic()
            while self.timers and self.timers[0][0] <= now:
                self.guarded(heapq.heappop(self.timers)[2])
            if self.stopping_until is not None and (self.no_children or now >= self.stopping_until):
                return
            timeout = self.timers[0][0] - now if self.timers else None
            if self.stopping_until is not None:
                timeout = min(timeout if timeout is not None else 1.0, max(0.0, self.stopping_until - now), 0.05)
            for key, events in self.selector.select(timeout):
                target = key.data
                if isinstance(target, Channel):
                    self.guarded(functools.partial(self.on_ready, target, events), target)
                else:
                    self.guarded(target)

    @staticmethod
    def on_ready(channel: Channel, events: int) -> None:
        if events & selectors.EVENT_WRITE and not channel.closed:
            channel.on_writable()
        if events & selectors.EVENT_READ and not channel.closed and channel.reading:
            channel.on_readable()

    @staticmethod
    def guarded(callback, channel: Channel | None = None) -> None:
        """A bug in handling one connection must not take PID 1, and with it the whole
        sandbox, down: it is logged and that connection closed."""
        try:
            callback()
        except Exception:  # noqa: BLE001
            traceback.print_exc(file=sys.stderr)
            if channel is not None:
                channel.close()

    def on_signal(self) -> None:
        try:
            while os.read(self.wake_r, 512):
                pass
        except BlockingIOError:
            pass
        self.reap()

    def reap(self) -> None:
        while True:
            try:
                pid, wait_status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self.no_children = True
                return
            if pid == 0:
                self.no_children = False
                return
            owner = self.children.pop(pid, None)
            if owner is not None:
                owner.exited(wait_status)

    def accept(self) -> None:
        for _ in range(64):
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            Pending(self, sock)

    def touch(self) -> None:
        self.last_activity = time.time()

    def reply(self, channel: Channel, message: dict) -> None:
        channel.write(json_frame(message))
        channel.close_when_flushed()

    # -- requests ---------------------------------------------------------------------------

    def dispatch(self, channel: Channel, request: dict, rest: bytes) -> None:
        op = request.get("op")
        handler = getattr(self, f"op_{op}", None) if isinstance(op, str) else None
        if handler is None:
            self.reply(channel, error_reply("bad_request", f"Unknown op {op!r}."))
            return
        try:
            handler(channel, request, rest)
        except (TypeError, ValueError, KeyError) as exc:
            self.reply(channel, error_reply("bad_request", str(exc)[:200]))
        except OSError as exc:
            self.reply(channel, error_reply("failed", str(exc)[:200]))

    def op_status(self, channel: Channel, request: dict, rest: bytes) -> None:
        self.reply(
            channel,
            {
                "ok": True,
                "sessions": sorted(self.sessions),
                "processes": sorted(self.processes),
                "auto_stop": self.auto_stop,
                "last_activity": self.last_activity,
                "disk_used": self.disk_used,
            },
        )

    def op_touch(self, channel: Channel, request: dict, rest: bytes) -> None:
        self.touch()
        self.reply(channel, {"ok": True})

    def op_terminal(self, channel: Channel, request: dict, rest: bytes) -> None:
        session_id = str(request["session"])
        if not SESSION_ID.fullmatch(session_id):
            raise ValueError("session ids are 1 to 64 letters, digits or dashes")
        cols, rows = int(request.get("cols") or 80), int(request.get("rows") or 24)
        cols, rows = min(max(cols, 1), 1000), min(max(rows, 1), 1000)
        session = self.sessions.get(session_id)
        created = session is None
        if created:
            if len(self.sessions) >= self.max_sessions:
                message = (
                    f"This sandbox has {len(self.sessions)} terminal sessions open (web terminals and SSH "
                    f"shells), as many as it may (SANDBOX_LOCAL_PTY_SESSIONS); end one to open another."
                )
                self.reply(channel, error_reply("too_many_sessions", message))
                return
            argv = request.get("argv") or LOGIN_SHELL
            if not (isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv)):
                raise ValueError("argv must be a list of strings")
            scrollback = min(max(int(request.get("scrollback", SCROLLBACK)), 0), MAX_SCROLLBACK)
            session = Session(self, session_id, argv, cols, rows, scrollback)
            self.sessions[session_id] = session
        else:
            session.resize(cols, rows)
        self.touch()
        channel.write(json_frame({"ok": True, "created": created}))
        session.attach(channel, rest)

    def op_relay(self, channel: Channel, request: dict, rest: bytes) -> None:
        port = int(request["port"])
        if not 0 < port < 65536:
            raise ValueError("port out of range")
        upstream = None
        for family, address in ((socket.AF_INET, ("127.0.0.1", port)), (socket.AF_INET6, ("::1", port))):
            candidate = socket.socket(family, socket.SOCK_STREAM)
            candidate.settimeout(2.0)
            try:
                candidate.connect(address)
            except OSError:
                candidate.close()
                continue
            upstream = candidate
            break
        if upstream is None:
            self.reply(channel, error_reply("refused", f"Nothing is listening on port {port}."))
            return
        upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.touch()
        channel.write(json_frame({"ok": True}))
        Relay(self, channel, upstream, rest)

    def op_process(self, channel: Channel, request: dict, rest: bytes) -> None:
        argv = request["argv"]
        if not (isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv)):
            raise ValueError("argv must be a non-empty list of strings")
        if len(self.processes) >= MAX_PROCESSES:
            self.reply(channel, error_reply("too_many_processes", "This sandbox runs too many programs over SSH."))
            return
        process = Process(self, f"p{next(self.process_ids)}", argv, channel)
        self.touch()
        channel.write(json_frame({"ok": True, "process": process.id}))
        process.start(rest)

    def op_end(self, channel: Channel, request: dict, rest: bytes) -> None:
        if "process" in request:
            target = self.processes.get(str(request["process"]))
        else:
            target = self.sessions.get(str(request["session"]))
        if target is not None:
            target.kill()
        self.reply(channel, {"ok": True, "ended": target is not None})

    def op_configure(self, channel: Channel, request: dict, rest: bytes) -> None:
        self.auto_stop = max(0.0, float(request["auto_stop"]))
        if self.auto_stop > 0 and not self.idle_check_due:
            self.idle_check_due = True
            self.later(min(30.0, self.auto_stop / 4), self.check_idle)
        self.reply(channel, {"ok": True})

    def op_exec(self, channel: Channel, request: dict, rest: bytes) -> None:
        argv = request["argv"]
        if not (isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv)):
            raise ValueError("argv must be a non-empty list of strings")
        timeout = float(request.get("timeout") or 30)
        if request.get("activity", True):
            self.touch()
        holder: list = []
        channel.owner = ClientOfJob(holder)

        def done(result: dict) -> None:
            if not channel.closed:
                self.reply(channel, result)

        holder.append(Job(self, argv, timeout, done))

    def op_shutdown(self, channel: Channel, request: dict, rest: bytes) -> None:
        self.reply(channel, {"ok": True})
        self.shutdown(float(request.get("grace") or 1.0))

    # -- policies -----------------------------------------------------------------------------

    def shutdown(self, grace: float) -> None:
        if self.stopping_until is not None:
            return
        self.stopping_until = time.monotonic() + max(0.0, min(grace, 30.0))
        for session in list(self.sessions.values()):
            session.signal(signal.SIGHUP)
        for signum in (signal.SIGTERM, signal.SIGCONT):
            try:
                os.kill(-1, signum)  # from PID 1: every other process of the namespace
            except OSError:
                pass
        self.reap()

    def check_idle(self) -> None:
        if self.auto_stop <= 0:
            self.idle_check_due = False
            return
        idle = time.time() - self.last_activity
        if idle >= self.auto_stop:
            self.shutdown(2.0)
            return
        self.later(min(30.0, max(1.0, self.auto_stop - idle)), self.check_idle)

    def check_disk(self) -> None:
        def done(result: dict) -> None:
            try:
                self.disk_used = int(base64.b64decode(result["stdout"]).split()[0])
            except (ValueError, IndexError):
                pass
            else:
                self.warn_if_over_quota()
            self.later(self.disk_check, self.check_disk)

        Job(self, ["du", "-sxB1", HOME], 120.0, done)

    def warn_if_over_quota(self) -> None:
        if self.disk_used is None or self.disk_used <= self.disk_quota:
            return
        now = time.monotonic()
        if now - self.last_quota_warning < QUOTA_WARNING_EVERY and self.last_quota_warning:
            return
        self.last_quota_warning = now
        text = (
            f"\r\n\x1b[1;33m[sandbox] {self.disk_used / 2**30:.1f} GiB used in {HOME}, over the "
            f"{self.disk_quota / 2**30:.0f} GiB quota. Free some space: a sandbox over its quota "
            f"does not start again.\x1b[0m\r\n"
        ).encode()
        for session in list(self.sessions.values()):
            session.broadcast(text)


def no_core_dumps_of_the_agent() -> None:
    """Not dumpable: processes of the sandbox (same uid) cannot ptrace the agent or open its
    descriptors through /proc/1/fd."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE, 0
    except (OSError, AttributeError):
        pass


def serve(args: argparse.Namespace) -> None:
    listen_fd = args.listen_fd
    os.closerange(3, listen_fd)
    os.closerange(listen_fd + 1, 1 << 16)
    os.set_inheritable(listen_fd, False)
    no_core_dumps_of_the_agent()
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # PID 1 ignores signals without a handler
    listener = socket.socket(fileno=listen_fd)
    agent = Agent(
        listener,
        auto_stop=args.auto_stop,
        disk_quota=args.disk_quota,
        disk_check=args.disk_check,
        max_sessions=args.max_sessions,
    )
    agent.run()


# --- the launcher (host side) -------------------------------------------------------------------


MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_BIND, MS_REC, MS_SLAVE = 2, 4, 8, 4096, 16384, 1 << 19
CLONE_NEWNS = 0x00020000


def reveal_root(root: str) -> None:
    """Let the sandbox's uid reach ``root`` when one of its parents is closed to it (the
    portal's ``var/``, 0700): in a mount namespace of the launcher's own (bwrap's is made from
    it), a tmpfs covers the first closed parent, and ``root`` is bind-mounted back at the same
    path inside it. Nothing else of that parent is visible there; the host's mounts are not
    changed. Needs root, as the launcher is before it drops privileges."""
    import ctypes

    path = os.path.abspath(root)
    parents = []
    while True:
        path = os.path.dirname(path)
        if path == "/":
            break
        parents.append(path)
    closed = [p for p in reversed(parents) if not os.stat(p).st_mode & 0o001]
    if not closed:
        return
    libc = ctypes.CDLL(None, use_errno=True)

    def check(result: int, what: str) -> None:
        if result != 0:
            number = ctypes.get_errno()
            raise OSError(number, f"{what}: {os.strerror(number)}")

    check(libc.unshare(CLONE_NEWNS), "unshare")
    check(libc.mount(b"none", b"/", None, MS_REC | MS_SLAVE, None), "mount --make-rslave /")
    fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)  # in the new namespace, before the cover
    try:
        cover = closed[0].encode()
        check(libc.mount(b"tmpfs", cover, b"tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, b"mode=0755,size=64k"), cover)
        relative = os.path.relpath(root, closed[0])
        current = closed[0]
        for part in relative.split(os.sep):
            current = os.path.join(current, part)
            os.mkdir(current)
            os.chmod(current, 0o755)
        source = f"/proc/self/fd/{fd}".encode()
        check(libc.mount(source, current.encode(), None, MS_BIND | MS_REC, None), "bind the root")
    finally:
        os.close(fd)


def launch(config: dict) -> None:
    """Detach, confine, drop privileges and exec bwrap. The first process prints the pid of
    the second (which becomes bwrap) and exits at once."""
    pid = os.fork()
    if pid:
        print(pid, flush=True)
        os._exit(0)
    try:
        os.dup2(2, 1)  # stdout was the pipe to the portal; from here on, everything goes to the log
        for procs in config.get("cgroup_procs", []):
            with open(procs, "w") as handle:
                handle.write(str(os.getpid()))
        for name, value in config.get("rlimits", {}).items():
            resource.setrlimit(getattr(resource, name), (value, value))
        if config.get("nice"):
            os.nice(int(config["nice"]))
        uid, gid = config.get("uid"), config.get("gid")
        if uid is not None:
            if config.get("root"):
                reveal_root(config["root"])
            os.setgroups([])
            os.setresgid(gid, gid, gid)
            os.setresuid(uid, uid, uid)
        for fd in config.get("keep_fds", []):
            os.set_inheritable(fd, True)
        os.execv(config["argv"][0], config["argv"])
    except BaseException as exc:  # noqa: BLE001 - report and leave; the portal sees the log
        os.write(2, f"sandbox launcher: {exc}\n".encode())
        os._exit(1)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser("serve", help="run as PID 1 of a sandbox")
    serve_parser.add_argument("--listen-fd", type=int, required=True)
    serve_parser.add_argument("--auto-stop", type=float, default=0.0, help="seconds without activity; 0: never")
    serve_parser.add_argument("--disk-quota", type=int, default=0, help="bytes; 0: no check")
    serve_parser.add_argument("--disk-check", type=float, default=120.0, help="seconds between disk usage checks")
    serve_parser.add_argument("--max-sessions", type=int, default=MAX_SESSIONS, help="live PTY sessions at most")
    launch_parser = commands.add_parser("launch", help="start bwrap for a sandbox (host side)")
    launch_parser.add_argument("config", help="JSON: argv, cgroup_procs, rlimits, nice, uid, gid, keep_fds, root")
    args = parser.parse_args(argv)
    if args.command == "serve":
        serve(args)
    else:
        launch(json.loads(args.config))


if __name__ == "__main__":
    main(sys.argv[1:])
