"""Port forwarding through the SSH gateway of local sandboxes: ``ssh -L`` (and ``-W``) reaches
ports on the sandbox's own loopback and nothing else; ``-R``, ``-A`` and ``-X`` are refused with
a message. Driven by the real OpenSSH client against real bubblewrap sandboxes."""

import hashlib
import os
import socket
import subprocess

import pytest

from sandboxes.local_only.ssh_gateway import (
    AGENT_FORWARD_REFUSED,
    FORWARD_PROHIBITED,
    MAX_CHANNELS,
    REMOTE_FORWARD_REFUSED,
    X11_FORWARD_REFUSED,
)
from sandboxes.models import Sandbox
from sandboxes.providers import get_provider
from tests.local_fixtures import local_root, local_settings, run, wait_for_port  # noqa: F401 - fixtures
from tests.ssh_fixtures import (  # noqa: F401 - fixtures
    CLIENT_INFO,
    forwarding,
    free_port,
    gateway,
    http_get,
    needs_ssh,
    ssh,
    ssh_access,
    wait_for,
)

pytestmark = [pytest.mark.django_db(transaction=True), needs_ssh]


def serve_http(user, port: int, *, bind: str = "127.0.0.1", text: str = "hello from the sandbox") -> str:
    """An HTTP server on ``bind:port`` inside the user's sandbox, serving ``hello.txt``; the
    sandbox's remote id."""
    remote_id = Sandbox.objects.get(user=user).remote_id
    provider = get_provider("local")
    run(
        provider,
        remote_id,
        f"mkdir -p www-{port} && echo '{text}' > www-{port}/hello.txt && cd www-{port} && "
        f"(nohup python3 -m http.server {port} --bind {bind} >/dev/null 2>&1 &)",
    )
    wait_for_port(provider, remote_id, port)
    return remote_id


def test_a_local_forward_reaches_a_server_on_the_sandboxs_loopback(gateway, owner):
    token = ssh_access(owner)["token"]
    serve_http(owner, 8000)
    serve_http(owner, 8001, bind="::1", text="hello over ipv6")
    by_name, by_address, by_ipv6 = free_port(), free_port(), free_port()

    with forwarding(
        token, f"{by_name}:localhost:8000", f"{by_address}:127.0.0.1:8000", f"{by_ipv6}:[::1]:8001", port=gateway.port
    ):
        answers = [http_get(by_name, "/hello.txt"), http_get(by_address, "/hello.txt"), http_get(by_ipv6, "/hello.txt")]

    assert all(answer.startswith(b"HTTP/1.0 200") for answer in answers), answers
    assert answers[0].endswith(b"\r\n\r\nhello from the sandbox\n")
    assert answers[1].endswith(b"\r\n\r\nhello from the sandbox\n")
    assert answers[2].endswith(b"\r\n\r\nhello over ipv6\n")


SHA_SERVER = """
import hashlib, socket
server = socket.create_server(("127.0.0.1", 8200))
while True:  # answers each connection with the sha256 of what it sent, once its input ends
    connection, _ = server.accept()
    digest = hashlib.sha256()
    while data := connection.recv(65536):
        digest.update(data)
    try:
        connection.sendall(digest.hexdigest().encode())
    except OSError:
        pass
    connection.close()
"""
ECHO_SERVER = """
import socket, threading
server = socket.create_server(("127.0.0.1", 8300))
def echo(connection):
    with connection:
        while data := connection.recv(65536):
            connection.sendall(data)
while True:
    threading.Thread(target=echo, args=(server.accept()[0],), daemon=True).start()
"""


def start_server(user, source: str, port: int) -> None:
    """Run a Python server inside the user's sandbox, listening on ``port``."""
    remote_id = Sandbox.objects.get(user=user).remote_id
    provider = get_provider("local")
    run(
        provider,
        remote_id,
        f"cat > server-{port}.py <<'EOF'\n{source}\nEOF\n(nohup python3 server-{port}.py >/dev/null 2>&1 &)",
    )
    wait_for_port(provider, remote_id, port)


def test_a_forward_carries_data_both_ways_with_half_close(gateway, owner):
    token = ssh_access(owner)["token"]
    start_server(owner, SHA_SERVER, 8200)
    payload = os.urandom(3 << 20)

    result = ssh(token, port=gateway.port, extra=["-W", "localhost:8200"], stdin=payload)

    assert (result.returncode, result.stdout) == (0, hashlib.sha256(payload).hexdigest().encode())


