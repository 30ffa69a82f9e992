"""Stage 5's step bookkeeping, called by the message worker (messaging.services, task
messaging.tasks.message_send): a due step claimed, then completed, skipped, failed, left
undelivered or put back on the schedule; a step that closes hands its notification back
to the echo worker.

Shares `of_running_notification` (a step filter an UPDATE can re-check) with the
reconciler; fails a notification with echo's notification_fail, and stops a step of a
canceled trigger with operations' notification_cancel."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Case, Exists, F, OuterRef, Q, QuerySet, Subquery, When
from django.db.models.functions import Coalesce
from django.utils import timezone

from config import pipeline
from messaging.models import Message
from workflows.models import Notification, Step
from workflows.services.common import GIVEN_UP, internal_error_text, messages_give_up
from workflows.services.echo import notification_fail, skipped_result
from workflows.services.operations import notification_cancel

# The echo worker sets a step's due time by its clock and the message worker compares
# it with its own: a message worker a little behind would find a step due now not due
# yet, and send it again for later (_send_when_due). A second early is harmless.
CLOCK_SKEW = timedelta(seconds=1)


def of_running_notification(*, of_live_trigger: bool = False) -> Exists:
    """A step filter: its notification is running (and its trigger not canceled).

    For an UPDATE that claims or releases steps, in place of `notification__status`:
    Django writes a filter across a join as `WHERE id IN (SELECT ...)`, and when the
    UPDATE waits for a row another transaction is changing, PostgreSQL re-checks only
    the outer WHERE against the new row, so the step's own conditions (still
    `scheduled`?) would not be checked again: two tasks could claim one step and send
    it twice. With EXISTS the step's conditions stay in the outer WHERE.
    """
    running = Notification.objects.filter(
        pk=OuterRef("notification_id"), status=Notification.Status.RUNNING
    )
    if of_live_trigger:
        running = running.filter(trigger_event__canceled_at__isnull=True)
    return Exists(running)


def step_claim(*, step_id: int, claim: str = "", resumed: datetime | None = None) -> Step | None:
    """Take a due, scheduled step of a running notification; None if another run has it.

    `claim` is the task's id. A task that failed on a database error after claiming
    (PostgreSQL restarted) is retried under the same id, and takes its claim back at
    once instead of leaving the step to the reconciler's NORM_STALE_CLAIM_SECONDS. So
    does a task redelivered after its worker died. Either may repeat a send cut off
    between the provider and the commit: the one repeat allowed.

    Each claim counts toward NORM_MAX_CLAIMS but a retry's that `resumed` the claim as
    its run took it (at `claimed_at`): the database failed that run, not its worker. A
    redelivery of the retry carries the same time, which the retry's claim has moved on
    from, so a send that kills its worker is still counted each time.
    """
    now = timezone.now()
    claim = claim or uuid.uuid4().hex
    counted: Any = F("attempts") + 1
    if resumed is not None:
        counted = Case(
            When(
                status=Step.Status.PROCESSING,
                claimed_by=claim,
                claimed_at=resumed,
                then=F("attempts"),
            ),
            default=F("attempts") + 1,
        )
    claimed = (
        # Not of a canceled trigger: its cancel ends the notifications a chunk at a time,
        # the last ones after it has answered (or, cut off, never), and their steps
        # would be sent meanwhile.
        Step.objects.filter(of_running_notification(of_live_trigger=True), pk=step_id)
        .filter(
            Q(status=Step.Status.SCHEDULED, due_at__lte=now + CLOCK_SKEW)
            | Q(status=Step.Status.PROCESSING, claimed_by=claim)
        )
        .update(
            status=Step.Status.PROCESSING,
            claimed_at=now,
            claimed_by=claim,
            attempts=counted,
        )
    )
    if not claimed:
        # Stopped as the echo stops it: left running, the reconciler would send its due
        # step here again each grace period, for good.
        of_canceled = Notification.objects.filter(
            steps__pk=step_id,
            status=Notification.Status.RUNNING,
            trigger_event__canceled_at__isnull=False,
        ).first()
        if of_canceled is not None:
            notification_cancel(notification=of_canceled)
        else:
            _send_when_due(step_id, now=now)
        return None
    # Claims no send came back from (a send that returned counts on its message), and
    # the status of its message, if an earlier attempt stored one (see step_skip).
    message = Message.objects.filter(step=OuterRef("pk"))
    try:
        step = (
            Step.objects.select_related("notification__subscriber", "notification__client")
            .annotate(
                unanswered=F("attempts") - Coalesce(Subquery(message.values("attempts")), 0),
                message_status=Subquery(message.values("status")),
            )
            .get(pk=step_id)
        )
    except Step.DoesNotExist:  # its subscriber was deleted since, with it: nothing to send
        return None
    if step.unanswered > settings.NORM_MAX_CLAIMS:
        step_fail(
            step=step,
            code="TooManyClaims",
            message=f"taken {step.unanswered - 1} times by workers that never finished it (a "
            "send that kills its worker?); given up after NORM_MAX_CLAIMS",
        )
        return None
    return step


def _send_when_due(step_id: int, *, now: datetime) -> None:
    """Send a step this worker's clock finds not due yet again, for when it is.

    A step sent as due (no countdown: a channel step, a zero delay, the reconciler's
    re-send) has its due time by the sender's clock: a message worker more than
    CLOCK_SKEW behind dropped it, and it waited for the reconciler's re-send, a grace
    period (a minute) for every email of a worker whose clock is a few seconds off.
    Celery counts the countdown on this worker's clock, which the claim reads the due
    time with. Once only (`enqueued_at` is then before the due time, as for a step sent
    with a countdown), and not one due later than the broker keeps a countdown: that is
    no clock's skew, and waits for the reconciler as a long delay does."""
    due = Step.objects.filter(
        of_running_notification(of_live_trigger=True),
        pk=step_id,
        status=Step.Status.SCHEDULED,
        due_at__gt=now + CLOCK_SKEW,
        due_at__lte=now + timedelta(seconds=settings.NORM_BROKER_MAX_COUNTDOWN),
        enqueued_at__gte=F("due_at"),
    )
    first = due.values_list("due_at", "notification__workflow_id").first()
    if first is not None and due.filter(due_at=first[0]).update(enqueued_at=now):
        countdown = (first[0] - now).total_seconds()
        pipeline.enqueue_on_commit(
            pipeline.MESSAGE, step_id, workflow=first[1], countdown=countdown
        )


