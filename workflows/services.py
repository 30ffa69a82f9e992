"""The workflow worker (stage 2: a trigger's fan-out), the notifications the subscriber
worker creates (stage 3), the echo worker (stage 4: the bridge asked for the next step),
the step bookkeeping the message worker calls (stage 5), and the operations on all of
them: an admin's retry, a cancel, and beat's reconciler. Sections in that order."""

from __future__ import annotations

import json
import logging
import operator
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from functools import reduce
from typing import Any

from django.conf import settings
from django.db import IntegrityError, InterfaceError, OperationalError, transaction
from django.db.models import (
    Case,
    Count,
    Exists,
    F,
    OuterRef,
    PositiveSmallIntegerField,
    Q,
    QuerySet,
    Subquery,
    TextField,
    Value,
    When,
)
from django.db.models.functions import Coalesce, Greatest
from django.utils import timezone

from config import pipeline
from config.dates import iso_z
from config.db import bounded, error_text, insert_once
from config.errors import ApiError
from config.logs import Quieted, loggable
from config.redact import masked_url
from messaging.models import Message
from notify.models import TriggerEvent
from notify.selectors import signing_secrets
from subscribers.models import Subscriber, Topic, TopicSubscription
from subscribers.recipients import INLINE_FIELDS, parse_actor, parse_recipients
from workflows import bridge, flavours, selectors
from workflows.delays import UnsupportedDelay, delay_until
from workflows.models import Notification, Step

logger = logging.getLogger(__name__)

# The subscriberIds of a broadcast's or a topic's audience in one batch command (one
# keyset page, and one INSERT of their notifications: notifications_create).
BROADCAST_CHUNK = 500
# Notifications a trigger's cancel ends in one transaction (see _trigger_notifications_cancel).
CANCEL_CHUNK = 2000
# A fan-out left short is run again at most this many times, each wait twice the last.
# (The FANOUT_RECHECK window alone is no bound: each run starts it again.)
MAX_REFANS = 8
# How long the reconciler checks that a trigger's fan-out reached everyone, from its
# `recheck_from`: the fan-out's end (so a trigger that waited long in a backed-up
# workflows queue is checked too). A window, so that each tick counts the notifications
# of an hour's events, not of every event ever processed. The check runs only while the
# subscribers queue is empty (_room), and a backlog of it may outlast the window: the
# event's commands lost meanwhile (a flush, a restart), it was past its hour when the
# queue emptied, never checked again. So while the queue holds commands, each tick moves
# `recheck_from` on to now for the short events half-way through their window (each is
# written once per half hour of backlog): one leaves the window only after half an hour
# of ticks that found the queue empty, each of which checked it. A fan-out that reached
# everyone is not kept (it can no longer come up short), nor one run again MAX_REFANS
# times: the window still ends for both.
FANOUT_RECHECK = timedelta(hours=1)
# The most the reconciler re-sends of each kind in one run (to an empty queue: _room).
REDRIVE_BATCH = 1000
OPEN_STEP = (Step.Status.SCHEDULED, Step.Status.PROCESSING)
# Iterable as an Enum: mypy without Django's stubs sees a class of Any.
_OTHER_THAN = {status: [s for s in Step.Status if s != status] for status in Step.Status}  # type: ignore[attr-defined]
STEP_ID_LENGTH = Step._meta.get_field("step_id").max_length or 0
# The most an in-app step's outputs may take, as JSON. Every page of a feed, the inbox and
# the activity lists up to 100 in-app messages, each twice (its step's outputs and its
# content), and a bridge may answer 10 MB (NORM_BRIDGE_MAX_RESPONSE_BYTES): a page of
# twelve such messages was 226 MB, built in a web process's memory (1.4 GB, which stayed
# taken, in a process serving every client) and sent whole to the caller, for an inbox
# that shows a line or two of each.
IN_APP_MAX_BYTES = 64 * 1024
# The echo worker sets a step's due time by its clock and the message worker compares
# it with its own: a message worker a little behind would find a step due now not due
# yet, and send it again for later (_send_when_due). A second early is harmless.
CLOCK_SKEW = timedelta(seconds=1)
ACTIVE = (Notification.Status.PENDING, Notification.Status.RUNNING)
# A client deactivated with work in flight: the API already refuses it, and the pipeline
# stops too (nothing more is fanned out, asked of its bridge or sent). Failed, not
# canceled, so its notifications can be retried once it is active again.
CLIENT_INACTIVE = "the client is deactivated: norm runs none of its notifications"
# How a row a bug failed NORM_MAX_CLAIMS times ends its reason.
GIVEN_UP = (
    "an internal error in norm; given up after NORM_MAX_CLAIMS runs ended on one, the "
    "traceback is in the worker's log"
)
CANCELED_BEFORE_RETRY = (
    "the notification was canceled while this message waited to be sent again: not sent again"
)
LOST_WITH_ITS_TASK = (
    "the notification had ended when the task sending this step was lost with its worker: "
    "not sent again"
)


# --- stage 2: the workflow worker ------------------------------------------------------


def trigger_event_run(
    *, trigger_event_id: int, claim: str = "", resumed: datetime | None = None
) -> None:
    """Fan a trigger event out: one subscriber command per listed recipient, and one
    batch command per chunk of subscribers drawn from the database (broadcast, topics).

    Safe to run twice: the claim lets one run at a time, and a rerun (after a crash,
    or when the reconciler finds commands lost with the broker) sends commands only
    to recipients without a notification; the subscriber worker deduplicates the rest
    on (event, subscriber). `claim`: the task's id; see `step_claim`, as for `resumed`
    (a database error while the event is claimed raises ClaimInterrupted).
    """
    now = timezone.now()
    claim = claim or uuid.uuid4().hex
    # Its own claim taken back, the run that took it never came back: its worker died
    # and Celery delivered the task again (reject on worker lost), at once and for good
    # if the fan-out kills its worker each time. Counted as a stale claim is (reconcile),
    # unless this is that run's retry after a database error, which resumes the claim.
    taken_back = Q(status=TriggerEvent.Status.PROCESSING, claimed_by=claim)
    if resumed is not None:
        taken_back &= ~Q(claimed_at=resumed)
    claimed = (
        TriggerEvent.objects.filter(pk=trigger_event_id, canceled_at__isnull=True)
        .filter(
            Q(status=TriggerEvent.Status.RECEIVED)
            | Q(status=TriggerEvent.Status.PROCESSING, claimed_by=claim)
        )
        .update(
            status=TriggerEvent.Status.PROCESSING,
            claimed_at=now,
            claimed_by=claim,
            # An earlier run's internal error, or one of its subscriber commands': this
            # run records its own. Cleared when the run ends, it also cleared the reason
            # of a command that had already failed (the first chunks of a broadcast).
            error="",
            internal_errors=Case(
                When(taken_back, then=F("internal_errors") + 1),
                default=F("internal_errors"),
                output_field=PositiveSmallIntegerField(),
            ),
        )
    )
    if not claimed:
        return
    held = TriggerEvent.objects.filter(
        pk=trigger_event_id, status=TriggerEvent.Status.PROCESSING, claimed_by=claim
    )

    def record(exc: Exception) -> None:
        # A bug (a `to` norm's own code trips on, say). Let go for the reconciler to run
        # again a grace period from now (the rerun skips those reached), with the reason,
        # and failed at NORM_MAX_CLAIMS.
        reason = internal_error_text(exc)
        held.update(
            status=TriggerEvent.Status.RECEIVED,
            reenqueued_at=timezone.now(),
            internal_errors=F("internal_errors") + 1,
            error=reason,
        )
        TriggerEvent.objects.filter(
            pk=trigger_event_id,
            status=TriggerEvent.Status.RECEIVED,
            internal_errors__gte=settings.NORM_MAX_CLAIMS,
        ).update(
            status=TriggerEvent.Status.FAILED,
            error=f"{reason} ({GIVEN_UP})",
            processed_at=timezone.now(),
        )

    try:
        with pipeline.bugs_recorded(
            record, "the fan-out of trigger event", trigger_event_id, logger
        ):
            _fan_out(trigger_event_id=trigger_event_id)
    except pipeline.BROKER_ERRORS:
        # The broker refused a command (down, a failover). Let go of the event, as the
        # reconciler does a stale claim, for it to send again once the trigger is a grace
        # period old (the rerun skips those reached): held under this task's claim, the
        # other recipients waited NORM_STALE_CLAIM_SECONDS for the claim to go stale.
        try:
            held.update(status=TriggerEvent.Status.RECEIVED, reenqueued_at=None)
        except (OperationalError, InterfaceError) as exc:
            # The database away too (the worker's network): still claimed, the event is
            # the task's retry's to resume, as below, not a run that never came back.
            raise pipeline.ClaimInterrupted(now) from exc
        raise
    except (OperationalError, InterfaceError) as exc:
        # Retried as it is, the task's retry took its claim back counted, as a run that
        # never came back: a flapping PostgreSQL would fail the event.
        raise pipeline.ClaimInterrupted(now) from exc


def _never_finished() -> str:
    """The reason of an event failed for the runs of its fan-out that never came back."""
    return (
        f"its fan-out never finished in {settings.NORM_MAX_CLAIMS} runs, the last one lost "
        "with its worker (a fan-out that kills its worker?); given up after NORM_MAX_CLAIMS"
    )


def _fan_out(*, trigger_event_id: int) -> None:
    """`trigger_event_run` once it holds the event."""
    event = TriggerEvent.objects.select_related("client").get(pk=trigger_event_id)
    # Read here, not by a query of its own at the claim, which counted the run that took
    # the claim back from one that never came back (a worker killed each time).
    if event.internal_errors >= settings.NORM_MAX_CLAIMS:
        TriggerEvent.objects.filter(pk=event.pk).update(
            status=TriggerEvent.Status.FAILED, error=_never_finished(), processed_at=timezone.now()
        )
        return
    if not event.client.is_active:
        TriggerEvent.objects.filter(pk=event.pk).update(
            status=TriggerEvent.Status.FAILED, error=CLIENT_INACTIVE, processed_at=timezone.now()
        )
        return
    reached_before = event.notifications.count()
    rerun = event.pk if reached_before else None
    broadcast = event.mode == TriggerEvent.Mode.BROADCAST
    recipients, topics = ([], []) if broadcast else parse_recipients(event.to)
    # A rerun finds no one reached once those reached were deleted (their notifications
    # with them): the reconciler's counts itself (refanned); after a broker error let the
    # event go, an actor so deleted is among those the event forgot.
    first_run = rerun is None and not event.refanned
    if event.actor not in (None, "") and first_run and not _actor_forgotten(event):
        # Before anyone is reached, as Novu's trigger does: a command sent alongside ran
        # before or after the actor's own recipient command, whose attributes then won or
        # lost by chance; each step saw the actor as it happened to be; and a broadcast
        # reached a new actor or not. Not on a rerun (for lost recipients' commands): an
        # actor deleted since is not made anew. (subscribers.services imports this module.)
        from subscribers.services import actor_upsert

        actor_upsert(event=event, recipients=recipients)
    if broadcast:
        count = _broadcast_sent(event, rerun=rerun)
    else:
        count = _recipients_sent(event, recipients=recipients, topics=topics, rerun=rerun)
    # A rerun counts the distinct audience: a first count that reached someone twice
    # (through two topics) would have the reconciler recheck the event in vain.
    count += reached_before
    _processed_record(event, count=count)


