"""clientMetadata sources (`--metadata SPEC`), merged in the order given, later wins.

Sources split in two: cheap ones known from the listing alone (path, table, set) and ones that
cost a request per object (sidecar, object). The cheap parts plus the ETags make the item's
fingerprint, so an unchanged object is skipped before any request is made for it.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from itertools import repeat
from operator import attrgetter, itemgetter, methodcaller
from pathlib import Path
from typing import Any

from encord_ingest.errors import ConfigError, UsageError
from encord_ingest.models import Entry
from tasks.tables import DuplicateRows, MetadataTable
from tasks.validate import MAX_METADATA_BYTES

# A sidecar this much bigger than the metadata limit cannot compact below it: refuse unread.
MAX_SIDECAR_BYTES = 4 * MAX_METADATA_BYTES

_ENTRY_KEY = attrgetter("obj.key")
_GROUPS = re.Match.groups
_OBJ, _SIDECAR = itemgetter(0), itemgetter(1)  # Entry's fields
_TAGS = itemgetter(6)  # ObjectRef's
_DIGEST = partial(hashlib.blake2b, digest_size=16)
_HEX = methodcaller("hexdigest")


class MetadataError(Exception):
    """One object's metadata could not be built; becomes a dead letter with `rule`."""

    def __init__(self, rule: str, message: str) -> None:
        super().__init__(message)
        self.rule = rule
        self.message = message


@dataclass(slots=True, frozen=True)
class SidecarSpec:
    pass


@dataclass(slots=True, frozen=True)
class ObjectSpec:
    pass


@dataclass(slots=True, frozen=True)
class PathSpec:
    regex: re.Pattern[str]


@dataclass(slots=True, frozen=True)
class TableSpec:
    url: str
    index: int


@dataclass(slots=True, frozen=True)
class DicomSpec:
    tags: tuple[str, ...]


@dataclass(slots=True, frozen=True)
class SetSpec:
    name: str
    value: str


Spec = SidecarSpec | ObjectSpec | PathSpec | TableSpec | SetSpec | DicomSpec


def parse_spec(text: str, index: int) -> Spec:
    kind, sep, arg = text.partition(":")
    kind = kind.strip().lower()
    if kind == "sidecar" and not sep:
        return SidecarSpec()
    if kind == "object" and not sep:
        return ObjectSpec()
    if kind == "path" and arg:
        try:
            regex = re.compile(arg)
        except re.error as exc:
            raise UsageError(f"--metadata {text!r}: invalid regex: {exc}") from None
        if not regex.groupindex:
            raise UsageError(f"--metadata {text!r}: the regex needs named groups, e.g. (?P<site>[^/]+)")
        return PathSpec(regex)
    if kind == "table" and arg:
        return TableSpec(arg, index)
    if kind == "dicom" and arg:
        from pydicom.datadict import tag_for_keyword

        tags = tuple(t.strip() for t in arg.split(",") if t.strip())
        unknown = [t for t in tags if tag_for_keyword(t) is None]
        if unknown:
            raise UsageError(
                f"--metadata {text!r}: unknown DICOM keyword(s) {unknown} (e.g. Modality, BodyPartExamined)"
            )
        return DicomSpec(tags)
    if kind == "set" and "=" in arg:
        name, _, value = arg.partition("=")
        if not name:
            raise UsageError(f"--metadata {text!r}: expected set:NAME=VALUE")
        return SetSpec(name, value)
    raise UsageError(f"--metadata {text!r}: expected sidecar, object, path:REGEX, table:URL or set:NAME=VALUE")


def _reject_constant(name: str) -> Any:
    raise MetadataError("sidecar.nan", f"{name} is not valid JSON (NaN and Infinity are not allowed)")


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise MetadataError("sidecar.duplicate_key", f"duplicate key {key!r} (jsonb would keep only one)")
        out[key] = value
    return out


