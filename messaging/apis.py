"""Messages, Novu-shaped: a subscriber's in-app feed and its seen/read marks, and the
client's messages sent or failed (GET /v1/messages)."""

from __future__ import annotations

import base64
import binascii
import re
from datetime import UTC, datetime
from typing import Any

from django.db.models import F, Q
from django.db.models.fields.json import KeyTransform
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    extend_schema,
    extend_schema_field,
    extend_schema_serializer,
)
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from config.dates import TimestampField, iso_z, through_millisecond
from config.db import row_id
from config.errors import ApiError, error_responses
from config.paging import (
    LIMIT_PARAMETER,
    PAGE_PARAMETERS,
    page_of,
    paginate,
    query_bool,
    query_filters_given,
    query_given,
    query_int,
    query_limit,
    query_values,
)
from config.parsers import query_json
from messaging import services
from messaging.models import Message
from subscribers import selectors as subscriber_selectors
from workflows import selectors


def _message_ids(values: list[Any]) -> set[int]:
    """The ids among `values` that can be a message's (row_id); the others find nothing."""
    return {pk for v in values if (pk := row_id(str(v))) is not None}


# Novu's marks by name (v1's markAs, v2's /read and /unread): marked unread, a message
# the subscriber opened to do so counts as seen, as read does (Novu's
# getReadSeenUpdatePayload and updateMessagesStatus). v1's older `mark: {"read": false}`
# sets only what it names.
MARK_AS: dict[str, dict[str, bool | None]] = {
    "read": {"seen": None, "read": True},
    "seen": {"seen": True, "read": None},
    "unread": {"seen": True, "read": False},
    "unseen": {"seen": False, "read": None},
}


# Novu's redirect targets: novu-py refuses the whole list for a notification with another.
_TARGETS = {"_self", "_blank", "_parent", "_top", "_unfencedTop"}
# Where a click may go: the framework's in-app output schema (and norm's SDK) take only
# these. A bridge of another kind stores what it likes, and an inbox puts the URL in a
# link's href, where `javascript:` would run in the subscriber's browser.
_REDIRECT_URL = re.compile(r"(https?://|/)")


class UnseenCountResponse(serializers.Serializer):
    class Count(serializers.Serializer):
        count = serializers.IntegerField()

    data = Count()


def _narrowed(
    feed: Any,
    *,
    seen: bool | None = None,
    read: bool | None = None,
    archived: bool | None = None,
    snoozed: bool | None = None,
) -> Any:
    """The feed's messages seen or not, read or not (None: either way). norm neither
    archives nor snoozes, so asking for those finds nothing."""
    for wanted, field in ((seen, "seen_at"), (read, "read_at")):
        if wanted is not None:
            feed = feed.filter(**{f"{field}__isnull": not wanted})
    return feed.none() if archived or snoozed else feed


# Novu's inbox filters that norm has nothing to match with (it keeps no tags, data
# filters or contexts): ignored, they would list or count every notification.
_UNSUPPORTED_INBOX_FILTERS = ("tags", "data", "contextKeys")


_SEVERITIES = ("high", "medium", "low", "none")
# A filter's value that asks for nothing.
_NONE: tuple[Any, ...] = (None, "", [])


def _asks_nothing(value: Any) -> bool:
    """A filter's value that narrows by nothing: none, empty, or (`data`, which Novu's
    DTOs take as a JSON string and its clients send stringified) the JSON of an empty
    object, which Novu matches with no condition. `data={}` was a 400 where `data=`
    was no filter, though both ask for the same."""
    if isinstance(value, str) and value.strip().startswith("{"):
        try:
            value = query_json(value)
        except ValueError:
            return False  # no JSON: refused, as a filter norm cannot apply
    return value in (*_NONE, {}) or (isinstance(value, str) and not value.strip())


