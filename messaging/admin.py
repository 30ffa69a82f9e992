from __future__ import annotations

from django.contrib import admin
from django.db.models import Q
from django.utils.safestring import SafeString

from messaging.models import Message
from notify.models import TriggerEvent
from subscribers.models import Subscriber
from workflows.admin import KeySearch, ReadOnlyAdmin, change_link, fixed_choices, pretty_json
from workflows.models import Step
from workflows.selectors import CHANNEL_TYPES


@admin.register(Message)
class MessageAdmin(KeySearch, ReadOnlyAdmin):
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
    list_defer = ("content", "error")
    list_select_related = ["subscriber", "client"]
    # What the search box matches (get_search_results), each exactly: in any case, each
    # field's UPPER() doubled the time of a search, which reads every message.
    search_fields = [
        "recipient__exact",
        "subscriber__subscriber_id__exact",
        "provider_message_id__exact",
        "provider__exact",
        "step__notification__trigger_event__transaction_id__exact",
    ]
    exclude = ["content"]
    readonly_fields = ["content_json", "notification_link"]

    def search_matches(self, term: str) -> Q:
        # Joined to its subscriber, step, notification and trigger, 2 s a page over
        # 200,000 messages.
        subscribers = Subscriber.objects.filter(subscriber_id=term).values_list("pk", flat=True)
        events = TriggerEvent.objects.filter(transaction_id=term).values_list("pk", flat=True)
        steps = Step.objects.filter(notification__trigger_event_id__in=list(events))
        return (
            Q(recipient=term)
            | Q(subscriber_id__in=list(subscribers))
            | Q(provider_message_id=term)
            | Q(provider=term)
            | Q(step_id__in=steps.values("pk"))
        )

    @admin.display(description="notification")
    def notification_link(self, message: Message) -> SafeString:
        return change_link(message.step.notification)

    @admin.display(description="content")
    def content_json(self, message: Message) -> SafeString:
        return pretty_json(message.content)
