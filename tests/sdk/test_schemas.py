"""Compiled schemas are shared: a workflow declares its steps again on every execute."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft7Validator

from workflows.sdk import (
    Context,
    ExecutionEventPayloadInvalidError,
    ExecutionStateControlInvalidError,
    ExecutionStateOutputInvalidError,
    workflow,
)
from workflows.sdk.schemas import (
    CHECKED_FORMATS,
    IN_APP_OUTPUT,
    Schema,
    SchemaInvalid,
    SchemaUnusable,
)

from .helpers import FORMATS, execute_body

CONTROLS = {"type": "object", "properties": {"subject": {"type": "string", "default": "Hi"}}}


@pytest.fixture
def meta_checks(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every schema checked against its meta-schema (the costly part of compiling one)."""
    checked: list[Any] = []
    real = Draft7Validator.check_schema.__func__  # type: ignore[attr-defined]

    def spy(cls: type, schema: Any, *args: Any, **kwargs: Any) -> None:
        checked.append(schema)
        real(cls, schema, *args, **kwargs)

    monkeypatch.setattr(Draft7Validator, "check_schema", classmethod(spy))
    return checked


def test_a_second_execute_compiles_no_schema(meta_checks: list[Any]) -> None:
    @workflow("schema-cache-test")
    def wf(ctx: Context) -> None:
        ctx.step.email(
            "email",
            lambda controls: {"subject": controls["subject"], "body": "b"},
            control_schema={**CONTROLS, "title": "schema-cache-test"},
        )

    first = wf.execute(execute_body({}, []))
    compiled = len(meta_checks)
    second = wf.execute(execute_body({}, []))

    assert first["outputs"] == second["outputs"] == {"subject": "Hi", "body": "b"}
    assert compiled > 0 and len(meta_checks) == compiled


def test_equal_schemas_share_one_compiled_schema_and_defaults_are_copies() -> None:
    schema = {"type": "object", "properties": {"tags": {"type": "array", "default": []}}}
    first, second = Schema.of(schema), Schema.of({**schema})
    assert first is second

    filled = first.validate({})
    filled["tags"].append("changed")
    assert second.validate({}) == {"tags": []}  # the shared schema's default is untouched


def test_a_schema_that_is_not_json_is_unusable() -> None:
    """Discover lists it: compiled, it made discover a 500 (tests/sdk/test_http.py)."""
    schema = {"type": "object", "properties": {"n": {"type": "integer", "default": 1}}, "x": {1, 2}}
    with pytest.raises(SchemaUnusable, match="is not JSON: Object of type set"):
        Schema.of(schema)


def test_array_items_get_their_defaults_and_lose_forbidden_keys_as_with_ajv() -> None:
    """Novu's SDK (ajv, useDefaults and removeAdditional) fills each item of an array, so
    a workflow written for it reads `line["qty"]`; it raised KeyError here."""
    line = {
        "type": "object",
        "properties": {"sku": {"type": "string"}, "qty": {"type": "integer", "default": 1}},
        "additionalProperties": False,
    }
    schema = {
        # 2020-12's `prefixItems`, which a schema naming no draft (draft-07) does not know.
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "properties": {
            "lines": {"type": "array", "items": line},
            "pair": {"type": "array", "prefixItems": [line], "items": {"type": "string"}},
        },
    }

    @workflow("order-lines", payload_schema=schema)
    def order_lines(ctx: Context) -> None:
        lines = ctx.payload["lines"]
        ctx.step.sms("sms", lambda: {"body": ", ".join(f"{x['qty']} {x['sku']}" for x in lines)})

    payload = {"lines": [{"sku": "A"}, {"sku": "B", "qty": 2, "note": "x"}]}
    assert order_lines.execute(execute_body(payload, []))["outputs"] == {"body": "1 A, 2 B"}
    assert Schema.of(schema).validate({"pair": [{"sku": "A", "x": 0}, "b"], "lines": []}) == {
        "pair": [{"sku": "A", "qty": 1}, "b"],
        "lines": [],
    }


def test_additional_properties_false_strips_as_ajv_does_with_or_without_properties() -> None:
    """ajv keeps the keys `patternProperties` matches (they were dropped silently) and
    strips extra keys from an object whose schema lists no `properties` (refused here)."""
    headers = {
        "type": "object",
        "properties": {"id": {"type": "string"}},
        "patternProperties": {"^x-": {"type": "string"}},
        "additionalProperties": False,
    }
    assert Schema.of(headers).validate({"id": "1", "x-trace": "t", "other": "o"}) == {
        "id": "1",
        "x-trace": "t",
    }
    closed = {"type": "object", "additionalProperties": False}
    assert Schema.of(closed).validate({"stray": 1}) == {}

    @workflow("closed-controls")
    def closed_controls(ctx: Context) -> None:
        ctx.step.sms("sms", lambda: {"body": "b"}, control_schema=closed)

    response = closed_controls.execute(execute_body({}, [], controls={"stray": 1}))
    assert response["outputs"] == {"body": "b"}


@pytest.mark.parametrize(("name", "good", "bad"), FORMATS)
def test_formats_are_checked_as_novus_sdk_checks_them(name: str, good: str, bad: str) -> None:
    """Novu's SDK (ajv with ajv-formats) refuses `{email: "not-an-email"}` against
    `format: email`; norm's SDK took any string, so a workflow written for Novu ran on it."""
    schema = {"type": "object", "properties": {"v": {"type": "string", "format": name}}}

    @workflow(f"format-{name}", payload_schema=schema)
    def checked(ctx: Context) -> None:
        ctx.step.custom(
            "echo",
            lambda controls: {"v": ctx.payload["v"], "c": controls["v"]},
            control_schema=schema,
            output_schema={
                "type": "object",
                "properties": {"v": schema["properties"]["v"], "c": {"type": "string"}},
            },
        )

    body = execute_body({"v": good}, [], controls={"v": good})
    assert checked.execute(body)["outputs"] == {"v": good, "c": good}
    with pytest.raises(ExecutionEventPayloadInvalidError) as payload_error:
        checked.execute(execute_body({"v": bad}, [], controls={"v": good}))
    assert payload_error.value.data[0]["path"] == "/v"
    with pytest.raises(ExecutionStateControlInvalidError):
        checked.execute(execute_body({"v": good}, [], controls={"v": bad}))

    @workflow(f"format-output-{name}")
    def bad_output(ctx: Context) -> None:
        ctx.step.custom("echo", lambda: {"v": bad}, output_schema=schema)

    with pytest.raises(ExecutionStateOutputInvalidError):
        bad_output.execute(execute_body({}, []))


