"""The preview of a local sandbox: port 3000 inside it, served by the portal to its owner."""

import json
import socket
import textwrap
import time

import pytest
from asgiref.sync import async_to_sync
from django.test import AsyncRequestFactory, Client

from sandboxes.local_only.preview import preview
from sandboxes.providers import get_provider
from tests.conftest import launch, signed_in
from tests.local_fixtures import local_root, local_settings, make_provider, run, spec, wait_for_port  # noqa: F401

pytestmark = pytest.mark.django_db

APP = textwrap.dedent(
    """
    import http.server, json, sys, time

    class App(http.server.BaseHTTPRequestHandler):
        def reply(self, status, body, content_type="text/html", **headers):
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for name, value in headers.items():
                self.send_header(name.replace("_", "-"), value)
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            if self.path.startswith("/headers"):
                return self.reply(200, json.dumps(dict(self.headers)).encode(), "application/json")
            if self.path == "/go":
                return self.reply(302, b"", Location="/landed?x=1")
            if self.path == "/slow":  # no length: the body ends when the connection closes
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"first ")
                self.wfile.flush()
                time.sleep(1)
                self.wfile.write(b"second")
                return
            self.reply(
                200,
                f"<h1>app of {sys.argv[1]} at {self.path}</h1>".encode(),
                Set_Cookie="sessionid=stolen; Path=/",
                Content_Security_Policy="default-src *",
                Clear_Site_Data='"cookies"',
                X_App="yes",
            )

        def do_POST(self):
            data = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.reply(201, b"got " + data, "text/plain")

    http.server.ThreadingHTTPServer(("127.0.0.1", 3000), App).serve_forever()
    """
)


def start_app(sandbox_id: str, label: str) -> None:
    provider = get_provider("local")
    run(provider, sandbox_id, f"cat > ~/app.py <<'EOF'\n{APP}\nEOF\nnohup python3 ~/app.py {label} >/dev/null 2>&1 &")
    wait_for_port(provider, sandbox_id, 3000)


def body_of(response) -> bytes:
    return b"".join(response.streaming_content) if response.streaming else response.content


@pytest.fixture
def owned(local_settings, owner):
    """The owner's launched sandbox running the app; (client, sandbox id, preview path)."""
    client = signed_in(owner)
    body = launch(client).json()
    start_app(body["sandbox"]["id"], "owner")
    return client, body["sandbox"]["id"], body["access"]["preview"]["url"]


def test_the_owner_sees_the_app(owned):
    client, sandbox_id, url = owned
    response = client.get(url, follow=True)

    assert response.status_code == 200
    assert body_of(response) == b"<h1>app of owner at /</h1>"
    final = response.redirect_chain[-1][0]
    assert final.startswith(f"/sandboxes/{sandbox_id}/preview/~")

    page = client.get(final + "docs/page?q=1")
    assert body_of(page) == b"<h1>app of owner at /docs/page?q=1</h1>"
    assert page["Content-Security-Policy"] == "sandbox allow-scripts allow-forms allow-popups allow-modals"
    assert page["X-App"] == "yes"
    assert "Set-Cookie" not in page and "Clear-Site-Data" not in page
    assert not page.cookies.get("sessionid") or page.cookies["sessionid"].value != "stolen"
    assert page["Referrer-Policy"] == "no-referrer"


def test_other_users_get_404_and_signed_out_visitors_sign_in(owned, teammate, outsider):
    _, sandbox_id, url = owned
    for user in (teammate, outsider):
        assert signed_in(user).get(url).status_code == 404
        assert signed_in(user).get(url + "any/path").status_code == 404

    anonymous = Client().get(url)
    assert anonymous.status_code == 302
    assert anonymous["Location"].startswith("/accounts/login/?next=")
    assert Client().get(f"/sandboxes/{'0' * 32}/preview/").status_code == 302
    assert signed_in(teammate).get(f"/sandboxes/{'0' * 32}/preview/").status_code == 404


