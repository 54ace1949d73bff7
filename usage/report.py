"""The operators' usage and cost report (``/admin/usage/report/``): what each user (or each
provider) used and cost over a period, from the daily roll-up (``UsageDay``), with a chart of
daily spend and a CSV export.

Every figure is summed in the database, grouped by the report's dimension: a page costs one
query for its rows, one for their count, one for the totals and one for the chart, however many
users there are. A new dimension (a template, say) is one more :class:`Dimension` whose fields
are columns of ``UsageDay``.
"""

from __future__ import annotations

import csv
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal

from django import forms
from django.conf import settings
from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.core.handlers.asgi import ASGIRequest
from django.core.paginator import Paginator
from django.db.models import Count, Q, QuerySet, Sum
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest, StreamingHttpResponse
from django.template.response import TemplateResponse
from django.utils import timezone

from sandboxes.services import PROVIDER_NAMES

from .chart import Chart, spend_chart
from .cost import COST_PLACES, money
from .metering import utc_day
from .models import RollupRun, UsageDay

PAGE_SIZE = 100
LONGEST_PERIOD_DAYS = 366
CSV_CHUNK_ROWS = 2000
PERMISSION = "usage.view_usageday"
HOUR = Decimal(3600)
HOURS_PLACES = Decimal("0.000001")


# --- what the rows are --------------------------------------------------------------------------


@dataclass(frozen=True)
class Dimension:
    """What one row of the report stands for: the usage rows sharing ``fields`` are summed into
    it. ``name`` labels a row on the page, ``csv_columns`` names the CSV columns that
    ``csv_cells`` fills."""

    key: str
    label: str
    plural: str
    fields: tuple[str, ...]
    name_order: tuple[str, ...]
    name: Callable[[dict], str]
    csv_columns: tuple[str, ...]
    csv_cells: Callable[[dict], list]


def _user_name(row: dict) -> str:
    if row["user_id"] is None:
        return "(deleted user)"
    return row["user__email"] or row["user__username"]


BY_USER = Dimension(
    key="user",
    label="User",
    plural="users",
    fields=("user_id", "user__email", "user__username"),
    name_order=("user__email", "user__username", "user_id"),
    name=_user_name,
    csv_columns=("user_id", "user_email"),
    csv_cells=lambda row: [row["user_id"] or "", row["user__email"] or ""],
)
BY_PROVIDER = Dimension(
    key="provider",
    label="Provider",
    plural="providers",
    fields=("provider",),
    name_order=("provider",),
    name=lambda row: row["provider"],
    csv_columns=("provider",),
    csv_cells=lambda row: [row["provider"]],
)
DIMENSIONS = {dimension.key: dimension for dimension in (BY_USER, BY_PROVIDER)}

# Named apart from UsageDay's fields, which an annotation may not shadow.
MEASURES = {
    "sandboxes": lambda: Count("sandbox_name", distinct=True),
    "running": lambda: Sum("running_seconds"),
    "vcpu": lambda: Sum("cpu_seconds"),
    "memory": lambda: Sum("memory_gib_seconds"),
    "disk": lambda: Sum("disk_gib_seconds"),
    "stopped_disk": lambda: Sum("stopped_disk_gib_seconds"),
    "spent": lambda: Sum("cost"),
}


def _measures() -> dict:
    return {name: make() for name, make in MEASURES.items()}


def _hours(seconds: int | None) -> Decimal:
    return (Decimal(seconds or 0) / HOUR).quantize(HOURS_PLACES)


@dataclass(frozen=True)
class Figures:
    """The sums of one row (or of all rows), in hours, GiB-hours and the currency."""

    sandboxes: int
    running_hours: Decimal
    vcpu_hours: Decimal
    memory_gib_hours: Decimal
    disk_gib_hours: Decimal
    stopped_disk_gib_hours: Decimal
    cost: Decimal

    @classmethod
    def of(cls, sums: dict) -> Figures:
        return cls(
            sandboxes=sums["sandboxes"] or 0,
            running_hours=_hours(sums["running"]),
            vcpu_hours=_hours(sums["vcpu"]),
            memory_gib_hours=_hours(sums["memory"]),
            disk_gib_hours=_hours(sums["disk"]),
            stopped_disk_gib_hours=_hours(sums["stopped_disk"]),
            # SQLite sums decimals as floats: back to the cost's own places.
            cost=Decimal(sums["spent"] or 0).quantize(COST_PLACES),
        )

    def csv_cells(self) -> list:
        return [
            self.sandboxes,
            self.running_hours,
            self.vcpu_hours,
            self.memory_gib_hours,
            self.disk_gib_hours,
            self.stopped_disk_gib_hours,
            self.cost,
        ]


