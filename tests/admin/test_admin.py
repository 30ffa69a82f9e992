from __future__ import annotations

import json
import re
import threading
import uuid
import warnings
from collections.abc import Callable
from datetime import UTC, datetime
from html import unescape
from pathlib import Path
from typing import Any

import pytest
from django.contrib import admin
from django.core.paginator import UnorderedObjectListWarning
from django.db import connection, models
from django.test.utils import CaptureQueriesContext
from django.urls import reverse, set_script_prefix
from django.utils import formats, timezone
from django.utils.html import escape

from config import pipeline
from messaging.models import Message
from notify.models import BridgeSync, BridgeWorkflow, Client, SecretKey, TriggerEvent
from notify.selectors import client_by_api_key
from notify.services import secret_key_create
from subscribers import services
from subscribers.models import Subscriber, Topic, TopicSubscription
from tests.conftest import InThread, ago, held, lock_waiters, on_sqlite, while_held
from tests.factories import (
    BridgeSyncFactory,
    BridgeWorkflowFactory,
    ClientFactory,
    MessageFactory,
    NotificationFactory,
    StepFactory,
    SubscriberFactory,
    TriggerEventFactory,
    api_for,
    client_with_key,
    novu_py_for,
)
from workflows import admin as workflows_admin
from workflows import registry
from workflows.models import Notification, Step
from workflows.services import operations

pytestmark = pytest.mark.django_db


def _url(obj: models.Model, view: str) -> str:
    meta = obj._meta
    args = [obj.pk] if view in ("change", "delete") else []
    return reverse(f"admin:{meta.app_label}_{meta.model_name}_{view}", args=args)


def _topic() -> Topic:
    subscriber = SubscriberFactory(subscriber_id="topic-member")
    topic = Topic.objects.create(client=subscriber.client, key="news-topic")
    TopicSubscription.objects.create(topic=topic, subscriber=subscriber)
    return topic


def _message() -> Any:
    return MessageFactory(recipient="ann@example.test", provider="inbox-provider")


# Each builder returns (the object, a text its pages must show).
OBJECTS: dict[str, Callable[[], tuple[models.Model, str]]] = {
    "notify_client": lambda: (ClientFactory(name="acme-corp"), "acme-corp"),
    "notify_secretkey": lambda: (client_with_key()[0].secret_keys.get(), "nk_"),
    "notify_bridgeworkflow": lambda: (BridgeWorkflowFactory(workflow_id="wf-signup"), "wf-signup"),
    "notify_bridgesync": lambda: (
        BridgeSync.objects.create(
            client=ClientFactory(), bridge_url="http://b.test/x", synced_at=timezone.now()
        ),
        "http://b.test/x",
    ),
    "notify_triggerevent": lambda: (TriggerEventFactory(transaction_id="tx-42"), "tx-42"),
    "subscribers_subscriber": lambda: (SubscriberFactory(subscriber_id="sub-7"), "sub-7"),
    "subscribers_topic": lambda: (_topic(), "news-topic"),
    "workflows_notification": lambda: (NotificationFactory(workflow_id="wf-admin"), "wf-admin"),
    "workflows_step": lambda: (StepFactory(step_id="step-admin"), "step-admin"),
    "messaging_message": lambda: (_message(), "inbox-provider"),
}


@pytest.mark.parametrize("name", OBJECTS)
def test_changelist_and_change_page_render(admin_client, name: str) -> None:
    obj, text = OBJECTS[name]()

    changelist = admin_client.get(_url(obj, "changelist"))
    change = admin_client.get(_url(obj, "change"))

    assert changelist.status_code == 200
    assert text in changelist.content.decode()
    assert change.status_code == 200
    assert text in change.content.decode()


def test_changelists_have_no_query_per_row(admin_client, django_assert_max_num_queries) -> None:
    for i in range(10):
        client, _ = client_with_key(name=f"tenant-{i}")
        subscriber = SubscriberFactory(client=client)
        topic = Topic.objects.create(client=client, key=f"topic-{i}")
        TopicSubscription.objects.create(topic=topic, subscriber=subscriber)
        BridgeWorkflowFactory(client=client)
        BridgeSync.objects.create(
            client=client, bridge_url=client.bridge_url, synced_at=timezone.now()
        )
        notification = NotificationFactory(
            trigger_event=TriggerEventFactory(client=client), subscriber=subscriber
        )
        MessageFactory(step=StepFactory(notification=notification, type="in_app"))

    for name in OBJECTS:
        # session, user, counts and filter choices: constant in the number of rows
        with django_assert_max_num_queries(8, info=name):
            response = admin_client.get(reverse(f"admin:{name}_changelist"))
        assert response.status_code == 200
        assert len(response.context["cl"].result_list) == 10, name


@pytest.mark.parametrize(
    ("name", "unread"),
    [
        (
            "notify_triggerevent",
            [
                f'"notify_triggerevent"."{column}"'
                for column in [
                    "to",
                    "payload",
                    "actor",
                    "overrides",
                    "error",
                    "forgotten",
                    "redelivered",
                ]
            ],
        ),
        ("workflows_notification", ['"workflows_notification"."error"']),
        ("messaging_message", ['"messaging_message"."content"', '"messaging_message"."error"']),
    ],
)
def test_a_list_of_rows_reads_no_large_column_it_does_not_show(
    admin_client, name: str, unread: list[str]
) -> None:
    """Each row of a page read and decoded its trigger's recipients (up to 1,000), its
    payload or its email's body, none of which the list shows (page of 100 triggers of
    1,000 recipients: 211 ms, 49 ms without). The row's own page still reads them."""
    obj, text = OBJECTS[name]()

    with CaptureQueriesContext(connection) as queries:
        response = admin_client.get(_url(obj, "changelist"))

    assert response.status_code == 200 and text in response.content.decode()
    read = " ".join(q["sql"] for q in queries)
    assert [column for column in unread if column in read] == []
    with CaptureQueriesContext(connection) as queries:
        assert admin_client.get(_url(obj, "change")).status_code == 200
    read = " ".join(q["sql"] for q in queries)
    assert [column for column in unread if column in read] == unread


@pytest.mark.parametrize(
    ("page", "shown"),
    [
        ("admin:notify_client_add", "as `Acme <hello@acme.example>`"),
        ("admin:subscribers_topicsubscription_add", "tk_<topic key>:si_<subscriberId>"),
    ],
)
def test_a_help_text_holding_angle_brackets_is_shown_as_written(
    admin_client, page: str, shown: str
) -> None:
    """The admin writes help texts out as HTML: the browser took the sender's address and
    the identifier's placeholders for tags, and the help read "as `Acme `" and "tk_:si_"."""
    html = admin_client.get(reverse(page)).content.decode()
    assert escape(shown) in html and shown not in html


def test_notifications_are_listed_newest_first(admin_client) -> None:
    """The list was ordered by id, a uuid4: in no order at all."""
    older = NotificationFactory(id=uuid.UUID(int=2))  # the ids in the other order
    newer = NotificationFactory(id=uuid.UUID(int=1))
    Notification.objects.filter(pk=older.pk).update(created_at=ago(60))

    response = admin_client.get(reverse("admin:workflows_notification_changelist"))

    assert list(response.context["cl"].result_list) == [newer, older]


def test_notification_page_shows_steps_in_order_and_messages(admin_client) -> None:
    notification = NotificationFactory(status=Notification.Status.RUNNING)
    StepFactory(notification=notification, step_id="later-step", position=1)
    inbox = StepFactory(
        notification=notification,
        step_id="inbox-step",
        type="in_app",
        position=0,
        status=Step.Status.COMPLETED,
    )
    MessageFactory(step=inbox, recipient="ann-inbox", read_at=timezone.now())

    html = admin_client.get(_url(notification, "change")).content.decode()

    assert html.index("inbox-step") < html.index("later-step")
    assert "ann-inbox" in html  # the messages table
    assert "&quot;read&quot;: true" in html  # the live in-app result


def test_notification_page_shows_its_messages_times_as_the_admin_shows_times(
    admin_client,
) -> None:
    """The messages table wrote each time as Python's str() does, "2026-03-05
    09:00:00.123456+00:00", beside the page's own times ("March 5, 2026, 9 a.m.")."""
    sent = datetime(2026, 3, 5, 9, 0, 0, 123456, tzinfo=UTC)
    notification = NotificationFactory(status=Notification.Status.RUNNING)
    inbox = StepFactory(notification=notification, type="in_app", status=Step.Status.COMPLETED)
    MessageFactory(step=inbox, sent_at=sent, seen_at=sent)
    Notification.objects.filter(pk=notification.pk).update(created_at=sent)

    html = admin_client.get(_url(notification, "change")).content.decode()

    shown = formats.localize(timezone.template_localtime(sent))
    assert str(sent) not in html
    assert html.count(shown) == 3  # sent, seen, and the notification's created at


def test_the_step_list_offers_every_type_a_step_is_recorded_with(admin_client) -> None:
    """A digest, throttle, tool or http_request step the bridge skipped is recorded (as
    skipped), but the list's type filter offered only the types norm runs."""
    StepFactory(type="digest", status=Step.Status.SKIPPED)
    url = reverse("admin:workflows_step_changelist")

    response = admin_client.get(url)

    [by_type] = [f for f in response.context["cl"].filter_specs if f.title == "type"]
    offered = {value for value, _ in by_type.lookup_choices}
    assert {"digest", "throttle", "tool", "http_request", "email", "delay"} <= offered


@pytest.mark.parametrize(
    ("query", "field"), [("tx-find-me", "transaction"), ("sub-find-me", "subscriber")]
)
def test_notification_search(admin_client, query: str, field: str) -> None:
    wanted = NotificationFactory(
        trigger_event=TriggerEventFactory(transaction_id="tx-find-me"),
        subscriber__subscriber_id="sub-find-me",
    )
    other = NotificationFactory()
    url = reverse("admin:workflows_notification_changelist")

    response = admin_client.get(url, {"q": query})

    results = list(response.context["cl"].result_list)
    assert results == [wanted], field
    assert other not in results


def _act(admin_client, action: str, *notifications: Notification):
    return admin_client.post(
        reverse("admin:workflows_notification_changelist"),
        {"action": action, "_selected_action": [str(n.pk) for n in notifications]},
        follow=True,
    )


@pytest.mark.parametrize("action", ["retry", "cancel"])
def test_an_action_on_every_notification_reads_only_those_it_may_act_on(
    admin_client, action: str
) -> None:
    """ "Select all" gives an action every notification the list holds, 2,000,000 of them
    unfiltered: each read every one into memory to keep those it may act on, the failed
    ones (a retry: 5 s and 120 MB for 200,000, before its budget's clock started) or the
    unfinished (a cancel). Those are read alone now, the others only counted."""
    status = Notification.Status.FAILED if action == "retry" else Notification.Status.RUNNING
    kept = NotificationFactory(status=status)
    NotificationFactory.create_batch(2, status=Notification.Status.COMPLETED)
    url = reverse("admin:workflows_notification_changelist")
    every = {"action": action, "select_across": "1", "index": "0", "_selected_action": [kept.pk]}

    with CaptureQueriesContext(connection) as queries:
        assert admin_client.post(url, every).status_code == 302

    read = [
        q["sql"] for q in queries if q["sql"].startswith('SELECT "workflows_notification"."id"')
    ]
    # Less the one acted on, read again by its id.
    wheres = [sql.partition(" WHERE ")[2] for sql in read]
    wheres = [w for w in wheres if not w.startswith('"workflows_notification"."id" = ')]
    assert wheres and not [w for w in wheres if '"workflows_notification"."status"' not in w], read
    said = unescape(admin_client.get(url).content.decode())
    done = {"retry": "Retried", "cancel": "Canceled"}[action]
    skipped = {"retry": "not failed", "cancel": "already finished"}[action]
    assert f"{done} 1 notification(s); 2 skipped ({skipped})." in said


def test_a_retry_reads_each_notification_once(admin_client) -> None:
    """Read without its workflow id, which the retry enqueues its next stage by (the
    queue is the workflow's), each retried notification was read again for it: one
    query more in five for each, within the action's budget."""
    chosen = NotificationFactory.create_batch(2, status=Notification.Status.FAILED)

    with CaptureQueriesContext(connection) as queries:
        assert "Retried 2 notification(s)" in _act(admin_client, "retry", *chosen).content.decode()

    read = [
        q["sql"]
        for q in queries
        if q["sql"].startswith('SELECT "workflows_notification"."id"')
        and ' WHERE "workflows_notification"."id" = ' in q["sql"]
    ]
    assert read == []


def test_retry_action_reopens_the_failed_step(
    admin_client, enqueued, django_capture_on_commit_callbacks
) -> None:
    notification = NotificationFactory(status=Notification.Status.FAILED, error="boom")
    step = StepFactory(notification=notification, status=Step.Status.FAILED, attempts=3)

    with django_capture_on_commit_callbacks(execute=True):
        response = _act(admin_client, "retry", notification)

    assert "Retried 1 notification(s)" in response.content.decode()
    notification.refresh_from_db()
    step.refresh_from_db()
    assert notification.status == Notification.Status.RUNNING and notification.error == ""
    assert step.status == Step.Status.SCHEDULED and step.attempts == 0
    assert enqueued.of(pipeline.MESSAGE) == [(step.pk,)]
    assert enqueued.of(pipeline.ECHO) == []


def test_retry_action_after_a_bridge_failure_asks_the_bridge_again(
    admin_client, enqueued, django_capture_on_commit_callbacks
) -> None:
    notification = NotificationFactory(status=Notification.Status.FAILED, error_code="BridgeDown")
    StepFactory(notification=notification, status=Step.Status.COMPLETED)

    with django_capture_on_commit_callbacks(execute=True):
        _act(admin_client, "retry", notification)

    notification.refresh_from_db()
    assert notification.status == Notification.Status.RUNNING
    assert enqueued.of(pipeline.ECHO) == [(str(notification.pk),)]
    assert enqueued.of(pipeline.MESSAGE) == []


