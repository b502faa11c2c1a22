"""One batch, end to end: ledger check, metadata, validation, manifest, upload, poll, record.

A plain function (Prefect wraps it in `tasks.wrappers`); everything it needs arrives in a
`RunContext`, so it is tested without Prefect. Every entry of the batch ends in exactly one
outcome: registered, updated, skipped (with reason) or failed (dead-lettered with reason).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import struct
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from itertools import compress
from operator import not_
from typing import Any

from encord.exceptions import EncordException
from pydicom.errors import InvalidDicomError

from encord_ingest.errors import AbortError, CredentialsError, IngestError
from encord_ingest.models import Entry, Item, ItemKind, ObjectRef, Rejection, content_tag
from integrations.ledger import Ledger, Row, State
from integrations.storage import Source
from integrations.storage.base import ObjectInfo
from tasks.classify import by_content_type, by_extension, unsupported_reason
from tasks.deadletter import DeadLetters
from tasks.dicom import PREAMBLE_BYTES, DicomHeader, HeaderTooLarge, has_preamble, read_header
from tasks.listing import ListingOptions
from tasks.manifest import DEFAULT_BATCH_BYTES, Line, entry_size_estimate, item_line, render_lines, split_lines
from tasks.media import ProbeError
from tasks.media import probe as probe_media
from tasks.metadata import MAX_SIDECAR_BYTES, Cheap, MetadataError, MetadataPlan, parse_sidecar
from tasks.observed import Observed
from tasks.ordering import dicom_sort_key, natural_key
from tasks.plain import plain_lines
from tasks.schema import Schema
from tasks.upload import upload_with_retries
from tasks.validate import validate_remembered

log = logging.getLogger("encord_ingest.batch")

UNCHANGED = "unchanged since the last run"
EMPTY = "empty object (0 bytes): nothing Encord could show"
CONTENT_KEPT = "content changed at the source; kept the existing Encord item (--on-content-change reimport)"


@dataclass(slots=True)
class Options:
    batch_bytes: int = DEFAULT_BATCH_BYTES
    item_retries: int = 3
    item_retry_wait: float = 1.0
    title_from: str = "key"
    on_content_change: str = "skip"
    dicom_3d: str = "auto"
    group_regex: re.Pattern[str] | None = None
    group_as_sequence: bool = False
    probe_media: bool = False


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
    staging: Ledger | None = None
    memo: dict[Any, Any] = field(default_factory=dict)  # validation results of repeated plain metadata
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
    manifests: list[tuple[str, int]] = field(default_factory=list)  # manifest-only runs: (JSON text, items)
    skip_reasons: dict[str, int] = field(default_factory=dict)
    observed: Observed = field(default_factory=Observed)
    staged: int = 0
    dicom_bytes: int = 0
    errored: bool = False  # dead-lettered whole by an unexpected error: its ledger rows may be untouched

    def absorb(self, other: BatchReport) -> None:
        """Counts of another part of the same listed batch (see `drop_unchanged`)."""
        self.listed += other.listed
        self.skipped += other.skipped
        for reason, n in other.skip_reasons.items():
            self.skip_reasons[reason] = self.skip_reasons.get(reason, 0) + n

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
    content_changed: bool = False
    kind: ItemKind | None = None
    dicom: DicomHeader | None = None
    media: dict[str, Any] | None = None


def content_changed(recorded: str, obj: ObjectRef) -> bool:
    """The object's bytes differ from what the ledger recorded (see `content_tag`).

    A plain ETag recorded (by a version that kept only ETags) is compared with the ETag, as that
    version did. A recorded generation or Content-MD5 where the store now gives none means the
    bytes were rewritten (e.g. an Azure block upload, which sets no Content-MD5).
    """
    current = content_tag(obj)
    recorded_kind = _tag_kind(recorded)
    if recorded_kind == _tag_kind(current):
        return recorded != current
    if recorded_kind == "etag":
        return recorded != obj.etag
    return True


def _tag_kind(tag: str) -> str:
    kind, sep, _ = tag.partition(":")
    return kind if sep and kind in ("gen", "md5") else "etag"


def metadata_hash(metadata: dict[str, Any], encoded: str | None = None) -> str:
    """Hash of the canonical JSON (sorted keys); pass `encoded` when it is already at hand."""
    if encoded is None:
        encoded = json.dumps(metadata, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(encoded.encode()).hexdigest()[:32]


class _Batch:
    def __init__(self, ctx: RunContext, number: int, entries: Sequence[Entry]) -> None:
        self.ctx = ctx
        self.report = BatchReport(number=number, listed=len(entries))
        self.entries = entries
        self.ledger_rows: list[dict[str, Any]] = []
        self.rejections: list[Rejection] = []
        self.seen: list[str] = []
        self.reconciled: dict[str, str] = {}
        self.staged: list[dict[str, Any]] = []
        self.touched: list[str] = []

    # -- outcomes ---------------------------------------------------------------------------
    def _row(self, w: _Work, state: str, **extra: Any) -> None:
        self.ledger_rows.append(self._row_values(w, state, **extra))

    def _row_values(self, w: _Work, state: str, **extra: Any) -> dict[str, Any]:
        base = {
            "url": w.url,
            "source": self.ctx.source.id,
            "key": w.entry.obj.key,
            "etag": content_tag(w.entry.obj),
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
        return base

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
        """Ledger check: unchanged objects leave here, before any request is made for them."""
        ctx = self.ctx
        store = ctx.source.store
        cheap = ctx.plan.cheap(self.entries, ctx.source.relative)
        urls = [store.url_for(e.obj.key) for e in self.entries]
        self.seen = urls
        rows = ctx.ledger.lookup(urls) if ctx.ledger is not None else {}
        if ctx.uploader is not None:
            self.reconcile(rows, {url: e.obj.key for url, e in zip(urls, self.entries, strict=True)})
        work: list[_Work] = []
        # only the ledger reads fingerprints
        prints = fingerprints(ctx, self.entries, cheap) if ctx.ledger is not None else [""] * len(cheap)
        for entry, url, c, fp in zip(self.entries, urls, cheap, prints, strict=True):
            row = rows.get(url)
            w = _Work(entry, url, c, fp, row)
            if url in self.reconciled and row is not None:
                # registered by the upload job a killed run started; recorded with what that run sent
                self.report.registered += 1
                self._row(w, State.REGISTERED, fingerprint=row.fingerprint, metadata_hash=row.metadata_hash,
                          data_hash=row.data_hash, job_id=row.job_id)  # fmt: skip
                continue
            if row is not None and row.done_at(fp):
                if row.staged_member:
                    self.touched.append(url)  # counted when its group is settled after the listing
                    self.report.staged += 1
                    continue
                self.skip(w, UNCHANGED, record=False)
                continue
            if entry.obj.size == 0:
                self.skip(w, EMPTY)
                continue
            if row is not None and row.state == State.REGISTERED and content_changed(row.etag, entry.obj):
                w.content_changed = True
            work.append(w)
        return work

    def reconcile(self, rows: dict[str, Row], keys: dict[str, str]) -> None:
        """Rows left `pending` by a killed run: ask Encord what their upload job did.

        Resolved rows become `registered` in place (with the fingerprint and metadata hash that were
        sent); the rest stay pending and are submitted again, which `skip_duplicate_urls` makes safe.
        """
        by_job: dict[str, list[str]] = {}
        for url, row in rows.items():
            if row.state == State.PENDING:
                by_job.setdefault(row.job_id, []).append(url)
        for job_id, urls in by_job.items():
            titles = {keys[u]: u for u in urls}
            try:
                result = self.ctx.uploader.resolve(job_id, titles)
            except (EncordException, IngestError) as exc:
                log.warning("could not reconcile %d pending objects (job %s): %s", len(urls), job_id or "-", exc)
                continue
            for url in urls:
                uuid = result.item_uuids.get(url)
                if uuid and url not in result.errors:
                    old = rows[url]
                    rows[url] = Row(
                        url, old.etag, old.fingerprint, old.metadata_hash, uuid, State.REGISTERED,
                        old.attempts, False, job_id,
                    )  # fmt: skip
                    self.reconciled[url] = uuid

    def fetch(self, work: list[_Work]) -> None:
        """Per-object requests (HEAD, sidecar GET) for what is left, on the shared I/O pool."""
        plan = self.ctx.plan
        store = self.ctx.source.store

        def one(w: _Work) -> None:
            key = w.entry.obj.key
            try:
                kind = by_extension(key)
                if plan.uses_object or kind is None:
                    info: ObjectInfo = store.head(key)
                    w.content_type = info.content_type
                    w.object_meta = info.metadata
                    kind = kind or by_content_type(info.content_type)
                if kind is None and w.entry.obj.size >= PREAMBLE_BYTES:
                    kind = ItemKind.DICOM if has_preamble(store.read_range(key, 0, PREAMBLE_BYTES)) else None
                w.kind = kind
                if kind == ItemKind.DICOM:
                    w.dicom = read_header(store, key, w.entry.obj.size, plan.dicom_tags)
                    self.report.dicom_bytes += w.dicom.bytes_read
                if self.ctx.options.probe_media and kind in (ItemKind.VIDEO, ItemKind.AUDIO):
                    try:
                        w.media = probe_media(store, key, w.entry.obj.size)
                    except (ProbeError, struct.error, ValueError) as exc:
                        log.info("%s: no media metadata (%s); Encord will read the file itself", key, exc)
                sidecar = w.entry.sidecar
                if plan.uses_sidecar and sidecar is not None:
                    if sidecar.size > MAX_SIDECAR_BYTES:
                        raise MetadataError("size.limit", f"sidecar {sidecar.key} is {sidecar.size:,} bytes")
                    w.sidecar = parse_sidecar(store.read_bytes(sidecar.key, max_bytes=MAX_SIDECAR_BYTES + 1))
            except MetadataError as exc:
                w.problem = Rejection(w.url, key, "metadata", exc.rule, exc.message)
            except InvalidDicomError as exc:
                w.problem = Rejection(w.url, key, "dicom", "dicom.header", str(exc))
            except HeaderTooLarge as exc:
                w.problem = Rejection(w.url, key, "dicom", "dicom.header", str(exc))
            except FileNotFoundError as exc:
                w.problem = Rejection(w.url, key, "metadata", "source.missing", str(exc), transient=True)
            except CredentialsError:
                raise
            except IngestError as exc:
                w.problem = Rejection(w.url, key, "metadata", "source.read", str(exc), transient=True)

        probe = self.ctx.options.probe_media
        needs_io = []
        for w in work:
            kind = by_extension(w.entry.obj.key)
            if (
                plan.uses_object
                or kind is None
                or kind == ItemKind.DICOM
                or (plan.uses_sidecar and w.entry.sidecar is not None)
                or (probe and kind in (ItemKind.VIDEO, ItemKind.AUDIO))
            ):
                needs_io.append(w)
            else:
                w.kind = kind  # nothing to read: the extension says it all
        if needs_io:
            list(self.ctx.io.map(one, needs_io))

    def build(self, work: list[_Work]) -> tuple[list[_Work], list[_Work]]:
        """Classify, merge, validate: returns (to register, to update metadata)."""
        ctx = self.ctx
        new: list[_Work] = []
        updates: list[_Work] = []
        by_layers: dict[tuple[int, ...], tuple[dict[str, Any], Any, str]] = {}  # see below
        hashes: dict[str, str] = {}  # metadata hash by encoded metadata (shared metadata repeats)
        sent: dict[int, tuple[dict[str, Any], int]] = {}  # metadata dicts sent, by id: (dict, items)
        for w in work:
            key = w.entry.obj.key
            if w.problem is not None:
                p = w.problem
                self.fail(w, p.stage, p.rule, p.reason, transient=p.transient)
                continue
            kind = w.kind
            if kind is None:
                self.skip(w, unsupported_reason(key, w.content_type))
                continue
            if kind == ItemKind.DICOM and w.dicom is not None and not w.dicom.series_uid:
                self.fail(w, "dicom", "dicom.missing_tags", "missing SeriesInstanceUID (cannot place it in a series)")
                continue
            group = self._group_of(w, kind)
            if w.cheap.problem is not None and group is None:
                self.fail(w, "metadata", w.cheap.problem.rule, w.cheap.problem.message)
                continue
            if w.sidecar is None and w.object_meta is None and w.dicom is None:
                # only listing-derived layers, mostly shared dicts: merge and validate once per combination
                shared = tuple(map(id, w.cheap.layers))  # the layers live as long as the batch
                hit = by_layers.get(shared)
                if hit is None:
                    hit = by_layers[shared] = self._validate(ctx.plan.merge(w.cheap, None, None, None))
                metadata, violation, encoded = hit
            else:
                merged = ctx.plan.merge(w.cheap, w.sidecar, w.object_meta, w.dicom.tags if w.dicom else None)
                metadata, violation, encoded = self._validate(merged)
            if group is not None:
                problem = w.cheap.problem.message if w.cheap.problem else (violation.reason if violation else "")
                self._stage(w, group, metadata, problem)
                continue
            if violation is not None:
                self.fail(w, "validate", violation.rule, violation.reason)
                continue
            title = key if ctx.options.title_from == "key" else (ctx.source.relative(key) or key)
            mhash = hashes.get(encoded)
            if mhash is None:
                mhash = hashes[encoded] = metadata_hash(metadata, encoded)
            extra = {"entry_size": entry_size_estimate(w.url, title, encoded), "metadata_json": encoded}
            if w.media:
                extra["media_metadata"] = w.media
            w.item = Item(kind, key, w.url, title, [w.entry], [w.url], metadata, w.fingerprint, mhash, extra)
            row = w.row
            registered = row is not None and row.state == State.REGISTERED and bool(row.data_hash)
            if registered and w.content_changed and ctx.options.on_content_change == "reimport":
                new.append(w)
            elif registered and row is not None:
                if row.metadata_hash == w.item.metadata_hash:
                    note = CONTENT_KEPT if w.content_changed else UNCHANGED
                    if w.content_changed:
                        log.warning("%s: %s", w.url, CONTENT_KEPT)
                    self.skip(w, note, state=State.REGISTERED)
                    continue
                updates.append(w)
            else:
                new.append(w)
            seen = sent.get(id(metadata))
            sent[id(metadata)] = (metadata, seen[1] + 1 if seen else 1)
        for metadata, items in sent.values():
            self.report.observed.observe(metadata, items)
        return new, updates

    def _validate(self, merged: dict[str, Any]) -> tuple[dict[str, Any], Any, str]:
        return validate_remembered(merged, self.ctx.schema, self.ctx.memo)

    def _group_of(self, w: _Work, kind: ItemKind) -> tuple[ItemKind, str, str] | None:
        """(group kind, group key, sort key) when the object is one member of a grouped item."""
        opts = self.ctx.options
        if kind == ItemKind.DICOM and w.dicom is not None:
            sort = dicom_sort_key(w.dicom.instance_number, w.dicom.position_z, w.entry.obj.key)
            return ItemKind.DICOM_SERIES, w.dicom.series_uid[:255], sort
        if kind == ItemKind.IMAGE and opts.group_regex is not None:
            m = opts.group_regex.search(self.ctx.source.relative(w.entry.obj.key))
            named = [v for v in m.groupdict().values() if v] if m else []
            if named:
                group_kind = ItemKind.IMAGE_SEQUENCE if opts.group_as_sequence else ItemKind.IMAGE_GROUP
                return group_kind, named[0][:255], natural_key(w.entry.obj.key)
        return None

    def _stage(self, w: _Work, group: tuple[ItemKind, str, str], metadata: dict[str, Any], problem: str) -> None:
        group_kind, group_key, sort_key = group
        if w.dicom is not None:
            missing = w.dicom.missing
            if missing:
                problem = f"missing {', '.join(missing)}" + (f"; {problem}" if problem else "")
            if w.dicom.missing_spatial:
                metadata = {**metadata, "__missing_spatial__": w.dicom.missing_spatial}
        self.report.staged += 1
        self.staged.append(
            {
                "run_id": self.ctx.run_id,
                "url": w.url,
                "group_key": group_key,
                "kind": group_kind.value,
                "key": w.entry.obj.key,
                "sort_key": sort_key,
                "fingerprint": w.fingerprint,
                "etag": content_tag(w.entry.obj),
                "size": w.entry.obj.size,
                "status": "new",
                "data_hash": "",
                "metadata": json.dumps(metadata, ensure_ascii=False),
                "problem": problem,
            }
        )

    def submit(self, new: list[_Work]) -> None:
        """Upload within the byte limit; transiently failed items are re-submitted with backoff."""
        by_url = {w.url: w for w in new if w.item is not None}
        self.report.submitted += len(by_url)

        def pending_rows(item: Item, attempts: int) -> list[dict[str, Any]]:
            return [self._row_values(by_url[item.url], State.PENDING, attempts=attempts)]

        def count_job() -> None:
            self.report.jobs += 1

        outcomes = upload_with_retries(
            self.ctx,
            [w.item for w in by_url.values() if w.item is not None],
            pending_rows=pending_rows,
            reimport=lambda item: self._reimport(by_url[item.url]),
            label=f"batch {self.report.number}",
            on_job=count_job,
        )
        for out in outcomes:
            w = by_url[out.item.url]
            if out.uuid is not None:
                self.report.registered += 1
                self._row(w, State.REGISTERED, data_hash=out.uuid, attempts=out.attempts, job_id=out.job_id)
            else:
                self.fail(w, "upload", "encord.item_error", out.error, transient=out.transient, attempts=out.attempts)

    def _reimport(self, w: _Work) -> bool:
        return w.content_changed and self.ctx.options.on_content_change == "reimport"

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
        listed = self.entries
        plain: list[Line | None] = []
        if self.ctx.uploader is None and self.ctx.ledger is None:  # nothing recorded: plain objects go straight
            plain, self.entries = plain_lines(self.ctx, listed, self.report.observed)
        work = self.prepare()
        self.fetch(work)
        new, updates = self.build(work)
        if self.ctx.uploader is None:
            self.write_manifests(listed, plain, new)
        else:
            self.submit(new)
            self.update(updates)
        self.ctx.dead_letters.write(self.rejections)
        if self.ctx.staging is not None:
            self.ctx.staging.stage(self.staged)
            self.ctx.staging.touch_staged(self.touched, self.ctx.run_id)
        if self.ctx.ledger is not None and self.ctx.uploader is not None:
            self.ctx.ledger.record(self.ledger_rows, seen=self.seen, run_id=self.ctx.run_id)
        self.report.seconds = time.monotonic() - started
        return self.report

    def write_manifests(self, listed: Sequence[Entry], plain: list[Line | None], new: list[_Work]) -> None:
        """Manifest texts for a run that submits nothing, entries in listing order whichever path made them."""
        full = {id(w.entry): item_line(w.item) for w in new if w.item is not None}
        if not plain:
            lines: list[Line] = list(full.values())
        elif not full:
            lines = [line for line in plain if line is not None]
        else:
            lines = []
            for entry, line in zip(listed, plain, strict=True):
                line = line or full.get(id(entry))
                if line is not None:
                    lines.append(line)
        for chunk in split_lines(lines, max_items=len(lines) or 1, max_bytes=self.ctx.options.batch_bytes):
            self.report.manifests.append(render_lines(chunk))


def process_batch(ctx: RunContext, number: int, entries: Sequence[Entry]) -> BatchReport:
    return _Batch(ctx, number, entries).run()


def fingerprints(ctx: RunContext, entries: Sequence[Entry], cheap: Sequence[Cheap]) -> list[str]:
    """Each entry's fingerprint; layers shared by many entries of the batch are rendered once."""
    return ctx.plan.fingerprints(entries, cheap, ctx.plan.digest + ctx.schema.digest)