def _broadcast_sent(event: TriggerEvent, *, rerun: int | None) -> int:
    """Send a command for each chunk of the client's subscribers; how many there are."""
    count = 0
    queue = pipeline.queue_of(pipeline.SUBSCRIBER_BATCH, event.workflow_id)
    for subscriber_ids in _broadcast_audience(client_id=event.client_id, rerun=rerun):
        pipeline.send_now(pipeline.SUBSCRIBER_BATCH, event.pk, subscriber_ids, queue=queue)
        count += len(subscriber_ids)
    return count


def _recipients_sent(
    event: TriggerEvent,
    *,
    recipients: list[dict[str, Any]],
    topics: list[dict[str, Any]],
    rerun: int | None,
) -> int:
    """Send a command for each recipient the event names and for each chunk of its
    topics' members; how many they are, each once."""
    direct = [r["subscriberId"] for r in recipients]
    # Deleted since an earlier run (with their notification): not created anew.
    skipped = set(event.forgotten)
    if rerun:
        skipped |= set(
            event.notifications.filter(subscriber__subscriber_id__in=direct).values_list(
                "subscriber__subscriber_id", flat=True
            )
        )
    recipients = [r for r in recipients if r["subscriberId"] not in skipped]
    queue = pipeline.queue_of(pipeline.SUBSCRIBER, event.workflow_id)
    batches = pipeline.queue_of(pipeline.SUBSCRIBER_BATCH, event.workflow_id)
    pipeline.send_each(pipeline.SUBSCRIBER, [(event.pk, r) for r in recipients], queue=queue)
    # As in Novu, the actor is no topic's member here: who commented on a thread
    # is not told of their own comment. Listed by subscriberId, it is notified.
    actor = _actor_body(event.actor).get("subscriberId")
    not_members = [*direct, *([actor] if actor else [])]
    for topic in topics:
        for subscriber_ids in _topic_audience(
            client_id=event.client_id,
            key=topic["topicKey"],
            exclude=[*not_members, *topic["exclude"]],
            rerun=rerun,
        ):
            pipeline.send_now(pipeline.SUBSCRIBER_BATCH, event.pk, subscriber_ids, queue=batches)
    # A member of two topics got two commands (the subscriber worker keeps one
    # notification), so the audience is counted apart, each member once: counted
    # twice, the fan-out would look short to the reconciler, which would run it again.
    count = len(recipients)
    if topics:
        count += _topics_members(
            client_id=event.client_id, topics=topics, exclude=not_members, rerun=rerun
        ).count()
    return count


def _processed_record(event: TriggerEvent, *, count: int) -> None:
    """Record the event processed: every command sent, to its `count` of recipients."""
    now = timezone.now()
    # Failed meanwhile: this run's claim went stale at the bound (a run only slow, not
    # dead). Every command went, so the event keeps neither the reason, which no longer
    # is true, nor the count of a run that never came back: kept at the bound, the
    # reconciler's rerun for a command lost later failed the event at once.
    given_up = Q(status=TriggerEvent.Status.FAILED)
    TriggerEvent.objects.filter(pk=event.pk).update(
        status=TriggerEvent.Status.PROCESSED,
        recipients=count,
        processed_at=now,
        recheck_from=now,
        error=Case(When(given_up, then=Value("")), default=F("error"), output_field=TextField()),
        internal_errors=Case(
            When(given_up & Q(internal_errors__gt=0), then=F("internal_errors") - 1),
            default=F("internal_errors"),
            output_field=PositiveSmallIntegerField(),
        ),
    )


def _actor_forgotten(event: TriggerEvent) -> bool:
    """Whether the event's actor was deleted since the event reached it (as a recipient)."""
    return _actor_body(event.actor).get("subscriberId") in event.forgotten


def _broadcast_audience(*, client_id: int, rerun: int | None = None) -> Iterator[list[str]]:
    """Every subscriber of a client, in keyset-paginated chunks: flat memory at any size."""
    return _keyset_chunks(Subscriber.objects.filter(client_id=client_id), rerun=rerun)


def _topic_audience(
    *, client_id: int, key: str, exclude: list[str], rerun: int | None = None
) -> Iterator[list[str]]:
    """A topic's members, less `exclude`, in chunks. A subscriber reached through two
    topics gets two commands; the (event, subscriber) constraint keeps one."""
    # Each chunk is a range of the (topic, subscriber) index, read in its order: paged by
    # the subscriber's pk and the topic joined by key, each chunk read and sorted every
    # member of the topic (20,000 took 1.4 s in 40 chunks; it grows as its square).
    topic_id = Topic.objects.filter(client_id=client_id, key=key).values_list("pk", flat=True)
    members = TopicSubscription.objects.filter(
        topic_id=topic_id.first(), subscriber__client_id=client_id
    ).exclude(subscriber__subscriber_id__in=exclude)
    return _keyset_chunks(
        members, rerun=rerun, key="subscriber_id", name="subscriber__subscriber_id"
    )


def _topics_members(
    *, client_id: int, topics: list[dict[str, Any]], exclude: list[str], rerun: int | None
) -> QuerySet[Subscriber]:
    """The subscribers in any of `topics` (less each one's exclude, and `exclude`), once
    each; on a rerun, less those its event reached."""
    in_any = Q()
    for topic in topics:
        in_any |= Q(
            topicsubscription__topic__client_id=client_id,
            topicsubscription__topic__key=topic["topicKey"],
        ) & ~Q(subscriber_id__in=topic["exclude"])
    members = (
        Subscriber.objects.filter(client_id=client_id)
        .filter(in_any)
        .exclude(subscriber_id__in=exclude)
    )
    if rerun is not None:
        reached = Notification.objects.filter(trigger_event_id=rerun, subscriber=OuterRef("pk"))
        members = members.exclude(Exists(reached))
    return members.distinct()


def _keyset_chunks(
    rows: QuerySet[Any], *, rerun: int | None, key: str = "pk", name: str = "subscriber_id"
) -> Iterator[list[str]]:
    """The subscriberIds (`name`) of `rows` in chunks, in the order of `key`, the
    subscriber's pk (a column of the table read, so an index range serves each chunk).
    `rerun`: the id of an event being fanned out again; its reached subscribers are left out."""
    if rerun is not None:
        reached = Notification.objects.filter(trigger_event_id=rerun, subscriber=OuterRef(key))
        rows = rows.exclude(Exists(reached))
    last_pk = 0
    while True:
        chunk = list(
            rows.filter(**{f"{key}__gt": last_pk})
            .order_by(key)
            .values_list(key, name)[:BROADCAST_CHUNK]
        )
        if not chunk:
            return
        last_pk = chunk[-1][0]
        yield [subscriber_id for _, subscriber_id in chunk]


# --- stage 3 (called by the subscriber worker), and a deleted subscriber forgotten ------


def fan_out_short(*, trigger_event_id: int, subscriber_ids: list[str], exc: Exception) -> None:
    """A bug ended a subscriber command of the event (its traceback logged), and its
    recipients have no notification: the reason on the event, where the fan-out's own
    goes, rather than nowhere. The reconciler fans a short event out again (bounded by
    MAX_REFANS); that run clears the reason when it claims the event, and its
    command records it again if the bug is still there. Not over a failed event's reason."""
    TriggerEvent.objects.filter(pk=trigger_event_id).exclude(
        status=TriggerEvent.Status.FAILED
    ).update(
        error=f"no notification was created for {recipients_named(subscriber_ids)}: {internal_error_text(exc)}"
    )


def recipients_named(subscriber_ids: list[str]) -> str:
    """Recipients named in an event's reason: the first, and how many in all."""
    first = subscriber_ids[0][:100] if subscriber_ids else ""
    if len(subscriber_ids) == 1:
        return f"subscriber '{first}'"
    return f"{len(subscriber_ids)} subscribers ('{first}', …)"


def _new_notification(
    trigger_event: TriggerEvent, subscriber: Subscriber, failed: str = ""
) -> Notification:
    """The event's notification for `subscriber`, not saved; failed with the reason
    `failed` if one is given (notifications_create)."""
    notification = Notification(
        trigger_event=trigger_event,
        subscriber=subscriber,
        client_id=trigger_event.client_id,
        workflow_id=trigger_event.workflow_id,
        resource=trigger_event.resource,
    )
    if failed:
        notification.status = Notification.Status.FAILED
        notification.error, notification.completed_at = failed, timezone.now()
    return notification


def notification_create(
    *, trigger_event: TriggerEvent, subscriber: Subscriber
) -> Notification | None:
    """One notification per (trigger event, subscriber); enqueue its first echo."""
    if trigger_event.canceled_at is not None:
        return None
    notification = _new_notification(trigger_event, subscriber)
    if not insert_once(notification):
        notification = Notification.objects.get(trigger_event=trigger_event, subscriber=subscriber)
        # A rerun finds the row; only a notification that has not started is re-sent.
        if notification.status != Notification.Status.PENDING:
            return notification
    pipeline.enqueue_on_commit(
        pipeline.ECHO, str(notification.pk), workflow=notification.workflow_id
    )
    return notification


def notifications_create(
    *, trigger_event: TriggerEvent, subscribers: list[Subscriber], failed: str = ""
) -> int:
    """`notification_create` for a chunk of subscribers: one INSERT and one commit for all,
    instead of a transaction each; returns how many first echoes it enqueued. `failed`:
    the reason their notifications fail with, never run (those that exist are kept).

    Rows go in subscriber order: two chunks reaching the same subscribers at once (two
    topics with shared members) would otherwise each hold a row the other waits for."""
    if trigger_event.canceled_at is not None or not subscribers:
        return 0
    while True:
        try:
            return _notifications_insert(trigger_event, subscribers, failed)
        except IntegrityError:
            # A subscriber deleted meanwhile (its delete locks it first, so this chunk's
            # foreign keys, checked at commit, wait for it): its notification is refused,
            # and with it the whole chunk, which goes in again without it.
            present = list(Subscriber.objects.filter(pk__in=[s.pk for s in subscribers]))
            if len(present) == len(subscribers):
                raise
            subscribers = present


def _notifications_insert(
    trigger_event: TriggerEvent, subscribers: list[Subscriber], failed: str
) -> int:
    with transaction.atomic():
        Notification.objects.bulk_create(
            [
                _new_notification(trigger_event, subscriber, failed)
                for subscriber in sorted(subscribers, key=lambda s: s.pk)
            ],
            ignore_conflicts=True,  # those a rerun or a second topic reached already
        )
        # As in notification_create: a rerun re-sends only notifications not started.
        pending = list(
            Notification.objects.filter(
                trigger_event=trigger_event,
                subscriber__in=subscribers,
                status=Notification.Status.PENDING,
            ).values_list("pk", flat=True)
        )
        pipeline.enqueue_each_on_commit(
            pipeline.ECHO, [str(pk) for pk in pending], workflow=trigger_event.workflow_id
        )
    return len(pending)


