"""Encryption of the access details kept on a sandbox row (SSH token, signed URLs).

The key is derived from SECRET_KEY, so rotating SECRET_KEY makes stored access unreadable;
the portal then simply mints new access at the next launch.
"""

import base64
import hashlib
import json

from cryptography.fernet import Fernet, InvalidToken
from django.conf import settings


def _fernet() -> Fernet:
    digest = hashlib.sha256(b"joepro.sandbox-access:" + settings.SECRET_KEY.encode()).digest()
    return Fernet(base64.urlsafe_b64encode(digest))


def seal(payload: dict) -> bytes:
    return _fernet().encrypt(json.dumps(payload).encode())


def unseal(ciphertext: bytes | memoryview | None) -> dict | None:
    """The payload, or None when there is none or it cannot be read (key rotated)."""
    if not ciphertext:
        return None
    try:
        return json.loads(_fernet().decrypt(bytes(ciphertext)))
    except InvalidToken:
        return None