def drop_unchanged(ctx: RunContext, number: int, entries: Sequence[Entry]) -> tuple[BatchReport | None, list[Entry]]:
    """Take out what `_Batch.prepare` would skip as unchanged, before a batch task is made for it.

    A no-change re-run then costs the listing and one ledger lookup per batch instead of a Prefect
    task per batch. The entries taken out are counted as skipped and marked seen (deletion
    detection) by the ledger's writer thread; returns their report (None when there are none) and
    the entries left.
    """
    if ctx.ledger is None or ctx.uploader is None or not entries:
        return None, list(entries)
    try:
        return _drop_unchanged(ctx, number, entries)
    except AbortError:
        raise
    except Exception as exc:  # the batch task meets it again, and dead-letters the batch with it
        log.warning("batch %d: could not screen for unchanged objects (%s: %s)", number, type(exc).__name__, exc)
        return None, list(entries)


def _drop_unchanged(ctx: RunContext, number: int, entries: Sequence[Entry]) -> tuple[BatchReport | None, list[Entry]]:
    assert ctx.ledger is not None
    store = ctx.source.store
    urls = [store.url_for(e.obj.key) for e in entries]
    settled = ctx.ledger.settled(urls)
    if not settled:  # a first run, or nothing of this batch is done yet
        return None, list(entries)
    prints = fingerprints(ctx, entries, ctx.plan.cheap(entries, ctx.source.relative))
    unchanged = list(map(settled.__contains__, zip(urls, prints, strict=True)))
    done = list(compress(urls, unchanged))
    if not done:
        return None, list(entries)
    left = list(compress(entries, map(not_, unchanged)))
    ctx.ledger.mark_seen(done, ctx.run_id)  # written behind the listing; `drive` flushes it
    report = BatchReport(number=number, listed=len(done), skipped=len(done), skip_reasons={UNCHANGED: len(done)})
    return report, left
