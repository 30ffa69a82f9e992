"""Triggers to topics: the API checks the topics, the workflow worker fans them out."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from django.db import connection
from django.http import HttpResponse
from django.test.utils import CaptureQueriesContext

from config import pipeline
from notify.models import Client, TriggerEvent
from subscribers import tasks as subscriber_tasks
from subscribers.models import Subscriber, Topic
from tests.conftest import Enqueued
from tests.factories import BridgeWorkflowFactory, SubscriberFactory, api_for, client_with_key
from workflows import tasks as workflow_tasks
from workflows.models import Notification
from workflows.services import fanout

pytestmark = pytest.mark.django_db

Capture = Callable[..., Any]
Trigger = Callable[..., HttpResponse]
MEMBERS = ["ann", "bob", "cid", "dan"]


def topic_with(client: Client, key: str, subscriber_ids: list[str]) -> Topic:
    topic = Topic.objects.create(client=client, key=key)
    for subscriber_id in subscriber_ids:
        subscriber, _ = Subscriber.objects.get_or_create(client=client, subscriber_id=subscriber_id)
        topic.subscribers.add(subscriber)
    return topic


@pytest.fixture
def keyed() -> tuple[Client, str]:
    client, key = client_with_key()
    # Registered already, so the trigger asks no bridge what "welcome" is.
    BridgeWorkflowFactory(client=client, workflow_id="welcome")
    topic_with(client, "news", MEMBERS)
    return client, key


@pytest.fixture
def trigger(keyed: tuple[Client, str], django_capture_on_commit_callbacks: Capture) -> Trigger:
    def do(to: Any, *, key: str | None = None, **fields: Any) -> HttpResponse:
        api = api_for(key or keyed[1])
        body = json.dumps({"name": "welcome", "to": to, "payload": {}, **fields})
        with django_capture_on_commit_callbacks(execute=True):
            return api.post("/v1/events/trigger", data=body, content_type="application/json")

    return do


@pytest.fixture
def fan_out(enqueued: Enqueued, django_capture_on_commit_callbacks: Capture) -> Callable[[], None]:
    """Run the workflow worker on what the trigger enqueued, then every subscriber command."""

    def run() -> None:
        [(event_id,)] = enqueued.of(pipeline.WORKFLOW)
        workflow_tasks.workflow_run(event_id)
        # Through JSON, as the broker carries them.
        commands = json.loads(json.dumps(enqueued.of(pipeline.SUBSCRIBER)))
        for args in commands:
            with django_capture_on_commit_callbacks(execute=True):
                subscriber_tasks.subscriber_process(*args)
        # A topic's members come in chunks, one batch command each.
        for args in json.loads(json.dumps(enqueued.of(pipeline.SUBSCRIBER_BATCH))):
            with django_capture_on_commit_callbacks(execute=True):
                subscriber_tasks.subscribers_process(*args)

    return run


def notified(client: Client) -> list[str]:
    """One entry per notification: a subscriber notified twice appears twice."""
    return sorted(
        Notification.objects.filter(client=client).values_list(
            "subscriber__subscriber_id", flat=True
        )
    )


def test_a_topic_reaches_each_member_once(
    keyed: tuple[Client, str], trigger: Trigger, fan_out: Callable[[], None], enqueued: Enqueued
) -> None:
    client, _ = keyed
    response = trigger({"type": "Topic", "topicKey": "news"})
    assert response.status_code == 201, response.content
    fan_out()

    assert notified(client) == MEMBERS
    assert len(enqueued.of(pipeline.ECHO)) == 4
    event = TriggerEvent.objects.get(client=client)
    assert (event.status, event.recipients) == (TriggerEvent.Status.PROCESSED, 4)


def test_a_mixed_list_with_exclude_reaches_each_recipient_once(
    keyed: tuple[Client, str], trigger: Trigger, fan_out: Callable[[], None], enqueued: Enqueued
) -> None:
    client, _ = keyed
    to = [
        {"type": "Topic", "topicKey": "news", "exclude": ["dan"]},
        {"subscriberId": "ann", "firstName": "Ann"},
        "eve",
    ]
    assert trigger(to).status_code == 201
    fan_out()

    assert notified(client) == ["ann", "bob", "cid", "eve"]
    # ann comes by her own command, which updates her before she is notified, not also
    # in the topic's; the count leaves out dan and counts ann once.
    [(_, topic_members)] = enqueued.of(pipeline.SUBSCRIBER_BATCH)
    assert sorted(topic_members) == ["bob", "cid"]
    assert TriggerEvent.objects.get(client=client).recipients == 4
    ann = Subscriber.objects.get(client=client, subscriber_id="ann")
    assert ann.first_name == "Ann"
    assert Subscriber.objects.filter(client=client, subscriber_id="eve").exists()


def test_a_topic_named_twice_leaves_out_what_either_mention_excludes(
    keyed: tuple[Client, str], trigger: Trigger, fan_out: Callable[[], None]
) -> None:
    """As Novu gathers a topic's excludes from each of its entries in `to`."""
    client, _ = keyed
    to = [
        {"type": "Topic", "topicKey": "news", "exclude": ["ann"]},
        {"type": "Topic", "topicKey": "news", "exclude": ["bob"]},
    ]
    assert trigger(to).status_code == 201
    fan_out()

    assert notified(client) == ["cid", "dan"]
    assert TriggerEvent.objects.get(client=client).recipients == 2


