"""S3 Inventory reports as listing pages: for buckets where ListObjects itself is the bottleneck.

`manifest.json` names the report's data files (`files[].key` in the destination bucket), their
format (`CSV` gzip or `Parquet`) and, for CSV, the column order (`fileSchema`). Files are read
one after another through ranged reads (no temp copies): gzip CSV as a stream, Parquet row group
by row group, so memory stays flat whatever the report's size. Rows become `ObjectRef` pages in
the same shape a listing yields (ETag without quotes, last-modified as ISO 8601), so fingerprints
and sidecar pairing behave as with a listing. Each file is sorted by key; files are read in the
order of their first key, so pairing only misses a sidecar a file boundary separates from its
object when files overlap (counted in `InventoryStats.out_of_order`).

A report is up to 48 h old: objects created since are missing (events or the next report bring
them), objects deleted since are dead-lettered by Encord's existence check.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import io
import json
import logging
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus

from encord_ingest.errors import ConfigError, UsageError
from encord_ingest.models import ObjectRef
from integrations.storage import ObjectStore, open_source
from integrations.storage.base import RangeFile

log = logging.getLogger("encord_ingest.inventory")

PAGE_ROWS = 1000
READ_CHUNK = 8 * 1024 * 1024
PROBE_BYTES = 256 * 1024
PARQUET_COLUMNS = ("bucket", "key", "size", "e_tag", "last_modified_date", "is_latest", "is_delete_marker")
# CSV header names of S3 Inventory (fileSchema) -> the Parquet names used internally
CSV_NAMES = {
    "Bucket": "bucket",
    "Key": "key",
    "Size": "size",
    "ETag": "e_tag",
    "LastModifiedDate": "last_modified_date",
    "IsLatest": "is_latest",
    "IsDeleteMarker": "is_delete_marker",
}


@dataclass(slots=True, frozen=True)
class InventoryFile:
    key: str
    size: int


@dataclass(slots=True)
class Inventory:
    """A parsed manifest.json plus the store its data files live in."""

    url: str
    source_bucket: str
    file_format: str
    columns: list[str]
    files: list[InventoryFile]
    store: ObjectStore

    @property
    def is_parquet(self) -> bool:
        return self.file_format == "parquet"


@dataclass(slots=True)
class InventoryStats:
    files: int = 0
    files_skipped: int = 0
    row_groups_skipped: int = 0
    rows: int = 0
    out_of_order: int = 0


def _open(store: ObjectStore, key: str, size: int) -> io.BufferedReader:
    return io.BufferedReader(RangeFile(store, key, size), buffer_size=READ_CHUNK)


def _manifest_store(url: str, account: str) -> tuple[ObjectStore, str]:
    src = open_source(url, account=account)
    if src.store.scheme == "file":  # a local copy: data files beside it or under its root
        path = Path(url.removeprefix("file://")).expanduser().resolve()
        return open_source(str(path.parent)).store, path.name
    return src.store, src.prefix


def load_inventory(url: str, *, account: str = "") -> Inventory:
    """Read and check manifest.json; data files are looked up in its destination bucket."""
    store, key = _manifest_store(url, account)
    try:
        doc = json.loads(store.read_bytes(key))
    except FileNotFoundError:
        raise ConfigError(f"inventory manifest {url} does not exist") from None
    except ValueError:
        raise ConfigError(f"inventory manifest {url} is not JSON") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("files"), list):
        raise ConfigError(f"inventory manifest {url} has no files list (expected S3 Inventory manifest.json)")
    fmt = str(doc.get("fileFormat", "")).lower()
    if fmt not in ("csv", "parquet"):
        raise ConfigError(f"inventory manifest {url}: fileFormat {doc.get('fileFormat')!r} (use CSV or Parquet)")
    columns = [CSV_NAMES.get(c.strip(), c.strip()) for c in str(doc.get("fileSchema", "")).split(",")]
    if fmt == "csv" and "key" not in columns:
        raise ConfigError(f"inventory manifest {url}: fileSchema names no Key column")
    dest = str(doc.get("destinationBucket", "")).removeprefix("arn:aws:s3:::")
    if dest and store.scheme != "file" and dest != store.bucket:
        store = open_source(f"{store.scheme}://{dest}/", account=account).store
    files = [InventoryFile(str(f["key"]), int(f.get("size") or 0)) for f in doc["files"]]
    if store.scheme == "file":
        files = [_local(store, f) for f in files]
    return Inventory(url, str(doc.get("sourceBucket", "")), fmt, columns, files, store)


def _local(store: ObjectStore, f: InventoryFile) -> InventoryFile:
    """Local copies keep only the file name of each data file's key when the full key is absent."""
    root = Path(store.bucket)
    key = f.key if (root / f.key).exists() else Path(f.key).name
    return InventoryFile(key, (root / key).stat().st_size if (root / key).exists() else f.size)


