"""DICOM series and image groups: real DICOM files (pydicom's own and generated), moto, the emulator."""

from __future__ import annotations

import json
import shutil
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.errors import InvalidDicomError

from encord_ingest.samples import dicom_slice, tiny_png
from integrations.storage import open_source
from integrations.storage.s3 import S3Store
from tasks.dicom import FIRST_BLOCK, read_header
from tasks.run import IngestParams, drive, guarded_batch, guarded_group_batch, open_context

PYDICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
SLICES = 100
STUDY = "1.2.826.0.1.3680043.8.498.1"


def seed_medical(s3: Any, bucket: str) -> dict[str, list[str]]:
    """3 series x 100 slices (one split over two prefixes, one without extensions), a broken series,
    a corrupt file, pydicom's bundled CT and MR files, and two camera image groups."""
    s3.create_bucket(Bucket=bucket)
    layout: dict[str, list[str]] = {}
    puts: list[tuple[str, bytes]] = []
    for s in range(3):
        uid = f"{STUDY}.{s + 1}"
        keys = []
        for i in range(SLICES):
            if s == 0:
                key = f"scans/ct-a/{i:03d}.dcm"
            elif s == 1:  # the same series split across two prefixes, listed far apart
                key = f"{'scans/ct-b-part1' if i % 2 else 'z-late/ct-b-part2'}/slice{i}.dcm"
            else:  # no extension at all
                key = f"scans/mr-c/IM{i:05d}"
            keys.append(key)
            puts.append((key, dicom_slice(study_uid=STUDY, series_uid=uid, index=i, size=128)))
        layout[uid] = keys
    broken = f"{STUDY}.9"
    layout[broken] = []
    for i in range(5):
        key = f"scans/broken/{i}.dcm"
        layout[broken].append(key)
        drop = ("PatientID", "Rows") if i == 3 else ()
        puts.append((key, dicom_slice(study_uid=STUDY, series_uid=broken, index=i, drop=drop)))
    puts.append(("scans/corrupt.dcm", b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00garbage" * 10))
    for name in ("CT_small.dcm", "MR_small.dcm"):
        puts.append((f"bundled/{name}", (PYDICOM_FILES / name).read_bytes()))
    for cam in ("front", "rear"):
        for frame in (1, 2, 10, 11):
            puts.append((f"cams/{cam}/frame_{frame}.png", tiny_png(frame)))
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda kv: s3.put_object(Bucket=bucket, Key=kv[0], Body=kv[1]), puts))
    return layout


def test_series_and_groups_register_once_and_broken_series_is_dead_lettered(
    cli: Any, emulator: Any, s3: Any, tmp_path: Path
) -> None:
    bucket = f"medical-{uuid.uuid4().hex[:8]}"
    layout = seed_medical(s3, bucket)
    args = [
        "ingest", f"s3://{bucket}/", "--folder", "medical", "--integration", "local-aws",
        "--metadata", "dicom:Modality,BodyPartExamined", "--group-by", r"cams/(?P<camera>[^/]+)/frame_",
        "--batch-size", "64", "--json",
    ]  # fmt: skip
    result = cli(*args)
    assert result.code == 1, result.stderr[-3000:]
    summary = result.json()
    files = 3 * SLICES + 5 + 1 + 2 + 8
    assert summary["listed"] == files
    assert summary["registered"] == 3 * SLICES + 2 + 8
    assert summary["failed"] == 5 + 1

    items = emulator.state()["items"]
    series = {i["title"]: i for i in items if i["type"] == "dicom_series"}
    for s in range(3):
        item = series[f"series {STUDY}.{s + 1}"]
        expected = sorted(layout[f"{STUDY}.{s + 1}"], key=lambda k: int("".join(c for c in k if c.isdigit())[-3:]))
        assert len(item["files"]) == SLICES
        assert item["files"] == [f"s3://{bucket}/{k}" for k in _by_instance(expected)]
        assert item["client_metadata"] == {"Modality": "CT", "BodyPartExamined": "CHEST"}
    assert len([i for i in items if i["type"] == "dicom_series"]) == 3 + 2  # + pydicom's CT and MR
    groups = {i["title"]: i for i in items if i["type"] == "image_group"}
    assert sorted(groups) == ["front", "rear"]
    assert groups["front"]["files"] == [f"s3://{bucket}/cams/front/frame_{n}.png" for n in (1, 2, 10, 11)]

    letters = Path(tmp_path / summary["dead_letter"]).read_text()
    assert letters.count(f"DICOM series {STUDY}.9") == 5
    assert "scans/broken/3.dcm: missing Rows, PatientID" in letters
    corrupt = [line for line in letters.splitlines() if "scans/corrupt.dcm" in line]
    assert len(corrupt) == 1 and '"rule": "dicom.' in corrupt[0]

    again = cli(*args)
    assert again.json()["registered"] == 0 and again.json()["skipped"] == 3 * SLICES + 2 + 8
    assert len(emulator.state()["items"]) == len(items), "nothing registered twice"


