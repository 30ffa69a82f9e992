"""Settings as an operator writes them in the environment, and what norm does with them."""

from __future__ import annotations

import json
import os
import re
import runpy
import subprocess
import sys
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from django.contrib.auth.models import User
from django.contrib.auth.password_validation import validate_password
from django.core import checks
from django.core.exceptions import ImproperlyConfigured, ValidationError
from django.core.mail.backends.smtp import EmailBackend as SMTPBackend
from django.test import Client
from kombu import Connection

ROOT = Path(__file__).resolve().parent.parent


def _read_settings(env: dict[str, str]) -> dict[str, Any]:
    """The names config/settings.py defines, read afresh with `env` added to the
    environment, as each command reads it at start (the test process read its own once).
    Run in this process: a new one took 0.6 s each."""
    with mock.patch.dict(os.environ, env):
        return runpy.run_path(str(ROOT / "config" / "settings.py"))


def settings_from(env: dict[str, str], *names: str) -> dict[str, Any]:
    """`names` as config/settings.py reads them from `env`, as JSON gives them back."""
    found = _read_settings(env)
    return json.loads(json.dumps({name: found.get(name) for name in names}))


def refused_by_every_command() -> list[str]:
    """The ids of norm's messages from the checks every command runs, each an error: an
    error stops the command (migrate, compose's job, first), where a warning lets it run."""
    messages = [m for m in checks.run_checks() if m.id.startswith("norm.")]
    assert all(m.level == checks.ERROR for m in messages), messages
    return [m.id for m in messages]


def refused_at_start(env: dict[str, str]) -> str:
    """Why config/settings.py refuses `env`: what every command (manage.py, celery,
    gunicorn) stops with before it does anything. The test of a log level that is no
    level shows such a refusal reach manage.py's output."""
    with pytest.raises(ImproperlyConfigured) as refused:
        _read_settings(env)
    return str(refused.value)


def test_allowed_hosts_may_have_spaces_after_their_commas(client: Client, settings: Any) -> None:
    found = settings_from({"ALLOWED_HOSTS": "norm.example.com, localhost ,"}, "ALLOWED_HOSTS")
    settings.ALLOWED_HOSTS = found["ALLOWED_HOSTS"]

    # Every host but the first was refused with a 400 (DisallowedHost).
    assert client.get("/admin/login/", HTTP_HOST="localhost").status_code == 200
    assert client.get("/admin/login/", HTTP_HOST="norm.example.com").status_code == 200


PROXIED = {"HTTP_HOST": "norm.example.com", "HTTP_ORIGIN": "https://norm.example.com"}


def _log_in_behind_a_tls_proxy(settings: Any, env: dict[str, str], **headers: str) -> Any:
    """An operator logs in to the admin at https://norm.example.com/admin/, through a
    proxy that ends TLS and calls norm (gunicorn) over plain HTTP, as compose's web
    behind nginx or Traefik; the browser sends its Origin and CSRF cookie."""
    for name, value in settings_from(
        env,
        "CSRF_TRUSTED_ORIGINS",
        "SECURE_PROXY_SSL_HEADER",
        "SESSION_COOKIE_SECURE",
        "CSRF_COOKIE_SECURE",
        "SECURE_HSTS_SECONDS",
    ).items():
        if value is not None:
            setattr(settings, name, tuple(value) if name == "SECURE_PROXY_SSL_HEADER" else value)
    settings.ALLOWED_HOSTS = ["norm.example.com"]
    User.objects.create_superuser("ops", "ops@example.com", "pw-for-ops")
    browser = Client(enforce_csrf_checks=True)
    browser.get("/admin/login/", **PROXIED, **headers)
    token = browser.cookies["csrftoken"].value
    return browser.post(
        "/admin/login/",
        {
            "username": "ops",
            "password": "pw-for-ops",
            "csrfmiddlewaretoken": token,
            "next": "/admin/",
        },
        **PROXIED,
        **headers,
    )


@pytest.mark.django_db
def test_the_admin_login_works_behind_a_tls_proxy_with_its_origin_trusted(settings: Any) -> None:
    response = _log_in_behind_a_tls_proxy(
        settings, {"CSRF_TRUSTED_ORIGINS": "https://norm.example.com"}
    )

    # Refused with a 403 "Origin checking failed" before, whatever the operator set.
    assert response.status_code == 302, response.content[:300]
    assert response["Location"] == "/admin/"


@pytest.mark.django_db
# As a header is named, and as Django names it in request.META (its own setting's form).
@pytest.mark.parametrize("header", ["X-Forwarded-Proto", "HTTP_X_FORWARDED_PROTO"])
def test_the_admin_login_works_behind_a_tls_proxy_whose_header_is_trusted(
    settings: Any, header: str
) -> None:
    response = _log_in_behind_a_tls_proxy(
        settings, {"SECURE_PROXY_SSL_HEADER": header}, HTTP_X_FORWARDED_PROTO="https"
    )

    assert response.status_code == 302, response.content[:300]
    # The browser sends them over HTTPS only.
    assert response.cookies["sessionid"]["secure"]
    assert response.cookies["csrftoken"]["secure"]
    # and goes to norm over HTTPS only, for a year, when sent to http://
    assert response["Strict-Transport-Security"] == "max-age=31536000"


def test_a_tls_proxys_hsts_is_never_sent_over_plain_http_and_turned_off_by_zero(
    settings: Any,
) -> None:
    header = {"SECURE_PROXY_SSL_HEADER": "X-Forwarded-Proto"}
    read = settings_from(header, "SECURE_PROXY_SSL_HEADER", "SECURE_HSTS_SECONDS")
    settings.SECURE_PROXY_SSL_HEADER = tuple(read["SECURE_PROXY_SSL_HEADER"])
    settings.SECURE_HSTS_SECONDS = read["SECURE_HSTS_SECONDS"]

    over = {
        scheme: Client().get("/docs", HTTP_X_FORWARDED_PROTO=scheme) for scheme in ("https", "http")
    }

    assert over["https"]["Strict-Transport-Security"] == "max-age=31536000"
    assert "Strict-Transport-Security" not in over["http"]
    off = settings_from({**header, "SECURE_HSTS_SECONDS": "0"}, "SECURE_HSTS_SECONDS")
    assert off == {"SECURE_HSTS_SECONDS": 0}
    assert "SECURE_HSTS_SECONDS" in refused_at_start({**header, "SECURE_HSTS_SECONDS": "-1"})


