"""The preview relay from outside: a live portal (uvicorn), an app in a sandbox, and a client
that reaches preview hosts (``<port>-<id>.localhost:<server port>``) on the loopback address
by their ``Host`` header, as a browser resolving ``*.localhost`` would."""

from __future__ import annotations

import socket
import textwrap
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx
from django.conf import settings as django_settings
from websockets.sync.client import connect as websocket_connect

# An app for the sandbox (standard library only): pages, headers echoed, a stream, a POST echo,
# the answers a hostile app gives, and a websocket echo.
APP = textwrap.dedent(
    r"""
    import base64, hashlib, http.server, json, struct, sys, time

    PHISH = '''<!doctype html><title>Sign in</title>
    <form method="post" action="/steal"><input name="login"><input name="password" type="password"></form>
    <pre id="seen"></pre>
    <script>
    history.replaceState(null, "", "/accounts/login/?next=/sandbox-portal/");
    fetch("/headers").then(r => r.json()).then(h => {
      document.getElementById("seen").textContent = JSON.stringify({cookie: document.cookie, sent: h});
    });
    </script>'''

    class App(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def reply(self, status, body, content_type="text/html", headers=()):
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for name, value in headers:
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            if self.headers.get("Upgrade", "").lower() == "websocket":
                return self.websocket()
            if self.path.startswith("/headers"):
                return self.reply(200, json.dumps(dict(self.headers)).encode(), "application/json")
            if self.path == "/go":
                return self.reply(302, b"", headers=[("Location", "/landed?x=1")])
            if self.path == "/go-local":
                return self.reply(302, b"", headers=[("Location", "http://localhost:3000/landed")])
            if self.path == "/go-away":
                return self.reply(302, b"", headers=[("Location", "https://phish.example/login")])
            if self.path == "/phish":  # poses as the portal's sign-in page
                return self.reply(200, PHISH.encode())
            if self.path == "/prompt":
                return self.reply(401, b"who are you?", headers=[("WWW-Authenticate", 'Basic realm="JoePro"')])
            if self.path == "/hostile":
                return self.reply(200, b"hostile", headers=[
                    ("Refresh", "0; url=https://phish.example/"),
                    ("X-Frame-Options", "ALLOWALL"),
                    ("X-Content-Type-Options", "none"),
                    ("Cache-Control", "public, max-age=86400"),
                    ("Set-Cookie", "tossed=1; Domain=localhost; Path=/"),
                    ("Set-Cookie", "joepro_preview=forged; Path=/"),
                    ("Set-Cookie", "app_session=ok; Path=/; HttpOnly"),
                    ("X-Daytona-Something", "x"),
                    ("X-App", "yes"),
                ])
            if self.path in ("/stream", "/forever"):
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                self.chunk(b"first ")
                if self.path == "/forever":
                    while True:
                        time.sleep(1)
                time.sleep(1)
                self.chunk(b"second")
                self.chunk(b"")
                return
            self.reply(200, f"<h1>app of {sys.argv[1]} at {self.path}</h1>".encode())

        def chunk(self, data):
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()

        def do_POST(self):
            data = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.reply(201, b"got " + data, "text/plain")

        def websocket(self):
            key = self.headers["Sec-WebSocket-Key"].encode()
            accept = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
            self.send_response(101)
            self.send_header("Upgrade", "websocket")
            self.send_header("Connection", "Upgrade")
            self.send_header("Sec-WebSocket-Accept", accept.decode())
            self.end_headers()
            self.wfile.flush()
            self.close_connection = True
            while True:
                head = self.rfile.read(2)
                if len(head) < 2:
                    return
                opcode, length = head[0] & 0x0F, head[1] & 0x7F
                if length == 126:
                    length = struct.unpack("!H", self.rfile.read(2))[0]
                elif length == 127:
                    length = struct.unpack("!Q", self.rfile.read(8))[0]
                mask = self.rfile.read(4)
                data = bytes(b ^ mask[i % 4] for i, b in enumerate(self.rfile.read(length)))
                if opcode == 8:
                    self.wfile.write(b"\x88\x02\x0f\xa0")  # close 4000
                    self.wfile.flush()
                    return
                if data == b"close-me":
                    self.wfile.write(b"\x88\x02\x0f\xa1")  # close 4001
                    self.wfile.flush()
                    return
                reply = b"echo " + data
                self.wfile.write(bytes([0x80 | opcode]) + self.frame_length(len(reply)) + reply)
                self.wfile.flush()

        @staticmethod
        def frame_length(n):
            if n < 126:
                return bytes([n])
            if n < 65536:
                return bytes([126]) + struct.pack("!H", n)
            return bytes([127]) + struct.pack("!Q", n)

    http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[2]) if len(sys.argv) > 2 else 3000), App).serve_forever()
    """
)


