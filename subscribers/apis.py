"""Subscribers and topics, on Novu's v1 and v2 paths (NOVU_API.md).

novu-py speaks v2 (cursor lists, PATCH, `{subscriptions}` or `{subscriberIds}`); novu
1.14 speaks v1 (page lists, PUT with nulls for unset fields, `{subscribers}`).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, overload

from django.db.models import Q
from django.utils import timezone
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_field,
    extend_schema_view,
)
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from config.dates import TimestampField, iso_z
from config.errors import ApiError, ErrorSerializer, error_responses, validation_message
from config.paging import (
    LIMIT_PARAMETER,
    PAGE_PARAMETERS,
    capped_count,
    page_of,
    paginate,
    query_bool,
    query_filters_given,
    query_limit,
    query_text,
)
from subscribers import recipients, selectors, services
from subscribers.models import Subscriber, Topic, default_subscription_identifier
from subscribers.recipients import INLINE_FIELDS, SubscriberEmailValidator


def _fail_if_exists(request: Request) -> bool:
    """`?failIfExists=true`: a 409 whose body is also the object that exists (novu-py
    reads it as a SubscriberResponseDto or TopicResponseDto)."""
    return query_bool(request, "failIfExists") is True


def subscriber_dto(subscriber: Subscriber) -> dict[str, Any]:
    """A subscriber as Novu's SubscriberResponseDto: an unset field null, not "", and the
    client standing for Novu's organization and environment."""
    return {
        "_id": str(subscriber.pk),
        "subscriberId": subscriber.subscriber_id,
        "firstName": subscriber.first_name or None,
        "lastName": subscriber.last_name or None,
        "email": subscriber.email or None,
        "phone": subscriber.phone or None,
        "avatar": subscriber.avatar or None,
        "locale": subscriber.locale or None,
        "timezone": subscriber.timezone or None,
        "data": subscriber.data or None,
        "channels": [],
        "_organizationId": str(subscriber.client_id),
        "_environmentId": str(subscriber.client_id),
        "deleted": False,
        "isOnline": subscriber.is_online,
        # Left out until the subscriber first goes offline, as Novu leaves it unset.
        **({"lastOnlineAt": iso_z(subscriber.last_online_at)} if subscriber.last_online_at else {}),
        "createdAt": iso_z(subscriber.created_at),
        "updatedAt": iso_z(subscriber.updated_at),
    }


def _topic_name(topic: Topic) -> dict[str, str]:
    """`name`, left out when the topic has none, as Novu does: its schema takes no null
    there, and @novu/api refuses the whole answer for one."""
    return {"name": topic.name} if topic.name else {}


def topic_dto(topic: Topic) -> dict[str, Any]:
    """A topic as Novu's TopicResponseDto (the client as its organization and environment)."""
    return {
        "_id": str(topic.pk),
        "key": topic.key,
        **_topic_name(topic),
        "_organizationId": str(topic.client_id),
        "_environmentId": str(topic.client_id),
        "createdAt": iso_z(topic.created_at),
        "updatedAt": iso_z(topic.updated_at),
    }


class StringField(serializers.CharField):
    """A string as Novu's IsString takes it: a number (`"firstName": 5`) is refused with
    its message, where DRF's CharField would store it as the text "5"."""

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            raise serializers.ValidationError(f"{self.field_name} must be a string")
        return super().to_internal_value(data)


class SubscriberFields(serializers.Serializer):
    firstName = StringField(max_length=200, required=False, allow_null=True, allow_blank=True)
    lastName = StringField(max_length=200, required=False, allow_null=True, allow_blank=True)
    email = StringField(
        max_length=254,
        required=False,
        allow_null=True,
        allow_blank=True,  # "" clears it
        validators=[SubscriberEmailValidator()],
    )
    phone = StringField(max_length=64, required=False, allow_null=True, allow_blank=True)
    avatar = StringField(max_length=500, required=False, allow_null=True, allow_blank=True)
    locale = StringField(max_length=32, required=False, allow_null=True, allow_blank=True)
    timezone = StringField(max_length=64, required=False, allow_null=True, allow_blank=True)
    data = serializers.DictField(required=False, allow_null=True)

    # As Novu's DTOs check them (IsLocale, IsTimeZone), with its 422; "" clears either.
    def validate_locale(self, value: str | None) -> str | None:
        if value and not recipients.locale_valid(value):
            raise serializers.ValidationError(recipients.LOCALE_MESSAGE)
        return value

    def validate_timezone(self, value: str | None) -> str | None:
        if not value:
            return value
        name = recipients.timezone_name(value)
        if name is None:
            raise serializers.ValidationError(recipients.TIMEZONE_MESSAGE)
        return name

    def model_values(self, *, nulls_clear: bool) -> dict[str, Any]:
        """Model fields from the validated body. Absent stays untouched; null clears a
        field only where the client means it (v2 PATCH), not where it sends null for
        every unset field (novu 1.14's PUT)."""
        values = {INLINE_FIELDS[k]: v for k, v in self.validated_data.items() if k in INLINE_FIELDS}
        return values if nulls_clear else {k: v for k, v in values.items() if v is not None}


class SubscriberCreateInput(SubscriberFields):
    subscriberId = StringField(max_length=255)


# Response shapes and parameters, for the OpenAPI schema only: the views answer with dicts.


class SubscriberOutput(serializers.Serializer):
    _id = serializers.CharField()
    subscriberId = serializers.CharField()
    firstName = serializers.CharField(allow_null=True)
    lastName = serializers.CharField(allow_null=True)
    email = serializers.CharField(allow_null=True)
    phone = serializers.CharField(allow_null=True)
    avatar = serializers.CharField(allow_null=True)
    locale = serializers.CharField(allow_null=True)
    timezone = serializers.CharField(allow_null=True)
    data = serializers.DictField(allow_null=True)
    channels = serializers.ListField(child=serializers.DictField())
    _organizationId = serializers.CharField()
    _environmentId = serializers.CharField()
    deleted = serializers.BooleanField()
    isOnline = serializers.BooleanField()
    lastOnlineAt = TimestampField(
        required=False, help_text="when it last went offline; left out until it first does"
    )
    createdAt = TimestampField()
    updatedAt = TimestampField()


