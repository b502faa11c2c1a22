"""The main flow: list a source, register it in Encord batch by batch, leave artifacts behind."""

from __future__ import annotations

import logging
from typing import Any

from prefect import flow
from prefect.futures import PrefectFuture, as_completed
from prefect.runtime import flow_run
from prefect.states import Failed
from prefect.utilities.annotations import quote

from encord_ingest.errors import IngestError
from encord_ingest.models import Entry
from flows.downstream import after_ingest
from integrations.encord.gateway import connect
from tasks import artifacts
from tasks.batch import BatchReport
from tasks.run import IngestParams, RunSummary, drive, open_context, require
from tasks.wrappers import ingest_batch

log = logging.getLogger("encord_ingest.flow")


def _run_name() -> str:
    params = flow_run.parameters.get("params") or {}
    source = params.get("source", "?") if isinstance(params, dict) else getattr(params, "source", "?")
    return f"ingest {source}"


def run_ingest(params: IngestParams, run_id: str) -> RunSummary:
    """The flow body, separate so errors can become a Failed state without a traceback."""
    require(params, "folder", "integration")
    reports: list[BatchReport] = []

    def on_report(report: BatchReport, summary: RunSummary, dispatched: int) -> None:
        reports.append(report)
        objects = sum(r.listed for r in reports)
        artifacts.update_progress(progress_id, len(reports), dispatched, objects, False)

    with open_context(
        params, run_id=run_id, uploader_factory=lambda: connect(params.folder, params.integration), use_ledger=True
    ) as ctx:
        assert ctx.ledger is not None
        ctx.ledger.start_run(run_id, params.source, params.folder)
        progress_id = artifacts.start_progress()
        label = params.source

        def submit(number: int, entries: list[Entry]) -> PrefectFuture[BatchReport]:
            return ingest_batch.submit(quote(ctx), number, quote(entries), label)

        def wait_first(handles: list[Any]) -> Any:
            return next(as_completed(handles))

        status = "failed"
        summary = RunSummary(run_id=run_id)
        try:
            summary = drive(ctx, params, submit=submit, wait_first=wait_first, on_report=on_report)
            status = "completed" if summary.failed == 0 else "completed-with-dead-letters"
            summary.downstream = after_ingest(params, summary)
        finally:
            ctx.ledger.finish_run(run_id, status, summary.public())
            artifacts.update_progress(progress_id, len(reports), max(len(reports), 1), summary.listed, True)
            artifacts.batch_table(reports)
            artifacts.publish_summary(
                artifacts.summary_markdown(
                    summary, source=params.source, folder=params.folder, dead_letter_sample=ctx.dead_letters.sample
                )
            )
    return summary


@flow(name="encord-ingest", flow_run_name=_run_name, log_prints=True)
def ingest(params: IngestParams) -> Any:
    """Register SOURCE into an Encord folder; re-runs import only what is new or changed."""
    run_id = str(flow_run.id or "local")
    try:
        return run_ingest(params, run_id).public()
    except IngestError as exc:
        log.error("%s", exc)
        return Failed(message=str(exc), data=exc)
