"""Downstream steps after the last batch of an ingest run: schema verification, then Active re-sync.

The run's observed clientMetadata is always written to `<state>/runs/<run_id>.observed.json`, so
`encord-ingest schema verify FILE --run RUN_ID` can check it later, after a schema fix, without
re-importing. Verification and re-sync are skipped when the import failed badly (more than
`ENCORD_INGEST_DOWNSTREAM_MAX_FAILURE_RATIO` of the items, 0.5 by default), and the re-sync only
runs when verification passed and the run registered or updated something. A downstream failure
never fails the run: it is recorded in the summary and can be retried on its own.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.utilities.annotations import quote

from encord_ingest.errors import ConfigError, IngestError
from integrations.encord import schema_api
from integrations.encord.active import resync
from tasks import artifacts
from tasks.observed import Observed
from tasks.run import IngestParams, RunSummary
from tasks.schema import load_schema
from tasks.schema_sync import observed_path, write_observed

log = logging.getLogger("encord_ingest.downstream")

MAX_FAILURE_RATIO = 0.5
FAILURE_RATIO_ENV = "ENCORD_INGEST_DOWNSTREAM_MAX_FAILURE_RATIO"
RESYNC_TIMEOUT_ENV = "ENCORD_INGEST_RESYNC_TIMEOUT"


def _env_number(name: str, default: float | None, low: float, high: float) -> float | None:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not low <= value <= high:
        raise ConfigError(f"{name} must be a number from {low:g} to {high:g}")
    return value


def max_failure_ratio() -> float:
    value = _env_number(FAILURE_RATIO_ENV, MAX_FAILURE_RATIO, 0.0, 1.0)
    return MAX_FAILURE_RATIO if value is None else value


def resync_timeout() -> float | None:
    return _env_number(RESYNC_TIMEOUT_ENV, None, 1.0, 7 * 24 * 3600.0)


def skip_reason(summary: RunSummary, limit: float) -> str | None:
    """Why downstream steps must not run: the import failed badly (failed share above `limit`)."""
    attempted = summary.registered + summary.updated + summary.failed
    if attempted and summary.failed / attempted > limit:
        return (
            f"import failed badly: {summary.failed:,} of {attempted:,} items failed "
            f"({summary.failed / attempted:.0%} > {limit:.0%}, {FAILURE_RATIO_ENV})"
        )
    return None


@task(name="verify-schema", task_run_name="verify the metadata schema ({data_label})", cache_policy=NO_CACHE,
      persist_result=False)  # fmt: skip
def verify_schema(schema_file: str | None, observed: Observed | None, data_label: str) -> dict[str, Any]:
    """Workspace schema vs the schema file and the data sent; the diff becomes the `schema-verification` artifact."""
    file = load_schema(schema_file) if schema_file else None
    diff = schema_api.verify_schema(
        schema_api.gateway_from_env(),
        file=file,
        observed=observed,
        file_label=schema_file or "the file",
        data_label=data_label,
    )
    result = diff.as_dict()
    artifacts.publish_verification(result)
    return result


@task(name="active-resync", task_run_name="re-sync Active project(s) {project_hashes}", cache_policy=NO_CACHE,
      persist_result=False)  # fmt: skip
def active_resync(project_hashes: list[str], timeout: float | None) -> dict[str, Any]:
    """One accepted-or-not per project; see `integrations.encord.active.resync` for what 'accepted' means."""
    return resync(project_hashes, timeout=timeout).as_dict()


def _record_observed(params: IngestParams, summary: RunSummary) -> str | None:
    try:
        path = observed_path(params.state_dir, summary.run_id)
        return str(write_observed(path, summary.observed, summary.run_id))
    except (OSError, IngestError) as exc:
        log.warning("could not write the observed metadata keys: %s", exc)
        return None


def _guarded(what: str, fn: Any, *args: Any) -> dict[str, Any]:
    """A downstream step that breaks is recorded, not raised: the items are registered either way."""
    try:
        return fn(*args)
    except IngestError as exc:
        log.warning("%s failed: %s", what, exc)
        return {"status": "error", "reason": str(exc)}
    except Exception as exc:
        log.exception("%s failed", what)
        return {"status": "error", "reason": f"internal error {exc.__class__.__name__}: {str(exc)[:200]}"}


def _problem_keys(verification: dict[str, Any]) -> str:
    keys = sorted({f["key"] for f in verification.get("findings", []) if f.get("problem")})
    return ", ".join(keys[:20]) + (", ..." if len(keys) > 20 else "")


def after_ingest(params: IngestParams, summary: RunSummary) -> dict[str, Any]:
    """Runs once all batches are done; returns what the run summary artifact should show."""
    out: dict[str, Any] = {"observed_file": _record_observed(params, summary)}
    try:
        limit = max_failure_ratio()
        timeout = resync_timeout()
    except ConfigError as exc:
        out["skipped"] = str(exc)
        return out
    if not summary.registered and not summary.updated:
        out["skipped"] = "nothing was registered or updated: no schema verification or re-sync needed"
        return out
    reason = skip_reason(summary, limit)
    if reason is not None:
        log.warning("downstream steps skipped: %s", reason)
        out["skipped"] = reason
        return out
    label = f"run {summary.run_id}"
    verification = _guarded("schema verification", verify_schema, params.schema_file, quote(summary.observed), label)
    out["verification"] = verification
    if verification.get("status") == "failed":
        log.warning(
            "schema verification found %d problem(s) (keys: %s); fix the schema, then "
            "`encord-ingest schema verify FILE --run %s`",
            verification.get("problems", 0),
            _problem_keys(verification),
            summary.run_id,
        )
    out["resync"] = _resync_step(params, summary, verification, timeout)
    return out


def _resync_step(
    params: IngestParams, summary: RunSummary, verification: dict[str, Any], timeout: float | None
) -> dict[str, Any]:
    if not params.active_projects:
        return {"status": "skipped", "reason": "no --active-project given"}
    if verification.get("status") != "passed":
        return {
            "status": "skipped",
            "reason": "schema verification did not pass; after fixing the schema run "
            f"`encord-ingest resync {' '.join('--active-project ' + h for h in params.active_projects)}`",
        }
    result = _guarded("Active re-sync", active_resync, list(params.active_projects), timeout)
    if result.get("status") != "accepted":
        log.warning("Active re-sync: %s", result.get("reason") or result)
    return result
