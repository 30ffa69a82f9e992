"""Operations on notifications under way: an admin's retry of a failed one, and a cancel, of
listed notifications or of all of a trigger's, CANCEL_CHUNK to a transaction, the rest
handed to a task once a request's budget is spent.

Task: workflows.tasks.trigger_cancel_finish (a cancel's rest). Called by workflows.admin,
notify.services and notify.admin, and by the echo and the step bookkeeping
(notification_cancel); gives a canceled step's message up with common's messages_give_up."""

from __future__ import annotations

import time
import uuid
from datetime import datetime

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from config import pipeline
from messaging.models import Message
from notify.models import TriggerEvent
from workflows.models import Notification, Step
from workflows.services.common import messages_give_up

# Notifications a trigger's cancel ends in one transaction (see _trigger_notifications_cancel).
CANCEL_CHUNK = 2000
# Iterable as an Enum: mypy without Django's stubs sees a class of Any.
_OTHER_THAN = {status: [s for s in Step.Status if s != status] for status in Step.Status}  # type: ignore[attr-defined]
CANCELED_BEFORE_RETRY = (
    "the notification was canceled while this message waited to be sent again: not sent again"
)


def notification_retry(*, notification: Notification) -> bool:
    """Run a failed notification again from its failed steps (or its failed bridge call);
    not one whose trigger was canceled."""
    with transaction.atomic():
        # Checked under the trigger's row lock, which the cancel's UPDATE of canceled_at
        # waits for: a cancel committed first is seen here; one committed after finds
        # this notification running and cancels it. Checked before, a cancel between the
        # check and the reopening found it failed (final), and the retry then sent.
        # NO KEY: the fan-out's inserts of notifications are not held up.
        canceled = (
            TriggerEvent.objects.select_for_update(no_key=True)
            .filter(pk=notification.trigger_event_id)
            .values_list("canceled_at", flat=True)
            .first()
        )
        if canceled is not None:
            return False
        reopened = Notification.objects.filter(
            pk=notification.pk, status=Notification.Status.FAILED
        ).update(
            status=Notification.Status.RUNNING,
            error="",
            error_code="",
            completed_at=None,
            internal_errors=0,
            bridge_attempts=0,
        )
        if not reopened:
            return False
        # Every failed step: the workflow went on past each whose message failed for
        # good (step_undelivered), and ended naming the last; reopening that one alone,
        # the notification failed again naming the one before, sent by a second retry
        # only. Or the step canceled (by step_retry_later) for a send that failed for now
        # after the notification had failed: left out of the state, the bridge would
        # name it again, and recording it again would break the unique constraint.
        failed = list(
            notification.steps.filter(
                status__in=(Step.Status.FAILED, Step.Status.CANCELED)
            ).values_list("pk", flat=True)
        )
        if failed:
            # A fresh budget of send attempts (the provider counts them on the message).
            # Not for a message delivered after all (by a task whose claim had gone stale,
            # while the task holding it failed): the message worker finds it sent and
            # completes the step instead of sending it again.
            Message.objects.filter(step_id__in=failed).exclude(status=Message.Status.SENT).update(
                status=Message.Status.SENDING, attempts=0, error=""
            )
            # The echo waits until none of them is open (OPEN_STEP), then asks the bridge.
            Step.objects.filter(pk__in=failed).update(
                status=Step.Status.SCHEDULED,
                due_at=timezone.now(),
                attempts=0,
                error="",
                enqueued_at=timezone.now(),
                completed_at=None,
            )
            for step_pk in failed:
                pipeline.enqueue_on_commit(
                    pipeline.MESSAGE, step_pk, workflow=notification.workflow_id
                )
        else:
            pipeline.enqueue_on_commit(
                pipeline.ECHO, str(notification.pk), workflow=notification.workflow_id
            )
    return True


def notification_cancel(*, notification: Notification) -> bool:
    """Stop a notification that has not finished; a step already sending finishes."""
    return notifications_cancel(notification_ids=[notification.pk]) > 0


def notifications_cancel(
    *, notification_ids: list[uuid.UUID] | None = None, trigger_event_id: int | None = None
) -> int:
    """Cancel unfinished notifications, those listed or all of a trigger's, and their
    waiting steps; return how many."""
    if (notification_ids is None) == (trigger_event_id is None):
        raise ValueError("name the notifications or the trigger event to cancel")
    now = timezone.now()
    if trigger_event_id is not None:
        return _trigger_notifications_cancel(trigger_event_id=trigger_event_id, now=now)[0]
    unfinished = Notification.objects.filter(pk__in=notification_ids).exclude(
        status__in=Notification.FINAL
    )
    with transaction.atomic():
        return _listed_notifications_cancel(list(unfinished.values_list("pk", flat=True)), now)


def cancel_deadline() -> float:
    """When a request's cancels stop, NORM_CANCEL_BUDGET_SECONDS from now (time.monotonic()):
    one for the whole request, which may cancel several triggers (the admin's action)."""
    return time.monotonic() + settings.NORM_CANCEL_BUDGET_SECONDS


