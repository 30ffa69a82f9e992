"""JSON Schemas (or pydantic models) and the per-step-type output and result schemas."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import regress
from jsonschema import Draft7Validator, FormatChecker, SchemaError, ValidationError, validators
from jsonschema.exceptions import best_match
from referencing import Registry, Resource
from referencing.exceptions import Unresolvable
from referencing.jsonschema import DRAFT7

JsonSchema = dict[str, Any]
SchemaSource = Mapping[str, Any] | type  # a JSON Schema, or a pydantic BaseModel subclass
Problem = dict[str, str]  # {"path": "/field", "message": ...}

ANY_OBJECT: JsonSchema = {"type": "object"}
EMPTY_OBJECT: JsonSchema = {"type": "object", "properties": {}, "additionalProperties": False}
# Controls a step or workflow does not declare: Novu's SDK's schema for them (its
# `emptySchema`), under which every control sent is dropped, so none reaches a resolver.
NO_CONTROLS: JsonSchema = {
    "type": "object",
    "properties": {},
    "required": [],
    "additionalProperties": False,
}


# The `format`s Novu's SDK checks, as it checks them: ajv-formats 2.1.1's "full" formats
# (ajv 8 under @novu/framework 2.13.2), ported from its dist/formats.js (MIT), rather than
# jsonschema's RFC checkers, which judged otherwise both ways: they took `a b@c.de` as an
# email (a trigger accepted whose every notification Novu's bridge then refused) and
# refused a date-time without an offset, or with `+0100` (a trigger refused that the bridge
# would run). The patterns end at `\Z`, where JS's `$` ends (Python's `$` also stands
# before a final newline), and fold case in ASCII only, as JS's `/i` does for them.
# Any other format is no check, as in jsonschema: ajv's others go unchecked (url,
# duration, byte, int32, ...; regex too, whose JavaScript syntax Python's `re` would
# refuse in part), and ajv's refusal of a schema naming a format it lacks is not copied
# (a pydantic model's names some: "path").
_AJV_FLAGS = re.IGNORECASE | re.ASCII
_FORMAT_PATTERNS = {
    "email": re.compile(
        r"""^[a-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[a-z0-9!#$%&'*+/=?^_`{|}~-]+)*@(?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?\.)+[a-z0-9](?:[a-z0-9-]*[a-z0-9])?\Z""",
        _AJV_FLAGS,
    ),
    "hostname": re.compile(
        r"""^(?=.{1,253}\.?\Z)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[-0-9a-z]{0,61}[0-9a-z])?)*\.?\Z""",
        _AJV_FLAGS,
    ),
    "ipv4": re.compile(
        r"^(?:(?:25[0-5]|2[0-4]\d|[01]?\d\d?)\.){3}(?:25[0-5]|2[0-4]\d|[01]?\d\d?)\Z", re.ASCII
    ),
    "ipv6": re.compile(
        r"^((([0-9a-f]{1,4}:){7}([0-9a-f]{1,4}|:))|(([0-9a-f]{1,4}:){6}(:[0-9a-f]{1,4}|((25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3})|:))|(([0-9a-f]{1,4}:){5}(((:[0-9a-f]{1,4}){1,2})|:((25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3})|:))|(([0-9a-f]{1,4}:){4}(((:[0-9a-f]{1,4}){1,3})|((:[0-9a-f]{1,4})?:((25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}))|:))|(([0-9a-f]{1,4}:){3}(((:[0-9a-f]{1,4}){1,4})|((:[0-9a-f]{1,4}){0,2}:((25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}))|:))|(([0-9a-f]{1,4}:){2}(((:[0-9a-f]{1,4}){1,5})|((:[0-9a-f]{1,4}){0,3}:((25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}))|:))|(([0-9a-f]{1,4}:){1}(((:[0-9a-f]{1,4}){1,6})|((:[0-9a-f]{1,4}){0,4}:((25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}))|:))|(:(((:[0-9a-f]{1,4}){1,7})|((:[0-9a-f]{1,4}){0,5}:((25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}))|:)))\Z",
        _AJV_FLAGS,
    ),
    "uuid": re.compile(r"^(?:urn:uuid:)?[0-9a-f]{8}-(?:[0-9a-f]{4}-){3}[0-9a-f]{12}\Z", _AJV_FLAGS),
    "uri-reference": re.compile(
        r"""^(?:[a-z][a-z0-9+\-.]*:)?(?:\/?\/(?:(?:[a-z0-9\-._~!$&'()*+,;=:]|%[0-9a-f]{2})*@)?(?:\[(?:(?:(?:(?:[0-9a-f]{1,4}:){6}|::(?:[0-9a-f]{1,4}:){5}|(?:[0-9a-f]{1,4})?::(?:[0-9a-f]{1,4}:){4}|(?:(?:[0-9a-f]{1,4}:){0,1}[0-9a-f]{1,4})?::(?:[0-9a-f]{1,4}:){3}|(?:(?:[0-9a-f]{1,4}:){0,2}[0-9a-f]{1,4})?::(?:[0-9a-f]{1,4}:){2}|(?:(?:[0-9a-f]{1,4}:){0,3}[0-9a-f]{1,4})?::[0-9a-f]{1,4}:|(?:(?:[0-9a-f]{1,4}:){0,4}[0-9a-f]{1,4})?::)(?:[0-9a-f]{1,4}:[0-9a-f]{1,4}|(?:(?:25[0-5]|2[0-4]\d|[01]?\d\d?)\.){3}(?:25[0-5]|2[0-4]\d|[01]?\d\d?))|(?:(?:[0-9a-f]{1,4}:){0,5}[0-9a-f]{1,4})?::[0-9a-f]{1,4}|(?:(?:[0-9a-f]{1,4}:){0,6}[0-9a-f]{1,4})?::)|[Vv][0-9a-f]+\.[a-z0-9\-._~!$&'()*+,;=:]+)\]|(?:(?:25[0-5]|2[0-4]\d|[01]?\d\d?)\.){3}(?:25[0-5]|2[0-4]\d|[01]?\d\d?)|(?:[a-z0-9\-._~!$&'"()*+,;=]|%[0-9a-f]{2})*)(?::\d*)?(?:\/(?:[a-z0-9\-._~!$&'"()*+,;=:@]|%[0-9a-f]{2})*)*|\/(?:(?:[a-z0-9\-._~!$&'"()*+,;=:@]|%[0-9a-f]{2})+(?:\/(?:[a-z0-9\-._~!$&'"()*+,;=:@]|%[0-9a-f]{2})*)*)?|(?:[a-z0-9\-._~!$&'"()*+,;=:@]|%[0-9a-f]{2})+(?:\/(?:[a-z0-9\-._~!$&'"()*+,;=:@]|%[0-9a-f]{2})*)*)?(?:\?(?:[a-z0-9\-._~!$&'"()*+,;=:@/?]|%[0-9a-f]{2})*)?(?:#(?:[a-z0-9\-._~!$&'"()*+,;=:@/?]|%[0-9a-f]{2})*)?\Z""",
        _AJV_FLAGS,
    ),
}
# A uri: a scheme, and a `/` or a `:` somewhere (ajv-formats' NOT_URI_FRAGMENT).
_URI = re.compile(
    r"""^(?:[a-z][a-z0-9+\-.]*:)(?:\/?\/(?:(?:[a-z0-9\-._~!$&'()*+,;=:]|%[0-9a-f]{2})*@)?(?:\[(?:(?:(?:(?:[0-9a-f]{1,4}:){6}|::(?:[0-9a-f]{1,4}:){5}|(?:[0-9a-f]{1,4})?::(?:[0-9a-f]{1,4}:){4}|(?:(?:[0-9a-f]{1,4}:){0,1}[0-9a-f]{1,4})?::(?:[0-9a-f]{1,4}:){3}|(?:(?:[0-9a-f]{1,4}:){0,2}[0-9a-f]{1,4})?::(?:[0-9a-f]{1,4}:){2}|(?:(?:[0-9a-f]{1,4}:){0,3}[0-9a-f]{1,4})?::[0-9a-f]{1,4}:|(?:(?:[0-9a-f]{1,4}:){0,4}[0-9a-f]{1,4})?::)(?:[0-9a-f]{1,4}:[0-9a-f]{1,4}|(?:(?:25[0-5]|2[0-4]\d|[01]?\d\d?)\.){3}(?:25[0-5]|2[0-4]\d|[01]?\d\d?))|(?:(?:[0-9a-f]{1,4}:){0,5}[0-9a-f]{1,4})?::[0-9a-f]{1,4}|(?:(?:[0-9a-f]{1,4}:){0,6}[0-9a-f]{1,4})?::)|[Vv][0-9a-f]+\.[a-z0-9\-._~!$&'()*+,;=:]+)\]|(?:(?:25[0-5]|2[0-4]\d|[01]?\d\d?)\.){3}(?:25[0-5]|2[0-4]\d|[01]?\d\d?)|(?:[a-z0-9\-._~!$&'()*+,;=]|%[0-9a-f]{2})*)(?::\d*)?(?:\/(?:[a-z0-9\-._~!$&'()*+,;=:@]|%[0-9a-f]{2})*)*|\/(?:(?:[a-z0-9\-._~!$&'()*+,;=:@]|%[0-9a-f]{2})+(?:\/(?:[a-z0-9\-._~!$&'()*+,;=:@]|%[0-9a-f]{2})*)*)?|(?:[a-z0-9\-._~!$&'()*+,;=:@]|%[0-9a-f]{2})+(?:\/(?:[a-z0-9\-._~!$&'()*+,;=:@]|%[0-9a-f]{2})*)*)(?:\?(?:[a-z0-9\-._~!$&'()*+,;=:@/?]|%[0-9a-f]{2})*)?(?:#(?:[a-z0-9\-._~!$&'()*+,;=:@/?]|%[0-9a-f]{2})*)?\Z""",
    _AJV_FLAGS,
)
_DATE = re.compile(r"^(\d\d\d\d)-(\d\d)-(\d\d)\Z", re.ASCII)
_DAYS = (0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
_TIME = re.compile(r"^(\d\d):(\d\d):(\d\d)(\.\d+)?(z|[+-]\d\d(?::?\d\d)?)?\Z", _AJV_FLAGS)
# What JS's `\s` matches (Python's differs: no U+FEFF, but U+001C to U+001F), and the
# line ends its `.` does not match (Python's `.` matches all but `\n`).
_JS_SPACES = r"\t\n\v\f\r \u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"
_JS_LINE_ENDS = r"\n\r\u2028\u2029"
# A date-time's date and time are apart by a `t`, or by what JS's `\s` matches.
_DATE_TIME_SEPARATOR = re.compile(rf"[tT{_JS_SPACES}]")


def _date(value: str) -> bool:
    match = _DATE.search(value)
    if match is None:
        return False
    year, month, day = (int(part) for part in match.groups())
    leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
    return 1 <= month <= 12 and 1 <= day <= (29 if month == 2 and leap else _DAYS[month])


def _time(value: str) -> bool:
    # No offset is required, not even in a date-time: ajv-formats 2.1.1 means to require
    # one there, but compares the missing one (undefined) with "".
    match = _TIME.search(value)
    if match is None:
        return False
    hour, minute, second = (int(part) for part in match.groups()[:3])
    return (hour <= 23 and minute <= 59 and second <= 59) or (hour, minute, second) == (23, 59, 60)


def _date_time(value: str) -> bool:
    parts = _DATE_TIME_SEPARATOR.split(value)
    return len(parts) == 2 and _date(parts[0]) and _time(parts[1])


def _uri(value: str) -> bool:
    return ("/" in value or ":" in value) and _URI.search(value) is not None


_FORMATS: dict[str, Callable[[str], bool]] = {
    "date": _date,
    "time": _time,
    "date-time": _date_time,
    "uri": _uri,
    **{
        # mypy infers no lambda with a default (which binds each its pattern).
        name: (lambda value, p=pattern: p.search(value) is not None)  # type: ignore[misc]
        for name, pattern in _FORMAT_PATTERNS.items()
    },
}
CHECKED_FORMATS = frozenset(_FORMATS)


def _format_checker() -> FormatChecker:
    # For every draft: ajv checks `uuid` in a draft-07 schema too.
    checker = FormatChecker(formats=())
    for name, check in _FORMATS.items():
        # A format says nothing of a value that is no string, in ajv as in jsonschema.
        checker.checks(name)(lambda value, check=check: not isinstance(value, str) or check(value))
    return checker


# Every Schema's; norm's trigger API checks payloads with a Schema too, so that a payload
# the API accepts is one the bridge accepts.
FORMAT_CHECKER = _format_checker()


# A `pattern` as ajv reads it: a JavaScript regex with the `u` flag, by regress (a Rust
# ECMAScript engine). Read by Python's `re`, `^\w+$` took "José" and "abc\n", which
# Novu's SDK refuses, and a `(?<id>..)` or zod's `.emoji()`
# (`\p{Extended_Pictographic}`) made the whole schema unusable: every trigger of a Novu
# bridge's workflow refused (bridge_invalid_schema).
@lru_cache(maxsize=512)
def _js_regex(pattern: str) -> regress.Regex:
    """`pattern` compiled as ajv compiles it; regress.RegressError for one that is no
    regex in JavaScript."""
    return regress.Regex(pattern, "u")


# A lone surrogate ("\ud800": a JavaScript string cut within an emoji, which JSON escapes
# and Python's decoder takes) has no UTF-8 form, which regress needs: a value holding one
# failed the whole execute with a 500, which norm retries. ajv's `u` regex reads it as a
# code point of its own, as regress reads U+FFFD: `^.$` matches it, `^\p{L}$` does not.
_SURROGATE = re.compile("[\ud800-\udfff]")


def _pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Any:
    """jsonschema's `pattern` keyword, the pattern read as ajv reads it (one the schema's
    check let through, which compiles)."""
    if not validator.is_type(instance, "string"):
        return
    if _js_regex(pattern).find(_SURROGATE.sub("\ufffd", instance)) is None:
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


@lru_cache(maxsize=8)
def _as_ajv(validator_class: Any) -> Any:
    """`validator_class` as ajv 8 validates: `pattern`s read as JS reads them, and the
    keywords beside a `$ref` applied (jsonschema's drafts up to 7 ignore them)."""
    return validators.create(
        meta_schema=validator_class.META_SCHEMA,
        validators={**validator_class.VALIDATORS, "pattern": _pattern},
        type_checker=validator_class.TYPE_CHECKER,
        format_checker=validator_class.FORMAT_CHECKER,
        id_of=validator_class.ID_OF,
    )


def _js_readable(error: ValidationError) -> bool:
    """Whether a meta-schema error is a `pattern` Python's `re` refused that ajv reads."""
    if error.validator != "format" or error.validator_value != "regex":
        return False
    if not error.absolute_path or error.absolute_path[-1] != "pattern":
        return False  # a patternProperties key, which Python's `re` reads
    try:
        _js_regex(error.instance)
    except regress.RegressError:
        return False
    return True


def _meta_schema_error(validator_class: Any, schema: Any) -> ValidationError | None:
    """Why `schema` is no JSON Schema of its draft, as ajv would find it: the first error
    check_schema meets but a `pattern` Python's `re` refuses and JavaScript reads."""
    try:
        validator_class.check_schema(schema)
    except SchemaError:
        # check_schema stops at its first error: its checks run again to pass such ones.
        checks = validators.validator_for(validator_class.META_SCHEMA).FORMAT_CHECKER
        meta = validator_class(validator_class.META_SCHEMA, format_checker=checks)
        return next((e for e in meta.iter_errors(schema) if not _js_readable(e)), None)
    return None


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
    schema: Mapping[str, Any] | bool,
    value: Any,
    whole: Any,
    followed: frozenset[str] = frozenset(),
    filling: frozenset[int] = frozenset(),
    defaults: bool = True,
) -> Any:
    """Apply `default`s and drop keys `additionalProperties: false` forbids, as ajv does:
    also through a `$ref` within the schema (`whole`, the validator of the schema `schema`
    is part of) and each `allOf`, whose defaults come first, as ajv's do, and the branch
    of an `anyOf` or a `oneOf` the value takes. `followed`: the refs taken for this value
    (`{"$ref": "#"}` at the top would loop). `filling`: the (ids of the) subschemas whose
    default this value is within. `defaults`: False to drop keys only."""
    if not isinstance(schema, Mapping):  # a boolean schema (`true`: anything) has neither
        return value
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref not in followed:
        target = _local_ref(whole.schema, ref)
        if target is not None:
            value = _fill(target, value, whole, followed | {ref}, filling, defaults)
    every = schema.get("allOf")
    for sub in every if isinstance(every, list) else []:
        value = _fill(sub, value, whole, followed, filling, defaults)
    for keyword in ("anyOf", "oneOf"):
        branches = schema.get(keyword)
        if isinstance(branches, list) and isinstance(value, dict | list):
            value = _branch_stripped(branches, value, whole)
    if isinstance(value, list):
        return _fill_items(schema, value, whole, filling, defaults)
    if isinstance(value, dict):
        return _fill_object(schema, value, whole, followed, filling, defaults)
    return value


