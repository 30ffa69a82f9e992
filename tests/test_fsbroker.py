"""The embedded default's filesystem broker (`make run`) as its web server and worker use
it: one process publishes while another takes the messages."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from kombu import Connection, Consumer, Producer, Queue
from kombu.exceptions import ChannelError
from kombu.message import Message
from kombu.transport import filesystem

from config import fsbroker
from tests.test_settings import ROOT, settings_from

MESSAGES = 100
BODY = "x" * 200_000  # a large payload widens the time its write takes

PUBLISH = """
import json, sys
from kombu import Connection
transport, options, count, body = json.loads(sys.stdin.read())
with Connection("filesystem://", transport=transport, transport_options=options) as conn:
    out = conn.SimpleQueue("echo")
    for i in range(count):
        out.put({"i": i, "body": body})
"""


def _embedded_broker(var: Path, **overrides: Any) -> tuple[str, dict[str, Any]]:
    found = settings_from(
        {"CELERY_BROKER_URL": "filesystem://", "NORM_VAR_DIR": str(var)},
        "CELERY_BROKER_TRANSPORT",
        "CELERY_BROKER_TRANSPORT_OPTIONS",
    )
    options = {**found["CELERY_BROKER_TRANSPORT_OPTIONS"], **overrides}
    for folder in ("data_folder_in", "control_folder"):
        Path(options[folder]).mkdir(parents=True, exist_ok=True)
    return found["CELERY_BROKER_TRANSPORT"], options


def test_a_worker_never_takes_a_message_still_being_written(tmp_path: Path) -> None:
    """kombu's channel wrote a message under its final name, and a worker polling the
    folder took some still empty: JSONDecodeError killed the worker (and `make run`)
    and lost the message, under a burst of 200 triggers."""
    # Polling without a pause, the worker looks at the folder as often as it can.
    transport, options = _embedded_broker(tmp_path, polling_interval=0)
    with Connection("filesystem://", transport=transport, transport_options=options) as conn:
        taken = conn.SimpleQueue("echo")
        publisher = subprocess.Popen(
            [sys.executable, "-c", PUBLISH], cwd=ROOT, stdin=subprocess.PIPE, text=True
        )
        assert publisher.stdin is not None
        publisher.stdin.write(json.dumps([transport, options, MESSAGES, BODY]))
        publisher.stdin.close()
        received: list[int] = []
        deadline = time.monotonic() + 30
        try:
            while len(received) < MESSAGES and time.monotonic() < deadline:
                try:
                    message = taken.get(timeout=0.5)
                except queue.Empty:
                    continue
                assert message.payload["body"] == BODY
                received.append(message.payload["i"])
                message.ack()
        finally:
            publisher.kill()
            publisher.wait()

    assert sorted(received) == list(range(MESSAGES))
    assert [p.name for p in Path(options["data_folder_in"]).iterdir()] == []  # no leftovers


def test_a_busy_worker_takes_its_next_message_as_soon_as_a_thread_frees_up(
    tmp_path: Path,
) -> None:
    """As Celery's worker consumes: one message at a time (prefetch 1), each handed to a
    thread that acknowledges it when done. kombu slept polling_interval (0.1 s) once
    every thread was taken, and a thread that freed up waited out the rest: tasks of
    10 ms ran 10 a second, and `make run` took minutes over a burst of triggers.

    Polled every 5 s here, so that the outcome is no matter of timing: waited out, the
    30 tasks take minutes and the bound of 20 s ends the test short of them; woken by
    each acknowledgement, they take a fraction of a second."""
    transport, options = _embedded_broker(tmp_path, polling_interval=5.0)
    count, finished = 30, []
    with Connection("filesystem://", transport=transport, transport_options=options) as conn:
        tasks = Queue("workflows", routing_key="workflows")
        with conn.channel() as channel:
            for i in range(count):
                Producer(channel).publish({"i": i}, routing_key="workflows", declare=[tasks])

        def run(body: dict[str, Any], message: Message) -> None:
            def task() -> None:
                time.sleep(0.01)
                message.ack()
                finished.append(time.monotonic())

            threading.Thread(target=task).start()

        channel = conn.channel()
        channel.basic_qos(prefetch_size=0, prefetch_count=1)
        start = time.monotonic()
        with Consumer(channel, [tasks], callbacks=[run]):
            while len(finished) < count and time.monotonic() - start < 20:
                with contextlib.suppress(TimeoutError):
                    conn.drain_events(timeout=5)

    assert len(finished) == count


def test_messages_are_taken_in_the_order_they_were_sent_when_the_clock_gains_a_digit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A message's file is named after the milliseconds since boot, and taken in the
    order of the names: one sent at 999,999 ms came after one sent at 1,000,000 ms."""
    transport, options = _embedded_broker(tmp_path, polling_interval=0)
    with Connection("filesystem://", transport=transport, transport_options=options) as conn:
        # A queue no other test bound: kombu keeps the filesystem transport's bindings
        # for the whole process, not per folder, and would not bind a name again in this
        # test's folder (its messages routed nowhere, the test run a second time failed).
        tasks = conn.SimpleQueue(f"messages-{uuid.uuid4().hex[:8]}")
        for sent_at, body in ((999.999, "first"), (1000.0, "second")):
            monkeypatch.setattr(fsbroker, "monotonic", lambda sent_at=sent_at: sent_at)
            tasks.put({"body": body})
        monkeypatch.undo()
        taken = [tasks.get(timeout=5) for _ in range(2)]

    assert [message.payload["body"] for message in taken] == ["first", "second"]