def fan_outs_forget(*, subscriber: Subscriber) -> None:
    """Count a subscriber about to be deleted (with its notifications) out of the
    recipients of the events that reached it and that the reconciler still checks: it
    would take the notification's absence for a command lost with the broker and fan out
    again, creating a deleted subscriber named in `to` anew and sending it the workflow a
    second time. Each event also remembers it as forgotten: a command for another
    recipient lost for real has the event fanned out again, which must pass it by too.
    Call it in the transaction that deletes the subscriber."""
    events = list(
        # No key update: a chunk inserting this event's notifications (which locks it
        # for key share) is not waited for. In id order: two deletes never cross.
        TriggerEvent.objects.select_for_update(no_key=True)
        .filter(
            pk__in=Notification.objects.filter(subscriber=subscriber).values("trigger_event_id"),
        )
        .filter(
            Q(recheck_from__gt=timezone.now() - FANOUT_RECHECK)
            # Still being fanned out (its count, written when that ends, will hold this
            # recipient) or waiting for a rerun: the run must pass it by.
            | Q(status__in=(TriggerEvent.Status.RECEIVED, TriggerEvent.Status.PROCESSING))
        )
        .only("pk", "forgotten")
        .order_by("pk")
    )
    # One UPDATE for the events that hold the same list (most often all: none forgotten
    # yet). Django's bulk_update set each row by a CASE over every row's id, work that grew
    # with the square of the events: 1.3 s for 1,000, 27 s for 7,200 (a subscriber reached
    # twice a second), over 4 minutes for 14,400, all that time in the delete's
    # transaction, which holds the subscriber and those events.
    held: dict[tuple[str, ...], list[int]] = {}
    for event in events:
        held.setdefault(tuple(event.forgotten), []).append(event.pk)
    for forgotten, pks in held.items():
        TriggerEvent.objects.filter(pk__in=pks).update(
            recipients=Greatest(F("recipients") - 1, 0),
            forgotten=[*forgotten, subscriber.subscriber_id],
        )


# --- stage 4: the echo worker --------------------------------------------------------------


def _subscriber_body(subscriber: Subscriber) -> dict[str, Any]:
    """The subscriber as the bridge gets it: its Novu attributes, the unset ones left out."""
    body = {
        "subscriberId": subscriber.subscriber_id,
        **{key: getattr(subscriber, field) for key, field in INLINE_FIELDS.items()},
    }
    return {k: v for k, v in body.items() if v not in ("", None)}


def _actor_body(actor: Any) -> dict[str, Any]:
    """A trigger's actor read as the fan-out stores it: a number is a subscriberId too,
    which this read as no actor at all. {} for none, or one stored before norm checked it."""
    try:
        return parse_actor(actor) or {}
    except ApiError:
        return {}


def _actor_stored(notification: Notification) -> dict[str, Any]:
    """The trigger's actor for the bridge, read as stored, as the step's subscriber is.
    As the trigger gave it, it could contradict the store: an actor that `to` lists with
    attributes of its own has those, and its `{{actor.firstName}}` was not its own
    `{{subscriber.firstName}}`; an attribute Novu refuses was never stored. The fan-out
    stores it before reaching anyone, so each recipient's steps see the same actor. As
    the trigger gave it once it is gone."""
    given = _actor_body(notification.trigger_event.actor)
    actor_id = given.get("subscriberId")
    if not actor_id:
        return given
    actor: Subscriber | None = notification.subscriber
    if actor_id != notification.subscriber.subscriber_id:
        actor = Subscriber.objects.filter(
            client_id=notification.client_id, subscriber_id=actor_id
        ).first()
    return given if actor is None else _subscriber_body(actor)


def echo_run(*, notification_id: str, final_attempt: bool = True) -> None:
    """Ask the bridge for the notification's next step and record it.

    Safe to run twice: it does nothing while a step is open or once the notification
    is final, and two runs racing on the same state insert the same (notification,
    position) row, which the unique constraint lets through once.
    Raises BridgeUnavailable for the task to retry unless `final_attempt`.
    """
    # A bug (in norm, or an answer it did not foresee): recorded, failed at NORM_MAX_CLAIMS.
    with pipeline.bugs_recorded(
        lambda exc: _echo_internal_error(notification_id=notification_id, exc=exc),
        "the echo of notification",
        notification_id,
        logger,
        passes=(bridge.BridgeUnavailable,),  # the task's own retries
    ):
        _echo(notification_id=notification_id, final_attempt=final_attempt)


def _echo_internal_error(*, notification_id: str, exc: Exception) -> None:
    reason = internal_error_text(exc)
    active = Notification.objects.filter(pk=notification_id, status__in=ACTIVE)
    # As a transient bridge failure: the reason shown, the reconciler's grace from now.
    active.update(internal_errors=F("internal_errors") + 1, error=reason, updated_at=timezone.now())
    if active.filter(internal_errors__gte=settings.NORM_MAX_CLAIMS).exists():
        notification_fail(
            notification_id=notification_id,
            code="InternalError",
            message=f"{reason} ({GIVEN_UP})",
        )


def internal_error_text(exc: Exception) -> str:
    """A bug's reason for its row: one line, its type and message, bounded (the admin and
    every page of the API that lists the row show it). The traceback is for the log."""
    return bounded(error_text(exc), 500)


def _echo(*, notification_id: str, final_attempt: bool) -> None:
    """`echo_run`, its unexpected errors aside."""
    notification = _notification_to_echo(notification_id)
    if notification is None:
        # Deleted with its subscriber (or client) since its echo was sent: an expected
        # race with nothing to mend, as a step's send whose subscriber went ends quietly.
        logger.info("echo: notification %s is gone", notification_id)
        return
    if notification.status in Notification.FINAL:
        return
    if notification.trigger_event.canceled_at is not None:
        # Created in a race with the cancel of its trigger.
        notification_cancel(notification=notification)
        return
    # A pending notification has no step: it turns running in the transaction that
    # records its first one, and never back. Its first echo (one of every notification's
    # few) skips the query; a run recording that step meanwhile is the race a read would
    # miss too, which the step's unique position settles.
    pending = notification.status == Notification.Status.PENDING
    steps = [] if pending else selectors.notification_steps(notification=notification)
    # Before the client's checks: a duplicate echo that failed the notification while its
    # step was sending left that step to be canceled by a transient failure, and the
    # message worker checks the client itself before it sends.
    if any(step.status in OPEN_STEP for step in steps):
        return  # the message worker owns the notification until its step is done
    if _client_refused(notification):
        return
    state = selectors.bridge_state(notification=notification, steps=steps)
    # An error is the bridge's answer to the state this run read. A duplicate echo (the
    # reconciler's, a redelivery) may have read it before another run recorded the next
    # step: an error for that older state must not fail the notification under the step,
    # whose message would then never go out. So it counts only while the row has not
    # moved since this run read it (recording a step always moves it); if it moved, the
    # next echo asks again with the current state.
    answer = _bridge_answer(notification, state=state, final_attempt=final_attempt)
    if answer is None:
        return
    try:
        undelivered = next((s for s in reversed(steps) if s.status == Step.Status.FAILED), None)
        _record_answer(
            notification=notification, state=state, answer=answer, undelivered=undelivered
        )
    except (OperationalError, InterfaceError):
        raise  # the database is away: the task retries
    except Exception as exc:
        # An answer norm cannot record (a delay too long to represent, say): failing
        # the notification keeps the reconciler from asking the bridge again forever.
        # A broadcast's notifications each get the same answer: one traceback a minute.
        pipeline.bug_logged(logger, exc, "echo: the record of the answer for", notification.pk)
        _refuse_answer(
            notification,
            code="BridgeInvalidResponse",
            message=f"norm could not record the bridge's answer: {error_text(exc)}",
        )


def _notification_to_echo(notification_id: str) -> Notification | None:
    """The notification, with what the echo reads of its subscriber, trigger and client."""
    return (
        Notification.objects.select_related("subscriber", "trigger_event", "client")
        # The event's recipients can run to a thousand entries, those forgotten and the
        # redelivered commands to a broadcast's; the echo needs none of them. Nor the
        # notification's own payload (Notification.payload): the bridge gets the event's,
        # and a notification an older release made holds a copy of it, up to 512 KB.
        .defer(
            "payload",
            "trigger_event__to",
            "trigger_event__overrides",
            "trigger_event__forgotten",
            "trigger_event__redelivered",
        )
        .filter(pk=notification_id)
        .first()
    )


def _client_refused(notification: Notification) -> bool:
    """Whether the client no longer has the notification sent, which is then failed: the
    client inactive, or the bridge no longer one of the client's bridge URLs."""
    if not notification.client.is_active:
        notification_fail(
            notification_id=notification.pk, code="ClientInactive", message=CLIENT_INACTIVE
        )
        return True
    if notification.resource not in notification.client.bridge_urls():
        # The client's bridge moved, or the URL left its allowed list, after the trigger:
        # norm calls only URLs the client has now, so the old one is never asked again.
        notification_fail(
            notification_id=notification.pk,
            code="BridgeNotAllowed",
            message=f"the bridge {masked_url(notification.resource)} is no longer one of the client's "
            "bridge URLs",
        )
        return True
    return False


def _bridge_answer(
    notification: Notification, *, state: list[dict[str, Any]], final_attempt: bool
) -> dict[str, Any] | None:
    """The bridge's answer to `state`: its next step, or done. An error ends the echo,
    counted only while the row has not moved (see `_echo`): a bridge down is raised for
    the task's retry, and on the last attempt fails the notification, as any other error
    does; None then."""
    body = {
        "payload": notification.trigger_event.payload,
        "subscriber": _subscriber_body(notification.subscriber),
        "state": state,
        "controls": {},
        "actor": _actor_stored(notification),
        "context": {},
    }
    try:
        return flavours.next_step(
            notification=notification,
            body=body,
            secrets=signing_secrets(client_id=notification.client_id, cached=True),
        )
    except bridge.BridgeUnavailable as exc:
        now = timezone.now()
        counted = Notification.objects.filter(
            pk=notification.pk, updated_at=notification.updated_at
        ).update(bridge_attempts=F("bridge_attempts") + 1, error=str(exc), updated_at=now)
        if not final_attempt:
            _bridge_down_log(notification, exc)
            raise
        if counted:
            notification_fail(
                notification_id=notification.pk, code=exc.code, message=exc.message, read_at=now
            )
        return None
    except bridge.BridgeError as exc:
        _refuse_answer(notification, code=exc.code, message=exc.message)
        return None


# A bridge down fails the echo of each of its notifications, each retried: one line a
# minute per bridge, not one per notification of a broadcast per retry.
_bridge_down = Quieted()


def _bridge_down_log(notification: Notification, exc: bridge.BridgeUnavailable) -> None:
    """Say that the bridge is down (a warning without traceback: retried, and the bridge's
    to mend), naming the notification, its client and the bridge."""
    held = _bridge_down.due((notification.client_id, notification.resource))
    if held is not None:
        logger.warning(
            "echo of notification %s (client %s, workflow %s): the bridge %s is unavailable, "
            "retried up to NORM_BRIDGE_MAX_RETRIES times: %s (%d more such echoes since the "
            "last such line)",
            notification.pk,
            notification.client_id,
            # The bridge's words: its workflow's id, its error's code and message.
            loggable(notification.workflow_id),
            masked_url(notification.resource),
            loggable(exc),
            held,
        )


