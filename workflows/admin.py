"""The operations console for notifications and steps: inspect, retry, cancel."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from functools import cached_property
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.options import IncorrectLookupParameters
from django.contrib.admin.utils import display_for_value
from django.contrib.admin.views.main import ChangeList
from django.core.exceptions import BadRequest, ValidationError
from django.core.paginator import Paginator
from django.db import DataError, OperationalError, connections, models, transaction
from django.db.models import Q, QuerySet
from django.db.models.constants import LOOKUP_SEP
from django.forms.fields import InvalidJSONInput
from django.http import HttpRequest, HttpResponse
from django.urls import reverse
from django.utils.html import escape, format_html, format_html_join
from django.utils.http import urlencode
from django.utils.safestring import SafeString

from config.parsers import unfit
from config.redact import masked_url
from notify.models import TriggerEvent
from subscribers.models import Subscriber
from workflows import selectors
from workflows.models import Notification, Step
from workflows.services import operations


def pretty_json(value: Any) -> SafeString:
    return format_html("<pre>{}</pre>", json.dumps(value, indent=2, sort_keys=True, default=str))


class StorableJSONField(forms.JSONField):
    """JSON refused as the API refuses it (config.parsers.unfit): a NUL character, a lone
    surrogate or a number beyond a double was saved, and PostgreSQL's refusal a 500."""

    def validate(self, value: Any) -> None:
        super().validate(value)
        problem = unfit(value)
        if problem:
            raise forms.ValidationError(f"Enter JSON PostgreSQL can store: {problem}.")

    def bound_data(self, data: Any, initial: Any) -> Any:
        # Shown again as typed: Django's form shows the value it read, and a lone
        # surrogate in it cannot be written to the page (a 500 instead of the error).
        value = super().bound_data(data, initial)
        return InvalidJSONInput(data) if unfit(value) else value


# For the admins that edit a JSON field (formfield_overrides).
STORABLE_JSON: dict[Any, dict[str, Any]] = {models.JSONField: {"form_class": StorableJSONField}}


def masked_url_field(field: str, description: str) -> Any:
    """A display of the URL in `field` with its password masked (config.redact): Django
    would show the whole URL, in a list or on a read-only page, as a link.

    Its column sorts nothing: sorted by the whole URL, a list told a user who may set a
    bridge URL of his own guess (add or change a client) whether it sorts below or above
    another client's password or token, as a filter on it would (NormAdmin.unfilterable)."""

    @admin.display(description=description)
    def show(self: Any, obj: Any) -> str:
        return masked_url(getattr(obj, field))

    return show


def change_link(obj: models.Model, text: Any = None) -> SafeString:
    """A link to an object's admin page, so an operator can follow a notification."""
    meta = obj._meta
    url = reverse(f"admin:{meta.app_label}_{meta.model_name}_change", args=[obj.pk])
    return format_html('<a href="{}">{}</a>', url, obj if text is None else text)


def changelist_link(model: type[models.Model], text: str, **filters: Any) -> SafeString:
    """A link to the rows of `model` matching `filters` (lookups the changelist accepts)."""
    meta = model._meta
    url = reverse(f"admin:{meta.app_label}_{meta.model_name}_changelist")
    return format_html('<a href="{}?{}">{}</a>', url, urlencode(filters), text)


# Under this many rows (by the planner's estimate) a list is counted exactly: COUNT(*)
# of 100,000 rows by an index takes some 10 ms.
ESTIMATE_FROM = 100_000


