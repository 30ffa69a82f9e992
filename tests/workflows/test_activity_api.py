from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from novu_py.models import ActivitiesResponseDto, ErrorDto
from rest_framework.test import APIClient

from messaging.models import Message
from tests.factories import (
    ClientFactory,
    MessageFactory,
    NotificationFactory,
    StepFactory,
    SubscriberFactory,
    TriggerEventFactory,
    api_for,
    client_with_key,
    novu_py_for,
)
from workflows.models import Notification, Step

pytestmark = pytest.mark.django_db


def _notification_with_steps(client: Any, **kwargs: Any) -> Notification:
    """A notification whose in-app step was read, then a delay, then a scheduled email."""
    notification = NotificationFactory(trigger_event__client=client, status="running", **kwargs)
    # Created out of order: the API must sort by position.
    StepFactory(notification=notification, step_id="reminder", type="email", position=2)
    StepFactory(
        notification=notification,
        step_id="wait",
        type="delay",
        position=1,
        status=Step.Status.COMPLETED,
        result={"duration": 1000},
    )
    inbox = StepFactory(
        notification=notification,
        step_id="inbox",
        type="in_app",
        position=0,
        status=Step.Status.COMPLETED,
        outputs={"subject": "Welcome!", "body": "Hi"},
    )
    MessageFactory(
        step=inbox,
        content=inbox.outputs,
        sent_at=timezone.now(),
        seen_at=timezone.now(),
        read_at=timezone.now(),
    )
    return notification


def test_list_shows_steps_in_order_with_live_result_and_messages(tenant) -> None:
    client, api = tenant
    notification = _notification_with_steps(client, trigger_event__payload={"name": "Ann"})

    response = api.get("/v1/notifications")

    assert response.status_code == 200
    body = response.json()
    assert body["totalCount"] == 1 and body["page"] == 0 and body["hasMore"] is False
    [item] = body["data"]
    assert item["id"] == str(notification.pk)
    assert item["transactionId"] == notification.trigger_event.transaction_id
    assert item["subscriberId"] == notification.subscriber.subscriber_id
    assert item["workflow"] == "welcome"
    assert item["status"] == "running"
    assert item["payload"] == {"name": "Ann"}
    assert [s["stepId"] for s in item["steps"]] == ["inbox", "wait", "reminder"]
    inbox, wait, reminder = item["steps"]
    # The in-app result is read live from its message, as the bridge receives it.
    assert inbox["result"]["read"] is True and inbox["result"]["seen"] is True
    assert wait["result"] == {"duration": 1000}
    assert reminder["status"] == "scheduled" and reminder["attempts"] == 0
    [message] = item["messages"]
    assert message["stepId"] == "inbox"
    assert message["channel"] == "in_app"
    assert message["content"] == {"subject": "Welcome!", "body": "Hi"}
    assert message["readAt"] is not None


def test_list_filters(tenant) -> None:
    client, api = tenant
    ann = SubscriberFactory(client=client, subscriber_id="ann")
    first = NotificationFactory(
        trigger_event=TriggerEventFactory(client=client, transaction_id="tx-1"), subscriber=ann
    )
    second = NotificationFactory(
        trigger_event=TriggerEventFactory(client=client, workflow_id="order-update"),
        status=Notification.Status.FAILED,
    )

    def ids(query: str) -> list[str]:
        response = api.get(f"/v1/notifications?{query}")
        assert response.status_code == 200, response.content
        return [n["id"] for n in response.json()["data"]]

    assert ids("transactionId=tx-1") == [str(first.pk)]
    assert ids("subscriberId=ann") == [str(first.pk)]
    assert ids("workflow=order-update") == [str(second.pk)]
    assert ids("status=failed") == [str(second.pk)]
    assert ids("transactionId=nope") == []
    assert set(ids("")) == {str(first.pk), str(second.pk)}


def test_list_pagination_accepts_float_numbers_and_caps_the_limit(tenant) -> None:
    client, api = tenant
    event = TriggerEventFactory(client=client)
    created = [NotificationFactory(trigger_event=event) for _ in range(5)]
    newest_first = [str(n.pk) for n in reversed(created)]

    first = api.get("/v1/notifications?page=0.0&limit=2.0").json()
    last = api.get("/v1/notifications?page=2&limit=2").json()
    capped = api.get("/v1/notifications?limit=1000").json()

    assert [n["id"] for n in first["data"]] == newest_first[:2]
    assert (first["page"], first["pageSize"], first["totalCount"], first["hasMore"]) == (
        0,
        2,
        5,
        True,
    )
    assert [n["id"] for n in last["data"]] == newest_first[4:]
    assert last["hasMore"] is False
    assert capped["pageSize"] == 100 and len(capped["data"]) == 5


