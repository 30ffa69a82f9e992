"""Stage 5, the message worker: a claimed step's message built, stored once and sent
through its channel's provider, the outcome recorded with the step (the step bookkeeping
is workflows.services.bookkeeping's); and the in-app seen/read marks."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, InterfaceError, OperationalError, connection, transaction
from django.db.models import QuerySet
from django.utils import timezone

from config import pipeline
from config.db import bounded, insert_once
from config.logs import Quieted, loggable
from messaging.models import Message
from messaging.providers import Provider, SendError, provider_for
from subscribers.models import Subscriber
from workflows import bridge
from workflows.models import Step
from workflows.selectors import CHANNEL_TYPES
from workflows.services import bookkeeping
from workflows.services.common import CLIENT_INACTIVE

logger = logging.getLogger(__name__)


class SentUnrecorded(Exception):
    """The provider took the message, and the database failed before it was recorded
    sent. `retry_kwargs`: the record, for the task's retry to carry and write (JSON; see
    message_send). Raised from the database's error."""

    def __init__(self, sent: dict[str, Any]) -> None:
        super().__init__("the message was sent, and the database failed to record it")
        self.retry_kwargs: dict[str, Any] = {"sent": sent}


def message_send(
    *,
    step_id: int,
    claim: str = "",
    sent: dict[str, Any] | None = None,
    resumed: datetime | None = None,
) -> None:
    """Stage 5: carry out one step, then hand the notification back to the echo worker.

    Safe to run twice: the step is claimed (scheduled -> processing) by one run only,
    or by that run's own retry (`claim`, see step_claim). A database error while the
    step is claimed raises ClaimInterrupted, and the retry takes the claim back from
    `resumed` (when it was taken). A send whose record the database refused for more
    than a moment (_retried_briefly) raises SentUnrecorded, and the retry records it
    from `sent` without sending. A send cut off between the provider call and the
    commit otherwise (its worker killed) may repeat once, when the reconciler, for a
    claim left stale, sends it again.
    """
    claim = claim or uuid.uuid4().hex  # the one the step is taken under, for the handler
    # A bug (in norm, or a step it did not foresee): raised, the step stayed claimed with
    # no reason until NORM_STALE_CLAIM_SECONDS and failed at NORM_MAX_CLAIMS as taken by
    # workers that never finished it. Recorded, and run again a grace period later.
    with pipeline.bugs_recorded(
        lambda exc: bookkeeping.step_internal_error(step_id=step_id, claim=claim, exc=exc),
        "the send of step",
        step_id,
        logger,
        passes=(SentUnrecorded,),  # ClaimInterrupted, a database error, passes as one
    ):
        if sent is None:
            _send(step_id=step_id, claim=claim, resumed=resumed)
        else:
            _sent_record(step_id=step_id, sent=sent)


def _sent_record(*, step_id: int, sent: dict[str, Any]) -> None:
    """Record the send a run made before the database failed (SentUnrecorded), as that
    run would have: the message sent, its step completed.

    Not through step_claim: it refuses a step whose trigger was canceled meanwhile, and
    the message, left `sending`, was given up as failed by the reconciler once the
    claim went stale, though it was delivered (and an admin's retry sent it again); not
    canceled, the retry took its claim back and sent it a second time. Whoever holds
    the step now, a success counts (as in _held): the message went out."""
    step = Step.objects.filter(pk=step_id).only("pk", "notification_id", "step_id", "error").first()
    if step is None:  # its subscriber was deleted since, with it and its message
        return
    with transaction.atomic():  # sent and done together, as _send records them
        # Not a send recorded already (the commit that failed may have gone through).
        Message.objects.filter(step_id=step_id).exclude(status=Message.Status.SENT).update(
            status=Message.Status.SENT,
            recipient=sent["recipient"],
            provider_message_id=sent["provider_message_id"],
            attempts=sent["attempts"],
            sent_at=datetime.fromisoformat(sent["sent_at"]),
            error="",
        )
        bookkeeping.step_complete(step=step, result={})


def _send(*, step_id: int, claim: str, resumed: datetime | None) -> None:
    """`message_send`, its unexpected errors aside."""
    step = bookkeeping.step_claim(step_id=step_id, claim=claim, resumed=resumed)
    if step is None:
        return
    try:
        _claimed_send(step)
    except (OperationalError, InterfaceError) as exc:
        # Retried as it is, the task counted a claim toward NORM_MAX_CLAIMS each time it
        # took the step back: a run of database errors failed the notification as taken
        # by workers that never finished it (TooManyClaims). Its retry resumes this one.
        raise pipeline.ClaimInterrupted(step.claimed_at) from exc


