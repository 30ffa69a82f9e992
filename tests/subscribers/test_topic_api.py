"""The topic API: v2 for novu-py (`subscriberIds`), v1 for novu 1.14 (`subscribers`)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from django.db.migrations.loader import MigrationLoader
from novu_py import models
from novu_py.models import TopicResponseDto

from config.dates import iso_z
from notify.models import Client
from subscribers import selectors, services
from subscribers.models import Subscriber, Topic, TopicSubscription
from tests.factories import SubscriberFactory, client_with_key, novu_py_for
from tests.novu_nulls import nulls_novu_refuses
from tests.subscribers.test_subscriber_api import assert_error, call, ok

pytestmark = pytest.mark.django_db


@pytest.fixture
def keyed() -> tuple[Client, str]:
    client, key = client_with_key()
    for name in ("ann", "bob", "cid"):
        SubscriberFactory(client=client, subscriber_id=name)
    return client, key


@pytest.fixture
def key(keyed: tuple[Client, str]) -> str:
    return keyed[1]


@pytest.fixture
def other() -> tuple[Client, str]:
    return client_with_key()


def members(client: Client, key: str) -> list[str]:
    topic = Topic.objects.get(client=client, key=key)
    return sorted(topic.subscribers.values_list("subscriber_id", flat=True))


# --- create, get, list, delete ------------------------------------------------------------


def test_v2_create_is_201_when_new_and_200_when_it_exists(keyed: tuple[Client, str]) -> None:
    client, key = keyed
    created = ok(call(key, "post", "/v2/topics", {"key": "news", "name": "News"}), 201)["data"]
    assert (created["key"], created["name"]) == ("news", "News") and created["_id"]

    again = ok(call(key, "post", "/v2/topics", {"key": "news", "name": "Daily news"}), 200)["data"]
    assert again["_id"] == created["_id"]
    assert Topic.objects.get(client=client, key="news").name == "Daily news"

    # A name left out keeps the topic's; an empty one is a name too.
    ok(call(key, "post", "/v2/topics", {"key": "news"}), 200)
    assert Topic.objects.get(client=client, key="news").name == "Daily news"
    ok(call(key, "post", "/v2/topics", {"key": "news", "name": ""}), 200)
    assert Topic.objects.get(client=client, key="news").name == ""


def test_a_topic_without_a_name_is_answered_without_one_not_with_null(key: str) -> None:
    # Novu's schema makes `name` optional, not nullable: @novu/api refuses a null there.
    answers = [
        (models.TopicResponseDto, call(key, "post", "/v2/topics", {"key": "news"})),
        (models.TopicResponseDto, call(key, "get", "/v2/topics/news")),
        (models.ListTopicsResponseDto, call(key, "get", "/v2/topics")),
        (
            models.CreateSubscriptionsResponseDto,
            call(key, "post", "/v2/topics/news/subscriptions", {"subscriberIds": ["ann", "bob"]}),
        ),
        (
            models.ListTopicSubscriptionsResponseDto,
            call(key, "get", "/v2/topics/news/subscriptions"),
        ),
        (
            models.DeleteTopicSubscriptionsResponseDto,
            call(key, "delete", "/v2/topics/news/subscriptions", {"subscriberIds": ["bob"]}),
        ),
    ]

    for model, response in answers:
        body = ok(response, response.status_code)
        body = body["data"] if set(body) == {"data"} else body  # novu-py's unwrapping
        assert nulls_novu_refuses(model, body) == [], model.__name__
        model.model_validate(body)
    assert "name" not in ok(call(key, "get", "/v1/topics/news"))["data"]


def test_v1_create_is_201_and_a_409_for_a_key_taken(keyed: tuple[Client, str]) -> None:
    """Novu's v1 create is no upsert: a key taken is a 409 (novu 1.14's TopicApi.create
    raises), the topic's name kept; norm renamed the topic and answered 201."""
    client, key = keyed
    assert ok(call(key, "post", "/v1/topics", {"key": "news", "name": "News"}), 201)["data"]["key"]
    assert Topic.objects.filter(client=client, key="news").exists()

    error = assert_error(
        call(key, "post", "/v1/topics", {"key": "news", "name": "Other"}), 409, "/v1/topics"
    )
    assert error["code"] == "topic_exists"
    assert Topic.objects.get(client=client, key="news").name == "News"


def test_fail_if_exists_is_409(keyed: tuple[Client, str]) -> None:
    client, key = keyed
    Topic.objects.create(client=client, key="news", name="News")
    path = "/v2/topics?failIfExists=true"
    body = assert_error(call(key, "post", path, {"key": "news", "name": "Other"}), 409, path)
    assert Topic.objects.get(client=client, key="news").name == "News"
    # novu-py reads the 409's body as the topic that exists (TopicResponseDto).
    assert TopicResponseDto.model_validate(body).name == "News"


@pytest.mark.parametrize(
    ("body", "status"), [({}, 422), ({"key": ""}, 422), ({"name": "News"}, 422), ("news", 400)]
)
def test_invalid_create_is_422_or_400_when_not_an_object(key: str, body: Any, status: int) -> None:
    assert_error(call(key, "post", "/v2/topics", body), status, "/v2/topics")
    assert not Topic.objects.exists()


@pytest.mark.parametrize("version", ["v1", "v2"])
@pytest.mark.parametrize(
    ("body", "field"), [({"key": 7}, "key"), ({"key": "news", "name": 7}, "name")]
)
def test_a_number_for_a_topics_key_or_name_is_refused_not_stored_as_text(
    keyed: tuple[Client, str], version: str, body: dict[str, Any], field: str
) -> None:
    """As Novu's IsString refuses it (and a subscriber's fields now are): DRF's CharField
    stored the number 7 as the topic key "7"."""
    path = f"/{version}/topics"
    error = assert_error(call(keyed[1], "post", path, body), 422, path)
    assert error["errors"][field]["messages"] == [f"{field} must be a string"]
    assert not Topic.objects.exists()


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_a_rename_longer_than_a_topics_name_is_refused_naming_it(
    keyed: tuple[Client, str], version: str
) -> None:
    """As a type it is not: PostgreSQL refused it with a 400 that named no field
    (invalid_value), and SQLite (make run) stored it whole."""
    ok(call(keyed[1], "post", f"/{version}/topics", {"key": "news", "name": "News"}), 201)
    path = f"/{version}/topics/news"

    error = assert_error(call(keyed[1], "patch", path, {"name": "n" * 256}), 400, path)
    assert error["message"] == "'name' must be a string of at most 255"
    assert Topic.objects.get().name == "News"
    assert ok(call(keyed[1], "patch", path, {"name": "n" * 255}))["data"]["name"] == "n" * 255


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_a_topics_name_is_stored_trimmed_by_a_rename_and_a_subscribe_as_by_a_create(
    keyed: tuple[Client, str], version: str
) -> None:
    """POST /v2/topics trims the name (and then checks its length); a rename and a
    subscribe stored " Sales " as sent, and refused 255 characters and a space."""
    client, key = keyed
    ok(call(key, "post", f"/{version}/topics", {"key": "news", "name": " News "}), 201)
    assert Topic.objects.get(client=client, key="news").name == "News"
    path = f"/{version}/topics/news"

    assert ok(call(key, "patch", path, {"name": " Daily news\n"}))["data"]["name"] == "Daily news"
    assert Topic.objects.get(client=client, key="news").name == "Daily news"
    padded = f" {'n' * 255} "
    assert ok(call(key, "patch", path, {"name": padded}))["data"]["name"] == "n" * 255

    body = {"subscriberIds": ["ann"], "name": " Sales "}
    answer = ok(call(key, "post", "/v2/topics/sales/subscriptions", body), 201)
    assert answer["data"][0]["topic"]["name"] == "Sales"
    assert Topic.objects.get(client=client, key="sales").name == "Sales"
    body = {"subscriberIds": ["bob"], "name": f" {'s' * 255} "}
    ok(call(key, "post", "/v2/topics/sales/subscriptions", body), 201)
    assert Topic.objects.get(client=client, key="sales").name == "s" * 255


def test_a_renamed_topic_says_when_and_lists_last_by_updated_at(key: str) -> None:
    """As Novu's topic (its timestamps): a rename, by update or upsert, moves updatedAt,
    and orderBy=updatedAt lists by it. updatedAt stayed the topic's createdAt, and that
    order was the creation's."""
    novu = novu_py_for(key)
    news = novu.topics.create(create_update_topic_request_dto={"key": "news"}).result
    novu.topics.create(create_update_topic_request_dto={"key": "sport"})

    renamed = novu.topics.update(topic_key="news", update_topic_request_dto={"name": "News"})
    assert renamed.result.updated_at > news.updated_at
    upserted = novu.topics.create(create_update_topic_request_dto={"key": "news", "name": "N"})
    assert upserted.result.updated_at > renamed.result.updated_at
    assert novu.topics.get(topic_key="news").result.updated_at == upserted.result.updated_at

    def listed(**order: str) -> list[str]:
        page = novu.topics.list(request={"order_by": "updatedAt", "limit": 1, **order}).result
        keys = [t.key for t in page.data]
        while page.next:
            page = novu.topics.list(
                request={"order_by": "updatedAt", "limit": 1, "after": page.next, **order}
            ).result
            keys += [t.key for t in page.data]
        return keys

    assert listed() == ["news", "sport"]
    assert listed(order_direction="ASC") == ["sport", "news"]


def test_an_upsert_or_rename_to_the_name_a_topic_has_leaves_its_updated_at(key: str) -> None:
    """updatedAt says when the topic last changed: a create repeated as it was (a client
    making its topics at each start) or a rename to the same name changes nothing."""
    made = ok(call(key, "post", "/v2/topics", {"key": "news", "name": "News"}), 201)["data"]

    again = ok(call(key, "post", "/v2/topics", {"key": "news", "name": "News"}), 200)["data"]
    renamed = ok(call(key, "patch", "/v2/topics/news", {"name": "News"}))["data"]

    assert again["updatedAt"] == renamed["updatedAt"] == made["updatedAt"]
    assert ok(call(key, "get", "/v2/topics/news"))["data"]["updatedAt"] == made["updatedAt"]


