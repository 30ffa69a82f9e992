"""The reconciler re-drives a fan-out whose subscriber commands were lost with the broker."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from config import pipeline
from notify.models import TriggerEvent
from subscribers.models import Topic, TopicSubscription
from tests.conftest import Enqueued
from tests.factories import NotificationFactory, SubscriberFactory, TriggerEventFactory
from workflows import tasks
from workflows.models import Notification

pytestmark = pytest.mark.django_db

GRACE = 60


@pytest.fixture(autouse=True)
def _timing(settings: Any) -> None:
    settings.NORM_RECONCILE_GRACE = GRACE


def fanned_out(event: TriggerEvent, *, seconds_ago: float = GRACE + 1) -> TriggerEvent:
    """Run the event's fan-out, as if `seconds_ago`, keeping none of its commands."""
    tasks.workflow_run(event.pk)
    TriggerEvent.objects.filter(pk=event.pk).update(
        created_at=timezone.now() - timedelta(seconds=seconds_ago + 1),
        claimed_at=timezone.now() - timedelta(seconds=seconds_ago),
    )
    event.refresh_from_db()
    return event


def reached(event: TriggerEvent, *subscriber_ids: str, seconds_ago: float = GRACE + 1) -> None:
    """Notifications made for these subscribers `seconds_ago` (the fan-out's last)."""
    for subscriber_id in subscriber_ids:
        subscriber = SubscriberFactory(client=event.client, subscriber_id=subscriber_id)
        notification = NotificationFactory(trigger_event=event, subscriber=subscriber)
        Notification.objects.filter(pk=notification.pk).update(
            created_at=timezone.now() - timedelta(seconds=seconds_ago)
        )


def test_a_fan_out_still_creating_notifications_is_not_sent_again(enqueued: Enqueued) -> None:
    event = fanned_out(TriggerEventFactory(to=["ann", "bob"]))
    reached(event, "ann", seconds_ago=1)  # bob's command may just be queued behind others
    enqueued.clear()

    assert tasks.reconcile()["events"] == 0
    assert enqueued.of(pipeline.WORKFLOW) == []


def test_lost_commands_are_sent_again_to_the_unreached_only(enqueued: Enqueued) -> None:
    event = fanned_out(
        TriggerEventFactory(to=["ann", "bob", {"subscriberId": "cid", "email": "c@x.io"}])
    )
    reached(event, "ann")  # the commands of bob and cid were lost
    enqueued.clear()

    assert tasks.reconcile()["events"] == 1
    assert enqueued.of(pipeline.WORKFLOW) == [(event.pk,)]
    tasks.workflow_run(event.pk)

    assert enqueued.of(pipeline.SUBSCRIBER) == [
        (event.pk, {"subscriberId": "bob"}),
        (event.pk, {"subscriberId": "cid", "email": "c@x.io"}),
    ]
    event.refresh_from_db()
    assert event.status == TriggerEvent.Status.PROCESSED and event.recipients == 3


def test_each_run_again_waits_twice_as_long_as_the_last(enqueued: Enqueued) -> None:
    """While a backed-up queue holds a run's commands, running it every grace period
    would queue them all again each time."""
    event = fanned_out(TriggerEventFactory(to=["ann", "bob", "cid"]))
    reached(event, "ann")
    enqueued.clear()  # the commands of bob and cid were lost
    assert tasks.reconcile()["events"] == 1
    tasks.workflow_run(event.pk)  # bob's and cid's commands queued again: still short
    enqueued.clear()

    def last_run(seconds_ago: float) -> None:
        TriggerEvent.objects.filter(pk=event.pk).update(
            claimed_at=timezone.now() - timedelta(seconds=seconds_ago)
        )

    last_run(GRACE + 1)
    assert tasks.reconcile()["events"] == 0 and enqueued.calls == []
    last_run(2 * GRACE + 1)
    assert tasks.reconcile()["events"] == 1
    event.refresh_from_db()
    assert event.refanned == 2


def test_a_broadcast_is_sent_again_to_the_unreached_only(enqueued: Enqueued) -> None:
    event = TriggerEventFactory(mode=TriggerEvent.Mode.BROADCAST, to=None)
    for subscriber_id in ("ann", "bob"):
        SubscriberFactory(client=event.client, subscriber_id=subscriber_id)
    event = fanned_out(event)
    old = timezone.now() - timedelta(seconds=GRACE + 1)
    NotificationFactory(
        trigger_event=event,
        subscriber=event.client.subscribers.get(subscriber_id="ann"),
    )
    Notification.objects.filter(trigger_event=event).update(created_at=old)
    enqueued.clear()

    tasks.reconcile()
    tasks.workflow_run(event.pk)

    assert enqueued.of(pipeline.SUBSCRIBER_BATCH) == [(event.pk, ["bob"])]


def test_a_fan_out_that_reached_everyone_is_left_alone(enqueued: Enqueued) -> None:
    complete = fanned_out(TriggerEventFactory(to=["ann"]))
    reached(complete, "ann")
    # Fanned out within the grace: its commands may still be on their way.
    fanned_out(TriggerEventFactory(to=["ann"]), seconds_ago=GRACE - 10)
    canceled = fanned_out(TriggerEventFactory(to=["ann"]))
    TriggerEvent.objects.filter(pk=canceled.pk).update(canceled_at=timezone.now())
    enqueued.clear()

    assert tasks.reconcile()["events"] == 0
    assert enqueued.calls == []


def test_a_subscriber_in_two_topics_is_counted_once_so_the_fan_out_is_not_run_again(
    enqueued: Enqueued,
) -> None:
    event = TriggerEventFactory(to=[{"type": "Topic", "topicKey": "a"}, {"topicKey": "b"}])
    ann = SubscriberFactory(client=event.client, subscriber_id="ann")
    for key in ("a", "b"):
        topic = Topic.objects.create(client=event.client, key=key)
        TopicSubscription.objects.create(topic=topic, subscriber=ann)
    event = fanned_out(event)
    assert len(enqueued.of(pipeline.SUBSCRIBER_BATCH)) == 2  # one command per topic
    assert event.recipients == 1  # one recipient
    NotificationFactory(trigger_event=event, subscriber=ann)
    Notification.objects.filter(trigger_event=event).update(
        created_at=timezone.now() - timedelta(seconds=GRACE + 1)
    )
    enqueued.clear()

    assert tasks.reconcile()["events"] == 0 and enqueued.calls == []
