from __future__ import annotations

from typing import Any

from django.db.models import F, QuerySet, Value
from django.db.models.functions import Coalesce, Concat, Trim
from django.http import QueryDict

from config.db import row_id
from config.errors import ApiError
from config.paging import query_text
from subscribers.models import (
    Subscriber,
    Topic,
    TopicSubscription,
    default_subscription_identifier,
)


def subscriber_not_found(subscriber_id: str) -> ApiError:
    return ApiError(404, "subscriber_not_found", f"Subscriber '{subscriber_id}' was not found")


def topic_not_found(key: str) -> ApiError:
    return ApiError(404, "topic_not_found", f"Topic '{key}' was not found")


def subscriber_get(*, client_id: int, subscriber_id: str) -> Subscriber:
    subscriber = Subscriber.objects.filter(client_id=client_id, subscriber_id=subscriber_id).first()
    if subscriber is None:
        raise subscriber_not_found(subscriber_id)
    return subscriber


def subscriber_search(*, client_id: int, filters: QueryDict) -> QuerySet[Subscriber]:
    qs = Subscriber.objects.filter(client_id=client_id)
    if subscriber_id := query_text(filters, "subscriberId"):
        qs = qs.filter(subscriber_id=subscriber_id)
    if email := query_text(filters, "email"):
        qs = qs.filter(email__iexact=email)
    if phone := query_text(filters, "phone"):
        qs = qs.filter(phone=phone)
    if filters.get("name"):
        # Novu matches `name` against the full name, "first last" (novu-py's "Ann Lee"
        # found nobody when only each name was searched); norm also takes a part of it.
        full_name = Trim(Concat("first_name", Value(" "), "last_name"))
        qs = qs.alias(full_name=full_name).filter(full_name__icontains=filters["name"])
    return qs


def topic_get(*, client_id: int, key: str) -> Topic:
    topic = Topic.objects.filter(client_id=client_id, key=key).first()
    if topic is None:
        raise topic_not_found(key)
    return topic


# A subscription's Novu updatedAt: when it last changed, else when it was made.
def _with_subscription(rows: QuerySet[Any]) -> QuerySet[Any]:
    """Subscribers or topics joined to their subscriptions (both name the relation
    `topicsubscription`), each row with its subscription's fields: `subscribed_at`, its
    createdAt; `subscription_identifier` and `subscription_name` ("" if none was given);
    `subscription_updated_at`, its updatedAt (its createdAt until it was renamed)."""
    return rows.annotate(
        subscribed_at=F("topicsubscription__created_at"),
        subscription_identifier=F("topicsubscription__identifier"),
        subscription_name=F("topicsubscription__name"),
        subscription_updated_at=Coalesce(
            "topicsubscription__updated_at", "topicsubscription__created_at"
        ),
    )


def topic_members(*, topic: Topic) -> QuerySet[Subscriber]:
    """A topic's members, each with its subscription's fields (_with_subscription):
    `subscribed_at` is when its subscription was made, what Novu's subscription answers
    as its createdAt (not the topic's creation)."""
    # The subscription's row is the one the filter joins (F reuses its join): read as
    # the rows are, not a lookup per row (a count of a large topic counts 50,000).
    # The topic's client named too (its members are all of it), so that a member looked
    # up by subscriberId is found by the unique (client, subscriber_id) index, and a
    # count reads the client's subscribers: by the topic alone, PostgreSQL read every
    # client's (70 ms for a lookup, 90 ms for a count, over 200,000 of 20 clients).
    members = Subscriber.objects.filter(client_id=topic.client_id, topicsubscription__topic=topic)
    return _with_subscription(members)


def topic_member_named(*, topic: Topic, identifier: str) -> Subscriber | None:
    """The member (as topic_members gives it) whose subscription `identifier` names:
    the identifier it was given, else, of one given none, Novu's default
    (tk_{key}:si_{subscriberId}) or the {key}:{subscriberId} that norm answered before
    it kept identifiers, which its callers may have kept; else the subscription whose
    `_id` (<topic pk>:<subscriber pk>) it is, as Novu takes its internal id too. The
    one lookup of a subscription's GET, PATCH and unsubscribe: PATCH refused the `_id`
    that GET of the same URL found."""
    if not identifier:
        return None
    members = topic_members(topic=topic)
    named = members.filter(subscription_identifier=identifier).first()
    if named is not None:
        return named
    for unnamed in (default_subscription_identifier(topic.key, ""), f"{topic.key}:"):
        subscriber_id = identifier.removeprefix(unnamed)
        if subscriber_id != identifier:
            found = members.filter(subscriber_id=subscriber_id, subscription_identifier="")
            if (member := found.first()) is not None:
                return member
    pk = identifier.removeprefix(f"{topic.pk}:")
    if pk != identifier and (subscriber_pk := row_id(pk)) is not None:
        return members.filter(pk=subscriber_pk).first()
    return None


def topic_member_ids(*, topic: Topic, limit: int) -> list[str]:
    """The subscriberIds of a topic's first `limit` members, oldest subscriber first."""
    rows = TopicSubscription.objects.filter(topic=topic).order_by("subscriber_id")
    return list(rows.values_list("subscriber__subscriber_id", flat=True)[:limit])


def subscriber_topics(*, subscriber: Subscriber) -> QuerySet[Topic]:
    """The topics a subscriber is a member of, each with `subscribed_at`, as
    topic_members gives a topic's members (a subscriber has few: its foreign key's
    index reads them)."""
    return _with_subscription(Topic.objects.filter(topicsubscription__subscriber=subscriber))