def _check_with(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`manage.py check` in a fresh process whose environment adds `env`."""
    return subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=ROOT, env={**os.environ, **env},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


@pytest.mark.parametrize("level", ["info", "Debug", " WARNING "])
def test_log_level_is_taken_in_any_case(level: str) -> None:
    done = _check_with({"LOG_LEVEL": level})

    # `info` (as Celery's -l takes it) made every command die with "Unable to configure
    # root logger", the web server and the workers with it.
    assert done.returncode == 0, done.stderr[-500:]
    assert settings_from({"LOG_LEVEL": level}, "LOGGING")["LOGGING"]["root"]["level"] == (
        level.strip().upper()
    )


def test_a_log_level_that_is_no_level_is_refused_by_name() -> None:
    done = _check_with({"LOG_LEVEL": "loud"})

    assert done.returncode != 0
    assert "LOG_LEVEL must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL, got 'LOUD'" in (
        done.stderr
    )


@pytest.mark.parametrize("name", ["NORM_WORKFLOW_QUEUES", "NORM_PROVIDERS"])
@pytest.mark.parametrize(
    "value", ['["critical"]', '"critical"', '{"welcome": 1}', '{"welcome": ""}']
)
def test_a_routing_or_provider_table_that_is_no_object_of_names_is_refused(
    name: str, value: str
) -> None:
    """Each was taken, and failed only once a trigger used it (in the API or a worker)."""
    # On PostgreSQL, whose options hold DB_CONNECT_TIMEOUT (the check connects to nothing).
    assert f"{name} must be a JSON object of names to names" in refused_at_start(
        {"DATABASE_URL": "postgres://postgres@127.0.0.1:5432/norm", name: value}
    )


@pytest.mark.parametrize(
    ("providers", "found"),
    [
        ({"email": "django-email", "in_app": "inbox"}, []),
        ({"in_app": "inbox"}, []),  # a channel left out: its steps are skipped, as meant
        ({"email": "smtp", "in_app": "inbox"}, ["norm.E005"]),  # no such provider
        ({"email": "inbox"}, ["norm.E005"]),  # another channel's
        ({"sms": "django-email"}, ["norm.E005"]),
    ],
)
def test_a_provider_norm_does_not_have_for_its_channel_is_refused_by_every_command(
    settings: Any, providers: dict[str, str], found: list[str]
) -> None:
    """It was taken as no provider: every step of that channel skipped, nothing failing."""
    settings.NORM_PROVIDERS = providers
    assert refused_by_every_command() == found


@pytest.mark.parametrize(("deadline", "found"), [(60.0, []), (600.0, ["norm.E006"])])
def test_a_send_deadline_as_long_as_a_stale_claim_is_refused_by_every_command(
    settings: Any, deadline: float, found: list[str]
) -> None:
    """The reconciler would reopen a step whose email is still being sent: sent twice."""
    settings.EMAIL_SEND_DEADLINE, settings.NORM_STALE_CLAIM_SECONDS = deadline, 600
    assert refused_by_every_command() == found


@pytest.mark.parametrize(
    ("name", "value"),
    [
        # Taken for "off", 0 made beat send reconcile in a loop without a pause, each
        # message expiring at once (expires=interval): a flooded broker, nothing reconciled.
        ("NORM_RECONCILE_INTERVAL", "0"),
        ("NORM_RECONCILE_INTERVAL", "-10"),
        # Every piece of work in flight re-sent at each tick.
        ("NORM_RECONCILE_GRACE", "0"),
        # Celery's "no limit": a worker took the whole queue, acks_late holding it all.
        ("CELERY_WORKER_PREFETCH_MULTIPLIER", "0"),
        # libpq's "wait for good".
        ("DB_CONNECT_TIMEOUT", "0"),
        ("NORM_STALE_CLAIM_SECONDS", "-1"),
        ("NORM_MAX_CLAIMS", "0"),
        ("NORM_SEND_MAX_ATTEMPTS", "0"),
        ("EMAIL_SEND_DEADLINE", "0"),
        # A socket of no timeout is non-blocking: every email failed to connect, retried.
        ("EMAIL_TIMEOUT", "0"),
        ("NORM_BRIDGE_TIMEOUT", "nan"),
        # Every retry at once (a countdown in the past), the outage not waited out.
        ("NORM_BRIDGE_RETRY_BACKOFF", "-2"),
        ("NORM_BRIDGE_RETRY_BACKOFF", "0"),
        ("NORM_SEND_RETRY_BACKOFF", "-10"),
        ("NORM_SEND_RETRY_BACKOFF", "0"),
    ],
)
def test_a_bound_interval_or_timeout_of_no_time_is_refused_by_name(name: str, value: str) -> None:
    # On PostgreSQL, whose options hold DB_CONNECT_TIMEOUT (the check connects to nothing).
    assert f"{name} must be more than 0, got {value}" in refused_at_start(
        {"DATABASE_URL": "postgres://postgres@127.0.0.1:5432/norm", name: value}
    )


@pytest.mark.parametrize("value", ["0", "-25", "65536", "70000"])
def test_an_smtp_port_that_is_no_port_is_refused_by_name(value: str) -> None:
    """0 was smtplib's default port (25), 70000 reached port 4464 (the resolver takes it
    modulo 65536), -25 failed each connect: every email went to another port or was
    retried as a connection error, the setting never named."""
    assert f"EMAIL_PORT must be a port, 1 to 65535, got {value}" in refused_at_start(
        {"EMAIL_PORT": value}
    )


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("", "''"),
        ("db:5432/norm", "'db:5432/norm'"),
        ("postgres//norm:pw@db:5432/norm", "'***@db:5432/norm'"),
        # SQLAlchemy's spelling, as an operator copies it from another service.
        ("postgresql+psycopg://norm:pw@db/norm", "'postgresql+psycopg://***@db/norm'"),
        ("postgres://norm:pw@db:port/norm", "'postgres://***@db:port/norm'"),
        # A password holding :// too (not percent-encoded, as the README asks).
        ("postgres://norm:pw://pw@db:port/norm", "'postgres://***@db:port/norm'"),
    ],
)
def test_a_database_url_that_is_no_url_is_refused_by_name(value: str, shown: str) -> None:
    """dj_database_url's "Scheme '://' is unknown" or "This string is not a valid url"
    named neither DATABASE_URL nor the value, and listed mysql:// among the schemes; the
    value is shown without its password."""
    refused = refused_at_start({"DATABASE_URL": value})
    assert refused.startswith(
        "DATABASE_URL must be a URL, e.g. postgres://user:pass@host:5432/norm or "
        f"sqlite:///path, got {shown}"
    )
    assert "pw" not in refused and "mysql" not in refused


def test_a_database_url_without_a_database_is_refused_by_name() -> None:
    """Django's "settings.DATABASES is improperly configured. Please supply the NAME"
    came only at the first query."""
    assert refused_at_start({"DATABASE_URL": "postgres://norm:pw@db:5432/"}) == (
        "DATABASE_URL must name a database, e.g. postgres://user:pass@host:5432/norm, "
        "got 'postgres://***@db:5432/'"
    )


@pytest.mark.parametrize("name", ["CELERY_BROKER_URL", "NORM_CACHE_URL"])
@pytest.mark.parametrize("value", ["127.0.0.1:6379", "redis//127.0.0.1:6379/0", "redis:/h/0"])
def test_a_redis_url_without_its_scheme_is_refused_by_name(name: str, value: str) -> None:
    """kombu took a broker URL without `redis://` for an AMQP host (the worker retried
    "amqp://guest:**@127.0.0.1%3A6379:5672//" for good, triggers were answered 201 and
    never ran, the health check said ok), and Django's cache raised at its first use (the
    admin's failed logins and the rate limit counted by no one)."""
    assert f"{name} must be a URL, e.g. redis://host:6379/0, got {value!r}" in refused_at_start(
        {name: value}
    )
    refused = refused_at_start({name: "redis//:s3cret@127.0.0.1:6379/0"})
    assert "got '***@127.0.0.1:6379/0'" in refused and "s3cret" not in refused


