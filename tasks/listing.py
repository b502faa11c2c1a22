"""Listing: pages of keys -> sidecar pairing -> filters -> batches, all streaming.

A single lister runs ahead of the consumer in a thread (`prefetch`): the next pages are on their
way while a batch is being processed, so on a real bucket (~0.1 s per page) the listing's
latency hides behind the work instead of adding to it.

With `fanout > 1` the top level under the prefix is listed with a delimiter and each child
prefix is listed by a bounded pool of listers (one sequential lister tops out near 3,000
keys/s on S3). On stores that can start a listing at a key (S3, GCS), a lister whose pages come
slowly hands the rest of a long range to the pool (`tasks.key_ranges`), so a flat level is
listed in parallel too. Each lister's stream is sorted, so sidecar pairing runs per lister;
batches are cut per stream so a batch stays a contiguous key range. A bounded queue between listers and
the consumer keeps memory flat whatever the bucket size.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

from encord_ingest.crashpoints import crash_point
from encord_ingest.models import Entry, ObjectRef
from integrations.storage import Source
from tasks.filters import KeyFilter
from tasks.key_ranges import split_points
from tasks.sidecars import DEFAULT_SIDECAR_SUFFIX, Paired, SidecarPairer

T = TypeVar("T")
PREFETCH_PAGES = 4
SPLIT_AFTER = 2  # full pages a lister reads before it hands the rest of its range to others
# Handing off costs each new range a request or two; worth it where a page takes ~0.1 s (S3, GCS),
# not where it takes a millisecond (a local emulator), hence `ListingOptions.split_page_seconds`.

ORPHAN_REASON = "JSON file with no object beside it (sidecar files are never imported)"


@dataclass(slots=True)
class ListingOptions:
    key_filter: KeyFilter = field(default_factory=lambda: KeyFilter(None, None))
    sidecar_suffix: str = DEFAULT_SIDECAR_SUFFIX
    page_size: int = 1000
    fanout: int = 1
    split_page_seconds: float = 0.03  # pages slower than this on average: a long range is split (`_fanout_chunks`)


@dataclass(slots=True)
class Chunk:
    """Output of one lister page: accepted entries and orphan JSON files, tagged by stream."""

    stream: int
    entries: list[Entry]
    orphans: list[ObjectRef]
    last: bool = False


@dataclass(slots=True)
class ListingStats:
    pages: int = 0
    listed: int = 0
    orphans: int = 0
    excluded: int = 0
    orphan_keys: list[str] = field(default_factory=list)


class _Stop(Exception):
    pass


def _paired(source: Source, opts: ListingOptions, pages: Iterable[list[ObjectRef]], stream: int) -> Iterator[Chunk]:
    pairer = SidecarPairer(opts.sidecar_suffix)
    accepts = opts.key_filter.accepts
    rel = source.relative
    everything = opts.key_filter.include is None and opts.key_filter.exclude is None

    def kept(out: Paired) -> tuple[list[Entry], list[ObjectRef]]:
        if everything:  # no globs: nothing to test per key
            return out.entries, out.orphans
        return [e for e in out.entries if accepts(rel(e.obj.key))], [o for o in out.orphans if accepts(rel(o.key))]

    for page in pages:
        yield Chunk(stream, *kept(pairer.feed(page)))
    yield Chunk(stream, *kept(pairer.finish()), last=True)


@dataclass(slots=True)
class _Range:
    """One lister's share of a prefix: keys from `start` (inclusive) up to `end` (exclusive)."""

    prefix: str
    start: str | None = None
    end: str | None = None


def _first_last(prefixes: list[str], objects: list[ObjectRef]) -> tuple[str, str]:
    """The smallest and the largest name of a page (keys and common prefixes sort together)."""
    names = [n for n in (prefixes[:1] + [o.key for o in objects[:1]]) if n]
    lasts = [n for n in (prefixes[-1:] + [o.key for o in objects[-1:]]) if n]
    return min(names), max(lasts)


