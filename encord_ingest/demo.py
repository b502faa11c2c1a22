"""`encord-ingest demo`: moto + the Encord emulator + a Prefect server, sample data, two runs."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import boto3
import requests
from botocore.config import Config
from rich.console import Console
from rich.table import Table

from encord_ingest.samples import SAMPLE_SCHEMA, SampleObject, sample_objects, sample_table, upload_all
from integrations.servers import Proc, aws_env, make_keypair, start_emulator, start_moto, start_prefect_server

console = Console(stderr=True)

DEMO_DIR = Path(".encord-ingest/demo")
PREFECT_HOME = Path(".encord-ingest/prefect")
BUCKET = "demo-camera-data"
DEMO_PROJECT = "00000000-0000-4000-8000-00000000d3e0"  # an Active project the emulator accepts


def _seed(endpoint: str, objects: int) -> int:
    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="x",
        aws_secret_access_key="x",
        config=Config(max_pool_connections=32),
    )
    s3.create_bucket(Bucket=BUCKET)

    def put(obj: SampleObject) -> None:
        s3.put_object(Bucket=BUCKET, Key=obj.key, Body=obj.body, Metadata=obj.metadata or {})

    return upload_all(sample_objects(objects), put)


def _show(summary: dict[str, Any], title: str) -> None:
    table = Table(title=title, show_header=False)
    for key in ("listed", "registered", "updated", "skipped", "failed", "submitted", "batches", "dead_letter"):
        table.add_row(key, str(summary.get(key)))
    console.print(table)


def run_demo(objects: int = 300, keep_running: bool = False) -> int:
    DEMO_DIR.mkdir(parents=True, exist_ok=True)
    PREFECT_HOME.mkdir(parents=True, exist_ok=True)
    procs: list[Proc] = []
    try:
        console.print("[bold]1/5[/] starting moto (S3), the Encord API emulator and a Prefect server ...")
        keys = make_keypair(DEMO_DIR.resolve(), "demo-key")
        moto = start_moto()
        procs.append(moto)
        env = aws_env(moto.url)
        emulator = start_emulator(env, "--authorized-key", str(keys.public))
        procs.append(emulator)
        prefect = start_prefect_server(PREFECT_HOME)
        procs.append(prefect)
        os.environ.update(env)
        os.environ.update(
            {
                "ENCORD_SSH_KEY_FILE": str(keys.private.resolve()),
                "ENCORD_DOMAIN": emulator.url,
                "PREFECT_API_URL": f"{prefect.url}/api",
                "PREFECT_HOME": str(PREFECT_HOME.resolve()),
            }
        )
        console.print(f"      S3 {moto.url}   Encord emulator {emulator.url}   Prefect {prefect.url}")

        console.print(f"[bold]2/5[/] seeding s3://{BUCKET} with about {objects} files and their sidecars ...")
        uploaded = _seed(moto.url, objects)
        (DEMO_DIR / "schema.yaml").write_text(SAMPLE_SCHEMA)
        (DEMO_DIR / "cameras.csv").write_text(sample_table(objects))
        console.print(f"      {uploaded} objects uploaded; schema and camera table in {DEMO_DIR}/")

        from flows.ingest import run_ingest_flow
        from integrations.encord.schema_api import apply_schema, gateway_from_env
        from tasks.run import IngestParams
        from tasks.schema import load_schema

        plan = apply_schema(gateway_from_env(), load_schema(DEMO_DIR / "schema.yaml"))
        console.print(f"      metadata schema applied to the workspace: {len(plan.changes)} change(s)")

        params = IngestParams(
            source=f"s3://{BUCKET}/",
            folder="demo-camera-data",
            integration="local-aws",
            metadata=["path:(?P<site>[^/]+)/", f"table:{DEMO_DIR / 'cameras.csv'}", "sidecar", "object"],
            schema_file=str(DEMO_DIR / "schema.yaml"),
            batch_size=100,
            ledger=str(DEMO_DIR / "ledger.db"),
            active_projects=[DEMO_PROJECT],
        )
        console.print("[bold]3/5[/] running the ingest flow (one Prefect task per batch of 100) ...")
        started = time.monotonic()
        state = run_ingest_flow(params)
        first = state.result()
        _show(first, f"first run ({time.monotonic() - started:.1f}s)")

        console.print("[bold]4/5[/] running it again: only new or changed objects would be sent ...")
        started = time.monotonic()
        second_state = run_ingest_flow(params)
        second = second_state.result()
        _show(second, f"second run ({time.monotonic() - started:.1f}s)")

        encord = requests.get(f"{emulator.url}/_emulator/state", timeout=10).json()
        folders = ", ".join(f["name"] for f in encord["folders"])
        console.print(f"[bold]5/5[/] the emulator holds {len(encord['items'])} items in folder {folders}")
        console.print(
            f"      schema verification and Active re-sync ran after the first run: "
            f"{len(encord['resyncs'])} re-sync(s) of project {DEMO_PROJECT}"
        )
        console.print(f"      dead letters: {first.get('dead_letter')}", markup=False)
        if first.get("dead_letter"):
            for line in Path(first["dead_letter"]).read_text().splitlines()[:3]:
                d = json.loads(line)
                console.print(f"      {d['key']}: {d['rule']} - {d['reason']}", markup=False)
        run_url = f"{prefect.url}/runs/flow-run/{state.state_details.flow_run_id}"
        if keep_running:
            console.print(f"\n[bold green]Dashboard:[/] {run_url}   (Ctrl-C to stop everything)")
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                pass
        else:
            console.print(
                "\n[bold green]See the runs in the Prefect dashboard:[/] run `make dashboard`, then open "
                f"http://127.0.0.1:4200/runs/flow-run/{state.state_details.flow_run_id}\n"
                "(or `make demo DEMO_ARGS=--keep-running` to keep everything up after the demo)"
            )
        return 0
    finally:
        _flush_prefect()
        for proc in reversed(procs):
            proc.stop()


def _flush_prefect() -> None:
    """Ship buffered run logs and events before the server they go to is stopped."""
    try:
        from prefect.events.worker import EventsWorker
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all(timeout=10)
        EventsWorker.drain_all(timeout=10)
    except Exception:  # nothing to flush when the flow never started
        pass