# (format, value, whether ajv-formats 2.1.1 takes it), each verdict ajv 8's with the
# options @novu/framework 2.13.2 gives it (useDefaults, removeAdditional "failing"):
# values jsonschema's checkers, which norm used, judged otherwise.
AJV_VERDICTS = [
    ("date-time", "2025-01-01T10:00:00Z", True),
    ("date-time", "2025-01-01T10:00:00", True),  # no offset: ajv-formats requires none
    ("date-time", "2025-01-01 10:00:00.5Z", True),
    ("date-time", "2025-01-01\u00a010:00:00Z", True),  # JS's \s is Unicode's
    ("date-time", "2025-01-01T10:00:00+0100", True),
    ("date-time", "2025-01-01T10:00:00+01", True),
    ("date-time", "2025-01-01T23:59:60Z", True),
    ("date-time", "2025-01-01T10:00:00Z\n", False),
    ("date-time", "2025-02-29T10:00:00Z", False),
    ("date-time", "2025-01-01T10:00Z", False),
    ("date-time", "\u0662\u0660\u0662\u0665-01-01T10:00:00Z", False),  # digits, not ASCII
    ("time", "09:30:00+0100", True),
    ("time", "23:59:60", True),
    ("time", "24:00:00", False),
    ("date", "0000-01-01", True),
    ("date", "2024-02-29", True),
    ("date", "2000-02-29", True),  # a leap year: divisible by 400
    ("date", "1900-02-29", False),  # none: divisible by 100, not 400
    ("date", "2025-04-31", False),
    ("email", "a@b", False),
    ("email", "a b@c.de", False),
    ("email", "a@b..de", False),
    ("email", ".a@b.de", False),
    ("email", "\u00e9@b.de", False),
    ("email", "a@-b.de", False),
    ("email", "A.B+c@Mail.Example.COM", True),
    ("uuid", "urn:uuid:0b4c8d0e-2f3a-4b5c-9d6e-7f8091a2b3c4", True),
    ("ipv4", "01.2.3.4", True),
    ("ipv4", "256.1.1.1", False),
    ("hostname", "a_b.com", False),
    ("hostname", "\u212aelvin.de", False),  # the Kelvin sign folds to k in Unicode, not in JS
    ("uri", "http://a b", False),
    ("uri", "urn:isbn:1", True),
    ("uri-reference", "a b", False),
]


@pytest.mark.parametrize(("name", "value", "valid"), AJV_VERDICTS)
def test_formats_take_and_refuse_what_novus_ajv_formats_does(
    name: str, value: str, valid: bool
) -> None:
    """jsonschema's checkers took `a b@c.de` as an email, so a trigger was accepted whose
    every notification Novu's bridge then refused, and refused a date-time without an
    offset (Python's `datetime.isoformat()`), so a trigger the bridge would run was not."""
    schema = {"type": "object", "properties": {"v": {"type": "string", "format": name}}}
    assert (not Schema.of(schema).errors({"v": value})) == valid


# More values, for the comparison with ajv-formats itself.
MORE_VALUES = [
    "",
    "x",
    "/",
    "//x",
    "#x",
    "%zz",
    "a:b",
    "mailto:a@b.de",
    "http://x.y/z?q=1#f",
    "http://[::1]/",
    "http://[v1.x]/",
    "http://\u00e9.de",
    "http://x/%41",
    "HTTP://X.Y",
    "::1",
    "2001:db8::1",
    "2001:db8::g",
    "::ffff:1.2.3.4",
    "1:2:3:4:5:6:7:8:9",
    "fe80::1%eth0",
    "192.0.2.1",
    "192.0.2",
    "1.2.3.4\n",
    "localhost",
    "a.b.",
    "-a.de",
    "a-.de",
    "x" * 63 + ".de",
    "x" * 64 + ".de",
    ("x" * 63 + ".") * 4 + "de",
    "0b4c8d0e-2f3a-4b5c-9d6e-7f8091a2b3c4",
    "0B4C8D0E-2F3A-4B5C-9D6E-7F8091A2B3C4",
    "0b4c8d0e2f3a4b5c9d6e7f8091a2b3c4",
    "{0b4c8d0e-2f3a-4b5c-9d6e-7f8091a2b3c4}",
    "a@b.c",
    '"a b"@c.de',
    "a@[1.2.3.4]",
    "a.@b.de",
    "a@b.c\n",
    "a@b.c-",
    "2025-01-01",
    "2025-1-01",
    "20250101",
    "2025-13-01",
    "2025-01-00",
    "2024-02-30",
    "09:30:00",
    "09:30:00Z",
    "09:30:00.5",
    "09:30:00z",
    "9:30:00",
    "09:30",
    "09:30:00 Z",
    "09:30:00+25:00",
    "22:59:60+01:00",
    "23:59:59.999-12:00",
    "09:30:00\n",
    "2025-01-01t10:00:00z",
    "2025-01-01T10:00:00+01:00",
    "2025-01-01T10:00:00.Z",
    "2025-01-01T10:00:00,5Z",
    "2025-01-01\t10:00:00Z",
    "2025-01-01T10:00:00+25:00",
    "2025-01-01T10:00:00+01:60",
    "2025-01-01T10:00:60Z",
    "2025-01-01TT10:00:00Z",
    "2025-01-01 T10:00:00Z",
    "2025-01-01\ufeff10:00:00Z",
    "2025-01-01\u200b10:00:00Z",
    "2025-01-01\u180e10:00:00Z",
    "2025-01-01\x1c10:00:00Z",
    "2025-01-01\u202810:00:00Z",
]


