"""Errors and secrets at the edges: the 500 body, redirects, and keys kept out of logs."""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import novu_py
import pytest
from cryptography.fernet import Fernet
from django.conf import settings as django_settings
from django.core import checks
from django.core.management import call_command
from django.core.management.base import CommandError, SystemCheckError
from django.db import connection

from config.parsers import MAX_DEPTH
from notify import selectors as notify_selectors
from notify import services as notify_services
from notify.models import SecretKey, TriggerEvent
from subscribers.models import Subscriber
from tests.conftest import json_serving, serve_in_background
from tests.factories import (
    BridgeWorkflowFactory,
    NotificationFactory,
    api_for,
    client_with_key,
    novu_py_for,
)
from workflows import bridge, registry
from workflows.models import Notification
from workflows.sdk.signing import verify_signature
from workflows.services import echo

pytestmark = pytest.mark.django_db


def test_an_unexpected_error_is_a_500_in_novus_shape_with_an_error_id(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _, key = client_with_key()

    def broken(**kwargs: object) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(notify_services, "trigger_event_check", broken)
    api = api_for(key)

    response = api.post("/v1/events/trigger", {"name": "welcome", "to": "ann"}, format="json")

    assert response.status_code == 500
    body = response.json()
    assert body["statusCode"] == 500 and body["path"] == "/v1/events/trigger"
    assert body["message"] == "Internal server error"  # nothing of the cause leaks out
    assert "disk on fire" not in response.content.decode()
    # The id in the answer finds the traceback in the log.
    assert any(body["errorId"] in r.getMessage() and r.exc_info for r in caplog.records)


class _Redirecting(BaseHTTPRequestHandler):
    hits: list[str] = []
    status = 302

    def do_POST(self) -> None:
        type(self).hits.append(self.path)
        if self.path.startswith("/target"):
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b'{"done": true}')
            return
        # The same host, another path: 307 and 308 would repeat the POST, body and all.
        self.send_response(type(self).status)
        self.send_header("Location", f"http://127.0.0.1:{self.server.server_port}/target")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def redirecting_bridge() -> Iterator[str]:
    _Redirecting.hits = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Redirecting)
    serve_in_background(server)
    yield f"http://127.0.0.1:{server.server_port}/bridge"
    server.shutdown()
    server.server_close()


def _a_key(n: int) -> str:
    """A Fernet key, the same in every process: pytest-xdist's processes must collect the
    same test ids, and a parameter's id is its value."""
    return base64.urlsafe_b64encode(bytes([n]) * 32).decode()


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_bridge_redirect_is_not_followed_and_fails_the_notification(
    redirecting_bridge: str, status: int
) -> None:
    _Redirecting.status = status
    client, _ = client_with_key(bridge_url=redirecting_bridge)
    notification = NotificationFactory(
        trigger_event__client=client, trigger_event__resource=redirecting_bridge
    )

    echo.echo_run(notification_id=str(notification.pk))

    notification.refresh_from_db()
    assert notification.status == Notification.Status.FAILED
    assert notification.error_code == "BridgeRedirect"
    assert [hit.split("?")[0] for hit in _Redirecting.hits] == ["/bridge"]  # never /target


def test_secret_keys_appear_in_no_log_line(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, enqueued: object
) -> None:
    client, key = client_with_key()
    BridgeWorkflowFactory(client=client, workflow_id="welcome")
    notification = NotificationFactory(trigger_event__client=client)
    sent: list[dict[str, str]] = []

    def fake_request(self: object, method: str, url: str, **kwargs: object) -> object:
        sent.append(dict(kwargs["headers"]))  # type: ignore[arg-type]
        raise bridge.requests.ConnectionError("down")

    monkeypatch.setattr(bridge.requests.Session, "request", fake_request)
    caplog.set_level(logging.DEBUG)
    api = api_for(key)
    api.post("/v1/events/trigger", {"name": "welcome", "to": "ann"}, format="json")
    api.post(
        "/v1/events/trigger",
        {"name": "welcome", "to": "ann"},
        format="json",
        HTTP_AUTHORIZATION="ApiKey nk_wrong",
    )
    echo.echo_run(notification_id=str(notification.pk))

    assert any("novu-signature" in headers for headers in sent)  # the key signed a call
    assert caplog.records
    assert not [r for r in caplog.records if key in r.getMessage() or "nk_wrong" in r.getMessage()]


