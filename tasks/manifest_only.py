"""`encord-ingest manifest`: the pipeline up to the manifests, written to files, no Encord, no Prefect."""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from encord_ingest.models import Entry
from tasks.batch import BatchReport
from tasks.groups import Group
from tasks.run import IngestParams, drive, guarded_batch, guarded_group_batch, new_run_id, open_context

WRITES_AHEAD = 4  # manifests handed to the writer thread and not yet on disk (each up to --batch-bytes)


def write_manifests(params: IngestParams, out_dir: Path) -> dict[str, Any]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = 0
    items = 0
    run_id = new_run_id()
    # Creating a file costs milliseconds of waiting on the file system: a thread does it while the
    # batches go on (it holds no lock that the pipeline needs while it waits).
    writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="manifest-writer")
    pending: deque[Future[int]] = deque()
    try:
        with open_context(params, run_id=run_id, uploader_factory=None, use_ledger=False) as ctx:

            def submit(number: int, entries: list[Entry]) -> Future[BatchReport]:
                return write(guarded_batch(ctx, number, entries))

            def submit_groups(number: int, groups: list[Group]) -> Future[BatchReport]:
                return write(guarded_group_batch(ctx, number, groups))

            def write(report: BatchReport) -> Future[BatchReport]:
                nonlocal written, items
                fut: Future[BatchReport] = Future()
                for text, count in report.manifests:
                    written += 1
                    items += count
                    while len(pending) >= WRITES_AHEAD:
                        pending.popleft().result()  # a failed write stops the run here
                    path = out_dir / f"manifest-{written:05d}.json"
                    pending.append(writer.submit(path.write_text, text + "\n", encoding="utf-8"))
                report.manifests = []
                fut.set_result(report)
                return fut

            summary = drive(
                ctx, params, submit=submit, wait_first=lambda handles: handles[0], submit_groups=submit_groups
            )
            while pending:
                pending.popleft().result()
    finally:
        writer.shutdown(wait=True)
    result = summary.public()
    result.update({"manifests": written, "manifest_items": items, "out": str(out_dir)})
    return result
