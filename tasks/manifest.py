"""Encord's private-cloud JSON import manifest, split by item count and bytes."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from itertools import repeat
from json.encoder import encode_basestring as _quote  # json.dumps(str, ensure_ascii=False), no encoder built
from operator import itemgetter
from typing import Any, TypeVar

from encord_ingest.models import Item, ItemKind

DEFAULT_BATCH_SIZE = 1000
DEFAULT_BATCH_BYTES = 4 * 1024 * 1024

SECTION = {
    ItemKind.IMAGE: "images",
    ItemKind.VIDEO: "videos",
    ItemKind.AUDIO: "audio",
    ItemKind.PDF: "pdf",
    ItemKind.TEXT: "text",
    ItemKind.NIFTI: "nifti",
    ItemKind.IMAGE_GROUP: "image_groups",
    ItemKind.IMAGE_SEQUENCE: "image_groups",
    ItemKind.DICOM_SERIES: "dicom_series",
}

SINGLE_FILE = frozenset((ItemKind.IMAGE, ItemKind.VIDEO, ItemKind.AUDIO, ItemKind.PDF, ItemKind.TEXT, ItemKind.NIFTI))

_MEDIA_METADATA = {ItemKind.VIDEO: "videoMetadata", ItemKind.AUDIO: "audioMetadata", ItemKind.IMAGE: "imageMetadata"}


def manifest_entry(item: Item) -> dict[str, Any]:
    """One element of the manifest section for this item, in the documented JSON vocabulary."""
    if item.kind in (ItemKind.IMAGE_GROUP, ItemKind.IMAGE_SEQUENCE, ItemKind.DICOM_SERIES):
        entry: dict[str, Any] = {"title": item.title}
        if item.kind != ItemKind.DICOM_SERIES:
            entry["createVideo"] = item.kind == ItemKind.IMAGE_SEQUENCE
        for i, url in enumerate(item.urls):
            entry[f"objectUrl_{i}"] = url
    else:
        entry = {"objectUrl": item.url, "title": item.title}
        media = item.extra.get("media_metadata")
        if media and item.kind in _MEDIA_METADATA:
            entry[_MEDIA_METADATA[item.kind]] = media
    entry["clientMetadata"] = item.client_metadata
    return entry


def entry_size(entry: dict[str, Any]) -> int:
    return len(json.dumps(entry, ensure_ascii=False, separators=(",", ":")).encode("utf-8")) + 1


def entry_size_estimate(url: str, title: str, metadata_json: str) -> int:
    """An upper bound of a single-file entry's manifest bytes without encoding it again.

    UTF-8 length, doubled for the URL and title in case of escapes, plus the keys and punctuation.
    """
    return _nbytes(metadata_json) + 2 * (_nbytes(url) + _nbytes(title)) + 96


def _nbytes(text: str) -> int:
    """UTF-8 length; an ASCII str (most keys) knows it without encoding."""
    return len(text) if text.isascii() else len(text.encode("utf-8"))


def build_manifest(items: Iterable[Item], *, skip_duplicate_urls: bool = True) -> dict[str, Any]:
    manifest: dict[str, Any] = {}
    for item in items:
        manifest.setdefault(SECTION[item.kind], []).append(manifest_entry(item))
    manifest["skip_duplicate_urls"] = skip_duplicate_urls
    return manifest


T = TypeVar("T")


def _split(things: Iterable[T], size_of: Callable[[T], int], max_items: int, max_bytes: int) -> Iterator[list[T]]:
    chunk: list[T] = []
    size = 0
    for thing in things:
        n = size_of(thing)
        if chunk and (len(chunk) >= max_items or size + n > max_bytes):
            yield chunk
            chunk, size = [], 0
        chunk.append(thing)
        size += n
    if chunk:
        yield chunk


def _item_size(item: Item) -> int:
    return item.extra.get("entry_size") or entry_size(manifest_entry(item))


def split_by_limits(
    items: Iterable[Item], *, max_items: int = DEFAULT_BATCH_SIZE, max_bytes: int = DEFAULT_BATCH_BYTES
) -> Iterator[list[Item]]:
    """Chunks that respect both limits; an item bigger than `max_bytes` travels alone."""
    return _split(items, _item_size, max_items, max_bytes)


# One manifest entry already encoded: (section, JSON text, byte budget). The budget is what
# `split_by_limits` counts for the same item, so manifest files are cut exactly where an upload
# run cuts its jobs. A plain tuple: one is made per object.
Line = tuple[str, str, int]

# A plain entry's text between its url, title and clientMetadata (joined, not str.format: a
# format call per object costs 3-4 times as much)
_PLAIN_PARTS = ('{"objectUrl":"', '","title":"', '","clientMetadata":', "}")
_ASCII_PRINTABLE = bytes(range(0x20, 0x7F))


def _as_is(text: str) -> bool:
    """True when `_quote` (json's encode_basestring) would only put quotes around `text`: no quote,
    backslash or control character in it (`isprintable` is stricter; for ASCII, deleting the
    printable bytes is a third of its time)."""
    if '"' in text or "\\" in text:
        return False
    if text.isascii():
        return not text.encode("ascii").translate(None, _ASCII_PRINTABLE)
    return text.isprintable()


def single_lines(sections: list[str], urls: list[str], titles: list[str], metadata: list[str]) -> list[Line]:
    """Single-file entries from their parts, column by column; `metadata` holds canonical clientMetadata texts."""
    if not len(sections) == len(urls) == len(titles) == len(metadata):
        raise ValueError("single_lines: columns of different lengths")
    all_urls, all_titles = "".join(urls), "".join(titles)
    texts: list[str]
    if _as_is(all_urls) and _as_is(all_titles):
        start, mid, meta_at, end = map(repeat, _PLAIN_PARTS)  # each string its own JSON text
        texts = list(map("".join, zip(start, urls, mid, titles, meta_at, metadata, end, strict=False)))
    else:
        quote = _quote
        texts = [
            f'{{"objectUrl":{quote(url)},"title":{quote(title)},"clientMetadata":{meta}}}'
            for url, title, meta in zip(urls, titles, metadata, strict=True)
        ]
    if all_urls.isascii() and all_titles.isascii() and "".join(metadata).isascii():
        sizes = [
            len(meta) + 2 * (len(url) + len(title)) + 96
            for url, title, meta in zip(urls, titles, metadata, strict=True)
        ]
    else:  # `entry_size_estimate` measures UTF-8; for ASCII the lengths above are the same
        sizes = list(map(entry_size_estimate, urls, titles, metadata))
    return list(zip(sections, texts, sizes, strict=True))


def item_line(item: Item) -> Line:
    encoded = item.extra.get("metadata_json")
    section = SECTION[item.kind]
    if encoded is not None and item.kind in SINGLE_FILE and not item.extra.get("media_metadata"):
        section, text, size = single_lines([section], [item.url], [item.title], [encoded])[0]
        return section, text, item.extra.get("entry_size") or size
    text = json.dumps(manifest_entry(item), ensure_ascii=False, separators=(",", ":"))
    return section, text, item.extra.get("entry_size") or len(text.encode("utf-8")) + 1


def split_lines(
    lines: list[Line], *, max_items: int = DEFAULT_BATCH_SIZE, max_bytes: int = DEFAULT_BATCH_BYTES
) -> Iterator[list[Line]]:
    """`split_by_limits` for encoded entries."""
    if len(lines) <= max_items and sum(map(_line_size, lines)) <= max_bytes:  # the usual batch: one manifest
        return iter([lines] if lines else [])
    return _split(lines, _line_size, max_items, max_bytes)


_line_size: Callable[[Line], int] = itemgetter(2)


def render_lines(lines: Iterable[Line], *, skip_duplicate_urls: bool = True) -> tuple[str, int]:
    """The manifest as JSON text and its entry count."""
    lines = lines if isinstance(lines, list) else list(lines)
    count = len(lines)
    names = dict.fromkeys(map(itemgetter(0), lines))  # in order of first appearance
    sections: dict[str, list[str]] = {}
    if len(names) == 1:  # one kind of item, as most batches are
        sections[next(iter(names))] = list(map(itemgetter(1), lines))
    else:
        for name in names:
            sections[name] = []
        for section, text, _ in lines:
            sections[section].append(text)
    body = ",".join(f'"{name}":[{",".join(entries)}]' for name, entries in sections.items())
    flag = f'"skip_duplicate_urls":{"true" if skip_duplicate_urls else "false"}'
    return "{" + (body + "," if body else "") + flag + "}", count


def render_manifest(items: Iterable[Item], *, skip_duplicate_urls: bool = True) -> tuple[str, int]:
    """The manifest as JSON text and its item count, reusing each item's encoded clientMetadata.

    Equivalent to `json.dumps(build_manifest(items))` (a test checks it), without encoding every
    item's metadata a second time: at millions of objects the manifest-only path is mostly this.
    """
    return render_lines(map(item_line, items), skip_duplicate_urls=skip_duplicate_urls)
