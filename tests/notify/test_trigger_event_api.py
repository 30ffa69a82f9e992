"""GET /v1/events/trigger/{transactionId}: how a trigger's fan-out went, and how its
notifications stand, where no notification would show it (a fan-out that reached
nobody, or failed)."""

from __future__ import annotations

import html
import json
from collections.abc import Callable
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from rest_framework.test import APIClient

from config import pipeline
from notify.models import Client, TriggerEvent
from subscribers import tasks as subscriber_tasks
from subscribers.models import Subscriber, Topic
from subscribers.services import topic_update
from tests.conftest import Enqueued, ago
from tests.factories import (
    BridgeWorkflowFactory,
    NotificationFactory,
    TriggerEventFactory,
    api_for,
    client_with_key,
)
from workflows import tasks as workflow_tasks
from workflows.models import Notification

pytestmark = pytest.mark.django_db

Capture = Callable[..., Any]
NONE_YET = {"pending": 0, "running": 0, "completed": 0, "failed": 0, "canceled": 0}


@pytest.fixture
def keyed() -> tuple[Client, str]:
    client, key = client_with_key()
    BridgeWorkflowFactory(client=client, workflow_id="welcome")  # no bridge asked
    topic = Topic.objects.create(client=client, key="news")
    for subscriber_id in ("ann", "bob"):
        topic.subscribers.add(Subscriber.objects.create(client=client, subscriber_id=subscriber_id))
    return client, key


@pytest.fixture
def api(keyed: tuple[Client, str]) -> APIClient:
    return api_for(keyed[1])


def trigger(api: APIClient, to: Any, capture: Capture) -> None:
    body = json.dumps({"name": "welcome", "to": to, "transactionId": "tx-1"})
    with capture(execute=True):
        response = api.post("/v1/events/trigger", data=body, content_type="application/json")
    assert response.status_code == 201, response.content


def fan_out(enqueued: Enqueued, capture: Capture) -> None:
    """The workflow worker on the trigger, then every command it sent."""
    [(event_id,)] = enqueued.of(pipeline.WORKFLOW)
    workflow_tasks.workflow_run(event_id)
    for args in json.loads(json.dumps(enqueued.of(pipeline.SUBSCRIBER))):
        with capture(execute=True):
            subscriber_tasks.subscriber_process(*args)
    for args in json.loads(json.dumps(enqueued.of(pipeline.SUBSCRIBER_BATCH))):
        with capture(execute=True):
            subscriber_tasks.subscribers_process(*args)


def read(api: APIClient, transaction_id: str = "tx-1") -> dict[str, Any]:
    response = api.get(f"/v1/events/trigger/{transaction_id}")
    assert response.status_code == 200, response.content
    return response.json()["data"]


def test_a_trigger_reads_received_then_processed_with_its_notifications_outcomes(
    api: APIClient, enqueued: Enqueued, django_capture_on_commit_callbacks: Capture
) -> None:
    trigger(api, ["ann", {"type": "Topic", "topicKey": "news"}], django_capture_on_commit_callbacks)
    received = read(api)
    assert received | {"createdAt": None} == {
        "transactionId": "tx-1",
        "workflow": "welcome",
        "mode": "multicast",
        "status": "received",
        "recipients": 0,
        "notifications": NONE_YET,
        "error": "",
        "createdAt": None,
        "processedAt": None,
        "canceledAt": None,
    }
    assert received["createdAt"]

    fan_out(enqueued, django_capture_on_commit_callbacks)
    processed = read(api)
    assert (processed["status"], processed["recipients"]) == ("processed", 2)  # ann once
    assert processed["notifications"] == NONE_YET | {"pending": 2}
    assert processed["processedAt"]

    response = api.delete("/v1/events/trigger/tx-1")
    assert response.json() == {"data": True}
    canceled = read(api)
    assert canceled["notifications"] == NONE_YET | {"canceled": 2}
    assert canceled["canceledAt"]


