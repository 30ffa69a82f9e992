from __future__ import annotations

import sys
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from notify.management.commands import bench


def test_a_missing_smtp_sink_is_named_before_anything_starts(monkeypatch: Any) -> None:
    """README's install line for the bench once brought gunicorn alone, and the bench then
    died on `import aiosmtpd` (its SMTP sink) with a traceback. Nothing may start first:
    past the check the command creates a database and flushes a Redis db."""
    for name in [m for m in sys.modules if m == "bench.infra" or m.startswith("aiosmtpd.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "aiosmtpd", None)  # as if not installed

    def went_on(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the bench went on without its dependencies")

    monkeypatch.setattr(bench, "_bench_urls", went_on)
    with pytest.raises(CommandError, match=r"aiosmtpd.*pip install -e '\.\[prod,test\]'"):
        call_command("bench", "--only", "trigger")
