"""Stage 3, the subscriber worker's services (a recipient upserted and its notification
created, a chunk of a broadcast's or topic's audience, a command that kills its worker
given up), then the writes of the subscriber and topic API."""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import connection, transaction
from django.db.models import QuerySet
from django.utils import timezone

from config import pipeline
from config.db import insert_once
from config.errors import ApiError
from config.logs import Quieted
from messaging.models import Message
from notify.models import Client, TriggerEvent
from subscribers import selectors
from subscribers.models import (
    Subscriber,
    Topic,
    TopicSubscription,
    default_subscription_identifier,
)
from subscribers.recipients import (
    INLINE_FIELDS,
    checked_attributes,
    parse_actor,
    parse_recipients,
    routable,
    unroutable_message,
)
from workflows.models import Notification, Step
from workflows.services.common import CLIENT_INACTIVE, internal_error_text
from workflows.services.fanout import (
    fan_out_short,
    fan_outs_forget,
    notification_create,
    notifications_create,
    recipients_named,
)

logger = logging.getLogger(__name__)

CLIENT_LEFT_OUT = f"{CLIENT_INACTIVE}; those its fan-out had not reached by then were left out"


def subscriber_upsert(*, client_id: int, recipient: dict[str, Any]) -> Subscriber:
    """Find or create a subscriber; attributes given inline in a trigger update it."""
    values = {INLINE_FIELDS[k]: v for k, v in recipient.items() if k in INLINE_FIELDS}
    subscriber_id = str(recipient["subscriberId"])
    # Locked (not its key) until the caller's transaction ends: see subscriber_process.
    found = Subscriber.objects.filter(
        client_id=client_id, subscriber_id=subscriber_id
    ).select_for_update(no_key=True)
    with transaction.atomic(savepoint=False):
        subscriber = found.first()
        if subscriber is None:
            subscriber = Subscriber(client_id=client_id, subscriber_id=subscriber_id, **values)
            if insert_once(subscriber):
                return subscriber
            # Created concurrently by another recipient's command, and perhaps deleted
            # since (read with get(), the command failed): as if this came after those.
            return subscriber_upsert(client_id=client_id, recipient=recipient)
        changed = {k: v for k, v in values.items() if getattr(subscriber, k) != v}
        if changed:
            for key, value in changed.items():
                setattr(subscriber, key, value)
            subscriber.save(update_fields=[*changed, "updated_at"])
    return subscriber


def _event(trigger_event_id: int) -> TriggerEvent | None:
    """The event, without what a notification takes nothing from: its recipients (up to
    1,000, which each recipient's command read and decoded, some 1.4 ms of CPU each).
    With the subscribers deleted since it reached them (fan_outs_forget, most often none),
    whom a command delivered again passes by."""
    return (
        TriggerEvent.objects.select_related("client")
        .defer("to", "overrides")
        .filter(pk=trigger_event_id)
        .first()
    )


def _client_inactive(event: TriggerEvent) -> bool:
    """Whether the event's client was deactivated since its fan-out began, which then
    reaches no one more (as a cancel stops it), said on the event. Each notification
    made anyway was failed at its echo (ClientInactive): a broadcast's remaining chunks
    made 100,000 rows, and as many echoes, to send nothing. Those left out leave the
    event short for the reconciler, whose rerun fails it (CLIENT_INACTIVE) if the client
    is still inactive, and reaches them if it was made active again meanwhile."""
    if event.client.is_active:
        return False
    _reason_on_event(event=event, reason=CLIENT_LEFT_OUT)
    return True


def subscriber_process(
    *,
    trigger_event_id: int,
    recipient: dict[str, Any],
    redelivered: str = "",
    retried: bool = False,
) -> None:
    """Stage 3: the subscriber, then its notification (unique per event and subscriber).
    `redelivered`: the command's task id, when the broker delivered it again after its
    worker died (see `command_given_up`); `retried`: a retry of it (a database error),
    which may have got as far as the notification, as a command delivered again did."""
    # A bug: the event was short of this recipient's notification with no reason
    # anywhere, and the reconciler's reruns of the fan-out (bounded) met it as silently.
    subscriber_id = recipient.get("subscriberId") if isinstance(recipient, dict) else None
    if redelivered and command_given_up(
        trigger_event_id=trigger_event_id,
        command=redelivered,
        subscriber_ids=[str(subscriber_id)],
        listed=True,
    ):
        return
    with pipeline.bugs_recorded(
        lambda exc: fan_out_short(
            trigger_event_id=trigger_event_id, subscriber_ids=[str(subscriber_id)], exc=exc
        ),
        "a recipient of trigger event",
        trigger_event_id,
        logger,
    ):
        _subscriber_process(
            trigger_event_id=trigger_event_id,
            recipient=recipient,
            again=bool(redelivered) or retried,
        )


