"""A payload schema's patterns cannot hold the web process (notify.schema_checks): a
pattern that backtracks (`^(a+)+$`) took time doubling with each character of the
value, holding the GIL, and one trigger stopped every request of its gunicorn worker
until gunicorn killed it."""

from __future__ import annotations

import multiprocessing.util
import os
import signal
from typing import Any

import pytest

from notify import schema_checks
from tests.conftest import sdk_serving
from tests.factories import api_for, client_with_key
from workflows.sdk import Bridge, Context, workflow

pytestmark = pytest.mark.django_db

TRIGGER = "/v1/events/trigger"
# Matched by regress (a `pattern`, as JavaScript matches it) and by Python's `re` (a
# `patternProperties` key): both backtrack on a run of "a" that ends otherwise, for
# seconds at these lengths, for years at fifty.
NESTED = "^(a+)+$"


@workflow(
    "signup",
    payload_schema={
        "type": "object",
        "properties": {"code": {"type": "string", "pattern": NESTED}},
    },
)
def signup(ctx: Context) -> None:
    ctx.step.in_app("inbox", lambda: {"body": "Welcome"})


@workflow(
    "tagged",
    payload_schema={"type": "object", "patternProperties": {NESTED: {"type": "string"}}},
)
def tagged(ctx: Context) -> None:
    ctx.step.in_app("inbox", lambda: {"body": "Tagged"})


@pytest.fixture
def api(settings: Any) -> Any:
    settings.NORM_SCHEMA_CHECK_SECONDS = 0.2
    client, key = client_with_key()
    with sdk_serving(Bridge(workflows=[signup, tagged], secret_key=key)) as url:
        client.bridge_url = f"{url}/bridge"
        client.save(update_fields=["bridge_url"])
        yield api_for(key)


@pytest.mark.parametrize(
    ("name", "payload"),
    [
        ("signup", {"code": "a" * 28 + "!"}),
        ("tagged", {"a" * 26 + "!": "x"}),
    ],
    ids=["pattern", "patternProperties"],
)
def test_a_pattern_that_backtracks_on_the_payload_is_a_400_within_the_deadline(
    api: Any, name: str, payload: dict[str, Any]
) -> None:
    answer = api.post(TRIGGER, {"name": name, "to": "ann", "payload": payload}, format="json")

    assert answer.status_code == 400, answer.content
    error = answer.json()
    assert error["code"] == "invalid_payload"
    assert "took longer than 0.2 s to check against the schema" in error["message"]

    # The helper killed with the check is started anew for the next one.
    refused = api.post(
        TRIGGER, {"name": "signup", "to": "ann", "payload": {"code": "ab"}}, format="json"
    )
    accepted = api.post(
        TRIGGER, {"name": "signup", "to": "ann", "payload": {"code": "aaa"}}, format="json"
    )
    assert refused.status_code == 400
    assert "'ab' does not match '^(a+)+$'" in refused.json()["message"]
    assert accepted.status_code == 201, accepted.content


def test_a_process_forked_after_a_check_checks_with_a_helper_of_its_own(settings: Any) -> None:
    """Celery's prefork workers and gunicorn's are forks of a process that imported
    notify.schema_checks: one forked after its parent had run a check inherited the
    parent's helper and forkserver, and its every patterned check failed (a 500): the
    helper can be asked only by its parent, the forkserver is no child of the fork."""
    settings.NORM_SCHEMA_CHECK_SECONDS = 5
    schema = {"type": "object", "properties": {"code": {"type": "string", "pattern": NESTED}}}
    assert [e.message for e in schema_checks.errors(schema, {"code": "ab"})]
    parents = schema_checks._helper._process
    assert parents is not None

    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its answer, or what it raised, down the pipe; no pytest
        try:
            said = [e.message for e in schema_checks.errors(schema, {"code": "ab"})][0]
        except BaseException as exc:  # any of it is the test's failure
            said = f"raised {exc!r}"
        os.write(write, said.encode())
        try:
            # What the child's interpreter runs as it exits (atexit's): multiprocessing
            # ends the daemon processes it takes for its children, the parent's helper
            # among them unless the fork forgot it.
            multiprocessing.util._exit_function()  # type: ignore[attr-defined]
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as answer:
        said = answer.read().decode()
    os.waitpid(pid, 0)

    assert said == "'ab' does not match '^(a+)+$'"
    # The parent's helper, untouched by the child's exit, still answers it.
    assert schema_checks._helper._process is parents and parents.is_alive()
    assert [e.message for e in schema_checks.errors(schema, {"code": "b"})]


def test_a_helper_left_matching_by_its_web_process_ends_itself(
    settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The web process kills its helper at the deadline; one that died first (gunicorn's
    SIGKILL of a worker, the OOM killer) left the helper matching a pattern that
    backtracks, a CPU taken for years at forty-five characters. Here the web process
    never gets to kill it: the helper must end itself, a second past the deadline."""
    settings.NORM_SCHEMA_CHECK_SECONDS = 0.2
    schema = {"type": "object", "properties": {"code": {"type": "string", "pattern": NESTED}}}
    helper = schema_checks._helper
    helper._stop()
    monkeypatch.setattr(helper, "_stop", lambda: None)  # as if its web process were gone
    try:
        with pytest.raises(schema_checks.CheckTooSlow):
            schema_checks.errors(schema, {"code": "a" * 45 + "!"})
        left = helper._process
        assert left is not None

        left.join(30)  # at most: it ends a second past the deadline

        assert left.exitcode == -signal.SIGALRM
    finally:
        monkeypatch.undo()
        helper._stop()