@pytest.mark.parametrize("name", ["CELERY_BROKER_URL", "NORM_CACHE_URL"])
@pytest.mark.parametrize(
    "value",
    [
        "redis://127.0.0.1:port/0",
        "redis://127.0.0.1:70000/0",
        "rediss://127.0.0.1:6380/db1",
        "redis://127.0.0.1:6379/0;redis://127.0.0.1:port/0",
    ],
)
def test_a_redis_url_whose_port_or_database_is_no_number_is_refused_by_name(
    name: str, value: str
) -> None:
    """Such a URL passed manage.py check, compose's migrate job and the web server's start:
    the worker and beat died at start on kombu's ValueError ("Port could not be cast to
    integer value", "Database is int between 0 and limit - 1"), naming neither setting
    nor value; the cache's port failed at its first use, and its database was taken for 0
    (redis-py drops one that is no number)."""
    assert refused_at_start({name: value}) == (
        f"{name} must be a URL whose port and Redis database are numbers, "
        f"e.g. redis://host:6379/0, got {value!r}"
    )
    for password in ["s3cret", "s3://cret"]:
        refused = refused_at_start({name: f"redis://:{password}@127.0.0.1:port/0"})
        assert "got 'redis://***@127.0.0.1:port/0'" in refused and "s3" not in refused


@pytest.mark.parametrize(
    "value",
    [
        "redis://127.0.0.1:6379",
        "redis://127.0.0.1:6379/",
        "redis://:pw@h:6379/15",
        "rediss://h/1",
        "redis://:p,w@h:6379/0",  # a comma of a password: kombu splits at ; alone
    ],
)
def test_a_redis_url_with_its_database_or_port_left_out_is_taken(value: str) -> None:
    assert settings_from({"CELERY_BROKER_URL": value}, "CELERY_BROKER_URL") == {
        "CELERY_BROKER_URL": value
    }


def test_several_redis_urls_are_taken_where_their_user_takes_several() -> None:
    """kombu's failover ("a;b") and Django's cache's servers ("a,b" or "a;b"): each one
    checked, which the check of one URL refused, its port or database "no number"."""
    env = {
        "CELERY_BROKER_URL": "redis://h1:6379/0;redis://h2:6379/0",
        "NORM_CACHE_URL": "redis://h1:6379/1,redis://h2:6379/1;redis://h3:6379/1",
    }
    assert settings_from(env, *env) == env


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        # redis-py reads a password from the query too, the one way its docs give for a
        # socket (unix:///r.sock?db=0&password=...): without unix://, echoed whole.
        ("/run/redis.sock?db=0&password=s3cret", "/run/redis.sock?***"),
        # A query holding @ (as a password after it?) or a password holding ?: no telling.
        ("127.0.0.1:6379/0?password=s3cr@t", "***"),
        (":s3c?ret@127.0.0.1:6379/0", "***"),
        ("user:p@ss@host:6379", "***@host:6379"),
        ("host:6379\n:s3cret@other", "***@other"),
    ],
)
def test_a_url_refused_without_its_scheme_shows_no_password(value: str, shown: str) -> None:
    refused = refused_at_start({"NORM_CACHE_URL": value})
    assert f"got {shown!r}" in refused
    assert not any(part in refused for part in ("s3c", "ret", "cr@t", "p@ss"))


def test_broker_and_cache_urls_with_a_scheme_are_taken() -> None:
    env = {"CELERY_BROKER_URL": "rediss://:p%40ss@h:6380/0", "NORM_CACHE_URL": "unix:///r.sock"}
    assert settings_from(env, *env) == env


@pytest.mark.parametrize(
    ("url", "transport", "tls"),
    [
        ("redis://127.0.0.1:6379/0", "config.redisbroker:Transport", False),
        ("rediss://127.0.0.1:6380/0", "kombu.transport.redis:Transport", True),
        ("filesystem://", "config.fsbroker:Transport", False),
    ],
)
def test_the_broker_transport_is_the_one_its_url_scheme_asks_for(
    url: str, transport: str, tls: bool
) -> None:
    """Only redis:// takes config/redisbroker.py's: kombu sets TLS up from the scheme's
    name, so given norm's transport a rediss:// broker was spoken to in clear."""
    found = settings_from({"CELERY_BROKER_URL": url}, "CELERY_BROKER_TRANSPORT")
    # As Celery's app.connection_for_write makes it (its broker_transport, then the URL's).
    connection = Connection(url, transport=found["CELERY_BROKER_TRANSPORT"])
    used = connection.get_transport_cls()
    assert f"{used.__module__}:{used.__name__}" == transport
    assert bool(connection.ssl) is tls


def test_an_smtp_port_from_1_to_65535_is_taken() -> None:
    assert settings_from({"EMAIL_PORT": "1"}, "EMAIL_PORT") == {"EMAIL_PORT": 1}
    assert settings_from({"EMAIL_PORT": "65535"}, "EMAIL_PORT") == {"EMAIL_PORT": 65535}


