from __future__ import annotations

from django.urls import path

import config.converters  # noqa: F401 (registers <trimmed:>)
from subscribers import apis

# Ids go in trimmed (config.converters), as `str` (not `path`): a subscriberId never
# contains a slash.
urlpatterns = [
    path("v2/subscribers", apis.SubscriberListApi.as_view()),
    path("v1/subscribers", apis.SubscriberListV1Api.as_view()),
    # Also the subscriber "bulk", by any method but POST (SubscriberBulkApi).
    path("v1/subscribers/bulk", apis.SubscriberBulkApi.as_view(), {"subscriber_id": "bulk"}),
    path("v2/subscribers/<trimmed:subscriber_id>", apis.SubscriberDetailApi.as_view()),
    path("v1/subscribers/<trimmed:subscriber_id>", apis.SubscriberDetailApi.as_view()),
    path(
        "v1/subscribers/<trimmed:subscriber_id>/online-status",
        apis.SubscriberOnlineStatusApi.as_view(),
    ),
    path(
        "v2/subscribers/<trimmed:subscriber_id>/subscriptions",
        apis.SubscriberSubscriptionsApi.as_view(),
    ),
    path("v2/topics", apis.TopicListApi.as_view()),
    path("v1/topics", apis.TopicListV1Api.as_view()),
    path("v2/topics/<trimmed:key>", apis.TopicDetailApi.as_view()),
    path("v1/topics/<trimmed:key>", apis.TopicDetailV1Api.as_view()),
    path("v2/topics/<trimmed:key>/subscriptions", apis.TopicSubscriptionsApi.as_view()),
    path(
        "v2/topics/<trimmed:key>/subscriptions/<trimmed:identifier>",
        apis.TopicSubscriptionDetailApi.as_view(),
    ),
    path("v1/topics/<trimmed:key>/subscribers", apis.TopicSubscribersV1Api.as_view()),
    # Also the check of the member "removal", by GET (TopicSubscribersRemovalV1Api).
    path(
        "v1/topics/<trimmed:key>/subscribers/removal",
        apis.TopicSubscribersRemovalV1Api.as_view(),
        {"subscriber_id": "removal"},
    ),
    path(
        "v1/topics/<trimmed:key>/subscribers/<trimmed:subscriber_id>",
        apis.TopicSubscriberCheckApi.as_view(),
    ),
]
