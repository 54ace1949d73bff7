"""``python manage.py stop_sandboxes``: stop sandboxes in bulk."""

from __future__ import annotations

import argparse

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from sandboxes import services
from sandboxes.durations import format_duration, parse_duration
from sandboxes.models import AuditEvent, SandboxState


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


class Command(BaseCommand):
    help = (
        "Stop sandboxes (files are kept; each owner's next launch resumes theirs). Stopping revokes "
        "SSH tokens, expires preview and terminal links and is recorded in the audit log. Choose what "
        "to stop with --all or any of --idle-for, --user and --state (combined, they narrow each "
        "other). Prints a summary and exits non-zero if any stop failed.\n\n"
        "Examples: stop_sandboxes --idle-for 2h --dry-run; "
        "stop_sandboxes --user ann@example.com --reason 'account closed'; stop_sandboxes --all"
    )

    def add_arguments(self, parser):
        parser.add_argument("--all", action="store_true", help="Stop every running sandbox.")
        parser.add_argument(
            "--idle-for",
            type=parse_duration,
            metavar="DURATION",
            help="Only sandboxes without activity for longer than this, e.g. 2h, 90m, 1h30m.",
        )
        parser.add_argument(
            "--user",
            action="append",
            default=[],
            metavar="EMAIL",
            help="Only the sandbox of this user (repeatable).",
        )
        parser.add_argument(
            "--state",
            action="append",
            default=[],
            choices=SandboxState.values,
            help="Only sandboxes the portal last saw in this state (repeatable).",
        )
        parser.add_argument("--dry-run", action="store_true", help="Print what would be stopped; change nothing.")
        parser.add_argument(
            "--reason",
            default="stopped by an operator (stop_sandboxes)",
            help="Why, for the audit log.",
        )
        parser.add_argument(
            "--concurrency",
            type=positive_int,
            default=settings.SANDBOX_STOP_CONCURRENCY,
            metavar="N",
            help=f"Provider calls in flight at once (default {settings.SANDBOX_STOP_CONCURRENCY}).",
        )

    def handle(self, *args, **options):
        if not (options["all"] or options["idle_for"] or options["user"] or options["state"]):
            raise CommandError("Choose what to stop: --all, or any of --idle-for, --user and --state.")
        now = timezone.now()
        try:
            selected = list(
                services.sandboxes_for_stop(
                    now=now, emails=options["user"], idle_for=options["idle_for"], states=options["state"]
                )
            )
        except services.SandboxError as exc:
            raise CommandError(exc.message) from exc
        if options["dry_run"]:
            to_stop = [sandbox for sandbox in selected if services.will_stop(sandbox)]
            for sandbox in to_stop:
                self.stdout.write(
                    f"would stop  {sandbox.user.email}  {sandbox.remote_name}  {sandbox.state}  "
                    f"idle {format_duration(sandbox.idle_for(now), style='fixed')}"
                )
            self.stdout.write(
                f"Would stop {len(to_stop)} sandboxes; {len(selected) - len(to_stop)} already stopped. "
                "Nothing was changed (dry run)."
            )
            return

        # Rows already at rest are counted as already stopped, under their lock.
        report = services.sandboxes_stop_many(
            sandbox_ids=[sandbox.pk for sandbox in selected],
            actor_type=AuditEvent.ActorType.ADMIN,
            reason=options["reason"],
            concurrency=options["concurrency"],
            now=now,
            idle_before=now - options["idle_for"] if options["idle_for"] else None,
        )
        for sandbox, error in report.failed:
            self.stderr.write(f"failed  {sandbox.user.email}  {sandbox.remote_name}  {error}")
        self.stdout.write(report.summary(after_label=":"))
        if report.failed:
            raise CommandError(f"{len(report.failed)} sandboxes could not be stopped.")
