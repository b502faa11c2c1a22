"""Generated sample data for the demo and benchmarks: a camera dataset with sidecars and a table."""

from __future__ import annotations

import json
import random
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

SAMPLE_SCHEMA = """\
keys:
  site: {type: enum, values: [north, south, east, west]}
  camera: varchar
  captured_at: datetime
  score: number
  reviewed: boolean
  weather: {type: enum, values: [sunny, cloudy, rain, snow]}
  uploaded-by: varchar
"""


def tiny_png(seed: int) -> bytes:
    """A valid 1x1 PNG whose colour depends on `seed`."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    pixel = bytes([0, seed % 256, (seed * 7) % 256, (seed * 13) % 256])
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(pixel))
        + chunk(b"IEND", b"")
    )


@dataclass(frozen=True)
class SampleObject:
    key: str
    body: bytes
    metadata: dict[str, str] | None = None


def sample_objects(n: int, *, invalid_every: int = 60, seed: int = 7) -> Iterator[SampleObject]:
    """About `n` data objects under site/camera folders, most with a sidecar; a few broken on purpose."""
    rng = random.Random(seed)
    sites = ["north", "south", "east", "west"]
    kinds = [("png", 70), ("mp4", 10), ("wav", 8), ("pdf", 5), ("txt", 4), ("bin", 3)]
    population = [k for k, w in kinds for _ in range(w)]
    for i in range(n):
        site = sites[i % len(sites)]
        camera = f"cam{(i // 4) % 5 + 1}"
        ext = rng.choice(population)
        key = f"{site}/{camera}/frame_{i:05d}.{ext}"
        body = tiny_png(i) if ext == "png" else f"{ext} sample {i}\n".encode()
        yield SampleObject(key, body, {"uploaded-by": "demo"})
        if ext == "bin":
            continue
        sidecar: dict | str = {
            "captured_at": f"2026-0{1 + i % 9}-1{i % 10}T12:{i % 60:02d}:00Z",
            "score": round(rng.random(), 3),
            "reviewed": rng.choice(["true", "false"]),
            "weather": rng.choice(["sunny", "cloudy", "rain", "snow"]),
        }
        if invalid_every and i % invalid_every == invalid_every - 1:
            sidecar = rng.choice(['{"score": "very high"}', '{"weather": "hail"}', "{not json", '{"a": 1, "a": 2}'])
        text = sidecar if isinstance(sidecar, str) else json.dumps(sidecar)
        yield SampleObject(f"{key}.json", text.encode())


def sample_table(n: int) -> str:
    """CSV mapping keys to camera serial numbers, as a user's asset register would."""
    lines = ["key,camera"]
    sites = ["north", "south", "east", "west"]
    for i in range(0, n, 3):
        lines.append(f"{sites[i % 4]}/cam{(i // 4) % 5 + 1}/frame_{i:05d}.png,SN-{1000 + (i // 4) % 5}")
    return "\n".join(lines) + "\n"


def upload_all(objects: Iterator[SampleObject], put: Callable[[SampleObject], None], workers: int = 16) -> int:
    from concurrent.futures import ThreadPoolExecutor

    count = 0
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for _ in pool.map(put, objects):
            count += 1
    return count


def dicom_slice(
    *,
    study_uid: str,
    series_uid: str,
    index: int,
    size: int = 64,
    patient: str = "ANON-1",
    modality: str = "CT",
    drop: tuple[str, ...] = (),
) -> bytes:
    """One CT-like slice written with pydicom (tags as a scanner writes them; `drop` leaves some out)."""
    import io

    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    sop_uid = generate_uid(entropy_srcs=[series_uid, str(index)])
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("slice", {}, file_meta=meta, preamble=b"\0" * 128)
    values = {
        "SOPClassUID": meta.MediaStorageSOPClassUID,
        "SOPInstanceUID": sop_uid,
        "StudyInstanceUID": study_uid,
        "SeriesInstanceUID": series_uid,
        "PatientID": patient,
        "Modality": modality,
        "BodyPartExamined": "CHEST",
        "InstanceNumber": index + 1,
        "ImagePositionPatient": [0.0, 0.0, float(index) * 2.5],
        "ImageOrientationPatient": [1.0, 0.0, 0.0, 0.0, 1.0, 0.0],
        "SliceThickness": 2.5,
        "PixelSpacing": [0.7, 0.7],
        "Rows": size,
        "Columns": size,
    }
    for name, value in values.items():
        if name not in drop:
            setattr(ds, name, value)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.PixelData = bytes((index + i) % 251 for i in range(size * size * 2))
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()
