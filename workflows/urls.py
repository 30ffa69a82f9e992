from __future__ import annotations

from django.urls import path

from workflows import apis

urlpatterns = [
    path("v1/notifications", apis.NotificationListApi.as_view(), name="notification-list"),
    path(
        "v1/notifications/<str:notification_id>",
        apis.NotificationDetailApi.as_view(),
        name="notification-detail",
    ),
]
