from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db.models import Exists, OuterRef, Q, QuerySet

from config.dates import iso_z
from messaging.models import Message
from subscribers.models import Subscriber
from workflows.models import Notification, Step

CHANNEL_TYPES = {"email", "sms", "push", "chat", "in_app"}
ACTION_TYPES = {"delay", "custom"}
STEP_TYPES = CHANNEL_TYPES | ACTION_TYPES
# Novu's, not norm's yet: a workflow that reaches one fails with that reason. `tool` and
# `http_request` are @novu/framework 2.13's (a bridge of it names them in discover).
UNSUPPORTED_STEP_TYPES = {"digest", "throttle", "tool", "http_request"}


def in_app_result(message: Message | None) -> dict[str, Any]:
    # All four keys, always: Novu's framework rejects an in_app result missing one.
    return {
        "seen": bool(message and message.seen_at),
        "read": bool(message and message.read_at),
        "lastSeenDate": iso_z(message.seen_at) if message else None,
        "lastReadDate": iso_z(message.read_at) if message else None,
    }


def step_result(step: Step) -> dict[str, Any]:
    """What goes back to the bridge as this step's state.

    An in-app result is read from its message each time, so a resolver that runs
    after a delay sees whether the subscriber has read it by then.
    """
    if step.type == "in_app":
        return in_app_result(getattr(step, "message", None))
    return step.result


def notification_steps(*, notification: Notification) -> list[Step]:
    """Every step of a notification in order, each with its message (in-app results)."""
    return list(
        Step.objects.filter(notification=notification)
        .select_related("message")
        .defer("outputs", "message__content")  # what was sent: the state needs none of it
        .order_by("position")
    )


def bridge_state(
    *, notification: Notification, steps: list[Step] | None = None
) -> list[dict[str, Any]]:
    """The state sent to the bridge: every finished step, in order. `steps`: the
    notification's steps, when the caller has read them already."""
    if steps is None:
        steps = notification_steps(notification=notification)
    return [
        {"stepId": s.step_id, "outputs": step_result(s), "state": {"status": s.status}}
        for s in steps
        if s.status in Step.DONE
    ]


# norm's step status → Novu's job status (Novu's JobStatusEnum), for the Activity API's
# `jobs`: what novu-py shows of each step. A step is recorded when the bridge names it,
# so Novu's `pending` (a job created ahead of its turn) has no counterpart; a scheduled
# delay step is waiting out its time, as Novu's `delayed` job is; any other scheduled
# step waits for a worker (`queued`), also when it is to be tried again after a
# transient error (that error is its last execution detail, a Warning).
JOB_STATUS = {
    Step.Status.SCHEDULED: "queued",
    Step.Status.PROCESSING: "running",
    Step.Status.COMPLETED: "completed",
    Step.Status.SKIPPED: "skipped",
    Step.Status.FAILED: "failed",
    Step.Status.CANCELED: "canceled",
}
# norm's providers as the nearest of Novu's ProvidersIdEnum: novu-py requires a job's
# providerId and refuses a value not on Novu's list. Novu's own ("novu", its in-app
# provider) stands for the work norm does itself: delays, custom steps, a channel with
# no provider configured.
NOVU_PROVIDER_IDS = {"inbox": "novu", "django-email": "nodemailer"}


def job_status(step: Step) -> str:
    if step.type == "delay" and step.status == Step.Status.SCHEDULED:
        return "delayed"
    return JOB_STATUS[step.status]


def job_provider_id(step: Step) -> str:
    """The provider the step's message went through, or the one its channel would use."""
    message: Message | None = getattr(step, "message", None)
    name = message.provider if message else settings.NORM_PROVIDERS.get(step.type, "")
    return NOVU_PROVIDER_IDS.get(name, "novu")