def test_a_message_put_back_is_marked_redelivered_where_celery_reads_it(tmp_path: Path) -> None:
    """Celery puts back the message of a worker that died (rejected, requeued), and a task
    knows it was delivered again by its delivery info, where kombu's Redis transport marks
    it: the filesystem channel marked the payload's top level, and no task could tell
    (subscriber commands count such runs: subscribers.services.command_given_up)."""
    transport, options = _embedded_broker(tmp_path, polling_interval=0)
    with Connection("filesystem://", transport=transport, transport_options=options) as conn:
        tasks = conn.SimpleQueue(f"subscribers-{uuid.uuid4().hex[:8]}")  # as above
        tasks.put({"body": "command"})
        first = tasks.get(timeout=5)
        redelivered_first = first.delivery_info.get("redelivered")
        first.requeue()
        again = tasks.get(timeout=5)
        again.ack()

    assert again.payload == {"body": "command"}
    assert (redelivered_first, again.delivery_info["redelivered"]) == (None, True)


def test_a_message_file_that_is_no_json_object_is_dropped_not_raised_to_the_worker(
    tmp_path: Path,
) -> None:
    """A message's file emptied or cut short (the machine crashed before the disk had it,
    a hand in var/broker) raised JSONDecodeError out of the worker's loop: the worker
    died ("Unrecoverable error"), `make run` with it, and each restart met the next such
    file. It is dropped now (its work is in the database, for the reconciler), and the
    worker takes the messages after it."""
    transport, options = _embedded_broker(tmp_path, polling_interval=0)
    folder = Path(options["data_folder_in"])
    queue = f"reconcile-{uuid.uuid4().hex[:8]}"  # a name no other test bound, as above
    with Connection("filesystem://", transport=transport, transport_options=options) as conn:
        tasks = conn.SimpleQueue(queue)
        tasks.put({"body": "first"})
        tasks.put({"body": "second"})
        # Named as the channel names messages, and taken before them (the names' order).
        for stamp, content in enumerate((b"", b'{"body": "cut sh', b"\xff\xfe", b"[1, 2]")):
            (folder / f"{stamp:015d}_broken.{queue}.msg").write_bytes(content)
        taken = []
        for _ in range(2):
            message = tasks.get(timeout=5)
            message.ack()
            taken.append(message.payload["body"])

    assert sorted(taken) == ["first", "second"]  # sent in the same millisecond: either order
    assert list(folder.iterdir()) == []  # the broken files gone, not taken again


