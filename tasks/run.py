"""One ingestion run as plain functions: parameters, pre-flight checks, and the batch loop.

`flows.ingest` runs `drive` with batches dispatched as Prefect tasks; the `manifest` command
runs it inline. Pre-flight does every check that can fail before anything is submitted, so a
usage or credentials problem ends the run with nothing sent.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import re
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel, Field

from encord_ingest.errors import AbortError, ConfigError, UsageError
from encord_ingest.models import Entry, Rejection
from integrations.ledger import DEFAULT_LEDGER, Ledger, ScratchLedger
from integrations.storage import open_source
from tasks.batch import BatchReport, Options, RunContext, process_batch
from tasks.deadletter import DeadLetters
from tasks.filters import KeyFilter
from tasks.groups import Group, iter_group_batches, process_group_batch
from tasks.listing import ORPHAN_REASON, ListingOptions, ListingStats, iter_batches
from tasks.manifest import DEFAULT_BATCH_BYTES, DEFAULT_BATCH_SIZE
from tasks.metadata import MetadataPlan
from tasks.observed import Observed
from tasks.schema import EMPTY_SCHEMA, load_schema
from tasks.sidecars import DEFAULT_SIDECAR_SUFFIX

log = logging.getLogger("encord_ingest.run")

STATE_DIR = ".encord-ingest"


class IngestParams(BaseModel):
    """Everything a run needs; typed so the Prefect UI renders a form. No secrets here."""

    source: str = Field(description="s3://bucket/prefix, gs://..., az://..., file:///path or a local path")
    folder: str = Field(default="", description="Encord storage folder (created when missing)")
    integration: str = Field(default="", description="title of the Encord cloud integration for the bucket")
    include: list[str] = Field(default_factory=list, description="globs on the key relative to the prefix")
    exclude: list[str] = Field(default_factory=list)
    metadata: list[str] = Field(default_factory=list, description="sidecar, object, path:RE, table:URL, set:K=V")
    schema_file: str | None = Field(default=None, description="metadata schema YAML to coerce and validate with")
    batch_size: int = Field(default=DEFAULT_BATCH_SIZE, ge=1, le=500_000)
    batch_bytes: int = Field(default=DEFAULT_BATCH_BYTES, ge=64 * 1024, le=512 * 1024 * 1024)
    max_in_flight: int = Field(default=4, ge=1, le=64, description="batches processed at once")
    fanout: int = Field(default=4, ge=1, le=64, description="parallel listers over top-level prefixes and key ranges")
    io_workers: int = Field(default=16, ge=1, le=256, description="threads for per-object reads")
    item_retries: int = Field(default=3, ge=0, le=20)
    item_retry_wait: float = Field(
        default_factory=lambda: float(os.environ.get("ENCORD_INGEST_ITEM_RETRY_WAIT") or 1.0),
        ge=0,
        description="seconds before the first re-submission of failed items (doubles, with jitter)",
    )
    sidecar_suffix: str = DEFAULT_SIDECAR_SUFFIX
    account: str = Field(default="", description="Azure storage account for az:// sources")
    ledger: str = Field(default=DEFAULT_LEDGER, description="SQLite path or postgresql:// URL")
    state_dir: str = STATE_DIR
    active_projects: list[str] = Field(default_factory=list)
    on_content_change: Literal["skip", "reimport"] = Field(
        default="skip", description="an object whose content changed: keep its Encord item, or register it anew"
    )
    group_by: str = Field(default="", description="regex with a named group: images with the same value form one item")
    group_as: Literal["image-group", "image-sequence"] = "image-group"
    dicom_3d: Literal["auto", "require", "ignore"] = Field(
        default="auto", description="require the spatial DICOM tags: for multi-slice series (auto), always, never"
    )
    probe_media: bool = Field(
        default=False, description="read video/audio headers so Encord gets their metadata in the manifest"
    )
    retry_dead_letters: bool = Field(
        default=False, description="instead of listing, re-drive the objects the ledger holds as dead-lettered"
    )
    report_deleted: bool = Field(default=True, description="report objects gone from the source since last run")
    flag_deleted: str = Field(default="", description="metadata key set to true on items whose object is gone")
    inventory: str = Field(default="", description="S3 Inventory manifest.json URL: its rows replace the listing")
    ledger_scope: str = Field(default="", description="set by sharded runs: suffix of the ledger source id")


PUBLIC_FIELDS = (
    "listed",
    "skipped",
    "submitted",
    "registered",
    "updated",
    "failed",
    "batches",
    "dead_letter",
    "run_id",
    "deleted",
)


@dataclass(slots=True)
class RunSummary:
    listed: int = 0
    skipped: int = 0
    submitted: int = 0
    registered: int = 0
    updated: int = 0
    failed: int = 0
    batches: int = 0
    dead_letter: str | None = None
    run_id: str = ""
    deleted: int = 0
    skip_reasons: dict[str, int] = field(default_factory=dict)
    observed: Observed = field(default_factory=Observed)
    downstream: dict[str, Any] = field(default_factory=dict)
    batch_errors: int = 0  # batches dead-lettered whole (see `detect_deleted`)

    def add(self, report: BatchReport) -> None:
        self.batches += 1
        self.batch_errors += report.errored
        self.skipped += report.skipped
        self.submitted += report.submitted
        self.registered += report.registered
        self.updated += report.updated
        self.failed += report.failed
        for reason, n in report.skip_reasons.items():
            self.skip_reasons[reason] = self.skip_reasons.get(reason, 0) + n
        self.observed.merge(report.observed)

    def public(self) -> dict[str, Any]:
        """The design's run summary (plus `updated`), counts as integers."""
        return {name: getattr(self, name) for name in PUBLIC_FIELDS}

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0