def _record_answer(
    *,
    notification: Notification,
    state: list[dict[str, Any]],
    answer: dict[str, Any],
    undelivered: Step | None = None,
) -> None:
    """Record the step the bridge named, or end the notification if it said done: failed,
    if the workflow went on past an `undelivered` step, completed otherwise."""
    if answer.get("done") is True:
        _notification_end(notification, undelivered=undelivered)
        return
    # A str, a str and an object once _answer_fault passes them, which mypy does not follow.
    step_id: Any
    step_type: Any
    outputs: Any
    step_id, step_type = answer.get("stepId"), answer.get("type")
    outputs, providers = answer.get("outputs"), answer.get("providers") or {}
    options = answer.get("options")
    skipped = isinstance(options, dict) and options.get("skip") is True
    fault = _answer_fault(step_id, step_type, outputs, providers, skipped=skipped, state=state)
    if fault is not None:
        code, message = fault
        _refuse_answer(notification, code=code, message=message)
        return
    now = timezone.now()
    due_at = now
    if step_type == "delay" and not skipped:
        try:
            # On the subscriber's clock, as Novu reads a timed delay's cron.
            due_at = delay_until(outputs, now=now, zone=notification.subscriber.timezone)
        except UnsupportedDelay as exc:
            _refuse_answer(
                notification,
                code="UnsupportedDelay",
                message=f"step '{step_id}': {exc}",
            )
            return
    _step_record(
        notification,
        step_id=step_id,
        step_type=step_type,
        position=len(state),
        outputs=outputs,
        providers=providers,
        skipped=skipped,
        now=now,
        due_at=due_at,
    )


def _notification_end(notification: Notification, *, undelivered: Step | None) -> None:
    """End a notification the bridge said done: failed if the workflow went on past an
    `undelivered` step, completed otherwise."""
    # Only if no step was recorded since this run read the notification: recording
    # one always moves its updated_at (to the step's due time). A duplicate echo that
    # read the state before another run recorded a step can be answered done where
    # that run was answered the step (the code branches on an in-app message read
    # in between), and must not complete the notification under the step, which
    # then was never sent. Compared on the row itself, not by looking for the step:
    # an UPDATE that waited for the recording to commit re-checks the row's own
    # columns, but would still not see the step (PostgreSQL's READ COMMITTED).
    ended = {"status": Notification.Status.COMPLETED, "error": "", "error_code": ""}
    if undelivered is not None:  # gone on from (step_undelivered): the last of them
        ended = {
            "status": Notification.Status.FAILED,
            "error": undelivered.notification_error(),
            "error_code": "SendFailed",
        }
    Notification.objects.filter(
        pk=notification.pk, status__in=ACTIVE, updated_at=notification.updated_at
    ).update(completed_at=timezone.now(), **ended)


def _answer_fault(
    step_id: Any,
    step_type: Any,
    outputs: Any,
    providers: Any,
    *,
    skipped: bool,
    state: list[dict[str, Any]],
) -> tuple[str, str] | None:
    """What keeps norm from recording the step the bridge answered, as the code and the
    message its notification fails with; None if nothing does."""
    known = selectors.STEP_TYPES | selectors.UNSUPPORTED_STEP_TYPES
    # The type is checked to be a string first: a list or an object is no key of a set.
    named = isinstance(step_id, str) and bool(step_id) and isinstance(step_type, str)
    if not named or step_type not in known:
        return (
            "BridgeInvalidResponse",
            f"the bridge answered no valid next step (stepId={step_id!r}, type={step_type!r})",
        )
    # Skipped, a step of a type norm does not run asks nothing of norm: it is recorded
    # skipped and the workflow goes on, as in Novu (a digest only some triggers need).
    if step_type in selectors.UNSUPPORTED_STEP_TYPES and not skipped:
        return (
            "UnsupportedStepType",
            f"step '{step_id}' is a {step_type} step, which norm does not run yet",
        )
    if len(step_id) > STEP_ID_LENGTH:
        return (
            "BridgeInvalidResponse",
            f"the bridge answered a stepId of {len(step_id)} characters; norm takes "
            f"at most {STEP_ID_LENGTH}",
        )
    if not isinstance(outputs, dict) or not isinstance(providers, dict):
        # Taken as {} (or stored as given), the step ran on nothing: a custom step's
        # result, which later steps read, was {}; a channel's message failed for a
        # missing subject, far from the bridge's mistake.
        return (
            "BridgeInvalidResponse",
            f"the bridge answered step '{step_id}' with outputs and providers that "
            f"are not both objects (outputs: {type(outputs).__name__}, providers: "
            f"{type(providers).__name__})",
        )
    if any(entry["stepId"] == step_id for entry in state):
        return (
            "BridgeInvalidResponse",
            f"the bridge returned step '{step_id}' again, which already ran",
        )
    if step_type == "in_app":
        size = len(json.dumps(outputs, ensure_ascii=False).encode())
        if size > IN_APP_MAX_BYTES:
            return (
                "BridgeResponseTooLarge",
                f"the bridge answered in-app step '{step_id}' with outputs of {size} bytes; "
                f"an in-app message holds at most {IN_APP_MAX_BYTES} (a page of a feed "
                "lists up to 100)",
            )
    # Every later call carries the state back, each step's result (a custom step's, its
    # whole outputs): bounded by what norm reads of one answer, or a bridge of large
    # outputs built calls of gigabytes, each in an echo worker's memory, before the last
    # step NORM_MAX_STEPS allows.
    carried = len(json.dumps(state).encode()) + len(json.dumps(outputs).encode())
    if carried > settings.NORM_BRIDGE_MAX_RESPONSE_BYTES:
        return (
            "BridgeResponseTooLarge",
            f"the bridge answered step '{step_id}' with outputs that bring the state every "
            f"later call carries back to {carried} bytes, over NORM_BRIDGE_MAX_RESPONSE_BYTES "
            f"({settings.NORM_BRIDGE_MAX_RESPONSE_BYTES})",
        )
    if len(state) >= settings.NORM_MAX_STEPS:
        # Checked on the answer, not before the call: the bridge may say done after the last.
        return (
            "TooManySteps",
            f"the bridge answered step '{step_id}' after {len(state)} steps, and a "
            f"notification runs at most NORM_MAX_STEPS ({settings.NORM_MAX_STEPS}): a "
            "workflow that never ends (a loop over new step ids?)",
        )
    return None


def _step_record(
    notification: Notification,
    *,
    step_id: str,
    step_type: str,
    position: int,
    outputs: dict[str, Any],
    providers: dict[str, Any],
    skipped: bool,
    now: datetime,
    due_at: datetime,
) -> None:
    """Record the step the bridge answered, due at `due_at`, and enqueue what runs next:
    the step's send, or the echo past a skipped step."""
    countdown = (due_at - now).total_seconds()
    on_broker = countdown <= settings.NORM_BROKER_MAX_COUNTDOWN
    try:
        with transaction.atomic():
            # A notification is pending until its first step is recorded. One waiting
            # for a delay is quiet until the step is due, not idle: its updated_at is
            # the due time, so the reconciler's search for idle ones passes it by. It has
            # moved on: an earlier attempt's reason (a bridge down, a bug) is no longer its,
            # and NORM_MAX_CLAIMS bounds the runs a bug ends at one point of the workflow,
            # not all those of its life (three passing bugs failed a long one).
            still_active = Notification.objects.filter(
                pk=notification.pk, status__in=ACTIVE
            ).update(
                status=Notification.Status.RUNNING, updated_at=due_at, error="", internal_errors=0
            )
            if not still_active:
                return  # canceled or failed while the bridge was answering
            step = Step.objects.create(
                notification=notification,
                step_id=step_id,
                type=step_type,
                position=position,
                outputs=outputs,
                providers=providers,
                status=Step.Status.SKIPPED if skipped else Step.Status.SCHEDULED,
                result=_skipped_result(step_type, notification) if skipped else {},
                due_at=due_at,
                enqueued_at=now if on_broker and not skipped else None,
                completed_at=now if skipped else None,
            )
            workflow = notification.workflow_id
            if skipped:
                pipeline.enqueue_on_commit(pipeline.ECHO, str(notification.pk), workflow=workflow)
            elif on_broker:
                pipeline.enqueue_on_commit(
                    pipeline.MESSAGE, step.pk, workflow=workflow, countdown=countdown
                )
            # A longer delay waits in the database; the reconciler enqueues it when due.
    except IntegrityError:
        logger.info(
            "echo: step %s of %s was recorded by a concurrent run",
            loggable(step_id),
            notification.pk,
        )


def _skipped_result(step_type: str, notification: Notification) -> dict[str, Any]:
    """A skipped step's entry in the state: what Novu's worker sends for it, which Novu's
    framework holds to the type's result schema when it replays the step (a `{}` for a
    digest or a throttle is refused: `events`, `throttled` are required)."""
    if step_type == "in_app":
        return selectors.in_app_result(None)
    if step_type == "delay":
        return {"duration": 0}
    if step_type == "digest":
        # Novu's: the digest's events are the run's own and those merged into it; a
        # skipped one merged none. Its code then renders the one event, not none.
        own = {
            "id": str(notification.pk),
            "time": iso_z(notification.created_at),
            "payload": notification.trigger_event.payload,
        }
        return {"events": [own], "eventCount": 1}
    if step_type == "throttle":
        return {"throttled": False}  # Novu's for a throttle that did not run
    return {}  # channels and tool (`{}`), custom and http_request (no output stored)


def _refuse_answer(notification: Notification, *, code: str, message: str) -> None:
    """Fail the notification for the bridge's answer (or refusal) to the state this run
    read: only while the row has not moved since (see `_echo`). The reason is bounded as a
    bridge's own error message is: it may quote what the answer held (a stepId, a type, a
    delay's unit), any length the bridge wrote."""
    notification_fail(
        notification_id=notification.pk,
        code=code,
        message=bounded(message, bridge.MAX_MESSAGE),
        read_at=notification.updated_at,
    )


def notification_fail(
    *, notification_id: uuid.UUID | str, code: str, message: str, read_at: datetime | None = None
) -> None:
    """Fail the notification unless it has ended. `read_at`: the `updated_at` a run read
    before asking the bridge, for a failure that is the bridge's answer to that state:
    only if the row has not moved since (see `_echo`)."""
    rows = Notification.objects.filter(pk=notification_id)
    if read_at is not None:
        rows = rows.filter(updated_at=read_at)
    failed = rows.exclude(status__in=Notification.FINAL).update(
        status=Notification.Status.FAILED,
        error=message,
        error_code=code[:100],  # the column's length; bridges choose their codes
        completed_at=timezone.now(),
    )
    if failed:
        _failure_log(notification_id, code=code, message=message)


# A failure most often fails every notification of a client alike (a bridge refusing
# norm's signature, a key norm cannot decrypt): one line a minute per reason's code.
_failures = Quieted()


