from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import statistics
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit

import dj_database_url
import psycopg
import pytest
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection

from bench import load, phases
from notify.management.commands import bench
from tests.factories import ClientFactory, SubscriberFactory


def test_a_missing_smtp_sink_is_named_before_anything_starts(monkeypatch: Any) -> None:
    """README's install line for the bench once brought gunicorn alone, and the bench then
    died on `import aiosmtpd` (its SMTP sink) with a traceback. Nothing may start first:
    past the check the command creates a database and flushes a Redis db."""
    for name in [m for m in sys.modules if m == "bench.infra" or m.startswith("aiosmtpd.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "aiosmtpd", None)  # as if not installed

    def went_on(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the bench went on without its dependencies")

    monkeypatch.setattr(bench, "_bench_urls", went_on)
    with pytest.raises(CommandError, match=r"aiosmtpd.*pip install -e '\.\[prod,test\]'"):
        call_command("bench", "--only", "trigger")


def test_the_bench_database_url_keeps_a_password_a_url_must_escape(monkeypatch: Any) -> None:
    """The bench's DATABASE_URL was written from the settings' parts as they were: a
    password with "/" or "%" (a generated one, base64) split the URL at it, and the bench
    connected as nobody, to no such host."""
    password = "p/ss%2Fw@rd?#"
    monkeypatch.setattr(
        bench,
        "settings",
        SimpleNamespace(
            DATABASES={
                "default": {
                    "ENGINE": "django.db.backends.postgresql",
                    "USER": "norm",
                    "PASSWORD": password,
                    "HOST": "127.0.0.1",
                    "PORT": 5432,
                }
            },
            CELERY_BROKER_URL="redis://127.0.0.1:6379/15",
        ),
    )
    database_url, _ = bench._bench_urls("norm_bench", 13)

    parsed = dj_database_url.parse(database_url)
    assert (parsed["USER"], parsed["PASSWORD"]) == ("norm", password)
    assert (parsed["HOST"], parsed["PORT"], parsed["NAME"]) == ("127.0.0.1", 5432, "norm_bench")


def test_the_isolation_phase_is_a_phase_of_the_bench(monkeypatch: Any) -> None:
    """`--only isolation` (a routed workflow's first message behind a broadcast's backlog)
    is accepted, and runs by default, before the fan-out: after it, the 100,000
    subscribers the fan-out leaves would all be its broadcast's audience. Its routed
    workflow is on the bench's bridge, so that the bench's client can trigger it."""
    from bench.phases import PHASES, ROUTED_WORKFLOW
    from bench.urls import bench_bridge

    class Started(Exception):
        pass

    def started(*args: Any, **kwargs: Any) -> Any:
        raise Started

    # Past the checks of its options, the command computes its URLs; nothing has started.
    # Its web server, gunicorn, is the prod extra's, which `make test` does not install.
    monkeypatch.setattr(bench, "_has", lambda module: True)
    monkeypatch.setattr(bench, "_bench_urls", started)
    with pytest.raises(Started):
        call_command("bench", "--only", "isolation", "--quick")

    assert set(PHASES) == set(bench.PHASE_NAMES)
    assert bench.PHASE_NAMES.index("isolation") < bench.PHASE_NAMES.index("fanout")
    assert ROUTED_WORKFLOW in bench_bridge.workflows


@pytest.mark.django_db(transaction=True)  # it ends in a TRUNCATE, refused under pending FK checks
def test_the_fan_outs_bulk_insert_baseline_inserts_a_notification_for_each_subscriber() -> None:
    """Only a whole bench runs the fan-out phase's baseline (a bulk INSERT of as many
    notifications): a field the model had dropped since (Notification.payload) failed it,
    a TypeError after minutes of the other phases."""
    client = ClientFactory()
    for n in range(3):
        SubscriberFactory(client=client, subscriber_id=f"f-{n}")
    inserted: list[int] = []

    def counted(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        result = execute(sql, params, many, context)
        if sql.startswith('INSERT INTO "workflows_notification"'):
            inserted.append(context["cursor"].rowcount)
        return result

    with connection.execute_wrapper(counted):
        seconds = phases._bulk_insert_seconds(client, 3)

    assert seconds > 0 and inserted == [3]


def test_a_second_ctrl_c_while_the_bench_stops_its_servers_still_stops_them_all(
    tmp_path: Any,
) -> None:
    """The bench stops its servers one by one, each given 15 s to finish (a worker's warm
    shutdown waits out its tasks): a second Ctrl-C in that wait left the servers not yet
    reached running, in sessions of their own that no terminal signal reaches."""
    from bench.infra import Infra

    infra = Infra(database_url="postgres://127.0.0.1/none", broker_url="redis://127.0.0.1/15")
    stubborn = "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    stubborn += "open(sys.argv[1], 'w').close(); time.sleep(120)"
    ready = [tmp_path / f"{n}.ready" for n in range(2)]
    servers = [infra._spawn(f"s{n}", [sys.executable, "-c", stubborn, str(ready[n])], {}) for n in range(2)]  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not all(r.exists() for r in ready) and time.monotonic() < deadline:
            time.sleep(0.05)
        second_ctrl_c = threading.Timer(1, os.kill, (os.getpid(), signal.SIGINT))
        second_ctrl_c.start()
        with pytest.raises(KeyboardInterrupt), infra:
            pass
        second_ctrl_c.join()

        assert [s.popen.poll() for s in servers] == [-signal.SIGKILL] * 2
        assert infra.processes == []
        assert not infra.dir.exists()
    finally:
        for server in servers:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.popen.pid, signal.SIGKILL)
            server.popen.wait()


@pytest.mark.skipif(not load.has_wrk(), reason="wrk is the bench's load generator when installed")
def test_every_trigger_of_the_wrk_load_has_a_transaction_id_of_its_own(tmp_path: Any) -> None:
    """wrk's two threads each number their requests from a base of their own; the script
    declared `base` a local, which hid the global thread:set gives each thread, so both
    numbered from 0: half the trigger phase's requests repeated a transactionId, and a
    repeat stores and publishes nothing (the trigger API is idempotent on it)."""
    seen: list[str] = []

    class Recorder(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            seen.append(json.loads(body)["transactionId"])
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args: Any) -> None:
            pass

    class Server(ThreadingHTTPServer):
        request_queue_size = 128  # the 32 clients all connect at once

        def handle_error(self, *args: Any) -> None:
            pass  # wrk resets its connections when it stops

    with Server(("127.0.0.1", 0), Recorder) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        bench_ = SimpleNamespace(key="k", infra=SimpleNamespace(dir=tmp_path))
        url = f"http://127.0.0.1:{server.server_port}/v1/events/trigger"
        result = phases._load(bench_, url, "run", seconds=1)  # type: ignore[arg-type]
        server.shutdown()

    assert result.tool == "wrk" and result.requests > 100
    assert len(seen) == len(set(seen))


def test_the_percentiles_are_the_50th_and_99th_of_the_sample() -> None:
    """p50 and p99 as the table prints them: the 50th and 99th of 99 cut points, over
    the samples given, in any order; a sample too small to cut is refused."""
    samples = [float(n) for n in range(101, 0, -1)]  # 1 to 101, backwards

    assert phases._percentiles(samples) == (51.0, 100.0)
    assert phases._percentiles([10.0, 20.0]) == (15.0, pytest.approx(19.9))
    with pytest.raises(statistics.StatisticsError):
        phases._percentiles([])


def _row(value: float, baseline: float, *, rate: bool, **goal: Any) -> phases.Row:
    return phases.Row("figure", value, baseline, "base", "u", rate, **goal)


def test_a_ratio_is_norm_over_baseline_for_a_rate_and_baseline_over_norm_for_a_time() -> None:
    """Above 1 is better than the baseline either way, as the table's footer says."""
    assert _row(30, 120, rate=True).ratio == 0.25  # 30 req/s beside 120
    assert _row(30, 120, rate=False).ratio == 4.0  # 30 ms beside 120
    # A side that measured nothing has no ratio (and fails a ratio's goal), not a crash.
    assert _row(0, 120, rate=True).ratio == _row(30, 0, rate=True).ratio == 0.0
    assert _row(0, 120, rate=False).ratio == _row(30, 0, rate=False).ratio == 0.0
    assert _row(0, 120, rate=True, min_ratio=0.5).passed is False


def test_a_goal_passes_at_its_bound_and_fails_past_it() -> None:
    assert _row(70, 100, rate=True, min_ratio=0.7).passed is True
    assert _row(69, 100, rate=True, min_ratio=0.7).passed is False
    assert _row(150, 90, rate=False, max_value=150).passed is True
    assert _row(150.1, 90, rate=False, max_value=150).passed is False
    assert _row(1, 1, rate=True).passed is None  # reported, no goal


def test_the_table_gives_each_row_its_figures_ratio_and_result_under_the_header() -> None:
    rows = [
        _row(284.25, 507.2, rate=True, goal="≥ 70% of bare", min_ratio=0.7),
        _row(92.6, 89.7, rate=False, goal="< 150 MB", max_value=150),
        _row(1234.5, 8.8, rate=False),
    ]

    lines = bench._table(rows).splitlines()

    assert lines[0] == ""
    assert [c.strip() for c in lines[1].split(" | ")] == [
        "figure", "norm", "baseline", "ratio", "goal", "result",
    ]  # fmt: skip
    assert set(lines[2]) == {"-", "+"} and len(lines[2]) == len(lines[1])
    cells = [[c.strip() for c in line.split(" | ")] for line in lines[3:6]]
    assert cells == [
        ["figure", "284.2 u", "507.2 u (base)", "0.56", "≥ 70% of bare", "FAIL"],
        ["figure", "92.6 u", "89.7 u (base)", "0.97", "< 150 MB", "pass"],
        ["figure", "1,234.5 u", "8.8 u (base)", "0.01", "-", "-"],
    ]
    assert len({len(line) for line in lines[1:6]}) == 1  # the columns line up
    assert lines[6:] == ["ratio: norm/baseline for rates, baseline/norm for times and sizes"]


@pytest.mark.parametrize("only", ["", ",", " , "])
def test_no_phase_to_run_is_refused_before_anything_starts(monkeypatch: Any, only: str) -> None:
    """`--only ""` ran no phase, after starting gunicorn and creating a database for it."""
    monkeypatch.setattr(bench, "_has", lambda module: True)
    monkeypatch.setattr(bench, "_bench_urls", _went_on)
    with pytest.raises(CommandError, match="no phase"):
        call_command("bench", "--only", only)


def test_the_phases_named_are_taken_with_spaces_and_a_trailing_comma(monkeypatch: Any) -> None:
    monkeypatch.setattr(bench, "_has", lambda module: True)
    monkeypatch.setattr(bench, "_bench_urls", _went_on)
    with pytest.raises(AssertionError, match="went on"):
        call_command("bench", "--only", " latency , fanout,")
    with pytest.raises(CommandError, match="unknown phase.*: fan-out, x$"):
        call_command("bench", "--only", "latency,x,fan-out")


def _went_on(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("the bench went on")


@pytest.mark.parametrize("failure", ["error", "SIGTERM"])
def test_a_bench_that_fails_or_is_stopped_stops_its_servers_and_drops_its_database(
    monkeypatch: Any, failure: str
) -> None:
    """Whatever ends a run early, a phase's error or a SIGTERM (which the bench takes as
    Ctrl-C), what it started is stopped and its database dropped."""
    from bench.infra import with_path

    database = f"norm_bench_t{uuid.uuid4().hex[:8]}"
    started: list[Any] = []

    def exists() -> bool:
        admin = with_path(bench._bench_urls(database, int(redis_db))[0], "/postgres")
        with psycopg.connect(admin) as conn:
            sql = "SELECT 1 FROM pg_database WHERE datname = %s"
            return bool(conn.execute(sql, [database]).fetchall())

    def phase_fails(self: Any, infra: Any, *args: Any, **kwargs: Any) -> Any:
        assert exists()
        started.append(infra._spawn("server", [sys.executable, "-c", "import time; time.sleep(120)"], {}))  # fmt: skip
        if failure == "SIGTERM":
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(10)  # the handler raises here
        raise RuntimeError("a phase failed")

    monkeypatch.setattr(bench, "_has", lambda module: True)
    monkeypatch.setattr(bench.Command, "_run", phase_fails)
    # Not the tests' own Redis db, which the bench refuses.
    redis_db = str((int(urlsplit(settings.CELERY_BROKER_URL).path.strip("/") or 0) + 1) % 16)
    before = signal.getsignal(signal.SIGTERM)
    expected = (CommandError, "interrupted") if failure == "SIGTERM" else (RuntimeError, "failed")
    with pytest.raises(expected[0], match=expected[1]):
        call_command("bench", "--only", "trigger", "--database", database, "--redis-db", redis_db)

    (server,) = started
    assert server.popen.poll() is not None
    assert not server.log.parent.exists()  # its log, in the bench's temporary directory
    assert signal.getsignal(signal.SIGTERM) == before
    assert not exists()


@pytest.mark.parametrize(
    ("broker", "database", "redis_db", "refused"),
    [
        ("redis://127.0.0.1:6379/12", "norm", 13, "--database norm is DATABASE_URL's own"),
        ("redis://127.0.0.1:6379/12", "norm_bench", 12, "--redis-db 12 is CELERY_BROKER_URL's"),
        ("redis://127.0.0.1:6379", "norm_bench", 0, "--redis-db 0 is CELERY_BROKER_URL's"),
        ("redis://127.0.0.1:6379/12", "norm_bench", 13, None),
    ],
)
def test_the_bench_refuses_the_database_and_redis_db_its_urls_name(
    monkeypatch: Any, broker: str, database: str, redis_db: int, refused: str | None
) -> None:
    """The bench drops its database (WITH (FORCE)) and flushes its Redis db: those that
    DATABASE_URL and CELERY_BROKER_URL name are a deployment's, whose data, connections
    and queued tasks `--database norm` or `--redis-db 12` would have taken with them."""
    engine = "django.db.backends.postgresql"
    monkeypatch.setattr(
        bench,
        "settings",
        SimpleNamespace(
            DATABASES={"default": {"ENGINE": engine, "NAME": "norm", "HOST": "127.0.0.1"}},
            CELERY_BROKER_URL=broker,
        ),
    )
    if refused is None:
        assert bench._bench_urls(database, redis_db) == (
            f"postgres://127.0.0.1:5432/{database}",
            f"redis://127.0.0.1:6379/{redis_db}",
        )
    else:
        with pytest.raises(CommandError, match=re.escape(refused)):
            bench._bench_urls(database, redis_db)


def test_celery_is_seen_to_use_the_bench_broker_its_transport_named_where_the_scheme_was(
    monkeypatch: Any,
) -> None:
    """A redis:// broker is config.redisbroker's transport, which Celery's connection
    names where the scheme stands: compared whole, every bench refused to start, "Celery
    does not use the bench's broker"."""
    from config.celery import uses_broker

    monkeypatch.setenv("CELERY_BROKER_URL", "redis://127.0.0.1:6379/13")
    assert uses_broker("redis://127.0.0.1:6379/13")
    assert not uses_broker("redis://127.0.0.1:6379/14")
