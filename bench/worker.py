"""One measurement in a fresh interpreter: `python bench/worker.py JOB 'JSON ARGS'`.

Each job imports what it needs first, then times only the work, and prints one line
`BENCH-RESULT {json}` on stdout. A fresh process per measurement keeps peak RSS honest and
keeps runs from warming each other's caches.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench.*` and the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import RESULT_PREFIX, moto_s3_client, peak_rss_mb, rss_mb, timed

Job = Callable[[dict[str, Any]], dict[str, Any]]
JOBS: dict[str, Job] = {}


def job(fn: Job) -> Job:
    JOBS[fn.__name__] = fn
    return fn


def _sdk_refs(store: Any) -> int:
    """The store's listing as the SDK alone gives it: its objects (Blob / BlobProperties) made into ObjectRefs."""
    from integrations.storage import azure, gcs

    if isinstance(store, gcs.GCSStore):
        blobs = store.client.list_blobs(store.bucket, page_size=1000, fields=gcs._LIST_FIELDS)
        return sum(len([gcs._ref(b) for b in page]) for page in blobs.pages)
    pages = store.container.list_blobs(results_per_page=1000).by_page()
    return sum(len([azure._ref(b) for b in page]) for page in pages)


@job
def list_cloud(args: dict[str, Any]) -> dict[str, Any]:
    """A GCS or Azure store's `list_pages` against the SDK's own listing of the same bucket, alternating."""
    from integrations.storage import open_source

    store = open_source(args["source"]).store
    best: dict[str, dict[str, Any]] = {}
    for _ in range(args.get("rounds", 3)):
        for name, run in (("sdk", lambda: _sdk_refs(store)), ("ours", lambda: sum(map(len, store.list_pages(""))))):
            keys, wall, cpu = timed(run)
            if name not in best or cpu < best[name]["cpu_seconds"]:
                best[name] = {"keys": keys, "seconds": wall, "cpu_seconds": cpu}
    return best


@job
def list_store(args: dict[str, Any]) -> dict[str, Any]:
    """The pipeline's own reader alone (`Store.list_pages` of one lister, no pairing, classify or
    manifest), timed from after its pre-flight check as the bare listers are from their client."""
    from integrations.storage import open_source

    source = open_source(args["source"])
    source.store.check_access(source.prefix)
    keys, wall, cpu = timed(lambda: sum(map(len, source.store.list_pages(source.prefix))))
    return {"keys": keys, "seconds": wall, "cpu_seconds": cpu}


@job
def list_boto3(args: dict[str, Any]) -> dict[str, Any]:
    """A bare boto3 paginator loop at PageSize 1000: the keys, nothing else."""
    client = moto_s3_client(args["endpoint"])

    def run() -> int:
        n = 0
        pages = client.get_paginator("list_objects_v2").paginate(
            Bucket=args["bucket"], Prefix=args.get("prefix", ""), PaginationConfig={"PageSize": 1000}
        )
        for page in pages:
            n += len(page.get("Contents", ()))
        return n

    keys, wall, cpu = timed(run)
    return {"keys": keys, "seconds": wall, "cpu_seconds": cpu}


def _obstore_store(endpoint: str, bucket: str) -> Any:
    from obstore.store import S3Store

    return S3Store(
        bucket,
        endpoint=endpoint,
        access_key_id="x",
        secret_access_key="x",
        region="us-east-1",
        virtual_hosted_style_request=False,
        client_options={"allow_http": True},
    )


@job
def list_obstore(args: dict[str, Any]) -> dict[str, Any]:
    """A bare obstore listing (Rust client), chunks of 1000."""
    import obstore

    store = _obstore_store(args["endpoint"], args["bucket"])

    def run() -> int:
        n = 0
        for chunk in obstore.list(store, prefix=args.get("prefix") or None, chunk_size=1000):
            n += len(chunk)
        return n

    keys, wall, cpu = timed(run)
    return {"keys": keys, "seconds": wall, "cpu_seconds": cpu}