def _subscriber_process(
    *, trigger_event_id: int, recipient: dict[str, Any], again: bool = False
) -> None:
    """`again`: the command ran before (the broker delivered it again, or a retry)."""
    event = _event(trigger_event_id)
    if event is None or _client_inactive(event):
        return
    # A fan-out run again (the reconciler's, for recipients it lacked) sends a command for
    # a recipient whose first one may only have been late, not lost: that one made the
    # notification, a delete forgot it, and this one races the delete as a command
    # delivered again does.
    again = again or event.refanned > 0
    if isinstance(recipient, dict) and str(recipient.get("subscriberId")) in event.forgotten:
        # Reached, then deleted: this command ran before, and the broker delivered it
        # again (its acknowledgement lost, acks_late). Run as a first one, it made the
        # deleted subscriber anew and sent it the workflow a second time, which the
        # fan-out's own rerun is kept from (_recipients_sent) and the event counted out.
        return
    # The subscriber stays locked until its notification is in: a delete meanwhile (which
    # locks it first) waits, then deletes the notification with it and counts it out of
    # the event. It deleted the row under the command, which failed (an update of no
    # row, a notification refused by its foreign key), and the reconciler's rerun then
    # created the deleted subscriber anew and sent it the workflow.
    recipient, refused = checked_attributes(recipient)
    with transaction.atomic():
        subscriber = (
            _upsert_unforgotten(event=event, recipient=recipient)
            if again
            else subscriber_upsert(client_id=event.client_id, recipient=recipient)
        )
        if subscriber is None:
            return  # deleted meanwhile: as above
        notification_create(trigger_event=event, subscriber=subscriber)
    if refused:
        attributes_refused(event=event, subscriber_id=recipient["subscriberId"], refused=refused)


def _upsert_unforgotten(*, event: TriggerEvent, recipient: dict[str, Any]) -> Subscriber | None:
    """`subscriber_upsert` for a command that may have run before (delivered again, a
    retry, or one a fan-out run again sent), in the caller's transaction; None, and nothing
    written, if the event forgot the subscriber by then.

    The event was read before a delete of the subscriber counted it out (fan_outs_forget)
    and committed: the upsert, after the delete or waiting for its lock, found no row, and
    made the deleted subscriber anew, which its notification sent the workflow again. Read
    once the subscriber is locked (or made), the list holds a delete that came first; one
    after waits for the caller's transaction, and deletes its notification. Not for a
    first run, whose subscriber had no notification of the event for a delete to forget:
    the read is one more query per recipient."""
    with transaction.atomic():
        subscriber = subscriber_upsert(client_id=event.client_id, recipient=recipient)
        forgotten = TriggerEvent.objects.filter(pk=event.pk).values_list("forgotten", flat=True)
        if subscriber.subscriber_id not in (forgotten.first() or []):
            return subscriber
        transaction.set_rollback(True)
    return None


# Each recipient's command checks its own attributes: a `to` of a thousand, all with the
# same typo of the client's code, logged a thousand lines.
_refused = Quieted()


def attributes_refused(*, event: TriggerEvent, subscriber_id: str, refused: list[str]) -> None:
    """Say on the event (in the admin) which of a recipient's attributes were not stored,
    unless it already holds a reason: a bug's, which matters more, or another's."""
    reason = f"subscriber '{subscriber_id[:100]}': " + "; ".join(refused)
    if (held := _refused.due(event.pk)) is not None:
        logger.warning(
            "trigger event %s: %s (%d more of its recipients' since the last such line)",
            event.pk,
            reason,
            held,
        )
    _reason_on_event(event=event, reason=reason)


def _reason_on_event(*, event: TriggerEvent, reason: str) -> None:
    """Put `reason` on the event, unless it holds a reason already (a failed one does)."""
    TriggerEvent.objects.filter(pk=event.pk, error="").exclude(
        status=TriggerEvent.Status.FAILED
    ).update(error=reason)


