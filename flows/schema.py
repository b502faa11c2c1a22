"""Standalone schema flows, for deployments and schedules: verify the workspace, apply a schema file.

The CLI runs the same plain functions directly (fast, no Prefect server); these flows add the
`schema-verification` artifact and a Failed state that alerts when the schema is off.
"""

from __future__ import annotations

import logging
from typing import Any

from prefect import flow
from prefect.states import Failed

from encord_ingest.errors import IngestError
from flows.downstream import verify_schema
from integrations.encord import schema_api
from tasks.run import STATE_DIR
from tasks.schema import load_schema
from tasks.schema_sync import find_observed, read_observed

log = logging.getLogger("encord_ingest.flow")


@flow(name="encord-schema-verify", log_prints=True)
def schema_verify(schema_file: str, run: str | None = None, state_dir: str = STATE_DIR) -> Any:
    """Workspace schema vs `schema_file` and, with `run` (a run id or 'latest'), the data that run sent."""
    try:
        observed, label = None, "the run"
        if run:
            observed, run_id = read_observed(find_observed(state_dir, run))
            label = f"run {run_id or run}"
        result = verify_schema(schema_file, observed, label)
    except IngestError as exc:
        log.error("%s", exc)
        return Failed(message=str(exc), data=exc)
    if result["status"] != "passed":
        return Failed(message=f"schema verification found {result['problems']} problem(s)", data=result)
    return result


@flow(name="encord-schema-apply", log_prints=True)
def schema_apply(schema_file: str, force: bool = False, dry_run: bool = False) -> Any:
    """Write `schema_file` to the workspace's metadata schema: only what differs, never deleting a key."""
    try:
        plan = schema_api.apply_schema(
            schema_api.gateway_from_env(), load_schema(schema_file), force=force, dry_run=dry_run
        )
        plan.raise_for_conflicts()
    except IngestError as exc:
        log.error("%s", exc)
        return Failed(message=str(exc), data=exc)
    return plan.as_dict()
