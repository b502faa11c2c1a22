"""deployments/prefect.yaml on a real Prefect server with a process worker: cron, events, refusals.

The `prefect_stack` fixture (conftest) deploys the repository's prefect.yaml exactly as the README
says (bootstrap.py, `prefect --no-prompt deploy --all`, `prefect worker start`); the Encord key
reaches the runs only through the Secret block bootstrap.py saved.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from integrations.events import Authenticator, Batcher, PrefectEmitter, Receiver, sign
from tests.conftest import REPO, STACK_SEED, Emulator, PrefectStack
from tests.test_events import s3_notification

SECRET = "stack-shared-secret"


def folder_items(emulator: Emulator, folder: str) -> dict[str, dict[str, Any]]:
    state = emulator.state()
    uuids = {f["uuid"] for f in state["folders"] if f["name"] == folder}
    return {i["url"]: i for i in state["items"] if i["folder"] in uuids}


@pytest.fixture(scope="module")
def receiver(prefect_stack: PrefectStack) -> Iterator[Receiver]:
    batcher = Batcher(PrefectEmitter(prefect_stack.api).emit, window=1.0)
    rec = Receiver(Authenticator([SECRET]), batcher).start()
    try:
        yield rec
    finally:
        rec.stop()


def test_cron_run_registers_the_source_with_credentials_from_a_secret_block(
    prefect_stack: PrefectStack, scheduled_run: dict[str, Any]
) -> None:
    bucket = prefect_stack.bucket
    data = [k for k in STACK_SEED if not k.endswith(".json")]
    items = folder_items(prefect_stack.emulator, prefect_stack.folder)
    assert set(items) == {f"s3://{bucket}/{k}" for k in data}
    assert items[f"s3://{bucket}/data/a.jpg"]["client_metadata"] == {"site": "north"}

    assert scheduled_run["name"] == f"ingest s3://{bucket}/data/"
    assert scheduled_run["auto_scheduled"] is True
    assert scheduled_run["parameters"]["encord_key_block"] == "encord-ssh-key"
    assert "ENCORD_SSH_KEY_FILE" not in prefect_stack.env and "ENCORD_SSH_KEY" not in prefect_stack.env
    tasks = [t["name"] for t in prefect_stack.task_runs(scheduled_run["id"])]
    assert [t for t in tasks if t.startswith("batch")] == [f"batch 1 of s3://{bucket}/data/"], tasks
    assert prefect_stack.get(f"/flow_runs/{scheduled_run['id']}")["work_queue_name"] == f"s3-{bucket}"
    queue = prefect_stack.post("/work_pools/encord-ingest/queues/filter", {})
    assert {q["name"]: q["concurrency_limit"] for q in queue}[f"s3-{bucket}"] == 1


def test_s3_notification_registers_exactly_the_notified_objects(
    prefect_stack: PrefectStack,
    scheduled_run: dict[str, Any],
    receiver: Receiver,
    s3: Any,
) -> None:
    bucket = prefect_stack.bucket
    before = folder_items(prefect_stack.emulator, prefect_stack.folder)
    new = ["data/new/d 1.jpg", "data/new/e.png", "data/new/f.jpg"]
    for key in new:
        s3.put_object(Bucket=bucket, Key=key, Body=b"\xff\xd8new")
    s3.put_object(Bucket=bucket, Key="data/new/e.png.json", Body=b'{"site": "south"}')
    s3.put_object(Bucket=bucket, Key="data/new/quiet.jpg", Body=b"\xff\xd8q")  # created, never notified

    # As S3 sends it: one record per created object (the sidecar too), keys URL-encoded.
    body = json.dumps(s3_notification(bucket, [*new, "data/new/e.png.json"])).encode()
    res = requests.post(
        f"{receiver.url}/events", data=body, headers={"Content-Type": "application/json", "X-Ingest-Token": SECRET}
    )
    assert res.status_code == 200, res.text
    assert res.json()["accepted"] == 4

    deployment = prefect_stack.deployment("encord-ingest-keys")
    runs = prefect_stack.wait_for_run(deployment["id"], timeout=180)
    time.sleep(3)  # a second run would have been created by now
    assert len(prefect_stack.flow_runs(deployment["id"])) == 1, "one burst, one flow run"
    run = runs[0]
    assert sorted(run["parameters"]["keys"]) == sorted([*new, "data/new/e.png.json"])
    assert run["parameters"]["bucket"] == bucket
    assert run["name"] == f"ingest 4 notified keys of s3://{bucket}/data/"
    tasks = [t["name"] for t in prefect_stack.task_runs(run["id"])]
    assert [t for t in tasks if t.startswith("batch")] == [f"batch 1 of s3://{bucket}/data/ (event)"], tasks

    items = folder_items(prefect_stack.emulator, prefect_stack.folder)
    added = {url: i for url, i in items.items() if url not in before}
    assert set(added) == {f"s3://{bucket}/{k}" for k in new}
    assert added[f"s3://{bucket}/data/new/e.png"]["client_metadata"] == {"site": "south"}
    assert f"s3://{bucket}/data/new/quiet.jpg" not in items, "only notified keys, no listing"
    kinds = {a["key"]: a["type"] for a in prefect_stack.artifacts(run["id"])}
    assert kinds["ingest-keys"] == "markdown" and kinds["ingest-batches"] == "table"


@pytest.mark.parametrize(
    ("headers", "body", "status"),
    [
        ({"Content-Type": "application/json"}, b'{"Records": []}', 401),
        ({"Content-Type": "application/json", "X-Ingest-Token": "guess"}, b'{"Records": []}', 403),
        ({"Content-Type": "application/json", "X-Ingest-Signature": "sha256=00"}, b'{"Records": []}', 403),
        ({"Content-Type": "application/json", "X-Ingest-Token": SECRET}, b"{not json", 400),
        ({"Content-Type": "application/json", "X-Ingest-Token": SECRET}, b'{"hello": "world"}', 400),
        ({"Content-Type": "application/x-www-form-urlencoded", "X-Ingest-Token": SECRET}, b"a=1", 415),
        ({"Content-Type": "application/json", "X-Ingest-Token": SECRET}, b" " * (3 * 1024 * 1024), 413),
    ],
)
def test_bad_posts_are_refused_and_start_no_run(
    prefect_stack: PrefectStack, receiver: Receiver, headers: dict[str, str], body: bytes, status: int
) -> None:
    events_before = receiver.batcher.emitted_events
    res = requests.post(f"{receiver.url}/events", data=body, headers=headers, timeout=30)
    assert res.status_code == status, res.text
    assert res.json()["status"] == status and res.json()["detail"]
    assert SECRET not in res.text
    assert receiver.batcher.emitted_events == events_before


def test_signed_post_is_accepted(prefect_stack: PrefectStack, receiver: Receiver) -> None:
    body = json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": prefect_stack.bucket}).encode()
    headers = {"Content-Type": "application/json", "X-Ingest-Signature": sign(SECRET, body)}
    res = requests.post(f"{receiver.url}/events", data=body, headers=headers, timeout=30)
    assert res.status_code == 200, res.text
    assert res.json() == {"accepted": 0, "ignored": 1, "buckets": []}


def test_serve_entry_point_builds_every_deployment(prefect_stack: PrefectStack) -> None:
    done = subprocess.run(
        [sys.executable, "deployments/serve.py", "--check"],
        cwd=REPO,
        env=prefect_stack.env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    bucket = prefect_stack.bucket
    assert f"encord-ingest/{bucket}: flows/ingest.py:ingest (1 schedule(s), 0 trigger(s))" in lines
    assert f"encord-ingest-keys/{bucket}: flows/events.py:ingest_keys (0 schedule(s), 1 trigger(s))" in lines
    assert f"encord-ingest-shard/{bucket}: flows/shard.py:ingest_shard (0 schedule(s), 0 trigger(s))" in lines
    assert len(lines) == 7