# Valid S3 keys that a lister must return unchanged (the S3 console's "Create folder" makes the first).
ODD_KEYS = (
    "folder/",
    "/leading-slash.jpg",
    "trailing-slash.jpg/",
    "a//double-slash.jpg",
    "x/./dot-segment.jpg",
    "x/../dot-dot-segment.jpg",
    "control-\x01.jpg",
    "space %20.jpg",
    "\u00fcml\u00e4ut.jpg",
)


@job
def key_fidelity(args: dict[str, Any]) -> dict[str, Any]:
    """Each ODD_KEYS key alone in a bucket, listed by boto3 and by obstore: which come back unchanged."""
    import obstore

    client = moto_s3_client(args["endpoint"])
    out: dict[str, Any] = {}
    for i, key in enumerate(ODD_KEYS):
        bucket = f"key-fidelity-{i}"
        client.create_bucket(Bucket=bucket)
        client.put_object(Bucket=bucket, Key=key, Body=b"x")
        boto = [o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", ())]
        store = _obstore_store(args["endpoint"], bucket)
        try:
            got: Any = [str(o["path"]) for chunk in obstore.list(store) for o in chunk]
        except Exception as exc:  # what a pipeline built on it would meet
            got = f"error: {exc.__class__.__name__}"
        out[key] = {"boto3": boto, "obstore": got}
    return {
        "keys": out,
        "boto3_exact": sum(v["boto3"] == [k] for k, v in out.items()),
        "obstore_exact": sum(v["obstore"] == [k] for k, v in out.items()),
        "total": len(out),
    }


STORE_MODULES = {"s3": "s3", "gs": "gcs", "az": "azure", "file": "file"}


def _import_store(source: str) -> None:
    """Import the source's store module (boto3, ...) before the clock starts, as the bare listers do."""
    import importlib

    scheme = source.partition("://")[0]
    if scheme in STORE_MODULES:
        importlib.import_module(f"integrations.storage.{STORE_MODULES[scheme]}")


@contextlib.contextmanager
def _preflight_timer() -> Iterator[list[float]]:
    """Seconds the run spends in pre-flight (`open_context`: clients, credential check, tables), the
    part a bare lister does before its clock starts; the rest is the listing with the pipeline's work."""
    import tasks.manifest_only

    spent = [0.0]
    real = tasks.manifest_only.open_context

    @contextlib.contextmanager
    def timed_open(*args: Any, **kwargs: Any) -> Iterator[Any]:
        started = time.perf_counter()
        with real(*args, **kwargs) as ctx:
            spent[0] = time.perf_counter() - started
            yield ctx

    tasks.manifest_only.open_context = timed_open  # type: ignore[assignment]
    try:
        yield spent
    finally:
        tasks.manifest_only.open_context = real


@job
def manifest(args: dict[str, Any]) -> dict[str, Any]:
    """The real `encord-ingest manifest` path (tasks.manifest_only.write_manifests), timed and RSS-sampled."""
    from bench.synthetic import synthetic_sources
    from tasks.manifest_only import write_manifests
    from tasks.run import IngestParams

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    _import_store(args["source"])
    with tempfile.TemporaryDirectory(prefix="encord-ingest-bench-") as tmp:
        params = IngestParams(
            source=args["source"],
            metadata=args.get("metadata", []),
            batch_size=args.get("batch_size", 1000),
            **({"fanout": args["fanout"]} if "fanout" in args else {}),
            state_dir=str(Path(tmp) / "state"),
        )
        hook = synthetic_sources() if args["source"].startswith("synthetic://") else contextlib.nullcontext()
        with hook, _preflight_timer() as preflight:
            before = rss_mb()
            summary, wall, cpu = timed(lambda: write_manifests(params, Path(tmp) / "out"))
        written = sum(f.stat().st_size for f in (Path(tmp) / "out").iterdir())
    return {
        "listed": summary["listed"],
        "manifest_items": summary["manifest_items"],
        "manifests": summary["manifests"],
        "manifest_mb": written / 1024 / 1024,
        "failed": summary["failed"],
        "seconds": wall,
        "cpu_seconds": cpu,
        "preflight_seconds": preflight[0],
        "listing_seconds": wall - preflight[0],
        "rss_before_mb": before,
        "peak_rss_mb": peak_rss_mb(),
    }


def _count_task_runs(flow_run_id: str, at_least: int, wait: float) -> dict[str, Any]:
    """Task runs of one flow run, read back from the Prefect API once the server has ingested them all.

    Task-run states reach the server as events, so the count grows for a while after the flow ends:
    poll until it reaches `at_least` (the batch count) and stays put for three polls, or `wait` passes.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    flt = FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
    deadline = time.monotonic() + wait
    history: list[int] = []
    with get_client(sync_client=True) as client:
        while True:
            runs: list[Any] = []
            while True:
                page = client.read_task_runs(flow_run_filter=flt, limit=200, offset=len(runs))
                runs.extend(page)
                if len(page) < 200:
                    break
            history.append(len(runs))
            settled = len(runs) >= at_least and history[-3:] == [len(runs)] * 3
            if settled or time.monotonic() > deadline:
                names: dict[str, int] = {}
                for run in runs:
                    base = run.task_key.rsplit("-", 1)[0] if run.task_key else run.name
                    names[base] = names.get(base, 0) + 1
                return {"task_runs": len(runs), "by_task": names, "waited_for_api": settled}
            time.sleep(1.0)


@job
def flow(args: dict[str, Any]) -> dict[str, Any]:
    """The real Prefect flow (flows.ingest.ingest) against moto + the Encord emulator + a Prefect server."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    from flows.ingest import run_ingest_flow
    from tasks.run import IngestParams

    # What a flow run imports lazily the first time (Prefect's parameter encoder pulls in FastAPI,
    # about 1 s here; the store's client module): imported first, as every job here does, so the
    # run is timed like the empty flow run and the bare listings, without the interpreter's imports.
    lazy = ("fastapi.encoders", "prefect.flow_engine", "prefect.utilities.visualization", "integrations.storage.s3")
    for module in lazy:
        importlib.import_module(module)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    params = IngestParams(**args["params"])
    state, wall, cpu = timed(lambda: run_ingest_flow(params))
    summary = state.result(raise_on_failure=True)
    if not isinstance(summary, dict):
        raise RuntimeError(f"flow ended {state.type.value}: {state.message}")
    APILogWorker.drain_all(timeout=30)
    EventsWorker.drain_all(timeout=30)
    out: dict[str, Any] = {"summary": summary, "seconds": wall, "cpu_seconds": cpu, "peak_rss_mb": peak_rss_mb()}
    flow_run_id = str(state.state_details.flow_run_id)
    out["flow_run_id"] = flow_run_id
    out["server_run_seconds"] = _server_run_seconds(flow_run_id)
    if args.get("count_tasks"):
        out.update(_count_task_runs(flow_run_id, int(summary["batches"]), args.get("api_wait", 120.0)))
    return out


def _server_run_seconds(flow_run_id: str) -> float | None:
    """The run's duration as the Prefect server records it (Running to its final state), which the
    UI shows: the engine's work after the final state (joining its heartbeat thread) is outside it."""
    from prefect.client.orchestration import get_client

    try:
        with get_client(sync_client=True) as client:
            run = client.read_flow_run(flow_run_id)
    except Exception:  # a reading beside the figure: the figure stands without it
        return None
    if run.start_time is None or run.end_time is None:
        return None
    return (run.end_time - run.start_time).total_seconds()


@job
def empty_flow(args: dict[str, Any]) -> dict[str, Any]:
    """A flow that does nothing, on the same Prefect server, run as the ingest flow is (async,
    on its own loop): the floor any such flow run pays (run creation and state changes)."""
    from prefect import flow

    from flows.ingest import run_on_own_loop

    @flow(name="bench-empty")
    async def empty() -> int:
        return 0

    run_on_own_loop(empty)  # the first flow run of a process also registers the flow
    state, wall, cpu = timed(lambda: run_on_own_loop(lambda: empty(return_state=True)))
    server = _server_run_seconds(str(state.state_details.flow_run_id))
    return {"seconds": wall, "cpu_seconds": cpu, "server_run_seconds": server}


@job
def naive(args: dict[str, Any]) -> dict[str, Any]:
    """What users hand-write: list with boto3, then one upload job (start + wait) per object."""
    from encord import EncordUserClient

    client = EncordUserClient.create_with_ssh_private_key(
        ssh_private_key=Path(os.environ["ENCORD_SSH_KEY_FILE"]).read_text(), domain=os.environ["ENCORD_DOMAIN"]
    )
    integration = next(i for i in client.get_cloud_integrations() if i.title == args["integration"])
    folder = client.create_storage_folder(args["folder"], "naive benchmark")
    s3 = moto_s3_client(os.environ["AWS_ENDPOINT_URL"])
    limit, budget = int(args["objects"]), float(args["seconds"])

    def keys() -> Iterator[str]:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=args["bucket"], Prefix=args.get("prefix", "")):
            for obj in page.get("Contents", ()):
                yield obj["Key"]

    def run() -> tuple[int, int]:
        done = attempted = 0
        started = time.perf_counter()
        for key in keys():
            manifest = {"images": [{"objectUrl": f"s3://{args['bucket']}/{key}", "title": key}]}
            job_id = folder.add_private_data_to_folder_start(integration.id, manifest, ignore_errors=True)
            result = folder.add_private_data_to_folder_get_result(job_id)
            attempted += 1
            done += len(result.items_with_names)
            if attempted >= limit or time.perf_counter() - started > budget:
                break
        return done, attempted

    (done, attempted), wall, cpu = timed(run)
    return {"registered": done, "attempted": attempted, "seconds": wall, "cpu_seconds": cpu}


