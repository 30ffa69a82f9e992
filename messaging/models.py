from __future__ import annotations

from django.db import models


class Message(models.Model):
    """What one channel step delivered (or tried to), and for in-app, its feed state."""

    class Status(models.TextChoices):
        SENDING = "sending"
        SENT = "sent"
        FAILED = "failed"

    step = models.OneToOneField("workflows.Step", on_delete=models.CASCADE, related_name="message")
    # No index of their own (db_index=False): the indexes below start with them, and
    # serve their lookups and the foreign keys' checks for one write less each.
    client = models.ForeignKey(
        "notify.Client", on_delete=models.CASCADE, related_name="messages", db_index=False
    )
    # Checked when the message's INSERT ends, not at commit as the others are (migration
    # 0004; Django does not model it): the subscriber is locked before the step, as a
    # subscriber's delete locks them. Step first, the worker storing a message held its
    # step and waited for the subscriber while the delete held that and waited for the
    # step: a deadlock, which PostgreSQL ended by failing one of them (the delete, a 503).
    subscriber = models.ForeignKey(
        "subscribers.Subscriber",
        on_delete=models.CASCADE,
        related_name="messages",
        db_index=False,
    )
    channel = models.CharField(max_length=32)
    provider = models.CharField(max_length=64)
    recipient = models.CharField(max_length=254, blank=True)
    content = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.SENDING)
    provider_message_id = models.CharField(max_length=255, blank=True)
    error = models.TextField(blank=True)
    attempts = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    seen_at = models.DateTimeField(null=True, blank=True)
    read_at = models.DateTimeField(null=True, blank=True)
    archived_at = models.DateTimeField(null=True, blank=True)
    # An in-app message's action, as Novu keeps it (its message's `cta.action` but the
    # buttons, which the content has): {} until a button is acted on, then {"status":
    # "done" or "pending", "result": {"type": "primary" or "secondary", "payload": {...}}}.
    # One result for both buttons: completing one takes the other's back, as in Novu.
    action = models.JSONField(default=dict, db_default={}, blank=True)

    class Meta:
        indexes = [
            models.Index(fields=["subscriber", "channel", "created_at"]),
            # GET /v1/messages, newest first: a page, not a sort of all the client's messages.
            models.Index(fields=["client", "created_at"]),
        ]

    def __str__(self) -> str:
        return f"{self.channel} to {self.recipient or self.subscriber_id}"
