"""norm's SDK is a distribution of its own (workflows/sdk/pyproject.toml): a product team
installs `norm_sdk` into its application without norm's server. `pip install /path/to/norm`
gave the application norm's top-level `config`, `workflows`, `notify`... (a Django project's
own `config` clashed with them) and pinned its Django, Celery and psycopg.

The wheel is built offline from a copy of workflows/sdk, installed into a folder of its own,
and used by a Python that has that folder and the venv's site-packages, but not the repo."""

from __future__ import annotations

import ast
import importlib.metadata
import json
import os
import shutil
import site
import subprocess
import sys
import tomllib
import zipfile
from email.parser import Parser
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from workflows.sdk import SDK_VERSION

ROOT = Path(__file__).resolve().parents[2]
SDK = ROOT / "workflows" / "sdk"
DIST_INFO = f"norm_sdk-{SDK_VERSION}.dist-info"
SERVER_PACKAGES = ("config", "notify", "workflows", "subscribers", "messaging")

# Runs with -S (no site: the editable install's finder, which maps `workflows` to the repo,
# is not loaded) in a folder outside the repo, without PYTHONPATH.
USER_APP = """
import json, sys

target, site_packages, server_packages = sys.argv[1], *map(json.loads, sys.argv[2:])
sys.path[:] = [target, *(p for p in sys.path if p), *site_packages]  # '' (the cwd) dropped
server = {}
for name in server_packages:
    try:
        server[name] = __import__(name).__file__
    except ModuleNotFoundError:
        server[name] = None

from norm_sdk import Bridge, Context, canonical_json, signature_header, workflow

SECRET = "sk_test_packaging"


@workflow("hello", payload_schema={
    "type": "object",
    "properties": {"name": {"type": "string", "pattern": "^\\\\w+$", "default": "you"}},
})
def hello(ctx: Context) -> None:
    ctx.step.in_app("inbox", lambda: {"body": f"Hello {ctx.payload['name']}"})


bridge = Bridge(workflows=[hello], secret_key=SECRET)


def call(method, query, body, secret=SECRET):
    raw = canonical_json(body)
    headers = {"novu-signature": signature_header(secret, raw)} if secret else {}
    status, answer, _ = bridge.handle(
        method=method, query=query, body=raw.encode() if method == "POST" else None,
        headers=headers,
    )
    return status, answer


execute = {"payload": {"name": "Ada"}, "state": [], "controls": {}, "subscriber": {}}
results = {
    "norm_sdk": sys.modules["norm_sdk"].__file__,
    "server": server,
    "discover": call("GET", {"action": "discover"}, {}),
    "execute": call("POST", {"action": "execute", "workflowId": "hello"}, execute),
    "unsigned": call("POST", {"action": "execute", "workflowId": "hello"}, execute, None),
    "django_imported": "django" in sys.modules,
}

# The adapter, with the venv's Django: what the [django] extra brings.
from django.conf import settings

settings.configure(ALLOWED_HOSTS=["testserver"])
from django.test import RequestFactory

from norm_sdk.django import bridge_view

response = bridge_view(bridge)(RequestFactory().get("/bridge", {"action": "health-check"}))
results["django"] = [response.status_code, json.loads(response.content)]
print(json.dumps(results))
"""


