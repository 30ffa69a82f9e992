"""The bench's moving parts: its database and Redis db, gunicorn, Celery workers, an SMTP sink.

Everything listens on 127.0.0.1, and `Infra` stops all it started when its `with` ends,
whether the run finished, failed or was interrupted.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import psycopg
import redis
import requests
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from django.conf import settings
from django.db import InterfaceError, OperationalError, connection

from config import pipeline

REPO_ROOT = Path(settings.BASE_DIR)
PRODUCT_QUEUES = ",".join(pipeline.QUEUES)
T = TypeVar("T")


def wait_for(predicate: Callable[[], T], *, timeout: float, what: str, interval: float = 0.1) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = survive_restart(predicate)
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def survive_restart(query: Callable[[], T]) -> T | None:
    """Run a polling query; None, on a fresh connection next time, if the database
    restarted under it (it happens when fault-injection tests share the machine)."""
    try:
        return query()
    except (OperationalError, InterfaceError):
        connection.close()
        return None


def postgres_started_at() -> Any:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_postmaster_start_time()")
        return cursor.fetchone()[0]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def with_path(url: str, path: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def database_recreate(admin_url: str, name: str, *, drop_only: bool = False) -> None:
    """CREATE (after DROP) or just DROP the bench's own database."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if not drop_only:
            conn.execute(f'CREATE DATABASE "{name}"')


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a process, in kB (empty once it is gone)."""
    values: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0])
    return values


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            # The command name is in parentheses and may hold spaces: split after it.
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return sorted(found)


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def tail(self, lines: int = 30) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 15.0) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout)
        self.kill()

    def kill(self) -> None:
        # Its own session: this reaches the pool children and gunicorn's workers too.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait()


class SmtpSink:
    """Accepts every message and keeps only a count."""

    def __init__(self) -> None:
        self.received = 0

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.received += 1
        return "250 Message accepted"


class Infra:
    """The servers of one bench run; `with Infra(...) as infra:` stops them all at the end."""

    def __init__(self, *, database_url: str, broker_url: str) -> None:
        self.database_url, self.broker_url = database_url, broker_url
        self.redis = redis.Redis.from_url(broker_url)
        self.dir = Path(tempfile.mkdtemp(prefix="norm-bench-"))
        self.processes: list[Process] = []
        self.env: dict[str, str] = {}
        self._smtp: Controller | None = None
        self.smtp = SmtpSink()
        self.web_url = ""

    def __enter__(self) -> Infra:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            while self.processes:
                self.processes[-1].stop()
                self.processes.pop()
        finally:
            # A second Ctrl-C, while a server takes its time to stop, cuts the waiting
            # short, not the stopping: what is left is killed at once.
            for process in self.processes:
                process.kill()
            self.processes.clear()
            if self._smtp is not None:
                self._smtp.stop()
                self._smtp = None
            shutil.rmtree(self.dir, ignore_errors=True)  # the servers' logs, wrk's scripts

    def start_smtp(self) -> int:
        logging.getLogger("mail.log").setLevel(logging.WARNING)  # a line per connection
        port = free_port()
        self._smtp = Controller(self.smtp, hostname="127.0.0.1", port=port)
        self._smtp.start()
        return port

    def _spawn(self, name: str, command: list[str], extra_env: dict[str, str]) -> Process:
        log = self.dir / f"{name}.log"
        with log.open("wb") as out:
            popen = subprocess.Popen(
                command,
                cwd=REPO_ROOT,
                env={**os.environ, **self.env, **extra_env},
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        process = Process(name, popen, log)
        self.processes.append(process)
        return process

    def stop(self, process: Process) -> None:
        process.stop()
        self.processes.remove(process)

    def start_web(self, *, workers: int, threads: int) -> Process:
        port = free_port()
        command = [sys.executable, "-m", "gunicorn", "config.wsgi", "-b", f"127.0.0.1:{port}"]
        command += ["--workers", str(workers), "--threads", str(threads), "--backlog", "256"]
        web = self._spawn("web", command, {})
        self.web_url = f"http://127.0.0.1:{port}"

        def answers() -> bool:
            if not web.alive():
                raise RuntimeError(f"gunicorn exited:\n{web.tail()}")
            with contextlib.suppress(requests.RequestException):
                return requests.get(f"{self.web_url}/bench/bridge", timeout=2).status_code < 500
            return False

        wait_for(answers, timeout=60, what="gunicorn")
        return web

    def start_worker(self, name: str, *, queues: str, concurrency: int) -> Process:
        ready = self.dir / f"{name}.ready"
        command = [sys.executable, "-m", "celery", "-A", "config", "worker", "-l", "WARNING"]
        command += ["-Q", queues, "-c", str(concurrency), "--pool", "prefork"]
        command += ["-n", f"{name}@bench", "-I", "bench.tasks"]
        # No mingle/gossip/heartbeat: the bench's workers ignore any other on the machine.
        command += ["--without-mingle", "--without-gossip", "--without-heartbeat"]
        worker = self._spawn(name, command, {"BENCH_READY_FILE": str(ready)})

        def is_ready() -> bool:
            if not worker.alive():
                raise RuntimeError(f"worker {name} exited:\n{worker.tail()}")
            return ready.exists() and len(children_of(worker.popen.pid)) >= concurrency

        wait_for(is_ready, timeout=90, what=f"worker {name}")
        return worker

    def queue_lengths(self) -> dict[str, int]:
        names = [*PRODUCT_QUEUES.split(","), "bench"]
        return {name: int(self.redis.llen(name)) for name in names}

    def flush_redis(self) -> None:
        self.redis.flushdb()