def step_complete(*, step: Step, result: dict[str, Any]) -> None:
    """Complete a claimed step with the `result` the bridge replays as its state."""
    _step_finish(step, status=Step.Status.COMPLETED, result=result, error="")


def step_skip(*, step: Step, reason: str) -> None:
    """Skip a claimed step that cannot reach its subscriber; the notification goes on.

    Only by the task holding the claim (_held): one that read the step unreachable and
    stalled past NORM_STALE_CLAIM_SECONDS before skipping it (its worker paused) skipped
    the step a second task, which found it reachable (the address added back, its
    worker with a provider for the channel), was sending: recorded skipped, the bridge
    told so, though the email went out; and an earlier attempt's message given up."""
    result = skipped_result(step.type, step.notification)
    skipped = {"status": Step.Status.SKIPPED, "result": result, "error": reason}
    if getattr(step, "message_status", None) != Message.Status.SENDING:
        _step_finish(step, held=True, **skipped)
        return
    # An earlier attempt's message, on its way for good otherwise: a send that failed for
    # now (or one an admin retry reopened), and the subscriber's address removed since.
    # With the skip, in one transaction: the database lost between the two, the task's
    # retry found the step skipped (no claim to take back) and the message stayed
    # `sending` for good, which the reconciler (of processing steps) never moves.
    with transaction.atomic():
        _notification_locked(step)  # first: see there
        _message_locked(step)  # before the step: see there
        if _step_finish(step, held=True, **skipped):
            messages_give_up([step.pk], reason)


