"""Novu's own Python clients, pointed at a live norm: novu-py 3.x and novu 1.14.

Every call must return without raising; the database then shows that what each call
started ran to the end (or was canceled). The error cases must raise each client's
own typed error.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any

import novu_py
import pytest
import requests
from novu.api import EventApi, SubscriberApi, TopicApi
from novu.dto.event import InputEventDto
from novu.dto.subscriber import SubscriberDto
from novu.dto.topic import TriggerTopicDto
from novu_py import Novu
from novu_py.utils import BackoffStrategy, RetryConfig
from pytest_django.live_server_helper import LiveServer

from notify.models import Client
from subscribers.models import Subscriber, Topic
from tests.e2e.harness import CeleryProcess, SmtpRecorder, wait_for
from workflows.models import Notification, Step

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

MakeClient = Callable[..., tuple[Client, str]]
# novu-py retries 408/409/429/5xx for up to an hour by default: a bug must fail fast.
NO_RETRIES = RetryConfig("none", BackoffStrategy(1, 1, 1, 1), False)
TIMEOUT_MS = 15_000
PEOPLE = ["ann", "bob", "cid"]
DELAYED = {"status": "delayed", "orderId": "A-1"}
SHIPPED = {"status": "shipped", "orderId": "A-2"}


NovuPy = Callable[[str], Novu]


@pytest.fixture
def novu_client(live_server: LiveServer) -> Iterator[NovuPy]:
    """novu-py's client with a key, closed after the test: its keep-alive connection kept
    the live server's thread, and that thread's database session, to the end of the run."""
    with ExitStack() as clients:
        yield lambda key: clients.enter_context(
            Novu(
                secret_key=key,
                server_url=live_server.url,
                retry_config=NO_RETRIES,
                timeout_ms=TIMEOUT_MS,
            )
        )


def novu_114_apis(live_server: LiveServer, key: str) -> tuple[EventApi, SubscriberApi, TopicApi]:
    # The trailing slash makes novu 1.14 send `//v1/...`, as users' base URLs often do.
    url = f"{live_server.url}/"
    return (
        EventApi(url, key, requests_timeout=15),
        SubscriberApi(url, key, requests_timeout=15),
        TopicApi(url, key, requests_timeout=15),
    )


def settle(client: Client, transaction_id: str, expected: list[str]) -> dict[str, str]:
    """Wait until the trigger's notifications are the expected ones, all final."""

    def done() -> dict[str, str]:
        found = dict(
            Notification.objects.filter(
                client=client, trigger_event__transaction_id=transaction_id
            ).values_list("subscriber__subscriber_id", "status")
        )
        final = sorted(found) == sorted(expected) and all(
            s in Notification.FINAL for s in found.values()
        )
        return found if final else {}

    statuses = wait_for(done, timeout=60, what=f"notifications of {transaction_id} to finish")
    notifications = Notification.objects.filter(
        client=client, trigger_event__transaction_id=transaction_id
    )
    errors = [n.error for n in notifications if n.status != Notification.Status.COMPLETED]
    assert set(statuses.values()) == {Notification.Status.COMPLETED}, errors
    return statuses


def wait_step_scheduled(client: Client, transaction_id: str) -> Step:
    return wait_for(
        lambda: Step.objects.filter(
            notification__client=client,
            notification__trigger_event__transaction_id=transaction_id,
            step_id="wait",
            status=Step.Status.SCHEDULED,
        ).first(),
        timeout=60,
        what="the welcome's delay to be scheduled",
    )


def assert_canceled(client: Client, transaction_id: str, step: Step) -> None:
    notification = Notification.objects.get(
        client=client, trigger_event__transaction_id=transaction_id
    )
    assert notification.status == Notification.Status.CANCELED
    step.refresh_from_db()
    assert step.status == Step.Status.CANCELED
    assert not notification.steps.filter(step_id="reminder").exists()


def members(client: Client, key: str) -> list[str]:
    topic = Topic.objects.get(client=client, key=key)
    return sorted(topic.subscribers.values_list("subscriber_id", flat=True))


# --- novu-py 3.x -----------------------------------------------------------------------------


