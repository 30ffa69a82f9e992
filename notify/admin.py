"""The operations console for clients, their keys, workflows and trigger events."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.auth import admin as auth_admin
from django.contrib.auth.models import Group, User
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

import workflows.admin
from config.redact import has_masked_secret, masked_url
from notify import schema_checks, senders, services
from notify.logins import ThrottledLoginForm
from notify.models import (
    BridgeSync,
    BridgeURLValidator,
    BridgeWorkflow,
    Client,
    SecretKey,
    TriggerEvent,
    stored_strings,
)
from workflows.admin import (
    STORABLE_JSON,
    DeletedMeanwhileAdmin,
    NormAdmin,
    ReadOnlyAdmin,
    ReadOnlyInline,
    changelist_link,
    masked_url_field,
    pretty_json,
)
from workflows.models import Notification
from workflows.services.operations import cancel_deadline

# A key is shown as its prefix only: the plain key exists once, when it is created.
KEY_FIELDS = ["prefix", "client", "created_at", "revoked_at"]


class SecretKeyInline(ReadOnlyInline):
    model = SecretKey
    fields = ["prefix", "created_at", "revoked_at"]
    readonly_fields = fields


class BridgeWorkflowInline(ReadOnlyInline):
    model = BridgeWorkflow
    fields = ["workflow_id", "name", "bridge", "discovered_at"]
    readonly_fields = fields
    bridge = masked_url_field("bridge_url", "bridge URL")


def _masked_strings(value: Any) -> Any:
    """A JSON value with every string in it (a key too) as masked_url shows it. A list of
    URLs stored past the admin may be one URL (the brackets forgotten) or hold one
    deeper: shown as stored, its password was on the page."""
    if isinstance(value, str):
        return masked_url(value)
    if isinstance(value, list):
        return [_masked_strings(item) for item in value]
    if isinstance(value, dict):
        return {_masked_strings(key): _masked_strings(item) for key, item in value.items()}
    return value


class ClientForm(forms.ModelForm):
    """The JSON fields are read as lists by every trigger: anything else would break them."""

    class Meta:
        model = Client
        fields = [
            "name",
            "is_active",
            "bridge_url",
            "allowed_bridge_urls",
            "workflow_allowlist",
            "rate_limit_per_minute",
            "email_from",
            "email_from_domains",
        ]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The page shows the URLs with their secrets masked; a URL sent back as shown
        # is the stored one (_unmasked), so saving the page keeps the real secrets.
        self.initial["bridge_url"] = masked_url(self.initial.get("bridge_url") or "")
        allowed = self.initial.get("allowed_bridge_urls")
        if allowed is not None:
            self.initial["allowed_bridge_urls"] = _masked_strings(allowed)

    def clean_bridge_url(self) -> str:
        url = self.cleaned_data["bridge_url"]
        if self.instance.pk and url == masked_url(self.instance.bridge_url):
            return self.instance.bridge_url  # as shown: the stored one, whatever its twins
        return self._unmasked(url)

    def clean_allowed_bridge_urls(self) -> list[str]:
        urls = self._strings("allowed_bridge_urls")
        # Not a list of strings (written past the admin): nothing shown to keep.
        stored = stored_strings(self.instance.allowed_bridge_urls) or [] if self.instance.pk else []
        if stored and urls == [masked_url(u) for u in stored]:
            urls = stored  # the list as shown: the stored one, each URL its own password
        else:
            urls = [self._unmasked(url) for url in urls]
        validate = BridgeURLValidator()
        # A trigger names its resource in at most as many characters as a bridge_url has.
        longest = Client._meta.get_field("bridge_url").max_length
        for url in urls:
            validate(url)
            if longest is not None and len(url) > longest:
                raise forms.ValidationError(
                    f"{masked_url(url)[:60]}…: a bridge URL has at most {longest} characters."
                )
        return urls

    def _unmasked(self, url: str) -> str:
        """A URL as typed, or the stored one it is the masked copy of. Two stored URLs
        may differ by their password alone (one being rotated: the bridge URL has the
        new password, an allowed URL the old) and read the same masked: which one an
        edited field means cannot be told, so it is asked for rather than guessed."""
        stored = self.instance.bridge_urls() if self.instance.pk else []
        if url in stored:
            return url
        matches = {known for known in stored if masked_url(known) == url}
        if len(matches) == 1:
            return matches.pop()
        if matches:
            raise forms.ValidationError(
                f"{url}: type its password again; the page shows passwords and query values "
                "as ***, and more than one stored URL reads as this one."
            )
        if has_masked_secret(url):
            raise forms.ValidationError(
                f"{url}: type its password again; the page shows passwords and query values "
                "as ***, and this URL is not one stored with them."
            )
        return url

    def clean_workflow_allowlist(self) -> list[str]:
        return self._strings("workflow_allowlist")

    def clean_email_from(self) -> str:
        return self.cleaned_data["email_from"].strip()

    def clean_email_from_domains(self) -> list[str]:
        domains = self.cleaned_data["email_from_domains"] or []
        problem = senders.sender_domains_problem(domains)
        if problem:
            raise forms.ValidationError(problem)
        return [domain.strip() for domain in domains]

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        domains = cleaned.get("email_from_domains")
        if "email_from" in cleaned and domains is not None:
            problem = senders.email_from_problem(cleaned["email_from"], domains)
            if problem:
                self.add_error("email_from", problem)
        return cleaned

    def _strings(self, field: str) -> list[str]:
        value = self.cleaned_data[field] or []
        if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
            raise forms.ValidationError('Use a list of strings: ["...", "..."].')
        # Trimmed, as the API reads a trigger's name and resource.
        return [v.strip() for v in value]


@admin.register(Client)
class ClientAdmin(NormAdmin):
    form = ClientForm
    formfield_overrides = STORABLE_JSON
    list_display = ["name", "is_active", "bridge", "rate_limit_per_minute", "created_at"]
    list_filter = ["is_active"]
    search_fields = ["name"]
    readonly_fields = ["created_at"]
    inlines = [SecretKeyInline, BridgeWorkflowInline]
    actions = ["create_key"]
    bridge = masked_url_field("bridge_url", "bridge URL")
    unfilterable = ("bridge_url", "allowed_bridge_urls")

    @admin.display(description="allowed bridge URLs")
    def allowed_bridges(self, client: Client) -> str:
        urls = stored_strings(client.allowed_bridge_urls)
        return "not a list of URLs" if urls is None else ", ".join(masked_url(u) for u in urls)

    def get_fields(self, request: HttpRequest, obj: Client | None = None) -> list[Any]:
        fields = list(super().get_fields(request, obj))
        if obj is not None and not self.has_change_permission(request, obj):
            # A user who may only view sees every field read-only, and Django shows a
            # read-only field's value in full: show the masked displays instead.
            shown = {"bridge_url": "bridge", "allowed_bridge_urls": "allowed_bridges"}
            fields = [shown.get(f, f) for f in fields]
        return fields

    def get_readonly_fields(self, request: HttpRequest, obj: Client | None = None) -> list[Any]:
        fields = list(super().get_readonly_fields(request, obj))
        if obj is not None and not self.has_change_permission(request, obj):
            fields += ["bridge", "allowed_bridges"]
        return fields

    def get_deleted_objects(
        self, objs: Iterable[Client], request: HttpRequest
    ) -> tuple[list[Any], dict[str, int], set[str], list[Any]]:
        # Django lists every row a delete would take, at a query per notification: a
        # client's rows are its whole history, which the admin never deletes (trigger
        # events and the pipeline's rows have no delete permission). Say so unread.
        if TriggerEvent.objects.filter(client__in=objs).exists():
            return [str(c) for c in objs], {}, {str(TriggerEvent._meta.verbose_name)}, []
        return super().get_deleted_objects(objs, request)

    # Deleted as services.clients_delete deletes them: locked, and checked for triggers
    # under the lock, as a trigger may have been stored since the page checked. One that
    # was is answered as a client whose triggers the page listed.
    def delete_model(self, request: HttpRequest, obj: Client) -> None:
        self.delete_queryset(request, Client.objects.filter(pk=obj.pk))

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Client]) -> None:
        try:
            services.clients_delete(client_ids=[c.pk for c in queryset])
        except services.ClientHasTriggers:
            raise PermissionDenied from None

    def response_add(
        self, request: HttpRequest, obj: Client, post_url_continue: str | None = None
    ) -> HttpResponse:
        response = super().response_add(request, obj, post_url_continue)
        # createclient prints a key; a client added here has none, and its first API call
        # was a 401 ("API key unknown or revoked") with no hint of where a key comes from.
        if not obj.secret_keys.exists():
            self.message_user(
                request,
                f"“{obj.name}” has no secret key yet (the API and its bridge need one): select "
                "it in the list of clients and run the action “Create a new secret key”.",
                messages.WARNING,
            )
        return response

    def response_action(self, request: HttpRequest, queryset: QuerySet[Client]) -> Any:
        # The delete action logs its deletes before it makes them, outside a transaction:
        # one refused would leave its entries in the log.
        with transaction.atomic():
            return super().response_action(request, queryset)

    def has_add_key_permission(self, request: HttpRequest) -> bool:
        # A new key is the client's whole API, its subscribers and messages: who may
        # change a client (its rate, its sender policy) may not mint one for that alone.
        return request.user.has_perm("notify.add_secretkey")

    @admin.action(description="Create a new secret key", permissions=["add_key"])
    def create_key(self, request: HttpRequest, queryset: QuerySet[Client]) -> HttpResponse | None:
        # Answered directly, never through the messages framework: that would keep the
        # plain key in a cookie or the session.
        created = [(c.name, services.secret_key_create(client=c)[1]) for c in queryset]
        if not created:
            # Not the page of new keys, with none on it to copy.
            self.message_user(
                request, "No key created: the selected clients were deleted.", messages.WARNING
            )
            return None
        rows = format_html_join("", "<tr><td>{}</td><td><code>{}</code></td></tr>", created)
        # The admin marks its views never_cache, so the key stays out of caches too.
        return HttpResponse(
            format_html(
                "<!doctype html><title>New secret keys</title>"
                "<h1>New secret keys</h1><p>Copy them now: they are not shown again.</p>"
                "<table><tr><th>client</th><th>key</th></tr>{}</table>"
                '<p><a href="{}">Back to clients</a></p>',
                rows,
                request.get_full_path(),
            )
        )


@admin.register(SecretKey)
class SecretKeyAdmin(NormAdmin):
    list_display = ["prefix", "client", "created_at", "revoked_at"]
    list_filter = ["client", ("revoked_at", admin.EmptyFieldListFilter)]
    list_select_related = ["client"]
    search_fields = ["prefix"]
    fields = KEY_FIELDS
    readonly_fields = KEY_FIELDS
    actions = ["revoke"]
    unfilterable = ("key_hash", "encrypted")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # a key is created from its client (action "Create a new secret key")

    @admin.action(description="Revoke selected keys", permissions=["change"])
    def revoke(self, request: HttpRequest, queryset: QuerySet[SecretKey]) -> None:
        keys = list(queryset.filter(revoked_at__isnull=True))
        for key in keys:
            services.secret_key_revoke(secret_key=key)
        self.message_user(request, f"Revoked {len(keys)} key(s).", messages.SUCCESS)


class BridgeWorkflowForm(forms.ModelForm):
    class Meta:
        model = BridgeWorkflow
        fields = ["controls"]

    def clean_controls(self) -> dict[str, Any]:
        """An object keyed by declared step ids, each value valid for that step's schema."""
        controls = self.cleaned_data["controls"] or {}
        if not isinstance(controls, dict):
            raise forms.ValidationError('Use an object: {"<stepId>": {<control>: <value>}}.')
        schemas = {s.get("stepId"): s.get("controlSchema") or {} for s in self.instance.steps}
        for step_id, values in controls.items():
            if step_id not in schemas:
                raise forms.ValidationError(f"'{step_id}' is not a step of this workflow.")
            if not isinstance(values, dict):
                raise forms.ValidationError(f"The controls of '{step_id}' must be an object.")
            try:
                problems = [
                    # Named, as the trigger API names a payload's (payload/orderId): a step
                    # with several controls said "5 is not of type 'string'" of none.
                    f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
                    if e.absolute_path
                    else e.message
                    for e in services.schema_errors(schemas[step_id], values)
                ]
            except services.UnusableSchema as exc:
                raise forms.ValidationError(
                    f"'{step_id}': its control schema from the bridge cannot be applied: {exc}"
                ) from exc
            except schema_checks.CheckTooSlow as exc:
                raise forms.ValidationError(
                    f"'{step_id}': {services.too_slow_message(exc)}"
                ) from exc
            if problems:
                raise forms.ValidationError(f"'{step_id}': " + "; ".join(problems))
        return controls


