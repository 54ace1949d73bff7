"""Who may see a preview: a one-time code from the portal, redeemed on the preview's own site
for a cookie scoped to that one host.

The code names the sandbox, the port, the owner, the sandbox's current run (the provider's
nonce, see :class:`~sandboxes.providers.base.PreviewUpstream`) and where to go next; it is
signed, lives ``CODE_SECONDS`` and is accepted once. The cookie is the owner's id and the id of
the session's grant in the access ledger, signed with a key bound to the sandbox, the port and
the run, so it ends with ``SANDBOX_SSH_TOKEN_MINUTES``, with a stop, with a revocation of the
sandbox's access or of that grant, and is worth nothing on any other preview host.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from django.conf import settings
from django.core import signing
from django.core.cache import cache

from .hosts import PreviewHost, preview_base

HANDSHAKE_PATH = "/_joepro/handshake"
CODE_SECONDS = 60
_CODE_SALT = "joepro.preview.handshake"


@dataclass(frozen=True)
class Handshake:
    user_id: int
    nonce: str
    next_path: str


def cookie_name() -> str:
    """Over HTTPS the ``__Host-`` prefix keeps other hosts from setting it."""
    scheme, _, _ = preview_base()
    return "__Host-joepro_preview" if scheme == "https" else "joepro_preview"


COOKIE_NAMES = frozenset({"joepro_preview", "__Host-joepro_preview"})


def mint_code(*, host: PreviewHost, user_id: int, nonce: str, next_path: str) -> str:
    payload = {"s": host.remote_id, "p": host.port, "u": user_id, "n": nonce, "x": next_path, "j": secrets.token_hex(8)}
    return signing.dumps(payload, salt=_CODE_SALT)


async def redeem_code(code: str, host: PreviewHost) -> Handshake | None:
    """The handshake a code carries, if it is genuine, fresh, for this host and not used
    before (the first redemption wins, across processes when the cache is shared)."""
    try:
        payload = signing.loads(code, salt=_CODE_SALT, max_age=CODE_SECONDS)
    except signing.BadSignature:
        return None
    if payload.get("s") != host.remote_id or payload.get("p") != host.port:
        return None
    digest = hashlib.sha256(code.encode()).hexdigest()
    if not await cache.aadd(f"preview-code-used:{digest}", 1, CODE_SECONDS * 2):
        return None
    return Handshake(int(payload["u"]), str(payload["n"]), safe_next(payload.get("x")))


def session_value(host: PreviewHost, *, user_id: int, nonce: str, grant_id: str) -> str:
    return _signer(host, nonce).sign(f"{user_id}.{grant_id}")


def session_of(value: str | None, host: PreviewHost, *, nonce: str) -> tuple[int, str] | None:
    """The owner's id and the grant's public id a genuine, unexpired cookie names, else None."""
    if not value:
        return None
    try:
        user_id, _, grant_id = (
            _signer(host, nonce).unsign(value, max_age=settings.SANDBOX_SSH_TOKEN_MINUTES * 60).partition(".")
        )
        return int(user_id), grant_id
    except (signing.BadSignature, ValueError):
        return None


def set_cookie_header(value: str) -> bytes:
    scheme, _, _ = preview_base()
    attributes = f"Max-Age={settings.SANDBOX_SSH_TOKEN_MINUTES * 60}; Path=/; HttpOnly; SameSite=Lax"
    if scheme == "https":
        attributes += "; Secure"
    return f"{cookie_name()}={value}; {attributes}".encode("latin-1")


def cookie_from(header: str) -> str | None:
    """The preview session in a ``Cookie`` header (read by hand: the app's own cookies may be
    anything)."""
    for pair in header.split(";"):
        name, _, value = pair.strip().partition("=")
        if name == cookie_name():
            return value
    return None


def safe_next(value) -> str:
    """A path on the preview host; anything else is ``/``."""
    if not isinstance(value, str) or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    if any(ord(char) < 0x21 or ord(char) == 0x7F for char in value):
        return "/"
    return value


def _signer(host: PreviewHost, nonce: str) -> signing.TimestampSigner:
    return signing.TimestampSigner(salt=f"joepro.preview.session:{host.remote_id}:{host.port}:{nonce}")
