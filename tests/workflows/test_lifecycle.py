"""Deletes, deactivations, revocations and moved bridges while notifications are in
flight: each notification still ends with a reason, and nothing goes where it should not."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from config import pipeline
from messaging import tasks as messaging_tasks
from messaging.models import Message
from notify.models import Client, TriggerEvent
from subscribers import tasks as subscriber_tasks
from subscribers.models import Subscriber
from tests.conftest import Enqueued
from tests.factories import BridgeSyncFactory, BridgeWorkflowFactory, api_for, client_with_key
from workflows import bridge
from workflows import tasks as workflow_tasks
from workflows.models import Notification, Step

pytestmark = pytest.mark.django_db

Capture = Callable[..., Any]
TASKS = {
    pipeline.WORKFLOW.task: workflow_tasks.workflow_run,
    pipeline.SUBSCRIBER.task: subscriber_tasks.subscriber_process,
    pipeline.SUBSCRIBER_BATCH.task: subscriber_tasks.subscribers_process,
    pipeline.ECHO.task: workflow_tasks.echo_run,
    pipeline.MESSAGE.task: messaging_tasks.message_send,
}
WAIT = {"stepId": "wait", "type": "delay", "outputs": {"amount": 1, "unit": "hours"}}
INBOX = {"stepId": "inbox", "type": "in_app", "outputs": {"body": "Hello"}}


class FakeBridge:
    """norm's SDK at the network edge: `steps` (a delay, then an in-app step), then done; every
    call recorded with the URL and the secret it was signed with."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.steps = [WAIT, INBOX]

    def __call__(
        self, url: str, *, secret: str | None, workflow_id: str, body: dict[str, Any], **_: Any
    ) -> dict[str, Any]:
        self.calls.append({"url": url, "secret": secret, "subscriber": body["subscriber"]})
        steps = self.steps
        if len(body["state"]) == len(steps):
            return {"done": True, "outputs": {}, "options": {"skip": False}}
        return {**steps[len(body["state"])], "done": False}


@pytest.fixture
def fake_bridge(monkeypatch: pytest.MonkeyPatch) -> FakeBridge:
    fake = FakeBridge()
    monkeypatch.setattr(bridge, "execute", fake)
    return fake


@pytest.fixture
def keyed() -> tuple[Client, str]:
    client, key = client_with_key()
    BridgeWorkflowFactory(client=client, workflow_id="welcome")
    BridgeSyncFactory(client=client, flavour="norm")
    return client, key


@pytest.fixture
def drain(enqueued: Enqueued, django_capture_on_commit_callbacks: Capture) -> Callable[..., None]:
    """Run every task the pipeline enqueued, and those they enqueue, until none is left
    (a delayed step is not due yet, so its message task leaves it waiting)."""

    def run(until: pipeline.Stage | None = None) -> None:
        """`until`: stop when the next task is of that stage (left enqueued)."""
        while enqueued.calls and not (until and enqueued.calls[0][0] == until.task):
            task, args, _ = enqueued.calls.pop(0)
            with django_capture_on_commit_callbacks(execute=True):
                TASKS[task].apply(args=json.loads(json.dumps(args)), throw=True)

    return run


@pytest.fixture
def trigger(
    keyed: tuple[Client, str], django_capture_on_commit_callbacks: Capture
) -> Callable[..., None]:
    def do(to: Any, **fields: Any) -> None:
        body = json.dumps({"name": "welcome", "to": to, "payload": {}, **fields})
        with django_capture_on_commit_callbacks(execute=True):
            response = api_for(keyed[1]).post(
                "/v1/events/trigger", data=body, content_type="application/json"
            )
        assert response.status_code == 201, response.content

    return do


def delay_over(enqueued: Enqueued) -> None:
    """The waiting steps come due, and the reconciler hands them to the message worker."""
    Step.objects.filter(status=Step.Status.SCHEDULED).update(
        due_at=timezone.now() - timedelta(seconds=1)
    )
    workflow_tasks.reconcile()


@pytest.mark.parametrize("change", ["bridge_url", "allowed_bridge_urls"])
def test_a_bridge_url_the_client_no_longer_has_is_never_called_again(
    change: str,
    keyed: tuple[Client, str],
    trigger: Callable[..., None],
    drain: Callable[..., None],
    enqueued: Enqueued,
    fake_bridge: FakeBridge,
) -> None:
    """The issue: "only the client's registered ones are ever called". A notification
    keeps the URL it was triggered with; once the client's bridge moved (or the URL left
    its allowed list), the echo called it anyway at every step after."""
    client, _ = keyed
    old = "http://old-bridge.test/api"
    if change == "bridge_url":
        client.bridge_url = old
    else:
        client.allowed_bridge_urls = [old]
    client.save()
    BridgeWorkflowFactory(client=client, bridge_url=old, workflow_id="welcome")
    BridgeSyncFactory(client=client, bridge_url=old, flavour="norm")
    trigger(["ann"], bridgeUrl=old)
    drain()
    assert [c["url"] for c in fake_bridge.calls] == [old]  # the delay is waiting

    if change == "bridge_url":
        client.bridge_url = "http://new-bridge.test/api"
    else:
        client.allowed_bridge_urls = ["http://another.test/api"]
    client.save()
    delay_over(enqueued)
    drain()

    assert [c["url"] for c in fake_bridge.calls] == [old]
    notification = Notification.objects.get()
    assert notification.status == Notification.Status.FAILED
    assert notification.error_code == "BridgeNotAllowed"
    assert old in notification.error
    assert notification.steps.get(step_id="wait").status == Step.Status.COMPLETED