@pytest.mark.parametrize("query", ["limit=abc", "limit=0", "page=-1", "limit=2.5", "status=bogus"])
def test_list_rejects_bad_query(tenant, query: str) -> None:
    _, api = tenant
    response = api.get(f"/v1/notifications?{query}")
    assert response.status_code == 400
    assert response.json()["statusCode"] == 400


def test_list_shows_only_the_callers_notifications(tenant) -> None:
    client, api = tenant
    mine = NotificationFactory(trigger_event=TriggerEventFactory(client=client))
    NotificationFactory(trigger_event=TriggerEventFactory(client=ClientFactory()))

    body = api.get("/v1/notifications").json()

    assert [n["id"] for n in body["data"]] == [str(mine.pk)]
    assert body["totalCount"] == 1


def test_list_has_no_query_per_notification(tenant, django_assert_max_num_queries) -> None:
    client, api = tenant
    for _ in range(10):
        _notification_with_steps(client)

    # auth + count + notifications + steps + messages, whatever the page size
    with django_assert_max_num_queries(5):
        response = api.get("/v1/notifications")

    assert response.status_code == 200
    assert len(response.json()["data"]) == 10
    assert all(len(n["steps"]) == 3 and len(n["messages"]) == 1 for n in response.json()["data"])


def test_detail(tenant) -> None:
    client, api = tenant
    notification = _notification_with_steps(client)
    Step.objects.filter(notification=notification, step_id="reminder").update(
        status=Step.Status.FAILED, error="smtp said no"
    )
    Notification.objects.filter(pk=notification.pk).update(
        status=Notification.Status.FAILED,
        error="step 'reminder': smtp said no",
        error_code="SendFailed",
    )

    response = api.get(f"/v1/notifications/{notification.pk}")

    assert response.status_code == 200
    data = response.json()["data"]
    assert data["id"] == str(notification.pk)
    assert data["status"] == "failed"
    assert data["errorCode"] == "SendFailed"
    assert data["steps"][2]["error"] == "smtp said no"
    assert [m["channel"] for m in data["messages"]] == ["in_app"]


def test_in_app_result_follows_the_message(tenant) -> None:
    client, api = tenant
    notification = _notification_with_steps(client)
    Message.objects.filter(step__notification=notification).update(read_at=None, seen_at=None)

    data = api.get(f"/v1/notifications/{notification.pk}").json()["data"]

    assert data["steps"][0]["result"]["read"] is False
    assert data["steps"][0]["result"]["seen"] is False


@pytest.mark.parametrize(
    "notification_id", ["not-a-uuid", "123", "3f1c2b1e-8d4a-4c6e-9b1f-2a7d5e0c9f44"]
)
def test_detail_unknown_or_malformed_id_is_404(tenant, notification_id: str) -> None:
    _, api = tenant
    response = api.get(f"/v1/notifications/{notification_id}")
    assert response.status_code == 404
    assert response.json()["statusCode"] == 404


def test_detail_of_another_clients_notification_is_404(tenant) -> None:
    _, api = tenant
    theirs = NotificationFactory(trigger_event=TriggerEventFactory(client=ClientFactory()))

    response = api.get(f"/v1/notifications/{theirs.pk}")

    assert response.status_code == 404


def test_requires_an_api_key() -> None:
    assert APIClient().get("/v1/notifications").status_code == 401