def test_formats_agree_with_ajv_formats_run_by_node_where_novus_bridge_is_installed() -> None:
    """The table above, and more, checked against ajv-formats itself (tests/e2e/novu_bridge's
    node_modules, which `make test` installs)."""
    node = shutil.which("node")
    modules = Path(__file__).parents[1] / "e2e" / "novu_bridge" / "node_modules"
    if node is None or not (modules / "ajv-formats").is_dir():
        pytest.skip("node or the Novu bridge's node_modules (ajv-formats) is not installed")
    values = sorted({v for _, v, _ in AJV_VERDICTS} | set(MORE_VALUES))
    cases = [(name, value) for name in sorted(CHECKED_FORMATS) for value in values]
    script = """
    const Ajv = require("ajv"), addFormats = require("ajv-formats");
    const ajv = new Ajv({ useDefaults: true, removeAdditional: "failing", strict: false });
    addFormats(ajv);
    const cases = JSON.parse(require("fs").readFileSync(0, "utf8"));
    const check = (f, v) => ajv.validate({ type: "string", format: f }, v);
    process.stdout.write(JSON.stringify(cases.map(([f, v]) => check(f, v))));
    """
    ajv = subprocess.run(
        [node, "-e", script],
        input=json.dumps(cases).encode(),
        capture_output=True,
        check=True,
        timeout=60,
        cwd=modules.parent,
    )
    verdicts = dict(zip(cases, json.loads(ajv.stdout), strict=True))
    schemas = {n: Schema.of({"type": "string", "format": n}) for n in CHECKED_FORMATS}
    norm = {(n, v): not schemas[n].errors(v) for n, v in cases}
    assert {c: norm[c] for c in cases if norm[c] != verdicts[c]} == {}
    assert {(n, v): ok for n, v, ok in AJV_VERDICTS} == {
        (n, v): verdicts[(n, v)] for n, v, _ in AJV_VERDICTS
    }


def test_an_in_app_avatar_that_is_no_uri_is_an_output_error_and_unknown_formats_pass() -> None:
    @workflow("avatar")
    def avatar(ctx: Context) -> None:
        ctx.step.in_app("inbox", lambda: {"body": "b", "avatar": "not a uri"})

    with pytest.raises(ExecutionStateOutputInvalidError) as exc:
        avatar.execute(execute_body({}, []))
    assert exc.value.data[0]["path"] == "/avatar"
    phone = {"type": "object", "properties": {"v": {"type": "string", "format": "phone"}}}
    assert Schema.of(phone).validate({"v": "anything"}) == {"v": "anything"}


def test_if_then_else_defaults_are_filled_in_before_the_properties_ones_as_with_ajv() -> None:
    """ajv (useDefaults) fills in the defaults of the branch the value takes, first; they
    were left out (results observed from ajv 8, as @novu/framework 2.13.2 runs it)."""
    schema = {
        "type": "object",
        "properties": {"a": {"default": 1}, "b": {}},
        "if": {"properties": {"b": {"const": 1}}, "required": ["b"]},
        "then": {"properties": {"a": {"default": 2}, "c": {"default": 3}}},
        "else": {"properties": {"d": {"default": 4}}},
    }
    assert Schema.of(schema).validate({"b": 1}) == {"b": 1, "a": 2, "c": 3}
    assert Schema.of(schema).validate({"b": 2}) == {"b": 2, "d": 4, "a": 1}
    assert Schema.of(schema).validate({}) == {"d": 4, "a": 1}


def test_an_in_app_redirect_gets_the_target_novus_sdk_gives_it() -> None:
    """@novu/framework answers `_self` for a path and `_blank` for a URL, which the feed
    passes on (an inbox opens a path in its own window); norm's SDK answered none."""

    @workflow("redirects")
    def redirects(ctx: Context) -> None:
        ctx.step.in_app(
            "inbox",
            lambda: {
                "body": "b",
                "redirect": {"url": "/rewards"},
                "primaryAction": {"label": "Go", "redirect": {"url": "https://example.com/a"}},
                "secondaryAction": {"label": "Here", "redirect": {"url": "/b", "target": "_top"}},
            },
        )

    outputs = redirects.execute(execute_body({}, []))["outputs"]
    assert outputs["redirect"] == {"url": "/rewards", "target": "_self"}
    assert outputs["primaryAction"]["redirect"] == {
        "url": "https://example.com/a",
        "target": "_blank",
    }
    assert outputs["secondaryAction"]["redirect"] == {"url": "/b", "target": "_top"}


# The pattern norm's SDK publishes (discover) and checks an in-app redirect's URL with.
REDIRECT_URL = IN_APP_OUTPUT["properties"]["redirect"]["properties"]["url"]["pattern"]
# (redirect URL, whether Novu's SDK takes it in an in-app step's outputs), each verdict
# ajv's for @novu/framework 2.13.2's pattern.
REDIRECT_VERDICTS = [
    ("https://example.com/a", True),
    ("http://ab", True),
    ("https://a b", True),  # Novu's first branch is anchored at its start only
    ("//cdn.example.com/x", True),  # a path, to Novu's pattern
    ("/", True),
    ("/a\x1c", True),  # no space to JS, which Python's \s calls one
    ("https://", False),  # an f-string's host left empty
    ("https://a", False),
    ("https://.example.com", False),
    ("http:///p", False),
    ("https://a\u2028b", False),
    ("/orders/42 details", False),
    ("/a\n", False),
    ("/a\ufeff", False),
    ("mailto:ann@example.com", False),
    ("rewards", False),
]