@pytest.mark.parametrize("actor", ["ann", {"subscriberId": "ann", "firstName": "Ann"}])
def test_the_actor_is_not_notified_as_a_topic_member(
    keyed: tuple[Client, str], trigger: Trigger, fan_out: Callable[[], None], actor: Any
) -> None:
    """As in Novu: who commented on a thread is not told of their own comment."""
    client, _ = keyed
    topic_with(client, "deals", ["ann", "fay"])
    to = [{"type": "Topic", "topicKey": "news"}, {"type": "Topic", "topicKey": "deals"}]
    assert trigger(to, actor=actor).status_code == 201
    fan_out()

    assert notified(client) == ["bob", "cid", "dan", "fay"]
    assert TriggerEvent.objects.get(client=client).recipients == 4


def test_an_actor_given_as_a_number_is_not_notified_as_a_topic_member(
    keyed: tuple[Client, str], trigger: Trigger, fan_out: Callable[[], None]
) -> None:
    """A number is a subscriberId (7 is "7"), as in `to` and as the actor is stored; the
    fan-out read only a string or an object, and notified actor 7 as a member."""
    client, _ = keyed
    topic_with(client, "deals", ["7", "fay"])
    assert trigger({"type": "Topic", "topicKey": "deals"}, actor=7).status_code == 201
    fan_out()
    assert notified(client) == ["fay"]


def test_an_actor_listed_by_subscriberid_is_notified(
    keyed: tuple[Client, str], trigger: Trigger, fan_out: Callable[[], None]
) -> None:
    client, _ = keyed
    assert trigger(["ann", {"type": "Topic", "topicKey": "news"}], actor="ann").status_code == 201
    fan_out()
    assert notified(client) == MEMBERS


def test_overlapping_topics_notify_a_shared_member_once(
    keyed: tuple[Client, str], trigger: Trigger, fan_out: Callable[[], None]
) -> None:
    client, _ = keyed
    topic_with(client, "deals", ["bob", "fay"])
    to = [{"type": "Topic", "topicKey": "news"}, {"type": "Topic", "topicKey": "deals"}]
    assert trigger(to).status_code == 201
    fan_out()

    assert notified(client) == ["ann", "bob", "cid", "dan", "fay"]
    # Counted once too, or the reconciler would find the fan-out short and run it again.
    assert TriggerEvent.objects.get(client=client).recipients == 5


def test_novu_114s_topic_list_form_is_accepted(
    keyed: tuple[Client, str], trigger: Trigger, fan_out: Callable[[], None]
) -> None:
    client, _ = keyed
    assert trigger([{"topicKey": "news", "type": "Topic"}]).status_code == 201
    fan_out()
    assert notified(client) == MEMBERS


def test_a_topic_key_with_white_space_around_it_reaches_the_topic_stored_trimmed(
    keyed: tuple[Client, str], trigger: Trigger, fan_out: Callable[[], None]
) -> None:
    """The topic API stores " news " (a cell of a file) as "news", as a subscriberId; a
    trigger's topicKey was taken as given, a 404 "Topic not found:  news " for it."""
    client, _ = keyed
    response = trigger([{"type": "Topic", "topicKey": " news\n"}])
    assert response.status_code == 201, response.content
    fan_out()
    assert notified(client) == MEMBERS


