"""Incremental, resumable runs: changed metadata, changed content, deleted objects, crashes, leases."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text


def seed(s3: Any, bucket: str, n: int, *, prefix: str = "img") -> list[str]:
    s3.create_bucket(Bucket=bucket)
    keys = []
    for i in range(n):
        key = f"{prefix}/{i:04d}.jpg"
        s3.put_object(Bucket=bucket, Key=key, Body=b"jpeg")
        s3.put_object(Bucket=bucket, Key=f"{key}.json", Body=json.dumps({"n": i, "v": 1}).encode())
        keys.append(key)
    return keys


def run(cli: Any, bucket: str, *extra: str, env: dict[str, str] | None = None) -> Any:
    return cli(
        "ingest", f"s3://{bucket}/", "--folder", bucket, "--integration", "local-aws",
        "--metadata", "sidecar", "--batch-size", "10", "--json", *extra, extra_env=env,
    )  # fmt: skip


def urls(state: dict[str, Any]) -> Counter[str]:
    return Counter(i["url"] for i in state["items"])


def test_changed_metadata_sends_exactly_that_many_metadata_updates(cli: Any, emulator: Any, s3: Any) -> None:
    bucket = f"meta-{uuid.uuid4().hex[:8]}"
    keys = seed(s3, bucket, 60)
    assert run(cli, bucket).json()["registered"] == 60
    for key in keys[:17]:
        s3.put_object(Bucket=bucket, Key=f"{key}.json", Body=json.dumps({"n": int(key[4:8]), "v": 2}).encode())
    before = emulator.state()
    second = run(cli, bucket)
    assert second.code == 0, second.stderr
    summary = second.json()
    assert (summary["updated"], summary["registered"], summary["submitted"]) == (17, 0, 0)
    assert summary["skipped"] == 43
    after = emulator.state()
    assert after["metadata_updates"] - before["metadata_updates"] == 17
    assert len(after["uploads"]) == len(before["uploads"]), "metadata-only: no upload job"
    changed = {i["url"]: i["client_metadata"]["v"] for i in after["items"]}
    assert sorted(u for u, v in changed.items() if v == 2) == sorted(f"s3://{bucket}/{k}" for k in keys[:17])
    third = run(cli, bucket).json()
    assert (third["updated"], third["registered"], third["skipped"]) == (0, 0, 60)


def batch_task_runs(run_id: str, *, at_least: int, wait: float = 30.0) -> int:
    """`ingest_batch` task runs of one flow run, once the API has settled (states arrive as events)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    flt = FlowRunFilter(id=FlowRunFilterId(any_=[uuid.UUID(run_id)]))
    seen: list[int] = []
    deadline = time.monotonic() + wait
    with get_client(sync_client=True) as client:
        while True:
            runs = client.read_task_runs(flow_run_filter=flt, limit=200)
            seen.append(sum(1 for r in runs if (r.task_key or r.name).startswith("ingest_batch")))
            if (seen[-1] >= at_least and seen[-3:] == [seen[-1]] * 3) or time.monotonic() > deadline:
                return seen[-1]
            time.sleep(1.0)


def test_unchanged_objects_leave_before_any_batch_task_is_made(cli: Any, emulator: Any, s3: Any) -> None:
    """Only batches holding a change become Prefect tasks; the rest is skipped in the flow itself."""
    bucket = f"screen-{uuid.uuid4().hex[:8]}"
    keys = seed(s3, bucket, 40)  # batches of 10: img/0000-0009, 0010-0019, ...
    first = run(cli, bucket).json()
    assert (first["registered"], first["batches"]) == (40, 4)
    assert batch_task_runs(first["run_id"], at_least=4) == 4
    for key in (keys[3], keys[25]):  # one change in the first batch, one in the third
        s3.put_object(Bucket=bucket, Key=f"{key}.json", Body=json.dumps({"n": -1, "v": 2}).encode())
    second = run(cli, bucket).json()
    assert (second["updated"], second["skipped"], second["registered"], second["batches"]) == (2, 38, 0, 4)
    assert batch_task_runs(second["run_id"], at_least=2) == 2
    third = run(cli, bucket).json()
    assert (third["skipped"], third["updated"], third["batches"]) == (40, 0, 4)
    assert batch_task_runs(third["run_id"], at_least=0, wait=5.0) == 0


def test_changed_content_is_kept_by_default_or_reimported_when_asked(cli: Any, emulator: Any, s3: Any) -> None:
    bucket = f"content-{uuid.uuid4().hex[:8]}"
    seed(s3, bucket, 5)
    run(cli, bucket)
    s3.put_object(Bucket=bucket, Key="img/0001.jpg", Body=b"a new picture")
    kept = run(cli, bucket)
    assert kept.code == 0
    assert kept.json()["registered"] == 0 and kept.json()["skipped"] == 5
    assert "content changed" in kept.stderr
    assert max(urls(emulator.state()).values()) == 1
    s3.put_object(Bucket=bucket, Key="img/0002.jpg", Body=b"another new picture")
    again = run(cli, bucket, "--on-content-change", "reimport")
    assert again.json()["registered"] == 1
    assert urls(emulator.state())[f"s3://{bucket}/img/0002.jpg"] == 2, "re-imported as a new item"


