"""The five measurements, each beside its baseline from the same run.

trigger   POST /v1/events/trigger vs a bare authenticated view, same gunicorn, no workers
latency   trigger -> first message sent vs a chain of as many plain Celery hops
pipeline  notifications/s of a two-step workflow vs plain Celery chains of as many hops
isolation a routed workflow's trigger -> first message behind a broadcast's backlog vs an
          unrouted workflow's, during the same backlog
fanout    a broadcast until every notification exists vs a bulk insert of as many rows;
          and the workflow worker's memory vs its idle size
"""

from __future__ import annotations

import itertools
import statistics
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import requests
from django.db import connection
from django.db.models import Count, Max
from django.utils import timezone

from bench import load
from bench.infra import (
    PRODUCT_QUEUES,
    Infra,
    children_of,
    proc_status,
    survive_restart,
    wait_for,
)
from bench.tasks import DONE_KEY, LAST_KEY, QUEUE
from config.celery import app
from messaging.models import Message
from notify.models import Client, TriggerEvent
from subscribers.models import Subscriber
from workflows.models import Notification

# Task executions per notification of the two-step workflow: subscriber, then
# echo -> message (in_app) -> echo -> message (email) -> echo (done). The workflow task
# that fans out to a batch runs once per batch, in both the product and the baseline.
PIPELINE_HOPS = 6
# Tasks from the trigger to the first message: workflow, subscriber, echo, message.
FIRST_MESSAGE_HOPS = 4
BATCH = 100
# How often the latency phase looks for its end. Both sides read the time their worker
# recorded, so polling only adds load: the same interval for both.
POLL = 0.01


@dataclass
class Row:
    figure: str
    value: float
    baseline: float
    baseline_name: str
    unit: str
    higher_is_better: bool
    goal: str = ""
    min_ratio: float | None = None
    max_value: float | None = None

    @property
    def ratio(self) -> float:
        if not self.value or not self.baseline:
            return 0.0
        return self.value / self.baseline if self.higher_is_better else self.baseline / self.value

    @property
    def passed(self) -> bool | None:
        if self.min_ratio is not None:
            return self.ratio >= self.min_ratio
        if self.max_value is not None:
            return self.value <= self.max_value
        return None


@dataclass
class Bench:
    infra: Infra
    client: Client
    key: str
    quick: bool
    log: Any  # a callable taking one line

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        response = requests.post(
            f"{self.infra.web_url}{path}",
            json=body,
            headers={"Authorization": f"ApiKey {self.key}"},
            timeout=30,
        )
        if response.status_code >= 300:
            raise RuntimeError(f"POST {path} answered {response.status_code}: {response.text}")
        return response.json()

    def reset(self) -> None:
        """Between phases: nothing queued, no counters, no rows of an earlier phase."""
        self.infra.flush_redis()
        with connection.cursor() as cursor:
            cursor.execute(
                "TRUNCATE messaging_message, workflows_step, workflows_notification, "
                "notify_triggerevent CASCADE"
            )


# --- trigger API ----------------------------------------------------------------------------


def trigger(bench: Bench) -> list[Row]:
    """Closed loop of 32 clients on loopback; the best of `rounds` for each endpoint."""
    seconds, rounds = (4, 1) if bench.quick else (8, 2)
    run = uuid.uuid4().hex[:8]
    web = bench.infra.web_url
    results: dict[str, list[load.LoadResult]] = {"bare": [], "trigger": []}
    for number in range(rounds + 1):  # round 0 warms both up and is not counted
        for name, path in (("bare", "/v1/bench/auth-only"), ("trigger", "/v1/events/trigger")):
            prefix = f"{run}-{number}-{name}"
            result = _load(bench, f"{web}{path}", prefix, seconds=2 if number == 0 else seconds)
            if result.failed:
                raise RuntimeError(f"{name}: {result.failed} of {result.requests} requests failed")
            if number:
                results[name].append(result)
            bench.log(
                f"  {name:<7} round {number}: {result.rps:7.0f} req/s  p50 {result.p50_ms:.1f} ms"
                f"  p99 {result.p99_ms:.1f} ms ({result.tool})"
            )
    time.sleep(1)  # requests still in flight when the load stopped
    created = TriggerEvent.objects.count()
    bench.log(
        f"  {created} trigger events stored, {bench.infra.queue_lengths()['workflows']} queued"
    )
    bench.reset()
    bare = max(results["bare"], key=lambda r: r.rps)
    trig = max(results["trigger"], key=lambda r: r.rps)
    return [
        Row("trigger API, req/s (32 clients)", trig.rps, bare.rps, "bare auth view", "req/s",
            True, "≥ 70% of bare", min_ratio=0.7),
        Row("trigger API, p50 latency", trig.p50_ms, bare.p50_ms, "bare auth view", "ms", False),
        Row("trigger API, p99 latency", trig.p99_ms, bare.p99_ms, "bare auth view", "ms", False),
    ]  # fmt: skip