def job_execution_details(step: Step) -> list[dict[str, Any]]:
    """What happened to a step, as Novu's execution details: queued, its message stored,
    and how it ended, with the reason of a failure, skip, cancel or pending retry in
    `detail`. norm keeps each step's latest state rather than a log of every attempt."""
    message: Message | None = getattr(step, "message", None)

    def detail(
        key: str, status: str, text: str, at: datetime | None, **extra: Any
    ) -> dict[str, Any]:
        return {
            "_id": f"{step.pk}-{key}",
            "status": status,
            "detail": text,
            "source": "Internal",
            "isRetry": False,
            "isTest": False,
            "createdAt": at,
            **extra,
        }

    details = [detail("queued", "Pending", "Step queued", step.created_at)]
    if message is not None:
        details.append(detail("message", "Pending", "Message created", message.created_at))
    retried = step.attempts > 1
    if step.status == Step.Status.COMPLETED:
        text = "Message sent" if message is not None else "Step completed"
        at = (message.sent_at if message is not None else None) or step.completed_at
        details.append(detail("done", "Success", text, at, isRetry=retried))
    elif step.status == Step.Status.FAILED:
        text = step.error or "Step failed"
        details.append(detail("done", "Failed", text, step.completed_at, isRetry=retried))
    elif step.status == Step.Status.SKIPPED:
        details.append(detail("done", "Warning", step.error or "Step skipped", step.completed_at))
    elif step.status == Step.Status.CANCELED:
        details.append(detail("done", "Warning", step.error or "Step canceled", step.completed_at))
    elif step.error:  # scheduled or running again after an attempt that failed for now
        details.append(detail("retry", "Warning", step.error, step.claimed_at, isRetry=retried))
    return details


def notification_list(*, client_id: int, filters: dict[str, Any]) -> QuerySet[Notification]:
    qs = Notification.objects.filter(client_id=client_id).select_related(
        "subscriber", "trigger_event"
    )
    if filters.get("transactionId"):
        qs = qs.filter(trigger_event__transaction_id=filters["transactionId"])
    # Each filter across a join names the client too, so that the join's own unique
    # (client, …) index serves it, rather than a scan of every client's rows.
    if filters.get("subscriberId"):
        qs = qs.filter(
            subscriber__client_id=client_id, subscriber__subscriber_id=filters["subscriberId"]
        )
    if filters.get("workflow"):
        qs = qs.filter(workflow_id=filters["workflow"])
    if filters.get("status"):
        qs = qs.filter(status=filters["status"])
    if filters.get("subscriberIds"):
        qs = qs.filter(
            subscriber__client_id=client_id, subscriber__subscriber_id__in=filters["subscriberIds"]
        )
    if filters.get("templates"):
        qs = qs.filter(workflow_id__in=filters["templates"])
    if filters.get("emails"):
        # Case-insensitive, as Novu: each served by the subscribers' UPPER(email) index.
        emails = Q()
        for email in filters["emails"]:
            emails |= Q(subscriber__email__iexact=email)
        qs = qs.filter(emails, subscriber__client_id=client_id)
    if filters.get("after"):
        qs = qs.filter(created_at__gte=filters["after"])
    if filters.get("before"):
        qs = qs.filter(created_at__lte=filters["before"])
    if filters.get("severity") and "none" not in filters["severity"]:
        qs = qs.none()  # every notification has Novu's default severity, none
    if filters.get("channels"):
        of_type = Step.objects.filter(notification=OuterRef("pk"), type__in=filters["channels"])
        qs = qs.filter(Exists(of_type))
    return qs.prefetch_related("steps__message").order_by("-created_at", "-id")


def notification_get(*, client_id: int, notification_id: str) -> Notification | None:
    """One of the client's notifications, or None (also for an id that is not a UUID)."""
    try:
        pk = uuid.UUID(str(notification_id))
    except ValueError:
        return None
    return notification_list(client_id=client_id, filters={}).filter(pk=pk).first()


def message_list(*, client_id: int, filters: dict[str, Any]) -> QuerySet[Message]:
    """The client's messages that were sent or failed, newest first (one still being
    sent has no status in Novu's terms yet), narrowed as Novu's GET /v1/messages is."""
    qs = Message.objects.filter(client_id=client_id).exclude(status=Message.Status.SENDING)
    if filters.get("channel"):
        qs = qs.filter(channel=filters["channel"])
    if filters.get("subscriberId"):
        # The client named on the join too, as in notification_list.
        qs = qs.filter(
            subscriber__client_id=client_id, subscriber__subscriber_id=filters["subscriberId"]
        )
    if filters.get("transactionId"):
        qs = qs.filter(
            step__notification__trigger_event__transaction_id__in=filters["transactionId"]
        )
    return qs.select_related("subscriber", "step__notification__trigger_event").order_by(
        "-created_at", "-id"
    )


def in_app_feed(*, client_id: int, subscriber_id: str) -> QuerySet[Message] | None:
    """A subscriber's delivered in-app messages, newest first; None for an unknown subscriber."""
    subscriber = Subscriber.objects.filter(client_id=client_id, subscriber_id=subscriber_id).first()
    if subscriber is None:
        return None
    return (
        Message.objects.filter(subscriber=subscriber, channel="in_app", status=Message.Status.SENT)
        .select_related("subscriber", "step__notification__trigger_event")
        .order_by("-created_at", "-id")
    )
