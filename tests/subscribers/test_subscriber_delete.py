"""A subscriber's delete takes its notifications, their steps and messages with it."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from config import pipeline
from messaging.models import Message
from notify.models import Client, TriggerEvent
from subscribers import services
from subscribers.models import Subscriber, Topic, TopicSubscription
from tests.conftest import Enqueued, ago
from tests.factories import (
    ClientFactory,
    NotificationFactory,
    SubscriberFactory,
    TriggerEventFactory,
)
from workflows import tasks as workflow_tasks
from workflows.models import Notification, Step

pytestmark = pytest.mark.django_db


def _subscriber_with(client: Client, notifications: int) -> Subscriber:
    """A subscriber with `notifications` notifications of two steps each, each step
    with its message, in a topic."""
    subscriber = SubscriberFactory(client=client)
    topic = Topic.objects.create(client=client, key=f"topic-{subscriber.pk}")
    TopicSubscription.objects.create(topic=topic, subscriber=subscriber)
    events = TriggerEvent.objects.bulk_create(
        TriggerEvent(client=client, workflow_id="welcome", transaction_id=f"{subscriber.pk}-{i}")
        for i in range(notifications)
    )
    rows = Notification.objects.bulk_create(
        Notification(client=client, trigger_event=event, subscriber=subscriber) for event in events
    )
    steps = Step.objects.bulk_create(
        Step(notification=n, step_id=f"step-{p}", type="in_app", position=p, due_at=n.created_at)
        for n in rows
        for p in range(2)
    )
    Message.objects.bulk_create(
        Message(step=s, client=client, subscriber=subscriber, channel="in_app") for s in steps
    )
    return subscriber


def _delete(subscriber: Subscriber) -> int:
    """The statements the delete took (its foreign keys checked, as at its commit)."""
    with CaptureQueriesContext(connection) as queries:
        services.subscriber_delete(subscriber=subscriber)
    with connection.cursor() as cursor:
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
    return len(queries)


def test_a_subscribers_delete_takes_as_many_statements_however_many_notifications_it_has() -> None:
    """Django's cascade read every notification and step into Python and deleted them
    by primary key, 100 at a time: 3.8 s (554 statements) for a subscriber with 18,000
    notifications, 36,000 steps and as many messages."""
    client = ClientFactory()
    one, many, other = (_subscriber_with(client, n) for n in (1, 120, 1))

    assert _delete(one) == _delete(many)

    for gone in (one, many):
        assert not Subscriber.objects.filter(pk=gone.pk).exists()
        assert not Notification.objects.filter(subscriber_id=gone.pk).exists()
        assert not Step.objects.filter(notification__subscriber_id=gone.pk).exists()
        assert not Message.objects.filter(subscriber_id=gone.pk).exists()
        assert not TopicSubscription.objects.filter(subscriber_id=gone.pk).exists()
    assert Notification.objects.get().subscriber == other
    assert Step.objects.filter(notification__subscriber=other).count() == 2
    assert Message.objects.filter(subscriber=other).count() == 2
    assert TopicSubscription.objects.get().subscriber == other


def test_a_subscribers_delete_counts_it_out_of_each_recent_event_by_the_events_id_alone() -> None:
    """The delete counted the subscriber out of the events that reached it in the last
    hour (fan_outs_forget) with Django's bulk_update, which sets each row by a CASE over
    every row's id: work that grew with the square of the events, 1.3 s for 1,000, 27 s
    for 7,200 (a subscriber reached twice a second), over 4 minutes for 14,400, all the
    while holding the subscriber and the events. Each event now adds its id to the
    statement, and nothing else."""
    client = ClientFactory()
    few, many = (_subscriber_with(client, n) for n in (5, 45))
    TriggerEvent.objects.filter(notifications__subscriber=many).update(recipients=3)
    held = TriggerEvent.objects.filter(notifications__subscriber=many).earliest("pk")
    TriggerEvent.objects.filter(pk=held.pk).update(recipients=0, forgotten=["bob"])
    sizes = []
    for subscriber in (few, many):
        with CaptureQueriesContext(connection) as queries:
            services.subscriber_delete(subscriber=subscriber)
        updates = [q["sql"] for q in queries if q["sql"].startswith('UPDATE "notify_triggerevent"')]
        sizes.append(max(len(sql) for sql in updates))

    widest_id = len(str(TriggerEvent.objects.latest("pk").pk))
    assert sizes[1] - sizes[0] <= (45 - 5) * (widest_id + len(", "))
    forgot = TriggerEvent.objects.exclude(pk=held.pk).filter(forgotten=[many.subscriber_id])
    assert set(forgot.values_list("recipients", flat=True)) == {2}
    assert forgot.count() == 44
    held.refresh_from_db()
    assert (held.recipients, held.forgotten) == (0, ["bob", many.subscriber_id])


@pytest.mark.parametrize("status", [TriggerEvent.Status.PROCESSING, TriggerEvent.Status.RECEIVED])
def test_a_delete_counts_its_subscriber_out_of_an_event_fanned_out_whatever_its_age(
    enqueued: Enqueued, status: str
) -> None:
    """An event being fanned out (or let go for a rerun) whose hour of checks, counted
    from the trigger, is over (two hours behind a backed-up queue): it still runs, so a
    recipient it reached and that is deleted meanwhile must be forgotten. Passed over,
    its run (or rerun) found ann's notification gone with her, made her anew and sent
    her the workflow a second time."""
    client = ClientFactory()
    ann = SubscriberFactory(client=client, subscriber_id="ann")
    event = TriggerEventFactory(client=client, to=["ann", "bob"], status=status)
    TriggerEvent.objects.filter(pk=event.pk).update(created_at=ago(7200), recheck_from=ago(7200))
    NotificationFactory(trigger_event=event, subscriber=ann)

    services.subscriber_delete(subscriber=ann)

    event.refresh_from_db()
    assert event.forgotten == ["ann"]
    TriggerEvent.objects.filter(pk=event.pk).update(status=TriggerEvent.Status.RECEIVED)
    workflow_tasks.workflow_run(event.pk)
    assert enqueued.of(pipeline.SUBSCRIBER) == [(event.pk, {"subscriberId": "bob"})]