def _inbox_narrowed(feed: Any, filters: dict[str, Any]) -> Any:
    """The feed narrowed by the v2 inbox's other filters: `severity` (a list; norm's
    notifications all have Novu's default, none) and `createdGte`/`createdLte` (Unix
    milliseconds). A 400 for a filter norm cannot apply."""
    unsupported = [k for k in _UNSUPPORTED_INBOX_FILTERS if not _asks_nothing(filters.get(k))]
    if unsupported:
        raise ApiError(
            400, "invalid_query", f"norm cannot filter notifications by {', '.join(unsupported)}"
        )
    severity = filters.get("severity")
    wanted = [] if severity in _NONE else severity if isinstance(severity, list) else [severity]
    if not all(isinstance(s, str) and s in _SEVERITIES for s in wanted):
        # Novu's enum, refused as Novu does: a misspelt one found nothing, as if none matched.
        message = f"'severity' must be one of {', '.join(_SEVERITIES)}"
        raise ApiError(400, "invalid_query", message)
    if wanted and "none" not in wanted:
        feed = feed.none()
    if filters.get("createdGte") not in (None, ""):
        feed = feed.filter(created_at__gte=_from_ms("createdGte", filters["createdGte"]))
    if filters.get("createdLte") not in (None, ""):
        # To the end of its millisecond: a notification's own createdAt, as a JS Date
        # holds it, lists it, though its time was stored with microseconds.
        at = _from_ms("createdLte", filters["createdLte"])
        feed = feed.filter(created_at__lt=through_millisecond(at))
    return feed


def _payload_narrowed(feed: Any, value: str) -> Any:
    """The v1 feed narrowed by its `payload` filter: the base64 of a JSON object, "the
    partial payload", each of whose values the notification's payload has (Novu matches
    each path of it: {"shop": {"id": 7}} takes a shop with more keys). A 400 for a list
    in it (Novu matches a list item by item, by position) and for no object: ignored,
    it listed the whole feed."""
    try:
        wanted = query_json(
            base64.b64decode(value.translate(_URL_SAFE) + "=" * (-len(value) % 4), validate=True)
        )
    except (binascii.Error, ValueError) as exc:
        raise ApiError(
            400, "invalid_query", f"'payload' must be the base64 of a JSON object: {exc}"
        ) from exc
    if not isinstance(wanted, dict):
        raise ApiError(400, "invalid_query", "'payload' must be the base64 of a JSON object")
    if _has_list(wanted):
        raise ApiError(400, "invalid_query", "norm cannot filter by a list in the 'payload'")
    # Each path of it equal, as Novu matches: the JSON lookups SQLite has too (`make
    # run`), where containment (`contains`) is PostgreSQL's alone, and a 500 there.
    for number, (path, item) in enumerate(_paths(wanted)):
        lookup: Any = F("step__notification__trigger_event__payload")
        for key in path:
            lookup = KeyTransform(key, lookup)
        feed = feed.alias(**{f"payload_{number}": lookup}).filter(**{f"payload_{number}": item})
    return feed


def _paths(value: dict[str, Any], prefix: tuple[str, ...] = ()) -> Any:
    """(path, value) of each leaf of a JSON object: {"shop": {"id": 7}} gives
    (("shop", "id"), 7); an empty object adds none, as in Novu's flattening."""
    for key, item in value.items():
        if isinstance(item, dict):
            yield from _paths(item, (*prefix, key))
        else:
            yield (*prefix, key), item


# Novu decodes base64 as Node's Buffer does: the URL-safe alphabet and padding left out.
_URL_SAFE = str.maketrans("-_", "+/")


def _has_list(value: Any) -> bool:
    if isinstance(value, dict):
        return any(_has_list(v) for v in value.values())
    return isinstance(value, list)


def _from_ms(name: str, value: Any) -> datetime:
    try:
        return datetime.fromtimestamp(float(value) / 1000, tz=UTC)
    except (TypeError, ValueError, OverflowError, OSError) as exc:
        message = f"'{name}' must be a Unix time in milliseconds"
        raise ApiError(400, "invalid_query", message) from exc


def _feed(request: Request, subscriber_id: str, *, status: int = 404) -> Any:
    feed = selectors.in_app_feed(client_id=request.user.pk, subscriber_id=subscriber_id)
    if feed is None:
        raise ApiError(status, "subscriber_not_found", f"Subscriber '{subscriber_id}' not found")
    return feed


