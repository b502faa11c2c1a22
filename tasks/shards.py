"""Shards of one source: disjoint key sets that separate flow runs can ingest at the same time.

Three kinds, all inside the source's prefix, together covering every key exactly once:
- `prefix`: every key under a sub-prefix (a "directory" found by delimiter listing);
- `level`: only the objects directly under a prefix that was split into its sub-prefixes;
- `range`: `start <= key < end`, cut from an S3 Inventory's file and row-group boundaries.
Cuts follow directories (or at least `dir/STEM.`), so an object and its sidecars always land in
the same shard. Each shard gets its own ledger scope: shards never wait for each other's lease,
while two runs of the same shard still exclude each other. Planning costs a few delimiter
listings (or the inventory's footers), never a full listing.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Literal

from pydantic import BaseModel, Field

from encord_ingest.models import ObjectRef
from integrations.storage import ObjectStore, Source
from tasks import inventory as inv_mod
from tasks.sidecars import group_prefix

MAX_SHARDS = 1000
MAX_LEVEL_PAGES = 10  # a level with more than ~10k entries is not split further (its listing is the cost)


class ShardSpec(BaseModel):
    """One shard; a flow-run parameter, so plain fields only."""

    kind: Literal["prefix", "level", "range"]
    prefix: str = Field(description="key prefix: the shard's (prefix, level) or the source's (range)")
    start: str = Field(default="", description="range: first key included; empty = from the prefix")
    end: str = Field(default="", description="range: first key excluded; empty = to the end of the prefix")

    @property
    def scope(self) -> str:
        """Suffix of the ledger's source id: the shard's own lease, rows and runs."""
        if self.kind == "range":
            return f"#range:{self.start}..{self.end}"
        return f"#{self.kind}:{self.prefix}"

    @property
    def label(self) -> str:
        if self.kind == "range":
            return f"[{self.start or '…'}, {self.end or '…'})"
        return self.prefix + (" (files at this level)" if self.kind == "level" else "")


def _level(store: ObjectStore, prefix: str, max_pages: int) -> tuple[list[str], bool, bool]:
    """(child prefixes, any objects directly here, listing complete within `max_pages`)."""
    children: list[str] = []
    loose = False
    pages = store.list_level(prefix)
    try:
        for n, (prefixes, objects) in enumerate(pages, start=1):
            children.extend(prefixes)
            loose = loose or bool(objects)
            if n >= max_pages:
                return children, loose, next(pages, None) is None
    finally:
        close = getattr(pages, "close", None)
        if close is not None:
            close()
    return children, loose, True


def plan_listing(
    store: ObjectStore, root: str, target: int, *, max_shards: int = MAX_SHARDS, max_level_pages: int = MAX_LEVEL_PAGES
) -> list[ShardSpec]:
    """Split `root` breadth-first into sub-prefixes until there are `target` shards (or no more levels)."""
    shards: dict[tuple[str, str], ShardSpec] = {("prefix", root): ShardSpec(kind="prefix", prefix=root)}
    todo: deque[str] = deque([root])
    while todo and len(shards) < target:
        prefix = todo.popleft()
        children, loose, complete = _level(store, prefix, max_level_pages)
        if not complete or not children:
            continue  # flat (only objects) or too wide: stays one shard
        new = [ShardSpec(kind="prefix", prefix=c) for c in children]
        if loose:
            new.append(ShardSpec(kind="level", prefix=prefix))
        if len(shards) - 1 + len(new) > max_shards:
            continue
        del shards[("prefix", prefix)]
        shards.update({(s.kind, s.prefix): s for s in new})
        todo.extend(children)
    return sorted(shards.values(), key=lambda s: (s.prefix, s.kind))


def plan_ranges(points: list[str], root: str, target: int) -> list[ShardSpec]:
    """`target` key ranges over `root`, cut at evenly spaced candidate boundaries (sorted keys).

    Cuts are directories (`dir/`) when there are enough of them, else `dir/STEM.` (never between an
    object and its sidecars); a cut at or before the first key would only make an empty shard.
    """
    inside = [p for p in points if p.startswith(root) and p > root]
    if target <= 1 or not inside:
        return [ShardSpec(kind="range", prefix=root)]
    first = min(inside)
    dirs = sorted({d for p in inside if (d := p[: p.rfind("/") + 1]) > root and d > first})
    pool = dirs if len(dirs) >= target - 1 else sorted({g for p in inside if (g := group_prefix(p)) > first})
    if len(pool) > target - 1:
        pool = [pool[(i * len(pool)) // target] for i in range(1, target)]
    bounds = ["", *sorted(set(pool)), ""]
    return [ShardSpec(kind="range", prefix=root, start=bounds[i], end=bounds[i + 1]) for i in range(len(bounds) - 1)]


def plan_inventory(inventory: inv_mod.Inventory, root: str, target: int) -> list[ShardSpec]:
    files = inv_mod.ordered_files(inventory)
    return plan_ranges(inv_mod.split_points(inventory, files), root, target)


def in_range(key: str, shard: ShardSpec) -> bool:
    return key.startswith(shard.prefix) and key >= shard.start and (not shard.end or key < shard.end)


def shard_pages(
    source: Source, shard: ShardSpec, inventory: inv_mod.Inventory | None = None, page_size: int = 1000
) -> Iterator[list[ObjectRef]]:
    """The shard's objects in key order, from the store's listing or from the inventory."""
    if inventory is not None:
        pages = inv_mod.pages(
            inventory, bucket=source.store.bucket, prefix=shard.prefix, start=shard.start, end=shard.end
        )
    elif shard.kind == "level":
        pages = (objects for _, objects in source.store.list_level(shard.prefix) if objects)
    else:
        pages = source.store.list_pages(shard.prefix, page_size=page_size)
    for page in pages:
        if shard.kind == "level":
            page = [r for r in page if "/" not in r.key[len(shard.prefix) :]]
        elif shard.kind == "range" and inventory is None:
            page = [r for r in page if in_range(r.key, shard)]
        if page:
            yield page
