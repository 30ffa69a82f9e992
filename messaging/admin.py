from __future__ import annotations

from django.contrib import admin
from django.utils.safestring import SafeString

from messaging.models import Message
from workflows.admin import ReadOnlyAdmin, change_link, fixed_choices, pretty_json
from workflows.selectors import CHANNEL_TYPES


@admin.register(Message)
class MessageAdmin(ReadOnlyAdmin):
    list_display = [
        "id",
        "channel",
        "provider",
        "status",
        "recipient",
        "subscriber",
        "client",
        "created_at",
        "sent_at",
    ]
    list_filter = [fixed_choices("channel", "channel", CHANNEL_TYPES), "status"]
    show_full_result_count = False
    list_select_related = ["subscriber", "client"]
    search_fields = [
        "=recipient",
        "=subscriber__subscriber_id",
        "=provider_message_id",
        "=provider",
        "=step__notification__trigger_event__transaction_id",
    ]
    exclude = ["content"]
    readonly_fields = ["content_json", "notification_link"]

    @admin.display(description="notification")
    def notification_link(self, message: Message) -> SafeString:
        return change_link(message.step.notification)

    @admin.display(description="content")
    def content_json(self, message: Message) -> SafeString:
        return pretty_json(message.content)
