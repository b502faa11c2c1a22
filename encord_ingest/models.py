"""Plain data passed between stages; slots keep a batch of thousands cheap."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from itertools import repeat
from typing import Any, NamedTuple


class ObjectRef(NamedTuple):
    """One object as the listing saw it; `key` is the full key inside the bucket.

    A named tuple: immutable like a frozen dataclass, at a third of its construction cost
    (one is made for every listed object).

    `content_id` names the bytes where the store can tell them apart from metadata edits (GCS
    generation, Azure Content-MD5; GCS and Azure change the ETag on metadata edits too); empty
    means the ETag does. `tags` is a digest of the object's index tags when they were listed
    (they change neither ETag nor modification time).
    """

    key: str
    size: int
    etag: str = ""
    version: str = ""
    last_modified: str = ""
    content_id: str = ""
    tags: str = ""


def content_tag(obj: ObjectRef) -> str:
    """What the ledger records to tell a content change from a metadata edit."""
    return obj.content_id or obj.etag


class Entry(NamedTuple):
    """A listed data object with the sidecar file found beside it, if any (a named tuple, like ObjectRef)."""

    obj: ObjectRef
    sidecar: ObjectRef | None = None


def entries_of(refs: list[ObjectRef]) -> list[Entry]:
    """`[Entry(ref) for ref in refs]` without a Python call per object (one Entry per listed object)."""
    return list(map(tuple.__new__, repeat(Entry), zip(refs, repeat(None))))


class ItemKind(StrEnum):
    IMAGE = "image"
    VIDEO = "video"
    AUDIO = "audio"
    PDF = "pdf"
    TEXT = "text"
    NIFTI = "nifti"
    DICOM = "dicom"
    IMAGE_GROUP = "image_group"
    IMAGE_SEQUENCE = "image_sequence"
    DICOM_SERIES = "dicom_series"


class Outcome(StrEnum):
    REGISTERED = "registered"
    UPDATED = "updated"
    SKIPPED = "skipped"
    FAILED = "failed"


@dataclass(slots=True)
class Item:
    """What becomes one Encord storage item: one file, or an ordered group of files."""

    kind: ItemKind
    key: str
    url: str
    title: str
    entries: list[Entry]
    urls: list[str]
    client_metadata: dict[str, Any] = field(default_factory=dict)
    fingerprint: str = ""
    metadata_hash: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Rejection:
    """Why one object was not registered: the dead-letter record."""

    url: str
    key: str
    stage: str
    rule: str
    reason: str
    transient: bool = False
    attempts: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "key": self.key,
            "stage": self.stage,
            "rule": self.rule,
            "reason": self.reason,
            "transient": self.transient,
            "attempts": self.attempts,
        }


@dataclass(slots=True)
class Skip:
    """An object deliberately not imported, with the reason (unsupported type, unchanged, ...)."""

    url: str
    key: str
    reason: str