class EstimatedCountPaginator(Paginator):
    """Django's paginator, but an unfiltered list of a large table is counted by
    PostgreSQL's estimate of its rows (pg_class.reltuples, which ANALYZE and autovacuum
    keep), not by COUNT(*): the whole table's count made each first page cost as much
    as the table is large (5,000,000 steps: 0.55 to 0.94 s; 4,000,000 messages, 0.44
    to 0.77 s; docs/BENCHMARKS.md, session 22). The count and the number of pages shown
    are then the estimate's, off by a few percent; a filtered list (a search, a filter)
    is counted exactly, as before. A smaller one's count is that of its table, without
    the list's annotations: a topic's member count joined all 400,000 subscriptions to
    count 1,000 topics (0.3 to 0.6 s)."""

    @cached_property
    def count(self) -> int:
        rows = self.object_list
        if not isinstance(rows, QuerySet) or rows.query.where or rows.query.distinct:
            return super().count
        connection = connections[rows.db]
        if connection.vendor != "postgresql":
            return rows.model._base_manager.using(rows.db).count()
        table = connection.ops.quote_name(rows.model._meta.db_table)
        with connection.cursor() as cursor:
            # One round trip: the table's estimate, and its count unless that is large.
            # The count is capped, so the plan of a large table's, never run, costs little:
            # a whole COUNT(*) there, costed above jit_above_cost, was JIT-compiled each
            # time for nothing (9 to 45 ms).
            cursor.execute(
                "SELECT reltuples, CASE WHEN reltuples >= %s THEN NULL"
                f" ELSE (SELECT COUNT(*) FROM (SELECT 1 FROM {table} LIMIT %s) capped) END"
                " FROM pg_class WHERE oid = to_regclass(%s)",
                [ESTIMATE_FROM, ESTIMATE_FROM, table],
            )
            estimate, count = cursor.fetchone()
        if count is None:
            return int(estimate)
        if count < ESTIMATE_FROM:
            return int(count)
        return rows.model._base_manager.using(rows.db).count()  # large, never analyzed


# What SQLite's driver raises for an exception in a function Python defined for it.
SQLITE_FUNCTION_FAILED = "user-defined function raised exception"


class NormAdmin(admin.ModelAdmin):
    """The base of norm's admins. An action's selection edited in the page or POSTed by
    hand, an id that is no number or no uuid, is refused with a 400: Django filtered the
    rows by it unchecked, and the primary key's refusal of it was a 500."""

    # Columns the list of rows shows none of, and which may be large (a trigger's 1,000
    # recipients, a payload, an email's body): not read and decoded for each row of a
    # page, as they were. The row's own page reads them.
    list_defer: tuple[str, ...] = ()

    paginator = EstimatedCountPaginator

    # Fields whose value no page shows whole (a bridge URL's password or token, a key's
    # hash or encrypted copy): no list takes a filter on them from its URL. Django takes
    # a lookup on any field of the row (?bridge_url__regex=...), and whether a row was
    # listed gave their value away to whoever may view the list, a character a request.
    unfilterable: tuple[str, ...] = ()

    def lookup_allowed(self, lookup: str, value: str, request: HttpRequest | None = None) -> bool:
        field = lookup.split(LOOKUP_SEP, 1)[0]
        return field not in self.unfilterable and super().lookup_allowed(lookup, value, request)

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        changelist: type[ChangeList] = super().get_changelist(request, **kwargs)
        unread = self.list_defer

        class Checked(changelist):
            def get_queryset(self, request: HttpRequest, exclude_parameters: Any = None) -> Any:
                rows = super().get_queryset(request, exclude_parameters)
                return rows.defer(*unread) if unread else rows

            def get_results(self, request: HttpRequest) -> None:
                # Django refuses a lookup from the URL it cannot build ("?e=1"), but one
                # that fails only once the query is written or run was a 500: a year no
                # datetime holds (?created_at__year=99999, a ValueError), a pattern
                # PostgreSQL refuses (?name__regex=(, a DataError). The count runs the
                # filter first, in a savepoint, so a refusal leaves the request's
                # transaction usable.
                try:
                    with transaction.atomic():
                        super().get_results(request)
                except (ValueError, DataError) as exc:
                    raise IncorrectLookupParameters(exc) from exc
                except OperationalError as exc:
                    # SQLite (`make run`) runs a regex by a Python function of Django's,
                    # whose refusal of the pattern comes back as this: a 500 there.
                    if str(exc) != SQLITE_FUNCTION_FAILED:
                        raise
                    raise IncorrectLookupParameters(exc) from exc

        return Checked

    def get_form(
        self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any
    ) -> type[forms.ModelForm[Any]]:
        # norm's help texts are plain text, and the admin writes them out as HTML:
        # `Acme <hello@acme.example>` read "as `Acme `", `tk_<topic key>:si_<subscriberId>`
        # read "tk_:si_", the browser taking each address or placeholder for a tag. Given
        # to the form's Meta, not to its fields alone: a read-only field's (every field, to
        # a user who may only view) is read from there, or from the model as written.
        form = kwargs.get("form", self.form)
        opts = self.model._meta
        texts = {f.name: f.help_text for f in [*opts.fields, *opts.many_to_many] if f.help_text}
        texts |= getattr(getattr(form, "Meta", None), "help_texts", None) or {}
        kwargs["help_texts"] = {name: escape(text) for name, text in texts.items()}
        return super().get_form(request, obj, change=change, **kwargs)

    def response_action(self, request: HttpRequest, queryset: QuerySet[Any]) -> Any:
        for value in request.POST.getlist(helpers.ACTION_CHECKBOX_NAME):
            try:
                self.opts.pk.to_python(value)
            except ValidationError:
                raise BadRequest(f"{value!r} is no id of a {self.opts.verbose_name}.") from None
        return super().response_action(request, queryset)


