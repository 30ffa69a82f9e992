"""Hand-offs made together go to Redis in one round trip (`pipeline.send_each`): a chunk's
echoes, a trigger's listed recipients. One at a time, each paid a round trip and a Redis
client of its own, 100,000 of them for a broadcast to 100,000."""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis
from django.conf import settings
from django.db import transaction

from config import pipeline
from config.celery import app
from tests.conftest import on_the_embedded_broker
from tests.factories import SubscriberFactory, TriggerEventFactory
from tests.test_settings import ROOT
from workflows.models import Notification
from workflows.services import fanout


@pytest.fixture
def queue() -> Iterator[str]:
    """A queue of the test's own, in this process's Redis db."""
    name = f"publish-{uuid.uuid4().hex}"
    yield name
    with app.pool.acquire(block=True) as connection:
        connection.default_channel.queue_delete(name)


@pytest.fixture
def pushes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """For each write redis-py makes to a socket with an LPUSH in it, how many: each
    write is a round trip to Redis."""
    counts: list[int] = []
    send = redis.connection.AbstractConnection.send_packed_command

    def counted(self: Any, command: Any, check_health: bool = True) -> None:
        data = command if isinstance(command, bytes) else b"".join(command)
        if b"LPUSH" in data:
            counts.append(data.count(b"LPUSH"))
        send(self, command, check_health)

    monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", counted)
    return counts


def _queued(queue: str) -> list[tuple[str, list[Any]]]:
    """The tasks waiting in `queue` (task name, arguments), in the order workers take them."""
    broker = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    messages = [json.loads(raw) for raw in reversed(broker.lrange(queue, 0, -1))]
    return [(m["headers"]["task"], json.loads(base64.b64decode(m["body"]))[0]) for m in messages]


def test_hand_offs_sent_together_reach_their_queue_in_one_round_trip(
    queue: str, pushes: list[int]
) -> None:
    pipeline.send_each(pipeline.ECHO, [("n1",), ("n2",), ("n3",)], queue=queue)

    assert pushes == [3]
    assert _queued(queue) == [(pipeline.ECHO.task, [f"n{i}"]) for i in (1, 2, 3)]


@pytest.mark.django_db
def test_a_chunks_echoes_reach_the_broker_in_one_round_trip(
    queue: str,
    pushes: list[int],
    settings: Any,
    django_capture_on_commit_callbacks: Any,
) -> None:
    event = TriggerEventFactory()
    settings.NORM_WORKFLOW_QUEUES = {event.workflow_id: queue}
    subscribers = SubscriberFactory.create_batch(30, client=event.client)

    with django_capture_on_commit_callbacks(execute=True):
        made = fanout.notifications_create(trigger_event=event, subscribers=subscribers)

    assert made == 30
    assert pushes == [30]
    notifications = Notification.objects.order_by("subscriber_id").values_list("pk", flat=True)
    assert _queued(queue) == [(pipeline.ECHO.task, [str(pk)]) for pk in notifications]


@pytest.mark.django_db
def test_a_triggers_listed_recipients_reach_the_broker_in_one_round_trip(
    queue: str, pushes: list[int], settings: Any
) -> None:
    event = TriggerEventFactory(to=["ann", "bob", {"subscriberId": "cy", "email": "cy@x.io"}])
    settings.NORM_WORKFLOW_QUEUES = {event.workflow_id: queue}

    fanout.trigger_event_run(trigger_event_id=event.pk)

    assert pushes == [3]
    assert _queued(queue) == [
        (pipeline.SUBSCRIBER.task, [event.pk, {"subscriberId": "ann"}]),
        (pipeline.SUBSCRIBER.task, [event.pk, {"subscriberId": "bob"}]),
        (pipeline.SUBSCRIBER.task, [event.pk, {"subscriberId": "cy", "email": "cy@x.io"}]),
    ]


