"""Seen marks written behind the listing: in order, coalesced, failures surfaced, and complete
before a run asks what it did not see; and no object is called deleted because a batch failed."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from integrations.ledger import seen
from integrations.ledger.seen import SeenWriter


class Recorder:
    """A write function that can be held back, like a slow disk."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], str]] = []
        self.release = threading.Event()
        self.release.set()
        self.entered = threading.Event()

    def __call__(self, urls: list[str], run_id: str) -> None:
        self.entered.set()
        self.release.wait(10)
        self.calls.append((list(urls), run_id))


def test_marks_are_written_in_order_and_what_queues_up_meanwhile_goes_out_as_one_write() -> None:
    rec = Recorder()
    writer = SeenWriter(rec)
    try:
        rec.release.clear()
        writer.mark(["a", "b"], "r1")
        assert rec.entered.wait(5)  # the first write is under way and held
        for name in ("c", "d", "e"):
            writer.mark([name], "r1")
        writer.mark(["x"], "r2")  # another run's marks are never merged into r1's
        writer.mark(["f"], "r1")
        rec.release.set()
        writer.flush()
        assert rec.calls == [(["a", "b"], "r1"), (["c", "d", "e"], "r1"), (["x"], "r2"), (["f"], "r1")]
        writer.mark([], "r1")  # nothing to write: no call
        writer.flush()
        assert len(rec.calls) == 4
    finally:
        writer.close()


def test_a_write_that_keeps_failing_is_raised_by_flush_and_by_the_next_mark_and_nothing_after_it_is_written() -> None:
    calls: list[list[str]] = []

    def write(urls: list[str], run_id: str) -> None:
        calls.append(urls)
        if "bad" in urls:
            raise OSError("disk full")

    writer = SeenWriter(write, retry_wait=0)
    try:
        writer.mark(["bad"], "r1")
        with pytest.raises(OSError, match="disk full"):
            writer.flush()
        with pytest.raises(OSError, match="disk full"):
            writer.mark(["later"], "r1")
        assert calls == [["bad"]] * seen.ATTEMPTS, "tried ATTEMPTS times, then nothing more"
    finally:
        writer.close()


def test_a_write_that_fails_once_is_tried_again() -> None:
    calls: list[list[str]] = []

    def write(urls: list[str], run_id: str) -> None:
        calls.append(urls)
        if len(calls) == 1:
            raise OSError("database is locked")

    writer = SeenWriter(write, retry_wait=0)
    try:
        writer.mark(["a"], "r1")
        writer.flush()
        assert calls == [["a"], ["a"]]
    finally:
        writer.close()


def test_close_writes_what_was_handed_over_and_refuses_marks_after_it() -> None:
    rec = Recorder()
    writer = SeenWriter(rec)
    rec.release.clear()
    writer.mark(["a"], "r1")
    writer.mark(["b"], "r1")
    rec.release.set()
    writer.close()
    assert [u for urls, _ in rec.calls for u in urls] == ["a", "b"]
    with pytest.raises(RuntimeError, match="closed"):
        writer.mark(["c"], "r1")


def test_close_gives_up_on_a_write_that_hangs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(seen, "CLOSE_WAIT", 0.2)
    rec = Recorder()
    writer = SeenWriter(rec)
    rec.release.clear()  # a write that never returns (a stuck connection)
    for i in range(seen.MAX_PENDING + 1):  # one under way, the queue full behind it
        writer.mark([str(i)], "r1")
    started = time.monotonic()
    writer.close()
    assert time.monotonic() - started < 5
    rec.release.set()


def registered_bucket(tmp_path: Path, *, fingerprints: bool) -> Any:
    """30 local files whose ledger rows say registered (by run r1), with their current fingerprints
    (nothing changed) or with stale ones (every object changed); returns the run's IngestParams."""
    from integrations.ledger import State
    from tasks.listing import ListingStats, iter_batches
    from tasks.run import IngestParams, open_context

    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    for i in range(30):
        (src / "a" / f"{i:02d}.jpg").write_bytes(b"jpeg")
    params = IngestParams(
        source=str(src), ledger=str(tmp_path / "ledger.db"), state_dir=str(tmp_path / "state"), batch_size=10
    )
    with open_context(params, run_id="r1", uploader_factory=lambda: object(), use_ledger=True) as ctx:
        assert ctx.ledger is not None
        salt = ctx.plan.digest + ctx.schema.digest
        rows = []
        for batch in iter_batches(ctx.source, ctx.listing, 10, ListingStats()):
            cheap = ctx.plan.cheap(batch, ctx.source.relative)
            for entry, c in zip(batch, cheap, strict=True):
                key = entry.obj.key
                url = ctx.source.store.url_for(key)
                fingerprint = ctx.plan.fingerprint(entry, c, salt) if fingerprints else "stale"
                rows.append({"url": url, "source": ctx.source.id, "key": key, "state": State.REGISTERED,
                             "fingerprint": fingerprint})  # fmt: skip
        ctx.ledger.record(rows, run_id="r1")
    assert len(rows) == 30
    return params


