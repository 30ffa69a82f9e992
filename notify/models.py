from __future__ import annotations

import re
from typing import Any

from django import forms
from django.core.validators import MinValueValidator, URLValidator
from django.db import models
from django.db.models.functions import Now
from django.utils import timezone
from django.utils.regex_helper import _lazy_re_compile

from config.redact import masked_url


class BridgeURLValidator(URLValidator):
    """An http(s) URL whose host may be a bare name.

    Django's URLValidator wants a top-level domain (or localhost), which refuses the
    hosts of a self-hosted setup: `http://bridge:4000/api/novu` in docker-compose.
    Which URLs norm calls is not decided here but by the client's registered list.
    """

    # Labels may hold underscores: compose service names do (`my_app`), Docker's DNS
    # resolves them, and requests calls them; DNS names proper never need one.
    hostname_re = URLValidator.hostname_re.replace("0-9]", "0-9_]").replace("0-9-]", "0-9_-]")
    domain_re = URLValidator.domain_re.replace("0-9]", "0-9_]").replace("0-9-]", "0-9_-]")
    host_re = "(" + hostname_re + domain_re + r"\.?)"
    regex = _lazy_re_compile(
        r"^(?:[a-z0-9.+-]*)://"  # the scheme is checked apart
        r"(?:[^\s:@/]+(?::[^\s:@/]*)?@)?"  # user:pass
        r"(?:" + URLValidator.ipv4_re + "|" + URLValidator.ipv6_re + "|" + host_re + ")"
        r"(?::[0-9]{1,5})?"  # port
        r"(?:[/?#][^\s]*)?"  # path
        r"\Z",
        re.IGNORECASE,
    )
    schemes = ["http", "https"]


class BridgeURLFormField(forms.URLField):
    default_validators = [BridgeURLValidator()]


class BridgeURLField(models.URLField):
    """A bridge's URL: http(s), any host name (BridgeURLValidator)."""

    default_validators = [BridgeURLValidator()]

    def formfield(self, **kwargs: Any) -> Any:
        return super().formfield(**{"form_class": BridgeURLFormField, **kwargs})


def stored_strings(value: Any) -> list[str] | None:
    """A client's list field as the database holds it, None unless a list of strings.
    The admin refuses anything else, but one written otherwise (a shell, SQL) was read
    as it was: `in` a JSON string is a substring test ("welcome-email" allowed
    "welcome"), and `in` an object asks its keys."""
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return value
    return None


class Client(models.Model):
    """A tenant of norm: its bridge, its keys, what it may trigger."""

    name = models.CharField(max_length=200, unique=True)
    is_active = models.BooleanField(default=True)
    bridge_url = BridgeURLField(max_length=500, help_text="The default resource.")
    allowed_bridge_urls = models.JSONField(
        default=list, blank=True, help_text="Other bridge URLs a trigger may name as resource."
    )
    workflow_allowlist = models.JSONField(
        default=list, blank=True, help_text="Workflow ids this client may trigger; empty = all."
    )
    # At least 1: the trigger API reads no rate (0 too) as no limit.
    rate_limit_per_minute = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1)],
        help_text="Triggers per minute (a bulk counts each of its events); blank = no limit. "
        "To stop a client's triggers, make it inactive.",
    )
    # The sender policy (notify/senders.py), read by the message worker with the step.
    email_from = models.CharField(
        max_length=320,
        blank=True,
        help_text="The From of the client's emails when a step sets none, as "
        "`Acme <hello@acme.example>`; blank = the server's DEFAULT_FROM_EMAIL.",
    )
    email_from_domains = models.JSONField(
        default=list,
        blank=True,
        help_text="Domains a step's from.email may use, each exactly (a subdomain is "
        "listed on its own); empty = any.",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.name

    @property
    def is_authenticated(self) -> bool:
        # DRF treats request.user as the caller; for the API that is the client.
        return True

    def bridge_urls(self) -> list[str]:
        """Its bridge, and the others it allows unless that list is unreadable."""
        return [self.bridge_url, *(stored_strings(self.allowed_bridge_urls) or [])]


class SecretKey(models.Model):
    """One of a client's secret keys: authenticates API calls and signs bridge calls.

    Stored as a SHA-256 hash (lookup) and a Fernet-encrypted copy (signing), never in
    plain text; `prefix` is the visible start that identifies it in the admin.
    """

    client = models.ForeignKey(Client, on_delete=models.CASCADE, related_name="secret_keys")
    prefix = models.CharField(max_length=16)
    key_hash = models.CharField(max_length=64, unique=True)
    encrypted = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.prefix}…"


class BridgeWorkflow(models.Model):
    """A workflow the client's bridge declared in its last discover."""

    # Indexed by the unique (client, bridge_url, workflow_id), which starts with it.
    client = models.ForeignKey(
        Client, on_delete=models.CASCADE, related_name="bridge_workflows", db_index=False
    )
    bridge_url = BridgeURLField(max_length=500)
    workflow_id = models.CharField(max_length=200)
    name = models.CharField(max_length=200, blank=True)
    payload_schema = models.JSONField(default=dict, blank=True)
    payload_schema_translated = models.BooleanField(
        # The database's too: the release before, still syncing while this one rolls out,
        # inserts workflows without it.
        default=False,
        db_default=False,
        help_text="The bridge's SDK checks payloads with the schema library they were written "
        "with (zod), of which the payload schema is discover's JSON Schema translation.",
    )
    steps = models.JSONField(
        default=list, blank=True, help_text="[{stepId, type, controlSchema}] in code order."
    )
    controls = models.JSONField(
        default=dict,
        blank=True,
        help_text="Control values per step id, sent to the bridge when it runs that step.",
    )
    discovered_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["client", "bridge_url", "workflow_id"], name="uniq_bridge_workflow"
            )
        ]

    def __str__(self) -> str:
        return self.workflow_id


