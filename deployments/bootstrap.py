"""Set up a Prefect server for encord-ingest: process work pool, per-bucket queue, Secret blocks.

    python deployments/bootstrap.py [--pool encord-ingest] [--encord-key-file ~/.ssh/encord]
                                    [--secret NAME=FILE]... [--deploy]
                                    [--api-rate 10 --api-concurrency 8] [--crash-after 90]

Idempotent: an existing pool is kept, the bucket's queue is (re)limited to one run at a time,
Secret blocks are overwritten. Secret values are read from files (never from arguments, which
`ps` shows) and never printed. `--deploy` checks the variables prefect.yaml needs, then runs
`prefect --no-prompt deploy --all` from the repository root. For sharded runs over many workers,
`--api-rate`/`--api-concurrency` create the global concurrency limits that pace Encord API calls
across workers, and `--crash-after` the automation that marks runs of killed workers Crashed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere
from deployments.serve import PREFECT_FILE, ROOT, missing_env

DEFAULT_POOL = "encord-ingest"
DEFAULT_KEY_BLOCK = "encord-ssh-key"


async def ensure_pool(pool: str, queue: str | None) -> list[str]:
    """Create the process pool and the bucket's queue (limit 1) when missing; returns what was done."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound
    from prefect.workers.process import ProcessWorker

    done: list[str] = []
    async with get_client() as client:
        try:
            await client.read_work_pool(pool)
        except ObjectNotFound:
            template = ProcessWorker.get_default_base_job_template()
            await client.create_work_pool(WorkPoolCreate(name=pool, type="process", base_job_template=template))
            done.append(f"created process work pool {pool}")
        if queue:
            try:
                existing = await client.read_work_queue_by_name(queue, work_pool_name=pool)
                await client.update_work_queue(existing.id, concurrency_limit=1)
                done.append(f"limited queue {queue} to one run at a time")
            except ObjectNotFound:
                await client.create_work_queue(name=queue, work_pool_name=pool, concurrency_limit=1)
                done.append(f"created queue {queue} (one run at a time)")
    return done


def save_secret(block: str, path: Path) -> str:
    from prefect.blocks.system import Secret

    Secret(value=path.expanduser().read_text().strip()).save(block, overwrite=True)
    return f"saved Secret block {block} from {path}"


def deploy(prefect_file: Path) -> int:
    import yaml

    missing = missing_env(yaml.safe_load(prefect_file.read_text()))
    if missing:
        print(f"set these environment variables first: {', '.join(missing)}", file=sys.stderr)
        return 2
    env = {**os.environ, "PWD": str(ROOT)}
    cmd = [str(Path(sys.executable).parent / "prefect"), "--no-prompt", "deploy", "--all", "--prefect-file"]
    return subprocess.run([*cmd, str(prefect_file)], cwd=ROOT, env=env, check=False).returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pool", default=DEFAULT_POOL)
    parser.add_argument("--queue", default=None, help="default: SCHEME-BUCKET from ENCORD_INGEST_SCHEME/_BUCKET")
    parser.add_argument("--encord-key-file", type=Path, help=f"save as Secret block {DEFAULT_KEY_BLOCK}")
    parser.add_argument("--secret", action="append", default=[], metavar="NAME=FILE", help="save FILE as block NAME")
    parser.add_argument("--deploy", action="store_true", help="then deploy prefect.yaml")
    parser.add_argument("--prefect-file", type=Path, default=PREFECT_FILE)
    parser.add_argument("--api-rate", type=float, help="Encord API calls per second, all workers together")
    parser.add_argument("--api-concurrency", type=int, default=8, help="upload jobs started/polled at once")
    parser.add_argument("--crash-after", type=float, help="seconds without heartbeat before a run is Crashed")
    args = parser.parse_args(argv)
    if not os.environ.get("PREFECT_API_URL"):
        print("set PREFECT_API_URL (e.g. http://127.0.0.1:4200/api) first", file=sys.stderr)
        return 2
    queue = args.queue
    if queue is None and os.environ.get("ENCORD_INGEST_SCHEME") and os.environ.get("ENCORD_INGEST_BUCKET"):
        queue = f"{os.environ['ENCORD_INGEST_SCHEME']}-{os.environ['ENCORD_INGEST_BUCKET']}"
    for line in asyncio.run(ensure_pool(args.pool, queue)):
        print(line)
    secrets = [(DEFAULT_KEY_BLOCK, args.encord_key_file)] if args.encord_key_file else []
    for spec in args.secret:
        name, sep, file = spec.partition("=")
        if not sep or not name or not file:
            parser.error(f"--secret takes NAME=FILE, not {spec!r}")
        secrets.append((name, Path(file)))
    for name, path in secrets:
        print(save_secret(name, path))
    if args.api_rate:
        from integrations.encord.throttle import ensure_limits

        print("\n".join(ensure_limits(rate=args.api_rate, concurrency=args.api_concurrency)))
    if args.crash_after:
        from flows.shard import ensure_crash_detection

        print(ensure_crash_detection(args.crash_after))
    return deploy(args.prefect_file) if args.deploy else 0


if __name__ == "__main__":
    sys.exit(main())