@pytest.mark.parametrize(
    ("url", "secret", "masked"),
    [
        # Behind basic auth: the password went into the log line and the 502.
        (
            "http://ops-user:s3cret-pass@127.0.0.1:9/api/novu",
            "s3cret-pass",
            "ops-user:***@127.0.0.1:9/api/novu",
        ),
        # A token in the query (a deployment's bypass token): the same.
        (
            "http://127.0.0.1:9/api/novu?token=s3cret-tok&region=eu",
            "s3cret-tok",
            "127.0.0.1:9/api/novu?token=***&region=***",
        ),
        # A token standing alone as the query, no name to it.
        ("http://127.0.0.1:9/api/novu?s3cret-tok", "s3cret-tok", "127.0.0.1:9/api/novu?***"),
        # A password holding an "@", unescaped: requests, as urllib3, reads the host from
        # the last "@", so the password is all before it.
        (
            "http://ops-user:s3cret@pass@127.0.0.1:9/api/novu",
            "pass@127",
            "ops-user:***@127.0.0.1:9/api/novu",
        ),
    ],
    ids=["password", "query token", "bare query token", "password with @"],
)
def test_a_bridge_urls_secret_appears_in_no_log_line_or_error(
    caplog: pytest.LogCaptureFixture, enqueued: object, url: str, secret: str, masked: str
) -> None:
    """A client's bridge with a secret in its URL (the discard port: nothing answers):
    the secret went into the flavour sync's log line and the trigger's 502."""
    client, key = client_with_key(bridge_url=url)
    caplog.set_level(logging.DEBUG)

    assert registry.bridge_flavour(client_id=client.pk, bridge_url=url) == "norm"
    answer = api_for(key).post("/v1/events/trigger", {"name": "welcome", "to": "ann"}, "json")

    assert answer.status_code == 502
    assert masked in answer.json()["message"]
    [logged] = [
        r.getMessage() for r in caplog.records if "for its flavour failed" in r.getMessage()
    ]
    assert masked in logged
    assert not [r for r in caplog.records if secret in r.getMessage()]
    assert secret not in answer.content.decode()


@pytest.mark.parametrize(
    "url",
    [
        "http://ops-user:s3cret-pass@localhost:99999/api/norm",
        "ftp://ops-user:s3cret-pass@localhost/x",
    ],
)
def test_a_bridge_url_norm_cannot_call_is_named_without_its_password(url: str) -> None:
    with pytest.raises(bridge.BridgeError) as exc:
        bridge.execute(url, secrets=("nk_test",), workflow_id="w", body={"payload": {}})

    assert exc.value.code == "BridgeInvalidURL"
    assert "ops-user:***@" in exc.value.message and "s3cret-pass" not in exc.value.message


@pytest.mark.parametrize(
    ("secret_key", "encryption_key", "found"),
    [
        (django_settings.DEVELOPMENT_SECRET_KEY, "", ["norm.E001", "norm.E004"]),
        ("a-long-random-production-secret", "", ["norm.W001"]),
        (django_settings.DEVELOPMENT_SECRET_KEY, _a_key(1), ["norm.E004"]),
        # Blank (a variable set to a space, a list of no key): no key, the secret's used.
        (django_settings.DEVELOPMENT_SECRET_KEY, " ", ["norm.E001", "norm.E004"]),
        ("a-long-random-production-secret", " , ", ["norm.W001"]),
    ],
)
def test_the_deploy_check_refuses_keys_encrypted_under_the_development_secret(
    settings: Any, secret_key: str, encryption_key: str, found: list[str]
) -> None:
    settings.SECRET_KEY, settings.NORM_ENCRYPTION_KEY = secret_key, encryption_key
    settings.ALLOWED_HOSTS = ["norm.example.com"]  # not `*` (norm.E011)
    messages = checks.run_checks(include_deployment_checks=True, tags=[checks.Tags.security])
    assert sorted(m.id for m in messages if m.id.startswith("norm.")) == found
    # An error stops compose's migrate job (`--fail-level ERROR`); norm.W001 must not.
    levels = {m.id: m.level for m in messages if m.id.startswith("norm.")}
    assert levels == {i: checks.ERROR if i[5] == "E" else checks.WARNING for i in found}
    assert not [m for m in checks.run_checks() if m.id.startswith("norm.")]  # deploy only


@pytest.mark.parametrize("debug", [False, True])
def test_the_deploy_check_refuses_the_development_secret_key_before_production_starts(
    settings: Any, debug: bool
) -> None:
    """Django's W009 only warned, so docker-compose's migrate job (`check --deploy
    --fail-level ERROR`, which web, worker and beat wait for) passed with it as long as
    NORM_ENCRYPTION_KEY was set. Every other command (`make run`'s demo: DEBUG off, the
    default key) still runs."""
    settings.DEBUG = debug
    settings.ALLOWED_HOSTS = ["norm.example.com"]  # not `*` (norm.E011)
    settings.SECRET_KEY = django_settings.DEVELOPMENT_SECRET_KEY
    settings.NORM_ENCRYPTION_KEY = Fernet.generate_key().decode()

    with pytest.raises(SystemCheckError, match="norm.E004"):
        call_command("check", "--deploy", "--fail-level", "ERROR", stdout=io.StringIO())
    call_command("check", stdout=io.StringIO())  # not a deployment: passes

    [error] = [m for m in checks.run_checks(include_deployment_checks=True) if m.id == "norm.E004"]
    made = subprocess.run(
        ["sh", "-c", error.hint.split(": ", 1)[1]], capture_output=True, text=True, check=True,
        timeout=30, env={"PATH": os.environ["PATH"], "PYTHONNOUSERSITE": "1"},
    )  # fmt: skip
    settings.SECRET_KEY = made.stdout.strip()  # the key the hint makes passes, W009 too
    found = [m.id for m in checks.run_checks(include_deployment_checks=True)]
    assert "norm.E004" not in found and "security.W009" not in found
    settings.DEBUG = False  # on, refused as well (norm.E010)
    call_command("check", "--deploy", "--fail-level", "ERROR", stdout=io.StringIO())