# Every setting read as a number of seconds (config/settings.py's env_float).
FLOATS = re.findall(r'env_float\(\s*"(\w+)"', (ROOT / "config" / "settings.py").read_text())


@pytest.mark.parametrize(
    ("name", "value"), [*((name, "inf") for name in FLOATS), ("NORM_REGISTRY_TTL", "-Infinity")]
)
def test_an_interval_or_timeout_without_end_is_refused_by_name(name: str, value: str) -> None:
    """inf passed "more than 0" and "0 or more": a timedelta or a socket's timeout of it
    raised OverflowError at each discover or bridge call, or as beat built its schedule."""
    assert f"{name} must be a finite number, got {value!r}" in refused_at_start({name: value})


ZERO_ALLOWED = [
    "DB_CONN_MAX_AGE",  # 0: a connection per request
    "NORM_BROKER_MAX_COUNTDOWN",  # 0: every delay waits in the database
    "NORM_CANCEL_BUDGET_SECONDS",  # 0: a chunk, the rest in the background
    "NORM_BRIDGE_MAX_RETRIES",  # 0: no retry
    "NORM_DISCOVER_MIN_INTERVAL",
    "NORM_REGISTRY_TTL",
    "NORM_PROCESS_CACHE_SECONDS",  # 0: the database read every time
]


@pytest.mark.parametrize("name", ZERO_ALLOWED)
def test_a_count_age_or_interval_below_0_is_refused_by_name(name: str) -> None:
    """Each was taken as it came and read as 0 (or as nothing at all), the typo unnamed."""
    assert f"{name} must be 0 or more, got -1" in refused_at_start(
        {"DATABASE_URL": "postgres://postgres@127.0.0.1:5432/norm", name: "-1"}
    )


def test_a_count_age_or_interval_of_0_is_still_taken() -> None:
    names = [n for n in ZERO_ALLOWED if n != "DB_CONN_MAX_AGE"]
    found = settings_from(dict.fromkeys(ZERO_ALLOWED, "0"), *names, "DATABASES")
    assert found.pop("DATABASES")["default"]["CONN_MAX_AGE"] == 0
    assert found == dict.fromkeys(names, 0)


@pytest.mark.parametrize(
    ("retries", "backoff", "found"),
    [
        (5, 2.0, []),  # the defaults: the last retry waits 32 to 48 s
        (10, 2.0, []),  # 1024 to 1536 s
        (11, 2.0, []),  # 2048 to 3072 s: the 11th retry's, counting from 0
        (12, 2.0, ["norm.E007"]),  # 4096 to 6144 s, past the 3600 s visibility timeout
        (5, 150.0, ["norm.E007"]),  # 2400 to 3600 s: the longest may be redelivered
        (0, 10_000.0, []),  # no retry at all
    ],
)
def test_a_bridge_retry_redis_would_deliver_again_is_refused_by_every_command(
    settings: Any, retries: int, backoff: float, found: list[str]
) -> None:
    """An echo's retry after a bridge that is down waits on the broker, however long its
    backoff, and Redis delivers a message held unacknowledged past the visibility timeout
    again: the retry ran twice, each copy retrying in turn. norm.E002 looked only at
    NORM_BROKER_MAX_COUNTDOWN, which the bridge's retries do not heed."""
    settings.CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 3600}
    settings.NORM_BRIDGE_MAX_RETRIES, settings.NORM_BRIDGE_RETRY_BACKOFF = retries, backoff
    assert refused_by_every_command() == found


SMTP = "django.core.mail.backends.smtp.EmailBackend"
CONSOLE = "django.core.mail.backends.console.EmailBackend"


class _SMTPBackendOfItsOwn(SMTPBackend):
    """A backend made from Django's SMTP one: it reads the same settings."""


@pytest.mark.parametrize(
    ("tls", "ssl", "backend", "found"),
    [
        ("false", "false", SMTP, []),
        ("true", "false", SMTP, []),
        ("0", "yes", SMTP, []),
        ("true", "1", SMTP, ["norm.E008"]),
        ("true", "1", f"{__name__}._SMTPBackendOfItsOwn", ["norm.E008"]),
        ("true", "1", CONSOLE, []),  # reads neither: compose's default
    ],
)
def test_smtp_with_both_starttls_and_implicit_tls_is_refused_by_every_command(
    settings: Any, tls: str, ssl: str, backend: str, found: list[str]
) -> None:
    """Django's SMTP backend refuses both at once, but only when it is made, for the first
    send: every email failed for good, each with that reason, while every command (compose's
    migrate job's check first) passed."""
    settings.EMAIL_BACKEND = backend
    env = {"EMAIL_USE_TLS": tls, "EMAIL_USE_SSL": ssl}
    for name, value in settings_from(env, "EMAIL_USE_TLS", "EMAIL_USE_SSL").items():
        setattr(settings, name, value)
    assert refused_by_every_command() == found


@pytest.mark.parametrize(
    ("user", "password", "backend", "found"),
    [
        ("", "", SMTP, []),  # no login: compose's default, a relay that takes the host's mail
        ("norm", "s3cret", SMTP, []),
        ("norm", "", SMTP, ["norm.E014"]),  # the password's secret not mounted, say
        ("", "s3cret", SMTP, ["norm.E014"]),
        ("norm", "", f"{__name__}._SMTPBackendOfItsOwn", ["norm.E014"]),
        # No login anywhere: compose's default backend, a deployment sending no email yet.
        ("norm", "", CONSOLE, []),
        ("", "s3cret", "django.core.mail.backends.locmem.EmailBackend", []),
        ("norm", "", "smtp", ["norm.E009"]),  # no backend to log in with: norm.E009's alone
    ],
)
def test_an_smtp_login_given_half_is_refused_by_every_command(
    settings: Any, user: str, password: str, backend: str, found: list[str]
) -> None:
    """Django's SMTP backend logs in only given both: with one, it sent without a login,
    and a server that requires one refused each email (530) as it was sent, retried until
    NORM_SEND_MAX_ATTEMPTS, its reason naming neither setting. A backend that logs in
    nowhere changes nothing with one alone: every command failed for it all the same."""
    settings.EMAIL_BACKEND = backend
    settings.EMAIL_HOST_USER, settings.EMAIL_HOST_PASSWORD = user, password
    messages = [m for m in checks.run_checks() if m.id.startswith("norm.")]
    assert [m.id for m in messages] == found
    assert all(m.level == checks.ERROR for m in messages)
    assert all(password not in m.msg + str(m.hint) for m in messages if password)
    # Named the other way round, the operator would look for a login that is there.
    given = "EMAIL_HOST_USER" if user else "EMAIL_HOST_PASSWORD"
    assert all(m.msg.startswith(f"{given} is set and ") for m in messages if m.id == "norm.E014")