def _load(bench: Bench, url: str, prefix: str, *, seconds: float) -> load.LoadResult:
    # The same body to both endpoints; the bare view never reads it.
    if load.has_wrk():
        body = (
            'string.format(\'{"name": "bench-one-step", "to": "t-%d", '
            f'"payload": {{"n": %d}}, "transactionId": "{prefix}-%d"}}\', n % 1000, n, n)'
        )
        return load.wrk(
            url, key=bench.key, method="POST", body_lua=body, clients=32, seconds=seconds,
            workdir=bench.infra.dir,
        )  # fmt: skip
    return load.python_load(
        url,
        key=bench.key,
        method="POST",
        body=lambda n: {
            "name": "bench-one-step",
            "to": f"t-{n % 1000}",
            "payload": {"n": n},
            "transactionId": f"{prefix}-{n}",
        },
        clients=32,
        seconds=seconds,
    )


# --- latency ----------------------------------------------------------------------------------


def latency(bench: Bench) -> list[Row]:
    """Sequential triggers on an otherwise idle system: POST -> Message.sent_at."""
    count = 20 if bench.quick else 50
    worker = bench.infra.start_worker("all", queues=f"{PRODUCT_QUEUES},{QUEUE}", concurrency=2)
    try:
        for n in range(3):  # warm the worker processes' connections and imports, both sides
            _first_message_latency(bench, f"warm-{n}")
            _hop_latency(bench)
        stages = [_first_message_latency(bench, f"lat-{n}") for n in range(count)]
        baseline = [_hop_latency(bench) for _ in range(count)]
    finally:
        bench.infra.stop(worker)
    bench.reset()
    product = [sum(times) for times in stages]
    p = _percentiles
    bench.log(f"  product p50 {p(product)[0]:.1f} ms, baseline p50 {p(baseline)[0]:.1f} ms")
    bench.log(f"  where it goes (p50 of each stage; a plain hop: {p(baseline)[0] / 4:.1f} ms):")
    for number, stage in enumerate(STAGES):
        bench.log(f"    {stage:<56} {statistics.median(s[number] for s in stages):6.1f} ms")
    return [
        Row("trigger → first message, p50", p(product)[0], p(baseline)[0],
            f"{FIRST_MESSAGE_HOPS} plain hops", "ms", False),
        Row("trigger → first message, p99", p(product)[1], p(baseline)[1],
            f"{FIRST_MESSAGE_HOPS} plain hops", "ms", False),
    ]  # fmt: skip


def _percentiles(samples: list[float]) -> tuple[float, float]:
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return cuts[49], cuts[98]


def _first_message_latency(bench: Bench, transaction_id: str) -> list[float]:
    """Trigger one notification and wait for its first message; the ms each of STAGES
    took (their sum is the whole latency)."""
    started = _trigger_one(bench, transaction_id)
    return _first_message_stages(started, transaction_id, timeout=15, interval=POLL)


def _trigger_one(
    bench: Bench, transaction_id: str, *, workflow: str = "bench-one-step", to: str = "lat-sub"
) -> datetime:
    """Trigger `workflow` for the one subscriber `to`; when the POST started."""
    started = timezone.now()
    bench.post("/v1/events/trigger", {"name": workflow, "to": to, "transactionId": transaction_id})
    return started


def _first_message_stages(
    started: datetime, transaction_id: str, *, timeout: float, interval: float
) -> list[float]:
    """Wait for the first message of the trigger `transaction_id`, POSTed at `started`;
    the ms each of STAGES took."""
    sent = Message.objects.filter(
        step__notification__trigger_event__transaction_id=transaction_id, sent_at__isnull=False
    )
    what = f"the first message of {transaction_id}"
    wait_for(sent.exists, timeout=timeout, interval=interval, what=what)
    return _stage_times(started, sent.select_related("step__notification__trigger_event").get())


