"""Prefect tasks around the plain stage functions: one task run per batch, never per object."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State
from prefect.states import Failed

from encord_ingest.errors import AbortError
from encord_ingest.models import Entry
from tasks.batch import BatchReport, RunContext
from tasks.groups import Group
from tasks.run import guarded_batch, guarded_group_batch


@task(
    name="ingest-batch",
    task_run_name="batch {number} of {label}",
    cache_policy=NO_CACHE,
    persist_result=False,
)
def ingest_batch(ctx: RunContext, number: int, entries: list[Entry], label: str) -> BatchReport | State:
    """Retries live inside (per API call and per item), so a task retry would only repeat work."""
    try:
        return guarded_batch(ctx, number, entries)
    except AbortError as exc:  # a Failed state carries it to the flow without a logged traceback
        return Failed(message=str(exc), data=exc)


@task(
    name="ingest-groups",
    task_run_name="grouped items {number} of {label}",
    cache_policy=NO_CACHE,
    persist_result=False,
)
def ingest_group_batch(ctx: RunContext, number: int, groups: list[Group], label: str) -> BatchReport | State:
    """DICOM series and image groups, registered once all their files were listed."""
    try:
        return guarded_group_batch(ctx, number, groups)
    except AbortError as exc:
        return Failed(message=str(exc), data=exc)
