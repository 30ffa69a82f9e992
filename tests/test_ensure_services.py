"""scripts/ensure-services.sh says what it waits for and, when that never comes, what is
missing and how to start it. It waited up to 30 s in silence, then printed the bare
connection error."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "ensure-services.sh"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run(env: dict[str, str], script: Path = SCRIPT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(script)],
        env={**os.environ, "PY": sys.executable, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def _stubs(bin_dir: Path, calls: Path, *commands: str) -> None:
    """Commands that only note their arguments in `calls`: nothing is started or installed."""
    bin_dir.mkdir(exist_ok=True)
    for command in commands:
        stub = bin_dir / command
        stub.write_text(f'#!/bin/sh\necho "{command} $*" >> {calls}\n')
        stub.chmod(0o755)


def _clusters(bin_dir: Path, *lines: str) -> None:
    """A pg_lsclusters that lists `lines` as the machine's PostgreSQL clusters."""
    stub = bin_dir / "pg_lsclusters"
    stub.write_text("#!/bin/sh\n" + "".join(f"echo '{line}'\n" for line in lines))
    stub.chmod(0o755)


def _python(path: Path, *options: str) -> None:
    """An executable at `path` that runs the test run's Python with `options`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'#!/bin/sh\nexec {sys.executable} {" ".join(options)} "$@"\n')
    path.chmod(0o755)


def _checkout(tmp_path: Path) -> Path:
    """The script in a checkout of its own, without .venv; it runs from its checkout."""
    (tmp_path / "checkout" / "scripts").mkdir(parents=True)
    return Path(shutil.copy(SCRIPT, tmp_path / "checkout" / "scripts"))


def test_services_that_run_are_used_as_they_are(tmp_path: Path) -> None:
    # The test run's own PostgreSQL and Redis: checked, nothing started. Its start and
    # install commands are stubs: were either service down, the machine's own would
    # otherwise be started or installed by a test.
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls"
    _stubs(bin_dir, calls, "pg_ctlcluster", "redis-server", "apt-get")
    done = _run({"PATH": f"{bin_dir}:{os.environ['PATH']}", "ENSURE_SERVICES_WAIT": "1"})
    assert done.returncode == 0, done.stderr
    assert "starting" not in done.stdout and "waiting" not in done.stdout
    assert not calls.exists()


def test_services_that_do_not_come_up_are_named_with_how_to_start_them(tmp_path: Path) -> None:
    # Ports nothing listens on, and start commands that start nothing: the script must
    # not reach the machine's real services, nor start or install anything.
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls"
    _stubs(bin_dir, calls, "pg_ctlcluster", "redis-server", "apt-get")
    pg_port, redis_port = _free_port(), _free_port()
    # The tests' port is an older cluster's: the newest would come up where they do not look.
    _clusters(
        bin_dir,
        f"14 main {pg_port} down postgres /var/lib/postgresql/14/main "
        "/var/log/postgresql/postgresql-14-main.log",
        "16 main 5432 down postgres /var/lib/postgresql/16/main "
        "/var/log/postgresql/postgresql-16-main.log",
    )

    done = _run(
        {
            "PATH": f"{bin_dir}:{os.environ['PATH']}",
            "DATABASE_URL": f"postgres://postgres@127.0.0.1:{pg_port}/norm",
            "CELERY_BROKER_URL": f"redis://127.0.0.1:{redis_port}/0",
            "ENSURE_SERVICES_WAIT": "1",
        }
    )

    assert done.returncode == 1
    assert f"waiting up to 1 s for PostgreSQL on 127.0.0.1:{pg_port}" in done.stdout
    assert f"waiting up to 1 s for Redis on 127.0.0.1:{redis_port}" in done.stdout
    errors = done.stderr
    assert f"PostgreSQL is still not reachable on 127.0.0.1:{pg_port} after 1 s: " in errors
    assert "Connection refused" in errors  # the client's own reason
    assert (
        "Start it: pg_ctlcluster 14 main start "
        "(why it stopped: /var/log/postgresql/postgresql-14-main.log)."
    ) in errors
    assert f"Redis is still not reachable on 127.0.0.1:{redis_port} after 1 s: " in errors
    assert (
        f"Start it: redis-server --daemonize yes --bind 127.0.0.1 --port {redis_port} "
        "--save '' --appendonly no"
    ) in errors
    assert calls.read_text().splitlines() == [
        "pg_ctlcluster --skip-systemctl-redirect 14 main start",
        f"redis-server --daemonize yes --bind 127.0.0.1 --port {redis_port} --save  --appendonly no",
    ]


def test_the_checkouts_venv_checks_them_when_no_python_is_given(tmp_path: Path) -> None:
    # python3 on PATH cannot import the clients (-S: no site-packages); .venv's can.
    script, bin_dir, calls = _checkout(tmp_path), tmp_path / "bin", tmp_path / "calls"
    _stubs(bin_dir, calls, "pg_ctlcluster", "redis-server", "apt-get")
    _python(bin_dir / "python3", "-S")
    _python(script.parent.parent / ".venv" / "bin" / "python")

    done = _run({"PY": "", "PATH": f"{bin_dir}:{os.environ['PATH']}"}, script)

    assert done.returncode == 0, done.stderr
    assert not calls.exists()


def test_a_python_without_the_clients_is_named_with_what_it_lacks_at_once(
    tmp_path: Path,
) -> None:
    # No .venv, and a python3 that cannot import psycopg or redis: the checks could only
    # fail, so nothing is started or waited for.
    script, bin_dir, calls = _checkout(tmp_path), tmp_path / "bin", tmp_path / "calls"
    _stubs(bin_dir, calls, "pg_ctlcluster", "redis-server", "apt-get")
    _python(bin_dir / "python3", "-S")

    done = _run(
        {"PY": "", "PATH": f"{bin_dir}:{os.environ['PATH']}", "ENSURE_SERVICES_WAIT": "1"},
        script,
    )

    assert done.returncode == 1
    assert (
        "ensure-services: python3 (there is no .venv/bin/python) cannot import what the "
        "checks use: psycopg (No module named 'psycopg'), redis (No module named 'redis')."
    ) in done.stderr
    assert "Run make install" in done.stderr
    assert "waiting" not in done.stdout
    assert not calls.exists()


def test_a_refusal_that_waiting_cannot_change_is_said_at_once(tmp_path: Path) -> None:
    # The test run's own servers, asked as a role PostgreSQL does not have and a Redis user
    # with a wrong password: nothing to start, and nothing to wait its 30 s for.
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls"
    _stubs(bin_dir, calls, "pg_ctlcluster", "redis-server", "apt-get")
    pg = urlsplit(os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/norm"))
    broker = urlsplit(os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/15"))
    started = time.monotonic()
    done = _run(
        {
            "PATH": f"{bin_dir}:{os.environ['PATH']}",
            "DATABASE_URL": f"postgres://norm_no_such_role@{pg.hostname}:{pg.port or 5432}/norm",
            "CELERY_BROKER_URL": f"redis://norm_nobody:wrong@{broker.hostname}:{broker.port or 6379}/0",
            "ENSURE_SERVICES_WAIT": "30",
        }
    )

    assert time.monotonic() - started < 10
    assert done.returncode == 1
    assert "waiting" not in done.stdout
    errors = done.stderr
    assert (
        f"the tests cannot use PostgreSQL on {pg.hostname}:{pg.port or 5432}, and waiting "
        "would not change that: "
    ) in errors
    assert 'role "norm_no_such_role" does not exist' in errors  # the client's own reason
    assert "host all norm_no_such_role 127.0.0.1/32 trust" in errors
    assert (
        f"the tests cannot use Redis on {broker.hostname}:{broker.port or 6379}, and waiting "
        "would not change that: invalid username-password pair"
    ) in errors
    assert "redis://USER:PASSWORD@HOST:PORT/DB" in errors
    assert not calls.exists()


def test_no_cluster_on_the_tests_port_is_said_and_none_other_is_started(tmp_path: Path) -> None:
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls"
    _stubs(bin_dir, calls, "pg_ctlcluster", "redis-server", "apt-get")
    pg_port = _free_port()
    _clusters(
        bin_dir,
        "15 main 5432 down postgres /var/lib/postgresql/15/main /var/log/pg15.log",
        "16 test 5433 online postgres /var/lib/postgresql/16/test /var/log/pg16.log",
    )

    done = _run(
        {
            "PATH": f"{bin_dir}:{os.environ['PATH']}",
            "DATABASE_URL": f"postgres://postgres@127.0.0.1:{pg_port}/norm",
            "ENSURE_SERVICES_WAIT": "1",
        }
    )

    assert done.returncode == 1
    assert "PostgreSQL" not in done.stdout  # neither started nor waited for
    assert (
        f"ensure-services: no PostgreSQL cluster here is set to port {pg_port} "
        "(pg_lsclusters: 15/main on 5432, 16/test on 5433)."
    ) in done.stderr
    assert f"pg_createcluster --port {pg_port} --start VERSION NAME" in done.stderr
    assert not calls.exists()  # the test run's Redis was up: nothing started