def _step_finish(step: Step, *, held: bool = False, **fields: Any) -> bool:
    """Close a claimed step (`held`: only while this task holds it, see _held) and hand
    its notification back to the echo worker; return whether it closed it.

    One UPDATE: in a caller's transaction (the message's update), the echo is enqueued
    when that commits; outside one, the UPDATE has committed when it is enqueued, and a
    transaction of its own would only add BEGIN and COMMIT."""
    rows = _held(step) if held else Step.objects.filter(pk=step.pk, status=Step.Status.PROCESSING)
    done = rows.update(completed_at=timezone.now(), **fields)
    if done and step.error:  # an earlier run's reason, which a bug's is its notification's too
        # After the commit: in the caller's transaction, which holds the message and the
        # step, locking the notification last would deadlock with a subscriber's delete
        # (see _notification_locked).
        transaction.on_commit(lambda: _bug_reason_cleared(step), robust=True)
    if done:
        # The claim read the step with its notification (select_related): no query.
        workflow = step.notification.workflow_id
        pipeline.enqueue_on_commit(pipeline.ECHO, str(step.notification_id), workflow=workflow)
    return bool(done)


def _bug_reason_cleared(step: Step) -> None:
    """Take the reason a bug in the ended step's run left on its notification
    (step_internal_error) off it: no longer the notification's, it showed in the activity
    API, until the bridge named the next step, as a failed call to the bridge being
    retried. Only this step's: another step an admin's retry reopened may wait on its own."""
    Notification.objects.filter(
        pk=step.notification_id,
        status=Notification.Status.RUNNING,
        error__startswith=step.notification_error(""),
    ).update(error="")


def _held(step: Step) -> QuerySet[Step]:
    """The step while the task that claimed it `step` still holds it. A send slower than
    NORM_STALE_CLAIM_SECONDS loses its claim to the reconciler and a second task: the
    first one's failure is no longer the step's (the second may deliver it, or already
    did and the workflow went on), so only the holder fails or reschedules it. A
    success counts from either: the message went out."""
    return Step.objects.filter(
        pk=step.pk, status=Step.Status.PROCESSING, claimed_by=step.claimed_by
    )


def _notification_locked(step: Step) -> None:
    """Lock the step's notification first in a transaction that changes the step and then
    its message, as a subscriber's delete, a cancel and the echo take it before its steps
    and messages. Taken last (by notification_fail) or not at all, a delete that held it
    and the message waited for the step this held, while this waited for the message: a
    deadlock, which PostgreSQL ended by failing one of them (the delete, a 503 from the
    API). NO KEY: a notification's steps inserted meanwhile are not held up."""
    Notification.objects.select_for_update(no_key=True).filter(pk=step.notification_id).exists()


def _message_locked(step: Step) -> None:
    """Lock the step's message (if it has one) before the step, in a transaction that
    ends a claimed step and then gives its message up. A send that outlasted its claim
    is recorded (messaging's record: the message, then the step, with no other lock,
    as every send is) while the task that took the step over fails, skips or cancels
    it: locking the step first, each held the row the other wanted next, a deadlock
    that PostgreSQL ended by failing the record (retried with backoff). The message
    first, the two wait for each other in the record's order, as a subscriber's delete
    does (the message, then the step). NO KEY, as the UPDATEs that follow lock it."""
    Message.objects.select_for_update(no_key=True).filter(step_id=step.pk).exists()


def step_fail(*, step: Step, code: str, message: str) -> None:
    """Fail a claimed step and its notification: a failure that halts the workflow."""
    with transaction.atomic():
        _notification_locked(step)
        _message_locked(step)  # before the step: see there
        now = timezone.now()
        failed = _held(step).update(status=Step.Status.FAILED, error=message, completed_at=now)
        if failed:
            messages_give_up([step.pk], message)
            notification_fail(
                notification_id=step.notification_id,
                code=code,
                message=step.notification_error(message),
            )
            # Another step an admin's retry reopened with this one (it reopens every
            # failed step), whose task had not taken it yet: its claim refused now, it
            # stayed scheduled in the failed notification, its message `sending` for
            # good. Canceled, as a cancel ends it; the next retry reopens it. Locked
            # first: one a task claims meanwhile is its task's, its message too.
            waiting = list(
                Step.objects.select_for_update(no_key=True)
                .filter(notification_id=step.notification_id, status=Step.Status.SCHEDULED)
                .order_by("pk")
                .values_list("pk", flat=True)
            )
            if waiting:
                reason = f"not sent: step '{step.step_id}' failed the notification first"
                Step.objects.filter(pk__in=waiting).update(
                    status=Step.Status.CANCELED, error=reason, completed_at=now
                )
                messages_give_up(waiting, reason)


