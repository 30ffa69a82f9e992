"""Subscribers and topics, on Novu's v1 and v2 paths (NOVU_API.md).

novu-py speaks v2 (cursor lists, PATCH, `{subscriberIds}`); novu 1.14 speaks v1
(page lists, PUT with nulls for unset fields, `{subscribers}`).
"""

from __future__ import annotations

from typing import Any

from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from config.errors import ApiError
from subscribers import selectors, services
from subscribers.models import Subscriber, Topic
from subscribers.recipients import INLINE_FIELDS


def _iso(value: Any) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


def query_int(request: Request, name: str, default: int, *, maximum: int | None = None) -> int:
    """novu-py sends numbers as `10.0`; anything unparsable is a 400."""
    raw = request.query_params.get(name)
    if raw in (None, ""):
        return default
    try:
        value = int(float(raw))
    except ValueError as exc:
        raise ApiError(400, "invalid_query", f"'{name}' must be a number") from exc
    value = max(value, 0)
    return min(value, maximum) if maximum is not None else value


def subscriber_dto(subscriber: Subscriber) -> dict[str, Any]:
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
        "createdAt": _iso(subscriber.created_at),
        "updatedAt": _iso(subscriber.updated_at),
    }


def topic_dto(topic: Topic) -> dict[str, Any]:
    return {
        "_id": str(topic.pk),
        "key": topic.key,
        "name": topic.name or None,
        "_organizationId": str(topic.client_id),
        "_environmentId": str(topic.client_id),
        "createdAt": _iso(topic.created_at),
        "updatedAt": _iso(topic.created_at),
    }


class SubscriberFields(serializers.Serializer):
    firstName = serializers.CharField(
        max_length=200, required=False, allow_null=True, allow_blank=True
    )
    lastName = serializers.CharField(
        max_length=200, required=False, allow_null=True, allow_blank=True
    )
    email = serializers.CharField(max_length=254, required=False, allow_null=True, allow_blank=True)
    phone = serializers.CharField(max_length=64, required=False, allow_null=True, allow_blank=True)
    avatar = serializers.CharField(
        max_length=500, required=False, allow_null=True, allow_blank=True
    )
    locale = serializers.CharField(max_length=32, required=False, allow_null=True, allow_blank=True)
    timezone = serializers.CharField(
        max_length=64, required=False, allow_null=True, allow_blank=True
    )
    data = serializers.DictField(required=False, allow_null=True)

    def model_values(self, *, nulls_clear: bool) -> dict[str, Any]:
        """Model fields from the validated body. Absent stays untouched; null clears a
        field only where the client means it (v2 PATCH), not where it sends null for
        every unset field (novu 1.14's PUT)."""
        values = {INLINE_FIELDS[k]: v for k, v in self.validated_data.items() if k in INLINE_FIELDS}
        return values if nulls_clear else {k: v for k, v in values.items() if v is not None}


class SubscriberCreateInput(SubscriberFields):
    subscriberId = serializers.CharField(max_length=255)


def _valid(serializer_cls: type[serializers.Serializer], data: Any) -> serializers.Serializer:
    if not isinstance(data, dict):
        raise ApiError(400, "invalid_request", "The body must be a JSON object")
    serializer = serializer_cls(data=data)
    serializer.is_valid(raise_exception=True)
    return serializer


class SubscriberListApi(APIView):
    """POST creates (or updates); GET lists: v2 by cursor, v1 by page."""

    version = 2

    def post(self, request: Request) -> Response:
        body = _valid(SubscriberCreateInput, request.data)
        fail = request.query_params.get("failIfExists", "").lower() == "true"
        subscriber, _ = services.subscriber_create(
            client=request.user,
            subscriber_id=body.validated_data["subscriberId"],
            values=body.model_values(nulls_clear=False),
            fail_if_exists=fail,
        )
        return Response({"data": subscriber_dto(subscriber)}, status=201)

    def get(self, request: Request) -> Response:
        qs = selectors.subscriber_search(client_id=request.user.pk, filters=request.query_params)
        if self.version == 1:
            page = query_int(request, "page", 0)
            limit = query_int(request, "limit", 10, maximum=100) or 10
            total = qs.count()
            items = list(qs.order_by("pk")[page * limit : (page + 1) * limit])
            return Response(
                {
                    "page": page,
                    "totalCount": total,
                    "pageSize": limit,
                    "hasMore": (page + 1) * limit < total,
                    "data": [subscriber_dto(s) for s in items],
                }
            )
        return Response(cursor_page(request, qs, subscriber_dto))