class KeySearch:
    """A search by exact keys (`search_matches`), those of related rows looked up first,
    each by its own index: Django's search ORs its fields over a join of every row to its
    related rows, which no index serves."""

    def search_matches(self, term: str) -> Q:
        raise NotImplementedError

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Any], search_term: str
    ) -> tuple[QuerySet[Any], bool]:
        term = search_term.strip()
        if not term:
            return queryset, False
        return queryset.filter(self.search_matches(term)), False


class ReadOnlyAdmin(NormAdmin):
    """Rows written by the pipeline: shown, never hand-edited (that would bypass the claims)."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # A deleted step would be asked of the bridge again and sent twice.
        return False


class GoneMeanwhile(Exception):
    """A save found `row`, which the one saved refers to, deleted meanwhile."""

    def __init__(self, row: models.Model) -> None:
        self.row = row


class DeletedMeanwhileAdmin(NormAdmin):
    """For a save that raises the model's DoesNotExist when the row was deleted meanwhile
    (a service's update, which never inserts it anew as Django's save would), or
    GoneMeanwhile for a row it refers to: the change is rolled back, and answered as
    Django answers one deleted before its page was sent."""

    def changeform_view(
        self,
        request: HttpRequest,
        object_id: str | None = None,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        try:
            return super().changeform_view(request, object_id, form_url, extra_context)
        except self.model.DoesNotExist:
            return self._get_obj_does_not_exist_redirect(request, self.opts, object_id)
        except GoneMeanwhile as gone:
            opts = gone.row._meta
            return self._get_obj_does_not_exist_redirect(request, opts, str(gone.row.pk))


def fixed_choices(field: str, title: str, values: Iterable[str]) -> type[admin.SimpleListFilter]:
    """A list filter over known values. Django's own reads a field's values with a
    SELECT DISTINCT over the whole table on every page load."""

    class Filter(admin.SimpleListFilter):
        parameter_name = field

        def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
            return [(v, v) for v in sorted(values)]

        def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
            return queryset.filter(**{field: self.value()}) if self.value() else queryset

    Filter.title = title
    return Filter


class ErrorCodeFilter(admin.SimpleListFilter):
    """Notifications by error code: after an outage, those it failed are told apart from
    those a bug in the workflow failed, to retry only them. Offers the codes of the newest
    1,000 failed notifications, read through the (status, updated_at) index: a DISTINCT
    over the table would read every notification on every page load. Any other code is
    reached with ?error_code=... in the URL."""

    title = "error code"
    parameter_name = "error_code"
    RECENT = 1000

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        recent = (
            Notification.objects.filter(status=Notification.Status.FAILED)
            .order_by("-updated_at")
            .values_list("error_code", flat=True)[: self.RECENT]
        )
        codes = {code for code in recent if code} | ({self.value()} if self.value() else set())
        return [(code, code) for code in sorted(codes)]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        if not self.value():
            return queryset
        # Only a failed notification has a code (a retry or a completion clears it): named
        # so, the list is read from the (status, updated_at) index, not from every row.
        failed = Notification.Status.FAILED
        return queryset.filter(status=failed, error_code=self.value())


class ReadOnlyInline(admin.TabularInline):
    """Related rows shown on their parent's page, linked, never added or edited here."""

    can_delete = False
    extra = 0
    show_change_link = True

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class StepJSON:
    """A step's outputs, and its result as the bridge sees it, on its notification's page
    and its own alike."""

    @admin.display(description="outputs")
    def outputs_json(self, step: Step) -> SafeString:
        return pretty_json(step.outputs)

    @admin.display(description="result (as the bridge sees it)")
    def live_result(self, step: Step) -> SafeString:
        return pretty_json(selectors.step_result(step))