def _failure_log(notification_id: uuid.UUID | str, *, code: str, message: str) -> None:
    """Say that a notification failed for good, naming it, its client and workflow: the
    admin alone showed it. A warning: what failed it is no bug of norm's (a bug's
    traceback is logged where it is caught)."""
    held = _failures.due(code)
    if held is None:
        return
    client_id, workflow_id = (
        Notification.objects.filter(pk=notification_id)
        .values_list("client_id", "workflow_id")
        .first()
    ) or (None, None)
    logger.warning(
        "notification %s (client %s, workflow %s) failed: %s: %s (%d more failed with %s "
        "since the last such line)",
        notification_id,
        client_id,
        # Most often the bridge's words (its workflow's id, its error's code and message).
        loggable(workflow_id),
        loggable(code),
        loggable(message),
        held,
        loggable(code),
    )


# --- stage 5 bookkeeping (called by the message worker) -------------------------------------


def _of_running_notification(*, of_live_trigger: bool = False) -> Exists:
    """A step filter: its notification is running (and its trigger not canceled).

    For an UPDATE that claims or releases steps, in place of `notification__status`:
    Django writes a filter across a join as `WHERE id IN (SELECT ...)`, and when the
    UPDATE waits for a row another transaction is changing, PostgreSQL re-checks only
    the outer WHERE against the new row, so the step's own conditions (still
    `scheduled`?) would not be checked again: two tasks could claim one step and send
    it twice. With EXISTS the step's conditions stay in the outer WHERE.
    """
    running = Notification.objects.filter(
        pk=OuterRef("notification_id"), status=Notification.Status.RUNNING
    )
    if of_live_trigger:
        running = running.filter(trigger_event__canceled_at__isnull=True)
    return Exists(running)


def step_claim(*, step_id: int, claim: str = "", resumed: datetime | None = None) -> Step | None:
    """Take a due, scheduled step of a running notification; None if another run has it.

    `claim` is the task's id. A task that failed on a database error after claiming
    (PostgreSQL restarted) is retried under the same id, and takes its claim back at
    once instead of leaving the step to the reconciler's NORM_STALE_CLAIM_SECONDS. So
    does a task redelivered after its worker died. Either may repeat a send cut off
    between the provider and the commit: the one repeat allowed.

    Each claim counts toward NORM_MAX_CLAIMS but a retry's that `resumed` the claim as
    its run took it (at `claimed_at`): the database failed that run, not its worker. A
    redelivery of the retry carries the same time, which the retry's claim has moved on
    from, so a send that kills its worker is still counted each time.
    """
    now = timezone.now()
    claim = claim or uuid.uuid4().hex
    counted: Any = F("attempts") + 1
    if resumed is not None:
        counted = Case(
            When(
                status=Step.Status.PROCESSING,
                claimed_by=claim,
                claimed_at=resumed,
                then=F("attempts"),
            ),
            default=F("attempts") + 1,
        )
    claimed = (
        # Not of a canceled trigger: its cancel ends the notifications a chunk at a time,
        # the last ones after it has answered (or, cut off, never), and their steps
        # would be sent meanwhile.
        Step.objects.filter(_of_running_notification(of_live_trigger=True), pk=step_id)
        .filter(
            Q(status=Step.Status.SCHEDULED, due_at__lte=now + CLOCK_SKEW)
            | Q(status=Step.Status.PROCESSING, claimed_by=claim)
        )
        .update(
            status=Step.Status.PROCESSING,
            claimed_at=now,
            claimed_by=claim,
            attempts=counted,
        )
    )
    if not claimed:
        # Stopped as the echo stops it: left running, the reconciler would send its due
        # step here again each grace period, for good.
        of_canceled = Notification.objects.filter(
            steps__pk=step_id,
            status=Notification.Status.RUNNING,
            trigger_event__canceled_at__isnull=False,
        ).first()
        if of_canceled is not None:
            notification_cancel(notification=of_canceled)
        else:
            _send_when_due(step_id, now=now)
        return None
    # Claims no send came back from (a send that returned counts on its message), and
    # the status of its message, if an earlier attempt stored one (see step_skip).
    message = Message.objects.filter(step=OuterRef("pk"))
    try:
        step = (
            Step.objects.select_related("notification__subscriber", "notification__client")
            .annotate(
                unanswered=F("attempts") - Coalesce(Subquery(message.values("attempts")), 0),
                message_status=Subquery(message.values("status")),
            )
            .get(pk=step_id)
        )
    except Step.DoesNotExist:  # its subscriber was deleted since, with it: nothing to send
        return None
    if step.unanswered > settings.NORM_MAX_CLAIMS:
        step_fail(
            step=step,
            code="TooManyClaims",
            message=f"taken {step.unanswered - 1} times by workers that never finished it (a "
            "send that kills its worker?); given up after NORM_MAX_CLAIMS",
        )
        return None
    return step


def _send_when_due(step_id: int, *, now: datetime) -> None:
    """Send a step this worker's clock finds not due yet again, for when it is.

    A step sent as due (no countdown: a channel step, a zero delay, the reconciler's
    re-send) has its due time by the sender's clock: a message worker more than
    CLOCK_SKEW behind dropped it, and it waited for the reconciler's re-send, a grace
    period (a minute) for every email of a worker whose clock is a few seconds off.
    Celery counts the countdown on this worker's clock, which the claim reads the due
    time with. Once only (`enqueued_at` is then before the due time, as for a step sent
    with a countdown), and not one due later than the broker keeps a countdown: that is
    no clock's skew, and waits for the reconciler as a long delay does."""
    due = Step.objects.filter(
        _of_running_notification(of_live_trigger=True),
        pk=step_id,
        status=Step.Status.SCHEDULED,
        due_at__gt=now + CLOCK_SKEW,
        due_at__lte=now + timedelta(seconds=settings.NORM_BROKER_MAX_COUNTDOWN),
        enqueued_at__gte=F("due_at"),
    )
    first = due.values_list("due_at", "notification__workflow_id").first()
    if first is not None and due.filter(due_at=first[0]).update(enqueued_at=now):
        countdown = (first[0] - now).total_seconds()
        pipeline.enqueue_on_commit(
            pipeline.MESSAGE, step_id, workflow=first[1], countdown=countdown
        )


def step_complete(*, step: Step, result: dict[str, Any]) -> None:
    """Complete a claimed step with the `result` the bridge replays as its state."""
    _step_finish(step, status=Step.Status.COMPLETED, result=result, error="")


def step_skip(*, step: Step, reason: str) -> None:
    """Skip a claimed step that cannot reach its subscriber; the notification goes on.

    Only by the task holding the claim (_held): one that read the step unreachable and
    stalled past NORM_STALE_CLAIM_SECONDS before skipping it (its worker paused) skipped
    the step a second task, which found it reachable (the address added back, its
    worker with a provider for the channel), was sending: recorded skipped, the bridge
    told so, though the email went out; and an earlier attempt's message given up."""
    result = _skipped_result(step.type, step.notification)
    skipped = {"status": Step.Status.SKIPPED, "result": result, "error": reason}
    if getattr(step, "message_status", None) != Message.Status.SENDING:
        _step_finish(step, held=True, **skipped)
        return
    # An earlier attempt's message, on its way for good otherwise: a send that failed for
    # now (or one an admin retry reopened), and the subscriber's address removed since.
    # With the skip, in one transaction: the database lost between the two, the task's
    # retry found the step skipped (no claim to take back) and the message stayed
    # `sending` for good, which the reconciler (of processing steps) never moves.
    with transaction.atomic():
        _notification_locked(step)  # first: see there
        _message_locked(step)  # before the step: see there
        if _step_finish(step, held=True, **skipped):
            _messages_give_up([step.pk], reason)


def _step_finish(step: Step, *, held: bool = False, **fields: Any) -> bool:
    """Close a claimed step (`held`: only while this task holds it, see _held) and hand
    its notification back to the echo worker; return whether it closed it.

    One UPDATE: in a caller's transaction (the message's update), the echo is enqueued
    when that commits; outside one, the UPDATE has committed when it is enqueued, and a
    transaction of its own would only add BEGIN and COMMIT."""
    rows = _held(step) if held else Step.objects.filter(pk=step.pk, status=Step.Status.PROCESSING)
    done = rows.update(completed_at=timezone.now(), **fields)
    if done and step.error:  # an earlier run's reason, which a bug's is its notification's too
        # After the commit: in the caller's transaction, which holds the message and the
        # step, locking the notification last would deadlock with a subscriber's delete
        # (see _notification_locked).
        transaction.on_commit(lambda: _bug_reason_cleared(step), robust=True)
    if done:
        # The claim read the step with its notification (select_related): no query.
        workflow = step.notification.workflow_id
        pipeline.enqueue_on_commit(pipeline.ECHO, str(step.notification_id), workflow=workflow)
    return bool(done)


def _bug_reason_cleared(step: Step) -> None:
    """Take the reason a bug in the ended step's run left on its notification
    (step_internal_error) off it: no longer the notification's, it showed in the activity
    API, until the bridge named the next step, as a failed call to the bridge being
    retried. Only this step's: another step an admin's retry reopened may wait on its own."""
    Notification.objects.filter(
        pk=step.notification_id,
        status=Notification.Status.RUNNING,
        error__startswith=step.notification_error(""),
    ).update(error="")


def _held(step: Step) -> QuerySet[Step]:
    """The step while the task that claimed it `step` still holds it. A send slower than
    NORM_STALE_CLAIM_SECONDS loses its claim to the reconciler and a second task: the
    first one's failure is no longer the step's (the second may deliver it, or already
    did and the workflow went on), so only the holder fails or reschedules it. A
    success counts from either: the message went out."""
    return Step.objects.filter(
        pk=step.pk, status=Step.Status.PROCESSING, claimed_by=step.claimed_by
    )


def _notification_locked(step: Step) -> None:
    """Lock the step's notification first in a transaction that changes the step and then
    its message, as a subscriber's delete, a cancel and the echo take it before its steps
    and messages. Taken last (by notification_fail) or not at all, a delete that held it
    and the message waited for the step this held, while this waited for the message: a
    deadlock, which PostgreSQL ended by failing one of them (the delete, a 503 from the
    API). NO KEY: a notification's steps inserted meanwhile are not held up."""
    Notification.objects.select_for_update(no_key=True).filter(pk=step.notification_id).exists()


def _message_locked(step: Step) -> None:
    """Lock the step's message (if it has one) before the step, in a transaction that
    ends a claimed step and then gives its message up. A send that outlasted its claim
    is recorded (messaging's record: the message, then the step, with no other lock,
    as every send is) while the task that took the step over fails, skips or cancels
    it: locking the step first, each held the row the other wanted next, a deadlock
    that PostgreSQL ended by failing the record (retried with backoff). The message
    first, the two wait for each other in the record's order, as a subscriber's delete
    does (the message, then the step). NO KEY, as the UPDATEs that follow lock it."""
    Message.objects.select_for_update(no_key=True).filter(step_id=step.pk).exists()


