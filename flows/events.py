"""Event-driven ingest: exactly the keys a bucket notification named, same parameters otherwise.

A `DeploymentEventTrigger` on `storage.object.created` (see deployments/prefect.yaml) starts one
run per event with `keys` and `bucket` from it; the receiver in `integrations/events` batches a
burst of uploads into few events, so a run carries many keys. Batches come from `tasks.keyed`
instead of a listing; everything after that (ledger, manifests, upload jobs, artifacts) is the
`ingest` flow's own code.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

from prefect import flow
from prefect.runtime import flow_run
from prefect.states import Failed
from pydantic import Field

from encord_ingest.errors import IngestError, UsageError
from flows.credentials import load_secret_env
from flows.ingest import run_ingest, waiting_for_lease
from integrations.storage import parse_source
from tasks import artifacts
from tasks.batch import RunContext
from tasks.keyed import KeyedStats, keyed_batches
from tasks.run import IngestParams, RunSummary

log = logging.getLogger("encord_ingest.flow")

LEASE_RETRY_SECONDS = 15.0


def _run_name() -> str:
    params = flow_run.parameters.get("params") or {}
    source = params.get("source", "?") if isinstance(params, dict) else getattr(params, "source", "?")
    keys = flow_run.parameters.get("keys") or []
    return f"ingest {len(keys)} notified key{'s' if len(keys) != 1 else ''} of {source}"


def check_bucket(params: IngestParams, bucket: str) -> None:
    """An event for another bucket is a trigger misconfiguration: refuse before touching anything."""
    if not bucket:
        return
    spec = parse_source(params.source, account=params.account)
    if spec.bucket != bucket:
        raise UsageError(
            f"event names bucket {bucket!r} but this deployment ingests {params.source}: "
            "fix the trigger's match on prefect.resource.id"
        )


def run_keys(params: IngestParams, keys: list[str], run_id: str, *, lease_wait: float) -> tuple[RunSummary, KeyedStats]:
    """Ingest `keys`; while another run holds the source's lease, wait (nothing is sent before the lease)."""

    def attempt() -> tuple[RunSummary, KeyedStats]:
        stats = KeyedStats()

        def batches(ctx: RunContext) -> Any:
            return keyed_batches(ctx.source, keys, ctx.listing, params.batch_size, stats, ctx.io)

        summary = run_ingest(params, run_id, batches=batches, stats=stats, label=f"{params.source} (event)")
        return summary, stats

    return waiting_for_lease(attempt, lease_wait=lease_wait, retry_seconds=LEASE_RETRY_SECONDS)


@flow(name="encord-ingest-keys", flow_run_name=_run_name, log_prints=True)
async def ingest_keys(
    params: IngestParams,
    keys: list[str],
    bucket: str = "",
    encord_key_block: str | None = None,
    secret_env: dict[str, str] | None = None,
    lease_wait: Annotated[float, Field(ge=0)] = 900,
) -> Any:
    """Register the notified objects of SOURCE (with their sidecars) into the Encord folder.

    Args:
        params: the source and options, as for the scheduled ingest.
        keys: full object keys in the bucket, as the event named them.
        bucket: the bucket the event came from; must be the source's bucket.
        encord_key_block: Prefect Secret block holding the Encord SSH private key.
        secret_env: environment variable -> Secret block name (AWS_SECRET_ACCESS_KEY, ...).
        lease_wait: seconds to wait while another run is ingesting the same source.

    Async for the reason flows.ingest.ingest is; the body is sync.
    """
    return _ingest_keys(params, list(keys), bucket, encord_key_block, secret_env, lease_wait)


def _ingest_keys(
    params: IngestParams,
    keys: list[str],
    bucket: str,
    encord_key_block: str | None,
    secret_env: dict[str, str] | None,
    lease_wait: float,
) -> Any:
    run_id = str(flow_run.id or "local")
    try:
        check_bucket(params, bucket)
        load_secret_env(encord_key_block, secret_env)
        summary, stats = run_keys(params, list(keys), run_id, lease_wait=lease_wait)
    except IngestError as exc:
        log.error("%s", exc)
        return Failed(message=str(exc), data=exc)
    artifacts.publish_keys(artifacts.keys_markdown(stats, source=params.source, bucket=bucket))
    log.info(
        "%d key(s) asked: %d registered, %d skipped, %d failed, %d gone, %d outside the source",
        stats.requested, summary.registered, summary.skipped, summary.failed, stats.missing, stats.outside,
    )  # fmt: skip
    return {**summary.public(), "requested": stats.requested, "missing": stats.missing, "outside": stats.outside}
