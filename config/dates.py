"""Times as Novu's API writes them (a JS Date's toISOString): UTC, to the millisecond,
always with its three digits, and a `Z`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from rest_framework import serializers

# The API's precision: the times it writes, given back (a notification's createdAt as
# `before`), name the whole millisecond.
MILLISECOND = timedelta(milliseconds=1)


def iso_z(value: datetime | None) -> str | None:
    # One width always: isoformat() left out a fraction of 0 ("…09:00:00Z", a timed
    # delay's due time) and wrote microseconds otherwise, and a client parsing Novu's
    # format (`.SSSX`, strptime's `.%fZ`) failed on one or the other.
    if value is None:
        return None
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class TimestampField(serializers.DateTimeField):
    """A serializer's time, written as `iso_z` writes it (DRF's own writes isoformat())."""

    def to_representation(self, value: Any) -> str | None:
        return iso_z(value)


def through_millisecond(value: datetime) -> datetime:
    """The first moment after the millisecond that `value` names, when it names one whole
    (as every time the API writes does): `created_at < this` is "at or before it" as the
    API wrote it. A time with microseconds stands for itself: just after it."""
    step = timedelta(microseconds=1) if value.microsecond % 1000 else MILLISECOND
    try:
        return value + step
    except OverflowError:  # the year 9999's last millisecond: no time is stored later
        return datetime.max.replace(tzinfo=UTC)
