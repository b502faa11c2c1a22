"""Encord's private-cloud JSON import manifest, split by item count and bytes."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from json.encoder import encode_basestring
from typing import Any

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

_SINGLE = frozenset((ItemKind.IMAGE, ItemKind.VIDEO, ItemKind.AUDIO, ItemKind.PDF, ItemKind.TEXT, ItemKind.NIFTI))

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
    return len(metadata_json.encode("utf-8")) + 2 * (len(url.encode("utf-8")) + len(title.encode("utf-8"))) + 96


def build_manifest(items: Iterable[Item], *, skip_duplicate_urls: bool = True) -> dict[str, Any]:
    manifest: dict[str, Any] = {}
    for item in items:
        manifest.setdefault(SECTION[item.kind], []).append(manifest_entry(item))
    manifest["skip_duplicate_urls"] = skip_duplicate_urls
    return manifest


def split_by_limits(
    items: Iterable[Item], *, max_items: int = DEFAULT_BATCH_SIZE, max_bytes: int = DEFAULT_BATCH_BYTES
) -> Iterator[list[Item]]:
    """Chunks that respect both limits; an item bigger than `max_bytes` travels alone."""
    chunk: list[Item] = []
    size = 0
    for item in items:
        n = item.extra.get("entry_size") or entry_size(manifest_entry(item))
        if chunk and (len(chunk) >= max_items or size + n > max_bytes):
            yield chunk
            chunk, size = [], 0
        chunk.append(item)
        size += n
    if chunk:
        yield chunk


def render_manifest(items: Iterable[Item], *, skip_duplicate_urls: bool = True) -> tuple[str, int]:
    """The manifest as JSON text and its item count, reusing each item's encoded clientMetadata.

    Equivalent to `json.dumps(build_manifest(items))` (a test checks it), without encoding every
    item's metadata a second time: at millions of objects the manifest-only path is mostly this.
    """
    dumps = json.dumps
    quote = encode_basestring  # json.dumps(text, ensure_ascii=False) for a str, without building an encoder
    sections: dict[str, list[str]] = {}
    count = 0
    for item in items:
        count += 1
        encoded = item.extra.get("metadata_json")
        if encoded is not None and item.kind in _SINGLE and not item.extra.get("media_metadata"):
            text = f'{{"objectUrl":{quote(item.url)},"title":{quote(item.title)},"clientMetadata":{encoded}}}'
        else:
            text = dumps(manifest_entry(item), ensure_ascii=False, separators=(",", ":"))
        sections.setdefault(SECTION[item.kind], []).append(text)
    body = ",".join(f'"{name}":[{",".join(entries)}]' for name, entries in sections.items())
    flag = f'"skip_duplicate_urls":{"true" if skip_duplicate_urls else "false"}'
    return "{" + (body + "," if body else "") + flag + "}", count