@pytest.mark.parametrize("version", ["v1", "v2"])
@pytest.mark.parametrize(
    "topic_key", ["team/news", "news?daily", "news#1", "news daily", "news%2Fdaily@example.com"]
)
def test_create_refuses_a_key_novu_refuses_and_no_route_could_reach(
    keyed: tuple[Client, str], version: str, topic_key: str
) -> None:
    client, key = keyed
    path = f"/{version}/topics"
    body = assert_error(call(key, "post", path, {"key": topic_key, "name": "News"}), 400, path)
    assert "topic key" in body["message"]
    assert not Topic.objects.exists()


@pytest.mark.parametrize("topic_key", ["task:12345", "team_news-2", "ann+news@example.com"])
def test_a_key_novu_takes_is_created_and_reached_by_its_url(
    keyed: tuple[Client, str], topic_key: str
) -> None:
    client, key = keyed
    ok(call(key, "post", "/v2/topics", {"key": topic_key, "name": "News"}), 201)
    assert ok(call(key, "get", f"/v2/topics/{topic_key}"))["data"]["key"] == topic_key


def test_a_topic_made_with_a_key_now_refused_stays_reachable(keyed: tuple[Client, str]) -> None:
    client, key = keyed
    Topic.objects.create(client=client, key="news.daily")
    ok(call(key, "post", "/v2/topics", {"key": "news.daily", "name": "Daily"}), 200)
    ok(call(key, "post", "/v2/topics/news.daily/subscriptions", {"subscriberIds": ["ann"]}), 201)
    assert members(client, "news.daily") == ["ann"]


def test_v1_get_returns_the_topic_and_its_members_oldest_subscriber_first(
    keyed: tuple[Client, str],
) -> None:
    client, key = keyed
    call(key, "post", "/v2/topics/news/subscriptions", {"subscriberIds": ["cid", "ann", "bob"]})
    # Rewritten rows move to the end of the table, where an unordered read finds them last.
    for name in ("ann", "bob"):
        call(key, "patch", f"/v2/subscribers/{name}", {"firstName": name.title()})
    data = ok(call(key, "get", "/v1/topics/news"))["data"]
    assert (data["key"], data["subscribers"]) == ("news", ["ann", "bob", "cid"])


def test_v1_get_lists_at_most_the_limit_of_members_oldest_subscriber_first(
    keyed: tuple[Client, str],
) -> None:
    """topic_member_ids, which v1's topic reads with a limit of 1,000: the first members
    by when the subscriber was made, not by when it was subscribed or its id."""
    client, key = keyed
    for name in ("cid", "bob", "ann"):  # subscribed last to first
        call(key, "post", "/v2/topics/news/subscriptions", {"subscriberIds": [name]})
    topic = Topic.objects.get(client=client, key="news")

    assert selectors.topic_member_ids(topic=topic, limit=2) == ["ann", "bob"]
    assert selectors.topic_member_ids(topic=topic, limit=3) == ["ann", "bob", "cid"]


def test_v1_get_lists_the_first_1000_members(keyed: tuple[Client, str]) -> None:
    """Novu's v1 topic holds its members, and novu 1.14 reads them there: capped lower,
    a topic of a few hundred members showed only some of them."""
    client, key = keyed
    topic = Topic.objects.create(client=client, key="news")
    made = Subscriber.objects.bulk_create(
        Subscriber(client=client, subscriber_id=f"s{n:04}") for n in range(1001)
    )
    TopicSubscription.objects.bulk_create(
        TopicSubscription(topic=topic, subscriber=s) for s in made
    )

    listed = ok(call(key, "get", "/v1/topics/news"))["data"]["subscribers"]

    assert listed == [f"s{n:04}" for n in range(1000)]


def test_v2_get_returns_the_topic_as_novu_does_without_members(keyed: tuple[Client, str]) -> None:
    client, key = keyed
    call(key, "post", "/v2/topics/news/subscriptions", {"subscriberIds": ["ann", "bob"]})
    data = ok(call(key, "get", "/v2/topics/news"))["data"]
    assert TopicResponseDto.model_validate(data).key == "news"
    # Novu v2's topic has no member list: they are paged by /v2/topics/news/subscriptions.
    assert "subscribers" not in data


def test_unknown_topic_is_404(key: str) -> None:
    for method, path in [
        ("get", "/v2/topics/nope"),
        ("delete", "/v2/topics/nope"),
        ("get", "/v1/topics/nope/subscribers/ann"),
    ]:
        assert_error(call(key, method, path), 404, path)
    path = "/v1/topics/nope/subscribers"
    assert_error(call(key, "post", path, {"subscribers": ["ann"]}), 404, path)


def test_v2_list_cursor_and_v1_pages_reach_every_topic_once(
    keyed: tuple[Client, str], other: tuple[Client, str]
) -> None:
    client, key = keyed
    keys = [f"topic-{i:02}" for i in range(12)]
    for k in keys:
        Topic.objects.create(client=client, key=k)
    Topic.objects.create(client=other[0], key="foreign")

    seen, cursor = [], None
    for _ in range(5):
        path = "/v2/topics?limit=5.0&orderDirection=ASC" + (f"&after={cursor}" if cursor else "")
        body = ok(call(key, "get", path))
        assert body["totalCount"] == 12
        seen += [t["key"] for t in body["data"]]
        if (cursor := body["next"]) is None:
            break
    assert seen == keys

    pages = [ok(call(key, "get", f"/v1/topics?page={p}&pageSize=5"))["data"] for p in range(3)]
    assert [t["key"] for page in pages for t in page] == keys
    assert ok(call(key, "get", "/v1/topics?key=topic-03"))["data"][0]["key"] == "topic-03"
    Topic.objects.filter(key="topic-07").update(name="Weekly News")
    assert [t["key"] for t in ok(call(key, "get", "/v2/topics?name=news"))["data"]] == ["topic-07"]
    # In any case beyond ASCII too, on SQLite as on PostgreSQL: "ÉVÉNEMENTS".
    Topic.objects.filter(key="topic-09").update(name="Événements")
    found = ok(call(key, "get", "/v2/topics?name=%C3%89V%C3%89NEMENTS"))["data"]
    assert [t["key"] for t in found] == ["topic-09"]


def _walk(key: str, base: str, direction: str, cursor: str | None = None) -> list[dict[str, Any]]:
    """Follow `next` (or `previous`) until it runs out; every page's body."""
    param = "after" if direction == "next" else "before"
    pages: list[dict[str, Any]] = []
    while True:
        pages.append(ok(call(key, "get", base if cursor is None else f"{base}&{param}={cursor}")))
        if (cursor := pages[-1][direction]) is None:
            return pages
        assert len(pages) < 10, "the cursor never ends"


@pytest.mark.parametrize("order", ["", "&orderDirection=DESC", "&orderDirection=ASC"])
def test_v2_topics_are_newest_first_unless_asked_for_asc_both_cursor_ways(
    keyed: tuple[Client, str], order: str
) -> None:
    client, key = keyed
    keys = [f"topic-{i:02}" for i in range(12)]
    for k in keys:
        Topic.objects.create(client=client, key=k)
    expected = keys if order.endswith("ASC") else keys[::-1]
    base = f"/v2/topics?limit=5.0{order}"

    forward = _walk(key, base, "next")
    assert [[t["key"] for t in p["data"]] for p in forward] == [
        expected[:5],
        expected[5:10],
        expected[10:],
    ]
    backward = _walk(key, base, "previous", cursor=forward[-1]["previous"])
    assert [[t["key"] for t in p["data"]] for p in backward] == [expected[5:10], expected[:5]]


def test_delete_removes_the_topic_but_not_its_members(keyed: tuple[Client, str]) -> None:
    client, key = keyed
    call(key, "post", "/v2/topics/news/subscriptions", {"subscriberIds": ["ann"]})
    assert ok(call(key, "delete", "/v2/topics/news")) == {"data": {"acknowledged": True}}

    assert not Topic.objects.filter(client=client).exists()
    assert not TopicSubscription.objects.exists()
    assert Subscriber.objects.filter(client=client, subscriber_id="ann").exists()
    assert_error(call(key, "get", "/v2/topics/news"), 404, "/v2/topics/news")


def test_v1_delete_refuses_a_topic_with_members_as_novu_does(keyed: tuple[Client, str]) -> None:
    """Novu's v1 delete (novu 1.14's TopicApi.delete) is a 409 for a topic that still has
    members, which stay; norm deleted it and its subscriptions. v2's removes them too."""
    client, key = keyed
    call(key, "post", "/v2/topics/news/subscriptions", {"subscriberIds": ["ann"]})
    error = assert_error(call(key, "delete", "/v1/topics/news"), 409, "/v1/topics/news")
    assert error["code"] == "topic_not_empty" and "subscribers" in error["message"]
    assert members(client, "news") == ["ann"]

    ok(call(key, "post", "/v1/topics/news/subscribers/removal", {"subscribers": ["ann"]}))
    assert ok(call(key, "delete", "/v1/topics/news")) == {"data": {"acknowledged": True}}
    assert not Topic.objects.filter(client=client).exists()


# --- members ----------------------------------------------------------------------------------