def cursor_page(request: Request, qs: Any, dto: Any) -> dict[str, Any]:
    """Keyset pagination on the primary key: `after`/`before` are opaque ids."""
    limit = query_int(request, "limit", 10, maximum=100) or 10
    descending = request.query_params.get("orderDirection", "").upper() == "DESC"
    total = qs.count()
    after, before = request.query_params.get("after"), request.query_params.get("before")
    try:
        if after:
            qs = qs.filter(pk__lt=int(after)) if descending else qs.filter(pk__gt=int(after))
        elif before:
            qs = qs.filter(pk__gt=int(before)) if descending else qs.filter(pk__lt=int(before))
    except ValueError as exc:
        raise ApiError(400, "invalid_query", "invalid cursor") from exc
    backwards = bool(before) and not after
    order = "pk" if descending == backwards else "-pk"
    items = list(qs.order_by(order)[: limit + 1])
    has_more = len(items) > limit
    items = items[:limit]
    if backwards:
        items.reverse()
    return {
        "data": [dto(i) for i in items],
        "next": str(items[-1].pk) if items and (has_more or backwards) else None,
        "previous": str(items[0].pk) if items and (after or (backwards and has_more)) else None,
        "totalCount": total,
        "totalCountCapped": False,
    }


class SubscriberListV1Api(SubscriberListApi):
    version = 1


class SubscriberDetailApi(APIView):
    def get(self, request: Request, subscriber_id: str) -> Response:
        subscriber = selectors.subscriber_get(
            client_id=request.user.pk, subscriber_id=subscriber_id
        )
        return Response({"data": subscriber_dto(subscriber)})

    def patch(self, request: Request, subscriber_id: str) -> Response:
        subscriber = selectors.subscriber_get(
            client_id=request.user.pk, subscriber_id=subscriber_id
        )
        body = _valid(SubscriberFields, request.data)
        subscriber = services.subscriber_update(
            subscriber=subscriber, values=body.model_values(nulls_clear=True)
        )
        return Response({"data": subscriber_dto(subscriber)})

    def put(self, request: Request, subscriber_id: str) -> Response:
        subscriber = selectors.subscriber_get(
            client_id=request.user.pk, subscriber_id=subscriber_id
        )
        body = _valid(SubscriberFields, request.data)
        subscriber = services.subscriber_update(
            subscriber=subscriber, values=body.model_values(nulls_clear=False)
        )
        return Response({"data": subscriber_dto(subscriber)})

    def delete(self, request: Request, subscriber_id: str) -> Response:
        subscriber = selectors.subscriber_get(
            client_id=request.user.pk, subscriber_id=subscriber_id
        )
        services.subscriber_delete(subscriber=subscriber)
        return Response({"data": {"acknowledged": True, "status": "deleted"}})


class SubscriberBulkApi(APIView):
    def post(self, request: Request) -> Response:
        items = request.data.get("subscribers") if isinstance(request.data, dict) else None
        if not isinstance(items, list) or len(items) > 500:
            raise ApiError(400, "invalid_request", "'subscribers' must be a list of at most 500")
        created, updated, failed = [], [], []
        for item in items:
            serializer = SubscriberCreateInput(data=item if isinstance(item, dict) else {})
            if not serializer.is_valid():
                failed.append(
                    {
                        "subscriberId": (item or {}).get("subscriberId")
                        if isinstance(item, dict)
                        else None,
                        "message": str(serializer.errors),
                    }
                )
                continue
            subscriber, was_created = services.subscriber_create(
                client=request.user,
                subscriber_id=serializer.validated_data["subscriberId"],
                values=serializer.model_values(nulls_clear=False),
            )
            (created if was_created else updated).append({"subscriberId": subscriber.subscriber_id})
        return Response(
            {"data": {"created": created, "updated": updated, "failed": failed}}, status=201
        )


class TopicInput(serializers.Serializer):
    key = serializers.CharField(max_length=255)
    name = serializers.CharField(max_length=255, required=False, allow_blank=True, allow_null=True)


class TopicListApi(APIView):
    version = 2

    def post(self, request: Request) -> Response:
        body = _valid(TopicInput, request.data).validated_data
        fail = request.query_params.get("failIfExists", "").lower() == "true"
        if fail and Topic.objects.filter(client=request.user, key=body["key"]).exists():
            raise ApiError(409, "topic_exists", f"Topic '{body['key']}' already exists")
        topic, created = services.topic_upsert(
            client=request.user, key=body["key"], name=body.get("name")
        )
        return Response(
            {"data": topic_dto(topic)}, status=201 if created or self.version == 1 else 200
        )

    def get(self, request: Request) -> Response:
        qs = Topic.objects.filter(client=request.user)
        if request.query_params.get("key"):
            qs = qs.filter(key=request.query_params["key"])
        if self.version == 1:
            page = query_int(request, "page", 0)
            limit = (
                query_int(
                    request, "pageSize", query_int(request, "limit", 10, maximum=100), maximum=100
                )
                or 10
            )
            total = qs.count()
            items = list(qs.order_by("pk")[page * limit : (page + 1) * limit])
            return Response(
                {
                    "page": page,
                    "totalCount": total,
                    "pageSize": limit,
                    "data": [topic_dto(t) for t in items],
                }
            )
        return Response(cursor_page(request, qs, topic_dto))


class TopicListV1Api(TopicListApi):
    version = 1


