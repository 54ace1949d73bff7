"""Budgets in the operators' console: per-user overrides (also inline on each user's page) and
the alerts raised, read-only."""

from __future__ import annotations

from django.conf import settings
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import UserAdmin

from .models import Budget, BudgetAlert


def _default(value) -> str:
    return "none" if value is None else str(value)


@admin.register(Budget)
class BudgetAdmin(admin.ModelAdmin):
    list_display = ["user", "monthly_cost_shown", "monthly_running_hours_shown", "exempt", "note", "updated_at"]
    list_filter = ["exempt"]
    search_fields = ["user__email", "user__username"]
    list_select_related = ["user"]
    autocomplete_fields = ["user"]
    readonly_fields = ["updated_at"]
    ordering = ["user__email"]

    @admin.display(description="monthly budget", ordering="monthly_cost")
    def monthly_cost_shown(self, budget: Budget) -> str:
        if budget.monthly_cost is None:
            return f"default ({_default(settings.BUDGET_MONTHLY_COST)})"
        return f"{budget.monthly_cost} {settings.USAGE_CURRENCY}"

    @admin.display(description="running hours", ordering="monthly_running_hours")
    def monthly_running_hours_shown(self, budget: Budget) -> str:
        if budget.monthly_running_hours is None:
            return f"default ({_default(settings.BUDGET_MONTHLY_RUNNING_HOURS)})"
        return str(budget.monthly_running_hours)


@admin.register(BudgetAlert)
class BudgetAlertAdmin(admin.ModelAdmin):
    """Raised by the budget check; nothing here writes them."""

    list_display = ["user", "month", "limit", "threshold", "used", "allowed", "raised_at", "emailed_at", "stop_after"]
    list_filter = ["limit", "threshold", "month"]
    search_fields = ["user__email", "user__username"]
    list_select_related = ["user"]
    date_hierarchy = "raised_at"

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


class BudgetInline(admin.StackedInline):
    model = Budget
    can_delete = True
    extra = 0
    max_num = 1
    fields = ["monthly_cost", "monthly_running_hours", "exempt", "note"]
    verbose_name = "budget override"
    verbose_name_plural = "budget override (empty: the deployment's defaults)"


# The user's page gains the budget override: the registered user admin (Django's, unless
# another app replaced it) is extended rather than redefined.
User = get_user_model()
_registered = admin.site.get_model_admin(User).__class__ if admin.site.is_registered(User) else UserAdmin


class UserWithBudgetAdmin(_registered):
    inlines = [*_registered.inlines, BudgetInline]


if admin.site.is_registered(User):
    admin.site.unregister(User)
admin.site.register(User, UserWithBudgetAdmin)