def test_the_admin_may_not_be_framed_by_another_site(admin_client: Any, client: Any) -> None:
    """Nothing told a browser not to show the admin in another site's frame, where a click
    its user thought elsewhere could run an action (revoke a key); `check --deploy`, which
    the README has an operator run, warned of it (security.W002)."""
    assert client.get("/admin/login/")["X-Frame-Options"] == "DENY"
    assert admin_client.get("/admin/notify/secretkey/")["X-Frame-Options"] == "DENY"
    found = [m.id for m in checks.run_checks(include_deployment_checks=True)]
    assert "security.W002" not in found


def test_the_deploy_checks_hint_makes_a_key_with_only_the_standard_library(settings: Any) -> None:
    settings.SECRET_KEY, settings.NORM_ENCRYPTION_KEY = django_settings.DEVELOPMENT_SECRET_KEY, ""
    [error] = [m for m in checks.run_checks(include_deployment_checks=True) if m.id == "norm.E001"]
    command = error.hint.split(": ", 1)[1]
    # As an operator pastes it into a host shell, whose python3 has no cryptography.
    made = subprocess.run(
        ["sh", "-c", command], capture_output=True, text=True, check=True, timeout=30,
        env={"PATH": os.environ["PATH"], "PYTHONNOUSERSITE": "1"},
    )  # fmt: skip
    assert "cryptography" not in command
    Fernet(made.stdout.strip())  # a key norm accepts


@pytest.mark.parametrize(
    ("encryption_key", "found"),
    [
        ("not-a-fernet-key", ["norm.E003"]),
        (f"{_a_key(1)},short", ["norm.E003"]),
        (f"{_a_key(1)}, {_a_key(2)}", []),
    ],
)
def test_an_encryption_key_that_is_no_fernet_key_is_refused_by_every_command(
    settings: Any, encryption_key: str, found: list[str]
) -> None:
    """It failed only when a client's key was first created or signed a bridge call."""
    settings.NORM_ENCRYPTION_KEY = encryption_key
    assert [m.id for m in checks.run_checks() if m.id.startswith("norm.")] == found


def test_the_encryption_key_rotates_without_losing_a_stored_secret_key(settings: Any) -> None:
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    settings.NORM_ENCRYPTION_KEY = old
    client, key = client_with_key()
    stored = client.secret_keys.get().encrypted

    settings.NORM_ENCRYPTION_KEY = f"{new},{old}"  # the new key encrypts, both decrypt
    assert notify_selectors.signing_secrets(client_id=client.pk) == (key,)
    call_command("reencryptkeys", stdout=io.StringIO())

    settings.NORM_ENCRYPTION_KEY = new  # the old key dropped
    assert client.secret_keys.get().encrypted != stored
    assert notify_selectors.signing_secrets(client_id=client.pk) == (key,)
    assert notify_selectors.client_by_api_key(key=key) == client  # the hash is untouched


def test_an_encryption_key_set_on_a_deployment_that_ran_without_one_loses_no_secret_key(
    settings: Any,
) -> None:
    """norm.W001's hint (and the README) say to set NORM_ENCRYPTION_KEY. Set on a
    deployment that ran without it, every key stored until then (under the key derived
    from SECRET_KEY, which no operator ever saw to put after the new one) was unreadable:
    every notification failed SigningKeyUnreadable, and reencryptkeys refused to run,
    telling the operator to put back a key they never had."""
    settings.NORM_ENCRYPTION_KEY, settings.SECRET_KEY = "", "one-long-random-production-secret"
    client, key = client_with_key()
    [warning] = [
        m for m in checks.run_checks(include_deployment_checks=True) if m.id == "norm.W001"
    ]
    assert "then run manage.py reencryptkeys" in warning.hint  # the step that ends the risk

    settings.NORM_ENCRYPTION_KEY = Fernet.generate_key().decode()  # as norm.W001's hint says
    assert notify_selectors.signing_secrets(client_id=client.pk) == (key,)
    call_command("reencryptkeys", stdout=io.StringIO())

    settings.SECRET_KEY = "another-long-random-production-secret"  # now safe to rotate
    assert notify_selectors.signing_secrets(client_id=client.pk) == (key,)


def test_migrate_refuses_an_encryption_key_that_decrypts_no_live_secret_key(
    settings: Any,
) -> None:
    """A NORM_ENCRYPTION_KEY replaced rather than rotated (a new .env, the old key lost)
    passed every check, migrate (compose's job) too: web, worker and beat started, and
    each notification failed SigningKeyUnreadable as it came to its bridge call."""
    old, wrong = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    settings.NORM_ENCRYPTION_KEY = old
    client, _ = client_with_key(name="acme")
    prefix = client.secret_keys.get().prefix

    settings.NORM_ENCRYPTION_KEY = wrong
    with pytest.raises(SystemCheckError, match=rf"norm.E015.*{prefix}… of client 'acme'") as e:
        call_command("migrate", "--check", skip_checks=False, stdout=io.StringIO())
    assert "migrate --skip-checks" in str(e.value)  # the way to the admin, to revoke them

    # One key of several that none decrypts (stored under a key since lost) is a client's
    # to revoke, not the deployment's to stop for: named, as a warning.
    settings.NORM_ENCRYPTION_KEY = f"{wrong},{old}"
    client_with_key(name="other")
    settings.NORM_ENCRYPTION_KEY = wrong
    found = checks.run_checks(databases=["default"])
    assert [(m.id, m.level) for m in found if m.id.startswith("norm.")] == [
        ("norm.W004", checks.WARNING)
    ]
    assert f"{prefix}… of client 'acme'" in found[-1].msg
    assert not [m for m in checks.run_checks() if m.id.startswith("norm.")]  # with a database

    # Revoked, as the warning says, it signs nothing: nothing left to name.
    notify_services.secret_key_revoke(secret_key=client.secret_keys.get())
    assert not [m for m in checks.run_checks(databases=["default"]) if m.id.startswith("norm.")]


