"""norm driving workflows written with Novu's `@novu/framework` 2.x, served by Express.

The app is tests/e2e/novu_bridge/app.js (installed by `make test`, or `npm ci` there).
Its payloads carry non-ASCII text, emoji and nested objects, so every signed request
exercises the canonical-JSON signature the JS SDK recomputes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email.header import decode_header, make_header
from pathlib import Path
from typing import Any

import pytest
import requests
from django.utils import timezone
from pytest_django.live_server_helper import LiveServer

from messaging.models import Message
from notify import services as notify_services
from notify.models import BridgeSync, BridgeWorkflow, Client
from tests.e2e.harness import REPO_ROOT, CeleryProcess, SmtpRecorder, free_port, wait_for
from tests.factories import ClientFactory
from workflows import registry
from workflows.models import Notification
from workflows.services import operations

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

APP_DIR = REPO_ROOT / "tests" / "e2e" / "novu_bridge"
APP_KEY = "sk_test_novu_framework_e2e"
ZOE = {"subscriberId": "zoë-1", "email": "zoe@example.com", "firstName": "Zoë"}


@dataclass
class NovuApp:
    url: str
    process: subprocess.Popen[bytes]
    log: Path


def novu_app_start(log: Path, port: int | None = None, **env: str) -> NovuApp:
    """The Express app on a free loopback port (or `port`), strict: it checks every signature."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the @novu/framework bridge cannot run")
    assert (APP_DIR / "node_modules" / "@novu" / "framework").is_dir(), (
        f"run `npm ci` in {APP_DIR} (make test does)"
    )
    port = port or free_port()
    with log.open("ab") as out:
        process = subprocess.Popen(
            [node, "app.js"],
            cwd=APP_DIR,
            env={**os.environ, "PORT": str(port), "NOVU_SECRET_KEY": APP_KEY, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    app = NovuApp(f"http://127.0.0.1:{port}/api/novu", process, log)

    def healthy() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"the Novu app exited:\n{log.read_text()}")
        try:
            return requests.get(app.url, params={"action": "health-check"}, timeout=2).ok
        except requests.ConnectionError:
            return False

    try:
        wait_for(healthy, timeout=30, what="the Novu app's health-check")
    except BaseException:
        novu_app_stop(app)
        raise
    return app


def novu_app_stop(app: NovuApp) -> None:
    app.process.terminate()
    try:
        app.process.wait(10)
    except subprocess.TimeoutExpired:
        app.process.kill()
        app.process.wait()


@pytest.fixture
def novu_app(tmp_path: Path) -> Iterator[NovuApp]:
    app = novu_app_start(tmp_path / "novu-app.log")
    try:
        yield app
    finally:
        novu_app_stop(app)


def novu_client(app: NovuApp) -> tuple[Client, str]:
    """A client whose secret is the app's NOVU_SECRET_KEY, as with Novu Cloud."""
    client = ClientFactory(bridge_url=app.url)
    notify_services.secret_key_create(client=client, key=APP_KEY)
    return client, APP_KEY


def trigger(
    live_server: LiveServer, key: str, name: str, payload: dict[str, Any], to: Any = ZOE
) -> requests.Response:
    return requests.post(
        f"{live_server.url}/v1/events/trigger",
        json={"name": name, "to": to, "payload": payload},
        headers={"Authorization": f"ApiKey {key}"},
        timeout=30,
    )


def finished(client: Client, count: int = 1, timeout: float = 60) -> list[Notification]:
    def done() -> list[Notification]:
        found = list(Notification.objects.filter(client=client).order_by("created_at"))
        final = [n for n in found if n.status in Notification.FINAL]
        return final if len(final) == count else []

    return wait_for(done, timeout=timeout, what=f"{count} finished notification(s)")


def steps_of(notification: Notification) -> list[tuple[str, str, str]]:
    return [(s.step_id, s.type, s.status) for s in notification.steps.order_by("position")]


def test_in_app_delay_email_and_a_skipped_sms_run_in_order(
    live_server: LiveServer,
    worker: CeleryProcess,
    smtp: tuple[int, SmtpRecorder],
    novu_app: NovuApp,
) -> None:
    client, key = novu_client(novu_app)
    registry.bridge_sync(client=client, bridge_url=novu_app.url)
    registered = BridgeWorkflow.objects.get(client=client, workflow_id="welcome-flow")
    assert BridgeSync.objects.get(client=client).flavour == "novu"
    mail = next(s for s in registered.steps if s["stepId"] == "mail")
    assert mail["controlSchema"]["properties"]["greeting"]["default"] == "Hallo"
    # Liquid in a control value: rendered by the SDK against the subscriber and payload.
    registered.controls = {"mail": {"greeting": "Servus {{subscriber.firstName}} ✨"}}
    registered.save(update_fields=["controls"])
    payload = {
        "userName": "Zoë 👋",
        "delaySeconds": 2,
        "sendSms": True,  # the in-app read before the sms decides: skipped
        "order": {
            "id": "Nº-42",
            "items": ["Crème brûlée", "🍰", "日本茶"],
            # What JS writes back differently (2.0 as 2, 1.5e-07 as 1.5e-7, the key
            # "2024" before "q1"): norm must sign it as JS will check it.
            "meta": {
                "gift": {"to": "Åsa", "note": "ﬁne \u2028 line"},
                "qty": 2.0,
                "rate": 1.5e-07,
                "by": {"q1": 1, "2024": 2},
            },
        },
    }

    response = trigger(live_server, key, "welcome-flow", payload)
    assert response.status_code == 201, response.text
    inbox = wait_for(
        lambda: Message.objects.filter(channel="in_app", status=Message.Status.SENT).first(),
        what="the in-app message",
    )
    Message.objects.filter(pk=inbox.pk).update(seen_at=timezone.now(), read_at=timezone.now())

    [notification] = finished(client)
    assert notification.status == Notification.Status.COMPLETED, notification.error
    assert steps_of(notification) == [
        ("inbox", "in_app", "completed"),
        ("wait", "delay", "completed"),
        ("mail", "email", "completed"),
        ("text", "sms", "skipped"),
    ]
    assert inbox.content["subject"] == "Bienvenue Zoë 👋 🎉"
    assert inbox.content["data"]["order"]["meta"]["gift"]["to"] == "Åsa"
    assert notification.steps.get(step_id="wait").result["duration"] >= 2000
    email = Message.objects.get(channel="email")
    assert email.content["body"].startswith("Servus Zoë ✨ Zoë. Seen in-app: true.")
    assert email.content["body"].endswith("— l'équipe ✉️")  # a control default
    [received] = wait_for(lambda: smtp[1].to("zoe@example.com"), timeout=10, what="the email")
    assert str(make_header(decode_header(received.subject))) == "Grüße, Zoë 👋 — Crème brûlée"


def test_the_branch_the_payload_takes_runs_its_steps(
    live_server: LiveServer, worker: CeleryProcess, novu_app: NovuApp
) -> None:
    client, key = novu_client(novu_app)
    shipped = trigger(live_server, key, "order-flow", {"status": "shipped", "item": "Käse 🧀"})
    pending = trigger(
        live_server, key, "order-flow", {"status": "pending", "item": "Thé"}, to="bob"
    )
    assert (shipped.status_code, pending.status_code) == (201, 201), shipped.text

    by_subscriber = {n.subscriber.subscriber_id: n for n in finished(client, 2)}
    assert [n.status for n in by_subscriber.values()] == ["completed"] * 2
    assert steps_of(by_subscriber["zoë-1"]) == [
        ("shipped-email", "email", "completed"),
        ("status-note", "in_app", "completed"),
    ]
    assert steps_of(by_subscriber["bob"]) == [("status-note", "in_app", "completed")]
    note = Message.objects.get(step__notification=by_subscriber["bob"])
    assert note.content["body"] == "pending: Thé ⏳"


def test_an_email_the_server_refuses_for_good_does_not_keep_the_in_app_after_it(
    live_server: LiveServer,
    worker: CeleryProcess,
    smtp: tuple[int, SmtpRecorder],
    novu_app: NovuApp,
) -> None:
    """As Novu's worker goes on past a failed channel step: the framework replays the
    email, failed, from its state entry and runs the in-app step after it; the
    notification then ends failed, naming the email, the activity API showing it. So
    does one whose failed email is its last step, which the probe replays to find none
    after it."""
    smtp[1].refused |= {"zoe@example.com", "bob@example.com"}
    client, key = novu_client(novu_app)
    response = trigger(live_server, key, "order-flow", {"status": "shipped", "item": "Käse 🧀"})
    assert response.status_code == 201, response.text
    bob = {"subscriberId": "bob", "email": "bob@example.com"}
    assert trigger(live_server, key, "swap-flow", {}, to=bob).status_code == 201

    by_subscriber = {n.subscriber.subscriber_id: n for n in finished(client, 2)}
    mail_last = by_subscriber["bob"]
    assert steps_of(mail_last) == [
        ("swap-note", "in_app", "completed"),
        ("swap-mail", "email", "failed"),
    ]
    assert (mail_last.status, mail_last.error_code) == ("failed", "SendFailed")
    assert mail_last.error.startswith("step 'swap-mail': ")
    notification = by_subscriber["zoë-1"]
    assert steps_of(notification) == [
        ("shipped-email", "email", "failed"),
        ("status-note", "in_app", "completed"),
    ]
    email = Message.objects.get(channel="email", step__notification=notification)
    assert email.status == Message.Status.FAILED
    assert "550 5.1.1 <zoe@example.com>: mailbox unavailable" in email.error
    assert (notification.status, notification.error_code) == ("failed", "SendFailed")
    assert notification.error == f"step 'shipped-email': {email.error}"
    assert smtp[1].messages == []
    headers = {"Authorization": f"ApiKey {key}"}
    feed = requests.get(
        f"{live_server.url}/v1/subscribers/zoë-1/notifications/feed", headers=headers, timeout=10
    )
    assert feed.status_code == 200, feed.text
    assert [m["content"] for m in feed.json()["data"]] == ["shipped: Käse 🧀 ⏳"]
    activity = requests.get(
        f"{live_server.url}/v1/notifications/{notification.pk}", headers=headers, timeout=10
    )
    assert activity.status_code == 200, activity.text
    jobs = activity.json()["data"]["jobs"]
    assert [(j["step"]["stepId"], j["type"], j["status"]) for j in jobs] == [
        ("shipped-email", "email", "failed"),
        ("status-note", "in_app", "completed"),
    ]

    # The mailbox made, an admin's retry sends the email, and the workflow, replayed
    # whole by the framework, is done: the in-app message is not sent twice.
    smtp[1].refused.clear()
    assert operations.notification_retry(notification=notification)
    wait_for(
        lambda: Notification.objects.filter(pk=notification.pk, status="completed").exists(),
        what="the retried notification to complete",
    )
    assert len(wait_for(lambda: smtp[1].to("zoe@example.com"), what="the email")) == 1
    assert Message.objects.filter(channel="in_app", step__notification=notification).count() == 1


def test_a_step_that_throws_fails_the_notification_once(
    live_server: LiveServer, worker: CeleryProcess, novu_app: NovuApp
) -> None:
    client, key = novu_client(novu_app)
    response = trigger(live_server, key, "broken-flow", {"reason": "Überlauf 💥"})
    assert response.status_code == 201, response.text

    [notification] = finished(client)
    assert notification.status == Notification.Status.FAILED
    assert notification.error_code == "StepExecutionFailedError"
    assert (
        notification.error == "Failed to execute Step with id: `boom`: boom from boom: Überlauf 💥"
    )
    assert notification.bridge_attempts == 0  # a 502 from user code is not retried
    assert steps_of(notification) == [("ok-note", "in_app", "completed")]


def test_a_key_the_app_does_not_know_fails_with_its_signature_error(
    live_server: LiveServer,
    worker: CeleryProcess,
    novu_app: NovuApp,
    make_client: Callable[..., tuple[Client, str]],
) -> None:
    client, key = make_client(bridge_url=novu_app.url)  # a fresh key, not the app's

    # Without a registry entry the trigger needs discover, which the app refuses.
    refused = trigger(live_server, key, "order-flow", {"status": "shipped"})
    assert refused.status_code == 502, refused.text
    assert refused.json()["code"] == "bridge_unavailable"
    assert "SignatureMismatchError" in refused.json()["message"]

    # Registered by hand (as from an earlier key): the trigger is accepted, the run is not.
    BridgeSync.objects.filter(client=client).delete()
    BridgeWorkflow.objects.create(
        client=client,
        bridge_url=novu_app.url,
        workflow_id="order-flow",
        steps=[{"stepId": "shipped-email", "type": "email"}],
        discovered_at=timezone.now(),
    )
    accepted = trigger(live_server, key, "order-flow", {"status": "shipped"})
    assert accepted.status_code == 201, accepted.text

    [notification] = finished(client)
    assert notification.status == Notification.Status.FAILED
    assert notification.error_code == "SignatureMismatchError"
    assert notification.bridge_attempts == 0
    assert not notification.steps.exists()
    # The unsigned health-check still told norm which flavour the app speaks.
    assert BridgeSync.objects.get(client=client).flavour == "novu"


def test_skips_from_the_payload_and_from_a_custom_steps_result_and_controls_with_defaults(
    live_server: LiveServer,
    worker: CeleryProcess,
    smtp: tuple[int, SmtpRecorder],
    novu_app: NovuApp,
) -> None:
    client, key = novu_client(novu_app)
    registry.bridge_sync(client=client, bridge_url=novu_app.url)
    BridgeWorkflow.objects.filter(client=client, workflow_id="rich-flow").update(
        controls={"summary": {"greeting": "Servus {{payload.name}}, {{steps.bonus.code}}:"}}
    )
    gold = trigger(live_server, key, "rich-flow", {"name": "Zoë", "points": 6, "waitSeconds": 1})
    # `waitSeconds` left out: the framework applies the schema's default (0: skipped).
    quiet = trigger(live_server, key, "rich-flow", {"name": "Bob", "quiet": True}, to="bob")
    assert (gold.status_code, quiet.status_code) == (201, 201), gold.text

    by_subscriber = {n.subscriber.subscriber_id: n for n in finished(client, 2)}
    zoe, bob = by_subscriber["zoë-1"], by_subscriber["bob"]
    assert (zoe.status, bob.status) == ("completed", "completed"), (zoe.error, bob.error)
    assert steps_of(zoe) == [
        ("score", "custom", "completed"),
        ("card", "in_app", "completed"),
        ("pause", "delay", "completed"),
        ("bonus", "custom", "completed"),
        ("summary", "email", "completed"),
    ]
    assert steps_of(bob) == [
        ("score", "custom", "completed"),
        ("card", "in_app", "skipped"),
        ("pause", "delay", "skipped"),
        ("bonus", "custom", "skipped"),
        ("summary", "email", "skipped"),  # its skip read the custom step's result
    ]
    assert zoe.steps.get(step_id="score").result == {"points": 12, "tier": "gold"}
    pause = zoe.steps.get(step_id="pause")
    assert pause.outputs == {"amount": 1, "unit": "seconds"}
    assert pause.result["duration"] >= 1000
    card = Message.objects.get(step__notification=zoe, channel="in_app")
    assert card.content["subject"] == "Niveau gold ✨"
    feed = requests.get(
        f"{live_server.url}/v1/subscribers/zoë-1/notifications/feed",
        headers={"Authorization": f"ApiKey {key}"},
        timeout=10,
    )
    assert feed.status_code == 200, feed.text
    [shown] = feed.json()["data"]
    assert shown["cta"]["data"] == {"url": "/rewards", "target": "_self"}
    assert [b["content"] for b in shown["cta"]["action"]["buttons"]] == ["Einlösen", "Später"]
    inbox = requests.get(
        f"{live_server.url}/v2/subscribers/zoë-1/notifications",
        headers={"Authorization": f"ApiKey {key}"},
        timeout=10,
    )
    assert inbox.status_code == 200, inbox.text
    [drawn] = inbox.json()["data"]
    assert drawn["avatar"] == "https://example.com/avatar.png"
    assert drawn["primaryAction"] == {
        "label": "Einlösen",
        "isCompleted": False,
        "redirect": {"url": "https://example.com/redeem", "target": "_blank"},
    }
    assert drawn["data"] == {"tier": "gold"}
    summary = Message.objects.get(step__notification=zoe, channel="email")
    assert summary.content == {
        "subject": "[Punkte] gold",  # the control's default
        "body": "<p>Servus Zoë, B-12: Zoë: 12, bonus B-12</p>",
    }
    [received] = wait_for(lambda: smtp[1].to("zoe@example.com"), timeout=10, what="the email")
    assert received.subject == "[Punkte] gold"


def test_the_order_the_payload_gives_the_steps_is_the_order_they_run(
    live_server: LiveServer, worker: CeleryProcess, novu_app: NovuApp
) -> None:
    client, key = novu_client(novu_app)
    mail_first = trigger(live_server, key, "swap-flow", {"first": "mail"})
    note_first = trigger(live_server, key, "swap-flow", {}, to="bob")
    assert (mail_first.status_code, note_first.status_code) == (201, 201), mail_first.text

    by_subscriber = {n.subscriber.subscriber_id: n for n in finished(client, 2)}
    assert steps_of(by_subscriber["zoë-1"]) == [
        ("swap-mail", "email", "completed"),
        ("swap-note", "in_app", "completed"),
    ]
    assert steps_of(by_subscriber["bob"])[0] == ("swap-note", "in_app", "completed")
    assert [s[0] for s in steps_of(by_subscriber["bob"])] == ["swap-note", "swap-mail"]
    note = Message.objects.get(step__notification=by_subscriber["zoë-1"], channel="in_app")
    assert note.content["body"] == "note after mail"


def test_a_step_the_code_does_not_reach_between_probe_and_execute_is_asked_for_again(
    live_server: LiveServer, worker: CeleryProcess, novu_app: NovuApp
) -> None:
    """The second run of the code (the execute of the email its probe named) does not
    reach the email: the SDK answers 200 with no outputs, which norm recorded as an email
    without subject or body, failed for good. It asks again, and the fourth run sends it."""
    client, key = novu_client(novu_app)
    response = trigger(live_server, key, "wavering-flow", {"key": "k-1"})
    assert response.status_code == 201, response.text

    [notification] = finished(client)
    assert notification.status == Notification.Status.COMPLETED, notification.error
    assert steps_of(notification) == [("wavering-mail", "email", "completed")]
    assert Message.objects.get(step__notification=notification).content == {
        "subject": "Encore là ✉️",
        "body": "run 4",
    }


def test_a_step_added_by_a_deployment_after_the_discover_is_discovered_and_run(
    live_server: LiveServer, worker: CeleryProcess, novu_app: NovuApp, tmp_path: Path
) -> None:
    client, key = novu_client(novu_app)
    registry.bridge_sync(client=client, bridge_url=novu_app.url)
    registered = BridgeWorkflow.objects.get(client=client, workflow_id="changing-flow")
    assert [s["stepId"] for s in registered.steps] == ["first", "last"]
    # The app is deployed again, with a step more, while the registry is fresh.
    novu_app_stop(novu_app)
    port = int(novu_app.url.split(":")[2].split("/")[0])
    v2 = novu_app_start(tmp_path / "novu-app-v2.log", port=port, NOVU_APP_VARIANT="v2")
    try:
        response = trigger(live_server, key, "changing-flow", {"x": 1})
        assert response.status_code == 201, response.text
        [notification] = finished(client)
    finally:
        novu_app_stop(v2)

    assert notification.status == Notification.Status.COMPLETED, notification.error
    assert steps_of(notification) == [
        ("first", "in_app", "completed"),
        ("added", "in_app", "completed"),
        ("last", "in_app", "completed"),
    ]
    registered.refresh_from_db()
    assert [s["stepId"] for s in registered.steps] == ["first", "added", "last"]


def test_what_the_framework_refuses_fails_the_notification_with_its_reason_and_no_retry(
    live_server: LiveServer, worker: CeleryProcess, novu_app: NovuApp
) -> None:
    client, key = novu_client(novu_app)
    registry.bridge_sync(client=client, bridge_url=novu_app.url)
    # As discovered from an earlier deployment: a workflow the app no longer defines, and
    # a payload schema that did not yet ask for a number.
    BridgeWorkflow.objects.create(
        client=client,
        bridge_url=novu_app.url,
        workflow_id="gone-flow",
        steps=[{"stepId": "note", "type": "in_app"}],
        discovered_at=timezone.now(),
    )
    BridgeWorkflow.objects.filter(client=client, workflow_id="rich-flow").update(payload_schema={})
    gone = trigger(live_server, key, "gone-flow", {"x": 1})
    invalid = trigger(live_server, key, "rich-flow", {"points": "many"}, to="bob")
    assert (gone.status_code, invalid.status_code) == (201, 201), gone.text

    by_subscriber = {n.subscriber.subscriber_id: n for n in finished(client, 2)}
    gone_run, invalid_run = by_subscriber["zoë-1"], by_subscriber["bob"]
    assert (gone_run.status, gone_run.error_code) == ("failed", "WorkflowNotFoundError")
    assert gone_run.error == (
        "Workflow with id: `gone-flow` does not exist. Please provide a valid id."
    )
    assert (invalid_run.status, invalid_run.error_code) == (
        "failed",
        "ExecutionEventPayloadInvalidError",
    )
    # The framework says which field, in its data: the reason must not be lost.
    assert "/points: must be number" in invalid_run.error, invalid_run.error
    assert (gone_run.bridge_attempts, invalid_run.bridge_attempts) == (0, 0)
    assert not gone_run.steps.exists() and not invalid_run.steps.exists()


def test_numbers_postgresql_stores_as_integers_beyond_2_53_are_signed_as_js_reads_them(
    live_server: LiveServer, worker: CeleryProcess, novu_app: NovuApp
) -> None:
    client, key = novu_client(novu_app)
    # 1e21 is stored by PostgreSQL (jsonb) as 1000000000000000000000, which JS reads
    # back as 1e21 and writes as 1e+21; an id past 2**53 is read by JS rounded.
    payload = {"status": "shipped", "item": "Käse", "ref": 1e21, "id": 12345678901234567890}
    response = trigger(live_server, key, "order-flow", payload)
    assert response.status_code == 201, response.text

    [notification] = finished(client)
    assert notification.status == Notification.Status.COMPLETED, notification.error
    assert [s[0] for s in steps_of(notification)] == ["shipped-email", "status-note"]


def test_a_zod_payload_is_judged_by_zod_not_by_its_json_schema_translation(
    live_server: LiveServer, worker: CeleryProcess, novu_app: NovuApp
) -> None:
    client, key = novu_client(novu_app)
    # What zod takes and the translation its discover shows refuses: the regex's `i` flag,
    # a WHATWG URL with accents, 19.99 as a multiple of 0.01.
    link = "https://shop.example/crème-brûlée"
    taken = trigger(
        live_server, key, "zod-receipt-flow", {"sku": "ABC-12", "total": 19.99, "link": link}
    )
    # And what zod refuses, left to it: the notification fails with zod's reason.
    refused = trigger(
        live_server,
        key,
        "zod-receipt-flow",
        {"sku": "abc-1", "total": 5, "link": "no link"},
        to="bob",
    )
    assert (taken.status_code, refused.status_code) == (201, 201), taken.text

    by_subscriber = {n.subscriber.subscriber_id: n for n in finished(client, 2)}
    zoe, bob = by_subscriber["zoë-1"], by_subscriber["bob"]
    assert zoe.status == Notification.Status.COMPLETED, zoe.error
    receipt = Message.objects.get(step__notification=zoe)
    assert receipt.content["body"] == f"ABC-12 × 1: 19.99 € ({link})"
    assert (bob.status, bob.error_code) == ("failed", "ExecutionEventPayloadInvalidError")
    assert "/link: Invalid url" in bob.error, bob.error


def test_a_zod_union_member_a_trimmed_string_and_a_url_in_a_union_are_taken_as_zod_takes_them(
    live_server: LiveServer, worker: CeleryProcess, novu_app: NovuApp
) -> None:
    """The translation of zod-union-flow's schema refused each of these, which zod takes:
    the trigger was a 400 for a payload the workflow runs."""
    client, key = novu_client(novu_app)
    link = "https://shop.example/crème-brûlée"
    channel = {"kind": "sms", "phone": "+15550000", "locale": "de"}
    payload = {"channel": channel, "code": " AB1 ", "link": link}
    response = trigger(live_server, key, "zod-union-flow", payload)
    assert response.status_code == 201, response.text

    [notification] = finished(client)
    assert notification.status == Notification.Status.COMPLETED, notification.error
    note = Message.objects.get(step__notification=notification)
    assert note.content["body"] == f'{{"kind":"sms","phone":"+15550000"}} [AB1] {link}'
