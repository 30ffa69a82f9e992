"""norm settings: one module, driven by the environment.

With no environment at all, norm runs on the embedded default: SQLite and Celery's
filesystem transport under ./var, the console email backend. Production sets
DATABASE_URL, CELERY_BROKER_URL, SECRET_KEY, NORM_ENCRYPTION_KEY, ALLOWED_HOSTS (check
--deploy refuses its default, `*`) and the EMAIL_* values.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("NORM_VAR_DIR", BASE_DIR / "var"))


def env_str(name: str, default: str) -> str:
    return os.environ.get(name, default)


def env_int(name: str, default: int, *, positive: bool = False, non_negative: bool = False) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name} must be an integer, got {raw!r}") from exc
    return _bounded(name, value, positive=positive, non_negative=non_negative)


def env_float(
    name: str, default: float, *, positive: bool = False, non_negative: bool = False
) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name} must be a number, got {raw!r}") from exc
    if math.isinf(value):
        # Each is an interval, a timeout or a backoff, none endless, and inf passed "more
        # than 0": a timedelta or a socket's timeout of it raises OverflowError, at each
        # discover or bridge call, or as beat builds its schedule.
        raise ImproperlyConfigured(f"{name} must be a finite number, got {raw!r}")
    return _bounded(name, value, positive=positive, non_negative=non_negative)


def _bounded(name: str, value: float, *, positive: bool, non_negative: bool) -> Any:
    if positive:
        return _positive(name, value)
    return _non_negative(name, value) if non_negative else value


def _positive(name: str, value: float) -> Any:
    """`value`, refused unless more than 0 (or NaN): for an interval, a bound or a timeout
    that 0 would not turn off but break. Read as "off", a reconcile interval of 0 had beat
    send reconcile without a pause, a prefetch multiplier of 0 let a worker take the
    whole queue, a connect timeout of 0 waited for good, a grace of 0 re-sent all work
    in flight each tick."""
    if not value > 0:
        raise ImproperlyConfigured(f"{name} must be more than 0, got {value:g}")
    return value


def _non_negative(name: str, value: float) -> Any:
    """`value`, refused if less than 0 (or NaN): for a count, an age or an interval whose 0
    means "none" or "every time". Less than 0 means nothing, and was taken as it came: a
    count of retries, a cache's age, a broker countdown's bound below 0 each read as 0,
    the operator's typo never named."""
    if not value >= 0:
        raise ImproperlyConfigured(f"{name} must be 0 or more, got {value:g}")
    return value


def env_port(name: str, default: int) -> int:
    """A TCP port, 1 to 65535. Taken as it came, 0 was smtplib's "the default" (25), a
    port past 65535 was taken modulo 65536 by the resolver (70000 reached 4464), and one
    below 0 failed each connect as a lookup: each email sent to another port or retried
    as a connection error until NORM_SEND_MAX_ATTEMPTS, the setting never named."""
    value = env_int(name, default)
    if not 0 < value <= 65535:
        raise ImproperlyConfigured(f"{name} must be a port, 1 to 65535, got {value}")
    return value


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    if raw.lower() in {"1", "true", "yes", "on"}:
        return True
    if raw.lower() in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean, got {raw!r}")


def env_json_map(name: str, default: dict[str, str]) -> dict[str, str]:
    """A JSON object of names to names (a routing table, providers by channel): any other
    JSON (a list, a string, an object of numbers) failed only once a trigger used it."""
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ImproperlyConfigured(f"{name} must be JSON: {exc}") from exc
    # Not an empty name: a workflow routed to "" was checked for room on a queue so named.
    if not isinstance(value, dict) or not all(isinstance(v, str) and v for v in value.values()):
        raise ImproperlyConfigured(
            f'{name} must be a JSON object of names to names, e.g. {{"a": "b"}}, got {raw!r}'
        )
    return value


