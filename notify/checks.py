"""System checks: what a production deployment must set for its secret keys, DEBUG,
ALLOWED_HOSTS, an email backend that delivers, a DEFAULT_FROM_EMAIL beyond localhost,
its database and broker (`check --deploy`); an encryption key that is no Fernet key,
settings that would run work twice (a broker countdown or a bridge retry Redis delivers
again, a send outlasting its claim), an email backend that is none, SMTP settings it
refuses or a login given half, a DEFAULT_FROM_EMAIL no email can go from, and providers
norm does not have (every command); an encryption key that decrypts no live secret key
(commands given the database: migrate)."""

from __future__ import annotations

from email.utils import parseaddr
from typing import Any

from cryptography.fernet import Fernet, InvalidToken
from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, Warning, register
from django.core.mail.backends.smtp import EmailBackend as SMTPBackend
from django.db import DatabaseError
from django.utils.module_loading import import_string

from config import pipeline
from notify import crypto, senders

# The standard library's form, as README's: the host's python3 need not have cryptography.
_FERNET_HINT = (
    "Set NORM_ENCRYPTION_KEY to a Fernet key (32 random bytes, urlsafe base64): python3 -c "
    "'import base64, os; print(base64.urlsafe_b64encode(os.urandom(32)).decode())'"
)


@register(Tags.security, deploy=True)
def encryption_key_check(app_configs: Any, **kwargs: Any) -> list[CheckMessage]:
    """Clients' secret keys are stored encrypted (for signing bridge calls). Without
    NORM_ENCRYPTION_KEY the key is derived from SECRET_KEY: from the public development
    default, anyone who reads the database can decrypt them. Set blank (a space, commas),
    it gives no key, and the derived one is used."""
    if crypto.given_keys():
        return []
    if settings.SECRET_KEY == settings.DEVELOPMENT_SECRET_KEY:
        return [
            Error(
                "Secret keys would be encrypted with a key derived from the public "
                "development SECRET_KEY.",
                hint=_FERNET_HINT,
                id="norm.E001",
            )
        ]
    return [
        Warning(
            "NORM_ENCRYPTION_KEY is not set: secret keys are encrypted with a key derived "
            "from SECRET_KEY, and rotating SECRET_KEY makes them unreadable.",
            hint=f"{_FERNET_HINT}, then run manage.py reencryptkeys (the keys stored until "
            "then stay readable meanwhile).",
            id="norm.W001",
        )
    ]


@register(Tags.security, deploy=True)
def secret_key_check(app_configs: Any, **kwargs: Any) -> list[CheckMessage]:
    """SECRET_KEY left at norm's development default, which this repository publishes:
    anyone can forge what Django signs with it (password reset links, signed cookies,
    the hash that keeps an admin's session valid). Django's own check (security.W009)
    only warns, so `check --deploy --fail-level ERROR` (docker-compose's migrate job,
    which web, worker and beat wait for) let it through. A deploy check, not one of
    every command: `make run`'s demo runs on the default, DEBUG off, by design."""
    if settings.SECRET_KEY != settings.DEVELOPMENT_SECRET_KEY:
        return []
    return [
        Error(
            "SECRET_KEY is norm's public development default.",
            hint="Set SECRET_KEY to a long random string: python3 -c "
            "'import secrets; print(secrets.token_urlsafe(50))'",
            id="norm.E004",
        )
    ]


@register(Tags.security, deploy=True)
def debug_check(app_configs: Any, **kwargs: Any) -> list[CheckMessage]:
    """DEBUG on shows any caller of a failing page the settings Django does not mask (the
    broker's and the cache's URLs, their Redis password in them) and each frame's local
    variables. Django's own check (security.W018) only warns, which `check --deploy
    --fail-level ERROR` (docker-compose's migrate job) let through."""
    if not settings.DEBUG:
        return []
    return [
        Error(
            "DEBUG is on: error pages would show settings and local variables to anyone.",
            hint="Unset DEBUG (or set it to false) in production.",
            id="norm.E010",
        )
    ]


