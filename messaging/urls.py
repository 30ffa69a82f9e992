from __future__ import annotations

from django.urls import path

import config.converters  # noqa: F401 (registers <trimmed:>)
from messaging import apis

urlpatterns = [
    path("v1/messages", apis.MessageListApi.as_view(), name="message-list"),
    path(
        "v1/subscribers/<trimmed:subscriber_id>/notifications/feed",
        apis.FeedApi.as_view(),
        name="subscriber-feed",
    ),
    # Novu's API has served both spellings.
    path(
        "v1/subscribers/<trimmed:subscriber_id>/messages/markAs",
        apis.MarkAsApi.as_view(),
        name="subscriber-mark-as",
    ),
    path("v1/subscribers/<trimmed:subscriber_id>/messages/mark-as", apis.MarkAsApi.as_view()),
    path(
        "v1/subscribers/<trimmed:subscriber_id>/messages/mark-all",
        apis.MarkAllApi.as_view(),
        name="subscriber-mark-all",
    ),
    path(
        "v1/subscribers/<trimmed:subscriber_id>/messages/<str:message_id>/actions/<str:action_type>",
        apis.MessageActionApi.as_view(),
    ),
    path(
        "v1/subscribers/<trimmed:subscriber_id>/notifications/unseen",
        apis.UnseenCountApi.as_view(),
        name="subscriber-unseen-count",
    ),
    # v2: novu-py's subscribers.notifications.
    path("v2/subscribers/<trimmed:subscriber_id>/notifications", apis.InboxListApi.as_view()),
    path(
        "v2/subscribers/<trimmed:subscriber_id>/notifications/count", apis.InboxCountApi.as_view()
    ),
    path(
        "v2/subscribers/<trimmed:subscriber_id>/notifications/read",
        apis.InboxMarkAllApi.as_view(mark=apis.MARK_AS["read"]),
    ),
    path(
        "v2/subscribers/<trimmed:subscriber_id>/notifications/seen",
        apis.InboxMarkAllApi.as_view(mark=apis.MARK_AS["seen"]),
    ),
    path(
        "v2/subscribers/<trimmed:subscriber_id>/notifications/<str:notification_id>/read",
        apis.InboxMarkOneApi.as_view(mark=apis.MARK_AS["read"]),
    ),
    path(
        "v2/subscribers/<trimmed:subscriber_id>/notifications/<str:notification_id>/unread",
        apis.InboxMarkOneApi.as_view(mark=apis.MARK_AS["unread"]),
    ),
    path(
        "v2/subscribers/<trimmed:subscriber_id>/notifications/<str:notification_id>"
        "/actions/<str:action_type>/complete",
        apis.InboxActionApi.as_view(action_status="done"),
    ),
    path(
        "v2/subscribers/<trimmed:subscriber_id>/notifications/<str:notification_id>"
        "/actions/<str:action_type>/revert",
        apis.InboxActionApi.as_view(action_status="pending"),
    ),
]