def test_migrate_names_ten_secret_keys_it_cannot_decrypt_and_counts_the_others(
    settings: Any,
) -> None:
    """A deployment of many clients whose encryption key was replaced would have each of
    their keys listed in one line of migrate's refusal: ten are named, the rest counted."""
    old = Fernet.generate_key().decode()
    settings.NORM_ENCRYPTION_KEY = old
    prefixes = [client_with_key(name=f"c{i}")[0].secret_keys.get().prefix for i in range(11)]

    settings.NORM_ENCRYPTION_KEY = Fernet.generate_key().decode()
    [error] = [m for m in checks.run_checks(databases=["default"]) if m.id.startswith("norm.")]

    assert error.id == "norm.E015" and "none of the 11 live secret key(s)" in error.msg
    assert len([p for p in prefixes if f"{p}…" in error.msg]) == 10
    assert " and 1 more):" in error.msg


def test_migrate_on_a_database_without_its_tables_yet_checks_no_secret_key(
    settings: Any,
) -> None:
    """migrate's checks run before it makes the tables: on a new database, the query for
    the secret keys fails, and that is no reason to stop the migrate that creates them."""
    settings.NORM_ENCRYPTION_KEY = Fernet.generate_key().decode()
    with connection.cursor() as cursor:  # undone with the test's transaction
        cursor.execute(f"ALTER TABLE {SecretKey._meta.db_table} RENAME TO not_yet_made")

    assert not [m for m in checks.run_checks(databases=["default"]) if m.id.startswith("norm.")]


@pytest.mark.parametrize("given", ["not-a-fernet-key", "nope!"])
def test_migrate_names_an_encryption_key_that_is_no_fernet_key_with_live_keys_stored(
    settings: Any, given: str
) -> None:
    """With a live secret key stored, migrate's check of what decrypts it built the
    keys itself and raised ValueError (binascii.Error, for "nope!"): a traceback, where
    every other command said norm.E003 and how to make a key."""
    settings.NORM_ENCRYPTION_KEY = Fernet.generate_key().decode()
    client_with_key(name="acme")

    settings.NORM_ENCRYPTION_KEY = given
    with pytest.raises(SystemCheckError, match=r"norm\.E003") as refused:
        call_command("migrate", "--check", skip_checks=False, stdout=io.StringIO())
    assert "norm.E015" not in str(refused.value)


def test_reencryptkeys_names_a_live_key_it_cannot_decrypt_and_passes_a_revoked_one(
    settings: Any,
) -> None:
    """Each failed with InvalidToken's bare traceback, and a key stored under a lost
    encryption key stopped every rotation for good, though revoked (the way out that
    SigningKeyUnreadable names)."""
    lost, old, new = (Fernet.generate_key().decode() for _ in range(3))
    settings.NORM_ENCRYPTION_KEY = lost
    client, _ = client_with_key(name="acme")
    unreadable = client.secret_keys.get()
    settings.NORM_ENCRYPTION_KEY = old
    _, key = notify_services.secret_key_create(client=client)
    stored = dict(client.secret_keys.values_list("pk", "encrypted"))
    settings.NORM_ENCRYPTION_KEY = f"{new},{old}"

    with pytest.raises(CommandError, match=rf"{unreadable.prefix}… of client 'acme'"):
        call_command("reencryptkeys", stdout=io.StringIO())
    assert dict(client.secret_keys.values_list("pk", "encrypted")) == stored  # none written

    notify_services.secret_key_revoke(secret_key=unreadable)
    out = io.StringIO()
    call_command("reencryptkeys", stdout=out)
    assert "re-encrypted 1 secret keys" in out.getvalue()
    assert "left 1 revoked secret key(s)" in out.getvalue()

    settings.NORM_ENCRYPTION_KEY = new  # the old key dropped
    assert notify_selectors.signing_secrets(client_id=client.pk) == (key,)
    assert client.secret_keys.get(pk=unreadable.pk).encrypted == stored[unreadable.pk]


@pytest.mark.parametrize(
    ("countdown", "deadline", "found"),
    [
        (300, 60.0, []),  # the defaults
        (3539, 60.0, []),
        (3540, 60.0, ["norm.E002"]),  # a retry held 3540 s, then sending up to 60 s
        (3599, 60.0, ["norm.E002"]),
        (3599, 0.5, []),
        (3600, 0.5, ["norm.E002"]),
    ],
)
def test_a_broker_countdown_redis_would_deliver_again_is_refused(
    settings: Any, countdown: int, deadline: float, found: list[str]
) -> None:
    """A send's retry is held unacknowledged through its countdown and then its send:
    past the visibility timeout, Redis delivers it again while it sends, and the copy
    (the same task id) takes the step's claim back and sends the email a second time.
    norm.E002 looked at the countdown alone."""
    settings.CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 3600}
    settings.NORM_BROKER_MAX_COUNTDOWN, settings.EMAIL_SEND_DEADLINE = countdown, deadline
    settings.NORM_STALE_CLAIM_SECONDS = 3600  # above the deadline, for norm.E006
    assert [m.id for m in checks.run_checks() if m.id.startswith("norm.")] == found


