"""Stage 1, the trigger API: POST /v1/events/trigger (and its bulk and broadcast
forms), a trigger's fan-out read back, and its cancel. The views validate and hand
over to notify.services; the workflow worker (stage 2) is enqueued once the event
commits (config/pipeline.py)."""

from __future__ import annotations

import uuid
from typing import Any

from django.http import HttpRequest, HttpResponseBase
from drf_spectacular.utils import (
    OpenApiExample,
    extend_schema,
    extend_schema_field,
    extend_schema_serializer,
)
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from config.dates import TimestampField
from config.errors import ApiError, error_responses, validation_message
from notify import selectors, services
from notify.models import BridgeURLValidator, Client, TriggerEvent
from notify.throttling import ClientTriggerRate


@extend_schema_field({"type": "object", "additionalProperties": True})
class JSONObjectField(serializers.JSONField):
    def to_internal_value(self, data: Any) -> Any:
        if not isinstance(data, dict):
            raise serializers.ValidationError("must be a JSON object")
        return data


_RECIPIENT: list[dict[str, Any]] = [
    {"type": "string", "description": "a subscriberId"},
    {
        "type": "object",
        "description": "a subscriber, created or updated with these attributes",
        "properties": {
            "subscriberId": {"type": "string"},
            **{
                k: {"type": "string"}
                for k in ("email", "phone", "firstName", "lastName", "avatar", "locale", "timezone")
            },
            "data": {"type": "object", "additionalProperties": True},
        },
        "required": ["subscriberId"],
    },
    {
        "type": "object",
        "description": "a topic's subscribers, less those excluded",
        "properties": {
            "type": {"type": "string", "enum": ["Topic"]},
            "topicKey": {"type": "string"},
            "exclude": {"type": "array", "items": {"type": "string"}},
        },
        "required": ["topicKey"],
    },
]


@extend_schema_field(
    {
        "anyOf": [
            *_RECIPIENT,
            {"type": "array", "items": {"anyOf": _RECIPIENT}, "minItems": 1, "maxItems": 1000},
        ]
    }
)
class RecipientsField(serializers.JSONField):
    """`to`: validated by subscribers.recipients when the trigger is created."""


@extend_schema_field({"anyOf": _RECIPIENT[:2]})
class ActorField(serializers.JSONField):
    """`actor`: a subscriberId or a subscriber object, created or updated as a recipient
    is (checked by subscribers.recipients when the trigger is created)."""


@extend_schema_field(
    {
        "anyOf": [{"type": "string", "maxLength": 0}, {"type": "object", "maxProperties": 0}],
        "nullable": True,
        "description": 'norm keeps no tenants: absent, null, "" or {} (another is a 400)',
    }
)
class NoTenantField(serializers.JSONField):
    """Novu's `tenant`, which picks the tenant's integrations and data there: refused,
    as norm has none, rather than dropped and the trigger run as if it named none.
    "" is none, as in Novu (`if (command.tenant)`), and novu-py sends the "" it is given;
    so is {}, which names nothing to drop (@novu/api's generated examples send it)."""

    def to_internal_value(self, data: Any) -> None:
        if data not in ("", {}):
            raise serializers.ValidationError("tenant is not supported: norm keeps no tenants")
        return None