def test_an_exchange_file_a_crash_left_empty_or_cut_short_is_written_anew_as_queues_bind(
    tmp_path: Path,
) -> None:
    """An exchange's file in var/broker-control (the queues it routes to) left empty or
    cut short: made by the first `make run` and not yet on disk when the machine lost
    power, or opened by kombu ("wb", which empties it) and killed before it wrote. The
    worker's start binds its queues through it, and raised JSONDecodeError: "worker
    exited with status 1", every later `make run` on that var/ the same. A queue bound
    now writes the table anew; a publish before any bind is the broker's refusal (which
    norm leaves to the reconciler), not a bug's error."""
    transport, options = _embedded_broker(tmp_path, polling_interval=0)
    control = Path(options["control_folder"])
    # Names no other test bound: kombu keeps the bindings it made for the whole process,
    # and binds a queue's file only the first time.
    tag = uuid.uuid4().hex[:8]
    broken = {"empty": b"", "cut": b'[["cut", "", "cu', "bytes": b"\xff\xfe", "nolist": b"[1]"}
    names = {kind: f"{kind}-{tag}" for kind in broken}
    for kind, content in broken.items():
        (control / f"{names[kind]}.exchange").write_bytes(content)
    with Connection("filesystem://", transport=transport, transport_options=options) as conn:
        with pytest.raises(ChannelError):
            conn.Producer().publish({}, exchange=names["nolist"], routing_key=names["nolist"])
        taken = {}
        for queue in names.values():
            tasks = conn.SimpleQueue(queue)  # declared and bound, as a worker's start does
            tasks.put({"body": queue})
            message = tasks.get(timeout=5)
            message.ack()
            taken[queue] = message.payload["body"]

    assert taken == {queue: queue for queue in names.values()}
    for queue in taken:
        assert json.loads((control / f"{queue}.exchange").read_text()) == [[queue, "", queue]]


def test_an_exchange_file_longer_than_its_table_written_anew_keeps_nothing_after_it(
    tmp_path: Path,
) -> None:
    """Written anew over a cut-short file longer than the new table, the table's file kept
    the rest of the old one after it: still unreadable, every publish through it was
    refused until the next start."""
    transport, options = _embedded_broker(tmp_path, polling_interval=0)
    control = Path(options["control_folder"])
    queue = f"long-{uuid.uuid4().hex[:8]}"  # a name no other test bound, as above
    (control / f"{queue}.exchange").write_bytes(b'[["' + b"x" * 500)
    with Connection("filesystem://", transport=transport, transport_options=options) as conn:
        tasks = conn.SimpleQueue(queue)
        tasks.put({"body": queue})
        message = tasks.get(timeout=5)
        message.ack()

    assert message.payload == {"body": queue}
    assert json.loads((control / f"{queue}.exchange").read_text()) == [[queue, "", queue]]


