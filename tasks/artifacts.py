"""What a run leaves in the Prefect UI: progress while it runs, a batch table and a summary after."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlparse
from uuid import UUID

from prefect.artifacts import (
    create_link_artifact,
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
)
from prefect.artifacts import update_progress_artifact as _update_progress

from tasks.batch import BatchReport
from tasks.run import RunSummary

PROGRESS_INTERVAL = 1.0  # seconds between progress updates: each is an API call (~30 ms)


class Progress:
    """The run's progress artifact, updated at most once per `interval` while batches finish.

    Updating it per batch cost a no-change re-run of 100k objects 3.9 s of its 8 s, on the
    thread that dispatches batches. The final update is always sent.
    """

    def __init__(self, interval: float = PROGRESS_INTERVAL) -> None:
        self.artifact_id = create_progress_artifact(
            progress=0.0, key="ingest-progress", description="batches finished", _sync=True
        )
        self.interval = interval
        self.sent_at = time.monotonic()

    def update(self, done: int, dispatched: int, objects: int, *, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - self.sent_at < self.interval:
            return
        self.sent_at = now
        update_progress(self.artifact_id, done, dispatched, objects, final)


def update_progress(artifact_id: UUID | None, done: int, dispatched: int, objects: int, listing_done: bool) -> None:
    if artifact_id is None or dispatched == 0:
        return
    pct = 100.0 * done / dispatched if listing_done else min(99.0, 100.0 * done / (dispatched + 1))
    note = "" if listing_done else ", listing still running"
    _update_progress(
        artifact_id=artifact_id,
        progress=round(pct, 1),
        description=f"{done} of {dispatched} batches finished, {objects:,} objects processed{note}",
        _sync=True,
    )


def batch_table(reports: Sequence[BatchReport]) -> None:
    rows = [r.as_row() for r in sorted(reports, key=lambda r: r.number)]
    create_table_artifact(table=rows, key="ingest-batches", description="one row per batch task", _sync=True)


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
    lines += downstream_markdown(s.downstream)
    lines.append(f"Run id: `{s.run_id}`")
    return "\n".join(lines)


def publish_summary(markdown: str) -> None:
    create_markdown_artifact(markdown=markdown, key="ingest-summary", description="run summary", _sync=True)


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def verification_markdown(result: dict[str, Any], *, heading: str = "#") -> str:
    """A verification diff (`Diff.as_dict()`) as markdown: verdict, what was compared, one row per finding."""
    if result.get("status") not in ("passed", "failed"):
        return f"{heading} Schema verification: {result.get('status', '?')}\n\n{_cell(result.get('reason', ''))}\n"
    n = int(result.get("problems", 0))
    verdict = (
        "consistent" if result["status"] == "passed" else f"**not consistent**, {n} problem{'s' if n != 1 else ''}"
    )
    lines = [
        f"{heading} Schema verification: {verdict}",
        "",
        "Compared " + " with ".join(result.get("compared", [])),
        "",
    ]
    findings = result.get("findings", [])
    if findings:
        lines += ["| | key | where | finding |", "|---|---|---|---|"]
        for f in findings[:200]:
            mark = "FAIL" if f.get("problem") else "note"
            lines.append(f"| {mark} | `{_cell(f.get('key'))}` | {f.get('source')} | {_cell(f.get('message'))} |")
        if len(findings) > 200:
            lines.append(f"| | | | ... {len(findings) - 200} more |")
        lines.append("")
    return "\n".join(lines)


def publish_verification(result: dict[str, Any]) -> None:
    create_markdown_artifact(
        markdown=verification_markdown(result),
        key="schema-verification",
        description="schema verification diff",
        _sync=True,
    )


def downstream_markdown(downstream: dict[str, Any]) -> list[str]:
    """The run summary's section on the downstream steps (verification, Active re-sync), if any ran."""
    if not downstream:
        return []
    lines = ["## After the import", ""]
    if downstream.get("observed_file"):
        lines += [f"Observed metadata keys: `{downstream['observed_file']}`", ""]
    if downstream.get("skipped"):
        return [*lines, f"Schema verification and Active re-sync skipped: {_cell(downstream['skipped'])}", ""]
    verification = downstream.get("verification")
    if verification:
        lines += [verification_markdown(verification, heading="###"), ""]
    resync = downstream.get("resync") or {}
    if resync.get("status") in ("accepted", "failed"):
        lines += ["### Active re-sync", "", "| project | accepted | detail |", "|---|---|---|"]
        for o in resync.get("projects", []):
            lines.append(f"| `{o['project']}` | {'yes' if o['accepted'] else 'no'} | {_cell(o.get('error') or '')} |")
        lines += ["", "Accepted means Encord took the request; the sync itself runs in Encord.", ""]
    elif resync:
        lines += [f"### Active re-sync: {resync.get('status')}", "", _cell(resync.get("reason", "")), ""]
    return lines


