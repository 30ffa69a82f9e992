"""Beat starts where README's production commands run it: from a fresh checkout.

Its schedule file lives in NORM_VAR_DIR (var/ in the checkout, which git does not
hold): without the directory, beat crashed on start and no reconciler ran.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from celery import beat, uuid
from celery.contrib.testing.mocks import TaskMessage
from celery.worker.request import Request
from django.conf import settings

from config.celery import app
from workflows import tasks as workflow_tasks


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


@pytest.mark.parametrize("restarted", [False, True], ids=["running", "restarted"])
def test_a_reconcile_is_sent_within_its_interval_after_beats_clock_stepped_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, restarted: bool
) -> None:
    """Celery counts an entry's next run from its last on the wall clock: beat's host an
    hour ahead until NTP stepped its clock back, beat sent no reconcile for that hour,
    restarted or not (the last run's time is kept in the schedule file), and no long
    delay, send retry or lost work was sent meanwhile."""
    command = app.Beat(schedule=str(tmp_path / "celerybeat-schedule"))
    service = beat.Service(
        app=app, scheduler_cls=command.scheduler_cls, schedule_filename=command.schedule
    )
    true_now = app.now
    monkeypatch.setattr(app, "now", lambda: true_now() + timedelta(hours=1))
    scheduler = service.get_scheduler()
    try:
        assert scheduler.tick() <= settings.NORM_RECONCILE_INTERVAL  # none due yet
        if restarted:
            scheduler.sync()
            scheduler.close()
        monkeypatch.setattr(app, "now", true_now)  # the clock stepped back
        if restarted:
            scheduler = service.get_scheduler()  # from the schedule file

        assert scheduler.tick() <= settings.NORM_RECONCILE_INTERVAL
    finally:
        scheduler.close()


@pytest.mark.parametrize("ahead", [0, 15, 45])
def test_a_reconcile_beat_sends_runs_on_a_worker_whose_clock_is_ahead_of_beats(
    ahead: int,
) -> None:
    """Celery writes a task's `expires` as a time on its sender's clock, beat's, and a
    worker drops the task once its own clock has passed it. With one interval (10 s),
    a worker 10 s ahead of beat dropped every reconcile, and long delays and lost work
    were never sent again (with NORM_RECONCILE_INTERVAL=2, at 2 s of skew)."""
    entry = settings.CELERY_BEAT_SCHEDULE["reconcile"]
    task = entry["task"]
    beats_now = app.now() - timedelta(seconds=ahead)
    # As beat sends it (apply_async with the entry's options), at its clock's now.
    sent = app.amqp.as_task_v2(uuid(), task, expires=entry["options"]["expires"], now=beats_now)

    reconcile = workflow_tasks.reconcile
    assert reconcile.name == task
    taken = Request(TaskMessage(task, **sent.headers), app=app, task=reconcile)

    assert not taken.maybe_expire()  # as the worker checks it when it takes it
