from __future__ import annotations

from django.urls import path

from messaging import apis

urlpatterns = [
    path(
        "v1/subscribers/<str:subscriber_id>/notifications/feed",
        apis.FeedApi.as_view(),
        name="subscriber-feed",
    ),
    # Novu's API has served both spellings.
    path(
        "v1/subscribers/<str:subscriber_id>/messages/markAs",
        apis.MarkAsApi.as_view(),
        name="subscriber-mark-as",
    ),
    path("v1/subscribers/<str:subscriber_id>/messages/mark-as", apis.MarkAsApi.as_view()),
    path(
        "v1/subscribers/<str:subscriber_id>/messages/mark-all",
        apis.MarkAllApi.as_view(),
        name="subscriber-mark-all",
    ),
    path(
        "v1/subscribers/<str:subscriber_id>/notifications/unseen",
        apis.UnseenCountApi.as_view(),
        name="subscriber-unseen-count",
    ),
]
