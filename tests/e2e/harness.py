"""The moving parts of the end-to-end tests: Celery processes, an SMTP server, a bridge proxy."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from email import message_from_bytes
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import requests
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from django.utils import timezone

from config import pipeline
from tests.conftest import serve_in_background

REPO_ROOT = Path(__file__).resolve().parents[2]
QUEUES = ",".join(pipeline.QUEUES)

T = TypeVar("T")


def wait_for(
    predicate: Callable[[], T], *, timeout: float = 60.0, interval: float = 0.2, what: str = ""
) -> T:
    """Poll until `predicate` returns something truthy, and return it."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what or predicate}")
        time.sleep(interval)


def api_post(
    base_url: str, key: str, path: str, body: dict[str, Any], *, timeout: float = 30.0
) -> requests.Response:
    """POST to norm's API with a client's key, as Novu's SDKs do."""
    return requests.post(
        f"{base_url}{path}", json=body, headers={"Authorization": f"ApiKey {key}"}, timeout=timeout
    )


def recipients(*names: str) -> list[dict[str, str]]:
    """Trigger recipients with an email address each."""
    return [{"subscriberId": n, "email": f"{n}@example.com"} for n in names]


def child_pids(pid: int) -> list[int]:
    """The processes whose parent is `pid`, read from /proc."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            children.append(int(stat.parent.name))
    return children


def alive(pid: int) -> bool:
    """Whether the process runs (a zombie, exited but not yet reaped, does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- Celery worker and beat ---------------------------------------------------------------


@dataclass
class CeleryProcess:
    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def tail(self, lines: int = 60) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """Stops it at once. The test is over: what its tasks would still do is not looked
        at, and a warm shutdown (SIGTERM) took 2 to 3 s a test, a minute of the suite."""
        # The pool's children share the session started for the main process.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()


def celery_start(
    kind: str, *, env: dict[str, str], log_dir: Path, include: str = "", queues: str = QUEUES
) -> CeleryProcess:
    """`include`: a module of the tests the worker imports too (-I): a fault to inject.
    `queues`: those a worker consumes (-Q), every stage's by default."""
    name = f"e2e-{kind}-{uuid.uuid4().hex[:8]}"
    log = log_dir / f"{name}.log"
    if kind == "worker":
        # No mingle/gossip/heartbeat: another worker on the same broker must not talk to this one.
        extra = ["-Q", queues, "--pool", "prefork", "-c", "2", "-n", f"{name}@%h"]
        extra += ["--without-mingle", "--without-gossip", "--without-heartbeat"]
        extra += ["-I", include] if include else []
    else:
        extra = ["-s", str(log_dir / f"{name}-schedule")]
    command = [sys.executable, "-m", "celery", "-A", "config", kind, "--loglevel", "INFO"]
    with log.open("wb") as out:
        process = subprocess.Popen(
            [*command, *extra],
            cwd=REPO_ROOT,
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return CeleryProcess(name=name, process=process, log=log)


def celery_wait_ready(proc: CeleryProcess, *, marker: str, timeout: float = 60.0) -> None:
    def ready() -> bool:
        if proc.process.poll() is not None:
            raise AssertionError(f"{proc.name} exited early:\n{proc.tail()}")
        return marker in proc.log.read_text(errors="replace")

    try:
        wait_for(ready, timeout=timeout, what=f"{proc.name} to be ready")
    except AssertionError:
        proc.stop()
        raise AssertionError(f"{proc.name} is not ready:\n{proc.tail()}") from None


# --- SMTP -----------------------------------------------------------------------------------


@dataclass
class Received:
    recipients: list[str]
    subject: str
    arrived_at: datetime


@dataclass
class SmtpRecorder:
    """An aiosmtpd handler that keeps every message it accepts, and refuses for good
    (550 on RCPT, as a server does a mailbox it has not) each address in `refused`."""

    messages: list[Received] = field(default_factory=list)
    refused: set[str] = field(default_factory=set)

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if address in self.refused:
            return f"550 5.1.1 <{address}>: mailbox unavailable"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        parsed = message_from_bytes(envelope.original_content or b"")
        recipients = [str(r) for r in envelope.rcpt_tos]
        self.messages.append(Received(recipients, str(parsed["Subject"]), timezone.now()))
        return "250 Message accepted"

    def to(self, address: str) -> list[Received]:
        return [m for m in self.messages if address in m.recipients]


def smtp_start() -> tuple[Controller, SmtpRecorder]:
    recorder = SmtpRecorder()
    controller = Controller(recorder, hostname="127.0.0.1", port=free_port())
    controller.start()
    return controller, recorder


# --- a bridge stand-in over HTTP ---------------------------------------------------------------

# Given the 1-based number of an execute call: a (status, JSON body) to answer with, or None
# to pass the call through to the real bridge.
ExecuteScript = Callable[[int], tuple[int, dict[str, Any]] | None]


class BridgeProxy:
    """A loopback server in front of a real bridge that can answer `execute` itself."""

    def __init__(self, upstream: str, script: ExecuteScript) -> None:
        self.upstream, self.script = upstream, script
        self.execute_calls = 0
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/bridge"

    def __enter__(self) -> BridgeProxy:
        serve_in_background(self.server)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _answer(
        self, method: str, query: str, body: bytes, headers: dict[str, str]
    ) -> requests.Response | tuple[int, dict[str, Any]]:
        if "action=execute" in query:
            with self._lock:
                self.execute_calls += 1
                number = self.execute_calls
            scripted = self.script(number)
            if scripted is not None:
                return scripted
        return requests.request(
            method, f"{self.upstream}?{query}", data=body or None, headers=headers, timeout=30
        )

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def _relay(self) -> None:
                query = self.path.partition("?")[2]
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                headers = {
                    k: v
                    for k, v in self.headers.items()
                    if k.lower() in ("content-type", "novu-signature", "x-novu-signature")
                }
                answer = proxy._answer(self.command, query, body, headers)
                if isinstance(answer, tuple):
                    status, content = answer[0], json.dumps(answer[1]).encode()
                else:
                    status, content = answer.status_code, answer.content
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            do_GET = do_POST = _relay

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler
