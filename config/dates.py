"""Timestamps as Novu's API writes them: ISO 8601 in UTC with a `Z`."""

from __future__ import annotations

from datetime import datetime


def iso_z(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None