# Novu's v1 feed and unseen count and v2 count refuse a subscriber they do not find
# with a 400 (an ApiException in GetNotificationsFeed, GetFeedCount and
# NotificationsCount), its marks and v2 list a 404.
_COUNTS_UNKNOWN = 400


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
        lastSeenDate = TimestampField(
            source="seen_at", required=False, help_text="left out until it is seen"
        )
        lastReadDate = TimestampField(
            source="read_at", required=False, help_text="left out until it is read"
        )
        createdAt = TimestampField(source="created_at")
        # What novu-py's NotificationFeedItemDto and MessageResponseDto require.
        _templateId = serializers.CharField(source="step.notification.workflow_id")
        _environmentId = serializers.CharField(source="client_id")
        _organizationId = serializers.CharField(source="client_id")
        _notificationId = serializers.CharField(source="step.notification_id")
        _subscriberId = serializers.CharField(source="subscriber_id")
        _jobId = serializers.CharField(source="step_id")
        archived = serializers.BooleanField(default=False, read_only=True)
        cta = serializers.SerializerMethodField()
        status = serializers.CharField(default="sent", read_only=True)

        def to_representation(self, message: Message) -> dict[str, Any]:
            data = super().to_representation(message)
            # Left out while unset, as Novu does: its schema takes no null for these,
            # and @novu/api refuses the whole answer for one.
            for key in ("lastSeenDate", "lastReadDate"):
                if data[key] is None:
                    del data[key]
            return data

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

        def get_cta(self, message: Message) -> dict[str, Any]:
            return _cta(message.content, message.action) if message.channel == "in_app" else {}

        def get_seen(self, message: Message) -> bool:
            return message.seen_at is not None

        def get_read(self, message: Message) -> bool:
            return message.read_at is not None

    @extend_schema(
        operation_id="v1_subscribers_notifications_feed",
        tags=["Inbox"],
        summary="A subscriber's in-app messages, newest first",
        parameters=[
            *PAGE_PARAMETERS,
            OpenApiParameter("seen", OpenApiTypes.BOOL),
            OpenApiParameter("read", OpenApiTypes.BOOL),
            OpenApiParameter(
                "payload",
                description="base64 of a JSON object: only the notifications whose payload has"
                " each of its values (no lists)",
            ),
        ],
        responses={
            200: page_of("FeedPage", OutputSerializer(many=True)),
            **error_responses(400),
        },
    )
    def get(self, request: Request, subscriber_id: str) -> Response:
        feed = _narrowed(
            _feed(request, subscriber_id, status=_COUNTS_UNKNOWN),
            seen=query_bool(request, "seen"),
            read=query_bool(request, "read"),
        )
        if request.query_params.get("payload"):
            feed = _payload_narrowed(feed, request.query_params["payload"])
        rows, meta = paginate(request, feed)
        return Response({"data": self.OutputSerializer(rows, many=True).data, **meta})


class MessageListApi(APIView):
    """GET /v1/messages: novu-py's messages.retrieve, novu 1.14's MessageApi.list."""

    @extend_schema_serializer(component_name="Message")
    class OutputSerializer(FeedApi.OutputSerializer):
        status = serializers.SerializerMethodField()
        errorText = serializers.CharField(source="error")
        providerId = serializers.SerializerMethodField(help_text="Novu's id for the provider")
        email = serializers.CharField(
            source="recipient", required=False, help_text="an email's address; left out else"
        )

        def to_representation(self, message: Message) -> dict[str, Any]:
            data = super().to_representation(message)
            # Novu's `email` is the address an email went to; no other message has one.
            if message.channel != "email" or not message.recipient:
                del data["email"]
            return data

        def get_status(self, message: Message) -> str:
            # Novu's message statuses are sent, error and warning.
            return "error" if message.status == Message.Status.FAILED else "sent"

        def get_providerId(self, message: Message) -> str:
            # As its job says it (the activity's jobs): Novu's ids, not norm's names.
            return selectors.NOVU_PROVIDER_IDS.get(message.provider, selectors.NORM_ITSELF)

    class FilterSerializer(serializers.Serializer):
        channel = serializers.ChoiceField(choices=sorted(selectors.CHANNEL_TYPES), required=False)
        subscriberId = serializers.CharField(required=False)
        transactionId = serializers.ListField(
            child=serializers.CharField(), required=False, help_text="repeatable: any of them"
        )

        def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
            # norm keeps no contexts: ignoring the filter would answer every message. An
            # empty one asks for none, which every message of norm's matches.
            if query_filters_given(self.initial_data, ["contextKeys"]):
                raise serializers.ValidationError({"contextKeys": "norm cannot filter by this"})
            return attrs

    @extend_schema(
        operation_id="v1_messages_list",
        tags=["Messages"],
        summary="List the messages sent (or failed), newest first",
        parameters=[FilterSerializer, *PAGE_PARAMETERS],
        responses={
            200: page_of("MessagePage", OutputSerializer(many=True)),
            **error_responses(400, 404),
        },
    )
    def get(self, request: Request) -> Response:
        filters = self.FilterSerializer(data=query_given(request.query_params))
        filters.is_valid(raise_exception=True)
        if subscriber_id := filters.validated_data.get("subscriberId"):
            # As Novu's GetMessages: a subscriber it does not find is a 404 (GetSubscriber),
            # not an empty page that reads as a subscriber who was sent nothing.
            subscriber_selectors.subscriber_get(
                client_id=request.user.pk, subscriber_id=subscriber_id
            )
        messages = selectors.message_list(client_id=request.user.pk, filters=filters.validated_data)
        rows, meta = paginate(request, messages)
        return Response({"data": self.OutputSerializer(rows, many=True).data, **meta})


