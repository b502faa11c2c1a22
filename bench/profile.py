"""Where the time goes: profile a benchmark scenario and print the hotspots by function.

    python bench/profile.py synthetic [--objects 1000000]
    python bench/profile.py moto      [--objects 100000]
    python bench/profile.py flow      [--objects 100000]   # first run and no-change re-run
    python bench/profile.py table     [--objects 1000000]

The measured process is the same `bench/worker.py` job `make bench` times. With py-spy on PATH
(`pip install py-spy`) it is sampled from outside, all threads, CPU-active samples only; without
it, cProfile runs inside (slower, and it inflates many-small-call code). Collapsed stacks and the
report are written under bench/profiles/ (git-ignored).
"""

from __future__ import annotations

import argparse
import json
import pstats
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench.*` and the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import BENCH, BUCKET, FULL, PATH_METADATA, aws_worker_env, worker_env
from bench.context import Context

PROJECT_DIRS = ("tasks/", "flows/", "integrations/", "encord_ingest/")
OUT = BENCH / "profiles"
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^():]+)(?::\d+)?\)$")


@dataclass(slots=True)
class Hotspots:
    """Samples (or seconds) per function: own time and inclusive time, with the total."""

    own: Counter[str]
    inclusive: Counter[str]
    total: float
    tool: str


ROOT = str(Path(__file__).resolve().parent.parent) + "/"


def _short(path: str) -> str:
    for marker in ("site-packages/", ROOT, "python3.11/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


def _name(frame: str) -> str:
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    return f"{_short(m.group('file'))}:{m.group('func')}"


def parse_collapsed(path: Path) -> Hotspots:
    """py-spy `--format raw` output: `frame;frame;... count` per line, root first."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_name(f) for f in stack.split(";") if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += n
        own[frames[-1]] += n
        for name in set(frames):
            inclusive[name] += n
    return Hotspots(own, inclusive, float(total), "py-spy")


def parse_pstats(path: Path) -> Hotspots:
    stats = pstats.Stats(str(path))
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for (file, _line, func), (_cc, _nc, tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        name = f"{_short(file)}:{func}"
        own[name] += tt
        inclusive[name] = max(inclusive[name], ct)
    return Hotspots(own, inclusive, float(stats.total_tt), "cProfile (main thread, deterministic)")  # type: ignore[attr-defined]


def profile_worker(
    label: str, job: str, args: dict[str, Any], env: dict[str, str] | None = None, *, gil: bool = True
) -> Hotspots:
    """Run one worker job under py-spy (or cProfile) and aggregate its samples.

    `gil=True` samples only the thread holding the GIL (right for Python-bound work; idle pool
    threads blocked in C would otherwise count as busy); `gil=False` samples every active thread,
    which also shows time spent in native code that releases the GIL (DuckDB).
    """
    OUT.mkdir(exist_ok=True)
    worker = [str(BENCH / "worker.py"), job, json.dumps(args)]
    spy = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    full_env = worker_env(env)
    if spy and Path(spy).exists():
        out = OUT / f"{label}.collapsed.txt"
        cmd = [spy, "record", "--format", "raw", "--rate", "200", *(["--gil"] if gil else []), "-o", str(out)]
        subprocess.run([*cmd, "--", sys.executable, *worker], env=full_env, check=True, stdout=subprocess.DEVNULL)
        spots = parse_collapsed(out)
        spots.tool = "py-spy --gil (thread holding the GIL)" if gil else "py-spy (active threads, native time included)"
        return spots
    out = OUT / f"{label}.pstats"
    subprocess.run([sys.executable, "-m", "cProfile", "-o", str(out), *worker], env=full_env, check=True)
    return parse_pstats(out)


def report(label: str, spots: Hotspots, top: int) -> str:
    lines = [f"## {label} ({spots.tool}, total {spots.total:,.0f})", "", "Own time:"]
    for name, n in spots.own.most_common(top):
        lines.append(f"  {100 * n / spots.total:5.1f}%  {name}")
    lines += ["", "Inclusive time, project code:"]
    ours = [(k, v) for k, v in spots.inclusive.most_common() if k.startswith(PROJECT_DIRS) or "bench/" in k]
    for name, n in ours[:top]:
        lines.append(f"  {100 * n / spots.total:5.1f}%  {name}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("scenario", choices=("synthetic", "moto", "flow", "table"))
    parser.add_argument("--objects", type=int)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args(argv)
    runs: list[tuple[str, Hotspots]] = []
    if args.scenario == "synthetic":
        from bench.synthetic import synthetic_url

        n = args.objects or FULL.synthetic_big
        job_args = {"source": synthetic_url(n, sidecar_every=FULL.sidecar_every), "metadata": [PATH_METADATA]}
        runs.append((f"synthetic-{n}", profile_worker(f"synthetic-{n}", "manifest", job_args)))
    elif args.scenario == "table":
        from bench.figures.tables import write_tables

        n = args.objects or FULL.table_rows
        with tempfile.TemporaryDirectory() as tmp:
            paths = write_tables(Path(tmp), n)
            for fmt, path in paths.items():
                label = f"table-{fmt}-{n}"
                job_args = {"table": str(path), "objects": n}
                runs.append((label, profile_worker(label, "table_join", job_args, gil=False)))
    else:
        from bench.common import Sizes

        n = args.objects or FULL.moto_objects
        ctx = Context(sizes=Sizes(n, 0, 0, 0, 0, 0), selected=set())
        with ctx.stack:
            moto = ctx.moto()
            if args.scenario == "moto":
                job_args = {"source": f"s3://{BUCKET}/", "metadata": [PATH_METADATA]}
                runs.append((f"moto-{n}", profile_worker(f"moto-{n}", "manifest", job_args, aws_worker_env(moto.url))))
            else:
                from bench.figures.e2e import _params, _servers

                env = _servers(ctx)
                params = _params(env)
                for label in (f"flow-first-{n}", f"flow-rerun-{n}"):
                    runs.append((label, profile_worker(label, "flow", {"params": params}, env)))
    text = "\n".join(report(label, spots, args.top) for label, spots in runs)
    OUT.mkdir(exist_ok=True)
    (OUT / f"{args.scenario}.txt").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