def test_novu_py_drives_norm_end_to_end(
    novu_client: NovuPy,
    make_client: MakeClient,
    worker: CeleryProcess,
    smtp: tuple[int, SmtpRecorder],
) -> None:
    client, key = make_client()
    novu = novu_client(key)

    for name in PEOPLE:
        created = novu.subscribers.create(
            create_subscriber_request_dto={
                "subscriber_id": name,
                "email": f"{name}@example.com",
                "first_name": name.title(),
            }
        ).result
        assert created.subscriber_id == name
    assert novu.subscribers.retrieve(subscriber_id="ann").result.email == "ann@example.com"
    listed = novu.subscribers.search(request={"limit": 2}).result
    assert (len(listed.data), listed.total_count) == (2, 3) and listed.next is not None

    topic = novu.topics.create(create_update_topic_request_dto={"key": "news", "name": "News"})
    assert topic.result.key == "news"
    added = novu.topics.subscriptions.create(
        topic_key="news",
        create_topic_subscriptions_request_dto={"subscriber_ids": ["ann", "bob", "nobody"]},
    ).result
    assert (added.meta.successful, added.meta.failed) == (2, 1)
    assert members(client, "news") == ["ann", "bob"]
    check = novu.topics.subscribers.retrieve(topic_key="news", external_subscriber_id="ann")
    assert (check.result.topic_key, check.result.external_subscriber_id) == ("news", "ann")
    listed_members = novu.topics.subscriptions.list(request={"topic_key": "news"}).result
    assert sorted(s.subscriber.subscriber_id for s in listed_members.data) == ["ann", "bob"]

    def trigger(to: Any, workflow: str = "order-update", payload: Any = DELAYED) -> str:
        body = {"workflow_id": workflow, "to": to, "payload": payload}
        result = novu.trigger(trigger_event_request_dto=body).result
        assert (result.acknowledged, result.status) == (True, "processed")
        assert result.transaction_id
        return result.transaction_id

    settle(client, trigger("cid"), ["cid"])
    settle(client, trigger({"topic_key": "news", "type": "Topic"}, payload=SHIPPED), ["ann", "bob"])
    recorder = smtp[1]
    wait_for(lambda: len(recorder.messages) == 2, timeout=10, what="2 shipping emails")
    assert sorted(r for m in recorder.messages for r in m.recipients) == [
        "ann@example.com",
        "bob@example.com",
    ]
    mixed = [
        {"topic_key": "news", "type": "Topic", "exclude": ["bob"]},
        {"subscriber_id": "dan", "email": "dan@example.com"},
        "cid",
    ]
    settle(client, trigger(mixed), ["ann", "cid", "dan"])

    bulk = novu.trigger_bulk(
        bulk_trigger_event_dto={
            "events": [
                {"workflow_id": "order-update", "to": "ann", "payload": DELAYED},
                {"workflow_id": "no-such-workflow", "to": "bob", "payload": {}},
                {"workflow_id": "order-update", "to": ["bob", "cid"], "payload": DELAYED},
            ]
        }
    ).result
    assert [r.status for r in bulk] == ["processed", "error", "processed"]
    settle(client, bulk[0].transaction_id, ["ann"])
    settle(client, bulk[2].transaction_id, ["bob", "cid"])

    broadcast = novu.trigger_broadcast(
        trigger_event_to_all_request_dto={"name": "order-update", "payload": DELAYED}
    ).result
    assert broadcast.status == "processed"
    settle(client, broadcast.transaction_id, ["ann", "bob", "cid", "dan"])

    waiting = trigger("ann", "welcome", {"delaySeconds": 60})
    step = wait_step_scheduled(client, waiting)
    assert novu.cancel(transaction_id=waiting).result is True
    assert novu.cancel(transaction_id=waiting).result is False
    assert_canceled(client, waiting, step)

    patched = novu.subscribers.patch(
        subscriber_id="ann", patch_subscriber_request_dto={"last_name": "Lee", "first_name": None}
    ).result
    assert (patched.last_name, patched.first_name, patched.email) == (
        "Lee",
        None,
        "ann@example.com",
    )
    deleted = novu.subscribers.delete(subscriber_id="cid").result
    assert (deleted.acknowledged, deleted.status) == (True, "deleted")
    ann = Subscriber.objects.get(client=client, subscriber_id="ann")
    assert (ann.last_name, ann.first_name) == ("Lee", "")
    assert not Subscriber.objects.filter(client=client, subscriber_id="cid").exists()


