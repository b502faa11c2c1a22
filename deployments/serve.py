"""Serve every deployment of deployments/prefect.yaml from this one process (a single machine).

No work pool, no worker: `serve()` runs each flow run in a subprocess of this process. The
deployments (schedules, triggers, parameters) come from prefect.yaml, read with the same
`{{ $ENV }}` values `prefect deploy` would use, so the two ways of running never drift apart.

    cd REPO && PREFECT_API_URL=http://127.0.0.1:4200/api python deployments/serve.py [--limit 4] [--check]

Stopping it pauses its deployments (Prefect's default); start it again to resume them.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
PREFECT_FILE = Path(__file__).resolve().parent / "prefect.yaml"
if str(ROOT) not in sys.path:  # run as a script: the flows import the repository's packages
    sys.path.insert(0, str(ROOT))
_ENV_PLACEHOLDER = re.compile(r"\{\{\s*\$([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    return []


def env_names(config: Any) -> list[str]:
    """Environment variables a loaded prefect.yaml refers to (`{{ $NAME }}`), in order of appearance."""
    return list(dict.fromkeys(n for s in _strings(config) for n in _ENV_PLACEHOLDER.findall(s)))


def missing_env(config: Any, environ: dict[str, str] | None = None) -> list[str]:
    env = os.environ if environ is None else environ
    return [name for name in env_names(config) if name not in env]


def _expand(value: Any, env: dict[str, str]) -> Any:
    if isinstance(value, str):
        return _ENV_PLACEHOLDER.sub(lambda m: env[m.group(1)], value)
    if isinstance(value, list):
        return [_expand(v, env) for v in value]
    if isinstance(value, dict):
        return {k: _expand(v, env) for k, v in value.items()}
    return value


def load_deployments(path: Path = PREFECT_FILE, environ: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """The `deployments:` entries with `{{ $NAME }}` filled in; event templates are left for Prefect."""
    config = yaml.safe_load(path.read_text())
    env = dict(os.environ if environ is None else environ)
    env.setdefault("PWD", str(ROOT))
    missing = missing_env(config, env)
    if missing:
        raise SystemExit(f"set these environment variables first: {', '.join(missing)} (see {path})")
    return [_expand(d, env) for d in config["deployments"]]


def to_runner_deployment(config: dict[str, Any]) -> Any:
    """One prefect.yaml entry as `flow.to_deployment(...)` (work_pool and pull steps do not apply)."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig
    from prefect.events import DeploymentEventTrigger
    from prefect.flows import load_flow_from_entrypoint
    from prefect.schedules import Cron

    flow = load_flow_from_entrypoint(str(ROOT / config["entrypoint"]))
    schedules = [
        Cron(s["cron"], timezone=s.get("timezone"), active=s.get("active", True)) for s in config.get("schedules") or []
    ]
    triggers = [
        DeploymentEventTrigger(**{k: v for k, v in t.items() if k != "type"}) for t in config.get("triggers") or []
    ]
    limit = config.get("concurrency_limit")
    return flow.to_deployment(
        name=config["name"],
        description=config.get("description"),
        tags=config.get("tags"),
        parameters=config.get("parameters") or {},
        schedules=schedules or None,
        triggers=triggers or None,
        concurrency_limit=ConcurrencyLimitConfig(**limit) if isinstance(limit, dict) else limit,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prefect-file", type=Path, default=PREFECT_FILE)
    parser.add_argument("--limit", type=int, default=4, help="flow runs at once in this process")
    parser.add_argument("--check", action="store_true", help="build the deployments, print them, do not serve")
    args = parser.parse_args(argv)
    os.chdir(ROOT)  # entrypoints and relative paths are the repository's
    deployments = [to_runner_deployment(c) for c in load_deployments(args.prefect_file)]
    for d in deployments:
        kinds = [f"{len(d.schedules or [])} schedule(s)", f"{len(d.triggers or [])} trigger(s)"]
        print(f"{d.flow_name}/{d.name}: {d.entrypoint} ({', '.join(kinds)})")
    if args.check:
        return 0
    from prefect import serve

    serve(*deployments, limit=args.limit)
    return 0


if __name__ == "__main__":
    sys.exit(main())
