"""Every list endpoint reads `page` and `limit` alike (config/paging.py)."""

from __future__ import annotations

from typing import Any

import pytest

from subscribers.models import Topic
from tests.factories import MessageFactory, NotificationFactory, StepFactory, SubscriberFactory

PAGE_LISTS = [
    "/v1/notifications",
    "/v1/subscribers",
    "/v1/topics",
    "/v1/subscribers/ann/notifications/feed",
]
CURSOR_LISTS = ["/v2/subscribers", "/v2/topics"]


@pytest.fixture
def rows(tenant: tuple[Any, Any]) -> Any:
    """101 of everything the lists show, so that a limit over 100 has rows to cap."""
    client, api = tenant
    ann = SubscriberFactory(client=client, subscriber_id="ann")
    for i in range(101):
        notification = NotificationFactory(trigger_event__client=client, subscriber=ann)
        MessageFactory(step=StepFactory(notification=notification, type="in_app"))
        Topic.objects.create(client=client, key=f"topic-{i}")
    SubscriberFactory.create_batch(100, client=client)
    return api


@pytest.mark.parametrize("path", PAGE_LISTS)
def test_page_lists_take_floats_and_cap_the_limit(rows: Any, path: str) -> None:
    second = rows.get(f"{path}?page=1.0&limit=40.0").json()
    capped = rows.get(f"{path}?limit=1000").json()

    assert (second["page"], second["pageSize"], len(second["data"])) == (1, 40, 40)
    assert second["hasMore"] is True
    assert (capped["pageSize"], len(capped["data"]), capped["hasMore"]) == (100, 100, True)


@pytest.mark.parametrize("path", CURSOR_LISTS)
def test_cursor_lists_cap_the_limit(rows: Any, path: str) -> None:
    body = rows.get(f"{path}?limit=1000.0").json()
    assert len(body["data"]) == 100 and body["next"]


@pytest.mark.parametrize("path", PAGE_LISTS + CURSOR_LISTS)
@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("limit=0", "limit"),
        ("limit=2.5", "limit"),
        ("limit=ten", "limit"),
        ("limit=inf", "limit"),
        ("page=-1", "page"),
        ("page=9371254040978554617856", "page"),
        ("page=nan", "page"),
    ],
)
def test_every_list_refuses_a_bad_number_alike(
    tenant: tuple[Any, Any], path: str, query: str, field: str
) -> None:
    client, api = tenant
    SubscriberFactory(client=client, subscriber_id="ann")
    response = api.get(f"{path}?{query}")
    if path in CURSOR_LISTS and field == "page":
        assert response.status_code == 200  # cursor lists have no page
        return
    body = response.json()
    assert (response.status_code, body["code"]) == (400, "invalid_query")
    # What each takes: a page up to 10**9 (OFFSET's bound); a limit of any size, as
    # one above 100 is read as 100 (it said "from 1 to 1000000000", and 1000 is 100).
    message = {
        "page": "must be a whole number from 0 to 1000000000",
        "limit": "must be a whole number of at least 1 (above 100 reads as 100)",
    }[field]
    assert body["errors"] == [{"field": field, "message": message}]
    assert body["message"] == f"'{field}' {message}"


@pytest.mark.parametrize("path", PAGE_LISTS + CURSOR_LISTS)
@pytest.mark.parametrize("blank", ["", "%20", "%20%09"])
def test_a_blank_page_or_limit_is_absent_as_an_empty_one(
    tenant: tuple[Any, Any], path: str, blank: str
) -> None:
    """White space was a 400 where nothing was the default, though neither names a
    number, and a filter (`subscriberId=%20`) reads both as absent."""
    client, api = tenant
    SubscriberFactory.create_batch(11, client=client)
    SubscriberFactory(client=client, subscriber_id="ann")
    for i in range(11):
        Topic.objects.create(client=client, key=f"topic-{i}")

    response = api.get(f"{path}?limit={blank}&page={blank}")

    assert response.status_code == 200, response.content
    if path in PAGE_LISTS:
        assert (response.json()["page"], response.json()["pageSize"]) == (0, 10)
    else:
        assert len(response.json()["data"]) == 10


@pytest.mark.parametrize("path", PAGE_LISTS + CURSOR_LISTS)
def test_a_limit_beyond_a_billion_is_read_as_100_as_any_above_100(rows: Any, path: str) -> None:
    body = rows.get(f"{path}?limit=9371254040978554617856").json()
    assert len(body["data"]) == 100


