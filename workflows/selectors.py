from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db.models import Exists, OuterRef, Q, QuerySet

from config.dates import iso_z, through_millisecond
from messaging.models import Message
from subscribers.models import Subscriber
from workflows.models import Notification, Step

CHANNEL_TYPES = {"email", "sms", "push", "chat", "in_app"}
ACTION_TYPES = {"delay", "custom"}
STEP_TYPES = CHANNEL_TYPES | ACTION_TYPES
# Novu's, not norm's yet: a workflow that reaches one fails (UnsupportedStepType), unless
# the bridge skipped it, which asks nothing of norm (services.echo._record_answer). `tool` and
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
    """The state sent to the bridge: every step the workflow went on from, in order.
    `steps`: the notification's steps, when the caller has read them already."""
    if steps is None:
        steps = notification_steps(notification=notification)
    return [
        {"stepId": s.step_id, "outputs": step_result(s), "state": {"status": s.status}}
        for s in steps
        if s.status in Step.PASSED
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
JOB_STATUSES = sorted({*JOB_STATUS.values(), "delayed"})
# norm's providers as the nearest of Novu's ProvidersIdEnum: novu-py requires a job's
# providerId and refuses a value not on Novu's list. Novu's own ("novu", its in-app
# provider) stands for the work norm does itself: delays, custom steps, a channel with
# no provider configured, the calls to the bridge.
NOVU_PROVIDER_IDS = {"inbox": "novu", "django-email": "nodemailer"}
NORM_ITSELF = "novu"


# How a notification ends that no step of it shows: its status as the run's job's, the
# status of that job's execution detail, and the step status that would show it.
RUN_ENDS = {
    Notification.Status.FAILED: ("failed", "Failed", Step.Status.FAILED),
    Notification.Status.CANCELED: ("canceled", "Warning", Step.Status.CANCELED),
}


def notification_jobs(notification: Notification) -> list[dict[str, Any]]:
    """The notification's steps as Novu's jobs (from its prefetched steps and messages).

    A notification can also end between steps: failed on the bridge's answer
    (unreachable, invalid, a step type norm does not run) or on norm's own error, or
    canceled while it waited for the bridge. Novu has no job for that moment, and its
    notifications have no status of their own, so that end is one more job, of type
    `trigger` (Novu's job for a workflow's run), with the reason. Without it a novu-py
    user saw every job completed. So too while it waits for the bridge to name its
    first or next step: a `trigger` job, queued.
    """
    steps = list(notification.steps.all())
    jobs = [_step_job(step, notification) for step in steps]
    end = RUN_ENDS.get(notification.status)
    if end is not None and not any(_shows_end(s, notification, end[2]) for s in steps):
        jobs.append(_run_end_job(notification, status=end[0], detail_status=end[1]))
    elif notification.status not in Notification.FINAL and all(
        s.status in Step.PASSED for s in steps
    ):
        # Waiting for the bridge to name its next step (or its first): without this job
        # it had none at all, or every job done as if it had ended.
        jobs.append(_run_waiting_job(notification))
    return jobs


def _shows_end(step: Step, notification: Notification, status: str) -> bool:
    """Whether the step's job shows how the notification ended: a step of that status,
    and for a failure the step it names (Step.notification_error). A step whose message
    failed for good, which the workflow went on past, does not show a failure of the
    bridge's after it."""
    if step.status != status:
        return False
    return status != Step.Status.FAILED or notification.error == step.notification_error()


def _job(notification: Notification, *, job_id: str, step_id: str, **fields: Any) -> dict[str, Any]:
    # Novu's workflow step: norm's steps are named by the bridge, not stored apart.
    step = {
        "_id": step_id,
        "_templateId": notification.workflow_id,
        "stepId": step_id,
        "name": step_id,
        "active": True,
        "filters": [],
    }
    return {"_id": job_id, "step": step, **fields}


def _detail(
    job_id: str, key: str, status: str, text: str, at: datetime | None, retry: bool = False
) -> dict[str, Any]:
    return {
        "_id": f"{job_id}-{key}",
        "status": status,
        "detail": text,
        "source": "Internal",
        "isRetry": retry,
        "isTest": False,
        "createdAt": at,
    }


def _step_job(step: Step, notification: Notification) -> dict[str, Any]:
    message: Message | None = getattr(step, "message", None)
    status = JOB_STATUS[step.status]
    if step.type == "delay" and step.status == Step.Status.SCHEDULED:
        status = "delayed"
    # The provider its message went through, or the one its channel would use.
    provider = message.provider if message else settings.NORM_PROVIDERS.get(step.type, "")
    moments = [m for m in (step.created_at, step.claimed_at, step.completed_at) if m]
    return _job(
        notification,
        job_id=str(step.pk),
        step_id=step.step_id,
        type=step.type,
        status=status,
        providerId=NOVU_PROVIDER_IDS.get(provider, NORM_ITSELF),
        executionDetails=_step_details(step, message),
        createdAt=step.created_at,
        updatedAt=max(moments),
    )


def _step_details(step: Step, message: Message | None) -> list[dict[str, Any]]:
    """What happened to a step, as Novu's execution details: queued, its message stored,
    and how it ended, with the reason of a failure, skip, cancel or pending retry in
    `detail`. norm keeps each step's latest state rather than a log of every attempt."""
    job_id, retried = str(step.pk), step.attempts > 1
    details = [_detail(job_id, "queued", "Pending", "Step queued", step.created_at)]
    if message is not None:
        details.append(_detail(job_id, "message", "Pending", "Message created", message.created_at))
    end = {
        Step.Status.COMPLETED: ("Success", "Message sent" if message else "Step completed"),
        Step.Status.FAILED: ("Failed", step.error or "Step failed"),
        Step.Status.SKIPPED: ("Warning", step.error or "Step skipped"),
        Step.Status.CANCELED: ("Warning", step.error or "Step canceled"),
    }.get(step.status)
    if end is not None:
        at = (message.sent_at if message else None) or step.completed_at
        details.append(_detail(job_id, "done", *end, at, retry=retried))
    elif step.error:  # scheduled or running again after an attempt that failed for now
        details.append(_detail(job_id, "retry", "Warning", step.error, step.claimed_at, retried))
    return details


def _run_end_job(notification: Notification, *, status: str, detail_status: str) -> dict[str, Any]:
    job_id = f"{notification.pk}-run"
    if notification.status == Notification.Status.FAILED:
        reason = notification.error or "Workflow failed"
    else:  # an error still on it is an earlier attempt's, not why it was canceled
        reason = "Notification canceled"
    detail = _detail(job_id, "end", detail_status, reason, notification.completed_at)
    return _job(
        notification,
        job_id=job_id,
        step_id=notification.workflow_id,
        type="trigger",
        status=status,
        providerId=NORM_ITSELF,
        executionDetails=[detail],
        createdAt=notification.created_at,
        updatedAt=notification.completed_at or notification.created_at,
    )


def _run_waiting_job(notification: Notification) -> dict[str, Any]:
    job_id = f"{notification.pk}-run"
    if notification.error:  # the last call to the bridge failed for now: retried
        at = notification.updated_at
        detail = _detail(job_id, "retry", "Warning", notification.error, at, retry=True)
    else:
        detail = _detail(
            job_id, "queued", "Pending", "Waiting for the bridge", notification.updated_at
        )
    return _job(
        notification,
        job_id=job_id,
        step_id=notification.workflow_id,
        type="trigger",
        status="queued",
        providerId=NORM_ITSELF,
        executionDetails=[detail],
        createdAt=notification.created_at,
        updatedAt=notification.updated_at,
    )


def _trigger_unread(path: str, *also: str) -> list[str]:
    """The fields of the trigger at `path` that a page of notifications or messages does
    not read (it reads its transactionId, and a notification's its payload): its
    recipients (up to 1,000), read and decoded for each row, took half of a page's time
    (100 rows of a trigger of 1,000 recipients: 404 ms, 218 ms without); and `also`."""
    unread = ("to", "overrides", "actor", "forgotten", "redelivered", *also)
    return [f"{path}__{field}" for field in unread]


# C901 counts its filters, one `if` each, independent of one another: a list that reads
# as it is. Grouped into helpers, they would be applied in another order (other SQL) or
# in groups that mean nothing.
def notification_list(*, client_id: int, filters: dict[str, Any]) -> QuerySet[Notification]:  # noqa: C901
    qs = (
        Notification.objects.filter(client_id=client_id)
        .select_related("subscriber", "trigger_event")
        .defer(*_trigger_unread("trigger_event"))
    )
    # Each filter across a join names the client too, so that the join's own unique
    # (client, …) index serves it, rather than a scan of every client's rows.
    if filters.get("transactionId"):
        qs = qs.filter(
            trigger_event__client_id=client_id,
            trigger_event__transaction_id=filters["transactionId"],
        )
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
        # At or before it as the API writes times: a notification's own createdAt, given
        # back, lists that notification, whose time has microseconds the API leaves out.
        qs = qs.filter(created_at__lt=through_millisecond(filters["before"]))
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


# What a page of messages does not read of the notification above each: its trigger's
# (_trigger_unread), payload included.
MESSAGE_UNREAD = _trigger_unread("step__notification__trigger_event", "payload")


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
            step__notification__trigger_event__client_id=client_id,
            step__notification__trigger_event__transaction_id__in=filters["transactionId"],
        )
    return (
        qs.select_related("subscriber", "step__notification__trigger_event")
        .defer(*MESSAGE_UNREAD)
        .order_by("-created_at", "-id")
    )


def in_app_feed(*, client_id: int, subscriber_id: str) -> QuerySet[Message] | None:
    """A subscriber's delivered in-app messages, newest first; None for an unknown subscriber."""
    subscriber = Subscriber.objects.filter(client_id=client_id, subscriber_id=subscriber_id).first()
    if subscriber is None:
        return None
    return (
        Message.objects.filter(subscriber=subscriber, channel="in_app", status=Message.Status.SENT)
        .select_related("subscriber", "step__notification__trigger_event")
        .defer(*MESSAGE_UNREAD)
        .order_by("-created_at", "-id")
    )
