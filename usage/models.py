"""Usage rolled up per day, budgets and their alerts, and what running sandboxes use."""

from __future__ import annotations

from django.conf import settings
from django.db import models


class UsageDay(models.Model):
    """One sandbox's usage over one day (UTC), integrated from its state log
    (``sandboxes.StateChange``) by the daily roll-up; today's row grows until the day ends.
    Seconds are whole seconds; ``cost`` is in ``USAGE_CURRENCY`` at the rates of the
    roll-up that wrote it."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+")
    sandbox = models.ForeignKey("sandboxes.Sandbox", on_delete=models.SET_NULL, null=True, related_name="+")
    sandbox_name = models.CharField(max_length=128)
    provider = models.CharField(max_length=32)
    day = models.DateField()
    running_seconds = models.PositiveBigIntegerField(default=0)
    cpu_seconds = models.PositiveBigIntegerField(default=0, help_text="vCPU-seconds while running.")
    memory_gib_seconds = models.PositiveBigIntegerField(default=0, help_text="GiB-seconds of memory while running.")
    disk_gib_seconds = models.PositiveBigIntegerField(
        default=0, help_text="GiB-seconds of disk beyond the free allowance, in every state but archived."
    )
    stopped_disk_gib_seconds = models.PositiveBigIntegerField(
        default=0, help_text="GiB-seconds of disk (all of it) while the sandbox existed but did not run."
    )
    cost = models.DecimalField(max_digits=14, decimal_places=6, default=0)
    computed_at = models.DateTimeField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["sandbox_name", "day"], name="usage_day_per_sandbox")]
        indexes = [models.Index(fields=["day", "user"]), models.Index(fields=["user", "day"])]
        ordering = ["-day", "sandbox_name"]

    def __str__(self) -> str:
        return f"{self.sandbox_name} on {self.day}"


class RollupRun(models.Model):
    """When the daily roll-up last finished, and which state log entries it had seen: the next
    run recomputes every day from the earliest change recorded after that (a late stop found
    by reconcile rewrites the days it reaches back into)."""

    finished_at = models.DateTimeField()
    days = models.PositiveIntegerField(default=0)
    rows = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["-finished_at"]

    def __str__(self) -> str:
        return f"roll-up of {self.finished_at:%Y-%m-%d %H:%M}"


class Budget(models.Model):
    """An operator's override of the deployment's budget for one user (``BUDGET_*``).
    An empty limit means the default; ``exempt`` lifts both limits."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="budget")
    monthly_cost = models.DecimalField(
        max_digits=10, decimal_places=2, null=True, blank=True, help_text="Per calendar month; empty: the default."
    )
    monthly_running_hours = models.PositiveIntegerField(
        null=True, blank=True, help_text="Running hours per calendar month; empty: the default."
    )
    exempt = models.BooleanField(default=False, help_text="No budget or running-hours cap for this user.")
    note = models.CharField(max_length=255, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"budget of {self.user}"


class BudgetAlert(models.Model):
    """That a user crossed a threshold of a monthly limit: raised once per month, limit and
    threshold; shown in their dashboard and emailed."""

    class Limit(models.TextChoices):
        COST = "cost", "Monthly budget"
        RUNNING_HOURS = "running_hours", "Running hours"

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="budget_alerts")
    month = models.DateField(help_text="The first day of the month it is about.")
    limit = models.CharField(max_length=16, choices=Limit.choices)
    threshold = models.PositiveSmallIntegerField(help_text="Percent: 80 or 100.")
    used = models.DecimalField(max_digits=14, decimal_places=4)
    allowed = models.DecimalField(max_digits=14, decimal_places=4)
    raised_at = models.DateTimeField()
    emailed_at = models.DateTimeField(null=True, blank=True)
    # With BUDGET_ACTION=stop: when the running sandbox is stopped (a 100 % alert only).
    stop_after = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "month", "limit", "threshold"], name="budget_alert_once")
        ]
        ordering = ["-raised_at"]

    def __str__(self) -> str:
        return f"{self.user} at {self.threshold}% of {self.limit} in {self.month:%Y-%m}"


class ResourceSample(models.Model):
    """The last memory and disk use measured in a running sandbox (one row per sandbox), and
    whether its owner was told it is nearly full."""

    sandbox = models.OneToOneField("sandboxes.Sandbox", on_delete=models.CASCADE, related_name="resource_sample")
    sampled_at = models.DateTimeField()
    memory_bytes = models.PositiveBigIntegerField()
    memory_limit_bytes = models.PositiveBigIntegerField()
    disk_bytes = models.PositiveBigIntegerField()
    disk_limit_bytes = models.PositiveBigIntegerField()
    memory_alerted_at = models.DateTimeField(null=True, blank=True, help_text="Set at 90 %, cleared below 80 %.")
    disk_alerted_at = models.DateTimeField(null=True, blank=True, help_text="Set at 90 %, cleared below 80 %.")

    def __str__(self) -> str:
        return f"resources of {self.sandbox}"