def env_log_level(name: str, default: str) -> str:
    """A logging level's name in any case: `info`, as Celery's `-l` takes it, was handed to
    logging as it came, which knows only `INFO`, and every command (web server and workers
    too) died at start with "Unable to configure root logger"."""
    raw = env_str(name, default).strip().upper() or default
    if raw not in logging.getLevelNamesMapping():
        raise ImproperlyConfigured(
            f"{name} must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL, got {raw!r}"
        )
    return raw


def env_url(name: str, default: str, *, several: str) -> str:
    """A URL with its scheme (`redis://`), or empty where that means none. Without one,
    kombu took a broker URL for an AMQP host's name ("amqp://guest:**@127.0.0.1%3A6379"),
    its workers retrying it for good while every trigger was answered 201 and never ran;
    Django's cache raised at its first use."""
    value = env_str(name, default).strip()
    if value and not re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", value):
        raise ImproperlyConfigured(
            f"{name} must be a URL, e.g. redis://host:6379/0, got {_unschemed_shown(value)!r}"
        )
    # A port or a Redis database that is no number passed, and was refused only where the
    # URL was used: the worker and beat died at start on kombu's traceback, which named
    # neither the setting nor the value, while manage.py check, compose's migrate job and
    # the web server started.
    # Each of several, as its user splits them (`several`): kombu's failover
    # "redis://a/0;redis://b/0", Django's cache "redis://a/0,redis://b/0" too.
    if not all(_port_and_database_numbers(url) for url in re.split(several, value)):
        raise ImproperlyConfigured(
            f"{name} must be a URL whose port and Redis database are numbers, "
            f"e.g. redis://host:6379/0, got {_url_shown(value)!r}"
        )
    return value


def _port_and_database_numbers(url: str) -> bool:
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 - raises for one that is no number, or past 65535
    except ValueError:
        return False
    return parts.scheme not in ("redis", "rediss") or bool(re.fullmatch(r"/?[0-9]*", parts.path))


def _unschemed_shown(value: str) -> str:
    """A URL without its scheme as its refusal shows it: what stands before its last @ (a
    password) and after its first ? (a query's password=, which redis-py reads, the one
    way its docs give for a socket) as ***. A ? before that @ is a password holding ? or a
    query holding @, and which part is the password no one can tell: none of it shown."""
    userinfo, at, rest = value.rpartition("@")
    if "?" in userinfo:
        return "***"
    base, question, _query = rest.partition("?")
    return f"{'***@' if at else ''}{base}{'?***' if question else ''}"


def env_database(name: str, default: str) -> dict[str, Any]:
    """Django's database settings from a URL. dj_database_url's refusals named neither the
    variable nor the value: "Scheme '://' is unknown" (a URL without its scheme, an empty
    one, SQLAlchemy's postgresql+psycopg://), "This string is not a valid url" (a port
    that is no number), and one without a database name got Django's "Please supply the
    NAME" at the first query."""
    value = env_str(name, default).strip()
    shown = _url_shown(value)  # its password as ***
    try:
        parsed: dict[str, Any] = dict(dj_database_url.parse(value))
    except ValueError as exc:
        # Not the unknown scheme's list of backends, mysql:// among them: norm runs on these.
        why = "" if isinstance(exc, dj_database_url.UnknownSchemeError) else f" ({exc})"
        raise ImproperlyConfigured(
            f"{name} must be a URL, e.g. postgres://user:pass@host:5432/norm or "
            f"sqlite:///path, got {shown!r}{why}"
        ) from exc
    if not parsed.get("NAME") and not parsed.get("OPTIONS", {}).get("service"):
        raise ImproperlyConfigured(
            f"{name} must name a database, e.g. postgres://user:pass@host:5432/norm, got {shown!r}"
        )
    return parsed


