"""`manage.py bench`: throughput and latency against real PostgreSQL, Redis and workers.

Creates its own database (`norm_bench`) on the server of DATABASE_URL and uses its own
Redis db (`--redis-db`, flushed), runs gunicorn and Celery workers on 127.0.0.1, and
prints each figure beside a baseline measured in the same run. Needs gunicorn and
aiosmtpd (`pip install -e '.[prod,test]'`); uses `wrk` as the load generator when installed.
See docs/BENCHMARKS.md.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import signal
import subprocess
import time
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn
from urllib.parse import quote, urlsplit, urlunsplit

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connections

# In the order they run: isolation before fanout, whose 100,000 subscribers would all be
# the isolation phase's broadcast's audience.
PHASE_NAMES = ("trigger", "latency", "pipeline", "isolation", "fanout")
# What the bench runs beyond norm: its web server (the `prod` extra) and the SMTP sink its
# emails go to (the `test` extra).
NEEDS = {"gunicorn": "its web server", "aiosmtpd": "its SMTP sink"}


def _interrupted(signum: int, frame: FrameType | None) -> NoReturn:
    raise KeyboardInterrupt


class Command(BaseCommand):
    help = "Benchmark norm against real PostgreSQL, Redis and Celery workers; print a table."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--only",
            default=",".join(PHASE_NAMES),
            help=f"Comma-separated phases to run, of {', '.join(PHASE_NAMES)}.",
        )
        parser.add_argument("--quick", action="store_true", help="Smaller runs (~80 s quiet).")
        parser.add_argument("--redis-db", type=int, default=13, help="Redis db to use (flushed).")
        parser.add_argument("--database", default="norm_bench", help="Database to create and drop.")

    def handle(self, *args: Any, **options: Any) -> None:
        phases = [p.strip() for p in options["only"].split(",") if p.strip()]
        if not phases:
            raise CommandError(f"no phase to run: --only takes some of {', '.join(PHASE_NAMES)}")
        unknown = set(phases) - set(PHASE_NAMES)
        if unknown:
            raise CommandError(f"unknown phase(s): {', '.join(sorted(unknown))}")
        missing = [f"{module} ({role})" for module, role in NEEDS.items() if not _has(module)]
        if missing:
            raise CommandError(
                f"the bench needs {', '.join(missing)}: pip install -e '.[prod,test]'"
            )
        database_url, broker_url = _bench_urls(options["database"], options["redis_db"])

        from bench.infra import Infra, database_recreate, with_path
        from bench.load import has_wrk

        admin_url = with_path(database_url, "/postgres")
        self._say(_machine(has_wrk()))
        previous = signal.signal(signal.SIGTERM, _interrupted)
        database_recreate(admin_url, options["database"])
        started = time.monotonic()
        try:
            with Infra(database_url=database_url, broker_url=broker_url) as infra:
                rows = self._run(
                    infra, phases, quick=options["quick"], database=options["database"]
                )
        except KeyboardInterrupt:
            raise CommandError("interrupted; every server the bench started is stopped") from None
        finally:
            connections.close_all()
            database_recreate(admin_url, options["database"], drop_only=True)
            signal.signal(signal.SIGTERM, previous)
        self._say(_table(rows))
        self._say(f"total {time.monotonic() - started:.0f} s")

    def _run(self, infra: Any, phases: list[str], *, quick: bool, database: str) -> list[Any]:
        from bench.infra import postgres_started_at
        from bench.phases import PHASES, ROUTES, Bench
        from config.celery import uses_broker
        from notify import crypto, services
        from notify.models import BridgeSync
        from workflows.registry import bridge_sync

        # This process reads and writes the bench database, and kicks off baseline tasks.
        connections.close_all()
        connections["default"].settings_dict["NAME"] = database
        # Celery's broker_url prefers this variable to any setting.
        os.environ["CELERY_BROKER_URL"] = infra.broker_url
        if not uses_broker(infra.broker_url):
            raise CommandError(f"Celery does not use the bench's broker {infra.broker_url}")
        call_command("migrate", interactive=False, verbosity=0)
        infra.flush_redis()

        key = crypto.generate_key()
        smtp_port = infra.start_smtp()
        infra.env = {
            "DATABASE_URL": infra.database_url,
            "CELERY_BROKER_URL": infra.broker_url,
            "NORM_BENCH_ENDPOINTS": "1",
            "NORM_DEMO_BRIDGE_SECRET": key,  # the bench bridge checks signatures
            # The registry stays fresh for the whole run: no discover in a measured path.
            "NORM_REGISTRY_TTL": "86400",
            # The isolation phase's routed workflow, which no other phase triggers: the
            # web server routes its trigger, the workers its every later stage.
            "NORM_WORKFLOW_QUEUES": json.dumps(ROUTES),
            "LOG_LEVEL": "WARNING",
            "EMAIL_BACKEND": "django.core.mail.backends.smtp.EmailBackend",
            "EMAIL_HOST": "127.0.0.1",
            "EMAIL_PORT": str(smtp_port),
            "PYTHONUNBUFFERED": "1",
        }
        self._say("starting gunicorn (4 workers x 8 threads) ...")
        infra.start_web(workers=4, threads=8)
        client = services.client_create(name="bench", bridge_url=f"{infra.web_url}/bench/bridge")
        services.secret_key_create(client=client, key=key)
        found = bridge_sync(client=client, bridge_url=client.bridge_url)
        sync = BridgeSync.objects.get(client=client)
        self._say(f"bridge {client.bridge_url}: {[w.workflow_id for w in found]} ({sync.flavour})")

        bench = Bench(infra=infra, client=client, key=key, quick=quick, log=self._say)
        rows = []
        for name in PHASE_NAMES:
            if name in phases:
                self._say(f"{name} ... (load average {os.getloadavg()[0]:.2f})")
                postgres_since = postgres_started_at()
                phase_rows = PHASES[name](bench)
                if postgres_started_at() != postgres_since:
                    self._say(f"  PostgreSQL restarted during {name}: its figures are disturbed")
                    for row in phase_rows:
                        row.figure += " [PostgreSQL restarted]"
                rows += phase_rows
        return rows

    def _say(self, text: str) -> None:
        self.stdout.write(text)
        self.stdout.flush()


def _has(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def _bench_urls(database: str, redis_db: int) -> tuple[str, str]:
    """The bench's database and broker URLs, from DATABASE_URL and CELERY_BROKER_URL."""
    engine = settings.DATABASES["default"]["ENGINE"]
    if "postgresql" not in engine:
        raise CommandError(
            f"the bench needs PostgreSQL (DATABASE_URL=postgres://...), not {engine}: "
            "SQLite measures nothing a deployment would see"
        )
    broker = settings.CELERY_BROKER_URL
    if not broker.startswith(("redis://", "rediss://")):
        raise CommandError(
            f"the bench needs Redis (CELERY_BROKER_URL=redis://...), not {broker.split(':')[0]}://"
        )
    db = settings.DATABASES["default"]
    # What DATABASE_URL and CELERY_BROKER_URL name is a deployment's, or a test run's: the
    # bench would drop that database (WITH (FORCE)) and flush that Redis db.
    if database == db.get("NAME"):
        raise CommandError(
            f"--database {database} is DATABASE_URL's own database, which the bench drops: "
            "name another"
        )
    if str(redis_db) == (urlsplit(broker).path.strip("/") or "0"):
        raise CommandError(
            f"--redis-db {redis_db} is CELERY_BROKER_URL's own db, which the bench flushes: "
            "name another"
        )
    # Escaped, as DATABASE_URL had them: a password's "/" or "%" would end or change it.
    user, password = (quote(db.get(part) or "", safe="") for part in ("USER", "PASSWORD"))
    auth = user + (f":{password}" if password else "") + ("@" if user else "")
    netloc = f"{auth}{db.get('HOST') or '127.0.0.1'}:{db.get('PORT') or 5432}"
    broker_parts = urlsplit(broker)
    broker_url = urlunsplit((broker_parts.scheme, broker_parts.netloc, f"/{redis_db}", "", ""))
    for host in (db.get("HOST") or "127.0.0.1", broker_parts.hostname):
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise CommandError(f"the bench runs on this machine only; {host} is not loopback")
    return f"postgres://{netloc}/{database}", broker_url


