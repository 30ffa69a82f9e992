"""`make run` (`manage.py rundemo` on SQLite and the filesystem broker) stopped mid-run and
started again on the same var/, as a developer does: nothing lost, nothing sent twice.

The filesystem broker deletes a message's file as a worker takes it: what the worker
held when it died (a task running, a delay waiting out its countdown) is gone with it.
Recovery comes from the database, through the reconciler of the run started after it;
the settings below make it take seconds, not minutes.

Everything runs in rundemo's own processes on its own SQLite file: the test reads that
file directly, and counts emails at the fault tests' SMTP server (`X-Norm-Message-Id`).
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings

from tests.e2e.harness import alive, child_pids, free_port, recipients, wait_for
from tests.faults.conftest import CountingSmtp

pytestmark = pytest.mark.e2e

# The reconciler every second, re-sending what stayed quiet for 3 s and taking a claim
# older than 5 s for a dead worker's (its defaults: 10 s, 60 s, 10 minutes); a send
# must end before its claim could be taken for a dead worker's (norm.E006).
RECOVERY = {
    "NORM_RECONCILE_INTERVAL": "1",
    "NORM_RECONCILE_GRACE": "3",
    "NORM_STALE_CLAIM_SECONDS": "5",
    "EMAIL_SEND_DEADLINE": "4",
    "EMAIL_TIMEOUT": "4",
    "NORM_SEND_RETRY_BACKOFF": "0.3",
    "NORM_BRIDGE_RETRY_BACKOFF": "0.2",
}
# 12 triggers at first, 4 more just before the stop (caught in their fan-out).
TRIGGERS, LATE, PER_TRIGGER = 16, 4, 5
NOTIFICATIONS = TRIGGERS * PER_TRIGGER
WELCOME = ("inbox", "wait", "reminder")  # in-app, a delay, an email (workflows/demo.py)
# rundemo stops its children within STOP_TIMEOUT each (beat and the worker, then web).
STOPS_WITHIN = 45.0


@dataclass
class Demo:
    """One `manage.py rundemo`, its output in a file (a pipe left unread would block it)."""

    process: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def children(self) -> list[int]:
        return child_pids(self.process.pid)


def start(var: Path, addr: str, smtp_port: int, run: int) -> Demo:
    env = {
        **os.environ,
        **RECOVERY,
        "NORM_VAR_DIR": str(var),
        "EMAIL_BACKEND": "django.core.mail.backends.smtp.EmailBackend",
        "EMAIL_HOST": "127.0.0.1",
        "EMAIL_PORT": str(smtp_port),
        "LOG_LEVEL": "INFO",
    }
    # The embedded default: SQLite in var/ and the filesystem broker.
    for name in ("DATABASE_URL", "CELERY_BROKER_URL"):
        env.pop(name, None)
    log = var.parent / f"rundemo-{run}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "manage.py", "rundemo", "--addr", addr],
            cwd=settings.BASE_DIR,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            # Its own group, as a terminal's foreground job is.
            start_new_session=True,
        )
    demo = Demo(process, log)

    def running() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"rundemo exited with {process.returncode}:\n{demo.output()}")
        return "norm is running" in demo.output()

    wait_for(running, timeout=90, what="rundemo to start")
    return demo


def kill_everything(demo: Demo) -> None:
    """SIGKILL rundemo and everything it started, at once: the laptop's battery ran out,
    the OOM killer took them. Its children run in sessions of their own, so its process
    group alone would leave them a warm shutdown (notify/management/demochild.py)."""
    groups = [*demo.children(), demo.process.pid]
    assert len(groups) == 4, groups  # web, worker, beat
    for group in groups:
        os.killpg(group, signal.SIGKILL)
    demo.process.wait()
    wait_for(lambda: not any(map(alive, groups)), timeout=10, what="every process gone")


def trigger(addr: str, var: Path, triggers: range) -> None:
    """The demo's `welcome` to PER_TRIGGER recipients with an email each, per trigger."""
    key = (var / "demo-secret-key").read_text().strip()
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    for t in triggers:
        body = {
            "name": "welcome",
            "to": recipients(*(f"t{t}-{r}" for r in range(PER_TRIGGER))),
            "payload": {"name": f"T{t}", "delaySeconds": 2},
        }
        request = urllib.request.Request(
            f"http://{addr}/v1/events/trigger",
            data=json.dumps(body).encode(),
            headers={"Authorization": f"ApiKey {key}", "Content-Type": "application/json"},
        )
        with direct.open(request, timeout=30) as response:
            assert response.status == 201