class TopicOutput(serializers.Serializer):
    _id = serializers.CharField()
    key = serializers.CharField()
    name = serializers.CharField(required=False, help_text="left out when it has none")
    _organizationId = serializers.CharField()
    _environmentId = serializers.CharField()
    createdAt = TimestampField()
    updatedAt = TimestampField()


class TopicDetailOutput(TopicOutput):
    subscribers = serializers.ListField(
        child=serializers.CharField(), help_text="subscriberIds of the first 1000 members"
    )


class SubscriptionOutput(serializers.Serializer):
    class TopicRef(serializers.Serializer):
        _id = serializers.CharField()
        key = serializers.CharField()
        name = serializers.CharField(required=False, help_text="left out when it has none")

    class SubscriberRef(serializers.Serializer):
        _id = serializers.CharField()
        subscriberId = serializers.CharField()
        firstName = serializers.CharField(allow_null=True)
        lastName = serializers.CharField(allow_null=True)
        email = serializers.CharField(allow_null=True)
        avatar = serializers.CharField(allow_null=True)

    _id = serializers.CharField()
    identifier = serializers.CharField(
        help_text="as its subscribe gave it; by default `tk_<topic key>:si_<subscriberId>`"
    )
    name = serializers.CharField(required=False, help_text="left out when it has none")
    topic = TopicRef()
    subscriber = SubscriberRef()
    createdAt = TimestampField()
    updatedAt = TimestampField()


def _wrapped(name: str, output: serializers.BaseSerializer) -> type[serializers.Serializer]:
    return type(name, (serializers.Serializer,), {"data": output})


def _cursor_page(name: str, item: type[serializers.Serializer]) -> type[serializers.Serializer]:
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


SubscriberPageV1 = page_of("SubscriberPageV1", SubscriberOutput(many=True))
TopicPageV1 = page_of("TopicPageV1", TopicOutput(many=True))


class SubscriberBulkRequest(serializers.Serializer):
    subscribers = serializers.ListField(child=SubscriberCreateInput(), max_length=500)


class SubscriberBulkResult(serializers.Serializer):
    class BulkSubscriberRef(serializers.Serializer):
        subscriberId = serializers.CharField()

    class BulkSubscriberFailure(serializers.Serializer):
        subscriberId = serializers.CharField(
            required=False, help_text="left out when the entry names none"
        )
        message = serializers.CharField()

    created = BulkSubscriberRef(many=True)
    updated = BulkSubscriberRef(many=True)
    failed = BulkSubscriberFailure(many=True)


class DeletedResult(serializers.Serializer):
    acknowledged = serializers.BooleanField()
    status = serializers.CharField()


class AckResult(serializers.Serializer):
    acknowledged = serializers.BooleanField()


# A topic's name as its column holds it (SQLite would store a longer one as it came).
TOPIC_NAME_MAX = 255
# Inline: as a serializer, drf-spectacular would make `name` optional on PATCH.
_TOPIC_RENAME = {
    "application/json": {
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": TOPIC_NAME_MAX}},
        "required": ["name"],
    }
}


class DeleteWithBodySchema(AutoSchema):
    """Documents the JSON body of a DELETE (novu-py sends one to unsubscribe), which
    drf-spectacular only does for POST, PUT and PATCH."""

    def _get_request_body(self, direction: str = "request") -> dict[str, Any] | None:
        if self.method != "DELETE":
            return super()._get_request_body(direction)
        self.method = "POST"
        try:
            return super()._get_request_body(direction)
        finally:
            self.method = "DELETE"


@extend_schema_field(
    {
        "type": "array",
        "maxItems": 1000,
        "items": {
            "anyOf": [
                {"type": "string", "description": "a subscriberId"},
                {
                    "type": "object",
                    "properties": {
                        "subscriberId": {
                            "type": "string",
                            "description": "required, but by an unsubscribe's identifier",
                        },
                        "identifier": {
                            "type": "string",
                            "maxLength": 255,
                            "description": "the subscription's (on subscribe; by default"
                            " `tk_<topic key>:si_<subscriberId>`); an unsubscribe may name"
                            " a subscription by it alone",
                        },
                        "name": {
                            "type": "string",
                            "maxLength": 255,
                            "description": "the subscription's (on subscribe)",
                        },
                    },
                },
            ]
        },
    }
)
class SubscriptionsField(serializers.JSONField):
    """v2's members as novu-py 3.19 names them: read by `_subscription_ids`."""


class SubscriberIdsRequest(serializers.Serializer):
    subscriptions = SubscriptionsField(required=False)
    subscriberIds = serializers.ListField(
        child=serializers.CharField(),
        max_length=1000,
        required=False,
        help_text="deprecated by novu-py for `subscriptions`",
    )
    name = StringField(max_length=255, required=False, help_text="the topic's name (on subscribe)")


class SubscribersV1Request(serializers.Serializer):
    subscribers = serializers.ListField(child=serializers.CharField(), max_length=1000)


class SubscriptionsMeta(serializers.Serializer):
    totalCount = serializers.IntegerField()
    successful = serializers.IntegerField()
    failed = serializers.IntegerField()


class SubscriptionsCreated(serializers.Serializer):
    class SubscriptionFailure(serializers.Serializer):
        subscriberId = serializers.CharField()
        code = serializers.CharField()
        message = serializers.CharField()

    data = SubscriptionOutput(many=True)
    meta = SubscriptionsMeta()
    errors = SubscriptionFailure(
        many=True, required=False, help_text="an id not found each; left out when none"
    )


class SubscriptionsRemoved(serializers.Serializer):
    data = SubscriptionOutput(many=True, help_text="the subscriptions it removed")
    meta = SubscriptionsMeta()
    errors = SubscriptionsCreated.SubscriptionFailure(
        many=True,
        required=False,
        help_text="why each id was not removed (SUBSCRIBER_NOT_FOUND or"
        " SUBSCRIPTION_NOT_FOUND); left out when every one was",
    )


class TopicSubscribersV1Result(serializers.Serializer):
    class TopicSubscribersV1Failed(serializers.Serializer):
        notFound = serializers.ListField(child=serializers.CharField(), required=False)

    succeeded = serializers.ListField(child=serializers.CharField())
    failed = TopicSubscribersV1Failed()


SubscriberResponse = _wrapped("SubscriberResponse", SubscriberOutput())
TopicResponse = _wrapped("TopicResponse", TopicOutput())
SubscriptionResponse = _wrapped("SubscriptionResponse", SubscriptionOutput())

