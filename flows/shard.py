"""One ingestion over many Prefect workers: a parent flow fans shards out as deployment runs.

`ingest_sharded` plans shards (`tasks.shards`: sub-prefixes by delimiter listing, or key ranges of
an S3 Inventory) and starts one run of the `encord-ingest-shard` deployment per shard with
`run_deployment`, on the work pool. What runs at once is bounded by Prefect: the shard
deployment's `concurrency_limit` (runs wait in AwaitingConcurrencySlot), plus `max_running`
submitted runs. Each shard is an incremental ingest into the shared (PostgreSQL) ledger under its
own lease. A shard run that fails, crashes or is cancelled is started again (up to
`max_attempts`): the ledger's pending rows and upload-job ids make a re-run register nothing
twice. A worker killed mid-run leaves its runs RUNNING; the heartbeat automation
(`ensure_crash_detection`) marks them Crashed, and the parent also treats a shard whose ledger
lease expired as crashed, so it does not depend on the automation.

`ingest_shard` can run its batch tasks on Dask (`task_runner="dask"`, prefect-dask) for
CPU-heavy stages: tasks then run in other processes, each building its own run context.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from uuid import UUID

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from prefect.states import Failed
from pydantic import Field

from encord_ingest.errors import IngestError
from encord_ingest.models import Entry
from flows.credentials import load_secret_env
from flows.ingest import run_ingest, waiting_for_lease
from integrations.encord.gateway import connect
from integrations.ledger import Ledger, leases, runs
from integrations.storage import open_source
from tasks import artifacts
from tasks import inventory as inv_mod
from tasks.batch import RunContext
from tasks.listing import ListingStats, iter_batches
from tasks.run import IngestParams, RunSummary, open_context, require
from tasks.shards import ShardSpec, plan_inventory, plan_listing, shard_pages

log = logging.getLogger("encord_ingest.flow")

SHARD_DEPLOYMENT = "encord-ingest-shard"
FINAL_BAD = ("FAILED", "CRASHED", "CANCELLED")
LEASE_RETRY_SECONDS = 15.0
API_PATIENCE = 30
TaskRunner = Literal["threads", "dask"]


# -- one shard ------------------------------------------------------------------------------------
def run_shard(
    params: IngestParams,
    shard: ShardSpec | None,
    run_id: str,
    *,
    lease_wait: float = 0.0,
    wrap_ctx: Callable[[RunContext], RunContext] | None = None,
) -> RunSummary:
    """Ingest one shard (None: the whole source, e.g. from an inventory) as an incremental run.

    The shard's keys come as explicit batches, so the run never marks keys of other shards deleted.
    While another run holds this shard's lease (a crashed attempt on another host), wait up to `lease_wait`.
    """
    scoped = params.model_copy(update={"ledger_scope": shard.scope if shard else params.ledger_scope})
    inventory = inv_mod.load_inventory(params.inventory, account=params.account) if params.inventory else None
    label = f"{params.source} [{shard.label}]" if shard else f"{params.source} (inventory)"

    def attempt() -> RunSummary:
        stats = ListingStats()

        def batches(ctx: RunContext) -> Iterable[list[Entry]]:
            if inventory is not None:
                inv_mod.check_source(inventory, ctx.source.store.bucket)
            whole = ShardSpec(kind="prefix", prefix=ctx.source.prefix)
            pages = shard_pages(ctx.source, shard or whole, inventory, ctx.listing.page_size)
            return iter_batches(ctx.source, ctx.listing, scoped.batch_size, stats, pages=pages)

        return run_ingest(scoped, run_id, batches=batches, stats=stats, label=label, wrap_ctx=wrap_ctx)

    summary = waiting_for_lease(attempt, lease_wait=lease_wait, retry_seconds=LEASE_RETRY_SECONDS)
    dead = Path(scoped.state_dir) / "dead-letters" / f"{run_id}.jsonl"
    if summary.dead_letter is None and dead.exists():  # written by Dask workers
        summary.dead_letter = str(dead)
    return summary


# -- Dask: batch tasks in other processes, each with a context of its own ---------------------------
_contexts: dict[str, RunContext] = {}
_stack = ExitStack()
atexit.register(_stack.close)


def worker_context(params_json: str, run_id: str) -> RunContext:
    """The run's context inside a Dask worker process: same params, shared ledger, no lease."""
    key = f"{run_id}:{params_json}"
    if key not in _contexts:
        params = IngestParams.model_validate_json(params_json)
        ctx = _stack.enter_context(
            open_context(
                params,
                run_id=run_id,
                uploader_factory=lambda: connect(params.folder, params.integration),
                use_ledger=False,
            )
        )
        ledger = Ledger(params.ledger)
        _stack.callback(ledger.close)
        ctx.ledger = ctx.staging = ledger
        _contexts[key] = ctx
    return _contexts[key]