@pytest.mark.parametrize(("url", "valid"), REDIRECT_VERDICTS)
def test_an_in_app_redirect_url_is_taken_or_refused_as_novus_sdk_does(
    url: str, valid: bool
) -> None:
    """norm's SDK took any URL starting `http(s)://` or `/`: `https://` (a host left
    empty) went out as a link Novu's SDK refuses (ExecutionStateOutputInvalidError)."""

    @workflow("redirect-url")
    def redirect(ctx: Context) -> None:
        ctx.step.in_app("inbox", lambda: {"body": "b", "redirect": {"url": url}})

    if valid:
        assert redirect.execute(execute_body({}, []))["outputs"]["redirect"]["url"] == url
    else:
        with pytest.raises(ExecutionStateOutputInvalidError) as refused:
            redirect.execute(execute_body({}, []))
        assert refused.value.data[0]["path"] == "/redirect/url"


def ajv_results(cases: list[tuple[Any, Any]]) -> list[tuple[bool, Any]]:
    """Whether ajv 8 takes each (schema, value), compiled as @novu/framework 2.13.2
    compiles them, and the value as it leaves it (defaults filled in, keys stripped), run
    by node from the Novu bridge's node_modules (skipped without)."""
    node = shutil.which("node")
    modules = Path(__file__).parents[1] / "e2e" / "novu_bridge" / "node_modules"
    if node is None or not (modules / "ajv").is_dir():
        pytest.skip("node or the Novu bridge's node_modules (ajv) is not installed")
    script = """
    const Ajv = require("ajv");
    const ajv = new Ajv({ useDefaults: true, removeAdditional: "failing", strict: false });
    const cases = JSON.parse(require("fs").readFileSync(0, "utf8"));
    const results = cases.map(([s, v]) => [ajv.validate(s, v), v]);
    process.stdout.write(JSON.stringify(results));
    """
    ajv = subprocess.run(
        [node, "-e", script],
        input=json.dumps(cases).encode(),
        capture_output=True,
        check=True,
        timeout=60,
        cwd=modules.parent,
    )
    return [(verdict, value) for verdict, value in json.loads(ajv.stdout)]


def ajv_verdicts(cases: list[tuple[Any, Any]]) -> list[bool]:
    """Whether ajv 8 takes each (schema, value), as `ajv_results`."""
    return [verdict for verdict, _ in ajv_results(cases)]


def test_the_redirect_url_pattern_reads_alike_in_ajv_and_in_python() -> None:
    """Novu's pattern and norm's, compiled by ajv as Novu's SDK compiles them, against
    norm's as jsonschema reads it, on the table above and its URLs' neighbours."""
    novu = r"^(?!mailto:)(?:(https?):\/\/[^\s/$.?#].[^\s]*)|^(\/[^\s]*)$"
    urls = [u for url, _ in REDIRECT_VERDICTS for u in (url, url + " x", " " + url, url + "\n")]
    urls += [f"https://a{c}b" for c in " \t\r\v\u00a0\u1680\u180e\u2000\u200b\u3000\ufeff\x1c"]
    by_novu, by_ajv = (
        ajv_verdicts([({"type": "string", "pattern": pattern}, url) for url in urls])
        for pattern in (novu, REDIRECT_URL)
    )
    by_python = [bool(re.search(REDIRECT_URL, u)) for u in urls]
    assert by_python == by_ajv == by_novu
    assert [by_novu[urls.index(u)] for u, _ in REDIRECT_VERDICTS] == [
        v for _, v in REDIRECT_VERDICTS
    ]


def test_defaults_and_forbidden_keys_are_applied_through_refs_and_all_of_as_with_ajv() -> None:
    """ajv follows a `$ref` and each `allOf` (their defaults first): zod-to-json-schema
    writes a schema used twice as `{"$ref": "#/properties/billing"}` the second time, and
    a key it forbids there was refused here (the payload invalid, so was the trigger of a
    Novu bridge's workflow), where Novu's SDK strips it; a default behind one was missing.
    Results observed from ajv 8, as @novu/framework 2.13.2 runs it."""
    address = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "country": {"type": "string", "default": "DE"}},
        "additionalProperties": False,
    }
    schema = {
        "type": "object",
        "$defs": {"line": {"type": "object", "properties": {"qty": {"default": 1}}}},
        "properties": {
            "billing": address,
            "shipping": {"$ref": "#/properties/billing"},
            "lines": {"type": "array", "items": {"$ref": "#/$defs/line"}},
            "a": {"default": 1},
        },
        "allOf": [{"properties": {"a": {"default": 2}, "b": {"default": 3}}}],
    }

    @workflow("refs", payload_schema=schema)
    def refs(ctx: Context) -> None:
        shipping, lines = ctx.payload["shipping"], ctx.payload["lines"]
        ctx.step.sms("sms", lambda: {"body": f"{shipping['country']} {lines[0]['qty']}"})

    payload = {"billing": {"city": "Graz"}, "shipping": {"city": "Wien", "floor": 3}, "lines": [{}]}
    assert refs.execute(execute_body(payload, []))["outputs"] == {"body": "DE 1"}
    assert Schema.of(schema).validate(payload) == {
        "billing": {"city": "Graz", "country": "DE"},
        "shipping": {"city": "Wien", "country": "DE"},
        "lines": [{"qty": 1}],
        "a": 2,
        "b": 3,
    }
    recursive = {"type": "object", "properties": {"child": {"$ref": "#"}, "v": {"default": 0}}}
    assert Schema.of(recursive).validate({"child": {"child": {}}}) == {
        "child": {"child": {"v": 0}, "v": 0},
        "v": 0,
    }


