"""Schema sync as pure functions: plan an apply, diff workspace/file/data, keep a run's observed keys.

Nothing here talks to Encord; `integrations.encord.schema_api` reads the workspace schema into
`RemoteKey`s and executes an `ApplyPlan` through the SDK. Keeping the decisions pure lets the
unit tests cover every conflict and mismatch without a server.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any

from encord_ingest.errors import ConfigError, UsageError
from tasks.observed import MAX_VALUES, KeyStats, Observed
from tasks.schema import ACTIVE_EMBEDDING_SIZE, SCALAR_TYPES, KeySpec, Schema

FOREIGN = "foreign"  # a workspace type the schema file cannot describe (geospatial, user, ...)
_SHOWN = 10


class SchemaConflictError(ConfigError):
    """`schema apply` refused: the file asks for a change Encord would reject. Nothing was written."""


@dataclass(slots=True, frozen=True)
class RemoteKey:
    """One key of the workspace schema, reduced to what apply and verify decide on.

    A tombstone (`deleted`) keeps its former definition in `type`/`values`/`size` when it was
    soft-deleted; a hard-deleted key has `type == ""`. `variant` marks scalars stored as the SDK's
    'variant' kind, the only kind `add_scalar` may re-type.
    """

    type: str
    values: tuple[str, ...] = ()
    size: int = 0
    variant: bool = False
    deleted: bool = False
    foreign_name: str = ""

    def describe(self) -> str:
        if self.type == FOREIGN:
            return self.foreign_name or "an unknown type"
        if not self.type:
            return "hard-deleted"
        return KeySpec(self.type, tuple(sorted(self.values)), self.size).describe()

    def same_as(self, spec: KeySpec) -> bool:
        if self.type != spec.type:
            return False
        if spec.type == "enum":
            return set(self.values) == set(spec.values)
        return spec.type != "embedding" or self.size == spec.size


def _shown(values: list[str] | set[str] | tuple[str, ...]) -> str:
    ordered = sorted(values)
    more = f", ... ({len(ordered) - _SHOWN} more)" if len(ordered) > _SHOWN else ""
    return "[" + ", ".join(ordered[:_SHOWN]) + more + "]"


# -- apply -------------------------------------------------------------------------------------------------------
@dataclass(slots=True, frozen=True)
class Change:
    """One SDK call of an apply: add_scalar, set_scalar, add_enum, add_enum_options, add_embedding, restore_key."""

    key: str
    action: str
    spec: KeySpec
    values: tuple[str, ...] = ()
    note: str = ""

    def describe(self) -> str:
        if self.action == "add_enum_options":
            return f"add options {_shown(self.values)} to the enum"
        if self.action == "restore_key":
            return f"restore the deleted key as {self.spec.describe()}"
        if self.action == "set_scalar":
            return f"change the type to {self.spec.describe()} ({self.note}, forced)"
        return f"add as {self.spec.describe()}" + (f" ({self.note})" if self.note else "")


@dataclass(slots=True, frozen=True)
class Conflict:
    key: str
    reason: str
    forceable: bool


@dataclass(slots=True)
class ApplyPlan:
    """What an apply does: changes to make, conflicts that block it, and keys it leaves alone."""

    changes: list[Change] = field(default_factory=list)
    conflicts: list[Conflict] = field(default_factory=list)
    forced: list[Conflict] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    workspace_only: list[str] = field(default_factory=list)

    def raise_for_conflicts(self) -> None:
        if not self.conflicts:
            return
        hint = " (--force overrides the ones marked forceable)" if any(c.forceable for c in self.conflicts) else ""
        listed = "; ".join(f"{c.key!r} {c.reason}" + (" [forceable]" if c.forceable else "") for c in self.conflicts)
        n = len(self.conflicts)
        raise SchemaConflictError(
            f"schema apply refused, nothing written: {n} conflict{'s' if n > 1 else ''}{hint}: {listed}"
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "changes": [{"key": c.key, "action": c.action, "change": c.describe()} for c in self.changes],
            "conflicts": [asdict(c) for c in self.conflicts],
            "forced": [asdict(c) for c in self.forced],
            "unchanged": list(self.unchanged),
            "workspace_only": list(self.workspace_only),
        }


def _add(key: str, spec: KeySpec, note: str = "") -> Change:
    action = {"enum": "add_enum", "embedding": "add_embedding"}.get(spec.type, "add_scalar")
    return Change(key, action, spec, spec.values, note)


def _plan_deleted(key: str, spec: KeySpec, remote: RemoteKey) -> tuple[list[Change], Conflict | None]:
    """A tombstone: restore the old definition, or (scalars only, forced) re-add with another type."""
    if not remote.type:
        return [], Conflict(key, "was hard-deleted in the workspace; Encord cannot restore or re-add it", False)
    if remote.type == spec.type and spec.type == "enum":
        lost = set(remote.values) - set(spec.values)
        if lost:
            return [], Conflict(
                key,
                f"was deleted as an enum with options {_shown(lost)} the file lacks; Encord cannot remove them",
                False,
            )
        extra = tuple(sorted(set(spec.values) - set(remote.values)))
        restore = [Change(key, "restore_key", spec)]
        return restore + ([Change(key, "add_enum_options", spec, extra)] if extra else []), None
    if remote.same_as(spec):
        return [Change(key, "restore_key", spec)], None
    if remote.variant and spec.type in SCALAR_TYPES:
        return [Change(key, "add_scalar", spec, note=f"re-added, was deleted as {remote.describe()}")], Conflict(
            key, f"was deleted as {remote.describe()}; re-adding it as {spec.describe()} changes its type", True
        )
    return [], Conflict(key, f"was deleted as {remote.describe()}; Encord cannot re-add it as {spec.describe()}", False)


def _plan_live(key: str, spec: KeySpec, remote: RemoteKey) -> tuple[list[Change], Conflict | None]:
    if remote.type == FOREIGN:
        return [], Conflict(
            key, f"is {remote.describe()} in the workspace, a type a schema file cannot describe", False
        )
    if remote.same_as(spec):
        return [], None
    if remote.type == spec.type == "enum":
        lost = set(remote.values) - set(spec.values)
        if lost:
            return [], Conflict(
                key,
                f"would lose enum options {_shown(lost)}: Encord cannot remove enum options; add them to the file",
                False,
            )
        extra = tuple(sorted(set(spec.values) - set(remote.values)))
        return [Change(key, "add_enum_options", spec, extra)], None
    if remote.type == spec.type == "embedding":
        return [], Conflict(
            key,
            f"is an embedding of size {remote.size} in the workspace, {spec.size} in the file: "
            "Encord cannot change an embedding's size",
            False,
        )
    change = f"is {remote.describe()} in the workspace, {spec.describe()} in the file"
    if remote.variant and spec.type in SCALAR_TYPES:
        return [Change(key, "set_scalar", spec, note=f"was {remote.describe()}")], Conflict(
            key, f"{change}: re-typing a scalar changes how stored values are read", True
        )
    if remote.type in ("enum", "embedding"):
        why = f"Encord cannot change the type of an {remote.type} key"
    elif spec.type in ("enum", "embedding"):
        why = f"Encord cannot turn an existing {remote.type} key into an {spec.type}"
    else:
        why = f"the key is a fixed {remote.type} (not a variant scalar), whose type Encord cannot change"
    return [], Conflict(key, f"{change}: {why}", False)


def plan_apply(desired: Schema, remote: Mapping[str, RemoteKey], *, force: bool = False) -> ApplyPlan:
    """Decide every SDK call that makes the workspace hold `desired`; never deletes a key."""
    plan = ApplyPlan()
    for key, spec in desired.keys.items():
        have = remote.get(key)
        if have is None:
            plan.changes.append(_add(key, spec))
            continue
        changes, conflict = (_plan_deleted if have.deleted else _plan_live)(key, spec, have)
        if conflict is not None and not (force and conflict.forceable):
            plan.conflicts.append(conflict)
            continue
        if conflict is not None:
            plan.forced.append(conflict)
        if changes:
            plan.changes.extend(changes)
        else:
            plan.unchanged.append(key)
    plan.workspace_only = sorted(k for k, r in remote.items() if k not in desired.keys and not r.deleted)
    return plan


# -- verify ------------------------------------------------------------------------------------------------------
@dataclass(slots=True, frozen=True)
class Finding:
    """One line of a verification diff; `problem` ones make it inconsistent, the rest are notes."""

    key: str
    source: str
    problem: bool
    message: str


@dataclass(slots=True)
class Diff:
    findings: list[Finding] = field(default_factory=list)
    compared: list[str] = field(default_factory=list)

    @property
    def problems(self) -> list[Finding]:
        return [f for f in self.findings if f.problem]

    @property
    def consistent(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": "passed" if self.consistent else "failed",
            "problems": len(self.problems),
            "compared": list(self.compared),
            "findings": [asdict(f) for f in self.findings],
        }


_JSON_TYPES = {
    "number": {"number"},
    "boolean": {"boolean"},
    "varchar": {"string"},
    "text": {"string"},
    "uuid": {"string"},
    "datetime": {"string"},
    "enum": {"string"},
    "embedding": {"array"},
}


def _diff_file(file: Schema, remote: Mapping[str, RemoteKey], label: str) -> list[Finding]:
    out: list[Finding] = []
    for key, spec in file.keys.items():
        have = remote.get(key)
        if have is None or have.deleted:
            state = "is deleted in" if have is not None else "is not in"
            out.append(Finding(key, "file", True, f"{label} has {spec.describe()}, but the key {state} the workspace"))
        elif have.type == "enum" == spec.type and not have.same_as(spec):
            missing, extra = set(spec.values) - set(have.values), set(have.values) - set(spec.values)
            parts = [f"options {_shown(missing)} missing in the workspace"] if missing else []
            parts += [f"options {_shown(extra)} in the workspace but not in {label}"] if extra else []
            out.append(Finding(key, "file", True, "enum differs: " + "; ".join(parts)))
        elif not have.same_as(spec):
            out.append(Finding(key, "file", True, f"workspace has {have.describe()}, {label} has {spec.describe()}"))
        if spec.type == "embedding" and spec.size != ACTIVE_EMBEDDING_SIZE:
            out.append(Finding(key, "file", False, f"Active uses {ACTIVE_EMBEDDING_SIZE}-dimensional embeddings"))
    for key in sorted(k for k, r in remote.items() if k not in file.keys and not r.deleted):
        out.append(Finding(key, "workspace", False, f"in the workspace but not in {label} (kept)"))
    return out


def _bad_format(kind: str, values: set[str]) -> int:
    bad = 0
    for text in values:
        try:
            if kind == "uuid":
                uuid.UUID(text.strip())
            elif len(text.strip()) == 10:
                date.fromisoformat(text.strip())
            else:
                datetime.fromisoformat(text.strip())
        except ValueError:
            bad += 1
    return bad


def _diff_key_data(key: str, stats: KeyStats, have: RemoteKey | None, label: str) -> list[Finding]:
    items = f"{stats.count:,} item{'s' if stats.count != 1 else ''}"
    if have is None or have.deleted:
        where = "is deleted in" if have is not None else "is not in"
        return [Finding(key, "data", True, f"{label} sent it in {items}, but the key {where} the workspace schema")]
    if have.type == FOREIGN:
        return [Finding(key, "data", False, f"{have.describe()} in the workspace; values not checked")]
    out: list[Finding] = []
    wrong = sorted(stats.types - _JSON_TYPES[have.type] - {"null"})
    if wrong:
        out.append(
            Finding(key, "data", True, f"workspace has {have.describe()}, {label} sent {', '.join(wrong)} values")
        )
    if have.type == "enum":
        outside = stats.values - set(have.values)
        if outside:
            out.append(Finding(key, "data", True, f"{label} sent values {_shown(outside)} that are not enum options"))
    elif have.type == "embedding":
        sizes = sorted(n for n in stats.lengths if n != have.size)
        if sizes:
            shown = ", ".join(map(str, sizes))
            out.append(Finding(key, "data", True, f"embedding size is {have.size}, {label} sent arrays of {shown}"))
    elif have.type in ("uuid", "datetime"):
        bad = _bad_format(have.type, stats.values)
        if bad:
            what = "UUIDs" if have.type == "uuid" else "ISO 8601 dates"
            out.append(Finding(key, "data", True, f"{bad} of the sampled values {label} sent are not {what}"))
    if have.type in ("enum", "uuid", "datetime") and len(stats.values) >= MAX_VALUES:
        out.append(Finding(key, "data", False, f"only the first {MAX_VALUES} distinct values were checked"))
    return out


def diff_schema(
    remote: Mapping[str, RemoteKey],
    *,
    file: Schema | None = None,
    observed: Observed | None = None,
    file_label: str = "the file",
    data_label: str = "the run",
) -> Diff:
    """Compare the workspace schema with the file (when given) and with the data a run sent (when given)."""
    live = sum(1 for r in remote.values() if not r.deleted)
    diff = Diff(compared=[f"workspace schema ({live} keys)"])
    if file is not None:
        diff.compared.append(f"{file_label} ({len(file.keys)} keys)")
        diff.findings += _diff_file(file, remote, file_label)
    if observed is not None:
        diff.compared.append(f"{data_label} ({len(observed.keys)} keys in the clientMetadata sent)")
        for key in sorted(observed.keys):
            diff.findings += _diff_key_data(key, observed.keys[key], remote.get(key), data_label)
    diff.findings.sort(key=lambda f: (not f.problem, f.key, f.source))
    return diff


def render_diff(diff: Diff) -> str:
    """Plain text for a terminal: one line per finding, problems first."""
    n = len(diff.problems)
    verdict = "consistent" if diff.consistent else f"NOT consistent, {n} problem{'s' if n != 1 else ''}"
    lines = [f"Schema verification: {verdict}", "compared " + " with ".join(diff.compared)]
    width = max((len(f.key) for f in diff.findings), default=0)
    for f in diff.findings:
        lines.append(f"  {'FAIL' if f.problem else 'note'}  {f.key.ljust(width)}  {f.message}")
    return "\n".join(lines)


def render_plan(plan: ApplyPlan, *, written: bool) -> str:
    lines: list[str] = []
    width = max([len(k) for k in [*(c.key for c in plan.changes), *(c.key for c in plan.conflicts)]] or [0])
    for c in plan.conflicts:
        lines.append(f"  CONFLICT  {c.key.ljust(width)}  {c.reason}" + ("  [forceable]" if c.forceable else ""))
    for ch in plan.changes:
        lines.append(f"  change    {ch.key.ljust(width)}  {ch.describe()}")
    if plan.unchanged:
        lines.append(f"  unchanged: {', '.join(plan.unchanged)}")
    if plan.workspace_only:
        lines.append(f"  in the workspace, not in the file (kept): {', '.join(plan.workspace_only)}")
    if plan.conflicts:
        head = "Schema apply refused: nothing written"
    elif not plan.changes:
        head = "Schema apply: the workspace already matches the file; nothing written"
    else:
        head = f"Schema apply: {len(plan.changes)} change(s) " + ("written" if written else "planned (dry run)")
    return "\n".join([head, *lines])


# -- observed keys of a run, on disk -----------------------------------------------------------------------------
OBSERVED_VERSION = 1
_RUN_ID = re.compile(r"[A-Za-z0-9._-]+")


def observed_path(state_dir: str | Path, run_id: str) -> Path:
    """Where a run's observed-key stats live: beside the dead letters, `<state>/runs/<run_id>.observed.json`."""
    if not _RUN_ID.fullmatch(run_id) or run_id.startswith("."):
        raise UsageError(f"run id {run_id!r} has characters a run id never has")
    return Path(state_dir) / "runs" / f"{run_id}.observed.json"


