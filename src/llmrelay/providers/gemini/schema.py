"""JSON Schema (what OpenAI clients send) → the OpenAPI subset Gemini's ``Schema`` accepts.

Gemini rejects whole requests over keywords it does not know (``additionalProperties``,
``$schema``, ``$ref``, ``const``...), so the schema is rewritten, never forwarded as is:
``$ref``s into ``$defs``/``definitions`` are inlined (a recursive reference becomes a plain object,
as Gemini has no references at all); ``type: [T, "null"]`` and ``anyOf`` with a null branch become
``nullable``; ``const`` becomes a one-value ``enum``; ``oneOf`` becomes ``anyOf``; an ``allOf`` of
object schemas is merged; enums keep only string values (Gemini's enums are string-only) and
formats only those Gemini knows; every other keyword is dropped. Types are upper-cased, the proto
enum names of ``google.ai.generativelanguage.Type``.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from llmrelay.core.types import JSONObject

_KEPT = frozenset(
    {
        "description",
        "title",
        "minItems",
        "maxItems",
        "minLength",
        "maxLength",
        "minProperties",
        "maxProperties",
        "minimum",
        "maximum",
        "pattern",
    }
)
_FORMATS: Mapping[str, frozenset[str]] = MappingProxyType(
    {
        "STRING": frozenset({"enum", "date-time"}),
        "NUMBER": frozenset({"float", "double"}),
        "INTEGER": frozenset({"int32", "int64"}),
    }
)
_TYPES = frozenset({"string", "number", "integer", "boolean", "array", "object", "null"})
MAX_DEPTH = 32


def to_gemini_schema(schema: Any) -> JSONObject:
    """The rewritten schema; an unusable input gives ``{}`` (any value)."""
    if not isinstance(schema, dict):
        return {}
    definitions: dict[str, Any] = {}
    for key in ("$defs", "definitions"):
        found = schema.get(key)
        if isinstance(found, dict):
            definitions.update({f"#/{key}/{name}": value for name, value in found.items()})
    return _convert(schema, definitions, (), 0)


def has_properties(schema: JSONObject) -> bool:
    """Whether an object schema names any property (Gemini refuses an OBJECT with none)."""
    return bool(schema.get("properties"))


def _convert(
    schema: Any, definitions: Mapping[str, Any], seen: tuple[str, ...], depth: int
) -> JSONObject:
    if not isinstance(schema, dict) or depth > MAX_DEPTH:
        return {}
    ref = schema.get("$ref")
    if isinstance(ref, str):
        if ref in seen or ref not in definitions:
            return {"type": "OBJECT"}  # a cycle (or a dangling reference) cannot be expressed
        target = definitions[ref]
        merged = {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
        return _convert(merged, definitions, (*seen, ref), depth + 1)
    schema = _merge_all_of(schema)
    out: JSONObject = {k: schema[k] for k in _KEPT if k in schema}
    nullable = False
    kind = schema.get("type")
    if isinstance(kind, list):
        nullable = "null" in kind
        kinds = [k for k in kind if k != "null" and k in _TYPES]
        if len(kinds) == 1:
            kind = kinds[0]
        elif kinds:
            branches = [{**schema, "type": k} for k in kinds]
            return _any_of(branches, nullable, out, definitions, seen, depth)
        else:
            kind = None
    if isinstance(kind, str) and kind in _TYPES:
        out["type"] = kind.upper()
    variants = schema.get("anyOf", schema.get("oneOf"))
    if isinstance(variants, list):
        return _any_of(variants, nullable, out, definitions, seen, depth)
    _enum(schema, out)
    if "properties" in schema and isinstance(schema["properties"], dict):
        properties = {
            name: _convert(value, definitions, seen, depth + 1)
            for name, value in schema["properties"].items()
        }
        if properties:
            out["properties"] = properties
            required = [r for r in schema.get("required") or () if r in properties]
            if required:
                out["required"] = required
        out.setdefault("type", "OBJECT")
    if "items" in schema:
        out["items"] = _convert(schema["items"], definitions, seen, depth + 1)
        out.setdefault("type", "ARRAY")
    fmt = schema.get("format")
    if isinstance(fmt, str) and fmt in _FORMATS.get(out.get("type", ""), ()):
        out["format"] = fmt
    if nullable or schema.get("nullable") is True:
        out["nullable"] = True
    return out


def _any_of(
    variants: list[Any],
    nullable: bool,
    out: JSONObject,
    definitions: Mapping[str, Any],
    seen: tuple[str, ...],
    depth: int,
) -> JSONObject:
    branches = []
    for variant in variants:
        if isinstance(variant, dict) and variant.get("type") == "null":
            nullable = True
            continue
        branches.append(_convert(variant, definitions, seen, depth + 1))
    if len(branches) == 1:
        merged = {**branches[0], **{k: v for k, v in out.items() if k != "type"}}
    else:
        merged = {k: v for k, v in out.items() if k != "type"}
        if branches:
            merged["anyOf"] = branches
    if nullable:
        merged["nullable"] = True
    return merged


def _merge_all_of(schema: JSONObject) -> JSONObject:
    parts = schema.get("allOf")
    if not isinstance(parts, list):
        return schema
    merged: JSONObject = {k: v for k, v in schema.items() if k != "allOf"}
    for part in parts:
        if not isinstance(part, dict):
            continue
        for key, value in part.items():
            if key == "properties" and isinstance(value, dict):
                merged["properties"] = {**merged.get("properties", {}), **value}
            elif key == "required" and isinstance(value, list):
                merged["required"] = [*merged.get("required", []), *value]
            else:
                merged.setdefault(key, value)
    return merged


def _enum(schema: JSONObject, out: JSONObject) -> None:
    values = schema.get("enum")
    if "const" in schema:
        values = [schema["const"]]
    if not isinstance(values, list):
        return
    if None in values:
        out["nullable"] = True
    strings = [v for v in values if isinstance(v, str)]
    if strings and len(strings) == len([v for v in values if v is not None]):
        out["enum"] = strings
        out.setdefault("type", "STRING")