def _branch_stripped(branches: list[Any], value: Any, whole: Any) -> Any:
    """`value` as the first of an `anyOf`'s or a `oneOf`'s `branches` it passes takes it:
    without the keys that branch's `additionalProperties` forbids. ajv strips them as it
    tries each branch (removeAdditional), and zod strips an object's unknown keys in each
    option of a union (zod-to-json-schema writes `z.union` and `z.discriminatedUnion` of
    objects as an `anyOf` of `additionalProperties: false` objects): a union member with
    a key more, which Novu's SDK took, was refused. Unchanged when no branch takes it. No
    defaults are filled in here, as ajv fills in none under an `anyOf` or a `oneOf`; and
    each branch is tried on the value as given, where ajv tries it on what the branches
    before stripped from it: ajv refuses a few values so that norm takes, never the
    reverse."""
    for branch in branches:
        stripped = _fill(branch, copy.deepcopy(value), whole, defaults=False)
        if _holds(branch, stripped, whole):
            return stripped
    return value


def _fill_items(
    schema: Mapping[str, Any],
    value: list[Any],
    whole: Any,
    filling: frozenset[int],
    defaults: bool = True,
) -> list[Any]:
    """ajv fills each item too: `{"items": {"properties": {"qty": {"default": 1}}}}`, and
    each item past a tuple's (`"items": [...]`) by its `additionalItems`. A tuple shorter
    than its `items` gets their defaults, as ajv's: a position before the last default
    with none of its own is null (ajv leaves a hole, which JSON writes as null)."""
    items = schema.get("items")
    positional = schema.get("prefixItems", items if isinstance(items, list) else [])
    positional = positional if isinstance(positional, list) else []
    rest = items if isinstance(items, Mapping) else None
    if isinstance(items, list) and isinstance(schema.get("additionalItems"), Mapping):
        rest = schema["additionalItems"]
    filled: set[int] = set()
    if defaults and isinstance(items, list):  # ajv fills no 2020-12 `prefixItems`
        given = len(value)
        for n, sub in enumerate(items[given:], start=given):
            if isinstance(sub, Mapping) and "default" in sub:
                value.extend([None] * (n - len(value)) + [copy.deepcopy(sub["default"])])
                filled.add(n)
    for n, item in enumerate(value):
        sub = positional[n] if n < len(positional) else rest
        if sub is not None:
            value[n] = _filled(sub, item, whole, filling, defaults, n in filled)
    return value


