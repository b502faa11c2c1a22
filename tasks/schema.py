"""The metadata schema file (YAML): parsing and the seed's rules for keys and types."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from encord_ingest.errors import ConfigError

SCALAR_TYPES = ("boolean", "datetime", "number", "uuid", "varchar", "text")
ALIASES = {"string": "varchar", "long_string": "text"}
ALL_TYPES = (*SCALAR_TYPES, "enum", "embedding")
EMBEDDING_MAX = 4096
ACTIVE_EMBEDDING_SIZE = 512
ENUM_MAX_VALUES = 255
RESERVED_KEYS = frozenset({"keyframes"})

_KEY_CHARS = re.compile(r"[A-Za-z0-9 ._-]+")


def key_problem(key: object) -> str | None:
    """Why `key` cannot be a metadata key, or None. Rules: seed charset, SDK's extra checks."""
    if not isinstance(key, str):
        return "key must be a string"
    return _key_problem(key)


@lru_cache(maxsize=8192)
def _key_problem(key: str) -> str | None:
    """Cached: the same few keys are checked for millions of objects."""
    if not key:
        return "key is empty"
    if key.startswith("$"):
        return "key must not start with '$'"
    if _KEY_CHARS.fullmatch(key) is None:
        bad = sorted({c for c in key if _KEY_CHARS.fullmatch(c) is None})
        shown = ", ".join(repr(c) for c in bad[:5])
        return f"key has characters outside letters, digits, space, '-', '_', '.': {shown}"
    if not any(c.isalnum() for c in key):
        return "key needs at least one letter or digit"
    if key in RESERVED_KEYS:
        return f"key {key!r} is reserved by Encord"
    return None


@dataclass(slots=True, frozen=True)
class KeySpec:
    type: str
    values: tuple[str, ...] = ()
    size: int = 0

    def describe(self) -> str:
        if self.type == "enum":
            return f"enum{list(self.values)}"
        if self.type == "embedding":
            return f"embedding[{self.size}]"
        return self.type


@dataclass(slots=True, frozen=True)
class Schema:
    keys: dict[str, KeySpec]

    @property
    def digest(self) -> str:
        return _schema_digest(tuple(sorted((k, v.type, v.values, v.size) for k, v in self.keys.items())))

    def get(self, key: str) -> KeySpec | None:
        return self.keys.get(key)


@lru_cache(maxsize=64)
def _schema_digest(canon: tuple[tuple[str, str, tuple[str, ...], int], ...]) -> str:
    return hashlib.sha256(json.dumps(canon).encode()).hexdigest()[:16]


EMPTY_SCHEMA = Schema(keys={})


def _spec(key: str, raw: Any) -> KeySpec:
    where = f"schema key {key!r}"
    if isinstance(raw, str):
        raw = {"type": raw}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a type name or a mapping with 'type'")
    unknown = set(raw) - {"type", "values", "size"}
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {sorted(unknown)}")
    kind = raw.get("type")
    if not isinstance(kind, str):
        raise ConfigError(f"{where}: 'type' is missing")
    kind = ALIASES.get(kind.lower(), kind.lower())
    if kind not in ALL_TYPES:
        raise ConfigError(f"{where}: unknown type {raw.get('type')!r} (one of {', '.join(ALL_TYPES)})")
    if kind == "enum":
        values = raw.get("values")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}: an enum needs a non-empty 'values' list")
        if len(values) > ENUM_MAX_VALUES:
            raise ConfigError(f"{where}: an enum has at most {ENUM_MAX_VALUES} values, got {len(values)}")
        texts = [str(v) for v in values]
        if len(set(texts)) != len(texts):
            raise ConfigError(f"{where}: enum values repeat")
        return KeySpec("enum", values=tuple(texts))
    if kind == "embedding":
        size = raw.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or not 1 <= size <= EMBEDDING_MAX:
            raise ConfigError(f"{where}: an embedding needs an integer 'size' from 1 to {EMBEDDING_MAX}")
        return KeySpec("embedding", size=size)
    if "values" in raw or "size" in raw:
        raise ConfigError(f"{where}: 'values'/'size' only apply to enum/embedding")
    return KeySpec(kind)


def parse_schema(data: Any, *, source: str = "schema") -> Schema:
    if not isinstance(data, dict) or not isinstance(data.get("keys"), dict):
        raise ConfigError(f"{source}: expected a mapping with a 'keys' mapping at the top")
    extra = set(data) - {"keys"}
    if extra:
        raise ConfigError(f"{source}: unknown top-level field(s) {sorted(extra)}")
    keys: dict[str, KeySpec] = {}
    for key, raw in data["keys"].items():
        problem = key_problem(key)
        if problem:
            raise ConfigError(f"{source}: {problem} ({key!r})")
        keys[key] = _spec(key, raw)
    return Schema(keys=keys)


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML that refuses duplicate keys, since jsonb would silently keep only one."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise ConfigError(f"duplicate key {key!r} at line {key_node.start_mark.line + 1}")
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_schema(path: str | Path) -> Schema:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"schema file {p} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"schema file {p} cannot be read: {exc.__class__.__name__}") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except ConfigError as exc:
        raise ConfigError(f"schema file {p}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"schema file {p} is not valid YAML{where}") from None
    return parse_schema(data, source=f"schema file {p}")