def _fanout_chunks(source: Source, opts: ListingOptions) -> Iterator[Chunk]:
    store = source.store
    ranged = getattr(store, "list_from", None)  # stores that can start a listing at a key
    out: queue.Queue[Chunk | BaseException | None] = queue.Queue(maxsize=2 * opts.fanout)
    stop = threading.Event()
    pending_prefixes = threading.BoundedSemaphore(4 * opts.fanout)
    lock = threading.Lock()
    outstanding = [1]
    next_stream = [1]
    pool = ThreadPoolExecutor(max_workers=opts.fanout + 1, thread_name_prefix="lister")

    def put(item: Chunk | BaseException | None) -> None:
        while not stop.is_set():
            try:
                out.put(item, timeout=0.2)
                return
            except queue.Full:
                continue
        raise _Stop

    def new_stream() -> int:
        with lock:
            outstanding[0] += 1
            stream = next_stream[0]
            next_stream[0] += 1
            return stream

    def hand_off(work: _Range, first: str, last: str) -> bool:
        """The rest of `work` after `last`, cut into ranges for other listers, when some would
        otherwise sit idle; `work` then ends at the first cut. A range costs a request or two
        more (its first page, and the page that runs past its end)."""
        with lock:
            if outstanding[0] > opts.fanout:  # every lister has work (this also bounds the ranges waiting)
                return False

        def maybe_key(name: str) -> bool:  # a name below `first` and in this range would have come first
            return not ((work.start or "") <= name < first)

        cuts = split_points(first, last, work.prefix, work.end, maybe_key)
        if not cuts:
            return False
        for lo, hi in zip(cuts, [*cuts[1:], work.end], strict=True):
            pool.submit(listed, _Range(work.prefix, lo, hi), new_stream(), True)
        work.end = cuts[0]
        return True

    def range_pages(work: _Range, delimited: bool = False) -> Iterator[list[ObjectRef]]:
        """Objects of `work`; a delimited listing's prefixes go to child listers. After
        SPLIT_AFTER full pages the rest of the range is handed off (`hand_off`)."""
        assert ranged is not None
        first, seen, spawned = "", "", ""
        pages = iter(ranged(work.prefix, work.start, delimited=delimited, page_size=opts.page_size))
        waited, number, handed = 0.0, 0, False
        while True:
            asked = time.monotonic()
            page = next(pages, None)
            if page is None:
                return
            prefixes, objects = page
            waited += time.monotonic() - asked
            number += 1
            full = len(prefixes) + len(objects) >= opts.page_size
            end, done = work.end, False
            if end is not None and ((prefixes and prefixes[-1] >= end) or (objects and objects[-1].key >= end)):
                prefixes = [p for p in prefixes if p < end]
                objects = [o for o in objects if o.key < end]
                done = True
            spawned = child_prefixes(prefixes, spawned)
            if objects:
                yield objects
            if done:
                return
            if not (prefixes or objects):  # not the end: S3 pages of names below a range's start, GCS pages
                continue
            low, high = _first_last(prefixes, objects)
            first = first or low
            seen = max(seen, high)  # a service may send a level's prefixes ahead of its objects
            slow = waited >= number * opts.split_page_seconds
            if not handed and number >= SPLIT_AFTER and full and slow:
                handed = hand_off(work, first, seen)  # once per range: the rest now ends at the first cut

    def child_prefixes(prefixes: list[str], spawned: str) -> str:
        """A lister for each prefix after `spawned` (a service may repeat a level's prefixes on
        every page: fake-gcs-server does); returns the last prefix spawned."""
        for prefix in prefixes:
            if prefix <= spawned:
                continue
            while not pending_prefixes.acquire(timeout=0.2):
                if stop.is_set():
                    raise _Stop
            pool.submit(listed, _Range(prefix), new_stream(), False)
            spawned = prefix
        return spawned

    def listed(work: _Range, stream: int, is_range: bool) -> None:
        try:
            pages = range_pages(work) if ranged else store.list_pages(work.prefix, page_size=opts.page_size)
            for chunk in _paired(source, opts, pages, stream):
                put(chunk)
        except _Stop:
            return
        except BaseException as exc:  # delivered to the consumer, which re-raises it
            put(exc)
        finally:
            if not is_range:
                pending_prefixes.release()
            if not stop.is_set():
                with contextlib.suppress(_Stop):
                    put(None)

    def root() -> None:
        try:

            def root_pages() -> Iterator[list[ObjectRef]]:
                if ranged is not None:
                    yield from range_pages(_Range(source.prefix), delimited=True)
                    return
                spawned = ""
                for prefixes, objects in store.list_level(source.prefix):
                    spawned = child_prefixes(prefixes, spawned)
                    if objects:
                        yield objects

            for chunk in _paired(source, opts, root_pages(), 0):
                put(chunk)
        except _Stop:
            return
        except BaseException as exc:
            put(exc)
        finally:
            if not stop.is_set():
                with contextlib.suppress(_Stop):
                    put(None)

    pool.submit(root)
    try:
        while True:
            item = out.get()
            if item is None:
                with lock:
                    outstanding[0] -= 1
                    if outstanding[0] == 0:
                        return
                continue
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        pool.shutdown(wait=True, cancel_futures=True)