def test_time_zones_are_the_same_on_a_host_without_a_time_zone_database() -> None:
    """A slim image has no /usr/share/zoneinfo, and Debian 13 keeps the old names in
    tzdata-legacy: checked against the host's database alone, every timezone was taken
    unchecked there, or US/Eastern, which Novu takes, was refused."""
    probe = (
        "import django; django.setup(); from subscribers.recipients import timezone_name as t; "
        "print(t('us/eastern'), t('Asia/Calcutta'), t('europe/paris'), t('Mars/Olympus'))"
    )
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "PYTHONTZPATH": "/nonexistent",  # no database on the host
    }
    out = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["US/Eastern", "Asia/Calcutta", "Europe/Paris", "None"]


def test_a_path_no_api_view_serves_answers_novus_json_404_naming_it() -> None:
    """The message was a bare "Not found": novu-py's subscribers.preferences.list("ann")
    (an endpoint norm lacks) read as subscriber ann not found."""
    _, key = client_with_key()
    api = api_for(key)
    for path, message in (
        ("/v1/nope", "Cannot GET /v1/nope: norm has no such endpoint"),
        (
            "/v2/subscribers/ann/preferences?x=1",
            "Cannot GET /v2/subscribers/ann/preferences: norm has no such endpoint",
        ),
        (
            "/v1/subscribers/",
            "Cannot GET /v1/subscribers/: norm has no such endpoint "
            "(its paths end without a slash)",
        ),
    ):
        response = api.get(path)
        assert response.status_code == 404 and response["Content-Type"] == "application/json"
        body = response.json()
        assert (body["statusCode"], body["path"], body["code"]) == (404, path, "not_found")
        assert body["timestamp"] and body["message"] == message
    assert api.patch("/v1/subscribers/ann/preferences").json()["message"] == (
        "Cannot PATCH /v1/subscribers/ann/preferences: norm has no such endpoint"
    )
    for path in ("/nope", "/v1nope", "/v2.json"):  # outside the API: Django's page
        page = api.get(path)
        assert page.status_code == 404 and page["Content-Type"].startswith("text/html")


def test_the_api_prefixes_alone_answer_novus_json_404() -> None:
    """novu-py's subscribers.retrieve(subscriber_id="..") asks for /v2 (httpx resolves the
    dot segments): it raised "Unexpected response" with Django's HTML page, not its
    typed ErrorDto."""
    _, key = client_with_key()
    with pytest.raises(novu_py.models.ErrorDto) as missing:
        novu_py_for(key).subscribers.retrieve(subscriber_id="..")
    assert (missing.value.data.status_code, missing.value.data.path) == (404, "/v2")
    assert api_for(key).get("/v1").json()["code"] == "not_found"


def test_a_host_not_allowed_is_a_json_400_that_names_it_under_the_api(settings: Any) -> None:
    """A public host name left out of ALLOWED_HOSTS (a proxy that passes its own on) made
    every call an HTML page, "Bad Request (400)", saying nothing of why: novu-py raised
    its untyped error with the page, and the reason was only in the server's log."""
    settings.ALLOWED_HOSTS = ["norm.example"]
    _, key = client_with_key()
    api = api_for(key)
    response = api.get("/v2/subscribers?limit=1", HTTP_HOST="notify.example.com")
    assert response.status_code == 400 and response["Content-Type"] == "application/json"
    body = response.json()
    assert (body["statusCode"], body["path"], body["code"]) == (
        400,
        "/v2/subscribers?limit=1",
        "host_not_allowed",
    )
    # As every 400 of the API carries them (novu-py's 400s read `type` and `errors`).
    assert (body["type"], body["errors"]) == ("host_not_allowed", [])
    assert body["message"] == (
        "This server does not serve the host notify.example.com: add it to ALLOWED_HOSTS"
    )
    # The prefix alone too: what novu-py asks for an id `..` (httpx resolves dot segments).
    for path in ("/v1", "/v2"):
        assert api.get(path, HTTP_HOST="notify.example.com").json()["code"] == "host_not_allowed"
    page = api.get("/admin/", HTTP_HOST="notify.example.com")  # outside the API: Django's page
    assert page.status_code == 400 and page["Content-Type"].startswith("text/html")


def test_error_shapes_follow_the_route_under_a_path_prefix() -> None:
    """Behind a proxy at /novu (SCRIPT_NAME), the route is what follows the prefix."""
    _, key = client_with_key()
    api = api_for(key)
    prefix = {"SCRIPT_NAME": "/novu"}

    missing = api.get("/v1/nope", **prefix)
    assert missing.status_code == 404 and missing["Content-Type"] == "application/json"
    assert (missing.json()["code"], missing.json()["path"]) == ("not_found", "/novu/v1/nope")
    # A trigger's bad body is a 400 with `errors` listed (novu-py's
    # PayloadValidationExceptionDto), any other a 422 with `errors` keyed by field.
    trigger = api.post("/v1/events/trigger", {"to": "ann"}, format="json", **prefix)
    assert trigger.status_code == 400 and trigger.json()["type"] == "invalid_request"
    assert trigger.json()["errors"] == [{"field": "name", "message": "This field is required."}]
    topic = api.post("/v2/topics", {"name": "News"}, format="json", **prefix)
    assert topic.status_code == 422 and "key" in topic.json()["errors"]