def _filled(
    sub: Any, value: Any, whole: Any, filling: frozenset[int], defaults: bool, default: bool
) -> Any:
    """`value`, a property's or an item's, filled by its schema `sub`. ajv goes on into a
    default it filled in (`default`), as into a value given: an object defaulted to `{}`
    gets its own properties' defaults (Novu's SDK ran on them, norm's on a KeyError). A
    default within itself, through a `$ref`, ajv fills until its stack overflows (a 500):
    here, once."""
    if not default:
        return _fill(sub, value, whole, filling=filling, defaults=defaults)
    if id(sub) in filling:
        return value
    return _fill(sub, value, whole, filling=filling | {id(sub)})


def _fill_object(
    schema: Mapping[str, Any],
    value: dict[str, Any],
    whole: Any,
    followed: frozenset[str],
    filling: frozenset[int],
    defaults: bool = True,
) -> dict[str, Any]:
    if "if" in schema:
        # ajv fills in the defaults of the `then` or `else` the value takes, and before those
        # of `properties` (Novu's in-app redirect: target `_self` for a path, else `_blank`).
        branch = schema.get("then") if _holds(schema["if"], value, whole) else schema.get("else")
        if branch is not None:
            value = _fill(branch, value, whole, followed, filling, defaults)
    properties = schema.get("properties")
    properties = properties if isinstance(properties, Mapping) else {}
    # As ajv: the defaults, the additional keys, `dependencies`, then each property's
    # value (a default a dependency filled in too).
    filled = _defaults_filled(properties, value) if defaults else set()
    _drop_additional(schema, value, properties, whole)
    depended = _dependencies_filled(schema, value, whole, followed, filling, defaults)
    if depended is not None:
        # ajv takes a key a dependency filled in that `additionalProperties` forbids: it
        # stripped before. Checked again, such a key would refuse the value; stripped, the
        # value is taken without it.
        value = depended
        _drop_additional(schema, value, properties, whole)
    for key, sub in properties.items():
        if key in value:
            value[key] = _filled(sub, value[key], whole, filling, defaults, key in filled)
    patterns = schema.get("patternProperties")
    for pattern, sub in patterns.items() if isinstance(patterns, Mapping) else ():
        # ajv goes into the value of each key a pattern matches, as into a property's:
        # defaults filled in, forbidden keys stripped (an entry with a key more was
        # refused here, which Novu's SDK took).
        for key in [k for k in value if re.search(pattern, k)]:
            value[key] = _fill(sub, value[key], whole, filling=filling, defaults=defaults)
    return value