def actor_upsert(*, event: TriggerEvent, recipients: list[dict[str, Any]]) -> None:
    """A trigger's actor created or updated with its inline attributes, with no
    notification of its own; the fan-out's first write (see `_fan_out`). Its entry in
    `to` (among `recipients`) wins over them, as that recipient's upsert follows the
    actor's in Novu: written here too, every step reads the actor as it ends, and that
    recipient's command, which writes them again, changes nothing whenever it runs.
    Safe to run twice: the same values again."""
    try:
        actor = parse_actor(event.actor)
    except ApiError:  # stored before norm checked it at the trigger: nothing to upsert
        return
    if actor is None:
        return
    with pipeline.bugs_recorded(
        lambda exc: _reason_on_event(
            event=event,
            # A dict, then as after its checking below: mypy keeps None, for the lambda.
            reason=f"actor '{actor['subscriberId'][:100]}' was not stored: "  # type: ignore[index]
            f"{internal_error_text(exc)}",
        ),
        "the actor of trigger event",
        event.pk,
        logger,
    ):
        actor, refused = checked_attributes(actor)
        for listed in recipients:
            if listed["subscriberId"] == actor["subscriberId"]:
                # Checked apart: a value it has Novu would refuse keeps the actor's.
                # Its command names what it refuses.
                actor |= checked_attributes(listed)[0]
        with transaction.atomic():
            subscriber_upsert(client_id=event.client_id, recipient=actor)
        if refused:
            attributes_refused(event=event, subscriber_id=actor["subscriberId"], refused=refused)


def actor_process(*, trigger_event_id: int) -> None:
    """`actor_upsert` for an actor command a fan-out sent before the fan-out upserted the
    actor itself, still in the broker when norm was upgraded."""
    event = TriggerEvent.objects.filter(pk=trigger_event_id).first()
    if event is None:
        return
    try:
        recipients = parse_recipients(event.to)[0] if event.to not in (None, "") else []
    except ApiError:
        recipients = []
    actor_upsert(event=event, recipients=recipients)


def subscribers_process(
    *, trigger_event_id: int, subscriber_ids: list[str], redelivered: str = ""
) -> None:
    """Stage 3 for a chunk of a broadcast's or a topic's audience: the subscribers exist
    (one deleted since the fan-out is skipped), so only their notifications are created.
    `redelivered`: as for `subscriber_process`."""
    if redelivered and command_given_up(
        trigger_event_id=trigger_event_id,
        command=redelivered,
        subscriber_ids=subscriber_ids,
        listed=False,
    ):
        return
    with pipeline.bugs_recorded(  # a bug: as in subscriber_process
        lambda exc: fan_out_short(
            trigger_event_id=trigger_event_id, subscriber_ids=subscriber_ids, exc=exc
        ),
        "a chunk of trigger event",
        trigger_event_id,
        logger,
    ):
        _subscribers_process(trigger_event_id=trigger_event_id, subscriber_ids=subscriber_ids)


def _subscribers_process(*, trigger_event_id: int, subscriber_ids: list[str]) -> None:
    """`subscribers_process`, its bugs aside."""
    event = _event(trigger_event_id)
    if event is None or _client_inactive(event):
        return
    # Not those the event forgot: deleted since it reached them, and perhaps made anew
    # under the same subscriberId (a new subscriber, in no topic) when the broker delivers
    # this command again, which would reach them a second time (as subscriber_process).
    subscribers = Subscriber.objects.filter(
        client_id=event.client_id, subscriber_id__in=subscriber_ids
    ).exclude(subscriber_id__in=event.forgotten)
    notifications_create(trigger_event=event, subscribers=list(subscribers))


