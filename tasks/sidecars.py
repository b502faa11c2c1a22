"""Pair each data object with the sidecar JSON beside it, streaming over a key-sorted listing.

Every sidecar of `dir/KEY.ext` starts with `dir/STEM.` (STEM = name up to its first dot), so in a
sorted listing an object and its sidecars meet inside the key range of that prefix. A group is
closed as soon as the listing has moved past its range, which keeps only a few groups open.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from encord_ingest.models import Entry, ObjectRef

DEFAULT_SIDECAR_SUFFIX = ".metadata.json"


@dataclass(slots=True)
class Paired:
    """One page's worth of output: data entries, and JSON files that belong to no object."""

    entries: list[Entry] = field(default_factory=list)
    orphans: list[ObjectRef] = field(default_factory=list)


def group_prefix(key: str) -> str:
    head, _, name = key.rpartition("/")
    stem = name.split(".", 1)[0]
    return f"{head}/{stem}." if head else f"{stem}."


def sidecar_candidates(key: str, suffix: str = DEFAULT_SIDECAR_SUFFIX) -> tuple[str, ...]:
    """Most specific first: KEY.ext<suffix>, KEY.ext.json, KEY.json."""
    head, _, name = key.rpartition("/")
    base = name.rsplit(".", 1)[0] if "." in name else name
    prefix = f"{head}/" if head else ""
    return (f"{key}{suffix}", f"{key}.json", f"{prefix}{base}.json")


def is_json(key: str) -> bool:
    return key.endswith(".json") or key[-5:].lower() == ".json"


def _resolve(group: list[ObjectRef], suffix: str, out: Paired) -> None:
    """A closed group into `out`: each data object with its most specific sidecar, unused JSON as orphans."""
    if len(group) == 1:  # the common case: an object alone in its group
        ref = group[0]
        if is_json(ref.key):
            out.orphans.append(ref)
        else:
            out.entries.append(Entry(ref))
        return
    by_key = {ref.key: ref for ref in group}
    used: set[str] = set()
    for ref in group:
        if is_json(ref.key):
            continue
        sidecar = None
        for candidate in sidecar_candidates(ref.key, suffix):
            found = by_key.get(candidate)
            if found is not None:
                sidecar = found
                used.add(candidate)
                break
        out.entries.append(Entry(ref, sidecar))
    out.orphans.extend(ref for ref in group if is_json(ref.key) and ref.key not in used)


class SidecarPairer:
    """Stateful across pages: feed sorted pages, get entries as their groups close."""

    def __init__(self, suffix: str = DEFAULT_SIDECAR_SUFFIX) -> None:
        self.suffix = suffix
        self._open: dict[str, list[ObjectRef]] = {}

    def feed(self, page: Iterable[ObjectRef]) -> Paired:
        out = Paired()
        open_groups = self._open
        for ref in page:
            key = ref.key
            if len(open_groups) == 1:  # the common case, kept cheap: one group open
                prefix = next(iter(open_groups))
                if key > prefix and not key.startswith(prefix):
                    _resolve(open_groups.pop(prefix), self.suffix, out)
            elif open_groups:
                for prefix in [p for p in open_groups if key > p and not key.startswith(p)]:
                    _resolve(open_groups.pop(prefix), self.suffix, out)
            open_groups.setdefault(group_prefix(key), []).append(ref)
        return out

    def finish(self) -> Paired:
        out = Paired()
        for group in self._open.values():
            _resolve(group, self.suffix, out)
        self._open.clear()
        return out


def pair_pages(pages: Iterable[list[ObjectRef]], suffix: str = DEFAULT_SIDECAR_SUFFIX) -> Iterator[Paired]:
    pairer = SidecarPairer(suffix)
    for page in pages:
        yield pairer.feed(page)
    yield pairer.finish()
