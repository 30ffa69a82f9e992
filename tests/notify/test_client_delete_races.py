"""A client deleted in the admin while one of its triggers arrives, on real connections
(hence `transaction=True`): the trigger is acknowledged only if its event stays, and is
otherwise answered as a revoked key; the delete never fails, and never takes a trigger
it did not see."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.admin.models import LogEntry
from django.db.models.signals import pre_delete
from django.urls import reverse

from notify.admin import ClientAdmin
from notify.models import BridgeWorkflow, Client, TriggerEvent
from subscribers import services as subscriber_services
from subscribers.models import Subscriber, Topic, TopicSubscription
from tests.conftest import Enqueued, Meanwhile, while_held
from tests.factories import BridgeWorkflowFactory, SubscriberFactory, api_for, client_with_key
from workflows import bridge
from workflows.demo import demo_bridge

pytestmark = pytest.mark.django_db(transaction=True)

WELCOME = {"name": "welcome", "to": {"subscriberId": "ann", "email": "ann@example.com"}}


@pytest.fixture
def keyed() -> tuple[Client, str]:
    client, key = client_with_key()
    BridgeWorkflowFactory(client=client, workflow_id="welcome")  # no bridge asked
    return client, key


def delete_page(client: Client) -> str:
    return reverse("admin:notify_client_delete", args=[client.pk])


def trigger(key: str, bulk: bool = False) -> Any:
    if bulk:
        body = {"events": [{**WELCOME, "transactionId": t} for t in ("tx-1", "tx-2")]}
        return api_for(key).post("/v1/events/trigger/bulk", body, format="json")
    return api_for(key).post(
        "/v1/events/trigger", {**WELCOME, "transactionId": "tx-1"}, format="json"
    )


def assert_refused_as_a_revoked_key(response: Any) -> None:
    assert response.status_code == 401, response.content
    answer = response.json()
    assert (answer["code"], answer["message"]) == (
        "authentication_failed",
        "Unauthorized: API key unknown or revoked",
    )
    assert response["WWW-Authenticate"] == "ApiKey"


@pytest.mark.parametrize("bulk", [False, True], ids=["trigger", "bulk"])
def test_a_trigger_stored_as_its_client_is_deleted_is_refused_as_a_revoked_key(
    keyed: tuple[Client, str], admin_client: Any, enqueued: Enqueued, bulk: bool
) -> None:
    """Its key was looked up before the delete committed, and its INSERT then refused by
    the event's foreign key: a 500, which novu-py retries, for a client that is gone."""
    client, key = keyed

    deleted, response = while_held(
        lambda: admin_client.post(delete_page(client), {"post": "yes"}),
        lambda: trigger(key, bulk),
    )

    assert deleted.status_code == 302
    assert_refused_as_a_revoked_key(response)
    assert not Client.objects.exists() and not TriggerEvent.objects.exists()
    assert enqueued.calls == []


@pytest.mark.parametrize("bulk", [False, True], ids=["trigger", "bulk"])
def test_a_trigger_discovering_its_workflow_as_its_client_is_deleted_is_refused_too(
    admin_client: Any, enqueued: Enqueued, monkeypatch: pytest.MonkeyPatch, bulk: bool
) -> None:
    """A workflow the registry does not hold yet is discovered, and stored for the
    client, before the event: refused by their foreign keys, a 500. A bulk's events are
    not refused one by one (a 201 of errors), as a revoked key is the request's."""
    client, key = client_with_key()
    monkeypatch.setattr(bridge, "discover", lambda url, *, secrets: demo_bridge.discover())

    deleted, response = while_held(
        lambda: admin_client.post(delete_page(client), {"post": "yes"}),
        lambda: trigger(key, bulk),
    )

    assert deleted.status_code == 302
    assert_refused_as_a_revoked_key(response)
    assert not Client.objects.exists() and not BridgeWorkflow.objects.exists()
    assert enqueued.calls == []