@register(Tags.security, deploy=True)
def allowed_hosts_check(app_configs: Any, **kwargs: Any) -> list[CheckMessage]:
    """ALLOWED_HOSTS defaults to `*` for `make run` (any address it is given): deployed
    so, Django's defence against a forged Host is off (a DNS-rebinding page reaches norm
    under its own name; whatever builds a URL from the Host takes the caller's). Django
    checks only an empty list (security.W020), so compose's migrate job (`check --deploy
    --fail-level ERROR`) let `*` through; compose itself sets a list by default. Set
    empty (`ALLOWED_HOSTS=` in an env file), every request but the health check, which
    skips the Host check for probes, is a 400: the probes said healthy all the while, and
    Django's check (security.W020) only warns."""
    if not settings.ALLOWED_HOSTS:
        return [
            Error(
                "ALLOWED_HOSTS is empty: every request but the health check would be "
                "refused with a 400.",
                hint="Set ALLOWED_HOSTS to the host names norm is reached by, "
                "comma-separated (norm.example.com,localhost).",
                id="norm.E013",
            )
        ]
    if "*" not in settings.ALLOWED_HOSTS:
        return []
    return [
        Error(
            "ALLOWED_HOSTS is '*': any Host header a caller sends would be taken for norm's own.",
            hint="Set ALLOWED_HOSTS to the host names norm is reached by, comma-separated "
            "(norm.example.com,localhost).",
            id="norm.E011",
        )
    ]


# Django's backends that deliver nothing: they print an email, write it to a file or drop
# it. (locmem is the test runner's own.)
_UNDELIVERING_BACKENDS = {
    f"django.core.mail.backends.{name}.EmailBackend" for name in ("console", "filebased", "dummy")
}


@register(deploy=True)
def email_delivered_check(app_configs: Any, **kwargs: Any) -> list[CheckMessage]:
    """compose's default EMAIL_BACKEND is the console one, for a first look: a deployment
    that never set it recorded every email `sent` and delivered none, each written whole
    (its one-time codes and links) to the worker's log. A warning: it may be meant."""
    emailing = settings.NORM_PROVIDERS.get("email") == "django-email"
    if not emailing or settings.EMAIL_BACKEND not in _UNDELIVERING_BACKENDS:
        return []
    return [
        Warning(
            f"EMAIL_BACKEND is {settings.EMAIL_BACKEND}: emails are recorded sent and "
            "delivered to no one (the console backend writes each, whole, to the worker's log).",
            hint="Set EMAIL_BACKEND=django.core.mail.backends.smtp.EmailBackend and EMAIL_HOST "
            "etc., or leave email out of NORM_PROVIDERS to skip email steps.",
            id="norm.W002",
        )
    ]


def _local_domain(address: str) -> bool:
    """`address`'s domain names no host beyond this one: localhost or a name under it
    (RFC 6761 keeps both for the loopback), as norm's default, norm@localhost."""
    domain = parseaddr(address)[1].rpartition("@")[2].lower()
    return domain == "localhost" or domain.endswith(".localhost")


@register(deploy=True)
def default_from_local_check(app_configs: Any, **kwargs: Any) -> list[CheckMessage]:
    """DEFAULT_FROM_EMAIL left at its default, norm@localhost (make run's and compose's),
    passed check --deploy: every email of a client without an email_from went out from a
    domain no one can answer or verify, which receiving servers refuse or file as spam
    (no SPF or DKIM can pass for it), and gave each Message-ID that domain. A warning:
    every client may have its email_from."""
    emailing = settings.NORM_PROVIDERS.get("email") == "django-email"
    if not emailing or not _local_domain(settings.DEFAULT_FROM_EMAIL):
        return []
    return [
        Warning(
            f"DEFAULT_FROM_EMAIL is {settings.DEFAULT_FROM_EMAIL!r}: the emails of clients "
            "without an email_from would go out from a local domain, which receiving "
            "servers refuse or take for spam.",
            hint="Set DEFAULT_FROM_EMAIL to an address of a domain your SMTP server may send "
            "from: norm@example.com, or with a name, Norm <norm@example.com>.",
            id="norm.W005",
        )
    ]


@register(deploy=True)
def embedded_services_check(app_configs: Any, **kwargs: Any) -> list[CheckMessage]:
    """Without DATABASE_URL or CELERY_BROKER_URL, norm runs on make run's SQLite file and
    filesystem broker under var/: processes on other hosts or in other containers each
    have their own, and every trigger is answered 201 and never runs, the health check
    ok. A warning: processes sharing one host's var/ work so (make run)."""
    found = []
    if settings.DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
        found.append(("DATABASE_URL", "SQLite file", "postgres://user@host:5432/norm"))
    if settings.CELERY_BROKER_URL.startswith("filesystem://"):
        found.append(("CELERY_BROKER_URL", "filesystem broker", "redis://host:6379/0"))
    return [
        Warning(
            f"{name} is not set: norm runs on make run's {what} under {settings.VAR_DIR}, "
            "which processes on other hosts or in other containers do not share.",
            hint=f"Set {name} (e.g. {example}) on every process.",
            id="norm.W003",
        )
        for name, what, example in found
    ]