_FAIL_IF_EXISTS = OpenApiParameter(
    "failIfExists", OpenApiTypes.BOOL, description="409 instead of updating an existing one"
)
_CURSOR = [
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
_NOT_ON_V1 = [
    OpenApiParameter(name, exclude=True)
    for name in ("after", "before", "orderDirection", "includeCursor", "orderBy")
]
_SUBSCRIBER_FILTERS = [
    OpenApiParameter("subscriberId", description="exact match"),
    OpenApiParameter("email", description="exact match, case-insensitive"),
    OpenApiParameter("phone", description="exact match"),
    OpenApiParameter("name", description="the full name ('first last') or a part of it, any case"),
]


def _validated(serializer_cls: type[serializers.Serializer], data: Any) -> serializers.Serializer:
    """`data` validated by `serializer_cls`; a 400 for a body that is no JSON object."""
    if not isinstance(data, dict):
        raise ApiError(400, "invalid_request", "The body must be a JSON object")
    serializer = serializer_cls(data=data)
    serializer.is_valid(raise_exception=True)
    return serializer


@extend_schema(tags=["Subscribers"])
class SubscriberListApi(APIView):
    """POST creates (or updates); GET lists: v2 by cursor, v1 by page."""

    version = 2

    @extend_schema(
        operation_id="v2_subscribers_create",
        summary="Create a subscriber (or update the existing one)",
        parameters=[_FAIL_IF_EXISTS],
        request=SubscriberCreateInput,
        responses={201: SubscriberResponse, **error_responses(400, 422, 409)},
    )
    def post(self, request: Request) -> Response:
        body = _validated(SubscriberCreateInput, request.data)
        subscriber_id = body.validated_data["subscriberId"]
        # Told by the create itself, not a look first: two at once both looked before
        # either created it, and the second overwrote the first's subscriber with a 201.
        fail_if_exists = _fail_if_exists(request)
        subscriber, created = services.subscriber_create(
            client=request.user,
            subscriber_id=subscriber_id,
            values=body.model_values(nulls_clear=False),
            update=not fail_if_exists,
        )
        if fail_if_exists and not created:
            raise ApiError(
                409,
                "subscriber_exists",
                f"Subscriber '{subscriber_id}' already exists",
                body=subscriber_dto(subscriber),
            )
        return Response({"data": subscriber_dto(subscriber)}, status=201)

    @extend_schema(
        operation_id="v2_subscribers_list",
        summary="List subscribers by cursor",
        parameters=[*_CURSOR, *_SUBSCRIBER_FILTERS],
        responses={
            200: _cursor_page("SubscriberCursorPage", SubscriberOutput),
            **error_responses(400),
        },
    )
    def get(self, request: Request) -> Response:
        qs = selectors.subscriber_search(client_id=request.user.pk, filters=request.query_params)
        if self.version == 1:
            items, meta = paginate(request, qs.order_by("pk"))
            return Response({**meta, "data": [subscriber_dto(s) for s in items]})
        # Novu lists subscribers newest first unless asked for ASC.
        return Response(cursor_page(request, qs, subscriber_dto, default_descending=True))


# Novu's `orderBy` of a cursor list, as the field norm orders by (then by id): ids grow
# with creation, and subscribers and topics keep when they last changed.
ORDER_BY = {"_id": "pk", "createdAt": "pk", "updatedAt": "updated_at"}
# A subscription's are when it was made (its id and both dates in Novu's), not its
# subscriber's id: one created long ago and subscribed today came last of newest first.
SUBSCRIPTION_ORDER_BY = dict.fromkeys(ORDER_BY, "subscribed_at")


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


@extend_schema_view(
    post=extend_schema(operation_id="v1_subscribers_create"),
    get=extend_schema(
        operation_id="v1_subscribers_list",
        summary="List subscribers by page",
        parameters=[*PAGE_PARAMETERS, *_SUBSCRIBER_FILTERS, *_NOT_ON_V1],
        responses={200: SubscriberPageV1, **error_responses(400)},
    ),
)
class SubscriberListV1Api(SubscriberListApi):
    version = 1


@extend_schema(tags=["Subscribers"])
class SubscriberDetailApi(APIView):
    @extend_schema(
        summary="Get a subscriber", responses={200: SubscriberResponse, **error_responses(404)}
    )
    def get(self, request: Request, subscriber_id: str) -> Response:
        subscriber = selectors.subscriber_get(
            client_id=request.user.pk, subscriber_id=subscriber_id
        )
        return Response({"data": subscriber_dto(subscriber)})

    @extend_schema(
        summary="Update a subscriber; null clears a field",
        request=SubscriberFields,
        responses={200: SubscriberResponse, **error_responses(400, 422, 404)},
    )
    def patch(self, request: Request, subscriber_id: str) -> Response:
        return self._update(request, subscriber_id, nulls_clear=True)

    @extend_schema(
        summary="Update a subscriber; null leaves a field as it is (v1: an unknown one is a 400)",
        request=SubscriberFields,
        responses={200: SubscriberResponse, **error_responses(400, 422, 404)},
    )
    def put(self, request: Request, subscriber_id: str) -> Response:
        # novu 1.14 sends null for every field it was not given: null leaves it alone.
        try:
            return self._update(request, subscriber_id, nulls_clear=False)
        except ApiError as exc:
            if exc.code != "subscriber_not_found" or not request.path_info.startswith("/v1/"):
                raise
            # Novu's v1 update refuses a subscriber it does not find with a 400 (an
            # ApiException in UpdateSubscriber), where its get and delete answer 404.
            raise ApiError(400, exc.code, exc.message) from None

    def _update(self, request: Request, subscriber_id: str, *, nulls_clear: bool) -> Response:
        subscriber = selectors.subscriber_get(
            client_id=request.user.pk, subscriber_id=subscriber_id
        )
        body = _validated(SubscriberFields, request.data)
        with _not_deleted_meanwhile(subscriber_id):
            subscriber = services.subscriber_update(
                subscriber=subscriber, values=body.model_values(nulls_clear=nulls_clear)
            )
        return Response({"data": subscriber_dto(subscriber)})

    @extend_schema(
        summary="Delete a subscriber",
        responses={200: _wrapped("SubscriberDeleted", DeletedResult()), **error_responses(404)},
    )
    def delete(self, request: Request, subscriber_id: str) -> Response:
        subscriber = selectors.subscriber_get(
            client_id=request.user.pk, subscriber_id=subscriber_id
        )
        services.subscriber_delete(subscriber=subscriber)
        return Response({"data": {"acknowledged": True, "status": "deleted"}})


class OnlineStatusInput(serializers.Serializer):
    isOnline = serializers.BooleanField()


@extend_schema(tags=["Subscribers"])
class SubscriberOnlineStatusApi(APIView):
    """PATCH /v1/subscribers/{id}/online-status: novu 1.14's online_status and novu-py's
    subscribers.properties.update_online_flag."""

    @extend_schema(
        operation_id="v1_subscribers_online_status",
        summary="Set a subscriber online or offline (norm only keeps the flag)",
        request=OnlineStatusInput,
        responses={200: SubscriberResponse, **error_responses(404, 422)},
    )
    def patch(self, request: Request, subscriber_id: str) -> Response:
        subscriber = selectors.subscriber_get(
            client_id=request.user.pk, subscriber_id=subscriber_id
        )
        data = OnlineStatusInput(data=request.data)
        data.is_valid(raise_exception=True)
        online = data.validated_data["isOnline"]
        # As Novu's UpdateSubscriberOnlineFlag: going offline says when.
        values: dict[str, Any] = {"is_online": online}
        if not online:
            values["last_online_at"] = timezone.now()
        with _not_deleted_meanwhile(subscriber_id):
            subscriber = services.subscriber_update(subscriber=subscriber, values=values)
        return Response({"data": subscriber_dto(subscriber)})


_BULK_NAMED = 'the subscriber whose subscriberId is "bulk"'


@extend_schema_view(
    get=extend_schema(summary=f"Get {_BULK_NAMED}"),
    put=extend_schema(summary=f"Update {_BULK_NAMED}; null leaves a field as it is"),
    patch=extend_schema(summary=f"Update {_BULK_NAMED}; null clears a field"),
    delete=extend_schema(summary=f"Delete {_BULK_NAMED}"),
)
class SubscriberBulkApi(SubscriberDetailApi):
    """POST creates in bulk; the other methods are /v1/subscribers/{subscriber_id}'s for
    the subscriber "bulk" (urls.py names it), as Novu routes by method: they were a 405,
    and novu 1.14 could not get, update or delete a subscriber of that id."""

    @extend_schema(
        operation_id="v1_subscribers_bulk",
        tags=["Subscribers"],
        summary="Create or update up to 500 subscribers; each succeeds or fails on its own",
        request=SubscriberBulkRequest,
        responses={
            201: _wrapped("SubscriberBulkResponse", SubscriberBulkResult()),
            **error_responses(400),
        },
    )
    def post(self, request: Request, subscriber_id: str = "bulk") -> Response:
        items = request.data.get("subscribers") if isinstance(request.data, dict) else None
        if not isinstance(items, list) or len(items) > 500:
            raise ApiError(400, "invalid_request", "'subscribers' must be a list of at most 500")
        created: list[dict[str, Any]] = []
        updated: list[dict[str, Any]] = []
        failed: list[dict[str, Any]] = []
        for item in items:
            serializer = SubscriberCreateInput(data=item if isinstance(item, dict) else {})
            if not serializer.is_valid():
                given = item.get("subscriberId") if isinstance(item, dict) else None
                message = validation_message(serializers.ValidationError(serializer.errors))
                # None to name is left out, as Novu leaves it: its schema takes no null
                # there, and @novu/api refuses the whole answer for one.
                named = {"subscriberId": given} if isinstance(given, str) else {}
                failed.append({**named, "message": message})
                continue
            subscriber_id = serializer.validated_data["subscriberId"]
            try:
                subscriber, was_created = services.subscriber_create(
                    client=request.user,
                    subscriber_id=subscriber_id,
                    values=serializer.model_values(nulls_clear=False),
                )
            except ApiError as exc:
                failed.append({"subscriberId": subscriber_id, "message": exc.message})
                continue
            (created if was_created else updated).append({"subscriberId": subscriber.subscriber_id})
        return Response(
            {"data": {"created": created, "updated": updated, "failed": failed}}, status=201
        )


class TopicInput(serializers.Serializer):
    key = StringField(max_length=255)
    name = StringField(max_length=255, required=False, allow_blank=True, allow_null=True)


@extend_schema(tags=["Topics"])
class TopicListApi(APIView):
    version = 2

    @extend_schema(
        operation_id="v2_topics_create",
        summary="Create a topic (or rename the existing one)",
        parameters=[_FAIL_IF_EXISTS],
        request=TopicInput,
        responses={
            201: OpenApiResponse(TopicResponse, description="created"),
            200: OpenApiResponse(TopicResponse, description="it existed; updated"),
            **error_responses(400, 422, 409),
        },
    )
    def post(self, request: Request) -> Response:
        body = _validated(TopicInput, request.data).validated_data
        # Told by the upsert, as a subscriber's. Novu's v1 creates only: a key taken is
        # its 409, the topic's name kept (novu 1.14 raises for it).
        fail_if_exists = self.version == 1 or _fail_if_exists(request)
        topic, created = services.topic_upsert(
            client=request.user, key=body["key"], name=body.get("name"), update=not fail_if_exists
        )
        if fail_if_exists and not created:
            raise ApiError(
                409, "topic_exists", f"Topic '{body['key']}' already exists", body=topic_dto(topic)
            )
        return Response({"data": topic_dto(topic)}, status=201 if created else 200)

    @extend_schema(
        operation_id="v2_topics_list",
        summary="List topics by cursor",
        parameters=[
            *_CURSOR,
            OpenApiParameter("key", description="exact match"),
            OpenApiParameter("name", description="part of the name, any case"),
        ],
        responses={200: _cursor_page("TopicCursorPage", TopicOutput), **error_responses(400)},
    )
    def get(self, request: Request) -> Response:
        qs = Topic.objects.filter(client=request.user)
        if key := query_text(request.query_params, "key"):
            qs = qs.filter(key=key)
        if request.query_params.get("name"):
            qs = qs.filter(name__icontains=request.query_params["name"])
        if self.version == 1:
            limit = query_limit(request, "pageSize", query_limit(request))
            items, meta = paginate(request, qs.order_by("pk"), limit=limit)
            return Response({**meta, "data": [topic_dto(t) for t in items]})
        # Novu lists topics newest first unless asked for ASC.
        return Response(cursor_page(request, qs, topic_dto, default_descending=True))


@extend_schema_view(
    post=extend_schema(
        operation_id="v1_topics_create",
        responses={201: TopicResponse, **error_responses(400, 422, 409)},
    ),
    get=extend_schema(
        operation_id="v1_topics_list",
        summary="List topics by page",
        parameters=[
            *PAGE_PARAMETERS,
            OpenApiParameter("pageSize", OpenApiTypes.INT, description="overrides limit"),
            OpenApiParameter("key", description="exact match"),
            *_NOT_ON_V1,
        ],
        responses={200: TopicPageV1, **error_responses(400)},
    ),
)
class TopicListV1Api(TopicListApi):
    version = 1


@extend_schema(tags=["Topics"])
class TopicDetailApi(APIView):
    version = 2

    @extend_schema(
        summary="Get a topic (its members: GET /v2/topics/{key}/subscriptions)",
        responses={200: TopicResponse, **error_responses(404)},
    )
    def get(self, request: Request, key: str) -> Response:
        topic = selectors.topic_get(client_id=request.user.pk, key=key)
        dto = topic_dto(topic)
        if self.version == 1:
            # novu 1.14 reads Novu v1's member list; v2's topic has none (novu-py pages
            # them). In subscriber order, which the (topic, subscriber) index serves.
            dto["subscribers"] = selectors.topic_member_ids(topic=topic, limit=1000)
        return Response({"data": dto})

    @extend_schema(
        summary="Rename a topic",
        request=_TOPIC_RENAME,
        responses={200: TopicResponse, **error_responses(400, 404)},
    )
    def patch(self, request: Request, key: str) -> Response:
        topic = selectors.topic_get(client_id=request.user.pk, key=key)
        name = _topic_name_given(request, required=True)
        with _not_deleted_meanwhile(key):
            topic = services.topic_rename(topic=topic, name=name)
        return Response({"data": topic_dto(topic)})

    @extend_schema(
        summary="Delete a topic",
        responses={200: _wrapped("TopicDeleted", AckResult()), **error_responses(404)},
    )
    def delete(self, request: Request, key: str) -> Response:
        topic = selectors.topic_get(client_id=request.user.pk, key=key)
        # Novu's v1 deletes only a topic without members (its v2 removes them too).
        services.topic_delete(topic=topic, only_if_empty=self.version == 1)
        return Response({"data": {"acknowledged": True}})


@extend_schema_view(
    get=extend_schema(
        summary="Get a topic and its first 1000 members, oldest subscriber first",
        responses={
            200: _wrapped("TopicDetailResponse", TopicDetailOutput()),
            **error_responses(404),
        },
    ),
    delete=extend_schema(
        summary="Delete a topic that has no members",
        responses={
            200: _wrapped("TopicDeletedV1", AckResult()),
            **error_responses(404, 409),
        },
    ),
)
class TopicDetailV1Api(TopicDetailApi):
    version = 1


@contextlib.contextmanager
def _not_deleted_meanwhile(name: str) -> Iterator[None]:
    """A subscriber or topic that another request deleted while this one changed it:
    the 404 this request would have had a moment later, not a 500."""
    try:
        yield
    except Subscriber.DoesNotExist:
        raise selectors.subscriber_not_found(name) from None
    except Topic.DoesNotExist:
        raise selectors.topic_not_found(name) from None


@overload
def _topic_name_given(request: Request, *, required: Literal[True]) -> str: ...
@overload
def _topic_name_given(request: Request, *, required: bool) -> str | None: ...
def _topic_name_given(request: Request, *, required: bool) -> str | None:
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


def _body_ids(request: Request, field: str) -> list[str]:
    """The subscriberIds listed under `field` of the body (`_checked_ids`)."""
    ids = request.data.get(field) if isinstance(request.data, dict) else None
    return _checked_ids(ids, field)


def _subscription_ids(request: Request) -> list[str]:
    """v2's members: `subscriptions` (subscriberIds, or objects naming one), the field
    novu-py 3.19 sends, or `subscriberIds`, which it deprecates for it."""
    body = request.data if isinstance(request.data, dict) else {}
    if body.get("subscriptions") is None:
        return _body_ids(request, "subscriberIds")
    items = body["subscriptions"]
    if isinstance(items, list):
        items = [i.get("subscriberId") if isinstance(i, dict) else i for i in items]
    return _checked_ids(items, "subscriptions")


def _subscriptions_named(request: Request) -> dict[str, services.SubscriptionNamed]:
    """The `identifier` and `name` that a subscribe's `subscriptions` objects give
    their subscriberIds (which _subscription_ids has checked): the first mention's of
    a subscriberId named twice, as Novu reads them."""
    items = request.data.get("subscriptions") if isinstance(request.data, dict) else None
    named: dict[str, services.SubscriptionNamed] = {}
    for item in items if isinstance(items, list) else []:
        if isinstance(item, dict):
            given = services.SubscriptionNamed(
                identifier=_subscription_text(item, "identifier"),
                name=_subscription_text(item, "name"),
            )
            named.setdefault(item["subscriberId"].strip(), given)
        else:
            named.setdefault(item.strip(), services.SubscriptionNamed())
    return named


def _subscription_text(item: dict[str, Any], field: str, within: str = "subscriptions") -> str:
    """A subscription's `identifier` or `name` as given, trimmed; "" if none."""
    value = item.get(field)
    if value is None:
        return ""
    if not isinstance(value, str) or len(value.strip()) > 255:
        where = f"'{within}': a subscription's {field}" if within else f"'{field}'"
        raise ApiError(
            400, "invalid_request", f"{where} must be a string of at most 255 characters"
        )
    return value.strip()


def _unsubscriptions(request: Request) -> tuple[list[str], list[str]]:
    """What an unsubscribe names: subscriberIds, as a subscribe does, and
    subscriptions by their identifier: a `subscriptions` object with an `identifier`
    and no subscriberId, a null one as absent as _members_given reads a null list (given both,
    Novu removes the subscriber's every subscription of the topic: norm's one). A body
    naming neither list (novu-py sends `{}` for its request DTO left empty: both are
    optional) is nothing to remove, a 200 in Novu."""
    body = request.data if isinstance(request.data, dict) else None
    if body is not None and not _members_given(body):
        return [], []
    items = body.get("subscriptions") if body is not None else None
    if not isinstance(items, list):
        return _subscription_ids(request), []
    if len(items) > 1000:
        _checked_ids(items, "subscriptions")  # refused, as too many
    identifiers: list[str] = []
    named: list[Any] = []
    for item in items:
        identifier = item.get("identifier") if isinstance(item, dict) else None
        if isinstance(identifier, str) and identifier.strip() and item.get("subscriberId") is None:
            # Trimmed, as a subscriberId is: " news:ann" named no subscription of "news".
            identifiers.append(identifier.strip())
        else:
            named.append(item.get("subscriberId") if isinstance(item, dict) else item)
    return _checked_ids(named, "subscriptions"), identifiers


def _members_given(body: dict[str, Any]) -> bool:
    """Whether the body names `subscriptions` or `subscriberIds`: a null is as absent
    to Novu's DTO (IsOptional) as a field left out."""
    return any(body.get(field) is not None for field in ("subscriptions", "subscriberIds"))


def _checked_ids(ids: Any, field: str) -> list[str]:
    """`ids` as subscriberIds, trimmed; a 400 naming `field` unless they are a list of at
    most 1000 non-blank strings."""
    if (
        not isinstance(ids, list)
        or not all(isinstance(i, str) and i.strip() for i in ids)
        or len(ids) > 1000
    ):
        raise ApiError(
            400, "invalid_request", f"'{field}' must be a list of subscriber ids (at most 1000)"
        )
    # As subscriberIds are stored: " ann " named no subscriber, "ann" created so.
    return [i.strip() for i in ids]


def _subscription_dto(topic: Topic, subscriber: Subscriber) -> dict[str, Any]:
    """`subscriber` as selectors.topic_members gives it, with `subscribed_at` and its
    subscription's identifier, name and updatedAt."""
    named = subscriber.subscription_name
    return {
        "_id": f"{topic.pk}:{subscriber.pk}",
        # What its GET, PATCH and unsubscribe name it by (selectors.topic_member_named).
        "identifier": subscriber.subscription_identifier
        or default_subscription_identifier(topic.key, subscriber.subscriber_id),
        # Left out when none, as Novu's (optional, not nullable).
        **({"name": named} if named else {}),
        "topic": {"_id": str(topic.pk), "key": topic.key, **_topic_name(topic)},
        "subscriber": {
            "_id": str(subscriber.pk),
            "subscriberId": subscriber.subscriber_id,
            "firstName": subscriber.first_name or None,
            "lastName": subscriber.last_name or None,
            "email": subscriber.email or None,
            "avatar": subscriber.avatar or None,
        },
        "createdAt": iso_z(subscriber.subscribed_at),
        "updatedAt": iso_z(subscriber.subscription_updated_at),
    }


def _with_subscribed_at(topic: Topic, members: list[Subscriber]) -> list[Subscriber]:
    """`members` with the time each was subscribed: now for one unsubscribed since."""
    rows = selectors.topic_members(topic=topic).filter(pk__in=[m.pk for m in members])
    fields = (
        "subscribed_at",
        "subscription_identifier",
        "subscription_name",
        "subscription_updated_at",
    )
    at = {pk: values for pk, *values in rows.values_list("pk", *fields)}
    now = timezone.now()
    for member in members:
        for field, value in zip(fields, at.get(member.pk, (now, "", "", now)), strict=True):
            setattr(member, field, value)
    return members


def _unsubscribe_errors(
    topic: Topic, ids: list[str], removed: list[Subscriber]
) -> list[dict[str, str]]:
    """Novu's reason for each id an unsubscribe did not remove (novu-py reads them as
    `errors`): no such subscriber first, then those that were no member, each once."""
    removed_ids = {s.subscriber_id for s in removed}
    not_removed = [sid for sid in dict.fromkeys(ids) if sid not in removed_ids]
    known = set(
        Subscriber.objects.filter(
            client_id=topic.client_id, subscriber_id__in=not_removed
        ).values_list("subscriber_id", flat=True)
    )
    return [
        {
            "subscriberId": sid,
            "code": "SUBSCRIBER_NOT_FOUND",
            "message": f"Subscriber '{sid}' was not found",
        }
        for sid in not_removed
        if sid not in known
    ] + [
        {
            "subscriberId": sid,
            "code": "SUBSCRIPTION_NOT_FOUND",
            "message": f"Subscriber '{sid}' is not a member of '{topic.key}'",
        }
        for sid in not_removed
        if sid in known
    ]


def _refuse_if_all_failed(meta: dict[str, int], errors: list[dict[str, str]], done: str) -> None:
    """Novu answers a subscribe or an unsubscribe that failed for every id it was given
    with a 400 (which novu-py and @novu/api raise), its body the answer's `data`, `meta`
    and `errors` beside the error's fields; one that did any of them is a success."""
    if meta["failed"] and not meta["successful"]:
        raise ApiError(
            400,
            "subscriptions_failed",
            f"No subscriber was {done}: {errors[0]['message']}",
            errors=errors,
            body={"data": [], "meta": meta},
        )


class SubscriptionsErrorSerializer(ErrorSerializer):
    """A subscribe's or an unsubscribe's 400, for the OpenAPI schema only: one that acted
    on none of its ids says why for each (as Novu's), with the answer's `data` and `meta`
    (`_refuse_if_all_failed`); one refused for its body names a field, as any 400."""

    class ItemErrorSerializer(serializers.Serializer):
        message = serializers.CharField()
        field = serializers.CharField(required=False, allow_blank=True)
        subscriberId = serializers.CharField(required=False)
        code = serializers.CharField(
            required=False, help_text="SUBSCRIBER_NOT_FOUND, SUBSCRIPTION_NOT_FOUND, ..."
        )

    errors = ItemErrorSerializer(many=True, required=False)
    data = serializers.ListField(child=serializers.DictField(), required=False)
    meta = serializers.DictField(required=False)


_SUBSCRIPTIONS_REFUSED = {
    400: OpenApiResponse(SubscriptionsErrorSerializer, description="Bad Request")
}


@extend_schema(tags=["Topics"])
class TopicSubscriptionsApi(APIView):
    """v2: `{subscriptions}` or `{subscriberIds}`; the topic is created when it does not
    exist yet."""

    schema = DeleteWithBodySchema()

    @extend_schema(
        summary="Subscribe subscribers to a topic, creating the topic if needed",
        request=SubscriberIdsRequest,
        responses={201: SubscriptionsCreated, **error_responses(), **_SUBSCRIPTIONS_REFUSED},
    )
    def post(self, request: Request, key: str) -> Response:
        if not isinstance(request.data, dict):
            raise ApiError(400, "invalid_request", "The body must be a JSON object")
        # A body naming neither list subscribes no one, as Novu's reads it (`subscriptions
        # || subscriberIds || []`): the topic is still created (or renamed) and the answer
        # a 201 with nothing failed. novu-py lets its request leave both out.
        ids = _subscription_ids(request) if _members_given(request.data) else []
        named = _subscriptions_named(request)
        # Novu scopes a subscription to a context, or to some workflows; norm keeps
        # neither, and a subscription to everything would reach more than was asked.
        scoped = sorted(k for k in ("context", "preferences") if request.data.get(k))
        if scoped:
            raise ApiError(
                400, "invalid_request", f"norm cannot scope a subscription by {', '.join(scoped)}"
            )
        name = _topic_name_given(request, required=False)
        topic, members, missing, refused = services.topic_upsert_subscribe(
            client=request.user, key=key, name=name, subscriber_ids=ids, named=named
        )
        errors = [
            {
                "subscriberId": sid,
                "code": "SUBSCRIBER_NOT_FOUND",
                "message": f"Subscriber '{sid}' was not found",
            }
            for sid in missing
        ] + [
            {"subscriberId": sid, "code": code, "message": message}
            for sid, (code, message) in refused.items()
        ]
        # Each subscriber once, however many times the body names it, as an unsubscribe
        # counts them: counting mentions, ["cid", "bob", "cid", "ann"] was 4 in
        # totalCount, 3 subscribed and nothing failed, counts that did not add up.
        meta = {
            "totalCount": len(members) + len(errors),
            "successful": len(members),
            "failed": len(errors),
        }
        _refuse_if_all_failed(meta, errors, "subscribed")
        return Response(
            {
                "data": [_subscription_dto(topic, s) for s in _with_subscribed_at(topic, members)],
                "meta": meta,
                # Left out when none, as Novu does: [] is truthy to @novu/api's callers,
                # who test `if (result.errors)`.
                **({"errors": errors} if errors else {}),
            },
            status=201,
        )

    @extend_schema(
        summary="Unsubscribe subscribers from a topic",
        request=SubscriberIdsRequest,
        responses={200: SubscriptionsRemoved, **error_responses(404), **_SUBSCRIPTIONS_REFUSED},
    )
    def delete(self, request: Request, key: str) -> Response:
        ids, identifiers = _unsubscriptions(request)
        topic = selectors.topic_get(client_id=request.user.pk, key=key)
        with _not_deleted_meanwhile(key):
            removed, unknown = services.topic_unsubscribe(
                topic=topic, subscriber_ids=ids, identifiers=identifiers
            )
        errors = _unsubscribe_errors(topic, ids, removed) + [
            # As Novu's: the subscriberId of an identifier that named none is not known.
            {
                "subscriberId": "unknown",
                "code": "SUBSCRIPTION_NOT_FOUND",
                "message": f"Subscription with identifier '{identifier}' not found",
            }
            for identifier in unknown
        ]
        # Each subscription once, however many times and ways the body names it (a
        # subscriberId, its identifier, its _id), and each name that removed none once:
        # counting mentions, a subscription named twice was 2 in totalCount, 1 removed
        # and nothing failed, counts that did not add up.
        meta = {
            "totalCount": len(removed) + len(errors),
            "successful": len(removed),
            "failed": len(errors),
        }
        _refuse_if_all_failed(meta, errors, "unsubscribed")
        return Response(
            {
                "data": [_subscription_dto(topic, s) for s in removed],
                "meta": meta,
                # Left out when none, as Novu does.
                **({"errors": errors} if errors else {}),
            }
        )

    @extend_schema(
        operation_id="v2_topics_subscriptions_list",
        summary="List a topic's subscriptions by cursor",
        parameters=[*_CURSOR, OpenApiParameter("subscriberId", description="exact match")],
        responses={
            200: _cursor_page("SubscriptionCursorPage", SubscriptionOutput),
            **error_responses(400, 404),
        },
    )
    def get(self, request: Request, key: str) -> Response:
        topic = selectors.topic_get(client_id=request.user.pk, key=key)
        if query_filters_given(request.query_params, ["contextKeys"]):
            # norm keeps no contexts: ignored, the filter listed every subscription.
            raise ApiError(400, "invalid_query", "norm cannot filter subscriptions by contextKeys")
        members = selectors.topic_members(topic=topic)
        if subscriber_id := query_text(request.query_params, "subscriberId"):
            members = members.filter(subscriber_id=subscriber_id)
        # Newest first unless asked for ASC, as Novu lists them.
        page = cursor_page(
            request,
            members,
            lambda s: _subscription_dto(topic, s),
            default_descending=True,
            order_by=SUBSCRIPTION_ORDER_BY,
        )
        return Response(page)


class SubscriberSubscriptionsApi(APIView):
    @extend_schema(
        tags=["Subscribers"],
        operation_id="v2_subscribers_subscriptions_list",
        summary="List a subscriber's topic subscriptions by cursor",
        parameters=[*_CURSOR, OpenApiParameter("key", description="the topic's key, exact")],
        responses={
            200: _cursor_page("SubscriberSubscriptionCursorPage", SubscriptionOutput),
            **error_responses(400, 404),
        },
    )
    def get(self, request: Request, subscriber_id: str) -> Response:
        """novu-py's subscribers.topics.list: the same subscriptions a topic's list
        answers, of one subscriber, newest first unless asked for ASC, as Novu's."""
        subscriber = selectors.subscriber_get(
            client_id=request.user.pk, subscriber_id=subscriber_id
        )
        if query_filters_given(request.query_params, ["contextKeys"]):
            raise ApiError(400, "invalid_query", "norm cannot filter subscriptions by contextKeys")
        topics = selectors.subscriber_topics(subscriber=subscriber)
        if key := query_text(request.query_params, "key"):
            topics = topics.filter(key=key)

        def dto(topic: Any) -> dict[str, Any]:
            subscriber.subscribed_at = topic.subscribed_at
            subscriber.subscription_identifier = topic.subscription_identifier
            subscriber.subscription_name = topic.subscription_name
            subscriber.subscription_updated_at = topic.subscription_updated_at
            return _subscription_dto(topic, subscriber)

        page = cursor_page(
            request, topics, dto, default_descending=True, order_by=SUBSCRIPTION_ORDER_BY
        )
        return Response(page)


class SubscriptionDetailOutput(serializers.Serializer):
    id = serializers.CharField(help_text="the subscription's `_id` in the lists")
    identifier = serializers.CharField(
        help_text="as its subscribe gave it; by default `tk_<topic key>:si_<subscriberId>`"
    )


# Inline: as a serializer, drf-spectacular would make each field required on PATCH.
_SUBSCRIPTION_UPDATE = {
    "application/json": {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 255},
            "preferences": {
                "type": "array",
                "maxItems": 0,
                "description": "norm keeps no subscription preferences: only none is taken",
            },
        },
    }
}