def command_given_up(
    *, trigger_event_id: int, command: str, subscriber_ids: list[str], listed: bool
) -> bool:
    """For a subscriber command (task id `command`) that the broker delivered again after
    its worker died: count the run lost on the event, and once NORM_MAX_CLAIMS runs were
    lost so, fail its recipients' notifications with the reason and answer True, for the
    command to end there. Celery delivers such a command again at once (reject on worker
    lost), so one that ends its worker each time (out of memory, say) took a worker down
    for good. Failed, not left out: the reconciler would take them for commands lost with
    the broker and fan them out again. `listed`: the command's is a recipient `to` names,
    which it would have created: created here by its id alone (its attributes may be what
    ended the worker)."""
    with transaction.atomic():
        event = (
            TriggerEvent.objects.select_for_update(no_key=True)
            .defer("to", "overrides")
            .filter(pk=trigger_event_id)
            .first()
        )
        if event is None:
            return True
        runs = event.redelivered.get(command, 0) + 1
        event.redelivered[command] = runs
        event.save(update_fields=["redelivered"])
    if runs < settings.NORM_MAX_CLAIMS:
        return False
    if event.canceled_at is not None:
        return True  # the command would make nothing: no notification to fail, no reason
    # Not those deleted since the event reached them (fan_outs_forget), whom a run passes
    # by (_subscriber_process, _subscribers_process): a listed one was made anew, and one
    # made anew since (a new subscriber, in no topic) was given the event's notification,
    # each a failed one, and the reason named recipients that are gone.
    subscriber_ids = [s for s in subscriber_ids if s not in event.forgotten]
    if not subscriber_ids:
        return True  # nothing left to fail, as above
    reason = (
        f"its subscriber command never finished in {runs} runs, each lost with its worker "
        "(a command that kills its worker?); given up after NORM_MAX_CLAIMS"
    )
    if listed:
        # Locked until its notification is in, as in _subscriber_process: a delete let in
        # between found no notification to count the event out of, and the reconciler's
        # rerun for the recipient it lacked made the deleted subscriber anew.
        with transaction.atomic():
            upserted = (
                _upsert_unforgotten(event=event, recipient={"subscriberId": listed_id})
                for listed_id in subscriber_ids
            )
            subscribers = [subscriber for subscriber in upserted if subscriber is not None]
            notifications_create(trigger_event=event, subscribers=subscribers, failed=reason)
        if not subscribers:
            return True  # each forgotten meanwhile, as above
    else:  # a chunk's: those deleted since are not made anew
        subscribers = list(
            Subscriber.objects.filter(client_id=event.client_id, subscriber_id__in=subscriber_ids)
        )
        notifications_create(trigger_event=event, subscribers=subscribers, failed=reason)
    logger.warning("trigger event %s: %s: %s", event.pk, recipients_named(subscriber_ids), reason)
    _reason_on_event(event=event, reason=f"{recipients_named(subscriber_ids)}: {reason}")
    return True


# --- the subscriber and topic API ----------------------------------------------------------


def subscriber_create(
    *, client: Client, subscriber_id: str, values: dict[str, Any], update: bool = True
) -> tuple[Subscriber, bool]:
    """Create a subscriber, or update the existing one (unless not `update`: it is then
    returned as it is). ApiError 400 for a new one whose subscriberId no URL could reach
    (`routable`); one made before norm refused such ids stays upsertable."""
    existing = Subscriber.objects.filter(client=client, subscriber_id=subscriber_id).first()
    if existing is not None:
        if not update:
            return existing, False
        with contextlib.suppress(Subscriber.DoesNotExist):  # deleted meanwhile: created anew
            return subscriber_update(subscriber=existing, values=values), False
    # Checked for the row about to be made, not before the read: an existing subscriber
    # with such an id, found and then deleted meanwhile, was made anew (a 201).
    if not routable(subscriber_id):
        raise ApiError(400, "invalid_subscriber_id", unroutable_message(subscriber_id))
    subscriber = Subscriber(client=client, subscriber_id=subscriber_id, **values)
    if insert_once(subscriber):
        return subscriber, True
    # Created concurrently, and perhaps deleted since (it was read with get(), a 500):
    # as if this create came after those.
    return subscriber_create(
        client=client, subscriber_id=subscriber_id, values=values, update=update
    )


def subscriber_update(*, subscriber: Subscriber, values: dict[str, Any]) -> Subscriber:
    """Set the given model fields; a value of None clears a field. Returns `subscriber`
    as now stored. Subscriber.DoesNotExist if it was deleted meanwhile."""
    if not values:
        return subscriber
    with transaction.atomic():
        # Locked as subscriber_delete locks it: a delete first is seen here, one after
        # waits. Saved under a delete, the update hit no row: Django's DatabaseError, a 500.
        # Read again under the lock: a write committed meanwhile (which this one waited
        # for) was answered undone, its fields as they were before it.
        subscriber.refresh_from_db(from_queryset=Subscriber.objects.select_for_update(no_key=True))
        if values.get("subscriber_id", subscriber.subscriber_id) != subscriber.subscriber_id:
            # Renamed (the admin): an event that reached it by its old id no longer finds
            # it so, and its rerun (for another recipient's command lost) made the old id
            # anew from `to` and sent it the workflow a second time.
            fan_outs_forget(subscriber=subscriber, renamed=True)
        for key, value in values.items():
            setattr(subscriber, key, ({} if key == "data" else "") if value is None else value)
        subscriber.save(update_fields=[*values, "updated_at"])
    return subscriber


