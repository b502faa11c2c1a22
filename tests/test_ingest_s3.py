"""End to end on S3, as a user runs it: the CLI against moto and the Encord emulator, Prefect recording."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from integrations.servers import make_keypair

# The mixed-bucket end-to-end test (sidecars, path and table metadata, invalid items, re-run)
# runs for S3, GCS and Azure from one parametrised test in test_ingest_clouds.py.


def test_twenty_percent_faults_still_register_everything(cli: Any, emulator: Any, s3: Any) -> None:
    bucket = f"faulty-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    for i in range(120):
        s3.put_object(Bucket=bucket, Key=f"img/{i:04d}.jpg", Body=b"x")
        s3.put_object(Bucket=bucket, Key=f"img/{i:04d}.jpg.json", Body=json.dumps({"n": i}).encode())
    emulator.faults(0.2, ["429", "500", "503"])
    result = cli(
        "ingest", f"s3://{bucket}/", "--folder", "faulty", "--integration", "local-aws",
        "--metadata", "sidecar", "--batch-size", "25", "--json",
    )  # fmt: skip
    emulator.faults(0.0, [])
    assert result.code == 0, result.stderr[-3000:]
    assert result.json()["registered"] == 120
    state = emulator.state()
    urls = Counter(i["url"] for i in state["items"])
    assert len(urls) == 120 and max(urls.values()) == 1
    assert {i["client_metadata"]["n"] for i in state["items"]} == set(range(120))


def _upload_requests(state: dict[str, Any]) -> int:
    return sum(n for route, n in state.get("requests", {}).items() if "data-upload-jobs" in route and "POST" in route)


def test_wrong_ssh_key_aborts_with_one_line_and_submits_nothing(
    cli: Any, emulator: Any, s3: Any, tmp_path: Path
) -> None:
    bucket = f"keys-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="a.jpg", Body=b"x")
    stranger = make_keypair(tmp_path, "stranger")
    result = cli(
        "ingest", f"s3://{bucket}/", "--folder", "f", "--integration", "local-aws",
        extra_env={"ENCORD_SSH_KEY_FILE": str(stranger.private)},
    )  # fmt: skip
    assert result.code == 3
    assert "Traceback" not in result.stderr
    assert "credentials" in result.stderr.strip().splitlines()[-1]
    state = emulator.state()
    assert state["items"] == [] and state["folders"] == []
    assert _upload_requests(state) == 0


def test_missing_bucket_aborts_with_exit_3(cli: Any, emulator: Any) -> None:
    result = cli("ingest", "s3://no-such-bucket-here/x/", "--folder", "f", "--integration", "local-aws")
    assert result.code == 3
    assert "Traceback" not in result.stderr
    assert "no-such-bucket-here" in result.stderr.strip().splitlines()[-1]
    assert _upload_requests(emulator.state()) == 0


@pytest.mark.parametrize(
    ("schema", "words"),
    [
        ("keys:\n  score: numbr\n", "unknown type"),
        ("keys:\n  'bad key!': number\n", "characters"),
        ("keys: [1, 2\n", "not valid YAML"),
        ("keys:\n  e: {type: embedding, size: 5000}\n", "embedding"),
        ("keys:\n  a: number\n  a: text\n", "duplicate key"),
    ],
)
def test_malformed_schema_is_a_usage_error(cli: Any, emulator: Any, tmp_path: Path, schema: str, words: str) -> None:
    path = tmp_path / "schema.yaml"
    path.write_text(schema)
    result = cli("ingest", "s3://any-bucket/", "--folder", "f", "--integration", "local-aws", "--schema", str(path))
    assert result.code == 2
    last = result.stderr.strip().splitlines()[-1]
    assert words in last and "Traceback" not in result.stderr
    assert _upload_requests(emulator.state()) == 0