def step_undelivered(*, step: Step, reason: str) -> None:
    """End a claimed channel step whose message failed for good, and go on with the
    workflow, as Novu's worker does: only an action step (or one its author marked to
    stop on failure) halts a Novu workflow, so an email refused for good does not keep
    the in-app message after it from its subscriber. Failing the notification here
    stopped every such workflow at its first undeliverable channel. It ends failed when
    the workflow ends, naming this step (_notification_end): a failed delivery still shows
    on it, and an admin's retry sends this step again.

    In the state the bridge gets, the step's result is a skipped one's (Novu's worker
    sends the in-app fallback for a step with no message to read). One UPDATE, as a
    completed step's: its message was failed before it."""
    _step_finish(
        step,
        held=True,
        status=Step.Status.FAILED,
        result=skipped_result(step.type, step.notification),
        error=reason,
    )


def step_retry_later(*, step: Step, message: str, backoff: float) -> None:
    """Put a step that failed transiently back on the schedule, `backoff` seconds out.
    A backoff longer than NORM_BROKER_MAX_COUNTDOWN waits in the database, as a long
    delay does: Redis would deliver it again after its visibility timeout."""
    now = timezone.now()
    due_at = now + timedelta(seconds=backoff)
    on_broker = backoff <= settings.NORM_BROKER_MAX_COUNTDOWN
    with transaction.atomic():
        # First: a step whose notification ended while it was sending is canceled here,
        # and then its message given up. One query more, for a send that failed for now.
        _notification_locked(step)
        released = (
            _held(step)
            .filter(of_running_notification())
            .update(
                status=Step.Status.SCHEDULED,
                due_at=due_at,
                enqueued_at=now if on_broker else None,
                error=message,
            )
        )
        if released:
            # Quiet until the step is due, as one waiting for a delay (see _step_record):
            # left at the step's recording, every reconcile read it for an open step while
            # its provider was down (a broadcast's notifications, each run, for hours).
            Notification.objects.filter(pk=step.notification_id).update(updated_at=due_at)
        if released and on_broker:
            workflow = step.notification.workflow_id  # read with the claim (select_related)
            pipeline.enqueue_on_commit(
                pipeline.MESSAGE, step.pk, workflow=workflow, countdown=backoff
            )
        elif not released:  # canceled (or failed) while it was sending: nothing more to try
            _message_locked(step)  # before the step: see there
            if _held(step).update(
                status=Step.Status.CANCELED, error=message, completed_at=timezone.now()
            ):
                messages_give_up([step.pk], message)


def step_internal_error(*, step_id: int, claim: str, exc: Exception) -> None:
    """A bug ended the message task holding the step under `claim` (its traceback
    logged): the reason on the step, its message (not one already sent) and its
    notification, and the step back on the schedule a grace period from now. After
    NORM_MAX_CLAIMS runs that never finished it (a send that returned does not count, as
    for step_claim's bound), it fails with code InternalError."""
    reason = internal_error_text(exc)
    sends = Message.objects.filter(step=OuterRef("pk")).values("attempts")
    step = (
        Step.objects.filter(pk=step_id, status=Step.Status.PROCESSING, claimed_by=claim)
        .select_related("notification")  # for step_fail and step_retry_later, as a claim's
        .annotate(unanswered=F("attempts") - Coalesce(Subquery(sends), 0))
        .first()
    )
    if step is None:
        return  # not claimed by this run (the bug came first), or another task's by now
    if step.unanswered >= settings.NORM_MAX_CLAIMS:
        step_fail(step=step, code="InternalError", message=f"{reason} ({GIVEN_UP})")
        return
    Message.objects.filter(step_id=step.pk, status=Message.Status.SENDING).update(error=reason)
    Notification.objects.filter(pk=step.notification_id, status=Notification.Status.RUNNING).update(
        error=step.notification_error(reason)
    )
    step_retry_later(step=step, message=reason, backoff=settings.NORM_RECONCILE_GRACE)