def _lock_or_gone(rows: QuerySet[Any]) -> None:
    """Lock a row that its delete (topic_delete) locks first; its model's DoesNotExist if
    that delete removed it. NO KEY: inserts referring to it go on."""
    if not rows.select_for_update(no_key=True).exists():
        raise rows.model.DoesNotExist


def subscriber_delete(*, subscriber: Subscriber) -> None:
    """Delete a subscriber with its notifications and messages, counted out of the
    recent fan-outs that reached it, which would otherwise reach it again."""
    with transaction.atomic():
        # Locked first: a notification being inserted for it meanwhile (by a fan-out's
        # command or chunk) either commits before, and is counted out and deleted with
        # it, or waits and is refused. Collected before such a notification committed,
        # the delete was refused by its foreign key at commit, a 500.
        if not Subscriber.objects.select_for_update().filter(pk=subscriber.pk).exists():
            return  # deleted meanwhile
        fan_outs_forget(subscriber=subscriber)
        # Its notifications locked too: an echo recording a step of one (its UPDATE holds
        # the row) commits first, and its step is deleted with it; one after finds the
        # notification gone. Read before that step committed, the delete was refused by
        # the step's foreign key at commit, a 500. After the events, as a cancel takes them.
        list(
            Notification.objects.select_for_update()
            .filter(subscriber=subscriber)
            .order_by("pk")
            .values_list("pk", flat=True)
        )
        _notifications_delete(subscriber=subscriber)
        # Then the rest, as Django cascades: its topic subscriptions, and what else
        # refers to it (it finds no notification left to read).
        subscriber.delete()


def _notifications_delete(*, subscriber: Subscriber) -> None:
    """Delete the subscriber's notifications with their steps and the steps' messages,
    one statement a table, children first. Django's cascade (subscriber.delete()) read
    every notification and step into Python, then deleted them by primary key 100 at a
    time: 3.8 s for a subscriber with 18,000 notifications. A queryset's delete() reads
    them too, as a step and a notification have rows that cascade from them."""
    messages, steps, notifications = (
        connection.ops.quote_name(model._meta.db_table) for model in (Message, Step, Notification)
    )
    with connection.cursor() as cursor:
        cursor.execute(
            f"DELETE FROM {messages} WHERE step_id IN (SELECT id FROM {steps} WHERE"
            f" notification_id IN (SELECT id FROM {notifications} WHERE subscriber_id = %s))",
            [subscriber.pk],
        )
        cursor.execute(
            f"DELETE FROM {steps} WHERE notification_id IN"
            f" (SELECT id FROM {notifications} WHERE subscriber_id = %s)",
            [subscriber.pk],
        )
        cursor.execute(f"DELETE FROM {notifications} WHERE subscriber_id = %s", [subscriber.pk])


# Novu's topic keys: letters, digits, `-`, `_` and `:`, or an email address.
_TOPIC_KEY = re.compile(r"[A-Za-z0-9_:-]+")


def topic_key_valid(key: str) -> bool:
    """Whether Novu would take `key` for a new topic (`topic_key_message` says why not)."""
    if _TOPIC_KEY.fullmatch(key):
        return True
    # An email may hold what no URL of its topic could carry, as no subscriberId may.
    if not routable(key):
        return False
    try:
        validate_email(key)
    except ValidationError:
        return False
    return True


def topic_key_message(key: str) -> str:
    """Why a key `topic_key_valid` refuses is refused, for the API's 400."""
    return (
        f"Invalid topic key '{key}': a topic key holds only letters, digits, hyphens (-),"
        " underscores (_) and colons (:), or is an email address without /, ?, # or %"
    )