class BridgeSync(models.Model):
    """When a bridge was last discovered (to rate-limit refreshes on unknown names), and
    which protocol flavour it speaks."""

    class Flavour(models.TextChoices):
        NORM = "norm", "norm (next step chosen by the code)"
        NOVU = "novu", "Novu @novu/framework (step by step id)"

    # Indexed by the unique (client, bridge_url), which starts with it.
    client = models.ForeignKey(
        Client, on_delete=models.CASCADE, related_name="bridge_syncs", db_index=False
    )
    bridge_url = BridgeURLField(max_length=500)
    synced_at = models.DateTimeField()
    error = models.TextField(blank=True)
    # Blank until a health-check has told: norm then drives the bridge as a norm one.
    flavour = models.CharField(max_length=8, choices=Flavour.choices, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["client", "bridge_url"], name="uniq_bridge_sync")
        ]

    def __str__(self) -> str:
        return f"{masked_url(self.bridge_url)} at {self.synced_at:%Y-%m-%d %H:%M:%S}"


class TriggerEvent(models.Model):
    class Mode(models.TextChoices):
        MULTICAST = "multicast"
        BROADCAST = "broadcast"

    class Status(models.TextChoices):
        RECEIVED = "received"
        PROCESSING = "processing"
        PROCESSED = "processed"
        FAILED = "failed"
        # Canceled before its fan-out ran (or while a run that then died held it).
        CANCELED = "canceled"

    # Indexed by the unique (client, transaction_id), which starts with it: an index of
    # its own was one more write for every trigger the API stores.
    client = models.ForeignKey(
        Client, on_delete=models.CASCADE, related_name="trigger_events", db_index=False
    )
    workflow_id = models.CharField(max_length=200)
    transaction_id = models.CharField(max_length=255)
    mode = models.CharField(max_length=16, choices=Mode.choices)
    to = models.JSONField(null=True, blank=True)
    payload = models.JSONField(default=dict, blank=True)
    resource = BridgeURLField(max_length=500)
    actor = models.JSONField(null=True, blank=True)
    overrides = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.RECEIVED)
    recipients = models.PositiveIntegerField(default=0)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    claimed_at = models.DateTimeField(null=True, blank=True)
    # The id of the task that claimed it: that task's own retry may take it back.
    claimed_by = models.CharField(max_length=64, blank=True)
    processed_at = models.DateTimeField(null=True, blank=True)
    # Where the reconciler's check that its fan-out reached everyone (FANOUT_RECHECK)
    # starts: set with processed_at, moved on while a backlog of subscriber commands
    # (which may hold its own) keeps the check from running. Set when the event is
    # stored too, by the database for the release before it (still fanning events out
    # while an upgrade migrates and restarts), which sets none: an event it fanned out
    # with none the reconciler never checked; so it is checked from its receipt. Set
    # here by Python, not left to the database: an INSERT would read it back.
    recheck_from = models.DateTimeField(
        null=True, blank=True, default=timezone.now, db_default=Now()
    )
    canceled_at = models.DateTimeField(null=True, blank=True)
    # When the reconciler last re-sent it: once per grace period, not on every tick
    # while the workflows queue is backed up.
    reenqueued_at = models.DateTimeField(null=True, blank=True)
    # How often the reconciler ran its fan-out again: each time it waits twice as long
    # before the next, as a backed-up queue may still hold the last run's commands.
    refanned = models.PositiveSmallIntegerField(default=0)
    # The subscriberIds of recipients deleted (with their notification) since its fan-out:
    # a run of it again, for commands lost with the broker, leaves them out.
    forgotten = models.JSONField(default=list, blank=True)
    # Runs of its fan-out that ended unfinished: a bug ended them, or their claim went
    # stale (the worker died or hung). Failed at NORM_MAX_CLAIMS.
    internal_errors = models.PositiveSmallIntegerField(default=0)
    # Its subscriber commands that the broker delivered again after their worker died,
    # by task id: how many times. A command has no row of its own to count its runs on,
    # and one that ends its worker each time (a chunk that runs it out of memory) was
    # delivered again at once and for good. At NORM_MAX_CLAIMS its recipients'
    # notifications fail instead (subscribers.services.command_given_up). Its default is
    # the database's too: the release before it, still inserting events while an upgrade
    # migrates, names no such column.
    redelivered = models.JSONField(default=dict, db_default={}, blank=True)
    # While its cancel has a task with notifications left to end: when that task was
    # last handed on (by the request past its budget, or the reconciler) or last ended a
    # chunk; null once a cancel got to the end (or before any cancel). The reconciler
    # sends the task again when it is a grace period old: the broker may have lost it.
    # A field of its own, not `reenqueued_at`: null, it takes the trigger out of the
    # index the reconciler reads, which then holds only cancels under way, not every
    # trigger ever canceled (and a finished cancel's notifications are never read).
    cancel_task_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["client", "transaction_id"], name="uniq_transaction")
        ]
        indexes = [
            models.Index(fields=["status", "created_at"]),
            # The reconciler's check for a short fan-out, every few seconds: events
            # processed in the last hour (or kept since by a backlog), out of all those
            # ever processed.
            models.Index(fields=["status", "recheck_from"]),
            # The reconciler's check for a lost cancel task, every few seconds: partial,
            # so it holds the few cancels under way, and a trigger inserted writes none.
            models.Index(
                fields=["cancel_task_at"],
                name="trigger_cancel_under_way",
                condition=models.Q(cancel_task_at__isnull=False),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.workflow_id} {self.transaction_id}"