@pytest.mark.parametrize(
    ("backend", "found"),
    [
        ("django.core.mail.backends.smtp.EmailBackend", []),
        ("django.core.mail.backends.console.EmailBackend", []),
        ("django.core.mail.backends.smtp.EmailBacken", ["norm.E009"]),  # a letter short
        ("smtp", ["norm.E009"]),
    ],
)
def test_an_email_backend_that_cannot_be_imported_is_refused_by_every_command(
    settings: Any, backend: str, found: list[str]
) -> None:
    """It was imported only for the first send: every email's send failed as a bug in
    norm, run again until NORM_MAX_CLAIMS, while every command passed."""
    settings.EMAIL_BACKEND = settings_from({"EMAIL_BACKEND": backend}, "EMAIL_BACKEND")[
        "EMAIL_BACKEND"
    ]
    assert refused_by_every_command() == found


@pytest.mark.parametrize(
    ("sender", "found"),
    [
        ("norm@localhost", []),  # the default
        ("Norm <norm@mail.example.com>", []),
        ('"Acme, Inc." <hello@acme.example>', []),
        ("norm@zürich.example", []),
        ("", ["norm.E012"]),
        ("   ", ["norm.E012"]),
        ("not an address", ["norm.E012"]),  # sent from "not an address", of no domain
        ("norm@", ["norm.E012"]),
        ("norm@example.com, ops@example.com", ["norm.E012"]),
        ("norm@example..com", ["norm.E012"]),
        ("norm@example.com\n", ["norm.E012"]),  # a secret's file, its line's end kept
        ("norm@example.com\x0b", ["norm.E012"]),
    ],
)
def test_a_default_from_email_no_email_can_go_from_is_refused_by_every_command(
    settings: Any, sender: str, found: list[str]
) -> None:
    """It was taken as it came, and each email of a client without an email_from failed
    for good as it was sent, once per notification, while every command passed."""
    settings.DEFAULT_FROM_EMAIL = settings_from(
        {"DEFAULT_FROM_EMAIL": sender}, "DEFAULT_FROM_EMAIL"
    )["DEFAULT_FROM_EMAIL"]
    assert refused_by_every_command() == found


@pytest.mark.parametrize(
    "value", ["X-Forwarded-Proto: https", "HTTP_X_FORWARDED_PROTO,https", "X-Forwarded-Proto=https"]
)
def test_a_proxy_ssl_header_given_with_its_value_is_refused_by_name(value: str) -> None:
    """Written as Django's setting is (the header and "https") or as the proxy sends it,
    it named a header no request has: norm took every request behind the proxy for plain
    HTTP, and the admin's login failed its CSRF check (a 403), the cause nowhere said."""
    assert "SECURE_PROXY_SSL_HEADER must be a header's name, e.g. X-Forwarded-Proto" in (
        refused_at_start({"SECURE_PROXY_SSL_HEADER": value})
    )


# NORM_CACHE_URL's: the deploy checks' lists stay exact without norm.W006.
SHARED_CACHE = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": "redis://r:6379/1",
    }
}
# What a production deployment sets, so that each deploy check's test finds its own alone.
PRODUCTION = {
    "ALLOWED_HOSTS": ["norm.example.com"],
    "SECRET_KEY": "a-long-random-production-secret-for-this-test-0123456789",
    "NORM_ENCRYPTION_KEY": "k7ezxhkHr5wvJRBvNhcVUsxlSBRjoL_Eu6G_7VqB3_Q=",
    "EMAIL_BACKEND": "django.core.mail.backends.smtp.EmailBackend",
    "DEFAULT_FROM_EMAIL": "norm@example.com",
    "CACHES": SHARED_CACHE,
}


def deploy_checked(settings: Any, **given: Any) -> list[checks.CheckMessage]:
    """norm's messages from check --deploy on PRODUCTION's settings but those `given`,
    none of which the checks of every command find."""
    for name, value in {**PRODUCTION, **given}.items():
        setattr(settings, name, value)
    assert not [m for m in checks.run_checks() if m.id.startswith("norm.")]  # deploy only
    return [
        m for m in checks.run_checks(include_deployment_checks=True) if m.id.startswith("norm.")
    ]


@pytest.mark.parametrize(("debug", "found"), [("false", []), ("true", ["norm.E010"])])
def test_debug_on_is_refused_by_the_deploy_check(
    settings: Any, debug: str, found: list[str]
) -> None:
    """Django's security.W018 only warned, so compose's migrate job (`check --deploy
    --fail-level ERROR`) let DEBUG=true through: every error page then showed any caller
    the settings Django does not mask, the broker's and the cache's URLs with their Redis
    password, and each frame's local variables."""
    messages = deploy_checked(settings, DEBUG=settings_from({"DEBUG": debug}, "DEBUG")["DEBUG"])
    assert [m.id for m in messages] == found
    assert all(m.level == checks.ERROR for m in messages)  # what stops the migrate job


@pytest.mark.parametrize(
    ("hosts", "found"),
    [
        ("norm.example.com, localhost", []),
        (".example.com", []),  # a domain and its subdomains: a list all the same
        ("*", ["norm.E011"]),
        ("norm.example.com,*", ["norm.E011"]),
        # Set empty outside compose (an env file's `ALLOWED_HOSTS=`): every request but the
        # health check a 400, which answered 200 all the while; Django's W020 only warns.
        ("", ["norm.E013"]),
        (" , ", ["norm.E013"]),
    ],
)
def test_any_host_allowed_is_refused_by_the_deploy_check(
    settings: Any, hosts: str, found: list[str]
) -> None:
    """`*`, the default for `make run`, passed compose's migrate job (`check --deploy
    --fail-level ERROR`) when an operator set it: any Host a caller sent was norm's own."""
    allowed = settings_from({"ALLOWED_HOSTS": hosts}, "ALLOWED_HOSTS")["ALLOWED_HOSTS"]
    messages = deploy_checked(settings, ALLOWED_HOSTS=allowed)
    assert [m.id for m in messages] == found
    assert all(m.level == checks.ERROR for m in messages)  # what stops the migrate job


