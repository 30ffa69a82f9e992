"""What the subscriber, topic and subscription views share: keyset pagination by cursor
(cursor_page) and its page's schema (cursor_page_of), the `{data}` wrapper, the query
parameters of a cursor list and of a create, a body validated, a string as Novu takes
one (StringField), a delete's acknowledgement, a topic's name as given and as shown, and
the 404 for a subscriber or topic another request deleted meanwhile."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, overload

from django.db.models import Q
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter
from rest_framework import serializers
from rest_framework.request import Request

from config.errors import ApiError
from config.paging import LIMIT_PARAMETER, capped_count, query_bool, query_limit, query_text
from subscribers import selectors
from subscribers.models import Subscriber, Topic


def fail_if_exists_given(request: Request) -> bool:
    """`?failIfExists=true`: a 409 whose body is also the object that exists (novu-py
    reads it as a SubscriberResponseDto or TopicResponseDto)."""
    return query_bool(request, "failIfExists") is True


def topic_name(topic: Topic) -> dict[str, str]:
    """`name`, left out when the topic has none, as Novu does: its schema takes no null
    there, and @novu/api refuses the whole answer for one."""
    return {"name": topic.name} if topic.name else {}


class StringField(serializers.CharField):
    """A string as Novu's IsString takes it: a number (`"firstName": 5`) is refused with
    its message, where DRF's CharField would store it as the text "5"."""

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            raise serializers.ValidationError(f"{self.field_name} must be a string")
        return super().to_internal_value(data)


def wrapped(name: str, output: serializers.BaseSerializer) -> type[serializers.Serializer]:
    return type(name, (serializers.Serializer,), {"data": output})


def cursor_page_of(name: str, item: type[serializers.Serializer]) -> type[serializers.Serializer]:
    return type(
        name,
        (serializers.Serializer,),
        {
            "data": item(many=True),
            "next": serializers.CharField(allow_null=True),
            "previous": serializers.CharField(allow_null=True),
            "totalCount": serializers.IntegerField(),
            "totalCountCapped": serializers.BooleanField(),
        },
    )


class AckResult(serializers.Serializer):
    acknowledged = serializers.BooleanField()


# A topic's name as its column holds it (SQLite would store a longer one as it came).
TOPIC_NAME_MAX = 255

FAIL_IF_EXISTS = OpenApiParameter(
    "failIfExists", OpenApiTypes.BOOL, description="409 instead of updating an existing one"
)
CURSOR_PARAMETERS = [
    LIMIT_PARAMETER,
    OpenApiParameter("after", description="the `next` cursor of the previous page"),
    OpenApiParameter("before", description="the `previous` cursor of the next page"),
    OpenApiParameter("orderDirection", enum=["ASC", "DESC"]),
    OpenApiParameter(
        "includeCursor", OpenApiTypes.BOOL, description="the page holds the cursor's item too"
    ),
    OpenApiParameter("orderBy", enum=["_id", "createdAt", "updatedAt"]),
]
# v1 lists page by `page`, as Novu's do, and read none of v2's cursor parameters:
# the v1 views inherit the v2 methods' schema, so those are taken out of theirs.
NOT_ON_V1 = [
    OpenApiParameter(name, exclude=True)
    for name in ("after", "before", "orderDirection", "includeCursor", "orderBy")
]


def validated(serializer_cls: type[serializers.Serializer], data: Any) -> serializers.Serializer:
    """`data` validated by `serializer_cls`; a 400 for a body that is no JSON object."""
    if not isinstance(data, dict):
        raise ApiError(400, "invalid_request", "The body must be a JSON object")
    serializer = serializer_cls(data=data)
    serializer.is_valid(raise_exception=True)
    return serializer


# Novu's `orderBy` of a cursor list, as the field norm orders by (then by id): ids grow
# with creation, and subscribers and topics keep when they last changed.
ORDER_BY = {"_id": "pk", "createdAt": "pk", "updatedAt": "updated_at"}