class StepInline(StepJSON, ReadOnlyInline):
    model = Step
    ordering = ["position"]
    fields = [
        "position",
        "step_id",
        "type",
        "status",
        "due_at",
        "attempts",
        "error",
        "outputs_json",
        "live_result",
    ]
    readonly_fields = fields

    def get_queryset(self, request: HttpRequest) -> QuerySet[Step]:
        return super().get_queryset(request).select_related("message")


# The retry action takes the notifications one at a time, a transaction each (some 10 ms):
# after an outage an operator selects thousands, and gunicorn killed the request at 30 s,
# a 502 that said nothing of how far it got. The cancel action, in one transaction, held
# a broadcast's selected (all 200,000: 15 s and more) locked until the end, and past the
# 30 s canceled none. Each stops after this long and says how many it left; run again,
# it takes only those still failed (unfinished).
ACTION_BUDGET_SECONDS = 20.0


@admin.register(Notification)
class NotificationAdmin(KeySearch, ReadOnlyAdmin):
    list_display = [
        "id",
        "workflow_id",
        "subscriber",
        "client",
        "status",
        "error_code",
        "created_at",
    ]
    list_filter = ["status", ErrorCodeFilter, "client"]
    list_select_related = ["subscriber", "client"]
    # What the search box matches (get_search_results): each exactly, the email in any case.
    search_fields = [
        "trigger_event__transaction_id__exact",
        "subscriber__subscriber_id__exact",
        "=subscriber__email",
        "workflow_id__exact",
    ]
    # Newest first, from the created_at index (the id, a uuid4, is in no order at all).
    ordering = ["-created_at"]
    show_full_result_count = False  # no COUNT(*) of the whole table on every page
    list_defer = ("error",)
    inlines = [StepInline]
    actions = ["retry", "cancel"]
    fields = [
        "id",
        "client",
        "trigger_event",
        "subscriber",
        "workflow_id",
        "bridge",
        "status",
        "error_code",
        "error",
        "bridge_attempts",
        "internal_errors",
        "payload_json",
        "messages_table",
        "created_at",
        "updated_at",
        "completed_at",
    ]
    readonly_fields = fields
    bridge = masked_url_field("resource", "resource")
    unfilterable = ("resource",)

    def has_operate_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("workflows.change_notification")

    def search_matches(self, term: str) -> Q:
        # Joined, 0.9 s a page over 200,000 notifications.
        subscribers = Subscriber.objects.filter(Q(subscriber_id=term) | Q(email__iexact=term))
        events = TriggerEvent.objects.filter(transaction_id=term)
        return (
            Q(subscriber_id__in=list(subscribers.values_list("pk", flat=True)))
            | Q(trigger_event_id__in=list(events.values_list("pk", flat=True)))
            | Q(workflow_id=term)
        )

    @admin.display(description="payload")
    def payload_json(self, notification: Notification) -> SafeString:
        return pretty_json(notification.trigger_event.payload)

    @admin.display(description="messages")
    def messages_table(self, notification: Notification) -> SafeString:
        # Message belongs to the step, not the notification, so no inline can list them.
        steps = notification.steps.select_related("message").order_by("position")
        rows = [(s.step_id, s.message) for s in steps if getattr(s, "message", None)]
        if not rows:
            return format_html("<p>{}</p>", "No messages.")
        body = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>"
            "<td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            (
                (
                    change_link(m, m.pk),
                    step_id,
                    m.channel,
                    m.provider,
                    m.status,
                    m.recipient,
                    # As the admin shows the page's own times, not str()'s
                    # "2026-03-05 09:00:00.123456+00:00".
                    display_for_value(m.sent_at, ""),
                    display_for_value(m.seen_at, ""),
                    display_for_value(m.read_at, ""),
                    m.error,
                )
                for step_id, m in rows
            ),
        )
        return format_html(
            "<table><thead><tr><th>message</th><th>step</th><th>channel</th><th>provider</th><th>status</th>"
            "<th>recipient</th><th>sent</th><th>seen</th><th>read</th><th>error</th></tr>"
            "</thead><tbody>{}</tbody></table>",
            body,
        )

    @admin.action(description="Retry from the failed step", permissions=["operate"])
    def retry(self, request: HttpRequest, queryset: QuerySet[Notification]) -> None:
        # Counted before acting, as a status filter would recount. Those that did not fail
        # are left out before the clock starts: run again on the same selection, the
        # action goes on where it stopped. Left out by the query, not read: "Select all"
        # is every notification there is, and reading 200,000 took 5 s and 120 MB.
        chosen = queryset.count()
        failed = list(
            queryset.filter(status=Notification.Status.FAILED)
            .select_related(None)
            .only("pk", "trigger_event_id", "status", "workflow_id")  # its queue's
        )
        until = time.monotonic() + ACTION_BUDGET_SECONDS
        retried = tried = 0
        for notification in failed:
            retried += operations.notification_retry(notification=notification)
            tried += 1
            if time.monotonic() >= until:
                break
        skipped = chosen - len(failed)
        refused = tried - retried  # of a canceled trigger, or retried meanwhile by another
        left = len(failed) - tried
        rest = (
            f"; {refused} not retried (its trigger canceled, or no longer failed)"
            if refused
            else ""
        )
        rest += f"; {left} not reached in time: run the action again for them" if left else ""
        self.message_user(
            request,
            f"Retried {retried} notification(s); {skipped} skipped (not failed){rest}.",
            messages.SUCCESS if retried else messages.WARNING,
        )

    @admin.action(description="Cancel", permissions=["operate"])
    def cancel(self, request: HttpRequest, queryset: QuerySet[Notification]) -> None:
        # A chunk to a transaction, as a trigger's cancel (operations.CANCEL_CHUNK). The
        # finished ones counted, not read, as the retry's.
        chosen = queryset.count()
        unfinished = list(
            queryset.exclude(status__in=Notification.FINAL).values_list("pk", flat=True)
        )
        until = time.monotonic() + ACTION_BUDGET_SECONDS
        canceled = tried = 0
        while tried < len(unfinished):
            chunk = unfinished[tried : tried + operations.CANCEL_CHUNK]
            canceled += operations.notifications_cancel(notification_ids=chunk)
            tried += len(chunk)
            if time.monotonic() >= until:
                break
        skipped = chosen - canceled - (len(unfinished) - tried)
        left = len(unfinished) - tried
        rest = f"; {left} not reached in time: run the action again for them" if left else ""
        self.message_user(
            request,
            f"Canceled {canceled} notification(s); {skipped} skipped (already finished){rest}.",
            messages.SUCCESS if canceled else messages.WARNING,
        )