def test_the_schema_says_how_limit_and_page_are_read(client: Any) -> None:
    spec = client.get("/v1/openapi.json").json()
    for path in PAGE_LISTS + CURSOR_LISTS + ["/v2/subscribers/{subscriber_id}/notifications"]:
        path = path.replace("/ann/", "/{subscriber_id}/")
        params = {p["name"]: p for p in spec["paths"][path]["get"]["parameters"]}
        limit = params["limit"]
        assert limit["schema"] == {"type": "integer", "minimum": 1}
        assert "above 100 reads as 100" in limit["description"]
        if path in PAGE_LISTS:
            assert params["page"]["schema"]["maximum"] == 1000000000


def test_v1_topics_take_page_size_over_limit(rows: Any) -> None:
    body = rows.get("/v1/topics?limit=5&pageSize=7").json()
    assert (body["pageSize"], len(body["data"])) == (7, 7)


@pytest.mark.parametrize("path", PAGE_LISTS)
def test_the_last_page_has_no_more(rows: Any, path: str) -> None:
    """101 rows: page 99 of one row has one more, page 100 is the last."""
    before_last = rows.get(f"{path}?page=99&limit=1").json()
    last = rows.get(f"{path}?page=100&limit=1").json()
    assert (len(before_last["data"]), before_last["hasMore"]) == (1, True)
    assert (len(last["data"]), last["hasMore"]) == (1, False)


@pytest.mark.parametrize(
    "path",
    [
        "/v2/subscribers/ann/notifications?read=0",
        "/v2/subscribers/ann/notifications?seen=yes",
        "/v2/subscribers/ann/notifications?archived=1",
        "/v1/subscribers/ann/notifications/feed?read=no",
        "/v1/subscribers/ann/notifications/unseen?seen=1",
        "/v2/subscribers?includeCursor=1",
    ],
)
def test_a_boolean_in_the_query_other_than_true_or_false_is_refused(
    tenant: tuple[Any, Any], path: str
) -> None:
    """Read as absent, `read=0` narrowed nothing: the read notifications were listed
    with the unread, as if the filter had matched them."""
    client, api = tenant
    SubscriberFactory(client=client, subscriber_id="ann")

    response = api.get(path)

    assert response.status_code == 400
    name = path.split("?")[1].split("=")[0]
    assert response.json()["message"] == f"'{name}' must be true or false"


def test_a_boolean_in_the_query_reads_true_false_in_any_case_and_empty_as_absent(
    tenant: tuple[Any, Any],
) -> None:
    client, api = tenant
    SubscriberFactory(client=client, subscriber_id="ann")

    for value in ("true", "False", "TRUE", ""):
        assert api.get(f"/v2/subscribers/ann/notifications?read={value}").status_code == 200


def test_a_boolean_in_the_query_is_trimmed_and_white_space_alone_is_absent(
    tenant: tuple[Any, Any],
) -> None:
    client, api = tenant
    ann = SubscriberFactory(client=client, subscriber_id="ann")
    notification = NotificationFactory(trigger_event__client=client, subscriber=ann)
    MessageFactory(step=StepFactory(notification=notification, type="in_app"))
    feed = "/v2/subscribers/ann/notifications"

    assert len(api.get(f"{feed}?read=%20").json()["data"]) == 1  # no filter, as read=
    assert len(api.get(f"{feed}?read=%20false%20").json()["data"]) == 1  # the unread one
    assert api.get(f"{feed}?read=%20true").json()["data"] == []


def test_a_choice_in_the_query_is_trimmed_as_a_text_filter_is(tenant: tuple[Any, Any]) -> None:
    """`subscriberId=%20ann` found ann (a CharField trims), but `channel=%20in_app` was a
    400 "not a valid choice" (a ChoiceField does not), and `orderDirection=%20ASC` was
    read as no direction at all: the list in the other order."""
    client, api = tenant
    ann = SubscriberFactory(client=client, subscriber_id="ann")
    notification = NotificationFactory(trigger_event__client=client, subscriber=ann)
    MessageFactory(step=StepFactory(notification=notification, type="in_app"))
    first, second = (Topic.objects.create(client=client, key=k) for k in ("first", "second"))

    lists = {
        "/v1/messages?channel=%20in_app&subscriberId=%20ann": 1,
        "/v1/notifications?status=%20pending%20&channels=%20in_app": 1,
        "/v2/subscribers/ann/notifications?severity=%20none": 1,
        "/v2/subscribers/ann/notifications?severity=%20high": 0,
        # White space alone, or nothing, asks for nothing: every notification.
        "/v2/subscribers/ann/notifications?severity=%20&contextKeys=": 1,
    }
    for path, count in lists.items():
        response = api.get(path)
        assert (response.status_code, len(response.json()["data"])) == (200, count), path

    for order in ("orderDirection=%20ASC", "orderDirection=ASC%20&orderBy=%20createdAt"):
        topics = api.get(f"/v2/topics?{order}")
        assert topics.status_code == 200, (order, topics.content)
        assert [t["key"] for t in topics.json()["data"]] == [first.key, second.key], order