def test_failed_notifications_are_listed_with_their_error_code_and_filtered_by_it_to_retry(
    admin_client, enqueued, django_capture_on_commit_callbacks
) -> None:
    """After a bridge outage an operator retries the notifications it failed, not those
    failed by a bug in the workflow's code (which would fail again): the list showed no
    error code and filtered by none, so telling them apart meant opening each one."""
    outage = [
        NotificationFactory(status=Notification.Status.FAILED, error_code="BridgeUnreachable")
        for _ in range(2)
    ]
    bug = NotificationFactory(
        status=Notification.Status.FAILED, error_code="StepExecutionFailedError"
    )
    url = reverse("admin:workflows_notification_changelist")

    listed = admin_client.get(url, {"status__exact": "failed"})
    assert "BridgeUnreachable" in listed.content.decode()  # a column of the list
    [codes] = [f for f in listed.context["cl"].filter_specs if f.title == "error code"]
    assert [value for value, _ in codes.lookup_choices] == [
        "BridgeUnreachable",
        "StepExecutionFailedError",
    ]
    narrowed = admin_client.get(url, {"status__exact": "failed", "error_code": "BridgeUnreachable"})
    assert set(narrowed.context["cl"].result_list) == set(outage)

    with django_capture_on_commit_callbacks(execute=True):
        response = _act(admin_client, "retry", *narrowed.context["cl"].result_list)

    assert "Retried 2 notification(s)" in response.content.decode()
    assert {n.status for n in Notification.objects.filter(pk__in=[n.pk for n in outage])} == {
        Notification.Status.RUNNING
    }
    bug.refresh_from_db()
    assert bug.status == Notification.Status.FAILED


def test_the_error_code_filter_offers_the_codes_of_failed_notifications_and_the_one_chosen(
    admin_client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The filter offers what an outage failed, newest first: a code left on a notification
    since retried and completed is not one to retry by, and a code older than those offered,
    reached by its URL, is still shown as the one the list is filtered by."""
    monkeypatch.setattr(workflows_admin.ErrorCodeFilter, "RECENT", 1)
    old = NotificationFactory(status=Notification.Status.FAILED, error_code="OldOutage")
    Notification.objects.filter(pk=old.pk).update(updated_at=ago(300))  # auto_now otherwise
    NotificationFactory(status=Notification.Status.FAILED, error_code="BridgeUnreachable")
    NotificationFactory(status=Notification.Status.COMPLETED, error_code="RetriedSince")
    url = reverse("admin:workflows_notification_changelist")

    def offered(**filters: str) -> list[str]:
        listed = admin_client.get(url, filters)
        [codes] = [f for f in listed.context["cl"].filter_specs if f.title == "error code"]
        return [value for value, _ in codes.lookup_choices]

    assert offered() == ["BridgeUnreachable"]
    assert offered(error_code="OldOutage") == ["BridgeUnreachable", "OldOutage"]


def test_messages_and_steps_are_filtered_by_channel_and_type(admin_client) -> None:
    """The filters of a fixed list of values (no SELECT DISTINCT over the table) narrow
    the list to the one chosen: "email" chosen after an SMTP outage, the in-app messages
    listed with them were taken for its bounces."""
    email = MessageFactory(step=StepFactory(type="email"))
    in_app = MessageFactory(step=StepFactory(type="in_app"))
    messages_url = reverse("admin:messaging_message_changelist")
    steps_url = reverse("admin:workflows_step_changelist")

    for url, filters, wanted in (
        (messages_url, {"channel": "email"}, [email]),
        (messages_url, {"channel": "in_app"}, [in_app]),
        (steps_url, {"type": "email"}, [email.step]),
        (steps_url, {}, [in_app.step, email.step]),
    ):
        listed = admin_client.get(url, filters)
        assert list(listed.context["cl"].result_list) == wanted, (url, filters)


def test_notifications_are_filtered_by_client(admin_client) -> None:
    """One client's bridge down, its failed notifications are the ones to retry: the list
    offers its clients to choose from, and the choice narrows it."""
    acme = NotificationFactory(trigger_event__client=ClientFactory(name="acme-corp"))
    NotificationFactory(trigger_event__client=ClientFactory(name="other-corp"))
    url = reverse("admin:workflows_notification_changelist")

    listed = admin_client.get(url)
    [clients] = [f for f in listed.context["cl"].filter_specs if f.title == "client"]
    chosen = [
        query for query in clients.choices(listed.context["cl"]) if query["display"] == "acme-corp"
    ]
    narrowed = admin_client.get(url + chosen[0]["query_string"])

    assert list(narrowed.context["cl"].result_list) == [acme]


def test_retry_action_skips_notifications_that_did_not_fail(
    admin_client, enqueued, django_capture_on_commit_callbacks
) -> None:
    done = NotificationFactory(status=Notification.Status.COMPLETED)

    with django_capture_on_commit_callbacks(execute=True):
        response = _act(admin_client, "retry", done)

    assert "Retried 0 notification(s); 1 skipped" in response.content.decode()
    done.refresh_from_db()
    assert done.status == Notification.Status.COMPLETED
    assert enqueued.calls == []


def test_a_retry_of_more_than_a_request_has_time_for_stops_in_time_and_says_what_it_left(
    admin_client, enqueued, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Retried one at a time, the thousands an outage failed took minutes, and gunicorn
    killed the request at 30 s: a 502, with no word of how many were retried."""
    monkeypatch.setattr(workflows_admin, "ACTION_BUDGET_SECONDS", 0)
    failed = [NotificationFactory(status=Notification.Status.FAILED) for _ in range(3)]

    response = _act(admin_client, "retry", *failed)

    said = unescape(response.content.decode())
    assert "Retried 1 notification(s); 0 skipped (not failed); 2 not reached in time" in said
    assert Notification.objects.filter(status=Notification.Status.FAILED).count() == 2
    # Run again on the same selection, it takes up the rest.
    again = unescape(_act(admin_client, "retry", *failed).content.decode())
    assert "Retried 1 notification(s); 1 skipped (not failed); 1 not reached in time" in again
    assert Notification.objects.filter(status=Notification.Status.FAILED).count() == 1


def test_cancel_action(admin_client) -> None:
    running = NotificationFactory(status=Notification.Status.RUNNING)
    done_step = StepFactory(notification=running, status=Step.Status.COMPLETED, position=0)
    scheduled = StepFactory(notification=running, status=Step.Status.SCHEDULED, position=1)
    completed = NotificationFactory(status=Notification.Status.COMPLETED)

    response = _act(admin_client, "cancel", running, completed)

    assert "Canceled 1 notification(s); 1 skipped" in response.content.decode()
    running.refresh_from_db()
    completed.refresh_from_db()
    assert running.status == Notification.Status.CANCELED
    assert completed.status == Notification.Status.COMPLETED
    assert Step.objects.get(pk=scheduled.pk).status == Step.Status.CANCELED
    assert Step.objects.get(pk=done_step.pk).status == Step.Status.COMPLETED


def test_an_action_that_changed_nothing_says_so_as_a_warning(admin_client, enqueued) -> None:
    """A retry or a cancel that took none of the selection is no success: shown as one,
    an operator read "Retried 0" in green and took the outage's notifications for retried."""
    done = NotificationFactory(status=Notification.Status.COMPLETED)
    failed = NotificationFactory(status=Notification.Status.FAILED)
    StepFactory(notification=failed, status=Step.Status.FAILED)

    for action, notification, level, said in (
        ("retry", done, "warning", "Retried 0 notification(s)"),
        ("cancel", done, "warning", "Canceled 0 notification(s)"),
        ("retry", failed, "success", "Retried 1 notification(s)"),
        ("cancel", failed, "success", "Canceled 1 notification(s)"),
    ):
        page = unescape(_act(admin_client, action, notification).content.decode())
        assert f'<li class="{level}">{said}' in page, (action, level)


def test_the_cancel_action_goes_a_chunk_at_a_time_and_stops_at_its_budget(
    admin_client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """All of a broadcast's notifications selected were canceled in one transaction,
    every row locked until the end, and past gunicorn's 30 s none at all (a 502)."""
    monkeypatch.setattr(operations, "CANCEL_CHUNK", 2)
    monkeypatch.setattr(workflows_admin, "ACTION_BUDGET_SECONDS", 0)
    running = NotificationFactory.create_batch(3, status=Notification.Status.RUNNING)
    completed = NotificationFactory(status=Notification.Status.COMPLETED)

    first = unescape(_act(admin_client, "cancel", *running, completed).content.decode())
    assert "Canceled 2 notification(s); 1 skipped (already finished); 1 not reached" in first
    assert Notification.objects.filter(status=Notification.Status.RUNNING).count() == 1
    # Run again on the same selection, it takes up the rest.
    again = unescape(_act(admin_client, "cancel", *running, completed).content.decode())
    assert "Canceled 1 notification(s); 3 skipped (already finished)." in again
    assert not Notification.objects.filter(status=Notification.Status.RUNNING).exists()


def test_client_page_never_shows_the_secret_key(admin_client) -> None:
    client, key = client_with_key()
    secret = client.secret_keys.get()

    html = admin_client.get(_url(client, "change")).content.decode()

    assert secret.prefix in html
    assert key not in html
    assert key[len(secret.prefix) :] not in html
    assert secret.key_hash not in html
    assert secret.encrypted not in html


def test_revoke_keys_action(admin_client) -> None:
    client, key = client_with_key()
    _, other_key = client_with_key()

    response = admin_client.post(
        reverse("admin:notify_secretkey_changelist"),
        {"action": "revoke", "_selected_action": [str(client.secret_keys.get().pk)]},
        follow=True,
    )

    assert "Revoked 1 key(s)" in response.content.decode()
    assert client_by_api_key(key=key) is None
    assert client_by_api_key(key=other_key) is not None


def test_create_key_action_shows_a_working_key_once(admin_client) -> None:
    client = ClientFactory(secret_key=False)

    response = admin_client.post(
        reverse("admin:notify_client_changelist"),
        {"action": "create_key", "_selected_action": [str(client.pk)]},
    )

    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]
    secret = SecretKey.objects.get(client=client)
    html = response.content.decode()
    key = html.split("<code>")[1].split("</code>")[0]
    assert key.startswith(secret.prefix)
    assert client_by_api_key(key=key) == client


def test_creating_a_key_takes_the_permission_to_add_secret_keys(client, django_user_model) -> None:
    """A key is a tenant's whole API: a user who may change clients (their rate, their
    sender policy) but not add secret keys must not mint one from the clients' list."""
    from django.contrib.auth.models import Permission

    tenant = ClientFactory(secret_key=False)
    editor = django_user_model.objects.create_user("editor", password="x", is_staff=True)
    editor.user_permissions.add(
        *Permission.objects.filter(codename__in=["view_client", "change_client"])
    )
    client.force_login(editor)
    create = {"action": "create_key", "_selected_action": [str(tenant.pk)]}
    changelist = reverse("admin:notify_client_changelist")

    assert "create_key" not in client.get(changelist).content.decode()
    response = client.post(changelist, create)
    assert "<code>" not in response.content.decode()
    assert not SecretKey.objects.filter(client=tenant).exists()

    editor.user_permissions.add(Permission.objects.get(codename="add_secretkey"))
    response = client.post(changelist, create)
    assert response.status_code == 200 and "<code>" in response.content.decode()
    assert SecretKey.objects.filter(client=tenant).count() == 1


# --- what the admin review found ----------------------------------------------------------


def test_retry_leaves_a_notification_of_a_canceled_trigger_alone(
    admin_client, enqueued, django_capture_on_commit_callbacks
) -> None:
    notification = NotificationFactory(status=Notification.Status.FAILED)
    StepFactory(notification=notification, status=Step.Status.FAILED)
    notification.trigger_event.canceled_at = timezone.now()
    notification.trigger_event.save()

    with django_capture_on_commit_callbacks(execute=True):
        response = _act(admin_client, "retry", notification)

    assert "Retried 0 notification(s)" in response.content.decode()
    assert enqueued.calls == []


def test_a_retry_refused_for_a_canceled_trigger_is_not_said_to_be_of_one_that_did_not_fail(
    admin_client, enqueued
) -> None:
    """The operator selected failed notifications and was told each was skipped as
    "not failed", though it was failed and left so because its trigger was canceled."""
    notification = NotificationFactory(
        status=Notification.Status.FAILED, trigger_event__canceled_at=timezone.now()
    )

    response = _act(admin_client, "retry", notification)

    said = unescape(response.content.decode())
    assert "Retried 0 notification(s); 0 skipped (not failed); 1 not retried" in said
    assert "(its trigger canceled, or no longer failed)" in said


def test_a_retry_refused_for_a_notification_retried_meanwhile_is_not_said_to_be_canceled(
    admin_client, enqueued, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Retried by another operator between the action's read and its retry, a
    notification of a live trigger was said to be left failed as one of a canceled
    trigger, which it is neither."""
    notification = NotificationFactory(status=Notification.Status.FAILED)
    retry = operations.notification_retry

    def retried_meanwhile(*, notification: Notification) -> bool:
        Notification.objects.filter(pk=notification.pk).update(status=Notification.Status.RUNNING)
        return retry(notification=notification)

    monkeypatch.setattr(operations, "notification_retry", retried_meanwhile)

    said = unescape(_act(admin_client, "retry", notification).content.decode())

    assert (
        "Retried 0 notification(s); 0 skipped (not failed); 1 not retried (its trigger "
        "canceled, or no longer failed)."
    ) in said


def test_pipeline_rows_cannot_be_deleted_by_hand(admin_client) -> None:
    step = StepFactory(status=Step.Status.COMPLETED)
    for obj in (step, step.notification, MessageFactory(), TriggerEventFactory()):
        assert admin_client.get(_url(obj, "delete")).status_code == 403
    assert Step.objects.filter(pk=step.pk).exists()


def test_a_control_schema_the_bridge_got_wrong_is_a_form_error(admin_client) -> None:
    workflow = BridgeWorkflowFactory(
        steps=[{"stepId": "mail", "type": "email", "controlSchema": {"type": "nope"}}]
    )
    response = admin_client.post(_url(workflow, "change"), {"controls": '{"mail": {"a": 1}}'})
    assert response.status_code == 200  # the form again, with the error
    assert "cannot be applied" in response.content.decode()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("allowed_bridge_urls", "5"),
        ("allowed_bridge_urls", '["not a url"]'),
        ("workflow_allowlist", '"welcome"'),
    ],
)
def test_a_client_list_field_must_be_a_list_of_strings(
    admin_client, field: str, value: str
) -> None:
    client = ClientFactory()
    body = {
        "name": client.name,
        "is_active": "on",
        "bridge_url": client.bridge_url,
        "allowed_bridge_urls": "[]",
        "workflow_allowlist": "[]",
        field: value,
        # the inlines' management forms
        "secret_keys-TOTAL_FORMS": "0",
        "secret_keys-INITIAL_FORMS": "0",
        "bridge_workflows-TOTAL_FORMS": "0",
        "bridge_workflows-INITIAL_FORMS": "0",
    }
    response = admin_client.post(_url(client, "change"), body)
    assert response.status_code == 200 and "errorlist" in response.content.decode()
    client.refresh_from_db()
    assert client.allowed_bridge_urls == [] and client.workflow_allowlist == []


def _client_form(client: Any, **fields: str) -> dict[str, str]:
    return {
        "name": client.name,
        "is_active": "on",
        "bridge_url": client.bridge_url,
        "allowed_bridge_urls": "[]",
        "workflow_allowlist": "[]",
        "secret_keys-TOTAL_FORMS": "0",
        "secret_keys-INITIAL_FORMS": "0",
        "bridge_workflows-TOTAL_FORMS": "0",
        "bridge_workflows-INITIAL_FORMS": "0",
        **fields,
    }


def test_a_client_allowlist_entry_typed_with_white_space_is_stored_trimmed(
    admin_client,
) -> None:
    """A trigger's name is read trimmed: ` welcome` in the allowlist, stored as typed,
    let no trigger of welcome through ("This client may not trigger 'welcome'"). An
    entry of white space alone allows nothing, and is refused as an empty one is."""
    client = ClientFactory()
    body = _client_form(client, workflow_allowlist='[" welcome", "digest\\n"]')
    response = admin_client.post(_url(client, "change"), body)
    assert response.status_code == 302, response.content.decode()
    client.refresh_from_db()
    assert client.workflow_allowlist == ["welcome", "digest"]

    response = admin_client.post(
        _url(client, "change"), _client_form(client, workflow_allowlist='[" "]')
    )
    assert response.status_code == 200 and "errorlist" in response.content.decode()


def test_a_rate_limit_of_zero_is_refused_not_read_as_no_limit(admin_client) -> None:
    """0 was saved, and the trigger API reads a rate it cannot count with as none: the
    operator who set it to stop a client's triggers let through any number."""
    client = ClientFactory(rate_limit_per_minute=10)

    response = admin_client.post(
        _url(client, "change"), _client_form(client, rate_limit_per_minute="0")
    )

    assert response.status_code == 200
    assert "greater than or equal to 1" in response.content.decode()
    client.refresh_from_db()
    assert client.rate_limit_per_minute == 10


def test_a_client_bridge_on_a_self_hosted_host_name_is_saved(admin_client) -> None:
    """docker-compose's service names have no top-level domain, which URLField wants."""
    client = ClientFactory()
    body = _client_form(
        client,
        bridge_url="http://web:8000/api/novu",
        allowed_bridge_urls='["http://bridge:4000/api/novu", "http://localhost:4000/x"]',
    )
    response = admin_client.post(_url(client, "change"), body)
    assert response.status_code == 302, response.content.decode()
    client.refresh_from_db()
    assert client.bridge_url == "http://web:8000/api/novu"
    assert client.allowed_bridge_urls == ["http://bridge:4000/api/novu", "http://localhost:4000/x"]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("bridge_url", "ftp://bridge.example.com/api"),
        ("bridge_url", "http://bad host/api"),
        ("allowed_bridge_urls", '["ftp://bridge:4000/api"]'),
    ],
)
def test_a_client_bridge_url_must_be_http(admin_client, field: str, value: str) -> None:
    client = ClientFactory()
    response = admin_client.post(_url(client, "change"), _client_form(client, **{field: value}))
    assert response.status_code == 200 and "errorlist" in response.content.decode()
    client.refresh_from_db()
    assert client.bridge_url == "http://bridge.test/bridge" and client.allowed_bridge_urls == []


