from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.views.autocomplete import AutocompleteJsonView
from django.contrib.admin.widgets import AutocompleteSelect
from django.core.exceptions import ValidationError
from django.db import IntegrityError
from django.db.models import Count, OuterRef, Q, QuerySet, Subquery
from django.db.models.functions import Coalesce
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.utils.html import format_html
from django.utils.safestring import SafeString

from messaging.models import Message
from subscribers import recipients, services
from subscribers.models import (
    Subscriber,
    Topic,
    TopicSubscription,
    default_subscription_identifier,
)
from workflows.admin import (
    STORABLE_JSON,
    DeletedMeanwhileAdmin,
    GoneMeanwhile,
    KeySearch,
    changelist_link,
)
from workflows.models import Notification


def _taken_on_change(form: forms.ModelForm, field: str, noun: str) -> None:
    """The unique (client, `field`) check Django's form skips on a change page, where the
    client is read-only (a field not in the form): the save's IntegrityError was a 500."""
    value, instance = form.cleaned_data[field], form.instance
    if field not in form.changed_data or instance.pk is None:
        return  # on the add page the client is in the form, and Django checks it
    rows = type(instance).objects.filter(client_id=instance.client_id, **{field: value})
    if rows.exclude(pk=instance.pk).exists():
        raise forms.ValidationError(f"This client has a {noun} '{value}' already.")


class SubscriberForm(forms.ModelForm):
    def clean_subscriber_id(self) -> str:
        # The API's rule, for a new id (an old one made before it stays as it is).
        subscriber_id = self.cleaned_data["subscriber_id"]
        if "subscriber_id" in self.changed_data and not recipients.routable(subscriber_id):
            raise forms.ValidationError(recipients.unroutable_message(subscriber_id))
        _taken_on_change(self, "subscriber_id", "subscriber")
        return subscriber_id

    def clean_email(self) -> str:
        # The API's rule, for a changed address, as for the id.
        email = self.cleaned_data["email"]
        if email and "email" in self.changed_data:
            recipients.SubscriberEmailValidator()(email)
        return email

    def clean_locale(self) -> str:
        # The API's rule (Novu's IsLocale), for a changed value, as for the email.
        locale = self.cleaned_data["locale"]
        if locale and "locale" in self.changed_data and not recipients.locale_valid(locale):
            raise forms.ValidationError(recipients.LOCALE_MESSAGE)
        return locale

    def clean_timezone(self) -> str:
        zone = self.cleaned_data["timezone"]
        if not zone or "timezone" not in self.changed_data:
            return zone
        name = recipients.timezone_name(zone)
        if name is None:
            raise forms.ValidationError(recipients.TIMEZONE_MESSAGE)
        return name

    def clean_data(self) -> Any:
        # An object, as the API takes it: a list, a string or a number was stored, and
        # novu-py then refused every answer holding the subscriber (a retrieve, a whole
        # page of its list) with ResponseValidationError; null was a 500 (NOT NULL).
        data = self.cleaned_data["data"]
        if not isinstance(data, dict):
            raise forms.ValidationError("Enter a JSON object ({} for none).")
        return data


def _memberships(
    model_admin: admin.ModelAdmin, request: HttpRequest, **rows: Any
) -> tuple[int, set[str]]:
    """How many topic memberships a delete takes with `rows`, and, as Django's own delete
    page, the permission the user lacks to take them (Django then answers the POST with a
    403): a user who may not delete memberships may not delete a row that has some."""
    members = TopicSubscription.objects.filter(**rows).count()
    subscriptions = model_admin.admin_site.get_model_admin(TopicSubscription)
    if members and not subscriptions.has_delete_permission(request):
        return members, {str(TopicSubscription._meta.verbose_name)}
    return members, set()


class TakenMeanwhile(Exception):
    """A save refused by the unique (client, id or key) of a row committed after the form
    checked it (a trigger's subscriber command, an API create)."""