class Handle(Protocol):
    def result(self) -> BatchReport: ...


def _table_fetcher(stack: ExitStack, account: str) -> Callable[[str], Path]:
    """Tables given as bucket URLs are streamed to a temp file first."""
    tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="encord-ingest-")))

    def fetch(url: str) -> Path:
        if "://" not in url or url.startswith("file://"):
            return Path(url.removeprefix("file://")).expanduser()
        src = open_source(url, account=account)
        target = tmp / Path(src.prefix).name
        try:
            src.store.download_to(src.prefix, target)
        except FileNotFoundError:
            raise ConfigError(f"metadata table {url} does not exist") from None
        return target

    return fetch


def compile_group_regex(text: str) -> re.Pattern[str] | None:
    if not text:
        return None
    try:
        regex = re.compile(text)
    except re.error as exc:
        raise UsageError(f"--group-by {text!r}: invalid regex: {exc}") from None
    if not regex.groupindex:
        raise UsageError(f"--group-by {text!r}: name the group, e.g. (?P<group>[^/]+)/frame_")
    return regex


_GC_LOCK = threading.Lock()
_GC_RUNS = [0]
_GC_SAVED: list[tuple[int, int, int]] = []
# A run makes a few short-lived objects per listed object; at the default threshold (700) the
# collector would run every few hundred objects and, now and then, walk every object the SDKs
# loaded (~160k): about a third of a manifest-only run's time at 100k objects.
RUN_GC_THRESHOLD = (100_000, 50, 100)


@contextmanager
def steady_gc() -> Iterator[None]:
    """While runs are going: what was loaded before is frozen out of collections, and gen-0
    collections come every 100k allocations instead of 700. Cycles are still collected."""
    with _GC_LOCK:
        _GC_RUNS[0] += 1
        if _GC_RUNS[0] == 1:
            _GC_SAVED[:] = [gc.get_threshold()]
            gc.freeze()
            gc.set_threshold(*RUN_GC_THRESHOLD)
    try:
        yield
    finally:
        with _GC_LOCK:
            _GC_RUNS[0] -= 1
            if _GC_RUNS[0] == 0:
                gc.set_threshold(*_GC_SAVED[0])
                gc.unfreeze()


@contextmanager
def open_context(
    params: IngestParams, *, run_id: str, uploader_factory: Callable[[], Any] | None, use_ledger: bool
) -> Iterator[RunContext]:
    """Pre-flight in the order that fails cheapest first; yields a ready RunContext."""
    with ExitStack() as stack:
        stack.enter_context(steady_gc())  # from here: the SDKs' model loading makes objects by the thousand too
        schema = load_schema(params.schema_file) if params.schema_file else EMPTY_SCHEMA
        key_filter = KeyFilter.build(params.include, params.exclude)
        source = open_source(params.source, account=params.account)
        source.scope = params.ledger_scope
        url_base = source.store.url_for("")
        plan = MetadataPlan.build(params.metadata, url_base=url_base, open_table=_table_fetcher(stack, params.account))
        stack.callback(plan.close)
        if plan.uses_object and hasattr(source.store, "list_tags"):  # Azure: index tags are object metadata
            source.store.list_tags = True
        source.store.check_access(source.prefix)
        group_regex = compile_group_regex(params.group_by)
        ledger = Ledger(params.ledger) if use_ledger else None
        if ledger is not None:
            stack.callback(ledger.close)
            stack.enter_context(ledger.lease(source.id, run_id))  # before Encord: a second run stops at once
            staging = ledger
        else:  # grouped items are staged even when nothing is recorded (manifest-only runs)
            scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="encord-ingest-stage-")))
            staging = ScratchLedger(str(scratch / "staging.db"))
            stack.callback(staging.close)
        uploader = uploader_factory() if uploader_factory is not None else None
        io = stack.enter_context(ThreadPoolExecutor(max_workers=params.io_workers, thread_name_prefix="io"))
        dead = DeadLetters(Path(params.state_dir) / "dead-letters" / f"{run_id}.jsonl")
        ctx = RunContext(
            run_id=run_id,
            source=source,
            plan=plan,
            schema=schema,
            io=io,
            dead_letters=dead,
            ledger=ledger,
            staging=staging,
            uploader=uploader,
            options=Options(
                batch_bytes=params.batch_bytes,
                item_retries=params.item_retries,
                item_retry_wait=params.item_retry_wait,
                on_content_change=params.on_content_change,
                dicom_3d=params.dicom_3d,
                group_regex=group_regex,
                group_as_sequence=params.group_as == "image-sequence",
                probe_media=params.probe_media,
            ),
            listing=ListingOptions(key_filter=key_filter, sidecar_suffix=params.sidecar_suffix, fanout=params.fanout),
        )
        yield ctx


