"""The main flow: list a source, register it in Encord batch by batch, leave artifacts behind."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, TypeVar

from prefect import flow
from prefect.client.schemas.objects import State
from prefect.futures import PrefectFuture, as_completed
from prefect.runtime import flow_run
from prefect.states import Failed
from prefect.utilities.annotations import quote

from encord_ingest.errors import IngestError, LedgerLockedError
from encord_ingest.models import Entry
from flows.credentials import load_secret_env
from flows.downstream import after_ingest
from integrations.encord.gateway import connect
from tasks import artifacts
from tasks.batch import BatchReport, RunContext, drop_unchanged
from tasks.groups import Group
from tasks.listing import ListingStats
from tasks.run import IngestParams, RunSummary, detect_deleted, drive, open_context, require
from tasks.wrappers import ingest_batch, ingest_group_batch

log = logging.getLogger("encord_ingest.flow")
T = TypeVar("T")


def _run_name() -> str:
    params = flow_run.parameters.get("params") or {}
    source = params.get("source", "?") if isinstance(params, dict) else getattr(params, "source", "?")
    return f"ingest {source}"


def run_ingest(
    params: IngestParams,
    run_id: str,
    *,
    batches: Callable[[RunContext], Iterable[list[Entry]]] | None = None,
    stats: ListingStats | None = None,
    label: str | None = None,
    wrap_ctx: Callable[[RunContext], RunContext] | None = None,
) -> RunSummary:
    """The flow body, separate so errors can become a Failed state without a traceback.

    `batches` (with the `stats` it fills) replaces the listing, e.g. the keys an event named;
    such a run saw only part of the source, so it never marks unseen objects as deleted.
    `wrap_ctx` swaps the context the batch tasks get (flows.shard: one that Dask workers rebuild).
    """
    require(params, "folder", "integration")
    reports: list[BatchReport] = []
    objects = 0

    def on_report(report: BatchReport, summary: RunSummary, dispatched: int) -> None:
        nonlocal objects
        reports.append(report)
        objects += report.listed
        progress.update(len(reports), dispatched, objects)

    with open_context(
        params, run_id=run_id, uploader_factory=lambda: connect(params.folder, params.integration), use_ledger=True
    ) as ctx:
        ctx = wrap_ctx(ctx) if wrap_ctx is not None else ctx
        assert ctx.ledger is not None
        ctx.ledger.start_run(run_id, ctx.source.id, params.folder)
        progress = artifacts.Progress()
        artifacts.publish_folder_link(ctx.uploader, params.folder)
        label = label or params.source
        explicit = batches(ctx) if batches is not None else None

        def submit(number: int, entries: list[Entry]) -> PrefectFuture[BatchReport]:
            return ingest_batch.submit(quote(ctx), number, quote(entries), label)

        def submit_groups(number: int, groups: list[Group]) -> PrefectFuture[BatchReport]:
            return ingest_group_batch.submit(quote(ctx), number, quote(groups), label)

        def wait_first(handles: list[Any]) -> Any:
            return next(as_completed(handles))

        status = "failed"
        summary = RunSummary(run_id=run_id)
        try:
            summary = drive(
                ctx,
                params,
                submit=submit,
                wait_first=wait_first,
                on_report=on_report,
                batches=explicit,
                stats=stats,
                submit_groups=submit_groups,
                screen=lambda number, entries: drop_unchanged(ctx, number, entries),
            )
            deleted = detect_deleted(ctx, params, summary) if explicit is None else []
            status = "completed" if summary.failed == 0 else "completed-with-dead-letters"
            summary.downstream = after_ingest(params, summary)
            if deleted:
                summary.downstream.setdefault("deleted_sample", deleted)
        finally:
            ctx.ledger.finish_run(run_id, status, summary.public())
            progress.update(len(reports), max(len(reports), 1), summary.listed, final=True)
            artifacts.batch_table(reports)
            artifacts.publish_summary(
                artifacts.summary_markdown(
                    summary, source=params.source, folder=params.folder, dead_letter_sample=ctx.dead_letters.sample
                )
            )
    return summary


def waiting_for_lease(attempt: Callable[[], T], *, lease_wait: float, retry_seconds: float) -> T:
    """`attempt()`, tried again every `retry_seconds` while another run holds the source's lease,
    for up to `lease_wait` seconds; nothing is sent before the lease is held."""
    deadline = time.monotonic() + lease_wait
    while True:
        try:
            return attempt()
        except LedgerLockedError as exc:
            if time.monotonic() + retry_seconds > deadline:
                raise
            log.info("%s; retrying in %.0f s", exc, retry_seconds)
            time.sleep(retry_seconds)


def retry_dead_letters(params: IngestParams, run_id: str) -> RunSummary:
    """Re-drive exactly the objects the ledger holds as dead-lettered for this source, no listing."""
    from tasks.keyed import KeyedStats, keyed_batches

    stats = KeyedStats()

    def batches(ctx: RunContext) -> Iterable[list[Entry]]:
        assert ctx.ledger is not None
        keys = [row["key"] for page in ctx.ledger.failed(ctx.source.id) for row in page]
        log.info("re-driving %d dead-lettered objects of %s", len(keys), ctx.source.id)
        return keyed_batches(ctx.source, keys, ctx.listing, params.batch_size, stats, ctx.io)

    return run_ingest(params, run_id, batches=batches, stats=stats, label=f"{params.source} (dead letters)")


@flow(name="encord-ingest", flow_run_name=_run_name, log_prints=True)
async def ingest(
    params: IngestParams, encord_key_block: str | None = None, secret_env: dict[str, str] | None = None
) -> Any:
    """Register SOURCE into an Encord folder; re-runs import only what is new or changed.

    Args:
        params: the source, the Encord folder and integration, filters, metadata and batching.
        encord_key_block: Prefect Secret block holding the Encord SSH private key (sets ENCORD_SSH_KEY).
        secret_env: environment variable -> Secret block name, for AWS_SECRET_ACCESS_KEY and the like.

    Async only so that Prefect runs it with its async engine: the sync engine waits at the end of
    every flow run for its heartbeat thread, which sleeps in 1 s steps (up to a second per run,
    the larger part of a no-change re-run). The body is sync and runs on the event loop's thread,
    so Ctrl-C stops it as before; Prefect calls in it that dispatch on the flow's kind take `_sync=True`.
    """
    return _ingest(params, encord_key_block, secret_env)


def _ingest(params: IngestParams, encord_key_block: str | None, secret_env: dict[str, str] | None) -> Any:
    run_id = str(flow_run.id or "local")
    try:
        load_secret_env(encord_key_block, secret_env)
        if params.retry_dead_letters:
            return retry_dead_letters(params, run_id).public()
        if params.inventory:  # rows of an S3 Inventory report instead of the listing
            from flows.shard import run_shard

            return run_shard(params, None, run_id).public()
        return run_ingest(params, run_id).public()
    except IngestError as exc:
        log.error("%s", exc)
        return Failed(message=str(exc), data=exc)


def run_ingest_flow(params: IngestParams) -> State[Any]:
    """The ingest flow run to its final state from sync code (the CLI, the demo, the bench)."""
    return run_on_own_loop(lambda: ingest(params, return_state=True))


def run_on_own_loop(start: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run an async flow call on a new event loop, so Ctrl-C stops it as it stops a sync flow.

    Not `asyncio.run`: that turns the first Ctrl-C into a cancel of the flow's coroutine, which
    a sync body never awaits on, so the run would go on. On a plain loop Ctrl-C raises
    KeyboardInterrupt in the body and the engine marks the run Crashed; when it lands in the
    loop instead (the engine waiting on the API before or after the body), the flow's task is
    cancelled and awaited here, so the engine still records the crash rather than leaving the
    run Pending or Running.
    """
    loop = asyncio.new_event_loop()
    try:
        task = loop.create_task(start())
        try:
            return loop.run_until_complete(task)
        except KeyboardInterrupt:
            if not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    loop.run_until_complete(task)
            raise
    finally:
        try:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            loop.close()
