"""The gateway's host key."""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path

import asyncssh

log = logging.getLogger(__name__)


def load_or_create_host_key(path: str | os.PathLike) -> asyncssh.SSHKey:
    """The gateway's ed25519 host key, generated at the first start and kept at ``path``
    (mode 0600), so clients see the same host key across restarts.

    Two gateways starting at once agree on one key: the new key is written to a private
    temporary file and linked into place only if no key exists yet.
    """
    path = Path(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        key = asyncssh.generate_private_key("ssh-ed25519", comment="joepro-ssh-gateway")
        temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(key.export_private_key())
            os.link(temporary, path)
            log.info("generated the SSH host key %s", path)
        except FileExistsError:
            pass
        finally:
            temporary.unlink(missing_ok=True)
    return asyncssh.read_private_key(path)
