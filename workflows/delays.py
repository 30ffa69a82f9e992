from __future__ import annotations

from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from config.db import bounded

UNITS = {
    "seconds": 1,
    "minutes": 60,
    "hours": 3600,
    "days": 86400,
    "weeks": 7 * 86400,
    # Novu counts a month as 30 days for delays.
    "months": 30 * 86400,
}


# cron-parser's (Novu's) nicknames, which cronsim does not take.
CRON_ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@hourly": "0 * * * *",
}


class UnsupportedDelay(ValueError):
    pass


def _kind(outputs: dict[str, Any]) -> Any:
    """A delay's kind: its `type`, which Novu's schema leaves optional. Without one, a
    `cron` makes it timed, as in Novu's worker (which looks for the cron alone)."""
    return outputs.get("type") or ("timed" if outputs.get("cron") is not None else "regular")


def delay_of(outputs: dict[str, Any]) -> timedelta:
    """How long a regular delay step waits, from its outputs `{type?, amount, unit}`."""
    amount, unit = outputs.get("amount"), outputs.get("unit")
    # NaN, which a bridge's JSON may hold (Python's json reads it), compares false with
    # anything: it passed as a number and failed as "too long".
    if isinstance(amount, bool) or not isinstance(amount, int | float) or not amount >= 0:
        raise UnsupportedDelay(f"delay amount must be a non-negative number, got {amount!r}")
    if not isinstance(unit, str) or unit not in UNITS:  # a list is no key (unhashable)
        raise UnsupportedDelay(f"delay unit must be one of {', '.join(UNITS)}, got {unit!r}")
    try:
        return timedelta(seconds=amount * UNITS[unit])
    except (OverflowError, ValueError) as exc:  # 1e10 days, or Infinity
        raise UnsupportedDelay(f"delay of {amount} {unit} is too long") from exc


def delay_until(outputs: dict[str, Any], *, now: datetime, zone: str = "") -> datetime:
    """When a delay step reached at `now` is due: `now` plus its amount (`delay_of`),
    or, timed (`{type: "timed", cron}`), the cron's next fire after `now` in the
    subscriber's time zone `zone` (an IANA name; UTC without one)."""
    kind = _kind(outputs)
    if kind == "timed":
        return next_fire(outputs.get("cron"), now=now, zone=zone)
    if kind != "regular":
        raise UnsupportedDelay(
            f"delay type '{kind}' is not supported yet; use amount and unit, or a cron"
        )
    wait = delay_of(outputs)
    try:
        return now + wait
    except OverflowError as exc:  # 3,000,000 days: past the year 9999, which no date holds
        raise UnsupportedDelay(
            f"delay of {outputs['amount']} {outputs['unit']} is too long"
        ) from exc


def next_fire(cron: Any, *, now: datetime, zone: str = "") -> datetime:
    """The first time after `now` (to the second: a cron firing at `now` fires next at
    its following time) that `cron` fires on the clock of `zone`, in UTC.

    Novu's worker reads the cron on the subscriber's clock (cron-parser's `tz`), so a
    "0 9 * * *" reaches each subscriber at nine in the morning; without a zone, on the
    server's, which Novu runs in UTC. As cron-parser, this takes the 5 fields or 6 with
    seconds first (a day's `?` as `*`), or a nickname (`CRON_ALIASES`)."""
    # Bounded: the reason is the notification's, which the admin and the API show.
    shown = bounded(repr(cron), 100)
    if not isinstance(cron, str):
        raise UnsupportedDelay(f"delay cron must be a cron expression string, got {shown}")
    try:
        fires = CronSim(
            _any_day(CRON_ALIASES.get(cron.strip(), cron)), now.astimezone(_clock(zone))
        )
        fire = next(fires)
        # cronsim reads a cron of set times (not */n minutes) on the wall clock, where
        # an hour the clock repeats (DST's end) fires once, the first time: from the
        # second pass its next fire is that one, gone (2:30 from 2:10 again, an hour
        # before `now`), and the delay would end at once instead of at tomorrow's 2:30.
        while fire <= now:
            fire = next(fires)
        return fire.astimezone(UTC)
    except CronSimError as exc:
        reason = str(exc).lower()
        if reason == "wrong number of fields":
            reason += " (minute hour day-of-month month day-of-week, or seconds first)"
        raise UnsupportedDelay(
            f"delay cron {shown} is not a valid cron expression: {reason}"
        ) from exc
    except ValueError as exc:  # a field's number of over 4,300 digits, which int() refuses
        raise UnsupportedDelay(
            f"delay cron {shown} is not a valid cron expression: a number in it is too long to read"
        ) from exc
    except StopIteration as exc:  # "* * */20 * 1L": the 1st or 21st as the last Monday
        raise UnsupportedDelay(f"delay cron {shown} never fires (not in 50 years)") from exc


def _any_day(cron: str) -> str:
    """`cron` with cron-parser's `?` (Quartz's "any", which Novu takes: "0 9 ? * MON-FRI")
    in its day-of-month and day-of-week fields written as cronsim's `*`, which is what
    cron-parser reads it as. Elsewhere a `?` is left for cronsim to refuse, as cron-parser
    refuses it."""
    fields = cron.split()
    if len(fields) not in (5, 6):
        return cron
    days = (len(fields) - 3, len(fields) - 1)  # the 3rd and 5th of five, 4th and 6th of six
    return " ".join(f.replace("?", "*") if n in days else f for n, f in enumerate(fields))


def _clock(zone: str) -> tzinfo:
    # The API and the admin store only names the tz database knows; one it has dropped
    # since falls back to UTC rather than failing the step.
    if not zone:
        return UTC
    try:
        return ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        return UTC
