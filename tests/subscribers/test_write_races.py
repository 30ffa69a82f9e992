"""The same API write sent twice at once, on real connections (hence `transaction=True`):
neither answers a 500, nothing is duplicated, and nothing one of them wrote is lost."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.db import connection
from django.db.models import F

from config.dates import iso_z
from subscribers import services
from subscribers.models import Subscriber, Topic, TopicSubscription
from tests.conftest import Enqueued, InThread, Meanwhile, held, lock_waiters, while_held
from tests.factories import SubscriberFactory, TriggerEventFactory, api_for, client_with_key
from workflows.models import Notification

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def keyed() -> Iterator[tuple[Any, str]]:
    yield client_with_key()


def _twice(key: str, method: str, first: tuple[str, Any], second: tuple[str, Any]) -> Any:
    """Two requests: the second while the first's transaction is still open."""
    return while_held(
        lambda: getattr(api_for(key), method)(first[0], first[1], format="json"),
        lambda: getattr(api_for(key), method)(second[0], second[1], format="json"),
    )


def test_two_creates_of_one_new_subscriber_at_once_make_one(keyed: tuple[Any, str]) -> None:
    """Novu's create is an upsert: the second waits for the first's row, and updates it."""
    client, key = keyed

    first, second = _twice(
        key,
        "post",
        (
            "/v2/subscribers",
            {"subscriberId": "ann", "email": "one@example.com", "firstName": "One"},
        ),
        ("/v2/subscribers", {"subscriberId": "ann", "email": "two@example.com"}),
    )

    assert first.status_code == second.status_code == 201, (first.content, second.content)
    ann = Subscriber.objects.get()
    assert (ann.email, ann.first_name) == ("two@example.com", "One")
    assert second.json()["data"]["_id"] == first.json()["data"]["_id"] == str(ann.pk)


def test_two_updates_of_the_same_fields_at_once_one_wins_whole(keyed: tuple[Any, str]) -> None:
    client, key = keyed
    SubscriberFactory(client=client, subscriber_id="ann")
    path = "/v2/subscribers/ann"

    first, second = _twice(
        key,
        "patch",
        (path, {"firstName": "One", "lastName": "One", "data": {"one": 1}}),
        (path, {"firstName": "Two", "lastName": "Two", "data": {"two": 2}}),
    )

    assert first.status_code == second.status_code == 200, (first.content, second.content)
    ann = Subscriber.objects.get()
    assert (ann.first_name, ann.last_name, ann.data) == ("Two", "Two", {"two": 2})


def test_two_creates_of_one_new_topic_at_once_make_one(keyed: tuple[Any, str]) -> None:
    client, key = keyed

    first, second = _twice(
        key, "post", ("/v2/topics", {"key": "news"}), ("/v2/topics", {"key": "news", "name": "N"})
    )

    assert (first.status_code, second.status_code) == (201, 200), (first.content, second.content)
    assert Topic.objects.get().name == "N"


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_two_subscribes_of_the_same_subscribers_in_other_orders_make_each_subscription_once(
    keyed: tuple[Any, str], version: str
) -> None:
    """Each locks the subscribers in id order: no deadlock, and no duplicate."""
    client, key = keyed
    ann = SubscriberFactory(client=client, subscriber_id="ann")
    bob = SubscriberFactory(client=client, subscriber_id="bob")
    topic = Topic.objects.create(client=client, key="news")
    path, field = {
        "v1": ("/v1/topics/news/subscribers", "subscribers"),
        "v2": ("/v2/topics/news/subscriptions", "subscriptions"),
    }[version]

    first, second = _twice(
        key, "post", (path, {field: ["ann", "bob"]}), (path, {field: ["bob", "ann"]})
    )

    assert first.status_code < 300 and second.status_code < 300, (first.content, second.content)
    assert sorted(TopicSubscription.objects.values_list("topic", "subscriber")) == [
        (topic.pk, ann.pk),
        (topic.pk, bob.pk),
    ]


def test_two_subscribes_to_one_new_topic_at_once_make_one_topic(keyed: tuple[Any, str]) -> None:
    client, key = keyed
    ann = SubscriberFactory(client=client, subscriber_id="ann")
    bob = SubscriberFactory(client=client, subscriber_id="bob")
    path = "/v2/topics/news/subscriptions"

    first, second = _twice(
        key, "post", (path, {"subscriptions": ["ann"]}), (path, {"subscriptions": ["bob"]})
    )

    assert first.status_code == second.status_code == 201, (first.content, second.content)
    topic = Topic.objects.get()
    assert sorted(TopicSubscription.objects.values_list("topic", "subscriber")) == [
        (topic.pk, ann.pk),
        (topic.pk, bob.pk),
    ]