class UnseenCountApi(APIView):
    @extend_schema(
        operation_id="v1_subscribers_notifications_unseen",
        tags=["Inbox"],
        summary="How many in-app messages are unseen (or seen, with seen=true), up to limit",
        parameters=[
            OpenApiParameter("seen", OpenApiTypes.BOOL, description="default false"),
            OpenApiParameter("limit", OpenApiTypes.INT, description="count at most this many"),
        ],
        responses={200: UnseenCountResponse, **error_responses(400)},
    )
    def get(self, request: Request, subscriber_id: str) -> Response:
        feed = _feed(request, subscriber_id, status=_COUNTS_UNKNOWN)
        feed = _narrowed(feed, seen=query_bool(request, "seen") or False)
        limit = query_int(request, "limit", 100, minimum=1)
        return Response({"data": {"count": feed[:limit].count()}})


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
        mark = MarkSerializer(required=False)
        # novu-py's form: `"markAs": "read"` for `"mark": {"read": true}`.
        markAs = serializers.ChoiceField(choices=list(MARK_AS), required=False)

        def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
            if "markAs" in attrs:
                attrs["mark"] = MARK_AS[attrs.pop("markAs")]
            if "mark" not in attrs:
                raise serializers.ValidationError({"mark": "set mark or markAs"})
            return attrs

        def validate_messageId(self, value: Any) -> list[str]:
            ids = value if isinstance(value, list) else [value]
            if not ids or not all(
                isinstance(i, str | int) and not isinstance(i, bool) for i in ids
            ):
                raise serializers.ValidationError("must be a message id or a list of them")
            return [str(i) for i in ids]

    # The messages as GET /v1/messages gives them: Novu answers the same entity from
    # both, which novu-py reads as one model (MessageResponseDto).
    @extend_schema_serializer(component_name="MarkAsResponse")
    class ResponseSerializer(serializers.Serializer):
        data = MessageListApi.OutputSerializer(many=True)

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
        wanted = _message_ids(ids)
        messages = _feed(request, subscriber_id).filter(pk__in=wanted)
        if len(wanted) != len(set(ids)) or messages.count() != len(wanted):
            raise ApiError(404, "message_not_found", "One or more messages were not found")
        services.messages_mark(messages=messages, seen=mark["seen"], read=mark["read"])
        marked = list(messages)  # as now stored
        if len(marked) != len(wanted):  # deleted meanwhile, with their subscriber
            raise ApiError(404, "message_not_found", "One or more messages were not found")
        return Response(
            {"data": MessageListApi.OutputSerializer(marked, many=True).data}, status=201
        )


class MarkAllApi(APIView):
    @extend_schema_serializer(component_name="MarkAllInput")
    class InputSerializer(serializers.Serializer):
        markAs = serializers.ChoiceField(choices=list(MARK_AS))

    class ResponseSerializer(serializers.Serializer):
        data = serializers.IntegerField(help_text="how many messages changed")

    @extend_schema(
        tags=["Inbox"],
        summary="Mark all of a subscriber's in-app messages read, seen, unread or unseen",
        request=InputSerializer,
        responses={201: ResponseSerializer, **error_responses(400, 404, 422)},
    )
    def post(self, request: Request, subscriber_id: str) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        if request.data.get("feedIdentifier") not in (None, "", []):
            # norm keeps no feeds: marking every message would mark more than asked.
            raise ApiError(
                400, "invalid_request", "norm has no feeds: it cannot mark by feedIdentifier"
            )
        mark = MARK_AS[data.validated_data["markAs"]]
        feed = _feed(request, subscriber_id)
        if data.validated_data["markAs"] == "unread":
            # Only those read, as Novu's markAllMessagesAs: the others were not opened
            # to be marked, and stay unseen if they are.
            feed = feed.filter(read_at__isnull=False)
        changed = services.messages_mark(messages=feed, seen=mark["seen"], read=mark["read"])
        return Response({"data": changed}, status=201)


# --- v2: novu-py's subscribers.notifications (its current inbox calls) ---------------------


class InboxRedirect(serializers.Serializer):
    url = serializers.CharField()
    target = serializers.ChoiceField(choices=sorted(_TARGETS), required=False)


class InboxAction(serializers.Serializer):
    label = serializers.CharField()
    isCompleted = serializers.BooleanField()
    redirect = InboxRedirect(required=False)