def test_v2_add_members_is_201_with_counts_and_an_error_per_unknown_id(
    keyed: tuple[Client, str],
) -> None:
    client, key = keyed
    Topic.objects.create(client=client, key="news")
    body = {"subscriberIds": ["ann", "nobody", "bob"]}
    answer = ok(call(key, "post", "/v2/topics/news/subscriptions", body), 201)

    assert answer["meta"] == {"totalCount": 3, "successful": 2, "failed": 1}
    assert [e["subscriberId"] for e in answer["errors"]] == ["nobody"]
    assert answer["errors"][0]["code"] and answer["errors"][0]["message"]
    item = answer["data"][0]
    assert {"_id", "topic", "subscriber", "createdAt", "updatedAt"} <= set(item)
    assert [d["subscriber"]["subscriberId"] for d in answer["data"]] == ["ann", "bob"]
    assert item["topic"]["key"] == "news"
    assert members(client, "news") == ["ann", "bob"]

    again = ok(call(key, "post", "/v2/topics/news/subscriptions", {"subscriberIds": ["ann"]}), 201)
    assert again["meta"] == {"totalCount": 1, "successful": 1, "failed": 0}
    # Novu leaves `errors` out when there is none (novu-py reads None, @novu/api
    # undefined): an empty list is truthy in JavaScript, a failure to `if (errors)`.
    assert "errors" not in again
    novu = novu_py_for(key)
    body = {"subscriptions": ["bob"]}
    added = novu.topics.subscriptions.create(
        topic_key="news", create_topic_subscriptions_request_dto=body
    ).result
    assert added.errors is None
    assert TopicSubscription.objects.count() == 2

    # Each member once, in the order asked (not the order the subscribers were made).
    body = {"subscriberIds": ["cid", "bob", "cid", "ann"]}
    answer = ok(call(key, "post", "/v2/topics/news/subscriptions", body), 201)
    assert [d["subscriber"]["subscriberId"] for d in answer["data"]] == ["cid", "bob", "ann"]


def test_v2_a_subscriber_named_twice_by_a_subscribe_is_counted_once(
    keyed: tuple[Client, str],
) -> None:
    """A subscribe naming one subscriber twice answered totalCount 4 for
    ["cid", "bob", "cid", "ann"], 3 subscribed and nothing failed: counts that did not
    add up. Each subscriber is counted once, as an unsubscribe counts a subscription
    named twice, and a name that failed (twice) once beside them."""
    client, key = keyed
    path = "/v2/topics/news/subscriptions"
    body = {"subscriberIds": ["cid", "bob", "cid", "ann"]}
    answer = ok(call(key, "post", path, body), 201)
    assert answer["meta"] == {"totalCount": 3, "successful": 3, "failed": 0}

    body = {"subscriptions": ["ann", "nobody", {"subscriberId": "ann"}, "nobody"]}
    answer = ok(call(key, "post", path, body), 201)
    assert answer["meta"] == {"totalCount": 2, "successful": 1, "failed": 1}
    assert [e["subscriberId"] for e in answer["errors"]] == ["nobody"]
    assert members(client, "news") == ["ann", "bob", "cid"]


def test_members_named_with_spaces_are_the_subscribers_stored_trimmed(
    keyed: tuple[Client, str],
) -> None:
    """A subscriber created as " ann " is "ann" (and a trigger to " ann " reaches it),
    but a topic's add and remove took " ann " as given: "Subscriber ' ann ' was not
    found", for each of v2's and v1's add and remove."""
    client, key = keyed
    spaced = {"subscriberIds": [" ann ", "bob\n"]}
    answer = ok(call(key, "post", "/v2/topics/news/subscriptions", spaced), 201)
    assert answer["meta"] == {"totalCount": 2, "successful": 2, "failed": 0}
    assert members(client, "news") == ["ann", "bob"]
    ok(call(key, "delete", "/v2/topics/news/subscriptions", {"subscriberIds": [" ann "]}))
    assert members(client, "news") == ["bob"]

    ok(call(key, "post", "/v1/topics", {"key": "deals", "name": "Deals"}), 201)
    added = ok(call(key, "post", "/v1/topics/deals/subscribers", {"subscribers": [" cid "]}))
    assert added["data"]["succeeded"] == ["cid"]
    call(key, "post", "/v1/topics/deals/subscribers/removal", {"subscribers": [" cid "]})
    assert members(client, "deals") == []


def test_v2_a_subscribe_to_a_key_longer_than_a_topic_holds_is_refused_naming_it(
    key: str,
) -> None:
    """The subscribe creates the topic its URL names, with no serializer to check the
    key's length (the create's refuses it naming `key`): PostgreSQL refused it with a
    400 that named no field (invalid_value), and SQLite (make run) stored it whole."""
    path = f"/v2/topics/{'k' * 256}/subscriptions"
    error = assert_error(call(key, "post", path, {"subscriberIds": ["ann"]}), 400, path)
    assert error["code"] == "invalid_topic_key"
    assert error["message"] == "'key': a topic key has at most 255 characters"
    assert not Topic.objects.exists()
    ok(call(key, "post", f"/v2/topics/{'k' * 255}/subscriptions", {"subscriberIds": ["ann"]}), 201)


def test_v2_add_members_creates_the_topic_it_names(keyed: tuple[Client, str]) -> None:
    client, key = keyed
    ok(call(key, "post", "/v2/topics/news/subscriptions", {"subscriberIds": ["cid"]}), 201)
    assert members(client, "news") == ["cid"]


@pytest.mark.parametrize(
    "body",
    [
        {"subscriberIds": "ann"},
        {"subscriberIds": [1]},
        [],
        {"subscriberIds": ["ann", ""]},
        {"subscriberIds": ["ann"] * 1001},
    ],
)
def test_v2_add_members_needs_a_list_of_ids(key: str, body: Any) -> None:
    path = "/v2/topics/news/subscriptions"
    assert_error(call(key, "post", path, body), 400, path)
    assert not TopicSubscription.objects.exists()


def test_v2_remove_members(keyed: tuple[Client, str]) -> None:
    client, key = keyed
    call(key, "post", "/v2/topics/deals/subscriptions", {"subscriberIds": ["ann"]})
    call(key, "post", "/v2/topics/news/subscriptions", {"subscriberIds": ["ann", "bob", "cid"]})
    body = {"subscriberIds": ["ann", "cid", "nobody"]}
    answer = ok(call(key, "delete", "/v2/topics/news/subscriptions", body))

    assert answer["meta"] == {"totalCount": 3, "successful": 2, "failed": 1}
    assert [d["subscriber"]["subscriberId"] for d in answer["data"]] == ["ann", "cid"]
    assert members(client, "news") == ["bob"]
    assert members(client, "deals") == ["ann"]  # only the topic named