def test_an_empty_topic_triggers_nobody(
    keyed: tuple[Client, str], trigger: Trigger, fan_out: Callable[[], None]
) -> None:
    client, _ = keyed
    Topic.objects.create(client=client, key="empty")
    assert trigger({"type": "Topic", "topicKey": "empty"}).status_code == 201
    fan_out()

    assert notified(client) == []
    assert TriggerEvent.objects.get(client=client).status == TriggerEvent.Status.PROCESSED


@pytest.mark.parametrize(
    "to",
    [
        {"type": "Topic", "topicKey": "missing"},
        [{"type": "Topic", "topicKey": "news"}, {"type": "Topic", "topicKey": "missing"}, "ann"],
    ],
)
def test_a_topic_that_does_not_exist_is_404_at_trigger_time(
    trigger: Trigger, enqueued: Enqueued, to: Any
) -> None:
    response = trigger(to)
    assert response.status_code == 404, response.content
    body = response.json()
    assert (body["statusCode"], body["code"]) == (404, "topic_not_found")
    assert "missing" in body["message"]
    assert not TriggerEvent.objects.exists()
    assert enqueued.calls == []


def test_another_clients_topic_is_not_found_and_not_reached(
    keyed: tuple[Client, str], trigger: Trigger, fan_out: Callable[[], None]
) -> None:
    client, _ = keyed
    other, other_key = client_with_key()
    BridgeWorkflowFactory(client=other, workflow_id="welcome")
    topic_with(other, "secret", ["zed"])
    assert trigger({"type": "Topic", "topicKey": "secret"}).status_code == 404

    # The other client's own "news" topic has other members: each reaches only its own,
    # not a subscriber of its own whose id is a member of the same key elsewhere.
    topic_with(other, "news", ["zed"])
    SubscriberFactory(client=other, subscriber_id="ann")
    assert trigger({"type": "Topic", "topicKey": "news"}, key=other_key).status_code == 201
    fan_out()
    assert notified(other) == ["zed"]
    assert notified(client) == []