@admin.register(BridgeWorkflow)
class BridgeWorkflowAdmin(DeletedMeanwhileAdmin):
    """Written by discover; only the step controls are edited here."""

    form = BridgeWorkflowForm
    formfield_overrides = STORABLE_JSON
    list_display = ["workflow_id", "name", "client", "bridge", "discovered_at"]
    list_filter = ["client"]
    list_select_related = ["client"]
    search_fields = ["workflow_id", "name"]
    bridge = masked_url_field("bridge_url", "bridge URL")
    unfilterable = ("bridge_url",)
    fields = [
        "client",
        "bridge",
        "workflow_id",
        "name",
        "discovered_at",
        "payload_schema_json",
        "payload_schema_translated",
        "steps_json",
        "controls",
    ]
    readonly_fields = [f for f in fields if f != "controls"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def save_model(
        self, request: HttpRequest, obj: BridgeWorkflow, form: Any, change: bool
    ) -> None:
        # Django's save wrote back every column as read before a discover stored the
        # workflow anew (its steps went back to the old ones), and inserted anew one the
        # discover deleted.
        services.bridge_workflow_controls_set(workflow=obj, controls=obj.controls)

    @admin.display(description="payload schema")
    def payload_schema_json(self, workflow: BridgeWorkflow) -> SafeString:
        return pretty_json(workflow.payload_schema)

    @admin.display(description="steps (with each one's control schema)")
    def steps_json(self, workflow: BridgeWorkflow) -> SafeString:
        return pretty_json(workflow.steps)


@admin.register(BridgeSync)
class BridgeSyncAdmin(ReadOnlyAdmin):
    list_display = ["client", "bridge", "flavour", "synced_at", "error"]
    list_filter = ["flavour", "client"]
    list_select_related = ["client"]
    bridge = masked_url_field("bridge_url", "bridge URL")
    fields = ["client", "bridge", "synced_at", "error", "flavour"]
    readonly_fields = fields
    unfilterable = ("bridge_url",)


@admin.register(TriggerEvent)
class TriggerEventAdmin(ReadOnlyAdmin):
    list_display = [
        "workflow_id",
        "transaction_id",
        "client",
        "mode",
        "status",
        "recipients",
        "created_at",
    ]
    list_filter = ["status", "mode", "client"]
    list_select_related = ["client"]
    show_full_result_count = False  # as for notifications: no second COUNT(*) when filtered
    list_defer = ("to", "payload", "actor", "overrides", "error", "forgotten", "redelivered")
    # Each exactly: in any case, each field's UPPER() quadrupled the time of a search, which
    # reads every trigger (a transactionId is unique as given, case and all).
    search_fields = ["transaction_id__exact", "workflow_id__exact"]
    actions = ["cancel"]

    @admin.action(description="Cancel (with its fan-out still to come)", permissions=["operate"])
    def cancel(self, request: HttpRequest, queryset: QuerySet[TriggerEvent]) -> None:
        # Their keys, not their rows: "Select all" is every trigger there is, and 200,000
        # read as rows with their clients took 32 s (as keys 0.3 s). Those not canceled
        # yet first: run again on the same selection, the action goes on where it stopped.
        keys = queryset.values_list("client_id", "transaction_id", "canceled_at")
        events = sorted(keys, key=lambda key: key[2] is not None)
        clients = Client.objects.in_bulk({client_id for client_id, _, _ in events})
        # One budget for them all: each its own, ten broadcasts took 50 s, and gunicorn
        # killed the request at 30 s, the later ones not canceled at all.
        until = cancel_deadline()
        # And the triggers too: each is a few queries past that budget (a client's 50,000
        # selected took minutes), as the notifications' actions stop at theirs.
        stop = time.monotonic() + workflows.admin.ACTION_BUDGET_SECONDS
        results = []
        for client_id, transaction_id, _ in events:
            results.append(
                services.trigger_event_cancel(
                    client=clients[client_id], transaction_id=transaction_id, until=until
                )
            )
            if time.monotonic() >= stop:
                break
        canceled = sum(r.stopped for r in results)
        continuing = sum(r.continues for r in results)
        rest = f" ({continuing} still being canceled in the background)" if continuing else ""
        left = len(events) - len(results)
        late = f"; {left} not reached in time: run the action again for them" if left else ""
        self.message_user(
            request,
            f"Canceled {canceled} trigger(s){rest}; {len(results) - canceled} had nothing left "
            f"to stop{late}.",
            messages.SUCCESS if canceled else messages.WARNING,
        )

    def has_operate_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("notify.change_triggerevent")

    exclude = ["payload", "to", "actor", "overrides", "resource"]
    bridge = masked_url_field("resource", "resource")
    unfilterable = ("resource",)
    readonly_fields = [
        "bridge",
        "notifications_link",
        "payload_json",
        "to_json",
        "actor_json",
        "overrides_json",
    ]

    @admin.display(description="notifications")
    def notifications_link(self, event: TriggerEvent) -> SafeString:
        # A link, not an inline: a broadcast has one notification per subscriber.
        return changelist_link(
            Notification, "Notifications of this trigger", trigger_event__id__exact=event.pk
        )

    @admin.display(description="payload")
    def payload_json(self, event: TriggerEvent) -> SafeString:
        return pretty_json(event.payload)

    @admin.display(description="to")
    def to_json(self, event: TriggerEvent) -> SafeString:
        return pretty_json(event.to)

    @admin.display(description="actor")
    def actor_json(self, event: TriggerEvent) -> SafeString:
        return pretty_json(event.actor)

    @admin.display(description="overrides")
    def overrides_json(self, event: TriggerEvent) -> SafeString:
        return pretty_json(event.overrides)


# Django's header links "View site" to /, which leads to the API's docs: no site of the
# admin's (the API has no home page; the admin is the site).
admin.site.site_url = None
# Django's login takes any number of guesses; this one refuses a username's after a few
# failures from one address (notify.logins).
admin.site.login_form = ThrottledLoginForm

# Django's own admins of the console's users and groups, with NormAdmin's refusal of an
# action's selection that is no id: a 500 otherwise. (Importing auth_admin registered
# them, whatever the order of INSTALLED_APPS.)
admin.site.unregister([User, Group])


@admin.register(User)
class UserAdmin(NormAdmin, auth_admin.UserAdmin):
    pass


@admin.register(Group)
class GroupAdmin(NormAdmin, auth_admin.GroupAdmin):
    pass