def test_v2_a_member_unsubscribed_before_its_subscribe_answers_is_answered_still(
    keyed: tuple[Client, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A subscribe reads its members' subscriptions again once it committed, for its
    answer: one removed in between (an unsubscribe that came then) is answered as
    subscribed, which it was, not a 500."""
    client, key = keyed
    subscribe = services.topic_upsert_subscribe

    def then_bob_unsubscribed(**kwargs: Any) -> Any:
        made = subscribe(**kwargs)
        services.topic_unsubscribe(topic=made[0], subscriber_ids=["bob"])
        return made

    monkeypatch.setattr(services, "topic_upsert_subscribe", then_bob_unsubscribed)
    body = {"subscriberIds": ["ann", "bob"]}
    answer = ok(call(key, "post", "/v2/topics/news/subscriptions", body), 201)

    assert [s["subscriber"]["subscriberId"] for s in answer["data"]] == ["ann", "bob"]
    assert answer["meta"] == {"totalCount": 2, "successful": 2, "failed": 0}
    assert members(client, "news") == ["ann"]


def test_v2_a_member_named_twice_is_removed_and_no_failure(keyed: tuple[Client, str]) -> None:
    """As a subscribe counts it (and Novu, which fails only an id it could not remove):
    the second mention of a member removed counted as a failure. The member is counted
    once in totalCount too, so that the counts add up."""
    client, key = keyed
    call(key, "post", "/v2/topics/news/subscriptions", {"subscriberIds": ["ann", "bob"]})
    body = {"subscriberIds": ["ann", "ann", "nobody"]}
    answer = ok(call(key, "delete", "/v2/topics/news/subscriptions", body))

    assert answer["meta"] == {"totalCount": 2, "successful": 1, "failed": 1}
    assert members(client, "news") == ["bob"]


def test_v2_a_subscription_named_by_subscriber_id_and_identifier_is_counted_once(
    keyed: tuple[Client, str],
) -> None:
    """An unsubscribe naming one subscription by its subscriberId and by its identifier
    (or its _id) answered totalCount 2, successful 1 and no error: counts that did not
    add up. Novu finds the subscription once, and removes it once: it is counted once,
    and a name that found none is counted (and failed) beside it."""
    client, key = keyed
    path = "/v2/topics/news/subscriptions"
    ok(call(key, "post", path, {"subscriberIds": ["ann", "bob", "cid"]}), 201)
    bob = ok(call(key, "get", f"{path}?subscriberId=bob"))["data"][0]

    body = {"subscriptions": ["ann", {"identifier": "tk_news:si_ann"}]}
    answer = ok(call(key, "delete", path, body))
    assert answer["meta"] == {"totalCount": 1, "successful": 1, "failed": 0}
    assert [d["subscriber"]["subscriberId"] for d in answer["data"]] == ["ann"]

    body = {"subscriptions": [{"identifier": bob["_id"]}, "bob", {"identifier": "nothing"}]}
    answer = ok(call(key, "delete", path, body))
    assert answer["meta"] == {"totalCount": 2, "successful": 1, "failed": 1}
    assert [e["code"] for e in answer["errors"]] == ["SUBSCRIPTION_NOT_FOUND"]
    assert members(client, "news") == ["cid"]


def test_v2_remove_members_says_why_each_id_was_not_removed(keyed: tuple[Client, str]) -> None:
    """Novu's unsubscribe lists an error per id it did not remove, an unknown subscriber
    (SUBSCRIBER_NOT_FOUND) or one that was no member (SUBSCRIPTION_NOT_FOUND), and leaves
    `errors` out when there is none; norm answered none, so novu-py's `errors` was None
    for ids it had not removed."""
    _, key = keyed
    call(key, "post", "/v2/topics/news/subscriptions", {"subscriberIds": ["ann", "bob"]})
    novu = novu_py_for(key)
    body = {"subscriptions": ["ann", "cid", "nobody", "cid"]}
    result = novu.topics.subscriptions.delete(
        topic_key="news", delete_topic_subscriptions_request_dto=body
    ).result

    assert [s.subscriber.subscriber_id for s in result.data if s.subscriber] == ["ann"]
    assert (result.meta.successful, result.meta.failed) == (1, 2)
    assert [(e.subscriber_id, e.code) for e in result.errors or []] == [
        ("nobody", "SUBSCRIBER_NOT_FOUND"),
        ("cid", "SUBSCRIPTION_NOT_FOUND"),
    ]
    assert all(e.message for e in result.errors or [])

    answer = ok(call(key, "delete", "/v2/topics/news/subscriptions", {"subscriberIds": ["bob"]}))
    assert "errors" not in answer and answer["meta"]["failed"] == 0


def test_v2_unsubscribe_errors_tell_nothing_of_another_clients_subscribers(
    keyed: tuple[Client, str], other: tuple[Client, str]
) -> None:
    """An id that only another client has a subscriber of is no subscriber of this
    one's (SUBSCRIBER_NOT_FOUND): answered SUBSCRIPTION_NOT_FOUND, as for a subscriber
    of its own that is no member, it would tell which ids another client uses."""
    _, key = keyed
    SubscriberFactory(client=other[0], subscriber_id="dan")
    call(key, "post", "/v2/topics/news/subscriptions", {"subscriberIds": ["ann"]})

    answer = ok(
        call(key, "delete", "/v2/topics/news/subscriptions", {"subscriberIds": ["ann", "dan"]})
    )

    assert [(e["subscriberId"], e["code"]) for e in answer["errors"]] == [
        ("dan", "SUBSCRIBER_NOT_FOUND")
    ]


def test_v2_an_unsubscribe_naming_a_subscriber_and_an_identifier_removes_that_subscriber(
    keyed: tuple[Client, str],
) -> None:
    """Given both, Novu unsubscribes the subscriberId: read by the identifier, which
    names another member's subscription, it removed that other member instead."""
    client, key = keyed
    call(key, "post", "/v2/topics/news/subscriptions", {"subscriberIds": ["ann", "bob"]})
    both = {"subscriptions": [{"subscriberId": "ann", "identifier": "tk_news:si_bob"}]}

    answer = ok(call(key, "delete", "/v2/topics/news/subscriptions", both))

    assert [s["subscriber"]["subscriberId"] for s in answer["data"]] == ["ann"]
    assert members(client, "news") == ["bob"]


def test_v2_a_subscribe_or_unsubscribe_that_failed_for_every_id_is_a_400(
    keyed: tuple[Client, str],
) -> None:
    """Novu refuses with a 400 (novu-py raises ErrorDto) a subscribe or an unsubscribe
    none of whose ids it could act on, its `data`, `meta` and `errors` in the error's
    body: norm answered 201 or 200, a success the client's code went on from."""
    client, key = keyed
    novu = novu_py_for(key)
    with pytest.raises(models.ErrorDto) as subscribe:
        novu.topics.subscriptions.create(
            topic_key="news",
            create_topic_subscriptions_request_dto={"subscriptions": ["nobody", "none"]},
        )
    body = subscribe.value.raw_response.json()
    assert subscribe.value.data.status_code == 400
    assert body["meta"] == {"totalCount": 2, "successful": 0, "failed": 2}
    assert [(e["subscriberId"], e["code"]) for e in body["errors"]] == [
        ("nobody", "SUBSCRIBER_NOT_FOUND"),
        ("none", "SUBSCRIBER_NOT_FOUND"),
    ]
    assert body["data"] == [] and members(client, "news") == []  # the topic is made

    with pytest.raises(models.ErrorDto) as unsubscribe:
        novu.topics.subscriptions.delete(
            topic_key="news", delete_topic_subscriptions_request_dto={"subscriptions": ["ann"]}
        )
    body = unsubscribe.value.raw_response.json()
    assert unsubscribe.value.data.status_code == 400
    assert body["meta"] == {"totalCount": 1, "successful": 0, "failed": 1}
    assert [(e["subscriberId"], e["code"]) for e in body["errors"]] == [
        ("ann", "SUBSCRIPTION_NOT_FOUND")
    ]

    # One id done is a success, the others listed as its errors.
    body = {"subscriptions": ["ann", "nobody"]}
    added = novu.topics.subscriptions.create(
        topic_key="news", create_topic_subscriptions_request_dto=body
    ).result
    assert (added.meta.successful, added.meta.failed) == (1, 1)
    removed = novu.topics.subscriptions.delete(
        topic_key="news", delete_topic_subscriptions_request_dto=body
    ).result
    assert (removed.meta.successful, removed.meta.failed) == (1, 1)
    # No id at all is no failure.
    empty = ok(call(key, "delete", "/v2/topics/news/subscriptions", {"subscriberIds": []}))
    assert empty["meta"] == {"totalCount": 0, "successful": 0, "failed": 0}


def test_v2_an_unsubscribe_naming_no_one_is_a_200_that_removes_nothing(
    keyed: tuple[Client, str],
) -> None:
    """novu-py sends `{}` for a request DTO left empty (both lists are optional), which
    Novu's unsubscribe answers 200 with nothing removed, a 404 still for a topic that
    does not exist: norm refused it with a 400 (not a list of subscriber ids)."""
    client, key = keyed
    call(key, "post", "/v2/topics/news/subscriptions", {"subscriberIds": ["ann"]})
    novu = novu_py_for(key)

    for body in ({}, {"subscriberIds": None, "subscriptions": None}):
        result = novu.topics.subscriptions.delete(
            topic_key="news", delete_topic_subscriptions_request_dto=body
        ).result
        assert (result.data, result.errors) == ([], None)
        assert (result.meta.total_count, result.meta.successful, result.meta.failed) == (0, 0, 0)
    assert ok(call(key, "delete", "/v2/topics/news/subscriptions"))["data"] == []
    assert members(client, "news") == ["ann"]

    path = "/v2/topics/nothing/subscriptions"
    assert_error(call(key, "delete", path, {}), 404, path)
    # A null list is as absent: the other one is read.
    body = {"subscriptions": None, "subscriberIds": ["ann"]}
    assert ok(call(key, "delete", "/v2/topics/news/subscriptions", body))["meta"]["successful"] == 1


def test_v2_a_subscribe_naming_no_one_creates_the_topic_and_subscribes_nobody(
    keyed: tuple[Client, str],
) -> None:
    """Novu's subscribe reads a body naming neither list as no subscriptions
    (topics.controller.ts: `body.subscriptions || body.subscriberIds || []`), creates
    the topic, named as asked, and answers 201 with nothing subscribed (none failed):
    norm refused it with a 400 (not a list of subscriber ids), which novu-py raised
    for a call whose request DTO it lets leave both lists out."""
    client, key = keyed
    novu = novu_py_for(key)

    created = novu.topics.subscriptions.create(
        topic_key="news", create_topic_subscriptions_request_dto={"name": "News"}
    ).result
    assert (created.data, created.errors) == ([], None)
    assert (created.meta.total_count, created.meta.successful, created.meta.failed) == (0, 0, 0)
    topic = Topic.objects.get(client=client, key="news")
    assert (topic.name, members(client, "news")) == ("News", [])

    call(key, "post", "/v2/topics/news/subscriptions", {"subscriberIds": ["ann"]})
    for body in ({}, {"subscriptions": None, "subscriberIds": None}):
        answer = ok(call(key, "post", "/v2/topics/news/subscriptions", body), 201)
        assert answer == {"data": [], "meta": {"totalCount": 0, "successful": 0, "failed": 0}}
    # Its members and its name as they were: nothing named, nothing changed.
    assert members(client, "news") == ["ann"]
    assert Topic.objects.get(client=client, key="news").name == "News"
    # A body that is no object is refused still, and creates no topic.
    path = "/v2/topics/other/subscriptions"
    assert_error(call(key, "post", path, ["ann"]), 400, path)
    assert not Topic.objects.filter(key="other").exists()


@pytest.mark.parametrize(
    "subscriptions",
    [["ann", "bob"], [{"identifier": "news-ann", "subscriberId": "ann"}, {"subscriberId": "bob"}]],
)
def test_v2_members_are_also_named_as_novu_pys_current_subscriptions(
    keyed: tuple[Client, str], subscriptions: list[Any]
) -> None:
    """novu-py 3.19 deprecates `subscriberIds` for `subscriptions`: ids, or objects that
    name a subscriberId; `name` names the topic it creates."""
    client, key = keyed
    body = {"subscriptions": [*subscriptions, "nobody"], "name": "News"}
    answer = ok(call(key, "post", "/v2/topics/news/subscriptions", body), 201)

    assert answer["meta"] == {"totalCount": 3, "successful": 2, "failed": 1}
    assert [e["subscriberId"] for e in answer["errors"]] == ["nobody"]
    assert members(client, "news") == ["ann", "bob"]
    assert Topic.objects.get(client=client, key="news").name == "News"

    gone = ok(call(key, "delete", "/v2/topics/news/subscriptions", {"subscriptions": ["ann"]}))
    assert gone["meta"] == {"totalCount": 1, "successful": 1, "failed": 0}
    assert members(client, "news") == ["bob"]


def test_v2_unsubscribes_by_the_identifier_a_subscription_is_listed_with(
    keyed: tuple[Client, str],
) -> None:
    """novu-py deletes "only this specific subscription" by its `identifier`, as listed:
    norm refused it (400, not a list of subscriber ids), its own identifiers too. One
    that names no subscription of the topic is refused still: norm keeps no other."""
    client, key = keyed
    novu = novu_py_for(key)
    novu.topics.subscriptions.create(
        topic_key="news",
        create_topic_subscriptions_request_dto={"subscriptions": ["ann", "bob"]},
    )
    listed = novu.topics.subscriptions.list(request={"topic_key": "news", "subscriber_id": "ann"})
    (ann,) = listed.result.data

    gone = novu.topics.subscriptions.delete(
        topic_key="news",
        delete_topic_subscriptions_request_dto={"subscriptions": [{"identifier": ann.identifier}]},
    ).result

    assert [s.subscriber.subscriber_id for s in gone.data] == ["ann"]
    assert (gone.meta.successful, gone.meta.failed) == (1, 0)
    assert members(client, "news") == ["bob"]
    path = "/v2/topics/news/subscriptions"
    for identifier in ("news-bob", "deals:bob"):
        body = {"subscriptions": [{"identifier": identifier}]}
        assert_error(call(key, "delete", path, body), 400, path)
    assert members(client, "news") == ["bob"]


def test_v2_a_subscription_keeps_the_identifier_and_name_its_subscribe_gave_it(
    keyed: tuple[Client, str],
) -> None:
    """novu-py's `subscriptions` objects give each subscription an `identifier` (and a
    `name`), by which Novu answers, gets and deletes it: norm dropped them and named
    every subscription <key>:<subscriberId>, so a GET or an unsubscribe by the
    identifier the caller gave found nothing (204, SUBSCRIPTION_NOT_FOUND)."""
    client, key = keyed
    novu = novu_py_for(key)
    body = {
        "subscriptions": [
            {"identifier": "ann-weekly", "subscriberId": "ann", "name": "Weekly digest"},
            "bob",
        ]
    }
    added = novu.topics.subscriptions.create(
        topic_key="news", create_topic_subscriptions_request_dto=body
    ).result.data
    # Novu's default identifier for one given none.
    assert [(s.identifier, s.name) for s in added] == [
        ("ann-weekly", "Weekly digest"),
        ("tk_news:si_bob", None),
    ]
    listed = novu.topics.subscriptions.list(request={"topic_key": "news"}).result.data
    assert sorted(s.identifier for s in listed) == ["ann-weekly", "tk_news:si_bob"]
    of_ann = novu.subscribers.topics.list(request={"subscriber_id": "ann"}).result.data
    assert [s.identifier for s in of_ann] == ["ann-weekly"]

    for name in ("ann-weekly", "tk_news:si_bob"):
        got = novu.topics.subscriptions.get_subscription(topic_key="news", identifier=name)
        assert got.result.identifier == name
    path = "/v2/topics/news/subscriptions"
    # Its default, or norm's former one, names no subscription given its own identifier.
    for other in ("tk_news:si_ann", "news:ann"):
        assert call(key, "get", f"{path}/{other}").status_code == 204

    gone = novu.topics.subscriptions.delete(
        topic_key="news",
        delete_topic_subscriptions_request_dto={"subscriptions": [{"identifier": "ann-weekly"}]},
    ).result
    assert [s.identifier for s in gone.data] == ["ann-weekly"]
    assert members(client, "news") == ["bob"]
    gone = novu.topics.subscriptions.delete(
        topic_key="news",
        delete_topic_subscriptions_request_dto={
            "subscriptions": [{"identifier": "tk_news:si_bob"}, {"identifier": "nothing"}]
        },
    ).result
    assert [s.identifier for s in gone.data] == ["tk_news:si_bob"]
    assert [(e.subscriber_id, e.code) for e in gone.errors or []] == [
        ("unknown", "SUBSCRIPTION_NOT_FOUND")
    ]
    assert members(client, "news") == []


def test_v2_an_identifier_norm_answered_before_it_kept_them_still_names_its_subscription(
    keyed: tuple[Client, str],
) -> None:
    """Subscriptions made before were answered as <key>:<subscriberId>, which callers
    may have kept: they are answered now as Novu's default, found by either."""
    client, key = keyed
    path = "/v2/topics/news/subscriptions"
    call(key, "post", path, {"subscriberIds": ["ann", "bob"]})
    TopicSubscription.objects.update(identifier="")  # as the migration leaves them

    got = ok(call(key, "get", f"{path}/news:ann"))["data"]
    assert got["identifier"] == "tk_news:si_ann"
    gone = ok(call(key, "delete", path, {"subscriptions": [{"identifier": "news:bob"}]}))
    assert [s["identifier"] for s in gone["data"]] == ["tk_news:si_bob"]
    assert members(client, "news") == ["ann"]


def test_v2_a_second_subscription_of_a_subscriber_or_an_identifier_taken_is_refused(
    keyed: tuple[Client, str],
) -> None:
    """Novu keeps up to 10 subscriptions per subscriber and topic, told apart by their
    identifiers; norm keeps one. A subscribe asking for another identifier is refused
    (Novu's SUBSCRIPTION_LIMIT_EXCEEDED) rather than answer the subscription under a
    name the caller would not find it by, and so is an identifier another
    subscription has, Novu's default for another subscriber included."""
    client, key = keyed
    path = "/v2/topics/news/subscriptions"
    ok(
        call(key, "post", path, {"subscriptions": [{"identifier": "a1", "subscriberId": "ann"}]}),
        201,
    )

    # Its own identifier again, or none: it is a member still.
    for again in ({"identifier": "a1", "subscriberId": "ann"}, "ann"):
        answer = ok(call(key, "post", path, {"subscriptions": [again]}), 201)
        assert [s["identifier"] for s in answer["data"]] == ["a1"]

    SubscriberFactory(client=client, subscriber_id="dan")
    body = {
        "subscriptions": [
            {"identifier": "a2", "subscriberId": "ann"},
            {"identifier": "a1", "subscriberId": "bob"},
            {"identifier": "tk_news:si_bob", "subscriberId": "cid"},
            {"identifier": "tk_news:si_dan", "subscriberId": "dan"},
            {"identifier": "d2", "subscriberId": "dan"},
        ]
    }
    answer = ok(call(key, "post", path, body), 201)
    assert [s["identifier"] for s in answer["data"]] == ["tk_news:si_dan"]
    assert [(e["subscriberId"], e["code"]) for e in answer["errors"]] == [
        ("ann", "SUBSCRIPTION_LIMIT_EXCEEDED"),
        ("bob", "SUBSCRIPTION_CREATE_FAILED"),
        ("cid", "SUBSCRIPTION_CREATE_FAILED"),
    ]
    assert (answer["meta"]["successful"], answer["meta"]["failed"]) == (1, 3)
    assert members(client, "news") == ["ann", "dan"]
    # dan's first mention is the one read, as Novu's: its default identifier.
    assert TopicSubscription.objects.get(subscriber__subscriber_id="dan").identifier == ""

    body = {"subscriptions": [{"identifier": "tk_news:si_ann", "subscriberId": "bob"}]}
    refused = assert_error(call(key, "post", path, body), 400, path)
    assert [e["code"] for e in refused["errors"]] == ["SUBSCRIPTION_CREATE_FAILED"]
    for bad in (
        {"identifier": 5, "subscriberId": "bob"},
        {"subscriberId": "bob", "name": "x" * 256},
    ):
        assert_error(call(key, "post", path, {"subscriptions": [bad]}), 400, path)
    assert members(client, "news") == ["ann", "dan"]


def test_v2_a_subscribe_naming_a_member_by_the_identifier_norm_answered_before_is_its_own(
    keyed: tuple[Client, str],
) -> None:
    """`news:bob`, which norm answered for bob's subscription before it kept identifiers
    (and still resolves to it), is bob's own: a subscribe that names him by it, as a
    caller that kept it would, finds him a member, where it failed him with
    SUBSCRIPTION_LIMIT_EXCEEDED, "subscribed as tk_news:si_bob" (a 400, all failed)."""
    client, key = keyed
    path = "/v2/topics/news/subscriptions"
    call(key, "post", path, {"subscriberIds": ["bob"]})
    TopicSubscription.objects.update(identifier="")  # as the migration leaves them

    body = {"subscriptions": [{"identifier": "news:bob", "subscriberId": "bob"}]}
    answer = ok(call(key, "post", path, body), 201)

    assert [s["identifier"] for s in answer["data"]] == ["tk_news:si_bob"]
    assert "errors" not in answer
    assert members(client, "news") == ["bob"]


def test_v2_an_identifier_norm_answered_before_for_another_subscriber_is_refused(
    keyed: tuple[Client, str],
) -> None:
    """`news:bob`, the identifier norm answered for bob's subscription before it kept
    identifiers, still names it; given to ann's, it named hers instead (a subscription's
    own identifier is looked for first), and a caller that kept it unsubscribed ann,
    not bob. Refused as another subscriber's Novu default is; a subscriber's own is
    taken, and so is one that is no member's former identifier (`news:weekly`)."""
    client, key = keyed
    path = "/v2/topics/news/subscriptions"
    call(key, "post", path, {"subscriberIds": ["bob"]})
    TopicSubscription.objects.update(identifier="")  # as the migration leaves them

    body = {"subscriptions": [{"identifier": "news:bob", "subscriberId": "ann"}]}
    refused = assert_error(call(key, "post", path, body), 400, path)
    assert [e["code"] for e in refused["errors"]] == ["SUBSCRIPTION_CREATE_FAILED"]
    body = {"subscriptions": [{"identifier": "news:ann", "subscriberId": "ann"}]}
    answer = ok(call(key, "post", path, body), 201)
    assert [s["identifier"] for s in answer["data"]] == ["news:ann"]
    body = {"subscriptions": [{"identifier": "news:weekly", "subscriberId": "cid"}]}
    answer = ok(call(key, "post", path, body), 201)
    assert [s["identifier"] for s in answer["data"]] == ["news:weekly"]

    gone = ok(call(key, "delete", path, {"subscriptions": [{"identifier": "news:bob"}]}))
    assert [s["subscriber"]["subscriberId"] for s in gone["data"]] == ["bob"]
    assert members(client, "news") == ["ann", "cid"]


def test_v2_an_identifier_shaped_as_another_subscriptions_id_is_refused(
    keyed: tuple[Client, str],
) -> None:
    """A subscription's `_id` is <topic pk>:<subscriber pk>, and its GET, PATCH and
    unsubscribe look an identifier given up first: given to ann's subscription, bob's
    `_id` named hers, and an unsubscribe of bob by it removed ann. Refused as another's
    default identifier is, and so is the `_id` a subscriber not yet a member would get
    (dan's); a subscriber's own `_id` is taken, and so is another topic's shape."""
    client, key = keyed
    path = "/v2/topics/news/subscriptions"
    ok(call(key, "post", path, {"subscriberIds": ["bob"]}), 201)
    topic = Topic.objects.get(client=client, key="news")
    pks = dict(Subscriber.objects.values_list("subscriber_id", "pk"))
    dan = SubscriberFactory(client=client, subscriber_id="dan")
    bob_id = f"{topic.pk}:{pks['bob']}"

    for sid, identifier in (("ann", bob_id), ("cid", f"{topic.pk}:{dan.pk}")):
        body = {"subscriptions": [{"identifier": identifier, "subscriberId": sid}]}
        refused = assert_error(call(key, "post", path, body), 400, path)
        assert [e["code"] for e in refused["errors"]] == ["SUBSCRIPTION_CREATE_FAILED"]

    own = f"{topic.pk}:{pks['ann']}"
    elsewhere = f"{topic.pk + 1}:{pks['bob']}"
    body = {
        "subscriptions": [
            {"identifier": own, "subscriberId": "ann"},
            {"identifier": elsewhere, "subscriberId": "cid"},
        ]
    }
    answer = ok(call(key, "post", path, body), 201)
    assert [s["identifier"] for s in answer["data"]] == [own, elsewhere]
    assert answer["data"][0]["_id"] == own

    got = ok(call(key, "get", f"{path}/{bob_id}"))["data"]
    assert got == {"id": bob_id, "identifier": "tk_news:si_bob"}
    gone = ok(call(key, "delete", path, {"subscriptions": [{"identifier": bob_id}]}))
    assert [s["subscriber"]["subscriberId"] for s in gone["data"]] == ["bob"]
    assert members(client, "news") == ["ann", "cid"]


def test_v2_unsubscribes_by_an_identifier_with_spaces_as_by_a_subscriber_id(
    keyed: tuple[Client, str],
) -> None:
    """A subscriberId given with white space around it is trimmed; an identifier so
    given (" news:ann") was refused, a 400, and its subscription kept."""
    client, key = keyed
    path = "/v2/topics/news/subscriptions"
    ok(call(key, "post", path, {"subscriberIds": ["ann", "bob"]}), 201)

    body = {"subscriptions": [{"identifier": " news:ann\n"}]}
    gone = ok(call(key, "delete", path, body))
    assert [s["subscriber"]["subscriberId"] for s in gone["data"]] == ["ann"]
    assert members(client, "news") == ["bob"]


def test_v2_an_unsubscribes_null_subscriber_id_is_as_absent(keyed: tuple[Client, str]) -> None:
    """A null is as absent to Novu's DTO (IsOptional) as a field left out, as _members_given
    reads the body's lists: `{"identifier": ..., "subscriberId": null}` was a 400 (not
    a list of subscriber ids) where the same object without the key removed the
    subscription its identifier names. A null identifier beside a subscriberId is
    likewise none: the subscriberId names it."""
    client, key = keyed
    path = "/v2/topics/news/subscriptions"
    ok(call(key, "post", path, {"subscriberIds": ["ann", "bob", "cid"]}), 201)

    body = {"subscriptions": [{"identifier": "tk_news:si_ann", "subscriberId": None}]}
    gone = ok(call(key, "delete", path, body))
    assert [s["subscriber"]["subscriberId"] for s in gone["data"]] == ["ann"]
    assert gone["meta"] == {"totalCount": 1, "successful": 1, "failed": 0}
    assert members(client, "news") == ["bob", "cid"]

    body = {"subscriptions": [{"identifier": None, "subscriberId": "bob"}]}
    assert [
        s["subscriber"]["subscriberId"] for s in ok(call(key, "delete", path, body))["data"]
    ] == ["bob"]
    # Naming neither is refused still: nothing names a subscription.
    body = {"subscriptions": [{"identifier": None, "subscriberId": None}]}
    assert_error(call(key, "delete", path, body), 400, path)
    assert members(client, "news") == ["cid"]


@pytest.mark.parametrize(
    "subscriptions", ["ann", [{"identifier": "news-ann"}], [{"subscriberId": ""}], [["ann"]]]
)
def test_v2_subscriptions_must_name_subscriber_ids(key: str, subscriptions: Any) -> None:
    path = "/v2/topics/news/subscriptions"
    body = {"subscriptions": subscriptions}
    assert_error(call(key, "post", path, body), 400, path)
    assert not TopicSubscription.objects.exists()


def test_v2_list_subscriptions_by_cursor(keyed: tuple[Client, str]) -> None:
    _, key = keyed
    call(key, "post", "/v2/topics/news/subscriptions", {"subscriberIds": ["ann", "bob", "cid"]})
    base = "/v2/topics/news/subscriptions?limit=2.0&orderDirection=ASC"
    first = ok(call(key, "get", base))
    rest = ok(call(key, "get", f"{base}&after={first['next']}"))

    items = first["data"] + rest["data"]
    assert [i["subscriber"]["subscriberId"] for i in items] == ["ann", "bob", "cid"]
    assert (first["totalCount"], rest["next"]) == (3, None)
    # Required by novu-py's TopicSubscriptionResponseDto.
    assert all(i["_id"] and i["identifier"] and i["topic"]["key"] == "news" for i in items)
    only_bob = ok(call(key, "get", "/v2/topics/news/subscriptions?subscriberId=bob"))
    assert [i["subscriber"]["subscriberId"] for i in only_bob["data"]] == ["bob"]


def test_a_subscriptions_dates_are_when_it_was_made_not_when_its_topic_was(
    keyed: tuple[Client, str],
) -> None:
    """Each answer gave the topic's creation as the subscription's createdAt: a member
    added today read as subscribed since the topic began, all members alike."""
    client, key = keyed
    call(key, "post", "/v2/topics/news/subscriptions", {"subscriberIds": ["ann"]})
    topic = Topic.objects.get(client=client, key="news")
    Topic.objects.filter(pk=topic.pk).update(created_at=datetime(2020, 1, 1, tzinfo=UTC))
    TopicSubscription.objects.update(created_at=datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC))
    url = "/v2/topics/news/subscriptions"

    added = ok(call(key, "post", url, {"subscriberIds": ["ann", "bob"]}), 201)["data"]
    listed = ok(call(key, "get", f"{url}?orderDirection=ASC"))["data"]
    checked = ok(call(key, "get", "/v1/topics/news/subscribers/ann"))["data"]
    removed = ok(call(key, "delete", url, {"subscriberIds": ["ann"]}))["data"]

    ann_at = "2024-05-06T07:08:09.000Z"
    bob_at = TopicSubscription.objects.get(subscriber__subscriber_id="bob").created_at
    assert [(s["createdAt"], s["updatedAt"]) for s in added] == [
        (ann_at, ann_at),
        (iso_z(bob_at), iso_z(bob_at)),
    ]
    assert [s["createdAt"] for s in listed] == [ann_at, iso_z(bob_at)]
    assert (checked["createdAt"], [s["createdAt"] for s in removed]) == (ann_at, [ann_at])
    listed_by_novu_py = novu_py_for(key).topics.subscriptions.list(request={"topic_key": "news"})
    assert [s.created_at for s in listed_by_novu_py.result.data] == [iso_z(bob_at)]


@pytest.mark.parametrize(
    "scope",
    [{"context": {"tenant": "acme"}}, {"preferences": ["welcome"]}],
)
def test_v2_subscribe_refuses_a_context_or_preferences_rather_than_subscribe_to_all(
    key: str, scope: dict[str, Any]
) -> None:
    """novu-py's context and preferences narrow what a subscription receives; norm
    dropped them and subscribed to every workflow of the topic."""
    call(key, "post", "/v2/subscribers", {"subscriberId": "ann"})
    with pytest.raises(models.ErrorDto) as refused:
        novu_py_for(key).topics.subscriptions.create(
            topic_key="news",
            create_topic_subscriptions_request_dto={"subscriber_ids": ["ann"], **scope},
        )
    assert refused.value.data.status_code == 400
    assert not TopicSubscription.objects.exists()
    empty = {"subscriberIds": ["ann"], "context": {}, "preferences": []}
    assert ok(call(key, "post", "/v2/topics/news/subscriptions", empty), 201)["data"]


def test_v2_subscriptions_refuse_novu_pys_context_keys_rather_than_list_them_all(
    key: str,
) -> None:
    """norm keeps no contexts: a list narrowed by contextKeys answered every subscription
    of the topic, as if each matched."""
    call(key, "post", "/v2/topics/news/subscriptions", {"subscriberIds": ["ann"]})
    novu = novu_py_for(key)
    with pytest.raises(models.ErrorDto) as refused:
        novu.topics.subscriptions.list(request={"topic_key": "news", "context_keys": ["org:a"]})
    assert refused.value.data.status_code == 400
    assert "contextKeys" in refused.value.data.message
    listed = novu.topics.subscriptions.list(request={"topic_key": "news"}).result
    assert [s.subscriber.subscriber_id for s in listed.data] == ["ann"]


def test_v2_subscriptions_read_an_empty_context_keys_as_no_filter(key: str) -> None:
    """novu-py sends `contextKeys=` for `context_keys=[""]` (as a form or a query builder
    does for an unset field): norm refused it, though it narrows nothing."""
    call(key, "post", "/v2/topics/news/subscriptions", {"subscriberIds": ["ann"]})
    novu = novu_py_for(key)

    for keys in ([], [""]):
        asked = {"topic_key": "news", "context_keys": keys}
        listed = novu.topics.subscriptions.list(request=asked).result
        assert [s.subscriber.subscriber_id for s in listed.data] == ["ann"], keys


@pytest.mark.parametrize("order", ["", "&orderDirection=DESC", "&orderDirection=ASC"])
def test_v2_subscriptions_are_newest_first_unless_asked_for_asc_both_cursor_ways(
    keyed: tuple[Client, str], order: str
) -> None:
    client, key = keyed
    names = [f"user-{i:02}" for i in range(12)]
    for name in names:
        SubscriberFactory(client=client, subscriber_id=name)
    ok(call(key, "post", "/v2/topics/news/subscriptions", {"subscriberIds": names}), 201)
    expected = names if order.endswith("ASC") else names[::-1]
    base = f"/v2/topics/news/subscriptions?limit=5.0{order}"

    def ids(pages: list[dict[str, Any]]) -> list[list[str]]:
        return [[i["subscriber"]["subscriberId"] for i in p["data"]] for p in pages]

    forward = _walk(key, base, "next")
    assert ids(forward) == [expected[:5], expected[5:10], expected[10:]]
    backward = _walk(key, base, "previous", cursor=forward[-1]["previous"])
    assert ids(backward) == [expected[5:10], expected[:5]]


def test_v1_add_and_remove_members(keyed: tuple[Client, str]) -> None:
    client, key = keyed
    call(key, "post", "/v1/topics", {"key": "news", "name": "News"})
    body = {"subscribers": ["ann", "nobody", "bob"]}
    answer = ok(call(key, "post", "/v1/topics/news/subscribers", body))
    assert answer["data"] == {"succeeded": ["ann", "bob"], "failed": {"notFound": ["nobody"]}}

    answer = ok(call(key, "post", "/v1/topics/news/subscribers", {"subscribers": ["cid"]}))
    assert answer["data"] == {"succeeded": ["cid"], "failed": {}}
    assert members(client, "news") == ["ann", "bob", "cid"]

    removal = {"subscribers": ["ann", "cid"]}
    ok(call(key, "post", "/v1/topics/news/subscribers/removal", removal))
    assert members(client, "news") == ["bob"]


def test_membership_check_is_200_for_a_member_and_404_otherwise(
    keyed: tuple[Client, str],
) -> None:
    _, key = keyed
    call(key, "post", "/v2/topics/news/subscriptions", {"subscriberIds": ["ann"]})
    data = ok(call(key, "get", "/v1/topics/news/subscribers/ann"))["data"]
    # novu-py parses Novu's TopicSubscriberDto: all six keys are required.
    assert (data["topicKey"], data["externalSubscriberId"]) == ("news", "ann")
    assert all(data[k] for k in ("_organizationId", "_environmentId", "_subscriberId", "_topicId"))
    for name in ("bob", "nobody"):
        path = f"/v1/topics/news/subscribers/{name}"
        assert_error(call(key, "get", path), 404, path)


def test_v2_a_subscription_is_got_by_the_identifier_or_id_it_is_listed_with(
    keyed: tuple[Client, str], other: tuple[Client, str]
) -> None:
    """novu-py's topics.subscriptions.get_subscription (GET /v2/topics/{key}/
    subscriptions/{identifier}) had no route: a 404 for a subscription that exists.
    As Novu: 200 with its id and identifier, 204 when there is none (novu-py raises)."""
    _, key = keyed
    novu = novu_py_for(key)
    added = novu.topics.subscriptions.create(
        topic_key="news", create_topic_subscriptions_request_dto={"subscriptions": ["ann"]}
    ).result.data[0]

    for name in (added.identifier or "", added.id):
        got = novu.topics.subscriptions.get_subscription(topic_key="news", identifier=name)
        assert (got.result.id, got.result.identifier) == (added.id, "tk_news:si_ann")

    path = "/v2/topics/news/subscriptions"
    for missing in (f"{path}/news:bob", f"{path}/news:nobody", f"{path}/bob", f"{path}/ann"):
        response = call(key, "get", missing)
        assert (response.status_code, response.content) == (204, b"")
    response = call(key, "get", "/v2/topics/nothing/subscriptions/nothing:ann")
    assert response.status_code == 204
    assert call(other[1], "get", f"{path}/news:ann").status_code == 204
    with pytest.raises(models.APIError):
        novu.topics.subscriptions.get_subscription(topic_key="news", identifier="news:bob")


def test_v2_a_subscribers_own_id_alone_names_none_of_its_subscriptions(
    keyed: tuple[Client, str],
) -> None:
    """A subscription's `_id` is <topic pk>:<subscriber pk>: the subscriber's pk alone is
    no name of it, for a get nor for an unsubscribe, which would remove a member that
    the caller never named."""
    client, key = keyed
    ok(call(key, "post", "/v2/topics/news/subscriptions", {"subscriberIds": ["ann", "bob"]}), 201)
    bob = Subscriber.objects.get(client=client, subscriber_id="bob")
    path = "/v2/topics/news/subscriptions"

    assert call(key, "get", f"{path}/{bob.pk}").status_code == 204
    assert_error(
        call(key, "delete", path, {"subscriptions": [{"identifier": str(bob.pk)}]}), 400, path
    )
    assert members(client, "news") == ["ann", "bob"]


def test_v2_a_subscription_is_renamed_by_its_identifier_and_refuses_preferences(
    keyed: tuple[Client, str], other: tuple[Client, str]
) -> None:
    """novu-py's topics.subscriptions.update (PATCH /v2/topics/{key}/subscriptions/
    {identifier}) was a 405, which it raises. As Novu: a 200 with the subscription, its
    `name` set; a 404 for a topic or a subscription there is not. Its `preferences`
    narrow what the subscription receives, which norm cannot: a 400 rather than a
    success that leaves it receiving everything (an empty list asks for none)."""
    client, key = keyed
    novu = novu_py_for(key)
    body = {"subscriptions": [{"identifier": "ann-weekly", "subscriberId": "ann"}, "bob"]}
    novu.topics.subscriptions.create(topic_key="news", create_topic_subscriptions_request_dto=body)

    for identifier in ("ann-weekly", "tk_news:si_bob", "news:bob"):
        updated = novu.topics.subscriptions.update(
            topic_key="news",
            identifier=identifier,
            update_topic_subscription_request_dto={"name": f"{identifier} by name"},
        ).result
        assert (updated.name, updated.topic.key) == (f"{identifier} by name", "news")
    assert updated.identifier == "tk_news:si_bob"
    assert updated.subscriber and updated.subscriber.subscriber_id == "bob"
    names = dict(TopicSubscription.objects.values_list("subscriber__subscriber_id", "name"))
    assert names == {"ann": "ann-weekly by name", "bob": "news:bob by name"}

    # Nothing to change is the subscription as it is; no preferences are none to clear.
    for unchanged in ({}, {"preferences": []}):
        answer = ok(call(key, "patch", "/v2/topics/news/subscriptions/ann-weekly", unchanged))
        assert (answer["data"]["identifier"], answer["data"]["name"]) == (
            "ann-weekly",
            "ann-weekly by name",
        )

    with pytest.raises(models.ErrorDto) as refused:
        novu.topics.subscriptions.update(
            topic_key="news",
            identifier="ann-weekly",
            update_topic_subscription_request_dto={"name": "x", "preferences": ["welcome"]},
        )
    assert refused.value.data.status_code == 400
    assert "preferences" in refused.value.data.message
    assert TopicSubscription.objects.get(identifier="ann-weekly").name == "ann-weekly by name"

    path = "/v2/topics/news/subscriptions"
    for missing, caller in (
        (f"{path}/tk_news:si_cid", key),
        (f"{path}/ann", key),
        ("/v2/topics/nothing/subscriptions/tk_nothing:si_ann", key),
        (f"{path}/ann-weekly", other[1]),
    ):
        assert_error(call(caller, "patch", missing, {"name": "x"}), 404, missing)
    bad = f"{path}/ann-weekly"
    for body in ({"name": 5}, {"name": "x" * 256}, ["x"]):
        assert_error(call(key, "patch", bad, body), 400, bad)


def test_v2_a_renamed_subscription_answers_when_it_changed_as_its_updated_at(
    keyed: tuple[Client, str],
) -> None:
    """Novu's PATCH of a subscription sets its name, and its updatedAt with it, which
    novu-py's SubscriptionResponseDto reads (update-subscription.usecase.ts answers the
    row updated): norm kept no such date and answered its createdAt, a subscription
    renamed today read as never changed since it was made."""
    client, key = keyed
    novu = novu_py_for(key)
    body = {"subscriptions": [{"identifier": "ann-weekly", "subscriberId": "ann"}, "bob"]}
    novu.topics.subscriptions.create(topic_key="news", create_topic_subscriptions_request_dto=body)
    TopicSubscription.objects.update(created_at=datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC))
    made = "2024-05-06T07:08:09.000Z"

    renamed = novu.topics.subscriptions.update(
        topic_key="news",
        identifier="ann-weekly",
        update_topic_subscription_request_dto={"name": "W"},
    ).result
    assert renamed.updated_at > renamed.created_at == made
    changed = TopicSubscription.objects.get(identifier="ann-weekly").updated_at
    assert (renamed.created_at, renamed.updated_at) == (made, iso_z(changed))
    # A PATCH that changes nothing leaves it as it was.
    same = ok(call(key, "patch", "/v2/topics/news/subscriptions/ann-weekly", {"name": "W"}))
    assert same["data"]["updatedAt"] == iso_z(changed)

    # Every answer of it says so; bob's, never changed, is its createdAt still.
    url = "/v2/topics/news/subscriptions"
    listed = ok(call(key, "get", f"{url}?orderDirection=ASC"))["data"]
    by_subscriber = ok(call(key, "get", "/v2/subscribers/ann/subscriptions"))["data"]
    checked = ok(call(key, "get", "/v1/topics/news/subscribers/ann"))["data"]
    again = ok(call(key, "post", url, {"subscriberIds": ["ann", "bob"]}), 201)["data"]
    removed = ok(call(key, "delete", url, {"subscriberIds": ["ann"]}))["data"]
    expected = {"ann": (made, iso_z(changed)), "bob": (made, made)}
    for answer in (listed, by_subscriber, [checked], again, removed):
        for item in answer:
            dates = (item["createdAt"], item["updatedAt"])
            assert dates == expected[item["subscriber"]["subscriberId"]]

    # A subscription the release before this column inserts while the upgrade migrates
    # goes in, and reads as not changed since it was made.
    loader = MigrationLoader(None, ignore_no_migrations=True)
    before = loader.project_state(("subscribers", "0008_topic_subscription_identifier_index"))
    old_model = before.apps.get_model("subscribers", "TopicSubscription")
    old_model.objects.create(
        topic_id=Topic.objects.get(key="news").pk,
        subscriber_id=Subscriber.objects.get(client=client, subscriber_id="cid").pk,
    )
    cid = ok(call(key, "get", f"{url}?subscriberId=cid"))["data"]
    assert [(s["createdAt"] == s["updatedAt"]) for s in cid] == [True]


