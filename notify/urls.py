from __future__ import annotations

from django.urls import path

from notify import apis

urlpatterns = [
    path("v1/events/trigger", apis.TriggerApi.as_view(), name="trigger"),
    # Their GET and DELETE are those of the trigger of that transactionId (trigger-event).
    path("v1/events/trigger/broadcast", apis.BroadcastApi.as_view(), name="trigger-broadcast"),
    path("v1/events/trigger/bulk", apis.BulkTriggerApi.as_view(), name="trigger-bulk"),
    # path, not str: Django decodes %2F before it routes, and a transactionId may hold "/".
    path(
        "v1/events/trigger/<path:transaction_id>",
        apis.TriggerEventApi.as_view(),
        name="trigger-event",
    ),
]
