"""NORM_WORKFLOW_QUEUES: a routed workflow's every hand-off, from the trigger to its last
send, goes to its own queue, so that the workers serving that queue serve it whole."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from subscribers.models import Subscriber, Topic, TopicSubscription
from tests.conftest import Enqueued
from tests.factories import BridgeSyncFactory, BridgeWorkflowFactory, api_for, client_with_key
from tests.workflows.test_lifecycle import TASKS, FakeBridge, delay_over
from workflows import bridge, services
from workflows.models import Notification

pytestmark = pytest.mark.django_db

Capture = Callable[..., Any]


def test_every_hand_off_of_a_routed_workflow_goes_to_its_queue(
    enqueued: Enqueued,
    django_capture_on_commit_callbacks: Capture,
    monkeypatch: pytest.MonkeyPatch,
    settings: Any,
) -> None:
    """Its fan-out (a listed recipient's command, a topic's chunk, a broadcast's), its
    echoes, its delayed step sent by the reconciler, and an admin's retry. Only the
    fan-out was routed once, and the rest waited in the shared queues behind every
    other workflow's backlog."""
    settings.NORM_WORKFLOW_QUEUES = {"welcome": "critical"}
    monkeypatch.setattr(bridge, "execute", FakeBridge())
    client, key = client_with_key()
    BridgeWorkflowFactory(client=client, workflow_id="welcome")
    BridgeSyncFactory(client=client, flavour="norm")
    topic = Topic.objects.create(client=client, key="news")
    member = Subscriber.objects.create(client=client, subscriber_id="bob")
    TopicSubscription.objects.create(topic=topic, subscriber=member)
    queues: list[str] = []

    def drain() -> None:
        while enqueued.calls:
            task, args, options = enqueued.calls.pop(0)
            queues.append(options["queue"])
            with django_capture_on_commit_callbacks(execute=True):
                TASKS[task].apply(args=json.loads(json.dumps(args)), throw=True)

    def post(path: str, body: dict[str, Any]) -> None:
        with django_capture_on_commit_callbacks(execute=True):
            response = api_for(key).post(
                path, data=json.dumps(body), content_type="application/json"
            )
        assert response.status_code == 201, response.content

    to = ["ann", {"type": "Topic", "topicKey": "news"}]
    post("/v1/events/trigger", {"name": "welcome", "to": to})
    post("/v1/events/trigger/broadcast", {"name": "welcome"})
    drain()
    delay_over(enqueued)  # the hour's delay waited in the database
    drain()
    notifications = Notification.objects.filter(client=client)
    # ann and bob, and bob again by the broadcast (run before ann's command made her).
    assert [n.status for n in notifications] == [Notification.Status.COMPLETED] * 3
    Notification.objects.filter(pk=notifications[0].pk).update(status=Notification.Status.FAILED)
    with django_capture_on_commit_callbacks(execute=True):
        assert services.notification_retry(notification=notifications[0])
    drain()

    # Two fan-outs, three commands, for each notification three echoes and a send for
    # each of its two steps, and the retry's echo.
    assert len(queues) == 2 + 3 + 3 * (3 + 2) + 1
    assert set(queues) == {"critical"}