@extend_schema_field({"type": "string", "format": "uri"})
class BridgeURLInput(serializers.CharField):
    """A bridge URL, whose host may be a bare name (`http://bridge:4000/api/novu`)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(max_length=500, **kwargs)
        self.validators.append(BridgeURLValidator())


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


def _stored_transaction_id(given: str) -> str:
    """A transactionId as its trigger was stored: the input's CharField trimmed it. The
    id as the caller gave it, spaces and all, finds its trigger to read or cancel."""
    return given.strip()


def _transaction_id_input() -> serializers.CharField:
    # "" is absent too: Novu generates an id for any falsy one (`transactionId ||
    # uuidv4()`), and novu-py sends the "" a caller gave it.
    return serializers.CharField(max_length=255, required=False, allow_null=True, allow_blank=True)


# The optional fields take null as absent, as Novu does (class-validator's
# @IsOptional): JavaScript callers send `transactionId: null` for "none".
class TriggerInput(serializers.Serializer):
    name = serializers.CharField(max_length=200)
    to = RecipientsField()
    payload = JSONObjectField(required=False, allow_null=True)
    transactionId = _transaction_id_input()
    resource = BridgeURLInput(required=False, allow_null=True)
    bridgeUrl = BridgeURLInput(required=False, allow_null=True)
    actor = ActorField(required=False, allow_null=True)
    overrides = JSONObjectField(required=False, allow_null=True)
    tenant = NoTenantField(required=False, allow_null=True)


class TriggerResponse(serializers.Serializer):
    class TriggerAck(serializers.Serializer):
        acknowledged = serializers.BooleanField()
        status = serializers.CharField()
        transactionId = serializers.CharField()

    data = TriggerAck()


@extend_schema_serializer(component_name="BroadcastInput")
class BroadcastInput(serializers.Serializer):
    name = serializers.CharField(max_length=200)
    payload = JSONObjectField(required=False, allow_null=True)
    transactionId = _transaction_id_input()
    actor = ActorField(required=False, allow_null=True)
    overrides = JSONObjectField(required=False, allow_null=True)
    tenant = NoTenantField(required=False, allow_null=True)


MAX_BULK_EVENTS = 100


class BulkTriggerRequest(serializers.Serializer):
    events = serializers.ListField(child=TriggerInput(), min_length=1, max_length=MAX_BULK_EVENTS)


class BulkTriggerResponse(serializers.Serializer):
    class BulkTriggerResult(serializers.Serializer):
        acknowledged = serializers.BooleanField()
        status = serializers.ChoiceField(choices=["processed", "error"])
        error = serializers.ListField(child=serializers.CharField(), required=False)
        transactionId = serializers.CharField(allow_blank=True)

    data = BulkTriggerResult(many=True)


class CancelResponse(serializers.Serializer):
    data = serializers.BooleanField(help_text="True if anything was canceled")


_TRIGGER_EXAMPLE = OpenApiExample(
    "welcome",
    value={"name": "welcome", "to": "subscriber-1", "payload": {"delaySeconds": 60}},
    request_only=True,
)
# 422: a workflow the bridge does not define (Novu's workflow_not_found). 502: the
# bridge could not be asked which workflows it defines.
_TRIGGER_ERRORS = error_responses(400, 404, 413, 422, 429, 502)


def _trigger_event_to_store(
    client: Client, body: Any, mode: str = TriggerEvent.Mode.MULTICAST
) -> TriggerEvent:
    """A trigger body validated and checked: its event, not stored yet; or, for a repeat
    of a transactionId already stored that the checks now refuse, the stored event."""
    try:
        return _trigger_event_checked(client, body, mode)
    except (ApiError, serializers.ValidationError):
        # A retry after a lost answer meets the checks as they are now: a topic deleted,
        # a bridge down or a workflow changed since would refuse a trigger already taken,
        # whose first event stands (as a repeat that passes the checks is answered).
        # Looked up only here: the common case stays one INSERT.
        given = body.get("transactionId") if isinstance(body, dict) else None
        transaction_id = _stored_transaction_id(given) if isinstance(given, str) else ""
        stored = (
            selectors.trigger_event_find(client_id=client.pk, transaction_id=transaction_id)
            if transaction_id
            else None
        )
        if stored is None:
            raise
        return stored


def _trigger_event_checked(client: Client, body: Any, mode: str) -> TriggerEvent:
    """A trigger body validated by its serializer, then checked by the service."""
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_request", "The body must be a JSON object")
    broadcast = mode == TriggerEvent.Mode.BROADCAST
    data = (BroadcastInput if broadcast else TriggerInput)(data=body)
    data.is_valid(raise_exception=True)
    values = data.validated_data
    return services.trigger_event_check(
        client=client,
        workflow_id=values["name"],
        mode=mode,
        to=None if broadcast else values["to"],
        payload=values.get("payload") or {},
        transaction_id=values.get("transactionId") or str(uuid.uuid4()),
        resource=values.get("resource") or values.get("bridgeUrl"),
        # Named as the caller named it: novu-py sends `bridgeUrl`, Novu's own name for it.
        resource_field="resource" if values.get("resource") else "bridgeUrl",
        actor=values.get("actor"),
        overrides=values.get("overrides") or {},
    )


class _WordOrTransactionId(APIView):
    """A trigger route named by a word (`bulk`, `broadcast`), which a transactionId may be
    too (Novu takes any string): a POST is this view's, a GET or DELETE the trigger
    event's of that transactionId, which answered 405 here."""

    word: str

    def dispatch(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        if request.method in ("GET", "HEAD", "DELETE"):
            return _trigger_event_view(request, transaction_id=self.word)
        return super().dispatch(request, *args, **kwargs)


class TriggerApi(APIView):
    throttle_classes = [ClientTriggerRate]

    @extend_schema(
        operation_id="v1_events_trigger",
        tags=["Events"],
        summary="Trigger a workflow for subscribers and topics",
        request=TriggerInput,
        responses={201: TriggerResponse, **_TRIGGER_ERRORS},
        examples=[_TRIGGER_EXAMPLE],
    )
    def post(self, request: Request) -> Response:
        event = services.trigger_event_store(_trigger_event_to_store(request.user, request.data))
        return _trigger_response(event)


def _bulk_events(request: Request) -> list[Any] | None:
    """A bulk trigger's `events`, or None unless they are a list of 1 to MAX_BULK_EVENTS:
    read alike by the rate limit (its cost) and by the view (its refusal)."""
    events = request.data.get("events") if isinstance(request.data, dict) else None
    if not isinstance(events, list) or not 0 < len(events) <= MAX_BULK_EVENTS:
        return None
    return events


class BulkTriggerApi(_WordOrTransactionId):
    word = "bulk"
    throttle_classes = [ClientTriggerRate]

    def trigger_cost(self, request: Request) -> int:
        events = _bulk_events(request)
        return 1 if events is None else len(events)  # None: the view refuses it, and says why

    @extend_schema(
        operation_id="v1_events_trigger_bulk",
        tags=["Events"],
        summary="Trigger up to 100 events; each succeeds or fails on its own",
        request=BulkTriggerRequest,
        responses={201: BulkTriggerResponse, **error_responses(400, 413, 429)},
    )
    def post(self, request: Request) -> Response:
        """Each event succeeds or fails on its own; one bad event sinks no other."""
        events = _bulk_events(request)
        if events is None:
            message = f"'events' must be a list of 1 to {MAX_BULK_EVENTS} trigger bodies"
            raise ApiError(
                400, "invalid_request", message, [{"field": "events", "message": message}]
            )
        # Checked one by one (a check may ask the bridge), then stored together.
        checked: list[TriggerEvent | dict[str, Any]] = []
        for body in events:
            try:
                checked.append(_trigger_event_to_store(request.user, body))
            except (ApiError, serializers.ValidationError) as exc:
                given = body.get("transactionId") if isinstance(body, dict) else None
                message = exc.message if isinstance(exc, ApiError) else validation_message(exc)
                checked.append(
                    {
                        "acknowledged": True,
                        "status": "error",
                        "error": [message],
                        "transactionId": given if isinstance(given, str) else "",
                    }
                )
        services.trigger_events_store([e for e in checked if isinstance(e, TriggerEvent)])
        # A repeated transactionId answers "processed" too: its first event stands.
        results = [
            item
            if isinstance(item, dict)
            else {"acknowledged": True, "status": "processed", "transactionId": item.transaction_id}
            for item in checked
        ]
        return Response({"data": results}, status=201)


@extend_schema_serializer(component_name="TriggerEventResponse")
class TriggerEventResponse(serializers.Serializer):
    class TriggerEventOutput(serializers.Serializer):
        transactionId = serializers.CharField(source="transaction_id")
        workflow = serializers.CharField(source="workflow_id")
        mode = serializers.ChoiceField(choices=TriggerEvent.Mode.choices)
        status = serializers.ChoiceField(
            choices=TriggerEvent.Status.choices,
            help_text="received (not fanned out yet), processing, processed (every recipient"
            " was sent its notification's command), failed (see error) or canceled",
        )
        recipients = serializers.IntegerField(
            help_text="the audience the fan-out found (0 until processed)"
        )
        notifications = serializers.DictField(
            source="outcomes",
            child=serializers.IntegerField(),
            help_text="how many of its notifications are pending, running, completed, failed"
            " or canceled",
        )
        error = serializers.CharField(
            help_text="why the fan-out failed, or what it left out (a recipient's"
            " attribute, an actor, a topic deleted since the trigger); empty when nothing went"
            " wrong"
        )
        createdAt = TimestampField(source="created_at")
        processedAt = TimestampField(source="processed_at", allow_null=True)
        canceledAt = TimestampField(source="canceled_at", allow_null=True)

    data = TriggerEventOutput()


class TriggerEventApi(APIView):
    @extend_schema(
        operation_id="v1_events_trigger_retrieve",
        tags=["Events"],
        summary="How a trigger's fan-out went, and its notifications' outcomes (norm only)",
        responses={200: TriggerEventResponse, **error_responses(404)},
    )
    def get(self, request: Request, transaction_id: str) -> Response:
        # Novu has no such read: a trigger whose fan-out failed or reached nobody (an
        # inactive client, a topic deleted since) shows no notification to list.
        event = selectors.trigger_event_get(
            client_id=request.user.pk, transaction_id=_stored_transaction_id(transaction_id)
        )
        if event is None:
            raise ApiError(404, "trigger_not_found", "No trigger with this transactionId")
        return Response({"data": TriggerEventResponse.TriggerEventOutput(event).data})

    @extend_schema(
        operation_id="v1_events_trigger_cancel",
        tags=["Events"],
        summary="Cancel the unfinished notifications of a trigger",
        responses={200: CancelResponse, **error_responses()},
    )
    def delete(self, request: Request, transaction_id: str) -> Response:
        canceled = services.trigger_event_cancel(
            client=request.user, transaction_id=_stored_transaction_id(transaction_id)
        )
        return Response({"data": canceled.stopped})


_trigger_event_view = TriggerEventApi.as_view()


class BroadcastApi(_WordOrTransactionId):
    word = "broadcast"
    throttle_classes = [ClientTriggerRate]

    @extend_schema(
        operation_id="v1_events_trigger_broadcast",
        tags=["Events"],
        summary="Trigger a workflow for every subscriber of the client",
        request=BroadcastInput,
        responses={201: TriggerResponse, **_TRIGGER_ERRORS},
    )
    def post(self, request: Request) -> Response:
        checked = _trigger_event_to_store(request.user, request.data, TriggerEvent.Mode.BROADCAST)
        return _trigger_response(services.trigger_event_store(checked))
