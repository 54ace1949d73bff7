"""Access to local sandboxes: SSH tokens for the portal's own gateway, the portal's links, and
where the preview relay reaches a sandbox's ports. A part of :class:`LocalProvider`, which
supplies ``store``, ``lifecycle``, ``ssh_host``, ``ssh_port``, ``_existing`` and ``open_relay``."""

from __future__ import annotations

import hmac
import secrets
import time
from datetime import UTC, datetime, timedelta

from ..base import ErrorKind, PreviewUpstream, ProviderError, SandboxAccess, SignedLink, SshAccess, preview_page_link
from .store import LOCK_TIMEOUT, SANDBOX_ID, STARTED, token_digest


class LocalAccess:
    def mint_access(self, remote_id: str, *, ssh_minutes: int, preview_port: int, link_seconds: int) -> SandboxAccess:
        """An SSH token for the portal's SSH gateway (replacing the previous one), and the
        portal paths of the preview and the terminal. The links are relative: the portal
        serves them itself, for the owner only."""
        sandbox_id = self._existing(remote_id)
        token = secrets.token_hex(16)  # OpenSSH refuses user names that start with "-"
        digest = token_digest(token)
        now = datetime.now(UTC)
        ssh_expires = now + timedelta(minutes=ssh_minutes)
        with self.store.locked(sandbox_id, timeout=LOCK_TIMEOUT):
            record = self.lifecycle.settle_locked(self.store.load(sandbox_id))
            if record["state"] != STARTED:
                raise ProviderError("The sandbox is not running.", kind=ErrorKind.INVALID_STATE)
            self.store.drop_ssh_token(record)
            self.store.add_token(digest, sandbox_id, ssh_expires.timestamp())
            record["ssh"] = {"hash": digest, "expires_at": ssh_expires.timestamp()}
            self.store.write(record)
        links_expire = now + timedelta(seconds=link_seconds)
        return SandboxAccess(
            ssh=SshAccess(
                token=token,
                host=self.ssh_host,
                port=self.ssh_port,
                command=f"ssh -p {self.ssh_port} {token}@{self.ssh_host}",
                expires_at=ssh_expires,
            ),
            preview=preview_page_link(sandbox_id, preview_port, links_expire),
            terminal=SignedLink(url=f"/sandboxes/{sandbox_id}/terminal/", expires_at=links_expire),
        )

    def revoke_access(self, remote_id: str, *, preview_port: int, links: list[SignedLink]) -> None:
        """Deletes the SSH token and invalidates every preview link handed out (see
        :meth:`preview_upstream`)."""
        if not SANDBOX_ID.fullmatch(remote_id or ""):
            return
        try:
            with self.store.locked(remote_id, timeout=LOCK_TIMEOUT):
                record = self.store.read(remote_id)
                if record is None:
                    return
                self.store.drop_ssh_token(record)
                if record.get("link_nonce"):
                    record["link_nonce"] = secrets.token_hex(16)
                self.store.write(record)
        except ProviderError as exc:
            if exc.kind is not ErrorKind.NOT_FOUND:
                raise

    def expire_links(self, remote_id: str, *, preview_port: int, links: list[SignedLink]) -> None:
        """Nothing to do: local links carry no token (they are the portal's own pages, which
        check the owner themselves)."""

    def resolve_ssh_token(self, token: str) -> str | None:
        """The id of the running sandbox this SSH token opens; None when the token is unknown,
        expired, revoked, or its sandbox is not running."""
        entry = self.store.token_entry(token)
        if entry is None:
            return None
        digest, sandbox_id, _ = entry
        record = self.store.read(sandbox_id)
        ssh = (record or {}).get("ssh") or {}
        if not hmac.compare_digest(str(ssh.get("hash", "")), digest):
            return None
        if float(ssh.get("expires_at") or 0) <= time.time():
            return None
        if self.lifecycle.observed(record) != STARTED:
            return None
        return sandbox_id

    def ssh_token_sandbox(self, token: str) -> str | None:
        """The id of the sandbox an unexpired, unrevoked SSH token was minted for, whatever
        that sandbox's state (so a refusal can say "stopped" rather than "revoked"); None for an
        unknown, expired or revoked token. Reads the token index only: revoking a token (stop,
        :meth:`revoke_access`, a newer token, delete) removes it from there."""
        entry = self.store.token_entry(token)
        if entry is None:
            return None
        _, sandbox_id, expires_at = entry
        try:
            unexpired = float(expires_at) > time.time()
        except (TypeError, ValueError):
            return None
        return sandbox_id if unexpired else None

    def preview_upstream(self, remote_id: str, port: int) -> PreviewUpstream:
        """``127.0.0.1:port`` inside the sandbox, reached through its agent (:meth:`open_relay`);
        the nonce is the run's link nonce, replaced at every start, stop and
        :meth:`revoke_access`."""
        record = self.store.read(remote_id) if SANDBOX_ID.fullmatch(remote_id or "") else None
        if record is None:
            raise ProviderError("No such sandbox.", kind=ErrorKind.NOT_FOUND)
        if self.lifecycle.observed(record) != STARTED or not record.get("link_nonce"):
            raise ProviderError("The sandbox is not running.", kind=ErrorKind.INVALID_STATE)
        return PreviewUpstream(
            url=f"http://localhost:{port}",
            nonce=record["link_nonce"],
            connect=lambda: self.open_relay(remote_id, port),
        )
