"""End to end on every cloud, as a user runs it: the CLI against moto / fake-gcs-server / Azurite and the emulator.

One parametrised test per behaviour; the per-cloud differences live in tests/buckets.py's writers.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from integrations.servers import azure_connection_string
from tests.buckets import (
    INVALID,
    SCHEMA,
    SKIPPED,
    TABLE,
    VALID,
    AzureWriter,
    BucketWriter,
    GCSWriter,
    S3Writer,
    seed_mixed,
)

CLOUDS = ["s3", "gcs", "azure"]


@dataclass
class Cloud:
    """A fresh bucket plus the variables the CLI needs for that cloud (moto's are in the `cli` fixture)."""

    bucket: BucketWriter
    env: dict[str, str]


def _cloud(kind: str, request: pytest.FixtureRequest) -> Cloud:
    name = f"e2e-{uuid.uuid4().hex[:10]}"
    if kind == "s3":
        return Cloud(S3Writer(request.getfixturevalue("s3"), name), {})
    if kind == "gcs":
        return Cloud(GCSWriter(request.getfixturevalue("gcs"), name), request.getfixturevalue("gcp"))
    return Cloud(AzureWriter(request.getfixturevalue("azblob"), name), request.getfixturevalue("azure"))


@pytest.fixture(params=CLOUDS)
def cloud(request: pytest.FixtureRequest) -> Cloud:
    return _cloud(request.param, request)


def _upload_requests(state: dict[str, Any]) -> int:
    return sum(n for route, n in state.get("requests", {}).items() if "data-upload-jobs" in route and "POST" in route)


def ingest_args(bucket: BucketWriter, tmp_path: Path, *extra: str) -> list[str]:
    (tmp_path / "schema.yaml").write_text(SCHEMA)
    (tmp_path / "table.csv").write_text(TABLE)
    return [
        "ingest", bucket.source("data/"),
        "--folder", "mixed", "--integration", bucket.integration,
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
    cli: Any, emulator: Any, cloud: Cloud, tmp_path: Path
) -> None:
    bucket = cloud.bucket
    seed_mixed(bucket)

    first = cli(*ingest_args(bucket, tmp_path), extra_env=cloud.env)
    assert first.code == 1, first.stderr[-3000:]
    summary = first.json()
    assert summary["listed"] == len(VALID) + len(INVALID) + len(SKIPPED)
    assert summary["registered"] == len(VALID)
    assert summary["failed"] == len(INVALID)
    assert summary["skipped"] == len(SKIPPED)
    assert summary["batches"] >= 3

    state = emulator.state()
    assert [f["name"] for f in state["folders"]] == ["mixed"]
    items = {i["url"]: i for i in state["items"]}
    assert len(state["items"]) == len(VALID), "each valid object registered once"
    for key, (kind, metadata) in VALID.items():
        item = items[bucket.url(key)]
        assert item["type"] == kind
        assert item["client_metadata"] == metadata, key
        assert item["title"] == key

    letters = [json.loads(line) for line in Path(tmp_path / summary["dead_letter"]).read_text().splitlines()]
    assert {d["key"]: d["rule"] for d in letters} == INVALID
    for d in letters:
        assert d["reason"] and d["url"] == bucket.url(d["key"])

    uploads_before = len(state["uploads"])
    second = cli(*ingest_args(bucket, tmp_path), extra_env=cloud.env)
    assert second.code == 1, second.stderr[-3000:]
    again = second.json()
    assert again["registered"] == 0
    assert again["submitted"] == 0
    assert again["failed"] == len(INVALID)
    assert again["skipped"] == len(VALID) + len(SKIPPED)
    state = emulator.state()
    assert len(state["items"]) == len(VALID)
    assert len(state["uploads"]) == uploads_before, "an unchanged re-run starts no upload job"


def test_object_metadata_arrives_in_client_metadata(cli: Any, emulator: Any, cloud: Cloud) -> None:
    """x-amz-meta-*, GCS custom metadata and Azure blob metadata, as `--metadata object` reads them."""
    bucket = cloud.bucket
    bucket.put_object("m/a.jpg", b"a", {"site": "north", "camera": "cam-a"})
    bucket.put_object("m/b.jpg", b"b", {"site": "south"})
    bucket.put_object("m/c.jpg", b"c")
    result = cli(
        "ingest", bucket.source("m/"), "--folder", "objmeta", "--integration", bucket.integration,
        "--metadata", "object", "--metadata", "set:origin=test", "--json",
        extra_env=cloud.env,
    )  # fmt: skip
    assert result.code == 0, result.stderr[-3000:]
    assert result.json()["registered"] == 3
    got = {i["url"]: i["client_metadata"] for i in emulator.state()["items"]}
    assert got == {
        bucket.url("m/a.jpg"): {"site": "north", "camera": "cam-a", "origin": "test"},
        bucket.url("m/b.jpg"): {"site": "south", "origin": "test"},
        bucket.url("m/c.jpg"): {"origin": "test"},
    }


def test_azure_blob_index_tags_merge_over_metadata(cli: Any, emulator: Any, request: pytest.FixtureRequest) -> None:
    cloud = _cloud("azure", request)
    bucket = cloud.bucket
    assert isinstance(bucket, AzureWriter)
    bucket.put_object("t/a b.jpg", b"a", {"site": "north", "both": "metadata"}, tags={"camera": "A", "both": "tag"})
    bucket.put_object("t/only-tags.jpg", b"b", tags={"camera": "B"})
    result = cli(
        "ingest", bucket.source("t/"), "--folder", "tags", "--integration", bucket.integration,
        "--metadata", "object", "--json",
        extra_env=cloud.env,
    )  # fmt: skip
    assert result.code == 0, result.stderr[-3000:]
    got = {i["url"]: i["client_metadata"] for i in emulator.state()["items"]}
    assert got == {
        bucket.url("t/a b.jpg"): {"site": "north", "camera": "A", "both": "tag"},
        bucket.url("t/only-tags.jpg"): {"camera": "B"},
    }
    assert "/t/a%20b.jpg" in bucket.url("t/a b.jpg")


def _edit_run(cli: Any, cloud: Cloud, prefix: str) -> dict[str, Any]:
    bucket = cloud.bucket
    result = cli(
        "ingest", bucket.source(prefix), "--folder", "edits", "--integration", bucket.integration,
        "--metadata", "object", "--on-content-change", "reimport", "--json",
        extra_env=cloud.env,
    )  # fmt: skip
    assert result.code == 0, result.stderr[-3000:]
    return dict(result.json())


def test_azure_metadata_and_tag_edits_update_the_item_and_only_new_bytes_reimport(
    cli: Any, emulator: Any, request: pytest.FixtureRequest
) -> None:
    """Azure changes a blob's ETag when its metadata is set, and nothing at all when its index tags
    are: even with `--on-content-change reimport` neither re-registers the blob, both reach Encord."""
    cloud = _cloud("azure", request)
    bucket = cloud.bucket
    assert isinstance(bucket, AzureWriter)
    bucket.put_object("e/a.jpg", b"a", {"site": "north"})
    bucket.put_object("e/b.jpg", b"b", tags={"camera": "B"})
    bucket.put_object("e/c.jpg", b"c")
    assert _edit_run(cli, cloud, "e/")["registered"] == 3
    bucket.container.get_blob_client("e/a.jpg").set_blob_metadata({"site": "south"})
    bucket.container.get_blob_client("e/b.jpg").set_blob_tags({"camera": "B2"})
    second = _edit_run(cli, cloud, "e/")
    assert (second["updated"], second["registered"], second["skipped"]) == (2, 0, 1)
    items = emulator.state()["items"]
    assert len(items) == 3, "a metadata or tag edit must not register the blob again"
    got = {i["url"]: i["client_metadata"] for i in items}
    assert got[bucket.url("e/a.jpg")] == {"site": "south"}
    assert got[bucket.url("e/b.jpg")] == {"camera": "B2"}
    # new bytes by a block upload, which leaves the blob without a Content-MD5
    blob = bucket.container.get_blob_client("e/c.jpg")
    blob.stage_block("b1", b"new bytes")
    blob.commit_block_list(["b1"])
    assert blob.get_blob_properties().content_settings.content_md5 is None
    third = _edit_run(cli, cloud, "e/")
    assert (third["registered"], third["updated"], third["skipped"]) == (1, 0, 2)


def test_gcs_new_bytes_are_a_content_change_by_generation(
    cli: Any, emulator: Any, request: pytest.FixtureRequest
) -> None:
    """GCS content changes are told by the object's generation (its ETag also moves on metadata edits)."""
    cloud = _cloud("gcs", request)
    bucket = cloud.bucket
    bucket.put_object("g/a.jpg", b"a", {"site": "north"})
    bucket.put_object("g/b.jpg", b"b")
    assert _edit_run(cli, cloud, "g/")["registered"] == 2
    bucket.put_object("g/a.jpg", b"new bytes", {"site": "north"})
    again = _edit_run(cli, cloud, "g/")
    assert (again["registered"], again["updated"], again["skipped"]) == (1, 0, 1)


@pytest.mark.parametrize("kind", ["gcs", "azure"])
def test_missing_bucket_or_container_aborts_with_exit_3(
    cli: Any, emulator: Any, request: pytest.FixtureRequest, kind: str
) -> None:
    cloud = _cloud(kind, request)
    source = cloud.bucket.source("x/").replace(cloud.bucket.name, "no-such-bucket-here")
    result = cli("ingest", source, "--folder", "f", "--integration", cloud.bucket.integration, extra_env=cloud.env)
    assert result.code == 3, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert "no-such-bucket-here" in last and "does not exist" in last
    assert _upload_requests(emulator.state()) == 0


def test_wrong_azure_account_key_aborts_with_exit_3_and_never_prints_the_key(
    cli: Any, emulator: Any, azurite: Any, azblob: Any
) -> None:
    bucket = AzureWriter(azblob, f"e2e-{uuid.uuid4().hex[:10]}")
    bucket.put_object("a.jpg", b"a")
    wrong = "V3JvbmdLZXk" + "x" * 73 + "=="
    env = {"AZURE_STORAGE_CONNECTION_STRING": azure_connection_string(azurite.url, key=wrong)}
    result = cli("ingest", bucket.source(), "--folder", "f", "--integration", bucket.integration, extra_env=env)
    assert result.code == 3, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert "credentials" in last and bucket.name in last
    assert wrong not in result.stderr + result.stdout
    state = emulator.state()
    assert state["items"] == [] and _upload_requests(state) == 0


def test_unusable_gcs_credentials_abort_with_exit_3(cli: Any, emulator: Any, tmp_path: Path) -> None:
    env = {"GOOGLE_APPLICATION_CREDENTIALS": str(tmp_path / "missing.json"), "STORAGE_EMULATOR_HOST": ""}
    result = cli("ingest", "gs://some-bucket/x/", "--folder", "f", "--integration", "local-gcp", extra_env=env)
    assert result.code == 3, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert "credentials" in result.stderr.strip().splitlines()[-1]
    assert _upload_requests(emulator.state()) == 0