def _url_shown(value: str) -> str:
    """A URL as its refusal shows it: its scheme, then the rest as _unschemed_shown shows
    it. Split at the first ://, not the last, which a password may hold too."""
    match = re.match(r"([A-Za-z][A-Za-z0-9+.-]*://)(.*)", value, re.DOTALL)
    return match[1] + _unschemed_shown(match[2]) if match else _unschemed_shown(value)


def env_list(name: str, default: str) -> list[str]:
    """A comma-separated list, spaces around its items ignored ("a.example, b.example")."""
    return [item.strip() for item in env_str(name, default).split(",") if item.strip()]


DEBUG = env_bool("DEBUG", False)
# The embedded default is for a laptop (`make run`); production must set its own
# SECRET_KEY: `manage.py check --deploy` refuses the default (norm.E004).
DEVELOPMENT_SECRET_KEY = "norm-insecure-development-key-change-me"
SECRET_KEY = env_str("SECRET_KEY", DEVELOPMENT_SECRET_KEY)
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "*")
# Behind a proxy that ends TLS and calls norm over plain HTTP, Django sees an http
# request whose browser sent `Origin: https://...`, and its CSRF check refuses every
# admin form (the login first) unless that origin is trusted here, e.g.
# CSRF_TRUSTED_ORIGINS=https://norm.example.com ...
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", "")
# ... or unless norm trusts the header in which the proxy says the request came over
# HTTPS (SECURE_PROXY_SSL_HEADER=X-Forwarded-Proto: only when the proxy always sets it,
# as a client could send it too). Then the session and CSRF cookies are sent only over
# HTTPS as well.
_PROXY_SSL_HEADER = env_str("SECURE_PROXY_SSL_HEADER", "").strip()
if _PROXY_SSL_HEADER and not re.fullmatch(r"[A-Za-z0-9_-]+", _PROXY_SSL_HEADER):
    # Its value too ("X-Forwarded-Proto: https", or Django's pair "HTTP_...,https") named
    # a header no request has: every request taken for plain HTTP, the admin's login a 403.
    raise ImproperlyConfigured(
        "SECURE_PROXY_SSL_HEADER must be a header's name, e.g. X-Forwarded-Proto (its value "
        f"is https), got {_PROXY_SSL_HEADER!r}"
    )
if _PROXY_SSL_HEADER:
    # Named as the header (X-Forwarded-Proto) or as Django's own setting names it
    # (HTTP_X_FORWARDED_PROTO): the latter became HTTP_HTTP_..., matching nothing.
    _meta_name = _PROXY_SSL_HEADER.upper().replace("-", "_").removeprefix("HTTP_")
    SECURE_PROXY_SSL_HEADER = ("HTTP_" + _meta_name, "https")
    SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = True
# The admin is then HTTPS-only (a browser keeps no cookie of it from plain HTTP), and a
# browser told so (HSTS) goes to it over HTTPS when sent to http://, where a network
# attacker could show it a login page of their own. Django sends it on HTTPS answers only.
SECURE_HSTS_SECONDS = env_int(
    "SECURE_HSTS_SECONDS", 365 * 24 * 3600 if _PROXY_SSL_HEADER else 0, non_negative=True
)
# How many proxies (nginx, a load balancer) stand between clients and norm, each of which
# appends the address it saw to X-Forwarded-For: the client's address is then the entry
# that many from the right (config/addresses.py), for the admin login's throttle and any
# DRF throttle (its NUM_PROXIES). 0 reads the peer's address and never the header, which
# any client can send; behind a proxy the peer is the proxy, for every client alike.
# Set it only when norm cannot be reached but through those proxies.
NORM_NUM_PROXIES = env_int("NORM_NUM_PROXIES", 0, non_negative=True)

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "notify",
    "workflows",
    "subscribers",
    "messaging",
]

