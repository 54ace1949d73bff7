"""``/metrics``: the portal's Prometheus metrics, for operators' scrapers only.

Two kinds of numbers are served. What happens in a process (launches, provider calls, idle
stops: :mod:`usage.instruments`) is recorded where it happens; what the database knows
(sandboxes by state, open terminals, active users, cost, budgets) is read at scrape time by
:class:`DatabaseCollector`, in a fixed handful of queries whatever the number of rows.

Several processes record. With ``PROMETHEUS_MULTIPROC_DIR`` set, each process group has a
directory of its own under one base (``<base>/web``, ``<base>/worker``, ...), wiped when the
group starts, and a scrape of any web process merges every group's files (``<base>/*/*.db``).
Without it, a scrape shows the serving process only (and its process and Python collectors).
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.db import DatabaseError
from django.db.models import Count, Min, Sum
from django.db.models.functions import Coalesce
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector

from sandboxes.http import no_store
from sandboxes.models import Sandbox, SandboxState, TerminalSession

from .metering import utc_day
from .models import BudgetAlert, UsageDay

log = logging.getLogger(__name__)

# prometheus_client's file names start with the metric type (counter_<pid>.db...).
METRIC_FILE_TYPES = ("counter", "gauge", "histogram", "summary")


def metrics_view(request: HttpRequest) -> HttpResponse:
    """The text exposition of every metric, to a client with the bearer token or from an
    allowed network; 403 to anyone else (and to everyone when neither is configured)."""
    if not scrape_allowed(request):
        return no_store(HttpResponse("Forbidden\n", status=403, content_type="text/plain; charset=utf-8"))
    return no_store(HttpResponse(generate_latest(scrape_registry()), content_type=CONTENT_TYPE_LATEST))


def scrape_allowed(request: HttpRequest) -> bool:
    """``Authorization: Bearer <METRICS_TOKEN>`` (compared in constant time), or a client
    address in ``METRICS_ALLOWED_NETWORKS``. The address is the one the web server resolved
    (``REMOTE_ADDR``: the peer, or what a proxy in ``TRUSTED_PROXIES`` forwarded), never a
    header any client can set."""
    token = settings.METRICS_TOKEN
    scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
    if token and scheme.lower() == "bearer" and hmac.compare_digest(credentials.strip().encode(), token.encode()):
        return True
    networks = settings.METRICS_ALLOWED_NETWORKS
    if not networks:
        return False
    try:
        address = ipaddress.ip_address(request.META.get("REMOTE_ADDR") or "")
    except ValueError:
        return False
    if address.version == 6 and address.ipv4_mapped:
        address = address.ipv4_mapped
    return any(address in network for network in networks)


def scrape_registry() -> CollectorRegistry:
    """The collectors of one scrape: every process group's files when
    ``PROMETHEUS_MULTIPROC_DIR`` is set, else this process's registry; and the database's."""
    registry = CollectorRegistry(auto_describe=False)
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        registry.register(ProcessGroupFiles(Path(directory).parent))
    else:
        registry.register(REGISTRY)
    registry.register(DatabaseCollector())
    return registry


class ProcessGroupFiles:
    """The metric files of every process group under ``base`` (``base/<group>/<type>_<pid>.db``),
    merged: counters and histograms summed over processes, alive or gone since the group started."""

    def __init__(self, base: Path):
        self.base = base

    def files(self) -> list[str]:
        return sorted(
            str(path)
            for path in self.base.glob("*/*.db")
            if path.name.split("_", 1)[0] in METRIC_FILE_TYPES and path.is_file()
        )

    def collect(self):
        return MultiProcessCollector.merge(self.files(), accumulate=True)


class DatabaseCollector:
    """Gauges read from the database at scrape time, six queries in all. A database that does
    not answer leaves them out of the scrape (the readiness check says so) rather than failing it."""

    def collect(self):
        try:
            return list(self._families(timezone.now()))
        except DatabaseError:
            log.warning("metrics: the database did not answer; its gauges are left out")
            return []

    def _families(self, now):
        sandboxes = GaugeMetricFamily(
            "joepro_sandboxes", "Sandbox rows by provider and portal state.", labels=["provider", "state"]
        )
        counts = {
            (row["provider"], row["state"]): row["n"]
            for row in Sandbox.objects.order_by().values("provider", "state").annotate(n=Count("pk"))
        }
        for provider in sorted({settings.SANDBOX_PROVIDER} | {provider for provider, _ in counts}):
            for state in SandboxState.values:
                sandboxes.add_metric([provider, state], counts.get((provider, state), 0))
        yield sandboxes

        oldest = GaugeMetricFamily(
            "joepro_sandbox_oldest_transition_seconds",
            "Seconds since the longest-waiting sandbox entered its transitional state (0: none in it).",
            labels=["state"],
        )
        since = dict(
            Sandbox.objects.filter(state__in=SandboxState.transitional())
            .order_by()
            .values("state")
            .annotate(at=Min(Coalesce("state_changed_at", "created_at")))
            .values_list("state", "at")
        )
        for state in sorted(SandboxState.transitional()):
            at = since.get(state.value)
            oldest.add_metric([state.value], max(0.0, (now - at).total_seconds()) if at else 0.0)
        yield oldest

        yield GaugeMetricFamily(
            "joepro_terminal_sessions_open",
            "Web terminal sessions with a client attached.",
            value=TerminalSession.objects.filter(clients__gt=0, attached_until__gte=now).count(),
        )

        active_since = now - timedelta(minutes=settings.METRICS_ACTIVE_USER_MINUTES)
        yield GaugeMetricFamily(
            "joepro_active_users",
            f"Users whose sandbox a person used in the last {settings.METRICS_ACTIVE_USER_MINUTES} minutes.",
            value=Sandbox.objects.filter(last_activity_at__gte=active_since).values("user_id").distinct().count(),
        )

        month = utc_day(now).replace(day=1)
        cost = GaugeMetricFamily(
            "joepro_cost_month_to_date",
            "Cost of all sandboxes this month (UTC) as of the last usage roll-up.",
            labels=["currency"],
        )
        total = UsageDay.objects.filter(day__gte=month).aggregate(total=Sum("cost"))["total"] or 0
        cost.add_metric([settings.USAGE_CURRENCY], float(total))
        yield cost

        exceeded = GaugeMetricFamily(
            "joepro_budget_exceeded_users",
            "Users who reached 100 % of a monthly limit this month, by limit.",
            labels=["limit"],
        )
        users = dict(
            BudgetAlert.objects.filter(month=month, threshold=100)
            .order_by()
            .values("limit")
            .annotate(users=Count("user", distinct=True))
            .values_list("limit", "users")
        )
        for limit in BudgetAlert.Limit.values:
            exceeded.add_metric([limit], users.get(limit, 0))
        yield exceeded
