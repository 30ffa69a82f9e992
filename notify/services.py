"""Clients, their secret keys and bridge registry, and stage 1's writes: a trigger
checked (client, workflow, payload schema, recipients), stored once per transactionId
and handed to the workflow worker; and a trigger's cancel."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from config import pipeline
from config.db import insert_once
from config.errors import ApiError
from config.logs import Quieted, loggable
from config.redact import masked_url
from notify import crypto, schema_checks, selectors, senders
from notify.models import (
    BridgeSync,
    BridgeURLValidator,
    BridgeWorkflow,
    Client,
    SecretKey,
    TriggerEvent,
    stored_strings,
)
from subscribers.models import Topic
from subscribers.recipients import (
    new_unroutable,
    parse_actor,
    parse_recipients,
    refuse_new_unroutable,
    unroutable_message,
)
from workflows import bridge
from workflows.models import Notification
from workflows.registry import bridge_sync
from workflows.services.common import FANOUT_RECHECK
from workflows.services.operations import cancel_deadline, trigger_notifications_cancel

logger = logging.getLogger(__name__)


def client_create(
    *,
    name: str,
    bridge_url: str,
    allowed_bridge_urls: list[str] | None = None,
    email_from: str = "",
    email_from_domains: list[str] | None = None,
) -> Client:
    """A new client; a ValueError for a name, bridge URL or sender policy it cannot have.
    Each string is stored trimmed, as the admin's form stores it."""
    name, email_from = name.strip(), email_from.strip()
    bridge_url = bridge_url.strip()
    allowed_bridge_urls = [url.strip() for url in allowed_bridge_urls or []]
    if not name:
        raise ValueError("a client's name may not be empty")
    # Past their columns, PostgreSQL refused them with a DataError, a traceback.
    for field, value in (("name", name), ("email_from", email_from)):
        most = Client._meta.get_field(field).max_length
        if most is not None and len(value) > most:
            raise ValueError(f"{field}: a client's {field} has at most {most} characters")
    # As the admin's form: the column's length, which a trigger's resource has too.
    longest = Client._meta.get_field("bridge_url").max_length
    for url in [bridge_url, *allowed_bridge_urls]:
        try:
            BridgeURLValidator()(url)
        except ValidationError as exc:
            # Masked: createclient prints it, into a deploy's log, say.
            raise ValueError(f"not an http(s) URL: {masked_url(url)!r}") from exc
        if longest is not None and len(url) > longest:
            raise ValueError(
                f"{masked_url(url)[:60]}…: a bridge URL has at most {longest} characters"
            )
    domains = [d.strip() for d in email_from_domains or []]
    problem = senders.sender_domains_problem(domains) or senders.email_from_problem(
        email_from, domains
    )
    if problem:
        raise ValueError(problem)
    return Client.objects.create(
        name=name,
        bridge_url=bridge_url,
        allowed_bridge_urls=allowed_bridge_urls,
        email_from=email_from,
        email_from_domains=domains,
    )


def client_bridge_move(*, client: Client, bridge_url: str) -> Client:
    """Point the client's bridge at `bridge_url`, with the work still headed for the old
    one: for a bridge that moved and serves the same workflows (`make run`'s demo bridge,
    this server's own, run on another address). Otherwise each notification in flight,
    and each a trigger still fanning out creates, failed with BridgeNotAllowed."""
    with transaction.atomic():
        client = Client.objects.select_for_update().get(pk=client.pk)
        old = client.bridge_url
        if old == bridge_url:
            return client
        # The field's value, a str: mypy without Django's stubs sees the field.
        client.bridge_url = bridge_url  # type: ignore[assignment]
        client.save(update_fields=["bridge_url"])
        # A processed trigger may still have subscriber chunks to run, which read it.
        TriggerEvent.objects.filter(client=client, resource=old).exclude(
            status__in=[TriggerEvent.Status.FAILED, TriggerEvent.Status.CANCELED]
        ).update(resource=bridge_url)
        Notification.objects.filter(client=client, resource=old).exclude(
            status__in=Notification.FINAL
        ).update(resource=bridge_url)
    return client


class ClientHasTriggers(Exception):
    """A client with triggers is kept: they and the pipeline's rows under them are its
    history, which is never deleted by hand."""