MIDDLEWARE = [
    "config.middleware.collapse_slashes",
    "config.middleware.health_check",
    "config.middleware.bracket_lists",
    "config.middleware.admin_nul_refused",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    # X-Frame-Options: DENY. Without it another site could show the admin in a frame and
    # have its user click an action (revoke a key, cancel a trigger); check --deploy
    # warned of it (security.W002). norm has no page meant to be framed.
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

# Routes have no trailing slash; a redirect would turn a client's POST into a GET.
APPEND_SLASH = False
ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

DATABASES = {
    "default": {
        **env_database("DATABASE_URL", f"sqlite:///{VAR_DIR / 'norm.sqlite3'}"),
        "CONN_MAX_AGE": env_int("DB_CONN_MAX_AGE", 60, non_negative=True),
        "CONN_HEALTH_CHECKS": True,
    }
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Web, worker and beat write one SQLite file: WAL lets readers run beside the
    # writer, IMMEDIATE takes the write lock up front instead of failing mid-transaction.
    DATABASES["default"]["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
    }
    DATABASES["default"]["CONN_MAX_AGE"] = 0
elif DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # libpq waits for ever by default: to connect to a server that took the connection
    # and never answered (a failover half done), and for an answer from one that went
    # away without a word (a host lost, a partition): the OS gives up on unacknowledged
    # data after some 15 minutes and probes an idle connection after two hours. Until
    # then the worker hung in the call, its task never failed to be retried (DB_RETRY),
    # and each such worker was one fewer for every client. Options in DATABASE_URL's
    # query string (?sslmode=require, say) win.
    DATABASES["default"]["OPTIONS"] = {
        "connect_timeout": env_int("DB_CONNECT_TIMEOUT", 10, positive=True),
        # An idle connection (a query the server is still running) is probed after 30 s.
        "keepalives_idle": 30,
        "keepalives_interval": 10,
        "keepalives_count": 3,
        # Sent data unacknowledged for this long ends the connection (milliseconds).
        "tcp_user_timeout": 60_000,
        **DATABASES["default"].get("OPTIONS", {}),
    }

# The cache holds the trigger rate's and the admin's failed logins' counters: shared Redis
# in production (NORM_CACHE_URL, e.g. redis://host:6379/1) so every web process counts
# together; local memory otherwise.
NORM_CACHE_URL = env_url("NORM_CACHE_URL", "", several="[;,]")
CACHES = {
    "default": (
        {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": NORM_CACHE_URL,
            "OPTIONS": {"socket_timeout": 2, "socket_connect_timeout": 2},
        }
        if NORM_CACHE_URL
        else {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}
    )
}

# The admin's passwords (createsuperuser, the admin's user and password pages) are checked
# as Django's own project template checks them: without validators "admin" or "1" was
# taken as it came, for a login that holds every client's keys.
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": f"django.contrib.auth.password_validation.{name}"}
    for name in (
        "UserAttributeSimilarityValidator",
        "MinimumLengthValidator",
        "CommonPasswordValidator",
        "NumericPasswordValidator",
    )
]

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
TIME_ZONE = "UTC"
LANGUAGE_CODE = "en-us"
STATIC_URL = "static/"
# Only an image that runs collectstatic needs a STATIC_ROOT (the Dockerfile sets it).
STATIC_ROOT = os.environ.get("STATIC_ROOT") or None
# Serve static files straight from the apps, so the admin and /docs work without a
# collectstatic step on a laptop; production images run collectstatic.
WHITENOISE_USE_FINDERS = True

# The API refuses bodies over this size (512 KB by default) with a JSON 413: its parser
# before reading one (config/parsers.py), Django's own limit for one read already
# (config/errors.py).
NORM_MAX_BODY_BYTES = env_int("NORM_MAX_BODY_BYTES", 512 * 1024, positive=True)
DATA_UPLOAD_MAX_MEMORY_SIZE = NORM_MAX_BODY_BYTES

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["notify.auth.ApiKeyAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["notify.auth.IsClient"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["config.parsers.JSONParser"],
    "DEFAULT_CONTENT_NEGOTIATION_CLASS": "config.parsers.JsonOnly",
    "EXCEPTION_HANDLER": "config.errors.exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "UNAUTHENTICATED_USER": None,
    # Unset (None), DRF's get_ident would take a client's own X-Forwarded-For as it came.
    "NUM_PROXIES": NORM_NUM_PROXIES,
}

SPECTACULAR_SETTINGS = {
    "TITLE": "norm API",
    "DESCRIPTION": "Self-hosted notification infrastructure as code, compatible with Novu's API.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    # The ApiKey security scheme comes from notify.auth.ApiKeySchemeExtension.
    # The converters of notify.urls (a transactionId: any string) and config.converters
    # (an id trimmed), described as `path` and `str` are.
    "PATH_CONVERTER_OVERRIDES": {"text": str, "trimmed": str},
}

# --- Celery -------------------------------------------------------------------------
# The filesystem transport uses no host, but kombu warns "No hostname was supplied" on
# each connection of a URL that names none (the worker's, beat's, the web server's).
CELERY_BROKER_URL = env_url("CELERY_BROKER_URL", "filesystem://localhost/", several=";")
if CELERY_BROKER_URL.startswith("filesystem://"):
    _broker_dir = VAR_DIR / "broker"
    CELERY_BROKER_TRANSPORT_OPTIONS: dict[str, Any] = {
        "data_folder_in": str(_broker_dir),
        "data_folder_out": str(_broker_dir),
        "control_folder": str(VAR_DIR / "broker-control"),
        "store_processed": False,
        # How long an idle worker waits before it looks for new messages again (the
        # default 1 s delays each step as much); a busy one is woken as soon as a
        # thread frees up (config/fsbroker.py).
        "polling_interval": 0.1,
    }
    # kombu's, with each message written whole before a worker can take it.
    CELERY_BROKER_TRANSPORT = "config.fsbroker:Transport"
else:
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        # A task not acknowledged within this many seconds is delivered again, even to
        # another worker while the first still holds it. It must exceed the longest
        # countdown norm gives the broker (NORM_BROKER_MAX_COUNTDOWN) and the send that
        # follows it (EMAIL_SEND_DEADLINE), or a delayed step would be redelivered while
        # still waiting, and a send's retry while it sends: the copy, under the same task
        # id, takes the step's claim back and sends again (norm.E002). Longer delays live
        # in the database and are enqueued by the reconciler. It is also how long the
        # tasks of a worker that died whole (SIGKILL, its machine gone) wait to come back;
        # the reconciler reopens their rows sooner (NORM_STALE_CLAIM_SECONDS, ten minutes).
        "visibility_timeout": env_int("CELERY_VISIBILITY_TIMEOUT", 3600, positive=True),
        # A broker that accepts connections but never answers (a failover half done)
        # would otherwise hang a publish, and with it a web request, a task or beat.
        "socket_timeout": env_int("CELERY_BROKER_SOCKET_TIMEOUT", 10, positive=True),
        "socket_connect_timeout": env_int("CELERY_BROKER_SOCKET_TIMEOUT", 10, positive=True),
    }
    if CELERY_BROKER_URL.startswith("redis://"):
        # kombu's, with a worker that survives Redis out of memory (config/redisbroker.py).
        # Not for rediss:// (kombu sets TLS up from that scheme's name) nor sentinel://.
        CELERY_BROKER_TRANSPORT = "config.redisbroker:Transport"
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_IGNORE_RESULT = True
# Acknowledge after the task ran, and requeue when the worker process dies, so a
# killed worker loses nothing; every task claims its row, so a rerun is harmless.
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
# A task running when the worker loses the broker finishes its work: Celery 5's default,
# chosen here (Celery 6 cancels such tasks, and 5 warns so on each connection loss).
# Cancelled, it could be cut between the provider's send and the commit, and its step
# would stay claimed for NORM_STALE_CLAIM_SECONDS; finished, only its acknowledgement is
# lost, and the message Redis delivers again after the visibility timeout finds its row
# done (every task claims its row).
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = False
# One message at a time per process: with acks_late a prefetched message would wait
# behind a slow bridge call instead of going to an idle worker. A message with a
# countdown (a delay, a retry) is not held to it: Celery raises the limit for each one,
# and the worker keeps it, unacknowledged, until it is due; that is why the visibility
# timeout must outlast the longest countdown (above).
CELERY_WORKER_PREFETCH_MULTIPLIER = env_int("CELERY_WORKER_PREFETCH_MULTIPLIER", 1, positive=True)
CELERY_TASK_DEFAULT_QUEUE = "workflows"
# Celery's Django fixup closes the database connection after every task unless this
# is set, and a new PostgreSQL connection cost more than the task's own queries. With
# it, the fixup closes them every 1000 tasks, and config/celery.py applies
# CONN_MAX_AGE around each task and drops a connection that failed, as Django does per
# request (prefork children skip the health check's query: config/celery.py).
CELERY_DB_REUSE_MAX = 1000
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# What a task prints is output, not a warning: the console email backend's emails (make
# run's reminder) came as WARNING records. Python's warnings and norm's errors are logged
# at their own levels, not printed.
CELERY_WORKER_REDIRECT_STDOUTS_LEVEL = "INFO"
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")
CELERY_BEAT_SCHEDULER = "config.celery:BeatScheduler"  # makes VAR_DIR if missing
NORM_RECONCILE_INTERVAL = env_float("NORM_RECONCILE_INTERVAL", 10.0, positive=True)
# Beat run with --enable-remote-control (docker-compose's healthcheck) stops answering
# pings once its scheduler has not ticked for this long. It ticks at each reconcile;
# Celery's default, twice its 5-minute loop, would call a hung beat healthy for 10 minutes.
CELERY_BEAT_REMOTE_CONTROL_MAX_TICK_AGE = max(60.0, 6 * NORM_RECONCILE_INTERVAL)
# A reconcile not run in time is dropped (`expires`), so that runs missed while no worker
# served the queue do not all come at once. Celery writes that time on beat's clock and
# the worker reads it on its own: at one interval, a worker that many seconds ahead of
# beat (10, or 2 with an interval of 2) dropped every reconcile. A minute more takes in
# clocks that far apart, and the few runs it lets pile up do nothing twice.
RECONCILE_EXPIRES = NORM_RECONCILE_INTERVAL + 60
CELERY_BEAT_SCHEDULE = {
    "reconcile": {
        "task": "norm.reconcile",  # config.pipeline.RECONCILE
        "schedule": NORM_RECONCILE_INTERVAL,
        "options": {"queue": "reconcile", "expires": RECONCILE_EXPIRES},
    },
}