class SavedAsTheApiSavesIt(DeletedMeanwhileAdmin):
    """A change saved through the model's update service, which locks the row as its
    delete does. Django's save updated a row a delete held, found it gone, and inserted
    it anew under its old id: the API's delete had answered, and the row was back
    without its notifications or members."""

    def update(self, obj: Any, values: dict[str, Any]) -> None:
        raise NotImplementedError

    def changeform_view(
        self,
        request: HttpRequest,
        object_id: str | None = None,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        try:
            return super().changeform_view(request, object_id, form_url, extra_context)
        except TakenMeanwhile:
            # Rolled back (a 500, as it was). Checked again, the form finds the row now
            # committed and says so, with what was typed; a second refusal is raised.
            return super().changeform_view(request, object_id, form_url, extra_context)

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        try:
            if not change:
                super().save_model(request, obj, form, change)
            else:
                self.update(obj, {field: getattr(obj, field) for field in form.changed_data})
        except IntegrityError as exc:
            # The unique index waited for the other insert's commit; the form's check ran
            # before it. A foreign key's refusal comes at commit, not here.
            raise TakenMeanwhile from exc


@admin.register(Subscriber)
class SubscriberAdmin(SavedAsTheApiSavesIt):
    """A subscriber's client is fixed once created: moved, it would leave its
    notifications, messages and topics with the old client."""

    form = SubscriberForm
    formfield_overrides = STORABLE_JSON

    list_display = ["subscriber_id", "email", "first_name", "last_name", "client", "created_at"]
    list_filter = ["client"]
    list_select_related = ["client"]
    # The paginator counts the list (by the planner's estimate unfiltered): the full
    # count beside it was a COUNT(*) of every subscriber on every page, filtered or not.
    show_full_result_count = False
    search_fields = ["subscriber_id", "email"]
    # Newest first, as the list shows them unasked: in no order, the member picker's pages
    # (autocomplete, 20 a page) could show a subscriber twice and leave another out.
    ordering = ["-pk"]
    readonly_fields = ["created_at", "updated_at", "activity"]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return [*self.readonly_fields, "client"] if obj is not None else self.readonly_fields

    # Deleted as the API deletes one (services.subscriber_delete): locked against a
    # fan-out creating its notification meanwhile, with its notifications, steps and
    # messages, and counted out of the recent fan-outs that reached it, which the
    # reconciler would otherwise run again and create it anew. Django's own delete
    # refused one with notifications (pipeline rows cannot be deleted by hand) and took
    # one without them with no lock.
    def get_deleted_objects(
        self, objs: Any, request: HttpRequest
    ) -> tuple[list[str], dict[str, int], set[str], list[str]]:
        """What the confirmation page lists: the subscribers, and how many of their rows
        go with them (Django's own reads every one into Python, thousands for one)."""
        subscribers = list(objs)
        members, perms_needed = _memberships(self, request, subscriber__in=subscribers)
        counts = {
            str(Subscriber._meta.verbose_name_plural): len(subscribers),
            str(Notification._meta.verbose_name_plural): Notification.objects.filter(
                subscriber__in=subscribers
            ).count(),
            str(Message._meta.verbose_name_plural): Message.objects.filter(
                subscriber__in=subscribers
            ).count(),
            str(TopicSubscription._meta.verbose_name_plural): members,
        }
        return [str(s) for s in subscribers], counts, perms_needed, []

    def update(self, obj: Subscriber, values: dict[str, Any]) -> None:
        services.subscriber_update(subscriber=obj, values=values)

    def delete_model(self, request: HttpRequest, obj: Subscriber) -> None:
        services.subscriber_delete(subscriber=obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Subscriber]) -> None:
        for subscriber in queryset.order_by("pk"):
            services.subscriber_delete(subscriber=subscriber)

    @admin.display(description="activity")
    def activity(self, subscriber: Subscriber) -> SafeString | str:
        if subscriber.pk is None:
            return "-"
        return format_html(
            "{} · {}",
            changelist_link(Notification, "Notifications", subscriber__id__exact=subscriber.pk),
            changelist_link(Message, "Messages", subscriber__id__exact=subscriber.pk),
        )


def client_named(row: Subscriber | Topic) -> str:
    """A subscriber's id or a topic's key, and its client's name: both repeat across
    clients, and a member's pickers showed "ann" once for each client that has one."""
    return f"{row} ({row.client})"


class ClientNamedAutocomplete(AutocompleteJsonView):
    """The admin's autocomplete (the add-a-member page's pickers): a subscriber or topic
    named with its client, as its option is once chosen (TopicSubscriptionAdmin). The
    operator otherwise picked one of several "ann" at a guess, the form refusing the
    other client's."""

    def get_queryset(self) -> QuerySet[Any]:
        rows = super().get_queryset()
        return rows.select_related("client") if rows.model in (Subscriber, Topic) else rows

    def serialize_result(self, obj: Any, to_field_name: str) -> dict[str, Any]:
        result: dict[str, Any] = super().serialize_result(obj, to_field_name)
        if isinstance(obj, Subscriber | Topic):
            result["text"] = client_named(obj)
        return result


def _autocomplete(request: HttpRequest) -> HttpResponse:
    return ClientNamedAutocomplete.as_view(admin_site=admin.site)(request)


# Read by the site's URLs, built once every app's admin module is imported (as notify's
# login_form is set).
admin.site.autocomplete_view = _autocomplete  # type: ignore[method-assign]


