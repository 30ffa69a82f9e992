"""Beat's reconciler: each tick re-sends, from the database alone, the work that stalled
(trigger events, cancels, due steps, idle notifications: lost with the broker or behind a
dead worker), and lets go of claims gone stale.

Task: workflows.tasks.reconcile. Shares nothing; reads fanout's never_finished and the step
bookkeeping's of_running_notification."""

from __future__ import annotations

import logging
import operator
from datetime import datetime, timedelta
from functools import reduce
from typing import Any

from django.conf import settings
from django.db import InterfaceError, OperationalError, connection, transaction
from django.db.models import Count, Exists, F, OuterRef, Q, QuerySet, Subquery
from django.db.models.functions import Coalesce
from django.utils import timezone

from config import pipeline
from config.db import error_text
from config.logs import Quieted
from messaging.models import Message
from notify.models import TriggerEvent
from workflows.models import Notification, Step
from workflows.services.bookkeeping import of_running_notification
from workflows.services.common import ACTIVE, FANOUT_RECHECK, OPEN_STEP
from workflows.services.fanout import never_finished

logger = logging.getLogger(__name__)

# A fan-out left short is run again at most this many times, each wait twice the last.
# (The FANOUT_RECHECK window alone is no bound: each run starts it again.)
MAX_REFANS = 8
# The most the reconciler re-sends of each kind in one run (to an empty queue: _room).
REDRIVE_BATCH = 1000
LOST_WITH_ITS_TASK = (
    "the notification had ended when the task sending this step was lost with its worker: "
    "not sent again"
)


def _quiet_for_twice_each_run(*, now: datetime, grace: timedelta) -> Q:
    """Last fanned out a grace period ago, or twice that after one more run, and so on,
    MAX_REFANS runs at most: while a backed-up queue still holds a run's commands,
    running it every grace period would queue them all again each time."""
    waits = [Q(refanned=n, claimed_at__lt=now - grace * 2**n) for n in range(MAX_REFANS)]
    return reduce(operator.or_, waits)  # and no run after the last: refanned=MAX_REFANS


def _update_unheld(rows: QuerySet[Any], **fields: Any) -> int:
    """`rows.update(**fields)` but for the rows another transaction holds, locked first
    and skipped: a row skipped is the next tick's.

    An UPDATE of several rows locks each as it reads it, in the order of the table or of
    an index, which no other writer shares: a tick held one event and waited for another
    that a subscriber's delete held (it locks the events that reached the subscriber in
    id order), while the delete waited for the one the tick held. PostgreSQL ended the
    deadlock by failing one of them, the delete (a 503) or the tick. Skipping what it
    would wait for, a tick waits for no one, and no other writer, nor a second tick (two
    beats by mistake), waits in a cycle with it."""
    locked = rows.order_by().select_for_update(no_key=True, skip_locked=True, of=("self",))
    with transaction.atomic():
        return rows.model._default_manager.filter(pk__in=locked.values("pk")).update(**fields)


def _updated_unheld(rows: QuerySet[Any], **fields: Any) -> set[Any]:
    """`_update_unheld`, returning the pks of the rows it updated: those `rows` still
    holds once each is locked, for a phase that re-sends only what it updated.

    A row read as stalled may have moved on before its update: a notification whose
    echo recorded a step meanwhile, or one a second tick (two beats by mistake) re-sent
    already; a step claimed and put back on the schedule for later (a send that failed
    for now). Updated and re-sent as read, a notification waiting out a day's delay was
    made idle again at once (read by every tick, and its echo sent twice when the delay
    ended), and two ticks each re-sent it; the step was stamped as sent, though no task
    would come for it: sent only a grace period after it was due, and only once its
    queue was empty, for good under one that never emptied."""
    locked = rows.order_by().select_for_update(no_key=True, skip_locked=True, of=("self",))
    with transaction.atomic():
        pks = set(locked.values_list("pk", flat=True))
        if pks:
            rows.model._default_manager.filter(pk__in=pks).update(**fields)
    return pks


