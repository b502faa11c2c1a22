"""Batches from explicit keys (event-driven runs) instead of a listing, same Entry/stats shapes.

A notification names keys, not sidecars, sizes or etags, so each key is looked up, and its
sidecar found by probing only the candidate names `sidecar_candidates` gives (most specific
first). Lookups go through `list_pages(prefix=key)`: the first key under a prefix equal to the
key itself is the object (a HEAD with size and etag, on every store), and `KEY.ext.json` /
`KEY.ext<suffix>` sort right behind it, so one request usually answers object and sidecar.
A notified sidecar is never imported; its object is (re)checked instead when it can be found.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import TypeVar

from encord_ingest.models import Entry, ObjectRef
from integrations.storage import ObjectStore, Source
from tasks.listing import ListingOptions, ListingStats
from tasks.sidecars import group_prefix, is_json, sidecar_candidates

GROUP_PROBE_LIMIT = 100
SAMPLE = 20
T = TypeVar("T")


@dataclass(slots=True)
class KeyedStats(ListingStats):
    """ListingStats (what `drive` reads) plus what became of the keys that were asked for."""

    requested: int = 0
    outside: int = 0
    missing: int = 0
    sidecars: int = 0
    missing_keys: list[str] = field(default_factory=list)
    outside_keys: list[str] = field(default_factory=list)


def scan(store: ObjectStore, prefix: str, wanted: set[str], page_size: int = 20) -> dict[str, ObjectRef]:
    """Refs of the `wanted` keys that exist, reading the listing under `prefix` only as far as needed."""
    found: dict[str, ObjectRef] = {}
    if not wanted:
        return found
    last = max(wanted)
    pages = store.list_pages(prefix, page_size=page_size)
    with contextlib.closing(pages):  # type: ignore[type-var]  # generators close; stop early
        for page in pages:
            for ref in page:
                if ref.key in wanted:
                    found[ref.key] = ref
                if ref.key >= last:
                    return found
    return found


def stat(store: ObjectStore, key: str) -> ObjectRef | None:
    return scan(store, key, {key}, page_size=1).get(key)


def resolve_entry(store: ObjectStore, key: str, suffix: str) -> Entry | None:
    """The object and its most specific existing sidecar; None when the object is gone."""
    specific = [c for c in sidecar_candidates(key, suffix) if c.startswith(key)]
    found = scan(store, key, {key, *specific})
    obj = found.get(key)
    if obj is None:
        return None
    for candidate in sidecar_candidates(key, suffix):
        ref = found.get(candidate)
        if ref is None and candidate not in specific:
            ref = stat(store, candidate)
        if ref is not None:
            return Entry(obj, ref)
    return Entry(obj)


def sidecar_owner(store: ObjectStore, key: str, suffix: str) -> str | None:
    """The data object a notified JSON file belongs to, if one exists."""
    name = key.rpartition("/")[2]
    guesses: list[str] = []
    if key.endswith(suffix) and len(key) > len(suffix):
        guesses.append(key[: -len(suffix)])
    if key.endswith(".json") and "." in name[:-5]:
        guesses.append(key[:-5])
    for guess in guesses:
        if not is_json(guess) and stat(store, guess) is not None:
            return guess
    # KEY.json beside KEY.ext: the extension is unknown, so look at the few keys sharing the stem.
    pages = store.list_pages(group_prefix(key), page_size=GROUP_PROBE_LIMIT)
    with contextlib.closing(pages):  # type: ignore[type-var]
        for ref in next(iter(pages), []):
            if not is_json(ref.key) and key in sidecar_candidates(ref.key, suffix):
                return ref.key
    return None


def _map(executor: Executor | None, fn: Callable[[str], T], keys: list[str]) -> list[T]:
    """Lookups are network-bound: run them on the run's I/O pool when there is one."""
    return list(executor.map(fn, keys)) if executor is not None else [fn(k) for k in keys]


def _sample(target: list[str], key: str) -> None:
    if len(target) < SAMPLE:
        target.append(key)


def plan_keys(
    source: Source, keys: Iterable[str], opts: ListingOptions, stats: KeyedStats
) -> tuple[list[str], list[str]]:
    """Split the asked-for keys into data keys and JSON keys, dropping those outside the source or filters."""
    data: list[str] = []
    jsons: list[str] = []
    seen: set[str] = set()
    for key in keys:
        if key in seen:
            continue
        seen.add(key)
        stats.requested += 1
        if not key.startswith(source.prefix) or key.endswith("/"):
            stats.outside += 1
            _sample(stats.outside_keys, key)
        elif is_json(key):
            jsons.append(key)
        elif not opts.key_filter.accepts(source.relative(key)):
            stats.excluded += 1
        else:
            data.append(key)
    return data, jsons


def keyed_batches(
    source: Source,
    keys: Iterable[str],
    opts: ListingOptions,
    batch_size: int,
    stats: KeyedStats,
    executor: Executor | None = None,
) -> Iterator[list[Entry]]:
    """Batches of at most `batch_size` entries for exactly the given keys (plus owners of notified sidecars)."""
    store = source.store
    suffix = opts.sidecar_suffix
    data, jsons = plan_keys(source, keys, opts, stats)
    known = set(data)
    for key, owner in zip(jsons, _map(executor, lambda k: sidecar_owner(store, k, suffix), jsons), strict=True):
        if owner is None:
            stats.listed += 1
            stats.orphans += 1
            _sample(stats.orphan_keys, key)
            continue
        stats.sidecars += 1
        if owner not in known and opts.key_filter.accepts(source.relative(owner)):
            known.add(owner)
            data.append(owner)
    data.sort()
    stats.pages = 1
    for start in range(0, len(data), batch_size):
        chunk = data[start : start + batch_size]
        batch: list[Entry] = []
        for key, entry in zip(chunk, _map(executor, lambda k: resolve_entry(store, k, suffix), chunk), strict=True):
            if entry is None:
                stats.missing += 1
                _sample(stats.missing_keys, key)
            else:
                stats.listed += 1
                batch.append(entry)
        if batch:
            yield batch