def observed_to_json(observed: Observed, run_id: str) -> dict[str, Any]:
    keys = {
        k: {"count": s.count, "types": sorted(s.types), "values": sorted(s.values), "lengths": sorted(s.lengths)}
        for k, s in sorted(observed.keys.items())
    }
    return {"version": OBSERVED_VERSION, "run_id": run_id, "keys": keys}


def observed_from_json(data: Any, *, source: str) -> Observed:
    try:
        if data.get("version") != OBSERVED_VERSION:
            raise ConfigError(f"{source}: unsupported version {data.get('version')!r}")
        out = Observed()
        for key, raw in data["keys"].items():
            out.keys[str(key)] = KeyStats(
                count=int(raw["count"]),
                types={str(t) for t in raw["types"]},
                values={str(v) for v in raw["values"]},
                lengths={int(n) for n in raw["lengths"]},
            )
        return out
    except (AttributeError, KeyError, TypeError, ValueError):
        raise ConfigError(f"{source}: not an observed-keys file written by encord-ingest") from None


def write_observed(path: Path, observed: Observed, run_id: str) -> Path:
    """Atomic write (temp file + rename) so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(observed_to_json(observed, run_id), indent=1), encoding="utf-8")
    os.replace(tmp, path)
    return path


def read_observed(path: Path) -> tuple[Observed, str]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"no observed-keys file {path}: was the run made with encord-ingest ingest here?") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path} cannot be read as JSON: {exc.__class__.__name__}") from None
    run_id = data.get("run_id", "") if isinstance(data, dict) else ""
    return observed_from_json(data, source=str(path)), str(run_id)


def find_observed(state_dir: str | Path, run: str) -> Path:
    """`run` is a run id, or `latest` for the newest observed file in the state directory."""
    if run != "latest":
        return observed_path(state_dir, run)
    runs = Path(state_dir) / "runs"
    found = sorted(runs.glob("*.observed.json"), key=lambda p: p.stat().st_mtime) if runs.is_dir() else []
    if not found:
        raise UsageError(f"no observed-keys files in {runs}: run encord-ingest ingest first")
    return found[-1]