@admin.register(Step)
class StepAdmin(KeySearch, StepJSON, ReadOnlyAdmin):
    list_display = ["step_id", "type", "status", "notification", "position", "due_at", "attempts"]
    list_filter = [
        "status",
        # With the types norm does not run: one the bridge skipped is recorded (as skipped).
        fixed_choices("type", "type", selectors.STEP_TYPES | selectors.UNSUPPORTED_STEP_TYPES),
    ]
    # Not the model's order (position, which only means something within a notification):
    # newest first, from the primary key's index, instead of sorting every step ever run.
    ordering = ["-id"]
    show_full_result_count = False
    list_select_related = ["notification__subscriber"]
    # What the search box matches (get_search_results), each exactly.
    search_fields = ["step_id__exact", "notification__subscriber__subscriber_id__exact"]
    # Shown indented, as everywhere else: Django prints a JSON field on one line, and an
    # email's body in `outputs` is a page of markup.
    exclude = ["outputs", "providers", "result"]
    readonly_fields = ["outputs_json", "providers_json", "live_result", "message_link"]

    def search_matches(self, term: str) -> Q:
        # Joined, 1.2 s a page over 200,000 steps.
        subscribers = Subscriber.objects.filter(subscriber_id=term).values_list("pk", flat=True)
        notifications = Notification.objects.filter(subscriber_id__in=list(subscribers))
        return Q(step_id=term) | Q(notification_id__in=notifications.values("pk"))

    @admin.display(description="providers")
    def providers_json(self, step: Step) -> SafeString:
        return pretty_json(step.providers)

    @admin.display(description="message")
    def message_link(self, step: Step) -> SafeString | str:
        message = getattr(step, "message", None)
        return change_link(message) if message is not None else "-"
