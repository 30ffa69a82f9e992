"""Topics on v1 and v2: create (or update) and list, get, rename and delete one. A topic
as Novu's TopicResponseDto is topic_dto; a topic's name as given and as shown, cursor
pages and the shared query parameters are common's. Its members are subscriptions'."""

from __future__ import annotations

from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_view,
)
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from config.dates import TimestampField, iso_z
from config.errors import ApiError, error_responses
from config.paging import PAGE_PARAMETERS, page_of, paginate, query_limit, query_text
from subscribers import selectors, services
from subscribers.apis.common import (
    CURSOR_PARAMETERS,
    FAIL_IF_EXISTS,
    NOT_ON_V1,
    TOPIC_NAME_MAX,
    AckResult,
    StringField,
    cursor_page,
    cursor_page_of,
    fail_if_exists_given,
    not_deleted_meanwhile,
    topic_name,
    topic_name_given,
    validated,
    wrapped,
)
from subscribers.models import Topic


def topic_dto(topic: Topic) -> dict[str, Any]:
    """A topic as Novu's TopicResponseDto (the client as its organization and environment)."""
    return {
        "_id": str(topic.pk),
        "key": topic.key,
        **topic_name(topic),
        "_organizationId": str(topic.client_id),
        "_environmentId": str(topic.client_id),
        "createdAt": iso_z(topic.created_at),
        "updatedAt": iso_z(topic.updated_at),
    }


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


TopicPageV1 = page_of("TopicPageV1", TopicOutput(many=True))
# Inline: as a serializer, drf-spectacular would make `name` optional on PATCH.
_TOPIC_RENAME = {
    "application/json": {
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": TOPIC_NAME_MAX}},
        "required": ["name"],
    }
}
TopicResponse = wrapped("TopicResponse", TopicOutput())


class TopicInput(serializers.Serializer):
    key = StringField(max_length=255)
    name = StringField(max_length=255, required=False, allow_blank=True, allow_null=True)


@extend_schema(tags=["Topics"])
class TopicListApi(APIView):
    version = 2

    @extend_schema(
        operation_id="v2_topics_create",
        summary="Create a topic (or rename the existing one)",
        parameters=[FAIL_IF_EXISTS],
        request=TopicInput,
        responses={
            201: OpenApiResponse(TopicResponse, description="created"),
            200: OpenApiResponse(TopicResponse, description="it existed; updated"),
            **error_responses(400, 422, 409),
        },
    )
    def post(self, request: Request) -> Response:
        body = validated(TopicInput, request.data).validated_data
        # Told by the upsert, as a subscriber's. Novu's v1 creates only: a key taken is
        # its 409, the topic's name kept (novu 1.14 raises for it).
        fail_if_exists = self.version == 1 or fail_if_exists_given(request)
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
            *CURSOR_PARAMETERS,
            OpenApiParameter("key", description="exact match"),
            OpenApiParameter("name", description="part of the name, any case"),
        ],
        responses={200: cursor_page_of("TopicCursorPage", TopicOutput), **error_responses(400)},
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
            *NOT_ON_V1,
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
        name = topic_name_given(request, required=True)
        with not_deleted_meanwhile(key):
            topic = services.topic_rename(topic=topic, name=name)
        return Response({"data": topic_dto(topic)})

    @extend_schema(
        summary="Delete a topic",
        responses={200: wrapped("TopicDeleted", AckResult()), **error_responses(404)},
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
            200: wrapped("TopicDetailResponse", TopicDetailOutput()),
            **error_responses(404),
        },
    ),
    delete=extend_schema(
        summary="Delete a topic that has no members",
        responses={
            200: wrapped("TopicDeletedV1", AckResult()),
            **error_responses(404, 409),
        },
    ),
)
class TopicDetailV1Api(TopicDetailApi):
    version = 1
