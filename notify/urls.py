from __future__ import annotations

from django.urls import path, register_converter
from django.urls.converters import PathConverter

from notify import apis


class TextConverter(PathConverter):
    """Any text, as Novu's route takes a transactionId: `path`'s, but a line break too,
    where its `.+` stopped (a trigger taken with one was a 404 to read or cancel)."""

    regex = r"[\s\S]+"


register_converter(TextConverter, "text")

urlpatterns = [
    path("v1/events/trigger", apis.TriggerApi.as_view(), name="trigger"),
    # Their GET and DELETE are those of the trigger of that transactionId (trigger-event).
    path("v1/events/trigger/broadcast", apis.BroadcastApi.as_view(), name="trigger-broadcast"),
    path("v1/events/trigger/bulk", apis.BulkTriggerApi.as_view(), name="trigger-bulk"),
    # text, not str: Django decodes %2F before it routes, and a transactionId may hold "/".
    path(
        "v1/events/trigger/<text:transaction_id>",
        apis.TriggerEventApi.as_view(),
        name="trigger-event",
    ),
]