def test_a_clients_sender_policy_is_saved_from_its_page(admin_client) -> None:
    client = ClientFactory()
    body = _client_form(
        client,
        email_from=" Acme Shop <hello@zürich.example> ",
        email_from_domains='["acme.example", " xn--zrich-kva.example "]',
    )
    response = admin_client.post(_url(client, "change"), body)
    assert response.status_code == 302, response.content.decode()
    client.refresh_from_db()
    assert client.email_from == "Acme Shop <hello@zürich.example>"
    assert client.email_from_domains == ["acme.example", "xn--zrich-kva.example"]


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"email_from": "hello"}, "&#x27;hello&#x27; is no email address"),
        ({"email_from": "a@acme.example, b@acme.example"}, "is no email address"),
        ({"email_from": "Acme, Inc. <hello@acme.example>"}, "is no email address"),
        (
            {"email_from": "Acme <hello@globex.example>", "email_from_domains": '["acme.example"]'},
            "hello@globex.example is not within the client&#x27;s sender domains (acme.example)",
        ),
        (
            {"email_from": "hello@mail.acme.example", "email_from_domains": '["acme.example"]'},
            "is not within the client&#x27;s sender domains",
        ),
        ({"email_from_domains": '"acme.example"'}, "Use a list of domain names"),
        ({"email_from_domains": '["*.acme.example"]'}, "is no domain name"),
        # A label of 64 characters: DNS holds 63 at most.
        ({"email_from_domains": f'["{"a" * 64}.example"]'}, "is no domain name"),
        ({"email_from_domains": '["hello@acme.example"]'}, "is an address"),
    ],
)
def test_a_clients_sender_policy_is_checked_before_it_is_saved(
    admin_client, fields: dict[str, str], error: str
) -> None:
    """A From the SMTP server refuses failed every email of the client, one by one; a
    default From outside the client's own domains went around them."""
    client = ClientFactory()
    response = admin_client.post(_url(client, "change"), _client_form(client, **fields))
    assert response.status_code == 200 and "errorlist" in response.content.decode()
    assert error in response.content.decode()
    client.refresh_from_db()
    assert (client.email_from, client.email_from_domains) == ("", [])


def test_cancel_a_trigger_from_the_admin_stops_its_fan_out(admin_client) -> None:
    event = TriggerEventFactory()
    response = admin_client.post(
        reverse("admin:notify_triggerevent_changelist"),
        {"action": "cancel", "_selected_action": [str(event.pk)]},
        follow=True,
    )
    assert "Canceled 1 trigger(s)" in response.content.decode()
    event.refresh_from_db()
    assert event.canceled_at is not None


def test_cancelling_triggers_counts_those_it_stopped_apart_from_those_already_stopped(
    admin_client,
) -> None:
    """A trigger canceled before has nothing left to stop: counted as canceled again, an
    operator read every one selected as stopped by this run, and a run that stopped none
    as a success."""
    url = reverse("admin:notify_triggerevent_changelist")
    done, fresh = TriggerEventFactory(), TriggerEventFactory()

    def cancel(*events: TriggerEvent) -> str:
        selected = {"action": "cancel", "_selected_action": [str(e.pk) for e in events]}
        return unescape(admin_client.post(url, selected, follow=True).content.decode())

    cancel(done)
    said = cancel(done, fresh)
    assert '<li class="success">Canceled 1 trigger(s); 1 had nothing left to stop.' in said
    said = cancel(done)
    assert '<li class="warning">Canceled 0 trigger(s); 1 had nothing left to stop.' in said


