"""The ledger on SQLite and on the machine's real PostgreSQL: migrations, rows, leases."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from encord_ingest.errors import LedgerLockedError
from integrations.ledger import SCHEMA_VERSION, Ledger, State, _v1


@pytest.fixture(params=["sqlite", "postgresql"])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "ledger.db")
    return request.getfixturevalue("postgres_url")


def row(url: str, state: str = State.REGISTERED, **extra: object) -> dict:
    return {"url": url, "source": "s3://b/p/", "key": url.removeprefix("s3://b/"), "state": state, **extra}


def test_rows_round_trip_and_seen_tracking(location: str) -> None:
    ledger = Ledger(location)
    try:
        assert ledger.version == SCHEMA_VERSION
        ledger.record(
            [row("s3://b/p/a", fingerprint="f1", data_hash="u1"), row("s3://b/p/b", State.FAILED)], run_id="r1"
        )
        got = ledger.lookup(["s3://b/p/a", "s3://b/p/b", "s3://b/p/zzz"])
        assert set(got) == {"s3://b/p/a", "s3://b/p/b"}
        assert got["s3://b/p/a"].fingerprint == "f1" and got["s3://b/p/a"].data_hash == "u1"
        # run r2 sees only a (without rewriting it): b is unseen and can be marked deleted
        ledger.record([], seen=["s3://b/p/a"], run_id="r2")
        unseen = [r["url"] for page in ledger.unseen("s3://b/p/", "r2") for r in page]
        assert unseen == ["s3://b/p/b"]
        ledger.mark_deleted(unseen, "r2")
        assert ledger.counts_by_state() == {State.REGISTERED: 1, State.DELETED: 1}
        assert [r["url"] for page in ledger.unseen("s3://b/p/", "r2") for r in page] == []
        ledger.set_job(["s3://b/p/a"], "job-1")
        assert ledger.lookup(["s3://b/p/a"])["s3://b/p/a"].job_id == "job-1"
    finally:
        ledger.close()


@pytest.mark.parametrize("json_rows", [True, False], ids=["json-rows", "cursor-rows"])
def test_lookup_finds_exactly_the_urls_asked_for_whatever_lies_between_them(location: str, json_rows: bool) -> None:
    """Batch-sized lookups (a key range on SQLite, read as JSON columns where SQLite has them):
    rows between the asked URLs are not returned, rows far apart still are, byte order (non-ASCII,
    case, punctuation) loses none, and every column comes back as it was written."""
    ledger = Ledger(location)
    try:
        ledger._json_each = ledger._json_each and json_rows
        odd = ["IMG/Z.jpg", "img/\u00e9t\u00e9.jpg", "img-x/a b.jpg", 'img/q"uote\\back.jpg', "img/ctl-\x01\n.jpg"]
        names = [f"img/{i:05d}.jpg" for i in range(3000)] + odd
        urls = [f"s3://b/p/{n}" for n in names]
        for i in range(0, len(urls), 1000):
            chunk = urls[i : i + 1000]
            ledger.record([row(u, fingerprint=f"fp-{u}", attempts=len(u) % 7, transient=len(u) % 2 < 1) for u in chunk])
        batches = {
            "contiguous": urls[100:1100],
            "every third": urls[0:3000:3][:1000],
            "far apart": urls[:20] + urls[2980:] + ["s3://b/p/missing-1", "s3://b/p/zz-missing"],
            "unsorted": list(reversed(urls[500:540])) + urls[-3:],
        }
        for label, asked in batches.items():
            got = ledger.lookup(asked)
            expected = {u for u in asked if u in set(urls)}
            assert set(got) == expected, label
            assert all(got[u].fingerprint == f"fp-{u}" for u in expected), label
            assert all(got[u].attempts == len(u) % 7 and got[u].transient is (len(u) % 2 < 1) for u in expected), label
        assert set(ledger.lookup([f"s3://b/p/{n}" for n in odd] + urls[:20])) >= {f"s3://b/p/{n}" for n in odd}
    finally:
        ledger.close()


@pytest.mark.parametrize("json_rows", [True, False], ids=["json-rows", "cursor-rows"])
def test_settled_is_what_the_batch_would_skip_from_its_rows(location: str, json_rows: bool) -> None:
    """settled() == the (url, fingerprint) of looked-up rows that are registered or skipped and not
    registered group members: for batch-sized asks (a key range on SQLite) with other rows in
    between, for small ones, and for URLs that have no row."""
    ledger = Ledger(location)
    try:
        ledger._json_each = ledger._json_each and json_rows
        states = [State.REGISTERED, State.SKIPPED, State.PENDING, State.FAILED, State.DELETED]
        rows = []
        for i in range(1500):
            state = states[i % len(states)]
            group = f"series-{i % 4}" if i % 3 == 0 else ""
            rows.append(row(f"s3://b/p/{i:05d}.dcm", state, fingerprint=f"fp-{i}", group_key=group))
        ledger.record(rows, run_id="r1")
        urls = [r["url"] for r in rows]
        asks = {
            "range, every other": [*urls[0:1400:2], "s3://b/p/00001.dcm-missing"],
            "small": urls[5:12],
            "far apart": urls[:30] + urls[-30:],
            "none known": [f"s3://b/q/{i}" for i in range(40)],
        }
        for label, asked in asks.items():
            expected = {
                (url, r.fingerprint)
                for url, r in ledger.lookup(asked).items()
                if r.state in (State.REGISTERED, State.SKIPPED) and not (r.group_key and r.state == State.REGISTERED)
            }
            assert ledger.settled(asked) == expected, label
        assert ledger.settled(urls[:400]), "the asks above must not all be empty"
        assert ledger.settled([]) == set()
    finally:
        ledger.close()


@pytest.mark.parametrize("json_each", [True, False])
def test_seen_marks_exactly_the_listed_urls_with_or_without_json_each(tmp_path: Path, json_each: bool) -> None:
    """SQLite marks seen URLs with one JSON parameter where it can, with IN lists where it cannot;
    either way exactly those rows count as seen (quotes and non-ASCII included)."""
    ledger = Ledger(str(tmp_path / "ledger.db"))
    try:
        assert ledger._json_each, "this machine's SQLite has the JSON functions"
        ledger._json_each = json_each
        names = [f"{i:05d}.jpg" for i in range(6000)] + ['q"uote.jpg', "\u00e9t\u00e9.jpg", "a b\\c.jpg"]
        ledger.record([row(f"s3://b/p/{n}") for n in names], run_id="r1")
        seen = [f"s3://b/p/{n}" for n in names if not n.startswith("0001")]
        ledger.record([], seen=seen, run_id="r2")  # more than one 5,000-URL chunk
        unseen = [r["url"] for page in ledger.unseen("s3://b/p/", "r2") for r in page]
        assert unseen == sorted(f"s3://b/p/{n}" for n in names if n.startswith("0001"))
    finally:
        ledger.close()


def test_lease_blocks_a_second_run_and_is_released(location: str) -> None:
    one, two = Ledger(location), Ledger(location)
    try:
        with one.lease("s3://b/p/", "run-1"):
            with pytest.raises(LedgerLockedError, match="run-1"):
                two.acquire("s3://b/p/", "run-2")
            two.acquire("s3://b/other/", "run-2")  # another source is free
        two.acquire("s3://b/p/", "run-2")
    finally:
        one.close()
        two.close()


def test_lease_of_a_dead_process_on_this_host_is_taken_over(location: str) -> None:
    code = (
        "import os, sys; from integrations.ledger import Ledger; "
        f"Ledger({location!r}).acquire('s3://b/p/', 'run-dead', ttl=3600); os._exit(0)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    ledger = Ledger(location)
    try:
        ledger.acquire("s3://b/p/", "run-next")  # the holder's pid is gone: no need to wait an hour
    finally:
        ledger.close()


def test_a_version_1_ledger_is_migrated_in_place(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    engine = create_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE ledger_version (version INTEGER PRIMARY KEY)"))
        _v1(conn)
        conn.execute(text("INSERT INTO ledger_version VALUES (1)"))
        conn.execute(
            text(
                "INSERT INTO objects VALUES ('s3://b/x', 's3://b/', 'x', 'e', 1, 'fp', 'mh', 'u', 'image', "
                "'registered', 1, '', 0, '', 'r0', '2026-01-01T00:00:00+00:00')"
            )
        )
    engine.dispose()
    ledger = Ledger(str(path))
    try:
        assert ledger.version == SCHEMA_VERSION == 4
        assert ledger.lookup(["s3://b/x"])["s3://b/x"].fingerprint == "fp"
        with ledger.engine.connect() as conn:  # v4 dropped the index each run's last_seen write paid for
            indexes = {r[0] for r in conn.exec_driver_sql("SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert "ix_objects_source" in indexes and "ix_objects_source_seen" not in indexes
        ledger.acquire("s3://b/", "r1")  # the v2 leases table exists
    finally:
        ledger.close()


def test_the_flow_screen_drops_only_what_the_batch_task_would_skip_as_unchanged(tmp_path: Path) -> None:
    """Registered or skipped rows with the same fingerprint leave (and are marked seen); pending
    rows (to reconcile), dead letters, registered group members, changed objects and new ones stay."""
    from encord_ingest.models import Entry, ObjectRef
    from tasks.batch import UNCHANGED, drop_unchanged
    from tasks.run import IngestParams, open_context

    src = tmp_path / "src"
    src.mkdir()
    params = IngestParams(source=str(src), ledger=str(tmp_path / "ledger.db"), state_dir=str(tmp_path / "state"))
    names = ["done", "skipped", "pending", "failed", "member", "changed", "new"]
    entries = [Entry(ObjectRef(f"{n}.jpg", 10, f"etag-{n}", "", "t")) for n in names]
    with open_context(params, run_id="r2", uploader_factory=lambda: object(), use_ledger=True) as ctx:
        assert ctx.ledger is not None
        store = ctx.source.store
        cheap = ctx.plan.cheap(entries, ctx.source.relative)
        salt = ctx.plan.digest + ctx.schema.digest
        prints = {e.obj.key: ctx.plan.fingerprint(e, c, salt) for e, c in zip(entries, cheap, strict=True)}
        states = {
            "done": State.REGISTERED,
            "skipped": State.SKIPPED,
            "pending": State.PENDING,
            "failed": State.FAILED,
            "member": State.REGISTERED,
            "changed": State.REGISTERED,
        }
        rows = []
        for name, state in states.items():
            key = f"{name}.jpg"
            rows.append(
                {
                    "url": store.url_for(key),
                    "source": ctx.source.id,
                    "key": key,
                    "state": state,
                    "fingerprint": "old" if name == "changed" else prints[key],
                    "group_key": "series-1" if name == "member" else "",
                }
            )
        ctx.ledger.record(rows, run_id="r1")
        report, left = drop_unchanged(ctx, 7, entries)
        ctx.ledger.flush_seen()  # the marks are written behind the listing; drive flushes them so
        assert [e.obj.key for e in left] == ["pending.jpg", "failed.jpg", "member.jpg", "changed.jpg", "new.jpg"]
        assert report is not None
        assert (report.number, report.listed, report.skipped, report.skip_reasons) == (7, 2, 2, {UNCHANGED: 2})
        unseen = {r["key"] for page in ctx.ledger.unseen(ctx.source.id, "r2") for r in page}
        assert unseen == {"pending.jpg", "failed.jpg", "member.jpg", "changed.jpg"}, "dropped rows are marked seen"
        ctx.uploader = None  # manifest-only runs have no ledger rows to trust: nothing is screened
        assert drop_unchanged(ctx, 8, entries) == (None, entries)


def test_a_failing_listing_lets_the_batches_already_sent_finish_first(tmp_path: Path) -> None:
    """drive() does not return (and the caller does not release the lease) while batches still run."""
    import threading
    import time
    from concurrent.futures import Future, ThreadPoolExecutor
    from types import SimpleNamespace
    from typing import Any

    from encord_ingest.errors import AbortError
    from tasks.batch import BatchReport
    from tasks.listing import ListingStats
    from tasks.run import IngestParams, drive

    finished = threading.Event()

    def slow_batch(number: int) -> BatchReport:
        time.sleep(0.5)
        finished.set()
        return BatchReport(number=number, listed=1)

    def batches() -> Any:
        yield ["first"]
        raise AbortError("S3 unreachable for bucket 'b' mid-listing")

    params = IngestParams(source=str(tmp_path), max_in_flight=4)
    ctx: Any = SimpleNamespace(run_id="r", ledger=None)
    with ThreadPoolExecutor(2) as pool:

        def submit(number: int, entries: list[Any]) -> Future[BatchReport]:
            return pool.submit(slow_batch, number)

        with pytest.raises(AbortError):
            drive(ctx, params, submit=submit, wait_first=lambda h: h[0], batches=batches(), stats=ListingStats())
        assert finished.is_set(), "drive raised while a batch was still running"