class TopicSubscriptionForm(forms.ModelForm):
    class Meta:
        model = TopicSubscription
        fields = ["topic", "subscriber", "identifier", "name"]
        help_texts = {
            "identifier": "what the API names it by, unique within its topic; left empty,"
            " Novu's default, tk_<topic key>:si_<subscriberId>",
        }

    def clean(self) -> dict[str, Any]:
        # Subscriber ids repeat across clients, and the choices show only the id. Another
        # client's subscriber would be listed as a member by this client's topic API,
        # and skipped by its triggers.
        cleaned = super().clean()
        topic, subscriber = cleaned.get("topic"), cleaned.get("subscriber")
        if topic and subscriber and topic.client_id != subscriber.client_id:
            raise forms.ValidationError(
                f"'{subscriber}' is a subscriber of another client ({subscriber.client}) "
                f"than the topic's ({topic.client})."
            )
        return cleaned


class CheckedAutocomplete(AutocompleteSelect):
    """Django's autocomplete, shown again with a value that is no id (a form POSTed by
    hand): Django's own looks the value up to show it, unchecked, and the primary key's
    refusal of it was a 500 in place of the form's "Select a valid choice"."""

    def optgroups(self, name: str, value: list[str], attr: Any = None) -> Any:
        return super().optgroups(name, [v for v in value if self._an_id(v)], attr)

    def _an_id(self, value: str) -> bool:
        try:
            self.field.target_field.to_python(value)
        except ValidationError:
            return False
        return True


class SubscriptionRefused(Exception):
    """The API's subscribe refused the one added (services.topic_subscribe_named)."""


