"""One batch, end to end: ledger check, metadata, validation, manifest, upload, poll, record.

A plain function (Prefect wraps it in `tasks.wrappers`); everything it needs arrives in a
`RunContext`, so it is tested without Prefect. Every entry of the batch ends in exactly one
outcome: registered, updated, skipped (with reason) or failed (dead-lettered with reason).
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

from encord_ingest.errors import CredentialsError, IngestError
from encord_ingest.models import Entry, Item, ItemKind, Rejection
from integrations.ledger import Ledger, Row, State
from integrations.storage import Source
from integrations.storage.base import ObjectInfo
from tasks.classify import by_content_type, by_extension, unsupported_reason
from tasks.deadletter import DeadLetters
from tasks.listing import ListingOptions
from tasks.manifest import DEFAULT_BATCH_BYTES, build_manifest, split_by_limits
from tasks.metadata import MAX_SIDECAR_BYTES, Cheap, MetadataError, MetadataPlan, parse_sidecar
from tasks.observed import Observed
from tasks.schema import Schema
from tasks.validate import validate_metadata

log = logging.getLogger("encord_ingest.batch")

PERMANENT_MARKERS = ("not found", "does not exist", "no such", "access denied", "forbidden", "unsupported", "invalid")


@dataclass(slots=True)
class Options:
    batch_bytes: int = DEFAULT_BATCH_BYTES
    item_retries: int = 3
    item_retry_wait: float = 1.0
    title_from: str = "key"


@dataclass(slots=True)
class RunContext:
    """What every batch of one run shares. `uploader` is None for manifest-only runs."""

    run_id: str
    source: Source
    plan: MetadataPlan
    schema: Schema
    io: Executor
    dead_letters: DeadLetters
    ledger: Ledger | None = None
    uploader: Any = None
    options: Options = field(default_factory=Options)
    listing: ListingOptions = field(default_factory=ListingOptions)
    sleep: Callable[[float], None] = time.sleep


@dataclass(slots=True)
class BatchReport:
    number: int
    listed: int = 0
    skipped: int = 0
    submitted: int = 0
    registered: int = 0
    updated: int = 0
    failed: int = 0
    jobs: int = 0
    seconds: float = 0.0
    manifests: list[dict[str, Any]] = field(default_factory=list)
    skip_reasons: dict[str, int] = field(default_factory=dict)
    observed: Observed = field(default_factory=Observed)

    def as_row(self) -> dict[str, Any]:
        return {
            "batch": self.number,
            "items": self.listed,
            "registered": self.registered,
            "updated": self.updated,
            "skipped": self.skipped,
            "failed": self.failed,
            "jobs": self.jobs,
            "seconds": round(self.seconds, 2),
        }


@dataclass(slots=True)
class _Work:
    """One entry on its way through the batch."""

    entry: Entry
    url: str
    cheap: Cheap
    fingerprint: str
    row: Row | None
    item: Item | None = None
    content_type: str | None = None
    object_meta: dict[str, str] | None = None
    sidecar: dict[str, Any] | None = None
    problem: Rejection | None = None


def metadata_hash(metadata: dict[str, Any]) -> str:
    canon = json.dumps(metadata, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canon.encode()).hexdigest()[:32]


def is_permanent(error: str) -> bool:
    text = error.lower()
    return any(marker in text for marker in PERMANENT_MARKERS)


class _Batch:
    def __init__(self, ctx: RunContext, number: int, entries: Sequence[Entry]) -> None:
        self.ctx = ctx
        self.report = BatchReport(number=number, listed=len(entries))
        self.entries = entries
        self.ledger_rows: list[dict[str, Any]] = []
        self.rejections: list[Rejection] = []

    # -- outcomes ---------------------------------------------------------------------------
    def _row(self, w: _Work, state: str, **extra: Any) -> None:
        base = {
            "url": w.url,
            "source": self.ctx.source.url,
            "key": w.entry.obj.key,
            "etag": w.entry.obj.etag,
            "size": w.entry.obj.size,
            "fingerprint": w.fingerprint,
            "state": state,
            "run_id": self.ctx.run_id,
            "kind": w.item.kind.value if w.item else "",
            "metadata_hash": w.item.metadata_hash if w.item else "",
            "data_hash": w.row.data_hash if w.row else "",
            "attempts": (w.row.attempts if w.row else 0),
            "last_error": "",
            "transient": False,
        }
        base.update(extra)
        self.ledger_rows.append(base)

    def skip(self, w: _Work, reason: str, *, record: bool = True, state: str = State.SKIPPED) -> None:
        self.report.skipped += 1
        label = reason.split(" (", 1)[0]
        self.report.skip_reasons[label] = self.report.skip_reasons.get(label, 0) + 1
        if record:
            self._row(w, state, last_error=reason if state == State.SKIPPED else "")

    def fail(self, w: _Work, stage: str, rule: str, reason: str, *, transient: bool = False, attempts: int = 1) -> None:
        self.report.failed += 1
        rej = Rejection(w.url, w.entry.obj.key, stage, rule, reason, transient=transient, attempts=attempts)
        self.rejections.append(rej)
        self._row(w, State.FAILED, last_error=f"{rule}: {reason}", transient=transient, attempts=attempts)

    # -- stages -----------------------------------------------------------------------------
    def prepare(self) -> list[_Work]:
        ctx = self.ctx
        store = ctx.source.store
        cheap = ctx.plan.cheap(self.entries, ctx.source.relative)
        urls = [store.url_for(e.obj.key) for e in self.entries]
        rows = ctx.ledger.lookup(urls) if ctx.ledger is not None else {}
        work: list[_Work] = []
        for entry, url, c in zip(self.entries, urls, cheap, strict=True):
            fp = ctx.plan.fingerprint(entry, c, ctx.schema.digest)
            row = rows.get(url)
            w = _Work(entry, url, c, fp, row)
            if row is not None and row.fingerprint == fp and row.state in (State.REGISTERED, State.SKIPPED):
                self.skip(w, "unchanged since the last run", record=False)
                continue
            work.append(w)
        return work

    def fetch(self, work: list[_Work]) -> None:
        """Per-object requests (HEAD, sidecar GET) for what is left, on the shared I/O pool."""
        plan = self.ctx.plan
        store = self.ctx.source.store

        def one(w: _Work) -> None:
            key = w.entry.obj.key
            try:
                if plan.uses_object or by_extension(key) is None:
                    info: ObjectInfo = store.head(key)
                    w.content_type = info.content_type
                    w.object_meta = info.metadata
                sidecar = w.entry.sidecar
                if plan.uses_sidecar and sidecar is not None:
                    if sidecar.size > MAX_SIDECAR_BYTES:
                        raise MetadataError("size.limit", f"sidecar {sidecar.key} is {sidecar.size:,} bytes")
                    w.sidecar = parse_sidecar(store.read_bytes(sidecar.key, max_bytes=MAX_SIDECAR_BYTES + 1))
            except MetadataError as exc:
                w.problem = Rejection(w.url, key, "metadata", exc.rule, exc.message)
            except FileNotFoundError as exc:
                w.problem = Rejection(w.url, key, "metadata", "source.missing", str(exc), transient=True)
            except CredentialsError:
                raise
            except IngestError as exc:
                w.problem = Rejection(w.url, key, "metadata", "source.read", str(exc), transient=True)

        list(self.ctx.io.map(one, work))

    def build(self, work: list[_Work]) -> tuple[list[_Work], list[_Work]]:
        """Classify, merge, validate: returns (to register, to update metadata)."""
        ctx = self.ctx
        new: list[_Work] = []
        updates: list[_Work] = []
        for w in work:
            key = w.entry.obj.key
            if w.problem is not None:
                p = w.problem
                self.fail(w, p.stage, p.rule, p.reason, transient=p.transient)
                continue
            kind = by_extension(key) or (by_content_type(w.content_type) if w.content_type else None)
            if kind is None:
                self.skip(w, unsupported_reason(key, w.content_type))
                continue
            if kind == ItemKind.DICOM:
                self.skip(w, "DICOM file (series grouping is not supported in this version)")
                continue
            if w.cheap.problem is not None:
                self.fail(w, "metadata", w.cheap.problem.rule, w.cheap.problem.message)
                continue
            merged = ctx.plan.merge(w.cheap, w.sidecar, w.object_meta)
            metadata, violation = validate_metadata(merged, ctx.schema)
            if violation is not None:
                self.fail(w, "validate", violation.rule, violation.reason)
                continue
            rel = ctx.source.relative(key)
            title = key if ctx.options.title_from == "key" else (rel or key)
            w.item = Item(kind, key, w.url, title, [w.entry], [w.url], metadata)
            w.item.fingerprint = w.fingerprint
            w.item.metadata_hash = metadata_hash(metadata)
            row = w.row
            if row is not None and row.state == State.REGISTERED and row.data_hash:
                if row.metadata_hash == w.item.metadata_hash:
                    self.skip(w, "unchanged since the last run")
                    self.ledger_rows[-1]["state"] = State.REGISTERED
                    self.ledger_rows[-1]["last_error"] = ""
                    continue
                updates.append(w)
            else:
                new.append(w)
            self.report.observed.observe(metadata)
        return new, updates

    def submit(self, new: list[_Work]) -> None:
        """Upload in manifests within the byte limit; retry transiently failed items with backoff."""
        ctx = self.ctx
        pending = {w.url: w for w in new}
        attempts = dict.fromkeys(pending, 0)
        self.report.submitted += len(pending)
        round_no = 0
        while pending:
            round_no += 1
            items = [w.item for w in pending.values() if w.item is not None]
            for chunk in split_by_limits(items, max_items=len(items), max_bytes=ctx.options.batch_bytes):
                self.report.jobs += 1
                for it in chunk:
                    attempts[it.url] += 1
                result = ctx.uploader.upload(build_manifest(chunk), {it.title: it.url for it in chunk})
                for it in chunk:
                    w = pending[it.url]
                    if it.url in result.item_uuids and it.url not in result.errors:
                        self.report.registered += 1
                        self._row(
                            w,
                            State.REGISTERED,
                            data_hash=result.item_uuids[it.url],
                            attempts=attempts[it.url],
                            job_id=result.job_id,
                        )
                        del pending[it.url]
                        continue
                    error = result.errors.get(it.url) or f"upload job ended {result.status} without this item"
                    if is_permanent(error) or attempts[it.url] > ctx.options.item_retries:
                        self.fail(
                            w,
                            "upload",
                            "encord.item_error",
                            error,
                            transient=not is_permanent(error),
                            attempts=attempts[it.url],
                        )
                        del pending[it.url]
            if pending:
                wait = min(30.0, ctx.options.item_retry_wait * 2 ** (round_no - 1)) * (0.5 + random.random())
                log.info("batch %d: retrying %d failed items in %.1fs", self.report.number, len(pending), wait)
                ctx.sleep(wait)

    def update(self, updates: list[_Work]) -> None:
        ctx = self.ctx
        if not updates or ctx.uploader is None:
            return
        by_uuid = {w.row.data_hash: w for w in updates if w.row is not None and w.item is not None}
        ctx.uploader.update_metadata({u: w.item.client_metadata for u, w in by_uuid.items() if w.item})
        for w in by_uuid.values():
            self.report.updated += 1
            self._row(w, State.REGISTERED)

    def run(self) -> BatchReport:
        started = time.monotonic()
        work = self.prepare()
        self.fetch(work)
        new, updates = self.build(work)
        if self.ctx.uploader is None:
            items = [w.item for w in new if w.item is not None]
            for chunk in split_by_limits(items, max_items=len(items) or 1, max_bytes=self.ctx.options.batch_bytes):
                self.report.manifests.append(build_manifest(chunk))
        else:
            self.submit(new)
            self.update(updates)
        self.ctx.dead_letters.write(self.rejections)
        if self.ctx.ledger is not None and self.ctx.uploader is not None:
            self.ctx.ledger.record(self.ledger_rows)
        self.report.seconds = time.monotonic() - started
        return self.report


def process_batch(ctx: RunContext, number: int, entries: Sequence[Entry]) -> BatchReport:
    return _Batch(ctx, number, entries).run()