@pytest.mark.parametrize(
    ("backend", "providers", "found"),
    [
        ("django.core.mail.backends.smtp.EmailBackend", None, []),
        ("django.core.mail.backends.console.EmailBackend", None, ["norm.W002"]),  # compose's
        ("django.core.mail.backends.dummy.EmailBackend", None, ["norm.W002"]),
        ("django.core.mail.backends.filebased.EmailBackend", None, ["norm.W002"]),
        ("django.core.mail.backends.console.EmailBackend", {"in_app": "inbox"}, []),  # no email
    ],
)
def test_an_email_backend_that_delivers_nothing_is_named_by_the_deploy_check(
    settings: Any, backend: str, providers: dict[str, str] | None, found: list[str]
) -> None:
    """compose's default, the console backend, passed check --deploy without a word: a
    deployment that never set EMAIL_BACKEND recorded every email `sent`, delivered none,
    and wrote each one whole (its one-time codes and links) into the worker's log."""
    if providers is not None:
        settings.NORM_PROVIDERS = providers
    messages = deploy_checked(settings, EMAIL_BACKEND=backend)
    assert [m.id for m in messages] == found
    assert all(m.level == checks.WARNING for m in messages)
    assert all(f"EMAIL_BACKEND is {backend}:" in m.msg for m in messages)


@pytest.mark.parametrize(
    ("sender", "providers", "found"),
    [
        ("norm@example.com", None, []),
        ("Norm <norm@mail.example.com>", None, []),
        ("norm@localhost", None, ["norm.W005"]),  # the default, make run's and compose's
        ("Norm <norm@LocalHost>", None, ["norm.W005"]),
        ("norm@worker.localhost", None, ["norm.W005"]),
        ("norm@notlocalhost.example", None, []),
        ("norm@localhost", {"in_app": "inbox"}, []),  # no email is sent
    ],
)
def test_a_default_from_email_of_localhost_is_named_by_the_deploy_check(
    settings: Any, sender: str, providers: dict[str, str] | None, found: list[str]
) -> None:
    """The default, norm@localhost, passed check --deploy without a word: every email of
    a client without an email_from went out from a domain no receiving server can verify
    or answer, refused or filed as spam."""
    if providers is not None:
        settings.NORM_PROVIDERS = providers
    given = settings_from({"DEFAULT_FROM_EMAIL": sender}, "DEFAULT_FROM_EMAIL")
    messages = deploy_checked(settings, **given)
    assert [m.id for m in messages] == found
    assert all(m.level == checks.WARNING for m in messages)


SQLITE, POSTGRESQL = "django.db.backends.sqlite3", "django.db.backends.postgresql"


@pytest.mark.parametrize(
    ("engine", "broker", "found"),
    [
        (POSTGRESQL, "redis://r:6379/0", []),
        (SQLITE, "redis://r:6379/0", ["norm.W003"]),  # DATABASE_URL forgotten
        (POSTGRESQL, "filesystem://localhost/", ["norm.W003"]),  # CELERY_BROKER_URL's
        (SQLITE, "filesystem://localhost/", ["norm.W003", "norm.W003"]),  # neither set
    ],
)
def test_the_embedded_database_or_broker_is_named_by_the_deploy_check(
    settings: Any, monkeypatch: pytest.MonkeyPatch, engine: str, broker: str, found: list[str]
) -> None:
    """Without DATABASE_URL or CELERY_BROKER_URL (their defaults, make run's), norm runs on
    a SQLite file and a filesystem broker under var/, and check --deploy said nothing:
    processes on other hosts (or containers) each had their own, and every trigger was
    answered 201 and never ran."""
    # The engine alone, in place: the test's own connection keeps its database.
    monkeypatch.setitem(settings.DATABASES["default"], "ENGINE", engine)
    messages = deploy_checked(settings, CELERY_BROKER_URL=broker)
    assert [m.id for m in messages] == found


@pytest.mark.parametrize(
    ("cache_url", "found"),
    [("redis://r:6379/1", []), ("", ["norm.W006"])],  # the default, each process's memory
)
def test_a_cache_of_each_web_process_is_named_by_the_deploy_check(
    settings: Any, cache_url: str, found: list[str]
) -> None:
    """Without NORM_CACHE_URL each web process counted a client's trigger rate and the
    admin's failed logins on its own, and check --deploy said nothing: under gunicorn's
    --workers 2 a client got twice its rate, a password guesser twice the tries."""
    caches = settings_from({"NORM_CACHE_URL": cache_url}, "CACHES")
    messages = deploy_checked(settings, **caches)
    assert [m.id for m in messages] == found
    assert all(m.level == checks.WARNING for m in messages)


@pytest.mark.parametrize(
    ("proxy_header", "found"),
    [
        ("X-Forwarded-Proto", {"security.W005", "security.W008", "security.W021"}),
        (
            "",
            {"security.W004", "security.W008", "security.W012", "security.W016"},
        ),
    ],
)
def test_each_of_djangos_warnings_on_production_settings_is_explained_in_the_readme(
    settings: Any, proxy_header: str, found: set[str]
) -> None:
    """check --deploy on the settings the README gives (compose's, behind a proxy that
    ends TLS or not) printed Django's HSTS, redirect and cookie warnings, which the README,
    listing what the check says, never named: an operator could not tell whether norm
    wanted them mended (and by which variable: SESSION_COOKIE_SECURE is none) or not."""
    given = settings_from(
        {"SECURE_PROXY_SSL_HEADER": proxy_header},
        "SECURE_PROXY_SSL_HEADER",
        "SECURE_HSTS_SECONDS",
        "SESSION_COOKIE_SECURE",
        "CSRF_COOKIE_SECURE",
    )
    deploy_checked(settings, **{name: value for name, value in given.items() if value is not None})
    warned = {
        m.id
        for m in checks.run_checks(include_deployment_checks=True)
        if m.id.startswith("security.")
    }
    assert warned == found
    production = (ROOT / "README.md").read_text().split("## Production", 1)[1].split("\n## ", 1)[0]
    assert not [name for name in sorted(warned) if f"`{name}`" not in production]


def test_the_defaults_are_the_embedded_database_and_broker() -> None:
    unset = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "CELERY_BROKER_URL")}
    with mock.patch.dict(os.environ, unset, clear=True):
        found = runpy.run_path(str(ROOT / "config" / "settings.py"))
    assert (found["DATABASES"]["default"]["ENGINE"], found["CELERY_BROKER_URL"]) == (
        SQLITE,
        "filesystem://localhost/",
    )