def _lost_give_up(*, now: datetime, stale: timedelta) -> int:
    """End the steps of ended notifications whose tasks were lost, with their messages;
    return how many steps. A notification that ended (canceled, failed) while its step
    was sending leaves the step to its task; a task lost with its worker left the step
    processing for good, and its message sending. Once the claim is stale, both end,
    never sent again; a late success still marks its message sent.

    Together, each step and its message skipped if another transaction holds either
    (as `_update_unheld` skips them), and left to the next tick. As two UPDATEs of
    several rows, the tick locked the messages as it read them (the table's order),
    a subscriber's delete in its steps' order: each held one the other waited for,
    and PostgreSQL ended one of them (the delete, a 503)."""
    lost = Step.objects.filter(
        ~of_running_notification(), status=Step.Status.PROCESSING, claimed_at__lt=now - stale
    )
    with transaction.atomic():
        locked = lost.order_by().select_for_update(no_key=True, skip_locked=True, of=("self",))
        step_pks = set(locked.values_list("pk", flat=True))
        if not step_pks:
            return 0
        sending = Message.objects.filter(step_id__in=step_pks, status=Message.Status.SENDING)
        messages = dict(
            sending.order_by()
            .select_for_update(no_key=True, skip_locked=True)
            .values_list("pk", "step_id")
        )
        # A message another transaction holds (its late record, a delete): its step too.
        step_pks -= set(sending.exclude(pk__in=list(messages)).values_list("step_id", flat=True))
        Message.objects.filter(
            pk__in=[pk for pk, step_pk in messages.items() if step_pk in step_pks]
        ).update(status=Message.Status.FAILED, error=LOST_WITH_ITS_TASK)
        return Step.objects.filter(pk__in=step_pks).update(
            status=Step.Status.CANCELED, error=LOST_WITH_ITS_TASK, completed_at=now
        )


# A tick every NORM_RECONCILE_INTERVAL (10 s) while the database or the broker is away.
_reconcile_failed = Quieted()


def reconcile() -> dict[str, int]:
    """Re-enqueue work that stalled: lost broker messages, dead workers, long delays.

    Works from the database alone, so it recovers even from an emptied broker; every
    stage claims its row, so enqueueing something twice is harmless. A tick the database
    or the broker fails is a warning, one a minute, and not retried: the next tick is its
    retry (raised, each tick was Celery's ERROR and traceback, six a minute for as long as
    the database was away). What it did before the failure stands: each write is whole.
    """
    try:
        return _reconcile()
    except (OperationalError, InterfaceError, *pipeline.BROKER_ERRORS) as exc:
        # A class is hashable: mypy, with Django's errors as Any, takes type[Any] for none.
        if (held := _reconcile_failed.due(type(exc))) is not None:  # type: ignore[arg-type]
            logger.warning(
                "reconcile: a tick failed, the next one tries again: %s (%d more such ticks "
                "since the last such line)",
                error_text(exc),
                held,
            )
        return {"events": 0, "cancels": 0, "notifications": 0, "steps": 0}