def test_a_default_filled_in_gets_the_defaults_within_it_as_with_ajv() -> None:
    """ajv goes on into a default it filled in: an `order` defaulted to `{}` gets its `id`
    and `items` defaults, and a default's extra key is stripped. Here the default went in
    as it was written, and the workflow failed on a KeyError (StepExecutionFailedError)
    for a trigger Novu's SDK runs, or its payload was refused for a required key the
    default's own default gives. Results observed from ajv 8, as @novu/framework 2.13.2
    runs it (tests/e2e/novu_bridge's `welcome-flow`, executed with `{"userName": "Ada"}`)."""
    order = {
        "type": "object",
        "properties": {
            "id": {"type": "string", "default": "0"},
            "items": {"type": "array", "items": {"type": "string"}, "default": ["-"]},
            "lines": {
                "type": "array",
                "items": {"type": "object", "properties": {"qty": {"default": 1}}},
                "default": [{}],
            },
        },
        "required": ["id"],
        "additionalProperties": False,
        "default": {"stale": True},
    }
    schema = {"type": "object", "properties": {"userName": {"type": "string"}, "order": order}}

    @workflow("nested-defaults", payload_schema=schema)
    def nested(ctx: Context) -> None:
        order = ctx.payload["order"]
        ctx.step.sms("sms", lambda: {"body": f"{order['id']}: {', '.join(order['items'])}"})

    assert nested.execute(execute_body({"userName": "Ada"}, []))["outputs"] == {"body": "0: -"}
    assert Schema.of(schema).validate({"userName": "Ada"})["order"] == {
        "id": "0",
        "items": ["-"],
        "lines": [{"qty": 1}],
    }
    # A default within itself, which ajv fills until its stack overflows: filled once.
    recursive = {
        "type": "object",
        "properties": {"child": {"$ref": "#", "default": {}}, "v": {"default": 0}},
    }
    assert Schema.of(recursive).validate({}) == {"child": {"child": {}, "v": 0}, "v": 0}


# (pattern, value, whether ajv 8 takes it, as @novu/framework 2.13.2 compiles a pattern:
# JavaScript, `u` flag). Python's `re` took the first four's values, and refused the
# next patterns outright: the schema unusable, every trigger of the workflow refused.
PATTERN_VERDICTS = [
    (r"^\w+$", "José", False),
    (r"^\d+$", "١٢", False),
    (r"^[a-z]+$", "ada\n", False),
    (r"^a.c$", "a\rc", False),
    (r"^\w+$", "ada_1", True),
    (r"^a\sc$", "a\ufeffc", True),
    (r"^(?<area>\d{3})-\k<area>$", "123-123", True),
    (r"^(?<area>\d{3})-\k<area>$", "123-124", False),
    (r"^\u{1F600}$", "\U0001f600", True),
    (r"(?<!a)b", "ab", False),
    # zod's `.emoji()`: Unicode properties, which Python's `re` cannot express at all.
    (r"^(\p{Extended_Pictographic}|\p{Emoji_Component})+$", "\U0001f600", True),
    (r"^(\p{Extended_Pictographic}|\p{Emoji_Component})+$", "x", False),
    # A lone surrogate (JSON's "\ud800"), a code point of its own to ajv: regress, which
    # takes UTF-8, failed the execute with a 500 (UnicodeEncodeError).
    (r"^[a-z]+$", "\ud800", False),
    (r"^\p{L}$", "\ud800", False),
    (r"^.$", "\ud800", True),
    (r"^a.b$", "a\udfffb", True),
]


@pytest.mark.parametrize(("pattern", "value", "valid"), PATTERN_VERDICTS)
def test_a_pattern_is_read_as_ajv_reads_it(pattern: str, value: str, valid: bool) -> None:
    schema = {"type": "object", "properties": {"name": {"type": "string", "pattern": pattern}}}

    @workflow("patterned", payload_schema=schema)
    def patterned(ctx: Context) -> None:
        ctx.step.sms("sms", lambda: {"body": ctx.payload["name"]})

    if valid:
        assert patterned.execute(execute_body({"name": value}, []))["outputs"] == {"body": value}
    else:
        with pytest.raises(ExecutionEventPayloadInvalidError) as refused:
            patterned.execute(execute_body({"name": value}, []))
        assert refused.value.data[0]["path"] == "/name"


def test_a_pattern_no_regex_in_javascript_makes_the_schema_unusable() -> None:
    with pytest.raises(SchemaUnusable, match=r"at /properties/a/pattern"):
        Schema.of({"type": "object", "properties": {"a": {"pattern": "(?<a"}}})
    with pytest.raises(SchemaUnusable, match=r"at /patternProperties"):
        Schema.of({"type": "object", "patternProperties": {"(?<a>x)": {}}})


def test_patterns_agree_with_ajv_run_by_node_where_novus_bridge_is_installed() -> None:
    cases = [({"pattern": pattern}, value) for pattern, value, _ in PATTERN_VERDICTS]
    assert ajv_verdicts(cases) == [valid for _, _, valid in PATTERN_VERDICTS]