def test_a_queue_bound_by_each_start_is_listed_once_and_a_new_file_is_no_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Each process binds its queues as it starts (the web server, the worker, beat, every
    `make run`): the exchange's file lists a queue once, not once per start, and one the
    bind has just made (empty) is no unreadable file to log."""
    transport, options = _embedded_broker(tmp_path, polling_interval=0)
    control = Path(options["control_folder"])
    exchange = f"starts-{uuid.uuid4().hex[:8]}"
    with Connection("filesystem://", transport=transport, transport_options=options) as conn:
        channel = conn.default_channel
        # The channel's own bind, as each process's start calls it (kombu skips a binding
        # only within one process).
        for queue in ("workflows", "echo", "workflows", "echo", "workflows"):
            channel._queue_bind(exchange, queue, "", queue)

    table = json.loads((control / f"{exchange}.exchange").read_text())
    # In any order: a publish routes to the set of queues the table names.
    assert sorted(table) == [["echo", "", "echo"], ["workflows", "", "workflows"]]
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_a_queue_bound_while_another_process_writes_the_table_keeps_what_it_wrote(
    tmp_path: Path,
) -> None:
    """Two processes binding through one exchange's file at once (the web server and the
    worker of one `make run`): each reads and writes the table under the file's lock, so
    neither writes over a queue the other has just added."""
    transport, options = _embedded_broker(tmp_path, polling_interval=0)
    file = Path(options["control_folder"]) / f"locked-{uuid.uuid4().hex[:8]}.exchange"
    file.write_bytes(b"[]")
    with Connection("filesystem://", transport=transport, transport_options=options) as conn:
        channel = conn.default_channel
        with file.open("r+b", buffering=0) as other:  # another process's bind, as kombu's
            filesystem.lock(other, filesystem.LOCK_EX)
            binding = threading.Thread(
                target=channel._queue_bind, args=(file.stem, "echo", "", "echo")
            )
            binding.start()
            waited = _comes_to_wait_for_a_lock_of(file, binding)
            other.write(b'[["workflows", "", "workflows"]]')
            filesystem.unlock(other)
        binding.join(timeout=30)

    assert waited
    table = sorted(json.loads(file.read_text()))
    assert table == [["echo", "", "echo"], ["workflows", "", "workflows"]]


def _comes_to_wait_for_a_lock_of(file: Path, thread: threading.Thread) -> bool:
    """Whether `thread` comes to wait for a lock of `file` before it ends: the kernel
    lists each process or thread blocked on a lock in /proc/locks, its line marked `->`
    (Linux). A fixed wait (2 s, as it was) could not tell a bind held by the lock from
    one merely slow: a bind without the lock, slow on a loaded machine, passed for a
    held one."""
    stat = file.stat()
    # As /proc/locks names a file: its device's major and minor (hex), then its inode.
    name = f" {os.major(stat.st_dev):02x}:{os.minor(stat.st_dev):02x}:{stat.st_ino} "
    deadline = time.monotonic() + 30
    while thread.is_alive() and time.monotonic() < deadline:
        for line in Path("/proc/locks").read_text().splitlines():
            if "->" in line and name in line:
                return True
        time.sleep(0.01)
    return False


def test_a_message_that_cannot_be_added_leaves_no_partial_file_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A publish refused (a disk full, a name taken) is the broker's refusal, which norm
    leaves to the reconciler: the partial file it wrote is removed, not left in
    var/broker for every refused publish."""
    transport, options = _embedded_broker(tmp_path, polling_interval=0)
    folder = Path(options["data_folder_in"])
    queue = f"refused-{uuid.uuid4().hex[:8]}"  # a name no other test bound, as above
    taken = uuid.uuid4()
    with Connection("filesystem://", transport=transport, transport_options=options) as conn:
        tasks = conn.SimpleQueue(queue)
        monkeypatch.setattr(fsbroker, "monotonic", lambda: 1.0)
        monkeypatch.setattr(fsbroker.uuid, "uuid4", lambda: taken)
        # The message's own name taken by a folder: the rename onto it fails.
        (folder / f"{1000:015d}_{taken}.{queue}.msg").mkdir()
        with pytest.raises(ChannelError):
            tasks.put({"body": "refused"})

    assert [p.name for p in folder.iterdir()] == [f"{1000:015d}_{taken}.{queue}.msg"]


def test_an_idle_worker_waits_for_its_next_message_without_spinning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once a message was acknowledged, the wake-up it set stayed set: every later wait
    for a message returned at once, and an idle `make run` worker kept a core busy
    polling the broker's folder. Counted in looks at the folder, not in CPU time, which
    a loaded machine would make noisy."""
    transport, options = _embedded_broker(tmp_path, polling_interval=5.0)
    looks = []
    look = fsbroker.Channel._get
    monkeypatch.setattr(fsbroker.Channel, "_get", lambda *a: looks.append(1) or look(*a))
    with Connection("filesystem://", transport=transport, transport_options=options) as conn:
        tasks = conn.SimpleQueue(f"idle-{uuid.uuid4().hex[:8]}")  # as above
        tasks.put({"body": "one"})
        tasks.get(timeout=5).ack()

        looks.clear()
        with pytest.raises(queue.Empty):
            tasks.get(timeout=2)

    # One look, then the wait until the timeout (the polling interval is longer).
    assert 1 <= len(looks) <= 2, f"{len(looks)} looks at the folder in 2 s of waiting"