def test_nothing_outside_the_sandbox_is_reachable_through_a_forward(gateway, owner, outsider):
    token = ssh_access(owner)["token"]
    ssh_access(outsider)
    serve_http(outsider, 8100, text="the outsider")  # another sandbox, same port space on the host
    listener = socket.create_server(("127.0.0.1", 0))  # a service on the host's loopback
    listener.setblocking(False)
    host_port = listener.getsockname()[1]
    local = free_port()

    with listener, forwarding(token, f"{local}:127.0.0.1:{host_port}", port=gateway.port, client=CLIENT_INFO):
        through_forward = http_get(local)
        results = {
            port: ssh(token, port=gateway.port, extra=["-W", f"localhost:{port}"], client=CLIENT_INFO)
            for port in (host_port, 5432, 6379, 8100)  # the listener, PostgreSQL, Redis, the other sandbox
        }
        with pytest.raises(BlockingIOError):
            listener.accept()  # nothing ever connected to the host's listener

    assert through_forward == b""  # the forwarded connection was closed without an answer
    for port, result in results.items():
        assert result.returncode == 255, (port, result.stdout)
        assert f"connect failed: nothing is listening on port {port} in your sandbox" in result.stderr.decode()


def test_destinations_other_than_the_sandbox_loopback_are_prohibited(gateway, owner):
    token = ssh_access(owner)["token"]
    destinations = ["10.0.0.1:80", "192.168.1.1:22", "example.com:443", f"{socket.gethostname()}:5432"]
    destinations += ["0.0.0.0:6379", "127.0.0.2:8000", "[::ffff:127.0.0.1]:8000", "[::2]:8000"]

    results = {dest: ssh(token, port=gateway.port, extra=["-W", dest], client=CLIENT_INFO) for dest in destinations}

    for destination, result in results.items():
        assert result.returncode == 255, destination
        assert f"administratively prohibited: {FORWARD_PROHIBITED}" in result.stderr.decode(), destination


def echoes(connection: socket.socket) -> bool:
    try:
        connection.sendall(b"ping")
        return connection.recv(4) == b"ping"
    except OSError:
        return False


def test_a_connection_holds_a_bounded_number_of_channels(gateway, owner):
    token = ssh_access(owner)["token"]
    start_server(owner, ECHO_SERVER, 8300)
    local = free_port()

    with forwarding(token, f"{local}:localhost:8300", port=gateway.port, client=CLIENT_INFO) as client:
        with socket.create_connection(("127.0.0.1", local), timeout=10) as first:
            assert echoes(first)  # channels open in order: the forward's probes have opened theirs
        (connection,) = gateway.gateway.clients
        assert wait_for(lambda: connection.open_channels == 0)  # and closed them
        held = [socket.create_connection(("127.0.0.1", local), timeout=10) for _ in range(MAX_CHANNELS)]
        try:
            answered = [echoes(connection) for connection in held]  # each is an open channel
            with socket.create_connection(("127.0.0.1", local), timeout=10) as over_the_limit:
                refused = not echoes(over_the_limit)
            held.pop().close()
            assert wait_for(lambda: echoes(socket.create_connection(("127.0.0.1", local), timeout=10)))
        finally:
            for connection in held:
                connection.close()
        client.terminate()
        stderr = client.stderr.read().decode()

    assert answered == [True] * MAX_CHANNELS and refused
    assert f"too many open sessions and forwards on this connection (at most {MAX_CHANNELS})" in stderr


def test_remote_agent_and_x11_forwarding_are_refused_with_a_message(gateway, owner, tmp_path):
    token = ssh_access(owner)["token"]
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(tmp_path / "agent.sock")], stdout=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: (tmp_path / "agent.sock").exists())
        with_agent = {**os.environ, "SSH_AUTH_SOCK": str(tmp_path / "agent.sock")}
        remote = ssh(token, "echo ran", port=gateway.port, extra=["-R", "9000:localhost:80"], client=CLIENT_INFO)
        agent_forward = ssh(
            token, "echo ran; echo ${SSH_AUTH_SOCK:-none}", port=gateway.port, extra=["-A"], env=with_agent
        )
        x11 = ssh(
            token,
            "echo ran; echo ${DISPLAY:-none}",
            port=gateway.port,
            extra=["-X"],
            env={**os.environ, "DISPLAY": ":0"},
        )
        with_tty = ssh(token, port=gateway.port, tty=True, extra=["-R", "9001:localhost:80"], stdin=b"exit\n")
    finally:
        agent.terminate()
        agent.wait()

    assert (remote.returncode, remote.stdout) == (0, b"ran\n")  # the session itself goes on
    assert "remote port forwarding failed for listen port 9000" in remote.stderr.decode()  # OpenSSH's own word
    assert REMOTE_FORWARD_REFUSED in remote.stderr.decode()  # and why
    assert (agent_forward.returncode, agent_forward.stdout) == (0, b"ran\nnone\n")
    assert AGENT_FORWARD_REFUSED in agent_forward.stderr.decode()  # OpenSSH itself says nothing
    assert (x11.returncode, x11.stdout) == (0, b"ran\nnone\n")
    assert X11_FORWARD_REFUSED in x11.stderr.decode()
    assert REMOTE_FORWARD_REFUSED.encode() + b"\r\n" in with_tty.stderr  # a line of the terminal's