def _reconcile() -> dict[str, int]:
    """`reconcile`, its database's and broker's failures aside: each kind of stalled work
    in turn (trigger events, cancels, steps, notifications), each queue's backlog read
    once a tick (`rooms`)."""
    now = timezone.now()
    grace = timedelta(seconds=settings.NORM_RECONCILE_GRACE)
    stale = timedelta(seconds=settings.NORM_STALE_CLAIM_SECONDS)
    rooms: dict[str, int] = {}  # by queue, each looked at once a run (_with_room)
    given_up_events, released_events = _stale_events_release(now=now, stale=stale)
    _short_fan_outs_release(now=now, grace=grace, rooms=rooms)
    events = _waiting_events_resend(now=now, grace=grace, rooms=rooms)
    cancels = _cancels_resend(now=now, grace=grace, rooms=rooms)
    released_steps = _stale_steps_release(now=now, stale=stale)
    lost_steps = _lost_give_up(now=now, stale=stale)
    steps = _due_steps_resend(now=now, grace=grace, rooms=rooms)
    notifications = _idle_notifications_resend(now=now, grace=grace, rooms=rooms)
    counts = {"events": events, "cancels": cancels, "notifications": notifications, "steps": steps}
    _reconcile_log(counts, released=(released_events, released_steps), lost=lost_steps)
    if given_up_events:
        # Named, so that an operator finds them (the admin's trigger events, by id).
        named = ", ".join(str(pk) for pk in sorted(given_up_events)[:10])
        more = len(given_up_events) - 10
        logger.warning(
            "reconcile: trigger event(s) %s%s failed, their fan-out never finished in "
            "NORM_MAX_CLAIMS runs (a fan-out that kills its worker?)",
            named,
            f" and {more} more" if more > 0 else "",
        )
    return counts


def _stale_events_release(*, now: datetime, stale: timedelta) -> tuple[set[int], int]:
    """Let go of the trigger events whose fan-out's claim went stale, failing those past
    NORM_MAX_CLAIMS; return those it failed and how many it let go."""
    # A run whose claim went stale never came back: its worker died (killed for memory,
    # say) or hung. Counted with the runs a bug ended, it bounds a fan-out that kills its
    # worker each time, which was run again every NORM_STALE_CLAIM_SECONDS for good; a
    # run that was only slow still ends the event processed when it finishes.
    stale_events = TriggerEvent.objects.filter(
        status=TriggerEvent.Status.PROCESSING, claimed_at__lt=now - stale
    )
    given_up_events = _updated_unheld(
        stale_events.filter(
            internal_errors__gte=settings.NORM_MAX_CLAIMS - 1, canceled_at__isnull=True
        ),
        status=TriggerEvent.Status.FAILED,
        internal_errors=F("internal_errors") + 1,
        error=never_finished(),
        processed_at=now,
    )
    released_events = _update_unheld(
        stale_events,
        status=TriggerEvent.Status.RECEIVED,
        reenqueued_at=None,
        internal_errors=F("internal_errors") + 1,
    )
    # A canceled event no run may claim: one released above (its run died after the
    # cancel), or by a run the broker refused, ends here rather than received for good.
    _update_unheld(
        TriggerEvent.objects.filter(status=TriggerEvent.Status.RECEIVED, canceled_at__isnull=False),
        status=TriggerEvent.Status.CANCELED,
    )
    return given_up_events, released_events


def _database_now() -> datetime:
    """The database's clock, which every host's writes and reads meet on. SQLite (the
    embedded default) has no such function, and no hosts to meet: this process's."""
    if connection.vendor != "postgresql":
        return timezone.now()
    with connection.cursor() as cursor:
        cursor.execute("SELECT STATEMENT_TIMESTAMP()")
        now: datetime = cursor.fetchone()[0]
    return now