@dataclass
class PreviewVisit:
    """A visitor of one preview host, holding its preview session cookie once signed in."""

    server: str  # http://127.0.0.1:<port>
    host: str  # <port>-<id>.localhost:<port>
    cookie: str = ""

    @property
    def origin(self) -> str:
        return f"http://{self.host}"

    def request(self, method: str, path: str, *, headers: dict | None = None, **kwargs) -> httpx.Response:
        all_headers = {"Host": self.host, "Accept": "text/html", **(headers or {})}
        if self.cookie:
            all_headers["Cookie"] = f"{all_headers.get('Cookie', '')}; {self.cookie}".strip("; ")
        return httpx.request(method, self.server + path, headers=all_headers, follow_redirects=False, **kwargs)

    def get(self, path: str, **kwargs) -> httpx.Response:
        return self.request("GET", path, **kwargs)

    def stream(self, path: str, **kwargs):
        headers = {"Host": self.host, "Cookie": self.cookie, **kwargs.pop("headers", {})}
        return httpx.stream("GET", self.server + path, headers=headers, timeout=30, **kwargs)

    def arrivals(self, path: str) -> list[tuple[bytes, float]]:
        """The chunks of a streamed answer, each with when it arrived."""
        with self.stream(path) as response:
            return [(chunk, time.monotonic()) for chunk in response.iter_raw()]

    def websocket(self, path: str = "/ws", *, origin: str | None = None, cookie: str | None = None):
        address = urlsplit(self.server)
        sock = socket.create_connection((address.hostname, address.port))
        headers = {"Cookie": self.cookie if cookie is None else cookie}
        return websocket_connect(
            f"ws://{self.host}{path}",
            sock=sock,
            origin=origin if origin is not None else self.origin,
            additional_headers=headers,
            open_timeout=10,
        )


def portal_cookie(client) -> str:
    return f"{django_settings.SESSION_COOKIE_NAME}={client.cookies[django_settings.SESSION_COOKIE_NAME].value}"


def open_door(server: str, client, sandbox_id: str, *, port: int = 3000, next_path: str = "/") -> httpx.Response:
    """The portal's preview page, as the signed-in ``client`` opens it."""
    return httpx.get(
        f"{server}/sandboxes/{sandbox_id}/preview/",
        params={"port": port, "next": next_path},
        headers={"Cookie": portal_cookie(client)},
        follow_redirects=False,
    )


def sign_in_to_preview(server: str, client, sandbox_id: str, *, port: int = 3000, next_path: str = "/") -> PreviewVisit:
    """Door, then handshake: a visit holding the preview session."""
    door = open_door(server, client, sandbox_id, port=port, next_path=next_path)
    assert door.status_code == 302, (door.status_code, door.text)
    target = urlsplit(door.headers["location"])
    visit = PreviewVisit(server=server, host=target.netloc)
    handshake = visit.get(f"{target.path}?{target.query}")
    assert handshake.status_code == 303, (handshake.status_code, handshake.text)
    visit.cookie = handshake.headers["set-cookie"].split(";", 1)[0]
    return visit
