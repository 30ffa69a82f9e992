"""A worker keeps its PostgreSQL connection from task to task, drops a broken one, and
gives up on a server that does not answer.

Celery's Django fixup closes the connection after every task unless
CELERY_DB_REUSE_MAX is set; config/celery.py then applies CONN_MAX_AGE and drops a
connection that failed, as Django does around a request. These run the same hooks a
worker runs around each task, on a real connection (hence `transaction=True`).
"""

from __future__ import annotations

import socket
import threading

import pytest
from celery.fixups.django import DjangoWorkerFixup
from django.db import OperationalError, connection
from django.db.backends.postgresql.base import DatabaseWrapper

from config.celery import _close_old_connections, app
from tests.test_settings import settings_from
from workflows.tasks import reconcile

pytestmark = pytest.mark.django_db(transaction=True)


def _around_a_task(fixup: DjangoWorkerFixup) -> None:
    """What a worker process does before and after each task."""
    for hook in (fixup.on_task_prerun, _close_old_connections):
        hook(sender=reconcile)
    connection.ensure_connection()
    for hook in (fixup.on_task_postrun, _close_old_connections):
        hook(sender=reconcile)


def _backend_pid() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return cursor.fetchone()[0]


def test_consecutive_tasks_share_one_connection() -> None:
    fixup = DjangoWorkerFixup(app)
    connection.close()  # a connection older than CONN_MAX_AGE would rightly be replaced
    pid = _backend_pid()
    for _ in range(5):
        _around_a_task(fixup)
        assert _backend_pid() == pid


def test_a_connection_that_failed_is_replaced_after_the_task() -> None:
    fixup = DjangoWorkerFixup(app)
    pid = _backend_pid()
    with connection._nodb_cursor() as other:  # as a PostgreSQL restart would
        other.execute("SELECT pg_terminate_backend(%s)", [pid])
    with pytest.raises(OperationalError), connection.cursor() as cursor:
        cursor.execute("SELECT 1")  # the task fails, and will be retried

    _around_a_task(fixup)

    assert _backend_pid() != pid


def test_a_server_that_takes_the_connection_and_never_answers_fails_the_connect() -> None:
    """A failover half done: the address takes the TCP connection, and nothing answers on
    it. The connect fails (DB_CONNECT_TIMEOUT), an OperationalError the task retries
    (pipeline.DB_RETRY); libpq's own default waited for ever, the worker hung with it."""
    silent = socket.create_server(("127.0.0.1", 0))  # the kernel accepts; no one answers
    databases = settings_from({"DB_CONNECT_TIMEOUT": "2"}, "DATABASES")["DATABASES"]
    silent_db = {
        **connection.settings_dict,
        "HOST": "127.0.0.1",
        "PORT": silent.getsockname()[1],
        "OPTIONS": databases["default"].get("OPTIONS", {}),
    }
    raised: list[BaseException] = []

    def connect() -> None:
        wrapper = DatabaseWrapper(silent_db, alias="silent")
        try:
            wrapper.ensure_connection()
        except BaseException as exc:
            raised.append(exc)
        finally:
            wrapper.close()

    with silent:
        attempt = threading.Thread(target=connect, daemon=True)
        attempt.start()
        attempt.join(30)  # a bound for a hang, fifteen times the timeout: no timing asserted

        assert not attempt.is_alive(), "the connect is still waiting for the server"
    assert len(raised) == 1 and isinstance(raised[0], OperationalError)