def trigger_notifications_cancel(*, trigger_event: TriggerEvent, until: float) -> tuple[int, bool]:
    """A canceled trigger's unfinished notifications, until `until` (cancel_deadline; a
    chunk at least); the rest, if any, handed to the cancel task, on the queue its
    workflow's fan-out goes to. Return how many it canceled, and whether it handed any on.

    For a request: at 200,000 in 15-18 s, a broadcast's 1,000,000 would take 80 s, and
    gunicorn kills the worker at 30 s, the client getting a 502 and the rest of the
    cancel left undone."""
    canceled, finished = _trigger_notifications_cancel(
        trigger_event_id=trigger_event.pk, now=timezone.now(), until=until
    )
    if not finished:
        # Marked before it is handed on, so that a task the broker loses is sent again.
        TriggerEvent.objects.filter(pk=trigger_event.pk).update(cancel_task_at=timezone.now())
        pipeline.enqueue_on_commit(
            pipeline.CANCEL, trigger_event.pk, workflow=trigger_event.workflow_id
        )
    return canceled, not finished


def trigger_cancel_finish(*, trigger_event_id: int) -> int:
    """What a trigger's cancel left to its task: the rest of its unfinished notifications.
    Nothing of a trigger not canceled. Safe to run twice, or beside another cancel of the
    trigger: each chunk ends only notifications still unfinished."""
    if not TriggerEvent.objects.filter(pk=trigger_event_id, canceled_at__isnull=False).exists():
        return 0
    return notifications_cancel(trigger_event_id=trigger_event_id)


def _trigger_notifications_cancel(
    *, trigger_event_id: int, now: datetime, until: float | None = None
) -> tuple[int, bool]:
    """All of a trigger's unfinished notifications, CANCEL_CHUNK to a transaction.

    In one, a broadcast's 200,000 took 15-22 s, every row locked until the end (its
    echoes waiting on them) and none seen canceled before the last was (its steps still
    claimed and sent meanwhile). Chunks are safe: the trigger's `canceled_at` committed
    first, so an echo that reads it stops its notification itself, and each notification
    still ends with its steps, in one transaction. In the order of the unique
    (trigger_event, subscriber) index, so each chunk is a range of it, not a read of all
    the trigger's notifications (by id) or of the whole table (by the primary key).
    Stops after the chunk that reaches `until` (time.monotonic()); return how many it
    canceled, and whether it got to the end.

    Keeps the trigger's `cancel_task_at` up to date for the reconciler: a cancel task
    under way touches it after each chunk (a million notifications take longer than the
    grace period, and are not lost), and a cancel that got to the end clears it, no
    task left to send again."""
    of_trigger = (
        Notification.objects.filter(trigger_event_id=trigger_event_id)
        .exclude(status__in=Notification.FINAL)
        .order_by("subscriber_id")
    )
    task_due = TriggerEvent.objects.filter(pk=trigger_event_id, cancel_task_at__isnull=False)
    canceled, after = 0, 0
    while True:
        chunk = list(
            of_trigger.filter(subscriber_id__gt=after).values_list("pk", "subscriber_id")[
                :CANCEL_CHUNK
            ]
        )
        with transaction.atomic():
            canceled += _listed_notifications_cancel([pk for pk, _ in chunk], now)
        if len(chunk) < CANCEL_CHUNK:
            task_due.update(cancel_task_at=None)
            return canceled, True
        task_due.update(cancel_task_at=timezone.now())
        if until is not None and time.monotonic() >= until:
            return canceled, False
        after = chunk[-1][1]


def _listed_notifications_cancel(ids: list[uuid.UUID], now: datetime) -> int:
    """Cancel the notifications `ids` that are unfinished, and their waiting steps, in the
    caller's transaction; return how many."""
    if not ids:
        return 0
    # Locked in id order first, as a subscriber's delete locks its notifications. The
    # UPDATE alone locked them as it read them, in the table's order (a bitmap scan of
    # the primary key, for a chunk of a large table): it held one of a subscriber's and
    # waited for another that the subscriber's delete held, waiting for the first, a
    # deadlock that PostgreSQL ended by failing one of them (the delete, a 503).
    unfinished = (
        Notification.objects.filter(pk__in=ids)
        .exclude(status__in=Notification.FINAL)
        .order_by("pk")
        .select_for_update(no_key=True)
    )
    canceled = Notification.objects.filter(pk__in=unfinished.values("pk")).update(
        status=Notification.Status.CANCELED, completed_at=now
    )
    # Each status as "none of the others", which the (status, due_at) index cannot serve:
    # as `status = …`, PostgreSQL read it when its statistics (not yet counting the
    # steps a broadcast recorded since the last ANALYZE, or those this cancel ended)
    # called the status rare, and each chunk of a trigger's cancel then read every
    # scheduled step, or every one the chunks before it had canceled (90 ms a chunk
    # over 200,000); so it reads them by notification.
    of_listed = Step.objects.filter(notification_id__in=ids)
    # Only scheduled steps: one a worker is sending (processing) is left to finish.
    of_listed.exclude(status__in=_OTHER_THAN[Step.Status.SCHEDULED]).update(
        status=Step.Status.CANCELED, completed_at=now
    )
    # A step waiting to be sent again (after a send that failed for now, or an admin
    # retry) has its message `sending`, which read as on its way for good. Not that of
    # a step a worker took meanwhile: its task ends it.
    messages_give_up(
        of_listed.exclude(status__in=_OTHER_THAN[Step.Status.CANCELED]).values("pk"),
        CANCELED_BEFORE_RETRY,
    )
    return canceled
