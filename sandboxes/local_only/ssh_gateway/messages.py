"""What the gateway tells SSH users, in one place.

OpenSSH prints the message of a disconnect and the reason of a refused channel even with
``LogLevel=ERROR``; a line on a session's stderr reaches the user wherever the client shows the
remote stderr (a terminal, ``sftp``, ``scp``).
"""

# A connection refused at authentication.
EXPIRED_MESSAGE = "This access token is expired or revoked. Open the portal to get a new SSH command."
STOPPED_MESSAGE = "Your sandbox is stopped. Open the portal to resume it."
UNAVAILABLE_MESSAGE = "Sandboxes are not reachable right now. Please try again in a moment."
THROTTLED_MESSAGE = (
    "Too many wrong access tokens from your address. Wait {seconds} seconds, then try again "
    "with the SSH command the portal shows."
)

# An open connection ended.
REVOKED_MESSAGE = (
    "This access token was revoked (the portal handed out a newer SSH command), so the connection "
    "was closed. Open the portal to get the new command."
)
WITHDRAWN_MESSAGE = (
    "Access to this connection was revoked in the portal, so the connection was closed. "
    "Open the portal to get a new SSH command."
)
ENDED_STOPPED_MESSAGE = "Your sandbox stopped, so the connection was closed. Open the portal to resume it."
SHUTDOWN_MESSAGE = "The SSH gateway is shutting down."

# Channels refused or failed (the reason of a channel open failure).
FORWARD_PROHIBITED = (
    "only ports inside your sandbox can be forwarded: use localhost, 127.0.0.1 or ::1 as the destination"
)
SOCKET_FORWARD_PROHIBITED = "only TCP ports inside your sandbox can be forwarded, not unix sockets"
PORT_CLOSED = "nothing is listening on port {port} in your sandbox"
TOO_MANY_CHANNELS = "too many open sessions and forwards on this connection (at most {limit})"

# Lines on a session's stderr: requests refused without a message of their own.
REMOTE_FORWARD_REFUSED = "JoePro: remote port forwarding (-R) is not available; use -L to reach ports in your sandbox."
AGENT_FORWARD_REFUSED = "JoePro: agent forwarding (-A) is not available; your keys stay on your machine."
X11_FORWARD_REFUSED = "JoePro: X11 forwarding (-X) is not available in sandboxes."