def test_v2_a_subscription_id_of_more_digits_than_python_reads_is_none(
    keyed: tuple[Client, str],
) -> None:
    """An identifier `<topic _id>:<digits>` is read as the subscription's _id, its digits
    a subscriber's id: past 4,300 of them Python's int() refuses them (ValueError), a 500
    to any caller; past 19, no id. Either way no subscription has it: a 204, as for any
    other identifier that names none."""
    _, key = keyed
    call(key, "post", "/v2/topics/news/subscriptions", {"subscriberIds": ["ann"]})
    topic = Topic.objects.get(key="news")
    path = "/v2/topics/news/subscriptions"

    for digits in ("9" * 5000, "9" * 30):
        response = call(key, "get", f"{path}/{topic.pk}:{digits}")
        assert (response.status_code, response.content) == (204, b"")


def test_v2_a_subscription_is_renamed_by_the_id_its_get_finds_it_by(
    keyed: tuple[Client, str], other: tuple[Client, str]
) -> None:
    """GET /v2/topics/{key}/subscriptions/{identifier} finds a subscription by its `_id`
    (<topic _id>:<subscriber _id>), as Novu takes its internal id; a PATCH of the same
    URL answered 404 for it, the one subscription named two ways by one URL. Both now
    find it by the one lookup, and neither finds another topic's or client's."""
    client, key = keyed
    call(key, "post", "/v2/topics/news/subscriptions", {"subscriberIds": ["ann", "bob"]})
    call(key, "post", "/v2/topics/deals/subscriptions", {"subscriberIds": ["ann"]})
    listed = ok(call(key, "get", "/v2/topics/news/subscriptions?subscriberId=ann"))["data"]
    url = f"/v2/topics/news/subscriptions/{listed[0]['_id']}"

    got = ok(call(key, "get", url))["data"]
    renamed = ok(call(key, "patch", url, {"name": "Ann's"}))["data"]
    assert (renamed["_id"], renamed["identifier"]) == (got["id"], got["identifier"])
    assert renamed["subscriber"]["subscriberId"] == "ann"
    names = TopicSubscription.objects.filter(topic__key="news").values_list(
        "subscriber__subscriber_id", "name"
    )
    assert dict(names) == {"ann": "Ann's", "bob": ""}
    assert TopicSubscription.objects.get(topic__key="deals").name == ""

    # The same digits under another topic's _id, or too many, name none: for both verbs.
    deals = Topic.objects.get(client=client, key="deals")
    ann = Subscriber.objects.get(client=client, subscriber_id="ann")
    for missing in (
        f"/v2/topics/news/subscriptions/{deals.pk}:{ann.pk}",
        f"/v2/topics/news/subscriptions/{listed[0]['topic']['_id']}:{'9' * 30}",
    ):
        assert call(key, "get", missing).status_code == 204
        assert_error(call(key, "patch", missing, {"name": "x"}), 404, missing)
    assert call(other[1], "get", url).status_code == 204
    assert_error(call(other[1], "patch", url, {"name": "x"}), 404, url)


