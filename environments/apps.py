from django.apps import AppConfig


class EnvironmentsConfig(AppConfig):
    name = "environments"
    verbose_name = "Sandbox templates"

    def ready(self):
        from celery.signals import worker_ready
        from django.conf import settings

        from . import tasks  # registered in every process: beat and the services name them

        # A new deployment's templates are built as soon as a worker runs, not at beat's first tick.
        if settings.TEMPLATE_BUILDS_AT_WORKER_START:
            worker_ready.connect(lambda **_: tasks.request_template_builds.delay(), weak=False)