def test_two_subscribes_giving_one_identifier_to_two_subscribers_at_once_refuse_the_second(
    keyed: tuple[Any, str],
) -> None:
    """No constraint keeps a topic's identifiers apart: the topic's lock does. The second
    reads the identifiers taken once the first has committed, and refuses its own."""
    client, key = keyed
    ann = SubscriberFactory(client=client, subscriber_id="ann")
    SubscriberFactory(client=client, subscriber_id="bob")
    Topic.objects.create(client=client, key="news")
    path = "/v2/topics/news/subscriptions"

    first, second = _twice(
        key,
        "post",
        (path, {"subscriptions": [{"subscriberId": "ann", "identifier": "lead"}]}),
        (path, {"subscriptions": [{"subscriberId": "bob", "identifier": "lead"}]}),
    )

    assert first.status_code == 201, first.content
    assert second.status_code == 400, second.content
    assert [e["code"] for e in second.json()["errors"]] == ["SUBSCRIPTION_CREATE_FAILED"]
    assert list(TopicSubscription.objects.values_list("subscriber", "identifier")) == [
        (ann.pk, "lead")
    ]


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/v1/topics/news/subscribers", "subscribers"),
        ("/v2/topics/news/subscriptions", "subscriptions"),
    ],
)
def test_a_v1_delete_while_a_subscribe_adds_the_first_member_is_refused(
    keyed: tuple[Any, str], path: str, field: str
) -> None:
    """Novu's v1 deletes only a topic without members: the delete waits for the
    subscribe's lock on the topic, then finds the member (a 409), which stays. Counted
    before the lock, it found none, and deleted the topic with the member."""
    client, key = keyed
    ann = SubscriberFactory(client=client, subscriber_id="ann")
    topic = Topic.objects.create(client=client, key="news")

    subscribed, deleted = while_held(
        lambda: api_for(key).post(path, {field: ["ann"]}, format="json"),
        lambda: api_for(key).delete("/v1/topics/news"),
    )

    assert subscribed.status_code < 300, subscribed.content
    assert deleted.status_code == 409, deleted.content
    assert deleted.json()["code"] == "topic_not_empty"
    assert list(TopicSubscription.objects.values_list("topic", "subscriber")) == [
        (topic.pk, ann.pk)
    ]


@pytest.mark.parametrize("path", ["/v2/subscribers/ann", "/v2/topics/news"])
def test_two_deletes_at_once_both_succeed(keyed: tuple[Any, str], path: str) -> None:
    """The second waits for the first's lock, then finds it gone: done, not a 500."""
    client, key = keyed
    SubscriberFactory(client=client, subscriber_id="ann")
    topic = Topic.objects.create(client=client, key="news")
    services.topic_subscribe(topic=topic, subscriber_ids=["ann"])

    first, second = while_held(lambda: api_for(key).delete(path), lambda: api_for(key).delete(path))

    assert first.status_code == second.status_code == 200, (first.content, second.content)
    assert not TopicSubscription.objects.exists()


