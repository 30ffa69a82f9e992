"""`norm.subscriber.batch`: a chunk of a broadcast's or topic's audience in one transaction."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from config import pipeline
from notify.models import TriggerEvent
from subscribers import tasks
from tests.conftest import Enqueued
from tests.factories import NotificationFactory, SubscriberFactory, TriggerEventFactory
from workflows.models import Notification

pytestmark = pytest.mark.django_db

Capture = Callable[..., Any]


def broadcast(**fields: Any) -> TriggerEvent:
    return TriggerEventFactory(
        mode=TriggerEvent.Mode.BROADCAST, to=None, payload={"n": 1}, **fields
    )


def test_creates_each_notification_and_enqueues_its_first_echo(
    enqueued: Enqueued, django_capture_on_commit_callbacks: Capture
) -> None:
    event = broadcast()
    ids = [SubscriberFactory(client=event.client).subscriber_id for _ in range(3)]
    SubscriberFactory(subscriber_id=ids[0])  # the same id at another client is not reached

    with django_capture_on_commit_callbacks(execute=True):
        tasks.subscribers_process(event.pk, ids)

    notifications = Notification.objects.filter(trigger_event=event)
    assert sorted(notifications.values_list("subscriber__subscriber_id", flat=True)) == sorted(ids)
    assert Notification.objects.count() == 3
    for notification in notifications:
        assert notification.client == event.client
        assert notification.workflow_id == event.workflow_id
        assert notification.resource == event.resource
        assert notification.status == Notification.Status.PENDING
    assert sorted(enqueued.of(pipeline.ECHO)) == sorted((str(n.pk),) for n in notifications)


def test_a_chunk_costs_a_fixed_number_of_queries(
    enqueued: Enqueued, django_capture_on_commit_callbacks: Capture
) -> None:
    """The point of the batch: no query per subscriber."""
    event = broadcast()
    ids = [SubscriberFactory(client=event.client).subscriber_id for _ in range(40)]
    with CaptureQueriesContext(connection) as queries:
        tasks.subscribers_process(event.pk, ids)
    assert Notification.objects.count() == 40
    # event, subscribers, one INSERT, the pending ids (+ the transaction's savepoint pair)
    assert len(queries) <= 6


def test_a_rerun_adds_nothing_and_re_sends_only_what_has_not_started(
    enqueued: Enqueued, django_capture_on_commit_callbacks: Capture
) -> None:
    event = broadcast()
    ann, bob = (SubscriberFactory(client=event.client, subscriber_id=s) for s in ("ann", "bob"))
    started = NotificationFactory(
        trigger_event=event, subscriber=ann, status=Notification.Status.RUNNING
    )
    with django_capture_on_commit_callbacks(execute=True):
        tasks.subscribers_process(event.pk, ["ann", "bob"])
    created = Notification.objects.get(trigger_event=event, subscriber=bob)
    assert enqueued.of(pipeline.ECHO) == [(str(created.pk),)]
    enqueued.clear()

    with django_capture_on_commit_callbacks(execute=True):
        tasks.subscribers_process(event.pk, ["ann", "bob"])
    assert Notification.objects.filter(trigger_event=event).count() == 2
    assert Notification.objects.get(pk=started.pk).status == Notification.Status.RUNNING
    # bob's has not started yet: its echo may have been lost, so it goes again.
    assert enqueued.of(pipeline.ECHO) == [(str(created.pk),)]


def test_a_canceled_trigger_or_a_deleted_subscriber_is_not_notified(
    enqueued: Enqueued, django_capture_on_commit_callbacks: Capture
) -> None:
    canceled = broadcast(canceled_at=timezone.now())
    SubscriberFactory(client=canceled.client, subscriber_id="ann")
    live = broadcast()
    SubscriberFactory(client=live.client, subscriber_id="bob")

    with django_capture_on_commit_callbacks(execute=True):
        tasks.subscribers_process(canceled.pk, ["ann"])
        tasks.subscribers_process(live.pk, ["gone", "bob"])
        tasks.subscribers_process(987654321, ["bob"])

    assert list(Notification.objects.values_list("subscriber__subscriber_id", flat=True)) == ["bob"]
    assert len(enqueued.of(pipeline.ECHO)) == 1


def test_a_chunk_enqueues_the_echoes_of_its_own_subscribers_only(
    enqueued: Enqueued, django_capture_on_commit_callbacks: Capture
) -> None:
    """Each chunk of a broadcast hands on its own notifications' first echoes. One that
    re-sent every pending notification of its event would have the 200th chunk of a
    broadcast to 100,000 send up to 100,000 echoes: copies as the square of its size."""
    event = broadcast()
    for subscriber_id in ("ann", "bob", "cy", "di"):
        SubscriberFactory(client=event.client, subscriber_id=subscriber_id)
    with django_capture_on_commit_callbacks(execute=True):
        tasks.subscribers_process(event.pk, ["ann", "bob"])
    enqueued.clear()

    with django_capture_on_commit_callbacks(execute=True):
        tasks.subscribers_process(event.pk, ["cy", "di"])

    second = Notification.objects.filter(
        trigger_event=event, subscriber__subscriber_id__in=["cy", "di"]
    )
    assert sorted(enqueued.of(pipeline.ECHO)) == sorted(
        (str(pk),) for pk in second.values_list("pk", flat=True)
    )