def _dependencies_filled(
    schema: Mapping[str, Any],
    value: dict[str, Any],
    whole: Any,
    followed: frozenset[str],
    filling: frozenset[int],
    defaults: bool,
) -> Any:
    """`value` filled by the schema of each of its keys' `dependencies`, in their order
    (each sees what those before filled in, as with ajv), or None when it has none. Not
    2019-09's dependentSchemas, which ajv's draft-07 class (Novu's SDK's) does not know;
    nor a list of keys that must be there too, which only validation checks."""
    dependencies = schema.get("dependencies") if "dependencies" in whole.VALIDATORS else None
    applied = False
    for key, sub in dependencies.items() if isinstance(dependencies, Mapping) else ():
        if key in value and not isinstance(sub, list):
            value = _fill(sub, value, whole, followed, filling, defaults)
            applied = True
    return value if applied else None


def _defaults_filled(properties: Mapping[str, Any], value: dict[str, Any]) -> set[str]:
    """The keys of `value` given their `properties`' defaults, which it lacked."""
    filled: set[str] = set()
    for key, sub in properties.items():
        if key not in value and isinstance(sub, Mapping) and "default" in sub:
            value[key] = copy.deepcopy(sub["default"])
            filled.add(key)
    return filled


def _drop_additional(
    schema: Mapping[str, Any], value: dict[str, Any], properties: Mapping[str, Any], whole: Any
) -> None:
    """ajv's removeAdditional "failing": an additional key goes when `false` forbids it, or
    its value fails the schema given (`z.record(z.string())`'s), rather than fail the
    whole. A key that `patternProperties` matches is no additional one (check_schema made
    sure each pattern compiles). A value the schema given takes loses, as ajv strips them
    while it checks it, the keys that schema forbids: `z.record(z.object({...}))`'s entry
    with a key more was dropped whole, where Novu's SDK kept it without that key. ajv
    fills in no default there."""
    extra = schema.get("additionalProperties")
    if not (extra is False or isinstance(extra, Mapping)):
        return
    patterns = schema.get("patternProperties")
    patterns = list(patterns) if isinstance(patterns, Mapping) else []
    for key in [k for k in value if k not in properties]:
        if any(re.search(pattern, key) for pattern in patterns):
            continue
        if extra is False:
            del value[key]
            continue
        stripped = _fill(extra, copy.deepcopy(value[key]), whole, defaults=False)
        if _holds(extra, stripped, whole):
            value[key] = stripped
        else:
            del value[key]