@pytest.mark.parametrize(
    ("path", "body", "stored"),
    [
        (
            "/v2/subscribers?failIfExists=true",
            {"subscriberId": "ann", "email": "two@example.com"},
            lambda: Subscriber.objects.get().email,
        ),
        (
            "/v1/subscribers?failIfExists=true",
            {"subscriberId": "ann", "email": "two@example.com"},
            lambda: Subscriber.objects.get().email,
        ),
        (
            "/v2/topics?failIfExists=true",
            {"key": "ann", "name": "Two"},
            lambda: Topic.objects.get().name,
        ),
    ],
    ids=["v2 subscriber", "v1 subscriber", "v2 topic"],
)
def test_two_creates_failing_if_it_exists_at_once_make_one_and_refuse_the_other(
    keyed: tuple[Any, str], path: str, body: dict[str, Any], stored: Callable[[], str]
) -> None:
    """Both looked for it before either had created it: the second answered 201 (200)
    too, and overwrote what the first had created."""
    client, key = keyed
    first_body = {k: v for k, v in body.items() if k in ("subscriberId", "key")}

    first, second = _twice(key, "post", (path, first_body), (path, body))

    assert first.status_code == 201, first.content
    assert second.status_code == 409, second.content
    assert second.json()["_id"] == first.json()["data"]["_id"]
    assert stored() == ""


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("patch", "/v2/subscribers/ann"),
        ("put", "/v1/subscribers/ann"),
        ("post", "/v2/subscribers"),
    ],
)
def test_an_update_after_another_at_once_answers_the_subscriber_with_both(
    keyed: tuple[Any, str], method: str, path: str
) -> None:
    """The second read the subscriber before the first committed, then waited for it and
    stored its own field: its answer showed the first's field as it was before, undone."""
    client, key = keyed
    SubscriberFactory(client=client, subscriber_id="ann", first_name="Old", last_name="Old")
    body = {"lastName": "Two"} | ({"subscriberId": "ann"} if method == "post" else {})

    _, response = while_held(
        lambda: api_for(key).patch("/v2/subscribers/ann", {"firstName": "One"}, format="json"),
        lambda: getattr(api_for(key), method)(path, body, format="json"),
    )

    assert response.status_code < 300, response.content
    answer = response.json()["data"]
    assert (answer["firstName"], answer["lastName"]) == ("One", "Two")
    ann = Subscriber.objects.get()
    assert (ann.first_name, ann.last_name) == ("One", "Two")
    assert answer["updatedAt"] == iso_z(ann.updated_at)


# --- a create-or-get of a topic while it is deleted -------------------------------------------


def test_a_topic_created_while_it_is_deleted_is_created_anew(keyed: tuple[Any, str]) -> None:
    """It found the topic before the delete committed, and its rename then found it gone:
    a 404, from a create. (v1's create renames none: a key it finds taken is its 409.)"""
    client, key = keyed
    topic = Topic.objects.create(client=client, key="news", name="Old")

    _, response = while_held(
        lambda: services.topic_delete(topic=topic),
        lambda: api_for(key).post("/v2/topics", {"key": "news", "name": "New"}, format="json"),
    )

    assert response.status_code < 300, response.content
    assert Topic.objects.get().name == "New"
    assert response.json()["data"]["_id"] == str(Topic.objects.get().pk)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v2/topics", {"key": "news daily", "name": "New"}),
        ("/v2/topics/news daily/subscriptions", {"subscriptions": ["ann"], "name": "New"}),
    ],
    ids=["create", "subscribe"],
)
def test_a_create_while_its_topic_of_a_key_now_refused_is_deleted_is_refused(
    keyed: tuple[Any, str], path: str, body: dict[str, Any]
) -> None:
    """A key Novu refuses stays usable only while a topic made with it before norm
    checked keys exists. The create found it there, then the delete committed, and its
    read of the topic found none: it made the topic anew (201), where a create after the
    delete is refused (400)."""
    client, key = keyed
    SubscriberFactory(client=client, subscriber_id="ann")
    topic = Topic.objects.create(client=client, key="news daily", name="Old")
    reads: list[str] = []

    def deleted_after_the_first_read(
        execute: Any, sql: str, params: Any, many: bool, context: Any
    ) -> Any:
        result = execute(sql, params, many, context)
        if not reads and sql.startswith("SELECT") and '"subscribers_topic"' in sql:
            reads.append(sql)
            InThread(lambda: services.topic_delete(topic=topic)).join()
        return result

    with connection.execute_wrapper(deleted_after_the_first_read):
        response = api_for(key).post(path, body, format="json")

    assert reads
    assert response.status_code == 400, response.content
    assert response.json()["code"] == "invalid_topic_key"
    assert not Topic.objects.exists()