# The first message's way, each stage timed from the end of the one before by the rows'
# own timestamps (one clock: every process runs on this machine).
STAGES = (
    "POST -> trigger stored (web)",
    "-> claimed by the workflow task (commit, publish, hop)",
    "-> notification created (workflow task, subscriber hop)",
    "-> first step recorded (echo hop, bridge call)",
    "-> step claimed by the message task (hop)",
    "-> message sent",
)


def _stage_times(started: datetime, message: Message) -> list[float]:
    step = message.step
    event = step.notification.trigger_event
    marks = [
        started,
        event.created_at,
        event.claimed_at,
        step.notification.created_at,
        step.created_at,
        step.claimed_at,
        message.sent_at,
    ]
    return [(b - a).total_seconds() * 1000 for a, b in itertools.pairwise(marks)]


def _hop_latency(bench: Bench) -> float:
    redis = bench.infra.redis
    before = int(redis.get(DONE_KEY) or 0)
    started = time.time()
    app.send_task("bench.hop", args=[FIRST_MESSAGE_HOPS], queue=QUEUE)
    wait_for(lambda: int(redis.get(DONE_KEY) or 0) > before, timeout=15, interval=POLL, what="hop")
    return (float(redis.get(LAST_KEY)) - started) * 1000


# --- pipeline throughput -------------------------------------------------------------------------


def pipeline(bench: Bench) -> list[Row]:
    total = 200 if bench.quick else 600
    worker = bench.infra.start_worker("all", queues=f"{PRODUCT_QUEUES},{QUEUE}", concurrency=2)
    try:
        _hop_latency(bench)  # warm both sides' worker processes before either is measured
        _first_message_latency(bench, "warm-pipeline")
        baseline = _hop_throughput(bench, total)
        bench.log(f"  baseline: {baseline:.0f} chains/s of {PIPELINE_HOPS} hops")
        product = _pipeline_throughput(bench, total)
        bench.log(f"  norm: {product:.1f} notifications/s, {bench.infra.smtp.received} emails")
    finally:
        bench.infra.stop(worker)
    bench.reset()
    return [
        Row(f"pipeline, two-step notifications/s ({total})", product, baseline,
            f"{PIPELINE_HOPS}-hop Celery chains", "/s", True, "≥ 50% of baseline",
            min_ratio=0.5),
    ]  # fmt: skip


