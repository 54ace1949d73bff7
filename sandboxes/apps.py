from django.apps import AppConfig


class SandboxesConfig(AppConfig):
    name = "sandboxes"
    verbose_name = "Sandboxes"

    def ready(self):
        # The system checks register themselves; the tasks too, in every process, since the
        # services enqueue them by name; and the scrollback's cleanup when a session row goes.
        from . import checks, tasks  # noqa: F401
        from .services import scrollback  # noqa: F401
