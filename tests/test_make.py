"""The Makefile's venv on a machine whose python3 is older than norm needs (Ubuntu 22.04's
3.10): `make run` failed deep in pip, on cronsim's Requires-Python, and every later run,
whatever PYTHON it was given, reused the .venv made with it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _checkout(tmp_path: Path) -> Path:
    """The Makefile and pyproject.toml in a checkout of their own, without .venv."""
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy(ROOT / name, checkout)
    return checkout


def _python_310(path: Path) -> Path:
    """The test run's Python, told it is 3.10.13 (sitecustomize), at `path`. It makes no
    venv and runs no pip: the Makefile must refuse it before either, and were it not
    refused, a venv or pip run by a test would install from the package index."""
    site = path.parent / "site-3.10"
    site.mkdir(parents=True)
    (site / "sitecustomize.py").write_text(
        "import sys\nsys.version_info = (3, 10, 13, 'final', 0)\nsys.version = '3.10.13'\n"
    )
    path.write_text(
        "#!/bin/sh\n"
        'case "$1 $2" in "-m venv"|"-m pip") echo "$0 $1 $2 ran"; exit 1;; esac\n'
        f'PYTHONPATH={site} exec {sys.executable} "$@"\n'
    )
    path.chmod(0o755)
    return path


def _make(checkout: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "--no-print-directory", *args],
        cwd=checkout,
        env={**os.environ, "MAKEFLAGS": ""},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_python_older_than_3_11_is_refused_by_name_before_a_venv_is_made(
    tmp_path: Path,
) -> None:
    checkout = _checkout(tmp_path)
    old = _python_310(tmp_path / "bin" / "python3")
    done = _make(checkout, "run", f"PYTHON={old}")
    assert done.returncode != 0
    assert "ran" not in done.stdout, done.stdout
    assert f"norm needs Python 3.11 or later, and {old} is" in done.stdout, done.stdout
    assert "make run PYTHON=python3.11" in done.stdout
    assert not (checkout / ".venv").exists()


def test_a_venv_made_with_an_older_python_says_to_make_clean(tmp_path: Path) -> None:
    # One made before the check, or by hand: pip would fail in it as above, for good.
    checkout = _checkout(tmp_path)
    _python_310(checkout / ".venv" / "bin" / "python")
    done = _make(checkout, "run", f"PYTHON={sys.executable}")
    assert done.returncode != 0
    assert "ran" not in done.stdout, done.stdout
    assert "needs Python 3.11 or later: make clean, then make run" in done.stdout, done.stdout
    assert not (checkout / ".venv" / ".installed-pyproject").exists()


def test_make_run_on_a_var_dir_of_its_own_leaves_no_var_in_the_checkout(tmp_path: Path) -> None:
    # The Makefile made var/broker and var/broker-control in the checkout before rundemo,
    # which makes them where NORM_VAR_DIR says: a second run given its own var/ left an
    # empty var/ there, in which a createsuperuser without NORM_VAR_DIR then made an
    # empty database ("no such table: auth_user").
    checkout = _checkout(tmp_path)
    venv = checkout / ".venv"
    (venv / "bin").mkdir(parents=True)
    ran = tmp_path / "ran"
    python = venv / "bin" / "python"
    python.write_text(f'#!/bin/sh\necho "$@" > {ran}\n')
    python.chmod(0o755)
    (venv / ".installed-pyproject").touch()  # installed already: no pip

    done = subprocess.run(
        ["make", "--no-print-directory", "run"],
        cwd=checkout,
        env={**os.environ, "MAKEFLAGS": "", "NORM_VAR_DIR": str(tmp_path / "own-var")},
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert done.returncode == 0, done.stdout + done.stderr
    assert ran.read_text() == "manage.py rundemo --addr 127.0.0.1:8000\n"
    assert not (checkout / "var").exists()