def _local_ref(root: Mapping[str, Any], ref: str) -> Any:
    """What a `$ref` in the schema `root` points at, resolved as its validator resolves it
    (`#/$defs/address`, `#`, zod-to-json-schema's `#/properties/billing`, an anchor); None
    for one that does not resolve, which validation reports."""
    resource = Resource.from_contents(root, default_specification=DRAFT7)
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
        if source is not None and not isinstance(source, Mapping | bool):
            # A model's instance (`Controls()` for `Controls`) was read as the dict of its
            # fields, a schema that checks nothing; a dataclass's, a 500.
            raise SchemaUnusable(
                f"is a {type(source).__name__} instance, not a JSON Schema (a dict) or a "
                "pydantic model class"
            )
        try:
            # In its own order, not sorted: ajv applies `dependencies` in the order they
            # are written, and each sees the defaults those before it filled in.
            text = json.dumps(default if source is None else source)
        except (TypeError, ValueError) as exc:
            # A Python value in it (a `default` of date.today()): taken, it made discover,
            # which lists the schema, a 500 for every workflow of the bridge.
            raise SchemaUnusable(f"is not JSON: {exc}") from exc
        return _json_schema(text)

    def __post_init__(self) -> None:
        # A schema that does not name its draft is draft-07, as ajv's default class (Novu's
        # SDK's) reads it: read as 2020-12, a tuple's `items: [...]` made it unusable
        # (every trigger of the workflow refused), `dependencies` went unchecked, and
        # 2020-12's keywords (`prefixItems`, `dependentRequired`, ...), which ajv does
        # not know, refused payloads Novu's SDK takes.
        validator_class = validators.validator_for(self.json_schema, default=Draft7Validator)
        error = _meta_schema_error(validator_class, self.json_schema)
        if error is not None:
            at = _pointer(error.absolute_path)
            raise SchemaUnusable(
                f"is not a valid JSON Schema: {error.message}" + (f" (at {at})" if at else "")
            )
        self._validator = _as_ajv(validator_class)(self.json_schema, format_checker=FORMAT_CHECKER)

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
        value = self.defaults(value)
        if self.model is not None:
            # After the defaults and removals its JSON Schema makes, as Novu's SDK makes
            # them and norm's trigger API counts on: the model's `extra="forbid"` refused
            # a key its `additionalProperties: false` drops.
            return self._validate_model(value)
        errors = self._errors(value)
        if errors:
            raise SchemaInvalid([_problem(e) for e in errors])
        return value

    def _validate_model(self, value: Any) -> Any:
        import pydantic

        try:
            instance = self.model.model_validate(value)  # type: ignore[union-attr]
        except pydantic.ValidationError as exc:
            problems = [{"path": _pointer(e["loc"]), "message": e["msg"]} for e in exc.errors()]
            raise SchemaInvalid(problems) from exc
        # By alias, the names its JSON Schema lists (discover's) and validation takes: by
        # field name a replayed custom step's own outputs failed its result schema.
        return instance.model_dump(mode="json", by_alias=True)