# (schema naming no draft, value, whether ajv 8 takes it, as @novu/framework 2.13.2's
# default Ajv class reads such a schema: draft-07). Read as 2020-12, the tuple's schema
# was unusable (every trigger of the workflow refused), `dependencies` went unchecked,
# and keywords ajv does not know refused what Novu's SDK takes.
PAIR = {"type": "array", "items": [{"type": "string"}, {"type": "number"}]}
DRAFT_VERDICTS = [
    ({"properties": {"pair": PAIR}}, {"pair": ["a", 1]}, True),
    ({"properties": {"pair": PAIR}}, {"pair": [1, "a"]}, False),
    ({"properties": {"pair": PAIR | {"additionalItems": False}}}, {"pair": ["a", 1, 2]}, False),
    ({"dependencies": {"card": ["cvc"]}}, {"card": "4242"}, False),
    ({"dependentRequired": {"card": ["cvc"]}}, {"card": "4242"}, True),
    ({"properties": {"tags": {"prefixItems": [{"type": "number"}]}}}, {"tags": ["a"]}, True),
    ({"properties": {"a": {}}, "unevaluatedProperties": False}, {"a": 1, "b": 2}, True),
    # ajv applies the keywords beside a `$ref`, which jsonschema's draft-07 ignores.
    (
        {"properties": {"code": {"$ref": "#/definitions/code", "maxLength": 2}}}
        | {"definitions": {"code": {"type": "string"}}},
        {"code": "abc"},
        False,
    ),
]


@pytest.mark.parametrize(("schema", "payload", "valid"), DRAFT_VERDICTS)
def test_a_schema_naming_no_draft_is_read_as_draft_07_as_ajv_reads_it(
    schema: dict[str, Any], payload: dict[str, Any], valid: bool
) -> None:
    @workflow("drafted", payload_schema={"type": "object"} | schema)
    def drafted(ctx: Context) -> None:
        ctx.step.sms("sms", lambda: {"body": "b"})

    if valid:
        assert drafted.execute(execute_body(payload, []))["outputs"] == {"body": "b"}
    else:
        with pytest.raises(ExecutionEventPayloadInvalidError):
            drafted.execute(execute_body(payload, []))


def test_drafts_agree_with_ajv_run_by_node_where_novus_bridge_is_installed() -> None:
    cases = [({"type": "object"} | schema, payload) for schema, payload, _ in DRAFT_VERDICTS]
    assert ajv_verdicts(cases) == [valid for _, _, valid in DRAFT_VERDICTS]


def test_an_additional_key_that_fails_additional_properties_is_stripped_as_with_ajv() -> None:
    """@novu/framework's ajv (removeAdditional "failing") drops an additional key whose
    value fails the `additionalProperties` schema (zod's `z.record(z.string())`), where
    the payload was invalid here. Results observed from ajv 8."""
    labels = {"type": "object", "additionalProperties": {"type": "string"}}
    schema = {"type": "object", "properties": {"labels": labels}}

    @workflow("labels", payload_schema=schema)
    def labelled(ctx: Context) -> None:
        ctx.step.sms("sms", lambda: {"body": ",".join(sorted(ctx.payload["labels"]))})

    payload = {"labels": {"team": "ops", "count": 2, "nested": {"x": "y"}}}
    assert labelled.execute(execute_body(payload, []))["outputs"] == {"body": "team"}
    open_ = {"type": "object", "properties": {"a": {}}, "additionalProperties": True}
    assert Schema.of(open_).validate({"a": 1, "c": 2}) == {"a": 1, "c": 2}


def test_an_additional_keys_value_loses_the_keys_its_schema_forbids_as_with_ajv() -> None:
    """A `z.record(z.object({...}))` entry (or a pydantic `dict[str, Model]`'s) with a key
    its object does not declare was dropped whole, so the workflow's code saw no such
    entry; ajv strips the key while it checks the entry and keeps the entry, with no
    default filled in. One that fails for another reason still goes. Results observed
    from ajv 8 as @novu/framework 2.13.2 compiles it."""
    entry = {
        "type": "object",
        "properties": {"qty": {"type": "number"}, "note": {"type": "string", "default": "-"}},
        "required": ["qty"],
        "additionalProperties": False,
    }
    schema = {
        "type": "object",
        "properties": {"lines": {"type": "object", "additionalProperties": entry}},
    }

    @workflow("lines", payload_schema=schema)
    def lines(ctx: Context) -> None:
        ctx.step.sms("sms", lambda: {"body": json.dumps(ctx.payload["lines"], sort_keys=True)})

    payload = {
        "lines": {"tea": {"qty": 2, "gift": True}, "cake": {"gift": True}, "jam": {"qty": 1}}
    }
    outputs = lines.execute(execute_body(payload, []))["outputs"]
    assert json.loads(outputs["body"]) == {"tea": {"qty": 2}, "jam": {"qty": 1}}


def test_a_pattern_propertys_value_gets_its_defaults_and_loses_forbidden_keys_as_with_ajv() -> None:
    """ajv fills in and strips the value of a key a `patternProperties` pattern matches,
    as a property's: such an entry with a key more was refused here (the execute a
    400), which Novu's SDK ran, with the default filled in. Observed from ajv 8 as
    @novu/framework 2.13.2 compiles it."""
    entry = {
        "type": "object",
        "properties": {"qty": {"type": "number"}, "note": {"type": "string", "default": "-"}},
        "required": ["qty"],
        "additionalProperties": False,
    }
    lines = {"type": "object", "patternProperties": {"^[a-z]+$": entry}}
    schema = {"type": "object", "properties": {"lines": lines}}
    payload = {"lines": {"tea": {"qty": 2, "gift": True}, "jam": {"qty": 1}}}

    assert Schema.of(schema).validate(payload) == {
        "lines": {"tea": {"qty": 2, "note": "-"}, "jam": {"qty": 1, "note": "-"}}
    }


