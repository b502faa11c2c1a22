"""Encord's private-cloud JSON import manifest, split by item count and bytes."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
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
        n = entry_size(manifest_entry(item))
        if chunk and (len(chunk) >= max_items or size + n > max_bytes):
            yield chunk
            chunk, size = [], 0
        chunk.append(item)
        size += n
    if chunk:
        yield chunk
