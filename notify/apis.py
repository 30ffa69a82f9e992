from __future__ import annotations

import uuid
from typing import Any

from django.conf import settings
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from config.errors import ApiError
from notify import services
from notify.models import TriggerEvent
from notify.throttling import ClientTriggerRate


class JSONObjectField(serializers.JSONField):
    def to_internal_value(self, data: Any) -> Any:
        if not isinstance(data, dict):
            raise serializers.ValidationError("must be a JSON object")
        return data


def _check_body_size(request: Request) -> None:
    try:
        length = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    if length > settings.NORM_MAX_BODY_BYTES:
        raise ApiError(
            413, "payload_too_large", f"The body exceeds {settings.NORM_MAX_BODY_BYTES} bytes"
        )


def _trigger_response(event: TriggerEvent) -> Response:
    return Response(
        {
            "data": {
                "acknowledged": True,
                "status": "processed",
                "transactionId": event.transaction_id,
            }
        },
        status=201,
    )


class TriggerInput(serializers.Serializer):
    name = serializers.CharField(max_length=200)
    to = serializers.JSONField()
    payload = JSONObjectField(required=False, default=dict)
    transactionId = serializers.CharField(max_length=255, required=False)
    resource = serializers.URLField(max_length=500, required=False)
    bridgeUrl = serializers.URLField(max_length=500, required=False)
    actor = serializers.JSONField(required=False, allow_null=True)
    overrides = JSONObjectField(required=False, default=dict)


def _trigger(client: Any, body: Any) -> TriggerEvent:
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_request", "The body must be a JSON object")
    data = TriggerInput(data=body)
    data.is_valid(raise_exception=True)
    values = data.validated_data
    return services.trigger_event_create(
        client=client,
        workflow_id=values["name"],
        mode=TriggerEvent.Mode.MULTICAST,
        to=values["to"],
        payload=values["payload"],
        transaction_id=values.get("transactionId") or str(uuid.uuid4()),
        resource=values.get("resource") or values.get("bridgeUrl"),
        actor=values.get("actor"),
        overrides=values["overrides"],
    )


class TriggerApi(APIView):
    throttle_classes = [ClientTriggerRate]

    def post(self, request: Request) -> Response:
        _check_body_size(request)
        return _trigger_response(_trigger(request.user, request.data))


class BulkTriggerApi(APIView):
    throttle_classes = [ClientTriggerRate]
    MAX_EVENTS = 100

    def post(self, request: Request) -> Response:
        """Each event succeeds or fails on its own; one bad event sinks no other."""
        _check_body_size(request)
        events = request.data.get("events") if isinstance(request.data, dict) else None
        if not isinstance(events, list) or not events or len(events) > self.MAX_EVENTS:
            raise ApiError(
                400,
                "invalid_request",
                f"'events' must be a list of 1 to {self.MAX_EVENTS} trigger bodies",
                [{"field": "events", "message": "expected a list of 1 to 100 events"}],
            )
        results = []
        for body in events:
            transaction_id = body.get("transactionId") if isinstance(body, dict) else None
            try:
                event = _trigger(request.user, body)
            except (ApiError, serializers.ValidationError) as exc:
                message = exc.message if isinstance(exc, ApiError) else str(exc.detail)
                results.append(
                    {
                        "acknowledged": True,
                        "status": "error",
                        "error": [message],
                        "transactionId": transaction_id or "",
                    }
                )
                continue
            results.append(
                {"acknowledged": True, "status": "processed", "transactionId": event.transaction_id}
            )
        return Response({"data": results}, status=201)


class CancelApi(APIView):
    def delete(self, request: Request, transaction_id: str) -> Response:
        canceled = services.trigger_event_cancel(client=request.user, transaction_id=transaction_id)
        return Response({"data": canceled})


class BroadcastApi(APIView):
    throttle_classes = [ClientTriggerRate]

    class InputSerializer(serializers.Serializer):
        name = serializers.CharField(max_length=200)
        payload = JSONObjectField(required=False, default=dict)
        transactionId = serializers.CharField(max_length=255, required=False)
        actor = serializers.JSONField(required=False, allow_null=True)
        overrides = JSONObjectField(required=False, default=dict)

    def post(self, request: Request) -> Response:
        _check_body_size(request)
        if not isinstance(request.data, dict):
            raise ApiError(400, "invalid_request", "The body must be a JSON object")
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        event = services.trigger_event_create(
            client=request.user,
            workflow_id=values["name"],
            mode=TriggerEvent.Mode.BROADCAST,
            to=None,
            payload=values["payload"],
            transaction_id=values.get("transactionId") or str(uuid.uuid4()),
            actor=values.get("actor"),
            overrides=values["overrides"],
        )
        return _trigger_response(event)
