"""Novu's TypeScript client @novu/api 3.19.1, pointed at a live norm.

@novu/api parses every answer with zod and throws when one does not have the shape
Novu's OpenAPI document gives it (a ResponseValidationError): the strictest reader of
norm's answers. Each test runs a plan of calls through tests/e2e/novu_bridge/
novu_api_calls.js (installed by `make test`, or `npm ci` there) and asserts on the values
the client returns, or on the typed error it raises.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from typing import Any

import pytest
from django.utils import timezone
from pytest_django.live_server_helper import LiveServer

from messaging.models import Message
from notify.models import Client
from subscribers.models import Subscriber
from tests.e2e.harness import REPO_ROOT, CeleryProcess, SmtpRecorder
from tests.e2e.test_novu_clients import (
    DELAYED,
    SHIPPED,
    assert_canceled,
    members,
    settle,
    wait_step_scheduled,
)
from tests.factories import MessageFactory, NotificationFactory, StepFactory, SubscriberFactory
from workflows.models import Notification, Step

APP_DIR = REPO_ROOT / "tests" / "e2e" / "novu_bridge"
NODE = shutil.which("node")
if NODE is None or not (APP_DIR / "node_modules" / "@novu" / "api").is_dir():
    pytest.skip(
        f"@novu/api needs node and `npm ci` in {APP_DIR} (make test does)",
        allow_module_level=True,
    )

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

MakeClient = Callable[..., tuple[Client, str]]
Call = tuple[Any, ...]


def novu_api(live_server: LiveServer, key: str, *calls: Call) -> list[dict[str, Any]]:
    """Each call, ("subscribers.create", arg, ...), made in order by one @novu/api client:
    {"result": ...} (what the client returned, as parsed by its models) or {"error": ...}."""
    plan = {
        "serverURL": live_server.url,
        "secretKey": key,
        "calls": [{"call": name, "args": list(args)} for name, *args in calls],
    }
    done = subprocess.run(
        [str(NODE), "novu_api_calls.js"],
        cwd=APP_DIR,
        input=json.dumps(plan).encode(),
        capture_output=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    outcomes: list[dict[str, Any]] = json.loads(done.stdout)
    return outcomes


def results(live_server: LiveServer, key: str, *calls: Call) -> list[Any]:
    """The calls' results; each must succeed."""
    outcomes = novu_api(live_server, key, *calls)
    failed = [
        f"{call[0]}: {o['error']['name']} {o['error']['pretty'] or o['error']['message']}"
        for call, o in zip(calls, outcomes, strict=True)
        if "error" in o
    ]
    assert not failed, "\n".join(failed)
    return [o["result"] for o in outcomes]


def errors(live_server: LiveServer, key: str, *calls: Call) -> list[dict[str, Any]]:
    """The errors the calls raised; each must raise."""
    outcomes = novu_api(live_server, key, *calls)
    succeeded = [call[0] for call, o in zip(calls, outcomes, strict=True) if "error" not in o]
    assert not succeeded, succeeded
    return [o["error"] for o in outcomes]


def trigger(workflow: str, to: Any, payload: Any = DELAYED) -> Call:
    return ("trigger", {"workflowId": workflow, "to": to, "payload": payload})


