"""Clients for tests that look beneath the SDK: exact statuses, headers, cookies, websocket
frames, close codes, and whether a connection ended with a close frame or just dropped.

``http`` never follows redirects; ``Browser`` keeps cookies per path like a browser (its own
clock is the real one, as a browser's would be); ``RawWebSocket`` speaks RFC 6455 on a plain
socket so nothing is hidden by a client library.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from email.message import Message
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import urlsplit

BROWSER_AGENT = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36"
BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"

OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x1, 0x2, 0x8, 0x9, 0xA


@dataclass
class Answer:
    status: int
    headers: Message
    text: str

    def json(self) -> Any:
        return json.loads(self.text)

    def set_cookies(self) -> list[str]:
        return self.headers.get_all("Set-Cookie") or []


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirects)


def http(method: str, url: str, *, headers: dict[str, str] | None = None, body: bytes | None = None) -> Answer:
    """One request, redirects not followed."""
    request = urllib.request.Request(url, data=body, headers=headers or {}, method=method)
    try:
        with _OPENER.open(request, timeout=10) as response:
            return Answer(response.status, response.headers, response.read().decode())
    except urllib.error.HTTPError as error:
        return Answer(error.code, error.headers, error.read().decode())


@dataclass
class _Cookie:
    value: str
    path: str
    attributes: str


@dataclass
class Browser:
    """Requests with a browser's User-Agent and Accept, keeping the cookies it is given."""

    headers: dict[str, str] = field(default_factory=lambda: {"User-Agent": BROWSER_AGENT, "Accept": BROWSER_ACCEPT})
    cookies: dict[str, _Cookie] = field(default_factory=dict)

    def get(self, url: str, headers: dict[str, str] | None = None) -> Answer:
        return self.request("GET", url, headers)

    def post(self, url: str, headers: dict[str, str] | None = None) -> Answer:
        return self.request("POST", url, headers, body=b"")

    def request(
        self, method: str, url: str, headers: dict[str, str] | None = None, body: bytes | None = None
    ) -> Answer:
        path = urlsplit(url).path or "/"
        sent = {**self.headers, **(headers or {})}
        jar = "; ".join(
            f"{name}={c.value}" for name, c in self.cookies.items() if path == c.path or path.startswith(c.path + "/")
        )
        if jar:
            sent["Cookie"] = jar
        answer = http(method, url, headers=sent, body=body)
        for raw in answer.set_cookies():
            parsed = SimpleCookie()
            parsed.load(raw)
            for name, morsel in parsed.items():
                self.cookies[name] = _Cookie(morsel.value, morsel["path"] or "/", raw)
        return answer


@dataclass
class Frame:
    opcode: int
    payload: bytes

    @property
    def text(self) -> str:
        return self.payload.decode()

    @property
    def close_code(self) -> int | None:
        return struct.unpack("!H", self.payload[:2])[0] if len(self.payload) >= 2 else None

    @property
    def close_reason(self) -> str:
        return self.payload[2:].decode()


class RawWebSocket:
    """A websocket handshake and frames over a plain socket (client frames masked)."""

    def __init__(
        self, url: str, *, headers: dict[str, str] | None = None, protocols: tuple[str, ...] = (), timeout: float = 10
    ) -> None:
        parts = urlsplit(url)
        self._socket = socket.create_connection((parts.hostname, parts.port or 80), timeout=timeout)
        self._buffer = b""
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        lines = [
            f"GET {target} HTTP/1.1",
            f"Host: {parts.netloc}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}",
            "Sec-WebSocket-Version: 13",
        ]
        if protocols:
            lines.append(f"Sec-WebSocket-Protocol: {', '.join(protocols)}")
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        self._socket.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = self._read_until(b"\r\n\r\n").decode("latin-1")
        status_line, *header_lines = head.split("\r\n")
        self.status = int(status_line.split()[1])
        self.headers = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            self.headers[name.strip().lower()] = value.strip()
        self.body = b""
        if self.status != 101:
            length = int(self.headers.get("content-length", "0"))
            self.body = self._read_exactly(length)

    def json(self) -> Any:
        return json.loads(self.body)

    def send(self, data: bytes, opcode: int = OP_BINARY) -> None:
        mask = os.urandom(4)
        header = bytes([0x80 | opcode])
        length = len(data)
        if length < 126:
            header += bytes([0x80 | length])
        elif length < 1 << 16:
            header += bytes([0x80 | 126]) + struct.pack("!H", length)
        else:
            header += bytes([0x80 | 127]) + struct.pack("!Q", length)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
        self._socket.sendall(header + mask + masked)

    def read_frame(self, timeout: float = 10) -> Frame | None:
        """The next frame, or None when the server ended the TCP connection."""
        self._socket.settimeout(timeout)
        try:
            first, second = self._read_exactly(2)
        except (EOFError, ConnectionResetError):
            return None
        length = second & 0x7F
        if length == 126:
            length = struct.unpack("!H", self._read_exactly(2))[0]
        elif length == 127:
            length = struct.unpack("!Q", self._read_exactly(8))[0]
        return Frame(first & 0x0F, self._read_exactly(length))

    def read_until_end(self, timeout: float = 10) -> tuple[list[Frame], str]:
        """Frames until a close frame (``"close"``) or the connection's end (``"eof"``)."""
        frames: list[Frame] = []
        deadline = time.monotonic() + timeout
        while True:
            frame = self.read_frame(max(0.1, deadline - time.monotonic()))
            if frame is None:
                return frames, "eof"
            frames.append(frame)
            if frame.opcode == OP_CLOSE:
                return frames, "close"

    def read_text_until(self, needle: str, timeout: float = 10) -> list[Frame]:
        """Frames until one carrying ``needle`` (as bytes) arrives."""
        frames: list[Frame] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            frame = self.read_frame(max(0.1, deadline - time.monotonic()))
            if frame is None:
                break
            frames.append(frame)
            if needle.encode() in b"".join(f.payload for f in frames if f.opcode in (OP_TEXT, OP_BINARY)):
                return frames
        raise AssertionError(f"{needle!r} not seen in {frames!r}")

    def close(self) -> None:
        self._socket.close()

    def _read_until(self, marker: bytes) -> bytes:
        while marker not in self._buffer:
            self._fill()
        head, _, self._buffer = self._buffer.partition(marker)
        return head

    def _read_exactly(self, count: int) -> bytes:
        while len(self._buffer) < count:
            self._fill()
        data, self._buffer = self._buffer[:count], self._buffer[count:]
        return data

    def _fill(self) -> None:
        chunk = self._socket.recv(65536)
        if not chunk:
            raise EOFError
        self._buffer += chunk


def ws_url(http_url: str) -> str:
    return "ws" + http_url[len("http") :]
