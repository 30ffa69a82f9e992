from __future__ import annotations

import logging
from datetime import timedelta
from pathlib import Path
from typing import Any

import kombu.exceptions
import pytest
from django.db import connection
from django.db.models import DateTimeField, F
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from config import pipeline
from notify.models import TriggerEvent
from subscribers import services as subscriber_services
from subscribers.models import Subscriber
from tests.conftest import DatabaseAway, Enqueued, ago, on_sqlite
from tests.factories import (
    ClientFactory,
    NotificationFactory,
    StepFactory,
    SubscriberFactory,
    TriggerEventFactory,
)
from workflows import bridge, tasks
from workflows.models import Notification, Step
from workflows.services import bookkeeping, common, echo, fanout, operations, reconciler

pytestmark = pytest.mark.django_db

GRACE = 60
STALE = 600


@pytest.fixture(autouse=True)
def _timing(settings: Any) -> None:
    settings.NORM_RECONCILE_GRACE = GRACE
    settings.NORM_STALE_CLAIM_SECONDS = STALE


def step_at(*, due: float, enqueued: float | None, **kwargs: Any) -> Step:
    """A scheduled step due `due` seconds ago, enqueued `enqueued` seconds ago (or never)."""
    step = StepFactory(**kwargs)
    Step.objects.filter(pk=step.pk).update(
        due_at=ago(due), enqueued_at=None if enqueued is None else ago(enqueued)
    )
    return step


def test_a_batch_of_due_steps_is_those_due_longest_ago(
    enqueued: Enqueued, monkeypatch: pytest.MonkeyPatch
) -> None:
    """More steps due than a batch: the reconciler sends those overdue longest first. It
    took a batch in Step's default order (by position), which made PostgreSQL sort every
    due step each tick to keep a batch: 0.9 s a tick while a broadcast's 100,000 steps
    came due at once (docs/BENCHMARKS.md, session 22)."""
    monkeypatch.setattr(reconciler, "REDRIVE_BATCH", 2)
    step_at(due=5, enqueued=None, position=0)
    older = step_at(due=600, enqueued=None, position=1)
    oldest = step_at(due=3600, enqueued=None, position=2)

    assert tasks.reconcile()["steps"] == 2
    assert sorted(enqueued.of(pipeline.MESSAGE)) == sorted([(older.pk,), (oldest.pk,)])


