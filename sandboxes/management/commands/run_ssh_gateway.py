"""``python manage.py run_ssh_gateway``: the portal's own SSH gateway (local sandboxes), in the foreground."""

from __future__ import annotations

import asyncio
import logging
import signal

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from sandboxes import services
from sandboxes.local_only.ssh_gateway import SshGateway, load_or_create_host_key

log = logging.getLogger("sandboxes.local_only.ssh_gateway")


class Command(BaseCommand):
    help = (
        "Serve SSH for sandboxes on this machine (the local provider): "
        "'ssh -p PORT <token>@<host>' opens a shell in the sandbox the access token was minted for, "
        "'ssh ... <command>' runs a command there, sftp and scp copy files (run inside the sandbox: "
        "needs /usr/lib/openssh/sftp-server, Debian package openssh-sftp-server) and 'ssh -L' "
        "forwards to ports on the sandbox's own loopback. Expired or revoked tokens and tokens of "
        "stopped sandboxes are refused; revoking a token or stopping its sandbox ends its open "
        "connections within seconds. The host key is generated once at SANDBOX_SSH_HOST_KEY. "
        "Runs until interrupted (SIGINT or SIGTERM), then ends every SSH session.\n\n"
        "Examples: run_ssh_gateway; run_ssh_gateway --bind 0.0.0.0 --port 2222"
    )

    def add_arguments(self, parser):
        parser.add_argument("--port", type=int, help="Port to listen on (default SANDBOX_SSH_PORT).")
        parser.add_argument("--bind", help="Address to listen on (default SANDBOX_SSH_BIND).")
        parser.add_argument(
            "--needed",
            action="store_true",
            help="Start nothing: exit 0 when this deployment runs local sandboxes (SANDBOX_PROVIDER "
            "is local) and so needs the gateway, 1 otherwise. For start scripts.",
        )

    def handle(self, *args, **options):
        if options["needed"]:
            raise SystemExit(0 if services.ssh_gateway_needed() else 1)
        port = settings.SANDBOX_SSH_PORT if options["port"] is None else options["port"]
        bind = options["bind"] or settings.SANDBOX_SSH_BIND
        host_key = load_or_create_host_key(settings.SANDBOX_SSH_HOST_KEY)
        gateway = SshGateway(host_key=host_key, bind=bind, port=port)
        try:
            asyncio.run(self._serve(gateway))
        except OSError as exc:
            raise CommandError(f"The SSH gateway cannot listen on {bind}:{port}: {exc}") from exc

    async def _serve(self, gateway: SshGateway) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        port = await gateway.start()
        log.info(
            "SSH gateway listening on %s port %s; host key %s (%s)",
            gateway.bind,
            port,
            gateway.fingerprint,
            settings.SANDBOX_SSH_HOST_KEY,
        )
        await stop.wait()
        log.info("SSH gateway stopping")
        await gateway.stop()