class LazyContext:
    """What a RemoteContext becomes when pickled: the Dask scheduler may unpickle and pickle it
    again on the way, so the context is only built where an attribute is first read (a worker)."""

    __slots__ = ("params_json", "run_id")

    def __init__(self, params_json: str, run_id: str) -> None:
        object.__setattr__(self, "params_json", params_json)
        object.__setattr__(self, "run_id", run_id)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # protocol probes (pickle, dask, Prefect's collection walker) build nothing
            raise AttributeError(name)
        return getattr(worker_context(self.params_json, self.run_id), name)

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return LazyContext, (self.params_json, self.run_id)


@dataclass(slots=True)
class RemoteContext(RunContext):
    """A RunContext that travels to Dask workers as (params, run id) and is rebuilt there."""

    params_json: str = ""

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return LazyContext, (self.params_json, self.run_id)

    def __copy__(self) -> RemoteContext:  # copies in this process (Prefect copies parameters) stay this object
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> RemoteContext:
        return self


def remote(params: IngestParams) -> Callable[[RunContext], RunContext]:
    def wrap(ctx: RunContext) -> RunContext:
        fields = {name: getattr(ctx, name) for name in RunContext.__dataclass_fields__}
        return RemoteContext(**fields, params_json=params.model_dump_json())

    return wrap


def _quote_pickles_its_value() -> None:
    """Prefect 3.8's `quote` does not survive pickling (quote(x) comes back as quote((x,))), and
    run_ingest quotes the context and entries it gives batch tasks: pickle it as quote(value)."""
    import copyreg

    from prefect.utilities.annotations import quote

    copyreg.pickle(quote, lambda q: (quote, (q.unwrap(),)))


def dask_task_runner(workers: int, threads: int, address: str = "") -> Any:
    from prefect_dask import DaskTaskRunner

    _quote_pickles_its_value()
    if address:
        return DaskTaskRunner(address=address)
    cluster = {"n_workers": workers, "threads_per_worker": threads, "processes": True, "dashboard_address": None}
    return DaskTaskRunner(cluster_kwargs=cluster)


@flow(name="encord-ingest-shard-dask", log_prints=True)
def _dask_shard(params: IngestParams, shard: ShardSpec | None, run_id: str, lease_wait: float) -> dict[str, Any]:
    """The shard's batches on the Dask cluster this subflow was given (see `ingest_shard`)."""
    scoped = params.model_copy(update={"ledger_scope": shard.scope if shard else params.ledger_scope})
    summary = run_shard(params, shard, run_id, lease_wait=lease_wait, wrap_ctx=remote(scoped))
    return summary.public()


def _shard_run_name() -> str:
    shard = flow_run.parameters.get("shard") or {}
    params = flow_run.parameters.get("params") or {}
    spec = ShardSpec.model_validate(shard) if isinstance(shard, dict) else shard
    source = params.get("source", "?") if isinstance(params, dict) else getattr(params, "source", "?")
    return f"shard {spec.label} of {source}"


