"""Scale-out: shard planning, S3 Inventory reading, the parent's re-run logic, Encord API limits,
Dask batch tasks, and one sharded ingestion over two Prefect workers with one of them killed.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import logging
import os
import signal
import time
import tracemalloc
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import requests

from encord_ingest.errors import ConfigError
from encord_ingest.models import ObjectRef
from flows.shard import Attempt, dispatch
from integrations import servers
from integrations.ledger import Ledger
from integrations.servers import KeyPair, Proc, start_emulator
from integrations.storage import open_source
from integrations.storage.file import FileStore
from tasks import inventory as inv
from tasks.listing import ListingOptions, ListingStats, iter_batches
from tasks.shards import ShardSpec, plan_listing, plan_ranges, shard_pages
from tests.conftest import REPO, deploy, deployment_env

CSV_SCHEMA = "Bucket, Key, VersionId, IsLatest, IsDeleteMarker, Size, LastModifiedDate, ETag, StorageClass"


# -- shard planning -----------------------------------------------------------------------------------
def _tree(root: Path, keys: list[str]) -> FileStore:
    for key in keys:
        path = root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    return FileStore(root)


def _covered(store: FileStore, shards: list[ShardSpec], root: str) -> list[str]:
    source = open_source(store.bucket)
    source.prefix = root
    return [r.key for s in shards for page in shard_pages(source, s) for r in page]


TREE = [
    "data/a/1.jpg", "data/a/1.jpg.json", "data/a/x/2.jpg", "data/b/3.jpg", "data/b/4.png",
    "data/c/d/5.jpg", "data/c/e/6.jpg", "data/top.jpg", "data/top.jpg.json", "other/7.jpg",
]  # fmt: skip


def test_prefix_planning_splits_levels_and_covers_every_key_once(tmp_path: Path) -> None:
    store = _tree(tmp_path, TREE)
    shards = plan_listing(store, "data/", 4)
    assert [(s.kind, s.prefix) for s in shards] == [
        ("level", "data/"), ("prefix", "data/a/"), ("prefix", "data/b/"), ("prefix", "data/c/"),
    ]  # fmt: skip
    keys = _covered(store, shards, "data/")
    assert sorted(keys) == sorted(k for k in TREE if k.startswith("data/"))
    assert len(keys) == len(set(keys)), "a key in two shards"
    assert len({s.scope for s in shards}) == len(shards), "shards share a lease"

    deeper = plan_listing(store, "data/", 6)  # a, b, c expanded further where they have sub-prefixes
    assert ("prefix", "data/c/d/") in [(s.kind, s.prefix) for s in deeper]
    assert sorted(_covered(store, deeper, "data/")) == sorted(keys)
    assert plan_listing(store, "data/", 1) == [ShardSpec(kind="prefix", prefix="data/")]


def test_a_level_too_wide_to_list_cheaply_stays_one_shard(tmp_path: Path) -> None:
    _tree(tmp_path, [f"flat/{i:03}.jpg" for i in range(5)] + ["flat/sub/1.jpg"])

    class Paged(FileStore):
        def list_level(self, prefix: str):  # type: ignore[no-untyped-def]
            for prefixes, objects in super().list_level(prefix):
                for obj in objects:
                    yield [], [obj]
                yield prefixes, []

    shards = plan_listing(Paged(tmp_path), "flat/", 8, max_level_pages=3)
    assert shards == [ShardSpec(kind="prefix", prefix="flat/")]


def test_key_ranges_are_cut_at_directories_and_never_split_a_sidecar() -> None:
    points = ["r/a/001.jpg", "r/a/500.jpg", "r/b/001.jpg", "r/c/017.jpg", "r/c/017.jpg.json", "r/d/9.jpg"]
    shards = plan_ranges(points, "r/", 4)
    assert [(s.start, s.end) for s in shards] == [("", "r/b/"), ("r/b/", "r/c/"), ("r/c/", "r/d/"), ("r/d/", "")]
    flat = plan_ranges(["f/0001.jpg", "f/0002.jpg.json", "f/0003.jpg"], "f/", 3)  # one directory: cut at stems
    assert [(s.start, s.end) for s in flat] == [("", "f/0002."), ("f/0002.", "f/0003."), ("f/0003.", "")]
    keys = ["f/0001.jpg", "f/0002.jpg", "f/0002.jpg.json", "f/0003.jpg"]
    owners = [[s for s in flat if s.start <= k and (not s.end or k < s.end)] for k in keys]
    assert all(len(o) == 1 for o in owners) and owners[1] == owners[2]


# -- S3 Inventory --------------------------------------------------------------------------------------
def _seed_source(s3: Any, bucket: str) -> list[str]:
    s3.create_bucket(Bucket=bucket)
    keys = [f"img/{d}/{i:03} x+y.jpg" for d in "abc" for i in range(4)] + ["img/a/000 x+y.jpg.json", "other/z.jpg"]
    for key in keys:
        s3.put_object(Bucket=bucket, Key=key, Body=key.encode() * 3)
    return keys


def _listed(s3: Any, bucket: str, prefix: str) -> list[ObjectRef]:
    source = open_source(f"s3://{bucket}/{prefix}")
    source.store.client = s3
    return [r for page in source.store.list_pages(prefix) for r in page]


def _rows(s3: Any, bucket: str) -> list[dict[str, Any]]:
    """What S3 Inventory reports for the bucket: every object, plus a delete marker and an old version."""
    out = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            modified = obj["LastModified"]
            out.append({"bucket": bucket, "key": obj["Key"], "size": obj["Size"], "e_tag": obj["ETag"].strip('"'),
                        "last_modified_date": modified, "is_latest": True, "is_delete_marker": False})  # fmt: skip
    out.append({**out[0], "key": "img/a/gone.jpg", "is_delete_marker": True, "size": None})
    out.append({**out[1], "is_latest": False, "e_tag": "old"})
    return sorted(out, key=lambda r: (r["key"], r["is_latest"]))


def _csv_gz(rows: list[dict[str, Any]]) -> bytes:
    text = io.StringIO()
    for r in rows:
        when = r["last_modified_date"].strftime("%Y-%m-%dT%H:%M:%S.000Z")
        flags = [str(r["is_latest"]).lower(), str(r["is_delete_marker"]).lower()]
        values = [r["bucket"], quote_plus(r["key"], safe="/"), "v1", *flags, r["size"] or "", when, r["e_tag"], "STD"]
        text.write(",".join(f'"{v}"' for v in values) + "\n")
    return gzip.compress(text.getvalue().encode())


MILLIS = pa.timestamp("ms")  # S3 Inventory writes TIMESTAMP_MILLIS without a zone


def _parquet(rows: list[dict[str, Any]], row_group: int) -> bytes:
    table = pa.table(
        {
            "bucket": [r["bucket"] for r in rows],
            "key": [r["key"] for r in rows],
            "size": pa.array([r["size"] for r in rows], pa.int64()),
            "last_modified_date": pa.array([r["last_modified_date"].replace(tzinfo=None) for r in rows], MILLIS),
            "e_tag": [r["e_tag"] for r in rows],
            "is_latest": [r["is_latest"] for r in rows],
            "is_delete_marker": [r["is_delete_marker"] for r in rows],
        }
    )
    out = io.BytesIO()
    pq.write_table(table, out, row_group_size=row_group)
    return out.getvalue()


def _publish(s3: Any, source: str, fmt: str, parts: list[bytes]) -> str:
    """An inventory as S3 writes it: data files and manifest.json in a destination bucket."""
    dest = f"inv-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=dest)
    base = f"reports/{source}/daily"
    files = []
    for i, body in enumerate(reversed(parts)):  # the manifest need not list files in key order
        key = f"{base}/data/{uuid.uuid4().hex}.{'csv.gz' if fmt == 'CSV' else 'parquet'}"
        s3.put_object(Bucket=dest, Key=key, Body=body)
        files.append({"key": key, "size": len(body), "MD5checksum": f"{i:032x}"})
    manifest = {"sourceBucket": source, "destinationBucket": f"arn:aws:s3:::{dest}", "version": "2016-11-30",
                "fileFormat": fmt, "fileSchema": CSV_SCHEMA if fmt == "CSV" else "message s3.inventory {}",
                "files": files}  # fmt: skip
    s3.put_object(Bucket=dest, Key=f"{base}/2026-01-01T00-00Z/manifest.json", Body=json.dumps(manifest).encode())
    return f"s3://{dest}/{base}/2026-01-01T00-00Z/manifest.json"


@pytest.mark.parametrize("fmt", ["CSV", "Parquet"])
def test_inventory_rows_are_the_listing(s3: Any, aws_in_environ: None, fmt: str) -> None:
    bucket = f"src-{uuid.uuid4().hex[:8]}"
    _seed_source(s3, bucket)
    rows = _rows(s3, bucket)
    half = len(rows) // 2
    parts = [rows[:half], rows[half:]]
    bodies = [_csv_gz(p) for p in parts] if fmt == "CSV" else [_parquet(p, row_group=3) for p in parts]
    report = inv.load_inventory(_publish(s3, bucket, fmt, bodies))
    assert report.source_bucket == bucket and len(report.files) == 2

    got = [r for page in inv.pages(report, bucket=bucket, prefix="img/", page_rows=4) for r in page]
    assert got == _listed(s3, bucket, "img/"), "same keys, sizes, ETags and dates as ListObjectsV2"

    stats = inv.InventoryStats()
    some = [r.key for p in inv.pages(report, bucket=bucket, prefix="img/", start="img/b/", end="img/c/", stats=stats)
            for r in p]  # fmt: skip
    assert some == [k.key for k in got if "img/b/" <= k.key < "img/c/"]
    if fmt == "Parquet":
        assert stats.row_groups_skipped > 0, "row groups outside the range are not read"

    # sidecar pairing over inventory pages works as over a listing
    source = open_source(f"s3://{bucket}/img/")
    pages = inv.pages(report, bucket=bucket, prefix="img/")
    batches = list(iter_batches(source, ListingOptions(), 100, ListingStats(), pages=pages))
    entries = [e for b in batches for e in b]
    paired = {e.obj.key: e.sidecar.key for e in entries if e.sidecar}
    assert paired == {"img/a/000 x+y.jpg": "img/a/000 x+y.jpg.json"}
    assert len(entries) == 12


def test_inventory_shards_cover_the_inventory_once(s3: Any, aws_in_environ: None) -> None:
    bucket = f"src-{uuid.uuid4().hex[:8]}"
    _seed_source(s3, bucket)
    rows = _rows(s3, bucket)
    report = inv.load_inventory(_publish(s3, bucket, "Parquet", [_parquet(rows, row_group=2)]))
    from tasks.shards import plan_inventory

    shards = plan_inventory(report, "img/", 3)
    assert len(shards) == 3 and shards[0].start == "" and shards[-1].end == ""
    source = open_source(f"s3://{bucket}/img/")
    keys = [r.key for s in shards for p in shard_pages(source, s, report) for r in p]
    assert keys == [r.key for r in _listed(s3, bucket, "img/")]


def test_inventory_streams_with_flat_memory(tmp_path: Path) -> None:
    """100k rows, read through ranged reads: memory stays near one page, not the report."""
    from datetime import UTC, datetime

    when = datetime(2026, 1, 1, tzinfo=UTC)
    rows = [{"bucket": "b", "key": f"k/{i:07}.jpg", "size": 10, "e_tag": f"{i:032x}", "last_modified_date": when,
             "is_latest": True, "is_delete_marker": False} for i in range(100_000)]  # fmt: skip
    (tmp_path / "data.csv.gz").write_bytes(_csv_gz(rows))
    manifest = {"sourceBucket": "b", "fileFormat": "CSV", "fileSchema": CSV_SCHEMA,
                "files": [{"key": "inv/data.csv.gz", "size": 0}]}  # fmt: skip
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    report = inv.load_inventory(str(tmp_path / "manifest.json"))
    tracemalloc.start()
    count = sum(len(p) for p in inv.pages(report, bucket="b", prefix="k/"))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert count == 100_000
    assert peak < 25 * 1024 * 1024, f"peak {peak / 2**20:.1f} MiB"


def test_bad_manifests_are_usage_errors(tmp_path: Path) -> None:
    (tmp_path / "m.json").write_text(json.dumps({"fileFormat": "ORC", "files": []}))
    with pytest.raises(ConfigError, match="fileFormat 'ORC'"):
        inv.load_inventory(str(tmp_path / "m.json"))
    (tmp_path / "n.json").write_text("{nope")
    with pytest.raises(ConfigError, match="not JSON"):
        inv.load_inventory(str(tmp_path / "n.json"))
    with pytest.raises(ConfigError, match="does not exist"):
        inv.load_inventory(str(tmp_path / "missing.json"))


# -- the parent's dispatch loop ---------------------------------------------------------------------------
def test_dispatch_reruns_crashed_and_failed_shards_a_bounded_number_of_times() -> None:
    shards = [ShardSpec(kind="prefix", prefix=p) for p in ("a/", "b/", "c/")]
    script = {"a/": ["COMPLETED"], "b/": ["CRASHED", "COMPLETED"], "c/": ["FAILED", "FAILED", "FAILED"]}
    runs: dict[str, tuple[str, str]] = {}
    submitted: list[tuple[str, int]] = []
    peak = [0]

    def submit(shard: ShardSpec, number: int) -> str:
        submitted.append((shard.prefix, number))
        run_id = f"{shard.prefix}{number}"
        runs[run_id] = ("RUNNING", "")
        return run_id

    def states(ids: list[str]) -> dict[str, tuple[str, str]]:
        peak[0] = max(peak[0], len(ids))
        out = {}
        for run_id in ids:
            prefix, number = run_id[:2], int(run_id[2:])
            out[run_id] = (script[prefix][number - 1], "boom")
        return out

    def stale(attempt: Attempt, state: str) -> str | None:
        return None

    outcome = dispatch(shards, submit, states, stale=stale, max_attempts=3, max_running=2, poll=0, sleep=lambda s: None)
    assert sorted(outcome.done) == ["#prefix:a/", "#prefix:b/"]
    assert list(outcome.failed) == ["#prefix:c/"] and outcome.failed["#prefix:c/"][1] == "FAILED: boom"
    assert sorted(submitted) == [("a/", 1), ("b/", 1), ("b/", 2), ("c/", 1), ("c/", 2), ("c/", 3)]
    assert outcome.retried == 3 and peak[0] <= 2


def test_dispatch_treats_a_stale_run_as_crashed() -> None:
    seen: list[str] = []

    def states(ids: list[str]) -> dict[str, tuple[str, str]]:
        return {i: ("RUNNING" if i == "x1" else "COMPLETED", "") for i in ids}

    def stale(attempt: Attempt, state: str) -> str | None:
        seen.append(attempt.run_id)
        return "lease expired" if attempt.run_id == "x1" else None

    outcome = dispatch([ShardSpec(kind="level", prefix="x/")], lambda s, n: f"x{n}", states, stale=stale,
                       max_attempts=2, max_running=4, poll=0, sleep=lambda s: None)  # fmt: skip
    assert list(outcome.done) == ["#level:x/"] and outcome.done["#level:x/"].run_id == "x2"
    assert seen == ["x1"] and outcome.retried == 1


def test_a_running_shard_that_never_began_its_ledger_run_and_waits_for_no_lease_counts_as_not_started(
    tmp_path: Path,
) -> None:
    """What the parent takes, when it lasts, for a shard run killed between Running and its lease."""
    from flows.shard import _running_shard

    ledger = Ledger(str(tmp_path / "ledger.db"))
    try:
        scope = "s3://b/data/#prefix:data/s2/"
        assert _running_shard(ledger, scope, "attempt-1") == "not started", "no ledger run, no lease anywhere"
        ledger.acquire(scope, "attempt-0", ttl=120)
        assert _running_shard(ledger, scope, "attempt-1") == "alive", "waiting for an earlier attempt's live lease"
        ledger.release(scope, "attempt-0")
        ledger.acquire(scope, "attempt-0", ttl=-1)  # an earlier attempt's lease that ran out
        assert _running_shard(ledger, scope, "attempt-1") == "not started"
        assert _running_shard(ledger, scope, "attempt-0") == "lease expired", "its own lease ran out"
        ledger.start_run("attempt-1", scope, "folder")
        assert _running_shard(ledger, scope, "attempt-1") == "alive", "it began its ledger run"
    finally:
        ledger.close()


# -- Encord API limits shared through Prefect ----------------------------------------------------------------
def test_throttle_is_off_by_default_and_paces_calls_when_the_limit_exists(
    prefect_api: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import time

    from integrations.encord import throttle

    def call() -> int:
        return 1

    monkeypatch.delenv(throttle.RATE_ENV, raising=False)
    monkeypatch.delenv(throttle.CONCURRENCY_ENV, raising=False)
    assert throttle.throttled(call) is call, "no limit configured: no Prefect call at all"

    name = f"missing-{uuid.uuid4().hex[:6]}"
    monkeypatch.setenv(throttle.RATE_ENV, name)
    with caplog.at_level(logging.WARNING, logger="encord_ingest.encord"):
        assert [throttle.throttled(call)() for _ in range(3)] == [1, 1, 1]
    assert sum(name in r.getMessage() for r in caplog.records) == 1, "a missing limit is reported once"

    rate, slots = f"rps-{uuid.uuid4().hex[:6]}", f"jobs-{uuid.uuid4().hex[:6]}"
    done = throttle.ensure_limits(rate=4, concurrency=2, rate_name=rate, concurrency_name=slots)
    assert len(done) == 2 and "created" in done[0]
    assert "updated" in throttle.ensure_limits(rate=4, concurrency=2, rate_name=rate, concurrency_name=slots)[0]
    monkeypatch.setenv(throttle.RATE_ENV, rate)
    monkeypatch.setenv(throttle.CONCURRENCY_ENV, slots)
    start = time.monotonic()
    assert [throttle.throttled(call, hold=True)() for _ in range(10)] == [1] * 10
    assert time.monotonic() - start > 1.0, "10 calls at 4/s with a burst of 4 take over a second"


# -- Dask batch tasks ------------------------------------------------------------------------------------
def test_remote_context_travels_as_params_and_is_rebuilt(tmp_path: Path) -> None:
    import cloudpickle

    from flows import shard as shard_flow
    from tasks.run import IngestParams, open_context

    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.jpg").write_bytes(b"x")
    params = IngestParams(source=str(tmp_path / "src"), ledger=str(tmp_path / "ledger.db"), state_dir=str(tmp_path),
                          ledger_scope="#prefix:x/")  # fmt: skip
    with open_context(params, run_id="r1", uploader_factory=None, use_ledger=True) as ctx:
        wrapped = shard_flow.remote(params)(ctx)
        assert wrapped.source is ctx.source and wrapped.ledger is ctx.ledger
        blob = cloudpickle.dumps(wrapped)
    assert len(blob) < 4096, "only params and the run id travel"
    os.environ.pop("ENCORD_SSH_KEY", None)
    shard_flow._contexts.clear()
    original = shard_flow.connect
    shard_flow.connect = lambda folder, integration: "uploader"  # type: ignore[assignment]
    try:
        rebuilt = cloudpickle.loads(blob)
        assert shard_flow._contexts == {}, "unpickling alone builds nothing"
        assert rebuilt.run_id == "r1" and rebuilt.uploader == "uploader"
        assert rebuilt.source.id.endswith("#prefix:x/") and rebuilt.ledger is rebuilt.staging is not None
    finally:
        shard_flow.connect = original  # type: ignore[assignment]
    again = cloudpickle.loads(cloudpickle.dumps(cloudpickle.loads(blob)))  # the scheduler may re-pickle it
    assert again.ledger is rebuilt.ledger, "one context per worker process and run"


# -- one sharded ingestion over two Prefect workers, one of them killed ------------------------------------
SHARDS = ("s0", "s1", "s2", "s3")
PER_SHARD = 32


@dataclass
class ScaleStack:
    server: Proc
    workers: list[Proc]
    emulator: Proc
    env: dict[str, str]
    bucket: str

    @property
    def api(self) -> str:
        return f"{self.server.url}/api"

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """Patient: a Prefect server on SQLite under this load can take long to answer."""
        for attempt in range(6):
            try:
                res = requests.request(method, f"{self.api}{path}", json=body, timeout=60)
                res.raise_for_status()
                return res.json() if res.content else None
            except (requests.ConnectionError, requests.Timeout):
                if attempt == 5:
                    raise
                time.sleep(2)
        return None

    def post(self, path: str, body: dict[str, Any]) -> Any:
        return self._call("POST", path, body)

    def get(self, path: str) -> Any:
        return self._call("GET", path)

    def runs(self, **flow_runs: Any) -> list[dict[str, Any]]:
        return self.post("/flow_runs/filter", {"flow_runs": flow_runs, "sort": "START_TIME_ASC"} if flow_runs else {})

    def worker_of(self, flow_run_id: str) -> Proc | None:
        """The worker whose process tree runs this flow run (the engine subprocess has its id in its env)."""
        for worker in self.workers:
            try:
                children = psutil.Process(worker.popen.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                continue
            for child in children:
                with contextlib.suppress(psutil.Error):
                    if child.environ().get("PREFECT__FLOW_RUN_ID") == flow_run_id:
                        return worker
        return None

    def logs(self) -> str:
        return "\n".join(f"--- worker {i}\n{w.tail(30)}" for i, w in enumerate(self.workers))


@pytest.fixture
def scale_stack(tmp_path: Path, aws: dict[str, str], keys: KeyPair, s3: Any) -> Iterator[ScaleStack]:
    bucket = f"scale-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    for shard in SHARDS:
        for i in range(PER_SHARD):
            s3.put_object(Bucket=bucket, Key=f"data/{shard}/{i:03}.jpg", Body=b"\xff\xd8" + bytes([i]))
        s3.put_object(Bucket=bucket, Key=f"data/{shard}/000.jpg.json", Body=json.dumps({"shard": shard}).encode())
    emulator = start_emulator(aws, "--authorized-key", str(keys.public), "--job-delay-seconds", "0.8")
    server = servers.start_prefect_server(tmp_path / "server")
    workers: list[Proc] = []
    try:
        env = deployment_env(aws, server, tmp_path, emulator.url, bucket, cron="0 0 1 1 *", query_seconds=2)
        env["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"] = "30"  # Prefect's minimum; --crash-after below allows 2.5 beats
        deploy(
            env,
            *("--encord-key-file", str(keys.private), "--api-rate", "40", "--api-concurrency", "6"),
            *("--crash-after", "75"),  # 45 s (1.5 beats) crashed a busy parent whose heartbeat came late on 2 cores
        )
        workers = [servers.start_prefect_worker(env, cwd=REPO, limit=3) for _ in range(2)]
        yield ScaleStack(server, workers, emulator, env, bucket)
    finally:
        for worker in workers:
            servers.stop_prefect_worker(worker)  # before the server: a worker that lost its server ignores SIGTERM
        server.stop()
        emulator.stop()


@pytest.mark.timeout(900)  # the kill, the lease wait and the re-run on a loaded 2-core machine
def test_sharded_ingest_survives_a_killed_worker(scale_stack: ScaleStack, postgres_url: str) -> None:
    stack, bucket = scale_stack, scale_stack.bucket
    started = time.monotonic()
    parent_dep = stack.get(f"/deployments/name/encord-ingest-sharded/{bucket}")
    params = {
        "source": f"s3://{bucket}/data/", "folder": f"folder-{bucket}", "integration": "local-aws",
        "metadata": ["sidecar"], "batch_size": 4, "max_in_flight": 1, "ledger": postgres_url,
        "state_dir": stack.env["ENCORD_INGEST_STATE_DIR"],
    }  # fmt: skip
    # Timings for loaded 2-core machines (this test failed 1 run in 3 there, before and after stop 15, with 45 s
    # and 240 s): a re-run claimed by the surviving worker can take long to start, and must not be taken for one
    # claimed by the dead worker; the killed shard's re-run waits out its lease (120 s) before it can go on.
    arguments = {"params": params, "shards": 4, "poll_seconds": 2, "pending_timeout": 120,
                 "encord_key_block": "encord-ssh-key"}  # fmt: skip
    parent = stack.post(f"/deployments/{parent_dep['id']}/create_flow_run", {"parameters": arguments})

    ledger = Ledger(postgres_url)
    victim: Proc | None = None
    killed_run = ""
    deadline = time.monotonic() + 150
    while victim is None:  # a shard running on the worker that does not run the parent, part-way through
        assert time.monotonic() < deadline, f"no shard mid-run on the other worker\n{stack.logs()}"
        parent_worker = stack.worker_of(parent["id"])
        for run in stack.runs(parent_flow_run_id={"any_": [parent["id"]]}) if parent_worker else []:
            shard = run["parameters"].get("shard") or {}
            if run["state_type"] != "RUNNING" or not shard:
                continue
            scope = f"s3://{bucket}/data/#prefix:{shard['prefix']}"
            done = ledger.counts_by_state(scope).get("registered", 0)
            worker = stack.worker_of(run["id"])
            if worker is not None and worker is not parent_worker and 4 <= done < PER_SHARD - 8:
                victim, killed_run = worker, run["id"]
                break
        time.sleep(0.3)
    # As if its machine died: the worker's process group and every flow-run process it started, at once
    # (a flow-run process that outlives its worker notices and reports itself Crashed; a dead host cannot).
    tree = psutil.Process(victim.popen.pid).children(recursive=True)
    os.killpg(victim.popen.pid, signal.SIGKILL)
    for proc in tree:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    victim.popen.wait(timeout=10)
    killed_at = time.monotonic()

    deadline = time.monotonic() + 420
    while True:
        state = stack.get(f"/flow_runs/{parent['id']}")
        if state["state_type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            break
        assert time.monotonic() < deadline, f"parent still {state['state_type']}\n{stack.logs()}"
        time.sleep(2)
    assert state["state_type"] == "COMPLETED", f"{state['state']['message']}\n{stack.logs()}"

    children = stack.runs(parent_flow_run_id={"any_": [parent["id"]]})
    killed = next(r for r in children if r["id"] == killed_run)
    assert killed["state_type"] == "CRASHED", killed["state"]
    assert any(w in killed["state"]["message"] for w in ("heartbeat", "lease expired")), killed["state"]["message"]
    # the last two: claimed and never started; started and killed before its first heartbeat and its lease
    reasons = ("heartbeat", "lease expired", "pending for more than", "without starting")
    for run in children:  # every run the dead worker held was detected, none failed on its own
        assert run["state_type"] in ("COMPLETED", "CRASHED"), run["state"]
        if run["state_type"] == "CRASHED":
            assert any(w in run["state"]["message"] for w in reasons), run["state"]
    again = [r for r in children if r["parameters"]["shard"] == killed["parameters"]["shard"] and r is not killed]
    seen = [(r["state_type"], r["tags"], r["state"]["message"], r["start_time"]) for r in again]
    attempts = [(r["state_type"], "attempt-2" in r["tags"]) for r in again]
    assert attempts == [("COMPLETED", True)], f"{seen}\n{stack.logs()}"
    assert sum(r["state_type"] == "COMPLETED" for r in children) == len(SHARDS)
    assert {r["parameters"]["shard"]["prefix"] for r in children} == {f"data/{s}/" for s in SHARDS}

    # every object registered exactly once, sidecar metadata attached, nothing left pending
    items = requests.get(f"{stack.emulator.url}/_emulator/state", timeout=30).json()["items"]
    urls = [i["url"] for i in items]
    expected = {f"s3://{bucket}/data/{s}/{i:03}.jpg" for s in SHARDS for i in range(PER_SHARD)}
    assert len(urls) == len(set(urls)), "an object was registered twice"
    assert set(urls) == expected
    meta = {i["url"]: i["client_metadata"] for i in items}
    assert all(meta[f"s3://{bucket}/data/{s}/000.jpg"] == {"shard": s} for s in SHARDS)
    states = ledger.counts_by_state()
    ledger.close()
    assert states == {"registered": len(expected)}, states
    crashed = killed["state"]["timestamp"]
    print(f"sharded run: killed after {killed_at - started:.0f}s, done {time.monotonic() - killed_at:.0f}s later; "
          f"crashed at {crashed} ({killed['state']['message']}), rerun {again[0]['start_time']}")  # fmt: skip


def test_dask_task_runner_runs_batches_in_other_processes(
    prefect_api: str, emulator: Any, keys: KeyPair, aws: dict[str, str], s3: Any, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    from flows import shard as shard_flow
    from tasks.run import IngestParams

    bucket = f"dask-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    for i in range(12):
        s3.put_object(Bucket=bucket, Key=f"d/x/{i:02}.jpg", Body=b"\xff\xd8" + bytes([i]))
    s3.put_object(Bucket=bucket, Key="d/y/other.jpg", Body=b"\xff\xd8")
    env = {**aws, "PREFECT_API_URL": prefect_api, "ENCORD_SSH_KEY_FILE": str(keys.private),
           "ENCORD_DOMAIN": emulator.url, "ENCORD_INGEST_POLL_SECONDS": "2"}  # fmt: skip
    for name, value in env.items():  # Dask worker processes inherit the environment
        monkeypatch.setenv(name, value)
    params = IngestParams(source=f"s3://{bucket}/d/", folder=f"dask-{bucket}", integration="local-aws", batch_size=4,
                          ledger=str(tmp_path / "ledger.db"), state_dir=str(tmp_path))  # fmt: skip
    shard_flow._contexts.clear()
    summary = shard_flow.ingest_shard(params, ShardSpec(kind="prefix", prefix="d/x/"), task_runner="dask")
    assert summary["registered"] == 12 and summary["batches"] == 3, summary
    assert shard_flow._contexts == {}, "contexts were rebuilt in the Dask workers, not here"
    urls = sorted(i["url"] for i in emulator.state()["items"])
    assert urls == [f"s3://{bucket}/d/x/{i:02}.jpg" for i in range(12)]
    ledger = Ledger(str(tmp_path / "ledger.db"))
    assert ledger.counts_by_state(f"s3://{bucket}/d/#prefix:d/x/") == {"registered": 12}
    ledger.close()