def test_v2_a_subscribers_subscriptions_are_listed_by_cursor_newest_first(
    keyed: tuple[Client, str], other: tuple[Client, str]
) -> None:
    """novu-py's subscribers.topics.list (GET /v2/subscribers/{id}/subscriptions) had no
    route: a 404 for a subscriber that exists. It now lists the subscriber's topic
    subscriptions as a topic's list does, newest first, `key` filtering by topic."""
    _, key = keyed
    for topic in ("news", "deals", "sports"):
        call(key, "post", f"/v2/topics/{topic}/subscriptions", {"subscriberIds": ["ann"]})
    call(key, "post", "/v2/topics/other/subscriptions", {"subscriberIds": ["bob"]})
    novu = novu_py_for(key)

    first = novu.subscribers.topics.list(request={"subscriber_id": "ann", "limit": 2}).result
    assert [s.topic.key for s in first.data] == ["sports", "deals"]
    assert (first.total_count, first.next is not None) == (3, True)
    assert {s.subscriber.subscriber_id for s in first.data if s.subscriber} == {"ann"}
    request = {"subscriber_id": "ann", "limit": 2, "after": first.next}
    rest = novu.subscribers.topics.list(request=request).result
    assert [s.topic.key for s in rest.data] == ["news"]
    assert [s.identifier for s in rest.data] == ["tk_news:si_ann"]

    request = {"subscriber_id": "ann", "key": "deals"}
    assert [s.topic.key for s in novu.subscribers.topics.list(request=request).result.data] == [
        "deals"
    ]
    empty = ok(call(key, "get", "/v2/subscribers/cid/subscriptions"))
    assert (empty["data"], empty["totalCount"]) == ([], 0)
    for path, caller in (
        ("/v2/subscribers/nobody/subscriptions", key),
        ("/v2/subscribers/ann/subscriptions", other[1]),
    ):
        assert_error(call(caller, "get", path), 404, path)


