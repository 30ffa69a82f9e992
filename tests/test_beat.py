"""Beat starts where README's production commands run it: from a fresh checkout.

Its schedule file lives in NORM_VAR_DIR (var/ in the checkout, which git does not
hold): without the directory, beat crashed on start and no reconciler ran.
"""

from __future__ import annotations

from pathlib import Path

from celery import beat

from config.celery import app


def test_beat_starts_without_its_var_directory(tmp_path: Path) -> None:
    schedule = tmp_path / "var" / "celerybeat-schedule"
    # As `celery -A config beat` builds its service: the scheduler class from settings.
    command = app.Beat(schedule=str(schedule))
    service = beat.Service(
        app=app, scheduler_cls=command.scheduler_cls, schedule_filename=command.schedule
    )

    scheduler = service.get_scheduler()  # what beat sets up first, on start
    try:
        assert "reconcile" in scheduler.schedule
    finally:
        scheduler.close()
    assert schedule.parent.is_dir()