def csv_header(dimension: Dimension, currency: str) -> list[str]:
    return [
        "date",
        *dimension.csv_columns,
        "sandboxes",
        "running_hours",
        "vcpu_hours",
        "memory_gib_hours",
        "disk_gib_hours_billable",
        "stopped_disk_gib_hours",
        f"cost_{currency.lower()}",
    ]


# --- filters ------------------------------------------------------------------------------------

PERIODS = [
    ("this_month", "This month"),
    ("last_month", "Last month"),
    ("last_7_days", "Last 7 days"),
    ("last_30_days", "Last 30 days"),
    ("custom", "From and to dates"),
]
SORTS = [("-cost", "Highest cost first"), ("cost", "Lowest cost first"), ("name", "Name")]


def period_bounds(period: str, today: date) -> tuple[date, date]:
    """First and last day (both included) of a named period ending today or before."""
    if period == "last_month":
        end = today.replace(day=1) - timedelta(days=1)
        return end.replace(day=1), end
    if period == "last_7_days":
        return today - timedelta(days=6), today
    if period == "last_30_days":
        return today - timedelta(days=29), today
    return today.replace(day=1), today


class ReportFilters(forms.Form):
    period = forms.ChoiceField(choices=PERIODS, required=False)
    start = forms.DateField(required=False, label="From", widget=forms.DateInput(attrs={"type": "date"}))
    end = forms.DateField(required=False, label="To", widget=forms.DateInput(attrs={"type": "date"}))
    user = forms.CharField(
        required=False, max_length=254, label="User", widget=forms.TextInput(attrs={"placeholder": "email or username"})
    )
    provider = forms.ChoiceField(
        choices=[("", "All providers"), *((name, name) for name in PROVIDER_NAMES)], required=False
    )
    by = forms.ChoiceField(choices=[(d.key, d.label) for d in DIMENSIONS.values()], required=False, label="Rows by")
    sort = forms.ChoiceField(choices=SORTS, required=False)

    def clean(self):
        data = super().clean()
        start, end = data.get("start"), data.get("end")
        if data.get("period") == "custom":
            if not (start and end):
                raise forms.ValidationError("Give both dates of the period, or choose a named period.")
            if start > end:
                raise forms.ValidationError("The period's first day comes after its last.")
            if (end - start).days >= LONGEST_PERIOD_DAYS:
                raise forms.ValidationError(f"A period is at most {LONGEST_PERIOD_DAYS} days long.")
        return data


@dataclass(frozen=True)
class Report:
    """What the operator asked for: days ``start`` to ``end`` (both included), optionally one
    provider's rows and the users whose email or username contains ``user``."""

    start: date
    end: date
    dimension: Dimension = BY_USER
    user: str = ""
    provider: str = ""
    sort: str = "-cost"

    @classmethod
    def from_filters(cls, form: ReportFilters, today: date) -> Report:
        """The report a valid form asks for; this month's, unfiltered, for an invalid one."""
        if not form.is_valid():
            return cls(*period_bounds("this_month", today))
        data = form.cleaned_data
        period = data["period"] or "this_month"
        start, end = (data["start"], data["end"]) if period == "custom" else period_bounds(period, today)
        return cls(
            start=start,
            end=end,
            dimension=DIMENSIONS[data["by"] or BY_USER.key],
            user=data["user"].strip(),
            provider=data["provider"],
            sort=data["sort"] or "-cost",
        )

    @property
    def days(self) -> list[date]:
        return [self.start + timedelta(days=n) for n in range((self.end - self.start).days + 1)]

    @property
    def filename(self) -> str:
        return f"usage-by-{self.dimension.key}-{self.start.isoformat()}-to-{self.end.isoformat()}.csv"

    def usage_days(self) -> QuerySet[UsageDay]:
        rows = UsageDay.objects.filter(day__gte=self.start, day__lte=self.end)
        if self.provider:
            rows = rows.filter(provider=self.provider)
        if self.user:
            rows = rows.filter(Q(user__email__icontains=self.user) | Q(user__username__icontains=self.user))
        return rows

    def grouped(self):
        """One dict per row of the report (the dimension's fields and the sums), in its order."""
        fields = self.dimension.fields
        order = {
            "-cost": ("-spent", *self.dimension.name_order),
            "cost": ("spent", *self.dimension.name_order),
            "name": self.dimension.name_order,
        }[self.sort]
        return self.usage_days().values(*fields).annotate(**_measures()).order_by(*order)

    def totals(self) -> Figures:
        return Figures.of(self.usage_days().aggregate(**_measures()))

    def daily_spend(self) -> list[tuple[date, Decimal]]:
        """Every day of the period, with what was spent on it (zero when nothing was)."""
        by_day = self.usage_days().values("day").annotate(spent=Sum("cost")).order_by()
        spent = dict(by_day.values_list("day", "spent"))
        return [(day, spent.get(day, Decimal(0))) for day in self.days]

    def chart(self) -> Chart:
        title = f"Daily spend, {self.start.isoformat()} to {self.end.isoformat()}"
        return spend_chart(self.daily_spend(), title=title)