def test_membership_check_of_the_subscriber_named_removal_is_answered(
    keyed: tuple[Client, str],
) -> None:
    """/v1/topics/{key}/subscribers/removal is also the check of the member "removal":
    Novu routes by method, POST to the removal. Its GET was a 405, which both SDKs
    raise, for a member or not."""
    client, key = keyed
    SubscriberFactory(client=client, subscriber_id="removal")
    call(key, "post", "/v2/topics/news/subscriptions", {"subscriberIds": ["removal"]})
    novu = novu_py_for(key)
    check = novu.topics.subscribers.retrieve(topic_key="news", external_subscriber_id="removal")
    assert check.result.external_subscriber_id == "removal"

    path = "/v1/topics/news/subscribers/removal"
    ok(call(key, "post", path, {"subscribers": ["removal"]}))  # still the removal
    assert members(client, "news") == []
    assert_error(call(key, "get", path), 404, path)


# --- isolation -------------------------------------------------------------------------------


def test_another_client_never_sees_or_changes_the_topic(
    keyed: tuple[Client, str], other: tuple[Client, str]
) -> None:
    client, key = keyed
    other_client, other_key = other
    call(key, "post", "/v2/topics/news/subscriptions", {"subscriberIds": ["ann"]})

    for method, path in [
        ("get", "/v2/topics/news"),
        ("get", "/v1/topics/news/subscribers/ann"),
        ("delete", "/v2/topics/news"),
    ]:
        assert_error(call(other_key, method, path), 404, path)
    path = "/v1/topics/news/subscribers"
    assert_error(call(other_key, "post", path, {"subscribers": ["bob"]}), 404, path)
    path = "/v1/topics/news/subscribers/removal"
    assert_error(call(other_key, "post", path, {"subscribers": ["ann"]}), 404, path)
    path = "/v2/topics/news/subscriptions"
    assert_error(call(other_key, "delete", path, {"subscriberIds": ["ann"]}), 404, path)
    assert ok(call(other_key, "get", "/v2/topics"))["data"] == []
    assert members(client, "news") == ["ann"]

    # failIfExists looks for its own topic of that key, of which there is none yet.
    path = "/v2/topics?failIfExists=true"
    created = ok(call(other_key, "post", path, {"key": "news"}), 201)["data"]
    assert created["_organizationId"] == str(other_client.pk)

    # Its own topic of the same key cannot take in this client's subscribers.
    path = "/v2/topics/news/subscriptions"
    answer = assert_error(
        call(other_key, "post", path, {"subscriberIds": ["ann", "bob"]}), 400, path
    )
    assert answer["meta"] == {"totalCount": 2, "successful": 0, "failed": 2}
    assert members(other_client, "news") == []
    assert members(client, "news") == ["ann"]


