"""Unit tests of schema sync: apply planning and conflicts, the verification diff, observed-key files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from encord_ingest.errors import ConfigError, EncordUnavailableError, UsageError
from flows.downstream import max_failure_ratio, skip_reason
from integrations.encord.active import ResyncOutcome, ResyncReport, project_hashes
from integrations.encord.schema_api import remote_from_wire
from tasks.artifacts import downstream_markdown, verification_markdown
from tasks.observed import MAX_VALUES, Observed
from tasks.run import RunSummary
from tasks.schema import parse_schema
from tasks.schema_sync import (
    FOREIGN,
    RemoteKey,
    SchemaConflictError,
    diff_schema,
    find_observed,
    observed_path,
    plan_apply,
    read_observed,
    render_diff,
    render_plan,
    write_observed,
)

FILE = parse_schema(
    {
        "keys": {
            "site": {"type": "enum", "values": ["north", "south"]},
            "captured_at": "datetime",
            "camera.serial": "string",
            "score": "number",
            "clip": {"type": "embedding", "size": 512},
        }
    }
)

WIRE_MATCHING = {
    "site": {"ty": "enum", "values": ["south", "north"]},
    "captured_at": {"ty": "variant", "hint": "datetime"},
    "camera.serial": {"ty": "variant", "hint": "varchar"},
    "score": {"ty": "number", "format": "F64"},
    "clip": {"ty": "embedding", "size": 512, "api": None},
}


def observed(*rows: dict) -> Observed:
    out = Observed()
    for row in rows:
        out.observe(row)
    return out


# -- the stored wire shape ----------------------------------------------------------------------------------
def test_wire_shape_becomes_remote_keys_incl_tombstones_legacy_and_foreign_types() -> None:
    remote = remote_from_wire(
        {
            **WIRE_MATCHING,
            "gone": {"ty": "tombstone", "deleted_ty": {"ty": "variant", "hint": "text"}},
            "hard": {"ty": "tombstone", "deleted_ty": None},
            "where": {"ty": "geospatial"},
            "legacy": {"ty": "varchar", "max_length": 8192},
            "alias": {"ty": "variant", "hint": "long_string"},
        }
    )
    assert remote["site"] == RemoteKey("enum", values=("south", "north"))
    assert remote["captured_at"] == RemoteKey("datetime", variant=True)
    assert remote["score"] == RemoteKey("number", variant=False)
    assert remote["clip"] == RemoteKey("embedding", size=512)
    assert remote["gone"] == RemoteKey("text", variant=True, deleted=True)
    assert remote["hard"] == RemoteKey("", deleted=True)
    assert remote["where"].type == FOREIGN and remote["where"].describe() == "geospatial"
    assert remote["legacy"] == RemoteKey("varchar")
    assert remote["alias"].type == "text"
    assert remote_from_wire(None) == {}


# -- apply: planning and conflicts ---------------------------------------------------------------------------
def test_apply_on_an_empty_workspace_adds_every_key_with_the_right_sdk_call() -> None:
    plan = plan_apply(FILE, {})
    actions = {c.key: (c.action, c.values, c.spec.size) for c in plan.changes}
    assert actions == {
        "site": ("add_enum", ("north", "south"), 0),
        "captured_at": ("add_scalar", (), 0),
        "camera.serial": ("add_scalar", (), 0),
        "score": ("add_scalar", (), 0),
        "clip": ("add_embedding", (), 512),
    }
    assert not plan.conflicts and not plan.unchanged


def test_apply_of_a_matching_workspace_plans_nothing_and_reports_workspace_only_keys() -> None:
    remote = remote_from_wire({**WIRE_MATCHING, "team.other": {"ty": "variant", "hint": "uuid"}})
    plan = plan_apply(FILE, remote)
    assert plan.changes == [] and plan.conflicts == []
    assert sorted(plan.unchanged) == sorted(FILE.keys)
    assert plan.workspace_only == ["team.other"], "never deleted, only reported"
    assert "already matches" in render_plan(plan, written=False)


def test_apply_adds_only_the_new_enum_options() -> None:
    desired = parse_schema({"keys": {"site": {"type": "enum", "values": ["north", "south", "east"]}}})
    plan = plan_apply(desired, remote_from_wire({"site": WIRE_MATCHING["site"]}))
    assert [(c.action, c.values) for c in plan.changes] == [("add_enum_options", ("east",))]


def test_apply_refuses_every_change_encord_rejects_and_lists_each_conflict() -> None:
    desired = parse_schema(
        {
            "keys": {
                "site": {"type": "enum", "values": ["north"]},
                "clip": {"type": "embedding", "size": 256},
                "captured_at": "number",
                "score": "boolean",
                "new_key": "text",
            }
        }
    )
    plan = plan_apply(desired, remote_from_wire(WIRE_MATCHING))
    conflicts = {c.key: c for c in plan.conflicts}
    assert set(conflicts) == {"site", "clip", "captured_at", "score"}
    assert "south" in conflicts["site"].reason and not conflicts["site"].forceable
    assert "512" in conflicts["clip"].reason and "256" in conflicts["clip"].reason
    assert not conflicts["clip"].forceable
    assert conflicts["captured_at"].forceable, "a variant scalar may be re-typed (set_scalar)"
    assert not conflicts["score"].forceable, "a legacy fixed-type scalar cannot be re-typed"
    with pytest.raises(SchemaConflictError) as info:
        plan.raise_for_conflicts()
    message = str(info.value)
    assert "\n" not in message and "nothing written" in message
    for key in ("site", "clip", "captured_at", "score"):
        assert repr(key) in message
    assert info.value.exit_code == 2


def test_force_overrides_only_what_encord_allows() -> None:
    desired = parse_schema({"keys": {"captured_at": "number", "site": {"type": "enum", "values": ["north"]}}})
    remote = remote_from_wire(WIRE_MATCHING)
    plan = plan_apply(desired, remote, force=True)
    assert [(c.key, c.action, c.spec.type) for c in plan.changes] == [("captured_at", "set_scalar", "number")]
    assert [c.key for c in plan.forced] == ["captured_at"]
    assert [c.key for c in plan.conflicts] == ["site"], "enum options cannot be removed, even with --force"
    only_scalar = plan_apply(parse_schema({"keys": {"captured_at": "number"}}), remote, force=True)
    only_scalar.raise_for_conflicts()


@pytest.mark.parametrize(
    ("wire", "desired", "expect"),
    [
        ({"ty": "enum", "values": ["a"]}, "text", "cannot change the type of an enum"),
        ({"ty": "variant", "hint": "text"}, {"type": "enum", "values": ["a"]}, "cannot turn an existing text"),
        ({"ty": "embedding", "size": 4}, "number", "cannot change the type of an embedding"),
        ({"ty": "geospatial"}, "text", "cannot describe"),
        ({"ty": "tombstone", "deleted_ty": None}, "text", "hard-deleted"),
        (
            {"ty": "tombstone", "deleted_ty": {"ty": "enum", "values": ["a", "b"]}},
            {"type": "enum", "values": ["a"]},
            "options [b]",
        ),
        ({"ty": "tombstone", "deleted_ty": {"ty": "enum", "values": ["a"]}}, "text", "cannot re-add"),
    ],
)
def test_unforceable_conflicts(wire: dict, desired: object, expect: str) -> None:
    plan = plan_apply(parse_schema({"keys": {"k": desired}}), remote_from_wire({"k": wire}), force=True)
    assert len(plan.conflicts) == 1 and not plan.conflicts[0].forceable and not plan.changes
    assert expect in plan.conflicts[0].reason


def test_soft_deleted_keys_are_restored_or_forced_back() -> None:
    wire = {
        "same": {"ty": "tombstone", "deleted_ty": {"ty": "variant", "hint": "text"}},
        "grown": {"ty": "tombstone", "deleted_ty": {"ty": "enum", "values": ["a"]}},
        "retyped": {"ty": "tombstone", "deleted_ty": {"ty": "variant", "hint": "text"}},
    }
    desired = parse_schema(
        {"keys": {"same": "text", "grown": {"type": "enum", "values": ["a", "b"]}, "retyped": "number"}}
    )
    plan = plan_apply(desired, remote_from_wire(wire))
    assert [(c.key, c.action) for c in plan.changes] == [
        ("same", "restore_key"),
        ("grown", "restore_key"),
        ("grown", "add_enum_options"),
    ]
    assert [(c.key, c.forceable) for c in plan.conflicts] == [("retyped", True)]
    forced = plan_apply(desired, remote_from_wire(wire), force=True)
    assert ("retyped", "add_scalar") in [(c.key, c.action) for c in forced.changes]


# -- verify: the diff ----------------------------------------------------------------------------------------
def test_matching_workspace_file_and_data_are_consistent() -> None:
    data = observed(
        {"site": "north", "captured_at": "2024-01-02T03:04:05Z", "camera.serial": "A1", "score": 3},
        {"site": "south", "score": None, "clip": [0.0] * 512},
    )
    diff = diff_schema(remote_from_wire(WIRE_MATCHING), file=FILE, observed=data)
    assert diff.consistent, render_diff(diff)
    assert diff.as_dict()["status"] == "passed"


def test_data_keys_missing_from_the_schema_are_problems_named_in_the_diff() -> None:
    data = observed({"site": "north", "lens": "wide", "operator.id": 7}, {"lens": "tele"})
    diff = diff_schema(remote_from_wire(WIRE_MATCHING), observed=data, data_label="run r1")
    problems = {f.key: f.message for f in diff.problems}
    assert set(problems) == {"lens", "operator.id"}
    assert "2 items" in problems["lens"] and "not in the workspace schema" in problems["lens"]
    text = render_diff(diff)
    assert "NOT consistent, 2 problems" in text and "lens" in text and "operator.id" in text


def test_data_type_enum_embedding_and_format_mismatches() -> None:
    data = observed(
        {"score": "high", "site": "west", "clip": [1.0, 2.0], "captured_at": "yesterday", "camera.serial": 5},
        {"site": "north", "clip": [0.0] * 512},
    )
    diff = diff_schema(remote_from_wire(WIRE_MATCHING), observed=data)
    problems = {f.key: f.message for f in diff.problems}
    assert set(problems) == {"score", "site", "clip", "captured_at", "camera.serial"}
    assert "string" in problems["score"]
    assert "west" in problems["site"] and "north" not in problems["site"]
    assert "arrays of 2" in problems["clip"]
    assert "ISO 8601" in problems["captured_at"]
    assert "number" in problems["camera.serial"]


def test_deleted_keys_count_as_missing_and_foreign_types_are_notes() -> None:
    remote = remote_from_wire(
        {"gone": {"ty": "tombstone", "deleted_ty": {"ty": "variant", "hint": "text"}}, "geo": {"ty": "geospatial"}}
    )
    diff = diff_schema(remote, observed=observed({"gone": "x", "geo": {"lat": 1}}))
    assert [f.key for f in diff.problems] == ["gone"] and "deleted" in diff.problems[0].message
    assert [f.key for f in diff.findings if not f.problem] == ["geo"]


def test_file_versus_workspace_differences_and_notes() -> None:
    remote = remote_from_wire(
        {
            "site": {"ty": "enum", "values": ["north", "west"]},
            "captured_at": {"ty": "variant", "hint": "text"},
            "clip": {"ty": "embedding", "size": 256},
            "team.other": {"ty": "variant", "hint": "uuid"},
        }
    )
    diff = diff_schema(remote, file=FILE, file_label="schema.yaml")
    problems = {f.key: f.message for f in diff.problems}
    assert set(problems) == {"site", "captured_at", "clip", "camera.serial", "score"}
    assert "south" in problems["site"] and "west" in problems["site"]
    assert "not in the workspace" in problems["score"]
    notes = {f.key for f in diff.findings if not f.problem}
    assert notes == {"team.other"}, "workspace-only keys are reported, not failed"


def test_enum_value_sampling_is_noted_when_capped() -> None:
    remote = remote_from_wire({"site": {"ty": "enum", "values": [f"v{i}" for i in range(MAX_VALUES)]}})
    diff = diff_schema(remote, observed=observed(*({"site": f"v{i}"} for i in range(MAX_VALUES + 5))))
    assert diff.consistent
    assert any("first" in f.message for f in diff.findings)


def test_verification_markdown_renders_findings() -> None:
    diff = diff_schema(remote_from_wire({}), file=FILE, observed=observed({"lens": "x"}))
    text = verification_markdown(diff.as_dict())
    assert "not consistent" in text and "`lens`" in text and "`camera.serial`" in text
    down = downstream_markdown(
        {"verification": diff.as_dict(), "resync": {"status": "skipped", "reason": "verification did not pass"}}
    )
    assert any("Active re-sync: skipped" in line for line in down)


# -- observed keys on disk -----------------------------------------------------------------------------------
def test_observed_file_round_trip_and_latest(tmp_path: Path) -> None:
    data = observed({"site": "north", "clip": [1, 2, 3], "n": 1}, {"site": None})
    first = write_observed(observed_path(tmp_path, "run-1"), data, "run-1")
    assert first == tmp_path / "runs" / "run-1.observed.json"
    again, run_id = read_observed(first)
    assert run_id == "run-1"
    assert again.keys["site"].count == 2 and again.keys["site"].types == {"string", "null"}
    assert again.keys["clip"].lengths == {3} and again.keys["site"].values == {"north"}
    second = write_observed(observed_path(tmp_path, "run-2"), Observed(), "run-2")
    os.utime(first, (1, 1))
    assert find_observed(tmp_path, "latest") == second
    assert find_observed(tmp_path, "run-1") == first


def test_observed_file_errors_are_usage_or_config_errors(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no observed-keys file"):
        read_observed(tmp_path / "missing.json")
    with pytest.raises(UsageError, match="no observed-keys files"):
        find_observed(tmp_path, "latest")
    with pytest.raises(UsageError):
        observed_path(tmp_path, "../etc/passwd")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"version": 1, "keys": {"a": {"count": "x"}}}))
    with pytest.raises(ConfigError, match="not an observed-keys file"):
        read_observed(bad)


# -- downstream gate and re-sync reporting ---------------------------------------------------------------------
def test_downstream_is_skipped_when_the_import_failed_badly(monkeypatch: pytest.MonkeyPatch) -> None:
    assert skip_reason(RunSummary(registered=5, failed=5), 0.5) is None, "exactly half is not above the limit"
    reason = skip_reason(RunSummary(registered=4, updated=0, failed=6), 0.5)
    assert reason is not None and "6 of 10" in reason
    assert skip_reason(RunSummary(), 0.5) is None
    assert skip_reason(RunSummary(updated=1, failed=2), 0.9) is None
    monkeypatch.setenv("ENCORD_INGEST_DOWNSTREAM_MAX_FAILURE_RATIO", "0.1")
    assert max_failure_ratio() == 0.1
    monkeypatch.setenv("ENCORD_INGEST_DOWNSTREAM_MAX_FAILURE_RATIO", "lots")
    with pytest.raises(ConfigError):
        max_failure_ratio()


def test_project_hashes_are_checked_and_deduplicated() -> None:
    h = "7d0c8a8e-1111-4222-8333-444455556666"
    assert project_hashes([h, f" {h} "]) == [h]
    with pytest.raises(UsageError, match="not an Encord project hash"):
        project_hashes(["my-project"])


def test_resync_report_maps_failures_to_exit_codes() -> None:
    ok = ResyncReport([ResyncOutcome("a", True)])
    ok.raise_for_failures()
    with pytest.raises(ConfigError):
        ResyncReport(
            [ResyncOutcome("a", True), ResyncOutcome("b", False, "no such project", True)]
        ).raise_for_failures()
    with pytest.raises(EncordUnavailableError, match="1 of 1"):
        ResyncReport([ResyncOutcome("a", False, "not accepted within 1s")]).raise_for_failures()