def clients_delete(*, client_ids: list[int]) -> None:
    """Delete clients without triggers, with their keys, registries, subscribers and
    topics, all or none; ClientHasTriggers if one has a trigger.

    Their rows are locked first, and triggers looked for under the lock: a trigger's
    INSERT (as any API write's) checks its client's row with a lock that waits for this
    one, then finds the client gone, which the API's exception handler answers as a
    revoked key. Django's delete alone took a trigger stored after the admin's check
    with its client, after its 201, and one stored after the cascade read the rows to
    delete made it fail at commit (its foreign key), a 500.
    """
    with transaction.atomic():
        locked = Client.objects.select_for_update().filter(pk__in=client_ids).order_by("pk")
        ids = list(locked.values_list("pk", flat=True))
        if TriggerEvent.objects.filter(client_id__in=ids).exists():
            raise ClientHasTriggers
        # Their topics too, before the cascade reads what refers to them: a subscription
        # (which names no client, so waits for no client's lock) added meanwhile locks its
        # topic first, and is then waited for, and deleted with it. Read before it
        # committed, the cascade deleted its topic and subscriber under it, refused by its
        # foreign key at commit, a 500.
        list(
            Topic.objects.select_for_update()
            .filter(client_id__in=ids)
            .order_by("pk")
            .values_list("pk", flat=True)
        )
        Client.objects.filter(pk__in=ids).delete()


MIN_KEY_LENGTH = 16