def test_subscriptions_are_listed_in_the_order_of_the_dates_they_answer(
    keyed: tuple[Client, str],
) -> None:
    """The list was ordered by the subscriber's id, its createdAt the subscription's: a
    member created long ago and subscribed today came last of "newest first", and a
    page by orderBy=createdAt was not in the order of its createdAt. Novu orders them
    by the subscription."""
    client, key = keyed
    url = "/v2/topics/news/subscriptions"
    ok(call(key, "post", url, {"subscriberIds": ["cid", "ann", "bob"]}), 201)
    for name, day in (("cid", 1), ("bob", 2), ("ann", 3)):  # ann subscribed last
        TopicSubscription.objects.filter(subscriber__subscriber_id=name).update(
            created_at=datetime(2024, 5, day, tzinfo=UTC)
        )

    def walk(query: str) -> list[tuple[str, str]]:
        seen, page = [], ok(call(key, "get", f"{url}?limit=1&{query}"))
        while True:
            seen += [(s["subscriber"]["subscriberId"], s["createdAt"]) for s in page["data"]]
            if page["next"] is None:
                return seen
            page = ok(call(key, "get", f"{url}?limit=1&{query}&after={page['next']}"))

    newest_first = [
        ("ann", "2024-05-03T00:00:00.000Z"),
        ("bob", "2024-05-02T00:00:00.000Z"),
        ("cid", "2024-05-01T00:00:00.000Z"),
    ]
    assert walk("") == newest_first
    assert walk("orderBy=createdAt") == newest_first
    assert walk("orderBy=updatedAt&orderDirection=ASC") == newest_first[::-1]
    assert walk("orderBy=_id&orderDirection=ASC") == newest_first[::-1]