FOLDER_URL_ENV = "ENCORD_INGEST_FOLDER_URL"


def folder_url(domain: str, folder_uuid: str) -> str:
    """Where a person looks at the folder.

    `ENCORD_INGEST_FOLDER_URL` (a template with `{app}`, `{domain}` and `{folder}`) wins. For Encord's
    own API hosts (api.encord.com, api.us.encord.com) the default is the matching web app
    (app.encord.com); Encord documents no stable deep link to a folder, so the link text names it.
    Any other domain is taken to be the emulator, whose `/_emulator/state` lists the folder's items.
    """
    base = domain.rstrip("/")
    host = urlparse(base).hostname or ""
    app = f"https://{host.replace('api.', 'app.', 1)}" if host.startswith("api.") else base
    template = os.environ.get(FOLDER_URL_ENV)
    if template:
        return template.format(app=app, domain=base, folder=folder_uuid)
    if host == "encord.com" or host.endswith(".encord.com"):
        return f"{app}/"
    return f"{base}/_emulator/state?folder={folder_uuid}"


def publish_folder_link(uploader: Any, folder_name: str) -> None:
    """A link artifact to the Encord folder the run registers into (nothing for manifest-only runs)."""
    folder = getattr(uploader, "folder", None)
    gateway = getattr(uploader, "gateway", None)
    settings = getattr(gateway, "settings", None)
    if folder is None or settings is None:
        return
    uuid = str(folder.uuid)
    create_link_artifact(
        link=folder_url(settings.domain, uuid),
        link_text=f"Encord folder {folder_name} ({uuid})",
        key="encord-folder",
        description="the Encord storage folder this run registers into",
        _sync=True,
    )


def keys_markdown(stats: Any, *, source: str, bucket: str) -> str:
    """What an event-driven run did with the keys it was given (KeyedStats from tasks.keyed)."""
    lines = [
        f"# Event-driven ingest of {stats.requested:,} key(s) of `{bucket or source}`",
        "",
        "| asked | ingested | sidecars | outside source | filtered out | gone | orphan JSON |",
        "|---:|---:|---:|---:|---:|---:|---:|",
        f"| {stats.requested:,} | {stats.listed - stats.orphans:,} | {stats.sidecars:,} | {stats.outside:,} "
        f"| {stats.excluded:,} | {stats.missing:,} | {stats.orphans:,} |",
        "",
    ]
    for title, keys in (
        ("Not under the source prefix", stats.outside_keys),
        ("Gone from the bucket", stats.missing_keys),
        ("JSON files with no object", stats.orphan_keys),
    ):
        if keys:
            lines += [f"## {title}", "", *(f"- `{_cell(k)}`" for k in keys), ""]
    lines.append(f"Source: `{source}`")
    return "\n".join(lines)


def publish_keys(markdown: str) -> None:
    create_markdown_artifact(markdown=markdown, key="ingest-keys", description="keys named by the event", _sync=True)