def _short_fan_outs_release(*, now: datetime, grace: timedelta, rooms: dict[str, int]) -> None:
    """Let go of the processed events whose fan-out came up short, for a rerun, once their
    commands' queue is empty; while it is not, keep their check's window open."""
    # Subscriber commands lost with the broker leave a processed event with fewer
    # notifications than recipients: fan it out again (it skips those reached).
    # Each event's notifications counted on their own (a subquery by trigger_event_id):
    # counted over a join of all the last hour's events, the planner, which takes an
    # event to have the average number of notifications, read the whole table each
    # tick (110 ms for 2,000 events of one notification among 600,000; now 2 ms).
    of_event = Notification.objects.filter(trigger_event=OuterRef("pk")).order_by()
    reached = of_event.values("trigger_event").annotate(n=Count("*")).values("n")
    short = (
        TriggerEvent.objects.filter(
            status=TriggerEvent.Status.PROCESSED,
            canceled_at__isnull=True,
            # On the database's clock, as a subscriber's delete reads the window
            # (fan_outs_forget): on this worker's, seconds behind the web host's, an event
            # the delete found past its hour was still checked here, short of the deleted
            # recipient, and fanned out to it again. Read first, a constant, not Now(): the
            # planner knows how few events are within a time, not within a function's.
            recheck_from__gt=_database_now() - FANOUT_RECHECK,
        )
        .alias(reached=Coalesce(Subquery(reached), 0))
        .filter(reached__lt=F("recipients"))
    )
    # None while its commands' queue holds any: those an event lacks may be among them,
    # behind other events' (its first ones too, none of its notifications made yet), and
    # each run would queue them again. Its window is kept meanwhile (FANOUT_RECHECK), or
    # a backlog longer than it lost the event's check for good.
    room = _with_room(pipeline.SUBSCRIBER, rooms)
    _update_unheld(
        short.exclude(room).filter(
            refanned__lt=MAX_REFANS, recheck_from__lt=now - FANOUT_RECHECK / 2
        ),
        recheck_from=now,
    )
    quiet = (
        short.filter(room)
        .filter(_quiet_for_twice_each_run(now=now, grace=grace))
        .exclude(
            # Only once its fan-out went quiet: a broadcast still being worked through
            # (its commands queued behind others) is not lost.
            Exists(of_event.filter(created_at__gte=now - grace))
        )
    )
    _update_unheld(
        TriggerEvent.objects.filter(
            pk__in=list(quiet.values_list("pk", flat=True)[:REDRIVE_BATCH]),
            status=TriggerEvent.Status.PROCESSED,
            canceled_at__isnull=True,
        ),
        status=TriggerEvent.Status.RECEIVED,
        reenqueued_at=None,
        refanned=F("refanned") + 1,
    )


def _waiting_events_resend(*, now: datetime, grace: timedelta, rooms: dict[str, int]) -> int:
    """Send the workflow worker again the events still received; return how many."""
    # Received but not claimed: lost with the broker, or still queued behind others.
    # The broker cannot be asked which, so each is re-sent once per grace period.
    waiting = TriggerEvent.objects.filter(
        status=TriggerEvent.Status.RECEIVED, canceled_at__isnull=True, created_at__lt=now - grace
    ).filter(Q(reenqueued_at__isnull=True) | Q(reenqueued_at__lt=now - grace))
    events = _to_queues(waiting, pipeline.WORKFLOW, rooms)
    _update_unheld(TriggerEvent.objects.filter(pk__in=[pk for pk, _ in events]), reenqueued_at=now)
    _resend(pipeline.WORKFLOW, events)
    return len(events)


def _cancels_resend(*, now: datetime, grace: timedelta, rooms: dict[str, int]) -> int:
    """Send again the cancel tasks the broker may have lost; return how many."""
    # A cancel whose task the broker lost (flushed, a worker killed) would leave the rest
    # of its notifications to their echoes, one waiting out a day's delay shown running
    # all day. Sent again once per grace period until a run gets to the end and clears
    # `cancel_task_at`; read by its partial index, which holds only cancels under way,
    # so no window (a day's, say) is needed to keep a tick cheap, and none gives up on a
    # cancel whose broker was down longer than one. A duplicate ends nothing twice.
    # Each re-send as the events': behind a backlog of its queue, a bulk cancel of
    # thousands added a batch of duplicates every grace period. Meanwhile the echo and
    # the message worker end its notifications as they reach them.
    under_way = TriggerEvent.objects.filter(cancel_task_at__lt=now - grace)
    cancels = _to_queues(under_way, pipeline.CANCEL, rooms)
    _update_unheld(
        TriggerEvent.objects.filter(pk__in=[pk for pk, _ in cancels], cancel_task_at__isnull=False),
        cancel_task_at=now,
    )
    _resend(pipeline.CANCEL, cancels)
    return len(cancels)


