from __future__ import annotations

import uuid

from django.db import models


class Notification(models.Model):
    """One workflow run for one subscriber of one trigger."""

    class Status(models.TextChoices):
        PENDING = "pending"  # until its first step is recorded
        RUNNING = "running"
        COMPLETED = "completed"
        FAILED = "failed"
        CANCELED = "canceled"

    FINAL = (Status.COMPLETED, Status.FAILED, Status.CANCELED)

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    # No index of their own (db_index=False): (client, created_at) and the unique
    # (trigger_event, subscriber) start with them and serve their lookups and the
    # foreign key's checks, and each index is one more write for every row a fan-out
    # inserts (tests/test_query_plans.py).
    client = models.ForeignKey(
        "notify.Client", on_delete=models.CASCADE, related_name="notifications", db_index=False
    )
    trigger_event = models.ForeignKey(
        "notify.TriggerEvent",
        on_delete=models.CASCADE,
        related_name="notifications",
        db_index=False,
    )
    subscriber = models.ForeignKey(
        "subscribers.Subscriber", on_delete=models.CASCADE, related_name="notifications"
    )
    workflow_id = models.CharField(max_length=200)
    resource = models.URLField(max_length=500)
    # A notification's payload is its trigger's, read from there: no copy of it per
    # notification (a broadcast's 100,000 copies of one payload). Releases before 0007
    # made one, in a column 0008 dropped.
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    error = models.TextField(blank=True)
    error_code = models.CharField(max_length=100, blank=True)
    bridge_attempts = models.PositiveIntegerField(default=0)
    # Echo runs an unexpected error (a bug) ended since its last step was recorded:
    # failed at NORM_MAX_CLAIMS.
    internal_errors = models.PositiveSmallIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    # While a step waits for its due time, that time: the reconciler takes a notification
    # quiet for a grace period after it, with no open step, to have lost its echo.
    updated_at = models.DateTimeField(auto_now=True)
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["trigger_event", "subscriber"], name="uniq_notification_per_subscriber"
            )
        ]
        indexes = [
            # The client's list, newest first then by id (GET /v1/notifications), read in
            # the index's order. With (client, created_at) alone, a page filtered by a status
            # (or workflow) the client has few of walked every client's notifications by the
            # index below, its order whole: 2.7 s for a status the client had none of, over
            # 2,000,000 of 20 clients; the client's own rows, 0.3 s.
            models.Index(fields=["client", "created_at", "id"], name="notification_client_created"),
            models.Index(fields=["status", "updated_at"]),
            # The admin's list, newest first over every client (then by id, as the admin
            # makes its order whole): the id is a uuid4, in no order, and no other index
            # gives that one. Rows come in created_at's order, so each insert lands at the
            # index's end, the cheapest index write there is.
            models.Index(fields=["created_at", "id"], name="notification_created"),
        ]

    def __str__(self) -> str:
        return f"{self.workflow_id} → {self.subscriber.subscriber_id}"


class Step(models.Model):
    """One step of a notification, as the bridge returned it.

    `outputs` is what the bridge generated (what to send, or an instruction such as a
    delay); `result` is what goes back to the bridge as state on later calls.
    """

    class Status(models.TextChoices):
        SCHEDULED = "scheduled"
        PROCESSING = "processing"
        COMPLETED = "completed"
        SKIPPED = "skipped"
        FAILED = "failed"
        CANCELED = "canceled"

    DONE = (Status.COMPLETED, Status.SKIPPED)
    # Ended, and the workflow goes on after it: in a running notification, a failed step
    # is one whose message failed for good, which Novu's worker goes on past too
    # (services.bookkeeping.step_undelivered).
    PASSED = (*DONE, Status.FAILED)

    # No index of its own: both unique constraints start with it.
    notification = models.ForeignKey(
        Notification, on_delete=models.CASCADE, related_name="steps", db_index=False
    )
    step_id = models.CharField(max_length=200)
    type = models.CharField(max_length=32)
    position = models.PositiveIntegerField()
    outputs = models.JSONField(default=dict, blank=True)
    providers = models.JSONField(default=dict, blank=True)
    result = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.SCHEDULED)
    due_at = models.DateTimeField()
    enqueued_at = models.DateTimeField(null=True, blank=True)
    claimed_at = models.DateTimeField(null=True, blank=True)
    # The id of the task that claimed it: that task's own retry may take it back.
    claimed_by = models.CharField(max_length=64, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["position"]
        constraints = [
            models.UniqueConstraint(fields=["notification", "step_id"], name="uniq_step_id"),
            models.UniqueConstraint(fields=["notification", "position"], name="uniq_step_position"),
        ]
        indexes = [models.Index(fields=["status", "due_at"])]

    def __str__(self) -> str:
        return f"{self.step_id} ({self.type})"

    def notification_error(self, reason: str | None = None) -> str:
        """Its notification's reason when this step's failure is the notification's:
        "step '<id>': <reason>" (by default the step's own error), which the activity
        API also reads to tell which step's job shows how the notification ended."""
        return f"step '{self.step_id}': {self.error if reason is None else reason}"
