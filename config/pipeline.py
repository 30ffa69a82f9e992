"""The pipeline in one place: its stages, their Celery task names and queues.

HTTP trigger -> workflow worker -> subscriber worker -> echo worker <-> message worker

Stages hand off by task *name*, so the apps never import each other's tasks, and
every hand-off waits for the transaction that wrote its row to commit.
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import billiard.exceptions
import celery.exceptions
import kombu.exceptions
import redis.exceptions
from celery import Task
from celery.utils.time import get_exponential_backoff_interval
from django.conf import settings
from django.db import InterfaceError, OperationalError, transaction

from config.celery import RECONCILE_TASK
from config.logs import Quieted

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stage:
    task: str
    queue: str


WORKFLOW = Stage("norm.workflow.run", "workflows")
SUBSCRIBER = Stage("norm.subscriber.process", "subscribers")
# Broadcasts and topics: existing subscribers, a chunk of subscriberIds per command.
SUBSCRIBER_BATCH = Stage("norm.subscriber.batch", "subscribers")
# The rest of a large trigger's cancel, past what its request had time for: one task a
# cancel, not one a notification. A routed workflow's on its queue, as every stage of it
# (`queue_of`): on `workflows` alone, a deployment whose workers serve only a routed
# workflow's queue never ran it.
CANCEL = Stage("norm.trigger.cancel", "workflows")
ECHO = Stage("norm.echo.run", "echo")
MESSAGE = Stage("norm.message.send", "messages")
# Beat's reconciler has a queue of its own: behind a backlog of triggers it would wait
# longer than its `expires` (RECONCILE_EXPIRES) and never run, leaving long delays and lost
# commands until the backlog cleared, which is when they matter most.
RECONCILE = Stage(RECONCILE_TASK, "reconcile")  # named where Celery is set up

QUEUES = tuple(
    dict.fromkeys(
        s.queue for s in (WORKFLOW, SUBSCRIBER, SUBSCRIBER_BATCH, CANCEL, ECHO, MESSAGE, RECONCILE)
    )
)

# Options for every stage's task. A task that loses the database (a restart, a
# failover) would otherwise fail and be acknowledged, leaving its work to the
# reconciler's grace period; it retries with jittered backoff instead. Every task
# claims its row, so a retry of one that got halfway is harmless.
DB_RETRY: dict[str, Any] = {
    "autoretry_for": (OperationalError, InterfaceError),
    "retry_backoff": 1,
    "retry_backoff_max": 60,
    "retry_kwargs": {"max_retries": 10},
}


# The broker refusing a hand-off (down, a failover, out of memory): the row is in the
# database, and the reconciler sends its work again. kombu raises most as its own
# OperationalError or ChannelError; some of redis-py's reach the caller as they are.
BROKER_ERRORS: tuple[type[Exception], ...] = (
    kombu.exceptions.OperationalError,
    kombu.exceptions.ChannelError,
    redis.exceptions.RedisError,
)

# What may end a stage's task without being a bug in its work: the database away
# (DB_RETRY retries it), the broker (above), Celery's own control flow (Retry, Ignore,
# Reject) and a worker shutting down or over its time limit (billiard's; SystemExit and
# KeyboardInterrupt are no Exception). A stage records anything else that escapes on
# its row, as a bug, and gives up after a bounded number of runs.
NOT_A_BUG: tuple[type[Exception], ...] = (
    *DB_RETRY["autoretry_for"],
    *BROKER_ERRORS,
    celery.exceptions.TaskPredicate,
    billiard.exceptions.SoftTimeLimitExceeded,
    billiard.exceptions.TimeLimitExceeded,
    billiard.exceptions.Terminated,
    billiard.exceptions.WorkerLostError,
)


@contextlib.contextmanager
def bugs_recorded(
    record: Callable[[Exception], None],
    what: str,
    row: object,
    log: logging.Logger,
    *,
    passes: tuple[type[Exception], ...] = (),
) -> Iterator[None]:
    """Around a stage's work on `row` (an id): what is NOT_A_BUG (or `passes`) goes on to
    Celery; anything else is a bug, logged to the stage's `log` ("`what` `row` failed",
    see `bug_logged`) and handed to `record`, which puts its reason on the row and bounds
    the reruns. Raised, the task was acknowledged and the row kept no reason, the
    reconciler running it again for good."""
    try:
        yield
    except (*NOT_A_BUG, *passes):
        raise
    except Exception as exc:
        bug_logged(log, exc, what, row)
        record(exc)


# Each distinct bug's traceback, once a minute (`bug_logged`).
_bugs = Quieted()


def bug_logged(log: logging.Logger, exc: Exception, what: str, row: object) -> None:
    """Log the bug `exc` that ended `what` (a stage's work, "the echo of notification")
    on `row`: an ERROR with its traceback once a minute per process for each bug (`what`,
    the exception's type and where it was raised), naming the rows it hit since and
    counting them; the others held back. A bug in norm's own code hits every row of a
    broadcast alike, in each of its NORM_MAX_CLAIMS runs: a traceback each was hundreds
    of thousands of them, burying every other line, and each row's reason says it."""
    due = _bugs.due_naming((what, type(exc), _raised_at(exc)), str(row))
    if due is None:
        return
    held, named, others = due
    hit = f": {', '.join(named)}" if named else ""
    if named and others:
        hit += f" and {others} more"
    log.error(
        "%s %s failed (%d more such since the last such line%s)",
        what,
        row,
        held,
        hit,
        exc_info=exc,
    )


def _raised_at(exc: BaseException) -> tuple[tuple[str, int], ...]:
    """Where `exc` was raised: each frame of its traceback, not the last alone, which a
    library's line (Django's `get` raising DoesNotExist) shares among all its callers."""
    places = []
    frame = exc.__traceback__
    while frame is not None:
        places.append((frame.tb_frame.f_code.co_filename, frame.tb_lineno))
        frame = frame.tb_next
    return tuple(places)


class ClaimInterrupted(OperationalError):
    """The database failed while this run held its row's claim (a step's, a trigger
    event's), taken at `claimed_at`: for the task's retry to take the claim back without
    counting it again as a run that never came back (see step_claim). Raised from the
    database's error, as one (a caller that retries those retries this). `retry_kwargs`:
    what the retry carries, for `db_retry`."""

    def __init__(self, claimed_at: datetime) -> None:
        super().__init__("the database failed while the row was claimed")
        self.retry_kwargs: dict[str, Any] = {"resumed": claimed_at.isoformat()}


def db_retry(task: Task, exc: BaseException | None, **kwargs: Any) -> celery.exceptions.Retry:
    """Retry `task` after the database error `exc` as DB_RETRY would (its backoff, its
    bound), with `kwargs` added to the task's own: what the run learned before the
    error, which its retry must not do again. Returns the Retry to raise; past the
    bound, raises `exc`."""
    countdown = get_exponential_backoff_interval(
        factor=DB_RETRY["retry_backoff"],
        retries=task.request.retries,
        maximum=DB_RETRY["retry_backoff_max"],
        full_jitter=True,  # as autoretry's default retry_jitter
    )
    return task.retry(
        args=task.request.args,
        kwargs={**(task.request.kwargs or {}), **kwargs},
        exc=exc,
        countdown=countdown,
        throw=False,
        **DB_RETRY["retry_kwargs"],
    )


def redelivered(task: Task) -> str:
    """`task`'s id when the broker delivered its message again: its worker died running
    it (Celery's reject on worker lost) or held it past the visibility timeout; "" for a
    first delivery, a retry (a message of its own) or a task run in-process."""
    delivery_info = task.request.delivery_info or {}
    return (task.request.id or "") if delivery_info.get("redelivered") else ""


# `backoff`'s largest factor over the doubling.
BACKOFF_JITTER = 1.5


def backoff(base: float, attempt: int) -> float:
    """Seconds before retry `attempt` (0 for the first): `base` doubled each time, and up
    to half as much again at random. A bridge or SMTP server that was down failed every
    notification sent to it at once; retried in step, they would all come back at the
    same instants, each wave as large as the outage was long. Never less than the
    doubling, so the retries still cover as long an outage as the settings say."""
    return base * 2**attempt * random.uniform(1.0, BACKOFF_JITTER)


def longest_backoff(base: float, attempt: int) -> float:
    """The most `backoff(base, attempt)` may be."""
    return base * 2**attempt * BACKOFF_JITTER


def queue_of(stage: Stage, workflow_id: str) -> str:
    """The routing table: a workflow NORM_WORKFLOW_QUEUES names runs every stage on its
    own queue (its fan-out, its notifications' echoes and sends, a cancel's rest), so
    that the workers consuming that queue serve it whole, and no hand-off of it waits
    behind another workflow's backlog. Only its fan-out was routed once: its echoes and
    sends queued behind every other notification's, a broadcast's 100,000 echoes too, and
    workers serving its queue alone never sent it."""
    return settings.NORM_WORKFLOW_QUEUES.get(workflow_id, stage.queue)


def all_queues() -> tuple[str, ...]:
    """Every queue norm sends to, the routing table's too: what one worker serving
    everything (`make run`) must consume, or a routed workflow would never run."""
    return tuple(dict.fromkeys((*QUEUES, *settings.NORM_WORKFLOW_QUEUES.values())))


def send_now(
    stage: Stage,
    *args: Any,
    countdown: float | None = None,
    queue: str | None = None,
    producer: kombu.Producer | None = None,
) -> None:
    """Publish `stage`'s task with `args` at once, inside a transaction or not: for a
    caller whose rows are committed already (the fan-out, the reconciler). A row written
    in the caller's transaction goes through `enqueue_on_commit` instead."""
    from config.celery import app

    app.send_task(
        stage.task,
        args=list(args),
        queue=queue or stage.queue,
        countdown=countdown if countdown and countdown > 0 else None,
        producer=producer,
    )


# Hand-offs published in one pipeline (kombu's own default).
PUBLISH_BATCH = 1000


def send_each(
    stage: Stage,
    calls: Sequence[tuple[Any, ...]],
    *,
    queue: str | None = None,
    countdown: float | None = None,
) -> None:
    """`send_now(stage, *args)` for each of `calls`, their LPUSHes in one round trip to
    Redis for each PUBLISH_BATCH (kombu's publish batch, a pipeline). One at a time, each
    paid a round trip and a Redis client of its own: twice the CPU and three times the
    time of a batched publish, over a broadcast's 100,000 echoes. An error leaves those
    not yet sent unsent. `make run`'s filesystem broker has no batches, and publishes
    each at once."""
    from config.celery import app

    if len(calls) == 1:  # nothing to batch: Celery's publish alone, its retry around it all
        send_now(stage, *calls[0], countdown=countdown, queue=queue)
        return
    for start in range(0, len(calls), PUBLISH_BATCH):
        batch = calls[start : start + PUBLISH_BATCH]
        try:
            with app.producer_or_acquire() as producer, producer.batch(PUBLISH_BATCH):
                for args in batch:
                    send_now(stage, *args, countdown=countdown, queue=queue, producer=producer)
        except kombu.exceptions.BatchPublishError:
            # The pipeline failed as it went (the connection lost: a failover, a restart),
            # which kombu does not retry, nor is Celery's publish retry (task_publish_retry)
            # around it, as it is around each publish alone: sent again one by one, with
            # that retry, rather than left to the reconciler a grace period late. A copy
            # of one Redis took after all is harmless: every task claims its row.
            for args in batch:
                send_now(stage, *args, countdown=countdown, queue=queue)


def backlog(queue: str) -> int:
    """Messages waiting in `queue` for a worker, as the broker counts them: not those a
    worker holds (prefetched, or waiting out a countdown). A queue the broker does not
    know (Redis drops an empty one) holds none."""
    from config.celery import app

    with app.pool.acquire(block=True) as connection:
        try:
            declared = connection.default_channel.queue_declare(queue=queue, passive=True)
        except kombu.exceptions.ChannelError:
            return 0
        return int(declared.message_count)


def enqueue_on_commit(
    stage: Stage, *args: Any, workflow: str, countdown: float | None = None
) -> None:
    """Enqueue `stage` for a notification of `workflow` (its queue: `queue_of`) once the
    current transaction commits (at once outside one).

    Robust: a broker that fails to take the message (down, a failover) is logged, not
    raised. The row is committed by then, and raising would turn stored work into an
    error: a 500 for a trigger already accepted (a client retrying without a
    transactionId would trigger twice), a notification failed for a step it recorded.
    The reconciler re-sends what waits in the database after NORM_RECONCILE_GRACE.
    """
    queue = queue_of(stage, workflow)
    transaction.on_commit(
        lambda: _send_all(stage, [args], countdown=countdown, queue=queue), robust=True
    )


def enqueue_each_on_commit(stage: Stage, ids: Sequence[Any], *, workflow: str) -> None:
    """`enqueue_on_commit(stage, id, workflow=workflow)` for each of `ids`, in one
    callback: once the broker refuses one, the rest are left to the reconciler as that
    one is, and the refusal is one line in the log, not one per id (500 for each chunk of
    a broadcast)."""
    if ids:
        queue = queue_of(stage, workflow)
        transaction.on_commit(
            lambda: _send_all(stage, [(i,) for i in ids], countdown=None, queue=queue), robust=True
        )


# A broker refusing hand-offs refuses each trigger accepted meanwhile alike: one line a
# minute per task (`_send_all`).
_refused = Quieted()


def _send_all(
    stage: Stage, calls: list[tuple[Any, ...]], *, countdown: float | None, queue: str
) -> None:
    try:
        send_each(stage, calls, countdown=countdown, queue=queue)
    except BROKER_ERRORS as exc:
        # Expected while the broker is down or failing over, and mended without anyone:
        # a warning naming the work, without the traceback Django's robust on_commit
        # logs (an ERROR for each hand-off, naming a lambda rather than the task).
        # One line a minute per task in a process: each trigger accepted meanwhile
        # would say the same.
        if (held := _refused.due(stage.task)) is None:
            return
        what = ", ".join(repr(a) for a in calls[0])
        if len(calls) > 1:
            what = f"{what} and {len(calls) - 1} more"
        logger.warning(
            "the broker refused %s (%s), which the reconciler sends again once it has "
            "waited NORM_RECONCILE_GRACE: %s (%d more refused since the last such line)",
            stage.task,
            what,
            exc,
            held,
        )