class TopicDetailApi(APIView):
    def get(self, request: Request, key: str) -> Response:
        topic = selectors.topic_get(client_id=request.user.pk, key=key)
        dto = topic_dto(topic)
        dto["subscribers"] = list(topic.subscribers.values_list("subscriber_id", flat=True)[:1000])
        return Response({"data": dto})

    def patch(self, request: Request, key: str) -> Response:
        topic = selectors.topic_get(client_id=request.user.pk, key=key)
        name = request.data.get("name") if isinstance(request.data, dict) else None
        if not isinstance(name, str):
            raise ApiError(400, "invalid_request", "'name' must be a string")
        topic, _ = services.topic_upsert(client=request.user, key=topic.key, name=name)
        return Response({"data": topic_dto(topic)})

    def delete(self, request: Request, key: str) -> Response:
        topic = selectors.topic_get(client_id=request.user.pk, key=key)
        topic.delete()
        return Response({"data": {"acknowledged": True}})


def _ids(request: Request, field: str) -> list[str]:
    ids = request.data.get(field) if isinstance(request.data, dict) else None
    if (
        not isinstance(ids, list)
        or not all(isinstance(i, str) and i for i in ids)
        or len(ids) > 1000
    ):
        raise ApiError(
            400, "invalid_request", f"'{field}' must be a list of subscriber ids (at most 1000)"
        )
    return ids


def _subscription_dto(topic: Topic, subscriber: Subscriber) -> dict[str, Any]:
    return {
        "_id": f"{topic.pk}:{subscriber.pk}",
        "topic": {"_id": str(topic.pk), "key": topic.key, "name": topic.name or None},
        "subscriber": {
            "_id": str(subscriber.pk),
            "subscriberId": subscriber.subscriber_id,
            "firstName": subscriber.first_name or None,
            "lastName": subscriber.last_name or None,
            "email": subscriber.email or None,
            "avatar": subscriber.avatar or None,
        },
        "createdAt": _iso(topic.created_at),
        "updatedAt": _iso(topic.created_at),
    }


class TopicSubscriptionsApi(APIView):
    """v2: `{subscriberIds}`; the topic is created when it does not exist yet."""

    def post(self, request: Request, key: str) -> Response:
        ids = _ids(request, "subscriberIds")
        topic, _ = services.topic_upsert(client=request.user, key=key)
        members, missing = services.topic_subscribe(topic=topic, subscriber_ids=ids)
        return Response(
            {
                "data": [_subscription_dto(topic, s) for s in members],
                "meta": {
                    "totalCount": len(ids),
                    "successful": len(members),
                    "failed": len(missing),
                },
                "errors": [
                    {
                        "subscriberId": sid,
                        "code": "SUBSCRIBER_NOT_FOUND",
                        "message": f"Subscriber '{sid}' was not found",
                    }
                    for sid in missing
                ],
            },
            status=201,
        )

    def delete(self, request: Request, key: str) -> Response:
        ids = _ids(request, "subscriberIds")
        topic = selectors.topic_get(client_id=request.user.pk, key=key)
        removed = services.topic_unsubscribe(topic=topic, subscriber_ids=ids)
        return Response(
            {
                "data": [],
                "meta": {
                    "totalCount": len(ids),
                    "successful": len(removed),
                    "failed": len(ids) - len(removed),
                },
            }
        )

    def get(self, request: Request, key: str) -> Response:
        topic = selectors.topic_get(client_id=request.user.pk, key=key)
        page = cursor_page(request, topic.subscribers.all(), lambda s: _subscription_dto(topic, s))
        return Response(page)


class TopicSubscribersV1Api(APIView):
    """v1: `{subscribers}` answered with `{succeeded, failed: {notFound}}`."""

    def post(self, request: Request, key: str) -> Response:
        ids = _ids(request, "subscribers")
        topic = selectors.topic_get(client_id=request.user.pk, key=key)
        members, missing = services.topic_subscribe(topic=topic, subscriber_ids=ids)
        failed = {"notFound": missing} if missing else {}
        return Response(
            {"data": {"succeeded": [s.subscriber_id for s in members], "failed": failed}}
        )


class TopicSubscribersRemovalV1Api(APIView):
    def post(self, request: Request, key: str) -> Response:
        ids = _ids(request, "subscribers")
        topic = selectors.topic_get(client_id=request.user.pk, key=key)
        services.topic_unsubscribe(topic=topic, subscriber_ids=ids)
        return Response({"data": {"acknowledged": True}})


class TopicSubscriberCheckApi(APIView):
    def get(self, request: Request, key: str, subscriber_id: str) -> Response:
        topic = selectors.topic_get(client_id=request.user.pk, key=key)
        subscriber = topic.subscribers.filter(subscriber_id=subscriber_id).first()
        if subscriber is None:
            raise ApiError(404, "not_subscribed", f"'{subscriber_id}' is not a member of '{key}'")
        return Response({"data": _subscription_dto(topic, subscriber)})