def test_novu_api_drives_norm_end_to_end(
    live_server: LiveServer,
    make_client: MakeClient,
    worker: CeleryProcess,
    smtp: tuple[int, SmtpRecorder],
) -> None:
    client, key = make_client()
    ann = {"subscriberId": "ann", "email": "ann@example.com", "firstName": "Ann"}
    created, bob, bulk, got, page, patched, online = results(
        live_server,
        key,
        ("subscribers.create", ann),
        ("subscribers.create", {"subscriberId": "bob", "email": "bob@example.com"}),
        (
            "subscribers.createBulk",
            {"subscribers": [{"subscriberId": "cid", "email": "cid@example.com"}, ann]},
        ),
        ("subscribers.retrieve", "ann"),
        ("subscribers.search", {"limit": 2}),
        ("subscribers.patch", {"lastName": "Lee", "firstName": None}, "ann"),
        ("subscribers.properties.updateOnlineFlag", {"isOnline": True}, "bob"),
    )
    assert (created["subscriberId"], created["firstName"], created["deleted"]) == (
        "ann",
        "Ann",
        False,
    )
    assert bob["email"] == "bob@example.com"
    assert (bulk["created"], bulk["updated"], bulk["failed"]) == (
        [{"subscriberId": "cid"}],
        [{"subscriberId": "ann"}],
        [],
    )
    assert (got["id"], got["email"]) == (created["id"], "ann@example.com")
    assert (len(page["data"]), page["totalCount"]) == (2, 3) and page["next"]
    assert (patched["lastName"], patched["firstName"], patched["email"]) == (
        "Lee",
        None,
        "ann@example.com",
    )
    assert online["isOnline"] is True

    topic, listed, renamed, added, subscriptions, check, anns = results(
        live_server,
        key,
        ("topics.create", {"key": "news", "name": "News"}),
        ("topics.list", {}),
        ("topics.update", {"name": "Newsletter"}, "news"),
        ("topics.subscriptions.create", {"subscriberIds": ["ann", "bob", "nobody"]}, "news"),
        ("topics.subscriptions.list", {"topicKey": "news"}),
        ("topics.subscribers.retrieve", "ann", "news"),
        ("subscribers.topics.list", {"subscriberId": "ann"}),
    )
    assert (topic["key"], topic["name"]) == ("news", "News")
    assert [t["key"] for t in listed["data"]] == ["news"]
    assert renamed["name"] == "Newsletter"
    assert added["meta"] == {"totalCount": 3, "successful": 2, "failed": 1}
    assert [(e["subscriberId"], e["code"]) for e in added["errors"]] == [
        ("nobody", "SUBSCRIBER_NOT_FOUND")
    ]
    assert sorted(s["subscriber"]["subscriberId"] for s in subscriptions["data"]) == ["ann", "bob"]
    assert (check["topicKey"], check["externalSubscriberId"]) == ("news", "ann")
    assert [s["topic"]["key"] for s in anns["data"]] == ["news"]
    assert members(client, "news") == ["ann", "bob"]

    mixed = [
        {"type": "Topic", "topicKey": "news", "exclude": ["bob"]},
        {"subscriberId": "dan", "email": "dan@example.com"},
        "cid",
    ]
    one, topic_wide, several, bulk_triggered, broadcast, waiting = results(
        live_server,
        key,
        trigger("order-update", "cid"),
        trigger("order-update", {"type": "Topic", "topicKey": "news"}, SHIPPED),
        trigger("order-update", mixed),
        (
            "triggerBulk",
            {
                "events": [
                    {"workflowId": "order-update", "to": "ann", "payload": DELAYED},
                    {"workflowId": "no-such-workflow", "to": "bob", "payload": {}},
                ]
            },
        ),
        ("triggerBroadcast", {"name": "order-update", "payload": DELAYED}),
        trigger("welcome", "ann", {"delaySeconds": 60}),
    )
    assert (one["acknowledged"], one["status"]) == (True, "processed")
    settle(client, one["transactionId"], ["cid"])
    settle(client, topic_wide["transactionId"], ["ann", "bob"])
    settle(client, several["transactionId"], ["ann", "cid", "dan"])
    assert [r["status"] for r in bulk_triggered] == ["processed", "error"]
    settle(client, bulk_triggered[0]["transactionId"], ["ann"])
    settle(client, broadcast["transactionId"], ["ann", "bob", "cid", "dan"])
    assert sorted(r for m in smtp[1].messages for r in m.recipients) == [
        "ann@example.com",
        "bob@example.com",
    ]
    step = wait_step_scheduled(client, waiting["transactionId"])
    canceled, again = results(
        live_server, key, ("cancel", waiting["transactionId"]), ("cancel", waiting["transactionId"])
    )
    assert (canceled, again) == (True, False)
    assert_canceled(client, waiting["transactionId"], step)

    # ann's in-app messages: the topic's shipped one, the mixed, bulk and broadcast delayed
    # ones, and the welcome's.
    messages, activity, inbox, counts, feed, unseen = results(
        live_server,
        key,
        ("messages.retrieve", {"subscriberId": "ann", "channel": "in_app"}),
        ("notifications.list", {"subscriberIds": ["ann"], "limit": 50}),
        ("subscribers.notifications.list", {"subscriberId": "ann"}),
        ("subscribers.notifications.count", "ann", json.dumps([{"read": False}, {"seen": True}])),
        ("subscribers.notifications.feed", {"subscriberId": "ann"}),
        ("subscribers.notifications.unseenCount", {"subscriberId": "ann"}),
    )
    assert messages["totalCount"] == 5
    assert {m["channel"] for m in messages["data"]} == {"in_app"}
    assert messages["data"][0]["content"] == "Hi there, welcome to norm."
    assert len(activity["data"]) == 5
    welcome = next(n for n in activity["data"] if n["templateId"] == "welcome")
    assert [(j["type"], j["status"]) for j in welcome["jobs"]] == [
        ("in_app", "completed"),
        ("delay", "canceled"),
    ]
    assert [n["body"] for n in inbox["data"]] == [m["content"] for m in messages["data"]]
    assert [c["count"] for c in counts] == [5, 0]
    assert [m["id"] for m in feed["data"]] == [m["id"] for m in messages["data"]]
    assert unseen["count"] == 5

    newest, older = inbox["data"][0]["id"], inbox["data"][1]["id"]
    detail, read, unread, marked, seen_all, read_all, seen_inbox, unseen_after = results(
        live_server,
        key,
        ("notifications.retrieve", welcome["id"]),
        ("subscribers.notifications.markAsRead", {"subscriberId": "ann", "notificationId": newest}),
        (
            "subscribers.notifications.markAsUnread",
            {"subscriberId": "ann", "notificationId": newest},
        ),
        ("subscribers.messages.markAllAs", {"messageId": [older], "markAs": "read"}, "ann"),
        ("subscribers.messages.markAll", {"markAs": "seen"}, "ann"),
        ("subscribers.notifications.markAllAsRead", {}, "ann"),
        ("subscribers.notifications.markAsSeen", {}, "ann"),
        ("subscribers.notifications.unseenCount", {"subscriberId": "ann"}),
    )
    assert (detail["transactionId"], detail["subscriber"]["subscriberId"]) == (
        waiting["transactionId"],
        "ann",
    )
    assert (read["isRead"], read["isSeen"]) == (True, True) and read["readAt"]
    assert (unread["isRead"], unread["isSeen"], unread["readAt"]) == (False, True, None)
    assert [(m["id"], m["read"], m["seen"]) for m in marked] == [(older, True, True)]
    assert seen_all == 3  # the five less the two the marks above saw
    assert (read_all, seen_inbox, unseen_after["count"]) == (None, None, 0)
    anns_messages = Message.objects.filter(client=client, subscriber__subscriber_id="ann")
    assert not anns_messages.filter(channel="in_app", read_at=None).exists()

    unsubscribed, deleted_topic, deleted = results(
        live_server,
        key,
        ("topics.subscriptions.delete", {"subscriptions": [{"subscriberId": "bob"}]}, "news"),
        ("topics.delete", "news"),
        ("subscribers.delete", "cid"),
    )
    assert [s["subscriber"]["subscriberId"] for s in unsubscribed["data"]] == ["bob"]
    assert deleted_topic == {"acknowledged": True}
    assert deleted == {"acknowledged": True, "status": "deleted"}
    assert not Subscriber.objects.filter(client=client, subscriber_id="cid").exists()


