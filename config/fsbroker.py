"""Celery's filesystem broker for the embedded default (`make run`), its messages written
whole before a worker can see them.

kombu's filesystem channel creates a message's file under its final name, then writes
it; the worker takes any file of that name, without the writer's lock. Under a burst
of triggers it took one still empty: "Unrecoverable error: JSONDecodeError" killed the
worker, and with it `make run`, and the message was lost (kombu#1551). Here a message
is written under a name the channel never takes, then renamed to its own, which POSIX
makes atomic: a worker sees no file, or the whole message.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import uuid
from queue import Empty
from time import monotonic
from typing import Any

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.encoding import bytes_to_str, str_to_bytes
from kombu.utils.json import dumps, loads

logger = logging.getLogger(__name__)


class Channel(filesystem.Channel):
    connection: Transport

    def basic_ack(self, delivery_tag: Any, multiple: bool = False) -> None:
        super().basic_ack(delivery_tag, multiple)
        self.connection.freed.set()

    def basic_reject(self, delivery_tag: Any, requeue: bool = False) -> None:
        super().basic_reject(delivery_tag, requeue)
        self.connection.freed.set()

    def _restore(self, message: Any) -> None:
        # A message put back (its worker died: Celery rejects it to be requeued) is marked
        # redelivered where kombu's other transports mark it and Celery reads it, in its
        # delivery info; kombu's own mark here (the payload's top level) reaches no task.
        if message.delivery_info is not None:
            message.delivery_info["redelivered"] = True
        super()._restore(message)

    # kombu's filesystem Channel takes no `timeout` here either, and `_put` as below.
    def _get(self, queue: str) -> Any:  # type: ignore[override]
        # A message's file that is no JSON object (emptied or cut short: a crash of the
        # machine before the disk had it, a hand in var/broker) raised out of the worker's
        # loop, "Unrecoverable error: JSONDecodeError": the worker, and with it `make run`,
        # died, and each restart met the next such file. kombu has removed the file by
        # then; its work is in the database, for the reconciler to enqueue again.
        while True:
            try:
                payload = super()._get(queue)
            except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
                logger.error("Dropped an unreadable message of queue %s: %s", queue, exc)
                continue
            if isinstance(payload, dict):
                return payload
            logger.error("Dropped a message of queue %s that is no JSON object", queue)

    def get_table(self, exchange: str) -> list[Any]:
        try:
            return list(super().get_table(exchange))
        except (ValueError, TypeError) as exc:
            # Unreadable (see _queue_bind) and not bound again yet: a publish is refused
            # as by a broker that is down, which norm leaves to the reconciler, rather
            # than raise a bug's error.
            raise ChannelError(
                f"exchange {exchange!r}: its file cannot be read ({exc}); the worker's "
                "start writes it anew"
            ) from exc

    def _queue_bind(self, exchange: str, routing_key: str, pattern: str, queue: str) -> None:
        """kombu's, but a table that cannot be read is written anew, and a file is made
        without emptying one another process is writing.

        An exchange's file in broker-control lists the queues it routes to. kombu opened a
        new one with "wb" (empty) and wrote it after: killed in between, or the machine
        losing power before the disk had a file the first `make run` had just made, it was
        left empty or cut short. The worker binds its queues through each as it starts,
        and raised JSONDecodeError: "worker exited with status 1", every later `make run`
        on that var/ the same."""
        file = self._exchange_file(exchange)
        self.control_folder.mkdir(exist_ok=True)
        bound = filesystem.exchange_queue_t(routing_key or "", pattern or "", queue or "")
        try:
            fd = os.open(file, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            raise ChannelError(f"Cannot open {file}") from exc
        with os.fdopen(fd, "r+b", buffering=0) as table_file:
            filesystem.lock(table_file, filesystem.LOCK_EX)
            try:
                table = self._table(exchange, table_file.read())
                if bound not in table:
                    table_file.seek(0)
                    table_file.write(str_to_bytes(dumps([bound, *table])))
                    table_file.truncate()
            finally:
                filesystem.unlock(table_file)

    @staticmethod
    def _table(exchange: str, raw: bytes) -> list[Any]:
        if not raw:  # just made by this bind (or left empty)
            return []
        try:
            return [filesystem.exchange_queue_t(*q) for q in loads(bytes_to_str(raw))]
        except (ValueError, TypeError) as exc:
            # Its queues are bound again as their consumers and publishers declare them.
            logger.error("Wrote anew the unreadable file of exchange %s: %s", exchange, exc)
            return []

    def _put(self, queue: str, payload: Any, **kwargs: Any) -> None:  # type: ignore[override]
        # The channel takes a queue's files in the order of their names: an unpadded
        # stamp put 1000000 (ms since boot) before 999999, newer messages first each
        # time the clock gained a digit.
        name = f"{round(monotonic() * 1000):015d}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        # The channel takes only "<stamp>_<uuid>.<queue>.msg": a dot file is no queue's.
        partial = os.path.join(self.data_folder_out, f".{name}.part")
        try:
            with open(partial, "wb") as file:
                file.write(str_to_bytes(dumps(payload)))
            os.replace(partial, final)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.remove(partial)
            raise ChannelError(f"Cannot add file {final!r} to directory") from exc


class Transport(filesystem.Transport):
    """kombu's, with a worker handed its next message as soon as a thread of its frees up.

    kombu sleeps polling_interval (0.1 s) whenever it delivers nothing, also when every
    thread is taken (prefetch 1): a thread that then freed up stayed idle that long, and
    with tasks of 10-20 ms the worker ran about 20 a second, 200 triggers taking minutes.
    Here the wait ends at the acknowledgement that frees a thread.
    """

    Channel = Channel

    def __init__(self, client: Any, **kwargs: Any) -> None:
        super().__init__(client, **kwargs)
        self.freed = threading.Event()

    # As kombu's virtual Transport, which narrows its base's **kwargs so.
    def drain_events(self, connection: Any, timeout: float | None = None) -> None:  # type: ignore[override]
        start = monotonic()
        while True:
            # Cleared before looking: an acknowledgement after the look is not missed.
            self.freed.clear()
            try:
                # None only as kombu's class attribute: its __init__ sets it.
                self.cycle.get(self._deliver, timeout=timeout)  # type: ignore[attr-defined, union-attr]
                return
            except Empty:
                if timeout is not None and monotonic() - start >= timeout:
                    raise TimeoutError from None
                interval = self.polling_interval or 0.0
                self.freed.wait(interval if timeout is None else min(interval, timeout))