def test_a_subscribe_while_its_topic_is_deleted_creates_the_topic_anew(
    keyed: tuple[Any, str],
) -> None:
    """v2's subscribe creates the topic it names: it found it before the delete committed,
    then answered 404 as the subscription found it gone."""
    client, key = keyed
    ann = SubscriberFactory(client=client, subscriber_id="ann")
    topic = Topic.objects.create(client=client, key="news")

    _, response = while_held(
        lambda: services.topic_delete(topic=topic),
        lambda: api_for(key).post(
            "/v2/topics/news/subscriptions", {"subscriptions": ["ann"]}, format="json"
        ),
    )

    assert response.status_code == 201, response.content
    anew = Topic.objects.get()
    assert response.json()["data"][0]["topic"]["_id"] == str(anew.pk)
    assert list(TopicSubscription.objects.values_list("topic", "subscriber")) == [(anew.pk, ann.pk)]


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_a_create_while_its_subscriber_is_deleted_creates_it_anew(
    keyed: tuple[Any, str], version: str
) -> None:
    """Novu's create is an upsert: it found the subscriber before the delete committed,
    and its update then found it gone (Subscriber.DoesNotExist), a 500, where a create
    after the delete makes it anew, with none of the deleted one's fields."""
    client, key = keyed
    ann = SubscriberFactory(client=client, subscriber_id="ann", first_name="Old")
    body = {"subscriberId": "ann", "email": "new@example.com"}

    _, response = while_held(
        lambda: services.subscriber_delete(subscriber=ann),
        lambda: api_for(key).post(f"/{version}/subscribers", body, format="json"),
    )

    assert response.status_code == 201, response.content
    anew = Subscriber.objects.get()
    assert anew.pk != ann.pk
    assert (anew.email, anew.first_name) == ("new@example.com", "")
    assert response.json()["data"]["_id"] == str(anew.pk)


@pytest.mark.parametrize("path", ["/v1/subscribers", "/v2/subscribers", "/v1/subscribers/bulk"])
def test_a_create_while_its_unreachable_subscriber_is_deleted_is_refused(
    keyed: tuple[Any, str], path: str
) -> None:
    """A subscriberId no URL can reach stays upsertable only while a subscriber made
    with it before norm refused such ids exists. The create found it before the delete
    committed, and its update found it gone: it then made the subscriber anew (201),
    which a create after the delete is refused (400)."""
    client, key = keyed
    old = SubscriberFactory(client=client, subscriber_id="team/ann")
    body: dict[str, Any] = {"subscriberId": "team/ann", "email": "new@example.com"}
    if path.endswith("bulk"):
        body = {"subscribers": [body]}

    _, response = while_held(
        lambda: services.subscriber_delete(subscriber=old),
        lambda: api_for(key).post(path, body, format="json"),
    )

    if path.endswith("bulk"):
        assert response.status_code == 201, response.content
        data = response.json()["data"]
        assert (data["created"], data["updated"]) == ([], [])
        assert [f["subscriberId"] for f in data["failed"]] == ["team/ann"]
    else:
        assert response.status_code == 400, response.content
        assert response.json()["code"] == "invalid_subscriber_id"
    assert not Subscriber.objects.exists()


# --- a create whose INSERT meets another's row, which a third request deletes --------------