def topic_upsert(
    *, client: Client, key: str, name: str | None = None, update: bool = True
) -> tuple[Topic, bool]:
    """Create a topic, or rename the existing one (unless not `update`: it is then
    returned as it is). ApiError 400 for a new topic whose key Novu refuses; a topic
    that already has one (made before norm checked) stays reachable by its upsert, as
    in Novu."""
    most = Topic._meta.get_field("key").max_length
    if most is not None and len(key) > most:
        # A subscribe names its topic in its URL, which no serializer reads: PostgreSQL
        # refused a longer one with a 400 that named no field (invalid_value).
        message = f"a topic key has at most {most} characters"
        raise ApiError(
            400, "invalid_topic_key", f"'key': {message}", [{"field": "key", "message": message}]
        )
    topic = Topic.objects.filter(client=client, key=key).first()
    if topic is None:
        # Checked for the row about to be made, as a subscriber's id: a topic of such a
        # key, found by a check before and then deleted meanwhile, was made anew (a 201).
        if not topic_key_valid(key):
            raise ApiError(400, "invalid_topic_key", topic_key_message(key))
        topic = Topic(client=client, key=key, name=name or "")
        if insert_once(topic):
            return topic, True
        # Created concurrently, and perhaps deleted since (get_or_create's read then
        # found none, and raised its IntegrityError, a 500): as if this came after those.
        return topic_upsert(client=client, key=key, name=name, update=update)
    if name is not None and update:
        try:
            topic_rename(topic=topic, name=name)
        except Topic.DoesNotExist:  # deleted meanwhile: created anew, as after the delete
            return topic_upsert(client=client, key=key, name=name)
    return topic, False


@dataclass(frozen=True)
class SubscriptionNamed:
    """What a subscribe gave a subscription besides its subscriber: Novu's
    `identifier` and `name` ("" for none)."""

    identifier: str = ""
    name: str = ""


def topic_upsert_subscribe(
    *,
    client: Client,
    key: str,
    name: str | None,
    subscriber_ids: list[str],
    named: Mapping[str, SubscriptionNamed] | None = None,
) -> tuple[Topic, list[Subscriber], list[str], dict[str, tuple[str, str]]]:
    """`topic_upsert`, then `topic_subscribe_named`. A topic deleted in between is created
    anew, as a subscribe after the delete would create it: it was a 404, from a call
    that answers none for a topic that does not exist."""
    topic, _ = topic_upsert(client=client, key=key, name=name)
    try:
        members, missing, refused = topic_subscribe_named(
            topic=topic, subscriber_ids=subscriber_ids, named=named
        )
    except Topic.DoesNotExist:
        return topic_upsert_subscribe(
            client=client, key=key, name=name, subscriber_ids=subscriber_ids, named=named
        )
    return topic, members, missing, refused


def topic_rename(*, topic: Topic, name: str) -> Topic:
    """Topic.DoesNotExist if the topic was deleted meanwhile."""
    if topic.name != name:
        topic_update(topic=topic, values={"name": name})
    return topic


def topic_update(*, topic: Topic, values: dict[str, Any]) -> Topic:
    """Set the given model fields. Topic.DoesNotExist if it was deleted meanwhile."""
    for key, value in values.items():
        setattr(topic, key, value)
    if values:
        with transaction.atomic():
            _lock_or_gone(Topic.objects.filter(pk=topic.pk))  # as in subscriber_update
            # updated_at named too: a save of some fields sets an auto_now one only so.
            topic.save(update_fields=[*values, "updated_at"])
    return topic


def topic_delete(*, topic: Topic, only_if_empty: bool = False) -> None:
    """Delete a topic and its subscriptions; with `only_if_empty` (Novu's v1), a 409
    for a topic that has members, which stay."""
    with transaction.atomic():
        # Locked first, as subscriber_delete locks its row: a subscription being added
        # meanwhile commits before (and is deleted with the topic) or finds it gone.
        # Collected before it committed, the delete was refused by its foreign key, a 500.
        if not Topic.objects.select_for_update().filter(pk=topic.pk).exists():
            return
        # Read under the lock, which a subscribe takes too: no member added unseen.
        if only_if_empty and TopicSubscription.objects.filter(topic=topic).exists():
            raise ApiError(
                409,
                "topic_not_empty",
                f"Topic '{topic.key}' can't be deleted as it still has subscribers assigned",
            )
        topic.delete()


# ASCII digits alone, as selectors.topic_member_named reads a subscription's `_id`.
_DIGITS = re.compile(r"[0-9]+")


