"""How a sharded ingestion scales from 1 to 2 to 4 Prefect workers on this machine.

    python bench/scale_out.py [--objects 4000] [--shards 8] [--workers 1,2,4] [--job-delay 0.5]

Starts moto, the Encord emulator and a Prefect server, deploys deployments/prefect.yaml as the
README says, then for each worker count starts that many `prefect worker start --limit 1`
processes and runs `ingest_sharded` (from this process) over the same bucket into a fresh folder
and a fresh PostgreSQL ledger. Prints and writes `bench/scale_out.json`
({"machine", "figures": {NAME: {"value", "unit", "target", "ok", ...}}}). Everything shares the
machine's cores: read the numbers as the shape of the curve, not as production throughput.
`--job-delay` makes each emulated upload job take that long, like Encord's own processing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script
    sys.path.insert(0, str(ROOT))

from bench.common import moto_s3_client  # noqa: E402
from integrations import servers  # noqa: E402
from integrations.servers import aws_env, make_keypair  # noqa: E402

OUT = ROOT / "bench" / "scale_out.json"
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


def _run(cmd: list[str], env: dict[str, str]) -> None:
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd[:3])} failed: {done.stderr[-2000:]}")


def _database() -> str:
    import psycopg

    name = f"encord_ingest_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return name


def _drop(name: str) -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _seed(endpoint: str, bucket: str, objects: int, shards: int) -> None:
    s3 = moto_s3_client(endpoint, pool=16)
    s3.create_bucket(Bucket=bucket)
    from concurrent.futures import ThreadPoolExecutor

    keys = [f"data/p{i % shards:02}/{i:07}.jpg" for i in range(objects)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: s3.put_object(Bucket=bucket, Key=k, Body=b"\xff\xd8" + k.encode()), keys))


def measure(workers: int, env: dict[str, str], bucket: str, objects: int, shards: int) -> dict[str, Any]:
    """One sharded run with `workers` workers (one shard each at a time); wall time and objects/s."""
    from flows.shard import ingest_sharded
    from tasks.run import IngestParams

    database = _database()
    procs = [servers.start_prefect_worker(env, cwd=ROOT, limit=1) for _ in range(workers)]
    try:
        time.sleep(3)  # workers register and poll
        params = IngestParams(
            source=f"s3://{bucket}/data/", folder=f"bench-{workers}w-{uuid.uuid4().hex[:6]}", integration="local-aws",
            batch_size=250, max_in_flight=2, ledger=f"postgresql://postgres@127.0.0.1:5432/{database}",
            state_dir=str(Path(env["PREFECT_HOME"]).parent / "state"),
        )  # fmt: skip
        start = time.monotonic()
        state = ingest_sharded(params, shards=shards, poll_seconds=1.0, encord_key_block="encord-ssh-key",
                               return_state=True)  # fmt: skip
        seconds = time.monotonic() - start
        result = state.result(raise_on_failure=False)
        if not state.is_completed() or not isinstance(result, dict):
            raise RuntimeError(f"sharded run ended {state.type.value}: {state.message}")
        if result["registered"] != objects:
            raise RuntimeError(f"registered {result['registered']} of {objects}")
        return {"workers": workers, "seconds": round(seconds, 1), "per_s": round(objects / seconds, 1), **result}
    finally:
        for proc in procs:
            servers.stop_prefect_worker(proc)
        _drop(database)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--objects", type=int, default=4000)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--job-delay", type=float, default=0.5, help="seconds each emulated upload job takes")
    args = parser.parse_args(argv)
    counts = [int(n) for n in args.workers.split(",")]
    home = Path(tempfile.mkdtemp(prefix="encord-ingest-bench-scale-"))
    keys = make_keypair(home)
    moto = servers.start_moto()
    aws = aws_env(moto.url)
    emulator = servers.start_emulator(aws, "--authorized-key", str(keys.public), "--job-delay-seconds",
                                      str(args.job_delay))  # fmt: skip
    server = servers.start_prefect_server(home / "server")
    bucket = f"bench-scale-{uuid.uuid4().hex[:6]}"
    rows: list[dict[str, Any]] = []
    try:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "ENCORD_"))},
            **aws, "PWD": str(ROOT), "PREFECT_API_URL": f"{server.url}/api", "PREFECT_HOME": str(home / "client"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1", "PREFECT_WORKER_QUERY_SECONDS": "2",
            "PREFECT_LOGGING_LEVEL": "WARNING", "ENCORD_DOMAIN": emulator.url, "ENCORD_INGEST_POLL_SECONDS": "2",
            "ENCORD_INGEST_SCHEME": "s3", "ENCORD_INGEST_BUCKET": bucket, "ENCORD_INGEST_PREFIX": "data/",
            "ENCORD_INGEST_FOLDER": "bench", "ENCORD_INGEST_INTEGRATION": "local-aws",
            "ENCORD_INGEST_CRON": "0 0 1 1 *",
            "ENCORD_INGEST_STATE_DIR": str(home / "state"), "ENCORD_INGEST_SCHEMA": str(home / "schema.yaml"),
        }  # fmt: skip
        _seed(moto.url, bucket, args.objects, args.shards)
        _run([sys.executable, "deployments/bootstrap.py", "--encord-key-file", str(keys.private)], env)
        _run([str(Path(sys.executable).parent / "prefect"), "--no-prompt", "deploy", "--all", "--prefect-file",
              "deployments/prefect.yaml"], env)  # fmt: skip
        os.environ.update({k: v for k, v in env.items() if k.startswith(("PREFECT_", "AWS_", "ENCORD_"))})
        for n in counts:
            row = measure(n, env, bucket, args.objects, args.shards)
            rows.append(row)
            print(f"{n} worker(s): {row['seconds']} s, {row['per_s']} objects/s", flush=True)
    finally:
        server.stop()
        emulator.stop()
        moto.stop()
    base = rows[0]["per_s"] if rows else 0.0
    figures: dict[str, Any] = {}
    cores = os.cpu_count() or 1
    for row in rows:
        speedup = round(row["per_s"] / base, 2) if base else None
        bound = min(row["workers"], cores)  # workers share this machine's cores
        figures[f"scale_out_{row['workers']}w"] = {
            "value": row["per_s"], "unit": "objects/s",
            "target": f"speedup >= 0.7 x min(workers, cores) = {0.7 * bound:.1f}",
            "ok": bool(speedup and speedup >= 0.7 * bound), "speedup": speedup, "seconds": row["seconds"],
            "objects": args.objects, "shards": args.shards,
        }  # fmt: skip
    result = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
              "job_delay_s": args.job_delay, "figures": figures}  # fmt: skip
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
