"""Building each template version once per provider, in the background, before anyone can
choose it (never on the click).

Rules:

- A build is one row per (template, provider, version), made by :func:`request_builds`; the
  Celery task :func:`environments.tasks.build_template` runs it.
- A worker claims a build with one conditional ``UPDATE`` (queued, or building with a heartbeat
  older than :data:`STALE_AFTER`: its worker died), so a redelivered task or two workers build it
  once. While it builds, its log is written to the row about once a second, each write also a
  heartbeat, so admin shows the log as it grows.
- A failed build stays failed, with its reason, until an operator asks for it again
  (:func:`rebuild`) or the template changes (a new version). A template is offered only where
  the build of its current version is ready (:func:`offered`).
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta

from celery import current_app
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from sandboxes import services
from sandboxes.providers import ProviderError, configured_names

from .models import Template, TemplateBuild

log = logging.getLogger(__name__)

State = TemplateBuild.State
BUILD_TASK = "environments.tasks.build_template"
STALE_AFTER = timedelta(minutes=10)
LOG_FLUSH_SECONDS = 1.0
MAX_LOG_CHARS = 200_000


def provider_names() -> list[str]:
    """The providers every template is built for: those this deployment uses."""
    return configured_names()


def build_of(template: Template, provider_name: str) -> TemplateBuild | None:
    """The build of the template's current version for that provider, if one was requested."""
    return TemplateBuild.objects.filter(template=template, provider=provider_name, version=template.version).first()


def request_builds(templates=None, providers: list[str] | None = None) -> list[TemplateBuild]:
    """Make sure the current version of every enabled template (or of ``templates``) is built,
    or being built, for every provider this deployment uses (or ``providers``); the new builds
    are queued after the transaction commits. Returns the builds that were queued."""
    templates = list(Template.objects.filter(enabled=True) if templates is None else templates)
    queued = []
    for template in templates:
        for provider_name in providers or provider_names():
            build, created = TemplateBuild.objects.get_or_create(
                template=template,
                provider=provider_name,
                version=template.version,
                defaults={"artifact": template.artifact_name},
            )
            if created:
                queued.append(build)
    _enqueue(queued)
    return queued


def rebuild(build: TemplateBuild) -> bool:
    """Queue a failed build once more (an operator's retry); False when it is not failed."""
    updated = TemplateBuild.objects.filter(pk=build.pk, state=State.FAILED).update(
        state=State.QUEUED, error="", log="", started_at=None, finished_at=None, heartbeat_at=None
    )
    if updated:
        _enqueue([build])
    return bool(updated)


def _enqueue(builds: list[TemplateBuild]) -> None:
    if not builds:
        return
    ids = [build.pk for build in builds]
    task = current_app.tasks[BUILD_TASK]  # by name: the tasks module is a door onto this one
    transaction.on_commit(lambda: [task.delay(build_id) for build_id in ids])


def offered(provider_name: str) -> list[Template]:
    """The templates users may choose on that provider (``Template.objects.offered``)."""
    return Template.objects.offered(provider_name)


def run_build(build_id: int) -> TemplateBuild | None:
    """Build it, unless it is built, failed, or another worker is building it (None then).
    Never raises for a failed build: the row says why."""
    now = timezone.now()
    claimable = Q(state=State.QUEUED) | Q(state=State.BUILDING, heartbeat_at__lt=now - STALE_AFTER)
    claimed = TemplateBuild.objects.filter(claimable, pk=build_id).update(
        state=State.BUILDING, started_at=now, heartbeat_at=now, attempts=F("attempts") + 1, log="", error=""
    )
    if not claimed:
        return None
    build = TemplateBuild.objects.select_related("template").get(pk=build_id)
    template = build.template
    recipe = template.recipe()
    writer = _LogWriter(build.pk)
    try:
        if recipe.name != build.artifact:
            raise ProviderError(f"The template changed since this build was asked for ({build.artifact}).")
        services.template_prepare(provider_name=build.provider, recipe=recipe, on_log=writer.line)
    except ProviderError as exc:
        writer.flush()
        log.warning("template %s: the %s build failed: %s", build.artifact, build.provider, exc)
        _finish(build.pk, State.FAILED, error=str(exc))
    else:
        writer.flush()
        log.info("template %s: built for %s", build.artifact, build.provider)
        _finish(build.pk, State.READY)
    return TemplateBuild.objects.get(pk=build_id)


def _finish(build_id: int, state: str, *, error: str = "") -> None:
    now = timezone.now()
    TemplateBuild.objects.filter(pk=build_id).update(state=state, error=error, finished_at=now, heartbeat_at=now)


class _LogWriter:
    """Appends the build's lines to its row about once a second (each write a heartbeat),
    keeping the last :data:`MAX_LOG_CHARS`."""

    def __init__(self, build_id: int):
        self.build_id = build_id
        self.text = ""
        self.pending = False
        self.flushed_at = time.monotonic()

    def line(self, text: str) -> None:
        self.text = (self.text + text.rstrip("\n") + "\n")[-MAX_LOG_CHARS:]
        self.pending = True
        if time.monotonic() - self.flushed_at >= LOG_FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            TemplateBuild.objects.filter(pk=self.build_id).update(log=self.text, heartbeat_at=timezone.now())
            self.pending = False
        self.flushed_at = time.monotonic()