def step_fail(*, step: Step, code: str, message: str) -> None:
    """Fail a claimed step and its notification: a failure that halts the workflow."""
    with transaction.atomic():
        _notification_locked(step)
        _message_locked(step)  # before the step: see there
        now = timezone.now()
        failed = _held(step).update(status=Step.Status.FAILED, error=message, completed_at=now)
        if failed:
            _messages_give_up([step.pk], message)
            notification_fail(
                notification_id=step.notification_id,
                code=code,
                message=step.notification_error(message),
            )
            # Another step an admin's retry reopened with this one (it reopens every
            # failed step), whose task had not taken it yet: its claim refused now, it
            # stayed scheduled in the failed notification, its message `sending` for
            # good. Canceled, as a cancel ends it; the next retry reopens it. Locked
            # first: one a task claims meanwhile is its task's, its message too.
            waiting = list(
                Step.objects.select_for_update(no_key=True)
                .filter(notification_id=step.notification_id, status=Step.Status.SCHEDULED)
                .order_by("pk")
                .values_list("pk", flat=True)
            )
            if waiting:
                reason = f"not sent: step '{step.step_id}' failed the notification first"
                Step.objects.filter(pk__in=waiting).update(
                    status=Step.Status.CANCELED, error=reason, completed_at=now
                )
                _messages_give_up(waiting, reason)


def step_undelivered(*, step: Step, reason: str) -> None:
    """End a claimed channel step whose message failed for good, and go on with the
    workflow, as Novu's worker does: only an action step (or one its author marked to
    stop on failure) halts a Novu workflow, so an email refused for good does not keep
    the in-app message after it from its subscriber. Failing the notification here
    stopped every such workflow at its first undeliverable channel. It ends failed when
    the workflow ends, naming this step (_notification_end): a failed delivery still shows
    on it, and an admin's retry sends this step again.

    In the state the bridge gets, the step's result is a skipped one's (Novu's worker
    sends the in-app fallback for a step with no message to read). One UPDATE, as a
    completed step's: its message was failed before it."""
    _step_finish(
        step,
        held=True,
        status=Step.Status.FAILED,
        result=_skipped_result(step.type, step.notification),
        error=reason,
    )


def step_retry_later(*, step: Step, message: str, backoff: float) -> None:
    """Put a step that failed transiently back on the schedule, `backoff` seconds out.
    A backoff longer than NORM_BROKER_MAX_COUNTDOWN waits in the database, as a long
    delay does: Redis would deliver it again after its visibility timeout."""
    now = timezone.now()
    due_at = now + timedelta(seconds=backoff)
    on_broker = backoff <= settings.NORM_BROKER_MAX_COUNTDOWN
    with transaction.atomic():
        # First: a step whose notification ended while it was sending is canceled here,
        # and then its message given up. One query more, for a send that failed for now.
        _notification_locked(step)
        released = (
            _held(step)
            .filter(_of_running_notification())
            .update(
                status=Step.Status.SCHEDULED,
                due_at=due_at,
                enqueued_at=now if on_broker else None,
                error=message,
            )
        )
        if released:
            # Quiet until the step is due, as one waiting for a delay (see _step_record):
            # left at the step's recording, every reconcile read it for an open step while
            # its provider was down (a broadcast's notifications, each run, for hours).
            Notification.objects.filter(pk=step.notification_id).update(updated_at=due_at)
        if released and on_broker:
            workflow = step.notification.workflow_id  # read with the claim (select_related)
            pipeline.enqueue_on_commit(
                pipeline.MESSAGE, step.pk, workflow=workflow, countdown=backoff
            )
        elif not released:  # canceled (or failed) while it was sending: nothing more to try
            _message_locked(step)  # before the step: see there
            if _held(step).update(
                status=Step.Status.CANCELED, error=message, completed_at=timezone.now()
            ):
                _messages_give_up([step.pk], message)


def step_internal_error(*, step_id: int, claim: str, exc: Exception) -> None:
    """A bug ended the message task holding the step under `claim` (its traceback
    logged): the reason on the step, its message (not one already sent) and its
    notification, and the step back on the schedule a grace period from now. After
    NORM_MAX_CLAIMS runs that never finished it (a send that returned does not count, as
    for step_claim's bound), it fails with code InternalError."""
    reason = internal_error_text(exc)
    sends = Message.objects.filter(step=OuterRef("pk")).values("attempts")
    step = (
        Step.objects.filter(pk=step_id, status=Step.Status.PROCESSING, claimed_by=claim)
        .select_related("notification")  # for step_fail and step_retry_later, as a claim's
        .annotate(unanswered=F("attempts") - Coalesce(Subquery(sends), 0))
        .first()
    )
    if step is None:
        return  # not claimed by this run (the bug came first), or another task's by now
    if step.unanswered >= settings.NORM_MAX_CLAIMS:
        step_fail(step=step, code="InternalError", message=f"{reason} ({GIVEN_UP})")
        return
    Message.objects.filter(step_id=step.pk, status=Message.Status.SENDING).update(error=reason)
    Notification.objects.filter(pk=step.notification_id, status=Notification.Status.RUNNING).update(
        error=step.notification_error(reason)
    )
    step_retry_later(step=step, message=reason, backoff=settings.NORM_RECONCILE_GRACE)


def _messages_give_up(step_ids: list[int] | QuerySet[Any], error: str) -> None:
    """The messages of steps that will not be sent again: failed, unless delivered after
    all. Left `sending` (a send that killed its worker until NORM_MAX_CLAIMS, one that
    failed for now under a cancel, one lost with its task), they read as still on their
    way, for good. `step_ids`: ids, or a query of them."""
    Message.objects.filter(step_id__in=step_ids, status=Message.Status.SENDING).update(
        status=Message.Status.FAILED, error=error
    )


# --- operations: retry, cancel, reconcile ------------------------------------------------


def notification_retry(*, notification: Notification) -> bool:
    """Run a failed notification again from its failed steps (or its failed bridge call);
    not one whose trigger was canceled."""
    with transaction.atomic():
        # Checked under the trigger's row lock, which the cancel's UPDATE of canceled_at
        # waits for: a cancel committed first is seen here; one committed after finds
        # this notification running and cancels it. Checked before, a cancel between the
        # check and the reopening found it failed (final), and the retry then sent.
        # NO KEY: the fan-out's inserts of notifications are not held up.
        canceled = (
            TriggerEvent.objects.select_for_update(no_key=True)
            .filter(pk=notification.trigger_event_id)
            .values_list("canceled_at", flat=True)
            .first()
        )
        if canceled is not None:
            return False
        reopened = Notification.objects.filter(
            pk=notification.pk, status=Notification.Status.FAILED
        ).update(
            status=Notification.Status.RUNNING,
            error="",
            error_code="",
            completed_at=None,
            internal_errors=0,
            bridge_attempts=0,
        )
        if not reopened:
            return False
        # Every failed step: the workflow went on past each whose message failed for
        # good (step_undelivered), and ended naming the last; reopening that one alone,
        # the notification failed again naming the one before, sent by a second retry
        # only. Or the step canceled (by step_retry_later) for a send that failed for now
        # after the notification had failed: left out of the state, the bridge would
        # name it again, and recording it again would break the unique constraint.
        failed = list(
            notification.steps.filter(
                status__in=(Step.Status.FAILED, Step.Status.CANCELED)
            ).values_list("pk", flat=True)
        )
        if failed:
            # A fresh budget of send attempts (the provider counts them on the message).
            # Not for a message delivered after all (by a task whose claim had gone stale,
            # while the task holding it failed): the message worker finds it sent and
            # completes the step instead of sending it again.
            Message.objects.filter(step_id__in=failed).exclude(status=Message.Status.SENT).update(
                status=Message.Status.SENDING, attempts=0, error=""
            )
            # The echo waits until none of them is open (OPEN_STEP), then asks the bridge.
            Step.objects.filter(pk__in=failed).update(
                status=Step.Status.SCHEDULED,
                due_at=timezone.now(),
                attempts=0,
                error="",
                enqueued_at=timezone.now(),
                completed_at=None,
            )
            for step_pk in failed:
                pipeline.enqueue_on_commit(
                    pipeline.MESSAGE, step_pk, workflow=notification.workflow_id
                )
        else:
            pipeline.enqueue_on_commit(
                pipeline.ECHO, str(notification.pk), workflow=notification.workflow_id
            )
    return True


def notification_cancel(*, notification: Notification) -> bool:
    """Stop a notification that has not finished; a step already sending finishes."""
    return notifications_cancel(notification_ids=[notification.pk]) > 0


def notifications_cancel(
    *, notification_ids: list[uuid.UUID] | None = None, trigger_event_id: int | None = None
) -> int:
    """Cancel unfinished notifications, those listed or all of a trigger's, and their
    waiting steps; return how many."""
    if (notification_ids is None) == (trigger_event_id is None):
        raise ValueError("name the notifications or the trigger event to cancel")
    now = timezone.now()
    if trigger_event_id is not None:
        return _trigger_notifications_cancel(trigger_event_id=trigger_event_id, now=now)[0]
    unfinished = Notification.objects.filter(pk__in=notification_ids).exclude(
        status__in=Notification.FINAL
    )
    with transaction.atomic():
        return _listed_notifications_cancel(list(unfinished.values_list("pk", flat=True)), now)


def cancel_deadline() -> float:
    """When a request's cancels stop, NORM_CANCEL_BUDGET_SECONDS from now (time.monotonic()):
    one for the whole request, which may cancel several triggers (the admin's action)."""
    return time.monotonic() + settings.NORM_CANCEL_BUDGET_SECONDS


def trigger_notifications_cancel(*, trigger_event: TriggerEvent, until: float) -> tuple[int, bool]:
    """A canceled trigger's unfinished notifications, until `until` (cancel_deadline; a
    chunk at least); the rest, if any, handed to the cancel task, on the queue its
    workflow's fan-out goes to. Return how many it canceled, and whether it handed any on.

    For a request: at 200,000 in 15-18 s, a broadcast's 1,000,000 would take 80 s, and
    gunicorn kills the worker at 30 s, the client getting a 502 and the rest of the
    cancel left undone."""
    canceled, finished = _trigger_notifications_cancel(
        trigger_event_id=trigger_event.pk, now=timezone.now(), until=until
    )
    if not finished:
        # Marked before it is handed on, so that a task the broker loses is sent again.
        TriggerEvent.objects.filter(pk=trigger_event.pk).update(cancel_task_at=timezone.now())
        pipeline.enqueue_on_commit(
            pipeline.CANCEL, trigger_event.pk, workflow=trigger_event.workflow_id
        )
    return canceled, not finished


def trigger_cancel_finish(*, trigger_event_id: int) -> int:
    """What a trigger's cancel left to its task: the rest of its unfinished notifications.
    Nothing of a trigger not canceled. Safe to run twice, or beside another cancel of the
    trigger: each chunk ends only notifications still unfinished."""
    if not TriggerEvent.objects.filter(pk=trigger_event_id, canceled_at__isnull=False).exists():
        return 0
    return notifications_cancel(trigger_event_id=trigger_event_id)


