"""Two transactions reaching the same rows at once, on real connections.

Each test holds a transaction open in one thread at the moment the other thread's
statement reaches the same row, so the second waits for the row lock (an UPDATE is then
re-checked against the row the first committed; an INSERT waits for the same key).
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import transaction
from django.utils import timezone

from config import pipeline
from messaging.models import Message
from tests.conftest import Enqueued, while_held
from tests.factories import MessageFactory, StepFactory, SubscriberFactory, TriggerEventFactory
from workflows.models import Notification, Step
from workflows.services import bookkeeping, fanout, operations, reconciler

pytestmark = pytest.mark.django_db(transaction=True)


def test_two_tasks_claiming_one_step_at_once_one_wins() -> None:
    step = StepFactory()

    first, second = while_held(
        lambda: bookkeeping.step_claim(step_id=step.pk, claim="task-a"),
        lambda: bookkeeping.step_claim(step_id=step.pk, claim="task-b"),
    )

    step.refresh_from_db()
    assert first is not None and second is None
    assert (step.claimed_by, step.attempts) == ("task-a", 1)


def test_the_reconciler_leaves_a_stale_claim_alone_if_it_completes_meanwhile(
    enqueued: Enqueued,
) -> None:
    step = StepFactory()
    long_ago = timezone.now() - timedelta(hours=1)
    Step.objects.filter(pk=step.pk).update(
        status=Step.Status.PROCESSING, claimed_at=long_ago, claimed_by="slow-task"
    )

    while_held(
        lambda: Step.objects.filter(pk=step.pk, status=Step.Status.PROCESSING).update(
            status=Step.Status.COMPLETED, completed_at=timezone.now()
        ),
        reconciler.reconcile,
    )

    step.refresh_from_db()
    assert step.status == Step.Status.COMPLETED  # not reopened, so not sent again
    assert enqueued.of(pipeline.MESSAGE) == []


def test_two_chunks_of_one_fanout_reaching_the_same_subscribers_do_not_deadlock(
    enqueued: Enqueued,
) -> None:
    """Two topics of one trigger share members: their chunks run at once on two workers.
    The first holds `ann`'s notification while the second chunk starts, then takes
    `bob`'s. Inserted in the order given, the second would hold `bob` and wait for
    `ann`: a deadlock, and one chunk retried."""
    event = TriggerEventFactory()
    ann, bob = (SubscriberFactory(client=event.client, subscriber_id=s) for s in ("ann", "bob"))

    while_held(
        lambda: fanout.notifications_create(trigger_event=event, subscribers=[ann]),
        lambda: fanout.notifications_create(trigger_event=event, subscribers=[bob, ann]),
        and_then=lambda: fanout.notifications_create(trigger_event=event, subscribers=[bob]),
    )

    created = {
        str(pk)
        for pk in Notification.objects.filter(trigger_event=event).values_list("pk", flat=True)
    }
    assert len(created) == 2
    # Both chunks found both pending and enqueued their echoes (a second is harmless).
    assert {args[0] for args in enqueued.of(pipeline.ECHO)} == created


def _stale_claim_released(enqueued: Enqueued) -> Step:
    """A send slower than NORM_STALE_CLAIM_SECONDS: the reconciler takes the step from
    its first task, which is still sending, and sends it again. Returns the step as that
    first task holds it."""
    step = StepFactory()
    slow = bookkeeping.step_claim(step_id=step.pk, claim="slow-task")
    assert slow is not None
    Step.objects.filter(pk=step.pk).update(claimed_at=timezone.now() - timedelta(hours=1))
    reconciler.reconcile()
    assert enqueued.of(pipeline.MESSAGE) == [(step.pk,)]
    return slow


def _sending_twice(enqueued: Enqueued) -> tuple[Step, Step]:
    """As _stale_claim_released, and a second task claims the step. Returns the step as
    each task holds it."""
    slow = _stale_claim_released(enqueued)
    second = bookkeeping.step_claim(step_id=slow.pk, claim="second-task")
    assert second is not None
    enqueued.clear()
    return slow, second


def test_a_task_whose_claim_was_taken_cannot_fail_the_notification(enqueued: Enqueued) -> None:
    """The first task's send fails after the second's went through and the workflow went
    on: the notification stays running, its next step is sent."""
    slow, second = _sending_twice(enqueued)
    bookkeeping.step_complete(step=second, result={})
    following = StepFactory(notification=slow.notification)

    bookkeeping.step_undelivered(step=slow, reason="550 mailbox unavailable")

    slow.refresh_from_db()
    assert slow.status == Step.Status.COMPLETED
    assert Notification.objects.get(pk=slow.notification_id).status == Notification.Status.RUNNING
    assert bookkeeping.step_claim(step_id=following.pk, claim="next-task") is not None


def test_a_task_whose_claim_was_taken_leaves_the_step_to_the_new_claim(
    enqueued: Enqueued,
) -> None:
    """The first task fails (for good, or for now) while the second is sending: the step
    is the second's to finish, not failed, nor put back to be sent a third time."""
    slow, second = _sending_twice(enqueued)

    bookkeeping.step_retry_later(step=slow, message="421 try later", backoff=1)
    bookkeeping.step_undelivered(step=slow, reason="550 mailbox unavailable")

    step = Step.objects.get(pk=slow.pk)
    assert (step.status, step.claimed_by) == (Step.Status.PROCESSING, "second-task")
    assert enqueued.of(pipeline.MESSAGE) == []
    bookkeeping.step_complete(step=second, result={})
    step.refresh_from_db()
    assert step.status == Step.Status.COMPLETED
    assert Notification.objects.get(pk=step.notification_id).status == Notification.Status.RUNNING


