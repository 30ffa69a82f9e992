from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

UNITS = {
    "seconds": 1,
    "minutes": 60,
    "hours": 3600,
    "days": 86400,
    "weeks": 7 * 86400,
    # Novu counts a month as 30 days for delays.
    "months": 30 * 86400,
}


class UnsupportedDelay(ValueError):
    pass


def delay_of(outputs: dict[str, Any]) -> timedelta:
    """How long a delay step waits, from its outputs `{type?, amount, unit}`."""
    kind = outputs.get("type") or "regular"
    if kind != "regular":
        raise UnsupportedDelay(f"delay type '{kind}' is not supported yet; use amount and unit")
    amount, unit = outputs.get("amount"), outputs.get("unit")
    if isinstance(amount, bool) or not isinstance(amount, int | float) or amount < 0:
        raise UnsupportedDelay(f"delay amount must be a non-negative number, got {amount!r}")
    if unit not in UNITS:
        raise UnsupportedDelay(f"delay unit must be one of {', '.join(UNITS)}, got {unit!r}")
    try:
        return timedelta(seconds=amount * UNITS[unit])
    except (OverflowError, ValueError) as exc:  # 1e10 days, or Infinity
        raise UnsupportedDelay(f"delay of {amount} {unit} is too long") from exc


def delay_until(outputs: dict[str, Any], *, now: datetime) -> datetime:
    """When a delay step waited out from `now` is due (see `delay_of`)."""
    wait = delay_of(outputs)
    try:
        return now + wait
    except OverflowError as exc:  # 3,000,000 days: past the year 9999, which no date holds
        raise UnsupportedDelay(
            f"delay of {outputs['amount']} {outputs['unit']} is too long"
        ) from exc
