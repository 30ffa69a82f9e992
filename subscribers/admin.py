from __future__ import annotations

from django.contrib import admin
from django.db.models import Count, QuerySet
from django.http import HttpRequest
from django.utils.html import format_html
from django.utils.safestring import SafeString

from messaging.models import Message
from subscribers.models import Subscriber, Topic, TopicSubscription
from workflows.admin import changelist_link
from workflows.models import Notification


@admin.register(Subscriber)
class SubscriberAdmin(admin.ModelAdmin):
    list_display = ["subscriber_id", "email", "first_name", "last_name", "client", "created_at"]
    list_filter = ["client"]
    list_select_related = ["client"]
    search_fields = ["subscriber_id", "email"]
    readonly_fields = ["created_at", "updated_at", "activity"]

    @admin.display(description="activity")
    def activity(self, subscriber: Subscriber) -> SafeString | str:
        if subscriber.pk is None:
            return "-"
        return format_html(
            "{} · {}",
            changelist_link(Notification, "Notifications", subscriber__id__exact=subscriber.pk),
            changelist_link(Message, "Messages", subscriber__id__exact=subscriber.pk),
        )


@admin.register(TopicSubscription)
class TopicSubscriptionAdmin(admin.ModelAdmin):
    """A topic's members, a page at a time (a topic may have thousands: no inline)."""

    list_display = ["topic", "subscriber", "created_at"]
    list_select_related = ["topic", "subscriber"]
    autocomplete_fields = ["topic", "subscriber"]
    search_fields = ["=topic__key", "=subscriber__subscriber_id"]
    show_full_result_count = False


@admin.register(Topic)
class TopicAdmin(admin.ModelAdmin):
    list_display = ["key", "name", "client", "member_count", "created_at"]
    list_filter = ["client"]
    list_select_related = ["client"]
    search_fields = ["key", "name"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Topic]:
        return super().get_queryset(request).annotate(member_count=Count("subscribers"))

    @admin.display(description="members", ordering="member_count")
    def member_count(self, topic: Topic) -> int:
        return topic.member_count  # type: ignore[attr-defined]
