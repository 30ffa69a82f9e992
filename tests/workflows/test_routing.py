"""NORM_WORKFLOW_QUEUES: a routed workflow's every hand-off, from the trigger to its last
send, goes to its own queue, so that the workers serving that queue serve it whole."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from django.db import OperationalError

from config import pipeline
from config.celery import app
from messaging import tasks as messaging_tasks
from notify.models import Client
from subscribers.models import Subscriber, Topic, TopicSubscription
from tests.conftest import Enqueued
from tests.factories import api_for
from tests.workflows.conftest import Capture, FakeBridge, delay_over
from workflows.models import Notification
from workflows.services import operations

pytestmark = pytest.mark.django_db


def test_every_hand_off_of_a_routed_workflow_goes_to_its_queue(
    keyed: tuple[Client, str],
    trigger: Callable[..., None],
    drain: Callable[..., list[dict[str, Any]]],
    enqueued: Enqueued,
    fake_bridge: FakeBridge,
    django_capture_on_commit_callbacks: Capture,
    settings: Any,
) -> None:
    """Its fan-out (a listed recipient's command, a topic's chunk, a broadcast's), its
    echoes, its delayed step sent by the reconciler, and an admin's retry. Only the
    fan-out was routed once, and the rest waited in the shared queues behind every
    other workflow's backlog."""
    settings.NORM_WORKFLOW_QUEUES = {"welcome": "critical"}
    client, key = keyed
    topic = Topic.objects.create(client=client, key="news")
    member = Subscriber.objects.create(client=client, subscriber_id="bob")
    TopicSubscription.objects.create(topic=topic, subscriber=member)

    trigger(["ann", {"type": "Topic", "topicKey": "news"}])
    with django_capture_on_commit_callbacks(execute=True):
        response = api_for(key).post(
            "/v1/events/trigger/broadcast",
            data=json.dumps({"name": "welcome"}),
            content_type="application/json",
        )
    assert response.status_code == 201, response.content
    ran = drain()
    delay_over(enqueued)  # the hour's delay waited in the database
    ran += drain()
    notifications = Notification.objects.filter(client=client)
    # ann and bob, and bob again by the broadcast (run before ann's command made her).
    assert [n.status for n in notifications] == [Notification.Status.COMPLETED] * 3
    Notification.objects.filter(pk=notifications[0].pk).update(status=Notification.Status.FAILED)
    with django_capture_on_commit_callbacks(execute=True):
        assert operations.notification_retry(notification=notifications[0])
    ran += drain()

    # Two fan-outs, three commands, for each notification three echoes and a send for
    # each of its two steps, and the retry's echo.
    assert len(ran) == 2 + 3 + 3 * (3 + 2) + 1
    assert {options["queue"] for options in ran} == {"critical"}


def test_a_database_retry_goes_back_to_the_queue_its_task_came_from() -> None:
    """A task's retry (db_retry, DB_RETRY's autoretry, the echo's bridge retries) is sent
    by Celery from the request, not by queue_of: a routed send retried onto the messages
    queue would wait behind every other workflow's backlog again, and never run where
    only the routed queue has workers. On Redis, a message sent to a queue comes with the
    anonymous exchange and the queue's name as its routing key, which Celery's retry
    sends it back with (Task.signature_from_request)."""
    queue = f"routed-{uuid.uuid4().hex}"
    before = pipeline.backlog(pipeline.MESSAGE.queue)
    try:
        pipeline.send_now(pipeline.MESSAGE, 42, queue=queue)
        with app.connection_for_read() as connection:
            taken = connection.SimpleQueue(queue, no_ack=True).get(timeout=5)
        task = messaging_tasks.message_send
        task.push_request(
            id=taken.headers["id"],
            args=[42],
            kwargs={},
            retries=0,
            delivery_info=taken.delivery_info,
            called_directly=False,
        )
        try:
            pipeline.db_retry(task, OperationalError("the database went away"))
        finally:
            task.pop_request()

        assert pipeline.backlog(queue) == 1
        assert pipeline.backlog(pipeline.MESSAGE.queue) == before
    finally:
        with app.pool.acquire(block=True) as connection:
            connection.default_channel.queue_delete(queue)