def test_make_run_still_takes_any_host_by_default() -> None:
    """`make run` (rundemo, on whatever --addr) relies on the default; only a deployment's
    check refuses it."""
    unset = {k: v for k, v in os.environ.items() if k != "ALLOWED_HOSTS"}
    run = {"cwd": ROOT, "env": unset, "capture_output": True, "text": True, "timeout": 60}
    script = "import config.settings as s; print(s.ALLOWED_HOSTS)"
    assert subprocess.run([sys.executable, "-c", script], **run).stdout == "['*']\n"
    done = subprocess.run([sys.executable, "manage.py", "check"], **run)
    assert done.returncode == 0, done.stderr[-500:]


def test_the_proxies_trusted_are_read_for_norm_and_for_drfs_throttles() -> None:
    assert settings_from({}, "NORM_NUM_PROXIES")["NORM_NUM_PROXIES"] == 0
    read = settings_from({"NORM_NUM_PROXIES": "2"}, "NORM_NUM_PROXIES", "REST_FRAMEWORK")
    assert read["NORM_NUM_PROXIES"] == 2
    # DRF's get_ident, left at None, takes the whole X-Forwarded-For a client sent.
    assert read["REST_FRAMEWORK"]["NUM_PROXIES"] == 2
    assert "NORM_NUM_PROXIES must be 0 or more" in refused_at_start({"NORM_NUM_PROXIES": "-1"})


@pytest.mark.parametrize(
    ("name", "default"),
    [
        ("SECURE_HSTS_SECONDS", 0),  # env_int's
        ("NORM_BRIDGE_TIMEOUT", 10.0),  # env_float's
        ("NORM_WORKFLOW_QUEUES", {}),  # env_json_map's
        ("DEBUG", False),  # env_bool's
        ("LOG_LEVEL", "INFO"),  # env_log_level's
    ],
)
def test_a_setting_set_empty_is_taken_as_unset(name: str, default: Any) -> None:
    """compose hands each optional setting an operator left out to norm set empty
    (`SECURE_HSTS_SECONDS: ${SECURE_HSTS_SECONDS:-}`), as an env file's `NAME=` does: it
    is its default, not a value refused at the start of every command."""
    found = settings_from({name: ""}, name, "LOGGING")
    assert (found["LOGGING"]["root"]["level"] if name == "LOG_LEVEL" else found[name]) == default


@pytest.mark.parametrize(
    ("value", "taken"),
    [
        *((value, True) for value in ("1", "true", "True", "YES", "on")),
        *((value, False) for value in ("0", "false", "False", "No", "OFF")),
    ],
)
def test_a_boolean_is_taken_in_its_usual_spellings_in_any_case(value: str, taken: bool) -> None:
    """DEBUG=True, as a Django settings file writes it, or EMAIL_USE_TLS=on."""
    assert settings_from({"EMAIL_USE_TLS": value}, "EMAIL_USE_TLS") == {"EMAIL_USE_TLS": taken}


@pytest.mark.parametrize("value", ["ture", "enabled", "2"])
def test_a_boolean_that_is_neither_is_refused_by_name(value: str) -> None:
    """Taken for its default, EMAIL_USE_TLS=ture sent every email, and its SMTP login,
    without TLS, the operator's typo never named."""
    assert f"EMAIL_USE_TLS must be a boolean, got {value!r}" in refused_at_start(
        {"EMAIL_USE_TLS": value}
    )


@pytest.mark.parametrize("name", ["NORM_WORKFLOW_QUEUES", "NORM_PROVIDERS"])
def test_a_routing_or_provider_table_that_is_no_json_is_refused_by_name(name: str) -> None:
    """Written as a shell or Python writes it (no quotes, single quotes), the command died
    on json's own error, "Expecting property name enclosed in double quotes", which names
    no setting."""
    assert f"{name} must be JSON: Expecting property name" in refused_at_start(
        {name: "{'welcome': 'critical'}"}
    )


@pytest.mark.parametrize("name", [name for name in ZERO_ALLOWED if name in FLOATS])
def test_a_count_age_or_interval_that_is_no_number_is_refused_by_name(name: str) -> None:
    """float() takes "nan", which every comparison finds false: it passed "0 or more", and
    a registry TTL of it failed every trigger (a timedelta of NaN raises ValueError), a
    process cache of it read the database every time."""
    assert f"{name} must be 0 or more, got nan" in refused_at_start({name: "nan"})


def test_a_broker_or_cache_url_with_white_space_around_it_is_taken_without() -> None:
    """As a secret's file or a copied line gives it: refused, every command stopped."""
    env = {"CELERY_BROKER_URL": " redis://r:6379/0\n", "NORM_CACHE_URL": "\tredis://r:6379/1 "}
    assert settings_from(env, *env) == {
        "CELERY_BROKER_URL": "redis://r:6379/0",
        "NORM_CACHE_URL": "redis://r:6379/1",
    }


def test_hsts_is_off_unless_a_tls_proxys_header_is_trusted(settings: Any) -> None:
    """A year's HSTS is for a deployment that said it is served over HTTPS: one served over
    TLS some other way (gunicorn's --certfile) had every browser kept to HTTPS unasked."""
    settings.SECURE_HSTS_SECONDS = settings_from({}, "SECURE_HSTS_SECONDS")["SECURE_HSTS_SECONDS"]
    assert "Strict-Transport-Security" not in Client().get("/docs", secure=True)


def test_a_database_connection_kept_between_requests_is_checked_before_reuse() -> None:
    """Kept a minute (DB_CONN_MAX_AGE), a connection PostgreSQL closed meanwhile (a
    restart, a failover) failed each process's next request or task."""
    url = "postgres://norm@db.example:5432/norm"
    default = settings_from({"DATABASE_URL": url}, "DATABASES")["DATABASES"]["default"]
    assert (default["CONN_MAX_AGE"], default["CONN_HEALTH_CHECKS"]) == (60, True)


def test_options_in_the_database_urls_query_string_are_kept_and_win() -> None:
    """sslmode=require in DATABASE_URL, say: dropped, norm would connect without TLS."""
    url = "postgres://norm@db.example:5432/norm?sslmode=require&connect_timeout=3"
    options = settings_from({"DATABASE_URL": url}, "DATABASES")["DATABASES"]["default"]["OPTIONS"]
    assert (options["sslmode"], options["connect_timeout"]) == ("require", 3)
    assert options["keepalives_idle"] == 30  # norm's own, beside them


