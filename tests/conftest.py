from __future__ import annotations

import contextlib
import gc
import json
import os
import socketserver
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import pytest
import requests
from celery.exceptions import Retry
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from django.core.cache import cache
from django.db import OperationalError, connection, transaction
from django.utils import timezone as django_timezone

from config import deadlines, pipeline
from workflows.models import Notification, Step
from workflows.sdk import Bridge
from workflows.services import echo


class FailsOnce:
    """Stands in for `fn`: its first call raises `error` (the database went away), the
    calls after it go through."""

    def __init__(self, fn: Any, error: Exception) -> None:
        self.fn, self.error, self.calls = fn, error, 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        if self.calls == 1:
            raise self.error
        return self.fn(*args, **kwargs)


def task_retry(retried: Retry) -> dict[str, Any]:
    """The retry of a task as the broker carries it: through JSON."""
    return json.loads(json.dumps({"args": retried.sig.args, "kwargs": retried.sig.kwargs}))


def on_sqlite(tmp_path: Path, script: str) -> Any:
    """Run `script` in a process of its own on `make run`'s storage, a migrated SQLite
    file and the filesystem broker in `tmp_path`, and return the `found` it leaves, read
    back as JSON: the tests run on PostgreSQL, and SQLite's differences went unseen."""
    for folder in ("broker", "broker-control"):  # as rundemo makes them
        (tmp_path / folder).mkdir(exist_ok=True)
    program = (
        "import django, json\ndjango.setup()\nfrom django.core.management import call_command\n"
        'call_command("migrate", interactive=False, verbosity=0)\n'
        f"{script}\nprint(json.dumps(found))\n"
    )
    env = os.environ | {
        "DATABASE_URL": f"sqlite:///{tmp_path / 'norm.sqlite3'}",
        "CELERY_BROKER_URL": "filesystem://localhost/",
        "NORM_VAR_DIR": str(tmp_path),
    }
    done = subprocess.run(
        [sys.executable, "-c", program], cwd=Path(__file__).parents[1],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


def ago(seconds: float) -> datetime:
    """That many seconds before now, as the pipeline's timestamps are compared."""
    return django_timezone.now() - timedelta(seconds=seconds)


def a_bug(*args: Any, **kwargs: Any) -> Any:
    """A bug in norm: what a lookup of a key the data lacks raises."""
    return {}["stepId"]


# The bounds the internal-error suites of the echo and message workers run under.
GRACE = 60
STALE = 600
MAX_CLAIMS = 3


@pytest.fixture
def bug_bounds(settings: Any) -> None:
    """A stalled row is re-driven after GRACE, a claim goes stale after STALE, and a
    bug at one point of a workflow is tried MAX_CLAIMS times."""
    settings.NORM_RECONCILE_GRACE = GRACE
    settings.NORM_STALE_CLAIM_SECONDS = STALE
    settings.NORM_MAX_CLAIMS = MAX_CLAIMS


class DatabaseAway:
    """Stands in for a query whose server went away, every time: no bug, so each stage
    leaves it to its retries. `calls` counts the tries."""

    def __init__(self, error: type[Exception] = OperationalError) -> None:
        self.calls, self.error = 0, error

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        raise self.error("server closed the connection unexpectedly")


@dataclass
class Enqueued:
    """What the pipeline handed to the broker, captured instead of sent."""

    calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = field(default_factory=list)
    # How many of the first calls a worker has taken (a test that runs them in order and
    # keeps them as a record): those are no longer in their queue.
    taken: int = 0

    def of(self, stage: pipeline.Stage) -> list[tuple[Any, ...]]:
        return [args for task, args, _ in self.calls if task == stage.task]

    def options_of(self, stage: pipeline.Stage) -> list[dict[str, Any]]:
        return [opts for task, _, opts in self.calls if task == stage.task]

    def clear(self) -> None:
        self.calls.clear()
        self.taken = 0

    def backlog(self, queue: str) -> int:
        """What `queue` holds: the calls captured for it and not yet taken, but those with
        a countdown, which a worker holds until it is over."""
        waiting = self.calls[self.taken :]
        return sum(1 for _, _, o in waiting if o["queue"] == queue and not o["countdown"])


@pytest.fixture
def enqueued(monkeypatch: pytest.MonkeyPatch) -> Enqueued:
    """Capture every hand-off between stages (after commit, as in production)."""
    captured = Enqueued()

    def fake_send_now(
        stage: pipeline.Stage,
        *args: Any,
        countdown: float | None = None,
        queue: str | None = None,
        producer: Any = None,
    ) -> None:
        captured.calls.append(
            (stage.task, args, {"countdown": countdown, "queue": queue or stage.queue})
        )

    monkeypatch.setattr(pipeline, "send_now", fake_send_now)
    monkeypatch.setattr(pipeline, "backlog", captured.backlog)
    return captured


def pytest_configure(config: pytest.Config) -> None:
    from django.conf import settings

    # Django's own hasher takes about 0.5 s a password here, on purpose, and every admin
    # test makes its user: over a minute of the suite. Only the tests' passwords use it.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    # Each test's client loads the middleware anew, and WhiteNoise's read every static
    # file of the apps (170, the admin's and Swagger UI's) each time: 0.07 s a client,
    # 40% of an API test's time. Looked up as a request asks for one, as under DEBUG.
    settings.WHITENOISE_AUTOREFRESH = True
    _a_broker_db_of_its_own(settings)


def _a_broker_db_of_its_own(settings: Any) -> None:
    """Under pytest-xdist (`make test` runs the suite in a process per core) each process
    takes its own Redis db, as pytest-django gives it its own database: an e2e test
    flushes its broker's db and its Celery workers take every task in it, so on a shared
    db they would run another process's tasks against the wrong database, or drop them.
    Process gwN takes the configured db less N (15, then 14, ...)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    url = settings.CELERY_BROKER_URL
    if not worker.startswith("gw") or not url.startswith(("redis://", "rediss://")):
        return
    parts = urlsplit(url)
    db = (int(parts.path.strip("/") or 0) - int(worker.removeprefix("gw"))) % 16
    url = urlunsplit(parts._replace(path=f"/{db}"))
    # Celery reads the variable before any setting; the tests' workers inherit it.
    settings.CELERY_BROKER_URL = os.environ["CELERY_BROKER_URL"] = url
    from config.celery import uses_broker

    if not uses_broker(url):
        raise pytest.UsageError(f"Celery does not use this process's broker {url}")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """A test's captured output, escaped as the terminal shows it where UTF-8 cannot carry
    it: pytest-xdist sends each report to the main process as UTF-8, and a lone surrogate
    a test logged (tests/sdk/test_django.py's, on purpose) crashed the process."""
    report = yield
    report.sections = [
        (title, text.encode("utf-8", "backslashreplace").decode())
        for title, text in report.sections
    ]
    return report


LOOPBACK = {"127.0.0.1", "localhost", "::1"}


@pytest.fixture(autouse=True)
def _no_network_beyond_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests talk to servers they start on loopback, never to anything else: a call to
    another host (a factory's made-up bridge URL, say) fails at once like a dead host."""
    real_request = requests.Session.request

    def guarded(self: requests.Session, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        # A URL requests refuses (no scheme, a host IDNA refuses) fails as it would.
        requests.PreparedRequest().prepare_url(url, None)
        if urlsplit(url).hostname not in LOOPBACK:
            raise requests.ConnectionError(f"tests reach no host but loopback: {url}")
        return real_request(self, method, url, *args, **kwargs)

    monkeypatch.setattr(requests.Session, "request", guarded)


# Past every deadline the tests set: a lookup that takes this long is one no call waits for.
LOOKUP_ANSWERED_AFTER = 8.0


@dataclass
class SlowLookups:
    answered: threading.Event = field(default_factory=threading.Event)  # one was answered
    made: list[str] = field(default_factory=list)  # the lookups of `localhost` begun


@pytest.fixture
def slow_lookups(monkeypatch: pytest.MonkeyPatch) -> Iterator[SlowLookups]:
    """The C library's lookups of `localhost`, and its reverse lookups of any address,
    answered (as 127.0.0.1, as `mail.example`) only after LOOKUP_ANSWERED_AFTER seconds, as
    they are when a name server is down and the resolver waits out its tries. Other names
    as they are."""
    lookups = SlowLookups()
    lookup = deadlines._system_getaddrinfo

    def slow(host: Any, port: Any, *args: Any, **kwargs: Any) -> list[Any]:
        if host == "localhost":
            lookups.made.append(host)
            time.sleep(LOOKUP_ANSWERED_AFTER)
            lookups.answered.set()
            host = "127.0.0.1"
        return lookup(host, port, *args, **kwargs)

    def slow_reverse(address: str) -> tuple[str, list[str], list[str]]:
        lookups.made.append(address)
        time.sleep(LOOKUP_ANSWERED_AFTER)
        lookups.answered.set()
        return "mail.example", [], ["127.0.0.1"]

    monkeypatch.setattr(deadlines, "_system_getaddrinfo", slow)
    monkeypatch.setattr(deadlines, "_system_gethostbyaddr", slow_reverse)
    yield lookups


@pytest.fixture
def tenant(db: None) -> tuple[Any, Any]:
    """A client and an API client authenticated with its key."""
    from tests.factories import api_for, client_with_key

    client, key = client_with_key()
    return client, api_for(key)


@pytest.fixture(autouse=True)
def _fresh_process_state() -> None:
    """Each test sees the registry, flavours and keys as its database holds them, opens
    its own SMTP connection, and logs its own warnings (none held back for an earlier's)."""
    from config import logs, memo
    from messaging.providers import DjangoEmailProvider

    memo.clear_all()
    logs.clear_all()
    DjangoEmailProvider.close()


@pytest.fixture(autouse=True)
def _no_database_session_left_behind(
    request: pytest.FixtureRequest, django_db_blocker: Any
) -> Iterator[None]:
    """A test whose threads, servers or workers used the database leaves none of their
    sessions open once it ends. A live server's thread waits on a client's keep-alive
    connection with its session open until the client's socket closes, which a client
    left unclosed does only when the garbage collector takes it. Left to the end of the
    run, the test database could not be dropped ("being accessed by other users"), and
    the warning named whichever test ran last."""
    yield
    marker = request.node.get_closest_marker("django_db")
    transactional = bool(marker and marker.kwargs.get("transaction")) or bool(
        {"transactional_db", "live_server"} & set(request.fixturenames)
    )
    if not transactional or connection.vendor != "postgresql":
        return
    left: list[tuple[Any, ...]] = []
    collected = False
    with django_db_blocker.unblock(), connection.cursor() as cursor:
        # A stopped worker's backends end a moment after the process does.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            cursor.execute("SELECT pg_stat_clear_snapshot()")
            cursor.execute(
                "SELECT pid, backend_start, state, left(query, 200) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            left = cursor.fetchall()
            if not left:
                return
            if not collected:
                # A response an exception kept (pytest.raises), in a cycle with its
                # traceback, keeps its connection: taken now, not at some later test.
                gc.collect()
                collected = True
            time.sleep(0.05)
    raise AssertionError(f"database sessions the test left open: {left}")


def while_held(
    hold: Callable[[], Any], then: Callable[[], Any], *, and_then: Callable[[], Any] | None = None
) -> tuple[Any, Any]:
    """Two transactions at once, on real connections (a `transaction=True` test).

    Runs `hold` in a transaction kept open while `then` runs in another thread and
    reaches the same rows (so waits for their locks); then `and_then` in the first
    transaction, if given, and commits. Returns what `hold` and `then` returned; an
    exception in either thread is raised here.
    """
    held, release = threading.Event(), threading.Event()
    results: dict[str, Any] = {}

    def run(name: str, work: Callable[[], Any]) -> None:
        try:
            results[name] = work()
        except Exception as exc:
            results[name + "_error"] = exc
        finally:
            connection.close()

    def first() -> Any:
        with transaction.atomic():
            value = hold()
            held.set()
            release.wait(10)
            if and_then is not None:
                and_then()
        return value

    one = threading.Thread(target=run, args=("first", first))
    one.start()
    assert held.wait(10)
    two = threading.Thread(target=run, args=("second", then))
    two.start()
    lock_waiters(1, two)  # the second waits for a lock the first holds (or has ended)
    release.set()
    one.join(20)
    two.join(20)
    for name in ("first", "second"):
        if name + "_error" in results:
            raise results[name + "_error"]
    return results["first"], results["second"]


def _lock_waiters_now(cursor: Any) -> int:
    """How many other connections to the test database wait for a lock now. PostgreSQL
    reads pg_stat_activity once a transaction and shows that until it ends: polled from
    inside one (a hook in the middle of a delete), a wait that began after the first
    look was never seen, unless the snapshot is dropped before each look."""
    cursor.execute("SELECT pg_stat_clear_snapshot()")
    cursor.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
    )
    return cursor.fetchone()[0]


def another_waits_for_a_lock() -> None:
    """Return once another connection to the test database waits for a lock."""
    deadline = time.monotonic() + 10
    with connection.cursor() as cursor:
        while time.monotonic() < deadline:
            if _lock_waiters_now(cursor):
                return
            time.sleep(0.02)
    raise AssertionError("no connection waited for a lock")


@pytest.fixture(params=["local memory", "redis"])
def counters(request: pytest.FixtureRequest, settings: Any) -> None:
    """The store of the trigger rate's and the admin logins' counters: local memory
    (`make run`, no NORM_CACHE_URL) or Redis, the production one."""
    if request.param == "redis":
        if not settings.CELERY_BROKER_URL.startswith("redis://"):
            pytest.skip("no Redis: CELERY_BROKER_URL is not redis://")
        settings.CACHES = {
            "default": {
                "BACKEND": "django.core.cache.backends.redis.RedisCache",
                "LOCATION": settings.CELERY_BROKER_URL,
                "KEY_PREFIX": f"test-{uuid.uuid4()}",  # no other run's counters
            }
        }
    else:
        cache.clear()


class InThread:
    """`work` on a thread and a connection of its own; `join` returns what it returned,
    or raises what it raised."""

    def __init__(self, work: Callable[[], Any]) -> None:
        self.result: Any = None
        self.error: Exception | None = None

        def run() -> None:
            try:
                self.result = work()
            except Exception as exc:
                self.error = exc
            finally:
                connection.close()

        self.thread = threading.Thread(target=run)
        self.thread.start()

    def join(self) -> Any:
        self.thread.join(20)
        assert not self.thread.is_alive()
        if self.error is not None:
            raise self.error
        return self.result


def lock_waiters(count: int, *started: InThread | threading.Thread) -> None:
    """Return once `count` other connections wait for a row lock, or once every thread
    of `started` has ended: a fixed run may not wait at all. A fixed bound (3 s, as it
    was) made each test whose run does not wait that much slower, and on a loaded
    machine could pass before a run that does wait had reached its lock; 30 s only
    bounds a hang."""
    assert started, "the threads that may come to wait"
    threads = [t.thread if isinstance(t, InThread) else t for t in started]
    deadline = time.monotonic() + 30
    with connection.cursor() as cursor:
        while time.monotonic() < deadline and any(t.is_alive() for t in threads):
            if _lock_waiters_now(cursor) >= count:
                return
            time.sleep(0.02)


def held(rows: Any, release: threading.Event) -> InThread:
    """Another worker's transaction holding `rows` (a queryset), as its no-key locks do
    (a subscriber command counting its run lost, a send recording its step), until
    `release`."""
    locked = threading.Event()

    def hold() -> None:
        with transaction.atomic():
            list(rows.select_for_update(no_key=True).values_list("pk", flat=True))
            locked.set()
            release.wait(10)

    holder = InThread(hold)
    assert locked.wait(10)
    return holder


class Meanwhile(InThread):
    """Runs `work` in another thread until it ends or waits for a lock (one the caller
    holds). `join` waits for the rest, and returns what `work` returned.

    A fixed second, as it was given, was a guess: on a loaded machine a work that had
    not reached its lock in time (an API call, a worker's task) ran after the caller had
    gone on, and the race the test meant did not happen, or the test failed."""

    def __init__(self, work: Callable[[], Any]) -> None:
        super().__init__(work)
        lock_waiters(1, self)


# (method, path with its query, body, headers) -> (status, JSON answer, headers)
Respond = Callable[[str, str, bytes, dict[str, str]], tuple[int, Any, Mapping[str, str]]]


def connections_to(ports: set[int]) -> int:
    """How many TCP connections this process holds open to a server on one of `ports`
    (its own descriptors only: not the other end's, when the server runs in this process
    too, which closes its side in its own time). Linux: read from /proc."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the listing's own descriptor, closed since
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    count = 0
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/self/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()  # sl, local, remote, state, ..., inode (the 10th)
            count += fields[9] in inodes and int(fields[2].rpartition(":")[2], 16) in ports
    return count


def on_the_embedded_broker(script: str, tmp_path: Path) -> str:
    """What `script` prints, run by Python in a process of its own whose broker is `make
    run`'s filesystem one, its folders in `tmp_path`."""
    for folder in ("broker", "broker-control"):  # as `make run` makes them
        (tmp_path / folder).mkdir()
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "CELERY_BROKER_URL": "filesystem://",
        "NORM_VAR_DIR": str(tmp_path),
    }
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=Path(__file__).resolve().parent.parent, env=env,
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


def serve_in_background(server: socketserver.BaseServer) -> None:
    """Serves `server` on a daemon thread until its `shutdown()`, which it looks for every
    0.01 s: at socketserver's 0.5 s, stopping the tests' servers took a minute and a half
    of the suite."""
    threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True).start()


@contextlib.contextmanager
def json_serving(respond: Respond, *, keep_alive: bool = False) -> Iterator[str]:
    """An HTTP server on 127.0.0.1 that answers every GET and POST with what `respond`
    returns, as JSON (bytes as they are: a page that is no JSON): yields its base URL,
    and stops it after. `keep_alive`: HTTP/1.1, the connection left open for the next
    call, as a bridge behind any web server (else closed after each answer)."""

    class Handler(BaseHTTPRequestHandler):
        if keep_alive:
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # the body, written after the headers, goes at once

        def _handle(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            status, answer, headers = respond(self.command, self.path, body, dict(self.headers))
            raw = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
            self.send_response(status)
            for name, value in {"content-type": "application/json", **headers}.items():
                self.send_header(name, value)
            self.send_header("content-length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        do_GET = do_POST = _handle

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    serve_in_background(server)
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


def sdk_serving(
    bridge: Bridge, *, keep_alive: bool = False
) -> contextlib.AbstractContextManager[str]:
    """norm's SDK `bridge` served over HTTP on 127.0.0.1 (json_serving's `keep_alive`):
    yields the server's base URL."""

    def respond(
        method: str, path: str, body: bytes, headers: dict[str, str]
    ) -> tuple[int, Any, Mapping[str, str]]:
        _, _, query = path.partition("?")
        return bridge.handle(
            method=method, query=dict(parse_qsl(query)), body=body, headers=headers
        )

    return json_serving(respond, keep_alive=keep_alive)


def plan_nodes(sql: str) -> list[dict[str, Any]]:
    """Every node of PostgreSQL's plan for `sql`, sequential scans disabled: a test table
    is too small for the planner to choose an index on its own."""
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute(f"EXPLAIN (FORMAT JSON) {sql}")
        (plan,) = cursor.fetchone()
    found, nodes = [], [plan[0]["Plan"]]
    while nodes:
        node = nodes.pop()
        nodes.extend(node.get("Plans", []))
        found.append(node)
    return found


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 from an internal CA (itself): no public CA signed it."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(IPv4Address("127.0.0.1"))]), False
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@pytest.fixture
def ended(
    monkeypatch: pytest.MonkeyPatch,
    django_capture_on_commit_callbacks: Callable[..., Any],
) -> Callable[[Step], Notification]:
    """The notification of `step` once its workflow has ended: a step whose message failed
    for good hands it back to the echo worker, the workflow going on (as in Novu), and
    the echo run here finds the bridge answering that nothing comes after. The bridge is
    faked at the network edge (`bridge.execute`), as the echo worker's tests fake it."""
    monkeypatch.setattr("workflows.bridge.execute", lambda *args, **kwargs: {"done": True})

    def do(step: Step) -> Notification:
        with django_capture_on_commit_callbacks(execute=True):
            echo.echo_run(notification_id=str(step.notification_id))
        return Notification.objects.get(pk=step.notification_id)

    return do