def topic_subscribe(
    *, topic: Topic, subscriber_ids: list[str]
) -> tuple[list[Subscriber], list[str]]:
    """Add the named subscribers to a topic, each subscription with Novu's default
    identifier; return (members added or present, ids not found). Topic.DoesNotExist
    if the topic was deleted meanwhile."""
    # None is refused: only an identifier of its own is.
    members, missing, _ = topic_subscribe_named(topic=topic, subscriber_ids=subscriber_ids)
    return members, missing


def topic_subscribe_named(
    *,
    topic: Topic,
    subscriber_ids: list[str],
    named: Mapping[str, SubscriptionNamed] | None = None,
) -> tuple[list[Subscriber], list[str], dict[str, tuple[str, str]]]:
    """Add the named subscribers to a topic, a new subscription with the identifier
    and name `named` gives its subscriberId; return (members added or present, ids not
    found, ids refused: (Novu's error code, why) each). Topic.DoesNotExist if the topic
    was deleted meanwhile.

    norm keeps one subscription per subscriber and topic (Novu up to 10, told apart
    by identifier): a subscriber subscribed already is a member still when asked for
    with its own identifier or none, refused when with another; an identifier another
    member's subscription has is refused, where it would name two."""
    named = named or {}
    refused: dict[str, tuple[str, str]] = {}
    with transaction.atomic():
        # The topic and the subscribers locked as their deletes lock them: one deleted
        # first is gone here (a subscriber then counts as not found); one deleted after
        # waits, and takes the subscription with it. Without, the subscription was
        # refused by its foreign key at commit, a 500. In pk order: no deadlock between
        # two subscribes of the same subscribers. The topic's lock also keeps two
        # subscribes from giving one identifier to two subscriptions.
        _lock_or_gone(Topic.objects.filter(pk=topic.pk))
        found = {
            s.subscriber_id: s
            for s in Subscriber.objects.filter(
                client_id=topic.client_id, subscriber_id__in=subscriber_ids
            )
            .order_by("pk")
            .select_for_update(no_key=True)
        }
        rows = TopicSubscription.objects.filter(topic=topic)
        held = dict(
            rows.filter(subscriber__in=found.values()).values_list("subscriber_id", "identifier")
        )
        asked = {named[sid].identifier for sid in found if sid in named} - {""}
        # Not "" in so many words, as the identifiers' partial index reads: PostgreSQL
        # proves it of an IN list of 100 at most, and read every subscription of the
        # topic for more.
        mentioned = rows.filter(identifier__in=asked).exclude(identifier="")
        taken = dict(mentioned.values_list("identifier", "subscriber_id"))
        # The <key>:<subscriberId> norm answered, before it kept identifiers, for members
        # given none, which their callers may have kept (selectors.topic_member_named).
        legacy = f"{topic.key}:"
        former = {
            f"{legacy}{member}"
            for member in rows.filter(
                identifier="",
                subscriber__subscriber_id__in=[
                    i.removeprefix(legacy) for i in asked if i.startswith(legacy)
                ],
            ).values_list("subscriber__subscriber_id", flat=True)
        }
        new = []
        for sid in dict.fromkeys(subscriber_ids):
            if (subscriber := found.get(sid)) is None:
                continue
            given = named.get(sid, SubscriptionNamed())
            default = default_subscription_identifier(topic.key, sid)
            # Novu's default given is no identifier of its own: kept as one not given.
            identifier = "" if given.identifier == default else given.identifier
            if subscriber.pk in held:
                has = held[subscriber.pk] or default
                # One given none is named by the default and by the <key>:<subscriberId>
                # norm answered for it before it kept identifiers: either is its own.
                own = {has} if held[subscriber.pk] else {default, f"{topic.key}:{sid}"}
                if identifier and identifier not in own:
                    refused[sid] = (
                        "SUBSCRIPTION_LIMIT_EXCEEDED",
                        f"Subscriber '{sid}' is subscribed to '{topic.key}' as '{has}':"
                        " norm keeps one subscription per subscriber and topic",
                    )
                continue
            # Another's default too (its subscriber's, subscribed or not), or the former
            # identifier of another member: a GET or an unsubscribe of it would find this
            # one (selectors.topic_member_named looks for one given first).
            unnamed = default_subscription_identifier(topic.key, "")
            # And a subscription's `_id` (<topic pk>:<subscriber pk>), which that lookup
            # takes after the identifiers, unless it is this one's own: any digits, not
            # only another member's, as a subscriber subscribed later (or made later: pks
            # are handed out as subscribers are made) gets the `_id` it would hide.
            pk = identifier.removeprefix(f"{topic.pk}:")
            if identifier and (
                identifier.startswith(unnamed)
                or identifier in former
                or (pk != identifier and _DIGITS.fullmatch(pk) and pk != str(subscriber.pk))
                or taken.setdefault(identifier, subscriber.pk) != subscriber.pk
            ):
                refused[sid] = (
                    "SUBSCRIPTION_CREATE_FAILED",
                    f"'{identifier}' names another subscription of '{topic.key}'",
                )
                continue
            new.append(
                TopicSubscription(
                    topic=topic, subscriber=subscriber, identifier=identifier, name=given.name
                )
            )
        TopicSubscription.objects.bulk_create(new, ignore_conflicts=True)
    missing = [sid for sid in dict.fromkeys(subscriber_ids) if sid not in found]
    members = [
        found[sid] for sid in dict.fromkeys(subscriber_ids) if sid in found and sid not in refused
    ]
    return members, missing, refused