# --- CSV ----------------------------------------------------------------------------------------


class _Echo:
    """A file that hands back what is written to it, so that csv.writer makes lines to stream."""

    def write(self, value: str) -> str:
        return value


def csv_rows(report: Report):
    """The export's rows: one per day and row of the report (user or provider), oldest day first."""
    fields = report.dimension.fields
    return (
        report.usage_days().values("day", *fields).annotate(**_measures()).order_by("day", *report.dimension.name_order)
    )


def _csv_line(report: Report, row: dict) -> list:
    return [row["day"].isoformat(), *report.dimension.csv_cells(row), *Figures.of(row).csv_cells()]


def _lines(report: Report, writer) -> Iterator[str]:
    yield writer.writerow(csv_header(report.dimension, settings.USAGE_CURRENCY))
    for row in csv_rows(report).iterator(chunk_size=CSV_CHUNK_ROWS):
        yield writer.writerow(_csv_line(report, row))


async def _alines(report: Report, writer) -> AsyncIterator[str]:
    yield writer.writerow(csv_header(report.dimension, settings.USAGE_CURRENCY))
    async for row in csv_rows(report).aiterator(chunk_size=CSV_CHUNK_ROWS):
        yield writer.writerow(_csv_line(report, row))


def csv_response(request: HttpRequest, report: Report) -> StreamingHttpResponse:
    writer = csv.writer(_Echo())
    # Under ASGI (uvicorn) Django reads a synchronous iterator whole before sending a byte; an
    # asynchronous one streams, a chunk of rows at a time, whatever the size of the export.
    lines = _alines(report, writer) if isinstance(request, ASGIRequest) else _lines(report, writer)
    response = StreamingHttpResponse(lines, content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{report.filename}"'
    return response


# --- the page -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReportRow:
    name: str
    figures: Figures

    @property
    def cost(self) -> str:
        return money(self.figures.cost)


def usage_report(request: HttpRequest) -> HttpResponse:
    """The report page, or its CSV export with ``?format=csv`` (same filters). Staff with the
    permission to view usage rows only (superusers have it)."""
    if not request.user.has_perm(PERMISSION):
        raise PermissionDenied
    data = request.GET.copy()
    if not data.get("period") and (data.get("start") or data.get("end")):
        data["period"] = "custom"  # so that the form shows what the dates mean
    form = ReportFilters(data)
    report = Report.from_filters(form, today=utc_day(timezone.now()))
    if request.GET.get("format") == "csv":
        if not form.is_valid():
            return HttpResponseBadRequest(" ".join(form.errors.get("__all__", ["Invalid filters."])))
        return csv_response(request, report)
    page = Paginator(report.grouped(), PAGE_SIZE).get_page(request.GET.get("page"))
    totals = report.totals()
    context = {
        **admin.site.each_context(request),
        "title": "Usage and cost",
        "form": form,
        "report": report,
        "page": page,
        "rows": [ReportRow(report.dimension.name(row), Figures.of(row)) for row in page],
        "totals": ReportRow(f"All {page.paginator.count} {report.dimension.plural}", totals),
        "chart": report.chart(),
        "currency": settings.USAGE_CURRENCY,
        "last_rollup": RollupRun.objects.only("finished_at").first(),
    }
    return TemplateResponse(request, "admin/usage/report.html", context)
