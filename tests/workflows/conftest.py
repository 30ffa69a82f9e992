"""Fixtures for the tests of the pipeline in-process: its tasks run from what it hands the
broker (`enqueued`), a fake bridge in place of the network, a client with a workflow."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from config import pipeline
from messaging import tasks as messaging_tasks
from notify.models import Client
from subscribers import tasks as subscriber_tasks
from tests.conftest import Enqueued, sdk_serving
from tests.factories import BridgeSyncFactory, BridgeWorkflowFactory, api_for, client_with_key
from workflows import bridge
from workflows import tasks as workflow_tasks
from workflows.models import Step
from workflows.sdk import Bridge, Workflow

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


def run_task(task: str, args: Any, capture: Capture) -> None:
    """Run a captured hand-off as a worker would: its arguments through JSON, as the
    broker carries them, and what it hands on once it commits."""
    with capture(execute=True):
        TASKS[task].apply(args=json.loads(json.dumps(args)), throw=True)


class FakeBridge:
    """norm's SDK at the network edge: `steps` (a delay, then an in-app step), then done; every
    call recorded with the URL and the secrets it was to be signed with."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.steps = [WAIT, INBOX]

    def __call__(
        self,
        url: str,
        *,
        secrets: Sequence[str],
        workflow_id: str,
        body: dict[str, Any],
        **_: Any,
    ) -> dict[str, Any]:
        self.calls.append({"url": url, "secrets": secrets, "subscriber": body["subscriber"]})
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
def drain(
    enqueued: Enqueued, django_capture_on_commit_callbacks: Capture
) -> Callable[..., list[dict[str, Any]]]:
    """Run every task the pipeline enqueued, and those they enqueue, until none is left
    (a delayed step is not due yet, so its message task leaves it waiting)."""

    def run(until: pipeline.Stage | None = None) -> list[dict[str, Any]]:
        """`until`: stop when the next task is of that stage (left enqueued). The options
        each task ran was sent with (its queue), in order."""
        ran = []
        while enqueued.calls and not (until and enqueued.calls[0][0] == until.task):
            task, args, options = enqueued.calls.pop(0)
            run_task(task, args, django_capture_on_commit_callbacks)
            ran.append(options)
        return ran

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


def sdk_triggered(
    enqueued: Enqueued, flow: Workflow, payload: dict[str, Any], *, at_most: int = 200
) -> Client:
    """Trigger `flow` for ann on a new client whose bridge is norm's SDK serving it on
    loopback, and run every task that leads to, in order, up to `at_most` of them (in a
    test of real transactions, where each task's hand-offs are enqueued as it commits)."""
    client, key = client_with_key()
    with sdk_serving(Bridge(workflows=[flow], secret_key=key)) as url:
        client.bridge_url = f"{url}/bridge"
        client.save(update_fields=["bridge_url"])
        BridgeWorkflowFactory(client=client, workflow_id=flow.workflow_id)
        BridgeSyncFactory(client=client, flavour="norm")
        body = {"name": flow.workflow_id, "to": "ann", "payload": payload}
        answer = api_for(key).post("/v1/events/trigger", body, format="json")
        assert answer.status_code == 201, answer.content
        for _ in range(at_most):
            if not enqueued.calls:
                break
            task, args, _ = enqueued.calls.pop(0)
            TASKS[task].apply(args=json.loads(json.dumps(args)), throw=True)
    return client
