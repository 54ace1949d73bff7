"""SSH tokens, preview URLs (standard and signed), and the preview proxy's checks of them."""

from __future__ import annotations

import uuid
from typing import Any

from .clock import iso
from .core import StoreCore
from .records import ApiError, _SignedPreview, _SshToken, random_token

DEFAULT_SSH_MINUTES = 60
DEFAULT_SIGNED_SECONDS = 60
MAX_SIGNED_SECONDS = 86400


class TokensMixin(StoreCore):
    """SSH access and preview links of :class:`~tests.fake_daytona.store.SandboxStore`."""

    def live_ssh_tokens(self, sandbox_id: str | None = None) -> list[str]:
        with self._lock:
            now = self.clock.time()
            return [
                t.token
                for t in self._ssh.values()
                if t.expires > now and (sandbox_id is None or t.sandbox_id == sandbox_id)
            ]

    def ssh_token_counts(self) -> dict[str, int]:
        """Live SSH tokens per sandbox id."""
        with self._lock:
            now = self.clock.time()
            counts: dict[str, int] = {}
            for access in self._ssh.values():
                if access.expires > now:
                    counts[access.sandbox_id] = counts.get(access.sandbox_id, 0) + 1
            return counts

    def live_signed_previews(self) -> int:
        with self._lock:
            now = self.clock.time()
            return sum(1 for s in self._signed.values() if not s.revoked and s.expires > now)

    def create_ssh(self, id_or_name: str, minutes_raw: str | None) -> dict[str, Any]:
        with self._lock:
            sb = self._require(id_or_name)
            minutes = _positive_int(minutes_raw, DEFAULT_SSH_MINUTES, "expiresInMinutes")
            self._revoke_ssh(sb.id, None)
            now = self.clock.time()
            access = _SshToken(
                id=str(uuid.uuid4()),
                token=random_token(32),
                sandbox_id=sb.id,
                created=now,
                expires=now + minutes * 60,
            )
            self._ssh[access.token] = access
            return self._ssh_dto(access)

    def revoke_ssh(self, id_or_name: str, token: str | None) -> dict[str, Any]:
        with self._lock:
            sb = self._require(id_or_name)
            self._revoke_ssh(sb.id, token)
            return self._render(sb)

    def validate_ssh(self, token: str | None) -> dict[str, Any]:
        with self._lock:
            access = self._ssh.get(token or "")
            if access is None or access.expires <= self.clock.time():
                return {"valid": False, "sandboxId": None}
            return {"valid": True, "sandboxId": access.sandbox_id}

    def preview_url(self, id_or_name: str, port_raw: str) -> dict[str, Any]:
        with self._lock:
            sb = self._require(id_or_name)
            port = _port(port_raw)
            return {
                "sandboxId": sb.id,
                "url": f"{self.base_url}/proxy/{port}-{sb.id}/",
                "token": sb.preview_token,
            }

    def signed_preview_url(self, id_or_name: str, port_raw: str, seconds_raw: str | None) -> dict[str, Any]:
        with self._lock:
            sb = self._require(id_or_name)
            port = _port(port_raw)
            seconds = _signed_lifetime(seconds_raw)
            signed = _SignedPreview(
                token=random_token(16),
                sandbox_id=sb.id,
                port=port,
                expires=self.clock.time() + seconds,
            )
            self._signed[signed.token] = signed
            return {
                "sandboxId": sb.id,
                "port": port,
                "token": signed.token,
                "url": f"{self.base_url}/preview/{signed.token}/",
            }

    def expire_signed_preview(self, id_or_name: str, port_raw: str, token: str) -> None:
        """Forget ``<port>:<token>``: the API deletes that key whether or not it exists, and
        never checks that the token is this sandbox's (only that the sandbox is)."""
        with self._lock:
            self._require(id_or_name)
            port = _port(port_raw)
            signed = self._signed.get(token)
            if signed is not None and signed.port == port:
                signed.revoked = True

    def toolbox_proxy_url(self, id_or_name: str) -> dict[str, Any]:
        with self._lock:
            self._require(id_or_name)
            return {"url": self.toolbox_url}

    def _ssh_dto(self, access: _SshToken) -> dict[str, Any]:
        port_part = "" if self.ssh_port == 22 else f"-p {self.ssh_port} "
        return {
            "id": access.id,
            "sandboxId": access.sandbox_id,
            "token": access.token,
            "expiresAt": iso(access.expires),
            "createdAt": iso(access.created),
            "updatedAt": iso(access.created),
            "sshCommand": f"ssh {port_part}{access.token}@{self.ssh_host}",
        }

    # ----- what the preview proxy asks the API ---------------------------------------

    def signed_preview_sandbox(self, token: str) -> str | None:
        """The sandbox a signed token opens while neither expired nor expired early, else None.

        Independent of the sandbox's state, as the token is a key with a TTL in Redis.
        """
        with self._lock:
            signed = self._signed.get(token)
            if signed is None or signed.revoked or signed.expires <= self.clock.time():
                return None
            return signed.sandbox_id

    def signed_preview_port(self, token: str) -> int | None:
        """The port a signed token was minted for (also once expired), None if never seen.

        The real port is in the link's hostname; the fake's ``/preview/<token>/`` has none.
        """
        with self._lock:
            signed = self._signed.get(token)
            return signed.port if signed is not None else None

    def preview_token_of(self, sandbox_id: str) -> str | None:
        with self._lock:
            sb = self._find_by_id(sandbox_id)
            return sb.preview_token if sb else None

    def sandbox_name_of(self, sandbox_id: str) -> str | None:
        with self._lock:
            sb = self._find_by_id(sandbox_id)
            return sb.data["name"] if sb else None

    def is_public(self, sandbox_id: str) -> bool:
        with self._lock:
            sb = self._find_by_id(sandbox_id)
            return bool(sb and sb.data.get("public"))


def _port(raw: str) -> int:
    try:
        port = int(raw)
    except ValueError:
        raise ApiError(400, "Invalid port") from None
    if not 1 <= port <= 65535:
        raise ApiError(400, "Invalid port")
    return port


def _positive_int(raw: str | None, default: int, name: str) -> int:
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, f"{name} must be an integer") from None
    if value < 1:
        raise ApiError(400, f"{name} must be a positive integer")
    return value


def _signed_lifetime(raw: str | None) -> int:
    message = "expiresInSeconds must be between 1 second and 24 hours"
    if raw is None or raw == "":
        return DEFAULT_SIGNED_SECONDS
    try:
        seconds = int(raw)
    except ValueError:
        raise ApiError(400, message) from None
    if not 1 <= seconds <= MAX_SIGNED_SECONDS:
        raise ApiError(400, message)
    return seconds
