from __future__ import annotations

from django.urls import path

import config.converters  # noqa: F401 (registers <trimmed:>)
from subscribers.apis import subscribers, subscriptions, topics

# Ids go in trimmed (config.converters), as `str` (not `path`): a subscriberId never
# contains a slash.
urlpatterns = [
    path("v2/subscribers", subscribers.SubscriberListApi.as_view()),
    path("v1/subscribers", subscribers.SubscriberListV1Api.as_view()),
    # Also the subscriber "bulk", by any method but POST (SubscriberBulkApi).
    path("v1/subscribers/bulk", subscribers.SubscriberBulkApi.as_view(), {"subscriber_id": "bulk"}),
    path("v2/subscribers/<trimmed:subscriber_id>", subscribers.SubscriberDetailApi.as_view()),
    path("v1/subscribers/<trimmed:subscriber_id>", subscribers.SubscriberDetailApi.as_view()),
    path(
        "v1/subscribers/<trimmed:subscriber_id>/online-status",
        subscribers.SubscriberOnlineStatusApi.as_view(),
    ),
    path(
        "v2/subscribers/<trimmed:subscriber_id>/subscriptions",
        subscriptions.SubscriberSubscriptionsApi.as_view(),
    ),
    path("v2/topics", topics.TopicListApi.as_view()),
    path("v1/topics", topics.TopicListV1Api.as_view()),
    path("v2/topics/<trimmed:key>", topics.TopicDetailApi.as_view()),
    path("v1/topics/<trimmed:key>", topics.TopicDetailV1Api.as_view()),
    path("v2/topics/<trimmed:key>/subscriptions", subscriptions.TopicSubscriptionsApi.as_view()),
    path(
        "v2/topics/<trimmed:key>/subscriptions/<trimmed:identifier>",
        subscriptions.TopicSubscriptionDetailApi.as_view(),
    ),
    path("v1/topics/<trimmed:key>/subscribers", subscriptions.TopicSubscribersV1Api.as_view()),
    # Also the check of the member "removal", by GET (TopicSubscribersRemovalV1Api).
    path(
        "v1/topics/<trimmed:key>/subscribers/removal",
        subscriptions.TopicSubscribersRemovalV1Api.as_view(),
        {"subscriber_id": "removal"},
    ),
    path(
        "v1/topics/<trimmed:key>/subscribers/<trimmed:subscriber_id>",
        subscriptions.TopicSubscriberCheckApi.as_view(),
    ),
]