@pytest.mark.parametrize("tried_before", [False, True])
def test_a_task_whose_claim_was_taken_does_not_skip_the_step_the_new_claim_sends(
    enqueued: Enqueued, tried_before: bool
) -> None:
    """The first task read the step unreachable (no address then, or no provider for the
    channel on its worker) and stalled past NORM_STALE_CLAIM_SECONDS before skipping it,
    while the second task, which found it reachable, sends it: the step was recorded
    skipped (the bridge told so) though its email went out, and the message an earlier
    attempt left `sending` was given up as failed under the second task's send."""
    slow, second = _sending_twice(enqueued)
    if tried_before:  # a send that failed for now, as step_claim reports it
        MessageFactory(step=slow, channel="email", status=Message.Status.SENDING, attempts=1)
        slow.message_status = second.message_status = Message.Status.SENDING

    bookkeeping.step_skip(step=slow, reason="the subscriber has no email address")

    step = Step.objects.get(pk=slow.pk)
    assert (step.status, step.claimed_by, step.error) == (Step.Status.PROCESSING, "second-task", "")
    assert enqueued.of(pipeline.ECHO) == []
    assert not Message.objects.filter(status=Message.Status.FAILED).exists()
    bookkeeping.step_complete(step=second, result={})
    step.refresh_from_db()
    assert step.status == Step.Status.COMPLETED
    assert enqueued.of(pipeline.ECHO) == [(str(step.notification_id),)]


def test_the_holder_of_a_stale_claim_still_skips_its_step(enqueued: Enqueued) -> None:
    """A claim gone stale that no other task took is still the task's to end."""
    step = bookkeeping.step_claim(step_id=StepFactory().pk, claim="slow-task")
    assert step is not None
    Step.objects.filter(pk=step.pk).update(claimed_at=timezone.now() - timedelta(hours=1))

    bookkeeping.step_skip(step=step, reason="the subscriber has no email address")

    step.refresh_from_db()
    assert step.status == Step.Status.SKIPPED
    assert enqueued.of(pipeline.ECHO) == [(str(step.notification_id),)]


def test_a_step_both_tasks_delivered_hands_its_notification_to_the_echo_once(
    enqueued: Enqueued,
) -> None:
    """The slow task's send went out too, after the second task's: the step is done
    already, so its completion enqueues no second echo (which would ask the bridge for
    the next step again, for the same state)."""
    slow, second = _sending_twice(enqueued)

    bookkeeping.step_complete(step=second, result={})
    bookkeeping.step_complete(step=slow, result={})

    assert enqueued.of(pipeline.ECHO) == [(str(slow.notification_id),)]


def test_a_send_retried_later_than_the_broker_keeps_delays_waits_in_the_database(
    enqueued: Enqueued, settings
) -> None:
    """A backoff longer than NORM_BROKER_MAX_COUNTDOWN (a greylisting server, a large
    NORM_SEND_RETRY_BACKOFF) is parked like a long delay: on Redis it would outlive the
    visibility timeout and be delivered twice, to two workers sending the step at once
    under one task id (which each takes as its own claim)."""
    settings.NORM_BROKER_MAX_COUNTDOWN = 300
    step = bookkeeping.step_claim(step_id=StepFactory().pk, claim="task")
    assert step is not None

    bookkeeping.step_retry_later(step=step, message="450 greylisted", backoff=4800)

    assert enqueued.of(pipeline.MESSAGE) == []
    assert reconciler.reconcile()["steps"] == 0  # not due yet
    Step.objects.filter(pk=step.pk).update(due_at=timezone.now())
    assert reconciler.reconcile()["steps"] == 1
    assert enqueued.options_of(pipeline.MESSAGE) == [{"countdown": None, "queue": "messages"}]