def parse_sidecar(raw: bytes) -> dict[str, Any]:
    """Strict JSON: UTF-8, an object at the top, no duplicate keys, no NaN/Infinity."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise MetadataError("sidecar.encoding", "sidecar is not UTF-8 text") from None
    try:
        value = json.loads(text, object_pairs_hook=_unique_object, parse_constant=_reject_constant)
    except MetadataError:
        raise
    except json.JSONDecodeError as exc:
        raise MetadataError("sidecar.json", f"sidecar is not JSON ({exc.msg} at line {exc.lineno})") from None
    except RecursionError:
        raise MetadataError("sidecar.depth", "sidecar JSON is nested too deeply") from None
    if not isinstance(value, dict):
        kind = "an array" if isinstance(value, list) else f"a {type(value).__name__}"
        raise MetadataError("sidecar.not_object", f"sidecar must hold a JSON object, not {kind}")
    return value


@dataclass(slots=True)
class Cheap:
    """What the listing alone tells about one entry's metadata."""

    layers: list[dict[str, Any] | None] = field(default_factory=list)
    problem: MetadataError | None = None


def _path_layer(m: re.Match[str]) -> dict[str, Any]:
    return {k: v for k, v in m.groupdict().items() if v is not None}


def _layers_text(layers: Sequence[dict[str, Any] | None]) -> str:
    return "\x1f".join(repr(sorted(layer.items())) if layer else "-" for layer in layers)


def _shared_layers_text(layers: Sequence[dict[str, Any] | None], texts: dict[tuple[int, ...], str]) -> str:
    """`_layers_text`, once per combination of layer objects (by id: the caller keeps them alive)."""
    ids = tuple(map(id, layers))
    text = texts.get(ids)
    if text is None:
        text = texts[ids] = _layers_text(layers)
    return text


def _stable(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str, ensure_ascii=False, separators=(",", ":"))


