"""What each task of a notification costs in database round trips, pinned: a statement
that comes back to a hot path fails here (docs/BENCHMARKS.md: each costs 0.5-1.5 ms of
CPU, and a notification runs through six tasks)."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from django.core import mail
from django.db import connection
from django.test.utils import CaptureQueriesContext

from bench.urls import two_step
from config import pipeline
from messaging import tasks as messaging_tasks
from messaging.models import Message
from tests.conftest import Enqueued, sdk_serving
from tests.factories import (
    BridgeSyncFactory,
    BridgeWorkflowFactory,
    StepFactory,
    api_for,
    client_with_key,
)
from tests.workflows.conftest import TASKS
from workflows.models import Notification, Step
from workflows.sdk import Bridge

# Real transactions: BEGIN and COMMIT are counted as production runs them.
pytestmark = pytest.mark.django_db(transaction=True)


def _statement(sql: str) -> str:
    """`SELECT workflows_step`: the verb and the table it reads or writes."""
    verb = sql.split(None, 1)[0].upper()
    # A SELECT's first column names its table (a subquery's FROM may come before its own).
    first_column = re.search(r'^SELECT .*?"(\w+)"\.', sql)
    table = first_column or re.search(r'(?:FROM|INTO|UPDATE) "(\w+)"', sql)
    return f"{verb} {table.group(1)}" if table else verb


def _run_one(api: Any, enqueued: Enqueued, subscriber_id: str) -> list[tuple[str, list[str]]]:
    """Trigger the two-step workflow for one subscriber; run every task it leads to, in
    order, and return each task's statements."""
    body = {
        "name": "bench-two-step",
        "to": [{"subscriberId": subscriber_id, "email": f"{subscriber_id}@example.com"}],
        "payload": {"n": 1},
    }
    response = api.post(
        "/v1/events/trigger", data=json.dumps(body), content_type="application/json"
    )
    assert response.status_code == 201, response.content
    ran = []
    while enqueued.calls:
        task, args, _ = enqueued.calls.pop(0)
        with CaptureQueriesContext(connection) as queries:
            TASKS[task].apply(args=json.loads(json.dumps(args)), throw=True)
        ran.append((task, [_statement(q["sql"]) for q in queries.captured_queries]))
    return ran


def test_a_two_step_notification_costs_these_statements_per_task(
    enqueued: Enqueued, settings: Any
) -> None:
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    client, key = client_with_key()
    # The bench's two-step workflow (in_app, then email), served by norm's SDK.
    with sdk_serving(Bridge(workflows=[two_step], secret_key=key)) as url:
        client.bridge_url = f"{url}/bench/bridge"
        # Its sender policy is read with the step the message worker claims: no query more.
        client.email_from, client.email_from_domains = "Acme <hi@acme.example>", ["acme.example"]
        client.save(update_fields=["bridge_url", "email_from", "email_from_domains"])
        BridgeWorkflowFactory(client=client, workflow_id="bench-two-step")
        BridgeSyncFactory(client=client, flavour="norm")
        api = api_for(key)
        _run_one(api, enqueued, "warm")  # the signing key and the registry, read once a process

        ran = _run_one(api, enqueued, "ann")

    assert Notification.objects.get(subscriber__subscriber_id="ann").status == "completed"
    assert Message.objects.filter(subscriber__subscriber_id="ann", status="sent").count() == 2
    assert [m.from_email for m in mail.outbox] == ["Acme <hi@acme.example>"] * 2  # warm, ann
    claim = "UPDATE workflows_step"
    record = ["BEGIN", "UPDATE workflows_notification", "INSERT workflows_step", "COMMIT"]
    assert ran == [
        (
            pipeline.WORKFLOW.task,  # once per trigger, whatever its recipients
            [
                "UPDATE notify_triggerevent",  # claimed
                "SELECT notify_triggerevent",
                "SELECT workflows_notification",  # reached before (a rerun)?
                "UPDATE notify_triggerevent",  # processed
            ],
        ),
        (
            pipeline.SUBSCRIBER.task,
            [
                "SELECT notify_triggerevent",
                # One transaction: the subscriber stays locked until its notification is
                # in, so a delete meanwhile waits (subscriber_process). Its inserts need
                # no savepoints (insert_once).
                "BEGIN",
                "SELECT subscribers_subscriber",
                "INSERT subscribers_subscriber",  # a new subscriber
                "INSERT workflows_notification",
                "COMMIT",
            ],
        ),
        # The first echo: a pending notification has no steps to read.
        (pipeline.ECHO.task, ["SELECT workflows_notification", *record]),
        (
            pipeline.MESSAGE.task,  # in_app: stored as sent, then its step completed
            [
                claim,
                "SELECT workflows_step",
                "INSERT messaging_message",
                "UPDATE workflows_step",
            ],
        ),
        (
            pipeline.ECHO.task,
            ["SELECT workflows_notification", "SELECT workflows_step", *record],
        ),
        (
            pipeline.MESSAGE.task,  # email
            [
                claim,
                "SELECT workflows_step",
                "INSERT messaging_message",  # before the send: its id goes in the email
                "BEGIN",
                "UPDATE messaging_message",  # sent and the step done, in one commit
                "UPDATE workflows_step",
                "COMMIT",
            ],
        ),
        (
            pipeline.ECHO.task,  # done
            [
                "SELECT workflows_notification",
                "SELECT workflows_step",
                "UPDATE workflows_notification",
            ],
        ),
    ]


def test_a_step_finished_outside_a_send_costs_one_update(enqueued: Enqueued) -> None:
    """Skipped (no address), a delay or a custom step: its UPDATE commits on its own,
    then the echo is enqueued; a transaction around it added BEGIN and COMMIT."""
    step = StepFactory(type="email", notification__subscriber__email="")

    with CaptureQueriesContext(connection) as queries:
        messaging_tasks.message_send.apply(args=[step.pk], throw=True)

    step.refresh_from_db()
    assert step.status == Step.Status.SKIPPED
    assert enqueued.of(pipeline.ECHO) == [(str(step.notification_id),)]
    assert [_statement(q["sql"]) for q in queries.captured_queries] == [
        "UPDATE workflows_step",  # claimed
        "SELECT workflows_step",
        "UPDATE workflows_step",  # skipped
    ]