def test_an_additional_key_or_an_if_is_checked_against_the_whole_schema() -> None:
    """A valid additional key was stripped, and an `if` that held read as failing, when
    its schema had a `$ref` in it (zod-to-json-schema's `#/properties/...` for a schema
    used twice, inside a `z.record`), or was of the schema's own draft-07 (a tuple's
    `items: [...]`): each was checked alone, as 2020-12, where a `$ref` has nothing to
    point at. ajv checks it as part of the whole and keeps the key."""
    billing = {"type": "object", "properties": {"city": {"type": "string"}}}
    stops = {"type": "object", "properties": {"addr": {"$ref": "#/properties/billing"}}}
    schema = {
        "type": "object",
        "$defs": {"tag": {"type": "string"}},
        "properties": {
            "billing": billing,
            "stops": {"type": "object", "additionalProperties": stops},
            "tags": {
                "type": "object",
                "additionalProperties": {"$ref": "#/$defs/tag", "description": "a tag"},
            },
            "kind": {},
        },
        "if": {"properties": {"kind": {"$ref": "#/$defs/tag"}}, "required": ["kind"]},
        "then": {"properties": {"tagged": {"default": True}}},
        "else": {"properties": {"tagged": {"default": False}}},
    }
    payload = {"stops": {"home": {"addr": {"city": "Oslo"}}, "bad": {"addr": {"city": 1}}}}
    assert Schema.of(schema).validate({**payload, "tags": {"a": "x"}, "kind": "k"}) == {
        "stops": {"home": {"addr": {"city": "Oslo"}}},
        "tags": {"a": "x"},
        "kind": "k",
        "tagged": True,
    }
    tuples = {"type": "array", "items": [{"type": "string"}]}
    draft7 = {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "type": "object",
        "additionalProperties": tuples,
    }
    assert Schema.of(draft7).validate({"a": ["x"], "b": [1]}) == {"a": ["x"]}


# zod-to-json-schema's translation of `z.discriminatedUnion("kind", [z.object({kind:
# z.literal("mail"), to: z.string()}), z.object({kind: z.literal("sms"), phone:
# z.string()})])`, as @novu/framework 2.13.2 discovers a payload `z.object({channel: ...})`.
ZOD_CHANNEL = {
    "anyOf": [
        {
            "type": "object",
            "properties": {"kind": {"type": "string", "const": "mail"}, "to": {"type": "string"}},
            "required": ["kind", "to"],
            "additionalProperties": False,
        },
        {
            "type": "object",
            "properties": {
                "kind": {"type": "string", "const": "sms"},
                "phone": {"type": "string"},
            },
            "required": ["kind", "phone"],
            "additionalProperties": False,
        },
    ]
}
# (the `channel` given, what the workflow's code sees of it: None for a refusal, whether
# ajv takes it). ajv, as zod, strips the keys the branch taken does not declare, rather
# than fail that branch. The third zod takes, and ajv does not: its first branch, tried
# first, stripped `phone` before failing on `kind`, and the second then missed it.
UNION_VERDICTS: list[tuple[Any, Any, bool]] = [
    ({"kind": "mail", "to": "a@b.c"}, {"kind": "mail", "to": "a@b.c"}, True),
    ({"kind": "mail", "to": "a@b.c", "cc": "x"}, {"kind": "mail", "to": "a@b.c"}, True),
    ({"kind": "sms", "phone": "+1", "to": "a@b.c"}, {"kind": "sms", "phone": "+1"}, False),
    ({"kind": "sms", "phone": "+1", "cc": "x"}, {"kind": "sms", "phone": "+1"}, True),
    ({"kind": "sms", "to": "a@b.c"}, None, False),
    ({"kind": "fax", "to": "a@b.c"}, None, False),
]


@pytest.mark.parametrize("keyword", ["anyOf", "oneOf"])
@pytest.mark.parametrize(("channel", "seen", "_"), UNION_VERDICTS)
def test_a_union_member_loses_the_keys_its_branch_does_not_declare_as_with_ajv(
    keyword: str, channel: Any, seen: Any, _: bool
) -> None:
    """A member of a union of objects with a key its branch does not declare was refused
    here, where Novu's SDK strips the key, with zod's union as with ajv's `anyOf`: the
    trigger API refused the payload (it checks with this schema) and norm's SDK refused
    its execute."""
    schema = {
        "type": "object",
        "properties": {"channel": {keyword: ZOD_CHANNEL["anyOf"]}},
        "required": ["channel"],
        "additionalProperties": False,
    }

    @workflow("union", payload_schema=schema)
    def union(ctx: Context) -> None:
        ctx.step.sms("sms", lambda: {"body": json.dumps(ctx.payload["channel"], sort_keys=True)})

    payload = {"channel": channel}
    if seen is None:
        with pytest.raises(ExecutionEventPayloadInvalidError):
            union.execute(execute_body(payload, []))
        assert Schema.of(schema).errors(payload)
    else:
        outputs = union.execute(execute_body(payload, []))["outputs"]
        assert json.loads(outputs["body"]) == seen
        assert Schema.of(schema).errors(payload) == []


def test_union_verdicts_agree_with_ajv_run_by_node_where_novus_bridge_is_installed() -> None:
    schemas = [
        {"type": "object", "properties": {"channel": {k: ZOD_CHANNEL["anyOf"]}}}
        for k in ("anyOf", "oneOf")
    ]
    cases = [(s, {"channel": c}) for s in schemas for c, _, _ in UNION_VERDICTS]
    assert ajv_verdicts(cases) == [takes for _ in schemas for _, _, takes in UNION_VERDICTS]


def _tuple(*items: Any, **extra: Any) -> dict[str, Any]:
    return {"type": "object", "properties": {"t": {"type": "array", "items": list(items), **extra}}}