def check_source(inv: Inventory, bucket: str) -> None:
    if inv.source_bucket and inv.source_bucket != bucket:
        raise UsageError(f"inventory {inv.url} lists bucket {inv.source_bucket!r}, not the source's {bucket!r}")


# -- rows ---------------------------------------------------------------------------------------
def _when(value: Any) -> str:
    """Last-modified exactly as the S3 listing renders it (S3's own string, 2026-01-02T03:04:05.000Z),
    so switching between listing and inventory leaves every fingerprint unchanged."""
    if value is None or value == "":
        return ""
    if isinstance(value, datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=UTC)
    else:
        moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _truthy(value: Any) -> bool:
    return value is True or str(value).strip().lower() == "true"


def _ref(row: dict[str, Any]) -> ObjectRef | None:
    """An object row, or None for delete markers and non-current versions."""
    if _truthy(row.get("is_delete_marker")):
        return None
    if "is_latest" in row and row["is_latest"] not in (None, "") and not _truthy(row["is_latest"]):
        return None
    size = row.get("size")
    return ObjectRef(
        key=row["key"],
        size=int(size) if size not in (None, "") else 0,
        etag=str(row.get("e_tag") or "").strip('"'),
        last_modified=_when(row.get("last_modified_date")),
    )


def _csv_rows(inv: Inventory, f: InventoryFile) -> Iterator[dict[str, Any]]:
    with _open(inv.store, f.key, f.size) as raw, gzip.GzipFile(fileobj=raw) as gz:
        text = io.TextIOWrapper(gz, encoding="utf-8", newline="")
        for values in csv.reader(text):
            if not values:
                continue
            row = dict(zip(inv.columns, values, strict=False))
            row["key"] = unquote_plus(row["key"])  # CSV reports URL-encode keys; Parquet does not
            yield row


