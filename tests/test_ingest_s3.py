"""End to end, as a user runs it: the CLI against moto and the Encord emulator, Prefect recording."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from integrations.servers import make_keypair

SCHEMA = """
keys:
  site: {type: enum, values: [north, south, bad]}
  score: number
  reviewed: boolean
  captured_at: datetime
  camera: varchar
"""

TABLE = """key,camera,site,score
data/north/cam1/img0001.jpg,cam-A,,
data/south/clip.mp4,cam-B,,42
data/bad/badenum.jpg,,west,
"""

VALID = {
    "data/north/cam1/img0001.jpg": ("image", {"site": "north", "camera": "cam-A", "score": 0.5, "reviewed": True}),
    "data/north/cam1/img0002.jpg": ("image", {"site": "north", "score": 7}),
    "data/north/cam1/img0003.png": ("image", {"site": "north", "captured_at": "2024-01-02T03:04:05Z"}),
    "data/south/clip.mp4": ("video", {"site": "south", "camera": "cam-B", "score": 42}),
    "data/south/song.wav": ("audio", {"site": "south"}),
    "data/south/doc.pdf": ("pdf", {"site": "south"}),
    "data/south/notes.txt": ("text", {"site": "south"}),
}

INVALID = {
    "data/bad/notjson.jpg": "sidecar.json",
    "data/bad/badtype.jpg": "type.number",
    "data/bad/badkey.jpg": "key.charset",
    "data/bad/badenum.jpg": "enum.value",
    "data/bad/dup.jpg": "sidecar.duplicate_key",
    "data/bad/array.jpg": "sidecar.not_object",
    "data/bad/nan.jpg": "sidecar.nan",
}

SIDECARS = {
    "data/north/cam1/img0001.jpg.json": '{"score": 0.5, "reviewed": "true"}',
    "data/north/cam1/img0002.json": '{"score": "7"}',
    "data/north/cam1/img0003.png.metadata.json": '{"captured_at": "2024-01-02T03:04:05Z"}',
    "data/bad/notjson.jpg.json": "{not json",
    "data/bad/badtype.jpg.json": '{"score": "high"}',
    "data/bad/badkey.jpg.json": '{"bad key!": 1}',
    "data/bad/dup.jpg.json": '{"a": 1, "a": 2}',
    "data/bad/array.jpg.json": "[1, 2]",
    "data/bad/nan.jpg.json": '{"score": NaN}',
}

SKIPPED = ["data/south/blob.xyz", "data/south/orphan.json"]


def seed_mixed(s3: Any, bucket: str) -> None:
    s3.create_bucket(Bucket=bucket)
    for key in [*VALID, *INVALID, "data/south/blob.xyz", "data/outside.jpg"]:
        s3.put_object(Bucket=bucket, Key=key, Body=b"\x00data")
    for key, body in SIDECARS.items():
        s3.put_object(Bucket=bucket, Key=key, Body=body.encode())
    s3.put_object(Bucket=bucket, Key="data/south/orphan.json", Body=b"{}")


def items_by_url(state: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {i["url"]: i for i in state["items"]}


def ingest_args(bucket: str, tmp_path: Path, *extra: str) -> list[str]:
    (tmp_path / "schema.yaml").write_text(SCHEMA)
    (tmp_path / "table.csv").write_text(TABLE)
    return [
        "ingest", f"s3://{bucket}/data/",
        "--folder", "mixed", "--integration", "local-aws",
        "--metadata", "path:(?P<site>[^/]+)/",
        "--metadata", f"table:{tmp_path / 'table.csv'}",
        "--metadata", "sidecar",
        "--schema", str(tmp_path / "schema.yaml"),
        "--exclude", "outside*",
        "--batch-size", "5",
        "--json",
        *extra,
    ]  # fmt: skip


def test_mixed_bucket_registers_valid_dead_letters_invalid_and_reruns_idempotently(
    cli: Any, emulator: Any, s3: Any, tmp_path: Path
) -> None:
    bucket = f"mixed-{uuid.uuid4().hex[:8]}"
    seed_mixed(s3, bucket)

    first = cli(*ingest_args(bucket, tmp_path))
    assert first.code == 1, first.stderr
    summary = first.json()
    assert summary["listed"] == len(VALID) + len(INVALID) + len(SKIPPED)
    assert summary["registered"] == len(VALID)
    assert summary["failed"] == len(INVALID)
    assert summary["skipped"] == len(SKIPPED)
    assert summary["batches"] >= 3
    assert set(summary) >= {
        "listed",
        "skipped",
        "submitted",
        "registered",
        "failed",
        "batches",
        "dead_letter",
        "run_id",
    }

    state = emulator.state()
    assert [f["name"] for f in state["folders"]] == ["mixed"]
    items = items_by_url(state)
    assert len(state["items"]) == len(VALID), "each valid object registered once"
    for key, (kind, metadata) in VALID.items():
        item = items[f"s3://{bucket}/{key}"]
        assert item["type"] == kind
        assert item["client_metadata"] == metadata, key
        assert item["title"] == key

    letters = [json.loads(line) for line in Path(tmp_path / summary["dead_letter"]).read_text().splitlines()]
    assert {d["key"]: d["rule"] for d in letters} == INVALID
    for d in letters:
        assert d["reason"] and d["url"] == f"s3://{bucket}/{d['key']}"

    uploads_before = len(state["uploads"])
    second = cli(*ingest_args(bucket, tmp_path))
    assert second.code == 1, second.stderr
    again = second.json()
    assert again["registered"] == 0
    assert again["submitted"] == 0
    assert again["failed"] == len(INVALID)
    assert again["skipped"] == len(VALID) + len(SKIPPED)
    state = emulator.state()
    assert len(state["items"]) == len(VALID)
    assert len(state["uploads"]) == uploads_before, "an unchanged re-run starts no upload job"


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
