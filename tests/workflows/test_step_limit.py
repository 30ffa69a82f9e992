"""A notification runs at most NORM_MAX_STEPS steps: the bridge names each next one, and
one that never says done would hold an echo worker (every client's) for good."""

from __future__ import annotations

import json
from typing import Any

import pytest

from config import pipeline
from messaging import tasks as messaging_tasks
from subscribers import tasks as subscriber_tasks
from tests.conftest import Enqueued, sdk_serving
from tests.factories import BridgeSyncFactory, BridgeWorkflowFactory, api_for, client_with_key
from workflows import tasks as workflow_tasks
from workflows.models import Notification
from workflows.sdk import Bridge, Context, workflow

pytestmark = pytest.mark.django_db(transaction=True)

TASKS = {
    pipeline.WORKFLOW.task: workflow_tasks.workflow_run,
    pipeline.SUBSCRIBER.task: subscriber_tasks.subscriber_process,
    pipeline.ECHO.task: workflow_tasks.echo_run,
    pipeline.MESSAGE.task: messaging_tasks.message_send,
}


@workflow("per-item")
def per_item(ctx: Context) -> None:
    """A step for each item of the payload: as many steps as the caller sends items."""
    for i in range(int(ctx.payload.get("items", 0))):
        ctx.step.custom(f"item-{i}", lambda i=i: {"item": i})


def _run_all(enqueued: Enqueued, *, at_most: int) -> int:
    """Run every task the pipeline enqueues, in order, up to `at_most`; how many ran."""
    ran = 0
    while enqueued.calls and ran < at_most:
        task, args, _ = enqueued.calls.pop(0)
        TASKS[task].apply(args=json.loads(json.dumps(args)), throw=True)
        ran += 1
    return ran


def test_a_workflow_that_answers_more_steps_than_norm_max_steps_fails_at_the_bound(
    enqueued: Enqueued, settings: Any
) -> None:
    settings.NORM_MAX_STEPS = 3
    client, key = client_with_key()
    with sdk_serving(Bridge(workflows=[per_item], secret_key=key)) as url:
        client.bridge_url = f"{url}/bridge"
        client.save(update_fields=["bridge_url"])
        BridgeWorkflowFactory(client=client, workflow_id="per-item")
        BridgeSyncFactory(client=client, flavour="norm")
        body = {"name": "per-item", "to": "ann", "payload": {"items": 20}}
        answer = api_for(key).post("/v1/events/trigger", body, format="json")
        assert answer.status_code == 201, answer.content

        _run_all(enqueued, at_most=200)

    notification = Notification.objects.get()
    assert notification.status == Notification.Status.FAILED
    assert notification.error_code == "TooManySteps"
    assert "NORM_MAX_STEPS (3)" in notification.error
    # The three allowed ran; the fourth the bridge named was never recorded.
    assert [s.step_id for s in notification.steps.order_by("position")] == [
        "item-0",
        "item-1",
        "item-2",
    ]
    assert enqueued.calls == []  # nothing more to run: no echo asks the bridge again


def test_a_workflow_done_after_exactly_norm_max_steps_completes(
    enqueued: Enqueued, settings: Any
) -> None:
    """The bound is checked on the bridge's answer: one that says done after the last
    allowed step is no step too many."""
    settings.NORM_MAX_STEPS = 3
    client, key = client_with_key()
    with sdk_serving(Bridge(workflows=[per_item], secret_key=key)) as url:
        client.bridge_url = f"{url}/bridge"
        client.save(update_fields=["bridge_url"])
        BridgeWorkflowFactory(client=client, workflow_id="per-item")
        BridgeSyncFactory(client=client, flavour="norm")
        body = {"name": "per-item", "to": "ann", "payload": {"items": 3}}
        answer = api_for(key).post("/v1/events/trigger", body, format="json")
        assert answer.status_code == 201, answer.content

        _run_all(enqueued, at_most=200)

    notification = Notification.objects.get()
    assert notification.status == Notification.Status.COMPLETED, notification.error
    assert notification.steps.count() == 3
