"""The pipeline never materialises the bucket: 200k listed objects fit in a fraction of their list.

The source is a generator-backed store (no network), run through the real `manifest` path
(listing, pairing, batches, metadata, validation, manifests written to disk). Peak traced
memory is compared with what a plain list of the same 200k ObjectRefs costs, measured in the
same process, so the check holds on any machine and fails if a stage starts collecting.
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import tasks.run
from encord_ingest.models import ObjectRef
from integrations.storage import Source
from integrations.storage.base import ObjectInfo
from tasks.manifest_only import write_manifests
from tasks.run import IngestParams

OBJECTS = 200_000
PER_SITE = 10_000


class GeneratedStore:
    scheme = "s3"
    bucket = "generated"

    def refs(self, prefix: str = "") -> Iterator[ObjectRef]:
        """Keys `siteSSS/camCC/frame_N.jpg` in order; a `siteSSS/` prefix generates only that site."""
        start, stop = 0, OBJECTS
        if prefix:
            site = int(prefix.removeprefix("site").rstrip("/"))
            start, stop = site * PER_SITE, (site + 1) * PER_SITE
        for n in range(start, stop):
            key = f"site{n // PER_SITE:03d}/cam{n // 1000 % 10:02d}/frame_{n:07d}.jpg"
            yield ObjectRef(key, 1024 + n % 97, "e" * 32)

    def list_pages(self, prefix: str, *, page_size: int = 1000) -> Iterator[list[ObjectRef]]:
        page: list[ObjectRef] = []
        for ref in self.refs(prefix):
            page.append(ref)
            if len(page) == page_size:
                yield page
                page = []
        if page:
            yield page

    def list_level(self, prefix: str) -> Iterator[tuple[list[str], list[ObjectRef]]]:
        assert prefix == "", "the pipeline fans out from the source's prefix only"
        yield [f"site{s:03d}/" for s in range(OBJECTS // PER_SITE)], []

    def read_bytes(self, key: str, *, max_bytes: int | None = None) -> bytes:
        raise FileNotFoundError(key)

    def read_range(self, key: str, start: int, length: int) -> bytes:
        return b""

    def head(self, key: str) -> ObjectInfo:
        return ObjectInfo("image/jpeg", {})

    def download_to(self, key: str, path: Path) -> None:
        raise FileNotFoundError(key)

    def url_for(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def check_access(self, prefix: str) -> None:
        return None


def _peak(fn: Any) -> tuple[int, Any]:
    tracemalloc.start()
    try:
        result = fn()
        return tracemalloc.get_traced_memory()[1], result
    finally:
        tracemalloc.stop()


def test_listing_200k_objects_never_holds_the_bucket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = GeneratedStore()
    monkeypatch.setattr(tasks.run, "open_source", lambda url, **_: Source(url=url, store=store, prefix=""))
    as_list, refs = _peak(lambda: list(store.refs()))
    assert len(refs) == OBJECTS
    del refs

    params = IngestParams(
        source="s3://generated/",
        metadata=[r"path:^site(?P<site>\d+)/cam(?P<camera>\d+)/"],
        state_dir=str(tmp_path / "state"),
    )
    pipeline, summary = _peak(lambda: write_manifests(params, tmp_path / "out"))

    assert summary["listed"] == OBJECTS and summary["manifest_items"] == OBJECTS
    assert pipeline < as_list / 3, f"pipeline peak {pipeline / 2**20:.1f} MiB vs the list {as_list / 2**20:.1f} MiB"
