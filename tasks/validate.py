"""Coerce clientMetadata to the schema's types and check it against Encord's rules.

A violation names the key, the rule and the value's type, never the value itself (it may be
sensitive). Rules: the seed's key charset and types, 10 MB per item as JSON, and jsonb's
limits (no NUL in strings, finite numbers only, bounded nesting).
"""

from __future__ import annotations

import json
import math
import uuid
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from tasks.schema import EMPTY_SCHEMA, KeySpec, Schema, key_problem

MAX_METADATA_BYTES = 10_000_000  # "10MB" per item; the SI reading is the stricter one
MAX_DEPTH = 64

_TRUE = {"true", "1", "yes", "y", "t"}
_FALSE = {"false", "0", "no", "n", "f"}


@dataclass(slots=True, frozen=True)
class Violation:
    key: str
    rule: str
    message: str

    @property
    def reason(self) -> str:
        return f"clientMetadata[{self.key!r}]: {self.message}" if self.key else self.message


class _Invalid(Exception):
    def __init__(self, rule: str, message: str) -> None:
        super().__init__(message)
        self.rule = rule
        self.message = message


def type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float | Decimal):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_json_value(value: Any, depth: int = 0) -> Any:
    """jsonb semantics for values outside the schema: returns a plain JSON value or raises."""
    if depth > MAX_DEPTH:
        raise _Invalid("jsonb.depth", f"nested deeper than {MAX_DEPTH} levels")
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float | Decimal):
        f = float(value)
        if not math.isfinite(f):
            raise _Invalid("jsonb.number", "NaN and Infinity are not valid JSON numbers")
        return f
    if isinstance(value, str):  # lone surrogates are caught when the whole document is encoded
        if "\x00" in value:
            raise _Invalid("jsonb.nul", "strings must not contain the NUL character (\\u0000)")
        return value
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, list | tuple):
        return [_check_json_value(v, depth + 1) for v in value]
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise _Invalid("jsonb.key", f"object keys must be strings, got {type_name(k)}")
            out[_check_json_value(k, depth + 1)] = _check_json_value(v, depth + 1)
        return out
    raise _Invalid("jsonb.type", f"{type(value).__name__} is not a JSON value")


def _finite(f: float) -> float:
    if not math.isfinite(f):
        raise _Invalid("type.number", "NaN and Infinity are not valid numbers")
    return f


def _as_number(value: Any) -> float | int:
    if _is_number(value):
        return value if isinstance(value, int) else _finite(value)
    if isinstance(value, Decimal):
        return _finite(float(value))
    if isinstance(value, str):
        text = value.strip()
        try:
            return int(text)
        except ValueError:
            pass
        try:
            return _finite(float(text))
        except ValueError:
            pass
    raise _Invalid("type.number", f"expected a number, got {type_name(value)}")


def _as_boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    raise _Invalid("type.boolean", f"expected true/false, got {type_name(value)}")


def _as_datetime(value: Any) -> str:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, str):
        text = value.strip()
        try:
            if len(text) == 10:
                date.fromisoformat(text)
            else:
                datetime.fromisoformat(text)
            return text
        except ValueError:
            pass
        raise _Invalid("type.datetime", "expected an ISO 8601 date/time string, got a string that is not one")
    raise _Invalid("type.datetime", f"expected an ISO 8601 date/time string, got {type_name(value)}")


def _as_uuid(value: Any) -> str:
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, str):
        try:
            return str(uuid.UUID(value.strip()))
        except ValueError:
            pass
        raise _Invalid("type.uuid", "expected a UUID string, got a string that is not one")
    raise _Invalid("type.uuid", f"expected a UUID string, got {type_name(value)}")


