"""Local port forwarding (``ssh -L``, ``ssh -W``: ``direct-tcpip`` channels) to the sandbox's own
loopback.

The destination must be ``localhost``, ``127.0.0.1`` or ``::1``, and means the loopback inside
the sandbox's network namespace: the connection is made there by the sandbox's agent
(:func:`services.ssh_port_connect`), never by the gateway, so nothing outside the sandbox (the
host's loopback services, other sandboxes, other hosts) can be reached through a forward. Any
other destination is refused as "administratively prohibited", with the reason.
"""

from __future__ import annotations

import asyncio
import logging

import asyncssh

from sandboxes import services

from .messages import FORWARD_PROHIBITED, PORT_CLOSED, UNAVAILABLE_MESSAGE

log = logging.getLogger(__name__)

SANDBOX_LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1"})


def check_destination(host: str, port: int) -> None:
    """Raise the channel open failure for a destination outside the sandbox."""
    if host.strip("[]").lower() not in SANDBOX_LOOPBACK or not 0 < port < 65536:
        raise asyncssh.ChannelOpenError(asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, FORWARD_PROHIBITED)


async def open_forward(client, port: int) -> asyncssh.SSHTCPSession:
    """The session of a forward of ``client`` (the :class:`.connection.GatewayConnection`) to
    ``port`` in its sandbox, once the sandbox's side is connected; a channel open failure
    (``connect failed``, with the reason) when it cannot be. The caller has claimed a channel
    of the connection; the forward gives it back when it closes or fails to open."""
    try:
        sock = await asyncio.to_thread(services.ssh_port_connect, target=client.target, port=port)
    except services.SandboxError as exc:
        client.release_channel()
        log.info("ssh forward %s to port %s not opened: %s", client.label, port, exc)
        if exc.kind == services.ErrorKind.PORT_CLOSED:
            reason = PORT_CLOSED.format(port=port)
        else:
            reason = str(exc) or UNAVAILABLE_MESSAGE
        raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, reason) from None
    channel_side = ChannelSide(client)
    try:
        sock.setblocking(False)
        await asyncio.get_running_loop().connect_accepted_socket(lambda: SandboxSide(channel_side), sock)
    except OSError as exc:
        client.release_channel()
        sock.close()
        raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, UNAVAILABLE_MESSAGE) from exc
    client.forwards.add(channel_side)
    return channel_side


class ChannelSide(asyncssh.SSHTCPSession):
    """The SSH channel's end of a forward: what the client sends goes into the sandbox."""

    def __init__(self, client):
        self.client = client
        self.chan: asyncssh.SSHTCPChannel | None = None
        self.transport: asyncio.Transport | None = None  # the sandbox's side, set by SandboxSide
        self.closed = False
        self.ended: set[str] = set()  # the directions that reached their end of file

    def connection_made(self, chan) -> None:
        self.chan = chan
        if self.transport.is_closing():
            chan.close()
        else:
            self.transport.resume_reading()  # nothing is read from the sandbox before the channel is open

    def data_received(self, data: bytes, datatype) -> None:
        self.transport.write(data)
        self.client.activity.touch()

    def eof_received(self) -> bool:
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.end_of("client")
        return True  # the other way may still carry data

    def pause_writing(self) -> None:
        self.transport.pause_reading()  # the client is not taking the sandbox's bytes

    def resume_writing(self) -> None:
        self.transport.resume_reading()

    def connection_lost(self, exc) -> None:
        self.close()

    def end_of(self, direction: str) -> None:
        # Once both ways are done, nothing would notice the other side closing: asyncio stops
        # reading a stream at its end of file.
        self.ended.add(direction)
        if len(self.ended) == 2:
            self.close()

    def close(self) -> None:
        """End the forward both ways. Idempotent."""
        if self.closed:
            return
        self.closed = True
        self.client.forwards.discard(self)
        self.client.release_channel()
        if self.transport is not None:
            self.transport.close()
        if self.chan is not None:
            self.chan.close()


class SandboxSide(asyncio.Protocol):
    """The sandbox's end of a forward (a stream relayed by its agent): what the program inside
    sends goes to the client."""

    def __init__(self, channel_side: ChannelSide):
        self.channel_side = channel_side

    def connection_made(self, transport) -> None:
        self.channel_side.transport = transport
        transport.pause_reading()

    def data_received(self, data: bytes) -> None:
        self.channel_side.chan.write(data)
        self.channel_side.client.activity.touch()

    def eof_received(self) -> bool:
        self.channel_side.chan.write_eof()
        self.channel_side.end_of("sandbox")
        return True

    def pause_writing(self) -> None:
        self.channel_side.chan.pause_reading()  # the sandbox is not taking the client's bytes

    def resume_writing(self) -> None:
        self.channel_side.chan.resume_reading()

    def connection_lost(self, exc) -> None:
        if self.channel_side.chan is not None:
            self.channel_side.close()
