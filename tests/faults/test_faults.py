"""Faults injected into a running pipeline: nothing is lost, nothing is sent twice.

Each test runs a workload through real Celery processes, breaks something, lets the
system recover and checks that every notification reached a final state, that every
email arrived once (counted by `X-Norm-Message-Id` at the SMTP server) and every
in-app message exists once. The one repeat allowed is a send interrupted between the
provider call and its commit: such repeats are printed and bounded by the number of
sends that were in flight when the fault hit.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Collection
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
from django.db import connection
from django.utils import timezone
from pytest_django.live_server_helper import LiveServer

from messaging.models import Message
from notify.models import Client, TriggerEvent
from tests.e2e.conftest import StartCelery, demo_bridge_url
from tests.e2e.harness import (
    BridgeProxy,
    CeleryProcess,
    api_post,
    free_port,
    recipients,
    wait_for,
)
from tests.faults.conftest import CountingSmtp, RedisServer, smtp_serve
from workflows.models import Notification, Step
from workflows.services.common import OPEN_STEP

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
FLEET = ("worker", "worker", "beat")  # what each fault test runs: two workers and beat

# Recovery within seconds instead of minutes: Redis hands a dead worker's unacknowledged
# messages out again after the visibility timeout (it must exceed every countdown given
# to the broker), the reconciler runs every second and takes a claim older than 5 s for
# a dead worker's.
RECOVERY = {
    "CELERY_VISIBILITY_TIMEOUT": "10",
    "NORM_BROKER_MAX_COUNTDOWN": "8",
    "NORM_STALE_CLAIM_SECONDS": "5",
    "NORM_RECONCILE_GRACE": "10",
    "NORM_RECONCILE_INTERVAL": "1",
    "NORM_SEND_RETRY_BACKOFF": "0.3",
}
WELCOME = ("inbox", "wait", "reminder")
ORDER = "order-update"
SHIPPED = ("shipped-email", "shipped-inbox")
# The channel steps of the workloads' workflows (workflows/demo.py) and their channel.
CHANNEL_OF = {
    "inbox": "in_app",
    "reminder": "email",
    "shipped-email": "email",
    "shipped-inbox": "in_app",
    "delayed-inbox": "in_app",
}


def trigger(
    live_server: LiveServer, key: str, to: Any, payload: dict[str, Any], name: str = "welcome"
) -> None:
    body = {"name": name, "to": to, "payload": payload}
    response = api_post(live_server.url, key, "/v1/events/trigger", body)
    assert response.status_code == 201, response.text


def people(prefix: str, count: int) -> list[dict[str, str]]:
    return recipients(*(f"{prefix}{i}" for i in range(count)))


def statuses(client: Client) -> dict[str, int]:
    return dict(
        Counter(Notification.objects.filter(client=client).values_list("status", flat=True))
    )


def wait_final(client: Client, count: int, timeout: float) -> None:
    def done() -> bool:
        final = Notification.objects.filter(client=client, status__in=Notification.FINAL)
        return final.count() == count

    try:
        wait_for(done, timeout=timeout, interval=0.5, what=f"{count} final notifications")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; notifications by status: {statuses(client)}") from None


def emails_in_flight(client: Client) -> set[int]:
    """The email messages being sent right now: claimed steps that have not committed."""
    return set(
        Message.objects.filter(
            client=client, channel="email", step__status=Step.Status.PROCESSING
        ).values_list("pk", flat=True)
    )


def held(client: Client, smtp: CountingSmtp) -> set[int]:
    """Emails the SMTP server has kept whose senders have not committed the send yet."""
    return {pk for pk in emails_in_flight(client) if str(pk) in smtp.deliveries}


def kill(proc: CeleryProcess) -> None:
    """SIGKILL the worker and its pool: no warm shutdown, nothing acknowledged."""
    os.killpg(proc.process.pid, signal.SIGKILL)
    proc.process.wait()


def assert_delivered_once(
    client: Client,
    smtp: CountingSmtp,
    *,
    notifications: int,
    steps: Collection[str],
    in_flight: Collection[int] = (),
) -> None:
    """Every notification completed each of its steps once; every email arrived once and
    every in-app message exists once, except repeats of sends in flight at the fault."""
    assert statuses(client) == {Notification.Status.COMPLETED: notifications}
    all_steps = Step.objects.filter(notification__client=client)
    assert not all_steps.exclude(status=Step.Status.COMPLETED).exists()
    assert Counter(all_steps.values_list("step_id", flat=True)) == dict.fromkeys(
        steps, notifications
    )
    messages = Message.objects.filter(client=client)
    assert not messages.exclude(status=Message.Status.SENT).exists()
    expected = Counter(CHANNEL_OF[step] for step in steps if step in CHANNEL_OF)
    assert Counter(messages.values_list("channel", flat=True)) == {
        channel: n * notifications for channel, n in expected.items()
    }
    emails = {str(pk) for pk in messages.filter(channel="email").values_list("pk", flat=True)}
    # Each email arrived, and no other.
    wait_for(lambda: set(smtp.deliveries) == emails, timeout=10, what="every email at SMTP")
    repeats = smtp.repeats()
    print(
        f"\n[faults] {notifications} notifications, {len(emails)} emails, "
        f"{len(in_flight)} sends in flight at the fault, repeated deliveries: {repeats or 'none'}"
    )
    assert set(repeats) <= {str(pk) for pk in in_flight}, "a send not in flight was repeated"
    assert sum(repeats.values()) <= len(in_flight)


# --- 1. workers killed mid-run ------------------------------------------------------------------


def test_workers_killed_mid_run_lose_nothing(
    live_server: LiveServer,
    make_client: Any,
    start_celery: StartCelery,
    smtp: tuple[int, CountingSmtp],
) -> None:
    recorder = smtp[1]
    # A dead worker's tasks come back through Redis (acks_late: unacknowledged, they are
    # delivered again after the visibility timeout) and take back the claims they held.
    # The reconciler's release of stale claims is kept out of it (NORM_STALE_CLAIM_SECONDS
    # past the test's end): with it, a send cut off by the kill came back as well if Redis
    # had dropped its task. A long grace keeps the reconciler from re-enqueueing work
    # that is merely queued.
    env = {**RECOVERY, "NORM_RECONCILE_GRACE": "30", "NORM_STALE_CLAIM_SECONDS": "600"}
    workers = [start_celery("worker", **env) for _ in range(2)]
    client, key = make_client()
    for delay in (2, 3, 4, 5):
        trigger(live_server, key, people(f"d{delay}-", 125), {"delaySeconds": delay})

    wait_for(lambda: recorder.delivered() >= 25, timeout=120, what="emails before the kill")
    recorder.hold = 10  # to kill the workers while sends they made wait for their answer
    wait_for(lambda: held(client, recorder), timeout=30, what="a send waiting for its answer")
    for worker in workers:
        kill(worker)
    recorder.hold = 0
    in_flight = emails_in_flight(client)
    print(f"\n[faults] killed the workers at {statuses(client)}, {recorder.delivered()} emails")
    # Redis hands out a message unacknowledged for the visibility timeout again when a
    # worker starts, then only at kombu's sweeps (every 100 s): the new workers start once
    # the dead ones' messages are that old, for the test not to wait on a sweep.
    time.sleep(int(RECOVERY["CELERY_VISIBILITY_TIMEOUT"]))
    for kind in FLEET:
        start_celery(kind, **env)

    wait_final(client, 500, timeout=240)
    assert_delivered_once(client, recorder, notifications=500, steps=WELCOME, in_flight=in_flight)


# --- 2. Redis emptied and restarted -------------------------------------------------------------


def test_redis_emptied_and_restarted_under_running_workers_loses_nothing(
    own_redis: RedisServer,  # first: stopped after the workers
    live_server: LiveServer,
    make_client: Any,
    start_celery: StartCelery,
    smtp: tuple[int, CountingSmtp],
) -> None:
    """FLUSHALL and a restart of the broker, the workers and beat running on: their
    connections break, the messages they hold (a delay's countdown, a task running) are
    gone from Redis, and hand-offs made meanwhile (a trigger's too) are refused. They
    reconnect to the empty Redis, and the reconciler re-drives the rest from the
    database alone."""
    recorder = smtp[1]
    env = {**RECOVERY, "CELERY_BROKER_URL": own_redis.url}
    for kind in FLEET:
        start_celery(kind, **env)
    client, key = make_client()
    for delay in (2, 3, 4, 5):
        trigger(live_server, key, people(f"d{delay}-", 50), {"delaySeconds": delay})

    wait_for(
        lambda: Notification.objects.filter(client=client).count() >= 60,
        timeout=60,
        what="part of the fan-out",
    )
    own_redis.flush_and_kill()
    in_flight = emails_in_flight(client)
    created = Notification.objects.filter(client=client).count()
    print(f"\n[faults] emptied Redis at {statuses(client)}, {recorder.delivered()} emails")
    assert created < 200, "the fault must hit the fan-out while it is under way"
    # A trigger accepted while Redis is down: stored, its hand-off refused.
    started = time.monotonic()
    trigger(live_server, key, people("down-", 20), {"delaySeconds": 2})
    print(f"[faults] a trigger answered in {time.monotonic() - started:.1f}s with Redis down")
    time.sleep(3)  # down long enough for every worker and beat to find it gone
    own_redis.start()

    wait_final(client, 220, timeout=150)
    assert_delivered_once(client, recorder, notifications=220, steps=WELCOME, in_flight=in_flight)


# --- 3. the bridge unreachable ----------------------------------------------------------------


def test_a_bridge_down_for_a_while_resumes_every_notification(
    live_server: LiveServer,
    make_client: Any,
    start_celery: StartCelery,
    smtp: tuple[int, CountingSmtp],
) -> None:
    down_until = [0.0]

    def outage(number: int) -> tuple[int, dict[str, Any]] | None:
        if time.monotonic() < down_until[0]:
            return 503, {"message": "the bridge is restarting"}
        return None

    # Backoff 0.2 s doubling: 7 retries span 25 s, well over the 8 s outage.
    start_celery("worker", NORM_BRIDGE_MAX_RETRIES="7")
    with BridgeProxy(demo_bridge_url(live_server), outage) as proxy:
        client, key = make_client(bridge_url=proxy.url)
        trigger(live_server, key, people("p", 20), {"delaySeconds": 2})
        # Down once every inbox message is out, while the notifications wait out the delay.
        wait_for(
            lambda: Message.objects.filter(client=client, channel="in_app").count() == 20,
            timeout=60,
            what="the in-app messages",
        )
        down_until[0] = time.monotonic() + 8
        wait_final(client, 20, timeout=90)

    refused = Notification.objects.filter(client=client, bridge_attempts__gt=0).count()
    print(f"\n[faults] {refused} notifications met the outage, {proxy.execute_calls} execute calls")
    assert refused > 0, "the outage must hit the notifications"
    assert_delivered_once(client, smtp[1], notifications=20, steps=WELCOME)


def test_a_bridge_that_never_comes_back_fails_notifications_with_the_reason(
    live_server: LiveServer,
    make_client: Any,
    start_celery: StartCelery,
    smtp: tuple[int, CountingSmtp],
) -> None:
    start_celery("worker", NORM_BRIDGE_MAX_RETRIES="3")
    with BridgeProxy(demo_bridge_url(live_server), lambda number: None) as proxy:
        client, key = make_client(bridge_url=proxy.url)
        trigger(live_server, key, people("p", 10), {"delaySeconds": 1})
    # The proxy is closed: from here on, every call to the bridge is refused.
    started = time.monotonic()

    wait_final(client, 10, timeout=60)
    elapsed = time.monotonic() - started
    notifications = list(Notification.objects.filter(client=client))
    assert {n.status for n in notifications} == {Notification.Status.FAILED}
    assert {n.error_code for n in notifications} == {"BridgeUnreachable"}
    assert all("the bridge is unreachable" in n.error for n in notifications)
    # One call and three retries each, 0.2 + 0.4 + 0.8 s apart.
    assert {n.bridge_attempts for n in notifications} == {4}
    assert not Step.objects.filter(notification__client=client, status__in=OPEN_STEP).exists()
    print(f"\n[faults] 10 notifications failed {elapsed:.1f}s after the bridge went away")


# --- 4. the email provider failing for a while -------------------------------------------------


def test_an_smtp_server_answering_4xx_gets_each_email_once(
    live_server: LiveServer,
    make_client: Any,
    start_celery: StartCelery,
    smtp: tuple[int, CountingSmtp],
) -> None:
    recorder = smtp[1]
    recorder.refuse_first = 2
    start_celery("worker", **RECOVERY)
    client, key = make_client()
    trigger(live_server, key, people("s", 30), {"status": "shipped", "orderId": "9"}, ORDER)

    wait_final(client, 30, timeout=90)
    assert_delivered_once(client, recorder, notifications=30, steps=SHIPPED)
    assert set(recorder.attempts.values()) == {3}  # two 451s, then the delivery
    emails = Message.objects.filter(client=client, channel="email")
    assert set(emails.values_list("attempts", flat=True)) == {3}


def test_an_smtp_server_that_starts_late_gets_each_email_once(
    live_server: LiveServer,
    make_client: Any,
    start_celery: StartCelery,
) -> None:
    recorder, port = CountingSmtp(), free_port()
    start_celery("worker", **RECOVERY, EMAIL_PORT=str(port), NORM_SEND_MAX_ATTEMPTS="10")
    client, key = make_client()
    trigger(live_server, key, people("s", 30), {"status": "shipped", "orderId": "9"}, ORDER)

    emails = Message.objects.filter(client=client, channel="email")
    wait_for(
        lambda: emails.filter(attempts__gte=2).count() == 30,
        timeout=60,
        what="two refused attempts for every email",
    )
    assert all("SMTP connection failed" in e for e in emails.values_list("error", flat=True))
    controller = smtp_serve(recorder, port)
    try:
        wait_final(client, 30, timeout=60)
        assert_delivered_once(client, recorder, notifications=30, steps=SHIPPED)
    finally:
        controller.stop()


# --- 6. one transactionId triggered concurrently -------------------------------------------------


def test_one_transaction_id_sent_twenty_times_at_once_runs_once(
    live_server: LiveServer,
    make_client: Any,
    start_celery: StartCelery,
    smtp: tuple[int, CountingSmtp],
) -> None:
    worker = start_celery("worker")
    client, key = make_client()
    body = {
        "name": ORDER,
        "to": people("c", 10),
        "payload": {"status": "delayed", "orderId": "5"},
        "transactionId": "tx-concurrent-1",
    }
    gate = threading.Barrier(20)

    def send(_: int) -> requests.Response:
        gate.wait()
        return api_post(live_server.url, key, "/v1/events/trigger", body, timeout=60)

    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(send, range(20)))

    assert [a.status_code for a in answers] == [201] * 20, [a.text for a in answers]
    assert {a.json()["data"]["transactionId"] for a in answers} == {"tx-concurrent-1"}
    wait_final(client, 10, timeout=60)
    assert TriggerEvent.objects.filter(client=client).count() == 1
    assert_delivered_once(client, smtp[1], notifications=10, steps=["delayed-inbox"])
    log = worker.log.read_text()
    assert log.count("Task norm.workflow.run[") == 2  # received, succeeded: one fan-out
    assert log.count("Task norm.subscriber.process[") == 2 * 10


# --- 7. a deploy: every worker and beat stopped with SIGTERM, new ones started -------------------


def stop_warm(fleet: list[CeleryProcess], timeout: float) -> list[float]:
    """SIGTERM to each main process alone, as `docker stop` and Kubernetes send it (to
    the container's PID 1): Celery's warm shutdown. The seconds each took to exit."""
    started = time.monotonic()
    for proc in fleet:
        proc.process.send_signal(signal.SIGTERM)
    exited: dict[str, float] = {}

    def all_exited() -> bool:
        for proc in fleet:
            if proc.name not in exited and proc.process.poll() is not None:
                exited[proc.name] = time.monotonic() - started
        return len(exited) == len(fleet)

    wait_for(all_exited, timeout=timeout, interval=0.1, what="the fleet to exit after SIGTERM")
    return sorted(exited.values())


def test_a_deploy_under_load_loses_nothing_and_sends_nothing_twice(
    live_server: LiveServer,
    broker: str,
    make_client: Any,
    start_celery: StartCelery,
    smtp: tuple[int, CountingSmtp],
) -> None:
    """A deploy: every worker and beat gets SIGTERM while sends wait for the SMTP server's
    answer and delays wait out their countdown in the workers (ETA messages, taken ahead
    whatever the prefetch), then new ones start. A warm shutdown finishes the tasks it
    runs (each send commits), then hands every message it holds back to Redis as it
    closes its channel (kombu's restore of the unacknowledged): at once, so the new
    workers take them as they start. Kept, they would wait out the visibility timeout (an
    hour by default) or the reconciler's grace (a minute); both are past the test's end
    here, as are stale claims, so that neither makes up for a message the shutdown kept.
    Unlike a kill, nothing is cut between the provider's call and its commit: no email
    repeats. A cold shutdown on SIGTERM (REMAP_SIGTERM=SIGQUIT), or SIGTERM to the pool's
    processes too (they die at once), fails it, sends cut before their commit; so does a
    shutdown that leaves its messages unacknowledged.

    A worker exits within a second or two of its last task, or some 30 s later (in 4 runs
    of 11): a pool process that finished a task as the worker stopped waits that long for
    the worker to read its result (billiard's _ensure_messages_consumed), and the worker
    gives back what it holds only then (docker-compose.yml's grace covers it)."""
    recorder = smtp[1]
    env = {
        **RECOVERY,
        "CELERY_VISIBILITY_TIMEOUT": "600",
        "NORM_RECONCILE_GRACE": "600",
        "NORM_STALE_CLAIM_SECONDS": "600",
    }
    fleet = [start_celery(kind, **env) for kind in FLEET]
    client, key = make_client()
    for delay in (2, 3, 4, 5):
        trigger(live_server, key, people(f"d{delay}-", 125), {"delaySeconds": delay})

    wait_for(lambda: recorder.delivered() >= 25, timeout=120, what="emails before the deploy")
    recorder.hold = 10  # to stop the workers while sends they made wait for their answer
    in_flight = wait_for(lambda: held(client, recorder), timeout=30, what="a send held")
    unacked = redis.Redis.from_url(broker).hlen("unacked")  # taken by a worker, not acked
    # More than the four tasks the two workers' processes can run: delays held too.
    assert unacked > 4, "the deploy must stop workers holding messages"
    exits = stop_warm(fleet, timeout=90)
    recorder.hold = 0
    left = redis.Redis.from_url(broker).hlen("unacked")
    print(
        f"\n[faults] stopped the fleet at {statuses(client)}, {recorder.delivered()} emails, "
        f"{len(in_flight)} sends in flight, {unacked} messages held, {left} left unacked; "
        f"exits after {[round(s, 1) for s in exits]} s"
    )
    # Every send a stopping worker had begun was committed, and nothing it held is left
    # unacknowledged in Redis for the visibility timeout to hand out again.
    assert not Step.objects.filter(
        notification__client=client, status=Step.Status.PROCESSING
    ).exists()
    assert left == 0, f"{left} messages held back by the stopped workers"
    restarted = time.monotonic()
    for kind in FLEET:
        start_celery(kind, **env)

    wait_final(client, 500, timeout=240)
    print(
        f"[faults] every notification final {time.monotonic() - restarted:.1f}s after the restart"
    )
    assert_delivered_once(client, recorder, notifications=500, steps=WELCOME, in_flight=in_flight)
    assert not recorder.repeats(), "a warm shutdown cut a send short"


# --- 5. PostgreSQL restarted (last: it disturbs every session on this machine) -------------------


def postmaster_started() -> Any:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_postmaster_start_time()")
        return cursor.fetchone()[0]


def database_failures(fleet: list[CeleryProcess]) -> int:
    """Tasks the workers saw fail on the database: retried (INFO) or given up (WARNING)."""
    return sum(p.log.read_text(errors="replace").count("OperationalError") for p in fleet)


@pytest.mark.alone  # every other test would lose its database mid-run
def test_workers_reconnect_after_postgresql_restarts(
    live_server: LiveServer,
    make_client: Any,
    start_celery: StartCelery,
    smtp: tuple[int, CountingSmtp],
) -> None:
    clusters = Path("/etc/postgresql")
    versions = sorted(p.name for p in clusters.iterdir()) if clusters.is_dir() else []
    if os.geteuid() != 0 or not shutil.which("pg_ctlcluster") or len(versions) != 1:
        pytest.skip("restarting PostgreSQL needs root, pg_ctlcluster and one local cluster")
    started_at = postmaster_started()
    recorder = smtp[1]
    # Tasks that lose the database must retry, not wait for the reconciler: its grace
    # outlasts the test. Only claims cut off mid-send are its to release.
    env = {**RECOVERY, "NORM_RECONCILE_GRACE": "300"}
    fleet = [start_celery(kind, **env) for kind in FLEET]
    client, key = make_client()
    for delay in (2, 3):
        trigger(live_server, key, people(f"d{delay}-", 50), {"delaySeconds": delay})

    wait_for(lambda: recorder.delivered() >= 10, timeout=90, what="emails before the restart")
    recorder.hold = 3  # sends answered only after the restart, when their commit fails
    wait_for(lambda: held(client, recorder), timeout=30, what="a send waiting for its answer")
    in_flight = emails_in_flight(client)
    cluster = ["pg_ctlcluster", "--skip-systemctl-redirect", versions[0], "main"]
    failures = database_failures(fleet)
    subprocess.run([*cluster, "stop"], check=True, capture_output=True, timeout=60)
    try:
        # Down until a task has failed on it: a restart alone was often over before any
        # task but the held send touched the database, and the test then passed with
        # tasks that never retried a database error (pipeline.DB_RETRY emptied).
        wait_for(
            lambda: database_failures(fleet) > failures,
            timeout=30,
            what="a task failing on the database",
        )
    finally:  # whatever happened, the machine's server runs again
        subprocess.run([*cluster, "start"], check=True, capture_output=True, timeout=60)
    restarted = timezone.now()
    recorder.hold = 0
    connection.close()  # this process's connection died with the server
    assert postmaster_started() != started_at, "the restarted cluster is not the test database's"
    # Sends cut off by the restart: their task's retry (or the reconciler) sends them again.
    in_flight |= set(
        Message.objects.filter(
            client=client,
            channel="email",
            step__status=Step.Status.PROCESSING,
            step__claimed_at__lt=restarted,
        ).values_list("pk", flat=True)
    )
    print(f"\n[faults] restarted PostgreSQL at {statuses(client)}, {recorder.delivered()} emails")

    wait_final(client, 100, timeout=90)
    assert_delivered_once(client, recorder, notifications=100, steps=WELCOME, in_flight=in_flight)