def _as_text(value: Any, kind: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if _is_number(value):
        if isinstance(value, float) and not math.isfinite(value):
            raise _Invalid(f"type.{kind}", "NaN and Infinity are not valid values")
        return str(value)
    if isinstance(value, str):
        return _check_json_value(value)
    raise _Invalid(f"type.{kind}", f"expected a string, got {type_name(value)}")


def _as_enum(value: Any, spec: KeySpec) -> str:
    text = _as_text(value, "enum") if not isinstance(value, dict | list) else None
    if text is None:
        raise _Invalid("enum.type", f"expected one of the enum values, got {type_name(value)}")
    if text not in spec.values:
        shown = ", ".join(spec.values[:10]) + (", ..." if len(spec.values) > 10 else "")
        raise _Invalid("enum.value", f"value is not one of the enum values [{shown}] ({type_name(value)})")
    return text


def _as_embedding(value: Any, spec: KeySpec) -> list[float]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise _Invalid("embedding.type", "expected an array of numbers, got a string") from None
    if not isinstance(value, list | tuple):
        raise _Invalid("embedding.type", f"expected an array of numbers, got {type_name(value)}")
    if len(value) != spec.size:
        raise _Invalid("embedding.size", f"expected {spec.size} numbers, got {len(value)}")
    out = []
    for v in value:
        if not _is_number(v) or not math.isfinite(v):
            raise _Invalid("embedding.type", f"embedding values must be finite numbers, found {type_name(v)}")
        out.append(v)
    return out


def coerce_value(value: Any, spec: KeySpec) -> Any:
    t = spec.type
    if t == "number":
        return _as_number(value)
    if t == "boolean":
        return _as_boolean(value)
    if t == "datetime":
        return _as_datetime(value)
    if t == "uuid":
        return _as_uuid(value)
    if t in ("varchar", "text"):
        return _as_text(value, t)
    if t == "enum":
        return _as_enum(value, spec)
    if t == "embedding":
        return _as_embedding(value, spec)
    raise AssertionError(f"unknown schema type {t}")


def _plain_key(key: str) -> bool:
    return key_problem(key) is None


def metadata_size(metadata: dict[str, Any]) -> int:
    return len(json.dumps(metadata, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))


def validate_metadata(
    metadata: dict[str, Any], schema: Schema = EMPTY_SCHEMA
) -> tuple[dict[str, Any], Violation | None]:
    """Return the coerced metadata, or the first violation found."""
    out, violation, _ = validate_and_encode(metadata, schema)
    return out, violation


def validate_and_encode(
    metadata: dict[str, Any], schema: Schema = EMPTY_SCHEMA
) -> tuple[dict[str, Any], Violation | None, str]:
    """Like `validate_metadata`, plus the canonical JSON (sorted keys, compact) it measured.

    The same text gives the size check, the metadata hash and the manifest's byte budget, so an
    item is JSON-encoded once.
    """
    if not metadata:
        return {}, None, "{}"
    out: dict[str, Any] = {}
    for key, value in metadata.items():
        spec = schema.keys.get(key) if schema.keys else None
        if spec is None and type(value) is str and type(key) is str and _plain_key(key) and "\x00" not in value:
            out[key] = value  # fast path: a valid key outside the schema with a plain string value
            continue
        problem = key_problem(key)
        if problem:
            safe_key = key if isinstance(key, str) and key.isprintable() else repr(key)
            return {}, Violation(safe_key, "key.charset", problem), ""
        try:
            out[key] = coerce_value(value, spec) if spec is not None and value is not None else _check_json_value(value)
        except _Invalid as exc:
            return {}, Violation(key, exc.rule, exc.message), ""
        except RecursionError:
            return {}, Violation(key, "jsonb.depth", f"nested deeper than {MAX_DEPTH} levels"), ""
    encoded = json.dumps(out, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
    try:
        size = len(encoded.encode("utf-8"))
    except UnicodeEncodeError:
        return {}, Violation("", "jsonb.unicode", "a string is not valid Unicode (lone surrogate)"), ""
    if size > MAX_METADATA_BYTES:
        message = f"clientMetadata is {size:,} bytes as JSON; Encord's limit is {MAX_METADATA_BYTES:,}"
        return {}, Violation("", "size.limit", message), ""
    return out, None, encoded


def validate_remembered(
    merged: dict[str, Any], schema: Schema, memo: dict[Any, Any]
) -> tuple[dict[str, Any], Violation | None, str]:
    """`validate_and_encode`, remembered in `memo` for flat metadata that repeats (path, table and
    set values are shared by thousands of objects); nested values are always validated afresh."""
    try:
        key = tuple((k, v.__class__, v) for k, v in merged.items())  # 1 == True: types are part of it
        hit = memo.get(key)
    except TypeError:  # unhashable (nested) values
        return validate_and_encode(merged, schema)
    if hit is None:
        hit = validate_and_encode(merged, schema)
        if len(memo) > 4096:
            memo.clear()
        memo[key] = hit
    return hit
