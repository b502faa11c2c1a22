"""The pipeline never materialises the bucket: 200k listed objects fit in a fraction of their list.

The source is the benchmarks' generator-backed store (bench/synthetic.py, no network), run
through the real `manifest` path (listing with its default fan-out, pairing, batches, metadata,
validation, manifests written to disk). Peak traced memory is compared with what a plain list
of the same 200k ObjectRefs costs, measured in the same process, so the check holds on any
machine and fails if a stage starts collecting.
"""

from __future__ import annotations

import tracemalloc
from pathlib import Path
from typing import Any

from bench.synthetic import SyntheticStore, synthetic_sources, synthetic_url
from tasks.manifest_only import write_manifests
from tasks.run import IngestParams

OBJECTS = 200_000


def _peak(fn: Any) -> tuple[int, Any]:
    tracemalloc.start()
    try:
        result = fn()
        return tracemalloc.get_traced_memory()[1], result
    finally:
        tracemalloc.stop()


def test_listing_200k_objects_never_holds_the_bucket(tmp_path: Path) -> None:
    as_list, refs = _peak(lambda: list(SyntheticStore(OBJECTS).refs()))
    assert len(refs) == OBJECTS
    del refs

    params = IngestParams(
        source=synthetic_url(OBJECTS),
        metadata=[r"path:^site(?P<site>\d+)/cam(?P<camera>\d+)/"],
        state_dir=str(tmp_path / "state"),
    )
    with synthetic_sources():
        pipeline, summary = _peak(lambda: write_manifests(params, tmp_path / "out"))

    assert summary["listed"] == OBJECTS and summary["manifest_items"] == OBJECTS
    assert pipeline < as_list / 3, f"pipeline peak {pipeline / 2**20:.1f} MiB vs the list {as_list / 2**20:.1f} MiB"