def _pip(*args: str | Path, cwd: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pip", *(str(arg) for arg in args)],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, f"pip {args[0]} failed:\n{done.stdout}\n{done.stderr}"


def _env() -> dict[str, str]:
    """No PYTHONPATH (the repo), and pip without the machine's configuration (an index,
    find-links, hashes required): the build and the install use what they are given."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PIP_"))}
    pip = {"PIP_CONFIG_FILE": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
    return env | pip


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The SDK's wheel, built as `pip install /path/to/norm/workflows/sdk` builds it, but
    offline (the venv's setuptools, no index) and from a copy: pip builds in the tree it is
    given, and its build/ and egg-info belong in no checkout (nor in a parallel test's)."""
    work = tmp_path_factory.mktemp("sdk-wheel")
    source = work / "sdk"
    ignore = shutil.ignore_patterns("__pycache__", "build", "*.egg-info")
    shutil.copytree(SDK, source, ignore=ignore)
    offline = ("--no-deps", "--no-build-isolation", "--no-index")
    _pip("wheel", *offline, "--wheel-dir", work, source, cwd=work)
    [built] = work.glob("*.whl")
    return built


def _metadata(wheel: Path) -> Any:
    with zipfile.ZipFile(wheel) as archive:
        text = archive.read(f"{DIST_INFO}/METADATA").decode()
    return Parser().parsestr(text)


def test_the_wheel_holds_norm_sdk_alone(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    assert wheel.name == f"norm_sdk-{SDK_VERSION}-py3-none-any.whl"
    assert {name.split("/")[0] for name in names} == {"norm_sdk", DIST_INFO}
    # py.typed: an application's type checker reads the SDK's types (tests/sdk/test_typing.py).
    files = {f"norm_sdk/{path.name}" for path in SDK.glob("*.py")} | {"norm_sdk/py.typed"}
    assert {name for name in names if name.startswith("norm_sdk/")} == files


def test_the_core_requires_neither_django_nor_the_server(wheel: Path) -> None:
    metadata = _metadata(wheel)
    requires = [Requirement(line) for line in metadata.get_all("Requires-Dist")]
    core = {r.name: str(r.specifier) for r in requires if r.marker is None}
    extras = {(r.name, str(r.marker)) for r in requires if r.marker is not None}
    # The same ranges as norm's, which runs this code and tests it with them.
    with (ROOT / "pyproject.toml").open("rb") as file:
        server = [Requirement(line) for line in tomllib.load(file)["project"]["dependencies"]]
    assert core == {r.name: str(r.specifier) for r in server if r.name in core}
    assert set(core) == {"jsonschema", "referencing", "regress"}
    assert extras == {("django", 'extra == "django"'), ("pydantic", 'extra == "pydantic"')}
    assert metadata["Name"] == "norm-sdk"
    assert metadata["Version"] == SDK_VERSION


def test_the_wheel_requires_each_library_the_sdk_imports_and_no_other(wheel: Path) -> None:
    """`referencing` (a schema's `$ref`) was imported and not required: an application got
    it only as long as jsonschema happened to require it, at a range the SDK never chose."""
    imported = set()
    for module in SDK.glob("*.py"):
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    distributions = importlib.metadata.packages_distributions()
    needed = {
        canonicalize_name(name)
        for module in imported - sys.stdlib_module_names
        for name in distributions[module]
    }
    required = [Requirement(line) for line in _metadata(wheel).get_all("Requires-Dist")]
    assert {canonicalize_name(r.name) for r in required} == needed


def test_an_application_without_norm_serves_a_signed_bridge(wheel: Path, tmp_path: Path) -> None:
    target, app = tmp_path / "site", tmp_path / "app"
    app.mkdir()
    _pip("install", "--no-deps", "--no-index", "--target", target, wheel, cwd=app)

    args = json.dumps(site.getsitepackages()), json.dumps(SERVER_PACKAGES)
    done = subprocess.run(
        [sys.executable, "-S", "-c", USER_APP, str(target), *args],
        cwd=app,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)

    # Not by accident: none of norm's server packages could be imported, the SDK was the wheel's.
    assert results["server"] == dict.fromkeys(SERVER_PACKAGES)
    assert results["norm_sdk"] == str(target / "norm_sdk" / "__init__.py")
    status, discovered = results["discover"]
    assert status == 200
    [hello] = discovered["workflows"]
    assert hello["workflowId"] == "hello"
    assert [step["stepId"] for step in hello["steps"]] == ["inbox"]
    status, executed = results["execute"]
    assert (status, executed["stepId"]) == (200, "inbox")
    assert executed["outputs"] == {"body": "Hello Ada"}
    status, refused = results["unsigned"]
    assert (status, refused["code"]) == (401, "SignatureNotFoundError")
    assert results["django_imported"] is False  # the core ran without Django
    status, health = results["django"]
    assert (status, health["sdkVersion"], health["discovered"]) == (
        200,
        SDK_VERSION,
        {"workflows": 1, "steps": 1},
    )
