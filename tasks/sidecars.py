"""Pair each data object with the sidecar JSON beside it, streaming over a key-sorted listing.

Every sidecar of `dir/KEY.ext` starts with `dir/STEM.` (STEM = name up to its first dot), so in a
sorted listing an object and its sidecars meet inside the key range of that prefix. A group is
closed as soon as the listing has moved past its range, which keeps only a few groups open.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from encord_ingest.models import Entry, ObjectRef, entries_of

DEFAULT_SIDECAR_SUFFIX = ".metadata.json"
# Per line of "\n"-joined keys: everything up to the name's first dot (`group_prefix` minus the dot).
_STEM = re.compile(r"^(?:[^\n]*/)?[^/.\n]*", re.M)


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
        page = page if isinstance(page, list) else list(page)
        if len(page) > 2 and self._feed_apart(page, out):
            return out
        self._feed_each(page, out)
        return out

    def _feed_apart(self, page: list[ObjectRef], out: Paired) -> bool:
        """The common page, at once: no JSON file in it, and every object alone in its group.

        Then each object but the last is closed, sidecar-less, by the key after it, as `_feed_each`
        would close it; the last one stays open (its sidecar may open the next page). Returns False,
        having changed nothing, when the page is not like that.
        """
        keys = [ref.key for ref in page]
        joined = "\n".join(keys)
        if ".json" in joined.lower() or joined.count("\n") != len(keys) - 1:
            return False
        stems = _STEM.findall(joined)  # dir/stem of each key: its group prefix without the dot
        if len(stems) != len(keys) or any(map(str.startswith, keys[1:], stems)):
            return False  # a key shares its neighbour's stem (a.jpg + a.png): pair the slow way
        if not all(map(str.__lt__, keys, keys[1:])):
            return False  # not in key order: the slow way decides what it makes of that
        if any(is_json(ref.key) for group in self._open.values() for ref in group):
            return False
        self._feed_each(page[:1], out)
        if list(self._open) != [stems[0] + "."] or len(self._open[stems[0] + "."]) != 1:  # joined open groups
            self._feed_each(page[1:], out)
            return True
        self._open.clear()
        out.entries.extend(entries_of(page[:-1]))
        self._open[stems[-1] + "."] = [page[-1]]
        return True

    def _feed_each(self, page: list[ObjectRef], out: Paired) -> None:
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