@admin.register(TopicSubscription)
class TopicSubscriptionAdmin(KeySearch, DeletedMeanwhileAdmin):
    """A topic's members, a page at a time (a topic may have thousands: no inline).

    Added as the API adds one (services.topic_subscribe_named), which locks the topic and
    the subscriber as their deletes lock them: Django's insert, unlocked, was refused at
    commit by the foreign key of one the API deleted meanwhile, a 500. Its identifier and
    name are given as a subscribe gives them, refused as it refuses them (an identifier
    another subscription of the topic has, a second one of the subscriber): an insert of
    Django's own gave one identifier to two subscriptions, one of them unreachable by it.
    Never changed: a membership is its pair, and a pair changed the same way would fail
    the same way; an identifier the API's callers name it by is not changed under them.
    A default one (none given: tk_<key>:si_<id>) is derived, not stored: renaming its
    topic or subscriber in their pages renames it too, as kept it would be the default of
    another subscriber given the old id since, and two subscriptions would answer to it."""

    form = TopicSubscriptionForm
    list_display = ["topic", "subscriber", "identifier_answered", "name", "client", "created_at"]
    list_select_related = ["topic__client", "subscriber"]
    autocomplete_fields = ["topic", "subscriber"]
    # What the search box matches (get_search_results), each exactly.
    search_fields = ["topic__key__exact", "subscriber__subscriber_id__exact"]
    show_full_result_count = False

    def search_matches(self, term: str) -> Q:
        # Joined to its topic and subscriber, 0.6 to 1.1 s a query over 400,000
        # subscriptions (the count, then the page).
        topics = Topic.objects.filter(key=term).values_list("pk", flat=True)
        subscribers = Subscriber.objects.filter(subscriber_id=term).values_list("pk", flat=True)
        return Q(topic_id__in=list(topics)) | Q(subscriber_id__in=list(subscribers))

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def get_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        if obj is None:
            return ["topic", "subscriber", "identifier", "name"]
        # Its identifier as the API answers it: Novu's default where none was given.
        return ["topic", "subscriber", "identifier_answered", "name", "created_at", "updated_at"]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return [] if obj is None else ["identifier_answered", "created_at", "updated_at"]

    @admin.display(description="identifier")
    def identifier_answered(self, subscription: TopicSubscription) -> str:
        return subscription.identifier or default_subscription_identifier(
            subscription.topic.key, subscription.subscriber.subscriber_id
        )

    def changeform_view(
        self,
        request: HttpRequest,
        object_id: str | None = None,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        try:
            return super().changeform_view(request, object_id, form_url, extra_context)
        except SubscriptionRefused as refused:  # rolled back: nothing was added
            self.message_user(request, str(refused), messages.ERROR)
            return HttpResponseRedirect(request.get_full_path())

    def formfield_for_foreignkey(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        if db_field.name in self.autocomplete_fields:
            kwargs["widget"] = CheckedAutocomplete(
                db_field, self.admin_site, using=kwargs.get("using")
            )
        field = super().formfield_for_foreignkey(db_field, request, **kwargs)
        if db_field.name in self.autocomplete_fields:
            # The chosen one, shown again with the form's error, named as the picker named it.
            field.queryset = field.queryset.select_related("client")
            field.label_from_instance = client_named
        return field

    @admin.display(description="client")
    def client(self, subscription: TopicSubscription) -> str:
        return str(subscription.topic.client)

    # Each topic's chosen members removed in a transaction of its own, the topic locked
    # first, as an unsubscribe removes them. Django's one DELETE of them by their ids
    # locked them in that order, an unsubscribe or a topic's delete in its index's: each
    # held one the other wanted next, and PostgreSQL failed one of them (a 503 or a 500).
    # A member's own delete page deletes one row, holding no other while it waits.
    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[TopicSubscription]) -> None:
        chosen: dict[int, list[int]] = {}
        for topic_id, pk in queryset.order_by("topic_id", "pk").values_list("topic_id", "pk"):
            chosen.setdefault(topic_id, []).append(pk)
        for topic_id, pks in chosen.items():
            services.topic_subscriptions_delete(topic_id=topic_id, subscription_ids=pks)

    def save_model(
        self, request: HttpRequest, obj: TopicSubscription, form: Any, change: bool
    ) -> None:
        topic, subscriber = obj.topic, obj.subscriber
        sid = subscriber.subscriber_id
        named = {sid: services.SubscriptionNamed(identifier=obj.identifier, name=obj.name)}
        try:
            _, missing, refused = services.topic_subscribe_named(
                topic=topic, subscriber_ids=[sid], named=named
            )
        except Topic.DoesNotExist:
            raise GoneMeanwhile(topic) from None
        if missing:
            raise GoneMeanwhile(subscriber)
        if refused:
            raise SubscriptionRefused(refused[sid][1])
        # Still locked: the page's answer links to it.
        obj.pk = TopicSubscription.objects.get(topic=topic, subscriber=subscriber).pk


class TopicForm(forms.ModelForm):
    def clean_key(self) -> str:
        key = self.cleaned_data["key"]
        if "key" in self.changed_data and not services.topic_key_valid(key):
            raise forms.ValidationError(services.topic_key_message(key))
        _taken_on_change(self, "key", "topic")
        return key


@admin.register(Topic)
class TopicAdmin(SavedAsTheApiSavesIt):
    """A topic's client is fixed once created: its members are that client's subscribers."""

    form = TopicForm

    list_display = ["key", "name", "client", "member_count", "created_at"]
    list_filter = ["client"]
    list_select_related = ["client"]
    # As a subscriber's: its full count joined every topic to every subscription, on
    # every page.
    show_full_result_count = False
    search_fields = ["key", "name"]
    ordering = ["-pk"]  # as a subscriber's: the member picker pages topics too

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return ["client"] if obj is not None else []

    def get_queryset(self, request: HttpRequest) -> QuerySet[Topic]:
        # Counted by a subquery, each topic of the page by the index: joined and grouped,
        # a filtered list's count (which Django strips a subquery from) joined every
        # member of every topic it counted (158 ms, not 1, for 20 topics of 10,000).
        members = (
            TopicSubscription.objects.filter(topic=OuterRef("pk"))
            .order_by()
            .values("topic")
            .annotate(count=Count("*"))
            .values("count")
        )
        count = Coalesce(Subquery(members), 0)
        return super().get_queryset(request).annotate(member_count=count)

    @admin.display(description="members", ordering="member_count")
    def member_count(self, topic: Topic) -> int:
        return topic.member_count  # type: ignore[attr-defined]

    def get_deleted_objects(
        self, objs: Any, request: HttpRequest
    ) -> tuple[list[str], dict[str, int], set[str], list[str]]:
        """What the confirmation page lists: the topics, and how many memberships go with
        them (Django's own listed every one: half a second and 0.5 MB for 5,000)."""
        topics = list(objs)
        members, perms_needed = _memberships(self, request, topic__in=topics)
        counts = {
            str(Topic._meta.verbose_name_plural): len(topics),
            str(TopicSubscription._meta.verbose_name_plural): members,
        }
        return [str(t) for t in topics], counts, perms_needed, []

    def update(self, obj: Topic, values: dict[str, Any]) -> None:
        services.topic_update(topic=obj, values=values)

    # Deleted as the API deletes one (services.topic_delete): locked first, so a member
    # being added meanwhile goes with it. Django's own delete removed the members it saw,
    # then the topic under the one added, whose foreign key refused it at commit, a 500.
    def delete_model(self, request: HttpRequest, obj: Topic) -> None:
        services.topic_delete(topic=obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Topic]) -> None:
        for topic in queryset.order_by("pk"):
            services.topic_delete(topic=topic)
