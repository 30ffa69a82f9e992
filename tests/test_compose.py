"""docker-compose.yml: every long-running service has a healthcheck that tests liveness.

The worker and beat had none: a worker that lost the broker for good, or a beat whose
scheduler hung (and with it the reconciler), looked as healthy as a running one.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import billiard.pool
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
CELERY = [sys.executable, "-m", "celery"]


def _services() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]


def _healthcheck(service: str) -> str:
    """The service's healthcheck as the container's shell runs it: compose reads `$$` as `$`."""
    test = _services()[service]["healthcheck"]["test"]
    assert test[0] == "CMD-SHELL", test
    return test[1].replace("$$", "$")


def test_every_long_running_service_has_a_healthcheck() -> None:
    services = _services()
    running = {name for name, s in services.items() if s.get("restart") != "no"}

    assert running == {"postgres", "redis", "web", "worker", "beat"}
    assert not [name for name in running if "healthcheck" not in services[name]]


@pytest.mark.parametrize(("service", "node"), [("worker", "celery"), ("beat", "celerybeat")])
def test_the_celery_healthchecks_ping_the_node_the_command_starts(service: str, node: str) -> None:
    command = _services()[service]["command"]

    # No -n/--hostname: the node is Celery's default, <node>@<the container's hostname>.
    assert not {"-n", "--hostname"} & set(command)
    assert not [arg for arg in command if arg.startswith("--hostname=")]
    assert shlex.split(_healthcheck(service))[:6] == [
        "celery", "-A", "config", "inspect", "ping", "-d"
    ]  # fmt: skip
    assert f"{node}@$HOSTNAME" in _healthcheck(service)
    if service == "beat":
        assert "--enable-remote-control" in command  # else beat answers no ping


def _start(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [*CELERY, "-A", "config", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


@pytest.fixture
def celery_env(tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "NORM_VAR_DIR": str(tmp_path),  # beat's schedule file
        # Beat sends nothing while the test runs: a reconcile on the shared test broker
        # would reach another run's workers.
        "NORM_RECONCILE_INTERVAL": "3600",
        # As Docker sets it in a container: the host name Celery names its nodes after.
        "HOSTNAME": socket.gethostname(),
    }


@pytest.fixture
def worker_and_beat(celery_env: dict[str, str]) -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    # The worker consumes a queue nothing sends to: it runs no task of another test.
    processes = {
        "worker": _start(["worker", "-Q", "compose-healthcheck", "-c", "1", "-P", "solo"], celery_env),
        "beat": _start(_services()["beat"]["command"][3:], celery_env),
    }  # fmt: skip
    try:
        yield processes
    finally:
        for process in processes.values():
            os.killpg(process.pid, signal.SIGCONT)
            os.killpg(process.pid, signal.SIGTERM)
        for process in processes.values():
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)


def _check(service: str, env: dict[str, str]) -> int:
    """Runs the service's healthcheck in a shell, as Docker does: its exit status."""
    command = _healthcheck(service).replace("celery ", f"{shlex.join(CELERY)} ", 1)
    return subprocess.run(
        ["sh", "-c", command], cwd=ROOT, env=env, capture_output=True, timeout=60
    ).returncode


@pytest.mark.e2e
def test_the_worker_and_beat_are_healthy_while_they_run_and_unhealthy_once_hung(
    worker_and_beat: dict[str, subprocess.Popen[bytes]], celery_env: dict[str, str]
) -> None:
    for service in ("worker", "beat"):
        deadline = time.monotonic() + 60
        while _check(service, celery_env) != 0:  # both start within seconds
            assert worker_and_beat[service].poll() is None, f"{service} exited"
            assert time.monotonic() < deadline, f"{service} never answered its healthcheck"

    # Both hung at once (their processes still there), so that the two pings' timeouts
    # (10 s each, as compose runs them) are waited out together.
    for process in worker_and_beat.values():
        os.killpg(process.pid, signal.SIGSTOP)
    with ThreadPoolExecutor() as pool:
        checks = {s: pool.submit(_check, s, celery_env) for s in worker_and_beat}
        hung = {service: check.result() for service, check in checks.items()}
    for process in worker_and_beat.values():
        os.killpg(process.pid, signal.SIGCONT)
    assert all(status != 0 for status in hung.values()), hung
    for service in worker_and_beat:
        assert _check(service, celery_env) == 0, service


def test_every_email_setting_reaches_the_containers() -> None:
    # Only the variables compose lists reach norm, and README says the SMTP ones do: one
    # left out (EMAIL_SEND_DEADLINE) was set in .env and silently not applied.
    settings = (ROOT / "config" / "settings.py").read_text()
    read = set(re.findall(r'env_\w+\(\s*"((?:EMAIL_|DEFAULT_FROM_EMAIL)\w*)"', settings))
    environment = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["x-norm"]["environment"]

    assert "EMAIL_SEND_DEADLINE" in read
    assert sorted(read - set(environment)) == []


