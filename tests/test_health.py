"""The health check that compose and Kubernetes probe."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from django.db import InterfaceError, OperationalError, connection
from django.db.migrations.loader import MigrationLoader
from django.test import Client

from notify import services as notify_services
from tests.factories import api_for, client_with_key
from tests.test_settings import ROOT

pytestmark = pytest.mark.django_db


def test_the_health_check_answers_a_probe_at_the_pods_own_address(
    client: Client, settings: Any
) -> None:
    settings.ALLOWED_HOSTS = ["norm.example.com"]

    # As a Kubernetes probe or compose's healthcheck calls it: no key, the pod's own IP.
    response = client.get("/v1/health-check", HTTP_HOST="10.1.2.3:8000")

    assert response.status_code == 200
    assert response.json() == {"data": {"status": "ok", "info": {"db": {"status": "up"}}}}
    assert client.head("/v1/health-check", HTTP_HOST="10.1.2.3:8000").status_code == 200
    # Only this path skips the Host check.
    assert client.get("/v1/notifications", HTTP_HOST="10.1.2.3:8000").status_code == 400


def test_the_health_check_is_a_503_while_the_database_does_not_answer(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refused() -> None:
        raise OperationalError("connection to server at 127.0.0.1, port 5432 failed")

    monkeypatch.setattr(connection, "cursor", refused)

    response = client.get("/v1/health-check")

    assert response.status_code == 503
    assert response.json()["data"]["status"] == "error"


@pytest.mark.django_db(transaction=True)  # the test's own connection is closed and reopened
def test_an_api_request_while_the_database_is_away_is_a_503_to_retry(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """It was a 500 with an error id, read by clients as a bug rather than a retry."""
    api = Client(HTTP_AUTHORIZATION="ApiKey nk_any")
    connection.close()
    monkeypatch.setitem(connection.settings_dict, "PORT", "9")  # nothing listens there
    try:
        response = api.post("/v1/events/trigger", {"name": "w", "to": "ann"}, "application/json")
    finally:
        connection.close()
        monkeypatch.undo()

    assert response.status_code == 503
    assert response["Retry-After"] == "5"
    assert response.json()["code"] == "service_unavailable"
    assert "nothing was stored" in response.json()["message"]


def test_a_connection_lost_within_a_request_is_a_503_to_retry_too(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The driver's InterfaceError (a connection closed under the request, "connection
    already closed") is the database away as much as its OperationalError: not a 500."""
    _, key = client_with_key()

    def lost(**kwargs: object) -> None:
        raise InterfaceError("connection already closed")

    monkeypatch.setattr(notify_services, "trigger_event_check", lost)
    response = api_for(key).post(
        "/v1/events/trigger", {"name": "welcome", "to": "ann"}, format="json"
    )

    assert response.status_code == 503
    assert response["Retry-After"] == "5"
    assert response.json()["code"] == "service_unavailable"


@pytest.mark.django_db(transaction=True)  # the test's own connection is closed and reopened
def test_api_requests_while_the_database_is_away_are_one_warning_a_minute(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Each was a WARNING of norm's and Django's ERROR for the 503 ("Service Unavailable"):
    two lines a request, every client's retries, for as long as the database was away."""
    api = Client(HTTP_AUTHORIZATION="ApiKey nk_any")
    connection.close()
    monkeypatch.setitem(connection.settings_dict, "PORT", "9")  # nothing listens there
    try:
        statuses = [
            api.post("/v1/events/trigger", {"name": "w", "to": "ann"}, "application/json")
            for _ in range(3)
        ]
    finally:
        connection.close()
        monkeypatch.undo()

    assert [r.status_code for r in statuses] == [503] * 3
    [record] = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert record.levelno == logging.WARNING and record.exc_info is None
    assert record.getMessage().startswith("database unavailable on /v1/events/trigger: ")


@pytest.mark.django_db(transaction=True)  # the test's own connection is closed and reopened
def test_health_checks_while_the_database_is_away_are_one_warning_a_minute(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Each probe was norm's WARNING and Django's ERROR for the 503 ("Service
    Unavailable"): compose's healthcheck every 15 s, Kubernetes' liveness and readiness
    probes of each pod, two lines each for as long as the database was away."""
    connection.close()
    monkeypatch.setitem(connection.settings_dict, "PORT", "9")  # nothing listens there
    try:
        statuses = [Client().get("/v1/health-check").status_code for _ in range(3)]
    finally:
        connection.close()
        monkeypatch.undo()

    assert statuses == [503] * 3
    [record] = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert record.levelno == logging.WARNING and record.name == "config.middleware"
    assert record.getMessage().startswith("health check: the database does not answer: ")


HEALTH = """
import django, json
django.setup()
from django.test import Client
answers = [Client().get("/v1/health-check") for _ in range(2)]
print(json.dumps([[answer.status_code, answer.json()] for answer in answers]))
"""


def test_the_health_check_is_a_503_until_every_migration_is_applied(tmp_path: Path) -> None:
    """gunicorn started on a database without norm's tables (a fresh PostgreSQL, a new
    release before its migrate) answered every trigger 500, and its health check ok."""
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path / 'norm.sqlite3'}"}
    env["DJANGO_SETTINGS_MODULE"] = "config.settings"

    def health() -> list[Any]:
        done = subprocess.run(
            [sys.executable, "-c", HEALTH], cwd=ROOT, env=env, capture_output=True, check=True
        )
        first, again = json.loads(done.stdout.splitlines()[-1])
        # A process remembers only that every migration was applied: one that found some
        # unapplied answered ok from its second probe on, while every trigger was a 500.
        assert again == first
        return first

    def migrate(*target: str) -> None:
        manage = [sys.executable, "manage.py", "migrate", *target, "-v0"]
        subprocess.run(manage, cwd=ROOT, env=env, check=True, timeout=120)

    never = health()
    migrate()
    migrate("notify", "0015")  # back: the database of the release before this one
    one_release_behind = health()
    migrate()

    assert never[0] == one_release_behind[0] == 503
    assert never[1]["data"]["error"]["db"]["status"] == "up"
    loader = MigrationLoader(None, ignore_no_migrations=True)
    behind = [name for app, name in loader.disk_migrations if app == "notify" and name[:4] > "0015"]
    assert one_release_behind[1]["data"]["error"]["db"]["message"] == (
        f"{len(behind)} migration(s) not applied: run manage.py migrate"
    )
    assert health() == [200, {"data": {"status": "ok", "info": {"db": {"status": "up"}}}}]


def test_the_health_check_answers_at_a_base_url_kept_with_its_trailing_slash(
    client: Client, settings: Any
) -> None:
    """novu 1.14 keeps its base URL's trailing slash (`//v1/...`), served as every route
    is: a probe so written got a 400 at the pod's own address, its norm healthy."""
    settings.ALLOWED_HOSTS = ["norm.example.com"]
    probe = {"HTTP_HOST": "10.1.2.3:8000", "PATH_INFO": "//v1/health-check"}
    response = client.get("/v1/health-check", **probe)
    assert response.status_code == 200
    assert response.json()["data"]["status"] == "ok"