def _stat(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _parquet_rows(inv: Inventory, f: InventoryFile, lo: str, hi: str, stats: InventoryStats) -> Iterator[dict]:
    import pyarrow.parquet as pq

    with _open(inv.store, f.key, f.size) as raw:
        pf = pq.ParquetFile(raw)
        names = pf.schema_arrow.names
        if "key" not in names:
            raise ConfigError(f"inventory file {f.key} has no key column")
        key_col = names.index("key")
        groups = []
        for i in range(pf.metadata.num_row_groups):
            st = pf.metadata.row_group(i).column(key_col).statistics
            if (
                st is not None and st.has_min_max and (_stat(st.max) < lo or (hi and _stat(st.min) >= hi))
            ):  # a shard reads only the row groups its key range touches
                stats.row_groups_skipped += 1
                continue
            groups.append(i)
        if not groups:
            return
        columns = [c for c in PARQUET_COLUMNS if c in names]
        for batch in pf.iter_batches(batch_size=10_000, row_groups=groups, columns=columns):
            data = batch.to_pydict()
            for i in range(batch.num_rows):
                yield {c: data[c][i] for c in columns}


def first_key(inv: Inventory, f: InventoryFile) -> str:
    """The file's first key, from one small read (CSV) or the footer's statistics (Parquet)."""
    if inv.is_parquet:
        import pyarrow.parquet as pq

        with _open(inv.store, f.key, f.size) as raw:
            meta = pq.ParquetFile(raw).metadata
            names = [meta.schema.column(i).name for i in range(meta.num_columns)]
            if meta.num_row_groups == 0 or "key" not in names:
                return ""
            st = meta.row_group(0).column(names.index("key")).statistics
            return _stat(st.min) if st is not None and st.has_min_max else ""
    head = inv.store.read_range(f.key, 0, min(PROBE_BYTES, f.size or PROBE_BYTES))
    try:
        text = zlib.decompressobj(31).decompress(head, PROBE_BYTES).decode("utf-8", "replace")
    except zlib.error:
        raise ConfigError(f"inventory file {f.key} is not gzip CSV") from None
    for values in csv.reader(io.StringIO(text.split("\n", 1)[0])):
        row = dict(zip(inv.columns, values, strict=False))
        return unquote_plus(row.get("key", ""))
    return ""


Ordered = list[tuple[str, InventoryFile]]


def ordered_files(inv: Inventory, probe: Callable[[InventoryFile], str] | None = None) -> Ordered:
    """(first key, file) sorted by first key: consecutive files continue the key order."""
    probe = probe or (lambda f: first_key(inv, f))
    return sorted(((probe(f), f) for f in inv.files), key=lambda pair: pair[0])


def _file_refs(
    inv: Inventory, f: InventoryFile, *, bucket: str, prefix: str, lo: str, end: str, stats: InventoryStats
) -> Iterator[ObjectRef]:
    """One sorted file's current objects in range; reading stops at the first key past it."""
    rows = _parquet_rows(inv, f, lo, end, stats) if inv.is_parquet else _csv_rows(inv, f)
    with contextlib.closing(rows):
        for row in rows:
            key = row["key"]
            if key < lo:
                continue
            if (end and key >= end) or not key.startswith(prefix):
                return  # each file is sorted by key: nothing after this is in range
            if row.get("bucket") and row["bucket"] != bucket:
                continue
            ref = _ref(row)
            if ref is not None:
                yield ref


def pages(
    inv: Inventory,
    *,
    bucket: str,
    prefix: str = "",
    start: str = "",
    end: str = "",
    stats: InventoryStats | None = None,
    page_rows: int = PAGE_ROWS,
    files: Ordered | None = None,
) -> Iterator[list[ObjectRef]]:
    """Pages of the bucket's current objects under `prefix` with `start <= key < end` ("" = open)."""
    stats = stats if stats is not None else InventoryStats()
    lo = max(prefix, start)
    page: list[ObjectRef] = []
    last = ""
    for first, f in files if files is not None else ordered_files(inv):
        if end and first and first >= end:  # sorted inside: the whole file lies past the range
            stats.files_skipped += 1
            continue
        stats.files += 1
        for ref in _file_refs(inv, f, bucket=bucket, prefix=prefix, lo=lo, end=end, stats=stats):
            stats.rows += 1
            if ref.key < last:
                stats.out_of_order += 1
            last = max(last, ref.key)
            page.append(ref)
            if len(page) >= page_rows:
                yield page
                page = []
    if page:
        yield page
    if stats.out_of_order:
        log.warning(
            "%d inventory rows arrived out of key order (files overlap): sidecars split across files may not pair",
            stats.out_of_order,
        )


def split_points(inv: Inventory, files: Ordered) -> list[str]:
    """Candidate shard boundaries: each file's first key, plus each Parquet row group's first key."""
    points = [first for first, _ in files if first]
    if inv.is_parquet:
        import pyarrow.parquet as pq

        for _, f in files:
            with _open(inv.store, f.key, f.size) as raw:
                meta = pq.ParquetFile(raw).metadata
                names = [meta.schema.column(i).name for i in range(meta.num_columns)]
                if "key" not in names:
                    continue
                col = names.index("key")
                for i in range(1, meta.num_row_groups):
                    st = meta.row_group(i).column(col).statistics
                    if st is not None and st.has_min_max:
                        points.append(_stat(st.min))
    return sorted(set(points))
