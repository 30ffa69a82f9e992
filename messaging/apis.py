"""The in-app feed, Novu-shaped: a subscriber's in-app messages and their seen/read marks."""

from __future__ import annotations

import re
from typing import Any

from drf_spectacular.utils import extend_schema, extend_schema_field, extend_schema_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from config.errors import ApiError, error_responses
from config.paging import PAGE_PARAMETERS, page_of, paginate
from messaging import services
from messaging.models import Message
from workflows import selectors

_MESSAGE_ID = re.compile(r"[0-9]{1,18}")


def _feed(request: Request, subscriber_id: str) -> Any:
    feed = selectors.in_app_feed(client_id=request.user.pk, subscriber_id=subscriber_id)
    if feed is None:
        raise ApiError(404, "subscriber_not_found", f"Subscriber '{subscriber_id}' not found")
    return feed


@extend_schema_field(
    {
        "anyOf": [
            {"type": "string"},
            {"type": "integer"},
            {"type": "array", "items": {"anyOf": [{"type": "string"}, {"type": "integer"}]}},
        ]
    }
)
class MessageIdsField(serializers.JSONField):
    """One message id or a list of them, checked by MarkAsApi."""


class FeedApi(APIView):
    @extend_schema_serializer(component_name="FeedMessage")
    class OutputSerializer(serializers.Serializer):
        _id = serializers.CharField(source="pk")
        transactionId = serializers.CharField(
            source="step.notification.trigger_event.transaction_id"
        )
        templateIdentifier = serializers.CharField(source="step.notification.workflow_id")
        channel = serializers.CharField()
        subject = serializers.SerializerMethodField()
        body = serializers.SerializerMethodField()
        content = serializers.SerializerMethodField()
        data = serializers.SerializerMethodField()
        seen = serializers.SerializerMethodField()
        read = serializers.SerializerMethodField()
        lastSeenDate = serializers.DateTimeField(source="seen_at", allow_null=True)
        lastReadDate = serializers.DateTimeField(source="read_at", allow_null=True)
        createdAt = serializers.DateTimeField(source="created_at")

        def get_subject(self, message: Message) -> str:
            return str(message.content.get("subject") or "")

        def get_body(self, message: Message) -> str:
            return str(message.content.get("body") or "")

        # Novu's v1 feed puts the rendered body in `content`.
        def get_content(self, message: Message) -> str:
            return self.get_body(message)

        def get_data(self, message: Message) -> dict[str, Any]:
            data = message.content.get("data")
            return data if isinstance(data, dict) else {}

        def get_seen(self, message: Message) -> bool:
            return message.seen_at is not None

        def get_read(self, message: Message) -> bool:
            return message.read_at is not None

    @extend_schema(
        operation_id="v1_subscribers_notifications_feed",
        tags=["Inbox"],
        summary="A subscriber's in-app messages, newest first",
        parameters=PAGE_PARAMETERS,
        responses={
            200: page_of("FeedPage", OutputSerializer(many=True)),
            **error_responses(400, 404),
        },
    )
    def get(self, request: Request, subscriber_id: str) -> Response:
        rows, meta = paginate(request, _feed(request, subscriber_id))
        return Response({"data": self.OutputSerializer(rows, many=True).data, **meta})


class MarkAsApi(APIView):
    @extend_schema_serializer(component_name="MarkAsInput")
    class InputSerializer(serializers.Serializer):
        class MarkSerializer(serializers.Serializer):
            seen = serializers.BooleanField(required=False, allow_null=True, default=None)
            read = serializers.BooleanField(required=False, allow_null=True, default=None)

            def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
                if attrs["seen"] is None and attrs["read"] is None:
                    raise serializers.ValidationError("set seen or read")
                return attrs

        messageId = MessageIdsField()
        mark = MarkSerializer()

        def validate_messageId(self, value: Any) -> list[str]:
            ids = value if isinstance(value, list) else [value]
            if not ids or not all(
                isinstance(i, str | int) and not isinstance(i, bool) for i in ids
            ):
                raise serializers.ValidationError("must be a message id or a list of them")
            return [str(i) for i in ids]

    @extend_schema_serializer(component_name="MarkAsResponse")
    class ResponseSerializer(serializers.Serializer):
        data = FeedApi.OutputSerializer(many=True)

    @extend_schema(
        tags=["Inbox"],
        summary="Mark in-app messages seen or read (or not)",
        request=InputSerializer,
        responses={
            201: ResponseSerializer,
            **error_responses(400, 404, 422),
        },
    )
    def post(self, request: Request, subscriber_id: str) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        ids, mark = data.validated_data["messageId"], data.validated_data["mark"]
        # An id that cannot be a message's (not ASCII digits, beyond bigint) is not found.
        wanted = {int(i) for i in ids if _MESSAGE_ID.fullmatch(i)}
        messages = list(_feed(request, subscriber_id).filter(pk__in=wanted))
        if len(wanted) != len(set(ids)) or len(messages) != len(wanted):
            raise ApiError(404, "message_not_found", "One or more messages were not found")
        marked = [
            services.message_mark(message=m, seen=mark["seen"], read=mark["read"]) for m in messages
        ]
        return Response({"data": FeedApi.OutputSerializer(marked, many=True).data}, status=201)
