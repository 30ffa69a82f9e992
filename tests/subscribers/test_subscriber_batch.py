"""`norm.subscriber.batch`: a chunk of a broadcast's or topic's audience in one transaction."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from config import pipeline
from notify.models import Client, TriggerEvent
from subscribers import tasks
from subscribers.models import Subscriber
from tests.conftest import Enqueued, ago
from tests.factories import NotificationFactory, SubscriberFactory, TriggerEventFactory
from workflows import tasks as workflow_tasks
from workflows.models import Notification
from workflows.services import fanout
from workflows.services.common import CLIENT_INACTIVE

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
    assert not Subscriber.objects.filter(subscriber_id="zed").exists()
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


def test_a_client_deactivated_mid_broadcast_gets_no_more_notifications_and_says_why(
    enqueued: Enqueued,
    django_capture_on_commit_callbacks: Capture,
    monkeypatch: pytest.MonkeyPatch,
    settings: Any,
) -> None:
    """The chunks still queued after the deactivation made every notification, each
    failed at its echo (ClientInactive): rows and echoes for nothing, and no word of it on
    the trigger. As a cancel stops them, none is made; the event says why, and the
    reconciler's rerun for those left out fails it, the client still inactive."""
    monkeypatch.setattr(fanout, "BROADCAST_CHUNK", 2)
    event = broadcast()
    for i in range(5):
        SubscriberFactory(client=event.client, subscriber_id=f"user-{i}")
    workflow_tasks.workflow_run(event.pk)
    first, *rest = json.loads(json.dumps(enqueued.of(pipeline.SUBSCRIBER_BATCH)))
    assert len(rest) == 2
    with django_capture_on_commit_callbacks(execute=True):
        tasks.subscribers_process(*first)
    Client.objects.filter(pk=event.client_id).update(is_active=False)
    enqueued.clear()

    with django_capture_on_commit_callbacks(execute=True):
        for args in rest:
            tasks.subscribers_process(*args)
        tasks.subscriber_process(event.pk, {"subscriberId": "zed"})  # as a listed one

    assert Notification.objects.filter(trigger_event=event).count() == 2
    assert enqueued.of(pipeline.ECHO) == []
    event.refresh_from_db()
    assert (event.status, event.recipients) == (TriggerEvent.Status.PROCESSED, 5)
    assert event.error == (
        "the client is deactivated: norm runs none of its notifications; those its fan-out"
        " had not reached by then were left out"
    )

    # The reconciler, once the fan-out is quiet, runs it again for the three it is short of.
    quiet = ago(settings.NORM_RECONCILE_GRACE * 2)
    TriggerEvent.objects.filter(pk=event.pk).update(
        created_at=quiet, claimed_at=quiet, processed_at=quiet, recheck_from=quiet
    )
    Notification.objects.update(created_at=quiet)
    workflow_tasks.reconcile()
    assert enqueued.of(pipeline.WORKFLOW) == [(event.pk,)]
    workflow_tasks.workflow_run(event.pk)
    event.refresh_from_db()
    assert (event.status, event.error) == (TriggerEvent.Status.FAILED, CLIENT_INACTIVE)