def _by_instance(keys: list[str]) -> list[str]:
    """Generated slice i has InstanceNumber i+1; order the expected keys the same way."""

    def index(key: str) -> int:
        name = key.rsplit("/", 1)[1]
        return int("".join(c for c in name if c.isdigit()))

    return sorted(keys, key=index)


class CountingS3(S3Store):
    """The real S3 store, counting the bytes every ranged or whole read fetched, per key."""

    def __init__(self, bucket: str, client: Any) -> None:
        super().__init__(bucket, client=client)
        self.fetched: dict[str, int] = {}
        self._lock = threading.Lock()

    def _count(self, key: str, data: bytes) -> bytes:
        with self._lock:
            self.fetched[key] = self.fetched.get(key, 0) + len(data)
        return data

    def read_range(self, key: str, start: int, length: int) -> bytes:
        return self._count(key, super().read_range(key, start, length))

    def read_bytes(self, key: str, *, max_bytes: int | None = None) -> bytes:
        return self._count(key, super().read_bytes(key, max_bytes=max_bytes))


def test_reading_dicom_fetches_a_small_bounded_number_of_bytes(s3: Any, aws_in_environ: None, tmp_path: Path) -> None:
    bucket = f"bytes-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    big = dicom_slice(study_uid=STUDY, series_uid=f"{STUDY}.7", index=0, size=512)  # 512 KiB of pixels
    for i in range(20):
        s3.put_object(Bucket=bucket, Key=f"big/{i:02d}", Body=big)  # no extension: found by the preamble
    params = IngestParams(source=f"s3://{bucket}/", batch_size=50)
    with open_context(params, run_id="count", uploader_factory=None, use_ledger=False) as ctx:
        store = CountingS3(bucket, s3)
        ctx.source = open_source(f"s3://{bucket}/")
        ctx.source.store = store
        reports = []
        summary = drive(
            ctx,
            params,
            submit=lambda n, e: _done(reports, guarded_batch(ctx, n, e)),
            wait_first=lambda handles: handles[0],
            submit_groups=lambda n, g: _done(reports, guarded_group_batch(ctx, n, g)),
        )
    assert summary.failed == 0
    manifests = [json.loads(text) for r in reports for text, _ in r.manifests]
    assert len(manifests[0]["dicom_series"]) == 1 and len(manifests[0]["dicom_series"][0]) == 20 + 2
    assert len(store.fetched) == 20
    for key, n in store.fetched.items():
        assert n <= 132 + FIRST_BLOCK, f"{key}: fetched {n} bytes of a {len(big)}-byte file"


def test_header_reader_on_pydicom_bundled_files(tmp_path: Path) -> None:
    for name in ("CT_small.dcm", "MR_small.dcm", "rtstruct.dcm"):
        shutil.copy(PYDICOM_FILES / name, tmp_path / name)
    store = open_source(str(tmp_path)).store
    ct = read_header(store, "CT_small.dcm", (tmp_path / "CT_small.dcm").stat().st_size, ("Modality",))
    assert ct.tags == {"Modality": "CT"} and not ct.missing and not ct.missing_spatial
    mr = read_header(store, "MR_small.dcm", (tmp_path / "MR_small.dcm").stat().st_size, ("Modality",))
    assert mr.tags == {"Modality": "MR"} and mr.series_uid != ct.series_uid
    with pytest.raises(InvalidDicomError):  # no preamble and no file meta: not a DICOM Part 10 file
        read_header(store, "rtstruct.dcm", (tmp_path / "rtstruct.dcm").stat().st_size)


class _Done:
    def __init__(self, report: Any) -> None:
        self.report = report

    def result(self) -> Any:
        return self.report


def _done(sink: list[Any], report: Any) -> _Done:
    sink.append(report)
    return _Done(report)


@pytest.mark.parametrize("spec", ["dicom:NotATag", "dicom:"])
def test_bad_dicom_metadata_spec_is_a_usage_error(cli: Any, spec: str) -> None:
    result = cli("manifest", "/nonexistent", "--out", "x", "--metadata", spec)
    assert result.code == 2 and "Traceback" not in result.stderr
