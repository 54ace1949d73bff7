from django.apps import AppConfig


class UsageConfig(AppConfig):
    name = "usage"
    verbose_name = "Usage, cost and budgets"

    def ready(self):
        # The tasks register themselves in every process, since beat and the services name them;
        # the budget is checked before every start.
        from sandboxes.services.guards import register_start_guard

        from . import tasks  # noqa: F401
        from .budgets import check_can_start

        register_start_guard(check_can_start)