def _machine(wrk: bool) -> str:
    import celery
    import django

    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((x.partition(":")[2].strip() for x in cpuinfo if x.startswith("model name")), "?")
    meminfo = Path("/proc/meminfo").read_text().splitlines()
    memory_kb = next(int(x.split()[1]) for x in meminfo if x.startswith("MemTotal"))
    postgres = subprocess.run(
        ["psql", "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return (
        f"machine: {os.cpu_count()} CPUs ({cpu}), {memory_kb / 1024**2:.1f} GiB, "
        f"load average {os.getloadavg()[0]:.2f}\n"
        f"python {platform.python_version()}, django {django.__version__}, "
        f"celery {celery.__version__}, {postgres or 'psql ?'}, load generator "
        f"{'wrk' if wrk else 'python threads'}"
    )


def _table(rows: list[Any]) -> str:
    header = ("figure", "norm", "baseline", "ratio", "goal", "result")
    lines = [header]
    for row in rows:
        passed = {True: "pass", False: "FAIL", None: "-"}[row.passed]
        lines.append(
            (
                row.figure,
                f"{row.value:,.1f} {row.unit}",
                f"{row.baseline:,.1f} {row.unit} ({row.baseline_name})",
                f"{row.ratio:.2f}",
                row.goal or "-",
                passed,
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = [
        "",
        *(" | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in lines),
    ]
    out.insert(2, "-+-".join("-" * w for w in widths))
    return "\n".join(out) + "\nratio: norm/baseline for rates, baseline/norm for times and sizes"
