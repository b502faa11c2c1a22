"""DICOM files: detection by the DICM preamble and header reads that never fetch pixel data.

pydicom reads through `RangeReader`, a file object that fetches the object in growing ranged
GETs only as far as the parser asks; with `stop_before_pixels` it stops at the pixel data tag,
so a file costs its header size (rounded up to a block), whatever the image size.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pydicom import dcmread
from pydicom.errors import InvalidDicomError

from integrations.storage.base import ObjectStore, RangeFile

PREAMBLE_BYTES = 132
FIRST_BLOCK = 8 * 1024
MAX_HEADER_BYTES = 4 * 1024 * 1024

REQUIRED_TAGS = ("Rows", "Columns", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "PatientID")
SPATIAL_TAGS = ("ImagePositionPatient", "ImageOrientationPatient", "SliceThickness", "PixelSpacing")


class HeaderTooLarge(Exception):
    pass


class RangeReader(RangeFile):
    """A `RangeFile` that fetches in growing blocks and keeps what it fetched (pydicom reads in
    small steps and seeks back), up to `limit` bytes."""

    def __init__(self, store: ObjectStore, key: str, size: int, *, limit: int = MAX_HEADER_BYTES) -> None:
        super().__init__(store, key, size)
        self.name = key  # pydicom records the file name of what it reads
        self.limit = limit
        self.buffer = b""  # bytes [0, len(buffer)) of the object
        self.fetched = 0
        self.block = FIRST_BLOCK

    def _ensure(self, end: int) -> None:
        end = min(end, self.size)
        while len(self.buffer) < end:
            if len(self.buffer) >= self.limit:
                raise HeaderTooLarge(f"DICOM header larger than {self.limit:,} bytes")
            want = max(self.block, end - len(self.buffer))
            chunk = self.store.read_range(self.key, len(self.buffer), want)
            if not chunk:
                break
            self.buffer += chunk
            self.fetched += len(chunk)
            self.block = min(self.block * 2, 1024 * 1024)

    def readinto(self, b: Any) -> int:
        n = len(b)
        self._ensure(self.pos + n)
        data = self.buffer[self.pos : self.pos + n]
        b[: len(data)] = data
        self.pos += len(data)
        return len(data)


def has_preamble(head: bytes) -> bool:
    return len(head) >= PREAMBLE_BYTES and head[128:132] == b"DICM"


@dataclass(slots=True)
class DicomHeader:
    """What grouping and validation need from one file, plus the tags asked for as metadata."""

    series_uid: str
    instance_number: float
    position_z: float
    missing: list[str] = field(default_factory=list)
    missing_spatial: list[str] = field(default_factory=list)
    tags: dict[str, Any] = field(default_factory=dict)
    bytes_read: int = 0


def _plain(value: Any) -> Any:
    """pydicom values as JSON values (MultiValue -> list, DSfloat -> float, PersonName -> str)."""
    if value is None or isinstance(value, bytes | bytearray):
        return None
    if isinstance(value, str):
        return str(value)
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, Sequence):
        return [_plain(v) for v in value]
    return str(value)


def read_header(store: ObjectStore, key: str, size: int, wanted_tags: tuple[str, ...] = ()) -> DicomHeader:
    """Parse the header only; raises InvalidDicomError for a file that is not DICOM."""
    reader = RangeReader(store, key, size)
    try:
        ds = dcmread(io.BufferedReader(reader, buffer_size=FIRST_BLOCK), stop_before_pixels=True, force=False)
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError) as exc:
        raise InvalidDicomError(f"unreadable DICOM header ({exc.__class__.__name__})") from None
    missing = [t for t in REQUIRED_TAGS if ds.get(t) in (None, "")]
    spatial = [t for t in SPATIAL_TAGS if ds.get(t) in (None, "")]
    position = ds.get("ImagePositionPatient")
    try:
        z = float(position[2]) if position is not None and len(position) >= 3 else 0.0
    except (TypeError, ValueError):
        z = 0.0
    number = ds.get("InstanceNumber")
    try:
        instance = float(number) if number not in (None, "") else 0.0
    except (TypeError, ValueError):
        instance = 0.0
    tags = {}
    for name in wanted_tags:
        value = _plain(ds.get(name))
        if value not in (None, ""):
            tags[name] = value
    return DicomHeader(
        series_uid=str(ds.get("SeriesInstanceUID") or ""),
        instance_number=instance,
        position_z=z,
        missing=missing,
        missing_spatial=spatial,
        tags=tags,
        bytes_read=reader.fetched,
    )