@dataclass(slots=True)
class MetadataPlan:
    specs: list[Spec]
    texts: list[str]
    tables: dict[int, MetadataTable]
    uses_sidecar: bool = field(init=False, default=False)
    uses_object: bool = field(init=False, default=False)
    digest: str = field(init=False, default="")

    @classmethod
    def build(cls, texts: Sequence[str], *, url_base: str, open_table: Any = None) -> MetadataPlan:
        """`open_table(url) -> Path` fetches a table given by URL to a local file."""
        specs = [parse_spec(t, i) for i, t in enumerate(texts)]
        tables: dict[int, MetadataTable] = {}
        try:
            for spec in specs:
                if isinstance(spec, TableSpec):
                    path = open_table(spec.url) if open_table is not None else Path(spec.url)
                    if not Path(path).is_file():
                        raise ConfigError(f"metadata table {spec.url} does not exist")
                    tables[spec.index] = MetadataTable(Path(path), label=spec.url, url_base=url_base)
        except BaseException:
            for table in tables.values():
                table.close()
            raise
        return cls(specs, list(texts), tables)

    def __post_init__(self) -> None:
        self.uses_sidecar = any(isinstance(s, SidecarSpec) for s in self.specs)
        self.uses_object = any(isinstance(s, ObjectSpec) for s in self.specs)
        self.digest = hashlib.sha256(_stable(self.texts).encode()).hexdigest()[:16]

    @property
    def dicom_tags(self) -> tuple[str, ...]:
        return tuple(t for s in self.specs if isinstance(s, DicomSpec) for t in s.tags)

    def cheap(self, entries: Sequence[Entry], relative: Any) -> list[Cheap]:
        """Path, table and constant layers for a batch; one table query per table per batch.

        A path layer is a function of the regex's groups, so equal groups share one dict (thousands
        of objects share a site or camera): fewer allocations here, and `fingerprint` and the
        validation memo see the same object again. Without tables the whole Cheap is shared by the
        entries whose groups are equal, so callers may remember work by its id.
        """
        keys = list(map(_ENTRY_KEY, entries))
        if not self.tables:
            return self._cheap_from_paths(keys, relative)
        looked_up = {i: t.lookup(keys) for i, t in self.tables.items()}
        return self._cheap_with_tables(keys, relative, looked_up)

    def _cheap_with_tables(
        self, keys: list[str], relative: Any, looked_up: dict[int, dict[str, dict[str, Any] | DuplicateRows]]
    ) -> list[Cheap]:
        """`cheap` with tables: a column of layers per spec (a table's by one map over the keys),
        then one Cheap per key from the columns. A key a table holds twice gets an empty layer
        there and the duplicate as its problem."""
        n_keys = len(keys)
        empty: dict[str, Any] = {}
        constants = self._constants()
        columns: list[Iterable[dict[str, Any] | None]] = []
        problems: dict[int, MetadataError] = {}  # by the key's place in `keys`; a later table's wins
        for n, spec in enumerate(self.specs):
            if isinstance(spec, TableSpec):
                rows = list(map(looked_up[spec.index].get, keys, repeat(empty)))
                if any(map(isinstance, rows, repeat(DuplicateRows))):
                    for i, row in enumerate(rows):
                        if isinstance(row, DuplicateRows):
                            problems[i] = MetadataError(
                                "table.duplicate_key", f"metadata table {spec.url} has {row.count} rows for this key"
                            )
                            rows[i] = empty
                columns.append(rows)
            elif isinstance(spec, PathSpec):
                memo: dict[tuple[str | None, ...], dict[str, Any]] = {}
                column: list[dict[str, Any] | None] = []
                for key in keys:
                    m = spec.regex.search(relative(key)) or spec.regex.search(key)
                    if m is None:
                        column.append(empty)
                        continue
                    layer = memo.get(m.groups())
                    if layer is None:
                        layer = memo[m.groups()] = _path_layer(m)
                    column.append(layer)
                columns.append(column)
            else:
                columns.append(repeat(constants.get(n), n_keys))
        out = list(map(Cheap, map(list, zip(*columns, strict=True))))
        for i, problem in problems.items():
            out[i].problem = problem
        return out

    def _constants(self) -> dict[int, dict[str, Any]]:
        return {n: {s.name: s.value} for n, s in enumerate(self.specs) if isinstance(s, SetSpec)}

    def _cheap_from_paths(self, keys: list[str], relative: Any) -> list[Cheap]:
        """`cheap` without tables: the layers depend on a key only through the path regexes' groups."""
        constants = self._constants()
        base: list[dict[str, Any] | None] = [constants.get(n) for n in range(len(self.specs))]
        paths = [(n, spec.regex.search) for n, spec in enumerate(self.specs) if isinstance(spec, PathSpec)]
        if not paths:
            return [Cheap(base)] * len(keys)
        shared: dict[Any, Cheap] = {}
        out: list[Cheap] = []
        append = out.append
        single = paths[0][1] if len(paths) == 1 else None
        # `Source.relative` of a source at the bucket's root gives the key back: skip a call per key
        at_root = getattr(getattr(relative, "__self__", None), "prefix", None) == ""
        firsts: list[re.Match[str] | None] | None = None  # the one regex on each relative key
        if single is not None:
            firsts = list(map(single, keys if at_root else map(relative, keys)))
            if None not in firsts:  # the common case, column-wise: every key matches the one regex
                found = list(map(_GROUPS, firsts))
                for groups, m in dict(zip(found, firsts, strict=True)).items():  # equal groups give equal layers
                    if groups not in shared:
                        layers = list(base)
                        layers[paths[0][0]] = _path_layer(m)
                        shared[groups] = Cheap(layers)
                return list(map(shared.__getitem__, found))
        for i, key in enumerate(keys):
            rel = key if at_root else relative(key)
            if single is not None and firsts is not None:  # some key missed: those try the key itself
                m = firsts[i] or (single(key) if rel != key else None)
                found: Any = m.groups() if m is not None else None
            else:
                matches = [search(rel) or (search(key) if rel != key else None) for _, search in paths]
                found = tuple(m.groups() if m is not None else None for m in matches)
            cheap = shared.get(found)
            if cheap is None:
                layers = list(base)
                for n, search in paths:
                    m = search(rel) or (search(key) if rel != key else None)
                    layers[n] = _path_layer(m) if m is not None else {}
                cheap = shared[found] = Cheap(layers)
            append(cheap)
        return out

    def fingerprint(
        self, entry: Entry, cheap: Cheap, salt: str, texts: dict[tuple[int, ...], str] | None = None
    ) -> str:
        """Everything the object's metadata comes from, hashed: equal means nothing to re-read.

        `salt` is the plan's and the schema's digests, computed once per run by the caller. Layers
        are rendered with repr of sorted items (stable for the JSON-like values they hold) - this
        runs for every listed object, so it avoids a JSON encoder. `texts` caches the rendering of
        a combination of layer objects shared within one batch (by id: the caller keeps the layers
        alive); the hashed text is the same either way, so ledgers stay valid.
        """
        obj = entry.obj
        layers = cheap.layers
        parts = [salt, obj.etag, str(obj.size), obj.last_modified]
        if obj.tags:  # only where tags were listed: other fingerprints stay as they were
            parts.append(obj.tags)
        if layers:
            parts.append(_layers_text(layers) if texts is None else _shared_layers_text(layers, texts))
        sidecar = entry.sidecar
        if sidecar is not None and self.uses_sidecar:
            parts += [sidecar.key, sidecar.etag, str(sidecar.size), sidecar.last_modified]
        return hashlib.blake2b("\x1f".join(parts).encode(), digest_size=16).hexdigest()

    def fingerprints(self, entries: Sequence[Entry], cheap: Sequence[Cheap], salt: str) -> list[str]:
        """`fingerprint` of each entry, column-wise where no entry has tags or a sidecar that counts.

        A re-run computes one per listed object, so the common case is C-level maps over the
        batch: the layers' text once per distinct Cheap, then one format, encode and hash per
        object. The texts hashed are exactly `fingerprint`'s, so ledgers stay valid.
        """
        objs = list(map(_OBJ, entries))
        texts: dict[tuple[int, ...], str] = {}
        if any(map(_TAGS, objs)) or (self.uses_sidecar and any(map(_SIDECAR, entries))):
            return [self.fingerprint(e, c, salt, texts) for e, c in zip(entries, cheap, strict=True)]
        tails: dict[int, str] = {}  # by id of a Cheap, which `cheap` keeps alive
        for c in {id(c): c for c in cheap}.values():
            tails[id(c)] = "\x1f" + _shared_layers_text(c.layers, texts) if c.layers else ""
        lines = [
            f"{salt}\x1f{o.etag}\x1f{o.size}\x1f{o.last_modified}{tail}"
            for o, tail in zip(objs, map(tails.__getitem__, map(id, cheap)), strict=True)
        ]
        return list(map(_HEX, map(_DIGEST, map(str.encode, lines))))

    def merge(
        self,
        cheap: Cheap,
        sidecar: dict[str, Any] | None,
        object_meta: dict[str, str] | None,
        dicom_tags: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        merged: dict[str, Any] = {}
        for spec, layer in zip(self.specs, cheap.layers, strict=True):
            if isinstance(spec, SidecarSpec):
                layer = sidecar
            elif isinstance(spec, ObjectSpec):
                layer = object_meta
            elif isinstance(spec, DicomSpec):
                layer = {t: v for t, v in (dicom_tags or {}).items() if t in spec.tags}
            if layer:
                merged.update(layer)
        return merged

    def close(self) -> None:
        for table in self.tables.values():
            table.close()
