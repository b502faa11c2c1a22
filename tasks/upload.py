"""Submitting items: pending rows, upload job, poll, and per-item retry with backoff.

Shared by single-file batches and grouped items (DICOM series, image groups), which differ only
in how many ledger rows an item stands for.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from encord_ingest.crashpoints import crash_point
from encord_ingest.models import Item
from integrations.encord.gateway import UploadResult
from tasks.manifest import build_manifest, split_by_limits

log = logging.getLogger("encord_ingest.upload")

PERMANENT_MARKERS = ("not found", "does not exist", "no such", "access denied", "forbidden", "unsupported", "invalid")


def is_permanent(error: str) -> bool:
    text = error.lower()
    return any(marker in text for marker in PERMANENT_MARKERS)


@dataclass(slots=True)
class Outcome:
    """How one item ended: an Encord item uuid, or the error that dead-letters it."""

    item: Item
    uuid: str | None
    error: str
    transient: bool
    attempts: int
    job_id: str


def _upload(ctx: Any, chunk: list[Item], pending_rows: list[dict[str, Any]], *, reimport: bool) -> UploadResult:
    """Pending rows first, then the job; a kill anywhere in between is reconciled next run."""
    urls = [u for it in chunk for u in it.urls]
    if ctx.ledger is not None:
        ctx.ledger.record(pending_rows)
    crash_point("before-upload-start")
    job_id = ctx.uploader.start(build_manifest(chunk, skip_duplicate_urls=not reimport))
    crash_point("after-upload-start")
    if ctx.ledger is not None:
        ctx.ledger.set_job(urls, job_id)
    result = ctx.uploader.wait(job_id, {it.title: it.url for it in chunk})
    crash_point("after-upload-done")
    return result


def upload_with_retries(
    ctx: Any,
    items: list[Item],
    *,
    pending_rows: Callable[[Item, int], list[dict[str, Any]]],
    reimport: Callable[[Item], bool] = lambda _: False,
    label: str = "",
    on_job: Callable[[], None] = lambda: None,
) -> Iterator[Outcome]:
    """Yield one Outcome per item; transient item errors are re-submitted up to `item_retries` times."""
    pending = {it.url: it for it in items}
    attempts = dict.fromkeys(pending, 0)
    round_no = 0
    while pending:
        round_no += 1
        for again in (False, True):
            todo = [it for it in pending.values() if reimport(it) is again]
            for chunk in split_by_limits(todo, max_items=len(todo) or 1, max_bytes=ctx.options.batch_bytes):
                on_job()
                for it in chunk:
                    attempts[it.url] += 1
                rows = [r for it in chunk for r in pending_rows(it, attempts[it.url])]
                result = _upload(ctx, chunk, rows, reimport=again)
                for it in chunk:
                    n = attempts[it.url]
                    if it.url in result.item_uuids and it.url not in result.errors:
                        del pending[it.url]
                        yield Outcome(it, result.item_uuids[it.url], "", False, n, result.job_id)
                        continue
                    error = result.errors.get(it.url) or f"upload job ended {result.status} without this item"
                    if is_permanent(error) or n > ctx.options.item_retries:
                        del pending[it.url]
                        yield Outcome(it, None, error, not is_permanent(error), n, result.job_id)
        if pending:
            wait = min(30.0, ctx.options.item_retry_wait * 2 ** (round_no - 1)) * (0.5 + random.random())
            log.info("%s: retrying %d failed items in %.1fs", label, len(pending), wait)
            ctx.sleep(wait)