def test_a_send_retried_for_now_is_queued_once_its_reschedule_commits(
    enqueued: Enqueued,
) -> None:
    """Queued before the commit, a worker could take the message while the step was
    still claimed by the run that failed: its claim refused, the retry was lost, and
    the step waited for the reconciler."""
    step = bookkeeping.step_claim(step_id=StepFactory().pk, claim="task")
    assert step is not None

    with transaction.atomic():  # held open: the reschedule is not committed yet
        bookkeeping.step_retry_later(step=step, message="421 try later", backoff=5)
        assert enqueued.of(pipeline.MESSAGE) == []

    assert enqueued.of(pipeline.MESSAGE) == [(step.pk,)]
    assert enqueued.options_of(pipeline.MESSAGE) == [{"countdown": 5, "queue": "messages"}]


def test_a_bug_in_a_task_whose_claim_was_taken_leaves_the_step_to_the_new_claim(
    enqueued: Enqueued,
) -> None:
    """The first task's send outlasted its claim, a second task took the step, and a bug
    then ended the first: the step is the second's, not put back on the schedule to be
    sent a third time while the second sends it."""
    step = StepFactory()
    assert bookkeeping.step_claim(step_id=step.pk, claim="first-task") is not None
    Step.objects.filter(pk=step.pk).update(status=Step.Status.SCHEDULED)  # released as stale
    assert bookkeeping.step_claim(step_id=step.pk, claim="second-task") is not None

    bookkeeping.step_internal_error(step_id=step.pk, claim="first-task", exc=RuntimeError("boom"))

    step.refresh_from_db()
    assert (step.status, step.claimed_by, step.error) == (
        Step.Status.PROCESSING,
        "second-task",
        "",
    )
    assert enqueued.of(pipeline.MESSAGE) == []


def test_a_notification_completed_while_a_cancel_runs_stays_completed() -> None:
    """The cancel reads the unfinished notifications, then cancels them: one the echo
    worker completed in between went out in full, and must not be reported canceled."""
    notification = StepFactory(status=Step.Status.COMPLETED).notification

    _, canceled = while_held(
        lambda: Notification.objects.filter(
            pk=notification.pk, status=Notification.Status.RUNNING
        ).update(status=Notification.Status.COMPLETED, completed_at=timezone.now()),
        lambda: operations.notifications_cancel(notification_ids=[notification.pk]),
    )

    notification.refresh_from_db()
    assert notification.status == Notification.Status.COMPLETED
    assert canceled == 0


@pytest.mark.parametrize("second_done", [False, True])
def test_a_task_whose_claim_was_taken_cannot_fail_the_step_for_good(
    enqueued: Enqueued, second_done: bool
) -> None:
    """The first task's send fails for good (TooManyClaims, an action step refused) while
    the second is sending, or after it delivered: the step is the second's. Failed, the
    notification ended failed with its message given up though the second task's send
    went out, and every step after it went unsent."""
    slow, second = _sending_twice(enqueued)
    MessageFactory(step=slow, channel="email", status=Message.Status.SENDING, attempts=1)
    if second_done:
        bookkeeping.step_complete(step=second, result={})

    bookkeeping.step_fail(step=slow, code="ProviderRefused", message="550 mailbox unavailable")

    step = Step.objects.get(pk=slow.pk)
    notification = Notification.objects.get(pk=step.notification_id)
    assert notification.status == Notification.Status.RUNNING
    assert not Message.objects.filter(status=Message.Status.FAILED).exists()
    if second_done:
        assert step.status == Step.Status.COMPLETED
    else:
        assert (step.status, step.claimed_by, step.error) == (
            Step.Status.PROCESSING,
            "second-task",
            "",
        )
        bookkeeping.step_complete(step=second, result={})
        step.refresh_from_db()
        assert step.status == Step.Status.COMPLETED


