"""Fixtures for the end-to-end tests: real Celery processes over PostgreSQL and Redis.

Every test commits its data (`django_db(transaction=True)`) so the worker processes
see it, and pytest-django truncates the tables afterwards; the processes are stopped
before that, because their fixtures are set up after (and so torn down before) the
database's.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import redis
import requests
from django.conf import settings as django_settings
from django.db import connection
from pytest_django.fixtures import Settings
from pytest_django.live_server_helper import LiveServer

from notify.models import Client
from tests.e2e.harness import (
    QUEUES,
    CeleryProcess,
    SmtpRecorder,
    celery_start,
    celery_wait_ready,
    smtp_start,
)
from tests.factories import client_with_key

StartCelery = Callable[..., CeleryProcess]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"report_{report.when}", report)


@pytest.fixture
def broker() -> Iterator[str]:
    """The Redis database the test process and the workers share, emptied for each test.

    The test process enqueues too (the trigger API), through the Celery app configured
    from the environment, so the workers are given the same URL. Nothing else may consume
    from that database while the tests run: a foreign worker would take their tasks.
    """
    url = django_settings.CELERY_BROKER_URL
    if connection.vendor != "postgresql" or not url.startswith(("redis://", "rediss://")):
        pytest.skip("e2e tests need DATABASE_URL=postgres://... and CELERY_BROKER_URL=redis://...")
    redis.Redis.from_url(url).flushdb()
    yield url
    redis.Redis.from_url(url).flushdb()


@pytest.fixture
def smtp() -> Iterator[tuple[int, SmtpRecorder]]:
    controller, recorder = smtp_start()
    yield controller.port, recorder
    controller.stop()


def _database_url() -> str:
    db = connection.settings_dict
    password = f":{quote(db['PASSWORD'], safe='')}" if db.get("PASSWORD") else ""
    host, port = db.get("HOST") or "127.0.0.1", db.get("PORT") or 5432
    return f"postgres://{quote(db['USER'] or '', safe='')}{password}@{host}:{port}/{db['NAME']}"


@pytest.fixture
def start_celery(
    request: pytest.FixtureRequest,
    transactional_db: None,
    live_server: LiveServer,
    broker: str,
    smtp: tuple[int, SmtpRecorder],
    tmp_path: Path,
) -> Generator[StartCelery, None, None]:
    """Start `celery worker` or `celery beat` against the test database; stop it after."""
    started: list[CeleryProcess] = []
    base_env = {
        "DATABASE_URL": _database_url(),
        "CELERY_BROKER_URL": broker,
        "EMAIL_BACKEND": "django.core.mail.backends.smtp.EmailBackend",
        "EMAIL_HOST": "127.0.0.1",
        "EMAIL_PORT": str(smtp[0]),
        "NORM_BRIDGE_RETRY_BACKOFF": "0.2",
        "NORM_VAR_DIR": str(tmp_path),
        "LOG_LEVEL": "INFO",
    }

    def start(
        kind: str = "worker", *, include: str = "", queues: str = QUEUES, **env: str
    ) -> CeleryProcess:
        proc = celery_start(
            kind, env={**base_env, **env}, log_dir=tmp_path, include=include, queues=queues
        )
        started.append(proc)
        celery_wait_ready(proc, marker=" ready." if kind == "worker" else "beat: Starting")
        return proc

    yield start
    for proc in reversed(started):
        proc.stop()
    failed = any(
        getattr(getattr(request.node, f"report_{when}", None), "failed", False)
        for when in ("setup", "call")
    )
    if failed:
        for proc in started:
            print(f"\n----- last lines of {proc.name} -----\n{proc.tail()}")


@pytest.fixture
def worker(start_celery: StartCelery) -> CeleryProcess:
    return start_celery("worker")


@pytest.fixture
def make_client(live_server: LiveServer, settings: Settings) -> Callable[..., tuple[Client, str]]:
    """A client with a key; the demo bridge verifies norm's signatures with that key."""

    def make(bridge_url: str | None = None) -> tuple[Client, str]:
        client, key = client_with_key(bridge_url=bridge_url or demo_bridge_url(live_server))
        settings.NORM_DEMO_BRIDGE_SECRET = key
        # The live server runs in a thread of this process, so it sees the setting at once:
        # from here on the demo bridge answers signed requests only.
        unsigned = requests.get(demo_bridge_url(live_server), params={"action": "discover"})
        assert unsigned.status_code == 401, unsigned.text
        return client, key

    return make


def demo_bridge_url(live_server: LiveServer) -> str:
    return f"{live_server.url}/bridge"