def test_novu_api_names_topic_subscriptions_by_their_identifiers(
    live_server: LiveServer, make_client: MakeClient
) -> None:
    client, key = make_client()
    for name in ("ann", "bob"):
        Subscriber.objects.create(client=client, subscriber_id=name)

    subscriptions = [{"identifier": "ann-weekly", "subscriberId": "ann", "name": "Weekly"}, "bob"]
    added, got, default, renamed, gone = results(
        live_server,
        key,
        ("topics.subscriptions.create", {"subscriptions": subscriptions}, "news"),
        ("topics.subscriptions.getSubscription", "news", "ann-weekly"),
        ("topics.subscriptions.getSubscription", "news", "tk_news:si_bob"),
        (
            "topics.subscriptions.update",
            {
                "topicKey": "news",
                "identifier": "ann-weekly",
                "updateTopicSubscriptionRequestDto": {"name": "Monthly"},
            },
        ),
        ("topics.subscriptions.delete", {"subscriptions": [{"identifier": "ann-weekly"}]}, "news"),
    )
    assert [(s["identifier"], s.get("name")) for s in added["data"]] == [
        ("ann-weekly", "Weekly"),
        ("tk_news:si_bob", None),
    ]
    assert (got["identifier"], default["identifier"]) == ("ann-weekly", "tk_news:si_bob")
    assert (renamed["identifier"], renamed["name"]) == ("ann-weekly", "Monthly")
    assert [s["identifier"] for s in gone["data"]] == ["ann-weekly"]
    assert members(client, "news") == ["bob"]


