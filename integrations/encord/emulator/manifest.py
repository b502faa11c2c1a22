"""Parsing and validation of upload manifests (``externalFiles`` verbatim or typed ``dataItems``).

Both vocabularies reach Encord: the documented snake_case JSON file and the SDK's camelCase DataUploadItems.
Structural problems raise ManifestError, which the upload route turns into HTTP 400.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from .objects import UnsupportedUrl, parse_url

SINGLE_FILE_KEYS: dict[str, str] = {
    "images": "image",
    "videos": "video",
    "audio": "audio",
    "pdf": "pdf",
    "text": "text",
    "nifti": "nifti",
    "timeSeries": "timeseries",
    "time_series": "timeseries",
}
MULTI_FILE_KEYS: dict[str, str] = {
    "imageGroups": "image_group",
    "image_groups": "image_group",
    "dicomSeries": "dicom_series",
    "dicom_series": "dicom_series",
}
FLAG_KEYS: dict[str, str] = {
    "skipDuplicateUrls": "skip_duplicate_urls",
    "skip_duplicate_urls": "skip_duplicate_urls",
    "upsertMetadata": "upsert_metadata",
    "upsert_metadata": "upsert_metadata",
}
# Sent (usually empty) by the typed DataUploadItems model; the emulator does not implement them.
UNSUPPORTED_KEYS = frozenset({"scenes", "imageGroupsFromItems", "image_groups_from_items"})
_MEDIA_KEYS = (
    "imageMetadata",
    "videoMetadata",
    "audioMetadata",
    "textMetadata",
    "pdfMetadata",
    "image_metadata",
    "video_metadata",
    "audio_metadata",
    "text_metadata",
    "pdf_metadata",
)
_FRAME_KEY = re.compile(r"objectUrl_(\d+)$")


class ManifestError(ValueError):
    """The manifest is structurally invalid (unknown key, entry without URL, wrong types)."""


@dataclass(slots=True)
class Unit:
    """One item to create: its type, file URLs (one unless multi-file), title, metadata and media hints."""

    kind: str
    urls: list[str]
    title: str
    client_metadata: dict[str, Any]
    media: dict[str, Any] = field(default_factory=dict)


@dataclass
class Manifest:
    units: list[Unit]
    skip_duplicate_urls: bool = False
    upsert_metadata: bool = False


def json_size(value: Any) -> int:
    """Compact UTF-8 JSON size, the most lenient reading of Encord's clientMetadata size limit."""
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())


def default_title(url: str) -> str:
    """Encord titles an item after its object path when no title is given."""
    try:
        return parse_url(url).key
    except UnsupportedUrl:
        return url


def _title(entry: dict[str, Any], where: str, first_url: str, prefix: str = "") -> str:
    title = entry.get("title")
    if title is None or title == "":
        return prefix + default_title(first_url)
    if not isinstance(title, str):
        raise ManifestError(f"{where}: 'title' must be a string")
    return title


def _client_metadata(entry: dict[str, Any], where: str) -> dict[str, Any]:
    metadata = entry.get("clientMetadata", entry.get("client_metadata"))
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise ManifestError(f"{where}: 'clientMetadata' must be a JSON object")
    return metadata


def _media(entry: dict[str, Any]) -> dict[str, Any]:
    for key in _MEDIA_KEYS:
        value = entry.get(key)
        if isinstance(value, dict):
            return value
    return {}


def _single(entry: Any, kind: str, where: str) -> Unit:
    if not isinstance(entry, dict):
        raise ManifestError(f"{where}: entry must be a JSON object")
    url = entry.get("objectUrl", entry.get("object_url"))
    if not isinstance(url, str) or not url:
        raise ManifestError(f"{where}: missing 'objectUrl'")
    return Unit(kind, [url], _title(entry, where, url), _client_metadata(entry, where), _media(entry))


def _frame_url(frame: Any, where: str) -> str:
    if isinstance(frame, str) and frame:
        return frame
    if isinstance(frame, dict):
        url = frame.get("url", frame.get("objectUrl"))
        if isinstance(url, str) and url:
            return url
    raise ManifestError(f"{where}: every file needs a 'url'")


def _multi(entry: Any, kind: str, where: str) -> Unit:
    if not isinstance(entry, dict):
        raise ManifestError(f"{where}: entry must be a JSON object")
    list_key = "images" if kind == "image_group" else ("dicomFiles" if "dicomFiles" in entry else "dicom_files")
    frames = entry.get(list_key) or []
    if not isinstance(frames, list):
        raise ManifestError(f"{where}: '{list_key}' must be a list")
    urls = [_frame_url(frame, f"{where}.{list_key}[{i}]") for i, frame in enumerate(frames)]
    numbered = sorted((int(m.group(1)), key) for key in entry if (m := _FRAME_KEY.match(key)))
    for _, key in numbered:
        value = entry[key]
        if not isinstance(value, str) or not value:
            raise ManifestError(f"{where}: '{key}' must be a non-empty URL string")
        urls.append(value)
    if not urls:
        raise ManifestError(f"{where}: no files (expected objectUrl_0..N or '{list_key}')")
    if kind == "image_group" and bool(entry.get("createVideo", entry.get("create_video", False))):
        kind = "image_sequence"
    return Unit(kind, urls, _title(entry, where, urls[0], f"{kind}-"), _client_metadata(entry, where))


def parse_manifest(doc: Any) -> Manifest:
    """Validate a manifest and flatten it into units, in manifest order."""
    if not isinstance(doc, dict):
        raise ManifestError("Upload manifest must be a JSON object")
    manifest = Manifest(units=[])
    for key, value in doc.items():
        if key in FLAG_KEYS:
            if not isinstance(value, bool):
                raise ManifestError(f"'{key}' must be a boolean")
            setattr(manifest, FLAG_KEYS[key], getattr(manifest, FLAG_KEYS[key]) or value)
            continue
        if key not in SINGLE_FILE_KEYS and key not in MULTI_FILE_KEYS and key not in UNSUPPORTED_KEYS:
            raise ManifestError(f"Unknown key '{key}' in upload manifest")
        if value is None:
            continue
        if not isinstance(value, list):
            raise ManifestError(f"'{key}' must be a list")
        if key in UNSUPPORTED_KEYS:
            if value:
                raise ManifestError(f"'{key}' is not supported by the Encord emulator")
            continue
        if key in SINGLE_FILE_KEYS:
            manifest.units.extend(_single(e, SINGLE_FILE_KEYS[key], f"{key}[{i}]") for i, e in enumerate(value))
        else:
            manifest.units.extend(_multi(e, MULTI_FILE_KEYS[key], f"{key}[{i}]") for i, e in enumerate(value))
    return manifest