def _hop_throughput(bench: Bench, total: int) -> float:
    redis = bench.infra.redis
    redis.delete(DONE_KEY, LAST_KEY)
    started = time.time()
    for _ in range(total // BATCH):
        app.send_task("bench.fan", args=[BATCH, PIPELINE_HOPS], queue=QUEUE)
    wait_for(lambda: int(redis.get(DONE_KEY) or 0) >= total, timeout=300, what="baseline chains")
    return total / (float(redis.get(LAST_KEY)) - started)


def _pipeline_throughput(bench: Bench, total: int) -> float:
    sent_before = bench.infra.smtp.received
    run = uuid.uuid4().hex[:8]
    started = timezone.now()
    for batch in range(total // BATCH):
        ids = range(batch * BATCH, (batch + 1) * BATCH)
        bench.post(
            "/v1/events/trigger",
            {
                "name": "bench-two-step",
                "to": [{"subscriberId": f"p-{i}", "email": f"p-{i}@example.com"} for i in ids],
                "payload": {"n": batch},
                "transactionId": f"{run}-{batch}",
            },
        )
    mine = Notification.objects.filter(trigger_event__transaction_id__startswith=run)

    def finished() -> bool:
        failed = mine.filter(status=Notification.Status.FAILED).first()
        if failed is not None:
            raise RuntimeError(f"a notification failed: {failed.error_code} {failed.error}")
        return mine.filter(status=Notification.Status.COMPLETED).count() >= total

    wait_for(finished, timeout=240, interval=0.25, what="the pipeline's notifications")
    if bench.infra.smtp.received - sent_before < total:
        raise RuntimeError("the SMTP sink received fewer emails than notifications completed")
    ended = mine.aggregate(last=Max("completed_at"))["last"]
    return total / (ended - started).total_seconds()


# --- isolation -------------------------------------------------------------------------------

# The workflow NORM_WORKFLOW_QUEUES routes to a queue of its own (the command sets it for the
# web server and every worker): `bench-one-step` under another name, so that no other phase
# needs a worker on that queue. `bench-one-step` itself is the unrouted side.
ROUTED_WORKFLOW, ROUTED_QUEUE = "bench-routed", "critical"
ROUTES = {ROUTED_WORKFLOW: ROUTED_QUEUE}
# Seconds between the isolation phase's triggers, routed and unrouted in turn. Paced, not
# one after the other's message: an unrouted trigger waits out the backlog ahead of it, so
# a closed loop would get one or two samples before the backlog was gone.
PACE = 0.25


def isolation(bench: Bench) -> list[Row]:
    """A broadcast of `bench-two-step` backs up the shared echo and messages queues; while
    it lasts, triggers of the routed workflow and of the unrouted one, POST -> first
    message sent. One worker -c 2 on the shared queues, one -c 1 on the routed queue."""
    # Small: a broadcast's notifications cycle through the echo queue (echo, send, echo),
    # which stays about `total` long while they do, and an unrouted trigger waits out all
    # of it; the backlog lasts several times the triggers' window even so.
    total, count = (200, 10) if bench.quick else (400, 20)
    _subscribers_ensure(bench.client, total)
    infra = bench.infra
    shared = infra.start_worker("shared", queues=PRODUCT_QUEUES, concurrency=2)
    routed = infra.start_worker("routed", queues=ROUTED_QUEUE, concurrency=1)
    sides = {ROUTED_WORKFLOW: "routed", "bench-one-step": "unrouted"}

    def backlog() -> int:
        lengths = infra.queue_lengths()
        return lengths["echo"] + lengths["messages"]

    try:
        # Each side's subscriber (the broadcast's audience too), and warm workers.
        for workflow, side in sides.items():
            started = _trigger_one(bench, f"warm-{side}", workflow=workflow, to=f"iso-{side}")
            _first_message_stages(started, f"warm-{side}", timeout=15, interval=POLL)
        bench.post("/v1/events/trigger/broadcast", {"name": "bench-two-step"})
        wait_for(lambda: backlog() >= total // 2, timeout=60, what="the broadcast's backlog")
        triggered: dict[str, list[tuple[datetime, str]]] = {side: [] for side in sides.values()}
        backlogs = []
        for n in range(count):
            for workflow, side in sides.items():
                backlogs.append(backlog())
                transaction_id = f"iso-{side}-{n}"
                started = _trigger_one(bench, transaction_id, workflow=workflow, to=f"iso-{side}")
                triggered[side].append((started, transaction_id))
                time.sleep(PACE)
        bench.log(
            f"  broadcast to {total:,}: echo + messages queued at each trigger min {min(backlogs)},"
            f" max {max(backlogs)}; after the last {infra.queue_lengths()}"
        )
        # The unrouted (and, where routing stops at the fan-out, the routed) first messages
        # wait out the backlog ahead of them: up to minutes on a slow machine.
        deadline = time.monotonic() + 300
        stages = {
            side: [
                _first_message_stages(
                    started,
                    transaction_id,
                    timeout=max(deadline - time.monotonic(), 1),
                    interval=0.25,  # the rows' own times are measured, not the polling
                )
                for started, transaction_id in samples
            ]
            for side, samples in triggered.items()
        }
    finally:
        infra.stop(routed)
        infra.stop(shared)
    bench.reset()
    for side, times in stages.items():
        medians = ", ".join(f"{statistics.median(t[i] for t in times):.0f}" for i in range(6))
        bench.log(f"  {side}: p50 of each of the latency phase's stages, ms: {medians}")
    routed_ms, unrouted_ms = ([sum(t) for t in stages[side]] for side in sides.values())
    # Samples taken on shared queues already empty measure no backlog: flagged, as a
    # restarted PostgreSQL is.
    flag = "" if min(backlogs) else " [the backlog ran out]"
    p = _percentiles
    return [
        Row("routed workflow behind a broadcast: first message p50" + flag, p(routed_ms)[0],
            p(unrouted_ms)[0], "unrouted, same backlog", "ms", False),
        Row("routed workflow behind a broadcast: first message p99" + flag, p(routed_ms)[1],
            p(unrouted_ms)[1], "unrouted, same backlog", "ms", False),
    ]  # fmt: skip


# --- fan-out ---------------------------------------------------------------------------------


def fanout(bench: Bench) -> list[Row]:
    total = 10_000 if bench.quick else 100_000
    _subscribers_ensure(bench.client, total)
    bulk_seconds = _bulk_insert_seconds(bench.client, total)
    bench.log(f"  bulk insert of {total} notification rows: {bulk_seconds:.1f} s")
    infra = bench.infra
    # A worker of its own for the workflow task, so its only child is the one measured.
    flow = infra.start_worker("flow", queues="workflows", concurrency=1)
    subs = infra.start_worker("subs", queues="subscribers", concurrency=2)
    try:
        (child,) = children_of(flow.popen.pid)
        idle_kb = proc_status(child).get("VmRSS", 0)
        started = timezone.now()
        bench.post("/v1/events/trigger/broadcast", {"name": "bench-one-step"})
        event = TriggerEvent.objects.get(client=bench.client, mode=TriggerEvent.Mode.BROADCAST)
        mine = Notification.objects.filter(trigger_event=event)
        peak_kb, done = 0, 0
        deadline = time.monotonic() + (150 if bench.quick else 420)
        while done < total and time.monotonic() < deadline:
            for _ in range(5):  # memory every 0.1 s, the row count every 0.5 s
                peak_kb = max(peak_kb, proc_status(child).get("VmRSS", 0))
                time.sleep(0.1)
            done = survive_restart(mine.count) or done
        hwm_kb = proc_status(child).get("VmHWM", 0)
        # Counted with the last row's time: the projection below needs both at once.
        reached = mine.aggregate(n=Count("pk"), last=Max("created_at"))
        done, ended = reached["n"], reached["last"]
        event.refresh_from_db()
    finally:
        infra.stop(subs)
        infra.stop(flow)
    # Past the time limit: the time all would have taken at the rate reached.
    seconds = (ended - started).total_seconds() * total / max(done, 1)
    if done < total:
        bench.log(f"  fan-out stopped at the time limit: {done} of {total} notifications")
    enqueue = (event.processed_at - event.claimed_at).total_seconds() if event.processed_at else 0
    bench.log(
        f"  fan-out: {seconds:.1f} s ({total / seconds:.0f} notifications/s), workflow task "
        f"{enqueue:.1f} s; workflow child RSS {idle_kb / 1024:.0f} MB idle, "
        f"peak {max(peak_kb, hwm_kb) / 1024:.0f} MB"
    )
    bench.reset()
    return [
        Row(f"fan-out: broadcast to {total:,}" + ("" if done == total else " (projected)"), seconds, bulk_seconds, "bulk insert", "s",
            False),
        Row("fan-out: workflow worker peak RSS", max(peak_kb, hwm_kb) / 1024, idle_kb / 1024,
            "same process idle", "MB", False, "< 150 MB", max_value=150),
    ]  # fmt: skip


def _subscribers_ensure(client: Client, total: int) -> None:
    """Exactly `total` subscribers: the broadcast's audience is every one of the client's."""
    Subscriber.objects.filter(client=client).exclude(subscriber_id__startswith="f-").delete()
    have = Subscriber.objects.filter(client=client, subscriber_id__startswith="f-").count()
    Subscriber.objects.bulk_create(
        (
            Subscriber(client=client, subscriber_id=f"f-{i}", email=f"f-{i}@example.com")
            for i in range(have, total)
        ),
        batch_size=5000,
    )


def _bulk_insert_seconds(client: Client, total: int) -> float:
    """`total` Notification rows in one transaction of bulk INSERTs, like an import would."""
    event = TriggerEvent.objects.create(
        client=client, workflow_id="bench-bulk", transaction_id=f"bulk-{uuid.uuid4().hex}",
        mode=TriggerEvent.Mode.BROADCAST, payload={}, resource=client.bridge_url,
    )  # fmt: skip
    subscriber_ids = list(
        Subscriber.objects.filter(client=client, subscriber_id__startswith="f-")
        .order_by("pk")
        .values_list("pk", flat=True)[:total]
    )
    started = time.perf_counter()
    Notification.objects.bulk_create(
        (
            Notification(
                client=client,
                trigger_event=event,
                subscriber_id=pk,
                workflow_id="bench-bulk",
                resource=client.bridge_url,
            )  # fmt: skip
            for pk in subscriber_ids
        ),
        batch_size=2000,
    )
    seconds = time.perf_counter() - started
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE workflows_notification, notify_triggerevent CASCADE")
    return seconds


PHASES = {
    "trigger": trigger,
    "latency": latency,
    "pipeline": pipeline,
    "isolation": isolation,
    "fanout": fanout,
}