def test_novu_api_reads_notifications_in_every_state(
    live_server: LiveServer, make_client: MakeClient
) -> None:
    """Every step type and status, each channel's message, and notifications that ended
    before any step: the activity, messages, feed and inbox parse, and an in-app
    message's avatar, redirect, actions and data come through."""
    client, key = make_client()
    now = timezone.now()
    zoe = SubscriberFactory(
        client=client,
        subscriber_id="zoe",
        email="zoe@example.com",
        phone="+4420700000",
        first_name="Zoë",
        avatar="https://cdn.example.com/zoe.png",
        locale="en-GB",
        timezone="Europe/London",
        data={"plan": "pro", "nested": {"a": [1, None]}},
    )
    in_app = {
        "subject": "Hello",
        "body": "Order A-1 has shipped.",
        "avatar": "https://cdn.example.com/box.png",
        "redirect": {"url": "https://shop.example.com/a-1", "target": "_blank"},
        "primaryAction": {"label": "Track", "redirect": {"url": "/track"}},
        "secondaryAction": {"label": "Later"},
        "data": {"orderId": "A-1"},
    }
    outputs = {
        "in_app": in_app,
        "email": {"subject": "Mail", "body": "<p>Hi</p>"},
        "sms": {"body": "text"},
        "push": {"subject": "Push", "body": "pushed"},
        "chat": {"body": "chat"},
        "delay": {},
        "custom": {},
    }
    providers = {"in_app": "inbox", "email": "django-email"}
    runs = [
        (Step.Status.COMPLETED, Notification.Status.COMPLETED, Message.Status.SENT),
        (Step.Status.FAILED, Notification.Status.FAILED, Message.Status.FAILED),
        (Step.Status.SKIPPED, Notification.Status.COMPLETED, Message.Status.SENT),
        (Step.Status.CANCELED, Notification.Status.CANCELED, Message.Status.SENDING),
        (Step.Status.SCHEDULED, Notification.Status.RUNNING, Message.Status.SENDING),
        (Step.Status.PROCESSING, Notification.Status.RUNNING, Message.Status.SENDING),
    ]
    for number, (step_status, status, message_status) in enumerate(runs):
        ended = now if step_status not in (Step.Status.SCHEDULED, Step.Status.PROCESSING) else None
        notification = NotificationFactory(
            trigger_event__client=client,
            trigger_event__workflow_id=f"run-{number}",
            subscriber=zoe,
            status=status,
            error="it failed" if status == Notification.Status.FAILED else "",
            completed_at=now if status in Notification.FINAL else None,
        )
        for position, (kind, output) in enumerate(outputs.items()):
            step = StepFactory(
                notification=notification,
                step_id=kind,
                type=kind,
                position=position,
                status=step_status,
                outputs=output,
                error="why" if step_status in (Step.Status.FAILED, Step.Status.SKIPPED) else "",
                claimed_at=now,
                completed_at=ended,
            )
            if kind not in ("delay", "custom"):
                MessageFactory(
                    step=step,
                    channel=kind,
                    provider=providers.get(kind, "console"),
                    content=output,
                    status=message_status,
                    recipient="zoe@example.com",
                    sent_at=now if message_status == Message.Status.SENT else None,
                )
    for status in Notification.Status:
        NotificationFactory(
            trigger_event__client=client,
            trigger_event__workflow_id=f"no-steps-{status}",
            subscriber=zoe,
            status=status,
            error="the bridge is down" if status == Notification.Status.FAILED else "",
            completed_at=now if status in Notification.FINAL else None,
        )

    activity, messages, feed, inbox, subscriber = results(
        live_server,
        key,
        ("notifications.list", {"limit": 50}),
        ("messages.retrieve", {"limit": 100}),
        ("subscribers.notifications.feed", {"subscriberId": "zoe", "limit": 100}),
        ("subscribers.notifications.list", {"subscriberId": "zoe", "limit": 100}),
        ("subscribers.retrieve", "zoe"),
    )
    assert len(activity["data"]) == len(runs) + len(Notification.Status)
    jobs = {(j["type"], j["status"]) for n in activity["data"] for j in n["jobs"]}
    assert {status for _, status in jobs} == {
        "completed",
        "failed",
        "skipped",
        "canceled",
        "queued",
        "delayed",
        "running",
    }
    assert {kind for kind, _ in jobs} == {*outputs, "trigger"}
    # Those still being sent are not listed.
    assert len(messages["data"]) == 3 * 5
    assert {m["channel"] for m in messages["data"]} == {"in_app", "email", "sms", "push", "chat"}
    assert {m["status"] for m in messages["data"]} == {"sent", "error"}
    # A feed lists the in-app messages delivered.
    in_apps = [
        m["id"] for m in messages["data"] if (m["channel"], m["status"]) == ("in_app", "sent")
    ]
    assert [m["id"] for m in feed["data"]] == [n["id"] for n in inbox["data"]] == in_apps
    assert feed["data"][0]["cta"]["action"]["buttons"] == [
        {"type": "primary", "content": "Track"},
        {"type": "secondary", "content": "Later"},
    ]
    shown = inbox["data"][0]
    assert (shown["avatar"], shown["redirect"], shown["data"]) == (
        in_app["avatar"],
        in_app["redirect"],
        {"orderId": "A-1"},
    )
    assert (shown["primaryAction"]["label"], shown["secondaryAction"]["label"]) == (
        "Track",
        "Later",
    )
    assert (subscriber["phone"], subscriber["timezone"], subscriber["data"]) == (
        "+4420700000",
        "Europe/London",
        {"plan": "pro", "nested": {"a": [1, None]}},
    )

    mine = {"subscriberId": "zoe", "notificationId": shown["id"], "actionType": "primary"}
    completed, reverted, acted = results(
        live_server,
        key,
        ("subscribers.notifications.completeAction", mine),
        ("subscribers.notifications.revertAction", mine),
        (
            "subscribers.messages.updateAsSeen",
            {
                "subscriberId": "zoe",
                "messageId": shown["id"],
                "type": "secondary",
                "markMessageActionAsSeenDto": {"status": "done"},
            },
        ),
    )
    assert completed["primaryAction"]["isCompleted"] is True
    assert reverted["primaryAction"]["isCompleted"] is False
    assert acted["cta"]["action"] == {
        "status": "done",
        "buttons": [
            {"type": "primary", "content": "Track"},
            {"type": "secondary", "content": "Later"},
        ],
        "result": {"type": "secondary"},
    }