class _Recording(BaseHTTPRequestHandler):
    """A bridge that records each request's action and signature, and answers done."""

    hits: list[tuple[str, str | None]] = []
    # Each hit's body, and its signature under the header older SDKs read.
    sent: list[tuple[bytes, str | None]] = []

    def _answer(self) -> None:
        action = self.path.partition("action=")[2].partition("&")[0]
        type(self).hits.append((action, self.headers.get("novu-signature")))
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        type(self).sent.append((body, self.headers.get("x-novu-signature")))
        body = b'{"status": "ok"}' if action == "health-check" else b'{"done": true}'
        if action == "discover":
            body = b'{"workflows": [{"workflowId": "welcome", "steps": []}]}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def recording_bridge() -> Iterator[str]:
    _Recording.hits, _Recording.sent = [], []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recording)
    serve_in_background(server)
    yield f"http://127.0.0.1:{server.server_port}/bridge"
    server.shutdown()
    server.server_close()


def test_a_client_without_a_live_key_gets_no_unsigned_bridge_call(recording_bridge: str) -> None:
    """Its keys all revoked, a client's notifications in flight fail with the reason,
    and its bridge is asked nothing but the unsigned health-check: a bridge that
    verifies nothing would otherwise answer anyone's unsigned call as norm's."""
    client, _ = client_with_key(bridge_url=recording_bridge)
    notification = NotificationFactory(trigger_event__client=client)
    for secret in client.secret_keys.all():
        notify_services.secret_key_revoke(secret_key=secret)

    echo.echo_run(notification_id=str(notification.pk))

    notification.refresh_from_db()
    assert (notification.status, notification.error_code) == ("failed", "SigningKeyMissing")
    assert "no live secret key" in notification.error
    assert [action for action, _ in _Recording.hits] == ["health-check"]
    with pytest.raises(bridge.BridgeError) as refused:
        registry.bridge_sync(client=client, bridge_url=recording_bridge)
    assert refused.value.code == "SigningKeyMissing"
    assert [action for action, _ in _Recording.hits] == ["health-check"] * 2


def test_every_bridge_call_but_the_health_check_is_signed(recording_bridge: str) -> None:
    client, key = client_with_key(bridge_url=recording_bridge)
    notification = NotificationFactory(trigger_event__client=client)

    echo.echo_run(notification_id=str(notification.pk))

    notification.refresh_from_db()
    assert notification.status == Notification.Status.COMPLETED
    actions = {action: signature for action, signature in _Recording.hits}
    assert set(actions) == {"health-check", "discover", "execute"}
    assert actions["health-check"] is None
    # Signed as a bridge checks it (Novu's SDK, norm's): with the client's key, over the
    # body sent, `{}` for a GET; either SDK refuses any other signature. Under both
    # headers: older SDKs read x-novu-signature (BRIDGE.md).
    for (action, signature), (body, deprecated) in zip(
        _Recording.hits, _Recording.sent, strict=True
    ):
        if action != "health-check":
            verify_signature(key, signature, body)
            assert deprecated == signature


def test_a_bridge_urls_query_appears_in_no_log_line_of_the_call(
    recording_bridge: str, caplog: pytest.LogCaptureFixture
) -> None:
    """norm leaves a bridge URL's query (a token, say) out of its errors, but urllib3
    logs each request's path with its query: at LOG_LEVEL=DEBUG (and in its warning of
    an answer's broken headers) the token went into the log. norm's own parameters stay."""
    caplog.set_level(logging.DEBUG)

    # The token after another parameter of the URL's: each value is masked, not the first.
    bridge.execute(
        f"{recording_bridge}?region=eu&token=s3cret-token",
        secrets=("nk_test",),
        workflow_id="w",
        body={},
    )

    [logged] = [r.getMessage() for r in caplog.records if "/bridge?" in r.getMessage()]
    assert "?region=***&token=***&action=execute&workflowId=w " in logged
    assert not [r for r in caplog.records if "s3cret-token" in r.getMessage()]


def test_a_body_nested_deeper_than_the_limit_is_a_400_however_deep(enqueued: object) -> None:
    """norm's SDK refuses an execute body nested deeper than 200 levels, and storing one
    the JSON decoder could just take overflowed Python's stack (a 500): the API refuses
    what would nest too deep anywhere downstream, and takes what nests as deep as allowed."""
    client, key = client_with_key()
    BridgeWorkflowFactory(client=client, workflow_id="welcome")
    api = api_for(key)

    def trigger(depth: int) -> Any:
        # The body is level 1 and the payload level 2: `depth` levels in all.
        payload = '{"a":' * (depth - 1) + "1" + "}" * (depth - 1)
        body = f'{{"name":"welcome","to":"ann","payload":{payload}}}'
        return api.generic("POST", "/v1/events/trigger", body, "application/json")

    assert trigger(MAX_DEPTH).status_code == 201
    for depth in (MAX_DEPTH + 1, 300, 900, 950, 990):
        response = trigger(depth)
        assert (response.status_code, response.json()["code"]) == (400, "parse_error"), depth
        assert f"deeper than {MAX_DEPTH} levels" in response.json()["message"]
    deep_data = {"subscriberId": "bo", "data": json.loads("[" * 120 + "]" * 120)}
    assert api.post("/v2/subscribers", deep_data, format="json").status_code == 400