class TopicSubscriptionDetailApi(APIView):
    @extend_schema(
        tags=["Topics"],
        operation_id="v2_topics_subscriptions_retrieve",
        summary="Get a topic's subscription by the identifier it is listed with",
        responses={
            200: _wrapped("SubscriptionDetailResponse", SubscriptionDetailOutput()),
            204: OpenApiResponse(description="no such subscription (nor topic), as in Novu"),
            **error_responses(),
        },
    )
    def get(self, request: Request, key: str, identifier: str) -> Response:
        # Novu answers one it does not find with a 204, the topic's too (novu-py raises
        # its APIError for it): no 404 to tell the two apart.
        topic = Topic.objects.filter(client_id=request.user.pk, key=key).first()
        subscriber = None
        if topic is not None:
            # By its identifier, or by its _id, as its PATCH finds it.
            subscriber = selectors.topic_member_named(topic=topic, identifier=identifier)
        if topic is None or subscriber is None:
            return Response(status=204)
        dto = _subscription_dto(topic, subscriber)
        return Response({"data": {"id": dto["_id"], "identifier": dto["identifier"]}})

    @extend_schema(
        tags=["Topics"],
        operation_id="v2_topics_subscriptions_update",
        summary="Rename a topic's subscription, named by its identifier",
        request=_SUBSCRIPTION_UPDATE,
        responses={200: SubscriptionResponse, **error_responses(400, 404)},
    )
    def patch(self, request: Request, key: str, identifier: str) -> Response:
        """novu-py's topics.subscriptions.update: Novu's sets the subscription's
        `name` and replaces its `preferences` (workflows, conditions) with those
        given."""
        body = request.data
        if not isinstance(body, dict):
            raise ApiError(400, "invalid_request", "The body must be a JSON object")
        if body.get("preferences"):
            # A subscription to everything would reach more than was asked for.
            raise ApiError(
                400,
                "invalid_request",
                "norm keeps no subscription preferences: a subscription receives every"
                " workflow triggered to its topic",
            )
        # A null as absent, as to Novu's DTO (IsOptional).
        name = _subscription_text(body, "name", within="") if body.get("name") is not None else None
        topic = selectors.topic_get(client_id=request.user.pk, key=key)
        with _not_deleted_meanwhile(key):
            member = services.topic_subscription_rename(
                topic=topic, identifier=identifier, name=name
            )
        if member is None:
            raise ApiError(
                404,
                "subscription_not_found",
                f"Subscription with identifier '{identifier}' not found for topic '{key}'",
            )
        return Response({"data": _subscription_dto(topic, member)})


