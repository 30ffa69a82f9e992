"""Settings as an operator writes them in the environment, and what norm does with them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from django.test import Client

ROOT = Path(__file__).resolve().parent.parent


def settings_from(env: dict[str, str], *names: str) -> dict[str, Any]:
    """`names` as config/settings.py reads them from `env` in a fresh process (the test
    process read its settings once, at start)."""
    script = (
        "import json, config.settings as s; "
        f"print(json.dumps({{n: getattr(s, n, None) for n in {list(names)!r}}}))"
    )
    base = {k: v for k, v in os.environ.items() if k not in env}
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env={**base, **env},
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    return json.loads(done.stdout)


def test_allowed_hosts_may_have_spaces_after_their_commas(client: Client, settings: Any) -> None:
    found = settings_from({"ALLOWED_HOSTS": "norm.example.com, localhost ,"}, "ALLOWED_HOSTS")
    settings.ALLOWED_HOSTS = found["ALLOWED_HOSTS"]

    # Every host but the first was refused with a 400 (DisallowedHost).
    assert client.get("/admin/login/", HTTP_HOST="localhost").status_code == 200
    assert client.get("/admin/login/", HTTP_HOST="norm.example.com").status_code == 200