def _stale_steps_release(*, now: datetime, stale: timedelta) -> int:
    """Put back on the schedule the steps whose send's claim went stale; return how many."""
    # Only steps of running notifications: a canceled one's step is never sent.
    return _update_unheld(
        Step.objects.filter(
            of_running_notification(), status=Step.Status.PROCESSING, claimed_at__lt=now - stale
        ),
        status=Step.Status.SCHEDULED,
        enqueued_at=None,
    )


def _due_steps_resend(*, now: datetime, grace: timedelta, rooms: dict[str, int]) -> int:
    """Send the message worker again the steps due and not sent; return how many."""
    # The longest overdue first, in the order of the (status, due_at) index, so that a
    # batch is the index's first rows: in Step's default order (position), each tick
    # sorted every due step to keep a batch (0.9 s a tick while a broadcast's 100,000
    # steps came due at once, over 5,000,000 steps; 20 ms so).
    due = Step.objects.filter(
        status=Step.Status.SCHEDULED,
        due_at__lte=now,
        notification__status=Notification.Status.RUNNING,
    ).order_by("due_at")
    # Never sent: a delay or a send's retry longer than the broker's countdown, whose
    # only sender is this (or a stale claim released, its message redelivered once at
    # most). None of them is a duplicate of a message queued, so a busy queue is no
    # reason to hold them: held, a day's delay waited out the end of every broadcast,
    # and for good under a queue that never emptied.
    workflow = "notification__workflow_id"
    steps = list(due.filter(enqueued_at__isnull=True).values_list("pk", workflow)[:REDRIVE_BATCH])
    if len(steps) < REDRIVE_BATCH:  # sent a grace period ago: lost, or still queued
        resent = due.filter(enqueued_at__lt=now - grace, due_at__lt=now - grace)
        resent = resent.filter(_with_room(pipeline.MESSAGE, rooms, workflow))
        steps += list(resent.values_list("pk", workflow)[: REDRIVE_BATCH - len(steps)])
    # One UPDATE, not one each; a step re-sent only if still due once locked (see
    # _updated_unheld).
    touched = _updated_unheld(
        Step.objects.filter(
            pk__in=[pk for pk, _ in steps], status=Step.Status.SCHEDULED, due_at__lte=now
        ),
        enqueued_at=now,
    )
    steps = [(pk, workflow) for pk, workflow in steps if pk in touched]
    _resend(pipeline.MESSAGE, [(pk, pipeline.queue_of(pipeline.MESSAGE, w)) for pk, w in steps])
    return len(steps)


def _idle_notifications_resend(*, now: datetime, grace: timedelta, rooms: dict[str, int]) -> int:
    """Send the echo worker again the active notifications left idle; return how many."""
    # In the order of the (status, updated_at) index, so PostgreSQL reads only the
    # notifications quiet for a grace period, not every active one (a broadcast waiting
    # out a day's delay), to check each for an open step. A batch per status, the
    # quietest first: in one, a backlog of pending notifications (a broadcast's first
    # echoes queued behind others) came before every running one, for as long as it lasted.
    open_step = Step.objects.filter(notification=OuterRef("pk"), status__in=OPEN_STEP)
    notifications: list[tuple[int, str]] = []
    for status in ACTIVE:
        idle = (
            Notification.objects.filter(status=status, updated_at__lt=now - grace)
            .filter(_with_room(pipeline.ECHO, rooms))
            .exclude(Exists(open_step))
            .order_by("updated_at")
        )
        notifications += list(idle.values_list("pk", "workflow_id")[:REDRIVE_BATCH])
    # Re-sent only if still idle once locked (see _updated_unheld): an echo that recorded
    # a step meanwhile set the notification quiet until the step is due.
    touched = _updated_unheld(
        Notification.objects.filter(
            pk__in=[pk for pk, _ in notifications], status__in=ACTIVE, updated_at__lt=now - grace
        ),
        updated_at=now,
    )
    notifications = [(pk, workflow) for pk, workflow in notifications if pk in touched]
    _resend(
        pipeline.ECHO, [(str(pk), pipeline.queue_of(pipeline.ECHO, w)) for pk, w in notifications]
    )
    return len(notifications)


