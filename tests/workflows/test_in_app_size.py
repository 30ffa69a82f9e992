"""An in-app step's outputs are bounded (IN_APP_MAX_BYTES): every page of a feed, the
inbox and the activity lists up to 100 in-app messages, built whole in a web process."""

from __future__ import annotations

import json

import pytest

from config import pipeline
from messaging import tasks as messaging_tasks
from messaging.models import Message
from subscribers import tasks as subscriber_tasks
from tests.conftest import Enqueued, sdk_serving
from tests.factories import BridgeSyncFactory, BridgeWorkflowFactory, api_for, client_with_key
from workflows import tasks as workflow_tasks
from workflows.models import Notification
from workflows.sdk import Bridge, Context, workflow

pytestmark = pytest.mark.django_db(transaction=True)

IN_APP_MAX_BYTES = 64 * 1024  # workflows.services's

TASKS = {
    pipeline.WORKFLOW.task: workflow_tasks.workflow_run,
    pipeline.SUBSCRIBER.task: subscriber_tasks.subscriber_process,
    pipeline.ECHO.task: workflow_tasks.echo_run,
    pipeline.MESSAGE.task: messaging_tasks.message_send,
}


@workflow("inbox")
def inbox(ctx: Context) -> None:
    """An in-app message whose body is as long as the payload says."""
    length = int(ctx.payload.get("length", 1))
    ctx.step.in_app("note", lambda: {"subject": "Hi", "body": "é" * length})


def _trigger_and_run(enqueued: Enqueued, length: int) -> Notification:
    """Trigger `inbox` with a body of `length` characters and run every task it leads to."""
    client, key = client_with_key()
    with sdk_serving(Bridge(workflows=[inbox], secret_key=key)) as url:
        client.bridge_url = f"{url}/bridge"
        client.save(update_fields=["bridge_url"])
        BridgeWorkflowFactory(client=client, workflow_id="inbox")
        BridgeSyncFactory(client=client, flavour="norm")
        body = {"name": "inbox", "to": "ann", "payload": {"length": length}}
        answer = api_for(key).post("/v1/events/trigger", body, format="json")
        assert answer.status_code == 201, answer.content
        for _ in range(20):
            if not enqueued.calls:
                break
            task, args, _ = enqueued.calls.pop(0)
            TASKS[task].apply(args=json.loads(json.dumps(args)), throw=True)
    return Notification.objects.get(client=client)


def test_an_in_app_step_whose_outputs_exceed_the_bound_fails_unstored(enqueued: Enqueued) -> None:
    # Two bytes a character in UTF-8: the bound is on bytes, as the pages are sent.
    notification = _trigger_and_run(enqueued, IN_APP_MAX_BYTES // 2 + 1)

    assert notification.status == Notification.Status.FAILED
    assert notification.error_code == "BridgeResponseTooLarge"
    assert f"at most {IN_APP_MAX_BYTES}" in notification.error
    assert not notification.steps.exists()
    assert not Message.objects.exists()


def test_an_in_app_step_within_the_bound_is_sent(enqueued: Enqueued) -> None:
    notification = _trigger_and_run(enqueued, IN_APP_MAX_BYTES // 2 - 100)

    assert notification.status == Notification.Status.COMPLETED, notification.error
    assert Message.objects.get().status == Message.Status.SENT