def cursor_page(
    request: Request,
    qs: Any,
    dto: Any,
    *,
    default_descending: bool = False,
    order_by: dict[str, str] = ORDER_BY,
) -> dict[str, Any]:
    """Keyset pagination by `orderBy` (`order_by` maps its names to fields), then by
    primary key: `after`/`before` are opaque (see _cursor_place). `default_descending`:
    the order when the request names no `orderDirection`. `includeCursor=true`: the page
    holds the cursor's item too, as Novu's does."""
    limit = query_limit(request)
    # Trimmed, as every choice in the query is (query_values): `orderDirection=%20DESC`
    # was read as no direction, the list in the other order; `orderBy=%20_id`, a 400.
    direction = query_text(request.query_params, "orderDirection").upper()
    descending = direction == "DESC" or (default_descending and direction != "ASC")
    field = order_by.get(query_text(request.query_params, "orderBy") or "_id")
    if field is None:
        message = f"must be one of {', '.join(order_by)}"
        raise ApiError(
            400,
            "invalid_query",
            f"'orderBy' {message}",
            [{"field": "orderBy", "message": message}],
        )
    or_equal = "e" if query_bool(request, "includeCursor") else ""
    total, capped = capped_count(qs)
    after, before = request.query_params.get("after"), request.query_params.get("before")
    if after or before:
        cursor, at = _cursor_place(qs, after or before, field)
        # Past the cursor in the list's order: below it after a descending cursor or
        # before an ascending one.
        op = "lt" if descending == bool(after) else "gt"
        if field == "pk":
            qs = qs.filter(**{f"pk__{op}{or_equal}": cursor})
        else:
            # The first condition says nothing the second does not; it is what lets the
            # (client, field, id) index start its scan at the cursor: without it a page
            # read and dropped every row before the cursor (100,000, 38 ms, halfway
            # through 200,000 subscribers).
            qs = qs.filter(
                Q(**{f"{field}__{op}e": at}),
                Q(**{f"{field}__{op}": at}) | Q(**{field: at, f"pk__{op}{or_equal}": cursor}),
            )
    backwards = bool(before) and not after
    keys = ["pk"] if field == "pk" else [field, "pk"]
    ascending = descending == backwards
    items = list(qs.order_by(*(k if ascending else f"-{k}" for k in keys))[: limit + 1])
    has_more = len(items) > limit
    items = items[:limit]
    if backwards:
        items.reverse()
    return {
        "data": [dto(i) for i in items],
        "next": _cursor(items[-1], field) if items and (has_more or backwards) else None,
        "previous": (
            _cursor(items[0], field) if items and (after or (backwards and has_more)) else None
        ),
        "totalCount": total,
        "totalCountCapped": capped,
    }


# A cursor: the item's id, as Novu's is; in an order by another field, a datetime, the
# id and the item's value of it then, in Unix microseconds ("<id>_<microseconds>").
_CURSOR_FORMAT = re.compile(r"(\d+)(?:_(-?\d+))?")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _cursor(item: Any, field: str) -> str:
    if field == "pk":
        return str(item.pk)
    return f"{item.pk}_{(getattr(item, field) - _EPOCH) // timedelta(microseconds=1)}"


def _cursor_place(qs: Any, raw: str, field: str) -> tuple[int, datetime | None]:
    """The id and the `field` value a cursor stands for. A page's `next` or `previous`
    carries the value, so the next page goes on from the place the last one ended
    even if that item was deleted since (it was a 400) or changed, moving in an order by
    updatedAt (the walk began again, or ended early). A bare id (Novu's cursor, or
    one a caller picked from a page) stands where its item is now."""
    match = _CURSOR_FORMAT.fullmatch(raw)
    if match is None:
        raise ApiError(400, "invalid_query", "invalid cursor")
    try:
        # int() refuses more than 4,300 digits (ValueError); timedelta and datetime, a
        # place beyond their range (OverflowError).
        pk = int(match[1])
        at = None if match[2] is None else _EPOCH + timedelta(microseconds=int(match[2]))
    except (ValueError, OverflowError) as exc:
        raise ApiError(400, "invalid_query", "invalid cursor") from exc
    if field == "pk":
        return pk, None
    if at is not None:
        return pk, at
    at = qs.filter(pk=pk).values_list(field, flat=True).first()
    if at is None:
        # A bare id says no place: its item is gone (or not in this list).
        raise ApiError(400, "invalid_query", "invalid cursor: no such item in the list")
    return pk, at


@contextlib.contextmanager
def not_deleted_meanwhile(name: str) -> Iterator[None]:
    """A subscriber or topic that another request deleted while this one changed it:
    the 404 this request would have had a moment later, not a 500."""
    try:
        yield
    except Subscriber.DoesNotExist:
        raise selectors.subscriber_not_found(name) from None
    except Topic.DoesNotExist:
        raise selectors.topic_not_found(name) from None


@overload
def topic_name_given(request: Request, *, required: Literal[True]) -> str: ...
@overload
def topic_name_given(request: Request, *, required: bool) -> str | None: ...
def topic_name_given(request: Request, *, required: bool) -> str | None:
    """The body's topic `name`, trimmed as POST /v2/topics (TopicInput) trims it: a
    rename or a subscribe stored " Sales " as sent. None when absent and not required.
    Past the column's length, PostgreSQL refused it with a 400 that named no field
    (invalid_value), and make run's SQLite stored it whole."""
    name = request.data.get("name") if isinstance(request.data, dict) else None
    if name is None and not required:
        return None
    if not isinstance(name, str) or len(name.strip()) > TOPIC_NAME_MAX:
        raise ApiError(
            400, "invalid_request", f"'name' must be a string of at most {TOPIC_NAME_MAX}"
        )
    return name.strip()