class Database:
    """rundemo's SQLite file, read as it runs (WAL: readers do not block its writers)."""

    def __init__(self, var: Path) -> None:
        self.path = var / "norm.sqlite3"

    def rows(self, sql: str) -> list[tuple[Any, ...]]:
        with closing(sqlite3.connect(self.path, timeout=20)) as db:
            return db.execute(sql).fetchall()

    def statuses(self) -> dict[str, int]:
        return dict(Counter(s for (s,) in self.rows("SELECT status FROM workflows_notification")))

    def final(self) -> int:
        done = "('completed', 'failed', 'canceled')"
        (count,) = self.rows(f"SELECT count(*) FROM workflows_notification WHERE status IN {done}")
        return int(count[0])

    def emails_in_flight(self) -> set[str]:
        """Emails whose step a worker claimed and never committed: sent, perhaps, and not
        recorded (cut between the SMTP server's answer and the commit)."""
        return {
            str(pk)
            for (pk,) in self.rows(
                "SELECT m.id FROM messaging_message m JOIN workflows_step s ON s.id = m.step_id "
                "WHERE m.channel = 'email' AND s.status = 'processing'"
            )
        }

    def held(self, smtp: CountingSmtp) -> set[str]:
        """Emails the SMTP server has kept whose senders have not committed the send."""
        return {pk for pk in self.emails_in_flight() if pk in smtp.deliveries}


@pytest.fixture
def demos() -> Iterator[list[Demo]]:
    """The runs a test starts, killed whole at its end whatever happened."""
    started: list[Demo] = []
    yield started
    for demo in started:
        if demo.process.poll() is None:
            kill_everything(demo)


def interrupted_and_restarted(
    tmp_path: Path, smtp: tuple[int, CountingSmtp], demos: list[Demo], stop: str
) -> None:
    """A burst of welcomes (each an in-app message, a 2 s delay, an email), the run
    stopped (`stop`) once some emails are out and the last triggers just accepted, a run
    started again on the same var/ and port: every notification completes, each email
    arrives once but for one cut between its send and its commit."""
    port, recorder = smtp
    var, addr = tmp_path / "var", f"127.0.0.1:{free_port()}"
    db = Database(var)
    demos.append(first := start(var, addr, port, run=1))
    trigger(addr, var, range(TRIGGERS - LATE))
    # Mid-run: some emails out, most notifications still in their delay or before it.
    wait_for(lambda: recorder.delivered() >= 10, timeout=60, what="the first emails")
    # And a send caught between the SMTP server keeping its email and the commit.
    recorder.hold = 3
    wait_for(lambda: db.held(recorder), timeout=30, what="a send waiting for its answer")
    trigger(addr, var, range(TRIGGERS - LATE, TRIGGERS))

    stopping = time.monotonic()
    if stop == "kill":
        kill_everything(first)
    else:
        # Ctrl-C: the terminal signals its foreground group, rundemo alone (its children
        # run in sessions of their own, stopped by it).
        children = first.children()  # once it has exited, they would be init's
        os.killpg(first.process.pid, signal.SIGINT)
        try:
            first.process.wait(timeout=STOPS_WITHIN)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"rundemo still running:\n{first.output()[-3000:]}") from None
        assert len(children) == 3 and not any(map(alive, children)), "a child outlived it"
    stopped = time.monotonic() - stopping
    recorder.hold = 0
    in_flight = db.emails_in_flight()
    at_stop, delivered = db.statuses(), recorder.delivered()
    assert db.final() < NOTIFICATIONS, "stopped too late: the run had finished already"

    restarted = time.monotonic()
    demos.append(second := start(var, addr, port, run=2))
    try:
        wait_for(lambda: db.final() == NOTIFICATIONS, timeout=90, interval=0.5, what="all final")
    except AssertionError:
        raise AssertionError(f"{db.statuses()}; last output:\n{second.output()[-4000:]}") from None
    recovered = time.monotonic() - restarted

    assert db.statuses() == {"completed": NOTIFICATIONS}
    steps = db.rows("SELECT step_id, status FROM workflows_step")
    assert Counter(step for step, _ in steps) == dict.fromkeys(WELCOME, NOTIFICATIONS)
    assert {status for _, status in steps} == {"completed"}
    messages = db.rows("SELECT id, channel, status FROM messaging_message")
    assert Counter(channel for _, channel, _ in messages) == {
        "in_app": NOTIFICATIONS,
        "email": NOTIFICATIONS,
    }
    assert {status for _, _, status in messages} == {"sent"}
    emails = {str(pk) for pk, channel, _ in messages if channel == "email"}
    # Every email arrived; a repeat only of a send cut between the answer and the commit.
    wait_for(lambda: set(recorder.deliveries) == emails, timeout=10, what="every email at SMTP")
    repeats = recorder.repeats()
    print(
        f"\n[rundemo {stop}] stopped in {stopped:.1f} s at {at_stop} with {delivered} emails out; "
        f"{NOTIFICATIONS} completed {recovered:.1f} s after the restart; "
        f"{len(in_flight)} sends in flight at the stop, repeated: {repeats or 'none'}"
    )
    assert set(repeats) <= in_flight, "a send not in flight at the stop was repeated"
    assert all(n == 1 for n in repeats.values())