class InboxWorkflow(serializers.Serializer):
    id = serializers.CharField(help_text="the workflow's id, as the activity's template names it")
    identifier = serializers.CharField()
    name = serializers.CharField()
    critical = serializers.BooleanField()
    severity = serializers.CharField()


class InboxNotificationOutput(serializers.Serializer):
    """For the OpenAPI schema only: inbox_dto builds the answer."""

    class To(serializers.Serializer):
        id = serializers.CharField()
        subscriberId = serializers.CharField()
        firstName = serializers.CharField(required=False, help_text="left out when empty")
        lastName = serializers.CharField(required=False, help_text="left out when empty")
        avatar = serializers.CharField(required=False, help_text="left out when empty")

    id = serializers.CharField()
    transactionId = serializers.CharField()
    subject = serializers.CharField(allow_blank=True)
    body = serializers.CharField(allow_blank=True)
    to = To()
    isRead = serializers.BooleanField()
    isSeen = serializers.BooleanField()
    isArchived = serializers.BooleanField()
    isSnoozed = serializers.BooleanField()
    readAt = TimestampField(allow_null=True)
    firstSeenAt = TimestampField(allow_null=True)
    createdAt = TimestampField()
    channelType = serializers.CharField()
    severity = serializers.CharField()
    data = serializers.DictField()
    workflow = InboxWorkflow()
    avatar = serializers.CharField(required=False)
    primaryAction = InboxAction(required=False)
    secondaryAction = InboxAction(required=False)
    redirect = InboxRedirect(required=False)


class InboxPage(serializers.Serializer):
    data = InboxNotificationOutput(many=True)
    hasMore = serializers.BooleanField()
    filter = serializers.DictField()


class InboxNotificationResponse(serializers.Serializer):
    data = InboxNotificationOutput()


class InboxCount(serializers.Serializer):
    count = serializers.IntegerField()
    filter = serializers.DictField()


class InboxCounts(serializers.Serializer):
    data = InboxCount(many=True)


class NotificationIdsInput(serializers.Serializer):
    notificationIds = serializers.ListField(child=serializers.CharField(), required=False)


def _redirect(value: Any) -> dict[str, Any] | None:
    """An in-app output's redirect as Novu's RedirectDto; None for none, or one not
    shaped as Novu's or to a URL it refuses (from a bridge other than the SDKs: the
    outputs are stored as sent)."""
    if not isinstance(value, dict) or not isinstance(value.get("url"), str):
        return None
    if not _REDIRECT_URL.match(value["url"]):
        return None
    target = value.get("target")
    known = isinstance(target, str) and target in _TARGETS
    return {"url": value["url"]} | ({"target": target} if known else {})


ACTION_TYPES = ("primary", "secondary")


def _completed(taken: dict[str, Any], kind: str) -> bool:
    """Whether the button `kind` is done, by the message's `action` (Novu's
    notification-mapper: the result's type is that button's, its status done)."""
    result = taken.get("result")
    done = isinstance(result, dict) and result.get("type") == kind
    return done and taken.get("status") == "done"


def _action(value: Any, completed: bool = False) -> dict[str, Any] | None:
    """An in-app output's primaryAction or secondaryAction as Novu's InboxActionDto;
    None as for `_redirect`."""
    if not isinstance(value, dict) or not isinstance(value.get("label"), str):
        return None
    redirect = _redirect(value.get("redirect"))
    return {"label": value["label"], "isCompleted": completed} | (
        {"redirect": redirect} if redirect else {}
    )


def _cta(content: dict[str, Any], taken: dict[str, Any]) -> dict[str, Any]:
    """An in-app output's redirect and actions as the v1 message's `cta`, as Novu maps a
    framework step's outputs (@novu/shared's inAppMessageFromBridgeOutputs): the redirect
    is where a click on the message goes, each action a button; with what was done with
    them (`taken`, the message's `action`): its status and result, as Novu's."""
    buttons = []
    for kind in ACTION_TYPES:
        if action := _action(content.get(f"{kind}Action")):
            link = action.get("redirect", {})
            buttons.append({"type": kind, "content": action["label"], **link})
    status = {"status": taken["status"]} if isinstance(taken.get("status"), str) else {}
    result = taken.get("result")
    return {
        "type": "redirect",
        "data": _redirect(content.get("redirect")) or {},
        "action": {
            **status,
            "result": result if isinstance(result, dict) else {},
            "buttons": buttons,
        },
    }