def _interpolated(value: str, env: dict[str, str]) -> str:
    """`value` as compose interpolates it from `env`: ${NAME:-default}, ${NAME:?error}."""

    def one(match: re.Match[str]) -> str:
        name, op, rest = match.group(1), match.group(2), match.group(3)
        if env.get(name):
            return env[name]
        assert op == ":-", f"{name} must be set"
        return rest

    return re.sub(r"\$\{(\w+)(:-|:\?)([^}]*)\}", one, value)


def _seconds(duration: str) -> float:
    """A compose duration (Go's: `90s`, `1m30s`, `1.5m`) in seconds."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration)
    assert "".join(n + u for n, u in parts) == duration, f"not a duration: {duration!r}"
    return sum(float(n) * units[u] for n, u in parts)


def _default(setting: str) -> float:
    """A numeric setting's default, as config/settings.py reads it from the environment."""
    settings = (ROOT / "config" / "settings.py").read_text()
    found = re.search(rf'env_(?:int|float)\(\s*"{setting}",\s*([\d.]+)', settings)
    assert found, setting
    return float(found.group(1))


# Room for a task's queries around its outbound call: the claim before, the record after.
QUERIES_AROUND_A_CALL = 20.0


def test_docker_lets_a_stopping_worker_finish_its_longest_send() -> None:
    # A worker's warm shutdown lasts as long as the longest task it runs, and a task's
    # longest wait is its outbound call: a send's EMAIL_SEND_DEADLINE, a bridge call's
    # NORM_BRIDGE_TIMEOUT. Docker kills the worker when its grace is over: the grace was
    # 60 s, the send's deadline too, so a send begun as a deploy stopped the worker, to a
    # server slow to answer, could be killed after the server took it and before its
    # commit, to be sent again once the reconciler reopened its step. Then a pool process
    # that finished a task as the worker stopped waits up to 30 s for the worker to read
    # its result before it exits (seen in the deploy fault test), and the worker gives
    # back the messages it holds only after that: killed first, they wait for the
    # reconciler instead.
    environment = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["x-norm"]["environment"]
    assert "NORM_BRIDGE_TIMEOUT" not in environment  # else read below as EMAIL_SEND_DEADLINE is
    longest_call = max(
        float(_interpolated(environment["EMAIL_SEND_DEADLINE"], {})),
        _default("NORM_BRIDGE_TIMEOUT"),
    )
    result_wait = (
        billiard.pool.GUARANTEE_MESSAGE_CONSUMPTION_RETRY_LIMIT
        * billiard.pool.GUARANTEE_MESSAGE_CONSUMPTION_RETRY_INTERVAL
    )
    grace = _seconds(_services()["worker"]["stop_grace_period"])

    assert grace >= longest_call + QUERIES_AROUND_A_CALL + result_wait


# What `openssl rand -base64 24` or a password manager gives: / + = and the URL's own
# delimiters (@ : ? # %) among them.
STRONG_PASSWORD = "a/b+c=d@e:f?g#h%i j"


def test_a_database_password_with_a_urls_delimiters_reaches_postgresql_as_it_is() -> None:
    """Compose wrote POSTGRES_PASSWORD into DATABASE_URL as it came: a / ended the URL's
    host part there, an @ or # moved it, and norm connected to no server, or to
    another, while PostgreSQL's container took the password as typed."""
    environment = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["x-norm"]["environment"]
    env = {"POSTGRES_PASSWORD": STRONG_PASSWORD, "SECRET_KEY": "k", "NORM_ENCRYPTION_KEY": "k"}
    container = {name: _interpolated(str(value), env) for name, value in environment.items()}
    script = (
        "import json, psycopg; from django.db import connection; "
        "p = connection.get_connection_params(); "
        "print(json.dumps({k: p.get(k) for k in ('host', 'port', 'dbname', 'user')})); "
        # The password libpq takes (from the URL, or else PGPASSWORD), on a real
        # connection to the test's PostgreSQL (trust auth: any password is let in).
        "c = psycopg.connect(**{**p, 'host': '127.0.0.1', 'user': 'postgres', "
        "'dbname': 'postgres'}); print(json.dumps(c.info.password))"
    )
    done = subprocess.run(
        [sys.executable, "-c", f"import django; django.setup(); {script}"], cwd=ROOT,
        env={"PATH": os.environ["PATH"], "DJANGO_SETTINGS_MODULE": "config.settings",
             **container},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip

    assert done.returncode == 0, done.stderr[-800:]
    params, password = done.stdout.splitlines()
    assert json.loads(params) == {
        "host": "postgres",
        "port": 5432,
        "dbname": "norm",
        "user": "norm",
    }
    assert json.loads(password) == STRONG_PASSWORD