class TopicSubscribersV1Api(APIView):
    """v1: `{subscribers}` answered with `{succeeded, failed: {notFound}}`."""

    @extend_schema(
        tags=["Topics"],
        summary="Subscribe subscribers to an existing topic",
        request=SubscribersV1Request,
        responses={
            200: _wrapped("TopicSubscribersV1Response", TopicSubscribersV1Result()),
            **error_responses(400, 404),
        },
    )
    def post(self, request: Request, key: str) -> Response:
        ids = _body_ids(request, "subscribers")
        topic = selectors.topic_get(client_id=request.user.pk, key=key)
        with _not_deleted_meanwhile(key):
            members, missing = services.topic_subscribe(topic=topic, subscriber_ids=ids)
        failed = {"notFound": missing} if missing else {}
        return Response(
            {"data": {"succeeded": [s.subscriber_id for s in members], "failed": failed}}
        )


class TopicSubscriberCheckApi(APIView):
    @extend_schema(
        tags=["Topics"],
        summary="Check that a subscriber is a member of a topic",
        responses={200: SubscriptionResponse, **error_responses(404)},
    )
    def get(self, request: Request, key: str, subscriber_id: str) -> Response:
        topic = selectors.topic_get(client_id=request.user.pk, key=key)
        subscriber = (
            selectors.topic_members(topic=topic).filter(subscriber_id=subscriber_id).first()
        )
        if subscriber is None:
            raise ApiError(404, "not_subscribed", f"'{subscriber_id}' is not a member of '{key}'")
        # novu-py reads Novu's TopicSubscriberDto here; novu 1.14 only checks the status.
        check = {
            "_organizationId": str(topic.client_id),
            "_environmentId": str(topic.client_id),
            "_subscriberId": str(subscriber.pk),
            "_topicId": str(topic.pk),
            "topicKey": topic.key,
            "externalSubscriberId": subscriber.subscriber_id,
        }
        return Response({"data": {**_subscription_dto(topic, subscriber), **check}})


@extend_schema_view(
    get=extend_schema(summary='Check that the subscriber "removal" is a member of a topic')
)
class TopicSubscribersRemovalV1Api(TopicSubscriberCheckApi):
    """POST unsubscribes; GET is /v1/topics/{key}/subscribers/{subscriber_id}'s for the
    subscriber "removal" (urls.py names it), as Novu routes by method: it was a 405."""

    @extend_schema(
        tags=["Topics"],
        summary="Unsubscribe subscribers from a topic",
        request=SubscribersV1Request,
        responses={
            200: _wrapped("TopicSubscribersRemoved", AckResult()),
            **error_responses(400, 404),
        },
    )
    def post(self, request: Request, key: str, subscriber_id: str = "removal") -> Response:
        ids = _body_ids(request, "subscribers")
        topic = selectors.topic_get(client_id=request.user.pk, key=key)
        with _not_deleted_meanwhile(key):
            services.topic_unsubscribe(topic=topic, subscriber_ids=ids)
        return Response({"data": {"acknowledged": True}})