def test_the_pages_own_requests_work_without_cookies(owned, teammate):
    """A page served with CSP sandbox has an opaque origin: browsers send its requests for
    scripts and styles without cookies. The capability in the path authorises them."""
    client, sandbox_id, url = owned
    capability_url = client.get(url)["Location"]

    assert body_of(Client().get(capability_url + "app.js")) == b"<h1>app of owner at /app.js</h1>"
    assert signed_in(teammate).get(capability_url).status_code == 404
    assert Client().get(capability_url.replace("~", "~x")).status_code == 302  # forged: sign in

    provider = get_provider("local")
    provider.stop(sandbox_id, wait_seconds=5)
    provider.start(sandbox_id, wait_seconds=5)
    start_app(sandbox_id, "owner")
    assert Client().get(capability_url).status_code == 302  # a restart expires old capabilities
    assert body_of(client.get(url, follow=True)) == b"<h1>app of owner at /</h1>"


def test_responses_stream_under_asgi(owned, owner):
    """Served by the ASGI server, the body goes out as the app writes it."""
    client, sandbox_id, url = owned
    capability_path = client.get(url)["Location"]
    request = AsyncRequestFactory().get(capability_path + "slow")
    request.user = owner

    response = preview(request, remote_id=sandbox_id, path=capability_path.split("/preview/", 1)[1] + "slow")

    assert response.is_async
    arrivals = async_to_sync(_arrivals)(response)
    assert b"".join(chunk for chunk, _ in arrivals) == b"first second"
    assert arrivals[0][0] == b"first " and arrivals[-1][1] - arrivals[0][1] > 0.5
    response.close()


async def _arrivals(response) -> list[tuple[bytes, float]]:
    return [(chunk, time.monotonic()) async for chunk in response]


def test_requests_reach_the_app_without_the_portals_credentials(owned):
    client, _, url = owned
    base = client.get(url)["Location"]

    headers = json.loads(body_of(client.get(base + "headers", HTTP_AUTHORIZATION="Bearer app-token")))
    assert headers["Host"] == "localhost:3000"
    assert "Cookie" not in headers and "X-Csrftoken" not in headers
    assert headers["Authorization"] == "Bearer app-token"
    assert headers["X-Forwarded-Prefix"] == base.rstrip("/")

    posted = client.post(base + "form", data=b"name=value", content_type="application/x-www-form-urlencoded")
    assert posted.status_code == 201 and body_of(posted) == b"got name=value"

    redirect = client.get(base + "go")
    assert redirect.status_code == 302
    assert redirect["Location"] == base + "landed?x=1"


def test_two_sandboxes_both_serve_port_3000(local_settings, owner, teammate):
    previews = {}
    for user, label in ((owner, "first"), (teammate, "second")):
        client = signed_in(user)
        body = launch(client).json()
        run(
            get_provider("local"),
            body["sandbox"]["id"],
            f"mkdir -p ~/site && echo 'site of {label}' > ~/site/index.html && "
            "cd ~/site && nohup python3 -m http.server 3000 --bind 127.0.0.1 >/dev/null 2>&1 &",
        )
        wait_for_port(get_provider("local"), body["sandbox"]["id"], 3000)
        previews[label] = (client, body["access"]["preview"]["url"])

    for label, (client, url) in previews.items():
        assert body_of(client.get(url, follow=True)) == f"site of {label}\n".encode()
    first_client, _ = previews["first"]
    assert first_client.get(previews["second"][1]).status_code == 404


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


def test_nothing_listening_shows_how_to_start_the_app(local_settings, owner):
    client = signed_in(owner)
    body = launch(client).json()

    response = client.get(body["access"]["preview"]["url"], follow=True)

    assert response.status_code == 502
    assert b"port 3000" in response.content and b"python3 -m http.server 3000" in response.content
    assert "default-src 'none'" in response["Content-Security-Policy"]


def test_a_stopped_sandbox_has_no_preview(local_settings, owner):
    client = signed_in(owner)
    body = launch(client).json()
    get_provider("local").stop(body["sandbox"]["id"], wait_seconds=5)

    response = client.get(body["access"]["preview"]["url"])

    assert response.status_code == 503
    assert b"not running" in response.content