class _CookieSetting(BaseHTTPRequestHandler):
    """Two clients' bridges on one host: the first sets a cookie, as a load balancer's
    stickiness or a bot check does; each request's Cookie header is recorded."""

    cookies: list[tuple[str, str | None]] = []

    def _answer(self) -> None:
        path = self.path.partition("?")[0]
        type(self).cookies.append((path, self.headers.get("Cookie")))
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        action = self.path.partition("action=")[2].partition("&")[0]
        body = b'{"status": "ok"}' if action == "health-check" else b'{"workflows": []}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if path == "/first":
            self.send_header("Set-Cookie", "session=of-the-first-client; Path=/")
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_a_cookie_one_clients_bridge_sets_goes_with_no_call(enqueued: object) -> None:
    """norm's HTTP session is the process's, shared by every client: a cookie kept from
    one client's bridge went with the calls to another's on the same host (and to its
    own bridge again, as state norm never meant to keep)."""
    _CookieSetting.cookies = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _CookieSetting)
    serve_in_background(server)
    try:
        host = f"http://127.0.0.1:{server.server_port}"
        first, _ = client_with_key(bridge_url=f"{host}/first")
        second, _ = client_with_key(bridge_url=f"{host}/second")

        registry.bridge_sync(client=first, bridge_url=first.bridge_url)
        registry.bridge_sync(client=second, bridge_url=second.bridge_url)
        registry.bridge_sync(client=first, bridge_url=first.bridge_url)
    finally:
        server.shutdown()
        server.server_close()

    assert [path for path, _ in _CookieSetting.cookies] == ["/first"] * 2 + ["/second"] * 2 + [
        "/first"
    ] * 2
    assert [cookie for _, cookie in _CookieSetting.cookies] == [None] * 6


def test_no_credentials_of_a_netrc_go_with_a_bridge_call(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A netrc on norm's host (~/.netrc, or NETRC's, a deploy tool's say) names a login for
    a host: requests sends it as basic auth with every call to that host unless its
    session reads nothing from the environment, and a client whose bridge URL names that
    host would receive it."""
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login deploy password not-for-bridges\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    sent: list[str | None] = []

    def respond(
        method: str, path: str, body: bytes, headers: dict[str, str]
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        sent.append({k.lower(): v for k, v in headers.items()}.get("authorization"))
        return 200, {"status": "ok", "workflows": []}, {}

    with json_serving(respond) as url:
        bridge.health_check(f"{url}/bridge")
        bridge.discover(f"{url}/bridge", secrets=("nk_test",))

    assert sent == [None, None]


@pytest.mark.parametrize("number", ["1e400", "-1e400", "1" * 400 + ".0"])
def test_a_number_beyond_a_double_is_a_400_before_anything_is_stored(
    number: str, enqueued: object
) -> None:
    """Python reads 1e400 as inf, which PostgreSQL's json refuses: a bulk stored the
    subscribers before it and then answered 400, as if none were."""
    client, key = client_with_key()
    BridgeWorkflowFactory(client=client, workflow_id="welcome")
    api = api_for(key)
    bulk = f'{{"subscribers": [{{"subscriberId": "ann"}}, {{"subscriberId": "bo", "data": {{"n": {number}}}}}]}}'
    trigger = f'{{"name": "welcome", "to": "ann", "payload": {{"n": {number}}}}}'

    for path, body in (("/v1/subscribers/bulk", bulk), ("/v1/events/trigger", trigger)):
        response = api.generic("POST", path, body, "application/json")
        assert (response.status_code, response.json()["code"]) == (400, "parse_error"), path
        assert "double" in response.json()["message"]
    assert not Subscriber.objects.filter(client=client).exists()
    assert not TriggerEvent.objects.filter(client=client).exists()


def test_a_query_of_more_parameters_than_django_reads_is_a_400() -> None:
    """novu-py repeats a list's name per item: the activity of 1,001 subscribers is a
    query of 1,001 parameters, past DATA_UPLOAD_MAX_NUMBER_FIELDS. Django refuses it
    where a view first reads the query, which the API's handler answered as a 500."""
    _, key = client_with_key()
    api = api_for(key)
    many = "&".join(f"subscriberIds=s{i}" for i in range(1001))

    for path in ("/v1/notifications", "/v2/subscribers", "/v1/topics"):
        response = api.get(f"{path}?{many}")
        assert (response.status_code, response.json()["code"]) == (400, "invalid_query"), path
        assert "more than 1000 parameters" in response.json()["message"]
    assert api.get("/v1/notifications?" + many.rsplit("&", 1)[0]).status_code == 200


@pytest.fixture
def wsgi_in_test() -> Iterator[None]:
    """norm's WSGI application called in the test's transaction: its request signals
    would close the connection that holds it."""
    from django.core import signals
    from django.db import close_old_connections

    for signal in (signals.request_started, signals.request_finished):
        signal.disconnect(close_old_connections)
    yield
    for signal in (signals.request_started, signals.request_finished):
        signal.connect(close_old_connections)


def _served(key: str, method: str, url: str, body: bytes = b"", **meta: Any) -> tuple[str, bytes]:
    """`method url` (its query too) answered by norm's WSGI application as a server hands
    the request over, with `meta` in its environ (CONTENT_TYPE, ...)."""
    from config.wsgi import application

    path, _, query = url.partition("?")
    environ = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "SCRIPT_NAME": "",
        "QUERY_STRING": query,
        "SERVER_NAME": "testserver",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "CONTENT_TYPE": "application/json",
        "CONTENT_LENGTH": str(len(body)),
        "HTTP_AUTHORIZATION": f"ApiKey {key}",
        "wsgi.input": io.BytesIO(body),
        "wsgi.url_scheme": "http",
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": False,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
        "wsgi.version": (1, 0),
        **meta,
    }
    started: list[str] = []
    answer = b"".join(application(environ, lambda status, headers: started.append(status)))
    return started[0], answer