def test_topic_fan_out_is_chunked_and_reaches_everyone(
    keyed: tuple[Client, str],
    trigger: Trigger,
    fan_out: Callable[[], None],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client, _ = keyed
    monkeypatch.setattr(fanout, "BROADCAST_CHUNK", 2)
    names = [f"user-{i}" for i in range(7)]
    topic = topic_with(client, "big", names)
    # A non-member and a later member interleave with the topic by primary key.
    SubscriberFactory(client=client, subscriber_id="outsider")
    topic.subscribers.add(SubscriberFactory(client=client, subscriber_id="late"))

    expected = sorted([n for n in names if n != "user-3"] + ["late"])
    chunks = list(fanout._topic_audience(client_id=client.pk, key="big", exclude=["user-3"]))
    assert [len(c) for c in chunks] == [2, 2, 2, 1]
    assert sorted(s for c in chunks for s in c) == expected

    assert trigger({"type": "Topic", "topicKey": "big", "exclude": ["user-3"]}).status_code == 201
    fan_out()
    assert notified(client) == expected


def test_each_chunk_of_a_topic_fan_out_reads_only_its_own_members(
    keyed: tuple[Client, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A chunk went on from the last one's subscriber by the subscriber's pk, which
    PostgreSQL carries over no join: each read (and sorted) every member of the topic,
    so a fan-out read the topic as many times as it had chunks (20,000 members in 40
    chunks: 1.4 s; it grows as the square of the topic). The last chunk reads its own."""
    client, _ = keyed
    monkeypatch.setattr(fanout, "BROADCAST_CHUNK", 2)
    topic_with(client, "big", [f"user-{i}" for i in range(9)])
    with CaptureQueriesContext(connection) as queries:
        chunks = list(fanout._topic_audience(client_id=client.pk, key="big", exclude=[]))
    assert [len(c) for c in chunks] == [2, 2, 2, 2, 1]
    last = [q["sql"] for q in queries if "subscribers_topicsubscription" in q["sql"]][-1]

    with connection.cursor() as cursor:
        # The test table is too small for the planner to choose an index on its own.
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute(f"EXPLAIN (FORMAT JSON, ANALYZE) {last}")
        (plan,) = cursor.fetchone()
    scans, nodes = [], [plan[0]["Plan"]]
    while nodes:
        node = nodes.pop()
        nodes.extend(node.get("Plans", []))
        if node.get("Relation Name") == "subscribers_topicsubscription":
            scans.append(node)
    # A range of the (topic, subscriber) index from the last chunk's subscriber on: the
    # one member left (a probe per subscriber, as before, reads the topic's range anew).
    ranges = [s.get("Index Cond", "") + s.get("Recheck Cond", "") for s in scans]
    assert [r for r in ranges if "subscriber_id >" in r]
    assert sum(s["Actual Rows"] * s["Actual Loops"] for s in scans) <= 2


def test_a_fan_out_run_again_sends_only_to_those_it_missed_and_counts_each_once(
    keyed: tuple[Client, str],
    trigger: Trigger,
    enqueued: Enqueued,
    django_capture_on_commit_callbacks: Capture,
) -> None:
    """Commands lost with the broker: the reconciler runs the fan-out again. The rerun
    sends commands only to the recipients without a notification (listed ones and topic
    members alike) and counts the audience once: a count that took the reached for new
    ones would look short or long to the reconciler, which would run it again in vain."""
    client, _ = keyed
    assert trigger(["ann", "zed", {"type": "Topic", "topicKey": "news"}]).status_code == 201
    [(event_id,)] = enqueued.of(pipeline.WORKFLOW)
    workflow_tasks.workflow_run(event_id)
    assert TriggerEvent.objects.get(pk=event_id).recipients == 5  # ann, zed; bob, cid, dan
    # Only ann's command and a part of the topic's chunk arrived; the rest was lost.
    with django_capture_on_commit_callbacks(execute=True):
        subscriber_tasks.subscriber_process(event_id, {"subscriberId": "ann"})
        subscriber_tasks.subscribers_process(event_id, ["bob"])
    TriggerEvent.objects.filter(pk=event_id).update(status=TriggerEvent.Status.RECEIVED)
    enqueued.clear()

    workflow_tasks.workflow_run(event_id)

    assert enqueued.of(pipeline.SUBSCRIBER) == [(event_id, {"subscriberId": "zed"})]
    assert enqueued.of(pipeline.SUBSCRIBER_BATCH) == [(event_id, ["cid", "dan"])]
    event = TriggerEvent.objects.get(pk=event_id)
    assert (event.status, event.recipients) == (TriggerEvent.Status.PROCESSED, 5)
    with django_capture_on_commit_callbacks(execute=True):
        subscriber_tasks.subscriber_process(event_id, {"subscriberId": "zed"})
        subscriber_tasks.subscribers_process(event_id, ["cid", "dan"])
    assert notified(client) == ["ann", "bob", "cid", "dan", "zed"]


def test_a_batch_delivered_again_after_its_member_was_deleted_and_made_anew_passes_her_by(
    keyed: tuple[Client, str],
    trigger: Trigger,
    enqueued: Enqueued,
    django_capture_on_commit_callbacks: Capture,
) -> None:
    """The broker delivers a topic's batch command again (its acknowledgement lost). Ann,
    reached by the first delivery, was deleted since (the event forgot her) and made anew
    under the same subscriberId, a new subscriber in no topic: the batch reached her again,
    by her subscriberId, though the fan-out's own rerun passes her by."""
    client, key = keyed
    assert trigger({"type": "Topic", "topicKey": "news"}).status_code == 201
    [(event_id,)] = enqueued.of(pipeline.WORKFLOW)
    workflow_tasks.workflow_run(event_id)
    [batch] = json.loads(json.dumps(enqueued.of(pipeline.SUBSCRIBER_BATCH)))
    with django_capture_on_commit_callbacks(execute=True):
        subscriber_tasks.subscribers_process(*batch)
    assert notified(client) == MEMBERS
    api = api_for(key)
    with django_capture_on_commit_callbacks(execute=True):
        assert api.delete("/v2/subscribers/ann").status_code == 200
        body = json.dumps({"subscriberId": "ann", "email": "ann@example.com"})
        assert (
            api.post("/v1/subscribers", data=body, content_type="application/json").status_code
            == 201
        )

    with django_capture_on_commit_callbacks(execute=True):
        subscriber_tasks.subscribers_process(*batch)  # delivered again

    assert notified(client) == ["bob", "cid", "dan"]
    assert TriggerEvent.objects.get(pk=event_id).forgotten == ["ann"]
