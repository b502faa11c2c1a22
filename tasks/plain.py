"""Objects whose Encord item the listing alone decides, encoded as manifest lines in one pass.

Most objects of a big bucket are plain: a single-file type known by its extension, metadata only
from listing-derived sources (path, table, set), nothing to read, nothing to group, nothing to
record. For runs that record nothing (the `manifest` command) they skip the per-object records of
`tasks.batch` and become manifest lines straight away; everything else (a sidecar to read, an
empty or unknown object, invalid metadata, a group member) is left to the full path, which gives
the same lines for plain objects (a test holds both to it).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from operator import attrgetter, itemgetter, methodcaller
from typing import Any

from encord_ingest.models import Entry, ItemKind
from tasks.classify import EXTENSION_KINDS, extension
from tasks.manifest import SECTION, SINGLE_FILE, Line, single_lines
from tasks.observed import Observed
from tasks.validate import validate_remembered

_TIMED_MEDIA = frozenset((ItemKind.VIDEO, ItemKind.AUDIO))


def plain_sections(ctx: Any) -> dict[str, str]:
    """Manifest section by extension, for the extensions whose objects need nothing beyond the listing."""
    if ctx.plan.uses_object:  # every object's own metadata takes a request
        return {}
    kinds = set(SINGLE_FILE)
    if ctx.options.probe_media:
        kinds -= _TIMED_MEDIA
    if ctx.options.group_regex is not None:
        kinds.discard(ItemKind.IMAGE)
    return {ext: SECTION[kind] for ext, kind in EXTENSION_KINDS.items() if kind in kinds}


def plain_lines(ctx: Any, entries: Sequence[Entry], observed: Observed) -> tuple[list[Line | None], list[Entry]]:
    """(a line per entry, None where the full path must decide; the entries for the full path, in order).

    What the lines send is added to `observed`, once per distinct metadata.
    """
    sections = plain_sections(ctx)
    if not sections or not entries:
        return [None] * len(entries), list(entries)
    plan = ctx.plan
    source = ctx.source
    cheaps = plan.cheap(entries, source.relative)
    by_cheap: dict[int, Hit] = {}  # Cheaps are shared and live as long as the batch
    whole = _all_plain(ctx, sections, entries, cheaps, by_cheap, observed)
    if whole is not None:
        return whole, []
    uses_sidecar = plan.uses_sidecar
    slots: list[int] = []  # where each plain entry sits in `entries`
    keys: list[str] = []
    kept_sections: list[str] = []
    hits: list[Hit] = []
    rest: list[Entry] = []
    for i, (entry, cheap) in enumerate(zip(entries, cheaps, strict=True)):
        obj = entry.obj
        key = obj.key
        dot = key.rfind(".")
        # a known lower-case extension as it stands (no "/" or "." in it), else the full rules
        section = sections.get(key[dot + 1 :]) if dot >= 0 else None
        if section is None:
            section = sections.get(extension(key))
        if section is None or not obj.size or cheap.problem is not None or (uses_sidecar and entry.sidecar is not None):
            rest.append(entry)
            continue
        hit = _validated(ctx, by_cheap, cheap)
        if hit[1] is not None:  # a violation: the full path dead-letters it
            rest.append(entry)
            continue
        slots.append(i)
        keys.append(key)
        kept_sections.append(section)
        hits.append(hit)
    made = _send(ctx, observed, kept_sections, keys, hits, by_cheap)
    if not rest:
        return made, rest
    lines: list[Line | None] = [None] * len(entries)
    for i, line in zip(slots, made, strict=True):
        lines[i] = line
    return lines, rest


# (metadata as sent, violation or None, its canonical JSON text): what validation says of a Cheap
Hit = tuple[dict[str, Any], Any, str]

_KEY = attrgetter("key")
_SIZE = attrgetter("size")
_OBJ = attrgetter("obj")
_SIDECAR = attrgetter("sidecar")
_LAST_DOT = methodcaller("rpartition", ".")
_DOT = itemgetter(1)
_AFTER_DOT = itemgetter(2)
_METADATA = itemgetter(0)
_TEXT = itemgetter(2)


def _validated(ctx: Any, by_cheap: dict[int, Hit], cheap: Any) -> Hit:
    """The Cheap's metadata merged and validated, once per Cheap of the batch."""
    hit = by_cheap.get(id(cheap))
    if hit is None:
        merged = ctx.plan.merge(cheap, None, None, None)
        hit = by_cheap[id(cheap)] = validate_remembered(merged, ctx.schema, ctx.memo)
    return hit


def _send(
    ctx: Any, observed: Observed, sections: list[str], keys: list[str], hits: list[Hit], by_cheap: dict[int, Hit]
) -> list[Line]:
    """The lines of plain objects (`hits` taken from `by_cheap`); what they send is added to
    `observed` once per distinct metadata."""
    distinct = {id(hit[0]): hit[0] for hit in by_cheap.values()}  # a few per batch
    for ident, items in Counter(map(id, map(_METADATA, hits))).items():
        observed.observe(distinct[ident], items)
    relative = ctx.source.relative
    titles = keys if ctx.options.title_from == "key" else [relative(key) or key for key in keys]
    return single_lines(sections, list(map(ctx.source.store.url_for, keys)), titles, list(map(_TEXT, hits)))


def _sections_of(keys: list[str], sections: dict[str, str]) -> list[str] | None:
    """Each key's section by the text after its last dot, taken as it stands (upper case,
    `nii.gz`, ... are the loop's to decide), or None when a key has none."""
    ext = keys[0].rpartition(".")[2]
    section = sections.get(ext)
    if section is not None:  # the usual batch, one extension: keys hold no newline, so each newline
        joined = "\n".join(keys) + "\n"  # ends one key, and `.ext` right before every one of them
        if joined.count("\n") == len(keys) and joined.count(f".{ext}\n") == len(keys):
            return [section] * len(keys)
    parts = list(map(_LAST_DOT, keys))
    if not all(map(_DOT, parts)):  # a key without a dot
        return None
    kept = list(map(sections.get, map(_AFTER_DOT, parts)))
    return None if None in kept else kept  # type: ignore[return-value]


def _all_plain(
    ctx: Any,
    sections: dict[str, str],
    entries: Sequence[Entry],
    cheaps: list[Any],
    by_cheap: dict[int, Hit],
    observed: Observed,
) -> list[Line] | None:
    """The lines of a batch whose every entry is plain, column by column (no Python code per
    object), or None - nothing observed - when one is not: the per-entry loop then decides."""
    if ctx.plan.uses_sidecar and any(map(_SIDECAR, entries)):
        return None
    objs = list(map(_OBJ, entries))
    if 0 in map(_SIZE, objs):
        return None
    keys = list(map(_KEY, objs))
    kept_sections = _sections_of(keys, sections)
    if kept_sections is None:
        return None
    for cheap in dict(zip(map(id, cheaps), cheaps, strict=True)).values():  # each distinct Cheap once
        if cheap.problem is not None or _validated(ctx, by_cheap, cheap)[1] is not None:
            return None
    hits = list(map(by_cheap.__getitem__, map(id, cheaps)))
    return _send(ctx, observed, kept_sections, keys, hits, by_cheap)