# Django's cache backends whose counts each process keeps for itself (or keeps none).
_PER_PROCESS_CACHES = {
    "django.core.cache.backends.locmem.LocMemCache",
    "django.core.cache.backends.dummy.DummyCache",
}


@register(deploy=True)
def shared_cache_check(app_configs: Any, **kwargs: Any) -> list[CheckMessage]:
    """Without NORM_CACHE_URL the cache is each web process's memory, and the counts it
    keeps are each process's own: a client's trigger rate, and the admin's failed logins
    before a lockout. Under gunicorn's `--workers 2` (Production's) a client got twice its
    rate, and a password guesser twice the guesses, as many times more as workers; nothing
    said so. A warning: one web process (make run) counts all."""
    backend = settings.CACHES["default"]["BACKEND"]
    if backend not in _PER_PROCESS_CACHES:
        return []
    return [
        Warning(
            "NORM_CACHE_URL is not set: each web process counts a client's trigger rate and "
            "the admin's failed logins on its own, so a client gets its rate_limit_per_minute, "
            "and a password guesser its tries before the lockout, once per process.",
            hint="Set NORM_CACHE_URL (e.g. redis://host:6379/1) on every web process.",
            id="norm.W006",
        )
    ]


@register(Tags.security)
def encryption_key_format_check(app_configs: Any, **kwargs: Any) -> list[CheckMessage]:
    """A NORM_ENCRYPTION_KEY that is no Fernet key fails only when a secret key is first
    created or signs a bridge call; every command (migrate first) says so at once."""
    for key in crypto.encryption_keys():
        try:
            Fernet(key)
        except ValueError:
            return [
                Error(
                    "NORM_ENCRYPTION_KEY holds a value that is no Fernet key (32 random "
                    "bytes, urlsafe base64; several are separated by commas).",
                    hint=_FERNET_HINT,
                    id="norm.E003",
                )
            ]
    return []


@register(Tags.database)
def encryption_key_decrypts_check(
    app_configs: Any, databases: Any = None, **kwargs: Any
) -> list[CheckMessage]:
    """A NORM_ENCRYPTION_KEY replaced rather than rotated passed every command: the live
    secret keys it does not decrypt fail each of their clients' notifications, as it
    comes to its bridge call (SigningKeyUnreadable). Checked where a command asks for the
    database (migrate, compose's job, and `check --database default`): none decrypting is
    the setting's fault, an error; some, keys stored under a key since lost, a warning."""
    from notify.models import SecretKey

    if not databases or encryption_key_format_check(app_configs):
        # A key that is no Fernet key fails every decrypt with a ValueError, migrate's
        # with a traceback: norm.E003 names it, and how to make one.
        return []
    try:
        live = list(
            SecretKey.objects.filter(revoked_at__isnull=True).values_list(
                "prefix", "encrypted", "client__name"
            )
        )
    except DatabaseError:
        return []  # no tables yet (migrate's first run), or no database to ask
    unreadable = []
    for prefix, encrypted, client in live:
        try:
            crypto.decrypt(encrypted)
        except InvalidToken:
            unreadable.append(f"{prefix}… of client '{client}'")
    if not unreadable:
        return []
    hint = (
        "Put the key they were stored with back in NORM_ENCRYPTION_KEY (after the new one, "
        "to rotate: README), or revoke them and create others."
    )
    names = ", ".join(unreadable[:10])
    if len(unreadable) > 10:
        names += f" and {len(unreadable) - 10} more"
    if len(unreadable) == len(live):
        return [
            Error(
                f"NORM_ENCRYPTION_KEY decrypts none of the {len(live)} live secret key(s) "
                f"({names}): every notification would fail SigningKeyUnreadable.",
                # It stops compose's migrate job, and with it the admin that revokes keys.
                hint=f"{hint} To revoke them before the web server is up again, run "
                "`manage.py migrate --skip-checks` first.",
                id="norm.E015",
            )
        ]
    return [
        Warning(
            f"NORM_ENCRYPTION_KEY does not decrypt the live secret key(s) {names}: their "
            "clients' notifications would fail SigningKeyUnreadable.",
            hint=hint,
            id="norm.W004",
        )
    ]