def guarded_batch(ctx: RunContext, number: int, entries: list[Entry]) -> BatchReport:
    """A batch never loses its entries: an unexpected error dead-letters them all, with the reason."""
    try:
        return process_batch(ctx, number, entries)
    except AbortError:
        raise
    except Exception as exc:
        log.exception("batch %d failed", number)
        store = ctx.source.store
        reason = f"batch failed: {exc.__class__.__name__}: {str(exc)[:200]}"
        ctx.dead_letters.write(
            Rejection(store.url_for(e.obj.key), e.obj.key, "batch", "batch.error", reason, transient=True)
            for e in entries
        )
        return BatchReport(number=number, listed=len(entries), failed=len(entries), errored=True)


def guarded_group_batch(ctx: RunContext, number: int, groups: list[Group]) -> BatchReport:
    """Like `guarded_batch`, for grouped items: an unexpected error dead-letters every member."""
    try:
        return process_group_batch(ctx, number, groups)
    except AbortError:
        raise
    except Exception as exc:
        log.exception("group batch %d failed", number)
        reason = f"batch failed: {exc.__class__.__name__}: {str(exc)[:200]}"
        members = [m for g in groups for m in g.members]
        ctx.dead_letters.write(
            Rejection(m["url"], m["key"], "batch", "batch.error", reason, transient=True) for m in members
        )
        return BatchReport(number=number, listed=len(members), failed=len(members), errored=True)


def drive(
    ctx: RunContext,
    params: IngestParams,
    *,
    submit: Callable[[int, list[Entry]], Handle],
    wait_first: Callable[[list[Handle]], Handle],
    on_report: Callable[[BatchReport, RunSummary, int], None] | None = None,
    batches: Iterable[list[Entry]] | None = None,
    stats: ListingStats | None = None,
    submit_groups: Callable[[int, list[Group]], Handle] | None = None,
    screen: Callable[[int, list[Entry]], tuple[BatchReport | None, list[Entry]]] | None = None,
) -> RunSummary:
    """Cut batches (from the listing unless given), keep `max_in_flight` running, sum their reports.

    `screen` (e.g. `tasks.batch.drop_unchanged`) takes entries out of a batch before it is sent;
    its report joins the report of what was sent, or stands alone when nothing was left to send.
    """
    with steady_gc():
        return _drive(ctx, params, submit, wait_first, on_report, batches, stats, submit_groups, screen)


