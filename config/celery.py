from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from typing import Any

from celery import Celery, Task
from celery.beat import PersistentScheduler
from celery.signals import task_postrun, task_prerun, worker_process_init
from celery.utils.time import maybe_make_aware

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("norm")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


def uses_broker(url: str) -> bool:
    """Whether the app connects to the broker at `url`. Its connection names its
    transport where the scheme stood (config.redisbroker:Transport:// for redis://), so
    the rest alone is compared."""
    used = app.connection().as_uri(include_password=True)
    return used.partition("://")[2] == url.partition("://")[2]


# Named here, where the filter below needs it before Django is set up; config.pipeline
# takes its RECONCILE stage's name from it.
RECONCILE_TASK = "norm.reconcile"


class _QuietPerRowTasks(logging.Filter):
    """Keeps at DEBUG the INFO records Celery writes for each run of a task that runs once
    per notification or step (the echo, the send), per chunk of a broadcast's or a topic's
    audience, or per tick (the reconciler): "received", "succeeded" and "retry". At compose's `-l
    INFO`, a 100,000-subscriber broadcast wrote some 600,000 of them, and three lines
    every 10 s for the reconciler buried the rest (make run's email scrolled away). What
    goes wrong is a WARNING or more, kept; a trigger's own task keeps its lines, and the
    reconciler logs what it did itself (workflows.services.reconciler)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            return True
        data = getattr(record, "data", None)  # each of those records carries the task's name
        if not isinstance(data, dict) and isinstance(record.args, tuple):
            names = (a for a in record.args if isinstance(a, str))  # not a list: unhashable
            data = {"name": next((n for n in names if n in _per_row()), None)}
        if not isinstance(data, dict) or data.get("name") not in _per_row():
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


@functools.cache
def _per_row() -> frozenset[str]:
    from config import pipeline  # which imports this module

    # Not SUBSCRIBER: one a recipient `to` lists, a thousand at most, the trace of a
    # trigger's fan-out that the fault tests read.
    stages = (pipeline.SUBSCRIBER_BATCH, pipeline.ECHO, pipeline.MESSAGE)
    return frozenset({RECONCILE_TASK, *(stage.task for stage in stages)})


for _name in ("celery.beat", "celery.worker.strategy", "celery.app.trace"):
    logging.getLogger(_name).addFilter(_QuietPerRowTasks())


class _AwayIsNoBug(logging.Filter):
    """A task that gave up on the database after its retries (pipeline.DB_RETRY: some five
    minutes), or whose hand-off the broker refused (a fan-out, let go for the reconciler),
    is a WARNING, its error named, without the traceback Celery's ERROR carries: neither
    is a bug, and the row waits for the reconciler. Every task the workers took while the
    database or Redis was away logged one, some thirty lines each."""

    def filter(self, record: logging.LogRecord) -> bool:
        from config.pipeline import BROKER_ERRORS, DB_RETRY

        error = record.exc_info[1] if record.exc_info else None
        away = (*DB_RETRY["autoretry_for"], *BROKER_ERRORS)
        if record.levelno >= logging.ERROR and isinstance(error, away):
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.exc_info, record.exc_text = None, None
        return True


logging.getLogger("celery.app.trace").addFilter(_AwayIsNoBug())


class _BeatTickRefused(logging.Filter):
    """A tick the broker refused (Redis down or failing over) is a WARNING line naming the
    error. Celery's ERROR carried the stack and the traceback, some 300 lines every
    NORM_RECONCILE_INTERVAL for as long as Redis was away; nothing is lost, the next tick
    sends it again."""

    def filter(self, record: logging.LogRecord) -> bool:
        from celery.beat import SchedulingError

        from config.pipeline import BROKER_ERRORS

        error = record.exc_info[1] if record.exc_info else None
        # Beat wraps the broker's error in its own, raised while handling it.
        if isinstance(error, SchedulingError) and isinstance(error.__context__, BROKER_ERRORS):
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.msg, record.args = "%s; the next tick sends it again", (error,)
            record.exc_info, record.exc_text = None, None
        return True


logging.getLogger("celery.beat").addFilter(_BeatTickRefused())


class BeatScheduler(PersistentScheduler):
    """Celery's own, with its schedule file's directory made first: the file is kept in
    NORM_VAR_DIR (var/ in the checkout, which git does not hold), and without it beat
    crashed on start, leaving no reconciler to send long delays or lost work."""

    def setup_schedule(self) -> None:
        Path(self.schedule_filename).parent.mkdir(parents=True, exist_ok=True)
        super().setup_schedule()

    def tick(self, *args: Any, **kwargs: Any) -> float:
        """Celery's tick, but an entry last run later than now (the clock stepped back
        past it, by NTP) counts its interval from now. Celery's counted from the last run
        on the clock before the step, kept in the schedule file across restarts: a clock
        set back an hour sent no reconcile for an hour, and with it no long delay, send
        retry or lost work."""
        now = self.app.now()
        ahead = [
            entry
            for entry in self.schedule.values()
            if entry.last_run_at is not None and maybe_make_aware(entry.last_run_at) > now
        ]
        for entry in ahead:
            entry.last_run_at = now
        if ahead:
            self._heap = None  # its times are the old clock's too: built again from these
        return float(super().tick(*args, **kwargs))


@task_prerun.connect
@task_postrun.connect
def _close_old_connections(sender: Task | None = None, **kwargs: Any) -> None:
    """Drop a connection past CONN_MAX_AGE or one that failed (PostgreSQL restarted),
    as Django does around each request; a healthy one is kept for the next task.
    Not in eager mode: there the caller's connection (a test's transaction) is in use."""
    if sender is not None and getattr(sender.request, "is_eager", False):
        return
    from django.db import close_old_connections

    close_old_connections()


@worker_process_init.connect
def _no_health_checks(**kwargs: Any) -> None:
    """A worker's process (prefork's children, a solo worker) skips the health check's
    round trip before each task; the threads pool (`make run`'s) gets no such signal and
    keeps it. A task whose connection broke fails with OperationalError and retries
    (pipeline.DB_RETRY), and `_close_old_connections` then drops the broken connection."""
    from django.db import connections

    for connection in connections.all():
        connection.settings_dict["CONN_HEALTH_CHECKS"] = False
