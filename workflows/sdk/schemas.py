"""JSON Schemas (or pydantic models) and the per-step-type output and result schemas."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from jsonschema import Draft202012Validator, FormatChecker, SchemaError, ValidationError, validators
from referencing import Registry, Resource
from referencing.exceptions import Unresolvable
from referencing.jsonschema import DRAFT202012

JsonSchema = dict[str, Any]
SchemaSource = Mapping[str, Any] | type  # a JSON Schema, or a pydantic BaseModel subclass
Problem = dict[str, str]  # {"path": "/field", "message": ...}

ANY_OBJECT: JsonSchema = {"type": "object"}
EMPTY_OBJECT: JsonSchema = {"type": "object", "properties": {}, "additionalProperties": False}


# The `format`s Novu's SDK checks (ajv with ajv-formats 2) that jsonschema checks too with
# norm's dependencies (rfc3339-validator, rfc3986-validator, fqdn). Any other format is no
# check, as in jsonschema: ajv's others go unchecked (url, duration, byte, int32, ...; regex
# too, whose JavaScript syntax Python's `re` would refuse in part), and ajv's refusal of a
# schema naming a format it lacks is not copied (a pydantic model's names some: "path").
CHECKED_FORMATS = frozenset(
    {"date", "time", "date-time", "email", "hostname", "ipv4", "ipv6", "uri", "uri-reference"}
    | {"uuid"}
)
_OFFSET = re.compile(r"(z|[+-]\d\d(:?\d\d)?)$", re.IGNORECASE)


def _format_checker() -> FormatChecker:
    # The 2020-12 checkers for every draft: ajv checks `uuid` in a draft-07 schema too.
    known = Draft202012Validator.FORMAT_CHECKER.checkers
    checker = FormatChecker(formats=())
    checker.checkers = {name: known[name] for name in CHECKED_FORMATS if name in known}
    rfc3339_time = checker.checkers.get("time")
    if rfc3339_time is not None:
        check, raises = rfc3339_time

        def time(value: object) -> bool:
            # ajv-formats 2 takes a time without an offset ("09:30:00"); RFC 3339 does not.
            if isinstance(value, str) and not _OFFSET.search(value):
                value += "Z"
            return check(value)

        checker.checkers["time"] = (time, raises)
    return checker


# Every Schema's; norm's trigger API checks payloads with a Schema too, so that a payload
# the API accepts is one the bridge accepts.
FORMAT_CHECKER = _format_checker()


class SchemaInvalid(Exception):
    def __init__(self, problems: list[Problem]) -> None:
        super().__init__(problems)
        self.problems = problems


class SchemaUnusable(Exception):
    """A declared schema that cannot be applied: no JSON Schema, or a `$ref` to nowhere."""


def _is_model(source: object) -> bool:
    # Duck-typed so that the SDK never imports pydantic unless a model is given.
    return isinstance(source, type) and hasattr(source, "model_json_schema")


def _pointer(path: Any) -> str:
    return "".join(f"/{part}" for part in path)


def _fill(
    schema: Mapping[str, Any],
    value: Any,
    whole: Any,
    followed: frozenset[str] = frozenset(),
) -> Any:
    """Apply `default`s and drop keys `additionalProperties: false` forbids, as ajv does:
    also through a `$ref` within the schema (`whole`, the validator of the schema `schema`
    is part of) and each `allOf`, whose defaults come first, as ajv's do. `followed`: the
    refs taken for this value (`{"$ref": "#"}` at the top would loop)."""
    if not isinstance(schema, Mapping):  # a boolean schema (`true`: anything) has neither
        return value
    root = whole.schema
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref not in followed:
        target = _local_ref(root, ref)
        value = _fill(target, value, whole, followed | {ref}) if target is not None else value
    every = schema.get("allOf")
    for sub in every if isinstance(every, list) else []:
        value = _fill(sub, value, whole, followed)
    if isinstance(value, list):
        # ajv fills each item too: `{"items": {"properties": {"qty": {"default": 1}}}}`.
        items = schema.get("items")
        positional = schema.get("prefixItems", items if isinstance(items, list) else [])
        positional = positional if isinstance(positional, list) else []
        rest = items if isinstance(items, Mapping) else None
        for n, item in enumerate(value):
            sub = positional[n] if n < len(positional) else rest
            if sub is not None:
                value[n] = _fill(sub, item, whole)
        return value
    if not isinstance(value, dict):
        return value
    if "if" in schema:
        # ajv fills in the defaults of the `then` or `else` the value takes, and before those
        # of `properties` (Novu's in-app redirect: target `_self` for a path, else `_blank`).
        branch = schema.get("then") if _holds(schema["if"], value, whole) else schema.get("else")
        value = _fill(branch, value, whole, followed) if branch is not None else value
    properties = schema.get("properties")
    properties = properties if isinstance(properties, Mapping) else {}
    for key, sub in properties.items():
        if key in value:
            value[key] = _fill(sub, value[key], whole)
        elif isinstance(sub, Mapping) and "default" in sub:
            value[key] = copy.deepcopy(sub["default"])
    extra = schema.get("additionalProperties")
    if extra is False or isinstance(extra, Mapping):
        # ajv's removeAdditional "failing": an additional key goes when `false` forbids it,
        # or its value fails the schema given (`z.record(z.string())`'s), rather than fail
        # the whole. A key that `patternProperties` matches is no additional one
        # (check_schema made sure each pattern compiles).
        patterns = schema.get("patternProperties")
        patterns = list(patterns) if isinstance(patterns, Mapping) else []
        for key in [k for k in value if k not in properties]:
            if any(re.search(pattern, key) for pattern in patterns):
                continue
            if extra is False or not _holds(extra, value[key], whole):
                del value[key]
    return value


def _local_ref(root: Mapping[str, Any], ref: str) -> Any:
    """What a `$ref` in the schema `root` points at, resolved as its validator resolves it
    (`#/$defs/address`, `#`, zod-to-json-schema's `#/properties/billing`, an anchor); None
    for one that does not resolve, which validation reports."""
    resource = Resource.from_contents(root, default_specification=DRAFT202012)
    try:
        return Registry().resolver_with_root(resource).lookup(ref).contents
    except Unresolvable:
        return None


def _holds(condition: Any, value: Any, whole: Any) -> bool:
    """Whether `value` is valid against `condition`, a part of the schema `whole` checks:
    as part of it, as ajv checks it, so that a `$ref` within it resolves and its draft is
    the schema's (alone, each read as failing: a valid key stripped). False for a `$ref`
    to nowhere, which validation reports."""
    try:
        return bool(whole.evolve(schema=condition).is_valid(value))
    except Unresolvable:
        return False


@dataclass
class Schema:
    """Validates data and returns it cleaned: defaults applied, forbidden extra keys removed."""

    json_schema: JsonSchema
    model: type | None = None
    _validator: Any = field(init=False, repr=False)

    @classmethod
    def of(cls, source: SchemaSource | None, default: JsonSchema = ANY_OBJECT) -> Schema:
        """The compiled schema of `source`, shared: a workflow declares its steps again on
        every execute, and checking a schema against its meta-schema costs milliseconds."""
        if _is_model(source):
            return _model_schema(source)  # type: ignore[arg-type]
        try:
            text = json.dumps(default if source is None else source, sort_keys=True)
        except (TypeError, ValueError):  # not JSON (a Python value in a `default`?)
            return cls(copy.deepcopy(dict(default if source is None else source)))
        return _json_schema(text)

    def __post_init__(self) -> None:
        validator_class = validators.validator_for(self.json_schema, default=Draft202012Validator)
        try:
            validator_class.check_schema(self.json_schema)
        except SchemaError as exc:
            at = _pointer(exc.absolute_path)
            raise SchemaUnusable(
                f"is not a valid JSON Schema: {exc.message}" + (f" (at {at})" if at else "")
            ) from exc
        self._validator = validator_class(self.json_schema, format_checker=FORMAT_CHECKER)

    def defaults(self, value: Any) -> Any:
        return _fill(self.json_schema, copy.deepcopy(value), self._validator)

    def errors(self, value: Any) -> list[ValidationError]:
        """How `value` fails the JSON Schema once its defaults are applied."""
        return self._errors(self.defaults(value))

    def _errors(self, filled: Any) -> list[ValidationError]:
        try:
            return list(self._validator.iter_errors(filled))
        except Unresolvable as exc:
            raise SchemaUnusable(f"cannot be applied: {exc}") from exc

    def validate(self, value: Any) -> Any:
        if self.model is not None:
            return self._validate_model(value)
        value = self.defaults(value)
        errors = self._errors(value)
        if errors:
            raise SchemaInvalid(
                [{"path": _pointer(e.absolute_path), "message": e.message} for e in errors]
            )
        return value

    def _validate_model(self, value: Any) -> Any:
        import pydantic

        try:
            instance = self.model.model_validate(value)  # type: ignore[union-attr]
        except pydantic.ValidationError as exc:
            problems = [{"path": _pointer(e["loc"]), "message": e["msg"]} for e in exc.errors()]
            raise SchemaInvalid(problems) from exc
        return instance.model_dump(mode="json")


@lru_cache(maxsize=512)
def _json_schema(text: str) -> Schema:
    return Schema(json.loads(text))


@lru_cache(maxsize=512)
def _model_schema(model: type) -> Schema:
    return Schema(model.model_json_schema(), model=model)  # type: ignore[attr-defined]


def _object(properties: JsonSchema, *required: str, **extra: Any) -> JsonSchema:
    return {
        "type": "object",
        "properties": properties,
        "required": list(required),
        "additionalProperties": False,
        **extra,
    }


_STRING: JsonSchema = {"type": "string"}
_TEXT: JsonSchema = {"type": "string", "minLength": 1}
_BOOL: JsonSchema = {"type": "boolean"}
_DATE_OR_NULL: JsonSchema = {"type": ["string", "null"], "format": "date-time"}
_UNITS = ["seconds", "minutes", "hours", "days", "weeks", "months"]
_TARGETS = ["_self", "_blank", "_parent", "_top", "_unfencedTop"]

_REDIRECT = _object(
    {
        "url": {"type": "string", "pattern": r"^(https?://|/)"},
        "target": {"type": "string", "enum": _TARGETS, "default": "_blank"},
    },
    "url",
    # As Novu's: a path opens in the same window, a URL in another (the feed's `target`).
    **{
        "if": {"properties": {"url": {"type": "string", "pattern": "^/"}}},
        "then": {"properties": {"target": {"default": "_self"}}},
        "else": {"properties": {"target": {"default": "_blank"}}},
    },
)
_ACTION = _object({"label": _STRING, "redirect": _REDIRECT}, "label")

EMAIL_OUTPUT = _object(
    {
        "subject": _TEXT,
        "body": _STRING,
        "from": _object({"email": _STRING, "name": _STRING}),
        "replyTo": _STRING,
        "preheader": _STRING,
        "useProviderDefaults": _BOOL,
    },
    "subject",
    "body",
)
IN_APP_OUTPUT = _object(
    {
        "subject": _TEXT,
        "body": _TEXT,
        "avatar": {"type": "string", "format": "uri"},
        "primaryAction": _ACTION,
        "secondaryAction": _ACTION,
        "redirect": _REDIRECT,
        "data": {"type": "object", "additionalProperties": True},
    },
    anyOf=[{"required": ["subject"]}, {"required": ["body"]}],
)
IN_APP_RESULT = _object(
    {"seen": _BOOL, "read": _BOOL, "lastSeenDate": _DATE_OR_NULL, "lastReadDate": _DATE_OR_NULL},
    "seen",
    "read",
    "lastSeenDate",
    "lastReadDate",
)
_EXTEND = {"extendToSchedule": _BOOL}
DELAY_OUTPUT: JsonSchema = {
    "type": "object",
    "oneOf": [
        _object(
            {"type": {"const": "regular"}, "amount": {"type": "number"}, "unit": {"enum": _UNITS}}
            | _EXTEND,
            "amount",
            "unit",
        ),
        _object({"type": {"const": "timed"}, "cron": _STRING} | _EXTEND, "cron"),
        _object({"type": {"const": "dynamic"}, "dynamicKey": _STRING} | _EXTEND, "dynamicKey"),
    ],
}
DELAY_RESULT = _object({"duration": {"type": "number"}}, "duration")


@dataclass(frozen=True)
class StepType:
    name: str
    output: JsonSchema
    result: JsonSchema | None  # None: the result is the output (custom steps)
    placeholder: JsonSchema = field(default_factory=dict)  # the result discovery pretends to have


STEP_TYPES: dict[str, StepType] = {
    t.name: t
    for t in (
        StepType("email", EMAIL_OUTPUT, EMPTY_OBJECT),
        StepType("sms", _object({"body": _STRING}, "body"), EMPTY_OBJECT),
        StepType(
            "push", _object({"subject": _STRING, "body": _STRING}, "subject", "body"), EMPTY_OBJECT
        ),
        StepType(
            "chat",
            _object(
                {"body": _STRING, "card": {"type": "object"}},
                anyOf=[{"required": ["body"]}, {"required": ["card"]}],
            ),
            EMPTY_OBJECT,
        ),
        StepType(
            "in_app",
            IN_APP_OUTPUT,
            IN_APP_RESULT,
            {"seen": False, "read": False, "lastSeenDate": None, "lastReadDate": None},
        ),
        StepType("delay", DELAY_OUTPUT, DELAY_RESULT, {"duration": 0}),
        StepType("custom", ANY_OBJECT, None),
    )
}