def secret_key_create(*, client: Client, key: str | None = None) -> tuple[SecretKey, str]:
    """Create a secret key; the plain key is returned once and never stored. Its first
    characters name it in the admin: ten at most, and never more than a quarter of it.
    A given key is trimmed, as the API reads the key a call sends (notify.auth): stored
    with the white space around it, it authenticated no call."""
    key = (key or "").strip() or crypto.generate_key()
    if len(key) < MIN_KEY_LENGTH:
        raise ValueError(f"a secret key has at least {MIN_KEY_LENGTH} characters")
    secret = SecretKey.objects.create(
        client=client,
        prefix=key[: min(10, len(key) // 4)],
        key_hash=crypto.hash_key(key),
        encrypted=crypto.encrypt(key),
    )
    return secret, key


def secret_key_revoke(*, secret_key: SecretKey) -> SecretKey:
    """Revoke a key, keeping when it was first revoked; a second revoke changes nothing."""
    SecretKey.objects.filter(pk=secret_key.pk, revoked_at__isnull=True).update(
        revoked_at=timezone.now()
    )
    secret_key.refresh_from_db()
    return secret_key


def bridge_workflow_controls_set(
    *, workflow: BridgeWorkflow, controls: dict[str, Any]
) -> BridgeWorkflow:
    """Store a workflow's step controls, and nothing else: the rest is a discover's,
    which may have stored it anew meanwhile. BridgeWorkflow.DoesNotExist if a discover
    removed it (the bridge no longer declares it)."""
    if not BridgeWorkflow.objects.filter(pk=workflow.pk).update(controls=controls):
        raise BridgeWorkflow.DoesNotExist
    workflow.controls = controls
    return workflow


def _sync_claimed(last: BridgeSync, *, now: datetime) -> bool:
    """Whether this request refreshes a stale entry, and no other that read the same last
    sync: the triggers that came while one synced each saw its old stamp and synced too,
    so while a bridge hung every trigger of its client waited out two timeouts (20 s by
    default), and held a web worker as long. The others go on with the stale entry."""
    return bool(
        BridgeSync.objects.filter(pk=last.pk, synced_at=last.synced_at).update(synced_at=now)
    )


def _bridge_workflow(
    *, client: Client, bridge_url: str, workflow_id: str, payload_refused: bool = False
) -> BridgeWorkflow:
    """The registry entry for a workflow, refreshed from the bridge when it is unknown,
    older than NORM_REGISTRY_TTL, or its schema refused the trigger's payload
    (`payload_refused`), at most once per NORM_DISCOVER_MIN_INTERVAL.

    A stale entry is used when the bridge cannot be reached: a trigger is never
    refused because the bridge is briefly down, only when norm cannot know the workflow.
    """
    found = selectors.bridge_workflow_get(
        client_id=client.pk, bridge_url=bridge_url, workflow_id=workflow_id, cached=True
    )
    now = timezone.now()
    if (
        not payload_refused
        and found is not None
        and found.discovered_at > now - timedelta(seconds=settings.NORM_REGISTRY_TTL)
    ):
        return found
    last = BridgeSync.objects.filter(client=client, bridge_url=bridge_url).first()
    error = last.error if last else ""
    interval = timedelta(seconds=settings.NORM_DISCOVER_MIN_INTERVAL)
    due = last is None or last.synced_at < now - interval
    # A stale entry is refreshed by one request (the others serve it); a workflow not
    # known yet is looked for by each.
    asked = due and (found is None or last is None or _sync_claimed(last, now=now))
    if asked:
        try:
            bridge_sync(client=client, bridge_url=bridge_url)
            error = ""
        except bridge.BridgeError as exc:
            error = str(exc)
    # Read again, whether this request synced or not: a concurrent request's sync may
    # have committed between the two reads above (no entry, then a recent sync), and a
    # trigger then answered workflow_not_found for a workflow the registry held. A failed
    # sync leaves the stale entry, which is used.
    found = selectors.bridge_workflow_get(
        client_id=client.pk, bridge_url=bridge_url, workflow_id=workflow_id
    )
    if found is not None:
        return found
    # Not asked now: the answer is the last discover's, which a bridge fixed or given a
    # new workflow since (a developer's next try) still gets for a while; said so, or
    # the fix looked as if it had not worked.
    when = "" if asked or last is None else _last_asked(last, now=now)
    if error:
        raise ApiError(
            502,
            "bridge_unavailable",
            f"Could not discover the workflows of {masked_url(bridge_url)}{when}: {error}",
        )
    # 422, as Novu answers a workflow it does not know (its UnprocessableEntityException
    # `workflow_not_found`): callers written against Novu catch that status.
    message = f"Workflow '{workflow_id}' is not defined by the bridge {masked_url(bridge_url)}"
    raise ApiError(
        422,
        "workflow_not_found",
        f"{message}{when}",
        [{"field": "name", "message": message}],
    )


def _last_asked(last: BridgeSync, *, now: datetime) -> str:
    seconds = max(0, round((now - last.synced_at).total_seconds()))
    return (
        f" (as of norm's last discover, {seconds} s ago; it asks a bridge again at most "
        f"every {settings.NORM_DISCOVER_MIN_INTERVAL:g} s, NORM_DISCOVER_MIN_INTERVAL)"
    )


class UnusableSchema(ValueError):
    """A schema from a bridge's discover that is no JSON Schema."""


def schema_errors(schema: dict[str, Any], value: Any) -> list[schema_checks.Found]:
    """How `value` fails a schema that a bridge's discover declared (payload, controls).

    Raises UnusableSchema for one that is no JSON Schema ("type": "nope", a broken
    pattern): jsonschema fails on it in many ways, and none is the caller's fault; and
    schema_checks.CheckTooSlow for a check its patterns made outlast
    NORM_SCHEMA_CHECK_SECONDS.
    """
    try:
        # Checked as norm's SDK checks it, as Novu's does too: defaults applied first (a
        # required key with a default may be left out), `format`s checked. A schema with
        # a pattern in a helper process, within a deadline (notify.schema_checks).
        return schema_checks.errors(schema, value)
    except schema_checks.CheckFailed as exc:
        raise UnusableSchema(str(exc)) from exc


def too_slow_message(exc: schema_checks.CheckTooSlow) -> str:
    return (
        f"it took longer than {exc} to check against the schema from the bridge: a "
        "`pattern` there that backtracks on it (as ^(a+)+$ does)? Fix the pattern in the "
        "bridge's schema"
    )


# What zod checks otherwise than the JSON Schema its discover shows (zod-to-json-schema's
# translation): a regex is translated without its flags (/^[a-z]+$/i refused "ABC"), a
# `.url()` is a WHATWG URL to zod and a `uri` of ASCII only to the schema (a link with an
# accent or an IDN was refused), `.multipleOf(0.01)` is float-safe in zod and a division
# in the schema (19.99 was refused); so too zod's own `.email()`, `.datetime()` and the
# other formats. Refused here, such a trigger was a 400 that Novu, whose SDK alone checks
# payloads, runs. Left to the bridge's SDK, which fails the notification with zod's reason.
TRANSLATED_LOOSELY = {"pattern", "format", "multipleOf"}


def _long_enough_to_zod(error: schema_checks.Found) -> bool:
    """Whether a string refused as too short is long enough to zod, which counts its length
    in UTF-16 code units, as JavaScript does, where the translation's `minLength` is read in
    code points: an emoji is two to zod and one here, so `.min(2)` took "😀"."""
    return (
        error.validator == "minLength"
        and isinstance(error.instance, str)
        and isinstance(error.validator_value, int)
        and len(error.instance.encode("utf-16-le")) // 2 >= error.validator_value
    )


# What JavaScript's String.prototype.trim(), and so zod's `.trim()`, takes off each end.
_JS_SPACE = "[\t\n\v\f\r \u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff]"
_JS_TRIMMED = re.compile(rf"\A{_JS_SPACE}+|{_JS_SPACE}+\Z")


def _short_enough_to_zod(error: schema_checks.Found) -> bool:
    """Whether a string refused as too long may be short enough to zod once trimmed:
    `z.string().trim().max(3)` trims before it counts (it took " abc " and the bridge ran
    it), and its translation's `maxLength` shows no trim. Counted in code points, which
    are never more than zod's UTF-16 units: no string zod takes is refused."""
    return (
        error.validator == "maxLength"
        and isinstance(error.instance, str)
        and isinstance(error.validator_value, int)
        and len(_JS_TRIMMED.sub("", error.instance)) <= error.validator_value
    )


def _left_to_bridge(error: schema_checks.Found, *, translated: bool) -> bool:
    """Whether `error` is no reason to refuse a trigger: the bridge may take the value.

    A key the schema does not declare is no error: the bridge strips it (Novu's SDK does
    so even for a workflow without a schema, whose discover says `additionalProperties:
    false`). In a zod schema's translation, nor is what it says otherwise than zod
    (TRANSLATED_LOOSELY, a string's length). Nor is a union (`anyOf`, `oneOf`) one of
    whose branches fails for such errors alone: `z.string().url().or(z.literal(""))` is an
    `anyOf` of a `uri` and a `const`, which refused the link with an accent that zod takes
    as a URL, where the same `.url()` alone was left to the bridge.
    """
    if error.validator == "additionalProperties":
        return True
    if translated and (
        error.validator in TRANSLATED_LOOSELY
        or _long_enough_to_zod(error)
        or _short_enough_to_zod(error)
    ):
        return True
    if error.validator not in ("anyOf", "oneOf") or not error.context:
        return False  # a oneOf that more than one branch takes has no context
    branches: dict[Any, list[schema_checks.Found]] = {}
    for sub in error.context:
        branches.setdefault(sub.branch, []).append(sub)
    return any(
        all(_left_to_bridge(sub, translated=translated) for sub in subs)
        for subs in branches.values()
    )


def _validate_payload(
    schema: dict[str, Any], payload: dict[str, Any], *, translated: bool = False
) -> None:
    """Refuse a payload the workflow's schema refuses. `translated`: the schema is the
    JSON Schema translation of the zod schema the bridge's SDK checks with."""
    if not schema:
        return
    try:
        found = schema_errors(schema, payload)
    except schema_checks.CheckTooSlow as exc:
        # A 400, not a 5xx that Novu's clients would send again for an hour.
        message = f"The payload was not checked: {too_slow_message(exc)}"
        raise ApiError(400, "invalid_payload", message) from exc
    except UnusableSchema as exc:
        raise ApiError(
            502,
            "bridge_invalid_schema",
            f"The workflow's payload schema from the bridge cannot be applied: {exc}"[:500],
        ) from exc
    errors = sorted(
        (e for e in found if not _left_to_bridge(e, translated=translated)),
        key=lambda e: list(e.absolute_path),
    )
    if errors:
        details = [
            {"field": "payload/" + "/".join(str(p) for p in e.absolute_path), "message": e.message}
            for e in errors
        ]
        message = "Payload does not match the workflow's schema: " + "; ".join(
            f"{d['field']}: {d['message']}" for d in details
        )
        raise ApiError(400, "invalid_payload", message, details)


def _bridge_url_refused(*, client: Client, url: str, field: str) -> str:
    """Why a trigger naming `url` as its bridge is refused, with the client's own: a caller
    whose code sets no bridgeUrl (@novu/framework's workflow.trigger() sends one built from
    NOVU_BRIDGE_ORIGIN) sees which differs."""
    ours = ", ".join(masked_url(allowed) for allowed in client.bridge_urls())
    message = f"{field} {masked_url(url)} is not one of this client's bridge URLs ({ours})"
    if stored_strings(client.allowed_bridge_urls) is None:
        message += " (its allowed_bridge_urls is not a list of URLs: only its bridge_url is)"
    else:
        message += ": add it to the client's allowed_bridge_urls (admin) for norm to call it"
    if field == "bridgeUrl":
        message += (
            "; @novu/framework's workflow.trigger() sends NOVU_BRIDGE_ORIGIN + /api/novu"
            " (or a Vercel preview's URL) as bridgeUrl"
        )
    return message


def trigger_event_check(
    *,
    client: Client,
    workflow_id: str,
    mode: str,
    to: Any,
    payload: dict[str, Any],
    transaction_id: str,
    resource: str | None = None,
    resource_field: str = "resource",
    actor: Any = None,
    overrides: dict[str, Any] | None = None,
) -> TriggerEvent:
    """Check a trigger against its client, the bridge's registry and the workflow's
    payload schema; return its event, not stored yet (`trigger_event_store`).

    No per-recipient work happens here. An unknown or stale workflow is discovered
    from the bridge over HTTP: call this outside any transaction.
    """
    allowlist = stored_strings(client.workflow_allowlist)
    if allowlist is None:  # fails closed: the operator meant to restrict the client
        raise ApiError(
            403,
            "workflow_forbidden",
            "This client's workflow allowlist is not a list of workflow ids; it may trigger"
            " no workflow until it is corrected",
        )
    if allowlist and workflow_id not in allowlist:
        raise ApiError(403, "workflow_forbidden", f"This client may not trigger '{workflow_id}'")
    resource = resource or client.bridge_url
    if resource not in client.bridge_urls():
        raise ApiError(
            400,
            "invalid_resource",
            _bridge_url_refused(client=client, url=resource, field=resource_field),
            [{"field": resource_field, "message": "not an allowed bridge URL"}],
        )
    actor_body = parse_actor(actor)
    if actor_body and new_unroutable(
        client_id=client.pk, subscriber_ids=[actor_body["subscriberId"]]
    ):
        message = unroutable_message(actor_body["subscriberId"])
        raise ApiError(400, "invalid_actor", message, [{"field": "actor", "message": message}])
    if mode == TriggerEvent.Mode.MULTICAST:
        recipients, topics = parse_recipients(to)
        refuse_new_unroutable(client_id=client.pk, recipients=recipients)
        keys = {t["topicKey"] for t in topics}
        known = (
            set(Topic.objects.filter(client=client, key__in=keys).values_list("key", flat=True))
            if keys
            else set()
        )
        if keys - known:
            missing = ", ".join(sorted(keys - known))
            raise ApiError(404, "topic_not_found", f"Topic not found: {missing}")
    try:
        _workflow_checked(
            client=client, bridge_url=resource, workflow_id=workflow_id, payload=payload
        )
    except ApiError as exc:
        if exc.status >= 500:
            _bridge_fault_log(exc, client=client, bridge_url=resource, workflow_id=workflow_id)
        raise

    return TriggerEvent(
        client=client,
        workflow_id=workflow_id,
        transaction_id=transaction_id,
        mode=mode,
        to=to if mode == TriggerEvent.Mode.MULTICAST else None,
        payload=payload,
        resource=resource,
        actor=actor,
        overrides=overrides or {},
    )


def _workflow_checked(
    *, client: Client, bridge_url: str, workflow_id: str, payload: dict[str, Any]
) -> BridgeWorkflow:
    """The workflow's registry entry, whose payload schema `payload` passes."""
    registered = _bridge_workflow(client=client, bridge_url=bridge_url, workflow_id=workflow_id)
    try:
        _validate_payload(
            registered.payload_schema, payload, translated=registered.payload_schema_translated
        )
    except ApiError as refusal:
        if refusal.code != "invalid_payload":
            raise
        # The schema may be one the bridge has changed since (a developer's next try, the
        # code redeployed): refused on its strength, such a trigger stayed refused for
        # NORM_REGISTRY_TTL. Checked again against a new discover, if one is due; the
        # same entry back (none due, or the bridge down) upholds the refusal.
        fresher = _bridge_workflow(
            client=client, bridge_url=bridge_url, workflow_id=workflow_id, payload_refused=True
        )
        if fresher.discovered_at == registered.discovered_at:
            raise
        _validate_payload(
            fresher.payload_schema, payload, translated=fresher.payload_schema_translated
        )
        return fresher
    return registered


# A bridge down (or declaring a schema that cannot be applied) fails every trigger that
# needs its discover: Django's ERROR for each 502, without the reason, flooded the log.
_bridge_faults = Quieted()


def _bridge_fault_log(exc: ApiError, *, client: Client, bridge_url: str, workflow_id: str) -> None:
    """Say a trigger's 502 a line a minute per client, bridge and code, with its reason: a
    warning without traceback, as the bridge is its owner's to mend."""
    held = _bridge_faults.due((client.pk, bridge_url, exc.code))
    if held is not None:
        logger.warning(
            "trigger of '%s' (client %s) answered %d %s: %s (%d more such triggers since the "
            "last such line)",
            loggable(workflow_id),  # the caller's, a line break and all
            client.pk,
            exc.status,
            exc.code,
            loggable(exc.message),  # it quotes the bridge's own error
            held,
        )
    exc.logged = True


def trigger_event_store(event: TriggerEvent) -> TriggerEvent:
    """Store a checked event and hand it to the workflow worker once it commits.

    Idempotent on (client, transaction_id): a repeat returns the first event and
    starts nothing new. The unique constraint, not a lookup first, finds a repeat:
    the common case costs one INSERT.
    """
    if not event._state.adding:  # stored: a repeat the API found (_trigger_event_to_store)
        return event
    if not insert_once(event):  # a repeat, or the same transactionId raced in concurrently
        return TriggerEvent.objects.get(
            client_id=event.client_id, transaction_id=event.transaction_id
        )
    pipeline.enqueue_on_commit(pipeline.WORKFLOW, event.pk, workflow=event.workflow_id)
    return event


def trigger_events_store(events: list[TriggerEvent]) -> None:
    """`trigger_event_store` for a bulk trigger: one transaction, so one commit (one
    WAL flush) for up to 100 events instead of one each. In transactionId order: two
    bulks naming the same ids in other orders would otherwise each hold one row the
    other waits for (a deadlock)."""
    with transaction.atomic():
        for event in sorted(events, key=lambda e: e.transaction_id):
            trigger_event_store(event)


@dataclass(frozen=True)
class TriggerCancel:
    """What a trigger's cancel did: `stopped` anything (or will), and whether the cancel
    task `continues` with notifications its request had no time for."""

    stopped: bool
    continues: bool = False


def trigger_event_cancel(
    *, client: Client, transaction_id: str, until: float | None = None
) -> TriggerCancel:
    """Stop every unfinished notification of a trigger.

    Safe to repeat. `canceled_at` also stops recipients the fan-out has not reached
    yet (the subscriber and echo workers check it). A step already sending finishes
    (it is not half-canceled); the echo worker then finds its notification canceled.
    The notifications are canceled for NORM_CANCEL_BUDGET_SECONDS at most, the rest by
    a task; those not reached yet send nothing meanwhile (`canceled_at` stops them).
    `until`: the request's cancel_deadline, when it cancels several triggers.
    """
    event = TriggerEvent.objects.filter(client=client, transaction_id=transaction_id).first()
    if event is None:
        return TriggerCancel(stopped=False)
    # Committed before the notifications are canceled, not with them: a notification
    # created meanwhile is not among those canceled, and its echo must see the cancel.
    # In one transaction (seconds long for a broadcast), an echo that read the event
    # before its commit recorded a step after the cancel had answered, and sent it.
    # It is also what lets the notifications be canceled a chunk to a transaction.
    first_cancel = TriggerEvent.objects.filter(pk=event.pk, canceled_at__isnull=True).update(
        canceled_at=timezone.now()
    )
    # Not fanned out yet: no run may claim it now, so it would stay received for good.
    TriggerEvent.objects.filter(pk=event.pk, status=TriggerEvent.Status.RECEIVED).update(
        status=TriggerEvent.Status.CANCELED
    )
    canceled, continues = trigger_notifications_cancel(
        trigger_event=event, until=cancel_deadline() if until is None else until
    )
    # Fanned out, it still has recipients to reach if it is short of its count while the
    # reconciler checks its fan-out (FANOUT_RECHECK), which sends their commands again.
    # Past that, what it lacks is a recipient deleted since (counted out only within it).
    unstarted = first_cancel and (
        event.status != TriggerEvent.Status.PROCESSED
        or (
            event.recheck_from is not None
            and event.recheck_from > timezone.now() - FANOUT_RECHECK
            and event.notifications.count() < event.recipients
        )
    )
    return TriggerCancel(stopped=bool(canceled or continues or unstarted), continues=continues)
