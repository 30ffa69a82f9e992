"""`manage.py rundemo` (`make run`) as a user runs it: a real supervisor with its web
server, worker and beat, on the test database and a filesystem broker in a temporary
var/ (hence `transaction=True`: the processes must see what is committed)."""

from __future__ import annotations

import io
import json
import os
import select
import shelve
import signal
import socket
import socketserver
import stat
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import CommandError
from django.core.servers.basehttp import WSGIRequestHandler
from django.db import connection

from notify import services as notify_services
from notify.management.commands import demoweb, rundemo
from notify.management.commands.rundemo import Command, _check_free
from notify.models import Client, SecretKey, TriggerEvent
from notify.selectors import client_by_api_key
from tests.conftest import serve_in_background
from tests.e2e.harness import alive, child_pids, free_port
from tests.factories import client_with_key
from workflows.models import Notification, Step

pytestmark = pytest.mark.django_db(transaction=True)


def _start(addr: str, var: Path, **extra_env: str) -> subprocess.Popen[str]:
    db = connection.settings_dict
    env = {
        **os.environ,
        **extra_env,
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        "NORM_VAR_DIR": str(var),
    }
    env.pop("CELERY_BROKER_URL", None)  # the embedded default: the filesystem broker
    return subprocess.Popen(
        [sys.executable, "manage.py", "rundemo", "--addr", addr],
        cwd=settings.BASE_DIR,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


# What a read took past the text it waited for, by process, for the next read.
_unread: dict[int, str] = {}


def _read_until(process: subprocess.Popen[str], text: str, timeout: float = 60.0) -> str:
    """The output up to the end of the line with `text`. Read from the pipe itself: select()
    on it missed lines a buffered readline() had taken already, and waited for output that,
    with idle reconcile ticks printing nothing, might not come."""
    assert process.stdout is not None
    fd = process.stdout.fileno()
    seen = _unread.pop(process.pid, "")
    deadline = time.monotonic() + timeout
    while text not in seen and time.monotonic() < deadline:
        if select.select([fd], [], [], 0.5)[0]:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            seen += chunk.decode(errors="replace")
    assert text in seen, seen[-3000:]
    end = seen.find("\n", seen.index(text)) + 1 or len(seen)
    _unread[process.pid] = seen[end:]
    return seen[:end]


def _trigger_welcome(
    addr: str, var: Path, payload: dict[str, Any] | None = None, to: Any = "ada"
) -> tuple[int, str]:
    """POST the demo's `welcome` to ada with the demo key, straight to the server (never
    through a proxy the environment names): the status and the body."""
    key = (var / "demo-secret-key").read_text().strip()
    request = urllib.request.Request(
        f"http://{addr}/v1/events/trigger",
        data=json.dumps({"name": "welcome", "to": to, "payload": payload or {}}).encode(),
        headers={"Authorization": f"ApiKey {key}", "Content-Type": "application/json"},
    )
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with direct.open(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


@contextmanager
def _running(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], list[int]]]:
    """A `make run` started and serving, and its children (web, worker, beat); whatever
    of them the test leaves running is killed after it."""
    demo = _start(f"127.0.0.1:{free_port()}", tmp_path)
    children: list[int] = []
    try:
        _read_until(demo, "norm is running")
        children = child_pids(demo.pid)
        yield demo, children
    finally:
        for pid in [demo.pid, *children]:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        demo.wait()