@pytest.mark.parametrize("gone", ["deleted", "renamed"])
def test_a_fan_out_that_reached_nobody_says_so(
    api: APIClient,
    admin_client: Any,
    enqueued: Enqueued,
    django_capture_on_commit_callbacks: Capture,
    gone: str,
) -> None:
    """The topic deleted (by the API) or renamed (in the admin) between the trigger and
    its fan-out: no notification to list, and the trigger says why, here and in the
    admin. It showed processed, 0 recipients, and no reason."""
    trigger(api, {"type": "Topic", "topicKey": "news"}, django_capture_on_commit_callbacks)
    if gone == "deleted":
        assert api.delete("/v2/topics/news").status_code == 200
    else:
        topic_update(topic=Topic.objects.get(key="news"), values={"key": "headlines"})
    fan_out(enqueued, django_capture_on_commit_callbacks)

    assert api.get("/v1/notifications?transactionId=tx-1").json()["data"] == []
    event = read(api)
    assert (event["status"], event["recipients"], event["notifications"]) == (
        "processed",
        0,
        NONE_YET,
    )
    reason = (
        "topic 'news' no longer exists (deleted or renamed since the trigger): the fan-out"
        " found none of its members"
    )
    assert event["error"] == reason
    stored = TriggerEvent.objects.get(transaction_id="tx-1")
    page = admin_client.get(reverse("admin:notify_triggerevent_change", args=[stored.pk]))
    assert reason in html.unescape(page.content.decode())


def test_a_topic_still_there_gives_no_reason_and_one_gone_is_named_beside_it(
    api: APIClient, enqueued: Enqueued, django_capture_on_commit_callbacks: Capture
) -> None:
    """Only the topic that is gone is named; its members are not reached, the others'
    are."""
    Topic.objects.create(client=Client.objects.get(), key="sports")
    to = [{"type": "Topic", "topicKey": "news"}, {"type": "Topic", "topicKey": "sports"}]
    trigger(api, to, django_capture_on_commit_callbacks)
    assert api.delete("/v2/topics/sports").status_code == 200
    fan_out(enqueued, django_capture_on_commit_callbacks)

    event = read(api)
    assert (event["recipients"], event["notifications"]["pending"]) == (2, 2)
    assert event["error"].startswith("topic 'sports' no longer exists"), event["error"]


@pytest.mark.parametrize("deleted", ["after its members were reached", "before the fan-out"])
def test_a_fan_out_rerun_names_a_topic_gone_only_if_its_first_run_found_none_of_it(
    api: APIClient,
    enqueued: Enqueued,
    django_capture_on_commit_callbacks: Capture,
    settings: Any,
    deleted: str,
) -> None:
    """The reconciler's rerun (for a listed recipient whose command was lost) found the
    topic its first run reached deleted since, and said the fan-out found none of its
    members, who had their notifications. One gone before the first run still is named."""
    capture = django_capture_on_commit_callbacks
    trigger(api, ["amy", "zed", {"type": "Topic", "topicKey": "news"}], capture)
    if deleted == "before the fan-out":
        assert api.delete("/v2/topics/news").status_code == 200
    [(event_id,)] = enqueued.of(pipeline.WORKFLOW)
    workflow_tasks.workflow_run(event_id)
    with capture(execute=True):
        for args in json.loads(json.dumps(enqueued.of(pipeline.SUBSCRIBER))):
            if args[1]["subscriberId"] == "amy":  # zed's command lost
                subscriber_tasks.subscriber_process(*args)
        for args in json.loads(json.dumps(enqueued.of(pipeline.SUBSCRIBER_BATCH))):
            subscriber_tasks.subscribers_process(*args)
    if deleted == "after its members were reached":
        assert api.delete("/v2/topics/news").status_code == 200
    quiet = ago(settings.NORM_RECONCILE_GRACE * 2)
    TriggerEvent.objects.filter(pk=event_id).update(
        created_at=quiet, claimed_at=quiet, processed_at=quiet, recheck_from=quiet
    )
    Notification.objects.update(created_at=quiet)
    enqueued.clear()
    workflow_tasks.reconcile()
    fan_out(enqueued, capture)  # the rerun, for zed

    event = read(api)
    if deleted == "before the fan-out":
        assert (event["recipients"], event["notifications"]["pending"]) == (2, 2)
        assert event["error"].startswith("topic 'news' no longer exists"), event["error"]
    else:
        assert (event["recipients"], event["notifications"]["pending"]) == (4, 4)
        assert event["error"] == ""