def slow_seen_marks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ledger writes of seen marks alone take 0.3 s each, like a slow disk."""
    from integrations.ledger import Ledger

    record = Ledger.record

    def slow(self: Ledger, rows: Any, *, seen: Any = (), run_id: str = "") -> None:
        if seen and not rows:
            time.sleep(0.3)
        record(self, rows, seen=seen, run_id=run_id)

    monkeypatch.setattr(Ledger, "record", slow)


def test_a_no_change_run_finds_nothing_deleted_even_when_its_seen_marks_are_slow(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`drive` flushes the screen's marks before it returns, so deletion detection right after it
    sees every listed object; with the marks still on their way it would call them all deleted."""
    from tasks.batch import drop_unchanged
    from tasks.run import RunSummary, detect_deleted, drive, open_context

    params = registered_bucket(tmp_path, fingerprints=True)
    slow_seen_marks(monkeypatch)

    def submit(number: int, entries: list[Any]) -> Any:
        raise AssertionError(f"batch {number}: nothing changed, nothing should be sent")

    with open_context(params, run_id="r2", uploader_factory=lambda: object(), use_ledger=True) as ctx:
        summary = drive(
            ctx, params, submit=submit, wait_first=lambda handles: handles[0],
            screen=lambda number, entries: drop_unchanged(ctx, number, entries),
        )  # fmt: skip
        assert (summary.listed, summary.skipped) == (30, 30)
        assert detect_deleted(ctx, params, RunSummary(run_id="r2")) == []


def test_objects_of_a_batch_that_failed_whole_are_not_called_deleted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch that dies on an unexpected error is dead-lettered without its ledger rows being
    touched: the run then does not look for deleted objects, which would name all of them."""
    import tasks.run
    from integrations.ledger import State
    from tasks.batch import drop_unchanged
    from tasks.run import _Done, detect_deleted, drive, guarded_batch, open_context

    params = registered_bucket(tmp_path, fingerprints=False)  # every object changed: all go to batches

    def broken(ctx: Any, number: int, entries: list[Any]) -> Any:
        if number == 2:
            raise RuntimeError("the metadata service fell over")
        return real(ctx, number, entries)

    real = tasks.run.process_batch
    monkeypatch.setattr(tasks.run, "process_batch", broken)
    with open_context(params, run_id="r2", uploader_factory=lambda: None, use_ledger=True) as ctx:
        assert ctx.ledger is not None
        summary = drive(
            ctx, params, submit=lambda number, entries: _Done(guarded_batch(ctx, number, entries)),
            wait_first=lambda handles: handles[0],
            screen=lambda number, entries: drop_unchanged(ctx, number, entries),
        )  # fmt: skip
        assert (summary.listed, summary.failed, summary.batch_errors) == (30, 10, 1)
        assert detect_deleted(ctx, params, summary) == []
        assert State.DELETED not in ctx.ledger.counts_by_state()


def test_a_failing_run_has_written_its_seen_marks_when_drive_raises(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lease is let go right after `drive` raises: a seen mark landing later would be taken for
    the next run's, and that run would call its objects deleted. So the marks are in already."""
    import tasks.run
    from tasks.batch import drop_unchanged
    from tasks.run import drive, open_context

    params = registered_bucket(tmp_path, fingerprints=True)
    slow_seen_marks(monkeypatch)
    listing = tasks.run.iter_batches

    def listing_that_breaks(*args: Any, **kwargs: Any) -> Any:
        for number, batch in enumerate(listing(*args, **kwargs), start=1):
            if number == 3:
                raise ConnectionError("the bucket went away")
            yield batch

    monkeypatch.setattr(tasks.run, "iter_batches", listing_that_breaks)
    with open_context(params, run_id="r2", uploader_factory=lambda: object(), use_ledger=True) as ctx:
        assert ctx.ledger is not None
        with pytest.raises(ConnectionError):
            drive(
                ctx, params, submit=lambda number, entries: pytest.fail("nothing changed"),
                wait_first=lambda handles: handles[0],
                screen=lambda number, entries: drop_unchanged(ctx, number, entries),
            )  # fmt: skip
        with ctx.ledger.engine.connect() as conn:
            marked = conn.exec_driver_sql("SELECT count(*) FROM objects WHERE last_seen = 'r2'").scalar()
        assert marked == 20, "the two batches screened before the listing broke are marked seen"