def test_deleted_objects_are_reported_and_flagged_never_dropped(
    cli: Any, emulator: Any, s3: Any, tmp_path: Path
) -> None:
    bucket = f"gone-{uuid.uuid4().hex[:8]}"
    keys = seed(s3, bucket, 12)
    run(cli, bucket)
    for key in keys[:3]:
        s3.delete_object(Bucket=bucket, Key=key)
        s3.delete_object(Bucket=bucket, Key=f"{key}.json")
    result = run(cli, bucket, "--flag-deleted", "deleted_from_source")
    assert result.code == 0, result.stderr
    assert result.json()["deleted"] == 3 and result.json()["listed"] == 9
    items = {i["url"]: i for i in emulator.state()["items"]}
    assert len(items) == 12, "items stay in Encord"
    flagged = sorted(u for u, i in items.items() if i["client_metadata"].get("deleted_from_source") is True)
    assert flagged == sorted(f"s3://{bucket}/{k}" for k in keys[:3])
    assert items[f"s3://{bucket}/{keys[0]}"]["client_metadata"]["n"] == 0, "the rest of the metadata is kept"
    status = cli("status", "--json")
    assert json.loads(status.stdout)["counts"].get("deleted") == 3
    assert run(cli, bucket).json()["deleted"] == 0, "reported once"


@pytest.mark.parametrize(
    "crash_at",
    ["listing-page:2", "before-upload-start:2", "after-upload-start:2", "after-upload-done:3", "ledger-write:4"],
)
def test_killed_run_resumes_and_registers_everything_exactly_once(
    cli: Any, emulator: Any, s3: Any, tmp_path: Path, crash_at: str
) -> None:
    bucket = f"crash-{uuid.uuid4().hex[:8]}"
    keys = seed(s3, bucket, 50)
    killed = run(cli, bucket, "--max-in-flight", "1", env={"ENCORD_INGEST_CRASH_AT": crash_at})
    assert killed.code == -9, f"the run was not killed at {crash_at}: {killed.stderr[-2000:]}"
    resumed = run(cli, bucket)
    assert resumed.code == 0, resumed.stderr[-3000:]
    state = emulator.state()
    assert urls(state) == Counter({f"s3://{bucket}/{k}": 1 for k in keys}), "every object exactly once"
    assert {i["client_metadata"]["n"] for i in state["items"]} == set(range(50))
    db = create_engine(f"sqlite:///{tmp_path / '.encord-ingest' / 'ledger.db'}")
    with db.connect() as conn:
        states = dict(conn.execute(text("SELECT state, count(*) FROM objects GROUP BY state")).all())
    assert states == {"registered": 50}
    final = run(cli, bucket).json()
    assert (final["registered"], final["submitted"], final["skipped"]) == (0, 0, 50)


def test_a_second_run_on_the_same_source_is_refused_while_the_first_holds_the_lease(
    cli: Any, emulator: Any, s3: Any, tmp_path: Path
) -> None:
    bucket = f"lease-{uuid.uuid4().hex[:8]}"
    seed(s3, bucket, 60)
    emulator.faults(1.0, ["slow"])
    args = [sys.executable, "-m", "encord_ingest.cli", "ingest", f"s3://{bucket}/", "--folder", bucket,
            "--integration", "local-aws", "--metadata", "sidecar", "--batch-size", "5", "--max-in-flight", "1",
            "--json"]  # fmt: skip
    first = subprocess.Popen(
        args, cwd=tmp_path, env={**os.environ, **cli.env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        ledger = tmp_path / ".encord-ingest" / "ledger.db"
        deadline = time.monotonic() + 120
        held = False
        while time.monotonic() < deadline and not held and first.poll() is None:
            if ledger.exists():
                with create_engine(f"sqlite:///{ledger}").connect() as conn:
                    held = bool(conn.execute(text("SELECT count(*) FROM sqlite_master WHERE name='leases'")).scalar())
                    held = held and bool(conn.execute(text("SELECT count(*) FROM leases")).scalar())
            time.sleep(0.2)
        assert held, "the first run never took the lease"
        second = run(cli, bucket)
        assert second.code == 3
        assert "another run" in second.stderr.strip().splitlines()[-1]
        out, err = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
        emulator.faults(0.0, [])
    assert first.returncode == 0, err[-2000:]
    assert json.loads(out)["registered"] == 60
    assert max(urls(emulator.state()).values()) == 1


def test_postgresql_ledger_end_to_end(cli: Any, emulator: Any, s3: Any, postgres_url: str) -> None:
    bucket = f"pg-{uuid.uuid4().hex[:8]}"
    seed(s3, bucket, 25)
    first = run(cli, bucket, "--ledger", postgres_url)
    assert first.code == 0, first.stderr[-2000:]
    assert first.json()["registered"] == 25
    second = run(cli, bucket, "--ledger", postgres_url)
    assert (second.json()["registered"], second.json()["skipped"]) == (0, 25)
    with create_engine(postgres_url.replace("postgresql://", "postgresql+psycopg://")).connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM objects WHERE state='registered'")).scalar() == 25


def test_retry_dead_letters_re_drives_only_what_failed(cli: Any, emulator: Any, s3: Any) -> None:
    bucket = f"redrive-{uuid.uuid4().hex[:8]}"
    keys = seed(s3, bucket, 20)
    for key in keys[:4]:
        s3.put_object(Bucket=bucket, Key=f"{key}.json", Body=b'{"n": 1, "n": 2}')
    first = run(cli, bucket)
    assert first.code == 1 and first.json()["failed"] == 4
    for key in keys[:4]:
        s3.put_object(Bucket=bucket, Key=f"{key}.json", Body=b'{"n": 1}')
    retried = run(cli, bucket, "--retry-dead-letters")
    assert retried.code == 0, retried.stderr[-2000:]
    summary = retried.json()
    assert (summary["listed"], summary["registered"], summary["failed"]) == (4, 4, 0)
    assert urls(emulator.state()) == Counter({f"s3://{bucket}/{k}": 1 for k in keys})
    assert run(cli, bucket, "--retry-dead-letters").json()["listed"] == 0, "nothing left to re-drive"