def test_the_list_is_novu_pys_activities_and_takes_its_filters(tenant) -> None:
    client, api = tenant
    ann = SubscriberFactory(client=client, subscriber_id="ann")
    bob = SubscriberFactory(client=client, subscriber_id="bob")
    welcome = _notification_with_steps(client, subscriber=ann, workflow_id="welcome")
    digest = NotificationFactory(
        trigger_event=TriggerEventFactory(client=client), subscriber=bob, workflow_id="digest"
    )
    StepFactory(notification=digest, type="sms")

    body = api.get("/v1/notifications?page=0.0&limit=10.0").json()
    page = ActivitiesResponseDto.model_validate(body)

    by_id = {n.id: n for n in page.data}
    assert set(by_id) == {str(welcome.pk), str(digest.pk)}
    assert by_id[str(welcome.pk)].subscriber_id == str(ann.pk)
    assert by_id[str(welcome.pk)].template_id == "welcome"

    def ids(query: str) -> set[str]:
        return {n["_id"] for n in api.get(f"/v1/notifications?{query}").json()["data"]}

    assert ids("subscriberIds=ann") == {str(welcome.pk)}
    assert ids("subscriberIds=ann&subscriberIds=bob") == {str(welcome.pk), str(digest.pk)}
    assert ids("subscriberIds=nobody") == set()
    assert ids("templates=digest") == {str(digest.pk)}
    assert ids("channels=in_app") == {str(welcome.pk)}
    assert ids("channels=sms&channels=email") == {str(welcome.pk), str(digest.pk)}


def test_novu_pys_other_activity_filters_narrow_the_list_or_are_refused(tenant) -> None:
    """A filter norm ignored answered every notification, as if nothing matched it less."""
    client, api = tenant
    ann = SubscriberFactory(client=client, subscriber_id="ann", email="Ann@Example.com")
    old = NotificationFactory(trigger_event=TriggerEventFactory(client=client), subscriber=ann)
    Notification.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(days=3))
    new = NotificationFactory(trigger_event=TriggerEventFactory(client=client))

    def ids(query: str) -> set[str]:
        response = api.get(f"/v1/notifications?{query}")
        assert response.status_code == 200, response.content
        return {n["_id"] for n in response.json()["data"]}

    assert ids("emails=ann@example.com") == {str(old.pk)}
    assert ids("emails=nobody@example.com&emails=ann@example.com") == {str(old.pk)}
    day_ago = (timezone.now() - timedelta(days=1)).isoformat().replace("+00:00", "Z")
    assert ids(f"after={day_ago}") == {str(new.pk)}
    assert ids(f"before={day_ago}") == {str(old.pk)}
    # norm's notifications have Novu's default severity.
    assert ids("severity=none") == {str(old.pk), str(new.pk)}
    assert ids("severity=high&severity=low") == set()

    for query in ("search=ann", "topicKey=news", "subscriptionId=s-1", "contextKeys=org:acme"):
        response = api.get(f"/v1/notifications?{query}")
        assert response.status_code == 400, query
        assert query.split("=")[0] in response.json()["message"]
    assert api.get("/v1/notifications?after=yesterday").status_code == 400


def test_an_empty_refused_filter_is_no_filter_as_novu_pys_empty_context_keys() -> None:
    """novu-py sends `contextKeys=` for `context_keys=[""]` (as a form or a query builder
    does for an unset field): norm refused it as a filter it cannot apply, though it
    narrows nothing; so too an empty `search=`, `topicKey=` or `subscriptionId=`."""
    client, key = client_with_key()
    made = NotificationFactory(trigger_event=TriggerEventFactory(client=client))
    novu = novu_py_for(key)

    for asked in ({}, {"context_keys": []}, {"context_keys": [""]}):
        listed = novu.notifications.list(request=asked).result
        assert [n.id for n in listed.data] == [str(made.pk)], asked
    empty = api_for(key).get("/v1/notifications?search=&topicKey=&subscriptionId=&contextKeys=")
    assert [n["_id"] for n in empty.json()["data"]] == [str(made.pk)]
    with pytest.raises(ErrorDto) as refused:
        novu.notifications.list(request={"context_keys": ["", "org:acme"]})
    assert refused.value.data.status_code == 400
    assert "contextKeys" in refused.value.data.message


def test_an_empty_filter_is_no_filter_whichever_it_is() -> None:
    """An empty `subscriberId=` or `workflow=` was ignored, but an empty repeatable one
    (`subscriberIds=`, `templates=`, `emails=`, `severity=`: what novu-py sends for
    `[""]`), or `transactionId=%20`, was a 400: each now narrows nothing, as an absent
    filter; beside a value, an empty one adds nothing to it."""
    client, key = client_with_key()
    made = NotificationFactory(trigger_event=TriggerEventFactory(client=client))
    novu, api = novu_py_for(key), api_for(key)

    for asked in (
        {"subscriber_ids": [""]},
        {"templates": [""]},
        {"emails": [""]},
        {"transaction_id": ""},
        {"subscriber_ids": ["", made.subscriber.subscriber_id]},
    ):
        listed = novu.notifications.list(request=asked).result
        assert [n.id for n in listed.data] == [str(made.pk)], asked
    query = "subscriberIds=&templates=&channels=&emails=&severity=&transactionId=%20&status="
    response = api.get(f"/v1/notifications?{query}")
    assert response.status_code == 200, response.content
    assert [n["_id"] for n in response.json()["data"]] == [str(made.pk)]
    narrowed = api.get("/v1/notifications?templates=&templates=no-such-workflow")
    assert narrowed.status_code == 200 and narrowed.json()["data"] == []


