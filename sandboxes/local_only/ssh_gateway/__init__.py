"""The portal's own SSH gateway, for sandboxes whose provider has none (``Capability.SSH_GATEWAY``:
local ones): ``ssh -p 2222 <token>@<host>`` opens a shell in one.

As with Daytona's gateway, the username *is* the SSH access token minted at launch, so there
is no password or key prompt: a live token authenticates by itself (SSH "none"
authentication). Any other is refused at once, the connection closed with a message saying
what to do (OpenSSH prints it even with ``LogLevel=ERROR``): an unknown, expired or revoked
token (stopping a sandbox revokes its token) and the token of a sandbox that stopped by
itself each get their own.

What a connection can do, each in its module:

- :mod:`.sessions` and :mod:`.programs`: shells and commands, on a PTY when the client asks
  for one and on pipes otherwise; the ``sftp`` subsystem and ``scp`` (both kinds), run inside
  the sandbox as its user. Each session has a program of its own, ended when the channel closes
  (unlike the web terminal, which detaches so that a reload finds the same shell).
- :mod:`.forwarding`: ``ssh -L``/``ssh -W`` to ports on the sandbox's own loopback, and
  nowhere else.
- Refused, with a line on the session's stderr saying so: remote forwarding (``-R``), agent
  forwarding (``-A``) and X11 forwarding (``-X``).
- :mod:`.connection`: at most 32 sessions and forwards open at once; its traffic counts as
  use of the sandbox (:mod:`.activity`, once a minute).
- :mod:`.server`: every connection's token is checked again every 1.5 s, and a revoked token,
  or a sandbox stopped or deleted, ends its connections with a message saying why. Expiry alone
  does not: credentials are checked when a connection opens.

Daytona runs its own gateway. Everything that blocks (services, the database) runs off the event
loop. Tokens are never logged; :func:`token_digest` names one in logs.
"""

from .connection import MAX_CHANNELS, GatewayConnection, token_digest
from .hostkey import load_or_create_host_key
from .messages import (
    AGENT_FORWARD_REFUSED,
    ENDED_STOPPED_MESSAGE,
    EXPIRED_MESSAGE,
    FORWARD_PROHIBITED,
    PORT_CLOSED,
    REMOTE_FORWARD_REFUSED,
    REVOKED_MESSAGE,
    STOPPED_MESSAGE,
    THROTTLED_MESSAGE,
    UNAVAILABLE_MESSAGE,
    X11_FORWARD_REFUSED,
)
from .programs import SFTP_SERVER
from .server import CHECK_INTERVAL, SshGateway

__all__ = [
    "AGENT_FORWARD_REFUSED",
    "CHECK_INTERVAL",
    "ENDED_STOPPED_MESSAGE",
    "EXPIRED_MESSAGE",
    "FORWARD_PROHIBITED",
    "MAX_CHANNELS",
    "PORT_CLOSED",
    "REMOTE_FORWARD_REFUSED",
    "REVOKED_MESSAGE",
    "SFTP_SERVER",
    "STOPPED_MESSAGE",
    "THROTTLED_MESSAGE",
    "UNAVAILABLE_MESSAGE",
    "X11_FORWARD_REFUSED",
    "GatewayConnection",
    "SshGateway",
    "load_or_create_host_key",
    "token_digest",
]
