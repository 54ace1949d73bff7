"""Prices: what usage costs at the deployment's rates (``USAGE_RATE_*``)."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

from django.conf import settings

SECONDS_PER_HOUR = Decimal(3600)
COST_PLACES = Decimal("0.000001")
CURRENCY_SYMBOLS = {"USD": "$", "EUR": "€", "GBP": "£", "JPY": "¥"}
CENTS = Decimal("0.01")


def cost_of(*, cpu_seconds: int, memory_gib_seconds: int, disk_gib_seconds: int) -> Decimal:
    """The cost of vCPU-seconds, GiB-seconds of memory and billable GiB-seconds of disk (beyond
    the free allowance), rounded to a millionth of the currency."""
    total = (
        Decimal(cpu_seconds) * settings.USAGE_RATE_VCPU_HOUR
        + Decimal(memory_gib_seconds) * settings.USAGE_RATE_MEMORY_GIB_HOUR
        + Decimal(disk_gib_seconds) * settings.USAGE_RATE_DISK_GIB_HOUR
    ) / SECONDS_PER_HOUR
    return total.quantize(COST_PLACES, rounding=ROUND_HALF_UP)


def hourly_rate(*, cpu: int, memory_gb: int, disk_gb: int, running: bool) -> Decimal:
    """What one hour costs a sandbox of these resources, running or stopped."""
    billable_disk = max(0, disk_gb - settings.USAGE_FREE_DISK_GIB)
    return cost_of(
        cpu_seconds=cpu * 3600 if running else 0,
        memory_gib_seconds=memory_gb * 3600 if running else 0,
        disk_gib_seconds=billable_disk * 3600,
    )


def money(amount: Decimal, currency: str | None = None) -> str:
    """``amount`` to the cent (to a hundredth of a cent below one cent, as the dashboard shows
    it), with the currency's symbol in front when it has a common one (``$1.23``), else its
    code after (``1.23 CHF``)."""
    currency = currency or settings.USAGE_CURRENCY
    places = CENTS if amount == 0 or abs(amount) >= CENTS else CENTS / 100
    text = f"{amount.quantize(places, rounding=ROUND_HALF_UP):,}"
    symbol = CURRENCY_SYMBOLS.get(currency)
    return f"{symbol}{text}" if symbol else f"{text} {currency}"