def test_the_broker_and_the_cache_give_up_on_a_redis_that_never_answers() -> None:
    """A Redis that takes the connection and never answers (a failover half done) hung a
    publish or a rate limit's count, and the web request, task or beat with it, for good."""
    env = {"CELERY_BROKER_URL": "redis://r:6379/0", "NORM_CACHE_URL": "redis://r:6379/1"}
    read = settings_from(env, "CELERY_BROKER_TRANSPORT_OPTIONS", "CACHES")
    broker = read["CELERY_BROKER_TRANSPORT_OPTIONS"]
    cache = read["CACHES"]["default"]["OPTIONS"]
    assert (broker["socket_timeout"], broker["socket_connect_timeout"]) == (10, 10)
    assert (cache["socket_timeout"], cache["socket_connect_timeout"]) == (2, 2)


def test_the_brokers_visibility_timeout_is_the_operators() -> None:
    """Raised for bridge retries that wait longer (norm.E007 names it): kept at 3600 s, the
    check passed on the operator's value while Redis redelivered each such retry."""
    env = {"CELERY_BROKER_URL": "redis://r:6379/0", "CELERY_VISIBILITY_TIMEOUT": "7200"}
    read = settings_from(env, "CELERY_BROKER_TRANSPORT_OPTIONS")
    assert read["CELERY_BROKER_TRANSPORT_OPTIONS"]["visibility_timeout"] == 7200


def test_a_worker_acknowledges_a_task_once_run_and_holds_one_at_a_time() -> None:
    """What lets a killed worker lose nothing: a task acknowledged as it starts was lost
    with its worker, and one not requeued on worker lost waited out the visibility
    timeout; a worker prefetching more held work behind a slow bridge call while another
    stood idle; one cancelling its tasks on a lost broker could cut a send before its
    commit. The worker reads them from these settings (config/celery.py)."""
    from config.celery import app

    assert app.conf.task_acks_late is True
    assert app.conf.task_reject_on_worker_lost is True
    assert app.conf.worker_prefetch_multiplier == 1
    assert app.conf.worker_cancel_long_running_tasks_on_connection_loss is False


@pytest.mark.parametrize(("interval", "age"), [("2", 60.0), ("10", 60.0), ("20", 120.0)])
def test_beat_is_taken_for_hung_after_six_reconcile_intervals_or_a_minute(
    interval: str, age: float
) -> None:
    """compose's healthcheck pings beat, which stops answering once its scheduler has not
    ticked for this long: at Celery's default (10 minutes) a hung beat, reconciling
    nothing, was called healthy all that while."""
    read = settings_from(
        {"NORM_RECONCILE_INTERVAL": interval}, "CELERY_BEAT_REMOTE_CONTROL_MAX_TICK_AGE"
    )
    assert read == {"CELERY_BEAT_REMOTE_CONTROL_MAX_TICK_AGE": age}


def test_beat_sends_reconcile_to_its_own_queue() -> None:
    """Sent to `workflows`, behind a backlog of triggers, it waited past its `expires` and
    never ran, leaving long delays and lost commands until the backlog cleared."""
    from config.pipeline import RECONCILE

    entry = settings_from({}, "CELERY_BEAT_SCHEDULE")["CELERY_BEAT_SCHEDULE"]["reconcile"]
    assert (entry["task"], entry["options"]["queue"]) == (RECONCILE.task, RECONCILE.queue)
    assert RECONCILE.queue == "reconcile"


@pytest.mark.parametrize(
    ("password", "refused"),
    [
        ("83920174561", "This password is entirely numeric."),
        ("short1", "This password is too short."),
    ],
)
def test_an_admin_password_django_own_template_refuses_is_refused(
    password: str, refused: str
) -> None:
    """The admin's login holds every client's keys: without validators any was taken."""
    with pytest.raises(ValidationError) as found:
        validate_password(password)
    assert refused in found.value.messages[0]


def test_the_apis_body_limit_is_djangos_own_for_every_body_it_reads() -> None:
    """Raised for larger triggers, NORM_MAX_BODY_BYTES alone left Django's 2.5 MB in place
    for each body Django reads (the admin's forms, the demo bridge): those refused short of
    the operator's limit, or taken far past the API's own."""
    for limit in ("4000000", "1000"):
        read = settings_from({"NORM_MAX_BODY_BYTES": limit}, "DATA_UPLOAD_MAX_MEMORY_SIZE")
        assert read == {"DATA_UPLOAD_MAX_MEMORY_SIZE": int(limit)}


@pytest.mark.parametrize(("interval", "expires"), [("10", 70.0), ("30", 90.0)])
def test_beat_sends_reconcile_at_the_operators_interval(interval: str, expires: float) -> None:
    """NORM_RECONCILE_INTERVAL is how soon a lost command or a long delay is picked up
    again: beat's schedule at any other left the operator's setting unheeded."""
    read = settings_from({"NORM_RECONCILE_INTERVAL": interval}, "CELERY_BEAT_SCHEDULE")
    entry = read["CELERY_BEAT_SCHEDULE"]["reconcile"]
    assert (entry["schedule"], entry["options"]["expires"]) == (float(interval), expires)


def test_the_smtp_defaults_are_the_readmes() -> None:
    """compose passes EMAIL_PORT's 25 itself, but a deployment of its own leaves it out: a
    relay on the host's port 25 is what the README says norm sends to then."""
    unset = {k: v for k, v in os.environ.items() if not k.startswith(("EMAIL_", "DEFAULT_FROM"))}
    with mock.patch.dict(os.environ, unset, clear=True):
        found = runpy.run_path(str(ROOT / "config" / "settings.py"))
    names = ("EMAIL_HOST", "EMAIL_PORT", "EMAIL_TIMEOUT", "EMAIL_SEND_DEADLINE")
    assert [found[name] for name in names] == ["localhost", 25, 15, 60.0]
    assert found["DEFAULT_FROM_EMAIL"] == "norm@localhost"


def test_every_commands_log_goes_to_its_standard_error() -> None:
    """What compose, systemd or Kubernetes collect: a root logger without its handler left
    each warning and error of a web server or a worker unwritten."""
    script = "import logging, django; django.setup(); logging.getLogger('norm.x').warning('seen')"
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings"}
    run = {"cwd": ROOT, "env": env, "capture_output": True, "text": True, "timeout": 60}
    done = subprocess.run([sys.executable, "-c", script], **run)
    assert re.search(r" WARNING norm\.x seen$", done.stderr, re.MULTILINE), done.stderr[-500:]
