"""A topic's members: v2's subscriptions (add, list, remove, and one's get and update) and
v1's subscribers (add, check one, remove); and a subscriber's subscriptions. Reads the
ids a body names in each form novu-py and novu 1.14 send them, and answers a partial
success with an error per id. Cursor pages, a topic's name as given and as shown, and
the 404 for a row deleted meanwhile are common's."""

from __future__ import annotations

from typing import Any

from django.utils import timezone
from drf_spectacular.openapi import AutoSchema
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
from config.errors import ApiError, ErrorSerializer, error_responses
from config.paging import query_filters_given, query_text
from subscribers import selectors, services
from subscribers.apis.common import (
    CURSOR_PARAMETERS,
    ORDER_BY,
    AckResult,
    StringField,
    cursor_page,
    cursor_page_of,
    not_deleted_meanwhile,
    topic_name,
    topic_name_given,
    wrapped,
)
from subscribers.models import Subscriber, Topic, default_subscription_identifier


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


SubscriptionResponse = wrapped("SubscriptionResponse", SubscriptionOutput())
# A subscription's are when it was made (its id and both dates in Novu's), not its
# subscriber's id: one created long ago and subscribed today came last of newest first.
SUBSCRIPTION_ORDER_BY = dict.fromkeys(ORDER_BY, "subscribed_at")


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
        "topic": {"_id": str(topic.pk), "key": topic.key, **topic_name(topic)},
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
        name = topic_name_given(request, required=False)
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
        with not_deleted_meanwhile(key):
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
        parameters=[
            *CURSOR_PARAMETERS,
            OpenApiParameter("subscriberId", description="exact match"),
        ],
        responses={
            200: cursor_page_of("SubscriptionCursorPage", SubscriptionOutput),
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
        parameters=[
            *CURSOR_PARAMETERS,
            OpenApiParameter("key", description="the topic's key, exact"),
        ],
        responses={
            200: cursor_page_of("SubscriberSubscriptionCursorPage", SubscriptionOutput),
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
            200: wrapped("SubscriptionDetailResponse", SubscriptionDetailOutput()),
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
        with not_deleted_meanwhile(key):
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
            200: wrapped("TopicSubscribersV1Response", TopicSubscribersV1Result()),
            **error_responses(400, 404),
        },
    )
    def post(self, request: Request, key: str) -> Response:
        ids = _body_ids(request, "subscribers")
        topic = selectors.topic_get(client_id=request.user.pk, key=key)
        with not_deleted_meanwhile(key):
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
            200: wrapped("TopicSubscribersRemoved", AckResult()),
            **error_responses(400, 404),
        },
    )
    def post(self, request: Request, key: str, subscriber_id: str = "removal") -> Response:
        ids = _body_ids(request, "subscribers")
        topic = selectors.topic_get(client_id=request.user.pk, key=key)
        with not_deleted_meanwhile(key):
            services.topic_unsubscribe(topic=topic, subscriber_ids=ids)
        return Response({"data": {"acknowledged": True}})