def test_novu_api_raises_its_typed_errors(live_server: LiveServer, make_client: MakeClient) -> None:
    client, key = make_client()
    Subscriber.objects.create(client=client, subscriber_id="ann", email="ann@example.com")

    (wrong_key,) = errors(live_server, "nk_not_a_key", ("subscribers.retrieve", "ann"))
    assert (wrong_key["name"], wrong_key["statusCode"]) == ("ErrorDto", 401)

    results(live_server, key, ("topics.create", {"key": "news", "name": "News"}))
    unknown, no_topic, topic_trigger, invalid, unprocessable, exists, topic_exists, dots = errors(
        live_server,
        key,
        ("subscribers.retrieve", "nobody"),
        ("topics.get", "missing"),
        trigger("welcome", {"type": "Topic", "topicKey": "missing"}),
        trigger("welcome", []),
        ("subscribers.create", {"subscriberId": ""}),
        ("subscribers.create", {"subscriberId": "ann"}, True),
        ("topics.create", {"key": "news", "name": "News"}, True),
        # No URL reaches it: @novu/api's fetch resolves /v2/subscribers/.. to /v2/.
        ("subscribers.create", {"subscriberId": ".."}),
    )
    assert (unknown["name"], unknown["statusCode"]) == ("ErrorDto", 404)
    assert unknown["data"]["path"] == "/v2/subscribers/nobody"
    assert (no_topic["name"], no_topic["statusCode"]) == ("ErrorDto", 404)
    assert (topic_trigger["name"], topic_trigger["statusCode"]) == ("ErrorDto", 404)
    assert (invalid["name"], invalid["statusCode"]) == ("PayloadValidationExceptionDto", 400)
    assert [e["field"] for e in invalid["data"]["errors"]] == ["to"]
    assert (unprocessable["name"], unprocessable["statusCode"]) == ("ValidationErrorDto", 422)
    assert list(unprocessable["data"]["errors"]) == ["subscriberId"]
    # A 409 is Novu's existing subscriber (topic), which @novu/api parses as its error.
    assert (exists["name"], exists["statusCode"]) == ("SubscriberResponseDto", 409)
    assert (topic_exists["name"], topic_exists["statusCode"]) == ("TopicResponseDto", 409)
    assert (dots["name"], dots["statusCode"]) == ("ErrorDto", 400)
    assert "nor be . or .." in dots["message"]
    assert not Subscriber.objects.filter(subscriber_id="..").exists()

    # What norm does not keep (credentials, preferences) or do (delete a message) is
    # Novu's 404 for a route it lacks: @novu/api's ErrorDto, not a parse failure.
    unsupported = errors(
        live_server,
        key,
        ("messages.delete", "1"),
        ("subscribers.credentials.update", {"providerId": "slack", "credentials": {}}, "ann"),
        ("subscribers.preferences.list", {"subscriberId": "ann"}),
        ("subscribers.notifications.archive", {"subscriberId": "ann", "notificationId": "1"}),
    )
    assert {(e["name"], e["statusCode"]) for e in unsupported} == {("ErrorDto", 404)}
    assert all("norm has no such endpoint" in e["message"] for e in unsupported)