def _claimed_send(step: Step) -> None:
    """Send a step claimed by this run, or record its action."""
    if step.message_status in (Message.Status.SENT, Message.Status.FAILED):
        # Sent, or failed for good, by an earlier run whose step was not ended (the
        # database lost, a bug, a claim gone stale): first, before the checks below,
        # which judge a message still to send. After them, a client deactivated or an
        # address removed since failed or skipped the step of a delivered message, or
        # skipped one whose message had failed (the notification going on, no admin
        # retry for it).
        stored = Message.objects.filter(step=step).first()
        if stored is not None:  # None: its subscriber was deleted since the claim, with it
            _outcome_record(step, stored)
        return
    if _action_recorded(step):
        return
    provider = _provider_reaching(step)
    if provider is None:
        return
    message = _message_stored(step, provider)
    if message is None:  # its subscriber was deleted since the claim, with it
        return
    if message.status != Message.Status.SENDING:  # just stored as sent, or ended since
        _outcome_record(step, message)
        return
    # As read with the step: a stored message's (a retry's) without a query of their own.
    message.step, message.subscriber, message.client = (
        step,
        step.notification.subscriber,
        step.notification.client,
    )
    message.recipient = provider.recipient(message)
    try:
        provider_message_id = provider.send(message)
    except (OperationalError, InterfaceError):
        raise  # the database is away: the task retries
    except Exception as exc:
        _failure_record(step, message, provider, exc)
        return
    _send_record(step, message, provider_message_id)


def _action_recorded(step: Step) -> bool:
    """Whether the step sends no message, its end recorded: failed, its client inactive;
    completed, a delay or a custom step."""
    if not step.notification.client.is_active:
        bookkeeping.step_fail(step=step, code="ClientInactive", message=CLIENT_INACTIVE)
        return True
    if step.type == "delay":
        # From when the echo worker recorded the step, by its clock: one a little ahead
        # of this worker's (CLOCK_SKEW) would have a zero delay wait less than nothing.
        waited = max(timezone.now() - step.created_at, timedelta(0))
        bookkeeping.step_complete(
            step=step, result={"duration": int(waited.total_seconds() * 1000)}
        )
        return True
    if step.type not in CHANNEL_TYPES:  # custom: its outputs are its result
        bookkeeping.step_complete(step=step, result=step.outputs)
        return True
    return False


def _provider_reaching(step: Step) -> Provider | None:
    """The provider of the step's channel, if one is configured and the subscriber has an
    address for it; None, the step skipped with the reason, otherwise."""
    provider = provider_for(step.type)
    if provider is None:
        # As in Novu, whose worker marks a step without an active integration and goes
        # on: an sms step (norm has no provider for it yet) does not keep the email after
        # it from being sent. Failed, every notification of such a workflow would stop
        # there, and a retry stop there again.
        bookkeeping.step_skip(
            step=step,
            reason=f"no provider is configured for the {step.type} channel (NORM_PROVIDERS)",
        )
        return None
    unreachable = provider.unreachable(step.notification.subscriber)
    if unreachable:
        # As in Novu: a channel the subscriber has no address for is skipped, with the
        # reason on the step, and the workflow goes on (an in-app step after it, say).
        bookkeeping.step_skip(step=step, reason=unreachable)
        return None
    return provider


def _message_stored(step: Step, provider: Provider) -> Message | None:
    """The step's message, inserted once: this run's, or the one an earlier run of the
    step stored. None if its subscriber was deleted since the claim, with it."""
    message = Message(
        step=step,
        # The client as step_claim read it with the step (its sender policy, for the
        # provider): no query of its own, and an admin edit applies to the next email.
        client=step.notification.client,
        subscriber=step.notification.subscriber,
        channel=step.type,
        provider=provider.name,
        # Provider overrides ride along under their own key, as the bridge sent them.
        content={**step.outputs, "providers": step.providers} if step.providers else step.outputs,
    )
    if provider.stores_only and _passes(provider, message):
        # In-app: INSERTed as sent, not inserted and then updated with its step in a
        # transaction. A crash before the step completes leaves a rerun to find it sent.
        message.status, message.attempts, message.sent_at = Message.Status.SENT, 1, timezone.now()
    try:
        inserted = insert_once(message)
    except IntegrityError:
        # Refused by a foreign key: the subscriber was deleted since the claim, with its
        # notification and this step. Nothing to send, and no one to send it to.
        if not Step.objects.filter(pk=step.pk).exists():
            return None
        raise
    if not inserted:  # a retry of this step, or a rerun after a crash
        stored = Message.objects.filter(step=step).first()
        if stored is None:  # its subscriber was deleted since the insert, with it
            return None
        message = stored
    return message