_LINE = {"type": "object", "properties": {"qty": {"default": 1}}, "additionalProperties": False}
_CARD = {"type": "object", "properties": {"card": {"type": "string"}}}
# (schema, value, the value as ajv leaves it), each checked by ajv itself below. None: refused.
FILLED_AS_AJV = [
    # A tuple's rest (zod's `z.tuple([...]).rest(...)`): each item filled and stripped.
    (
        _tuple({"type": "string"}, additionalItems=_LINE),
        {"t": ["a", {"x": 0}]},
        {"t": ["a", {"qty": 1}]},
    ),
    (
        _tuple({}, additionalItems={"type": "array", "items": [{"default": 7}]}),
        {"t": [0, []]},
        {"t": [0, [7]]},
    ),
    # A tuple shorter than its items: their defaults, a hole (null) before the last one.
    (_tuple({"default": 1}, {"default": 2}), {"t": [5]}, {"t": [5, 2]}),
    (_tuple({}, {"default": 2}), {"t": []}, {"t": [None, 2]}),
    (
        _tuple({"type": "object", "default": {}, "properties": {"k": {"default": 1}}}),
        {"t": []},
        {"t": [{"k": 1}]},
    ),
    (_tuple({"type": "string"}, {"default": 2}), {"t": []}, None),
    (_tuple({}, additionalItems={"default": 3}), {"t": []}, {"t": []}),
    # A dependency's schema, when its key is there: its defaults, its stripping.
    (
        {**_CARD, "dependencies": {"card": {"properties": {"zip": {"default": "-"}, "o": _LINE}}}},
        {"card": "1", "o": {"x": 0}},
        {"card": "1", "o": {"qty": 1}, "zip": "-"},
    ),
    ({**_CARD, "dependencies": {"card": {"properties": {"zip": {"default": "-"}}}}}, {}, {}),
    (
        {
            **_CARD,
            "dependencies": {
                "card": {"properties": {"card": {}, "b": {}}, "additionalProperties": False}
            },
        },
        {"card": "1", "b": 2, "c": 3},
        {"card": "1", "b": 2},
    ),
    ({**_CARD, "dependencies": {"card": ["zip"]}}, {"card": "1"}, None),
    # After the properties' defaults, in their written order, before the properties' values.
    (
        {
            "type": "object",
            "properties": {"card": {"default": "x"}},
            "dependencies": {"card": {"properties": {"zip": {"default": "-"}}}},
        },
        {},
        {"card": "x", "zip": "-"},
    ),
    (
        {
            "type": "object",
            "dependencies": {
                "a": {"properties": {"b": {"default": 1}}},
                "b": {"properties": {"c": {"default": 2}}},
            },
        },
        {"a": 1},
        {"a": 1, "b": 1, "c": 2},
    ),
    (
        {
            "type": "object",
            "dependencies": {
                "b": {"properties": {"c": {"default": 2}}},
                "a": {"properties": {"b": {"default": 1}}},
            },
        },
        {"a": 1},
        {"a": 1, "b": 1},
    ),
    (
        {
            "type": "object",
            "properties": {"a": {}, "o": _LINE},
            "dependencies": {"a": {"properties": {"o": {"default": {"x": 0}}}}},
        },
        {"a": 1},
        {"a": 1, "o": {"qty": 1}},
    ),
    (
        {
            "type": "object",
            "definitions": {"d": {"properties": {"b": {"default": 1}}}},
            "dependencies": {"a": {"$ref": "#/definitions/d"}},
        },
        {"a": 1},
        {"a": 1, "b": 1},
    ),
    # A key `additionalProperties` strips brings in no dependency.
    (
        {
            "type": "object",
            "properties": {"a": {}},
            "additionalProperties": False,
            "dependencies": {"card": {"properties": {"a": {"default": 1}}}},
        },
        {"card": 1},
        {},
    ),
    # 2019-09's dependentSchemas, which ajv's draft-07 class does not know.
    (
        {**_CARD, "dependentSchemas": {"card": {"properties": {"zip": {"default": "-"}}}}},
        {"card": "1"},
        {"card": "1"},
    ),
]


@pytest.mark.parametrize(("schema", "value", "filled"), FILLED_AS_AJV)
def test_dependencies_and_tuples_are_filled_and_stripped_as_with_ajv(
    schema: dict[str, Any], value: Any, filled: Any
) -> None:
    """A tuple's rest (`additionalItems`), a tuple's own defaults and a dependency's
    schema, which ajv fills in and strips as it does a property's: a workflow written
    for Novu's SDK read a default that norm's left out (a KeyError), and a rest item with
    a key more was refused, which Novu's SDK took."""
    if filled is None:
        with pytest.raises(SchemaInvalid):
            Schema.of(schema).validate(value)
    else:
        assert Schema.of(schema).validate(value) == filled


def test_dependencies_and_tuples_agree_with_ajv_run_by_node_where_novus_bridge_is_installed() -> (
    None
):
    results = ajv_results([(schema, value) for schema, value, _ in FILLED_AS_AJV])
    assert [taken for taken, _ in results] == [f is not None for *_, f in FILLED_AS_AJV]
    assert [v for taken, v in results if taken] == [f for *_, f in FILLED_AS_AJV if f is not None]


def test_a_key_a_dependency_fills_in_that_the_object_forbids_is_stripped_not_refused() -> None:
    """ajv strips an object's additional keys before its `dependencies` fill theirs in,
    and so takes such a key that `additionalProperties` forbids; checked again by
    jsonschema, it would refuse the value. norm takes it without the key."""
    schema = {
        "type": "object",
        "properties": {"a": {}},
        "additionalProperties": False,
        "dependencies": {"a": {"properties": {"b": {"default": 1}}}},
    }
    assert ajv_results([(schema, {"a": 1})]) == [(True, {"a": 1, "b": 1})]
    assert Schema.of(schema).validate({"a": 1}) == {"a": 1}


def test_a_workflow_reads_the_defaults_its_payloads_dependencies_fill_in() -> None:
    schema = {
        "type": "object",
        "properties": {"card": {"type": "string"}},
        "dependencies": {
            "card": {"properties": {"billing": {"type": "string", "default": "home"}}}
        },
    }

    @workflow("card-billing", payload_schema=schema)
    def card_billing(ctx: Context) -> None:
        ctx.step.sms("sms", lambda: {"body": f"{ctx.payload['card']} to {ctx.payload['billing']}"})

    assert card_billing.execute(execute_body({"card": "4242"}, []))["outputs"] == {
        "body": "4242 to home"
    }