def _links(content: dict[str, Any], taken: dict[str, Any]) -> dict[str, Any]:
    """What an inbox draws around the text: avatar, action buttons (each completed or
    not, by `taken`, the message's `action`), where a click goes."""
    links = {
        "avatar": content["avatar"] if isinstance(content.get("avatar"), str) else None,
        **{
            f"{kind}Action": _action(content.get(f"{kind}Action"), _completed(taken, kind))
            for kind in ACTION_TYPES
        },
        "redirect": _redirect(content.get("redirect")),
    }
    return {key: value for key, value in links.items() if value is not None}


def inbox_dto(message: Message) -> dict[str, Any]:
    """Novu's InboxNotificationDto for an in-app message."""
    subscriber, content = message.subscriber, message.content
    data = content.get("data")
    workflow = message.step.notification.workflow_id
    return {
        "id": str(message.pk),
        "transactionId": message.step.notification.trigger_event.transaction_id,
        "subject": str(content.get("subject") or ""),
        "body": str(content.get("body") or ""),
        "to": {
            "id": str(subscriber.pk),
            "subscriberId": subscriber.subscriber_id,
            # Left out when empty, as Novu does: its schema takes no null for these,
            # and @novu/api refuses the whole answer for one.
            **{
                key: value
                for key, value in (
                    ("firstName", subscriber.first_name),
                    ("lastName", subscriber.last_name),
                    ("avatar", subscriber.avatar),
                )
                if value
            },
        },
        "isRead": message.read_at is not None,
        "isSeen": message.seen_at is not None,
        "isArchived": False,  # norm neither archives nor snoozes
        "isSnoozed": False,
        "readAt": iso_z(message.read_at),
        "firstSeenAt": iso_z(message.seen_at),
        "createdAt": iso_z(message.created_at),
        "channelType": "in_app",
        "severity": "none",
        "data": data if isinstance(data, dict) else {},
        # Novu names the workflow a notification came from, which an inbox groups and
        # routes by; named by its id, as the activity's `template` is. norm keeps no
        # criticality or severity: Novu's defaults, as the notification's own.
        "workflow": {
            "id": workflow,
            "identifier": workflow,
            "name": workflow,
            "critical": False,
            "severity": "none",
        },
        **_links(content, message.action),
    }


def _below(feed: Any, whole: Any, after: int) -> Any:
    """The feed's messages listed below message `after` (newest first). In the list's
    order, (created_at, id): by id alone it would skip a message whose id and creation
    time are out of step (two workers saving at once), and repeat one the other way. A
    message gone since its id was given (deleted, or purged) has no creation time left:
    the page goes on below its id, as ids rise with time, rather than end the inbox
    there (an empty page reads "no more" to @novu/js)."""
    at = whole.filter(pk=after).values_list("created_at", flat=True).first()
    if at is None:
        return feed.filter(pk__lt=after)
    return feed.filter(Q(created_at__lt=at) | Q(created_at=at, pk__lt=after))


class InboxListApi(APIView):
    @extend_schema(
        operation_id="v2_subscribers_notifications_list",
        tags=["Inbox"],
        summary="A subscriber's in-app notifications, newest first (Novu's v2 inbox)",
        parameters=[
            LIMIT_PARAMETER,
            OpenApiParameter("after", description="the id of the last notification seen"),
            OpenApiParameter("offset", OpenApiTypes.INT),
            OpenApiParameter("read", OpenApiTypes.BOOL),
            OpenApiParameter("seen", OpenApiTypes.BOOL),
            OpenApiParameter("archived", OpenApiTypes.BOOL, description="none are"),
            OpenApiParameter("snoozed", OpenApiTypes.BOOL, description="none are"),
            OpenApiParameter("severity", many=True, enum=_SEVERITIES, description="all are none"),
            OpenApiParameter("createdGte", OpenApiTypes.NUMBER, description="Unix ms"),
            OpenApiParameter("createdLte", OpenApiTypes.NUMBER, description="Unix ms"),
        ],
        responses={200: InboxPage, **error_responses(400, 404)},
    )
    def get(self, request: Request, subscriber_id: str) -> Response:
        asked = {k: query_bool(request, k) for k in ("seen", "read", "archived", "snoozed")}
        whole = _feed(request, subscriber_id)
        feed = _narrowed(whole, **asked)
        params = request.query_params
        # An empty value (`severity=`) asks for nothing: kept, it was a value norm refused.
        others = {k: query_values(params, k) for k in ("severity", "contextKeys", "tags")}
        others |= {k: params.get(k) for k in ("data", "createdGte", "createdLte")}
        feed = _inbox_narrowed(feed, others)
        limit = query_limit(request)
        offset = query_int(request, "offset", 0)
        after = request.query_params.get("after", "")
        if after:
            if (after_id := row_id(after)) is None:
                raise ApiError(400, "invalid_query", "'after' must be a notification id")
            feed = _below(feed, whole, after_id)
            # The cursor says where the page starts, as in Novu's, which skips no
            # `offset` past it: a client sending both had that many skipped twice.
            offset = 0
        rows = list(feed[offset : offset + limit + 1])
        return Response(
            {
                "data": [inbox_dto(m) for m in rows[:limit]],
                "hasMore": len(rows) > limit,
                "filter": {k: v for k, v in asked.items() if v is not None},
            }
        )