def test_closing_its_terminal_stops_web_worker_and_beat(tmp_path: Path) -> None:
    with _running(tmp_path) as (demo, children):
        assert len(children) == 3

        demo.send_signal(signal.SIGHUP)  # what closing the terminal sends
        demo.wait(timeout=30)

        deadline = time.monotonic() + 10
        while any(map(alive, children)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert [pid for pid in children if alive(pid)] == []


def test_killing_it_outright_stops_web_worker_and_beat_too(tmp_path: Path) -> None:
    # SIGKILL (kill -9, the OOM killer) runs no handler: the children must notice.
    with _running(tmp_path) as (demo, children):
        assert len(children) == 3

        demo.kill()
        demo.wait(timeout=30)

        deadline = time.monotonic() + 30
        while any(map(alive, children)) and time.monotonic() < deadline:
            time.sleep(0.2)
        # Left running, they kept the port (the next `make run` was refused) and a
        # worker consuming var/broker.
        assert [pid for pid in children if alive(pid)] == []


def test_a_worker_that_dies_stops_it_saying_so(tmp_path: Path) -> None:
    """A worker gone (its "Unrecoverable error", the OOM killer) left web and beat running
    and triggers accepted that no one would run: rundemo stops all, and says which died."""
    with _running(tmp_path) as (demo, children):
        [worker] = [
            pid
            for pid in children
            if b" worker " in Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        ]
        os.kill(worker, signal.SIGKILL)

        output, _ = demo.communicate(timeout=60)

    assert demo.returncode != 0
    assert "worker exited with status -9" in output, output[-3000:]
    assert [pid for pid in children if alive(pid)] == []


def test_a_taken_address_is_refused_before_anything_starts(tmp_path: Path) -> None:
    port = free_port()
    with socket.create_server(("127.0.0.1", port)):  # another server, or a second make run
        demo = _start(f"127.0.0.1:{port}", tmp_path)
        output, _ = demo.communicate(timeout=60)

    assert demo.returncode != 0
    assert f"cannot serve on 127.0.0.1:{port}: Address already in use" in output
    assert "norm is running" not in output
    assert "worker|" not in output and "beat  |" not in output  # nothing was started


def test_an_address_that_cannot_be_served_is_not_blamed_on_a_running_norm() -> None:
    addr = "192.0.2.1:8001"  # TEST-NET-1: documentation's, never this machine's
    with pytest.raises(CommandError) as refused:
        _check_free(addr)

    message = str(refused.value)
    assert message.startswith(f"cannot serve on {addr}: Cannot assign requested address")
    assert "running already" not in message
    assert "make run ADDR=127.0.0.1:8001" in message


def test_an_ipv6_address_that_is_free_is_served() -> None:
    """`make run ADDR=[::1]:8001`: an IPv6 host is bound as one."""
    with socket.socket(socket.AF_INET6) as probe:
        probe.bind(("::1", 0))
        port = probe.getsockname()[1]

    _check_free(f"[::1]:{port}")  # no CommandError


def test_a_port_its_last_run_left_in_time_wait_is_free() -> None:
    """A run just stopped leaves its served connections in TIME_WAIT for a minute: the web
    server binds over them (SO_REUSEADDR), and so must the check, or a restart was
    refused as though norm still ran there."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)) as browser:
            served, _ = server.accept()
            served.close()  # the server's side closes first: its port is in TIME_WAIT
            browser.recv(1)

    _check_free(f"127.0.0.1:{port}")  # no CommandError


@pytest.mark.parametrize("addr", ["8001", "localhost", "127.0.0.1:http", "127.0.0.1:80010"])
def test_an_address_that_is_no_host_and_port_is_refused_with_what_to_type(
    tmp_path: Path, addr: str
) -> None:
    # runserver takes a bare port; rundemo also needs the host for the demo bridge's
    # URL, and waited 60 s on http://8001/bridge before saying the server did not answer.
    demo = _start(addr, tmp_path)
    try:
        output, _ = demo.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        _stop(demo)
        raise

    assert demo.returncode != 0
    assert f"--addr {addr}: give host:port, e.g. 127.0.0.1:8001" in output, output[-3000:]
    assert "Traceback" not in output


def test_a_web_server_that_exits_as_it_starts_is_said_so_at_once() -> None:
    """Not after the minute the readiness check waits, as a server that did not answer."""
    web = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"], text=True)
    start = time.monotonic()

    with pytest.raises(CommandError, match="the web server exited with status 3"):
        Command()._wait_for_web(f"127.0.0.1:{free_port()}", web)
    assert time.monotonic() - start < 30


# A child stuck in its clean stop: SIGTERM ignored.
STUCK = """
import signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("ready", flush=True)
time.sleep(60)
"""


def test_a_child_that_ignores_its_stop_is_killed_after_the_stop_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A child stuck in its clean stop (a task that never returns) is killed once
    STOP_TIMEOUT has passed: Ctrl-C never hangs."""
    monkeypatch.setattr(rundemo, "STOP_TIMEOUT", 1.0)
    stuck = subprocess.Popen(
        [sys.executable, "-c", STUCK],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,  # as rundemo starts its children
    )
    assert stuck.stdout is not None and stuck.stdout.readline() == "ready\n"
    stopping = threading.Thread(target=rundemo._stop_group, args=([stuck],), daemon=True)
    try:
        stopping.start()
        stopping.join(timeout=20)
        assert not stopping.is_alive()
        assert stuck.returncode == -signal.SIGKILL
    finally:
        stuck.kill()
        stuck.communicate()


def _createsuperuser_hint(banner: str) -> str:
    return banner.split("(first: ", 1)[1].split(")", 1)[0]


def test_its_banners_createsuperuser_is_run_on_its_own_var_dir(
    tmp_path: Path, settings: Any
) -> None:
    # The README's way to a second `make run` (NORM_VAR_DIR=... make run) printed the
    # same createsuperuser as the first: pasted, it opened the checkout's
    # var/norm.sqlite3, and failed with "no such table: auth_user" or made a login that
    # this run's admin did not know.
    settings.VAR_DIR = tmp_path / "my var"
    python = os.path.relpath(sys.executable, settings.BASE_DIR)

    hint = _createsuperuser_hint(Command()._banner("127.0.0.1:8001", "", "nk_x"))

    assert hint == f"NORM_VAR_DIR='{tmp_path}/my var' {python} manage.py createsuperuser"


def test_its_banners_createsuperuser_names_no_var_dir_for_the_checkouts_own(
    settings: Any,
) -> None:
    settings.VAR_DIR = Path(settings.BASE_DIR) / "var"
    python = os.path.relpath(sys.executable, settings.BASE_DIR)

    hint = _createsuperuser_hint(Command()._banner("127.0.0.1:8001", "", "nk_x"))

    assert hint == f"{python} manage.py createsuperuser"


def _stop(demo: subprocess.Popen[str]) -> None:
    demo.send_signal(signal.SIGINT)
    demo.communicate(timeout=30)


def test_a_run_on_another_address_points_the_demo_bridge_there_and_finishes_what_was_in_flight(
    tmp_path: Path,
) -> None:
    """`make run ADDR=...` after a run elsewhere (the way out of a taken port), on the same
    var/: its triggers are discovered on this server, and the welcome the first run left
    waiting out its delay is finished by this run's bridge. It failed with
    BridgeNotAllowed, as sent to a bridge the demo client no longer had."""
    first_addr = f"127.0.0.1:{free_port()}"
    first = _start(first_addr, tmp_path)
    try:
        _read_until(first, "norm is running")
        status, body = _trigger_welcome(first_addr, tmp_path, {"delaySeconds": 20})
        assert status == 201, body
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not Step.objects.filter(step_id="wait").exists():
            time.sleep(0.2)
    finally:
        _stop(first)
    waiting = Notification.objects.get()
    # Stopped while the delay still ran: else this run finished it, and nothing is shown.
    assert waiting.status == Notification.Status.RUNNING, waiting.status
    assert not Step.objects.filter(step_id="reminder").exists()
    addr = f"127.0.0.1:{free_port()}"
    demo = _start(addr, tmp_path)  # the same var/: the demo client exists already
    try:
        # Not createclient's advice to change the bridge on the admin page, which
        # contradicted the banner's next line (the bridge moved already).
        assert "--if-missing" not in _read_until(demo, "norm is running")
        status, body = _trigger_welcome(addr, tmp_path)
        assert status == 201, body  # the bridge is discovered on this server
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            waiting.refresh_from_db()
            if waiting.status in Notification.FINAL:
                break
            time.sleep(0.5)
        assert (waiting.status, waiting.error_code) == (
            Notification.Status.COMPLETED,
            "",
        ), waiting.error
        # Skipped, ada having no email: the new run's bridge was asked for it.
        assert waiting.steps.get(step_id="reminder").status in Step.DONE
    finally:
        _stop(demo)


def test_a_kept_demo_key_revoked_since_is_made_anew_rather_than_refuse_every_start(
    tmp_path: Path,
) -> None:
    """The README's rotation ends with *Revoke selected keys*: done on the demo client's
    key, every later `make run` stopped at "that secret key is revoked, or belongs to
    another client", until var/demo-secret-key was found and removed by hand."""
    old = "nk_" + "kept-and-revoked-0123456789"
    call_command(
        "createclient", "demo", bridge_url="http://127.0.0.1:1/bridge", secret_key=old,
        stdout=io.StringIO(),
    )  # fmt: skip
    notify_services.secret_key_revoke(secret_key=SecretKey.objects.get(client__name="demo"))
    (tmp_path / "demo-secret-key").write_text(old + "\n")
    addr = f"127.0.0.1:{free_port()}"
    demo = _start(addr, tmp_path)
    try:
        output = _read_until(demo, "API key:")
        new = (tmp_path / "demo-secret-key").read_text().strip()
        assert new != old and f"API key: {new}" in output
        assert client_by_api_key(key=new) == Client.objects.get(name="demo")
        status, body = _trigger_welcome(addr, tmp_path)  # the README's curl: the file's key
        assert status == 201, body
    finally:
        _stop(demo)


@pytest.mark.parametrize("kept", ["", "\n", "nk_cut-short"])
def test_a_kept_demo_key_file_empty_or_cut_short_is_made_anew(tmp_path: Path, kept: str) -> None:
    """A file left empty (rundemo stopped between creating it and writing the key, a disk
    full) or holding less than a key: its "" was taken as the demo's key, so the client
    got a key nobody was shown and the banner an empty one, or createclient refused the
    short one, at every later start, until the file was found and removed by hand."""
    path = tmp_path / "demo-secret-key"
    path.write_text(kept)
    key = rundemo._demo_key(path)
    assert len(key) >= notify_services.MIN_KEY_LENGTH
    assert path.read_text().strip() == key


def test_a_kept_demo_key_that_is_another_clients_is_made_anew(tmp_path: Path) -> None:
    """As a revoked one: createclient refuses another client's key, and so every later
    start did, until the file was found and removed by hand."""
    _, other_key = client_with_key(name="shop")
    path = tmp_path / "demo-secret-key"
    path.write_text(other_key + "\n")

    key = rundemo._demo_key(path)

    assert key != other_key and path.read_text().strip() == key


def test_a_new_demo_key_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    """The demo client's secret key, written to var/: not for every user of the machine."""
    path = tmp_path / "var" / "demo-secret-key"

    key = rundemo._demo_key(path)

    assert path.read_text() == key + "\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_the_childrens_no_proxy_keeps_the_users_own_and_adds_the_demos_host(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The hosts the user's NO_PROXY already names (an intranet's) stay unproxied for the
    web server and the worker as for everything else the user runs."""
    monkeypatch.setenv("NO_PROXY", "intranet.example")
    monkeypatch.delenv("no_proxy", raising=False)

    found = rundemo._loopback_unproxied("[::1]:8000")

    expected = "intranet.example,::1,localhost"
    assert found == {"NO_PROXY": expected, "no_proxy": expected}


def test_a_proxy_set_for_the_outside_world_does_not_carry_the_demos_own_calls(
    tmp_path: Path,
) -> None:
    """With http_proxy set (an office machine), rundemo's readiness check and the web
    server's and worker's calls to the demo bridge on this machine went to the proxy:
    here one that refuses every connection, so nothing ran."""
    dead_proxy = f"http://127.0.0.1:{free_port()}"
    addr = f"127.0.0.1:{free_port()}"
    proxied = {"http_proxy": dead_proxy, "HTTP_PROXY": dead_proxy, "NO_PROXY": "", "no_proxy": ""}
    demo = _start(addr, tmp_path, **proxied)
    try:
        _read_until(demo, "norm is running")
        status, body = _trigger_welcome(addr, tmp_path)
        assert status == 201, body  # the web server discovered the bridge
        deadline = time.monotonic() + 60
        # The worker called the bridge: the notification recorded its first step.
        while time.monotonic() < deadline and not Step.objects.exists():
            time.sleep(0.5)
        assert Step.objects.filter(notification__subscriber__subscriber_id="ada").exists()
    finally:
        _stop(demo)


def test_its_demo_bridge_refuses_a_call_norm_did_not_sign(tmp_path: Path) -> None:
    """The demo bridge is served to whoever reaches the address: it checks each call's
    signature with the demo client's key, as Novu's bridges do, so that only norm runs
    its workflows."""
    addr = f"127.0.0.1:{free_port()}"
    demo = _start(addr, tmp_path)
    try:
        _read_until(demo, "norm is running")
        unsigned = urllib.request.Request(
            f"http://{addr}/bridge?action=execute&workflowId=welcome",
            data=b"{}",
            headers={"Content-Type": "application/json"},
        )
        direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with pytest.raises(urllib.error.HTTPError) as refused:
            direct.open(unsigned, timeout=30)
    finally:
        _stop(demo)

    assert refused.value.code == 401


def test_a_workflow_routed_to_its_own_queue_runs_under_make_run(tmp_path: Path) -> None:
    """rundemo's one worker consumed the standard queues only: a workflow that
    NORM_WORKFLOW_QUEUES sends to its own queue stayed received, and never ran."""
    addr = f"127.0.0.1:{free_port()}"
    demo = _start(addr, tmp_path, NORM_WORKFLOW_QUEUES=json.dumps({"welcome": "critical"}))
    try:
        _read_until(demo, "norm is running")
        status, body = _trigger_welcome(addr, tmp_path)
        assert status == 201, body
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not Notification.objects.exists():
            time.sleep(0.5)
        assert TriggerEvent.objects.get().status == TriggerEvent.Status.PROCESSED
        assert Notification.objects.get().subscriber.subscriber_id == "ada"
    finally:
        _stop(demo)


def _ok(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


def test_its_web_server_answers_a_burst_of_concurrent_connections() -> None:
    # Served as runserver serves (django.core.servers.basehttp.run), by rundemo's class.
    server_cls = type("Server", (socketserver.ThreadingMixIn, demoweb.Command.server_cls), {})
    server = server_cls(("127.0.0.1", 0), WSGIRequestHandler)
    server.daemon_threads = True
    server.set_app(_ok)
    serve_in_background(server)
    url = f"http://127.0.0.1:{server.server_port}/"
    start = threading.Barrier(100)  # 100 triggers POSTed at once, as a script would

    def get(_: int) -> str:
        start.wait()
        try:
            with urllib.request.urlopen(url, data=b"{}", timeout=30) as response:
                return response.read().decode()
        except OSError as error:
            return repr(error)

    try:
        with ThreadPoolExecutor(100) as pool:
            answers = list(pool.map(get, range(100)))
    finally:
        server.shutdown()
        server.server_close()

    assert [a for a in answers if a != "ok"] == []


def _first_minute(var: Path) -> str:
    """What `make run` prints while a user follows its banner: the start, then the
    `welcome` trigger to ada with an email, through to the reminder the worker prints."""
    addr = f"127.0.0.1:{free_port()}"
    demo = _start(addr, var)
    seen = ""
    try:
        seen = _read_until(demo, "norm is running")
        to = {"subscriberId": "ada", "email": "ada@example.com"}
        status, body = _trigger_welcome(addr, var, {"name": "Ada", "delaySeconds": 0}, to=to)
        assert status == 201, body
        seen += _read_until(demo, "Subject: Ada, you have an unread message")
        # The task that printed it ended: the echo after it asks the bridge what is next.
        seen += _read_until(demo, '"POST /bridge?action=execute&workflowId=welcome HTTP/1.1"')
    finally:
        demo.send_signal(signal.SIGINT)
        seen += _unread.pop(demo.pid, "") + demo.communicate(timeout=30)[0]
    return seen


@pytest.fixture(scope="module")
def first_minute(django_db_setup: None, tmp_path_factory: pytest.TempPathFactory) -> str:
    """`_first_minute` once for the tests that read it (6 to 7 s a run). Its rows stay in
    the test database until the first of those tests, transactional, empties it."""
    return _first_minute(tmp_path_factory.mktemp("first-minute"))


def test_the_first_minute_shows_no_warning_about_a_broker_host(first_minute: str) -> None:
    # The embedded default's URL, "filesystem://", named no host, which that transport
    # does not use: kombu warned "No hostname was supplied. Reverting to default
    # 'localhost'" as the worker and beat started, and as the web server first published.
    output = first_minute

    assert "No hostname was supplied" not in output, output[-3000:]


def test_the_email_the_worker_prints_is_no_warning(first_minute: str) -> None:
    # Celery logs what a task prints at WARNING: the reminder the README promises, printed
    # by the console email backend, came as two WARNING records (its text and the line
    # under it).
    output = first_minute

    assert "INFO/MainProcess] Content-Type: multipart/alternative;" in output, output[-3000:]
    assert "WARNING/MainProcess]" not in output, output[-3000:]


@pytest.mark.skipif(os.geteuid() != 0, reason="Celery warns only a worker run as root")
def test_make_run_as_root_shows_no_warning_it_cannot_act_on(first_minute: str) -> None:
    # Celery's SecurityWarning asks for --uid, which make run's worker cannot take: it
    # shares var/ (the database, the broker) with the web server and beat, which run as
    # the user too, and norm takes JSON only, where Celery refuses root for pickle alone.
    output = first_minute

    assert "superuser privileges" not in output, output[:3000]
    assert "SecurityWarning" not in output, output[:3000]


def test_a_second_make_run_on_another_address_is_refused_while_one_runs(tmp_path: Path) -> None:
    """The way out the taken port's message offers (another ADDR) started a second norm on
    the same var/: two workers and two beats on one database and broker, and the demo
    client's bridge moved to the second under the first's notifications."""
    first_addr = f"127.0.0.1:{free_port()}"
    first = _start(first_addr, tmp_path)
    try:
        _read_until(first, "norm is running")
        second = _start(f"127.0.0.1:{free_port()}", tmp_path)
        try:
            output, _ = second.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            _stop(second)
            raise

        assert second.returncode != 0
        assert f"norm is running already on {first_addr} with {tmp_path}" in output, output
        assert "worker|" not in output and "beat  |" not in output  # nothing was started
        assert Client.objects.get(name="demo").bridge_url == f"http://{first_addr}/bridge"
    finally:
        _stop(first)
    # Once the first stopped, a run on another address starts as before.
    demo = _start(f"127.0.0.1:{free_port()}", tmp_path)
    try:
        _read_until(demo, "norm is running")
    finally:
        _stop(demo)


def test_a_second_run_is_told_the_address_the_running_one_serves_not_an_older_one(
    tmp_path: Path,
) -> None:
    """The lock file keeps the address of the run that holds it: written over a longer
    one a run before left, it named a mix of both ("127.0.0.1:800123")."""
    os.close(rundemo._hold_var(tmp_path, "127.0.0.1:80123"))
    held = rundemo._hold_var(tmp_path, "127.0.0.1:8001")
    try:
        with pytest.raises(CommandError, match="running already on 127.0.0.1:8001 with"):
            rundemo._hold_var(tmp_path, "127.0.0.1:8002")
    finally:
        os.close(held)


def test_reconcile_ticks_that_find_nothing_leave_no_trace_in_the_output(tmp_path: Path) -> None:
    # Beat's "Sending due task reconcile" and the worker's "received" and "succeeded"
    # for each tick: three lines every 10 s, every tick alike, burying the rest.
    addr = f"127.0.0.1:{free_port()}"
    demo = _start(addr, tmp_path, NORM_RECONCILE_INTERVAL="0.5")
    seen = ""
    try:
        seen = _read_until(demo, "norm is running")
        time.sleep(4)
    finally:
        demo.send_signal(signal.SIGINT)
        seen += _unread.pop(demo.pid, "") + demo.communicate(timeout=30)[0]

    with shelve.open(str(tmp_path / "celerybeat-schedule"), flag="r") as schedule:
        assert schedule["entries"]["reconcile"].total_run_count >= 3  # it did tick
    assert "Sending due task reconcile" not in seen, seen[-3000:]
    assert "Task norm.reconcile[" not in seen, seen[-3000:]


def test_its_banner_is_out_at_once_when_its_output_is_piped(tmp_path: Path) -> None:
    # Piped (`make run | tee`, a service manager's log), rundemo's own output is block
    # buffered: the banner waited there for a child's next line to flush it, which since
    # idle reconcile ticks print nothing could be never.
    demo = _start(f"127.0.0.1:{free_port()}", tmp_path)
    try:
        _read_until(demo, "Quit the server with CONTROL-C.")  # the web server is up
        _read_until(demo, "norm is running", timeout=15)
    finally:
        _stop(demo)


# A program as rundemo's children are to demochild: a clean stop on SIGTERM that takes a
# while (a worker's warm shutdown), marked in a file when done.
_STOPS_CLEANLY = """
import signal, sys, time

def stop(signum, frame):
    time.sleep(1)
    with open(sys.argv[1], "w") as done:
        done.write("stopped cleanly")
    sys.exit(0)

signal.signal(signal.SIGTERM, stop)
print("started", flush=True)
if sys.argv[2] == "run":
    while True:
        time.sleep(0.1)
"""


def _demochild(tmp_path: Path, alive: int, mode: str) -> subprocess.Popen[str]:
    program = tmp_path / "program.py"
    program.write_text(_STOPS_CLEANLY)
    return subprocess.Popen(
        [sys.executable, "-m", "notify.management.demochild", str(alive), str(program)]
        + [str(tmp_path / "stopped"), mode],
        cwd=settings.BASE_DIR,
        stdout=subprocess.PIPE,
        text=True,
        pass_fds=(alive,),
    )


def test_a_child_rundemo_left_behind_is_given_its_clean_stop_in_full(tmp_path: Path) -> None:
    """rundemo killed outright: each child is stopped as rundemo would stop it, a SIGTERM
    and the time its clean stop takes (the worker finishing the tasks under way), not
    killed at once, nor only once STOP_TIMEOUT has passed."""
    alive, alive_w = os.pipe()
    child = _demochild(tmp_path, alive, "run")
    os.close(alive)
    try:
        assert child.stdout is not None and child.stdout.readline() == "started\n"
        os.close(alive_w)  # rundemo is gone
        assert child.wait(timeout=10) == 0
    finally:
        child.kill()
        child.communicate()
    assert (tmp_path / "stopped").read_text() == "stopped cleanly"


def test_a_child_whose_program_ends_exits_while_rundemo_runs(tmp_path: Path) -> None:
    """A program that ends by itself (the web server failing as it starts) ends its
    process at once, for rundemo to see and say so; rundemo's pipe holds nothing open."""
    alive, alive_w = os.pipe()
    child = _demochild(tmp_path, alive, "end")
    os.close(alive)
    try:
        assert child.wait(timeout=10) == 0
    finally:
        child.kill()
        child.communicate()
        os.close(alive_w)
    assert not (tmp_path / "stopped").exists()  # it ended by itself, told nothing