@register(Tags.compatibility)
def broker_countdown_check(app_configs: Any, **kwargs: Any) -> list[CheckMessage]:
    """Redis delivers a message again once it has waited unacknowledged for the visibility
    timeout, and a countdown waits unacknowledged in a worker, then its send runs (an
    email's up to EMAIL_SEND_DEADLINE). Held longer, it runs twice: while it still waits
    (a delay), or while it sends (a send's retry), when the copy, under the same task id,
    takes the step's claim back as a redelivery after a dead worker does, and sends again."""
    timeout = settings.CELERY_BROKER_TRANSPORT_OPTIONS.get("visibility_timeout")
    countdown, deadline = settings.NORM_BROKER_MAX_COUNTDOWN, settings.EMAIL_SEND_DEADLINE
    if timeout is None or timeout > countdown + deadline:
        return []
    return [
        Error(
            f"NORM_BROKER_MAX_COUNTDOWN ({countdown} s) and then EMAIL_SEND_DEADLINE "
            f"({deadline:g} s) do not end before CELERY_VISIBILITY_TIMEOUT ({timeout} s): "
            "Redis would deliver a delayed step again while it waits, or a send's retry "
            "while it sends, and its email would be sent twice.",
            hint="Lower NORM_BROKER_MAX_COUNTDOWN (longer delays wait in the database, for "
            "the reconciler) or EMAIL_SEND_DEADLINE, or raise CELERY_VISIBILITY_TIMEOUT.",
            id="norm.E002",
        )
    ]


@register(Tags.compatibility)
def providers_check(app_configs: Any, **kwargs: Any) -> list[CheckMessage]:
    """A provider name norm does not have (a typo, "smtp") or one of another channel was
    taken as no provider at all: every step of that channel skipped, nothing failing."""
    from messaging.providers import PROVIDERS

    known = ", ".join(f"{p.name} ({p.channel})" for p in PROVIDERS.values())
    return [
        Error(
            f"NORM_PROVIDERS gives the {channel} channel the provider {name!r}, which norm "
            "does not have for that channel.",
            hint=f"norm's providers: {known}. Leave a channel out to skip its steps.",
            id="norm.E005",
        )
        for channel, name in settings.NORM_PROVIDERS.items()
        if getattr(PROVIDERS.get(name), "channel", None) != channel
    ]


@register(Tags.compatibility)
def send_deadline_check(app_configs: Any, **kwargs: Any) -> list[CheckMessage]:
    """A step whose send runs longer than NORM_STALE_CLAIM_SECONDS is taken for one of a
    dead worker: the reconciler reopens it while its email is still being sent, and
    another worker sends it again."""
    deadline, stale = settings.EMAIL_SEND_DEADLINE, settings.NORM_STALE_CLAIM_SECONDS
    if deadline < stale:
        return []
    return [
        Error(
            f"EMAIL_SEND_DEADLINE ({deadline:g} s) is not shorter than "
            f"NORM_STALE_CLAIM_SECONDS ({stale} s): an email still being sent would be "
            "taken for one a dead worker left, and sent again.",
            hint="Lower EMAIL_SEND_DEADLINE, or raise NORM_STALE_CLAIM_SECONDS.",
            id="norm.E006",
        )
    ]


@register(Tags.compatibility)
def bridge_retry_countdown_check(app_configs: Any, **kwargs: Any) -> list[CheckMessage]:
    """An echo's retry after a bridge that is down waits on the broker however long its
    backoff (NORM_BROKER_MAX_COUNTDOWN does not bound it), and Redis delivers a message
    held unacknowledged past the visibility timeout again: the retry would run twice,
    and each copy retry in turn."""
    timeout = settings.CELERY_BROKER_TRANSPORT_OPTIONS.get("visibility_timeout")
    retries = settings.NORM_BRIDGE_MAX_RETRIES
    if timeout is None or retries < 1:
        return []
    # The last retry's (the task's retries count from 0).
    longest = pipeline.longest_backoff(settings.NORM_BRIDGE_RETRY_BACKOFF, retries - 1)
    if longest < timeout:
        return []
    return [
        Error(
            f"A bridge call's last retry may wait {longest:g} s on the broker "
            f"(NORM_BRIDGE_MAX_RETRIES {retries}, NORM_BRIDGE_RETRY_BACKOFF "
            f"{settings.NORM_BRIDGE_RETRY_BACKOFF:g} s, doubled each time and up to half as "
            f"much again), not less than CELERY_VISIBILITY_TIMEOUT ({timeout} s): Redis "
            "would deliver it again while it waits.",
            hint="Lower NORM_BRIDGE_MAX_RETRIES or NORM_BRIDGE_RETRY_BACKOFF, or raise "
            "CELERY_VISIBILITY_TIMEOUT.",
            id="norm.E007",
        )
    ]