def _failure_record(step: Step, message: Message, provider: Provider, exc: Exception) -> None:
    """Record a send the provider failed (or failed on, a bug): the step rescheduled, if
    another attempt can help, or its message failed for good. Called where `exc` is
    caught."""
    if isinstance(exc, SendError):
        failure, bug = exc, False
    else:
        # A provider bug must not leave the step claimed, to be sent again forever.
        # Every email of a broadcast trips on it alike: one traceback a minute.
        pipeline.bug_logged(logger, exc, f"provider {provider.name} on message", message.pk)
        failure, bug = SendError(f"the provider failed: {exc!r}", transient=False), True
    # Any length the server wrote (smtplib reads every line of a reply), and shown
    # on every page of the API and the admin that lists the message, step or
    # notification: cut as a bridge's error message is.
    attempts, error = message.attempts + 1, bounded(str(failure), bridge.MAX_MESSAGE)
    retry = failure.transient and attempts < settings.NORM_SEND_MAX_ATTEMPTS
    backoff = pipeline.backoff(settings.NORM_SEND_RETRY_BACKOFF, attempts - 1)
    if not bug:  # a bug was logged with its traceback, above
        _failure_log(message, provider, error, backoff=backoff if retry else None)

    def failure_record() -> None:  # twice is as once: each write sets what it sets
        # Not a message another task delivered meanwhile (this one's claim went stale).
        Message.objects.filter(pk=message.pk).exclude(status=Message.Status.SENT).update(
            attempts=attempts,
            error=error,
            recipient=message.recipient,
            **({} if retry else {"status": Message.Status.FAILED}),
        )
        if retry:
            bookkeeping.step_retry_later(step=step, message=error, backoff=backoff)
        else:
            bookkeeping.step_undelivered(step=step, reason=error)

    # A reschedule the database cut off left the step claimed and its message
    # `sending`: the task's retry (ClaimInterrupted) sent again a second later, not
    # after the backoff, to a server that had just failed. Narrowed as a send's record.
    _retried_briefly(failure_record)


def _send_record(step: Step, message: Message, provider_message_id: str) -> None:
    """Record the message sent and its step completed, in one commit; if the database
    stays away, raise SentUnrecorded for the task's retry to record it."""
    # Not a send recorded already: a task whose claim went stale mid-send (its step sent
    # again by another meanwhile) wrote its own over the record the other made (when it
    # went out, the provider's id), which the API and the bridge had read. As _sent_record.
    sent = Message.objects.filter(pk=message.pk).exclude(status=Message.Status.SENT)
    as_sent = {
        "status": Message.Status.SENT,
        "recipient": message.recipient,
        "provider_message_id": provider_message_id,
        "attempts": message.attempts + 1,
        "sent_at": timezone.now(),
        "error": "",
    }

    def record() -> None:
        with transaction.atomic():  # sent and done together: one commit
            sent.update(**as_sent)
            # An in-app result is read from the message when the state is built.
            bookkeeping.step_complete(step=step, result={})

    try:
        _retried_briefly(record)
    except (OperationalError, InterfaceError) as exc:
        # The database away: its retry would find the message unsent, and send it again
        # (or, its trigger canceled meanwhile, find its claim refused and leave the message
        # to be given up as failed). It carries what the provider answered instead.
        raise SentUnrecorded(
            {
                "recipient": message.recipient,
                "provider_message_id": provider_message_id,
                "attempts": as_sent["attempts"],
                "sent_at": as_sent["sent_at"].isoformat(),
            }
        ) from exc
    except pipeline.NOT_A_BUG:
        raise  # the worker stopping (a time limit): the reconciler may send it again, as documented
    except Exception:
        # A bug after the provider took the message. Rolled back with the rest, the
        # message read as unsent, and each run of the step sent it again: recorded sent
        # on its own, the next run completes the step without sending.
        sent.update(**as_sent)
        raise


# An SMTP server down or refusing norm's login fails every email alike: one line a
# minute per provider, and whether it retries, not one per email of a broadcast.
_failures = Quieted()


def _failure_log(
    message: Message, provider: Provider, error: str, *, backoff: float | None
) -> None:
    """Say that a send failed, naming the message, its step, notification and client: a
    warning without traceback (the provider's or the address's to mend; a provider's
    bug is logged with its traceback where it is caught). `backoff`: None for good."""
    held = _failures.due((provider.name, backoff is None))
    if held is None:
        return
    step = message.step
    logger.warning(
        "message %s (step %s, notification %s, client %s) not sent by %s, %s: %s (%d more "
        "such since the last such line)",
        message.pk,
        step.pk,
        step.notification_id,
        message.client_id,
        provider.name,
        "for good" if backoff is None else f"retried in {backoff:.0f} s",
        loggable(error),  # it may quote the SMTP server, or the step's output
        held,
    )


