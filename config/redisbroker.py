"""Celery's Redis broker, with a worker that goes on running tasks while Redis is out of
memory.

kombu's worker takes a message off its queue (BRPOP), then writes a copy of it to the
unacknowledged set in a transaction, to deliver it again should the worker die; an
acknowledgement removes the copy in another. With Redis at its `maxmemory` under
`noeviction`, Redis refuses every command of a transaction ("OOM command not allowed"),
even one that frees memory, and kombu raised the refusal out of the worker's loop:
"Unrecoverable error: OutOfMemoryError" ended the worker, and the message it had taken
was gone. Workers are what empties the queues that fill Redis. (A worker started while
Redis is full still dies as it starts, in Celery's own startup.)
"""

from __future__ import annotations

import logging
from typing import Any

import kombu.exceptions
import redis.exceptions
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual

from config.logs import Quieted

logger = logging.getLogger(__name__)

# Every message a worker takes and acknowledges while Redis is full: a line a minute.
_full = Quieted()


class QoS(kombu_redis.QoS):
    def append(self, message: Any, delivery_tag: str) -> None:
        try:
            super().append(message, delivery_tag)
        except redis.exceptions.OutOfMemoryError as exc:
            # The message is off its queue already, and no write can put it back: run it
            # without Redis's copy. Only a worker that dies running it loses it, and its
            # row then waits in the database for the reconciler, as a lost message's does.
            virtual.QoS.append(self, message, delivery_tag)
            _said_full(exc)

    def ack(self, delivery_tag: str) -> None:
        try:
            super().ack(delivery_tag)
        except redis.exceptions.OutOfMemoryError as exc:
            self._forget(delivery_tag)
            virtual.QoS.ack(self, delivery_tag)
            _said_full(exc)

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        try:
            super().reject(delivery_tag, requeue)
        except redis.exceptions.OutOfMemoryError as exc:
            # One to requeue keeps its copy, which Redis delivers again once the
            # visibility timeout is over; without one, the reconciler sends it.
            if not requeue:
                self._forget(delivery_tag)
            virtual.QoS.ack(self, delivery_tag)
            _said_full(exc)

    def _forget(self, delivery_tag: str) -> None:
        """Remove the message's copy outside a transaction, which Redis allows when full:
        left there, Redis would deliver it again after the visibility timeout."""
        with self.channel.conn_or_acquire() as client:
            self._remove_from_indices(delivery_tag, client.pipeline(transaction=False)).execute()


def _said_full(exc: Exception) -> None:
    if (held := _full.due("full")) is not None:
        logger.warning(
            "Redis is out of memory: the worker runs the tasks it takes without Redis "
            "keeping a copy of each, which the reconciler sends again should the worker "
            "die running it: %s (%d more such refusals since the last such line)",
            exc,
            held,
        )


class Channel(kombu_redis.Channel):
    QoS = QoS

    def _connparams(self, asynchronous: bool = False) -> dict[str, Any]:
        if self.connection is None:
            # A channel kombu closed, asked for Redis: a producer's, which kombu's retry of
            # a queue's declare closed (it takes any Redis error, out of memory too, for
            # a lost connection: it closes the connection's channels and reconnects) and
            # revived the queue on a new channel, not the producer, whose publish then
            # went on its closed channel: AttributeError, out of Celery's publish retry,
            # a bug to its caller. A connection error, as kombu's own declare says it on a
            # closed channel, is what that retry takes: it revives the producer, and
            # publishes again.
            raise kombu.exceptions.ConnectionError("channel disconnected")
        return super()._connparams(asynchronous=asynchronous)


class Transport(kombu_redis.Transport):
    Channel = Channel