def _chunked(key: str, body: bytes, *, decoded: bool) -> tuple[str, bytes]:
    """POST `body` to the trigger as a server hands over a chunked one, with no
    Content-Length: gunicorn decoded its chunks (`decoded`), runserver did not."""
    chunked = {"HTTP_TRANSFER_ENCODING": "chunked", "wsgi.input_terminated": decoded}
    return _served(key, "POST", "/v1/events/trigger", body, CONTENT_LENGTH="", **chunked)


def test_a_chunked_body_is_read_not_taken_for_none(enqueued: object, wsgi_in_test: None) -> None:
    """Django reads a body up to its Content-Length, and a chunked one has none: under
    gunicorn a trigger sent so (a client streaming its body) was a 400, its body unread,
    "name: This field is required"; a mark of some notifications marked them all."""
    client, key = client_with_key()
    BridgeWorkflowFactory(client=client, workflow_id="welcome")  # no bridge asked
    body = json.dumps({"name": "welcome", "to": "ann"}).encode()

    status, answer = _chunked(key, body, decoded=True)
    assert status.startswith("201"), answer
    assert TriggerEvent.objects.get().to == "ann"

    # Left undecoded by the server, the body cannot be read at all: a 411 says why.
    status, answer = _chunked(key, body, decoded=False)
    assert status.startswith("411"), answer
    assert json.loads(answer)["code"] == "length_required"
    assert TriggerEvent.objects.count() == 1

    # Past the body limit, as one with a Content-Length is.
    big = json.dumps({"name": "welcome", "to": "ann", "payload": {"x": "a" * 600_000}})
    status, answer = _chunked(key, big.encode(), decoded=True)
    assert status.startswith("413"), answer


def test_the_query_is_read_as_utf8_whatever_charset_the_body_has(wsgi_in_test: None) -> None:
    """Django decoded the query with the Content-Type's charset, the body's, while it
    built the request, before any handler of errors: gunicorn's bare HTML 500 for a query
    of over 1,000 parameters beside `charset=utf-8`, and for any query beside a charset
    that is no text encoding; `charset=utf-7` read `%2B2AA-` as a lone surrogate, which
    PostgreSQL's driver cannot encode, a 500 at each lookup by it."""
    _, key = client_with_key()
    many = "&".join(f"subscriberIds=s{i}" for i in range(1001))

    status, answer = _served(
        key, "GET", f"/v2/topics?{many}", CONTENT_TYPE="application/json; charset=utf-8"
    )
    assert (status, json.loads(answer)["code"]) == ("400 Bad Request", "invalid_query")
    for charset in ("utf-7", "unicode_escape"):
        kind = f"application/json; charset={charset}"
        status, answer = _served(key, "GET", "/v2/topics?key=%2B2AA-%5Cud800", CONTENT_TYPE=kind)
        assert (status, json.loads(answer)["data"]) == ("200 OK", []), answer
    base64 = "application/json; charset=base64"
    status, answer = _served(
        key, "POST", "/v2/topics?failIfExists=true", b"{}", CONTENT_TYPE=base64
    )
    assert status == "400 Bad Request", answer
    assert (
        json.loads(answer)["message"]
        == 'Unsupported charset "base64" in request Content-Type header.'
    )

    # The body is still read in its own charset.
    latin = "application/json; charset=latin-1"
    body = '{"key": "cafe", "name": "Caf\u00e9"}'.encode("latin-1")
    status, answer = _served(key, "POST", "/v2/topics?failIfExists=true", body, CONTENT_TYPE=latin)
    assert status == "201 Created", answer
    assert json.loads(answer)["data"]["name"] == "Caf\u00e9"


def test_reencryptkeys_with_every_key_readable_says_only_what_it_did(settings: Any) -> None:
    """The line about revoked keys left as they were is for a run that left some: printed
    after every rotation ("left 0 revoked secret key(s) that no key ... decrypts"), it
    sent operators looking for keys that do not exist."""
    settings.NORM_ENCRYPTION_KEY = Fernet.generate_key().decode()
    client_with_key()
    out = io.StringIO()

    call_command("reencryptkeys", stdout=out)

    assert out.getvalue() == "re-encrypted 1 secret keys\n"
