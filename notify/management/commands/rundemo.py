"""`manage.py rundemo`: norm on one machine, with its demo workflows as the bridge.

Migrates, creates the `demo` client (bridge: this server's /bridge), then runs the web
server, a worker and beat until Ctrl-C, their output interleaved with a prefix.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn, TextIO

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser

from config.pipeline import all_queues
from notify import crypto
from notify.models import Client, SecretKey
from notify.services import MIN_KEY_LENGTH, client_bridge_move

STOP_TIMEOUT = 15.0
# Ctrl-C, a service manager's stop, and the terminal closing: the children run in
# sessions of their own, so a signal rundemo dies of would leave them running.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Stop(Exception):
    pass


def _stop(signum: int, frame: FrameType | None) -> NoReturn:
    raise Stop


def _demo_key(path: Path) -> str:
    """The demo client's secret key: generated once, kept so restarts reuse it, and made
    anew once it can no longer be the demo's."""
    if path.exists() and _demo_can_use(key := path.read_text().strip()):
        return key
    key = crypto.generate_key()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_text(key + "\n")
    return key


def _demo_can_use(key: str) -> bool:
    """False for a kept key revoked since (the admin's *Revoke selected keys*, the last
    step of the README's rotation) or another client's: createclient refused it, and so
    every later start, until var/demo-secret-key was found and removed by hand. So too for
    less than a key (the file left empty by a run stopped as it made it). A key the
    database does not have (var/norm.sqlite3 removed, say) is added to the demo client."""
    if len(key) < MIN_KEY_LENGTH:
        return False
    found = SecretKey.objects.filter(key_hash=crypto.hash_key(key)).select_related("client")
    return all(k.client.name == "demo" and k.revoked_at is None for k in found)


# The readiness check goes to this machine's own server, never through http_proxy.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _loopback_unproxied(addr: str) -> dict[str, str]:
    """NO_PROXY for the children, with the demo's host added: a proxy set for the outside
    world (http_proxy, as on many office machines) would otherwise carry the worker's and
    the web server's calls to the demo bridge on this machine, and fail them."""
    host = addr.rpartition(":")[0].strip("[]")
    current = os.environ.get("NO_PROXY") or os.environ.get("no_proxy") or ""
    no_proxy = ",".join(part for part in (current, host, "localhost") if part)
    return {"NO_PROXY": no_proxy, "no_proxy": no_proxy}


# Celery warns a worker run as root to drop to another user (--uid). Not for the one
# rundemo starts: it shares var/ (the database, the broker) with the web server and beat,
# which run as whoever ran `make run`, and so must it; and norm accepts JSON only, while
# Celery refuses root for pickle alone. Its own filter last, so it wins over the user's.
_ROOT_WARNING = "ignore:You're running the worker with superuser privileges"


def _warnings_filter() -> dict[str, str]:
    current = os.environ.get("PYTHONWARNINGS", "")
    return {"PYTHONWARNINGS": ",".join(part for part in (current, _ROOT_WARNING) if part)}


def _check_free(addr: str) -> None:
    """Refuse an address already served before starting anything: the web server
    would fail, but only after the worker and beat started, and a norm already
    running there would answer the readiness check and be announced as this one."""
    host, _, port = addr.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit() or int(port) > 65535:
        # runserver would take a bare port, but the demo bridge's URL needs the host.
        raise CommandError(f"--addr {addr}: give host:port, e.g. 127.0.0.1:8001")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as sock:
        # SO_REUSEADDR, as the web server binds: a port left in TIME_WAIT is free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, int(port)))
        except OSError as exc:
            # Only a taken port suggests a norm already running; not an address this
            # machine does not have, nor a host name that does not resolve.
            taken = exc.errno == errno.EADDRINUSE
            then = " (is `make run` running already?). Stop it, or pick" if taken else ". Pick"
            raise CommandError(
                f"cannot serve on {addr}: {exc.strerror}{then} another address: "
                "make run ADDR=127.0.0.1:8001"
            ) from exc