# How long a send's record is tried again in-process before it is left to the task's
# retry (SentUnrecorded): the pauses between tries, and when they stop (from the first).
RECORD_RETRY_DELAYS = (0.1, 0.3, 0.6, 1.0)
RECORD_RETRY_SECONDS = 2.5


def _retried_briefly(record: Callable[[], None]) -> None:
    """Run `record` (of what the provider answered), again on a database error for a
    moment (RECORD_RETRY_DELAYS).

    A send's record left to the task's retry rides on the broker: lost with it (Redis
    flushed or failed over in the same seconds), the claim went stale and the reconciler
    sent the email again (the chaos soak saw 4 in 30,534). Most failures are over in a
    moment (a connection killed, a deadlock's victim, a pooler reconnecting), the record
    done here; a longer outage still goes to the retry. No try starts past
    RECORD_RETRY_SECONDS, however long one takes to fail (DB_CONNECT_TIMEOUT)."""
    deadline = time.monotonic() + RECORD_RETRY_SECONDS
    for delay in (*RECORD_RETRY_DELAYS, None):
        try:
            record()
            return
        except (OperationalError, InterfaceError):
            if delay is None or time.monotonic() + delay >= deadline:
                raise
        time.sleep(delay)
        # A connection that broke is dropped, for the next try to open a new one. Not in
        # a caller's transaction (a test's): closing it would end that.
        if not connection.in_atomic_block:
            connection.close_if_unusable_or_obsolete()


def _outcome_record(step: Step, message: Message) -> None:
    """End a claimed step as its message ended: sent, or failed for good."""
    if message.status == Message.Status.SENT:
        bookkeeping.step_complete(step=step, result={})
        return
    # Failed for good by a run the database cut off before its step was failed (an
    # admin's retry reopens a message with its step): this run, its retry or the
    # reconciler's, sent it again at once, past NORM_SEND_MAX_ATTEMPTS, and after a
    # reply that timed out (the server may have taken it) as a second email.
    bookkeeping.step_undelivered(step=step, reason=message.error)


def _passes(provider: Provider, message: Message) -> bool:
    """Whether a provider that only stores (in-app) takes the message: its send() is its
    checks. One it refuses, or fails on, goes the way of every send, to be recorded."""
    try:
        provider.send(message)
    except Exception:
        return False
    return True


def messages_mark(
    *, messages: QuerySet[Message], seen: bool | None = None, read: bool | None = None
) -> int:
    """Mark in-app messages seen/read (or not), keeping when each was first; read implies
    seen unless `seen` says otherwise. A later step's state reflects it. Returns how
    many changed their read mark (their seen mark, when only that is asked)."""
    now = timezone.now()
    if read is True and seen is None:
        seen = True
    changed = 0
    with transaction.atomic():
        # Their subscriber locked first, as subscriber_delete locks it before deleting its
        # messages: a delete under way is waited for. Without, the delete (in the order of
        # the messages' steps) and the marks (in the order of their index, by creation)
        # each locked a message the other wanted next: a deadlock, the marks a 503.
        # The messages of one subscriber, as every inbox call marks: its first is enough.
        owner = messages.order_by().values("subscriber_id")[:1]
        list(Subscriber.objects.select_for_update(no_key=True).filter(pk__in=owner).values("pk"))
        if seen is not None:
            changed = messages.filter(seen_at__isnull=seen).update(seen_at=now if seen else None)
        if read is not None:
            changed = messages.filter(read_at__isnull=read).update(read_at=now if read else None)
    return changed


def message_mark(
    *, message: Message, seen: bool | None = None, read: bool | None = None
) -> Message:
    """`messages_mark` for one message; returns it with its marks as stored.
    Message.DoesNotExist if it was deleted meanwhile, with its subscriber."""
    messages_mark(messages=Message.objects.filter(pk=message.pk), seen=seen, read=read)
    message.refresh_from_db(fields=["seen_at", "read_at"])  # keeps the loaded relations
    return message


def message_action_set(
    *, message: Message, action_type: str, status: str, payload: dict[str, Any] | None = None
) -> Message:
    """Record what the subscriber did with an in-app message's button, `action_type`
    (primary or secondary): `status` done, or pending again. One result for the message,
    as Novu keeps it (the last button acted on); the payload kept only if one is given,
    as Novu's v1 call sets it. Returns the message as stored; Message.DoesNotExist if it
    was deleted meanwhile, with its subscriber."""
    result: dict[str, Any] = {"type": action_type}
    if payload is not None:
        result["payload"] = payload
    # One row, written whole: no lock beyond its own, so none taken in another order.
    updated = Message.objects.filter(pk=message.pk).update(
        action={"status": status, "result": result}
    )
    if not updated:
        raise Message.DoesNotExist
    message.refresh_from_db(fields=["action"])  # keeps the loaded relations
    return message