@flow(name=SHARD_DEPLOYMENT, flow_run_name=_shard_run_name, log_prints=True)
def ingest_shard(
    params: IngestParams,
    shard: ShardSpec,
    encord_key_block: str | None = None,
    secret_env: dict[str, str] | None = None,
    task_runner: TaskRunner = "threads",
    dask_workers: Annotated[int, Field(ge=1, le=64)] = 2,
    dask_address: str = "",
    lease_wait: Annotated[float, Field(ge=0)] = 300,
) -> Any:
    """Register one shard of SOURCE (a sub-prefix or key range) as its own incremental run.

    Args:
        params: the source and options of the whole ingestion; the shard narrows what is listed.
        shard: which keys (planned by `encord-ingest-sharded`).
        encord_key_block: Prefect Secret block holding the Encord SSH private key.
        secret_env: environment variable -> Secret block name (AWS_SECRET_ACCESS_KEY, ...).
        task_runner: "threads" (default) or "dask": batch tasks in Dask worker processes (CPU-heavy stages).
        dask_workers: worker processes of the temporary local Dask cluster.
        dask_address: an existing Dask scheduler (tcp://host:8786) instead of a local cluster.
        lease_wait: seconds to wait while an earlier attempt of this shard still holds its lease.
    """
    run_id = str(flow_run.id or "local")
    try:
        load_secret_env(encord_key_block, secret_env)
        if task_runner == "dask":
            threads = max(1, params.max_in_flight // dask_workers)
            runner = dask_task_runner(dask_workers, threads, dask_address)
            return _dask_shard.with_options(task_runner=runner)(params, shard, run_id, lease_wait)
        return run_shard(params, shard, run_id, lease_wait=lease_wait).public()
    except IngestError as exc:
        log.error("%s", exc)
        return Failed(message=str(exc), data=exc)


# -- the parent ------------------------------------------------------------------------------------
@task(name="plan-shards", cache_policy=NO_CACHE, persist_result=False)
def plan_shards(params: IngestParams, target: int) -> list[ShardSpec]:
    """Sub-prefixes from delimiter listings, or key ranges from the inventory's boundaries."""
    source = open_source(params.source, account=params.account)
    source.store.check_access(source.prefix)
    if params.inventory:
        inventory = inv_mod.load_inventory(params.inventory, account=params.account)
        inv_mod.check_source(inventory, source.store.bucket)
        return plan_inventory(inventory, source.prefix, target)
    return plan_listing(source.store, source.prefix, target)


@dataclass(slots=True)
class Attempt:
    shard: ShardSpec
    number: int
    run_id: str = ""
    submitted: float = field(default_factory=time.monotonic)
    unstarted_since: float | None = None  # first seen Running and "not started" (see `_running_shard`)


@dataclass(slots=True)
class Outcome:
    done: dict[str, Attempt] = field(default_factory=dict)  # shard scope -> last attempt
    failed: dict[str, tuple[Attempt, str]] = field(default_factory=dict)
    retried: int = 0


def _running_shard(ledger: Ledger, source_id: str, run_id: str) -> str:
    """What the ledger says of a shard attempt its Prefect run calls Running, from one read of its
    lease and its ledger run: "lease expired" (its process stopped renewing it: killed with its
    worker), "not started" (no ledger run begun - it takes the lease first - and no other run holds
    a live lease it could be waiting for: if that lasts, its process died while starting, before
    its first heartbeat, so the crash automation never hears of it), or "alive"."""
    with ledger.engine.connect() as conn:
        held = conn.execute(leases.select().where(leases.c.source == source_id)).first()
        begun = conn.execute(runs.select().where(runs.c.run_id == run_id)).first()
    now = datetime.now(UTC).isoformat(timespec="seconds")
    expired = held is not None and held.expires_at < now
    if held is not None and held.run_id == run_id:
        return "lease expired" if expired else "alive"
    if begun is None and (held is None or expired):
        return "not started"
    return "alive"


def _child_summaries(ledger: Ledger, run_ids: list[str]) -> list[dict[str, Any]]:
    if not run_ids:
        return []
    with ledger.engine.connect() as conn:
        rows = conn.execute(runs.select().where(runs.c.run_id.in_(run_ids)))
        return [dict(r.summary or {}) for r in rows]


def _total(summaries: list[dict[str, Any]]) -> dict[str, int]:
    keys = ("listed", "skipped", "submitted", "registered", "updated", "failed", "batches")
    return {k: sum(int(s.get(k) or 0) for s in summaries) for k in keys}


def dispatch(
    shards: list[ShardSpec],
    submit: Callable[[ShardSpec, int], str],
    states: Callable[[list[str]], dict[str, tuple[str, str]]],
    *,
    stale: Callable[[Attempt, str], str | None],
    max_attempts: int,
    max_running: int,
    poll: float,
    sleep: Callable[[float], None] = time.sleep,
) -> Outcome:
    """Keep up to `max_running` shard runs submitted; start failed/crashed ones again, bounded.

    `submit` starts a run and returns its id; `states` maps run ids to (state type, message);
    `stale` says why a non-final run is dead (or None) and must have marked it crashed.
    A Prefect API that does not answer (a busy server) is asked again next round, `API_PATIENCE` times.
    """
    todo: deque[Attempt] = deque(Attempt(s, 1) for s in shards)
    running: dict[str, Attempt] = {}
    out = Outcome()
    misses = 0
    while todo or running:
        try:
            while todo and len(running) < max_running:
                attempt = todo[0]
                attempt.run_id = submit(attempt.shard, attempt.number)
                attempt.submitted = time.monotonic()
                running[attempt.run_id] = todo.popleft()
            sleep(poll)
            found = states(list(running))
            misses = 0
        except Exception as exc:  # the API timed out or refused: the runs go on meanwhile
            misses += 1
            if misses > API_PATIENCE:
                raise
            log.warning("Prefect API: %s; asking again in %.0fs", exc.__class__.__name__, poll)
            sleep(poll)
            continue
        for run_id, (state, message) in found.items():
            attempt = running[run_id]
            if state not in ("COMPLETED", *FINAL_BAD):
                try:
                    why = stale(attempt, state)
                except Exception as exc:
                    log.warning("checking shard run %s: %s", run_id, exc.__class__.__name__)
                    continue
                if why is None:
                    continue
                state, message = "CRASHED", why
            del running[run_id]
            if state == "COMPLETED":
                out.done[attempt.shard.scope] = attempt
            elif attempt.number < max_attempts:
                log.warning("shard %s: run %s ended %s (%s); starting it again", attempt.shard.label, run_id, state,
                            message)  # fmt: skip
                out.retried += 1
                todo.append(Attempt(attempt.shard, attempt.number + 1))
            else:
                out.failed[attempt.shard.scope] = (attempt, f"{state}: {message}")
    return out


def _deployment_name(params: IngestParams, name: str) -> str:
    if name:
        return name if "/" in name else f"{SHARD_DEPLOYMENT}/{name}"
    return f"{SHARD_DEPLOYMENT}/{open_source(params.source, account=params.account).store.bucket}"


@flow(name="encord-ingest-sharded", flow_run_name=lambda: f"sharded ingest {_source_param()}", log_prints=True)
def ingest_sharded(
    params: IngestParams,
    shards: Annotated[int, Field(ge=1, le=10_000)] = 16,
    shard_deployment: str = "",
    encord_key_block: str | None = None,
    secret_env: dict[str, str] | None = None,
    task_runner: TaskRunner = "threads",
    max_attempts: Annotated[int, Field(ge=1, le=20)] = 3,
    max_running: Annotated[int, Field(ge=1, le=10_000)] = 64,
    poll_seconds: Annotated[float, Field(gt=0)] = 5.0,
    pending_timeout: Annotated[float, Field(gt=0)] = 300.0,
) -> Any:
    """Split SOURCE into shards and ingest them as runs of the shard deployment on the work pool.

    Args:
        params: the source and options; `ledger` must be a postgresql:// URL when workers run on several hosts.
        shards: about how many shards to plan (more than the workers, so a slow shard does not hold the end).
        shard_deployment: the `encord-ingest-shard` deployment to run (default: the one named after the bucket).
        encord_key_block: Prefect Secret block holding the Encord SSH private key (passed on to each shard).
        secret_env: environment variable -> Secret block name, passed on to each shard.
        task_runner: "threads" or "dask" for the shards' batch tasks.
        max_attempts: runs per shard before it counts as failed (a crashed worker costs one).
        max_running: shard runs submitted and not finished at once (the deployment's concurrency limit
            bounds how many of them run).
        poll_seconds: how often shard runs are checked.
        pending_timeout: seconds a shard run may stay Pending (claimed by a worker that died before the run
            started: it sends no heartbeat and holds no lease, so only this catches it), or Running without
            having begun its ledger run while no earlier attempt holds the lease (killed while starting).
    """
    run_id = str(flow_run.id or "local")
    try:
        require(params, "folder", "integration")
        load_secret_env(None, secret_env)  # fail early on a bad mapping; the values stay in the shards
        source = open_source(params.source, account=params.account)
        ledger = Ledger(params.ledger)
        if ledger.dialect != "postgresql":
            log.warning("ledger %s is SQLite: shards on other hosts cannot share it (use postgresql://)",
                        ledger.describe())  # fmt: skip
        with contextlib.closing(ledger), ledger.lease(source.id, run_id):  # no plain run of the source meanwhile
            planned = plan_shards(params, shards)
            log.info("%d shards of %s", len(planned), params.source)
            outcome = _run_shards(params, planned, run_id, ledger, shard_deployment, encord_key_block, secret_env,
                                  task_runner, max_attempts, max_running, poll_seconds, pending_timeout)  # fmt: skip
            summaries = _child_summaries(ledger, [a.run_id for a in outcome.done.values()])
    except IngestError as exc:
        log.error("%s", exc)
        return Failed(message=str(exc), data=exc)
    result = {**_total(summaries), "run_id": run_id, "shards": len(planned), "retried": outcome.retried,
              "failed_shards": sorted(a.shard.label for a, _ in outcome.failed.values())}  # fmt: skip
    artifacts.publish_summary(_summary_markdown(params, planned, outcome, result))
    if outcome.failed:
        first = next(iter(outcome.failed.values()))
        message = f"{len(outcome.failed)} of {len(planned)} shards failed after {max_attempts} attempts: {first[1]}"
        return Failed(message=message, data=result)
    return result


def _source_param() -> str:
    params = flow_run.parameters.get("params") or {}
    return params.get("source", "?") if isinstance(params, dict) else getattr(params, "source", "?")


def _run_shards(
    params: IngestParams,
    planned: list[ShardSpec],
    run_id: str,
    ledger: Ledger,
    deployment: str,
    encord_key_block: str | None,
    secret_env: dict[str, str] | None,
    task_runner: TaskRunner,
    max_attempts: int,
    max_running: int,
    poll: float,
    pending_timeout: float,
) -> Outcome:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.deployments import run_deployment
    from prefect.states import Crashed

    name = _deployment_name(params, deployment)
    child = params.model_copy(update={"active_projects": [], "report_deleted": False})
    root_id = open_source(params.source, account=params.account).id

    def submit(shard: ShardSpec, number: int) -> str:
        started = run_deployment(
            name,
            parameters={
                "params": child.model_dump(mode="json"),
                "shard": shard.model_dump(),
                "encord_key_block": encord_key_block,
                "secret_env": secret_env,
                "task_runner": task_runner,
            },
            timeout=0,
            tags=["encord-ingest", "shard", f"attempt-{number}"],
            idempotency_key=f"{run_id}:{shard.scope}:{number}",  # a retried request starts no second run
        )
        return str(started.id)

    def states(ids: list[str]) -> dict[str, tuple[str, str]]:
        with get_client(sync_client=True) as client:
            wanted = FlowRunFilter(id=FlowRunFilterId(any_=[UUID(i) for i in ids]))
            found = client.read_flow_runs(flow_run_filter=wanted, limit=len(ids))
        return {str(r.id): (r.state.type.value if r.state else "PENDING", (r.state.message or "") if r.state else "")
                for r in found}  # fmt: skip

    def stale(attempt: Attempt, state: str) -> str | None:
        why = None
        if state == "RUNNING":
            health = _running_shard(ledger, root_id + attempt.shard.scope, attempt.run_id)
            now = time.monotonic()
            if health != "not started":  # started, or waiting for a live lease of an earlier attempt
                attempt.unstarted_since = None
            elif attempt.unstarted_since is None:
                attempt.unstarted_since = now
            if health == "lease expired":
                why = "its ledger lease expired: the process running it is gone"
            elif attempt.unstarted_since is not None and now - attempt.unstarted_since > pending_timeout:
                why = f"running for more than {pending_timeout:.0f}s without starting: the process running it is gone"
        elif state == "PENDING" and time.monotonic() - attempt.submitted > pending_timeout:
            why = f"pending for more than {pending_timeout:.0f}s: the worker that claimed it is gone"
        if why is not None:
            with get_client(sync_client=True) as client:
                client.set_flow_run_state(attempt.run_id, Crashed(message=why), force=True)
        return why

    return dispatch(planned, submit, states, stale=stale, max_attempts=max_attempts, max_running=max_running,
                    poll=poll)  # fmt: skip


def _summary_markdown(params: IngestParams, planned: list[ShardSpec], outcome: Outcome, result: dict[str, Any]) -> str:
    lines = [
        f"# Sharded ingest of `{params.source}`",
        "",
        f"* **shards:** {len(planned)} ({len(outcome.done)} completed, {len(outcome.failed)} failed, "
        f"{outcome.retried} re-run)",
        *(f"* **{k}:** {result[k]}" for k in ("listed", "registered", "updated", "skipped", "failed")),
    ]
    for attempt, why in outcome.failed.values():
        lines.append(f"* shard `{attempt.shard.label}` failed: {why}")
    return "\n".join(lines)


# -- set-up --------------------------------------------------------------------------------------------
CRASH_AUTOMATION = "encord-ingest: crash flow runs that stopped sending heartbeats"


def ensure_crash_detection(within_seconds: float = 90.0) -> str:
    """A proactive automation marking a flow run Crashed when its heartbeats stop (a killed worker).

    Flow runs send heartbeats every PREFECT_FLOWS_HEARTBEAT_FREQUENCY seconds (set 30 on workers);
    `within_seconds` must exceed that.
    """
    from prefect.automations import Automation
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import EventTrigger, Posture

    with contextlib.suppress(ValueError):
        existing = Automation.read(name=CRASH_AUTOMATION)
        if existing is not None:
            existing.delete()
    Automation(
        name=CRASH_AUTOMATION,
        description="Heartbeats stopped: the worker running the flow run died. encord-ingest re-runs crashed shards.",
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={
                "prefect.flow-run.heartbeat",
                "prefect.flow-run.Completed",
                "prefect.flow-run.Failed",
                "prefect.flow-run.Cancelled",
                "prefect.flow-run.Crashed",
            },
            match={"prefect.resource.id": ["prefect.flow-run.*"]},
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=within_seconds),
        ),
        actions=[ChangeFlowRunState(state=StateType.CRASHED, message="no heartbeat: the worker running it is gone")],
    ).create()
    return f"created automation {CRASH_AUTOMATION!r} (after {within_seconds:.0f}s without heartbeat)"
