"""Novu's list parameters, read the same way by every list endpoint.

Page lists (`page`, `limit`: activity, messages, feed, v1 subscribers and topics) and
cursor lists (`limit`, `after`, `before`: v2) share one reading of a number, one cap
and one error for a bad one.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from django.db.models import QuerySet
from django.http import QueryDict
from drf_spectacular.utils import OpenApiParameter
from rest_framework import serializers
from rest_framework.request import Request

from config.errors import ApiError

MAX_LIMIT = 100
# A cursor list counts at most this many rows and says `totalCountCapped` beyond, as
# Novu does, so each page of a large client's list does not count the whole table.
TOTAL_COUNT_CAP = 50_000
DEFAULT_LIMIT = 10
# Beyond this, page * limit overflows PostgreSQL's OFFSET.
MAX_QUERY_INT = 10**9


def query_int(
    request: Request, name: str, default: int, *, minimum: int = 0, maximum: int | None = None
) -> int:
    """A whole number from the query string, at least `minimum`: up to MAX_QUERY_INT,
    or any beyond `maximum` read as `maximum` (a page size: Novu's clients may ask for
    more than a page holds).

    novu-py sends numbers as floats (`limit=10.0`); anything else that is not a whole
    number in range is a 400 that names the parameter, and says the range it takes.
    Empty or white space is absent, as for a filter (query_values): `limit=%20` was a 400
    where `limit=` was the default and `limit=%2010` was 10.
    """
    raw = request.query_params.get(name, "").strip()
    if raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    upper = math.inf if maximum is not None else MAX_QUERY_INT
    if not (math.isfinite(value) and minimum <= value <= upper) or value != int(value):
        message = (
            f"must be a whole number from {minimum} to {MAX_QUERY_INT}"
            if maximum is None
            else f"must be a whole number of at least {minimum} (above {maximum} reads as "
            f"{maximum})"
        )
        raise ApiError(
            400, "invalid_query", f"'{name}' {message}", [{"field": name, "message": message}]
        )
    return min(int(value), maximum) if maximum is not None else int(value)


def query_bool(request: Request, name: str) -> bool | None:
    """`true` or `false` (any case) from the query string; None when absent or empty.
    Anything else is a 400 that names the parameter: read as absent, `read=0` listed
    the read notifications with the unread (Novu reads it as false, any value but
    `true`; a caller meaning "no" by it gets that, meaning "yes" the opposite). Trimmed,
    as a number and a filter are: white space alone is absent."""
    raw = request.query_params.get(name, "").strip().lower()
    if raw in ("", "true", "false"):
        return None if raw == "" else raw == "true"
    message = "must be true or false"
    raise ApiError(
        400, "invalid_query", f"'{name}' {message}", [{"field": name, "message": message}]
    )


def query_values(params: QueryDict, name: str) -> list[str]:
    """The values the query string gives `name`, each trimmed, empty ones (or white
    space) left out: `contextKeys=` (what a form, a query builder or novu-py given `[""]`
    sends for an unset field) asks for nothing, as an absent parameter does. Trimmed as
    a text filter is (query_text, a serializer's CharField): a choice's `channel=%20email`
    was a 400, "not a valid choice", where `subscriberId=%20ann` found ann."""
    return [value.strip() for value in params.getlist(name) if value.strip()]


def query_text(params: QueryDict, name: str) -> str:
    """An exact-match filter's value (a subscriberId, a topic key, an email), trimmed as
    the API stores such a value and as the filter serializers read one: `key=%20news`
    found no "news". "" when absent or empty: no filter."""
    return params.get(name, "").strip()


def query_given(params: QueryDict) -> QueryDict:
    """The query string's values trimmed, without its empty ones (query_values), for a
    filter serializer: DRF leaves out an empty `subscriberId=`, but refused an empty
    `transactionId=` (a repeatable one) or `subscriberId=%20` as blank, a 400; and its
    ChoiceField, unlike its CharField, does not trim."""
    given = QueryDict(mutable=True)
    for name in params:
        if values := query_values(params, name):
            given.setlist(name, values)
    return given


def query_filters_given(params: QueryDict, names: Iterable[str]) -> list[str]:
    """Those of `names` the query string gives a value (query_values), so that a filter
    norm refuses is refused only when it would narrow the list."""
    return [name for name in names if query_values(params, name)]


def query_limit(request: Request, name: str = "limit", default: int = DEFAULT_LIMIT) -> int:
    """A page size: 1 or more, capped at MAX_LIMIT."""
    return query_int(request, name, default, minimum=1, maximum=MAX_LIMIT)


def capped_count(queryset: QuerySet[Any]) -> tuple[int, bool]:
    """`(totalCount, totalCountCapped)`: the rows counted, at most TOTAL_COUNT_CAP.
    The slice makes it `SELECT COUNT(*) FROM (... LIMIT cap + 1)`."""
    total = queryset.order_by()[: TOTAL_COUNT_CAP + 1].count()
    return min(total, TOTAL_COUNT_CAP), total > TOTAL_COUNT_CAP


def paginate(
    request: Request, queryset: QuerySet[Any], *, limit: int | None = None
) -> tuple[list[Any], dict[str, Any]]:
    """Novu's page/limit pagination of an ordered queryset: one page of rows and
    `{page, pageSize, totalCount, hasMore}`. `limit`: the page size, when the
    endpoint reads it differently (v1 topics take `pageSize` too)."""
    page = query_int(request, "page", 0)
    limit = limit or query_limit(request)
    total = queryset.count()
    rows = list(queryset[page * limit : (page + 1) * limit])
    meta = {
        "page": page,
        "pageSize": limit,
        "totalCount": total,
        "hasMore": (page + 1) * limit < total,
    }
    return rows, meta


# As query_int reads them: a limit beyond MAX_LIMIT is no error, it is read as MAX_LIMIT.
LIMIT_PARAMETER = OpenApiParameter(
    "limit",
    {"type": "integer", "minimum": 1},
    OpenApiParameter.QUERY,
    description=f"the page size (default {DEFAULT_LIMIT}); above {MAX_LIMIT} reads as {MAX_LIMIT}",
)
PAGE_PARAMETERS = [
    OpenApiParameter(
        "page",
        {"type": "integer", "minimum": 0, "maximum": MAX_QUERY_INT},
        OpenApiParameter.QUERY,
        description="0-based",
    ),
    LIMIT_PARAMETER,
]


def page_of(name: str, item: serializers.BaseSerializer) -> type[serializers.Serializer]:
    """The OpenAPI shape of a `paginate` answer: `{data: [item], page, pageSize, ...}`."""
    fields = {
        "data": item,
        "page": serializers.IntegerField(),
        "pageSize": serializers.IntegerField(),
        "totalCount": serializers.IntegerField(),
        "hasMore": serializers.BooleanField(),
    }
    return type(name, (serializers.Serializer,), fields)