def _drive(
    ctx: RunContext,
    params: IngestParams,
    submit: Callable[[int, list[Entry]], Handle],
    wait_first: Callable[[list[Handle]], Handle],
    on_report: Callable[[BatchReport, RunSummary, int], None] | None,
    batches: Iterable[list[Entry]] | None,
    stats: ListingStats | None,
    submit_groups: Callable[[int, list[Group]], Handle] | None,
    screen: Callable[[int, list[Entry]], tuple[BatchReport | None, list[Entry]]] | None,
) -> RunSummary:
    summary = RunSummary(run_id=ctx.run_id)
    explicit_batches = batches is not None
    if batches is None:
        stats = ListingStats()
        batches = iter_batches(ctx.source, ctx.listing, params.batch_size, stats)
    elif stats is None:
        raise ValueError("pass the ListingStats that the given batches fill")
    in_flight: list[Handle] = []
    dispatched = 0
    abort: BaseException | None = None
    screened: dict[int, BatchReport] = {}  # by batch number, until the rest of that batch reports

    def settle(report: BatchReport) -> None:
        part = screened.pop(report.number, None)
        if part is not None:
            report.absorb(part)
        summary.add(report)
        if on_report is not None:
            on_report(report, summary, dispatched)

    def collect(handle: Handle) -> None:
        nonlocal abort
        in_flight.remove(handle)
        try:
            report = handle.result()
        except AbortError as exc:
            abort = abort or exc
            return
        settle(report)

    def dispatch(
        work: Iterable[Any],
        send: Callable[[int, Any], Handle],
        screen: Callable[[int, Any], tuple[BatchReport | None, Any]] | None = None,
    ) -> None:
        nonlocal dispatched
        try:
            for payload in work:
                while len(in_flight) >= params.max_in_flight:
                    collect(wait_first(in_flight))
                if abort is not None:
                    break
                dispatched += 1
                if screen is not None:
                    part, payload = screen(dispatched, payload)
                    if not payload:  # nothing left to send: the screened part is the batch
                        if part is not None:
                            settle(part)
                        continue
                    if part is not None:
                        screened[dispatched] = part
                in_flight.append(send(dispatched, payload))
        except Exception:
            # the listing or a screen failed: let the batches already sent finish (they hold
            # pending ledger rows and upload jobs) before the caller releases the lease
            for handle in list(in_flight):
                with contextlib.suppress(Exception):
                    collect(handle)
            raise
        while in_flight:
            collect(wait_first(in_flight))

    finished = False
    try:
        dispatch(batches, submit, screen)
        if abort is None:  # grouped items: every member is staged once the listing is done
            group_sender = submit_groups or (lambda n, groups: _Done(guarded_group_batch(ctx, n, groups)))
            whole = explicit_batches  # a run that saw only some files completes groups from earlier runs
            dispatch(iter_group_batches(ctx, params.batch_size, whole=whole), group_sender)
        finished = True
    finally:
        if ctx.ledger is not None:  # before anyone asks what was not seen, and before the lease goes
            _flush_seen(ctx.ledger, raise_errors=finished and abort is None)
    summary.listed = stats.listed
    summary.skipped += stats.orphans
    if stats.orphans:
        summary.skip_reasons[ORPHAN_REASON] = stats.orphans
    summary.dead_letter = ctx.dead_letters.location
    if abort is not None:
        raise abort
    return summary


def _flush_seen(ledger: Ledger, *, raise_errors: bool) -> None:
    """Wait for the screen's seen marks; their failure fails a run that went well, and is only
    logged when the run is failing anyway (its own error is the one to report)."""
    try:
        ledger.flush_seen()
    except Exception as exc:
        if raise_errors:
            raise
        log.warning("seen marks not written: %s: %s", type(exc).__name__, exc)


class _Done:
    """A handle for work already done inline."""

    def __init__(self, report: BatchReport) -> None:
        self.report = report

    def result(self) -> BatchReport:
        return self.report


def detect_deleted(ctx: RunContext, params: IngestParams, summary: RunSummary) -> list[str]:
    """After a complete listing: ledger rows this run did not see are gone from the source.

    They are marked `deleted` in the ledger, counted in the summary and, with `flag_deleted`,
    flagged in their Encord item's clientMetadata. Rows outside the current filters are left alone,
    and so is everything when a batch failed whole (its objects may not be marked seen).
    Returns a sample of the URLs for the run report.
    """
    if ctx.ledger is None or not params.report_deleted:
        return []
    if summary.batch_errors:  # their objects were listed, but may never have been marked seen
        log.warning("%d batches failed: objects gone from %s are not looked for in this run", summary.batch_errors,
                    ctx.source.id)  # fmt: skip
        return []
    sample: list[str] = []
    accepts = ctx.listing.key_filter.accepts
    for page in ctx.ledger.unseen(ctx.source.id, ctx.run_id):
        gone = [r for r in page if r["key"].startswith(ctx.source.prefix) and accepts(ctx.source.relative(r["key"]))]
        if not gone:
            continue
        if params.flag_deleted and ctx.uploader is not None:
            with_items = [r["data_hash"] for r in gone if r["data_hash"] and r["state"] == "registered"]
            ctx.uploader.flag_items(with_items, params.flag_deleted)
        ctx.ledger.mark_deleted([r["url"] for r in gone], ctx.run_id)
        summary.deleted += len(gone)
        sample.extend(r["url"] for r in gone[: max(0, 20 - len(sample))])
    if summary.deleted:
        log.warning("%d objects listed before are gone from %s (marked deleted in the ledger)", summary.deleted,
                    ctx.source.id)  # fmt: skip
    return sample


def new_run_id() -> str:
    return os.environ.get("ENCORD_INGEST_RUN_ID") or str(uuid.uuid4())


def require(params: IngestParams, *names: str) -> None:
    missing = [n for n in names if not getattr(params, n)]
    if missing:
        raise UsageError("missing " + ", ".join(f"--{n}" for n in missing))
