"""Capture the SQL each path of the running system makes over a filled database
(scripts/scale/fill.sh), then EXPLAIN (ANALYZE, BUFFERS) each statement; print those
that read a big table sequentially or take more than 20 ms, and write all of them to
/tmp/scale-report-<scenarios>.json (docs/BENCHMARKS.md, session 22).

    PYTHONPATH=. DATABASE_URL=postgres://postgres@127.0.0.1:5432/<db> \
        .venv/bin/python scripts/scale/plans.py [reconcile hot api admin burst]

No broker: sends are recorded, not sent, and every queue reads as empty. It writes to
the database (a trigger, a step sent, the reconciler's re-sends; `burst` rolls its own
changes back): a throwaway database only.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
os.environ.setdefault("NORM_BENCH_ENDPOINTS", "0")
import django

django.setup()

from django.conf import settings  # noqa: E402
from django.db import connection, transaction  # noqa: E402
from django.test import Client as WebClient  # noqa: E402

from config import pipeline  # noqa: E402

settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
settings.ALLOWED_HOSTS = ["*"]

# No broker: nothing is sent, every queue is empty (the reconciler's `_room` is a batch).
sent: list[tuple[Any, ...]] = []
pipeline.send_now = lambda stage, *a, **k: sent.append((stage.task, a))  # type: ignore[assignment]
pipeline.enqueue_on_commit = lambda stage, *a, **k: sent.append((stage.task, a))  # type: ignore[assignment]
pipeline.backlog = lambda queue: 0  # type: ignore[assignment]
from workflows.services import bookkeeping, echo, fanout, reconciler  # noqa: E402

BIG = {
    "notify_triggerevent",
    "workflows_notification",
    "workflows_step",
    "messaging_message",
    "subscribers_subscriber",
    "subscribers_topicsubscription",
}

captured: list[tuple[str, str, Any, float]] = []
label = ""


def wrapper(execute: Callable[..., Any], sql: str, params: Any, many: bool, context: Any) -> Any:
    start = time.perf_counter()
    try:
        return execute(sql, params, many, context)
    finally:
        if not many:
            captured.append((label, sql, params, (time.perf_counter() - start) * 1000))


def nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    out = [plan]
    for child in plan.get("Plans", []):
        out += nodes(child)
    return out


def explain(sql: str, params: Any) -> tuple[float, list[str], int, str]:
    """(execution ms, seq scans of big tables, shared buffers hit+read, a compact plan)."""
    with transaction.atomic():
        sid = transaction.savepoint()
        with connection.cursor() as cursor:
            cursor.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + sql, params)
            (raw,) = cursor.fetchone()
        transaction.savepoint_rollback(sid)
    doc = raw[0] if isinstance(raw, list) else json.loads(raw)[0]
    plan = doc["Plan"]
    scans = [
        f"Seq Scan {n['Relation Name']} rows={n.get('Actual Rows')}x{n.get('Actual Loops')}"
        for n in nodes(plan)
        if n["Node Type"] == "Seq Scan" and n.get("Relation Name") in BIG
    ]
    buffers = plan.get("Shared Hit Blocks", 0) + plan.get("Shared Read Blocks", 0)
    compact = "; ".join(
        f"{n['Node Type']}"
        + (
            f" {n.get('Index Name') or n.get('Relation Name')}"
            if n.get("Index Name") or n.get("Relation Name")
            else ""
        )
        + f" r={n.get('Actual Rows')}x{n.get('Actual Loops')}"
        for n in nodes(plan)
    )
    return doc["Execution Time"], scans, buffers, compact


def run(name: str, fn: Callable[[], Any]) -> None:
    global label
    label = name
    with connection.execute_wrapper(wrapper):
        try:
            fn()
        except Exception as exc:
            print(f"!! {name}: {type(exc).__name__}: {exc}", file=sys.stderr)
    label = ""


SKIP = re.compile(r"^\s*(SAVEPOINT|RELEASE SAVEPOINT|ROLLBACK|BEGIN|COMMIT|SET |SHOW )", re.I)


def report(path: str) -> None:
    rows = []
    for name, sql, params, ms in captured:
        if SKIP.match(sql):
            continue
        try:
            exec_ms, scans, buffers, compact = explain(sql, params)
        except Exception as exc:
            exec_ms, scans, buffers, compact = -1.0, [], 0, f"EXPLAIN failed: {exc}"
            connection.close()
        rows.append(
            {
                "scenario": name,
                "ms_live": round(ms, 2),
                "ms_explain": round(exec_ms, 2),
                "buffers": buffers,
                "seq_scans": scans,
                "sql": sql
                if params is None
                else connection.ops.compose_sql(sql, params)
                if hasattr(connection.ops, "compose_sql")
                else sql,
                "plan": compact,
            }
        )
    with open(path, "w") as f:
        json.dump(rows, f, indent=1, default=str)
    flagged = [r for r in rows if r["seq_scans"] or r["ms_explain"] > 20 or r["ms_live"] > 20]
    print(f"{len(rows)} queries, {len(flagged)} flagged")
    for r in flagged:
        print(
            f"-- [{r['scenario']}] live {r['ms_live']} ms, explain {r['ms_explain']} ms, buffers {r['buffers']}, {r['seq_scans']}"
        )
        print("   " + r["sql"][:600])
        print("   " + r["plan"][:600])


# --- scenarios ---------------------------------------------------------------------------
CLIENT_ID = 7


def api() -> WebClient:
    from notify.models import Client, SecretKey
    from notify.services import secret_key_create

    client = Client.objects.get(pk=CLIENT_ID)
    SecretKey.objects.filter(client=client).delete()
    _, key = secret_key_create(client=client)
    return WebClient(HTTP_AUTHORIZATION=f"ApiKey {key}")


def sub(k: int) -> str:
    """A subscriberId of CLIENT_ID."""
    return f"sub-{CLIENT_ID + 20 * k}"


def scenario_reconcile() -> None:
    run("reconcile", reconciler.reconcile)
    run("reconcile (2nd tick)", reconciler.reconcile)


def scenario_hot() -> None:
    from django.utils import timezone

    from messaging import services as ms
    from notify.models import BridgeSync, BridgeWorkflow
    from notify.selectors import trigger_event_find
    from subscribers import services as ss
    from workflows import bridge
    from workflows.models import Notification, Step

    now = timezone.now()
    BridgeWorkflow.objects.get_or_create(
        client_id=CLIENT_ID,
        bridge_url="http://bridge:4000/api/novu",
        workflow_id="welcome",
        defaults={"discovered_at": now, "steps": [{"stepId": "reminder", "type": "email"}]},
    )
    BridgeSync.objects.update_or_create(
        client_id=CLIENT_ID,
        bridge_url="http://bridge:4000/api/novu",
        defaults={"synced_at": now, "flavour": "norm"},
    )
    web = api()
    txn = f"scale-{uuid.uuid4().hex[:8]}"
    run(
        "trigger API",
        lambda: print(
            "trigger:",
            web.post(
                "/v1/events/trigger",
                {"name": "welcome", "to": [sub(1), sub(2)], "payload": {}, "transactionId": txn},
                content_type="application/json",
            ).status_code,
        ),
    )
    run(
        "trigger API (duplicate transactionId)",
        lambda: web.post(
            "/v1/events/trigger",
            {"name": "welcome", "to": [sub(1)], "payload": {}, "transactionId": txn},
            content_type="application/json",
        ),
    )
    event = trigger_event_find(client_id=CLIENT_ID, transaction_id=txn)
    assert event is not None
    run(
        "workflow worker (fan-out)",
        lambda: fanout.trigger_event_run(trigger_event_id=event.pk, claim="c1"),
    )
    run(
        "subscriber worker",
        lambda: ss.subscriber_process(
            trigger_event_id=event.pk, recipient={"subscriberId": sub(1)}
        ),
    )
    run(
        "subscriber worker (new subscriber)",
        lambda: ss.subscriber_process(
            trigger_event_id=event.pk,
            recipient={"subscriberId": f"new-{uuid.uuid4().hex[:6]}", "email": "n@example.com"},
        ),
    )
    notification = Notification.objects.filter(trigger_event=event).first()
    assert notification is not None
    answer = {"stepId": "reminder", "type": "email", "outputs": {"subject": "Hi", "body": "Hello"}}
    bridge.execute = lambda *a, **k: answer  # type: ignore[assignment]
    run("echo worker (first step)", lambda: echo.echo_run(notification_id=str(notification.pk)))
    step = Step.objects.filter(notification=notification).first()
    assert step is not None
    run("message worker (send)", lambda: ms.message_send(step_id=step.pk, claim="m1"))
    bridge.execute = lambda *a, **k: {"done": True}  # type: ignore[assignment]
    run("echo worker (done)", lambda: echo.echo_run(notification_id=str(notification.pk)))
    # A cancel of a trigger: the API's DELETE.
    txn2 = f"scale-{uuid.uuid4().hex[:8]}"
    web.post(
        "/v1/events/trigger",
        {"name": "welcome", "to": [sub(3)], "payload": {}, "transactionId": txn2},
        content_type="application/json",
    )
    run(
        "cancel API", lambda: print("cancel:", web.delete(f"/v1/events/trigger/{txn2}").status_code)
    )
    run(
        "claim of a step (cancel check EXISTS)",
        lambda: bookkeeping.step_claim(step_id=step.pk, claim="x"),
    )


def scenario_api() -> None:
    from workflows.models import Notification

    web = api()
    some = (
        Notification.objects.filter(client_id=CLIENT_ID)
        .order_by("-created_at")
        .values_list("pk", flat=True)[500]
    )
    event_txn = Notification.objects.filter(pk=some).values_list(
        "trigger_event__transaction_id", flat=True
    )[0]
    gets = [
        ("/v1/notifications", {}),
        ("/v1/notifications", {"page": 5}),
        ("/v1/notifications", {"subscriberId": sub(10)}),
        ("/v1/notifications", {"status": "failed"}),
        ("/v1/notifications", {"status": "running"}),
        ("/v1/notifications", {"transactionId": event_txn}),
        ("/v1/notifications", {"channels": "in_app"}),
        ("/v1/notifications", {"emails": f"user{CLIENT_ID + 20 * 10}@example.com"}),
        ("/v1/notifications", {"templates": "digest-email"}),
        (f"/v1/notifications/{some}", {}),
        ("/v1/messages", {}),
        ("/v1/messages", {"page": 5}),
        ("/v1/messages", {"channel": "email"}),
        ("/v1/messages", {"subscriberId": sub(10)}),
        ("/v1/messages", {"transactionId": event_txn}),
        ("/v2/subscribers", {}),
        ("/v2/subscribers", {"orderBy": "updatedAt"}),
        ("/v2/subscribers", {"email": f"user{CLIENT_ID + 20 * 10}@example.com"}),
        ("/v2/subscribers", {"name": "First"}),
        ("/v1/subscribers", {"page": 3}),
        (f"/v2/subscribers/{sub(10)}", {}),
        (f"/v2/subscribers/{sub(10)}/subscriptions", {}),
        (f"/v1/subscribers/{sub(10)}/notifications/feed", {}),
        (f"/v1/subscribers/{sub(10)}/notifications/feed", {"read": "false"}),
        (f"/v1/subscribers/{sub(10)}/notifications/unseen", {}),
        (f"/v2/subscribers/{sub(10)}/notifications", {}),
        (f"/v2/subscribers/{sub(10)}/notifications/count", {}),
        ("/v2/topics", {}),
        ("/v1/topics", {}),
        ("/v2/topics/all", {}),
        ("/v2/topics/all/subscriptions", {}),
        ("/v1/topics/all/subscribers", {}),
        (f"/v1/topics/all/subscribers/{sub(10)}", {}),
        (f"/v1/events/trigger/{event_txn}", {}),
    ]
    for url, query in gets:

        def call(url: str = url, query: dict[str, Any] = query) -> None:
            response = web.get(url, query)
            if response.status_code != 200:
                print(url, query, response.status_code, response.content[:200], file=sys.stderr)
            body = (
                response.json()
                if response.headers.get("content-type", "").startswith("application/json")
                else {}
            )
            # a second page by the cursor the first gave, where there is one
            cursor = (body.get("next") if isinstance(body, dict) else None) or None
            if isinstance(cursor, str) and cursor:
                captured.append(("", "-- next", None, 0))
                web.get(url, {**query, "after": cursor})

        run(f"GET {url} {query}", call)


def scenario_admin() -> None:
    from django.contrib.auth.models import User

    user, _ = User.objects.get_or_create(
        username="scale", defaults={"is_staff": True, "is_superuser": True}
    )
    web = WebClient()
    web.force_login(user)
    pages = [
        "/admin/workflows/notification/",
        "/admin/workflows/notification/?status__exact=failed",
        f"/admin/workflows/notification/?client__id__exact={CLIENT_ID}",
        "/admin/workflows/notification/?q=sub-27",
        "/admin/workflows/step/",
        "/admin/messaging/message/",
        "/admin/messaging/message/?status__exact=failed",
        "/admin/notify/triggerevent/",
        "/admin/notify/triggerevent/?status__exact=failed",
        f"/admin/notify/triggerevent/?client__id__exact={CLIENT_ID}",
        "/admin/subscribers/subscriber/",
        f"/admin/subscribers/subscriber/?client__id__exact={CLIENT_ID}",
        "/admin/subscribers/topic/",
        "/admin/subscribers/topicsubscription/",
        "/admin/notify/client/",
    ]
    for url in pages:

        def call(url: str = url) -> None:
            response = web.get(url)
            if response.status_code != 200:
                print(url, response.status_code, file=sys.stderr)

        run(f"admin {url}", call)


def scenario_burst() -> None:
    """A broadcast's 100,000 steps come due at once (a delay ended), and another's 50,000
    wait out a 2-minute delay sent with a countdown; no ANALYZE since (autovacuum analyzes
    workflows_step after 10% of its 5,000,000 rows change). Rolled back at the end."""
    from workflows.models import Step

    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute(
                "UPDATE workflows_step SET status = 'scheduled', due_at = now() - interval '2 minutes', "
                "enqueued_at = NULL, claimed_at = NULL WHERE id IN (SELECT (n - 1) * 3 + 3 FROM generate_series(1000001, 1200000, 2) n)"
            )
            cursor.execute(
                "UPDATE workflows_step SET status = 'scheduled', due_at = now() + interval '2 minutes', "
                "enqueued_at = now() WHERE id IN (SELECT (n - 1) * 3 + 2 FROM generate_series(1000002, 1100000, 2) n)"
            )
            cursor.execute(
                "UPDATE workflows_notification SET status = 'running' WHERE id IN "
                "(SELECT md5('n' || n)::uuid FROM generate_series(1000001, 1200000) n)"
            )
        run("burst: reconcile", reconciler.reconcile)
        run(
            "burst: claim of a step not due yet",
            lambda: bookkeeping.step_claim(step_id=(1000002 - 1) * 3 + 2, claim="y"),
        )
        step = Step.objects.get(pk=(1000001 - 1) * 3 + 3)
        run(
            "burst: claim of a due step", lambda: bookkeeping.step_claim(step_id=step.pk, claim="z")
        )
        report("/tmp/scale-report-burst.json")
        transaction.set_rollback(True)
    captured.clear()


if __name__ == "__main__":
    which = sys.argv[1:] or ["reconcile", "hot", "api", "admin"]
    for name in which:
        globals()[f"scenario_{name}"]()
    captured = [c for c in captured if c[1] != "-- next"]
    if captured:
        report(f"/tmp/scale-report-{'-'.join(which)}.json")