def test_make_run_killed_outright_and_started_again_loses_nothing_and_sends_nothing_twice(
    tmp_path: Path, smtp: tuple[int, CountingSmtp], demos: list[Demo]
) -> None:
    interrupted_and_restarted(tmp_path, smtp, demos, stop="kill")


def test_make_run_stopped_with_ctrl_c_and_started_again_loses_nothing_and_sends_nothing_twice(
    tmp_path: Path, smtp: tuple[int, CountingSmtp], demos: list[Demo]
) -> None:
    interrupted_and_restarted(tmp_path, smtp, demos, stop="interrupt")


# Concurrent writers of the same rows: the web server's threads, a request each, as a
# script or a small team's app sends them, beside the worker writing the same file.
WRITERS, BURSTS = 24, 3


def call(addr: str, key: str, method: str, path: str, body: dict[str, Any]) -> int:
    """The status of one request to the demo's API, straight to the server."""
    request = urllib.request.Request(
        f"http://{addr}{path}",
        data=json.dumps(body).encode(),
        method=method,
        headers={"Authorization": f"ApiKey {key}", "Content-Type": "application/json"},
    )
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with direct.open(request, timeout=60) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code


def test_make_run_answers_concurrent_writers_of_the_same_rows_and_sends_each_once(
    tmp_path: Path, smtp: tuple[int, CountingSmtp], demos: list[Demo]
) -> None:
    """On SQLite every writer waits for the one before it (IMMEDIATE transactions, a busy
    timeout): none is refused "database is locked" (a 503), and the trigger sent WRITERS
    times under one transactionId fans out once, each email arriving once."""
    port, recorder = smtp
    var, addr = tmp_path / "var", f"127.0.0.1:{free_port()}"
    db = Database(var)
    demos.append(demo := start(var, addr, port, run=1))
    key = (var / "demo-secret-key").read_text().strip()

    def burst(method: str, path: str, body: dict[str, Any]) -> list[int]:
        together = threading.Barrier(WRITERS)

        def one(_: int) -> int:
            together.wait()
            return call(addr, key, method, path, body)

        with ThreadPoolExecutor(WRITERS) as pool:
            return list(pool.map(one, range(WRITERS)))

    statuses: Counter[tuple[str, int]] = Counter()
    for b in range(BURSTS):
        shipped = {
            "name": "order-update",
            "to": recipients(f"r{b}-0", f"r{b}-1"),
            "payload": {"orderId": f"o{b}", "status": "shipped"},
            "transactionId": f"burst-{b}",
        }
        writes = {
            "subscriber": (
                "POST",
                "/v2/subscribers",
                {"subscriberId": f"s{b}", "email": "s@x.org"},
            ),
            "update": ("PATCH", f"/v2/subscribers/s{b}", {"firstName": f"S{b}"}),
            "subscribe": ("POST", f"/v2/topics/t{b}/subscriptions", {"subscriberIds": [f"s{b}"]}),
            "trigger": ("POST", "/v1/events/trigger", shipped),
        }
        for name, (method, path, body) in writes.items():
            statuses.update((name, status) for status in burst(method, path, body))
    assert statuses == {
        ("subscriber", 201): WRITERS * BURSTS,
        ("update", 200): WRITERS * BURSTS,
        ("subscribe", 201): WRITERS * BURSTS,
        ("trigger", 201): WRITERS * BURSTS,
    }, demo.output()[-4000:]

    notifications = 2 * BURSTS
    wait_for(lambda: db.final() == notifications, timeout=90, what="every notification final")
    assert db.statuses() == {"completed": notifications}
    (events,) = db.rows("SELECT count(*) FROM notify_triggerevent")
    assert events == (BURSTS,)
    emails = {
        str(pk) for (pk,) in db.rows("SELECT id FROM messaging_message WHERE channel = 'email'")
    }
    assert len(emails) == notifications
    wait_for(lambda: set(recorder.deliveries) == emails, timeout=10, what="every email at SMTP")
    assert recorder.repeats() == {}