@pytest.mark.parametrize("how", ["delete page", "delete action"])
def test_a_trigger_stored_after_the_admin_checked_for_triggers_keeps_its_client(
    keyed: tuple[Client, str], admin_client: Any, enqueued: Enqueued, monkeypatch: Any, how: str
) -> None:
    """The admin deletes only a client without triggers, and checked before it deleted:
    a trigger stored in between was acknowledged (201), then deleted with its client,
    its workflow never run."""
    client, key = keyed
    triggers: list[Meanwhile] = []
    checked = ClientAdmin.get_deleted_objects

    def trigger_once_checked(self: ClientAdmin, objs: Any, request: Any) -> Any:
        found = checked(self, objs, request)
        if request.method == "POST" and not triggers:
            triggers.append(Meanwhile(lambda: trigger(key)))
        return found

    monkeypatch.setattr(ClientAdmin, "get_deleted_objects", trigger_once_checked)
    if how == "delete page":
        deleted = admin_client.post(delete_page(client), {"post": "yes"})
    else:
        action = {"action": "delete_selected", "_selected_action": [client.pk], "post": "yes"}
        deleted = admin_client.post(reverse("admin:notify_client_changelist"), action)
    response = triggers[0].join()

    assert response.status_code == 201, response.content
    assert deleted.status_code == 403  # as for a client whose triggers the page listed
    event = TriggerEvent.objects.get(client=client)
    assert enqueued.calls[0][1] == (event.pk,)
    assert not LogEntry.objects.exists()  # no delete logged that did not happen


def test_a_trigger_stored_as_the_delete_runs_does_not_fail_the_delete(
    keyed: tuple[Client, str], admin_client: Any, enqueued: Enqueued
) -> None:
    """Stored after Django's cascade had read the rows to delete with the client, the
    event was left, and refused the client's delete by its foreign key at commit: the
    admin's 500, the trigger's event kept for a client the operator meant to delete."""
    client, key = keyed
    triggers: list[Meanwhile] = []

    def trigger_meanwhile(sender: Any, **_: Any) -> None:
        if sender is Client and not triggers:
            triggers.append(Meanwhile(lambda: trigger(key)))

    pre_delete.connect(trigger_meanwhile)
    try:
        deleted = admin_client.post(delete_page(client), {"post": "yes"})
    finally:
        pre_delete.disconnect(trigger_meanwhile)
    response = triggers[0].join()

    assert deleted.status_code == 302
    assert_refused_as_a_revoked_key(response)
    assert not Client.objects.exists() and not TriggerEvent.objects.exists()
    assert enqueued.calls == []


@pytest.mark.parametrize(
    "path, body",
    [
        ("/v2/subscribers", {"subscriberId": "ann", "email": "ann@example.com"}),
        ("/v2/topics", {"key": "news", "name": "News"}),
    ],
    ids=["subscriber", "topic"],
)
def test_another_write_stored_as_its_client_is_deleted_is_refused_as_a_revoked_key(
    keyed: tuple[Client, str], admin_client: Any, path: str, body: dict[str, Any]
) -> None:
    """As a trigger is: its key looked up before the delete committed, its INSERT then
    refused by the client's foreign key, a 500 that novu-py retries."""
    client, key = keyed

    deleted, response = while_held(
        lambda: admin_client.post(delete_page(client), {"post": "yes"}),
        lambda: api_for(key).post(path, body, format="json"),
    )

    assert deleted.status_code == 302
    assert_refused_as_a_revoked_key(response)
    assert not Client.objects.exists()


def test_a_topic_subscription_added_as_its_client_is_deleted_does_not_fail_the_delete(
    keyed: tuple[Client, str], admin_client: Any
) -> None:
    """A subscription (which names no client) added while the delete ran: the delete
    collected the client's topic subscriptions before it committed, waited for its topic
    and subscriber, then deleted them under it, refused by its foreign key at commit: a
    500, the client still there."""
    client, _ = keyed
    SubscriberFactory(client=client, subscriber_id="ann")
    topic = Topic.objects.create(client=client, key="news")

    (members, missing), deleted = while_held(
        lambda: subscriber_services.topic_subscribe(topic=topic, subscriber_ids=["ann"]),
        lambda: admin_client.post(delete_page(client), {"post": "yes"}),
    )

    assert ([m.subscriber_id for m in members], missing) == (["ann"], [])
    assert deleted.status_code == 302
    assert not Client.objects.exists()
    assert not Subscriber.objects.exists() and not TopicSubscription.objects.exists()