def deactivate(client: Client) -> None:
    Client.objects.filter(pk=client.pk).update(is_active=False)


def test_a_client_deactivated_during_a_delay_sends_nothing_more(
    keyed: tuple[Client, str],
    trigger: Callable[..., None],
    drain: Callable[..., None],
    enqueued: Enqueued,
    fake_bridge: FakeBridge,
) -> None:
    """The API refused the client at once, but its notifications went on: asked its
    bridge for the next step and sent it."""
    trigger(["ann"])
    drain()
    deactivate(keyed[0])
    delay_over(enqueued)
    drain()

    assert len(fake_bridge.calls) == 1
    assert not Message.objects.exists()
    notification = Notification.objects.get()
    assert notification.status == Notification.Status.FAILED
    assert notification.error_code == "ClientInactive"
    assert not Step.objects.filter(status__in=[Step.Status.SCHEDULED, Step.Status.PROCESSING])


def test_a_notification_whose_client_was_deactivated_before_its_echo_asks_no_bridge(
    keyed: tuple[Client, str],
    trigger: Callable[..., None],
    drain: Callable[..., None],
    fake_bridge: FakeBridge,
) -> None:
    trigger(["ann"])
    drain(until=pipeline.ECHO)
    deactivate(keyed[0])
    drain()

    assert fake_bridge.calls == []
    notification = Notification.objects.get()
    assert (notification.status, notification.error_code) == ("failed", "ClientInactive")


def test_a_step_recorded_before_its_client_was_deactivated_is_not_sent(
    keyed: tuple[Client, str],
    trigger: Callable[..., None],
    drain: Callable[..., None],
    fake_bridge: FakeBridge,
) -> None:
    fake_bridge.steps = [INBOX]
    trigger(["ann"])
    drain(until=pipeline.MESSAGE)
    assert Notification.objects.get().steps.get(step_id="inbox").status == Step.Status.SCHEDULED

    deactivate(keyed[0])
    drain()

    assert not Message.objects.exists()
    notification = Notification.objects.get()
    assert notification.status == Notification.Status.FAILED
    assert notification.error_code == "ClientInactive"
    assert notification.steps.get(step_id="inbox").status == Step.Status.FAILED


def test_a_trigger_of_a_client_deactivated_before_its_fan_out_reaches_no_one(
    keyed: tuple[Client, str],
    trigger: Callable[..., None],
    drain: Callable[..., None],
    fake_bridge: FakeBridge,
) -> None:
    trigger(["ann", "bob"])
    deactivate(keyed[0])
    drain()

    assert fake_bridge.calls == []
    assert not Notification.objects.exists()
    event = TriggerEvent.objects.get()
    assert event.status == TriggerEvent.Status.FAILED
    assert "deactivated" in event.error


def reconcile_after_the_grace(settings: Any) -> None:
    """The reconciler, a grace period after everything so far: it checks that each
    recent fan-out reached every recipient it counted."""
    settings.NORM_RECONCILE_GRACE = 60
    before = timezone.now() - timedelta(seconds=120)
    TriggerEvent.objects.update(created_at=before, claimed_at=before, processed_at=before)
    Notification.objects.update(created_at=before)
    workflow_tasks.reconcile()


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_a_subscriber_deleted_after_a_trigger_is_not_created_and_notified_again(
    version: str,
    keyed: tuple[Client, str],
    trigger: Callable[..., None],
    drain: Callable[..., None],
    fake_bridge: FakeBridge,
    settings: Any,
) -> None:
    """The subscriber's notification went with it, so its event looked short of a
    recipient, as if the command had been lost with the broker: the reconciler fanned it
    out again, which created the deleted subscriber anew (from the trigger's inline
    attributes) and ran the workflow for it a second time."""
    fake_bridge.steps = [INBOX]
    trigger([{"subscriberId": "ann", "email": "ann@example.com"}, "bob"])
    drain()
    assert sorted(c["subscriber"]["subscriberId"] for c in fake_bridge.calls) == [
        "ann",
        "ann",
        "bob",
        "bob",
    ]

    response = api_for(keyed[1]).delete(f"/{version}/subscribers/ann")
    assert response.status_code == 200
    reconcile_after_the_grace(settings)
    drain()

    assert not Subscriber.objects.filter(subscriber_id="ann").exists()
    assert [c["subscriber"]["subscriberId"] for c in fake_bridge.calls].count("ann") == 2
    event = TriggerEvent.objects.get()
    assert (event.status, event.recipients, event.refanned) == ("processed", 1, 0)
    assert Notification.objects.get().status == Notification.Status.COMPLETED
