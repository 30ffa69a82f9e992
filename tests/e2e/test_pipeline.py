"""The whole pipeline with real processes: HTTP trigger -> Celery workers -> bridge -> SMTP."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
import redis
from pytest_django.fixtures import Settings
from pytest_django.live_server_helper import LiveServer

from config import pipeline
from messaging.models import Message
from messaging.services import message_mark
from notify.models import Client
from subscribers.models import Subscriber
from tests.e2e.conftest import StartCelery, demo_bridge_url
from tests.e2e.harness import (
    BridgeProxy,
    CeleryProcess,
    SmtpRecorder,
    api_post,
    recipients,
    wait_for,
)
from workflows.models import Notification, Step

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

MakeClient = Callable[..., tuple[Client, str]]
PEOPLE = ["ann", "bob", "cid"]


def post(live_server: LiveServer, key: str, path: str, body: dict[str, Any]) -> None:
    response = api_post(live_server.url, key, path, body)
    assert response.status_code == 201, response.text


def trigger(live_server: LiveServer, key: str, name: str, to: Any, payload: dict[str, Any]) -> None:
    post(live_server, key, "/v1/events/trigger", {"name": name, "to": to, "payload": payload})


def finished(client: Client, count: int, timeout: float = 60.0) -> list[Notification]:
    """Wait until `count` notifications of the client have reached a final status."""

    def done() -> list[Notification]:
        found = list(Notification.objects.filter(client=client).select_related("subscriber"))
        final = [n for n in found if n.status in Notification.FINAL]
        return final if len(final) == count else []

    return wait_for(done, timeout=timeout, what=f"{count} finished notifications")


def steps_of(notification: Notification) -> list[tuple[str, str]]:
    return [(s.step_id, s.status) for s in notification.steps.order_by("position")]


def test_welcome_waits_out_the_delay_before_the_email(
    live_server: LiveServer,
    make_client: MakeClient,
    worker: CeleryProcess,
    smtp: tuple[int, SmtpRecorder],
) -> None:
    client, key = make_client()
    trigger(live_server, key, "welcome", recipients(*PEOPLE), {"delaySeconds": 2})

    notifications = finished(client, 3)
    recorder = smtp[1]
    wait_for(lambda: len(recorder.messages) == 3, timeout=10, what="3 emails")
    for notification in notifications:
        assert notification.status == Notification.Status.COMPLETED, notification.error
        assert steps_of(notification) == [
            ("inbox", "completed"),
            ("wait", "completed"),
            ("reminder", "completed"),
        ]
        wait = notification.steps.get(step_id="wait")
        assert wait.result["duration"] >= 2000
        inbox = Message.objects.get(step__notification=notification, channel="in_app")
        [email] = recorder.to(notification.subscriber.email)
        assert email.arrived_at >= inbox.created_at + timedelta(seconds=2)
        assert email.subject == "there, you have an unread message"


def test_welcome_skips_the_email_once_the_inbox_message_is_read(
    live_server: LiveServer,
    make_client: MakeClient,
    worker: CeleryProcess,
    smtp: tuple[int, SmtpRecorder],
) -> None:
    client, key = make_client()
    trigger(live_server, key, "welcome", recipients(*PEOPLE), {"delaySeconds": 4})

    bob_inbox = wait_for(
        lambda: Message.objects.filter(
            subscriber__subscriber_id="bob", step__step_id="inbox", status=Message.Status.SENT
        ).first(),
        what="bob's in-app message",
    )
    bob_inbox = message_mark(message=bob_inbox, read=True)

    notifications = {n.subscriber.subscriber_id: n for n in finished(client, 3)}
    bob = notifications["bob"]
    # The test means something only if bob read it before the delay ran out.
    assert bob.steps.get(step_id="wait").completed_at > bob_inbox.read_at
    assert steps_of(bob) == [("inbox", "completed"), ("wait", "completed"), ("reminder", "skipped")]
    assert not Message.objects.filter(step__notification=bob, channel="email").exists()
    for name in ("ann", "cid"):
        assert steps_of(notifications[name])[-1] == ("reminder", "completed")
    recorder = smtp[1]
    wait_for(lambda: len(recorder.messages) == 2, timeout=10, what="2 emails")
    assert sorted(r for m in recorder.messages for r in m.recipients) == [
        "ann@example.com",
        "cid@example.com",
    ]
    assert all(n.status == Notification.Status.COMPLETED for n in notifications.values())


def test_broadcast_reaches_every_subscriber(
    live_server: LiveServer, make_client: MakeClient, worker: CeleryProcess
) -> None:
    client, key = make_client()
    Subscriber.objects.bulk_create(
        Subscriber(client=client, subscriber_id=f"user-{i:03}") for i in range(200)
    )
    post(
        live_server,
        key,
        "/v1/events/trigger/broadcast",
        {"name": "order-update", "payload": {"status": "delayed", "orderId": "A-17"}},
    )

    notifications = finished(client, 200, timeout=240)
    assert {n.status for n in notifications} == {Notification.Status.COMPLETED}
    assert len({n.subscriber_id for n in notifications}) == 200
    steps = Step.objects.filter(notification__client=client)
    assert steps.count() == 200
    assert set(steps.values_list("step_id", "type", "status")) == {
        ("delayed-inbox", "in_app", "completed")
    }
    messages = Message.objects.filter(client=client)
    assert messages.count() == 200
    assert {m.content["body"] for m in messages} == {"Order A-17 is delayed."}


def test_bridge_errors_5xx_are_retried_until_it_answers(
    live_server: LiveServer, make_client: MakeClient, worker: CeleryProcess
) -> None:
    def two_failures(number: int) -> tuple[int, dict[str, Any]] | None:
        return (500, {"message": "down for a moment"}) if number <= 2 else None

    with BridgeProxy(demo_bridge_url(live_server), two_failures) as proxy:
        client, key = make_client(bridge_url=proxy.url)
        trigger(
            live_server,
            key,
            "order-update",
            recipients("ann"),
            {"status": "delayed", "orderId": "7"},
        )
        [notification] = finished(client, 1)

    assert notification.status == Notification.Status.COMPLETED, notification.error
    assert steps_of(notification) == [("delayed-inbox", "completed")]
    assert proxy.execute_calls >= 3


def test_a_routed_workflow_runs_whole_on_workers_serving_its_queue_alone(
    live_server: LiveServer,
    make_client: MakeClient,
    start_celery: StartCelery,
    smtp: tuple[int, SmtpRecorder],
    broker: str,
    settings: Settings,
) -> None:
    """NORM_WORKFLOW_QUEUES gives a critical workflow workers of its own. Only its fan-out
    was routed: its subscriber commands, echoes and sends went to the shared queues, where
    they waited behind every other workflow's backlog (a broadcast's 100,000 echoes), and
    a worker serving the routed queue alone never sent it. Every hand-off goes there now:
    the fan-out, the echoes, the delayed send, and the bridge's retries."""
    routes = {"welcome": "critical"}
    settings.NORM_WORKFLOW_QUEUES = routes  # the trigger API, served by this process
    start_celery(queues="critical", NORM_WORKFLOW_QUEUES=json.dumps(routes))

    def two_failures(number: int) -> tuple[int, dict[str, Any]] | None:
        return (500, {"message": "down for a moment"}) if number <= 2 else None

    with BridgeProxy(demo_bridge_url(live_server), two_failures) as proxy:
        client, key = make_client(bridge_url=proxy.url)
        trigger(live_server, key, "welcome", recipients("ann", "bob"), {"delaySeconds": 1})
        notifications = finished(client, 2)

    assert proxy.execute_calls >= 2 * 3 + 2  # three steps each, and the two failures
    for notification in notifications:
        assert notification.status == Notification.Status.COMPLETED, notification.error
        assert steps_of(notification)[-1] == ("reminder", "completed")
    recorder = smtp[1]
    wait_for(lambda: len(recorder.messages) == 2, timeout=10, what="2 emails")
    shared = redis.Redis.from_url(broker)
    assert {queue: shared.llen(queue) for queue in pipeline.QUEUES} == dict.fromkeys(
        pipeline.QUEUES, 0
    )