def test_novu_py_raises_its_typed_errors(novu_client: NovuPy, make_client: MakeClient) -> None:
    client, key = make_client()
    novu = novu_client(key)
    Subscriber.objects.create(client=client, subscriber_id="ann")

    with pytest.raises(novu_py.models.ErrorDto) as wrong_key:
        novu_client("nk_not_a_key").subscribers.retrieve(subscriber_id="ann")
    assert wrong_key.value.data.status_code == 401
    with pytest.raises(novu_py.models.ErrorDto) as unknown:
        novu.subscribers.retrieve(subscriber_id="nobody")
    assert unknown.value.data.status_code == 404
    assert unknown.value.data.path == "/v2/subscribers/nobody"
    with pytest.raises(novu_py.models.PayloadValidationExceptionDto) as invalid:
        novu.trigger(trigger_event_request_dto={"workflow_id": "welcome", "to": []})
    assert invalid.value.data.status_code == 400
    assert [e.field for e in invalid.value.data.errors] == ["to"]
    with pytest.raises(novu_py.models.ErrorDto) as no_topic:
        novu.trigger(
            trigger_event_request_dto={
                "workflow_id": "welcome",
                "to": {"topic_key": "missing", "type": "Topic"},
            }
        )
    assert no_topic.value.data.status_code == 404
    with pytest.raises(novu_py.models.ValidationErrorDto) as unprocessable:
        novu.subscribers.create(create_subscriber_request_dto={"subscriber_id": ""})
    assert unprocessable.value.data.status_code == 422
    assert list(unprocessable.value.data.errors) == ["subscriberId"]
    # The API answers 409 only when asked to; without retries it fails at once.
    with pytest.raises(novu_py.models.NovuError) as exists:
        novu.subscribers.create(
            create_subscriber_request_dto={"subscriber_id": "ann"}, fail_if_exists=True
        )
    assert exists.value.status_code == 409


def test_novu_py_names_topic_subscriptions_by_their_identifiers(
    novu_client: NovuPy, make_client: MakeClient
) -> None:
    """A subscription's own identifier, or Novu's default, names it to get_subscription,
    update and delete; an unsubscribe naming no one is a success that removes nothing."""
    client, key = make_client()
    novu = novu_client(key)
    for name in ("ann", "bob"):
        Subscriber.objects.create(client=client, subscriber_id=name)

    subscriptions = [{"identifier": "ann-weekly", "subscriber_id": "ann", "name": "Weekly"}, "bob"]
    added = novu.topics.subscriptions.create(
        topic_key="news", create_topic_subscriptions_request_dto={"subscriptions": subscriptions}
    ).result
    assert [(s.identifier, s.name) for s in added.data] == [
        ("ann-weekly", "Weekly"),
        ("tk_news:si_bob", None),
    ]
    for identifier in ("ann-weekly", "tk_news:si_bob"):
        got = novu.topics.subscriptions.get_subscription(topic_key="news", identifier=identifier)
        assert got.result.identifier == identifier

    updated = novu.topics.subscriptions.update(
        topic_key="news",
        identifier="ann-weekly",
        update_topic_subscription_request_dto={"name": "Monthly"},
    ).result
    assert (updated.identifier, updated.name) == ("ann-weekly", "Monthly")
    with pytest.raises(novu_py.models.ErrorDto) as preferences:
        novu.topics.subscriptions.update(
            topic_key="news",
            identifier="ann-weekly",
            update_topic_subscription_request_dto={"preferences": ["welcome"]},
        )
    assert preferences.value.data.status_code == 400

    nothing = novu.topics.subscriptions.delete(
        topic_key="news", delete_topic_subscriptions_request_dto={}
    ).result
    assert (nothing.data, nothing.meta.total_count) == ([], 0)
    gone = novu.topics.subscriptions.delete(
        topic_key="news",
        delete_topic_subscriptions_request_dto={"subscriptions": [{"identifier": "ann-weekly"}]},
    ).result
    assert [s.identifier for s in gone.data] == ["ann-weekly"]
    assert members(client, "news") == ["bob"]