def _hold_var(var: Path, addr: str) -> int:
    """Lock var/ for this run; refuse one that another rundemo holds. A second run on
    another address (the way out of a taken port) shared the first's database and broker,
    two workers and two beats, and moved the demo client's bridge under the first.
    The kernel drops the lock with the process, however it ends (kill -9 too)."""
    var.mkdir(parents=True, exist_ok=True)
    fd = os.open(var / "rundemo.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        running = os.read(fd, 200).decode(errors="replace").strip() or "another address"
        os.close(fd)
        raise CommandError(
            f"norm is running already on {running} with {var}: stop it first (Ctrl-C "
            "where it runs), or give this one a var/ of its own: NORM_VAR_DIR=... make run"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, addr.encode())
    return fd


def _pump(name: str, stream: TextIO, lock: threading.Lock) -> None:
    for line in stream:
        with lock:
            sys.stdout.write(f"{name:<6}| {line}")
            sys.stdout.flush()


class Command(BaseCommand):
    help = "Run norm's web server, a worker and beat together, with the demo client."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--addr", default="127.0.0.1:8000", help="host:port to serve on.")
        parser.add_argument("--concurrency", type=int, default=2, help="Worker threads.")

    def handle(self, *args: Any, **options: Any) -> None:
        addr: str = options["addr"]
        var = Path(settings.VAR_DIR)
        held = _hold_var(var, addr)
        try:
            self._run(addr, var, options["concurrency"])
        finally:
            os.close(held)

    def _run(self, addr: str, var: Path, concurrency: int) -> None:
        _check_free(addr)
        if settings.CELERY_BROKER_URL.startswith("filesystem://"):
            for folder in ("broker", "broker-control"):
                (var / folder).mkdir(parents=True, exist_ok=True)
        call_command("migrate", interactive=False, verbosity=0)
        key = _demo_key(var / "demo-secret-key")
        bridge_url = f"http://{addr}/bridge"
        call_command(
            "createclient",
            "demo",
            bridge_url=bridge_url,
            secret_key=key,
            if_missing=True,
            stdout=io.StringIO(),
            # Its word that --if-missing left another bridge to the client, to change on
            # the admin page: moved just below, the banner then saying where it is now.
            stderr=io.StringIO(),
        )
        # A var/ kept from a run on another --addr has the demo client already, with
        # the bridge of that run: every trigger would answer 502, and every notification
        # still in flight would fail as sent to a bridge the client no longer has.
        client_bridge_move(client=Client.objects.get(name="demo"), bridge_url=bridge_url)

        # Each child watches this pipe and stops once rundemo is gone, even killed
        # by SIGKILL, which runs no handler (notify/management/demochild.py).
        alive, alive_w = os.pipe()
        launch = [sys.executable, "-m", "notify.management.demochild", str(alive)]
        commands = {
            "web": [*launch, "manage.py", "demoweb", addr, "--noreload"],
            # Threads, not prefork: one process keeps a single consumer on the
            # filesystem broker and a single SQLite writer per thread.
            "worker": [
                *(*launch, "-m", "celery", "-A", "config", "worker", "-l", "INFO"),
                *(
                    "-Q",
                    ",".join(all_queues()),
                    "--pool",
                    "threads",
                    "-c",
                    str(concurrency),
                ),
            ],
            "beat": [
                *(*launch, "-m", "celery", "-A", "config", "beat", "-l", "INFO"),
                *("-s", str(var / "celerybeat-schedule")),
            ],
        }
        env = {
            **os.environ,
            "NORM_DEMO_BRIDGE_SECRET": key,
            "PYTHONUNBUFFERED": "1",
            **_loopback_unproxied(addr),
            **_warnings_filter(),
        }
        lock = threading.Lock()
        processes: dict[str, subprocess.Popen[str]] = {}
        previous = {sig: signal.signal(sig, _stop) for sig in STOP_SIGNALS}
        try:
            for name, command in commands.items():
                # Own session: Ctrl-C reaches only this supervisor, which stops the
                # children in order and waits for the worker's warm shutdown.
                process = subprocess.Popen(
                    command,
                    cwd=settings.BASE_DIR,
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                    start_new_session=True,
                    pass_fds=(alive,),
                )
                processes[name] = process
                assert process.stdout is not None
                threading.Thread(
                    target=_pump, args=(name, process.stdout, lock), daemon=True
                ).start()
            self._wait_for_web(addr, processes["web"])
            with lock:
                self.stdout.write(self._banner(addr, bridge_url, key))
                # Piped (`make run | tee`, a service's log), this output is block buffered,
                # and the banner waited for a child's next line to flush it: since idle
                # reconcile ticks print nothing, for good.
                self.stdout.flush()
            while True:
                for name, process in processes.items():
                    if process.poll() is not None:
                        raise CommandError(f"{name} exited with status {process.returncode}")
                time.sleep(0.5)
        except Stop:
            with lock:
                self.stdout.write("Stopping web, worker and beat...")
                self.stdout.flush()
        finally:
            for sig in STOP_SIGNALS:
                signal.signal(sig, signal.SIG_IGN)
            _terminate(processes)
            os.close(alive)
            os.close(alive_w)
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _wait_for_web(self, addr: str, web: subprocess.Popen[str]) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if web.poll() is not None:
                raise CommandError(f"the web server exited with status {web.returncode}")
            try:
                with _DIRECT.open(f"http://{addr}/bridge", timeout=2):
                    return
            except OSError:
                time.sleep(0.3)
        raise CommandError(f"the web server did not answer on {addr} within 60 s")

    def _banner(self, addr: str, bridge_url: str, key: str) -> str:
        python = os.path.relpath(sys.executable, settings.BASE_DIR)
        manage = f"{python} manage.py"
        var = os.path.abspath(settings.VAR_DIR)
        if var != os.path.abspath(Path(settings.BASE_DIR) / "var"):
            # This run's database is in a var/ of its own (NORM_VAR_DIR, as a second
            # `make run` needs): createsuperuser without it opened the checkout's
            # var/norm.sqlite3, and failed on a missing table or made a login for
            # another run's admin.
            manage = f"NORM_VAR_DIR={shlex.quote(var)} {manage}"
        body = {
            "name": "welcome",
            "to": {"subscriberId": "ada", "email": "ada@example.com"},
            "payload": {"name": "Ada", "delaySeconds": 5},
        }
        curl = (
            f"curl -sS -X POST http://{addr}/v1/events/trigger \\\n"
            f"    -H 'Authorization: ApiKey {key}' -H 'Content-Type: application/json' \\\n"
            f"    -d {shlex.quote(json.dumps(body))}"
        )
        return (
            "\n"
            f"norm is running on http://{addr} (web, worker, beat; Ctrl-C stops all three).\n"
            f"  demo client 'demo', bridge {bridge_url}\n"
            f"  API key: {key}\n"
            f"  admin:   http://{addr}/admin (first: {manage} createsuperuser)\n"
            "Trigger the 'welcome' workflow (an in-app message now, an email 5 s later):\n"
            f"  {curl}\n"
            "The email is printed by the worker below (console email backend).\n"
        )


def _terminate(processes: dict[str, subprocess.Popen[str]]) -> None:
    """Stop beat and the worker, then the web server, which serves the worker's bridge."""
    _stop_group([process for name, process in processes.items() if name != "web"])
    _stop_group([process for name, process in processes.items() if name == "web"])


def _stop_group(processes: list[subprocess.Popen[str]]) -> None:
    """SIGTERM each child's process group, then SIGKILL what is left after a timeout."""
    for process in processes:
        if process.poll() is None:
            _signal_group(process, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    for process in processes:
        try:
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _signal_group(process, signal.SIGKILL)
            process.wait()


def _signal_group(process: subprocess.Popen[str], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)
