"""Where Novu's TypeScript client (@novu/api) would refuse a null that novu-py takes.

Both clients are generated from Novu's one OpenAPI document. A field it marks optional
but not nullable (a topic's `name`) is `Optional[str]` in novu-py, whose pydantic takes
null, and `z.string().optional()` in @novu/api, whose zod refuses null: Novu leaves such
a field out rather than send null. novu-py's models say which fields those are.
"""

from __future__ import annotations

import types
import typing
from typing import Any

from novu_py.types import BaseModel, Nullable, OptionalNullable


def _nullable(annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _nullable(typing.get_args(annotation)[0])
    return origin in (Nullable, OptionalNullable) or annotation is Any


def _models(annotation: Any) -> list[tuple[str, type[BaseModel]]]:
    """("object" or "list", model) for each novu-py model a field's value may hold."""
    origin = typing.get_origin(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [("object", annotation)]
    if origin in (typing.Annotated, Nullable, OptionalNullable):
        return _models(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return [m for arg in typing.get_args(annotation) for m in _models(arg)]
    if origin is list:
        return [("list", m) for kind, m in _models(typing.get_args(annotation)[0])]
    return []


def nulls_novu_refuses(model: type[BaseModel], value: Any, path: str = "$") -> list[str]:
    """The paths in `value` (a JSON object read as `model`) holding a null that Novu's
    schema does not allow there."""
    if not isinstance(value, dict):
        return []
    fields = {(f.alias or name): f for name, f in model.model_fields.items()}
    refused = []
    for key, item in value.items():
        field = fields.get(key)
        if field is None:
            continue
        if item is None:
            if not _nullable(field.annotation):
                refused.append(f"{path}.{key}")
            continue
        for kind, inner in _models(field.annotation):
            if kind == "object":
                refused += nulls_novu_refuses(inner, item, f"{path}.{key}")
            elif isinstance(item, list):
                for number, element in enumerate(item):
                    refused += nulls_novu_refuses(inner, element, f"{path}.{key}[{number}]")
    return refused
