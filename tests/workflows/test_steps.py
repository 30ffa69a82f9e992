"""A workflow's steps after the first, driven through the whole pipeline against norm's
SDK served over loopback: delays, steps norm has no provider for, skips, and what a
duplicate task does."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from config import pipeline
from messaging import tasks as messaging_tasks
from messaging.models import Message
from subscribers import tasks as subscriber_tasks
from tests.conftest import Enqueued, sdk_serving
from tests.factories import BridgeSyncFactory, BridgeWorkflowFactory, api_for, client_with_key
from tests.messaging.test_message_worker import Inbox, smtp_serving
from workflows import tasks as workflow_tasks
from workflows.models import Notification
from workflows.sdk import Bridge, Context, workflow

pytestmark = pytest.mark.django_db

Capture = Callable[..., Any]
TASKS = {
    pipeline.WORKFLOW.task: workflow_tasks.workflow_run,
    pipeline.SUBSCRIBER.task: subscriber_tasks.subscriber_process,
    pipeline.ECHO.task: workflow_tasks.echo_run,
    pipeline.MESSAGE.task: messaging_tasks.message_send,
}


@workflow("steps")
def steps(ctx: Context) -> None:
    """The steps the payload lists, in order: `[type, stepId, outputs]` each."""
    for step_type, step_id, outputs in ctx.payload.get("steps", []):
        getattr(ctx.step, step_type)(step_id, (lambda o: lambda: o)(outputs))


class Pipeline:
    """norm's stages run one task at a time, as the broker would hand them out."""

    def __init__(self, key: str, enqueued: Enqueued, capture: Capture) -> None:
        self.api, self.enqueued, self.capture = api_for(key), enqueued, capture

    def trigger(self, workflow_id: str, payload: dict[str, Any]) -> Notification:
        body = {
            "name": workflow_id,
            "to": {"subscriberId": "ann", "email": "ann@example.com"},
            "payload": payload,
            "transactionId": "tx-1",
        }
        with self.capture(execute=True):
            response = self.api.post(
                "/v1/events/trigger", data=json.dumps(body), content_type="application/json"
            )
        assert response.status_code == 201, response.content
        self.drain()
        return Notification.objects.get()

    def drain(self) -> None:
        """Every task enqueued, and those they enqueue, until none is left; a step not
        due yet is left waiting by its message task, as a broker's countdown would."""
        while self.enqueued.calls:
            task, args, _ = self.enqueued.calls.pop(0)
            with self.capture(execute=True):
                TASKS[task].apply(args=json.loads(json.dumps(args)), throw=True)

    def reconcile(self) -> None:
        with self.capture(execute=True):
            workflow_tasks.reconcile()
        self.drain()


@pytest.fixture
def smtp(settings: Any) -> Iterator[Inbox]:
    inbox = Inbox()
    with smtp_serving(settings, inbox):
        yield inbox


@pytest.fixture
def norm(enqueued: Enqueued, django_capture_on_commit_callbacks: Capture) -> Iterator[Pipeline]:
    client, key = client_with_key()
    with sdk_serving(Bridge(workflows=[steps], secret_key=key)) as url:
        client.bridge_url = url
        client.save(update_fields=["bridge_url"])
        BridgeWorkflowFactory(client=client, workflow_id="steps")
        BridgeSyncFactory(client=client, flavour="norm")
        yield Pipeline(key, enqueued, django_capture_on_commit_callbacks)


def states(notification: Notification) -> list[tuple[str, str, str]]:
    return [(s.step_id, s.status, s.error) for s in notification.steps.order_by("position")]


def test_steps_of_channels_without_a_provider_are_skipped_and_the_workflow_goes_on(
    norm: Pipeline, smtp: Inbox
) -> None:
    """norm has no sms, push or chat provider: such a step failed the notification, so
    the email after it was never sent (nor on a retry), where Novu goes on."""
    notification = norm.trigger(
        "steps",
        {
            "steps": [
                ["in_app", "inbox", {"body": "Hello"}],
                ["sms", "text", {"body": "Hello"}],
                ["push", "phone", {"subject": "Hi", "body": "Hello"}],
                ["chat", "slack", {"body": "Hello"}],
                ["email", "mail", {"subject": "Hi", "body": "Hello"}],
            ]
        },
    )

    notification.refresh_from_db()
    assert (notification.status, notification.error_code) == ("completed", "")
    no_provider = "no provider is configured for the {} channel (NORM_PROVIDERS)"
    assert states(notification) == [
        ("inbox", "completed", ""),
        ("text", "skipped", no_provider.format("sms")),
        ("phone", "skipped", no_provider.format("push")),
        ("slack", "skipped", no_provider.format("chat")),
        ("mail", "completed", ""),
    ]
    assert [e.rcpt_tos for e in smtp.envelopes] == [["ann@example.com"]]
    assert sorted(Message.objects.values_list("channel", "status")) == [
        ("email", "sent"),
        ("in_app", "sent"),
    ]
