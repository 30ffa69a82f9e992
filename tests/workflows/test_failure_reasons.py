"""Every failure ends on the row that failed with a readable reason, shown by the API:
each test drives the real tasks against a bridge (norm's SDK, or a scripted one) on
loopback."""

from __future__ import annotations

import json
from typing import Any

import pytest
from cryptography.fernet import Fernet

from bench.urls import two_step
from config import pipeline
from messaging import tasks as messaging_tasks
from notify.models import Client
from subscribers import tasks as subscriber_tasks
from tests.conftest import Enqueued, sdk_serving
from tests.factories import BridgeSyncFactory, BridgeWorkflowFactory, api_for, client_with_key
from workflows import services
from workflows import tasks as workflow_tasks
from workflows.models import Notification
from workflows.sdk import Bridge

pytestmark = pytest.mark.django_db(transaction=True)  # the pipeline enqueues on commit

TASKS = {
    pipeline.WORKFLOW.task: workflow_tasks.workflow_run,
    pipeline.SUBSCRIBER.task: subscriber_tasks.subscriber_process,
    pipeline.ECHO.task: workflow_tasks.echo_run,
    pipeline.MESSAGE.task: messaging_tasks.message_send,
}


def _drain(enqueued: Enqueued) -> None:
    while enqueued.calls:
        task, args, _ = enqueued.calls.pop(0)
        TASKS[task].apply(args=json.loads(json.dumps(args)), throw=True)


def _activity(key: str, transaction_id: str) -> dict[str, Any]:
    response = api_for(key).get("/v1/notifications", {"transactionId": transaction_id})
    assert response.status_code == 200, response.content
    [notification] = response.json()["data"]
    return notification


def test_a_secret_key_the_worker_cannot_decrypt_fails_the_notification_saying_so(
    enqueued: Enqueued, settings: Any
) -> None:
    """A worker whose NORM_ENCRYPTION_KEY is not the one the client's key was stored with
    (set otherwise on it, replaced rather than rotated, or derived from a SECRET_KEY that
    changed): the echo raised InvalidToken into the worker's log, and the notification
    stayed pending with no reason, asked again by the reconciler every grace period."""
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    stored_with = Fernet.generate_key().decode()
    settings.NORM_ENCRYPTION_KEY = stored_with
    client, key = client_with_key()
    prefix = client.secret_keys.get().prefix
    with sdk_serving(Bridge(workflows=[two_step], secret_key=key)) as url:
        Client.objects.filter(pk=client.pk).update(bridge_url=f"{url}/bridge")
        BridgeWorkflowFactory(
            client=client, bridge_url=f"{url}/bridge", workflow_id=two_step.workflow_id
        )
        BridgeSyncFactory(client=client, bridge_url=f"{url}/bridge", flavour="norm")
        body = {
            "name": two_step.workflow_id,
            "to": "ann",
            "payload": {"n": 1},
            "transactionId": "tx-1",
        }
        response = api_for(key).post(
            "/v1/events/trigger", data=json.dumps(body), content_type="application/json"
        )
        assert response.status_code == 201, response.content

        settings.NORM_ENCRYPTION_KEY = Fernet.generate_key().decode()  # the worker's
        _drain(enqueued)

        shown = _activity(key, "tx-1")
        assert (shown["status"], shown["errorCode"]) == ("failed", "SigningKeyUnreadable")
        assert prefix in shown["error"] and "NORM_ENCRYPTION_KEY" in shown["error"]
        assert Notification.objects.get().completed_at is not None

        # The key put back, a retry runs the notification to its end.
        settings.NORM_ENCRYPTION_KEY = stored_with
        assert services.notification_retry(notification=Notification.objects.get())
        _drain(enqueued)
        shown = _activity(key, "tx-1")
        assert (shown["status"], shown["errorCode"], shown["error"]) == ("completed", "", "")
