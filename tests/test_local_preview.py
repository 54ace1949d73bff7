"""The preview of a local sandbox: the provider's streams to its ports, and the portal's page
that opens the preview (the relay itself: tests/test_preview_sites.py)."""

import socket
import textwrap
from urllib.parse import urlsplit

import pytest
from django.test import Client

from sandboxes.models import Sandbox
from sandboxes.providers import get_provider
from tests.conftest import launch, signed_in
from tests.local_fixtures import local_root, local_settings, make_provider, run, spec, wait_for_port  # noqa: F401

pytestmark = pytest.mark.django_db


def test_the_preview_link_is_the_portals_page_which_sends_the_owner_to_the_previews_site(local_settings, owner):
    client = signed_in(owner)
    body = launch(client).json()
    sandbox_id = body["sandbox"]["id"]
    assert body["access"]["preview"]["url"] == f"http://testserver/sandboxes/{sandbox_id}/preview/?port=3000"

    door = client.get(f"/sandboxes/{sandbox_id}/preview/?port=3000")
    assert door.status_code == 302
    target = urlsplit(door["Location"])
    assert target.netloc == f"3000-{sandbox_id}.localhost:8000" and target.path == "/_joepro/handshake"
    assert door["Cache-Control"].startswith("no-store") or "no-store" in door["Cache-Control"]
    assert urlsplit(client.get(f"/sandboxes/{sandbox_id}/preview/docs?port=8080")["Location"]).netloc.startswith(
        "8080-"
    )
    assert client.get(f"/sandboxes/{sandbox_id}/preview/?port=70000").status_code == 400


def test_other_users_get_404_and_signed_out_visitors_sign_in(local_settings, owner, teammate, outsider):
    sandbox_id = launch(signed_in(owner)).json()["sandbox"]["id"]
    url = f"/sandboxes/{sandbox_id}/preview/"
    for user in (teammate, outsider):
        assert signed_in(user).get(url).status_code == 404
        assert signed_in(user).get(url + "any/path").status_code == 404

    anonymous = Client().get(url)
    assert anonymous.status_code == 302
    assert anonymous["Location"].startswith("/accounts/login/?next=")
    assert signed_in(teammate).get(f"/sandboxes/{'0' * 32}/preview/").status_code == 404


def test_a_stopped_sandbox_has_no_preview(local_settings, owner):
    client = signed_in(owner)
    sandbox_id = launch(client).json()["sandbox"]["id"]
    get_provider("local").stop(sandbox_id, wait_seconds=5)
    Sandbox.objects.filter(remote_id=sandbox_id).update(state="stopped")

    response = client.get(f"/sandboxes/{sandbox_id}/preview/")

    assert response.status_code == 503
    assert b"not running" in response.content


ECHO_SERVER = textwrap.dedent(
    """
    import socket, sys
    server = socket.create_server(("127.0.0.1", 3000))
    while True:
        connection, _ = server.accept()
        data = b""
        while chunk := connection.recv(100):
            data += chunk
        connection.sendall(b"sandbox " + sys.argv[1].encode() + b" heard " + data)
        connection.close()
    """
)


def test_port_3000_of_two_sandboxes_through_the_provider(local_root):
    provider = make_provider(local_root)
    sandboxes = [provider.create(spec(), wait_seconds=10) for _ in range(2)]
    for index, remote in enumerate(sandboxes):
        script = f"cat > ~/echo.py <<'EOF'\n{ECHO_SERVER}\nEOF\nnohup python3 ~/echo.py {index} >/dev/null 2>&1 &"
        run(provider, remote.id, script)
        wait_for_port(provider, remote.id, 3000)
    for index, remote in enumerate(sandboxes):
        relay = provider.open_relay(remote.id, 3000)
        relay.sendall(b"hello")
        relay.shutdown(socket.SHUT_WR)  # the half-close reaches the server
        received = b""
        while chunk := relay.recv(4096):
            received += chunk
        relay.close()
        assert received == f"sandbox {index} heard hello".encode()