def topic_subscription_rename(
    *, topic: Topic, identifier: str, name: str | None
) -> Subscriber | None:
    """The member whose subscription `identifier` names (selectors.topic_member_named),
    as topic_members gives it, its subscription's name set to `name` unless None; None
    if there is none. Topic.DoesNotExist if the topic was deleted meanwhile."""
    with transaction.atomic():
        # The topic locked, as an unsubscribe and a subscribe lock it: the subscription
        # renamed is the one named, not another given its identifier once it is gone.
        _lock_or_gone(Topic.objects.filter(pk=topic.pk))
        member = selectors.topic_member_named(topic=topic, identifier=identifier)
        if member is not None and name is not None and member.subscription_name != name:
            # When it changed, Novu's updatedAt of it: it answered its createdAt still.
            now = timezone.now()
            rows = TopicSubscription.objects.filter(topic=topic, subscriber=member)
            if not rows.update(name=name, updated_at=now):
                # Deleted meanwhile with its subscriber, whose delete this UPDATE waited
                # for: renamed, it was answered 200, named as no subscription ever was.
                return None
            member.subscription_name, member.subscription_updated_at = name, now
    return member


def topic_unsubscribe(
    *, topic: Topic, subscriber_ids: list[str], identifiers: Sequence[str] = ()
) -> tuple[list[Subscriber], list[str]]:
    """Remove from a topic the named subscribers and the subscriptions `identifiers`
    name (selectors.topic_member_named); return (those that were members, the
    identifiers that named none). Topic.DoesNotExist if the topic was deleted
    meanwhile."""
    with transaction.atomic():
        # The topic locked first, as its delete and a subscribe lock it: the delete's
        # DELETE of the topic's subscriptions and this one's each locked them as they read
        # them (by the table, by the index), each holding one the other wanted next, a
        # deadlock that PostgreSQL ended by failing one of them (a 503). Identifiers
        # are read under it too: a subscribe waits to give one to another subscription.
        _lock_or_gone(Topic.objects.filter(pk=topic.pk))
        members = selectors.topic_members(topic=topic).filter(subscriber_id__in=subscriber_ids)
        removed = {s.pk: s for s in members}
        unknown = []
        for identifier in dict.fromkeys(identifiers):
            member = selectors.topic_member_named(topic=topic, identifier=identifier)
            if member is None:
                unknown.append(identifier)
            else:
                removed.setdefault(member.pk, member)
        TopicSubscription.objects.filter(topic=topic, subscriber__in=removed).delete()
    return list(removed.values()), unknown


def topic_subscriptions_delete(*, topic_id: int, subscription_ids: Iterable[int]) -> None:
    """Delete these subscriptions of a topic (the admin's delete action), the topic locked
    first as topic_unsubscribe locks it; none if the topic was deleted meanwhile, with
    them. By their ids, as chosen: topic_unsubscribe finds only the client's subscribers."""
    with transaction.atomic():
        try:
            _lock_or_gone(Topic.objects.filter(pk=topic_id))
        except Topic.DoesNotExist:
            return
        TopicSubscription.objects.filter(topic_id=topic_id, pk__in=subscription_ids).delete()
