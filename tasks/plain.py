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
    url_for = source.store.url_for
    relative = source.relative
    titles_are_keys = ctx.options.title_from == "key"
    uses_sidecar = plan.uses_sidecar
    schema, memo, merge = ctx.schema, ctx.memo, plan.merge
    by_cheap: dict[int, tuple[dict[str, Any], Any, str]] = {}  # Cheaps are shared and live as long as the batch
    sent: list[dict[str, Any]] = []  # the metadata of each plain entry (shared dicts)
    slots: list[int] = []  # where each plain entry sits in `entries`
    keys: list[str] = []
    kept_sections: list[str] = []
    encoded: list[str] = []
    rest: list[Entry] = []
    for i, (entry, cheap) in enumerate(zip(entries, plan.cheap(entries, relative), strict=True)):
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
        hit = by_cheap.get(id(cheap))
        if hit is None:
            hit = by_cheap[id(cheap)] = validate_remembered(merge(cheap, None, None, None), schema, memo)
        metadata, violation, text = hit
        if violation is not None:
            rest.append(entry)
            continue
        slots.append(i)
        keys.append(key)
        kept_sections.append(section)
        encoded.append(text)
        sent.append(metadata)
    distinct = {id(m): m for m in sent}  # each distinct metadata observed once, with its count
    for ident, items in Counter(map(id, sent)).items():
        observed.observe(distinct[ident], items)
    titles = keys if titles_are_keys else [relative(key) or key for key in keys]
    made = single_lines(kept_sections, list(map(url_for, keys)), titles, encoded)
    if not rest:
        return list(made), rest
    lines: list[Line | None] = [None] * len(entries)
    for i, line in zip(slots, made, strict=True):
        lines[i] = line
    return lines, rest