# --- norm ---------------------------------------------------------------------------
# Key for the encrypted copies of secret keys (a Fernet key, urlsafe base64 of 32
# bytes). Without one, a key is derived from SECRET_KEY: fine on a laptop, but then
# rotating SECRET_KEY makes stored secrets unreadable.
NORM_ENCRYPTION_KEY = env_str("NORM_ENCRYPTION_KEY", "")
# workflow name -> Celery queue for the workflow worker, for dedicated workers.
NORM_WORKFLOW_QUEUES: dict[str, str] = env_json_map("NORM_WORKFLOW_QUEUES", {})
# Delays and send retries up to this long ride on the broker's countdown; longer ones
# wait in the database for the reconciler, which survives a broker restart.
NORM_BROKER_MAX_COUNTDOWN = env_int("NORM_BROKER_MAX_COUNTDOWN", 300, non_negative=True)
# Work the broker should have delivered this many seconds ago is re-enqueued: a trigger
# not yet fanned out or fanned out short, a due step, a notification left idle.
NORM_RECONCILE_GRACE = env_int("NORM_RECONCILE_GRACE", 60, positive=True)
# Seconds a request's cancel (the API's, the admin's over every trigger it selects) ends
# notifications before it answers; the rest is canceled by a task (gunicorn kills a
# request at 30 s).
NORM_CANCEL_BUDGET_SECONDS = env_float("NORM_CANCEL_BUDGET_SECONDS", 5.0, non_negative=True)
# A step, or a trigger event's fan-out, claimed longer ago than this is taken to belong
# to a dead worker.
NORM_STALE_CLAIM_SECONDS = env_int("NORM_STALE_CLAIM_SECONDS", 600, positive=True)
# A step taken this many times by tasks that never reported back fails: its send kills
# the worker each time (out of memory on a huge email, a segfault), and without a bound
# Celery would redeliver it (acks_late, reject on worker lost) and the reconciler reopen
# its stale claim forever. A send that returned (a 4xx retried later) is no such claim:
# NORM_SEND_MAX_ATTEMPTS bounds those, and a task's retry after a database error takes
# its claim back uncounted (see step_claim). A worker killed costs one or two claims; the
# default leaves room for several. It bounds as well the runs of an echo, a step's send
# or a fan-out that an unexpected error (a bug) ends: then the row fails, its reason the
# error's (the notification's code InternalError), rather than run again for good. A
# fan-out's runs whose claim went stale (a worker that died) count with those a bug ended.
# A subscriber command delivered again after its worker died counts each such run on its
# trigger event (by task id): at the bound its recipients' notifications fail.
NORM_MAX_CLAIMS = env_int("NORM_MAX_CLAIMS", 10, positive=True)
# Steps one notification may run. A bridge decides each next step (norm's SDK runs the
# code to the first step not done yet), and one that never answers "done" (a loop over
# ever new step ids, a bug in a while loop) held an echo worker, every client's, for good:
# a bridge call a step, each with the state of all those before, and an in-app message or
# an email to the subscriber at each. Novu's API allows a workflow 10 steps (20 on old
# plans): ten times that leaves room for any workflow written on purpose.
NORM_MAX_STEPS = env_int("NORM_MAX_STEPS", 100, positive=True)
# Seconds a whole call to a bridge may take, connecting included (DNS aside).
NORM_BRIDGE_TIMEOUT = env_float("NORM_BRIDGE_TIMEOUT", 10.0, positive=True)
# A bridge's answer is read up to this size; a larger one fails the call.
NORM_BRIDGE_MAX_RESPONSE_BYTES = env_int(
    "NORM_BRIDGE_MAX_RESPONSE_BYTES", 10 * 1024 * 1024, positive=True
)
NORM_BRIDGE_MAX_RETRIES = env_int("NORM_BRIDGE_MAX_RETRIES", 5, non_negative=True)
# A backoff of no time (or less: a countdown in the past) ran every retry at once, the
# outage it was meant to wait out not over yet.
NORM_BRIDGE_RETRY_BACKOFF = env_float("NORM_BRIDGE_RETRY_BACKOFF", 2.0, positive=True)
NORM_SEND_MAX_ATTEMPTS = env_int("NORM_SEND_MAX_ATTEMPTS", 5, positive=True)
NORM_SEND_RETRY_BACKOFF = env_float("NORM_SEND_RETRY_BACKOFF", 10.0, positive=True)
# Seconds between two discover calls prompted by triggers (an unknown workflow name,
# or a registry entry older than NORM_REGISTRY_TTL).
NORM_DISCOVER_MIN_INTERVAL = env_float("NORM_DISCOVER_MIN_INTERVAL", 10.0, non_negative=True)
# Seconds a web process may spend checking a value against a schema with a `pattern` (a
# payload, a step's controls in the admin), in a helper process (notify.schema_checks):
# one that backtracks (`^(a+)+$`) on the value is refused past it. A pattern meant to be
# matched takes microseconds.
NORM_SCHEMA_CHECK_SECONDS = env_float("NORM_SCHEMA_CHECK_SECONDS", 2.0, positive=True)
# A discovered workflow (its payload schema) is re-discovered when older than this.
NORM_REGISTRY_TTL = env_float("NORM_REGISTRY_TTL", 300.0, non_negative=True)
# How long a process reuses a registry entry, a bridge's flavour, step controls or a
# signing key it read (config/memo.py): an admin edit or a key rotation reaches the
# workers within this many seconds. 0 reads the database every time.
NORM_PROCESS_CACHE_SECONDS = env_float("NORM_PROCESS_CACHE_SECONDS", 5.0, non_negative=True)
# channel -> provider name (messaging.providers.PROVIDERS); a channel left out has no
# provider, and its steps are skipped with that reason, the workflow going on.
NORM_PROVIDERS: dict[str, str] = env_json_map(
    "NORM_PROVIDERS", {"email": "django-email", "in_app": "inbox"}
)
# The demo bridge at /bridge verifies signatures with this secret (strict mode) when set.
NORM_DEMO_BRIDGE_SECRET = env_str("NORM_DEMO_BRIDGE_SECRET", "")
# Mounts the bench's endpoints (bench/urls.py); only `manage.py bench` sets it.
NORM_BENCH_ENDPOINTS = env_bool("NORM_BENCH_ENDPOINTS", False)

