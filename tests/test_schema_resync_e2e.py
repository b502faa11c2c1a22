"""End to end: schema apply/verify and the Active re-sync, through the CLI against moto and the emulator."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest

PROJECT = "7d0c8a8e-1111-4222-8333-444455556666"
OTHER_PROJECT = "0b7f3c1e-2222-4333-8444-555566667777"
APPLY_POST = "POST organisation/client-metadata-schema-v2"

FULL_SCHEMA = """
keys:
  site: {type: enum, values: [north, south]}
  lens: {type: enum, values: [wide, tele]}
  camera.serial: varchar
  score: number
  clip: {type: embedding, size: 512}
"""


def seed(s3: Any, bucket: str, sidecars: dict[str, dict[str, Any]]) -> None:
    s3.create_bucket(Bucket=bucket)
    for key, metadata in sidecars.items():
        s3.put_object(Bucket=bucket, Key=key, Body=b"\x00data")
        s3.put_object(Bucket=bucket, Key=f"{key}.json", Body=json.dumps(metadata).encode())


def ingest(cli: Any, bucket: str, *extra: str) -> Any:
    return cli(
        "ingest", f"s3://{bucket}/", "--folder", "cams", "--integration", "local-aws",
        "--metadata", "sidecar", "--json", *extra,
    )  # fmt: skip


def artifact(key: str, run_id: str) -> str:
    """The markdown of the run's artifact `key`, read back from the Prefect API the CLI recorded to."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[key]), flow_run_id=ArtifactFilterFlowRunId(any_=[uuid.UUID(run_id)])
            )
        )
    assert found, f"no {key} artifact for run {run_id}"
    return str(found[0].data)


def test_data_keys_missing_from_the_schema_block_resync_until_the_schema_is_applied(
    cli: Any, emulator: Any, s3: Any, tmp_path: Path
) -> None:
    bucket = f"verify-{uuid.uuid4().hex[:8]}"
    seed(
        s3,
        bucket,
        {
            "img/a.jpg": {"site": "north", "lens": "wide", "camera.serial": "A1"},
            "img/b.jpg": {"site": "south", "lens": "tele", "score": 3},
        },
    )
    run = ingest(cli, bucket, "--active-project", PROJECT)
    assert run.code == 0, run.stderr[-3000:]
    summary = run.json()
    run_id = summary["run_id"]
    assert summary["registered"] == 2
    assert emulator.state()["resyncs"] == [], "verification failed, so no re-sync"
    assert "schema verification found 4 problem(s)" in run.stderr
    verification = artifact("schema-verification", run_id)
    assert "not consistent" in verification
    for key in ("site", "lens", "camera.serial", "score"):
        assert f"`{key}`" in verification, key
    assert "Active re-sync: skipped" in artifact("ingest-summary", run_id)
    assert (tmp_path / ".encord-ingest" / "runs" / f"{run_id}.observed.json").is_file()

    schema = tmp_path / "schema.yaml"
    schema.write_text(FULL_SCHEMA)
    before = cli("schema", "verify", str(schema), "--run", run_id)
    assert before.code == 1, before.stderr
    assert "NOT consistent" in before.stdout
    for key in ("site", "lens", "camera.serial", "score", "clip"):
        assert key in before.stdout, key

    applied = cli("schema", "apply", str(schema))
    assert applied.code == 0, applied.stderr
    assert "5 change(s) written" in applied.stdout
    after = cli("schema", "verify", str(schema), "--run", run_id)
    assert after.code == 0, after.stdout + after.stderr
    assert "Schema verification: consistent" in after.stdout
    assert cli("schema", "verify", str(schema), "--run", "latest", "--json").json()["status"] == "passed"
    assert emulator.state()["resyncs"] == []

    resynced = cli("resync", "--active-project", PROJECT)
    assert resynced.code == 0, resynced.stderr
    assert f"{PROJECT}: accepted" in resynced.stdout
    assert [r["project"] for r in emulator.state()["resyncs"]] == [PROJECT]


def test_ingest_resyncs_only_after_passing_verification_with_something_registered(
    cli: Any, emulator: Any, s3: Any, tmp_path: Path
) -> None:
    schema = tmp_path / "schema.yaml"
    schema.write_text(FULL_SCHEMA)
    assert cli("schema", "apply", str(schema)).code == 0
    good = f"good-{uuid.uuid4().hex[:8]}"
    seed(s3, good, {"a.jpg": {"site": "north", "score": "1"}, "b.jpg": {"lens": "tele", "camera.serial": "B2"}})

    first = ingest(cli, good, "--schema", str(schema), "--active-project", PROJECT, "--active-project", OTHER_PROJECT)
    assert first.code == 0, first.stderr[-3000:]
    assert "Schema verification: consistent" in artifact("schema-verification", first.json()["run_id"])
    assert sorted(r["project"] for r in emulator.state()["resyncs"]) == sorted([PROJECT, OTHER_PROJECT])

    again = ingest(cli, good, "--schema", str(schema), "--active-project", PROJECT)
    assert again.code == 0 and again.json()["registered"] == 0
    assert len(emulator.state()["resyncs"]) == 2, "a run that registered nothing does not re-sync"
    assert "nothing was registered or updated" in artifact("ingest-summary", again.json()["run_id"])

    bad = f"bad-{uuid.uuid4().hex[:8]}"
    seed(s3, bad, {"a.jpg": {"score": "high"}, "b.jpg": {"score": "low"}, "c.jpg": {"score": 1}})
    failed = ingest(cli, bad, "--schema", str(schema), "--active-project", PROJECT)
    assert failed.code == 1, failed.stderr[-3000:]
    assert failed.json()["failed"] == 2 and failed.json()["registered"] == 1
    assert len(emulator.state()["resyncs"]) == 2, "a badly failed import skips the downstream steps"
    assert "import failed badly: 2 of 3 items failed" in artifact("ingest-summary", failed.json()["run_id"])


