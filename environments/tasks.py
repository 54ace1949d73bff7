"""Celery tasks of the template registry. Arguments are ids, never secrets; each body is
idempotent (a build is claimed once: ``environments.builds``)."""

from __future__ import annotations

from celery import shared_task

from . import builds


@shared_task(acks_late=True, soft_time_limit=1740, time_limit=1800, ignore_result=True)
def build_template(build_id: int) -> str:
    """Build one template version for one provider (minutes on a first Daytona build)."""
    build = builds.run_build(build_id)
    return build.state if build is not None else "skipped"


@shared_task(acks_late=True, soft_time_limit=50, time_limit=60, ignore_result=True)
def request_template_builds() -> int:
    """Beat: queue the builds that templates' current versions still lack."""
    return len(builds.request_builds())