def _problem(error: ValidationError) -> dict[str, str]:
    """An error as a path and a message. One of a `oneOf` or `anyOf` (a delay's outputs,
    regular or timed) said only "{...} is not valid under any of the given schemas": it is
    told by the branch's error jsonschema finds the most relevant (`/unit`: 'second' is not
    one of ['seconds', ...]), and stays as it is when no branch comes nearer than another."""
    if error.context:
        error = best_match([error])
    return {"path": _pointer(error.absolute_path), "message": error.message}


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

# Novu's pattern for a redirect URL: `http(s)://` and two characters or more (the first no
# space nor one of `/$.?#`), or a path without spaces. Its own text,
#     ^(?!mailto:)(?:(https?):\/\/[^\s/$.?#].[^\s]*)|^(\/[^\s]*)$
# is written so that Python's `re` (jsonschema's) reads it as JS does (ajv's, and whoever
# reads norm's discover): `\s`, `.` and `$` spelled out, which the two read apart.
_REDIRECT_URL = (
    rf"^(?!mailto:)(?:(https?):\/\/[^{_JS_SPACES}/$.?#][^{_JS_LINE_ENDS}][^{_JS_SPACES}]*)"
    rf"|^(\/[^{_JS_SPACES}]*)(?![\s\S])"
)

_REDIRECT = _object(
    {
        "url": {"type": "string", "pattern": _REDIRECT_URL},
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