MAX_COUNT_FILTERS = 30


class InboxCountApi(APIView):
    @extend_schema(
        operation_id="v2_subscribers_notifications_count",
        tags=["Inbox"],
        summary="Count a subscriber's in-app notifications, once per filter",
        parameters=[
            OpenApiParameter(
                "filters",
                description='JSON list of at most 30 filters, e.g. [{"read": false}]',
            )
        ],
        responses={200: InboxCounts, **error_responses(400)},
    )
    def get(self, request: Request, subscriber_id: str) -> Response:
        feed = _feed(request, subscriber_id, status=_COUNTS_UNKNOWN)
        wrong = "'filters' must be a JSON list of objects"
        try:
            # Each count answers its filter back: NaN or an infinity could not be written.
            filters = query_json(request.query_params.get("filters") or "[{}]")
        except ValueError as exc:
            raise ApiError(400, "invalid_query", f"{wrong}: {exc}") from exc
        if not isinstance(filters, list) or not all(isinstance(f, dict) for f in filters):
            raise ApiError(400, "invalid_query", wrong)
        # Novu's bound, refused as Novu does: cut at 20, the counts of the others were
        # left out of the answer without a word.
        if len(filters) > MAX_COUNT_FILTERS:
            raise ApiError(
                400, "invalid_query", f"'filters' takes at most {MAX_COUNT_FILTERS} filters"
            )
        counts = []
        for wanted in filters:
            asked = {k: wanted.get(k) for k in ("seen", "read", "archived", "snoozed")}
            # Novu's @IsBoolean, refused as Novu does: ignored, `{"read": "false"}`
            # counted every notification, read or not. Null narrows by nothing.
            for name, value in asked.items():
                if value is not None and not isinstance(value, bool):
                    raise ApiError(400, "invalid_query", f"'{name}' must be a boolean")
            narrowed = _inbox_narrowed(_narrowed(feed, **asked), wanted)
            counts.append({"count": narrowed.count(), "filter": wanted})
        # In Novu's envelope, as its answer is (a list has no `data` of its own).
        return Response({"data": counts})


# Novu's 404s for a message id the subscriber's feed lacks (another subscriber's or
# client's, or none): the inbox's calls name it a notification, v1's a message.
NOTIFICATION_NOT_FOUND = ("notification_not_found", "Notification not found")
MESSAGE_NOT_FOUND = ("message_not_found", "Message not found")


def _feed_message(
    request: Request, subscriber_id: str, message_id: str, not_found: tuple[str, str]
) -> Message:
    """The in-app message `message_id` of the subscriber's feed, or the 404 `not_found`."""
    found = _feed(request, subscriber_id).filter(pk__in=_message_ids([message_id])).first()
    if found is None:
        raise ApiError(404, *not_found)
    return found


class InboxMarkOneApi(APIView):
    """PATCH .../notifications/{id}/read or /unread: 200 with the notification."""

    mark: dict[str, bool | None] = {}

    @extend_schema(
        tags=["Inbox"],
        summary="Mark an in-app notification read, or unread",
        request=NotificationIdsInput,  # none is read; novu-py sends no body
        responses={200: InboxNotificationResponse, **error_responses(404)},
    )
    def patch(self, request: Request, subscriber_id: str, notification_id: str) -> Response:
        found = _feed_message(request, subscriber_id, notification_id, NOTIFICATION_NOT_FOUND)
        try:
            marked = services.message_mark(message=found, **self.mark)
        except Message.DoesNotExist:  # deleted meanwhile, with its subscriber: a 500
            raise ApiError(404, *NOTIFICATION_NOT_FOUND) from None
        return Response({"data": inbox_dto(marked)})


