"""The reconciler's tick beside the writes that lock the same rows, on real connections
(hence `transaction=True`): neither waits for the other in a cycle (a deadlock, which
PostgreSQL ends by failing one of them), and two ticks at once do no harm."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from config import pipeline
from messaging.models import Message
from notify.models import TriggerEvent
from subscribers.models import Subscriber
from tests.conftest import Enqueued, InThread, ago, held, lock_waiters
from tests.factories import (
    MessageFactory,
    NotificationFactory,
    StepFactory,
    SubscriberFactory,
    api_for,
    client_with_key,
)
from workflows import bridge
from workflows.models import Notification, Step
from workflows.services import bookkeeping, echo, reconciler

pytestmark = pytest.mark.django_db(transaction=True)

GRACE = 60
STALE = 600


@pytest.fixture(autouse=True)
def _timing(settings: Any) -> None:
    settings.NORM_RECONCILE_GRACE = GRACE
    settings.NORM_STALE_CLAIM_SECONDS = STALE


def test_a_subscriber_deleted_while_a_tick_releases_stale_fan_outs_is_deleted(
    enqueued: Enqueued,
) -> None:
    """A tick's UPDATE of several events locked them in the order it read them (the
    table's, or an index's), a subscriber's delete in id order: the tick held a later
    event and waited for an earlier one the delete held, while the delete waited for the
    later one. PostgreSQL ended the delete (a 503, the subscriber still there)."""
    client, key = client_with_key()
    ann = SubscriberFactory(client=client, subscriber_id="ann")
    first, second = (
        NotificationFactory(trigger_event__client=client, subscriber=ann).trigger_event
        for _ in range(2)
    )
    other = NotificationFactory(trigger_event__client=client).trigger_event
    # Their runs died: stale claims. The tick reads `second`, `other`, then `first` (as
    # created, and as stored: the one written last is the table's last row).
    for n, event in enumerate((second, other, first)):
        TriggerEvent.objects.filter(pk=event.pk).update(
            status=TriggerEvent.Status.PROCESSING,
            claimed_at=ago(STALE + 10),
            created_at=ago(STALE + 30 - n),
        )
    release = threading.Event()
    holder = held(TriggerEvent.objects.filter(pk=other.pk), release)
    tick = InThread(reconciler.reconcile)  # holds `second`, waits for `other`
    lock_waiters(1, tick)
    delete = InThread(lambda: api_for(key).delete("/v2/subscribers/ann"))
    lock_waiters(2, tick, delete)  # the delete holds `first`, waits for `second`
    release.set()  # the tick goes on to `first`
    holder.join()
    response = delete.join()
    tick.join()

    assert response.status_code == 200, response.content
    assert not Subscriber.objects.filter(pk=ann.pk).exists()
    assert not Notification.objects.filter(subscriber=ann).exists()
    for event in (first, second):  # released by the tick, and ann counted out of both
        event.refresh_from_db()
        assert (event.status, event.forgotten) == (TriggerEvent.Status.RECEIVED, ["ann"])


def test_two_ticks_at_once_count_each_stalled_fan_out_once(enqueued: Enqueued) -> None:
    """Two beats by mistake: the ticks' UPDATEs met on the same events, each one's
    counts (a run that never came back, a rerun) taken once, and each tick ends."""
    stale = [NotificationFactory().trigger_event for _ in range(20)]
    TriggerEvent.objects.update(
        status=TriggerEvent.Status.PROCESSING, claimed_at=ago(STALE + 10), created_at=ago(STALE)
    )
    short = [NotificationFactory().trigger_event for _ in range(20)]
    TriggerEvent.objects.filter(pk__in=[e.pk for e in short]).update(
        status=TriggerEvent.Status.PROCESSED,
        recipients=2,
        created_at=ago(STALE),
        claimed_at=ago(GRACE + 10),
        processed_at=ago(GRACE + 10),
        recheck_from=ago(GRACE + 10),
    )
    Notification.objects.update(created_at=ago(GRACE + 10))
    both = threading.Barrier(2)

    def tick() -> dict[str, int]:
        both.wait(10)
        return reconciler.reconcile()

    ticks = [InThread(tick) for _ in range(2)]
    for each in ticks:
        each.join()

    runs = TriggerEvent.objects.filter(pk__in=[e.pk for e in stale])
    assert set(runs.values_list("status", "internal_errors")) == {(TriggerEvent.Status.RECEIVED, 1)}
    reruns = TriggerEvent.objects.filter(pk__in=[e.pk for e in short])
    assert set(reruns.values_list("status", "refanned")) == {(TriggerEvent.Status.RECEIVED, 1)}


def test_a_subscriber_deleted_while_a_tick_gives_up_steps_lost_with_their_tasks_is_deleted(
    enqueued: Enqueued,
) -> None:
    """A tick gives up the messages of steps whose tasks were lost after their
    notification ended, then the steps, each in one UPDATE of several rows, locked as
    read (the messages' table order); a subscriber's delete deletes its messages in its
    steps' order. The tick held one of the subscriber's messages and waited for another
    that the delete held, waiting for the first: PostgreSQL ended the delete (a 503, the
    subscriber still there)."""
    client, key = client_with_key()
    ann = SubscriberFactory(client=client, subscriber_id="ann")

    def lost(subscriber: Subscriber) -> Message:
        return MessageFactory(
            step__notification__client=client,
            step__notification__subscriber=subscriber,
            step__notification__trigger_event__client=client,
            step__notification__status=Notification.Status.CANCELED,
            step__status=Step.Status.PROCESSING,
            step__claimed_by="a task lost with its worker",
            step__claimed_at=ago(STALE + 10),
            status=Message.Status.SENDING,
        )

    first, second = lost(ann), lost(ann)
    other = lost(SubscriberFactory(client=client))
    # The tick reads `second`, `other`, then `first` (the one written last is the
    # table's last row); the delete reads them by step: `first`, then `second`.
    Message.objects.filter(pk=first.pk).update(error="")
    release = threading.Event()
    holder = held(Message.objects.filter(pk=other.pk), release)
    tick = InThread(reconciler.reconcile)  # holds `second`, waits for `other`
    lock_waiters(1, tick)
    delete = InThread(lambda: api_for(key).delete("/v2/subscribers/ann"))
    lock_waiters(2, tick, delete)  # the delete holds `first`, waits for `second`
    release.set()  # the tick goes on to `first`
    holder.join()
    response = delete.join()
    tick.join()

    assert response.status_code == 200, response.content
    assert not Subscriber.objects.filter(pk=ann.pk).exists()
    assert not Message.objects.filter(pk__in=[first.pk, second.pk]).exists()
    reconciler.reconcile()  # `other`'s step, if the tick passed it by, is the next one's
    other.refresh_from_db()
    assert other.status == Message.Status.FAILED
    assert Step.objects.get(pk=other.step_id).status == Step.Status.CANCELED


def test_a_stale_step_of_a_running_notification_a_send_holds_is_left_to_the_next_tick(
    enqueued: Enqueued,
) -> None:
    """A tick releases the stale claims of running notifications' steps, passing over a
    row another transaction holds (_update_unheld), and then ends, unsent, those of
    notifications that ended meanwhile. A running notification's step it passed over so
    (a send's record holding it, then rolled back by the database) is none of the latter:
    ended, its email was never sent and the workflow went on without it. It stays
    processing, its message on its way, for the next tick to release."""
    step = StepFactory(
        type="email",
        status=Step.Status.PROCESSING,
        claimed_by="a task that died",
        claimed_at=ago(STALE + 10),
    )
    MessageFactory(step=step, status=Message.Status.SENDING, provider="email", attempts=1)
    release = threading.Event()
    holder = held(Step.objects.filter(pk=step.pk), release)
    tick = InThread(reconciler.reconcile)
    lock_waiters(1, tick)  # none: the tick waits for no step it passed over
    release.set()
    holder.join()
    tick.join()

    step.refresh_from_db()
    assert (step.status, step.error) == (Step.Status.PROCESSING, "")
    assert Message.objects.get().status == Message.Status.SENDING
    assert enqueued.of(pipeline.MESSAGE) == []

    reconciler.reconcile()  # the next tick
    step.refresh_from_db()
    assert step.status == Step.Status.SCHEDULED
    assert enqueued.of(pipeline.MESSAGE) == [(step.pk,)]


def test_a_running_notifications_step_let_go_between_a_ticks_phases_is_not_given_up(
    enqueued: Enqueued, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As above, the send holding the step lets it go after the tick passed over it and
    before the tick ends the steps of notifications that ended: that phase skips held
    rows too, so only its filter of ended notifications keeps it from ending a running
    one's step, unsent, the workflow going on without it."""
    step = StepFactory(
        type="email",
        status=Step.Status.PROCESSING,
        claimed_by="a task that died",
        claimed_at=ago(STALE + 10),
    )
    MessageFactory(step=step, status=Message.Status.SENDING, provider="email", attempts=1)
    release = threading.Event()
    holder = held(Step.objects.filter(pk=step.pk), release)
    give_up = reconciler._lost_give_up

    def let_go_first(**kwargs: Any) -> int:
        release.set()
        holder.join()
        return give_up(**kwargs)

    monkeypatch.setattr(reconciler, "_lost_give_up", let_go_first)
    reconciler.reconcile()

    step.refresh_from_db()
    assert (step.status, step.error) == (Step.Status.PROCESSING, "")
    assert Message.objects.get().status == Message.Status.SENDING


@pytest.mark.parametrize(
    "holds",
    ["message", "step and message"],
    ids=["its message (a delete, a record between its writes)", "its step too (a record)"],
)
def test_a_lost_step_whose_rows_another_holds_is_passed_over_and_ended_the_next_tick(
    enqueued: Enqueued, holds: str
) -> None:
    """A tick ends the steps lost with their tasks after their notification ended, each
    with its message, passing over one whose step or message another transaction holds:
    a send's late record (the message, then the step), a subscriber's delete. Waiting for
    it, the tick stood still for as long as that transaction ran, every later phase of
    the tick with it (and, as a delete's order crosses the tick's, one of them failed).
    Passed over, the step is still lost once the holder lets go (it rolled back), and
    the next tick ends it. The tick ends another lost step meanwhile: it ran, not failed."""

    def lost() -> Message:
        return MessageFactory(
            step__notification__status=Notification.Status.CANCELED,
            step__status=Step.Status.PROCESSING,
            step__claimed_by="a task lost with its worker",
            step__claimed_at=ago(STALE + 10),
            status=Message.Status.SENDING,
        )

    message, other = lost(), lost()
    step = message.step
    rows = [Message.objects.filter(pk=message.pk)]
    if holds == "step and message":
        rows.append(Step.objects.filter(pk=step.pk))
    release = threading.Event()
    holders = [held(each, release) for each in rows]
    tick = InThread(reconciler.reconcile)
    lock_waiters(1, tick)  # returns as soon as the tick waits, or once it ended
    waited = tick.thread.is_alive()
    release.set()
    for holder in holders:
        holder.join()
    tick.join()

    assert not waited, "the tick waited for a row another transaction held"
    step.refresh_from_db()
    message.refresh_from_db()
    assert (step.status, message.status) == (Step.Status.PROCESSING, Message.Status.SENDING)
    other.refresh_from_db()
    assert (other.status, other.error) == (Message.Status.FAILED, reconciler.LOST_WITH_ITS_TASK)

    reconciler.reconcile()  # the next tick, nothing held
    step.refresh_from_db()
    message.refresh_from_db()
    assert (step.status, step.error) == (Step.Status.CANCELED, reconciler.LOST_WITH_ITS_TASK)
    assert (message.status, message.error) == (Message.Status.FAILED, reconciler.LOST_WITH_ITS_TASK)


def _before_the_tick_marks_them_resent(
    monkeypatch: pytest.MonkeyPatch, model: type[Any], meanwhile: Any
) -> None:
    """Run `meanwhile` on a connection of its own, to its commit, once the tick has read
    the stalled rows of `model` and before it locks and updates them: the first time only."""
    update = reconciler._updated_unheld
    pending = [meanwhile]

    def after_the_read(rows: Any, **fields: Any) -> set[Any]:
        if rows.model is model and pending:
            InThread(pending.pop()).join()
        return update(rows, **fields)

    monkeypatch.setattr(reconciler, "_updated_unheld", after_the_read)


def test_an_echo_recording_a_step_as_a_tick_finds_its_notification_idle_keeps_it_quiet(
    enqueued: Enqueued, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tick reads a notification idle (its echo lost, say), and before the tick marks it
    re-sent, the echo (redelivered) records a day's delay: the notification is quiet until
    the step is due (its updated_at). The tick wrote its own time over that, and re-sent
    the echo: every tick read the notification for an open step all day, and once the
    delay ended it looked idle at once, its echo sent twice, the bridge asked twice."""
    notification = NotificationFactory(status=Notification.Status.PENDING)
    Notification.objects.filter(pk=notification.pk).update(updated_at=ago(GRACE + 1))
    delay = {"done": False, "stepId": "wait", "type": "delay"}
    monkeypatch.setattr(
        bridge, "execute", lambda *a, **kw: {**delay, "outputs": {"amount": 1, "unit": "days"}}
    )
    _before_the_tick_marks_them_resent(
        monkeypatch, Notification, lambda: echo.echo_run(notification_id=str(notification.pk))
    )

    assert reconciler.reconcile()["notifications"] == 0

    notification.refresh_from_db()
    step = notification.steps.get()
    assert step.status == Step.Status.SCHEDULED
    assert notification.updated_at == step.due_at  # quiet until then
    assert enqueued.of(pipeline.ECHO) == []


def test_two_ticks_at_once_re_send_an_idle_notification_once(
    enqueued: Enqueued, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two beats by mistake: both ticks read the notification idle, and each re-sent its
    echo, two bridge calls for its next step."""
    notification = NotificationFactory(status=Notification.Status.PENDING)
    Notification.objects.filter(pk=notification.pk).update(updated_at=ago(GRACE + 1))
    _before_the_tick_marks_them_resent(monkeypatch, Notification, reconciler.reconcile)

    reconciler.reconcile()

    assert enqueued.of(pipeline.ECHO) == [(str(notification.pk),)]


def test_a_step_put_back_for_later_as_a_tick_finds_it_due_is_sent_when_due_again(
    enqueued: Enqueued, monkeypatch: pytest.MonkeyPatch, settings: Any
) -> None:
    """A tick reads a step due (a delay longer than the broker keeps, the tick its only
    sender), and before the tick marks it re-sent, a task (another tick's) claims it and
    its send fails for now, the step back on the schedule an hour out, waiting in the
    database (`enqueued_at` none). The tick stamped it re-sent: an hour later it looked
    queued, and was re-sent only once its queue was empty (never, behind a queue that
    never empties) and a grace period after it was due."""
    step = StepFactory(due_at=ago(5), enqueued_at=None)
    backoff = settings.NORM_BROKER_MAX_COUNTDOWN + 3600

    def fails_for_now() -> None:
        claimed = bookkeeping.step_claim(step_id=step.pk, claim="another tick's task")
        assert claimed is not None
        bookkeeping.step_retry_later(step=claimed, message="421 try later", backoff=backoff)

    _before_the_tick_marks_them_resent(monkeypatch, Step, fails_for_now)

    assert reconciler.reconcile()["steps"] == 0

    step.refresh_from_db()
    assert (step.status, step.enqueued_at) == (Step.Status.SCHEDULED, None)
    # Once it is due again, sent though its queue holds others.
    Step.objects.filter(pk=step.pk).update(due_at=ago(1))
    enqueued.clear()
    pipeline.send_now(pipeline.MESSAGE, "another's")
    assert reconciler.reconcile()["steps"] == 1
    assert enqueued.of(pipeline.MESSAGE)[1:] == [(step.pk,)]