def test_what_the_fan_out_left_out_is_its_error(
    api: APIClient, enqueued: Enqueued, django_capture_on_commit_callbacks: Capture
) -> None:
    """A recipient's locale Novu would refuse: notified without it, and said so here."""
    to = [{"subscriberId": "cat", "locale": "fr FR"}]
    trigger(api, to, django_capture_on_commit_callbacks)
    fan_out(enqueued, django_capture_on_commit_callbacks)

    event = read(api)
    assert (event["status"], event["notifications"]["pending"]) == ("processed", 1)
    assert "cat" in event["error"] and "locale" in event["error"], event["error"]


def test_an_unknown_transaction_id_is_404_and_reading_one_costs_two_queries(
    api: APIClient, enqueued: Enqueued, django_capture_on_commit_callbacks: Capture
) -> None:
    response = api.get("/v1/events/trigger/tx-none")
    assert (response.status_code, response.json()["code"]) == (404, "trigger_not_found")

    trigger(api, ["ann", "bob"], django_capture_on_commit_callbacks)
    fan_out(enqueued, django_capture_on_commit_callbacks)
    with CaptureQueriesContext(connection) as queries:
        read(api)
    # The key's lookup, the event, its notifications counted by status in one GROUP BY.
    assert len(queries) == 3, [q["sql"] for q in queries]


@pytest.mark.parametrize("path", ["order%2F7", "order/7"], ids=["percent-encoded", "as-is"])
def test_a_transaction_id_with_a_slash_is_read_and_canceled(
    api: APIClient, django_capture_on_commit_callbacks: Capture, path: str
) -> None:
    """Django decodes %2F before it routes: a trigger taken with transactionId "order/7"
    was a 404 to read or cancel, sent as a JavaScript SDK encodes it (order%2F7) or as
    novu-py sends it (as is), where Novu cancels it."""
    body = json.dumps({"name": "welcome", "to": "ann", "transactionId": "order/7"})
    with django_capture_on_commit_callbacks(execute=True):
        response = api.post("/v1/events/trigger", data=body, content_type="application/json")
    assert response.status_code == 201, response.content

    assert read(api, path)["transactionId"] == "order/7"
    assert api.delete(f"/v1/events/trigger/{path}").json() == {"data": True}
    assert read(api, path)["canceledAt"]


@pytest.mark.parametrize(
    "path",
    ["https%3A%2F%2Fshop.example%2Forders%2F7", "https://shop.example/orders/7"],
    ids=["percent-encoded", "as-is"],
)
def test_a_transaction_id_with_a_double_slash_is_read_and_canceled_not_another(
    api: APIClient, django_capture_on_commit_callbacks: Capture, path: str
) -> None:
    """A transactionId holding "//" (an order's URL) lost it to the collapse of novu
    1.14's leading "//v1": its read and cancel named "https:/shop.example/orders/7", a
    404, or canceled that other trigger where one was taken."""
    for transaction_id in ("https://shop.example/orders/7", "https:/shop.example/orders/7"):
        body = json.dumps({"name": "welcome", "to": "ann", "transactionId": transaction_id})
        with django_capture_on_commit_callbacks(execute=True):
            response = api.post("/v1/events/trigger", data=body, content_type="application/json")
        assert response.status_code == 201, response.content

    assert read(api, path)["transactionId"] == "https://shop.example/orders/7"
    # novu 1.14's "//v1": only the leading slashes collapse, not the id's own.
    decoded = "/v1/events/trigger/https://shop.example/orders/7"  # as PATH_INFO holds it
    answer = api.get(f"/v1/events/trigger/{path}", PATH_INFO=f"/{decoded}").json()
    assert answer["data"]["transactionId"] == "https://shop.example/orders/7"
    assert api.delete(f"/v1/events/trigger/{path}").json() == {"data": True}
    assert read(api, path)["canceledAt"]
    assert read(api, "https:%2Fshop.example%2Forders%2F7")["canceledAt"] is None


