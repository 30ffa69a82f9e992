"""Subscribers on v1 and v2: create (or update) and list, get, update and delete one, set
one online or offline, and novu 1.14's bulk create of up to 500. A subscriber as Novu's
SubscriberResponseDto is subscriber_dto; cursor pages, the `{data}` wrapper and the
shared query parameters are common's."""

from __future__ import annotations

from typing import Any

from django.utils import timezone
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_view
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from config.dates import TimestampField, iso_z
from config.errors import ApiError, error_responses, validation_message
from config.paging import PAGE_PARAMETERS, page_of, paginate
from subscribers import recipients, selectors, services
from subscribers.apis.common import (
    CURSOR_PARAMETERS,
    FAIL_IF_EXISTS,
    NOT_ON_V1,
    StringField,
    cursor_page,
    cursor_page_of,
    fail_if_exists_given,
    not_deleted_meanwhile,
    validated,
    wrapped,
)
from subscribers.models import Subscriber
from subscribers.recipients import INLINE_FIELDS, SubscriberEmailValidator


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


SubscriberPageV1 = page_of("SubscriberPageV1", SubscriberOutput(many=True))


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


SubscriberResponse = wrapped("SubscriberResponse", SubscriberOutput())
_SUBSCRIBER_FILTERS = [
    OpenApiParameter("subscriberId", description="exact match"),
    OpenApiParameter("email", description="exact match, case-insensitive"),
    OpenApiParameter("phone", description="exact match"),
    OpenApiParameter("name", description="the full name ('first last') or a part of it, any case"),
]


@extend_schema(tags=["Subscribers"])
class SubscriberListApi(APIView):
    """POST creates (or updates); GET lists: v2 by cursor, v1 by page."""

    version = 2

    @extend_schema(
        operation_id="v2_subscribers_create",
        summary="Create a subscriber (or update the existing one)",
        parameters=[FAIL_IF_EXISTS],
        request=SubscriberCreateInput,
        responses={201: SubscriberResponse, **error_responses(400, 422, 409)},
    )
    def post(self, request: Request) -> Response:
        body = validated(SubscriberCreateInput, request.data)
        subscriber_id = body.validated_data["subscriberId"]
        # Told by the create itself, not a look first: two at once both looked before
        # either created it, and the second overwrote the first's subscriber with a 201.
        fail_if_exists = fail_if_exists_given(request)
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
        parameters=[*CURSOR_PARAMETERS, *_SUBSCRIBER_FILTERS],
        responses={
            200: cursor_page_of("SubscriberCursorPage", SubscriberOutput),
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


@extend_schema_view(
    post=extend_schema(operation_id="v1_subscribers_create"),
    get=extend_schema(
        operation_id="v1_subscribers_list",
        summary="List subscribers by page",
        parameters=[*PAGE_PARAMETERS, *_SUBSCRIBER_FILTERS, *NOT_ON_V1],
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
        body = validated(SubscriberFields, request.data)
        with not_deleted_meanwhile(subscriber_id):
            subscriber = services.subscriber_update(
                subscriber=subscriber, values=body.model_values(nulls_clear=nulls_clear)
            )
        return Response({"data": subscriber_dto(subscriber)})

    @extend_schema(
        summary="Delete a subscriber",
        responses={200: wrapped("SubscriberDeleted", DeletedResult()), **error_responses(404)},
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
        with not_deleted_meanwhile(subscriber_id):
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
            201: wrapped("SubscriberBulkResponse", SubscriberBulkResult()),
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