@job
def table_join(args: dict[str, Any]) -> dict[str, Any]:
    """`table:` metadata (MetadataPlan.build -> MetadataTable) joined to a synthetic listing, batch by batch."""
    from bench.synthetic import SyntheticStore
    from encord_ingest.models import Entry
    from tasks.metadata import MetadataPlan

    store = SyntheticStore(int(args["objects"]))
    batch_size = int(args.get("batch_size", 1000))
    before = rss_mb()

    def load() -> MetadataPlan:
        return MetadataPlan.build([f"table:{args['table']}"], url_base=store.url_for(""))

    def source_only() -> int:
        return sum(len([Entry(ref) for ref in page]) for page in store.list_pages("", page_size=batch_size))

    _, source_wall, _ = timed(source_only)  # the synthetic listing's own cost, taken out of the join below
    plan, load_wall, load_cpu = timed(load)

    def join() -> tuple[int, int, int]:
        objects = matched = columns = 0
        for page in store.list_pages("", page_size=batch_size):
            entries = [Entry(ref) for ref in page]
            for cheap in plan.cheap(entries, lambda key: key):
                layer = cheap.layers[0] or {}
                objects += 1
                matched += bool(layer)
                columns += len(layer)
        return objects, matched, columns

    (objects, matched, columns), join_wall, join_cpu = timed(join)
    rows = next(iter(plan.tables.values())).rows
    plan.close()
    return {
        "objects": objects,
        "matched": matched,
        "columns": columns,
        "rows": rows,
        "load_seconds": load_wall,
        "load_cpu_seconds": load_cpu,
        "join_seconds": join_wall,
        "join_cpu_seconds": join_cpu,
        "source_seconds": source_wall,
        "rss_before_mb": before,
        "peak_rss_mb": peak_rss_mb(),
    }


def main(argv: list[str]) -> int:
    name, raw = argv[1], argv[2] if len(argv) > 2 else "{}"
    result = JOBS[name](json.loads(raw))
    sys.stdout.write(RESULT_PREFIX + json.dumps(result, default=str) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