@pytest.mark.parametrize("end", ["fail", "undelivered", "skip"])
def test_a_task_whose_stale_claim_was_released_cannot_end_the_step_before_its_resend(
    enqueued: Enqueued, end: str
) -> None:
    """The reconciler put the slow task's step back on the schedule and sent it again,
    and the slow task's send ended before the re-sent task claimed it: the step still
    names the slow task as its last claim, but is no longer its. Ended by it, the step
    the re-sent task was to deliver was failed (its notification with it) or recorded
    undelivered or skipped, and the re-sent task's claim refused: never sent."""
    slow = _stale_claim_released(enqueued)
    step = Step.objects.get(pk=slow.pk)

    if end == "fail":
        bookkeeping.step_fail(step=slow, code="ProviderRefused", message="550 mailbox unavailable")
    elif end == "undelivered":
        bookkeeping.step_undelivered(step=slow, reason="550 mailbox unavailable")
    else:
        bookkeeping.step_skip(step=slow, reason="the subscriber has no email address")

    step.refresh_from_db()
    assert (step.status, step.error) == (Step.Status.SCHEDULED, "")
    assert Notification.objects.get(pk=step.notification_id).status == Notification.Status.RUNNING
    assert bookkeeping.step_claim(step_id=step.pk, claim="resent-task") is not None


def test_a_send_recorded_while_its_notification_is_locked_clears_the_bug_reason_after_commit(
    enqueued: Enqueued,
) -> None:
    """A send recorded (the message, then its step, in one transaction) of a step an
    earlier run's bug left its reason on, while a subscriber's delete holds the step's
    notification and goes on to its steps: the reason comes off the notification after
    the record commits. Taken off inside it, the record held the message and the step
    while it waited for the notification, which the delete held while it waited for the
    step: a deadlock, PostgreSQL failing one of them (the delete, a 503 from the API)."""
    reason = "KeyError: 'subject'"
    step = StepFactory(error=reason)
    Notification.objects.filter(pk=step.notification_id).update(
        error=step.notification_error(reason)
    )
    MessageFactory(step=step, channel="email", status=Message.Status.SENDING, attempts=1)
    claimed = bookkeeping.step_claim(step_id=step.pk, claim="task")
    assert claimed is not None and claimed.error == reason

    def record() -> None:
        with transaction.atomic():
            Message.objects.filter(step=step).update(status=Message.Status.SENT)
            bookkeeping.step_complete(step=claimed, result={})

    while_held(
        lambda: Notification.objects.select_for_update().filter(pk=step.notification_id).exists(),
        record,
        and_then=lambda: Step.objects.select_for_update().filter(pk=step.pk).exists(),
    )

    step.refresh_from_db()
    assert step.status == Step.Status.COMPLETED
    notification = Notification.objects.get(pk=step.notification_id)
    assert (notification.status, notification.error) == (Notification.Status.RUNNING, "")


def _claimed_with_a_sending_message() -> Step:
    """An email step claimed by its task, its message `sending` from an earlier attempt
    that failed for now."""
    step = StepFactory()
    MessageFactory(step=step, channel="email", status=Message.Status.SENDING, attempts=1)
    claimed = bookkeeping.step_claim(step_id=step.pk, claim="task")
    assert claimed is not None and claimed.message_status == Message.Status.SENDING
    return claimed


def test_a_skip_meeting_a_sends_record_waits_for_its_message_before_its_step() -> None:
    """A skip whose message is `sending` (an earlier attempt's) ends the step, then gives
    the message up, while a send that outlasted its claim records the message, then the
    step. Locking the step first, the skip held what the record wanted next and waited
    for what it held: a deadlock, PostgreSQL failing one of them."""
    claimed = _claimed_with_a_sending_message()

    while_held(
        lambda: Message.objects.filter(step=claimed).update(status=Message.Status.SENT),
        lambda: bookkeeping.step_skip(step=claimed, reason="no email address"),
        and_then=lambda: Step.objects.select_for_update().filter(pk=claimed.pk).exists(),
    )

    step = Step.objects.get(pk=claimed.pk)
    assert step.status == Step.Status.SKIPPED
    assert Message.objects.get(step=step).status == Message.Status.SENT  # delivered after all


def test_a_retry_later_meeting_a_subscribers_delete_waits_for_the_notification_first(
    enqueued: Enqueued,
) -> None:
    """A send failed for now puts its step back on the schedule, then moves its
    notification's updated_at, while a subscriber's delete holds the notification and
    goes on to its steps. Locking the step first, the retry held what the delete wanted
    next and waited for what it held: a deadlock, PostgreSQL failing one of them (the
    delete, a 503 from the API)."""
    claimed = _claimed_with_a_sending_message()

    while_held(
        lambda: (
            Notification.objects.select_for_update().filter(pk=claimed.notification_id).exists()
        ),
        lambda: bookkeeping.step_retry_later(step=claimed, message="421 try later", backoff=5),
        and_then=lambda: Step.objects.select_for_update().filter(pk=claimed.pk).exists(),
    )

    step = Step.objects.get(pk=claimed.pk)
    assert (step.status, step.error) == (Step.Status.SCHEDULED, "421 try later")
