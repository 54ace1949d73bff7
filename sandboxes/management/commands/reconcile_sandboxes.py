"""``python manage.py reconcile_sandboxes``: one reconcile pass, as beat runs it."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from sandboxes import services
from sandboxes.durations import parse_duration


class Command(BaseCommand):
    help = (
        "Make the database true to what really runs: mirror each managed sandbox's remote state "
        "(started, stopped, archived, error, gone) into its row, repair rows stuck mid-transition, "
        "adopt orphans whose owner has no sandbox and report the others. Celery beat runs the same "
        "pass every SANDBOX_RECONCILE_SECONDS. Exits non-zero when the provider could not be read.\n\n"
        "Examples: reconcile_sandboxes --dry-run; reconcile_sandboxes --delete-orphans"
    )

    def add_arguments(self, parser):
        parser.add_argument("--dry-run", action="store_true", help="Report what would change; change nothing.")
        parser.add_argument(
            "--delete-orphans",
            action="store_true",
            help="Delete orphans that cannot be adopted (their files are lost). Default: report them.",
        )
        parser.add_argument(
            "--stuck-after",
            type=parse_duration,
            metavar="DURATION",
            help="Repair rows mid-transition for longer than this (default SANDBOX_STUCK_MINUTES).",
        )

    def handle(self, *args, **options):
        report = services.sandboxes_reconcile(
            now=timezone.now(),
            dry_run=options["dry_run"],
            delete_orphans=options["delete_orphans"],
            stuck_after=options["stuck_after"],
        )
        if report.lock_held:
            self.stdout.write("Another reconcile is running; nothing done.")
            return
        for line in report.lines():
            self.stdout.write(line)
        if report.dry_run:
            self.stdout.write("Nothing was changed (dry run).")
        for error in report.errors:
            self.stderr.write(error)
        if report.errors:
            raise CommandError(f"{len(report.errors)} errors; the pass is incomplete.")