@pytest.mark.django_db
def test_hand_offs_redis_refuses_batched_and_alone_are_left_to_the_reconciler_with_a_warning(
    queue: str,
    settings: Any,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    django_capture_on_commit_callbacks: Any,
) -> None:
    """Redis drops every LPUSH, the batch's pipeline and each sent again alone (through
    Celery's publish retry): all wait in the database for the reconciler. One warning
    says so, with Redis's own reason; the chunk's rows stay committed."""
    event = TriggerEventFactory()
    settings.NORM_WORKFLOW_QUEUES = {event.workflow_id: queue}
    subscribers = SubscriberFactory.create_batch(3, client=event.client)

    execute = redis.client.Pipeline.execute
    execute_command = redis.Redis.execute_command

    def dropped(self: Any, *args: Any, **kwargs: Any) -> Any:
        if any(command[0] == "LPUSH" for command, _ in self.command_stack):
            raise redis.exceptions.ConnectionError("Connection reset by peer")
        return execute(self, *args, **kwargs)  # kombu's own, declaring the queue

    def dropped_alone(self: Any, *args: Any, **options: Any) -> Any:
        if args[0] == "LPUSH":
            raise redis.exceptions.ConnectionError("Connection reset by peer")
        return execute_command(self, *args, **options)

    monkeypatch.setattr(redis.client.Pipeline, "execute", dropped)
    monkeypatch.setattr(redis.Redis, "execute_command", dropped_alone)
    with django_capture_on_commit_callbacks(execute=True):
        made = fanout.notifications_create(trigger_event=event, subscribers=subscribers)

    assert made == 3 and Notification.objects.filter(status="pending").count() == 3
    [record] = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert record.exc_info is None
    message = record.getMessage()
    first = Notification.objects.order_by("subscriber_id").values_list("pk", flat=True)[0]
    assert f"the broker refused {pipeline.ECHO.task} ('{first}' and 2 more)" in message
    assert "Connection reset by peer" in message
    assert _queued(queue) == []


@pytest.mark.django_db
def test_a_hand_off_is_published_once_its_transaction_commits_and_never_if_it_rolls_back(
    queue: str, settings: Any, django_capture_on_commit_callbacks: Any
) -> None:
    """A worker that took the task before its row committed would find no row (and a
    rolled-back row's task would run on nothing): the hand-off waits for the commit."""
    settings.NORM_WORKFLOW_QUEUES = {"welcome": queue}
    with django_capture_on_commit_callbacks(execute=True):
        with contextlib.suppress(RuntimeError), transaction.atomic():
            pipeline.enqueue_on_commit(pipeline.MESSAGE, 41, workflow="welcome")
            raise RuntimeError("rolled back")
        pipeline.enqueue_on_commit(pipeline.MESSAGE, 42, workflow="welcome")
        assert _queued(queue) == []

    assert _queued(queue) == [(pipeline.MESSAGE.task, [42])]