def _trigger_notifications_cancel(
    *, trigger_event_id: int, now: datetime, until: float | None = None
) -> tuple[int, bool]:
    """All of a trigger's unfinished notifications, CANCEL_CHUNK to a transaction.

    In one, a broadcast's 200,000 took 15-22 s, every row locked until the end (its
    echoes waiting on them) and none seen canceled before the last was (its steps still
    claimed and sent meanwhile). Chunks are safe: the trigger's `canceled_at` committed
    first, so an echo that reads it stops its notification itself, and each notification
    still ends with its steps, in one transaction. In the order of the unique
    (trigger_event, subscriber) index, so each chunk is a range of it, not a read of all
    the trigger's notifications (by id) or of the whole table (by the primary key).
    Stops after the chunk that reaches `until` (time.monotonic()); return how many it
    canceled, and whether it got to the end.

    Keeps the trigger's `cancel_task_at` up to date for the reconciler: a cancel task
    under way touches it after each chunk (a million notifications take longer than the
    grace period, and are not lost), and a cancel that got to the end clears it, no
    task left to send again."""
    of_trigger = (
        Notification.objects.filter(trigger_event_id=trigger_event_id)
        .exclude(status__in=Notification.FINAL)
        .order_by("subscriber_id")
    )
    task_due = TriggerEvent.objects.filter(pk=trigger_event_id, cancel_task_at__isnull=False)
    canceled, after = 0, 0
    while True:
        chunk = list(
            of_trigger.filter(subscriber_id__gt=after).values_list("pk", "subscriber_id")[
                :CANCEL_CHUNK
            ]
        )
        with transaction.atomic():
            canceled += _listed_notifications_cancel([pk for pk, _ in chunk], now)
        if len(chunk) < CANCEL_CHUNK:
            task_due.update(cancel_task_at=None)
            return canceled, True
        task_due.update(cancel_task_at=timezone.now())
        if until is not None and time.monotonic() >= until:
            return canceled, False
        after = chunk[-1][1]


def _listed_notifications_cancel(ids: list[uuid.UUID], now: datetime) -> int:
    """Cancel the notifications `ids` that are unfinished, and their waiting steps, in the
    caller's transaction; return how many."""
    if not ids:
        return 0
    # Locked in id order first, as a subscriber's delete locks its notifications. The
    # UPDATE alone locked them as it read them, in the table's order (a bitmap scan of
    # the primary key, for a chunk of a large table): it held one of a subscriber's and
    # waited for another that the subscriber's delete held, waiting for the first, a
    # deadlock that PostgreSQL ended by failing one of them (the delete, a 503).
    unfinished = (
        Notification.objects.filter(pk__in=ids)
        .exclude(status__in=Notification.FINAL)
        .order_by("pk")
        .select_for_update(no_key=True)
    )
    canceled = Notification.objects.filter(pk__in=unfinished.values("pk")).update(
        status=Notification.Status.CANCELED, completed_at=now
    )
    # Each status as "none of the others", which the (status, due_at) index cannot serve:
    # as `status = …`, PostgreSQL read it when its statistics (not yet counting the
    # steps a broadcast recorded since the last ANALYZE, or those this cancel ended)
    # called the status rare, and each chunk of a trigger's cancel then read every
    # scheduled step, or every one the chunks before it had canceled (90 ms a chunk
    # over 200,000); so it reads them by notification.
    of_listed = Step.objects.filter(notification_id__in=ids)
    # Only scheduled steps: one a worker is sending (processing) is left to finish.
    of_listed.exclude(status__in=_OTHER_THAN[Step.Status.SCHEDULED]).update(
        status=Step.Status.CANCELED, completed_at=now
    )
    # A step waiting to be sent again (after a send that failed for now, or an admin
    # retry) has its message `sending`, which read as on its way for good. Not that of
    # a step a worker took meanwhile: its task ends it.
    _messages_give_up(
        of_listed.exclude(status__in=_OTHER_THAN[Step.Status.CANCELED]).values("pk"),
        CANCELED_BEFORE_RETRY,
    )
    return canceled


def _quiet_for_twice_each_run(*, now: datetime, grace: timedelta) -> Q:
    """Last fanned out a grace period ago, or twice that after one more run, and so on,
    MAX_REFANS runs at most: while a backed-up queue still holds a run's commands,
    running it every grace period would queue them all again each time."""
    waits = [Q(refanned=n, claimed_at__lt=now - grace * 2**n) for n in range(MAX_REFANS)]
    return reduce(operator.or_, waits)  # and no run after the last: refanned=MAX_REFANS


def _update_unheld(rows: QuerySet[Any], **fields: Any) -> int:
    """`rows.update(**fields)` but for the rows another transaction holds, locked first
    and skipped: a row skipped is the next tick's.

    An UPDATE of several rows locks each as it reads it, in the order of the table or of
    an index, which no other writer shares: a tick held one event and waited for another
    that a subscriber's delete held (it locks the events that reached the subscriber in
    id order), while the delete waited for the one the tick held. PostgreSQL ended the
    deadlock by failing one of them, the delete (a 503) or the tick. Skipping what it
    would wait for, a tick waits for no one, and no other writer, nor a second tick (two
    beats by mistake), waits in a cycle with it."""
    locked = rows.order_by().select_for_update(no_key=True, skip_locked=True, of=("self",))
    with transaction.atomic():
        return rows.model._default_manager.filter(pk__in=locked.values("pk")).update(**fields)


def _lost_give_up(*, now: datetime, stale: timedelta) -> int:
    """End the steps of ended notifications whose tasks were lost, with their messages;
    return how many steps. A notification that ended (canceled, failed) while its step
    was sending leaves the step to its task; a task lost with its worker left the step
    processing for good, and its message sending. Once the claim is stale, both end,
    never sent again; a late success still marks its message sent.

    Together, each step and its message skipped if another transaction holds either
    (as `_update_unheld` skips them), and left to the next tick. As two UPDATEs of
    several rows, the tick locked the messages as it read them (the table's order),
    a subscriber's delete in its steps' order: each held one the other waited for,
    and PostgreSQL ended one of them (the delete, a 503)."""
    lost = Step.objects.filter(
        ~_of_running_notification(), status=Step.Status.PROCESSING, claimed_at__lt=now - stale
    )
    with transaction.atomic():
        locked = lost.order_by().select_for_update(no_key=True, skip_locked=True, of=("self",))
        step_pks = set(locked.values_list("pk", flat=True))
        if not step_pks:
            return 0
        sending = Message.objects.filter(step_id__in=step_pks, status=Message.Status.SENDING)
        messages = dict(
            sending.order_by()
            .select_for_update(no_key=True, skip_locked=True)
            .values_list("pk", "step_id")
        )
        # A message another transaction holds (its late record, a delete): its step too.
        step_pks -= set(sending.exclude(pk__in=list(messages)).values_list("step_id", flat=True))
        Message.objects.filter(
            pk__in=[pk for pk, step_pk in messages.items() if step_pk in step_pks]
        ).update(status=Message.Status.FAILED, error=LOST_WITH_ITS_TASK)
        return Step.objects.filter(pk__in=step_pks).update(
            status=Step.Status.CANCELED, error=LOST_WITH_ITS_TASK, completed_at=now
        )


# A tick every NORM_RECONCILE_INTERVAL (10 s) while the database or the broker is away.
_reconcile_failed = Quieted()


def reconcile() -> dict[str, int]:
    """Re-enqueue work that stalled: lost broker messages, dead workers, long delays.

    Works from the database alone, so it recovers even from an emptied broker; every
    stage claims its row, so enqueueing something twice is harmless. A tick the database
    or the broker fails is a warning, one a minute, and not retried: the next tick is its
    retry (raised, each tick was Celery's ERROR and traceback, six a minute for as long as
    the database was away). What it did before the failure stands: each write is whole.
    """
    try:
        return _reconcile()
    except (OperationalError, InterfaceError, *pipeline.BROKER_ERRORS) as exc:
        # A class is hashable: mypy, with Django's errors as Any, takes type[Any] for none.
        if (held := _reconcile_failed.due(type(exc))) is not None:  # type: ignore[arg-type]
            logger.warning(
                "reconcile: a tick failed, the next one tries again: %s (%d more such ticks "
                "since the last such line)",
                error_text(exc),
                held,
            )
        return {"events": 0, "cancels": 0, "notifications": 0, "steps": 0}


def _reconcile() -> dict[str, int]:
    """`reconcile`, its database's and broker's failures aside: each kind of stalled work
    in turn (trigger events, cancels, steps, notifications), each queue's backlog read
    once a tick (`rooms`)."""
    now = timezone.now()
    grace = timedelta(seconds=settings.NORM_RECONCILE_GRACE)
    stale = timedelta(seconds=settings.NORM_STALE_CLAIM_SECONDS)
    rooms: dict[str, int] = {}  # by queue, each looked at once a run (_with_room)
    given_up_events, released_events = _stale_events_release(now=now, stale=stale)
    _short_fan_outs_release(now=now, grace=grace, rooms=rooms)
    events = _waiting_events_resend(now=now, grace=grace, rooms=rooms)
    cancels = _cancels_resend(now=now, grace=grace, rooms=rooms)
    released_steps = _stale_steps_release(now=now, stale=stale)
    lost_steps = _lost_give_up(now=now, stale=stale)
    steps = _due_steps_resend(now=now, grace=grace, rooms=rooms)
    notifications = _idle_notifications_resend(now=now, grace=grace, rooms=rooms)
    counts = {"events": events, "cancels": cancels, "notifications": notifications, "steps": steps}
    _reconcile_log(counts, released=(released_events, released_steps), lost=lost_steps)
    if given_up_events:
        logger.warning(
            "reconcile: %d trigger event(s) failed, their fan-out never finished in "
            "NORM_MAX_CLAIMS runs (a fan-out that kills its worker?)",
            given_up_events,
        )
    return counts


def _stale_events_release(*, now: datetime, stale: timedelta) -> tuple[int, int]:
    """Let go of the trigger events whose fan-out's claim went stale, failing those past
    NORM_MAX_CLAIMS; return how many it failed and how many it let go."""
    # A run whose claim went stale never came back: its worker died (killed for memory,
    # say) or hung. Counted with the runs a bug ended, it bounds a fan-out that kills its
    # worker each time, which was run again every NORM_STALE_CLAIM_SECONDS for good; a
    # run that was only slow still ends the event processed when it finishes.
    stale_events = TriggerEvent.objects.filter(
        status=TriggerEvent.Status.PROCESSING, claimed_at__lt=now - stale
    )
    given_up_events = _update_unheld(
        stale_events.filter(
            internal_errors__gte=settings.NORM_MAX_CLAIMS - 1, canceled_at__isnull=True
        ),
        status=TriggerEvent.Status.FAILED,
        internal_errors=F("internal_errors") + 1,
        error=_never_finished(),
        processed_at=now,
    )
    released_events = _update_unheld(
        stale_events,
        status=TriggerEvent.Status.RECEIVED,
        reenqueued_at=None,
        internal_errors=F("internal_errors") + 1,
    )
    # A canceled event no run may claim: one released above (its run died after the
    # cancel), or by a run the broker refused, ends here rather than received for good.
    _update_unheld(
        TriggerEvent.objects.filter(status=TriggerEvent.Status.RECEIVED, canceled_at__isnull=False),
        status=TriggerEvent.Status.CANCELED,
    )
    return given_up_events, released_events