# --- email --------------------------------------------------------------------------
EMAIL_BACKEND = env_str("EMAIL_BACKEND", "django.core.mail.backends.console.EmailBackend")
EMAIL_HOST = env_str("EMAIL_HOST", "localhost")
EMAIL_PORT = env_port("EMAIL_PORT", 25)
EMAIL_HOST_USER = env_str("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = env_str("EMAIL_HOST_PASSWORD", "")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", False)
EMAIL_USE_SSL = env_bool("EMAIL_USE_SSL", False)
# smtplib's timeout bounds each socket operation (a connect, one read), not a send.
EMAIL_TIMEOUT = env_int("EMAIL_TIMEOUT", 15, positive=True)
# Seconds a whole email send may take, however slowly the SMTP server answers: greeting,
# STARTTLS or TLS and login on a new connection, and the whole transaction (DNS aside,
# and a connect the server never answers, which EMAIL_TIMEOUT ends). Past it the send
# fails as a timeout, retried later.
EMAIL_SEND_DEADLINE = env_float("EMAIL_SEND_DEADLINE", 60.0, positive=True)
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "norm@localhost")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "filters": {
        "bridge_query": {"()": "config.redact.BridgeQueryMasked"},
        "client_errors": {"()": "config.logs.ClientErrorsQuieted"},
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    # A logger's filters see only its own records: each urllib3 module that logs a
    # request's path has the filter (the bridge URL's token stays out of the log).
    "loggers": {
        **{
            name: {"filters": ["bridge_query"]}
            for name in ("urllib3.connectionpool", "urllib3.util.retry")
        },
        # Django's line for each 4xx answer: one a minute per status and route; as for
        # each request Django refuses as suspicious, logged by a logger named for its
        # exception (or CSRF's), which a filter on their parent would not see.
        **{
            name: {"filters": ["client_errors"]}
            for name in (
                "django.request",
                *(
                    f"django.security.{suspicious}"
                    for suspicious in (
                        "DisallowedHost",
                        "DisallowedRedirect",
                        "RequestDataTooBig",
                        "TooManyFieldsSent",
                        "TooManyFilesSent",
                        "SuspiciousMultipartForm",
                        "SuspiciousSession",
                        "InvalidSessionKey",
                        "csrf",
                    )
                ),
            )
        },
    },
    "root": {"handlers": ["console"], "level": env_log_level("LOG_LEVEL", "INFO")},
}
