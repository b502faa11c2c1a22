"""The workspace's metadata schema through the SDK: read it, apply a schema file to it, verify it.

The SDK's `MetadataSchema` is a whole-schema document: `uc.metadata_schema()` GETs it, the
`add_*`/`set_scalar`/`restore_key` calls edit it locally and `save()` POSTs all of it, but only
when something changed. So an apply reads, plans (pure, `tasks.schema_sync`), edits and saves
inside one retried call: a retry re-reads and re-plans, which keeps it idempotent.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from encord.metadata_schema import MetadataSchema, MetadataSchemaError

from encord_ingest.errors import ConfigError, EncordUnavailableError
from integrations.encord.gateway import EncordGateway, EncordSettings
from tasks.observed import Observed
from tasks.schema import ALIASES, SCALAR_TYPES, Schema
from tasks.schema_sync import FOREIGN, ApplyPlan, Change, Diff, RemoteKey, diff_schema, plan_apply


def _remote_key(raw: Mapping[str, Any]) -> RemoteKey:
    ty = str(raw.get("ty", ""))
    if ty == "variant":
        hint = str(raw.get("hint", "text"))
        return RemoteKey(ALIASES.get(hint, hint), variant=True)
    if ty == "enum":
        return RemoteKey("enum", values=tuple(str(v) for v in raw.get("values") or ()))
    if ty == "embedding":
        return RemoteKey("embedding", size=int(raw.get("size") or 0))
    if ty in SCALAR_TYPES:
        return RemoteKey(ty)
    return RemoteKey(FOREIGN, foreign_name=ty or "an unknown type")


def remote_from_wire(wire: Mapping[str, Any] | None) -> dict[str, RemoteKey]:
    """The stored schema's JSON (key -> {"ty": ...}) as RemoteKeys; tombstones keep their former type."""
    out: dict[str, RemoteKey] = {}
    for key, raw in (wire or {}).items():
        if not isinstance(raw, Mapping):
            continue
        if raw.get("ty") == "tombstone":
            former = raw.get("deleted_ty")
            if isinstance(former, Mapping):
                was = _remote_key(former)
                out[key] = RemoteKey(was.type, was.values, was.size, was.variant, True, was.foreign_name)
            else:
                out[key] = RemoteKey("", deleted=True)
        else:
            out[key] = _remote_key(raw)
    return out


def _wire(ms: MetadataSchema) -> dict[str, Any]:
    """The SDK has no public getter for the raw definitions; its repr is exactly the stored JSON."""
    try:
        data = json.loads(repr(ms))
    except ValueError:
        raise EncordUnavailableError("cannot read the metadata schema: the encord SDK changed its format") from None
    return data if isinstance(data, dict) else {}


def gateway_from_env() -> EncordGateway:
    return EncordGateway(EncordSettings.from_env())


def read_workspace(gateway: EncordGateway) -> dict[str, RemoteKey]:
    return gateway.call("read the metadata schema", lambda: remote_from_wire(_wire(gateway.client.metadata_schema())))


def _execute(ms: MetadataSchema, changes: list[Change]) -> None:
    for c in changes:
        try:
            if c.action == "add_scalar":
                ms.add_scalar(c.key, data_type=c.spec.type)  # type: ignore[arg-type]
            elif c.action == "set_scalar":
                ms.set_scalar(c.key, data_type=c.spec.type)  # type: ignore[arg-type]
            elif c.action == "add_enum":
                ms.add_enum(c.key, values=list(c.values))
            elif c.action == "add_enum_options":
                ms.add_enum_options(c.key, values=list(c.values))
            elif c.action == "add_embedding":
                ms.add_embedding(c.key, size=c.spec.size)
            elif c.action == "restore_key":
                ms.restore_key(c.key)
            else:
                raise AssertionError(f"unknown schema change {c.action}")
        except MetadataSchemaError as exc:
            raise ConfigError(f"the encord SDK refused to change key {c.key!r}: {exc}; nothing written") from None


def apply_schema(gateway: EncordGateway, desired: Schema, *, force: bool = False, dry_run: bool = False) -> ApplyPlan:
    """Make the workspace hold `desired`; POSTs only when the plan has changes and no conflicts.

    The caller decides what a conflict means (`plan.raise_for_conflicts()`), so it can show the plan first.
    """

    def attempt() -> ApplyPlan:
        ms = gateway.client.metadata_schema()
        plan = plan_apply(desired, remote_from_wire(_wire(ms)), force=force)
        if plan.conflicts or dry_run or not plan.changes:
            return plan
        _execute(ms, plan.changes)
        ms.save()
        return plan

    return gateway.call("apply the metadata schema", attempt)


def verify_schema(
    gateway: EncordGateway,
    *,
    file: Schema | None,
    observed: Observed | None,
    file_label: str = "the file",
    data_label: str = "the run",
) -> Diff:
    """Workspace schema vs the file and vs the clientMetadata a run sent; one GET."""
    remote = read_workspace(gateway)
    return diff_schema(remote, file=file, observed=observed, file_label=file_label, data_label=data_label)