def test_a_transaction_id_with_a_line_break_is_read_and_canceled(
    api: APIClient, django_capture_on_commit_callbacks: Capture
) -> None:
    """A transactionId is any string (Novu's too), and one with a line break within was
    taken, but its read and cancel were a 404: the route's pattern stopped at the break."""
    body = json.dumps({"name": "welcome", "to": "ann", "transactionId": "order\n7"})
    with django_capture_on_commit_callbacks(execute=True):
        response = api.post("/v1/events/trigger", data=body, content_type="application/json")
    assert response.status_code == 201, response.content

    assert read(api, "order%0A7")["transactionId"] == "order\n7"
    assert api.delete("/v1/events/trigger/order%0A7").json() == {"data": True}
    assert read(api, "order%0A7")["canceledAt"]


@pytest.mark.parametrize("word", ["bulk", "broadcast"])
def test_a_transaction_id_named_as_a_trigger_route_is_read_and_canceled(
    api: APIClient, django_capture_on_commit_callbacks: Capture, word: str
) -> None:
    """/v1/events/trigger/bulk and /broadcast are the bulk and broadcast POSTs: a GET, HEAD
    or DELETE there, of a trigger taken with that transactionId (Novu takes any string),
    answered 405."""
    body = json.dumps({"name": "welcome", "to": "ann", "transactionId": word})
    with django_capture_on_commit_callbacks(execute=True):
        response = api.post("/v1/events/trigger", data=body, content_type="application/json")
    assert response.status_code == 201, response.content

    assert read(api, word)["transactionId"] == word
    assert api.head(f"/v1/events/trigger/{word}").status_code == 200
    assert api.delete(f"/v1/events/trigger/{word}").json() == {"data": True}
    assert read(api, word)["canceledAt"]
    assert api.delete(f"/v1/events/trigger/{word}").json() == {"data": False}


def test_a_post_to_the_bulk_and_broadcast_routes_still_triggers(
    api: APIClient, django_capture_on_commit_callbacks: Capture
) -> None:
    one = {"name": "welcome", "to": "ann", "transactionId": "tx-1"}
    with django_capture_on_commit_callbacks(execute=True):
        bulk = api.post("/v1/events/trigger/bulk", {"events": [one]}, format="json")
        broadcast = api.post("/v1/events/trigger/broadcast", {"name": "welcome"}, format="json")

    assert bulk.status_code == 201, bulk.content
    assert bulk.json()["data"] == [
        {"acknowledged": True, "status": "processed", "transactionId": "tx-1"}
    ]
    assert broadcast.status_code == 201, broadcast.content
    assert read(api, broadcast.json()["data"]["transactionId"])["mode"] == "broadcast"
    # Neither word is a trigger's transactionId here.
    for word in ("bulk", "broadcast"):
        response = api.get(f"/v1/events/trigger/{word}")
        assert (response.status_code, response.json()["code"]) == (404, "trigger_not_found")


def test_the_outcomes_count_this_triggers_notifications_only(
    keyed: tuple[Client, str], api: APIClient
) -> None:
    """Not the client's other triggers', nor another client's of the same transactionId:
    those counts are another trigger's, or another client's traffic."""
    client, _ = keyed
    mine = TriggerEventFactory(client=client, transaction_id="tx-1")
    NotificationFactory(trigger_event=mine, status=Notification.Status.COMPLETED)
    NotificationFactory(
        trigger_event__client=client,
        trigger_event__transaction_id="tx-2",
        status=Notification.Status.FAILED,
    )
    other, _ = client_with_key()
    NotificationFactory(
        trigger_event__client=other,
        trigger_event__transaction_id="tx-1",
        status=Notification.Status.RUNNING,
    )

    assert read(api)["notifications"] == NONE_YET | {"completed": 1}
