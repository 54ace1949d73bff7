from django.apps import AppConfig


class SandboxesConfig(AppConfig):
    name = "sandboxes"
    verbose_name = "Sandboxes"

    def ready(self):
        # The system checks register themselves; the tasks too, in every process, since the
        # services enqueue them by name.
        from . import checks, tasks  # noqa: F401
