"""Stage 2, the workflow worker: a trigger event fanned out, one subscriber command per
recipient it names and one batch command per chunk of a broadcast's or a topic's audience.
Stage 3, called by the subscriber worker: the notifications those commands create, each
enqueuing its first echo, a command's bug recorded on its event, and a deleted subscriber
counted out of the fan-outs the reconciler still checks.

Tasks: workflows.tasks.workflow_run (stage 2); subscribers.tasks through
subscribers.services (stage 3). Shares `never_finished`, the reason of a fan-out whose
runs never came back, with the reconciler; its shared constants and helpers are common's."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import IntegrityError, InterfaceError, OperationalError, transaction
from django.db.models import (
    Case,
    Exists,
    F,
    OuterRef,
    PositiveSmallIntegerField,
    Q,
    QuerySet,
    TextField,
    Value,
    When,
)
from django.db.models.functions import Greatest, Now
from django.utils import timezone

from config import pipeline
from config.db import insert_once
from notify.models import TriggerEvent
from subscribers.models import Subscriber, Topic, TopicSubscription
from subscribers.recipients import parse_recipients
from workflows.models import Notification
from workflows.services.common import (
    CLIENT_INACTIVE,
    FANOUT_RECHECK,
    GIVEN_UP,
    actor_body,
    internal_error_text,
)

logger = logging.getLogger(__name__)

# The subscriberIds of a broadcast's or a topic's audience in one batch command (one
# keyset page, and one INSERT of their notifications: notifications_create).
BROADCAST_CHUNK = 500


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


def never_finished() -> str:
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
            status=TriggerEvent.Status.FAILED, error=never_finished(), processed_at=timezone.now()
        )
        # Once an event (its run takes it no more): the reconciler's line names those it
        # fails likewise, a notification's failure its own.
        logger.warning(
            "trigger event %s (client %s, workflow %s) failed: %s",
            event.pk,
            event.client_id,
            event.workflow_id,
            never_finished(),
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
    if topics and not (rerun and _topic_member_reached(event, recipients=recipients)):
        # Before the actor's reason, if any: a topic gone is why nobody may be reached.
        # Not on a rerun whose first run reached a topic's members: of one deleted since,
        # perhaps, whom that run did find.
        _topics_gone_record(event, topics=topics)
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
    actor = actor_body(event.actor).get("subscriberId")
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


def _topics_gone_record(event: TriggerEvent, *, topics: list[dict[str, Any]]) -> None:
    """Say on the event which of its topics no longer exist: the trigger checked them,
    but a topic deleted or renamed (the admin) since reaches no one, and an event
    processed with no recipient and no reason left its caller with nothing to go on.
    Unless it holds a reason already, as a recipient's (subscribers.services)."""
    keys = {t["topicKey"] for t in topics}
    found = Topic.objects.filter(client_id=event.client_id, key__in=keys).values_list(
        "key", flat=True
    )
    gone = sorted(keys - set(found))
    if not gone:
        return
    named = ", ".join(f"'{key[:100]}'" for key in gone[:5]) + (", …" if len(gone) > 5 else "")
    reason = (
        f"topic {named} no longer exists (deleted or renamed since the trigger): the fan-out"
        " found none of its members"
        if len(gone) == 1
        else f"topics {named} no longer exist (deleted or renamed since the trigger): the"
        " fan-out found none of their members"
    )
    TriggerEvent.objects.filter(pk=event.pk, error="").update(error=reason)


def _topic_member_reached(event: TriggerEvent, *, recipients: list[dict[str, Any]]) -> bool:
    """Whether the event reached a subscriber it does not list: a topic's member."""
    listed = [r["subscriberId"] for r in recipients]
    return event.notifications.exclude(subscriber__subscriber_id__in=listed).exists()


def _actor_forgotten(event: TriggerEvent) -> bool:
    """Whether the event's actor was deleted since the event reached it (as a recipient)."""
    return actor_body(event.actor).get("subscriberId") in event.forgotten


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


def fan_outs_forget(*, subscriber: Subscriber, renamed: bool = False) -> None:
    """Count a subscriber about to be deleted (with its notifications) out of the
    recipients of the events that reached it and that the reconciler still checks: it
    would take the notification's absence for a command lost with the broker and fan out
    again, creating a deleted subscriber named in `to` anew and sending it the workflow a
    second time. Each event also remembers it as forgotten: a command for another
    recipient lost for real has the event fanned out again, which must pass it by too.
    Call it in the transaction that deletes the subscriber. `renamed`: about to take
    another subscriberId instead, its notifications kept (and counted): only its old id
    is remembered, for a rerun to pass by."""
    events = list(
        # No key update: a chunk inserting this event's notifications (which locks it
        # for key share) is not waited for. In id order: two deletes never cross.
        TriggerEvent.objects.select_for_update(no_key=True)
        .filter(
            pk__in=Notification.objects.filter(subscriber=subscriber).values("trigger_event_id"),
        )
        .filter(
            # On the database's clock, as the reconciler reads the window: on this web
            # host's, a few seconds ahead of the reconciler's, an event in the window's
            # last seconds was passed by here and fanned out again there.
            Q(recheck_from__gt=Now() - FANOUT_RECHECK)
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
            recipients=F("recipients") if renamed else Greatest(F("recipients") - 1, 0),
            forgotten=[*forgotten, subscriber.subscriber_id],
        )