def _short_fan_outs_release(*, now: datetime, grace: timedelta, rooms: dict[str, int]) -> None:
    """Let go of the processed events whose fan-out came up short, for a rerun, once their
    commands' queue is empty; while it is not, keep their check's window open."""
    # Subscriber commands lost with the broker leave a processed event with fewer
    # notifications than recipients: fan it out again (it skips those reached).
    # Each event's notifications counted on their own (a subquery by trigger_event_id):
    # counted over a join of all the last hour's events, the planner, which takes an
    # event to have the average number of notifications, read the whole table each
    # tick (110 ms for 2,000 events of one notification among 600,000; now 2 ms).
    of_event = Notification.objects.filter(trigger_event=OuterRef("pk")).order_by()
    reached = of_event.values("trigger_event").annotate(n=Count("*")).values("n")
    short = (
        TriggerEvent.objects.filter(
            status=TriggerEvent.Status.PROCESSED,
            canceled_at__isnull=True,
            recheck_from__gt=now - FANOUT_RECHECK,
        )
        .alias(reached=Coalesce(Subquery(reached), 0))
        .filter(reached__lt=F("recipients"))
    )
    # None while its commands' queue holds any: those an event lacks may be among them,
    # behind other events' (its first ones too, none of its notifications made yet), and
    # each run would queue them again. Its window is kept meanwhile (FANOUT_RECHECK), or
    # a backlog longer than it lost the event's check for good.
    room = _with_room(pipeline.SUBSCRIBER, rooms)
    _update_unheld(
        short.exclude(room).filter(
            refanned__lt=MAX_REFANS, recheck_from__lt=now - FANOUT_RECHECK / 2
        ),
        recheck_from=now,
    )
    quiet = (
        short.filter(room)
        .filter(_quiet_for_twice_each_run(now=now, grace=grace))
        .exclude(
            # Only once its fan-out went quiet: a broadcast still being worked through
            # (its commands queued behind others) is not lost.
            Exists(of_event.filter(created_at__gte=now - grace))
        )
    )
    _update_unheld(
        TriggerEvent.objects.filter(
            pk__in=list(quiet.values_list("pk", flat=True)[:REDRIVE_BATCH]),
            status=TriggerEvent.Status.PROCESSED,
            canceled_at__isnull=True,
        ),
        status=TriggerEvent.Status.RECEIVED,
        reenqueued_at=None,
        refanned=F("refanned") + 1,
    )


def _waiting_events_resend(*, now: datetime, grace: timedelta, rooms: dict[str, int]) -> int:
    """Send the workflow worker again the events still received; return how many."""
    # Received but not claimed: lost with the broker, or still queued behind others.
    # The broker cannot be asked which, so each is re-sent once per grace period.
    waiting = TriggerEvent.objects.filter(
        status=TriggerEvent.Status.RECEIVED, canceled_at__isnull=True, created_at__lt=now - grace
    ).filter(Q(reenqueued_at__isnull=True) | Q(reenqueued_at__lt=now - grace))
    events = _to_queues(waiting, pipeline.WORKFLOW, rooms)
    _update_unheld(TriggerEvent.objects.filter(pk__in=[pk for pk, _ in events]), reenqueued_at=now)
    _resend(pipeline.WORKFLOW, events)
    return len(events)


def _cancels_resend(*, now: datetime, grace: timedelta, rooms: dict[str, int]) -> int:
    """Send again the cancel tasks the broker may have lost; return how many."""
    # A cancel whose task the broker lost (flushed, a worker killed) would leave the rest
    # of its notifications to their echoes, one waiting out a day's delay shown running
    # all day. Sent again once per grace period until a run gets to the end and clears
    # `cancel_task_at`; read by its partial index, which holds only cancels under way,
    # so no window (a day's, say) is needed to keep a tick cheap, and none gives up on a
    # cancel whose broker was down longer than one. A duplicate ends nothing twice.
    # Each re-send as the events': behind a backlog of its queue, a bulk cancel of
    # thousands added a batch of duplicates every grace period. Meanwhile the echo and
    # the message worker end its notifications as they reach them.
    under_way = TriggerEvent.objects.filter(cancel_task_at__lt=now - grace)
    cancels = _to_queues(under_way, pipeline.CANCEL, rooms)
    _update_unheld(
        TriggerEvent.objects.filter(pk__in=[pk for pk, _ in cancels], cancel_task_at__isnull=False),
        cancel_task_at=now,
    )
    _resend(pipeline.CANCEL, cancels)
    return len(cancels)


def _stale_steps_release(*, now: datetime, stale: timedelta) -> int:
    """Put back on the schedule the steps whose send's claim went stale; return how many."""
    # Only steps of running notifications: a canceled one's step is never sent.
    return _update_unheld(
        Step.objects.filter(
            _of_running_notification(), status=Step.Status.PROCESSING, claimed_at__lt=now - stale
        ),
        status=Step.Status.SCHEDULED,
        enqueued_at=None,
    )


def _due_steps_resend(*, now: datetime, grace: timedelta, rooms: dict[str, int]) -> int:
    """Send the message worker again the steps due and not sent; return how many."""
    # The longest overdue first, in the order of the (status, due_at) index, so that a
    # batch is the index's first rows: in Step's default order (position), each tick
    # sorted every due step to keep a batch (0.9 s a tick while a broadcast's 100,000
    # steps came due at once, over 5,000,000 steps; 20 ms so).
    due = Step.objects.filter(
        status=Step.Status.SCHEDULED,
        due_at__lte=now,
        notification__status=Notification.Status.RUNNING,
    ).order_by("due_at")
    # Never sent: a delay or a send's retry longer than the broker's countdown, whose
    # only sender is this (or a stale claim released, its message redelivered once at
    # most). None of them is a duplicate of a message queued, so a busy queue is no
    # reason to hold them: held, a day's delay waited out the end of every broadcast,
    # and for good under a queue that never emptied.
    workflow = "notification__workflow_id"
    steps = list(due.filter(enqueued_at__isnull=True).values_list("pk", workflow)[:REDRIVE_BATCH])
    if len(steps) < REDRIVE_BATCH:  # sent a grace period ago: lost, or still queued
        resent = due.filter(enqueued_at__lt=now - grace, due_at__lt=now - grace)
        resent = resent.filter(_with_room(pipeline.MESSAGE, rooms, workflow))
        steps += list(resent.values_list("pk", workflow)[: REDRIVE_BATCH - len(steps)])
    # One UPDATE, not one each.
    _update_unheld(Step.objects.filter(pk__in=[pk for pk, _ in steps]), enqueued_at=now)
    _resend(pipeline.MESSAGE, [(pk, pipeline.queue_of(pipeline.MESSAGE, w)) for pk, w in steps])
    return len(steps)


def _idle_notifications_resend(*, now: datetime, grace: timedelta, rooms: dict[str, int]) -> int:
    """Send the echo worker again the active notifications left idle; return how many."""
    # In the order of the (status, updated_at) index, so PostgreSQL reads only the
    # notifications quiet for a grace period, not every active one (a broadcast waiting
    # out a day's delay), to check each for an open step. A batch per status, the
    # quietest first: in one, a backlog of pending notifications (a broadcast's first
    # echoes queued behind others) came before every running one, for as long as it lasted.
    open_step = Step.objects.filter(notification=OuterRef("pk"), status__in=OPEN_STEP)
    notifications: list[tuple[int, str]] = []
    for status in ACTIVE:
        idle = (
            Notification.objects.filter(status=status, updated_at__lt=now - grace)
            .filter(_with_room(pipeline.ECHO, rooms))
            .exclude(Exists(open_step))
            .order_by("updated_at")
        )
        notifications += list(idle.values_list("pk", "workflow_id")[:REDRIVE_BATCH])
    _update_unheld(
        Notification.objects.filter(pk__in=[pk for pk, _ in notifications]), updated_at=now
    )
    _resend(
        pipeline.ECHO, [(str(pk), pipeline.queue_of(pipeline.ECHO, w)) for pk, w in notifications]
    )
    return len(notifications)


def _resend(stage: pipeline.Stage, rows: list[tuple[Any, str]]) -> None:
    """Send `stage` again for each (argument, queue) of `rows`: a batch to each queue
    (pipeline.send_each), not a round trip to Redis each, up to REDRIVE_BATCH a kind."""
    by_queue: dict[str, list[tuple[Any, ...]]] = {}
    for argument, queue in rows:
        by_queue.setdefault(queue, []).append((argument,))
    for queue, calls in by_queue.items():
        pipeline.send_each(stage, calls, queue=queue)


def _to_queues(
    events: QuerySet[TriggerEvent], stage: pipeline.Stage, rooms: dict[str, int]
) -> list[tuple[int, str]]:
    """Of `events`, a batch of those whose queue for `stage` has room (_with_room), each
    with that queue."""
    rows = events.filter(_with_room(stage, rooms)).values_list("pk", "workflow_id")
    return [(pk, pipeline.queue_of(stage, workflow_id)) for pk, workflow_id in rows[:REDRIVE_BATCH]]


def _with_room(stage: pipeline.Stage, rooms: dict[str, int], workflow: str = "workflow_id") -> Q:
    """The rows (by their workflow, the field `workflow`) whose queue for `stage` has room
    (_room): `stage`'s own, or a routed workflow's (queue_of). Each queue is looked at
    once a run, kept in `rooms`.

    A filter, so that those of a queue without room are left out before a batch is taken:
    taken first, a flood of more than a batch in the workflows queue filled every batch,
    and a routed workflow's trigger lost with the broker waited, its own queue empty, for
    the flood."""
    routed = settings.NORM_WORKFLOW_QUEUES
    for queue in {stage.queue, *routed.values()}:
        if queue not in rooms:
            rooms[queue] = _room(queue)
    if rooms[stage.queue]:
        return ~Q(**{f"{workflow}__in": [w for w, q in routed.items() if not rooms[q]]})
    return Q(**{f"{workflow}__in": [w for w, q in routed.items() if rooms[q]]})


def _room(queue: str) -> int:
    """How many messages the reconciler may re-send to `queue` this run: a batch if the
    queue is empty, else none.

    The broker cannot say whether a row's message is lost or only queued behind others,
    so the reconciler re-sends what stayed quiet for a grace period. Behind a backlog
    longer than that (a restart, a large broadcast), every row in it is quiet, and each
    run re-sent a batch of duplicates to the end of the queue they were waiting in:
    under `make run`, 2,650 notifications at once grew the broker from 2,500 messages
    to 18,000 in eleven minutes, completing ever fewer. Any message still queued may be
    the very one a row waits for, so nothing is re-sent until the queue is empty (its
    workers hold what they took): then what is still quiet was lost, and found a backlog
    later, not never."""
    return 0 if pipeline.backlog(queue) else REDRIVE_BATCH


def _reconcile_log(counts: dict[str, int], *, released: tuple[int, int], lost: int) -> None:
    """One line when a tick re-drove something, none for an idle one (every 10 s). A
    claim gone stale is a worker that died or hung mid-task: a warning, as it may recur."""
    if any(released) or lost:
        logger.warning(
            "reconcile: claims older than NORM_STALE_CLAIM_SECONDS (a worker died or hung): "
            "%d trigger event(s) and %d step(s) run again, %d step(s) of ended "
            "notifications canceled unsent",
            *released,
            lost,
        )
    if any(counts.values()):
        logger.info(
            "reconcile: enqueued again %d trigger event(s), %d cancel(s), %d step(s) and "
            "%d notification(s) that stalled",
            counts["events"],
            counts["cancels"],
            counts["steps"],
            counts["notifications"],
        )
