import os

from celery import Celery
from celery.signals import setup_logging, task_postrun, task_prerun

from joepro import request_context

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "joepro.settings")

app = Celery("joepro")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@setup_logging.connect
def use_the_portal_logging(**kwargs) -> None:
    """Worker and beat log as the web processes do (``LOGGING``: the format, the redaction, the
    ids) instead of through Celery's own handlers; ``LOG_LEVEL`` sets the level, not ``--loglevel``."""
    from django.conf import settings

    from joepro.logging import configure

    configure(settings.LOGGING)


@task_prerun.connect
def bind_task_id(task_id=None, **kwargs) -> None:
    """A task's log lines carry its id as their request id."""
    request_context.begin(request_id=task_id)


@task_postrun.connect
def unbind_task_id(**kwargs) -> None:
    request_context.begin(request_id=None)
