"""A bug in norm's own code (an exception none of the pipeline's handlers expects) that
ends a subscriber command: the trigger event, short of those recipients' notifications,
shows why, through the reconciler's (bounded) reruns of its fan-out.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

import pytest
from django.db.models import F

from config import pipeline
from notify.models import TriggerEvent
from subscribers import services
from subscribers import tasks as subscriber_tasks
from tests.conftest import DatabaseAway, Enqueued, a_bug
from tests.factories import SubscriberFactory, TriggerEventFactory
from workflows import tasks as workflow_tasks
from workflows.models import Notification
from workflows.services import fanout, reconciler

pytestmark = pytest.mark.django_db

GRACE = 60
BUG = "KeyError: 'stepId'"


@pytest.fixture(autouse=True)
def _timing(settings: Any) -> None:
    settings.NORM_RECONCILE_GRACE = GRACE


def fan_out(event: TriggerEvent, enqueued: Enqueued) -> None:
    """The event's fan-out, then the subscriber commands it sent."""
    enqueued.clear()
    workflow_tasks.workflow_run.apply(args=[event.pk])
    for args in enqueued.of(pipeline.SUBSCRIBER):
        subscriber_tasks.subscriber_process.apply(args=list(args))
    for args in enqueued.of(pipeline.SUBSCRIBER_BATCH):
        subscriber_tasks.subscribers_process.apply(args=list(args))
    event.refresh_from_db()


def reconciled_again(event: TriggerEvent, enqueued: Enqueued) -> bool:
    """Whether the reconciler fans the event out again once its wait has passed."""
    wait = timedelta(seconds=GRACE * 2**event.refanned + 1)
    TriggerEvent.objects.filter(pk=event.pk).update(
        created_at=F("created_at") - wait,
        claimed_at=F("claimed_at") - wait,
        processed_at=F("processed_at") - wait,
        recheck_from=F("recheck_from") - wait,
    )
    enqueued.clear()
    reconciler.reconcile()
    return enqueued.of(pipeline.WORKFLOW) == [(event.pk,)]