def test_cancelling_triggers_stops_at_its_budget_and_says_how_many_it_left(
    admin_client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each trigger selected is a few queries however soon its notifications' cancel
    hands the rest to a task: a client's 50,000 selected ("Select all") took minutes,
    some 20 ms a trigger, and gunicorn killed the request at 30 s, a 502 that said
    nothing of how far it got. Run again on the same selection, it goes on with those
    not canceled yet."""
    monkeypatch.setattr(workflows_admin, "ACTION_BUDGET_SECONDS", 0)
    url = reverse("admin:notify_triggerevent_changelist")
    events = TriggerEventFactory.create_batch(2)

    def cancel() -> str:
        selected = {"action": "cancel", "_selected_action": [str(e.pk) for e in events]}
        return unescape(admin_client.post(url, selected, follow=True).content.decode())

    said = cancel()
    assert "Canceled 1 trigger(s); 0 had nothing left to stop; 1 not reached in time" in said
    assert TriggerEvent.objects.filter(canceled_at__isnull=True).count() == 1
    said = cancel()
    assert "Canceled 1 trigger(s); 0 had nothing left to stop; 1 not reached in time" in said
    assert not TriggerEvent.objects.filter(canceled_at__isnull=True).exists()


def test_cancelling_every_trigger_reads_as_rows_only_those_it_reaches(
    admin_client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ "Select all" gives the action every trigger the list holds, 1,000,000 of them
    unfiltered: each was read as a row with its client before the first was canceled
    (200,000: 32 s, past gunicorn's 30 s, none canceled). Their keys are read instead,
    and a trigger as a row (by its cancel) only once reached."""
    from django.db.models.signals import post_init

    monkeypatch.setattr(workflows_admin, "ACTION_BUDGET_SECONDS", 0)
    events = TriggerEventFactory.create_batch(3)
    url = reverse("admin:notify_triggerevent_changelist")
    every = {"action": "cancel", "select_across": "1", "index": "0", "_selected_action": [1]}
    rows: list[TriggerEvent] = []

    def made(sender: Any, instance: TriggerEvent, **kwargs: Any) -> None:
        rows.append(instance)

    post_init.connect(made, sender=TriggerEvent)
    try:
        assert admin_client.post(url, every).status_code == 302
    finally:
        post_init.disconnect(made, sender=TriggerEvent)

    assert len(rows) == 1  # the one canceled, by the cancel's own read
    assert TriggerEvent.objects.filter(canceled_at__isnull=False).count() == 1
    said = unescape(admin_client.get(url).content.decode())
    assert "Canceled 1 trigger(s); 0 had nothing left to stop; 2 not reached in time" in said
    assert {e.pk for e in events} == set(TriggerEvent.objects.values_list("pk", flat=True))


def test_list_filters_read_no_distinct_values_of_a_whole_table(
    admin_client, django_assert_max_num_queries
) -> None:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    MessageFactory()
    for name in ("workflows_notification", "workflows_step", "messaging_message"):
        with CaptureQueriesContext(connection) as queries:
            assert admin_client.get(reverse(f"admin:{name}_changelist")).status_code == 200
        assert not [q for q in queries if "DISTINCT" in q["sql"].upper()], name


def test_a_topic_page_does_not_grow_with_its_members(admin_client) -> None:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    def queries_for(members: int) -> int:
        topic = Topic.objects.create(client=ClientFactory(), key=f"topic-{members}")
        for subscriber in SubscriberFactory.create_batch(members, client=topic.client):
            TopicSubscription.objects.create(topic=topic, subscriber=subscriber)
        with CaptureQueriesContext(connection) as queries:
            assert admin_client.get(_url(topic, "change")).status_code == 200
        return len(queries)

    queries_for(1)  # the first page load of a test reads the user and content types
    assert queries_for(30) == queries_for(3)


def test_the_admin_answers_without_its_trailing_slash(client) -> None:
    # README and `make run` print http://127.0.0.1:8000/admin; APPEND_SLASH is off.
    response = client.get("/admin")

    assert response.status_code == 302
    assert response["Location"] == "/admin/"
    assert client.get(response["Location"]).status_code == 302  # on to the login page
    # Behind a proxy at /novu: Django's WSGI handler sets the prefix from SCRIPT_NAME
    # (the test client does not).
    set_script_prefix("/novu/")
    try:
        prefixed = client.get("/admin", SCRIPT_NAME="/novu")
    finally:
        set_script_prefix("/")
    assert (prefixed.status_code, prefixed["Location"]) == (302, "/novu/admin/")


def _hrefs(response: Any) -> set[str]:
    import html
    import re

    assert response.status_code == 200
    return {html.unescape(h) for h in re.findall(r'href="([^"]+)"', response.content.decode())}


def test_an_operator_follows_a_notification_by_its_links(admin_client) -> None:
    """From a trigger to its notifications, a notification to its messages, a message
    to its notification and subscriber, a subscriber to its notifications and messages."""
    notification = NotificationFactory()
    message = MessageFactory(step=StepFactory(notification=notification, type="in_app"))
    subscriber = notification.subscriber
    # The same trigger's other recipient, and another trigger: filtered out of the lists.
    sibling = NotificationFactory(trigger_event=notification.trigger_event)
    MessageFactory(step=StepFactory(notification=NotificationFactory(), type="in_app"))

    trigger_page = _hrefs(admin_client.get(_url(notification.trigger_event, "change")))
    to_list = [h for h in trigger_page if h.startswith(_url(notification, "changelist") + "?")]
    assert len(to_list) == 1, trigger_page
    listed = admin_client.get(to_list[0]).context["cl"].result_list
    assert sorted(n.pk for n in listed) == sorted([notification.pk, sibling.pk])

    assert _url(message, "change") in _hrefs(admin_client.get(_url(notification, "change")))
    assert _url(message, "change") in _hrefs(admin_client.get(_url(message.step, "change")))
    message_page = _hrefs(admin_client.get(_url(message, "change")))
    assert {_url(notification, "change"), _url(subscriber, "change")} <= message_page

    subscriber_page = _hrefs(admin_client.get(_url(subscriber, "change")))
    for model_obj in (notification, message):
        changelist = _url(model_obj, "changelist")
        links = [h for h in subscriber_page if h.startswith(changelist + "?")]
        assert len(links) == 1, (changelist, subscriber_page)
        assert list(admin_client.get(links[0]).context["cl"].result_list) == [model_obj]


def test_json_of_pipeline_rows_is_shown_indented(admin_client) -> None:
    """An email's body is a page of markup: on one line, as Django prints a JSON field,
    an operator could not read what was sent."""

    from django.utils.html import escape

    body = {"body": "<p>Hello Ann</p>\n<p>Welcome</p>", "subject": "Hi"}
    step = StepFactory(
        outputs=body, providers={"smtp": {"from": "a@b.test"}}, result={"sent": True}
    )
    message = MessageFactory(step=StepFactory(type="in_app"), content=body)
    pages = {
        step: [step.outputs, step.providers, step.result],
        message: [message.content],
        step.notification: [step.notification.trigger_event.payload],
        step.notification.trigger_event: [step.notification.trigger_event.payload],
    }
    for obj, values in pages.items():
        html = admin_client.get(_url(obj, "change")).content.decode()
        for value in values:
            indented = escape(json.dumps(value, indent=2, sort_keys=True))
            assert f"<pre>{indented}</pre>" in html, (obj._meta.model_name, value)


@pytest.mark.parametrize(
    ("changelist", "query"),
    [
        ("workflows_notification", "ann@example.test"),
        ("workflows_notification", "tx-wanted"),
        ("workflows_notification", "wf-wanted"),
        ("workflows_notification", "sub-wanted"),
        ("notify_triggerevent", "tx-wanted"),
        ("notify_triggerevent", "wf-wanted"),
        ("messaging_message", "tx-wanted"),
        ("messaging_message", "sub-wanted"),
        ("messaging_message", "ann@example.test"),
        ("messaging_message", "provider-wanted"),
        ("messaging_message", "smtp-wanted"),
        ("workflows_step", "sub-wanted"),
        ("workflows_step", "step-wanted"),
        ("subscribers_subscriber", "sub-wanted"),
        ("subscribers_subscriber", "ann@example.test"),
    ],
)
def test_search_by_what_an_operator_has(admin_client, changelist: str, query: str) -> None:
    """The subscriber's id or email, the trigger's transactionId, the workflow's id, a
    message's provider (after a provider's outage, what went through it)."""
    event = TriggerEventFactory(transaction_id="tx-wanted", workflow_id="wf-wanted")
    notification = NotificationFactory(
        trigger_event=event,
        subscriber__subscriber_id="sub-wanted",
        subscriber__email="ann@example.test",
    )
    message = MessageFactory(
        step=StepFactory(notification=notification, type="email", step_id="step-wanted"),
        recipient="ann@example.test",
        provider_message_id="provider-wanted",
        provider="smtp-wanted",
    )
    MessageFactory()  # another trigger's, to another subscriber
    wanted = {
        "workflows_notification": notification,
        "workflows_step": message.step,
        "notify_triggerevent": event,
        "messaging_message": message,
        "subscribers_subscriber": notification.subscriber,
    }[changelist]

    response = admin_client.get(reverse(f"admin:{changelist}_changelist"), {"q": query})

    assert list(response.context["cl"].result_list) == [wanted]


@pytest.mark.parametrize(
    ("changelist", "query"),
    [
        ("workflows_notification", "sub-wanted"),
        ("workflows_notification", "tx-wanted"),
        ("messaging_message", "sub-wanted"),
        ("messaging_message", "tx-wanted"),
        ("workflows_step", "sub-wanted"),
    ],
)
def test_a_search_counts_its_rows_without_joining_every_row_to_its_subscriber_and_trigger(
    admin_client, changelist: str, query: str
) -> None:
    """Django's search ORs its fields over a join of every row to the related rows that
    hold them, which no index serves: over 200,000 rows, 0.9 s a page of notifications,
    2 s of messages, 1.2 s of steps. The subscriber and the trigger are looked up first,
    and the rows counted and read by their keys."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    notification = NotificationFactory(
        trigger_event__transaction_id="tx-wanted", subscriber__subscriber_id="sub-wanted"
    )
    message = MessageFactory(step=StepFactory(notification=notification))
    MessageFactory()
    with CaptureQueriesContext(connection) as queries:
        response = admin_client.get(reverse(f"admin:{changelist}_changelist"), {"q": query})

    wanted = {
        "workflows_notification": notification,
        "messaging_message": message,
        "workflows_step": message.step,
    }[changelist]
    assert list(response.context["cl"].result_list) == [wanted]
    (count,) = [q["sql"] for q in queries if q["sql"].startswith('SELECT COUNT(*) AS "__count"')]
    assert f'FROM "{changelist}" WHERE' in count, count


@pytest.mark.parametrize("query", ["tx-wanted", "wf-wanted"])
def test_the_trigger_search_compares_its_fields_as_stored(admin_client, query: str) -> None:
    """Matched in any case, each field's UPPER() was computed for every trigger ever
    stored, twice a search (its count and its page): 220 ms each over 200,000 triggers,
    50 ms compared as stored. A transactionId is unique as given, case and all."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    event = TriggerEventFactory(transaction_id="tx-wanted", workflow_id="wf-wanted")
    TriggerEventFactory()
    url = reverse("admin:notify_triggerevent_changelist")
    with CaptureQueriesContext(connection) as queries:
        response = admin_client.get(url, {"q": f" {query} "})

    assert list(response.context["cl"].result_list) == [event]
    searched = [
        q["sql"] for q in queries if '"notify_triggerevent"' in q["sql"] and query in q["sql"]
    ]
    assert searched and not [sql for sql in searched if "UPPER(" in sql], searched


def test_a_topic_member_must_be_a_subscriber_of_the_topics_client(admin_client) -> None:
    """Subscriber ids repeat across clients and the admin shows only the id: another
    client's subscriber put in a topic was listed by this client's topic API (a leak)
    and never reached by its triggers."""
    topic = Topic.objects.create(client=ClientFactory(), key="news")
    own = SubscriberFactory(client=topic.client, subscriber_id="ann")
    foreign = SubscriberFactory(subscriber_id="ann")
    url = reverse("admin:subscribers_topicsubscription_add")

    refused = admin_client.post(url, {"topic": topic.pk, "subscriber": foreign.pk})
    accepted = admin_client.post(url, {"topic": topic.pk, "subscriber": own.pk})

    assert refused.status_code == 200 and "another client" in refused.content.decode()
    assert accepted.status_code == 302
    assert list(topic.subscribers.all()) == [own]


def test_a_members_pickers_and_list_name_each_subscriber_and_topics_client(admin_client) -> None:
    """A subscriberId and a topic key repeat across clients: the add-a-member page's
    pickers offered "ann" and "news" once for each client, nothing telling them apart,
    and the form refused the other client's without saying whose either was."""
    acme, beta = ClientFactory(name="Acme"), ClientFactory(name="Beta")
    for client in (acme, beta):
        SubscriberFactory(client=client, subscriber_id="ann")
        Topic.objects.create(client=client, key="news")
    picker = f"{reverse('admin:autocomplete')}?app_label=subscribers&model_name=topicsubscription"

    offered = {
        field: sorted(
            r["text"]
            for r in admin_client.get(f"{picker}&field_name={field}&term={term}").json()["results"]
        )
        for field, term in (("subscriber", "ann"), ("topic", "news"))
    }

    assert offered == {
        "subscriber": ["ann (Acme)", "ann (Beta)"],
        "topic": ["news (Acme)", "news (Beta)"],
    }
    news = Topic.objects.get(client=acme)
    beta_ann = Subscriber.objects.get(client=beta)
    refused = admin_client.post(
        reverse("admin:subscribers_topicsubscription_add"),
        {"topic": news.pk, "subscriber": beta_ann.pk},
    ).content.decode()
    assert "another client (Beta) than the topic&#x27;s (Acme)" in refused
    assert f'<option value="{beta_ann.pk}" selected>ann (Beta)</option>' in refused
    services.topic_subscribe(topic=news, subscriber_ids=["ann"])
    listed = admin_client.get(reverse("admin:subscribers_topicsubscription_changelist"))
    assert '<td class="field-client">Acme</td>' in listed.content.decode()


@pytest.mark.parametrize(("topic", "subscriber"), [("abc", "own"), ("own", "1.5"), ("", "x")])
def test_a_topic_member_whose_topic_or_subscriber_is_no_id_is_the_forms_error(
    admin_client, topic: str, subscriber: str
) -> None:
    """A form POSTed by hand: the page shown again looked each value up to show it in its
    autocomplete, and the primary key's refusal of one that is no number was a 500."""
    ann = SubscriberFactory(subscriber_id="ann")
    news = Topic.objects.create(client=ann.client, key="news")
    body = {
        "topic": str(news.pk) if topic == "own" else topic,
        "subscriber": str(ann.pk) if subscriber == "own" else subscriber,
    }

    response = admin_client.post(reverse("admin:subscribers_topicsubscription_add"), body)

    html = response.content.decode()
    assert response.status_code == 200
    assert "Select a valid choice" in html or "This field is required" in html
    assert not TopicSubscription.objects.exists()
    if topic == "own":  # the valid one is shown chosen, as before, with its client
        assert f'<option value="{news.pk}" selected>news ({ann.client.name})</option>' in html


def test_a_subscriber_or_topic_keeps_its_client(admin_client) -> None:
    """Moved to another client, a subscriber's notifications, messages and topics, or a
    topic's members, would stay with the first."""
    subscriber = SubscriberFactory(subscriber_id="ann")
    topic = Topic.objects.create(client=subscriber.client, key="news")
    first, other = subscriber.client_id, ClientFactory()

    admin_client.post(
        _url(subscriber, "change"),
        {"client": other.pk, "subscriber_id": "ann", "email": "ann@example.test", "data": "{}"},
    )
    admin_client.post(_url(topic, "change"), {"client": other.pk, "key": "news", "name": "News"})

    subscriber.refresh_from_db()
    topic.refresh_from_db()
    assert (subscriber.email, subscriber.client_id) == ("ann@example.test", first)
    assert (topic.name, topic.client_id) == ("News", first)


def test_deleting_a_client_with_a_history_is_refused_without_reading_it(admin_client) -> None:
    """Django's delete page listed every notification, step and message of the client,
    at a query per notification (a client's whole history), only to refuse: the
    pipeline's rows have no delete permission."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    def delete_page(notifications: int) -> tuple[int, Any]:
        client = ClientFactory()
        event = TriggerEventFactory(client=client)
        for _ in range(notifications):
            NotificationFactory(trigger_event=event)
        with CaptureQueriesContext(connection) as queries:
            response = admin_client.get(_url(client, "delete"))
        return len(queries), (client, response)

    delete_page(1)  # the first page load of a test reads the user and content types
    few, _ = delete_page(2)
    many, (client, response) = delete_page(30)

    assert many == few
    assert "Cannot delete client" in response.content.decode()
    assert admin_client.post(_url(client, "delete"), {"post": "yes"}).status_code == 403
    bulk = {"action": "delete_selected", "_selected_action": [client.pk]}
    changelist = reverse("admin:notify_client_changelist")
    assert "Cannot delete client" in admin_client.post(changelist, bulk).content.decode()
    assert admin_client.post(changelist, {**bulk, "post": "yes"}).status_code == 403
    assert Notification.objects.filter(client=client).count() == 30

    unused = ClientFactory()  # no trigger yet: deleted as before
    assert admin_client.post(_url(unused, "delete"), {"post": "yes"}).status_code == 302
    assert not type(unused).objects.filter(pk=unused.pk).exists()


@pytest.mark.parametrize(
    "name",
    ["workflows_notification", "workflows_step", "messaging_message", "notify_triggerevent"],
)
def test_a_pipeline_changelist_pages_through_an_index_without_sorting_the_table(
    admin_client, name: str
) -> None:
    # These tables hold every notification ever sent: a page of them must come from an
    # index in order, not from sorting the whole table (PostgreSQL plans a Sort node only
    # when no index gives the order, even with sorting disabled).
    from django.db import connection

    MessageFactory()
    response = admin_client.get(reverse(f"admin:{name}_changelist"))
    assert response.status_code == 200
    page = response.context["cl"].queryset[:100]
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_sort = off")
    assert "Sort" not in page.explain(), name


def test_a_filtered_trigger_list_counts_only_what_matches(admin_client) -> None:
    # A second COUNT(*) of the whole table (Django's "of N total") on every filtered page.
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    TriggerEventFactory()
    url = reverse("admin:notify_triggerevent_changelist") + "?status__exact=received"
    with CaptureQueriesContext(connection) as queries:
        assert admin_client.get(url).status_code == 200
    counts = [
        q["sql"] for q in queries if "COUNT(*)" in q["sql"] and "notify_triggerevent" in q["sql"]
    ]
    assert len(counts) == 1, counts
    assert "WHERE" in counts[0]


def test_a_subscriber_or_topic_added_in_the_admin_follows_the_apis_rules(admin_client) -> None:
    """The API refuses a new subscriberId or topic key that no URL could reach; the
    admin took any, and the API could then never reach what it made."""
    client = ClientFactory()
    add_subscriber = reverse("admin:subscribers_subscriber_add")
    add_topic = reverse("admin:subscribers_topic_add")

    refused = [
        admin_client.post(add_subscriber, {"client": client.pk, "subscriber_id": "team/ann", "data": "{}"}),
        admin_client.post(add_topic, {"client": client.pk, "key": "news/daily", "name": ""}),
    ]  # fmt: skip
    taken = [
        admin_client.post(add_subscriber, {"client": client.pk, "subscriber_id": "ann", "data": "{}"}),
        admin_client.post(add_topic, {"client": client.pk, "key": "news:daily", "name": ""}),
    ]  # fmt: skip

    # The form again, with the API's reason.
    reasons = ["which no /v2/subscribers/", "a topic key holds only letters"]
    for response, reason in zip(refused, reasons, strict=True):
        assert response.status_code == 200 and reason in response.content.decode()
    assert [r.status_code for r in taken] == [302, 302]
    assert list(Subscriber.objects.values_list("subscriber_id", flat=True)) == ["ann"]
    assert list(Topic.objects.values_list("key", flat=True)) == ["news:daily"]


def test_an_old_subscriber_id_the_rules_refuse_can_still_be_edited(admin_client) -> None:
    subscriber = SubscriberFactory(subscriber_id="team/ann")  # made before norm refused it

    response = admin_client.post(
        _url(subscriber, "change"),
        {"subscriber_id": "team/ann", "email": "ann@example.test", "data": "{}"},
    )

    assert response.status_code == 302
    subscriber.refresh_from_db()
    assert subscriber.email == "ann@example.test"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("data", '["vip"]'),
        ("data", '"vip"'),
        ("data", "5"),
        ("data", "null"),
        ("email", "ann@"),
        ("locale", "fr FR"),
        ("timezone", "Mars/Olympus"),
    ],
)
def test_a_subscribers_data_and_email_edited_in_the_admin_follow_the_apis_rules(
    admin_client, field: str, value: str
) -> None:
    """The admin took any JSON as data and any email: novu-py then failed to read the
    subscriber (and any list page holding it), and null was a 500."""
    client, key = client_with_key()
    subscriber = SubscriberFactory(client=client, subscriber_id="ann", email="ann@example.com")
    form = {"subscriber_id": "ann", "email": "ann@example.com", "data": '{"plan": "pro"}'}

    response = admin_client.post(_url(subscriber, "change"), {**form, field: value})

    assert response.status_code == 200 and response.context["adminform"].form.errors[field]
    got = novu_py_for(key).subscribers.retrieve(subscriber_id="ann").result
    assert (got.email, got.data) == ("ann@example.com", None)
    response = admin_client.post(_url(subscriber, "change"), form)
    assert response.status_code == 302
    got = novu_py_for(key).subscribers.retrieve(subscriber_id="ann").result
    assert (got.email, got.data) == ("ann@example.com", {"plan": "pro"})


def test_a_subscriber_with_an_old_email_the_rules_refuse_can_still_be_edited(admin_client) -> None:
    subscriber = SubscriberFactory(subscriber_id="ann", email="ann@")  # made before the check
    form = {"subscriber_id": "ann", "email": "ann@", "first_name": "Ann", "data": "{}"}

    assert admin_client.post(_url(subscriber, "change"), form).status_code == 302
    subscriber.refresh_from_db()
    assert (subscriber.email, subscriber.first_name) == ("ann@", "Ann")


SECRET_BRIDGE = "https://ops-user:s3cret-pass@bridge.test/api/novu"
MASKED_BRIDGE = "https://ops-user:***@bridge.test/api/novu"
SECRET_ALLOWED = "https://other:hunter22@alt.test/api/novu"
VIEWS = ("changelist", "change")


# Each admin whose pages show a client's bridge URL.
BRIDGE_URL_PAGES = [
    "notify_client",
    "notify_bridgeworkflow",
    "notify_bridgesync",
    "notify_triggerevent",
    "workflows_notification",
]


def _client_with_a_password_in_its_bridge() -> Any:
    client = ClientFactory(bridge_url=SECRET_BRIDGE, allowed_bridge_urls=[SECRET_ALLOWED])
    event = TriggerEventFactory(client=client)
    NotificationFactory(client=client, trigger_event=event)
    BridgeWorkflowFactory(client=client)
    BridgeSync.objects.create(client=client, bridge_url=SECRET_BRIDGE, synced_at=timezone.now())
    return client


@pytest.mark.parametrize("model", BRIDGE_URL_PAGES)
def test_a_bridge_urls_password_is_masked_on_every_page(admin_client, model: str) -> None:
    client = _client_with_a_password_in_its_bridge()
    obj = {
        "notify_client": client,
        "notify_bridgeworkflow": client.bridge_workflows.get(),
        "notify_bridgesync": client.bridge_syncs.get(),
        "notify_triggerevent": client.trigger_events.get(),
        "workflows_notification": Notification.objects.get(client=client),
    }[model]

    pages = {view: admin_client.get(_url(obj, view)).content.decode() for view in VIEWS}

    for view, html in pages.items():
        assert "s3cret-pass" not in html and "hunter22" not in html, view
    assert "ops-user:***@bridge.test" in pages["change"]


def test_a_client_saved_as_shown_keeps_the_passwords_of_its_bridge_urls(admin_client) -> None:
    client = _client_with_a_password_in_its_bridge()
    page = admin_client.get(_url(client, "change")).content.decode()
    assert f'value="{MASKED_BRIDGE}"' in page and "other:***@alt.test" in page

    # The form sent back as the page shows it, with the rate limit changed.
    body = _client_form(
        client,
        bridge_url=MASKED_BRIDGE,
        allowed_bridge_urls='["https://other:***@alt.test/api/novu"]',
        rate_limit_per_minute="60",
    )
    response = admin_client.post(_url(client, "change"), body)

    assert response.status_code == 302, response.content.decode()
    client.refresh_from_db()
    assert (client.bridge_url, client.allowed_bridge_urls) == (SECRET_BRIDGE, [SECRET_ALLOWED])
    assert client.rate_limit_per_minute == 60


def test_a_token_standing_as_the_bridge_urls_user_is_masked_and_kept(admin_client) -> None:
    """`https://TOKEN@host` sends the token as basic auth's user, with no password: it was
    shown and logged in full, where a user:password pair had its password masked."""
    token_url = "https://tok-9f8e7d6c5b@bridge.test/api/novu"
    client = ClientFactory(bridge_url=token_url)

    page = admin_client.get(_url(client, "change")).content.decode()
    listing = admin_client.get(_url(client, "changelist")).content.decode()

    assert "tok-9f8e7d6c5b" not in page and "tok-9f8e7d6c5b" not in listing
    assert 'value="https://***@bridge.test/api/novu"' in page
    body = _client_form(client, bridge_url="https://***@bridge.test/api/novu")
    assert admin_client.post(_url(client, "change"), body).status_code == 302
    client.refresh_from_db()
    assert client.bridge_url == token_url


ROTATED_BRIDGE = "https://ops-user:new-pass@bridge.test/api/novu"


def test_a_client_saved_as_shown_keeps_both_passwords_of_a_bridge_being_rotated(
    admin_client,
) -> None:
    """A basic-auth password being rotated: the bridge URL has the new one, the allowed
    list still the old (triggers that name it as resource). Both read as MASKED_BRIDGE
    on the page; saving it as shown took the bridge URL's password for the allowed one."""
    client = ClientFactory(bridge_url=ROTATED_BRIDGE, allowed_bridge_urls=[SECRET_BRIDGE])
    page = admin_client.get(_url(client, "change")).content.decode()
    assert "new-pass" not in page and "s3cret-pass" not in page

    body = _client_form(
        client,
        bridge_url=MASKED_BRIDGE,
        allowed_bridge_urls=f'["{MASKED_BRIDGE}"]',
        rate_limit_per_minute="60",
    )
    response = admin_client.post(_url(client, "change"), body)

    assert response.status_code == 302, response.content.decode()
    client.refresh_from_db()
    assert (client.bridge_url, client.allowed_bridge_urls) == (ROTATED_BRIDGE, [SECRET_BRIDGE])
    assert client.rate_limit_per_minute == 60


TOKEN_BRIDGE = "https://bridge.test/api/novu?token=s3cret-tok&region=eu"
MASKED_TOKEN_BRIDGE = "https://bridge.test/api/novu?token=***&region=***"


@pytest.mark.parametrize("model", BRIDGE_URL_PAGES)
def test_a_bridge_urls_query_token_is_masked_on_every_page(admin_client, model: str) -> None:
    """A token in the query (`?token=...`, a deployment's bypass token) was shown whole,
    where a password in the userinfo was masked."""
    client = ClientFactory(bridge_url=TOKEN_BRIDGE, allowed_bridge_urls=[TOKEN_BRIDGE + "2"])
    event = TriggerEventFactory(client=client, resource=TOKEN_BRIDGE)
    NotificationFactory(client=client, trigger_event=event)
    BridgeWorkflowFactory(client=client, bridge_url=TOKEN_BRIDGE)
    BridgeSync.objects.create(client=client, bridge_url=TOKEN_BRIDGE, synced_at=timezone.now())
    obj = {
        "notify_client": client,
        "notify_bridgeworkflow": client.bridge_workflows.get(),
        "notify_bridgesync": client.bridge_syncs.get(),
        "notify_triggerevent": event,
        "workflows_notification": Notification.objects.get(client=client),
    }[model]

    pages = {view: admin_client.get(_url(obj, view)).content.decode() for view in VIEWS}

    for view, html in pages.items():
        assert "s3cret-tok" not in html, view
    assert escape(MASKED_TOKEN_BRIDGE) in pages["change"]


def test_a_client_saved_as_shown_keeps_its_bridge_urls_query_token(admin_client) -> None:
    client = ClientFactory(bridge_url=TOKEN_BRIDGE)
    page = admin_client.get(_url(client, "change")).content.decode()
    assert f'value="{escape(MASKED_TOKEN_BRIDGE)}"' in page

    body = _client_form(client, bridge_url=MASKED_TOKEN_BRIDGE, rate_limit_per_minute="60")
    assert admin_client.post(_url(client, "change"), body).status_code == 302
    client.refresh_from_db()
    assert (client.bridge_url, client.rate_limit_per_minute) == (TOKEN_BRIDGE, 60)

    # Edited, its masked token cannot be told: typed again rather than stored as ***.
    body = _client_form(client, bridge_url=MASKED_TOKEN_BRIDGE.replace("/novu", "/v2"))
    response = admin_client.post(_url(client, "change"), body)
    assert response.status_code == 200 and "type its password again" in response.content.decode()
    client.refresh_from_db()
    assert client.bridge_url == TOKEN_BRIDGE


def test_a_masked_url_that_could_be_either_of_two_stored_ones_must_be_typed_again(
    admin_client,
) -> None:
    """The allowed list edited (a URL added): which stored password a masked entry had
    cannot be told, so it is asked for rather than guessed."""
    client = ClientFactory(bridge_url=ROTATED_BRIDGE, allowed_bridge_urls=[SECRET_BRIDGE])

    body = _client_form(
        client,
        bridge_url=MASKED_BRIDGE,
        allowed_bridge_urls=f'["{MASKED_BRIDGE}", "https://alt.test/api/novu"]',
    )
    response = admin_client.post(_url(client, "change"), body)

    assert response.status_code == 200 and "type its password again" in response.content.decode()
    client.refresh_from_db()
    assert (client.bridge_url, client.allowed_bridge_urls) == (ROTATED_BRIDGE, [SECRET_BRIDGE])


def test_a_masked_password_on_a_new_bridge_url_must_be_typed_again(admin_client) -> None:
    client = _client_with_a_password_in_its_bridge()
    body = _client_form(client, bridge_url="https://ops-user:***@bridge.test/api/v2")

    response = admin_client.post(_url(client, "change"), body)

    assert response.status_code == 200 and "type its password again" in response.content.decode()
    client.refresh_from_db()
    assert client.bridge_url == SECRET_BRIDGE


def test_a_masked_token_on_a_new_bridge_url_must_be_typed_again(admin_client) -> None:
    """As a masked password: `https://***@host` on a URL not stored is no token to send,
    and was stored as the bridge's user, `***`."""
    token_url = "https://tok-9f8e7d6c5b@bridge.test/api/novu"
    client = ClientFactory(bridge_url=token_url)
    body = _client_form(client, bridge_url="https://***@bridge.test/api/v2")

    response = admin_client.post(_url(client, "change"), body)

    assert response.status_code == 200 and "type its password again" in response.content.decode()
    client.refresh_from_db()
    assert client.bridge_url == token_url


def test_a_user_who_may_only_view_clients_sees_the_bridge_masked(client, django_user_model) -> None:
    from django.contrib.auth.models import Permission

    viewer = django_user_model.objects.create_user("viewer", password="x", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_client"))
    client.force_login(viewer)
    tenant = _client_with_a_password_in_its_bridge()

    html = client.get(_url(tenant, "change")).content.decode()

    assert "s3cret-pass" not in html and "hunter22" not in html
    assert MASKED_BRIDGE in html and "other:***@alt.test" in html


@pytest.mark.parametrize(
    ("model", "lookup"),
    [
        ("notify_client", "bridge_url__contains"),
        ("notify_client", "allowed_bridge_urls__icontains"),
        ("notify_bridgeworkflow", "bridge_url__regex"),
        ("notify_bridgesync", "bridge_url__startswith"),
        ("notify_triggerevent", "resource__contains"),
        ("workflows_notification", "resource__contains"),
        ("notify_secretkey", "encrypted__startswith"),
        ("notify_secretkey", "key_hash__startswith"),
        ("auth_user", "password__startswith"),  # Django's own refusal, kept
    ],
)
def test_a_secret_no_page_shows_cannot_be_guessed_by_filtering_a_list_on_it(
    client, django_user_model, model: str, lookup: str
) -> None:
    """Whether a row is listed under ?bridge_url__contains=<guess> told a user who may
    only view the list the password its pages mask, a character a request."""
    from django.contrib.auth.models import Permission

    _client_with_a_password_in_its_bridge()
    SecretKey.objects.create(
        client=ClientFactory(), prefix="nk_x", key_hash="ab" * 32, encrypted="gAAAA-copy"
    )
    viewer = django_user_model.objects.create_user("viewer", password="x", is_staff=True)
    viewer.user_permissions.add(*Permission.objects.filter(codename__startswith="view_"))
    client.force_login(viewer)
    changelist = reverse(f"admin:{model}_changelist")
    # The first character of each: a list that answers it answers the next one too.
    guess = {"encrypted": "g", "key_hash": "a", "password": "m"}.get(lookup.split("__")[0], "s")

    assert client.get(changelist).status_code == 200
    assert client.get(changelist, {lookup: guess}).status_code == 400
    assert client.get(changelist, {lookup: "no-such-thing"}).status_code == 400


@pytest.mark.parametrize("model", ["notify_client", "notify_bridgeworkflow", "notify_bridgesync"])
def test_a_secret_no_page_shows_cannot_be_guessed_by_sorting_a_list_on_it(
    client, django_user_model, model: str
) -> None:
    """Sorted by its bridge column, a list ordered its rows by the whole URL, password and
    token too: a user who may add or change a client (and so set a bridge URL of his own
    guess) read from where his row landed beside another's whether the guess was below or
    above its token, a character in a few requests, as a filter on it told (above). The
    column sorts nothing: two rows whose URLs differ by their masked token alone stay in
    the list's own order whichever way it is asked to sort them."""
    from django.contrib.auth.models import Permission

    for token in ("aaaa", "zzzz"):
        tenant = ClientFactory(bridge_url=f"https://bridge.test/api/novu?token={token}")
        BridgeWorkflowFactory(client=tenant)
        BridgeSyncFactory(client=tenant)
    viewer = django_user_model.objects.create_user("viewer", password="x", is_staff=True)
    viewer.user_permissions.add(*Permission.objects.filter(codename__startswith="view_"))
    client.force_login(viewer)
    changelist = reverse(f"admin:{model}_changelist")
    column = client.get(changelist).context["cl"].list_display.index("bridge")

    def order(sort: str) -> list[int]:
        response = client.get(changelist, {"o": sort})
        assert response.status_code == 200
        return [row.pk for row in response.context["cl"].result_list]

    assert order(str(column)) == order(f"-{column}")


def _reached_ann() -> tuple[Subscriber, TriggerEvent]:
    """ann, reached by a trigger fanned out a moment ago (the reconciler still checks it)."""
    notification = NotificationFactory(
        subscriber__subscriber_id="ann",
        trigger_event__status=TriggerEvent.Status.PROCESSED,
        trigger_event__recipients=1,
        trigger_event__processed_at=timezone.now(),
        trigger_event__recheck_from=timezone.now(),
    )
    MessageFactory(step=StepFactory(notification=notification, status=Step.Status.COMPLETED))
    return notification.subscriber, notification.trigger_event


def test_a_subscriber_deleted_in_the_admin_goes_as_the_apis_delete_takes_it(admin_client) -> None:
    """The admin's delete was Django's: refused outright for a subscriber with
    notifications (pipeline rows cannot be deleted by hand), and, without them, taken
    without the API's lock against a fan-out creating its notification meanwhile. It is
    now the API's: its notifications, steps and messages go with it, and the recent
    fan-out that reached it counts it out, so the reconciler does not make it anew."""
    ann, event = _reached_ann()

    page = admin_client.get(_url(ann, "delete"))
    assert page.status_code == 200 and "Are you sure" in page.content.decode()
    response = admin_client.post(_url(ann, "delete"), {"post": "yes"})

    assert response.status_code == 302
    assert not Subscriber.objects.filter(pk=ann.pk).exists()
    assert not Notification.objects.exists() and not Message.objects.exists()
    event.refresh_from_db()
    assert (event.recipients, event.forgotten) == (0, ["ann"])


def test_a_subscribers_delete_page_counts_what_goes_with_it(admin_client) -> None:
    """Its notifications, messages and memberships go with it: the page counts each, so an
    operator deleting a test subscriber sees he holds a real one's history."""
    ann = SubscriberFactory(subscriber_id="ann")
    steps = [StepFactory(notification=NotificationFactory(subscriber=ann)) for _ in range(2)]
    for step in steps:
        MessageFactory(step=step)
    MessageFactory(step=StepFactory(notification=NotificationFactory(subscriber=ann)))
    topic = Topic.objects.create(client=ann.client, key="news")
    TopicSubscription.objects.create(topic=topic, subscriber=ann)
    MessageFactory()  # another subscriber's

    page = unescape(admin_client.get(_url(ann, "delete")).content.decode())

    for counted in ("Notifications: 3", "Messages: 3", "Topic subscriptions: 1"):
        assert counted in page


def test_the_delete_action_deletes_each_subscriber_as_the_api_does(admin_client) -> None:
    ann, event = _reached_ann()
    bob = SubscriberFactory(client=ann.client, subscriber_id="bob")

    response = admin_client.post(
        reverse("admin:subscribers_subscriber_changelist"),
        {"action": "delete_selected", "_selected_action": [ann.pk, bob.pk], "post": "yes"},
    )

    assert response.status_code == 302
    assert not Subscriber.objects.exists() and not Notification.objects.exists()
    event.refresh_from_db()
    assert event.forgotten == ["ann"]


def _delete_while_a_member_is_added(admin_client, *keys: str) -> tuple[Any, Any]:
    """Deletes the topics `keys`, each with bob as a member, in the admin (one: its delete
    page; more: the delete action) while a subscribe holding the first adds ann to it."""
    client = ClientFactory()
    SubscriberFactory(client=client, subscriber_id="ann")
    bob = SubscriberFactory(client=client, subscriber_id="bob")
    topics = [Topic.objects.create(client=client, key=key) for key in keys]
    for topic in topics:
        TopicSubscription.objects.create(topic=topic, subscriber=bob)
    url, body = _url(topics[0], "delete"), {"post": "yes"}
    if len(topics) > 1:
        url = reverse("admin:subscribers_topic_changelist")
        body |= {"action": "delete_selected", "_selected_action": [t.pk for t in topics]}
    return while_held(
        lambda: services.topic_subscribe(topic=topics[0], subscriber_ids=["ann"]),
        lambda: admin_client.post(url, body),
    )


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("keys", [("news",), ("news", "sales")], ids=["page", "action"])
def test_a_topic_deleted_in_the_admin_goes_as_the_apis_delete_takes_it(
    admin_client, keys: tuple[str, ...]
) -> None:
    """The admin's delete was Django's, without topic_delete's lock: it removed the
    topic's members, then waited for the topic a subscribe held and deleted it under
    the member that subscribe added, and was refused by that member's foreign key at
    commit, a 500 with the topic still there. It is now the API's: it waits for the
    topic, and takes the new member with it."""
    subscribed, response = _delete_while_a_member_is_added(admin_client, *keys)

    assert subscribed[1] == []  # the member was added
    assert response.status_code == 302
    assert not Topic.objects.exists() and not TopicSubscription.objects.exists()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("deleted", ["topic", "subscriber"])
def test_a_member_added_in_the_admin_while_its_topic_or_subscriber_is_deleted(
    admin_client, deleted: str
) -> None:
    """Django's insert of the membership took no lock: the API's delete, holding the
    topic or the subscriber, removed it under the new row, whose foreign key refused it
    at commit, a 500. The add is now topic_subscribe's: it waits for the delete, finds
    the row gone, and the admin says it was deleted."""
    ann = SubscriberFactory(subscriber_id="ann")
    topic = Topic.objects.create(client=ann.client, key="news")
    gone: Any = topic if deleted == "topic" else ann
    pk = gone.pk
    if deleted == "topic":
        delete = lambda: services.topic_delete(topic=topic)  # noqa: E731
    else:
        delete = lambda: services.subscriber_delete(subscriber=ann)  # noqa: E731
    url = reverse("admin:subscribers_topicsubscription_add")
    body = {"topic": topic.pk, "subscriber": ann.pk}  # now: the delete leaves it without its pk

    _, response = while_held(delete, lambda: admin_client.post(url, body))

    assert response.status_code == 302
    assert response.url == reverse("admin:index")
    page = admin_client.get(response.url).content.decode()
    assert f"{deleted.title()} with ID “{pk}” doesn’t exist. Perhaps it was deleted?" in page
    assert not type(gone).objects.exists() and not TopicSubscription.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_members_deleted_in_the_admin_while_the_api_unsubscribes_them_are_deleted(
    admin_client,
) -> None:
    """The admin's delete action was Django's: one DELETE of the chosen memberships by
    their ids, locking them in that order (the primary key's, for a large table), with
    no lock of their topic; an unsubscribe of some of them locks them in its index's
    order. Each held one the other wanted next, and PostgreSQL failed one of them (the
    unsubscribe's 503, or the admin's 500). The admin now removes them as the API
    unsubscribes them, the topic locked first: the unsubscribe waits for it."""
    client, key = client_with_key()
    ann, bob, cid, dan = (
        SubscriberFactory(client=client, subscriber_id=n) for n in ("ann", "bob", "cid", "dan")
    )
    topic = Topic.objects.create(client=client, key="news")
    for member in ("bob", "cid", "ann", "dan"):  # ann's the last chosen by id
        services.topic_subscribe(topic=topic, subscriber_ids=[member])
    rows = TopicSubscription.objects.exclude(subscriber=dan).order_by("pk")  # dan's stays
    assert [row.subscriber for row in rows] == [bob, cid, ann]
    # The unsubscribe reads them by subscriber (a large topic's plan, by the unique
    # index): so too by the (topic, created_at, subscriber) index a small one's reads.
    rows.update(created_at=timezone.now())
    release = threading.Event()
    holder = held(rows.filter(subscriber=cid), release)

    def delete() -> Any:
        with connection.cursor() as cursor:  # the plans of a large table, and of two members
            cursor.execute("SET enable_seqscan = off")
            cursor.execute("SET enable_bitmapscan = off")
        body = {"action": "delete_selected", "_selected_action": [r.pk for r in rows]}
        url = reverse("admin:subscribers_topicsubscription_changelist")
        return admin_client.post(url, body | {"post": "yes"})

    def unsubscribe() -> Any:
        with connection.cursor() as cursor:
            cursor.execute("SET enable_seqscan = off")
            cursor.execute("SET enable_bitmapscan = off")
        body = {"subscriptions": ["ann", "bob"]}
        return api_for(key).delete("/v2/topics/news/subscriptions", body, format="json")

    deleting = InThread(delete)  # holds bob's (now the topic too), waits for cid's
    lock_waiters(1, deleting)
    unsubscribing = InThread(unsubscribe)
    lock_waiters(2, deleting, unsubscribing)  # held ann's, waited for bob's; now the topic
    release.set()  # the admin's delete goes on to ann's
    holder.join()
    unsubscribed = unsubscribing.join()
    deleted = deleting.join()

    assert deleted.status_code == 302, deleted.content
    # It found them removed: the 400 of an unsubscribe of no member, as a moment later.
    assert unsubscribed.status_code == 400, unsubscribed.content
    assert list(topic.subscribers.all()) == [dan]


@pytest.mark.django_db(transaction=True)
def test_members_deleted_in_the_admin_while_their_topic_is_deleted_go_with_it(
    admin_client,
) -> None:
    """The admin's delete waits for the topic the API's delete holds, and finds it gone
    with its members: the delete is answered as done."""
    ann = SubscriberFactory(subscriber_id="ann")
    topic = Topic.objects.create(client=ann.client, key="news")
    services.topic_subscribe(topic=topic, subscriber_ids=["ann"])
    body = {"action": "delete_selected", "_selected_action": [TopicSubscription.objects.get().pk]}
    url = reverse("admin:subscribers_topicsubscription_changelist")

    _, response = while_held(
        lambda: services.topic_delete(topic=topic),
        lambda: admin_client.post(url, body | {"post": "yes"}),
    )

    assert response.status_code == 302
    assert not Topic.objects.exists() and not TopicSubscription.objects.exists()


def test_a_members_identifier_and_name_are_shown_and_given_on_add_as_a_subscribe_gives_them(
    admin_client,
) -> None:
    """The list and a member's page showed neither the identifier the API names a
    subscription by nor its name, and the add page gave none. Given there, they pass the
    checks a subscribe makes: an identifier another subscription of the topic has (or
    another subscriber's default), or a second subscription of a subscriber, is refused
    with the reason the API gives, and nothing is added."""
    ann = SubscriberFactory(subscriber_id="ann")
    for name in ("bob", "cid", "dan"):
        SubscriberFactory(client=ann.client, subscriber_id=name)
    topic = Topic.objects.create(client=ann.client, key="news")
    weekly = services.SubscriptionNamed(identifier="ann-weekly", name="Weekly")
    services.topic_subscribe_named(topic=topic, subscriber_ids=["ann"], named={"ann": weekly})
    services.topic_subscribe(topic=topic, subscriber_ids=["bob"])

    listed = admin_client.get(reverse("admin:subscribers_topicsubscription_changelist"))
    html = listed.content.decode()
    assert '<td class="field-identifier_answered">ann-weekly</td>' in html
    assert '<td class="field-name">Weekly</td>' in html
    assert '<td class="field-identifier_answered">tk_news:si_bob</td>' in html
    for member, shown in (("ann", ["ann-weekly", "Weekly"]), ("bob", ["tk_news:si_bob"])):
        row = TopicSubscription.objects.get(subscriber__subscriber_id=member)
        page = admin_client.get(_url(row, "change")).content.decode()
        assert all(f'<div class="readonly">{text}</div>' in page for text in shown)

    url = reverse("admin:subscribers_topicsubscription_add")
    form = admin_client.get(url).content.decode()
    assert 'name="identifier"' in form and 'name="name"' in form
    cid = Subscriber.objects.get(subscriber_id="cid")
    added = admin_client.post(
        url, {"topic": topic.pk, "subscriber": cid.pk, "identifier": " cid-daily ", "name": "D"}
    )
    assert added.status_code == 302
    row = TopicSubscription.objects.get(subscriber=cid)
    assert (row.identifier, row.name) == ("cid-daily", "D")

    dan = Subscriber.objects.get(subscriber_id="dan")
    for identifier in ("ann-weekly", "tk_news:si_bob"):
        body = {"topic": topic.pk, "subscriber": dan.pk, "identifier": identifier}
        refused = admin_client.post(url, body, follow=True)
        assert refused.redirect_chain == [(url, 302)]
        reason = f"'{identifier}' names another subscription of 'news'"
        assert escape(reason) in refused.content.decode()
    assert not TopicSubscription.objects.filter(subscriber=dan).exists()
    # A second subscription of a subscriber is its form's error: the pair exists.
    body = {"topic": topic.pk, "subscriber": ann.pk, "identifier": "ann-daily"}
    second = admin_client.post(url, body).content.decode()
    assert "Topic subscription with this Topic and Subscriber already exists." in second
    assert TopicSubscription.objects.get(subscriber=ann).identifier == "ann-weekly"


def test_a_member_added_in_the_admin_is_added_and_never_changed(admin_client) -> None:
    ann = SubscriberFactory(subscriber_id="ann")
    topic = Topic.objects.create(client=ann.client, key="news")

    response = admin_client.post(
        reverse("admin:subscribers_topicsubscription_add"),
        {"topic": topic.pk, "subscriber": ann.pk, "_continue": "1"},
    )

    member = TopicSubscription.objects.get(topic=topic, subscriber=ann)
    assert response.status_code == 302 and response.url == _url(member, "change")
    other = SubscriberFactory(client=ann.client, subscriber_id="bob")
    admin_client.post(_url(member, "change"), {"topic": topic.pk, "subscriber": other.pk})
    assert list(topic.subscribers.all()) == [ann]


def test_a_topics_delete_page_counts_its_members_without_listing_them(admin_client) -> None:
    """Django's page listed every membership the delete takes, each read and linked:
    0.5 MB for a topic of 5,000 members."""

    def page(members: int) -> tuple[Topic, str]:
        topic = Topic.objects.create(client=ClientFactory(), key=f"topic-{members}")
        for subscriber in SubscriberFactory.create_batch(members, client=topic.client):
            TopicSubscription.objects.create(topic=topic, subscriber=subscriber)
        response = admin_client.get(_url(topic, "delete"))
        assert response.status_code == 200
        return topic, response.content.decode()

    page(1)  # the first page load of a test reads the user and content types
    _, few = page(3)
    topic, many = page(30)

    assert "Topic subscriptions: 30" in many
    assert len(many) - len(few) < 100  # the counts' digits differ, nothing else
    assert _url(TopicSubscription.objects.filter(topic=topic).first(), "change") not in many
    bulk = {"action": "delete_selected", "_selected_action": [topic.pk]}
    action = admin_client.post(reverse("admin:subscribers_topic_changelist"), bulk)
    assert "Topic subscriptions: 30" in action.content.decode()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("model", ["subscriber", "topic"])
def test_a_subscriber_or_topic_edited_in_the_admin_while_it_is_deleted_stays_deleted(
    admin_client, model: str
) -> None:
    """Django's save updated the row the delete held, found it gone, and inserted it
    anew under its old id: the API's delete answered, and the subscriber (without its
    notifications) or the topic (without its members) was back. The admin now says it
    was deleted, as it does for one deleted before its page was sent."""
    ann = SubscriberFactory(subscriber_id="ann")
    if model == "subscriber":
        obj: Any = ann
        delete = lambda: services.subscriber_delete(subscriber=ann)  # noqa: E731
        body = {"subscriber_id": "ann", "email": "ann@example.test", "data": "{}"}
    else:
        obj = Topic.objects.create(client=ann.client, key="news")
        TopicSubscription.objects.create(topic=obj, subscriber=ann)
        delete = lambda: services.topic_delete(topic=obj)  # noqa: E731
        body = {"key": "news", "name": "News"}

    url = _url(obj, "change")  # now: the delete leaves obj without its pk
    _, response = while_held(delete, lambda: admin_client.post(url, body))

    assert response.status_code == 302
    assert response.url == reverse("admin:index")
    assert "Perhaps it was deleted?" in admin_client.get(response.url).content.decode()
    assert not type(obj).objects.exists()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("declared", [True, False], ids=["changed", "dropped"])
def test_controls_saved_while_a_discover_stores_the_workflow_keep_what_it_stored(
    admin_client, declared: bool
) -> None:
    """Django's save wrote back every column as read before a discover stored the
    workflow anew: its steps, name and schema went back to the old ones; and one the
    bridge no longer declared, which the discover deleted, was inserted anew. Only the
    controls are saved now, and a workflow deleted meanwhile is said to be."""
    mail = {"stepId": "mail", "type": "email", "controlSchema": {}}
    workflow = BridgeWorkflowFactory(name="Old", steps=[mail])
    sms = {"stepId": "sms", "type": "sms"}
    found = [{"workflowId": workflow.workflow_id, "name": "New", "steps": [mail, sms]}]
    url = _url(workflow, "change")

    _, response = while_held(
        lambda: registry._store(
            workflow.client,
            workflow.bridge_url,
            workflows=found if declared else [],
            flavour={},
            now=timezone.now(),
        ),
        lambda: admin_client.post(url, {"controls": '{"mail": {"subject": "Hi"}}'}),
    )

    assert response.status_code == 302
    if not declared:
        assert response.url == reverse("admin:index")
        assert not BridgeWorkflow.objects.exists()
        return
    workflow.refresh_from_db()
    assert (workflow.name, [s["stepId"] for s in workflow.steps]) == ("New", ["mail", "sms"])
    assert workflow.controls == {"mail": {"subject": "Hi"}}


@pytest.mark.parametrize("model", ["topic", "subscriber"])
@pytest.mark.parametrize("via", ["page", "action"])
def test_a_row_with_memberships_is_deleted_only_by_who_may_delete_them(
    client, django_user_model, via: str, model: str
) -> None:
    """The memberships go with a topic or subscriber: as Django's own delete page, the
    admin's refuses a staff user who may delete topics (subscribers) but not topic
    subscriptions, and lets one delete a row with no membership."""
    from django.contrib.auth.models import Permission

    staff = django_user_model.objects.create_user("staff", password="x", is_staff=True)
    staff.user_permissions.add(
        *Permission.objects.filter(codename__in=[f"view_{model}", f"delete_{model}"])
    )
    client.force_login(staff)
    topic = _topic()
    if model == "topic":
        member: Any = topic
        empty: Any = Topic.objects.create(client=ClientFactory(), key="empty")
    else:
        member, empty = topic.subscribers.get(), SubscriberFactory(subscriber_id="empty")

    def delete(row: Any) -> Any:
        if via == "page":
            return client.post(_url(row, "delete"), {"post": "yes"})
        body = {"action": "delete_selected", "_selected_action": [row.pk], "post": "yes"}
        return client.post(reverse(f"admin:subscribers_{model}_changelist"), body)

    page = client.get(_url(member, "delete")).content.decode()
    assert "would result in deleting related objects" in page
    assert delete(member).status_code == 403
    assert type(member).objects.filter(pk=member.pk).exists()
    assert TopicSubscription.objects.filter(topic=topic).exists()

    assert delete(empty).status_code == 302
    assert not type(empty).objects.filter(pk=empty.pk).exists()

    staff.user_permissions.add(Permission.objects.get(codename="delete_topicsubscription"))
    assert delete(member).status_code == 302
    assert not type(member).objects.filter(pk=member.pk).exists()
    assert not TopicSubscription.objects.exists()


@pytest.mark.parametrize("model", ["subscriber", "topic"])
def test_an_id_or_key_the_client_has_already_is_a_form_error(admin_client, model: str) -> None:
    """The client is read-only on the change page, so Django's form skipped the unique
    (client, id) check, and the save's IntegrityError was a 500."""
    ann = SubscriberFactory(subscriber_id="ann")
    if model == "subscriber":
        SubscriberFactory(client=ann.client, subscriber_id="bob")
        obj: Any = ann
        body = {"subscriber_id": "bob", "email": "", "data": "{}"}
        taken = "This client has a subscriber &#x27;bob&#x27; already."
    else:
        obj = Topic.objects.create(client=ann.client, key="news")
        Topic.objects.create(client=ann.client, key="sales")
        body = {"key": "sales", "name": ""}
        taken = "This client has a topic &#x27;sales&#x27; already."
    SubscriberFactory(subscriber_id="cat")  # another client's ids are no conflict
    Topic.objects.create(client=ClientFactory(), key="deals")

    response = admin_client.post(_url(obj, "change"), body)

    assert response.status_code == 200 and taken in response.content.decode()
    obj.refresh_from_db()
    assert (obj.subscriber_id if model == "subscriber" else obj.key) in ("ann", "news")
    other = {"subscriber_id": "cat"} if model == "subscriber" else {"key": "deals"}
    assert admin_client.post(_url(obj, "change"), body | other).status_code == 302
    obj.refresh_from_db()
    assert (obj.subscriber_id if model == "subscriber" else obj.key) in ("cat", "deals")


@pytest.mark.parametrize("stored", [5, "http://bridge.test/x", {"http://bridge.test/x": 1}])
def test_a_client_whose_allowed_bridge_urls_were_stored_past_the_admin_is_shown_and_fixed(
    admin_client, client, django_user_model, stored: Any
) -> None:
    """Written by a shell or SQL: the trigger API refuses such a client with the fault
    named (notify.models.stored_strings); its pages show it as no list and save a new
    one, where a number was a 500 and a string was shown letter by letter."""
    from django.contrib.auth.models import Permission

    viewer = django_user_model.objects.create_user("viewer", password="x", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_client"))
    client.force_login(viewer)
    tenant = ClientFactory()
    Client.objects.filter(pk=tenant.pk).update(allowed_bridge_urls=stored)

    viewed = client.get(_url(tenant, "change"))
    page = admin_client.get(_url(tenant, "change"))
    response = admin_client.post(
        _url(tenant, "change"),
        _client_form(tenant, allowed_bridge_urls='["http://bridge.test/other"]'),
    )

    assert viewed.status_code == 200 and page.status_code == 200
    assert "not a list of URLs" in viewed.content.decode()
    assert response.status_code == 302, response.content.decode()
    tenant.refresh_from_db()
    assert tenant.allowed_bridge_urls == ["http://bridge.test/other"]


@pytest.mark.parametrize(
    "stored", [SECRET_ALLOWED, [[SECRET_ALLOWED]], {"url": SECRET_ALLOWED}, {SECRET_ALLOWED: 1}]
)
def test_allowed_bridge_urls_stored_past_the_admin_show_their_passwords_masked(
    admin_client, stored: Any
) -> None:
    """A string where a list belongs (the brackets forgotten in a shell), or a URL nested
    deeper: the change page showed the value as stored, the password with it, where
    every page masks a bridge URL's. Saved as shown, it is still refused as no list."""
    tenant = ClientFactory()
    Client.objects.filter(pk=tenant.pk).update(allowed_bridge_urls=stored)

    page = admin_client.get(_url(tenant, "change")).content.decode()
    shown = page.split('name="allowed_bridge_urls"', 1)[1].split("</textarea>", 1)[0]
    response = admin_client.post(
        _url(tenant, "change"),
        _client_form(tenant, allowed_bridge_urls=unescape(shown.split(">", 1)[1])),
    )

    assert "hunter22" not in page
    assert "other:***@alt.test" in shown
    assert response.status_code == 200 and "Use a list of strings" in response.content.decode()
    tenant.refresh_from_db()
    assert tenant.allowed_bridge_urls == stored


def _json_field_forms() -> list[tuple[models.Model, str, dict[str, str]]]:
    """Each JSON field the admin edits: its row, the field and the rest of its form."""
    client = ClientFactory()
    workflow = BridgeWorkflowFactory(steps=[{"stepId": "mail", "type": "email"}])
    subscriber = SubscriberFactory(subscriber_id="ann")
    return [
        (client, "allowed_bridge_urls", _client_form(client)),
        (client, "workflow_allowlist", _client_form(client)),
        (client, "email_from_domains", _client_form(client)),
        (workflow, "controls", {}),
        (subscriber, "data", {"subscriber_id": "ann"}),
    ]


@pytest.mark.parametrize("index", range(5))
@pytest.mark.parametrize(
    "value",
    [
        '["a\\u0000b"]',  # a NUL, which jsonb refuses, in a string
        '{"mail": {"a\\u0000": 1}}',  # or in a key
        '["\\ud800"]',  # a lone surrogate, which has no UTF-8
        '{"mail": {"n": 1e400}}',  # a number beyond a double (read as inf)
    ],
)
def test_a_json_field_refuses_what_postgresql_cannot_store(
    admin_client, index: int, value: str
) -> None:
    """As the API refuses it (config.parsers.unfit): the admin saved it, and PostgreSQL's
    refusal was a 500."""
    obj, field, form = _json_field_forms()[index]
    before = getattr(obj, field)

    response = admin_client.post(_url(obj, "change"), {**form, field: value})

    assert response.status_code == 200  # the form again, with the error
    assert "must" in response.content.decode()
    obj.refresh_from_db()
    assert getattr(obj, field) == before


@pytest.mark.parametrize(
    ("changelist", "query"),
    [
        ("notify_triggerevent", "status=%00"),
        ("notify_bridgesync", "flavour=%00"),
        ("workflows_notification", "error_code=%00"),
        ("workflows_step", "type=%00"),
        ("messaging_message", "channel=%00"),
    ],
)
def test_a_list_filter_value_with_a_nul_is_a_bad_request(
    admin_client, changelist: str, query: str
) -> None:
    """PostgreSQL cannot compare text with a NUL character: its refusal was a 500."""
    response = admin_client.get(f"{reverse(f'admin:{changelist}_changelist')}?{query}")
    assert response.status_code == 400


def test_an_autocomplete_term_with_a_nul_is_a_bad_request(admin_client) -> None:
    SubscriberFactory(subscriber_id="ann")
    query = "term=a%00&app_label=subscribers&model_name=topicsubscription&field_name=subscriber"

    assert admin_client.get(f"{reverse('admin:autocomplete')}?{query}").status_code == 400
    query = query.replace("%00", "")
    assert (
        "ann"
        in admin_client.get(f"{reverse('admin:autocomplete')}?{query}").json()["results"][0]["text"]
    )


@pytest.mark.parametrize("field", ["subscriber", "topic"])
def test_a_members_autocomplete_pages_through_every_choice_once(admin_client, field: str) -> None:
    """The add-a-member page's pickers page their choices 20 at a time, over a query
    with no order (Django warned so): PostgreSQL may return the rows of two pages in
    other orders, and "load more" showed a choice twice and left another out."""
    client = ClientFactory()
    for n in range(45):
        SubscriberFactory(client=client, subscriber_id=f"s{n:02}")
        Topic.objects.create(client=client, key=f"t{n:02}")
    query = f"app_label=subscribers&model_name=topicsubscription&field_name={field}&term="
    seen: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnorderedObjectListWarning)
        for page in (1, 2, 3):
            answer = admin_client.get(f"{reverse('admin:autocomplete')}?{query}&page={page}")
            seen += [r["id"] for r in answer.json()["results"]]
    assert len(seen) == len(set(seen)) == 45


def test_an_allowed_bridge_url_longer_than_a_trigger_may_name_is_refused(admin_client) -> None:
    """A trigger's resource is at most 500 characters, as the client's bridge_url: a
    longer allowed URL was saved, and no trigger could ever name it."""
    client = ClientFactory()
    long_url = "http://bridge.test/" + "a" * 482  # 501 characters

    response = admin_client.post(
        _url(client, "change"), _client_form(client, allowed_bridge_urls=f'["{long_url}"]')
    )

    assert response.status_code == 200  # the form again, with the error
    assert "at most 500 characters" in response.content.decode()
    client.refresh_from_db()
    assert client.allowed_bridge_urls == []


def test_create_key_for_a_client_deleted_meanwhile_says_none_was_created(admin_client) -> None:
    """It answered the page of new keys ("Copy them now") with none on it."""
    client = ClientFactory(secret_key=False)
    client_id = client.pk
    client.delete()

    response = admin_client.post(
        reverse("admin:notify_client_changelist"),
        {"action": "create_key", "_selected_action": [str(client_id)]},
        follow=True,
    )

    html = response.content.decode()
    assert "New secret keys" not in html
    assert "No key created: the selected clients were deleted." in html
    assert not SecretKey.objects.exists()


# Every action of norm's admins, Django's delete where rows may be deleted, by its model;
# and of Django's own for users and groups.
ACTIONS = [
    (model._meta.label_lower, action)
    for model, model_admin in admin.site._registry.items()
    if model._meta.app_label in {"notify", "workflows", "subscribers", "messaging", "auth"}
    for action in [
        *([] if isinstance(model_admin, workflows_admin.ReadOnlyAdmin) else ["delete_selected"]),
        *(model_admin.actions or []),
    ]
]


@pytest.mark.parametrize(("model", "action"), ACTIONS)
@pytest.mark.parametrize("selected", ["abc", "", "1.5"])
def test_an_action_on_a_selection_that_is_no_id_is_a_400(
    admin_client, model: str, action: str, selected: str
) -> None:
    """A selection edited in the page or POSTed by hand: Django filtered the rows by it
    as it came, and the primary key's refusal of what is no number or uuid was a 500."""
    app_label, model_name = model.split(".")
    admin_client.raise_request_exception = False
    client = ClientFactory(name="kept")

    response = admin_client.post(
        reverse(f"admin:{app_label}_{model_name}_changelist"),
        {"action": action, "_selected_action": [selected], "post": "yes"},
    )

    assert response.status_code == 400
    assert Client.objects.get(pk=client.pk).secret_keys.count() == 1  # nothing done


def test_a_client_added_here_is_told_to_need_a_key_and_how_to_create_one(admin_client) -> None:
    """createclient prints a key; the add page made a client without one and said only
    that it was added, so its first API call was a 401 with no hint of where a key is."""
    form = _client_form(ClientFactory.build(name="web-shop"))
    response = admin_client.post(reverse("admin:notify_client_add"), form, follow=True)
    html = unescape(response.content.decode())
    assert "“web-shop” has no secret key yet (the API and its bridge need one)" in html
    assert "run the action “Create a new secret key”" in html
    # The action the message names is on the page it leads to, and makes the key.
    client = Client.objects.get(name="web-shop")
    response = admin_client.post(
        reverse("admin:notify_client_changelist"),
        {"action": "create_key", "_selected_action": [str(client.pk)]},
    )
    key = response.content.decode().split("<code>")[1].split("</code>")[0]
    assert client_by_api_key(key=key) == client


def test_the_admin_links_to_no_home_page_norm_does_not_have(admin_client) -> None:
    """Every admin page's header linked "View site" to /, which was a 404 (it now leads
    to the API's docs, which are no site of the admin's either)."""
    for page in ("admin:index", "admin:notify_client_changelist"):
        html = admin_client.get(reverse(page)).content.decode()
        assert "Log out" in html and "View site" not in html


def _norm_changelists() -> list[tuple[str, str, str]]:
    """(changelist, text field, date field) of each NormAdmin's model that has both."""
    found = []
    for model, model_admin in admin.site._registry.items():
        if not isinstance(model_admin, workflows_admin.NormAdmin):
            continue
        # Not a secret, which no list filters on (the test above); Django's own for users.
        refused = (*model_admin.unfilterable, "password")
        fields = [f for f in model._meta.concrete_fields if f.name not in refused]
        text = next((f.name for f in fields if isinstance(f, models.CharField)), None)
        date = next((f.name for f in fields if isinstance(f, models.DateTimeField)), None)
        if text and date:
            found.append((f"{model._meta.app_label}_{model._meta.model_name}", text, date))
    return found


@pytest.mark.parametrize(("changelist", "text", "date"), _norm_changelists())
@pytest.mark.parametrize(
    "lookup",
    [
        "{date}__year=99999",  # past the year a datetime holds
        "{date}__year=-1",
        "{text}__regex=(",  # a pattern PostgreSQL refuses
        "{text}__iregex=a{{2,1}}",
    ],
)
def test_a_lookup_the_database_cannot_run_is_the_admins_error_not_a_500(
    admin_client, changelist: str, text: str, date: str, lookup: str
) -> None:
    """Django's admin takes a lookup on any field of the row from the list's URL; one the
    query could not be built or run with was a 500, where a lookup Django itself cannot
    build is its "?e=1" page (IncorrectLookupParameters)."""
    # Rows to count, for a planner that reads the pattern only for a table with rows.
    MessageFactory(step__notification__subscriber__subscriber_id="ann")
    url = reverse(f"admin:{changelist}_changelist")
    query = lookup.format(text=text, date=date)

    response = admin_client.get(f"{url}?{query}")

    assert (response.status_code, response.get("Location")) == (302, f"{url}?e=1")
    assert admin_client.get(url).status_code == 200


# The lookups the test above asks for, on the database the script runs on.
BAD_LOOKUPS = """
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse
from tests.factories import MessageFactory
MessageFactory(step__notification__subscriber__subscriber_id="ann")
browser = Client()
browser.force_login(User.objects.create_superuser("admin", "a@example.com", "pw"))
found = {}
for changelist, query in [
    ("workflows_step", "step_id__regex=("),
    ("messaging_message", "channel__iregex=a{2,1}"),
]:
    url = reverse(f"admin:{changelist}_changelist")
    response = browser.get(f"{url}?{query}")
    found[changelist] = [response.status_code, response.get("Location") == f"{url}?e=1"]
"""


def test_a_pattern_sqlite_cannot_run_is_the_admins_error_not_a_500(tmp_path: Path) -> None:
    """`make run`'s SQLite runs a regex lookup by Python's re, in a function of Django's:
    a pattern it refuses raised "user-defined function raised exception", an
    OperationalError, not PostgreSQL's DataError, and the list was a 500 there."""
    assert on_sqlite(tmp_path, BAD_LOOKUPS) == {
        "workflows_step": [302, True],
        "messaging_message": [302, True],
    }


def test_an_unfiltered_list_of_a_large_table_is_counted_by_the_planners_estimate(
    admin_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole table's COUNT(*) made each first page of a list cost as much as the
    table is large (5,000,000 steps: 0.55 to 0.94 s); its estimate is read instead. A
    filtered list is still counted exactly."""
    # The estimate from ESTIMATE_FROM rows: here just that, 3.
    monkeypatch.setattr(workflows_admin, "ESTIMATE_FROM", 3)
    clients = [ClientFactory(secret_key=False), ClientFactory(secret_key=False)]
    for client in (*clients, clients[0]):
        secret_key_create(client=client)
    # The estimate: the 3 keys then (its own table: no plan of another test reads it).
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE notify_secretkey")
    secret_key_create(client=clients[0])
    url = reverse("admin:notify_secretkey_changelist")
    # Pages of 2: the list asks the paginator its count, then its number of pages.
    monkeypatch.setattr(admin.site._registry[SecretKey], "list_per_page", 2)

    with CaptureQueriesContext(connection) as queries:
        response = admin_client.get(url)
    assert response.status_code == 200
    assert response.context["cl"].result_count == 3  # the estimate, not the 4 keys
    assert len([q for q in queries if "pg_class" in q["sql"]]) == 1  # read once

    response = admin_client.get(url, {"client__id__exact": clients[1].pk})
    assert response.status_code == 200
    assert response.context["cl"].result_count == 1  # exactly, not the estimate


def test_an_unfiltered_list_grown_large_since_its_estimate_is_counted_exactly(
    admin_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A table analyzed while small (or never) and grown past ESTIMATE_FROM since: its
    estimate is off by more than a few percent, and the capped count says only that it
    is large, so the list counts it whole."""
    monkeypatch.setattr(workflows_admin, "ESTIMATE_FROM", 2)
    client = ClientFactory(secret_key=False)
    secret_key_create(client=client)
    with connection.cursor() as cursor:  # the estimate: 1 key (below ESTIMATE_FROM)
        cursor.execute("ANALYZE notify_secretkey")
    for _ in range(2):
        secret_key_create(client=client)

    response = admin_client.get(reverse("admin:notify_secretkey_changelist"))

    assert response.status_code == 200
    assert response.context["cl"].result_count == 3  # not 2, where the count was capped


def test_an_unfiltered_list_of_a_small_table_counts_its_rows_without_the_lists_annotations(
    admin_client: Any,
) -> None:
    """The topics' list annotates each with its member count: counted with it, the list
    joined every subscription of every topic to count the topics (400,000 for 1,000)."""
    topic = Topic.objects.create(client=ClientFactory(), key="news")
    for _ in range(2):
        TopicSubscription.objects.create(
            topic=topic, subscriber=SubscriberFactory(client=topic.client)
        )
    with CaptureQueriesContext(connection) as queries:
        response = admin_client.get(reverse("admin:subscribers_topic_changelist"))
    assert response.status_code == 200
    assert response.context["cl"].result_count == 1
    # The paginator's, the first: then the page.
    count = next(q["sql"] for q in queries if "COUNT(" in q["sql"])
    assert "subscribers_topicsubscription" not in count, count


@pytest.mark.parametrize(
    "changelist",
    [
        "notify_triggerevent",
        "subscribers_subscriber",
        "subscribers_topic",
        "subscribers_topicsubscription",
        "workflows_notification",
        "workflows_step",
        "messaging_message",
    ],
)
@pytest.mark.parametrize("query", [{}, {"q": "ann"}, {"client__id__exact": "1"}])
def test_a_list_of_a_table_that_grows_never_counts_the_whole_table(
    admin_client, changelist: str, query: dict[str, str]
) -> None:
    """The paginator counts an unfiltered list by the planner's estimate; a list that
    showed the full count too (show_full_result_count) counted the whole table for it on
    every page, filtered or not: all subscribers, or every topic joined to every
    subscription (topics 160 to 250 ms over 400,000; docs/BENCHMARKS.md, session 22)."""
    MessageFactory(step__notification__subscriber__subscriber_id="ann")
    TopicSubscription.objects.create(
        topic=Topic.objects.create(client=ClientFactory(), key="news"),
        subscriber=SubscriberFactory(),
    )

    with CaptureQueriesContext(connection) as queries:
        response = admin_client.get(reverse(f"admin:{changelist}_changelist"), query)

    assert response.status_code in (200, 302)  # 302: a list with no client filter (?e=1)
    counts = [q["sql"] for q in queries if q["sql"].startswith("SELECT COUNT(")]
    assert [sql for sql in counts if " WHERE " not in sql] == []


def test_a_help_text_holding_angle_brackets_is_shown_as_written_to_a_user_who_may_only_view(
    client, django_user_model
) -> None:
    """Every field is read-only to such a user, and Django writes a read-only field's help
    text out as HTML from the model, past the escaping of the form's fields: the sender's
    address was taken for a tag, and the help read "as `Acme `"."""
    from django.contrib.auth.models import Permission

    viewer = django_user_model.objects.create_user("viewer", password="x", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_client"))
    client.force_login(viewer)
    tenant = ClientFactory()

    html = client.get(_url(tenant, "change")).content.decode()

    shown = "as `Acme <hello@acme.example>`"
    assert escape(shown) in html and shown not in html


@pytest.mark.parametrize("page", ["admin:auth_user_add", "admin:auth_user_change"])
def test_the_user_pages_take_the_escaped_help_texts_too(admin_client, admin_user, page) -> None:
    """Django's UserAdmin.get_form takes no positional `change`: the escaping, given it
    so, made both of its pages a 500."""
    args = [admin_user.pk] if page.endswith("change") else []
    response = admin_client.get(reverse(page, args=args))
    assert response.status_code == 200
    assert "Letters, digits and @/./+/-/_ only." in response.content.decode()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("model", ["subscriber", "topic"])
@pytest.mark.parametrize("view", ["add", "change"])
def test_an_id_or_key_taken_while_the_admin_saves_it_is_a_form_error(
    admin_client, model: str, view: str
) -> None:
    """The form's check passed before a trigger's subscriber command (or an API create)
    committed the same id, whose unique index then refused the save: an IntegrityError,
    a 500. The page is now answered as when the row was there before, with the form."""
    ann = SubscriberFactory(subscriber_id="ann")
    client = ann.client
    rows: Any = Subscriber.objects if model == "subscriber" else Topic.objects
    if model == "subscriber":
        obj: Any = ann
        take = lambda: SubscriberFactory(client=client, subscriber_id="bob")  # noqa: E731
        body = {"subscriber_id": "bob", "email": "", "data": "{}"}
    else:
        obj = Topic.objects.create(client=client, key="news")
        take = lambda: Topic.objects.create(client=client, key="bob")  # noqa: E731
        body = {"key": "bob", "name": ""}
    url = _url(obj, "change")
    if view == "add":
        url = reverse(f"admin:subscribers_{model}_add")
        body |= {"client": client.pk}

    taken, response = while_held(take, lambda: admin_client.post(url, body))

    assert response.status_code == 200
    page = unescape(response.content.decode())
    assert re.search(r"<ul class=\"errorlist[^>]*>\s*<li>[^<]*already", page), page
    assert 'value="bob"' in page
    field = "subscriber_id" if model == "subscriber" else "key"
    assert list(rows.filter(**{field: "bob"}).values_list("pk", flat=True)) == [taken.pk]
    obj.refresh_from_db()
    assert getattr(obj, field) in ("ann", "news")
