"""Faults survived, nothing lost, nothing registered twice: storage and Encord misbehaving mid-run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from integrations.servers import start_emulator
from tests.conftest import Cli, cli_env
from tests.faultproxy import FaultProxy


def seed(s3: Any, bucket: str, n: int) -> list[str]:
    s3.create_bucket(Bucket=bucket)
    keys = [f"d{i % 3}/{i:04d}.jpg" for i in range(n)]
    for i, key in enumerate(keys):
        s3.put_object(Bucket=bucket, Key=key, Body=b"jpeg")
        s3.put_object(Bucket=bucket, Key=f"{key}.json", Body=json.dumps({"n": i}).encode())
    return keys


def ingest(cli: Any, bucket: str, *extra: str, env: dict[str, str] | None = None) -> Any:
    return cli(
        "ingest", f"s3://{bucket}/", "--folder", bucket, "--integration", "local-aws", "--metadata", "sidecar",
        "--batch-size", "10", "--json", *extra, extra_env=env,
    )  # fmt: skip


def exactly_once(emulator: Any, bucket: str, keys: list[str]) -> None:
    urls = Counter(i["url"] for i in emulator.state()["items"] if i["url"].startswith(f"s3://{bucket}/"))
    assert urls == Counter({f"s3://{bucket}/{k}": 1 for k in keys})


@pytest.fixture
def proxy(moto: Any) -> Any:
    p = FaultProxy(moto.url)
    yield p
    p.stop()


def test_storage_connection_resets_and_slow_reads_are_survived(cli: Any, emulator: Any, s3: Any, proxy: Any) -> None:
    bucket = f"resets-{uuid.uuid4().hex[:8]}"
    keys = seed(s3, bucket, 40)
    proxy.configure(reset_first=2, reset_rate=0.15, delay=0.01, seed=3)
    result = ingest(cli, bucket, env={"AWS_ENDPOINT_URL": proxy.url})
    assert result.code == 0, result.stderr[-3000:]
    assert proxy.faults.resets > 0, "the proxy injected no reset: the test proved nothing"
    assert result.json()["registered"] == 40
    exactly_once(emulator, bucket, keys)


def test_listing_errors_mid_pagination_are_retried(cli: Any, emulator: Any, s3: Any, proxy: Any) -> None:
    bucket = f"listing-{uuid.uuid4().hex[:8]}"
    keys = seed(s3, bucket, 30)
    proxy.configure(reset_first=3, reset_rate=0.3, reset_match=b"list-type=2", seed=5)
    result = ingest(cli, bucket, "--fanout", "3", env={"AWS_ENDPOINT_URL": proxy.url})
    assert result.code == 0, result.stderr[-3000:]
    assert proxy.faults.resets > 0
    exactly_once(emulator, bucket, keys)


def test_credentials_expiring_mid_run_abort_cleanly_and_the_rerun_finishes(
    cli: Any, emulator: Any, s3: Any, proxy: Any
) -> None:
    bucket = f"expiry-{uuid.uuid4().hex[:8]}"
    keys = seed(s3, bucket, 60)
    proxy.configure(expire_after=45)
    first = ingest(cli, bucket, "--max-in-flight", "1", env={"AWS_ENDPOINT_URL": proxy.url})
    assert first.code == 3, first.stderr[-3000:]
    last = first.stderr.strip().splitlines()[-1]
    assert "rejected the credentials" in last and "Traceback" not in first.stderr
    assert "testing" not in first.stderr, "no credential in any message"
    registered_before = len(emulator.state()["items"])
    assert 0 < registered_before < 60, "the abort happened mid-run"
    proxy.configure(expired=False, expire_after=None)
    second = ingest(cli, bucket, env={"AWS_ENDPOINT_URL": proxy.url})
    assert second.code == 0, second.stderr[-3000:]
    assert second.json()["registered"] == 60 - registered_before
    exactly_once(emulator, bucket, keys)


def test_encord_faults_of_every_kind_and_item_errors_are_survived(cli: Any, emulator: Any, s3: Any) -> None:
    bucket = f"encord-{uuid.uuid4().hex[:8]}"
    keys = seed(s3, bucket, 50)
    emulator.faults(0.15, ["429", "500", "502", "503", "timeout", "item"])
    result = ingest(cli, bucket, "--max-in-flight", "2", "--item-retries", "6")
    injected = emulator.state()["faults_injected"]
    emulator.faults(0.0, [])
    assert result.code == 0, result.stderr[-3000:]
    assert injected, "no fault was injected"
    exactly_once(emulator, bucket, keys)


def test_upload_jobs_stuck_pending_stop_resumably_and_are_reconciled(
    cli: Any, aws: dict[str, str], keys: Any, s3: Any, tmp_path: Path
) -> None:
    slow = start_emulator(aws, "--authorized-key", str(keys.public), "--job-delay-seconds", "15")
    try:
        bucket = f"stuck-{uuid.uuid4().hex[:8]}"
        objects = seed(s3, bucket, 12)
        env = {"ENCORD_DOMAIN": slow.url, "ENCORD_INGEST_JOB_TIMEOUT": "1"}
        first = ingest(cli, bucket, "--batch-size", "20", env=env)
        assert first.code == 3, first.stderr[-2000:]
        assert "still pending" in first.stderr.strip().splitlines()[-1]
        started = len(requests.get(f"{slow.url}/_emulator/state", timeout=10).json()["uploads"])
        assert started >= 1
        env["ENCORD_INGEST_JOB_TIMEOUT"] = "120"
        second = ingest(cli, bucket, "--batch-size", "20", env=env)
        assert second.code == 0, second.stderr[-2000:]

        state = requests.get(f"{slow.url}/_emulator/state", timeout=10).json()
        assert Counter(i["url"] for i in state["items"]) == Counter({f"s3://{bucket}/{k}": 1 for k in objects})
        assert len(state["uploads"]) == started, "the pending jobs were reconciled, not submitted again"
    finally:
        slow.stop()


def test_ctrl_c_stops_a_run_sending_anything_more_and_the_rerun_finishes_it(
    cli: Cli, aws: dict[str, str], keys: Any, s3: Any
) -> None:
    """The flow is async (Prefect's async engine); Ctrl-C must still reach its sync body at once:
    the batch in flight finishes into the ledger, no further batch is sent, exit 130."""
    slow = start_emulator(aws, "--authorized-key", str(keys.public), "--job-delay-seconds", "6")
    try:
        bucket = f"sigint-{uuid.uuid4().hex[:8]}"
        objects = seed(s3, bucket, 12)
        env = {**os.environ, **cli.env, "ENCORD_DOMAIN": slow.url, "ENCORD_INGEST_JOB_TIMEOUT": "120"}
        args = ["ingest", f"s3://{bucket}/", "--folder", bucket, "--integration", "local-aws", "--metadata", "sidecar"]
        args += ["--batch-size", "4", "--max-in-flight", "1", "--json"]  # three batches, one at a time
        run = subprocess.Popen(
            [sys.executable, "-m", "encord_ingest.cli", *args],
            cwd=cli.cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            sent = _wait_for_uploads(slow.url, run)
            run.send_signal(signal.SIGINT)
            _, stderr = run.communicate(timeout=120)
        finally:
            run.kill()
        state = requests.get(f"{slow.url}/_emulator/state", timeout=10).json()
        assert run.returncode == 130, stderr[-2000:]
        assert "encord-ingest: interrupted" in stderr and "Traceback" not in stderr, stderr[-2000:]
        assert len(state["uploads"]) == len(sent), "a batch was sent after Ctrl-C"
        assert 0 < len(state["items"]) < len(objects)

        second = cli(*args, extra_env={"ENCORD_DOMAIN": slow.url})
        assert second.code == 0, second.stderr[-2000:]
        assert second.json()["registered"] == len(objects) - len(state["items"])
        items = requests.get(f"{slow.url}/_emulator/state", timeout=10).json()["items"]
        assert Counter(i["url"] for i in items) == Counter({f"s3://{bucket}/{k}": 1 for k in objects})
    finally:
        slow.stop()


def _wait_for_uploads(emulator_url: str, run: subprocess.Popen[str], timeout: float = 120) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert run.poll() is None, run.communicate()[1][-2000:]
        uploads = requests.get(f"{emulator_url}/_emulator/state", timeout=10).json()["uploads"]
        if uploads:
            return list(uploads)
        time.sleep(0.2)
    raise AssertionError("the run sent no upload job")


# -- the accounting invariant over random buckets and random fault schedules ------------------
KINDS = ("valid", "plain", "bad-sidecar", "unsupported", "empty", "video")


@settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(
    objects=st.lists(st.sampled_from(KINDS), min_size=1, max_size=24),
    rate=st.sampled_from([0.0, 0.1, 0.25]),
    fault_kinds=st.lists(st.sampled_from(["429", "500", "503", "item"]), min_size=1, max_size=4, unique=True),
    seed=st.integers(0, 10_000),
)
def test_every_listed_object_ends_in_exactly_one_state(
    objects: list[str],
    rate: float,
    fault_kinds: list[str],
    seed: int,
    emulator_session: Any,
    s3: Any,
    aws: dict[str, str],
    keys: Any,
    prefect_api: str,
) -> None:
    bucket = f"prop-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(Bucket=bucket)
    expected: dict[str, str] = {}
    for i, kind in enumerate(objects):
        ext = {"unsupported": "bin", "video": "mp4"}.get(kind, "jpg")
        key = f"p/{i:03d}.{ext}"
        s3.put_object(Bucket=bucket, Key=key, Body=b"" if kind == "empty" else b"data")
        if kind in ("valid", "bad-sidecar", "video"):
            body = b'{"n": 1, "n": 2}' if kind == "bad-sidecar" else json.dumps({"i": i}).encode()
            s3.put_object(Bucket=bucket, Key=f"{key}.json", Body=body)
        expected[f"s3://{bucket}/{key}"] = kind
    emulator_session.faults(rate, fault_kinds)
    with tempfile.TemporaryDirectory() as tmp:
        cli = Cli(env=cli_env(aws, keys, emulator_session.url, prefect_api, Path(tmp)), cwd=Path(tmp))
        result = ingest(cli, bucket, "--item-retries", "2")
        emulator_session.faults(0.0, [])
        assert result.code in (0, 1), result.stderr[-3000:]
        summary = result.json()
        letters = {}
        if summary["dead_letter"]:
            for line in (Path(tmp) / summary["dead_letter"]).read_text().splitlines():
                d = json.loads(line)
                assert d["url"] not in letters, "dead-lettered twice"
                letters[d["url"]] = d
    registered = Counter(i["url"] for i in emulator_session.state()["items"] if i["url"].startswith(f"s3://{bucket}/"))
    assert max(registered.values(), default=1) == 1, "registered twice"
    skipped = summary["skipped"]
    assert summary["listed"] == len(objects) == summary["registered"] + summary["failed"] + skipped
    assert summary["registered"] == len(registered) and summary["failed"] == len(letters)
    for url, kind in expected.items():
        states = [url in registered, url in letters]
        if kind in ("unsupported", "empty"):
            assert states == [False, False], f"{url} ({kind}) must be skipped"
        elif kind == "bad-sidecar":
            assert states == [False, True] and letters[url]["rule"] == "sidecar.duplicate_key"
        else:
            assert sum(states) == 1, f"{url} ({kind}) is in {states}"
            if url in letters:
                assert letters[url]["transient"], "only transient faults may stop a valid object"
    assert skipped == sum(1 for k in objects if k in ("unsupported", "empty"))


def _ctrl_c() -> None:
    raise KeyboardInterrupt


def test_ctrl_c_while_the_engine_awaits_still_marks_the_run_crashed(prefect_api: str) -> None:
    """Ctrl-C can land in the event loop rather than in the flow's body (the engine waiting on
    the API before or after it): the run must still end Crashed, not stay Running for ever."""
    import asyncio

    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    from flows.ingest import run_on_own_loop

    name = f"ctrl-c-{uuid.uuid4().hex[:8]}"

    @flow(name="ctrl-c-probe", flow_run_name=name)
    async def waits() -> None:
        asyncio.get_running_loop().call_later(0.2, _ctrl_c)  # raised by the loop, outside the body's code
        await asyncio.sleep(60)

    with pytest.raises(KeyboardInterrupt):
        run_on_own_loop(waits)
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[name])))
    assert [run.state_type.value for run in runs] == ["CRASHED"]