def _smtp_backend() -> bool:
    """EMAIL_BACKEND is Django's SMTP backend or made from it: the one that reads the
    SMTP settings. Another (the console one, compose's default; a provider's API) never
    logs in nor speaks TLS, and what those settings hold changes nothing it does. One that
    cannot be imported is norm.E009's."""
    try:
        backend = import_string(settings.EMAIL_BACKEND)
    except ImportError:
        return False
    return isinstance(backend, type) and issubclass(backend, SMTPBackend)


@register(Tags.compatibility)
def email_tls_check(app_configs: Any, **kwargs: Any) -> list[CheckMessage]:
    """Django's SMTP backend refuses STARTTLS and implicit TLS at once, but only when it
    is made, for the first send: every email failed for good with that reason. Another
    backend reads neither."""
    if not (settings.EMAIL_USE_TLS and settings.EMAIL_USE_SSL) or not _smtp_backend():
        return []
    return [
        Error(
            "EMAIL_USE_TLS and EMAIL_USE_SSL are both set: the SMTP backend refuses them "
            "together, and every email would fail.",
            hint="Set EMAIL_USE_SSL for implicit TLS (port 465, usually), or EMAIL_USE_TLS "
            "for STARTTLS (port 587), not both.",
            id="norm.E008",
        )
    ]


@register(Tags.compatibility)
def email_login_check(app_configs: Any, **kwargs: Any) -> list[CheckMessage]:
    """Django's SMTP backend logs in only given both EMAIL_HOST_USER and
    EMAIL_HOST_PASSWORD: with one alone (the password's secret not mounted), it sent
    without a login, and a server that requires one refused each email as it was sent
    (530), retried until NORM_SEND_MAX_ATTEMPTS, its reason naming neither setting.
    Another backend (the console one) logs in nowhere: one alone changes nothing there,
    and failing every command for it stopped a deployment that sends no email yet."""
    if bool(settings.EMAIL_HOST_USER) == bool(settings.EMAIL_HOST_PASSWORD):
        return []
    if not _smtp_backend():
        return []
    given, missing = "EMAIL_HOST_USER", "EMAIL_HOST_PASSWORD"
    if not settings.EMAIL_HOST_USER:
        given, missing = missing, given
    return [
        Error(
            f"{given} is set and {missing} is empty: the SMTP backend logs in only with "
            "both, and would send every email without a login.",
            hint=f"Set {missing} too, or neither for a server that needs no login.",
            id="norm.E014",
        )
    ]


@register(Tags.compatibility)
def email_backend_check(app_configs: Any, **kwargs: Any) -> list[CheckMessage]:
    """EMAIL_BACKEND is imported for the first send only: a name that is no class (a
    typo, "smtp") failed every email's send as a bug in norm, run again until
    NORM_MAX_CLAIMS, while every command passed."""
    try:
        import_string(settings.EMAIL_BACKEND)
    except ImportError as exc:
        return [
            Error(
                f"EMAIL_BACKEND {settings.EMAIL_BACKEND!r} cannot be imported: {exc}",
                hint="Set EMAIL_BACKEND to a backend's dotted path, e.g. "
                "django.core.mail.backends.smtp.EmailBackend.",
                id="norm.E009",
            )
        ]
    return []


@register(Tags.compatibility)
def default_from_email_check(app_configs: Any, **kwargs: Any) -> list[CheckMessage]:
    """DEFAULT_FROM_EMAIL is the From of every email whose client has no email_from, and
    its address that of a step's from.name alone. One Django cannot send from (empty, two
    addresses, "norm@", a line break a secret's file left at its end) failed each such
    email for good as it was sent, once per notification; one of no domain ("not an
    address") went out from no domain, with a from.name from "not". It must pass what the
    admin takes as a client's email_from. Every command, as the other email settings'
    checks, not only a deployment's (compose's migrate job alone runs those): nothing in
    make run relies on a bad one, as on the development SECRET_KEY, for the default (make
    run's, and compose's for one unset or empty) passes. Whatever passes gives the
    Message-ID its domain, or the host's name (_message_id)."""
    value = settings.DEFAULT_FROM_EMAIL
    if not value.strip():
        problem = "DEFAULT_FROM_EMAIL is empty."
    else:
        problem = senders.email_from_problem(value, [])
        problem = f"DEFAULT_FROM_EMAIL: {problem}" if problem else ""
    if not problem:
        return []
    return [
        Error(
            f"{problem} The emails of clients without an email_from could not be sent.",
            hint="Set DEFAULT_FROM_EMAIL to one address: norm@example.com, or with a name, "
            "Norm <norm@example.com>.",
            id="norm.E012",
        )
    ]