def test_a_tick_sends_a_batch_of_due_steps_at_most_of_both_kinds_together(
    enqueued: Enqueued, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Steps never sent come first, and those sent a grace period ago fill the rest of
    the batch, no more: each kind a batch of its own, a tick sent nearly two."""
    monkeypatch.setattr(reconciler, "REDRIVE_BATCH", 3)
    never = [step_at(due=5, enqueued=None, position=p) for p in range(2)]
    lost = [step_at(due=GRACE + 30 + p, enqueued=GRACE + 30, position=2 + p) for p in range(3)]

    assert tasks.reconcile()["steps"] == 3
    sent = {pk for (pk,) in enqueued.of(pipeline.MESSAGE)}
    assert sent == {never[0].pk, never[1].pk, lost[2].pk}  # the longest overdue


def test_a_due_step_never_enqueued_is_enqueued_once(enqueued: Enqueued) -> None:
    due = step_at(due=5, enqueued=None)
    step_at(due=-3600, enqueued=None)  # a long delay, not due yet

    assert tasks.reconcile()["steps"] == 1
    assert enqueued.of(pipeline.MESSAGE) == [(due.pk,)]
    due.refresh_from_db()
    assert due.enqueued_at is not None

    enqueued.clear()
    assert tasks.reconcile()["steps"] == 0
    assert enqueued.calls == []


def test_a_step_enqueued_recently_is_left_to_the_broker(enqueued: Enqueued) -> None:
    step_at(due=5, enqueued=5)
    step_at(due=GRACE * 2, enqueued=5)  # a retry the message worker just rescheduled
    assert tasks.reconcile()["steps"] == 0
    assert enqueued.calls == []


def test_a_step_whose_broker_message_was_lost_is_enqueued_again(enqueued: Enqueued) -> None:
    lost = step_at(due=GRACE + 30, enqueued=GRACE + 30)
    assert tasks.reconcile()["steps"] == 1
    assert enqueued.of(pipeline.MESSAGE) == [(lost.pk,)]


def test_steps_of_any_other_status_are_not_enqueued(enqueued: Enqueued) -> None:
    for status in (
        Step.Status.COMPLETED,
        Step.Status.SKIPPED,
        Step.Status.FAILED,
        Step.Status.CANCELED,
    ):
        step_at(due=GRACE * 2, enqueued=None, status=status)
    assert tasks.reconcile()["steps"] == 0
    assert enqueued.of(pipeline.MESSAGE) == []


def test_a_stale_processing_claim_is_released_and_enqueued(enqueued: Enqueued) -> None:
    stale = StepFactory(status=Step.Status.PROCESSING)
    fresh = StepFactory(status=Step.Status.PROCESSING)
    Step.objects.filter(pk=stale.pk).update(claimed_at=ago(STALE + 1), due_at=ago(STALE + 1))
    Step.objects.filter(pk=fresh.pk).update(claimed_at=ago(5), due_at=ago(5))

    assert tasks.reconcile()["steps"] == 1

    assert enqueued.of(pipeline.MESSAGE) == [(stale.pk,)]
    stale.refresh_from_db()
    fresh.refresh_from_db()
    assert stale.status == Step.Status.SCHEDULED and stale.enqueued_at is not None
    assert fresh.status == Step.Status.PROCESSING


def test_a_stale_claim_released_is_sent_again_though_its_queue_holds_others(
    enqueued: Enqueued,
) -> None:
    """A worker that died mid-send took the step's message with it: none is queued, so
    a busy message queue is no reason to hold the step. Released still marked enqueued
    (when its first message was sent), it waited as if queued for the queue to empty:
    under a queue that never emptied, never sent."""
    stale = StepFactory(status=Step.Status.PROCESSING)
    Step.objects.filter(pk=stale.pk).update(
        claimed_at=ago(STALE + 1), due_at=ago(STALE + 1), enqueued_at=ago(STALE + 1)
    )
    _queue_holds(enqueued, pipeline.MESSAGE)

    assert tasks.reconcile()["steps"] == 1

    assert enqueued.of(pipeline.MESSAGE)[1:] == [(stale.pk,)]
    stale.refresh_from_db()
    assert stale.status == Step.Status.SCHEDULED


def test_idle_notifications_without_an_open_step_get_an_echo(enqueued: Enqueued) -> None:
    pending = NotificationFactory(status=Notification.Status.PENDING)
    running = NotificationFactory(status=Notification.Status.RUNNING)
    StepFactory(notification=running, status=Step.Status.COMPLETED)
    waiting = NotificationFactory(status=Notification.Status.RUNNING)
    StepFactory(
        notification=waiting,
        status=Step.Status.SCHEDULED,
        due_at=timezone.now() + timedelta(days=1),
    )
    sending = NotificationFactory(status=Notification.Status.RUNNING)
    StepFactory(notification=sending, status=Step.Status.PROCESSING, claimed_at=timezone.now())
    recent = NotificationFactory(status=Notification.Status.PENDING)
    finished = [NotificationFactory(status=s) for s in Notification.FINAL]
    idle_ids = [n.pk for n in (pending, running, waiting, sending, *finished)]
    Notification.objects.filter(pk__in=idle_ids).update(updated_at=ago(GRACE + 1))

    assert tasks.reconcile()["notifications"] == 2

    assert sorted(enqueued.of(pipeline.ECHO)) == sorted([(str(pending.pk),), (str(running.pk),)])
    assert recent.pk not in {n for (n,) in enqueued.of(pipeline.ECHO)}
    # Touched, so the next pass within the grace period leaves them be.
    enqueued.clear()
    assert tasks.reconcile()["notifications"] == 0


def test_a_backlog_of_pending_notifications_does_not_starve_the_running_ones(
    enqueued: Enqueued,
) -> None:
    """A broadcast's first echoes queued behind others leave thousands of notifications
    pending and quiet: the reconciler took its batch of idle ones in index order, every
    pending one before any running one, so a running notification whose echo was lost
    waited until the whole backlog had been re-sent (each tick re-sending the next
    batch, for hours under a large broadcast)."""
    event = TriggerEventFactory()
    subscribers = Subscriber.objects.bulk_create(
        Subscriber(client=event.client, subscriber_id=f"s{i}") for i in range(1001)
    )
    Notification.objects.bulk_create(
        Notification(
            trigger_event=event,
            subscriber=subscriber,
            client=event.client,
            workflow_id=event.workflow_id,
            resource=event.resource,
        )
        for subscriber in subscribers
    )
    running = NotificationFactory(status=Notification.Status.RUNNING)
    StepFactory(notification=running, status=Step.Status.COMPLETED)
    Notification.objects.update(updated_at=ago(GRACE + 1))
    Notification.objects.filter(pk=running.pk).update(updated_at=ago(GRACE + 2))

    tasks.reconcile()

    assert (str(running.pk),) in enqueued.of(pipeline.ECHO)


def _queue_holds(enqueued: Enqueued, stage: pipeline.Stage, queue: str = "") -> None:
    """A message in `stage`'s queue (or `queue`), waiting for a worker."""
    pipeline.send_now(stage, "another's", queue=queue or None)


def test_no_echo_is_re_sent_to_a_queue_that_holds_any(enqueued: Enqueued) -> None:
    """Behind a backlog longer than the grace period (a restart, a large broadcast),
    every notification in it is quiet, and each run added a batch of duplicates behind
    it: under `make run`, 2,650 notifications at once grew the broker from 2,500
    messages to 18,000 in eleven minutes, completing ever fewer."""
    pending = NotificationFactory(status=Notification.Status.PENDING)
    running = NotificationFactory(status=Notification.Status.RUNNING)
    StepFactory(notification=running, status=Step.Status.COMPLETED)
    Notification.objects.update(updated_at=ago(GRACE + 1))
    _queue_holds(enqueued, pipeline.ECHO)

    assert tasks.reconcile()["notifications"] == 0
    assert len(enqueued.of(pipeline.ECHO)) == 1

    # Another queue's, and one a worker holds until its countdown is over, are not this one's.
    enqueued.clear()
    _queue_holds(enqueued, pipeline.ECHO, queue="echo-routed")
    pipeline.send_now(pipeline.ECHO, "due later", countdown=30)
    assert tasks.reconcile()["notifications"] == 2
    assert enqueued.of(pipeline.ECHO)[-2:] == [(str(pending.pk),), (str(running.pk),)]


def test_no_due_step_is_re_sent_to_a_queue_that_holds_any(enqueued: Enqueued) -> None:
    """A broadcast's emails queued behind an SMTP server slower than the grace period:
    each run re-sent a batch of them."""
    lost = [step_at(due=GRACE + 30, enqueued=GRACE + 30) for _ in range(2)]
    _queue_holds(enqueued, pipeline.MESSAGE)

    assert tasks.reconcile()["steps"] == 0

    enqueued.clear()
    assert tasks.reconcile()["steps"] == 2
    assert enqueued.of(pipeline.MESSAGE) == [(step.pk,) for step in lost]


def test_a_due_step_never_sent_is_sent_though_its_queue_holds_others(enqueued: Enqueued) -> None:
    """A delay longer than the broker's countdown waits in the database, the reconciler
    its only sender: behind a queue that never emptied, it was never sent."""
    waited = step_at(due=5, enqueued=None)
    lost = step_at(due=GRACE + 30, enqueued=GRACE + 30)
    _queue_holds(enqueued, pipeline.MESSAGE)

    assert tasks.reconcile()["steps"] == 1
    assert enqueued.of(pipeline.MESSAGE)[1:] == [(waited.pk,)]
    lost.refresh_from_db()
    assert lost.enqueued_at < ago(GRACE)  # not re-sent: maybe queued


def test_no_trigger_is_re_sent_to_a_queue_that_holds_any(enqueued: Enqueued, settings: Any) -> None:
    """A flood of triggers queued longer than the grace period; a routed workflow's queue
    is looked at on its own."""
    settings.NORM_WORKFLOW_QUEUES = {"critical-one": "critical"}
    queued = TriggerEventFactory()
    routed = TriggerEventFactory(workflow_id="critical-one")
    TriggerEvent.objects.update(created_at=ago(GRACE + 1))
    _queue_holds(enqueued, pipeline.WORKFLOW)

    assert tasks.reconcile()["events"] == 1

    assert enqueued.calls[-1] == (
        pipeline.WORKFLOW.task,
        (routed.pk,),
        {"countdown": None, "queue": "critical"},
    )
    queued.refresh_from_db()
    assert queued.reenqueued_at is None  # not sent: sent as soon as the queue is empty
    enqueued.clear()
    assert tasks.reconcile()["events"] == 1
    assert enqueued.of(pipeline.WORKFLOW) == [(queued.pk,)]


def test_no_routed_trigger_is_re_sent_to_its_queue_that_holds_any(
    enqueued: Enqueued, settings: Any
) -> None:
    """The other way round: a routed workflow's queue backed up, the workflows queue
    empty. Each tick re-sent its quiet triggers behind the ones still queued there."""
    settings.NORM_WORKFLOW_QUEUES = {"critical-one": "critical"}
    queued = TriggerEventFactory()
    routed = TriggerEventFactory(workflow_id="critical-one")
    TriggerEvent.objects.update(created_at=ago(GRACE + 1))
    _queue_holds(enqueued, pipeline.WORKFLOW, queue="critical")

    assert tasks.reconcile()["events"] == 1

    assert enqueued.calls[-1] == (
        pipeline.WORKFLOW.task,
        (queued.pk,),
        {"countdown": None, "queue": pipeline.WORKFLOW.queue},
    )
    routed.refresh_from_db()
    assert routed.reenqueued_at is None  # not sent: sent as soon as its queue is empty


def test_a_routed_trigger_is_re_sent_behind_more_triggers_queued_than_a_batch(
    enqueued: Enqueued, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A routed workflow has a queue of its own so that its triggers wait behind no flood
    of others'. Each run took a batch of the triggers waiting, then left out those of a
    queue that held any: a flood of more than a batch in the workflows queue filled every
    batch, and the routed one lost with the broker, its own queue empty, was not re-sent
    until the flood had passed."""
    monkeypatch.setattr(reconciler, "REDRIVE_BATCH", 2)
    settings.NORM_WORKFLOW_QUEUES = {"critical-one": "critical"}
    flood = [TriggerEventFactory() for _ in range(3)]
    routed = TriggerEventFactory(workflow_id="critical-one")
    TriggerEvent.objects.update(created_at=ago(GRACE + 1))
    _queue_holds(enqueued, pipeline.WORKFLOW)

    assert tasks.reconcile()["events"] == 1

    assert enqueued.calls[-1] == (
        pipeline.WORKFLOW.task,
        (routed.pk,),
        {"countdown": None, "queue": "critical"},
    )
    assert {e.reenqueued_at for e in TriggerEvent.objects.filter(pk__in=[e.pk for e in flood])} == {
        None
    }


def _lost(stage: pipeline.Stage, workflow_id: str) -> tuple[pipeline.Stage, Any]:
    """Work of `workflow_id` lost with the broker from `stage`'s queue (or the workflow's
    own): the stage the reconciler re-sends it as, and the task's argument."""
    if stage == pipeline.ECHO:
        notification = NotificationFactory(trigger_event__workflow_id=workflow_id)
        Notification.objects.filter(pk=notification.pk).update(updated_at=ago(GRACE + 1))
        return pipeline.ECHO, str(notification.pk)
    if stage == pipeline.MESSAGE:
        step = step_at(
            due=GRACE + 30,
            enqueued=GRACE + 30,
            notification__trigger_event__workflow_id=workflow_id,
        )
        return pipeline.MESSAGE, step.pk
    # A subscriber command, for a recipient the fan-out lacks: the fan-out is run again.
    event = _short_fan_out(claimed=GRACE + 10, last_created=GRACE * 10)
    TriggerEvent.objects.filter(pk=event.pk).update(workflow_id=workflow_id)
    Notification.objects.filter(trigger_event=event).update(workflow_id=workflow_id)
    return pipeline.WORKFLOW, event.pk


@pytest.mark.parametrize("backed_up", ["shared", "routed"])
@pytest.mark.parametrize(
    "stage", [pipeline.ECHO, pipeline.MESSAGE, pipeline.SUBSCRIBER], ids=lambda s: s.queue
)
def test_a_routed_workflows_work_is_re_sent_to_its_queue_looked_at_on_its_own(
    enqueued: Enqueued, settings: Any, stage: pipeline.Stage, backed_up: str
) -> None:
    """Every stage of a routed workflow runs on its queue (pipeline.queue_of), and is
    re-sent there, held back by a backlog of that queue alone: behind a broadcast's
    echoes in the shared queue, a routed workflow's lost echo is re-sent at once; behind
    a backlog of the routed queue, the others' are."""
    settings.NORM_WORKFLOW_QUEUES = {"critical-one": "critical"}
    shared = _lost(stage, "welcome")
    routed = _lost(stage, "critical-one")
    _queue_holds(enqueued, stage, queue="critical" if backed_up == "routed" else "")

    tasks.reconcile()

    (resent, arg), queue = (routed, "critical") if backed_up == "shared" else (shared, "")
    assert enqueued.calls[1:] == [
        (resent.task, (arg,), {"countdown": None, "queue": queue or resent.queue})
    ]


@pytest.mark.parametrize(
    "stage", [pipeline.ECHO, pipeline.MESSAGE, pipeline.SUBSCRIBER], ids=lambda s: s.queue
)
def test_work_left_on_a_queue_taken_out_of_the_routing_table_is_re_sent_to_its_queue_now(
    enqueued: Enqueued, settings: Any, stage: pipeline.Stage
) -> None:
    """A workflow taken out of NORM_WORKFLOW_QUEUES, and its queue's workers stopped: what
    that queue still holds no worker takes. The reconciler re-sends it to the stage's
    own queue once quiet for a grace period, as work the broker lost, held back by a
    backlog of that queue alone: the old one, which keeps what was left there for good,
    is no longer looked at (as the README's Production section says)."""
    settings.NORM_WORKFLOW_QUEUES = {}
    resent, arg = _lost(stage, "critical-one")
    _queue_holds(enqueued, stage, queue="critical")  # left there, which no worker consumes

    tasks.reconcile()

    assert enqueued.calls[1:] == [(resent.task, (arg,), {"countdown": None, "queue": resent.queue})]


def test_no_cancel_is_re_sent_to_a_queue_that_holds_any(enqueued: Enqueued) -> None:
    """A bulk cancel of thousands behind a backlog of triggers: each run re-sent a batch
    of its tasks behind the ones still queued."""
    under_way = TriggerEventFactory(canceled_at=ago(GRACE + 1), cancel_task_at=ago(GRACE + 1))
    _queue_holds(enqueued, pipeline.WORKFLOW)

    assert tasks.reconcile()["cancels"] == 0

    enqueued.clear()
    assert tasks.reconcile()["cancels"] == 1
    assert enqueued.of(pipeline.CANCEL) == [(under_way.pk,)]

    # Re-sent, it waits out a grace period again: not one more task each tick (10 s).
    enqueued.clear()
    assert tasks.reconcile()["cancels"] == 0
    assert enqueued.calls == []


def test_a_cancel_that_got_to_the_end_is_not_re_sent(enqueued: Enqueued) -> None:
    """Its task ended the trigger's last notification: none left to send again. Still
    marked under way, the reconciler re-sent it every grace period, for good."""
    notification = NotificationFactory(status=Notification.Status.RUNNING)
    event = notification.trigger_event
    TriggerEvent.objects.filter(pk=event.pk).update(
        canceled_at=ago(GRACE + 1), cancel_task_at=ago(GRACE + 1)
    )

    assert operations.trigger_cancel_finish(trigger_event_id=event.pk) == 1

    event.refresh_from_db()
    assert event.cancel_task_at is None
    assert tasks.reconcile()["cancels"] == 0
    assert enqueued.of(pipeline.CANCEL) == []


def test_no_fan_out_is_run_again_while_the_subscribers_queue_holds_any(
    enqueued: Enqueued,
) -> None:
    """A trigger's subscriber commands queued behind another's for longer than the grace
    period: none of its notifications made yet, it looked lost, and was run again. With
    a batch as the bound, the last events of a burst of 53 were still run again, their
    commands among the 880 left."""
    short = _short_fan_out(claimed=GRACE + 10, last_created=GRACE * 10)
    _queue_holds(enqueued, pipeline.SUBSCRIBER)

    assert tasks.reconcile()["events"] == 0
    short.refresh_from_db()
    assert (short.status, short.refanned) == (TriggerEvent.Status.PROCESSED, 0)

    enqueued.clear()
    assert tasks.reconcile()["events"] == 1
    assert enqueued.of(pipeline.WORKFLOW) == [(short.pk,)]


def _time_passes(seconds: float) -> None:
    """Every timestamp of the events and notifications moves `seconds` into the past."""
    for model in (TriggerEvent, Notification):
        names = [f.name for f in model._meta.concrete_fields if isinstance(f, DateTimeField)]
        model.objects.update(**{name: F(name) - timedelta(seconds=seconds) for name in names})


def _a_backlog_outlasts_the_window(enqueued: Enqueued) -> None:
    """The subscribers queue holds commands for twice FANOUT_RECHECK, the reconciler
    running all along (every 10 minutes here: what matters is that it runs), then empties."""
    _queue_holds(enqueued, pipeline.SUBSCRIBER)
    for _ in range(int(common.FANOUT_RECHECK * 2 / timedelta(minutes=10))):
        _time_passes(600)
        assert tasks.reconcile()["events"] == 0
    enqueued.clear()


def test_a_fan_out_short_after_a_backlog_longer_than_the_window_is_run_again(
    enqueued: Enqueued,
) -> None:
    """Its commands lost with the broker (flushed, restarted) while the subscribers
    queue held a backlog: no fan-out is run again behind one, and by the time the queue
    emptied, two hours on, the event was past the hour after its fan-out in which the
    reconciler checks it. Its recipients never got their notification."""
    short = _short_fan_out(claimed=GRACE + 10, last_created=GRACE * 10)

    _a_backlog_outlasts_the_window(enqueued)

    assert tasks.reconcile()["events"] == 1
    assert enqueued.of(pipeline.WORKFLOW) == [(short.pk,)]
    short.refresh_from_db()
    assert (short.status, short.refanned) == (TriggerEvent.Status.RECEIVED, 1)


def test_a_backlog_keeps_no_fan_out_checked_that_is_run_again_no_more(enqueued: Enqueued) -> None:
    """One that reached every recipient cannot come up short any more, and one run again
    MAX_REFANS times is not run again: a backlog, however long, does not keep either in
    the window, whose events each tick reads and counts the notifications of."""
    reached = _short_fan_out(claimed=GRACE + 10, last_created=GRACE * 10)
    TriggerEvent.objects.filter(pk=reached.pk).update(recipients=1)
    _short_fan_out(claimed=GRACE + 10, last_created=GRACE * 10, refanned=reconciler.MAX_REFANS)

    _a_backlog_outlasts_the_window(enqueued)

    sql = _reconcile_sql(_SHORT_CHECK)
    scans = _scans(sql, "notify_triggerevent", analyze=True)
    assert scans
    assert sum(n["Actual Rows"] + n.get("Rows Removed by Filter", 0) for n in scans) == 0
    assert enqueued.of(pipeline.WORKFLOW) == []


def test_received_trigger_events_older_than_grace_are_enqueued_again(
    enqueued: Enqueued, settings: Any
) -> None:
    settings.NORM_WORKFLOW_QUEUES = {"welcome": "critical"}
    old = TriggerEventFactory()
    new = TriggerEventFactory()
    done = TriggerEventFactory(status=TriggerEvent.Status.PROCESSED)
    TriggerEvent.objects.filter(pk__in=[old.pk, done.pk]).update(created_at=ago(GRACE + 1))

    assert tasks.reconcile()["events"] == 1

    assert enqueued.calls == [
        (pipeline.WORKFLOW.task, (old.pk,), {"countdown": None, "queue": "critical"})
    ]
    assert new.pk not in [pk for (pk,) in enqueued.of(pipeline.WORKFLOW)]


def test_a_tick_re_sends_a_batch_of_events_and_of_cancels_at_most(
    enqueued: Enqueued, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After the broker lost thousands of triggers (or of cancels' tasks), a tick re-sends
    a batch of each, the rest the next ticks' once the queue is empty: all at once, one
    tick read every one and queued them together."""
    monkeypatch.setattr(reconciler, "REDRIVE_BATCH", 2)
    for _ in range(3):
        TriggerEventFactory()
        TriggerEventFactory(status=TriggerEvent.Status.PROCESSED, canceled_at=ago(GRACE + 1))
    TriggerEvent.objects.update(created_at=ago(GRACE + 1))
    TriggerEvent.objects.filter(canceled_at__isnull=False).update(cancel_task_at=ago(GRACE + 1))

    counts = tasks.reconcile()

    assert (counts["events"], counts["cancels"]) == (2, 2)
    assert (len(enqueued.of(pipeline.WORKFLOW)), len(enqueued.of(pipeline.CANCEL))) == (2, 2)


def test_a_received_event_is_resent_once_per_grace_period_not_every_tick(
    enqueued: Enqueued,
) -> None:
    """While the workflows queue is backed up, its events stay received: the reconciler
    re-sends each once per grace period, rather than adding duplicates every tick."""
    queued = TriggerEventFactory()
    TriggerEvent.objects.filter(pk=queued.pk).update(created_at=ago(GRACE + 1))
    assert tasks.reconcile()["events"] == 1

    enqueued.clear()
    assert tasks.reconcile()["events"] == 0 and enqueued.calls == []

    TriggerEvent.objects.filter(pk=queued.pk).update(reenqueued_at=ago(GRACE + 1))
    assert tasks.reconcile()["events"] == 1
    assert enqueued.of(pipeline.WORKFLOW) == [(queued.pk,)]


def test_a_trigger_event_stuck_in_processing_is_released_and_enqueued(enqueued: Enqueued) -> None:
    stuck = TriggerEventFactory(status=TriggerEvent.Status.PROCESSING)
    busy = TriggerEventFactory(status=TriggerEvent.Status.PROCESSING)
    TriggerEvent.objects.filter(pk=stuck.pk).update(
        claimed_at=ago(STALE + 1), created_at=ago(STALE + 1)
    )
    # A long fan-out (a broadcast's), its claim not stale yet: run again beside itself, it
    # would count as a run that never came back, and the event fail the sooner.
    TriggerEvent.objects.filter(pk=busy.pk).update(
        claimed_at=ago(STALE - 30), created_at=ago(STALE + 1)
    )

    assert tasks.reconcile()["events"] == 1

    assert enqueued.of(pipeline.WORKFLOW) == [(stuck.pk,)]
    stuck.refresh_from_db()
    busy.refresh_from_db()
    assert stuck.status == TriggerEvent.Status.RECEIVED
    assert busy.status == TriggerEvent.Status.PROCESSING


class WorkerKilled(BaseException):
    """The worker process dies mid-fan-out (out of memory, SIGKILL): nothing after runs,
    not even the recording of a bug, and the event stays claimed by the dead run."""


def fan_out_dies(*, trigger_event_id: int) -> None:
    raise WorkerKilled


def run_dies_and_its_claim_goes_stale(event: TriggerEvent, claim: str) -> None:
    with pytest.raises(WorkerKilled):
        fanout.trigger_event_run(trigger_event_id=event.pk, claim=claim)
    TriggerEvent.objects.filter(pk=event.pk).update(
        claimed_at=ago(STALE + 1), created_at=ago(STALE + 1)
    )


def test_a_fan_out_that_kills_its_worker_each_time_fails_after_norm_max_claims(
    enqueued: Enqueued, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each run died, the reconciler released its stale claim and sent the event again,
    and the next run claimed it and died: forever, as only a bug's runs were counted.
    Now the runs a stale claim ended count too, and the event fails at NORM_MAX_CLAIMS."""
    settings.NORM_MAX_CLAIMS = 3
    monkeypatch.setattr(fanout, "_fan_out", fan_out_dies)
    event = TriggerEventFactory()

    for run in range(1, 4):
        run_dies_and_its_claim_goes_stale(event, claim=f"task-{run}")
        enqueued.clear()
        tasks.reconcile()
        event.refresh_from_db()
        if run < 3:  # one crash, or two, and the event is run again
            assert (event.status, event.internal_errors) == (TriggerEvent.Status.RECEIVED, run)
            assert enqueued.of(pipeline.WORKFLOW) == [(event.pk,)]

    assert (event.status, event.internal_errors) == (TriggerEvent.Status.FAILED, 3)
    assert event.error == (
        "its fan-out never finished in 3 runs, the last one lost with its worker (a fan-out "
        "that kills its worker?); given up after NORM_MAX_CLAIMS"
    )
    assert event.processed_at is not None
    assert enqueued.calls == []
    fanout.trigger_event_run(trigger_event_id=event.pk, claim="task-4")  # a late redelivery
    assert TriggerEvent.objects.get(pk=event.pk).status == TriggerEvent.Status.FAILED


def test_a_fan_out_whose_worker_died_once_is_run_again_and_finishes(
    enqueued: Enqueued, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings.NORM_MAX_CLAIMS = 2
    event = TriggerEventFactory(to=["ann"])
    with monkeypatch.context() as patched:
        patched.setattr(fanout, "_fan_out", fan_out_dies)
        run_dies_and_its_claim_goes_stale(event, claim="task-1")
    tasks.reconcile()
    assert enqueued.of(pipeline.WORKFLOW) == [(event.pk,)]

    fanout.trigger_event_run(trigger_event_id=event.pk, claim="task-2")

    event.refresh_from_db()
    assert (event.status, event.error, event.recipients) == ("processed", "", 1)
    assert enqueued.of(pipeline.SUBSCRIBER) == [(event.pk, {"subscriberId": "ann"})]


def test_a_fan_out_slower_than_the_stale_claim_still_finishes_processed(
    enqueued: Enqueued, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run that outlasts NORM_STALE_CLAIM_SECONDS has its claim released (and counted)
    while it works; it finishes the event processed, and the rerun sent meanwhile finds
    nothing to do."""
    settings.NORM_MAX_CLAIMS = 2
    fan_out = fanout._fan_out

    def slow_fan_out(*, trigger_event_id: int) -> None:
        TriggerEvent.objects.filter(pk=trigger_event_id).update(
            claimed_at=ago(STALE + 1), created_at=ago(STALE + 1)
        )
        tasks.reconcile()  # while this run still works
        fan_out(trigger_event_id=trigger_event_id)

    monkeypatch.setattr(fanout, "_fan_out", slow_fan_out)
    event = TriggerEventFactory(to=["ann"])

    fanout.trigger_event_run(trigger_event_id=event.pk, claim="task-1")
    assert enqueued.of(pipeline.WORKFLOW) == [(event.pk,)]  # the reconciler's rerun
    fanout.trigger_event_run(trigger_event_id=event.pk, claim="task-2")

    event.refresh_from_db()
    assert (event.status, event.error, event.recipients) == ("processed", "", 1)
    assert enqueued.of(pipeline.SUBSCRIBER) == [(event.pk, {"subscriberId": "ann"})]


def test_a_fan_out_given_up_while_only_slow_ends_processed_without_the_reason(
    enqueued: Enqueued, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At the bound, the reconciler fails an event whose run's claim went stale, taking it
    for a run that died. A run only slow then finishes, and every command went: it ended
    processed still saying its fan-out never finished."""
    settings.NORM_MAX_CLAIMS = 1
    event = TriggerEventFactory(to=["ann"])
    parse = fanout.parse_recipients

    def slow_parse(to: Any) -> Any:  # mid-fan-out
        TriggerEvent.objects.filter(pk=event.pk).update(claimed_at=ago(STALE + 1))
        tasks.reconcile()  # while this run still works
        assert TriggerEvent.objects.get(pk=event.pk).status == "failed"
        return parse(to)

    monkeypatch.setattr(fanout, "parse_recipients", slow_parse)

    fanout.trigger_event_run(trigger_event_id=event.pk, claim="task-1")

    event.refresh_from_db()
    assert (event.status, event.error, event.recipients) == ("processed", "", 1)
    assert enqueued.of(pipeline.SUBSCRIBER) == [(event.pk, {"subscriberId": "ann"})]


def test_a_fan_out_given_up_while_only_slow_is_run_again_for_a_command_lost_later(
    enqueued: Enqueued, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run given up at the bound came back: counted still as one that never did, the
    event stayed at NORM_MAX_CLAIMS, and the reconciler's rerun for a command the broker
    lost afterwards failed it at once ("its fan-out never finished"); bob never got his
    notification."""
    settings.NORM_MAX_CLAIMS = 1
    event = TriggerEventFactory(to=["ann", "bob"])
    parse = fanout.parse_recipients

    def slow_parse(to: Any) -> Any:  # mid-fan-out, the reconciler gives the event up
        TriggerEvent.objects.filter(pk=event.pk).update(claimed_at=ago(STALE + 1))
        tasks.reconcile()
        return parse(to)

    with monkeypatch.context() as patched:
        patched.setattr(fanout, "parse_recipients", slow_parse)
        fanout.trigger_event_run(trigger_event_id=event.pk, claim="task-1")
    # Ann's command runs; bob's is lost with the broker.
    subscriber_services.subscriber_process(
        trigger_event_id=event.pk, recipient={"subscriberId": "ann"}
    )
    _time_passes(GRACE * 2)
    enqueued.clear()
    tasks.reconcile()
    assert enqueued.of(pipeline.WORKFLOW) == [(event.pk,)]

    fanout.trigger_event_run(trigger_event_id=event.pk, claim="task-2")

    event.refresh_from_db()
    assert (event.status, event.error, event.recipients) == ("processed", "", 2)
    assert enqueued.of(pipeline.SUBSCRIBER) == [(event.pk, {"subscriberId": "bob"})]


def test_a_canceled_trigger_event_whose_run_died_ends_canceled(enqueued: Enqueued) -> None:
    """Canceled while a run held it, and the run died (or the broker refused its
    commands): released, it stayed received for good, as no run claims a canceled event."""
    died = TriggerEventFactory(status=TriggerEvent.Status.PROCESSING)
    refused = TriggerEventFactory()
    TriggerEvent.objects.filter(pk=died.pk).update(claimed_at=ago(STALE + 1))
    TriggerEvent.objects.update(canceled_at=ago(STALE), created_at=ago(STALE + 1))

    assert tasks.reconcile()["events"] == 0

    assert enqueued.calls == []
    assert set(TriggerEvent.objects.values_list("status", flat=True)) == {"canceled"}
    fanout.trigger_event_run(trigger_event_id=refused.pk)
    assert TriggerEvent.objects.get(pk=refused.pk).status == TriggerEvent.Status.CANCELED


def test_a_canceled_trigger_event_whose_last_allowed_run_died_ends_canceled_not_failed(
    enqueued: Enqueued, settings: Any
) -> None:
    """Canceled while its last run NORM_MAX_CLAIMS allows held it, and the run died: the
    caller asked for no more of it, so it ends canceled, as one released earlier does,
    not failed as a fan-out that kills its worker (which the activity API and the
    admin show as an error, and which an admin's retry would not take anyway)."""
    settings.NORM_MAX_CLAIMS = 3
    died = TriggerEventFactory(status=TriggerEvent.Status.PROCESSING, internal_errors=2)
    TriggerEvent.objects.filter(pk=died.pk).update(
        claimed_at=ago(STALE + 1), canceled_at=ago(STALE), created_at=ago(STALE + 1)
    )

    tasks.reconcile()

    died.refresh_from_db()
    assert (died.status, died.error) == (TriggerEvent.Status.CANCELED, "")
    assert enqueued.calls == []


def test_a_fan_out_short_of_its_recipients_is_run_again_within_an_hour_of_it(
    enqueued: Enqueued,
) -> None:
    """Subscriber commands lost with the broker: the event was processed for three
    recipients but one notification exists. The hour runs from the fan-out, so an
    event that first waited two hours in a backed-up queue is checked too."""
    fanned_out = {"status": TriggerEvent.Status.PROCESSED, "recipients": 3}
    late = TriggerEventFactory(**fanned_out)
    long_done = TriggerEventFactory(**fanned_out)
    for event in (late, long_done):
        NotificationFactory(trigger_event=event)
    TriggerEvent.objects.filter(pk=late.pk).update(
        created_at=ago(7200),
        claimed_at=ago(GRACE + 1),
        processed_at=ago(GRACE + 1),
        recheck_from=ago(GRACE + 1),
    )
    TriggerEvent.objects.filter(pk=long_done.pk).update(
        created_at=ago(7200), claimed_at=ago(3700), processed_at=ago(3700), recheck_from=ago(3700)
    )
    Notification.objects.update(created_at=ago(GRACE + 1))

    assert tasks.reconcile()["events"] == 1

    assert enqueued.of(pipeline.WORKFLOW) == [(late.pk,)]
    late.refresh_from_db()
    assert late.status == TriggerEvent.Status.RECEIVED


def test_the_hour_a_fan_out_is_checked_in_runs_from_when_it_ran(enqueued: Enqueued) -> None:
    """The fan-out starts its event's hour of checks as it ends (recheck_from): one that
    waited two hours in a backed-up workflows queue, its hour counted from the trigger,
    was past it before it ran, and a subscriber command lost with the broker then was
    never sent again: its recipient never got the notification."""
    event = TriggerEventFactory(to=["ann", "bob"])
    TriggerEvent.objects.filter(pk=event.pk).update(created_at=ago(7200), recheck_from=ago(7200))
    tasks.workflow_run(event.pk)
    event.refresh_from_db()
    assert (event.status, event.recipients) == (TriggerEvent.Status.PROCESSED, 2)

    enqueued.clear()  # its subscriber commands, lost with the broker
    TriggerEvent.objects.filter(pk=event.pk).update(claimed_at=ago(GRACE + 1))
    assert tasks.reconcile()["events"] == 1

    assert enqueued.of(pipeline.WORKFLOW) == [(event.pk,)]
    event.refresh_from_db()
    assert (event.status, event.refanned) == (TriggerEvent.Status.RECEIVED, 1)


@pytest.mark.parametrize(
    ("checked", "skewed"),
    [(3600 - 10, "delete"), (3600 + 10, "reconcile")],
    ids=["web-host-ahead", "reconciling-worker-behind"],
)
def test_a_subscriber_deleted_as_its_events_hour_of_checks_ends_is_not_fanned_out_to_again(
    enqueued: Enqueued, monkeypatch: pytest.MonkeyPatch, checked: float, skewed: str
) -> None:
    """A subscriber's delete counts it out of the events the reconciler still checks, and
    each read the event's hour on its own host's clock. The web host's 30 s ahead of the
    reconciling worker's, a delete within 30 s of an event's hour's end found it over and
    did not count ann out, while the reconciler still checked it: ann's notification gone
    with her, it found the event short and fanned it out again, made ann anew and sent
    her the workflow a second time."""
    client = ClientFactory()
    ann = SubscriberFactory(client=client, subscriber_id="ann")
    bob = SubscriberFactory(client=client, subscriber_id="bob")
    event = TriggerEventFactory(
        client=client, to=["ann", "bob"], status=TriggerEvent.Status.PROCESSED, recipients=2
    )
    for subscriber in (ann, bob):
        NotificationFactory(trigger_event=event, subscriber=subscriber)
    TriggerEvent.objects.filter(pk=event.pk).update(
        created_at=ago(checked + 5),
        claimed_at=ago(checked),
        processed_at=ago(checked),
        recheck_from=ago(checked),
    )
    Notification.objects.update(created_at=ago(checked))
    true_now = timezone.now

    def on_clock(seconds: float) -> None:  # this process's clock, `seconds` off
        monkeypatch.setattr(timezone, "now", lambda: true_now() + timedelta(seconds=seconds))

    on_clock(30 if skewed == "delete" else 0)
    subscriber_services.subscriber_delete(subscriber=ann)
    on_clock(-30 if skewed == "reconcile" else 0)
    tasks.reconcile()

    assert enqueued.of(pipeline.WORKFLOW) == []
    event.refresh_from_db()
    assert (event.status, event.refanned) == (TriggerEvent.Status.PROCESSED, 0)


ON_SQLITE = """
from datetime import timedelta
from django.db import transaction
from django.utils import timezone
from tests.factories import StepFactory
from workflows.models import Step
from workflows.services import fanout, reconciler
step = StepFactory(status=Step.Status.SCHEDULED, due_at=timezone.now() - timedelta(hours=1))
with transaction.atomic():
    fanout.fan_outs_forget(subscriber=step.notification.subscriber)
found = reconciler._reconcile()
"""


def test_a_tick_on_sqlite_runs_whole_and_sends_a_due_step(tmp_path: Path) -> None:
    """`make run`'s SQLite has none of PostgreSQL's clock functions: a tick that read the
    database's clock (for a fan-out's hour of checks) failed there on every run, a
    warning, and with it everything after it: no long delay, send retry or lost work
    was ever sent again under make run. The subscriber delete reads that hour too."""
    assert on_sqlite(tmp_path, ON_SQLITE)["steps"] == 1


def _short_fan_out(*, claimed: float, last_created: float, refanned: int = 0) -> TriggerEvent:
    """A processed event for three recipients that reached one, fanned out (or again,
    `refanned` times) `claimed` seconds ago, its notification created `last_created` ago."""
    event = TriggerEventFactory(status=TriggerEvent.Status.PROCESSED, recipients=3)
    notification = NotificationFactory(trigger_event=event)
    TriggerEvent.objects.filter(pk=event.pk).update(
        created_at=ago(claimed + 5),
        claimed_at=ago(claimed),
        processed_at=ago(claimed),
        recheck_from=ago(claimed),
        refanned=refanned,
    )
    Notification.objects.filter(pk=notification.pk).update(created_at=ago(last_created))
    return event


def test_a_tick_runs_a_batch_of_short_fan_outs_again_at_most(
    enqueued: Enqueued, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a broker lost the commands of thousands of triggers, each tick lets a batch
    of them go for a rerun, as it re-sends a batch of each other kind: all at once, their
    reruns flooded the workflows queue with every lost recipient's command together."""
    monkeypatch.setattr(reconciler, "REDRIVE_BATCH", 2)
    for _ in range(3):
        _short_fan_out(claimed=GRACE * 10, last_created=GRACE * 10)

    assert tasks.reconcile()["events"] == 2
    assert TriggerEvent.objects.filter(status=TriggerEvent.Status.RECEIVED).count() == 2

    enqueued.clear()  # taken by the workflow workers
    assert tasks.reconcile()["events"] == 1
    assert TriggerEvent.objects.filter(status=TriggerEvent.Status.RECEIVED).count() == 3


def test_a_fan_out_that_reached_every_recipient_is_not_run_again(enqueued: Enqueued) -> None:
    """As many notifications as recipients: nothing was lost, nothing to run again."""
    event = _short_fan_out(claimed=GRACE * 10, last_created=GRACE * 10)
    TriggerEvent.objects.filter(pk=event.pk).update(recipients=1)

    assert tasks.reconcile()["events"] == 0

    assert enqueued.calls == []
    event.refresh_from_db()
    assert (event.status, event.refanned) == (TriggerEvent.Status.PROCESSED, 0)


def test_a_fan_out_whose_notifications_are_still_being_created_is_not_run_again(
    enqueued: Enqueued,
) -> None:
    """Its subscriber commands are queued behind others, not lost: the last of its
    notifications was created within the grace period."""
    busy = _short_fan_out(claimed=GRACE * 10, last_created=5)
    quiet = _short_fan_out(claimed=GRACE * 10, last_created=GRACE + 1)

    assert tasks.reconcile()["events"] == 1

    assert enqueued.of(pipeline.WORKFLOW) == [(quiet.pk,)]
    busy.refresh_from_db()
    assert busy.status == TriggerEvent.Status.PROCESSED and busy.refanned == 0


def test_a_fan_out_cut_short_by_its_cancel_is_not_run_again(enqueued: Enqueued) -> None:
    """Its other recipients got no notification because the trigger was canceled."""
    canceled = _short_fan_out(claimed=GRACE * 10, last_created=GRACE * 10)
    TriggerEvent.objects.filter(pk=canceled.pk).update(canceled_at=ago(GRACE * 9))

    for _ in range(2):
        assert tasks.reconcile()["events"] == 0

    assert enqueued.calls == []
    canceled.refresh_from_db()
    assert (canceled.status, canceled.refanned) == (TriggerEvent.Status.PROCESSED, 0)


def test_a_fan_out_run_again_waits_twice_as_long_before_the_next_run(
    enqueued: Enqueued,
) -> None:
    """While a backed-up queue still holds a rerun's commands, rerunning it every grace
    period would queue them all again each time."""
    once_recently = _short_fan_out(claimed=GRACE + 10, last_created=GRACE * 10, refanned=1)
    once_long_ago = _short_fan_out(claimed=GRACE * 2 + 10, last_created=GRACE * 10, refanned=1)
    thrice = _short_fan_out(claimed=GRACE * 7, last_created=GRACE * 10, refanned=3)

    assert tasks.reconcile()["events"] == 1

    assert enqueued.of(pipeline.WORKFLOW) == [(once_long_ago.pk,)]
    for waiting in (once_recently, thrice):  # 2 and 8 grace periods after their last run
        waiting.refresh_from_db()
        assert waiting.status == TriggerEvent.Status.PROCESSED
    once_long_ago.refresh_from_db()
    assert once_long_ago.refanned == 2


def test_a_fan_out_that_stays_short_is_run_again_a_bounded_number_of_times(
    enqueued: Enqueued, settings: Any
) -> None:
    """Each run starts the FANOUT_RECHECK window again: with a short grace period the
    reconciler ran a fan-out that never reaches everyone (a subscriber command that
    fails every time) once every 256 grace periods, for good."""
    settings.NORM_RECONCILE_GRACE = 10
    last = _short_fan_out(claimed=10 * 2**8 + 5, last_created=10 * 2**8, refanned=7)
    after_it = _short_fan_out(claimed=10 * 2**8 + 5, last_created=10 * 2**8, refanned=8)

    assert tasks.reconcile()["events"] == 1

    assert enqueued.of(pipeline.WORKFLOW) == [(last.pk,)]
    after_it.refresh_from_db()
    assert (after_it.status, after_it.refanned) == (TriggerEvent.Status.PROCESSED, 8)


def test_a_step_the_broker_holds_until_it_is_due_is_left_to_the_broker_a_grace_period(
    enqueued: Enqueued,
) -> None:
    """A delay (or a send's backoff) enqueued with a countdown: its task arrives when the
    step is due, not a grace period after it was enqueued."""
    arriving = step_at(due=5, enqueued=GRACE * 30)
    lost = step_at(due=GRACE + 5, enqueued=GRACE * 30)

    assert tasks.reconcile()["steps"] == 1

    assert enqueued.of(pipeline.MESSAGE) == [(lost.pk,)]
    arriving.refresh_from_db()
    assert arriving.enqueued_at < ago(GRACE)


def _scans(sql: str, table: str, *, analyze: bool = False) -> list[dict[str, Any]]:
    """The nodes of `sql`'s plan that read `table` (with sequential scans off: the test
    tables are too small for the planner to choose an index on its own)."""
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute(f"EXPLAIN (FORMAT JSON, ANALYZE {analyze}) {sql}")
        (plan,) = cursor.fetchone()
    found, nodes = [], [plan[0]["Plan"]]
    while nodes:
        node = nodes.pop()
        nodes.extend(node.get("Plans", []))
        if node.get("Relation Name") == table:
            found.append(node)
    return found


def _reconcile_sqls(starts: str) -> list[str]:
    with CaptureQueriesContext(connection) as queries:
        tasks.reconcile()
    return [q["sql"] for q in queries if q["sql"].startswith(starts)]


def _reconcile_sql(starts: str) -> str:
    (sql,) = _reconcile_sqls(starts)
    return sql


_SHORT_CHECK = (
    'SELECT "notify_triggerevent"."id" AS "pk" FROM "notify_triggerevent" '
    'WHERE ("notify_triggerevent"."canceled_at" IS NULL'
)


def test_the_check_for_short_fan_outs_reads_only_the_last_hour(enqueued: Enqueued) -> None:
    """It runs every NORM_RECONCILE_INTERVAL: found by their status alone, every event
    ever processed was read each time (a million took 70 ms and 26,000 pages a run)."""
    TriggerEventFactory(status=TriggerEvent.Status.PROCESSED, recipients=1)
    sql = _reconcile_sql(_SHORT_CHECK)

    conditions = [
        node.get("Index Cond", "") + node.get("Recheck Cond", "")
        for node in _scans(sql, "notify_triggerevent")
    ]
    assert any("recheck_from" in condition for condition in conditions)


def test_the_check_for_short_fan_outs_counts_each_events_notifications_on_their_own(
    enqueued: Enqueued,
) -> None:
    """Counted over a join of all the last hour's events, the planner took each event to
    have the table's average number of notifications and read every notification of
    every event ever made at each run: 110 ms, every few seconds, for 2,000 events of one
    notification among 600,000 (now 2 ms, through the trigger_event_id index)."""
    _short_fan_out(claimed=GRACE * 10, last_created=GRACE * 10)
    sql = _reconcile_sql(_SHORT_CHECK)

    # The notifications are read only in subqueries on the event at hand (its count, and
    # whether one is recent), which the trigger_event_id index serves.
    assert 'JOIN "workflows_notification"' not in sql
    assert sql.count('"trigger_event_id" = ("notify_triggerevent"."id")') == 2, sql


def _assert_a_run_reads_no_notification() -> None:
    """A reconcile run's search for idle notifications (pending, then running) reads no
    row of the table, as its plan ran it."""
    sqls = _reconcile_sqls('SELECT "workflows_notification"."id" AS "pk"')

    assert len(sqls) == 2  # pending, then running
    for sql in sqls:
        scans = _scans(sql, "workflows_notification", analyze=True)
        assert scans
        assert sum(n["Actual Rows"] + n.get("Rows Removed by Filter", 0) for n in scans) == 0


def test_a_run_reads_no_notification_waiting_for_a_delay(
    monkeypatch: pytest.MonkeyPatch, enqueued: Enqueued, settings: Any
) -> None:
    """A broadcast with a day's delay leaves its notifications running for a day. Each
    run looked at every one for an open step (300,000 took 4.7 s, every 10 s) to find
    the few idle ones; one waiting for its step is not read until the step is due."""
    settings.NORM_RECONCILE_GRACE = 0  # the recorded step's grace period is over at once
    waiting = NotificationFactory()
    delay = {"done": False, "stepId": "wait", "type": "delay"}
    monkeypatch.setattr(
        bridge, "execute", lambda *a, **kw: {**delay, "outputs": {"amount": 1, "unit": "days"}}
    )
    echo.echo_run(notification_id=str(waiting.pk))
    assert waiting.steps.get().status == Step.Status.SCHEDULED

    _assert_a_run_reads_no_notification()


def test_a_run_reads_no_notification_whose_step_waits_to_be_sent_again(
    enqueued: Enqueued, settings: Any
) -> None:
    """A provider down fails the sends of a whole broadcast for now, each step back on the
    schedule minutes or hours out. Its notification, quiet since the step was recorded,
    was read by every run for an open step, as long as the outage lasted (as one waiting
    for a delay was); one whose step waits to be sent again is not read until it is due."""
    settings.NORM_RECONCILE_GRACE = 0  # the step's grace period is over at once
    step = bookkeeping.step_claim(step_id=StepFactory().pk)
    assert step is not None
    bookkeeping.step_retry_later(step=step, message="421 try later", backoff=3600)

    _assert_a_run_reads_no_notification()


def test_nothing_stalled_means_nothing_enqueued(enqueued: Enqueued) -> None:
    TriggerEventFactory()
    NotificationFactory(status=Notification.Status.RUNNING)
    StepFactory(due_at=timezone.now() + timedelta(minutes=5))
    assert tasks.reconcile() == {"events": 0, "cancels": 0, "notifications": 0, "steps": 0}
    assert enqueued.calls == []


def test_beat_sends_the_reconciler_to_a_queue_of_its_own_that_workers_serve(settings) -> None:
    """On `workflows`, behind a backlog of triggers, each reconcile message outwaited its
    `expires` (one interval) and none ran until the backlog cleared."""
    entry = settings.CELERY_BEAT_SCHEDULE["reconcile"]
    stages = (pipeline.WORKFLOW, pipeline.SUBSCRIBER, pipeline.SUBSCRIBER_BATCH)
    stages += (pipeline.ECHO, pipeline.MESSAGE)
    assert entry["task"] == pipeline.RECONCILE.task
    assert entry["options"]["queue"] == pipeline.RECONCILE.queue
    assert pipeline.RECONCILE.queue not in {stage.queue for stage in stages}
    # The queues rundemo's, the bench's and the e2e tests' workers serve.
    assert pipeline.RECONCILE.queue in pipeline.QUEUES


def test_a_tick_says_what_it_re_drove_and_why_and_an_idle_one_says_nothing(
    enqueued: Enqueued, caplog: pytest.LogCaptureFixture
) -> None:
    """Its only trace was Celery's "succeeded" with counts, every tick alike, and claims
    it took back from a dead worker were in no count at all."""
    stale = StepFactory(status=Step.Status.PROCESSING)
    Step.objects.filter(pk=stale.pk).update(claimed_at=ago(STALE + 1), due_at=ago(STALE + 1))
    step_at(due=GRACE + 30, enqueued=GRACE + 30)  # its broker message lost

    with caplog.at_level("INFO", logger="workflows.services"):
        tasks.reconcile()
    said = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert said == [
        (
            "WARNING",
            "reconcile: claims older than NORM_STALE_CLAIM_SECONDS (a worker died or hung): "
            "0 trigger event(s) and 1 step(s) run again, 0 step(s) of ended notifications "
            "canceled unsent",
        ),
        (
            "INFO",
            "reconcile: enqueued again 0 trigger event(s), 0 cancel(s), 2 step(s) and "
            "0 notification(s) that stalled",
        ),
    ]

    caplog.clear()
    with caplog.at_level("INFO", logger="workflows.services"):
        tasks.reconcile()
    assert caplog.records == []


def test_a_tick_the_database_fails_is_one_warning_a_minute_without_traceback(
    enqueued: Enqueued, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Beat sends a tick every NORM_RECONCILE_INTERVAL (10 s): each one the database
    failed was an ERROR with its traceback (Celery's "raised unexpected"), six a minute
    for as long as the database was away. The next tick is the retry."""
    away = DatabaseAway()
    monkeypatch.setattr(reconciler, "_update_unheld", away)

    for _ in range(3):
        tasks.reconcile.apply()

    assert away.calls == 3
    [record] = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert record.levelno == logging.WARNING and record.exc_info is None
    assert "reconcile" in record.getMessage()
    assert "server closed the connection unexpectedly" in record.getMessage()


def test_a_tick_the_broker_fails_is_one_warning_a_minute_without_traceback(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """As a tick the database fails: the broker away (a restart, a failover), each tick
    raised, Celery's ERROR and traceback every 10 s for as long as it was away."""

    def broker_away(queue: str) -> int:
        raise kombu.exceptions.OperationalError("Error 111 connecting to 127.0.0.1:6379")

    monkeypatch.setattr(pipeline, "backlog", broker_away)

    for _ in range(3):
        assert tasks.reconcile.apply().get() == {
            "events": 0,
            "cancels": 0,
            "notifications": 0,
            "steps": 0,
        }

    [record] = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert record.levelno == logging.WARNING and record.exc_info is None
    assert "Error 111 connecting" in record.getMessage()