def test_novu_py_reads_each_notifications_subscriber() -> None:
    """novu-py drops norm's own `subscriberId`, and `_subscriberId` is norm's internal id:
    a novu-py user could not tell whom a notification was for. Novu's activity has the
    subscriber as an object, as it does here (an empty attribute left out, as Novu's)."""
    client, key = client_with_key()
    ann = SubscriberFactory(
        client=client, subscriber_id="ann", first_name="Ann", email="ann@example.com"
    )
    made = NotificationFactory(trigger_event=TriggerEventFactory(client=client), subscriber=ann)
    novu = novu_py_for(key)

    [listed] = novu.notifications.list(request={}).result.data
    read = novu.notifications.retrieve(notification_id=str(made.pk)).result

    for notification in (listed, read):
        subscriber = notification.subscriber
        assert subscriber is not None
        assert subscriber.subscriber_id == "ann"
        assert subscriber.id == notification.subscriber_id == str(ann.pk)
        assert (subscriber.first_name, subscriber.email) == ("Ann", "ann@example.com")
        assert subscriber.last_name is None and subscriber.phone is None
        # Novu's environment and organization: norm's client, as its other answers say.
        assert notification.environment_id == notification.organization_id == str(client.pk)


def test_novu_py_reads_each_notifications_workflow_and_channels(tenant) -> None:
    """Novu's activity names each notification's workflow (`template`) and its steps'
    types (`channels`, what the `channels` filter matches): norm's had neither."""
    client, api = tenant
    notification = _notification_with_steps(client, workflow_id="order-shipped")
    StepFactory(notification=notification, type="in_app", position=3)  # a type again

    listed = ActivitiesResponseDto.model_validate(api.get("/v1/notifications").json())
    [item] = listed.data

    assert item.template is not None
    assert (item.template.id, item.template.name) == ("order-shipped", "order-shipped")
    [trigger] = item.template.triggers
    assert (trigger.type, trigger.identifier, trigger.variables) == ("event", "order-shipped", [])
    assert item.channels == ["in_app", "delay", "email"]
    assert {n["_id"] for n in api.get("/v1/notifications?channels=email").json()["data"]} == {
        item.id
    }


NO_PAYLOADS = ('"notify_triggerevent"."to"', '"notify_triggerevent"."payload"')


@pytest.mark.parametrize(
    ("path", "unread"),
    [
        # A notification's payload is its trigger's, which its page shows.
        ("/v1/notifications", ['"notify_triggerevent"."to"']),
        ("/v1/messages", [*NO_PAYLOADS]),
        ("/v1/subscribers/ann/notifications/feed", [*NO_PAYLOADS]),
    ],
)
def test_a_page_reads_no_trigger_recipients_nor_payloads_it_does_not_show(
    tenant: Any, path: str, unread: list[str]
) -> None:
    """A page shows each row's transactionId, not its trigger's recipients (up to 1,000)
    and payload, which were read and decoded for each row: 100 rows of a trigger of
    1,000 recipients took 404 ms, 218 ms without them. A message's page shows no payload
    of its notification either."""
    client, api = tenant
    ann = SubscriberFactory(client=client, subscriber_id="ann")
    event = TriggerEventFactory(client=client, to=[{"subscriberId": "ann"}], payload={"n": 1})
    notification = NotificationFactory(trigger_event=event, subscriber=ann)
    MessageFactory(step__notification=notification)

    with CaptureQueriesContext(connection) as queries:
        response = api.get(path)

    assert response.status_code == 200 and response.json()["data"]
    assert event.transaction_id in response.content.decode()
    read = " ".join(q["sql"] for q in queries)
    assert [column for column in unread if column in read] == []