@pytest.fixture
def dropping_first_push() -> Iterator[tuple[str, threading.Event]]:
    """A TCP proxy to the tests' Redis that drops the connection which carries the first
    LPUSH through it, before Redis reads it: a connection lost as a hand-off goes (a
    failover, a restart, a client Redis killed), the message certainly not taken. Yields
    the broker URL through it and an event set once it dropped one."""
    upstream = urlsplit(settings.CELERY_BROKER_URL)
    dropped = threading.Event()
    listener = socket.create_server(("127.0.0.1", 0))

    def pump(source: socket.socket, sink: socket.socket, drops: bool) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                if drops and b"LPUSH" in data and not dropped.is_set():
                    dropped.set()
                    break
                sink.sendall(data)
        for end in (source, sink):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)

    def accept() -> None:
        with contextlib.suppress(OSError):  # closed at the test's end
            while True:
                client, _ = listener.accept()
                redis_end = socket.create_connection(
                    (upstream.hostname or "127.0.0.1", upstream.port or 6379)
                )
                threading.Thread(target=pump, args=(client, redis_end, True), daemon=True).start()
                threading.Thread(target=pump, args=(redis_end, client, False), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    credentials, _, _ = upstream.netloc.rpartition("@")
    proxied = f"127.0.0.1:{listener.getsockname()[1]}"
    yield urlunsplit(upstream._replace(netloc=f"{credentials}@{proxied}".lstrip("@"))), dropped
    listener.close()


SEND_EACH_TO = """
import sys
import django
django.setup()
from config import pipeline
pipeline.send_each(pipeline.ECHO, [("n1",), ("n2",), ("n3",)], queue=sys.argv[1])
"""


def test_hand_offs_whose_connection_redis_drops_as_they_go_are_published_again(
    queue: str, dropping_first_push: tuple[str, threading.Event]
) -> None:
    """Celery's publish retry reconnects and publishes each hand-off again; kombu's batch
    does not retry its pipeline, and without norm's the three waited for the reconciler,
    a grace period (a minute) late, for a connection Redis lost as they went."""
    broker, dropped = dropping_first_push
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings", "CELERY_BROKER_URL": broker}
    done = subprocess.run(
        [sys.executable, "-c", SEND_EACH_TO, queue], cwd=ROOT, env=env,
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip

    assert dropped.is_set()
    assert done.returncode == 0, done.stderr
    assert _queued(queue) == [(pipeline.ECHO.task, [f"n{i}"]) for i in (1, 2, 3)]


SEND_EACH_AND_COUNT = """
import django
django.setup()
from config import pipeline
pipeline.send_each(pipeline.ECHO, [("n1",), ("n2",), ("n3",)])
print(pipeline.backlog("echo"))
"""


def test_the_embedded_broker_takes_hand_offs_sent_together_one_by_one(tmp_path: Path) -> None:
    """`make run`'s filesystem broker has no batches: kombu publishes each at once."""
    assert on_the_embedded_broker(SEND_EACH_AND_COUNT, tmp_path).split() == ["3"]


def test_hand_offs_beyond_one_batch_all_reach_their_queue_in_order(
    queue: str, pushes: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A broadcast's 100,000 echoes go in batches of PUBLISH_BATCH: every one of them is
    published, the last short batch too, none twice, each batch in one round trip."""
    monkeypatch.setattr(pipeline, "PUBLISH_BATCH", 2)

    pipeline.send_each(pipeline.ECHO, [(f"n{i}",) for i in range(1, 6)], queue=queue)

    assert pushes == [2, 2, 1]
    assert _queued(queue) == [(pipeline.ECHO.task, [f"n{i}"]) for i in range(1, 6)]


def _etas(queue: str) -> list[datetime | None]:
    """The time each task waiting in `queue` is to run at (None: at once)."""
    broker = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    messages = [json.loads(raw) for raw in reversed(broker.lrange(queue, 0, -1))]
    return [
        datetime.fromisoformat(m["headers"]["eta"]) if m["headers"].get("eta") else None
        for m in messages
    ]


def test_a_hand_off_with_a_countdown_waits_it_out_alone_and_batched(queue: str) -> None:
    """A delay or a send's retry goes to the broker with its countdown, alone or in a
    batch: sent at once, the message worker found the step not due, and it waited for the
    reconciler, a grace period late. A countdown of none (or past) is no wait at all."""
    before = datetime.now(UTC)
    pipeline.send_now(pipeline.MESSAGE, 1, countdown=300, queue=queue)
    pipeline.send_each(pipeline.MESSAGE, [(2,), (3,)], countdown=300, queue=queue)
    pipeline.send_now(pipeline.MESSAGE, 4, countdown=0, queue=queue)
    pipeline.send_now(pipeline.MESSAGE, 5, countdown=-5, queue=queue)
    after = datetime.now(UTC)

    *waiting, at_once, overdue = _etas(queue)
    assert len(waiting) == 3
    for eta in waiting:
        assert eta is not None
        assert before + timedelta(seconds=300) <= eta <= after + timedelta(seconds=300)
    assert at_once is None and overdue is None
