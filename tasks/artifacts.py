"""What a run leaves in the Prefect UI: progress while it runs, a batch table and a summary after."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from uuid import UUID

from prefect.artifacts import create_markdown_artifact, create_progress_artifact, create_table_artifact
from prefect.artifacts import update_progress_artifact as _update_progress

from tasks.batch import BatchReport
from tasks.run import RunSummary


def start_progress() -> UUID | None:
    return create_progress_artifact(progress=0.0, key="ingest-progress", description="batches finished")


def update_progress(artifact_id: UUID | None, done: int, dispatched: int, objects: int, listing_done: bool) -> None:
    if artifact_id is None or dispatched == 0:
        return
    pct = 100.0 * done / dispatched if listing_done else min(99.0, 100.0 * done / (dispatched + 1))
    note = "" if listing_done else ", listing still running"
    _update_progress(
        artifact_id=artifact_id,
        progress=round(pct, 1),
        description=f"{done} of {dispatched} batches finished, {objects:,} objects processed{note}",
    )


def batch_table(reports: Sequence[BatchReport]) -> None:
    rows = [r.as_row() for r in sorted(reports, key=lambda r: r.number)]
    create_table_artifact(table=rows, key="ingest-batches", description="one row per batch task")


def summary_markdown(
    summary: RunSummary, *, source: str, folder: str, dead_letter_sample: Sequence[dict[str, Any]]
) -> str:
    s = summary
    lines = [
        f"# Ingest of `{source}` into folder `{folder}`",
        "",
        "| listed | registered | updated | skipped | failed | submitted | batches |",
        "|---:|---:|---:|---:|---:|---:|---:|",
        f"| {s.listed:,} | {s.registered:,} | {s.updated:,} | {s.skipped:,} | {s.failed:,} "
        f"| {s.submitted:,} | {s.batches:,} |",
        "",
    ]
    if s.skip_reasons:
        lines += ["## Skipped", "", "| reason | objects |", "|---|---:|"]
        lines += [f"| {reason} | {n:,} |" for reason, n in sorted(s.skip_reasons.items(), key=lambda kv: -kv[1])]
        lines.append("")
    if s.failed:
        lines += [f"## Dead letters ({s.failed:,})", "", f"File: `{s.dead_letter}`", ""]
        lines += ["| object | rule | reason |", "|---|---|---|"]
        for d in dead_letter_sample[:25]:
            reason = str(d.get("reason", "")).replace("|", "\\|")
            lines.append(f"| `{d.get('key')}` | {d.get('rule')} | {reason} |")
        lines.append("")
    lines.append(f"Run id: `{s.run_id}`")
    return "\n".join(lines)


def publish_summary(markdown: str) -> None:
    create_markdown_artifact(markdown=markdown, key="ingest-summary", description="run summary")