def test_apply_is_idempotent_and_refuses_conflicts_unless_forceable(cli: Any, emulator: Any, tmp_path: Path) -> None:
    schema = tmp_path / "schema.yaml"
    schema.write_text(FULL_SCHEMA)
    first = cli("schema", "apply", str(schema))
    assert first.code == 0, first.stderr
    state = emulator.state()
    assert state["requests"][APPLY_POST] == 1
    assert state["schema"]["camera.serial"] == {"ty": "variant", "hint": "varchar"}
    assert state["schema"]["site"]["values"] == ["north", "south"]
    assert state["schema"]["clip"]["size"] == 512

    second = cli("schema", "apply", str(schema), "--json")
    assert second.code == 0, second.stderr
    assert second.json()["written"] is False and second.json()["changes"] == []
    assert emulator.state()["requests"][APPLY_POST] == 1, "re-applying the same file makes no POST"

    schema.write_text(FULL_SCHEMA.replace("[north, south]", "[north]").replace("score: number", "score: boolean"))
    refused = cli("schema", "apply", str(schema), "--force")
    assert refused.code == 2
    last = refused.stderr.strip().splitlines()[-1]
    assert "'site'" in last and "south" in last and "Traceback" not in refused.stderr
    refused = cli("schema", "apply", str(schema))
    assert refused.code == 2
    last = refused.stderr.strip().splitlines()[-1]
    assert "'site'" in last and "'score'" in last and "--force" in last
    state = emulator.state()
    assert state["requests"][APPLY_POST] == 1, "a refused apply writes nothing"
    assert state["schema"]["score"] == {"ty": "variant", "hint": "number"}

    schema.write_text(
        FULL_SCHEMA.replace("score: number", "score: boolean").replace("[wide, tele]", "[wide, tele, fish]")
    )
    forced = cli("schema", "apply", str(schema), "--force")
    assert forced.code == 0, forced.stderr
    state = emulator.state()
    assert state["requests"][APPLY_POST] == 2
    assert state["schema"]["score"] == {"ty": "variant", "hint": "boolean"}
    assert state["schema"]["lens"]["values"] == ["fish", "tele", "wide"]
    assert set(state["schema"]) == {"site", "lens", "camera.serial", "score", "clip"}


def test_standalone_usage_errors_exit_2(cli: Any, emulator: Any, tmp_path: Path) -> None:
    schema = tmp_path / "schema.yaml"
    schema.write_text(FULL_SCHEMA)
    both = cli("schema", "verify", str(schema), "--run", "x", "--observed", str(schema))
    assert both.code == 2 and "not both" in both.stderr
    unknown = cli("schema", "verify", str(schema), "--run", "no-such-run")
    assert unknown.code == 2 and "no-such-run" in unknown.stderr
    assert cli("resync").code == 2
    bad = cli("resync", "--active-project", "my-project")
    assert bad.code == 2 and "not an Encord project hash" in bad.stderr
    assert emulator.state()["resyncs"] == []


def test_resync_reports_projects_encord_does_not_accept(cli: Any, emulator: Any) -> None:
    emulator.faults(1.0, ["503"])
    try:
        result = cli("resync", "--active-project", PROJECT, "--timeout", "2", "--json")
    finally:
        emulator.faults(0.0, [])
    assert result.code == 3
    outcome = result.json()["projects"][0]
    assert outcome["project"] == PROJECT and outcome["accepted"] is False
    assert outcome["seconds"] < 15
    assert "not accepted" in result.stderr.strip().splitlines()[-1]
    assert emulator.state()["resyncs"] == []


def test_standalone_flows(emulator: Any, keys: Any, prefect_api: str, tmp_path: Path, monkeypatch: Any) -> None:
    from flows.resync import resync
    from flows.schema import schema_apply, schema_verify
    from tasks.observed import Observed
    from tasks.schema_sync import observed_path, write_observed

    monkeypatch.setenv("ENCORD_SSH_KEY_FILE", str(keys.private))
    monkeypatch.setenv("ENCORD_DOMAIN", emulator.url)
    monkeypatch.setenv("ENCORD_INGEST_RETRY_WAIT", "0.05")
    schema = tmp_path / "schema.yaml"
    schema.write_text(FULL_SCHEMA)
    data = Observed()
    data.observe({"site": "east"})
    write_observed(observed_path(tmp_path, "r1"), data, "r1")

    applied = schema_apply(str(schema))
    assert [c["key"] for c in applied["changes"]] == ["site", "lens", "camera.serial", "score", "clip"]
    assert schema_verify(str(schema))["status"] == "passed"
    state = schema_verify(str(schema), run="r1", state_dir=str(tmp_path), return_state=True)
    assert state.is_failed()
    assert resync([PROJECT])["status"] == "accepted"
    assert resync(["nope"], return_state=True).is_failed()
    assert [r["project"] for r in emulator.state()["resyncs"]] == [PROJECT]


@pytest.fixture(autouse=True)
def _no_faults_left(emulator: Any) -> Any:
    yield
    emulator.faults(0.0, [])