def test_bridge_order_error_fails_the_notification_without_retrying(
    live_server: LiveServer, make_client: MakeClient, worker: CeleryProcess
) -> None:
    error = {
        "code": "ExecutionStateOrderError",
        "message": "Step inbox is not in the expected order",
        "data": {"stepId": "inbox"},
    }
    with BridgeProxy(demo_bridge_url(live_server), lambda _: (400, error)) as proxy:
        client, key = make_client(bridge_url=proxy.url)
        trigger(live_server, key, "welcome", recipients("ann"), {"delaySeconds": 0})
        [notification] = finished(client, 1)

    assert notification.status == Notification.Status.FAILED
    assert notification.error_code == "ExecutionStateOrderError"
    assert "Step inbox is not in the expected order" in notification.error
    assert not notification.steps.exists()
    assert proxy.execute_calls == 1


def test_order_update_follows_the_shipped_branch(
    live_server: LiveServer,
    make_client: MakeClient,
    worker: CeleryProcess,
    smtp: tuple[int, SmtpRecorder],
) -> None:
    client, key = make_client()
    trigger(
        live_server, key, "order-update", recipients("ann"), {"status": "shipped", "orderId": "B-2"}
    )

    [notification] = finished(client, 1)
    assert notification.status == Notification.Status.COMPLETED, notification.error
    assert steps_of(notification) == [
        ("shipped-email", "completed"),
        ("shipped-inbox", "completed"),
    ]
    recorder = smtp[1]
    wait_for(lambda: recorder.messages, timeout=10, what="the email")
    assert [(m.recipients, m.subject) for m in recorder.messages] == [
        (["ann@example.com"], "Order B-2 has shipped")
    ]


