"""A workflow author's type checker sees each step method's parameters.

mypy runs here as it would on a team's workflow file: the SDK is read from its source,
as an editor reads it, so the test holds for what the SDK declares, not what it does.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Each line marked `# wrong` is one mypy must report, and only those.
WORKFLOW = """\
from typing import Any

from workflows.sdk import Context, workflow


def quiet(controls: dict[str, Any]) -> bool:
    return bool(controls.get("quiet"))


@workflow("typed")
def typed(ctx: Context) -> None:
    inbox = ctx.step.in_app("inbox", lambda: {"body": "b"}, skip=quiet)
    ctx.step.delay("wait", lambda: {"amount": 1, "unit": "hours"}, skip=False)
    ctx.step.email(
        "mail",
        lambda controls: {"subject": "s", "body": "b"},
        skip=lambda: inbox["read"],
        control_schema={"type": "object"},
        providers={"sendgrid": lambda outputs: {"ipPoolName": "pool"}},
    )
    ctx.step.sms("sms", lambda: {"body": "b"})
    ctx.step.push("push", lambda: {"subject": "s", "body": "b"})
    ctx.step.chat("chat", lambda: {"body": "b"})
    ctx.step.custom("calc", lambda: {"n": 1}, output_schema={"type": "object"})
    ctx.step.email("mail2", lambda: {"subject": "s", "body": "b"}, output_schema={})  # wrong
    ctx.step.sms("sms2", lambda: {"body": "b"}, controls_schema={})  # wrong
    ctx.step.push("push2", lambda: {"subject": "s", "body": "b"}, skip="yes")  # wrong
    ctx.step.in_app("inbox2", {"body": "b"})  # wrong
    ctx.step.chat(3, lambda: {"body": "b"})  # wrong
    ctx.step.delay("wait2")  # wrong
"""


def test_mypy_reports_each_wrong_step_call_and_no_right_one(tmp_path: Path) -> None:
    source = tmp_path / "typed_workflow.py"
    source.write_text(WORKFLOW)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--cache-dir",
            str(tmp_path / "cache"),
            "--follow-imports=silent",  # the SDK's own code is checked for its types only
            "--no-error-summary",
            str(source),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    errors = [line for line in result.stdout.splitlines() if ": error: " in line]
    reported = {int(line.split(":")[1]) for line in errors}
    wrong = {n for n, line in enumerate(WORKFLOW.splitlines(), 1) if line.endswith("# wrong")}
    assert reported == wrong, result.stdout + result.stderr
    assert any('Unexpected keyword argument "output_schema" for "email"' in e for e in errors)
