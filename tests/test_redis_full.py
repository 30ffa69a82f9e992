"""A worker whose Redis is out of memory (`maxmemory`, `noeviction`) goes on taking and
acknowledging tasks (config/redisbroker.py), on a redis-server of the test's own: the
machine's is shared with the other test processes."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from kombu import Consumer, Queue

from config import pipeline
from config.celery import app
from tests.e2e.harness import free_port, wait_for


@pytest.fixture
def full_redis(tmp_path: Path) -> Iterator[redis.Redis]:
    if not shutil.which("redis-server"):
        pytest.skip("filling Redis needs a redis-server of the test's own")
    port = free_port()
    command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path)]
    limits = ["--maxmemory", "2mb", "--maxmemory-policy", "noeviction"]
    no_disk = ["--save", "", "--appendonly", "no"]
    with (tmp_path / "redis.log").open("ab") as out:
        process = subprocess.Popen([*command, *limits, *no_disk], stdout=out, stderr=out)
    client = redis.Redis(port=port, socket_timeout=5)
    try:
        wait_for(lambda: _answers(client), timeout=10, what="redis-server to answer")
        yield client
    finally:
        process.kill()
        process.wait()


def _answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


def _fill(client: redis.Redis) -> None:
    """Redis's memory full, as a backlog fills it: writes refused until some is freed."""
    for i in range(10_000):
        try:
            client.set(f"junk:{i}", b"x" * 10_000)
        except redis.exceptions.OutOfMemoryError:
            break
    # The fill leaves Redis a few bytes over its limit, which the message a worker takes
    # off its queue may bring back under: well over it, as a backlog leaves it.
    used = int(client.info("memory")["used_memory"])
    client.config_set("maxmemory", used - 200_000)


def test_a_worker_takes_and_acknowledges_tasks_while_redis_is_out_of_memory(
    full_redis: redis.Redis,
) -> None:
    """kombu raised Redis's refusal of the copy it keeps of a task taken (and of its
    removal at the acknowledgement or rejection) out of the worker's loop: "Unrecoverable
    error: OutOfMemoryError" ended the worker, and the task it had taken off its queue was
    lost."""
    url = f"redis://127.0.0.1:{full_redis.connection_pool.connection_kwargs['port']}/0"
    queue = Queue(f"full-{uuid.uuid4().hex}")
    taken: list[Any] = []
    with app.connection_for_read(url) as connection:
        with connection.Producer() as producer:
            for body in ("acknowledged", "rejected", "taken while full"):
                producer.publish(body, routing_key=queue.name, declare=[queue])
        with Consumer(connection, [queue], callbacks=[lambda body, m: taken.append(m)]):
            connection.drain_events(timeout=5)
            connection.drain_events(timeout=5)
            assert full_redis.hlen("unacked") == 2  # Redis's copies, until acknowledged

            _fill(full_redis)
            connection.drain_events(timeout=5)
            acknowledged, rejected, taken_while_full = taken
            acknowledged.ack()
            rejected.reject()
            taken_while_full.ack()

    assert [m.payload for m in taken] == ["acknowledged", "rejected", "taken while full"]
    # No copy left behind, which Redis would deliver again after the visibility timeout.
    assert full_redis.hlen("unacked") == 0
    assert full_redis.zcard("unacked_index") == 0


def test_a_task_requeued_while_redis_is_out_of_memory_keeps_its_copy(
    full_redis: redis.Redis,
) -> None:
    """Rejected to be requeued (its worker process died: Celery's reject on worker lost),
    it cannot go back on its queue while Redis is full: its copy stays, which Redis
    delivers again once the visibility timeout is over. Removed, the task was lost until
    the reconciler found its row."""
    url = f"redis://127.0.0.1:{full_redis.connection_pool.connection_kwargs['port']}/0"
    queue = Queue(f"full-{uuid.uuid4().hex}")
    taken: list[Any] = []
    with app.connection_for_read(url) as connection:
        with connection.Producer() as producer:
            producer.publish("requeued", routing_key=queue.name, declare=[queue])
        with Consumer(connection, [queue], callbacks=[lambda body, m: taken.append(m)]):
            connection.drain_events(timeout=5)
            _fill(full_redis)
            [requeued] = taken
            requeued.reject(requeue=True)

    assert full_redis.hlen("unacked") == 1
    assert full_redis.zcard("unacked_index") == 1


@pytest.mark.parametrize("batched", [False, True], ids=["alone", "batched"])
def test_a_publish_whose_queue_declare_redis_refused_for_memory_is_sent_on_kombus_retry(
    full_redis: redis.Redis, batched: bool
) -> None:
    """kombu takes Redis's refusal of a publish's queue declare (out of memory) for a lost
    connection: it closes the connection's channels, the producer's among them, reconnects
    and declares the queue again on a new channel. Redis had freed some memory meanwhile
    (a worker took messages off their queues), the declare went through, and the publish
    went on the producer's closed channel: "AttributeError: 'NoneType' object has no
    attribute 'client'", out of Celery's publish retry: a bug to norm, logged with its
    traceback and counted against the trigger whose fan-out sent it (send_each batches)."""
    url = f"redis://127.0.0.1:{full_redis.connection_pool.connection_kwargs['port']}/0"
    queue = f"full-{uuid.uuid4().hex}"
    refused: list[Exception] = []

    def memory_freed(exc: Exception, interval: float) -> None:
        # kombu's errback, before it reconnects: the memory freed between the refusal and
        # the retry, where a worker taking messages off frees it by chance.
        refused.append(exc)
        if len(refused) == 1:
            full_redis.delete(*full_redis.keys("junk:*"))

    _fill(full_redis)
    with (
        app.connection_for_write(url) as connection,
        connection.Producer() as producer,
        producer.batch(pipeline.PUBLISH_BATCH) if batched else contextlib.nullcontext(),
    ):
        app.send_task(
            pipeline.ECHO.task,
            args=["a notification"],
            queue=queue,
            producer=producer,
            retry_policy={"errback": memory_freed},
        )

    assert isinstance(refused[0], redis.exceptions.OutOfMemoryError)  # the declare's
    assert full_redis.llen(queue) == 1