def test_an_email_the_server_refuses_for_good_does_not_keep_the_in_app_after_it(
    live_server: LiveServer,
    make_client: MakeClient,
    worker: CeleryProcess,
    smtp: tuple[int, SmtpRecorder],
) -> None:
    """norm's own SDK, replaying the failed email from its state entry, names the in-app
    step after it; the notification ends failed, naming the email."""
    smtp[1].refused.add("ann@example.com")
    client, key = make_client()
    trigger(
        live_server, key, "order-update", recipients("ann"), {"status": "shipped", "orderId": "B-3"}
    )

    [notification] = finished(client, 1)
    assert steps_of(notification) == [("shipped-email", "failed"), ("shipped-inbox", "completed")]
    assert (notification.status, notification.error_code) == ("failed", "SendFailed")
    email = Message.objects.get(channel="email")
    assert (email.status, notification.error) == ("failed", f"step 'shipped-email': {email.error}")
    assert "550 5.1.1 <ann@example.com>" in email.error
    inbox = Message.objects.get(channel="in_app")
    assert (inbox.status, inbox.content["body"]) == ("sent", "Order B-3 has shipped.")
    assert smtp[1].messages == []


def test_long_delay_waits_in_the_database_for_the_reconciler(
    live_server: LiveServer,
    make_client: MakeClient,
    start_celery: StartCelery,
    smtp: tuple[int, SmtpRecorder],
) -> None:
    # Delays over NORM_BROKER_MAX_COUNTDOWN are not given to the broker at all: only beat's
    # reconciler, reading due steps from the database, can move the notification on.
    env = {"NORM_BROKER_MAX_COUNTDOWN": "1", "NORM_RECONCILE_INTERVAL": "1"}
    start_celery("worker", **env)
    start_celery("beat", **env)
    client, key = make_client()
    trigger(live_server, key, "welcome", recipients("ann"), {"delaySeconds": 3})

    [notification] = finished(client, 1)
    assert notification.status == Notification.Status.COMPLETED, notification.error
    assert steps_of(notification)[-1] == ("reminder", "completed")
    wait = notification.steps.get(step_id="wait")
    assert wait.result["duration"] >= 3000
    assert wait.enqueued_at >= wait.due_at  # enqueued by the reconciler once due, not before
    wait_for(lambda: smtp[1].to("ann@example.com"), timeout=10, what="the email")