def test_a_recipient_a_bug_ends_is_the_events_error_through_its_bounded_reruns(
    enqueued: Enqueued, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(services, "notification_create", a_bug)
    event = TriggerEventFactory(to=["ann"])
    runs = 0
    with caplog.at_level(logging.ERROR, logger="subscribers.services"):
        while True:
            fan_out(event, enqueued)
            runs += 1
            assert event.status == TriggerEvent.Status.PROCESSED
            assert event.error == f"no notification was created for subscriber 'ann': {BUG}"
            if not reconciled_again(event, enqueued):
                break
            assert runs < 20, "fanned out again for good"

    # The reconciler's reruns of a short fan-out stop (FANOUT_RECHECK); the reason stays.
    assert 1 < runs <= 1 + reconciler.MAX_REFANS
    event.refresh_from_db()
    assert event.status == TriggerEvent.Status.PROCESSED
    assert event.error.startswith("no notification was created for subscriber 'ann': KeyError")
    assert not Notification.objects.exists()
    # The traceback went to the log, once: the commands after it, within the minute, are
    # held back (one a minute per bug, see test_logs).
    assert sum(r.exc_info is not None for r in caplog.records) == 1


def test_the_reason_of_a_command_that_ends_before_its_fan_out_is_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A subscriber worker runs a command as soon as it is sent, and a broadcast's first
    chunks end long before its fan-out: the fan-out's end does not clear their reason."""
    monkeypatch.setattr(services, "notification_create", a_bug)

    def at_once(stage: pipeline.Stage, *args: Any, **kwargs: Any) -> None:
        if stage == pipeline.SUBSCRIBER:
            subscriber_tasks.subscriber_process.apply(args=list(args))

    monkeypatch.setattr(pipeline, "send_now", at_once)
    event = TriggerEventFactory(to=["ann"])

    workflow_tasks.workflow_run.apply(args=[event.pk])

    event.refresh_from_db()
    assert event.status == TriggerEvent.Status.PROCESSED
    assert event.error == f"no notification was created for subscriber 'ann': {BUG}"


def test_a_chunk_a_bug_ends_is_the_events_error(
    enqueued: Enqueued, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(services, "notifications_create", a_bug)
    event = TriggerEventFactory(mode=TriggerEvent.Mode.BROADCAST, to=None)
    for subscriber_id in ("ann", "bob"):
        SubscriberFactory(client=event.client, subscriber_id=subscriber_id)

    fan_out(event, enqueued)

    assert event.error == f"no notification was created for 2 subscribers ('ann', …): {BUG}"


def test_the_rerun_once_the_bug_is_gone_reaches_the_recipient_and_clears_the_reason(
    enqueued: Enqueued,
) -> None:
    bug = pytest.MonkeyPatch()
    bug.setattr(services, "notification_create", a_bug)
    event = TriggerEventFactory(to=["ann"])
    fan_out(event, enqueued)
    assert event.error.startswith("no notification was created")
    bug.undo()

    assert reconciled_again(event, enqueued)
    fan_out(event, enqueued)

    assert (event.status, event.error) == (TriggerEvent.Status.PROCESSED, "")
    assert Notification.objects.get().subscriber.subscriber_id == "ann"


def test_the_database_away_is_no_bug_and_is_retried_by_celery(
    enqueued: Enqueued, monkeypatch: pytest.MonkeyPatch
) -> None:
    database_away = DatabaseAway()
    monkeypatch.setattr(services, "notification_create", database_away)
    event = TriggerEventFactory(to=["ann"])

    fan_out(event, enqueued)

    assert database_away.calls == 11  # DB_RETRY: the first run and its 10 retries
    assert event.error == ""


def test_a_bug_every_chunk_of_a_broadcast_trips_on_names_its_trigger_event_once(
    enqueued: Enqueued, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The line a bug logs once a minute names the rows it held back since: each chunk of
    a broadcast is a row of the one trigger event, which the line named once per chunk
    (the same id ten times over, "and 490 more" of it), saying nothing more."""
    monkeypatch.setattr(services, "notifications_create", a_bug)
    monkeypatch.setattr(fanout, "BROADCAST_CHUNK", 1)
    monkeypatch.setattr(pipeline._bugs, "PERIOD", 3600.0)  # the chunks' within one line's
    event = TriggerEventFactory(mode=TriggerEvent.Mode.BROADCAST, to=None)
    for subscriber_id in ("ann", "bob", "carl", "dan"):
        SubscriberFactory(client=event.client, subscriber_id=subscriber_id)
    fan_out(event, enqueued)
    assert len([r for r in caplog.records if r.exc_info is not None]) == 1
    caplog.clear()
    monkeypatch.setattr(pipeline._bugs, "PERIOD", 0.0)

    subscriber_tasks.subscribers_process.apply(args=[event.pk, ["ann"]])

    [record] = [r for r in caplog.records if r.exc_info is not None]
    assert record.getMessage() == (
        f"a chunk of trigger event {event.pk} failed (3 more such since the last such "
        f"line: {event.pk})"
    )


def test_a_command_a_bug_ends_leaves_the_reason_of_an_event_failed_meanwhile(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The event failed (its fan-out given up after NORM_MAX_CLAIMS) while one of its
    commands was queued: that command's bug does not put its reason over the event's."""
    monkeypatch.setattr(services, "notification_create", a_bug)
    given_up = "its fan-out never finished in 3 runs; given up after NORM_MAX_CLAIMS"
    event = TriggerEventFactory(to=["ann"], status=TriggerEvent.Status.FAILED, error=given_up)

    subscriber_tasks.subscriber_process.apply(args=[event.pk, {"subscriberId": "ann"}])

    event.refresh_from_db()
    assert (event.status, event.error) == (TriggerEvent.Status.FAILED, given_up)