@contextlib.contextmanager
def _created_and_deleted_around_the_insert(
    table: type[Any], natural: dict[str, Any]
) -> Iterator[None]:
    """The first INSERT into `table` meets the row (of `natural` key) another connection
    has just created, and which another deletes right after it."""
    inserts: list[str] = []

    def around_the_insert(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        if inserts or not sql.startswith(f'INSERT INTO "{table._meta.db_table}"'):
            return execute(sql, params, many, context)
        inserts.append(sql)  # the first only
        Meanwhile(lambda: table.objects.create(**natural)).join()
        try:
            return execute(sql, params, many, context)
        finally:
            Meanwhile(lambda: table.objects.filter(**natural).delete()).join()

    with connection.execute_wrapper(around_the_insert):
        yield
    assert inserts


@pytest.mark.parametrize(
    ("path", "body", "table", "stored"),
    [
        (
            "/v2/subscribers",
            {"subscriberId": "ann", "email": "ann@example.com"},
            Subscriber,
            ("email", "ann@example.com"),
        ),
        ("/v2/topics", {"key": "ann", "name": "Ann"}, Topic, ("name", "Ann")),
    ],
    ids=["subscriber", "topic"],
)
def test_a_create_meeting_one_created_and_deleted_meanwhile_creates_it(
    keyed: tuple[Any, str],
    path: str,
    body: dict[str, Any],
    table: type[Any],
    stored: tuple[str, str],
) -> None:
    """Its INSERT met the row another request had created just before, which a third
    deleted before the create read it: Subscriber.DoesNotExist (a topic's
    IntegrityError), a 500."""
    client, key = keyed
    natural = {
        "client": client,
        **({"subscriber_id": "ann"} if table is Subscriber else {"key": "ann"}),
    }
    with _created_and_deleted_around_the_insert(table, natural):
        response = api_for(key).post(path, body, format="json")

    assert response.status_code == 201, response.content
    created = table.objects.get()
    assert response.json()["data"]["_id"] == str(created.pk)
    assert getattr(created, stored[0]) == stored[1]


def test_a_triggers_command_meeting_its_subscriber_created_and_deleted_meanwhile_creates_it(
    enqueued: Enqueued,
) -> None:
    """Two triggers name a new subscriber, which a third request deletes as soon as the
    first's command created it: the second's INSERT met it, and its read then found it
    gone, Subscriber.DoesNotExist: the command failed as a bug, its recipient left to the
    reconciler's rerun a grace period later."""
    event = TriggerEventFactory()
    natural = {"client": event.client, "subscriber_id": "ann"}

    with _created_and_deleted_around_the_insert(Subscriber, natural):
        services.subscriber_process(
            trigger_event_id=event.pk,
            recipient={"subscriberId": "ann", "email": "ann@example.com"},
        )

    subscriber = Subscriber.objects.get()
    assert (subscriber.subscriber_id, subscriber.email) == ("ann", "ann@example.com")
    assert Notification.objects.get().subscriber == subscriber
    event.refresh_from_db()
    assert event.error == ""


def test_an_unsubscribe_while_its_topic_is_deleted_waits_for_the_delete(
    keyed: tuple[Any, str],
) -> None:
    """The delete's DELETE of the topic's subscriptions locked them as it read them (the
    table's order, for a large topic), the unsubscribe's in its index's order: each held
    one the other wanted next, and PostgreSQL failed the unsubscribe (a 503). It now
    waits for the topic, and finds it deleted: the 404 a moment later would answer."""
    client, key = keyed
    ann, bob, cid = (
        SubscriberFactory(client=client, subscriber_id=n) for n in ("ann", "bob", "cid")
    )
    topic = Topic.objects.create(client=client, key="news")
    services.topic_subscribe(topic=topic, subscriber_ids=["ann", "bob", "cid"])
    rows = {s.pk: TopicSubscription.objects.filter(subscriber=s) for s in (ann, bob, cid)}
    # Written last, ann's is the table's last row: the delete reads bob's, cid's (which
    # another write holds), then ann's; the unsubscribe, by the index, ann's then bob's.
    for subscriber in (bob, cid, ann):
        rows[subscriber.pk].update(created_at=F("created_at"))
    release = threading.Event()
    holder = held(rows[cid.pk], release)

    def delete() -> None:
        with connection.cursor() as cursor:  # the plans of a large topic, and of two members
            cursor.execute("SET enable_indexscan = off")
            cursor.execute("SET enable_bitmapscan = off")
        services.topic_delete(topic=topic)

    def unsubscribe() -> Any:
        with connection.cursor() as cursor:
            cursor.execute("SET enable_seqscan = off")
            cursor.execute("SET enable_bitmapscan = off")
        body = {"subscriptions": ["ann", "bob"]}
        return api_for(key).delete("/v2/topics/news/subscriptions", body, format="json")

    deleting = InThread(delete)  # holds bob's, waits for cid's
    lock_waiters(1, deleting)
    unsubscribing = InThread(unsubscribe)
    lock_waiters(2, deleting, unsubscribing)  # the unsubscribe holds ann's, waits for bob's
    release.set()  # the delete goes on to ann's
    holder.join()
    response = unsubscribing.join()
    deleting.join()

    assert response.status_code == 404, response.content
    assert not Topic.objects.exists() and not TopicSubscription.objects.exists()


def test_a_subscriptions_rename_while_its_topic_is_deleted_is_a_404(
    keyed: tuple[Any, str],
) -> None:
    """The rename waits for the topic, which the delete locks first, and finds it gone:
    the 404 a moment later would answer. Read before the delete committed, the
    subscription was renamed by an UPDATE of no row, and answered 200, renamed."""
    client, key = keyed
    SubscriberFactory(client=client, subscriber_id="ann")
    topic = Topic.objects.create(client=client, key="news")
    services.topic_subscribe(topic=topic, subscriber_ids=["ann"])

    _, response = while_held(
        lambda: services.topic_delete(topic=topic),
        lambda: api_for(key).patch(
            "/v2/topics/news/subscriptions/tk_news:si_ann", {"name": "Weekly"}, format="json"
        ),
    )

    assert response.status_code == 404, response.content
    assert not Topic.objects.exists() and not TopicSubscription.objects.exists()