def _acted_on(message: Message, action_type: str, *, check_button: bool) -> None:
    """Refuse to act on a button of another type than Novu's, or, `check_button`, one the
    message does not have, as Novu's UpdateNotificationAction refuses it (400)."""
    if action_type not in ACTION_TYPES:
        raise ApiError(
            400,
            "invalid_request",
            f"the action type must be primary or secondary, not '{action_type}'",
        )
    if check_button and _action(message.content.get(f"{action_type}Action")) is None:
        raise ApiError(
            400,
            "action_not_found",
            f"Could not perform action on the {action_type} button because it does not exist.",
        )


class InboxActionApi(APIView):
    """PATCH .../notifications/{id}/actions/{actionType}/complete or /revert: novu-py's
    complete_action and revert_action; 200 with the notification."""

    action_status = ""

    @extend_schema(
        tags=["Inbox"],
        summary="Mark an in-app notification's primary or secondary action done, or not",
        request={"application/json": OpenApiTypes.OBJECT},  # none is read; novu-py sends none
        responses={200: InboxNotificationResponse, **error_responses(400, 404)},
    )
    def patch(
        self, request: Request, subscriber_id: str, notification_id: str, action_type: str
    ) -> Response:
        found = _feed_message(request, subscriber_id, notification_id, NOTIFICATION_NOT_FOUND)
        _acted_on(found, action_type, check_button=True)
        try:
            acted = services.message_action_set(
                message=found, action_type=action_type, status=self.action_status
            )
        except Message.DoesNotExist:  # deleted meanwhile, with its subscriber
            raise ApiError(404, *NOTIFICATION_NOT_FOUND) from None
        return Response({"data": inbox_dto(acted)})


class MessageActionApi(APIView):
    """POST /v1/subscribers/{id}/messages/{messageId}/actions/{type}: novu 1.14's
    mark_message_action and novu-py's messages.update_as_seen; 201 with the message."""

    @extend_schema_serializer(component_name="MessageActionInput")
    class InputSerializer(serializers.Serializer):
        status = serializers.ChoiceField(choices=["pending", "done"])
        payload = serializers.DictField(required=False)

    @extend_schema_serializer(component_name="MessageActionResponse")
    class ResponseSerializer(serializers.Serializer):
        data = MessageListApi.OutputSerializer()

    @extend_schema(
        tags=["Inbox"],
        summary="Record an in-app message's primary or secondary action done, or pending",
        request=InputSerializer,
        responses={201: ResponseSerializer, **error_responses(400, 404)},
    )
    def post(
        self, request: Request, subscriber_id: str, message_id: str, action_type: str
    ) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        found = _feed_message(request, subscriber_id, message_id, MESSAGE_NOT_FOUND)
        # Novu's v1 call records the result without looking for the button.
        _acted_on(found, action_type, check_button=False)
        try:
            acted = services.message_action_set(
                message=found,
                action_type=action_type,
                status=data.validated_data["status"],
                payload=data.validated_data.get("payload"),
            )
        except Message.DoesNotExist:  # deleted meanwhile, with its subscriber
            raise ApiError(404, *MESSAGE_NOT_FOUND) from None
        return Response({"data": MessageListApi.OutputSerializer(acted).data}, status=201)


class InboxMarkAllApi(APIView):
    """POST .../notifications/read or /seen: every notification, or `notificationIds`; 204."""

    mark: dict[str, bool | None] = {}

    @extend_schema(
        tags=["Inbox"],
        summary="Mark all (or the listed) in-app notifications read, or seen",
        request=NotificationIdsInput,
        responses={204: None, **error_responses(400, 404)},
    )
    def post(self, request: Request, subscriber_id: str) -> Response:
        feed = _feed(request, subscriber_id)
        body = request.data
        if not isinstance(body, dict):
            # Read as no filter, a list or a string marked every notification.
            raise ApiError(400, "invalid_request", "The body must be a JSON object")
        # Novu narrows by tags, data or context too; norm keeps none of them, and
        # marking everything instead would mark more than was asked.
        # Null or empty narrows by nothing (Novu's @IsOptional), as on the list and count.
        unsupported = sorted(
            k for k in _UNSUPPORTED_INBOX_FILTERS if not _asks_nothing(body.get(k))
        )
        if unsupported:
            raise ApiError(
                400, "invalid_request", f"norm cannot narrow by {', '.join(unsupported)}"
            )
        ids = body.get("notificationIds")
        if ids is not None:
            if not isinstance(ids, list):
                raise ApiError(400, "invalid_request", "'notificationIds' must be a list")
            feed = feed.filter(pk__in=_message_ids(ids))
        services.messages_mark(messages=feed, **self.mark)
        return Response(status=204)