def prefetch(items: Iterator[T], depth: int = PREFETCH_PAGES) -> Iterator[T]:
    """`items` produced by a thread at most `depth` ahead; errors reach the consumer in order.

    Closing the consumer (break, exception, garbage collection) stops the thread.
    """
    out: queue.Queue[tuple[int, object]] = queue.Queue(maxsize=depth)
    stop = threading.Event()
    item_, error_, end_ = 0, 1, 2

    def put(entry: tuple[int, object]) -> bool:
        while not stop.is_set():
            try:
                out.put(entry, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put((item_, item)):
                    return
        except BaseException as exc:  # delivered to the consumer, which re-raises it
            put((error_, exc))
            return
        put((end_, None))

    thread = threading.Thread(target=produce, name="lister-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            tag, value = out.get()
            if tag == end_:
                return
            if tag == error_:
                assert isinstance(value, BaseException)
                raise value
            yield value  # type: ignore[misc]
    finally:
        stop.set()
        thread.join(timeout=30)


def iter_chunks(
    source: Source, opts: ListingOptions, pages: Iterable[list[ObjectRef]] | None = None
) -> Iterator[Chunk]:
    """`pages` (sorted, e.g. an inventory or a shard's listing) replaces the store's listing."""
    if pages is None and opts.fanout <= 1:
        pages = source.store.list_pages(source.prefix, page_size=opts.page_size)
    if pages is not None:
        yield from prefetch(_paired(source, opts, pages, 0))
    else:
        yield from _fanout_chunks(source, opts)


def iter_batches(
    source: Source,
    opts: ListingOptions,
    batch_size: int,
    stats: ListingStats,
    pages: Iterable[list[ObjectRef]] | None = None,
) -> Iterator[list[Entry]]:
    """Batches of at most `batch_size` entries, each from one lister stream."""
    buffers: dict[int, list[Entry]] = {}
    for chunk in iter_chunks(source, opts, pages):
        crash_point("listing-page")
        stats.pages += 1
        stats.listed += len(chunk.entries) + len(chunk.orphans)
        stats.orphans += len(chunk.orphans)
        if len(stats.orphan_keys) < 20:
            stats.orphan_keys.extend(o.key for o in chunk.orphans[: 20 - len(stats.orphan_keys)])
        buf = buffers.setdefault(chunk.stream, [])
        buf.extend(chunk.entries)
        if len(buf) >= batch_size:
            for start in range(0, len(buf) - batch_size + 1, batch_size):
                yield buf[start : start + batch_size]
            buf = buffers[chunk.stream] = buf[len(buf) - len(buf) % batch_size :]
        if chunk.last:
            rest = buffers.pop(chunk.stream, [])
            if rest:
                yield rest
    for rest in buffers.values():
        if rest:
            yield rest