def _resend(stage: pipeline.Stage, rows: list[tuple[Any, str]]) -> None:
    """Send `stage` again for each (argument, queue) of `rows`: a batch to each queue
    (pipeline.send_each), not a round trip to Redis each, up to REDRIVE_BATCH a kind."""
    by_queue: dict[str, list[tuple[Any, ...]]] = {}
    for argument, queue in rows:
        by_queue.setdefault(queue, []).append((argument,))
    for queue, calls in by_queue.items():
        pipeline.send_each(stage, calls, queue=queue)


def _to_queues(
    events: QuerySet[TriggerEvent], stage: pipeline.Stage, rooms: dict[str, int]
) -> list[tuple[int, str]]:
    """Of `events`, a batch of those whose queue for `stage` has room (_with_room), each
    with that queue."""
    rows = events.filter(_with_room(stage, rooms)).values_list("pk", "workflow_id")
    return [(pk, pipeline.queue_of(stage, workflow_id)) for pk, workflow_id in rows[:REDRIVE_BATCH]]


def _with_room(stage: pipeline.Stage, rooms: dict[str, int], workflow: str = "workflow_id") -> Q:
    """The rows (by their workflow, the field `workflow`) whose queue for `stage` has room
    (_room): `stage`'s own, or a routed workflow's (queue_of). Each queue is looked at
    once a run, kept in `rooms`.

    A filter, so that those of a queue without room are left out before a batch is taken:
    taken first, a flood of more than a batch in the workflows queue filled every batch,
    and a routed workflow's trigger lost with the broker waited, its own queue empty, for
    the flood."""
    routed = settings.NORM_WORKFLOW_QUEUES
    for queue in {stage.queue, *routed.values()}:
        if queue not in rooms:
            rooms[queue] = _room(queue)
    if rooms[stage.queue]:
        return ~Q(**{f"{workflow}__in": [w for w, q in routed.items() if not rooms[q]]})
    return Q(**{f"{workflow}__in": [w for w, q in routed.items() if rooms[q]]})


def _room(queue: str) -> int:
    """How many messages the reconciler may re-send to `queue` this run: a batch if the
    queue is empty, else none.

    The broker cannot say whether a row's message is lost or only queued behind others,
    so the reconciler re-sends what stayed quiet for a grace period. Behind a backlog
    longer than that (a restart, a large broadcast), every row in it is quiet, and each
    run re-sent a batch of duplicates to the end of the queue they were waiting in:
    under `make run`, 2,650 notifications at once grew the broker from 2,500 messages
    to 18,000 in eleven minutes, completing ever fewer. Any message still queued may be
    the very one a row waits for, so nothing is re-sent until the queue is empty (its
    workers hold what they took): then what is still quiet was lost, and found a backlog
    later, not never."""
    return 0 if pipeline.backlog(queue) else REDRIVE_BATCH


def _reconcile_log(counts: dict[str, int], *, released: tuple[int, int], lost: int) -> None:
    """One line when a tick re-drove something, none for an idle one (every 10 s). A
    claim gone stale is a worker that died or hung mid-task: a warning, as it may recur."""
    if any(released) or lost:
        logger.warning(
            "reconcile: claims older than NORM_STALE_CLAIM_SECONDS (a worker died or hung): "
            "%d trigger event(s) and %d step(s) run again, %d step(s) of ended "
            "notifications canceled unsent",
            *released,
            lost,
        )
    if any(counts.values()):
        logger.info(
            "reconcile: enqueued again %d trigger event(s), %d cancel(s), %d step(s) and "
            "%d notification(s) that stalled",
            counts["events"],
            counts["cancels"],
            counts["steps"],
            counts["notifications"],
        )