# --- novu 1.14 -------------------------------------------------------------------------------


def test_novu_114_drives_norm_end_to_end(
    live_server: LiveServer,
    make_client: MakeClient,
    worker: CeleryProcess,
    smtp: tuple[int, SmtpRecorder],
) -> None:
    client, key = make_client()
    events, subscribers, topics = novu_114_apis(live_server, key)

    for name in PEOPLE:
        dto = SubscriberDto(
            subscriber_id=name, email=f"{name}@example.com", first_name=name.title()
        )
        assert subscribers.create(dto).subscriber_id == name
    assert subscribers.get("ann").email == "ann@example.com"
    assert sorted(s.subscriber_id for s in subscribers.list(page=0).data) == PEOPLE

    assert topics.create("news", "News").key == "news"
    succeeded, failed = topics.subscribe("news", ["ann", "bob", "nobody"])
    assert (sorted(succeeded), failed) == (["ann", "bob"], {"notFound": ["nobody"]})
    assert topics.subscribed("news", "ann") is True
    assert topics.subscribed("news", "cid") is False

    def settled(event: Any, expected: list[str]) -> None:
        assert (event.acknowledged, event.status) == (True, "processed")
        settle(client, event.transaction_id, expected)

    settled(events.trigger("order-update", "cid", DELAYED), ["cid"])
    topic = TriggerTopicDto(topic_key="news", type="Topic")
    settled(events.trigger_topic("order-update", topic, SHIPPED), ["ann", "bob"])
    recorder = smtp[1]
    wait_for(lambda: len(recorder.messages) == 2, timeout=10, what="2 shipping emails")
    mixed = [
        {"topicKey": "news", "type": "Topic", "exclude": ["bob"]},
        {"subscriberId": "dan", "email": "dan@example.com"},
        "cid",
    ]
    settled(
        events.trigger("order-update", mixed, DELAYED, transaction_id="tx-mixed"),
        ["ann", "cid", "dan"],
    )

    bulk = events.trigger_bulk(
        [
            InputEventDto(name="order-update", recipients="ann", payload=DELAYED),
            InputEventDto(name="order-update", recipients=["bob", "cid"], payload=DELAYED),
        ]
    )
    settled(bulk[0], ["ann"])
    settled(bulk[1], ["bob", "cid"])
    settled(events.broadcast("order-update", DELAYED), ["ann", "bob", "cid", "dan"])

    waiting = events.trigger("welcome", "ann", {"delaySeconds": 60}, transaction_id="tx-wait")
    step = wait_step_scheduled(client, waiting.transaction_id)
    assert events.delete("tx-wait") is None
    assert_canceled(client, "tx-wait", step)
    events.delete("tx-wait")  # nothing left to cancel: still a success

    # novu 1.14 sends null for every field it was not given: null must not wipe them.
    updated = subscribers.put(SubscriberDto(subscriber_id="ann", last_name="Lee"))
    assert (updated.last_name, updated.first_name, updated.email) == (
        "Lee",
        "Ann",
        "ann@example.com",
    )
    subscribers.delete("cid")
    ann = Subscriber.objects.get(client=client, subscriber_id="ann")
    assert (ann.last_name, ann.first_name, ann.email) == ("Lee", "Ann", "ann@example.com")
    assert not Subscriber.objects.filter(client=client, subscriber_id="cid").exists()


def test_novu_114_raises_http_errors(live_server: LiveServer, make_client: MakeClient) -> None:
    _, key = make_client()
    events, subscribers, _ = novu_114_apis(live_server, key)

    with pytest.raises(requests.HTTPError) as wrong_key:
        novu_114_apis(live_server, "nk_not_a_key")[1].get("ann")
    assert wrong_key.value.response.status_code == 401
    with pytest.raises(requests.HTTPError) as unknown:
        subscribers.get("nobody")
    assert unknown.value.response.status_code == 404
    assert unknown.value.response.json()["statusCode"] == 404
    with pytest.raises(requests.HTTPError) as invalid:
        events.trigger("welcome", [], {})
    assert invalid.value.response.status_code == 400
    assert invalid.value.response.json()["errors"][0]["field"] == "to"
