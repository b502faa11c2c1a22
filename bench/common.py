"""Shared plumbing for the benchmarks: sizes, figures, worker subprocesses, the seeded moto server."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from integrations.servers import Proc, aws_env

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULT_PREFIX = "BENCH-RESULT "
BUCKET = "bench"
# The cheap metadata every pipeline run attaches: two named groups from the key, no per-object request.
PATH_METADATA = "path:(?P<site>[^/]+)/(?P<camera>[^/]+)/"


class BenchError(RuntimeError):
    """A benchmark step could not run; the figure is reported as not measured."""


@dataclass(frozen=True, slots=True)
class Sizes:
    """How big each benchmark runs; `QUICK` is a smoke run of the same code."""

    moto_objects: int
    synthetic_big: int
    synthetic_small: int
    table_rows: int
    naive_objects: int
    naive_seconds: float
    sidecar_every: int = 10
    cloud_objects: int = 3_000  # per emulator (Azurite and fake-gcs-server take ~400 uploads/s)


FULL = Sizes(
    moto_objects=100_000,
    synthetic_big=1_000_000,
    synthetic_small=100_000,
    table_rows=1_000_000,
    naive_objects=500,
    naive_seconds=30.0,
)
QUICK = Sizes(
    moto_objects=10_000,
    synthetic_big=100_000,
    synthetic_small=10_000,
    table_rows=100_000,
    naive_objects=100,
    naive_seconds=8.0,
    cloud_objects=500,
)


@dataclass(slots=True)
class Figure:
    """One row of the results: a value against its target, with the raw numbers it came from."""

    name: str
    title: str
    value: float | None
    unit: str
    target: str
    ok: bool | None
    extra: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "value": self.value,
            "unit": self.unit,
            "target": self.target,
            "ok": self.ok,
            **self.extra,
        }


def rate(count: float, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("inf")


def rounded(value: Any, digits: int = 3) -> Any:
    """Floats rounded for the JSON file, recursively; everything else unchanged."""
    if isinstance(value, float):
        return round(value, digits)
    if isinstance(value, dict):
        return {k: rounded(v, digits) for k, v in value.items()}
    if isinstance(value, list):
        return [rounded(v, digits) for v in value]
    return value


def machine() -> str:
    """CPU model, cores, memory, Python and the load average when the run started (others share the box)."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        memory = f", {kb / 1024 / 1024:.0f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return (
        f"{model}, {os.cpu_count()} cores{memory}, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}, load average {load:.1f} at start"
    )


def worker_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    paths = [str(ROOT), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, **(extra or {}), "PYTHONPATH": os.pathsep.join(p for p in paths if p)}


def run_worker(job: str, args: dict[str, Any], *, env: dict[str, str] | None = None, timeout: float = 1200) -> Any:
    """Run `bench/worker.py JOB ARGS` in a fresh interpreter and return the JSON it reports."""
    cmd = [sys.executable, str(BENCH / "worker.py"), job, json.dumps(args)]
    with tempfile.TemporaryFile("w+") as err:
        try:
            proc = subprocess.run(
                cmd, env=worker_env(env), stdout=subprocess.PIPE, stderr=err, text=True, timeout=timeout, cwd=ROOT
            )
        except subprocess.TimeoutExpired:
            raise BenchError(f"worker {job} did not finish within {timeout:.0f}s") from None
        err.seek(0)
        stderr = err.read()
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX) :])
    tail = "\n".join(stderr.strip().splitlines()[-15:])
    raise BenchError(f"worker {job} exited {proc.returncode} without a result:\n{tail}")


def start_seeded_moto(objects: int, *, sidecar_every: int = 0, stock: bool = False, timeout: float = 900) -> Proc:
    """bench/moto_seeded.py in its own process group; `Proc.extra` holds its seeding figures."""
    tmp = tempfile.TemporaryDirectory(prefix="encord-ingest-bench-moto-")
    log = Path(tmp.name) / "moto.log"
    cmd = [sys.executable, str(BENCH / "moto_seeded.py"), "--bucket", BUCKET, "--objects", str(objects)]
    cmd += ["--sidecar-every", str(sidecar_every)] + (["--stock"] if stock else [])
    log_file = log.open("w")
    popen = subprocess.Popen(
        cmd, env=worker_env(), stdout=subprocess.PIPE, stderr=log_file, text=True, start_new_session=True, cwd=tmp.name
    )
    found: list[str] = []

    def read() -> None:
        assert popen.stdout is not None
        for line in popen.stdout:
            if line.startswith("ready ") and not found:
                found.append(line.strip())

    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + timeout
    while not found:
        if popen.poll() is not None or time.monotonic() > deadline:
            proc = Proc(popen, "", Path(tmp.name), log, tmp)
            detail = proc.tail()
            proc.stop()
            raise BenchError(f"seeded moto did not start: {detail}")
        time.sleep(0.1)
    words = found[0].split()
    info = dict(w.split("=", 1) for w in words[2:])
    proc = Proc(popen, words[1], Path(tmp.name), log, tmp)
    proc.seeded = int(info["seeded"])  # type: ignore[attr-defined]
    proc.seed_seconds = float(info["seconds"])  # type: ignore[attr-defined]
    return proc


def timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """(result, wall seconds, CPU seconds of this process)."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def peak_rss_mb() -> float:
    """This process's peak resident set size so far, in MiB.

    Linux's `VmHWM`, the high-water mark of this process's own memory. Not `ru_maxrss`: Linux
    carries that across exec, so a worker started by the bench reported the bench's own peak
    (a 600 MB parent gave every worker a 631 MB "peak"). Elsewhere `ru_maxrss` is all there is.
    """
    import resource

    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024 if sys.platform == "darwin" else 1024)  # macOS reports bytes


def rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 1024 / 1024


def aws_worker_env(endpoint: str) -> dict[str, str]:
    """AWS variables pointing boto3 at the bench's moto server (see integrations.servers.aws_env)."""
    from integrations.servers import aws_env

    return aws_env(endpoint)


def moto_s3_client(endpoint: str, *, pool: int = 10) -> Any:
    """A boto3 S3 client on the bench's moto server (moto takes any credentials)."""
    import boto3
    from botocore.config import Config

    creds = aws_env(endpoint)
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=creds["AWS_DEFAULT_REGION"],
        aws_access_key_id=creds["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=creds["AWS_SECRET_ACCESS_KEY"],
        config=Config(max_pool_connections=pool),
    )


def wait_idle(pids: list[int], *, cores: float = 0.1, window: float = 2.0, timeout: float = 90.0) -> float:
    """Wait until these processes (and their children) use under `cores` CPU over `window` seconds.

    The Prefect server ingests a run's events for a while after the run ends; measuring the next
    run while it does would charge that backlog to the next run. Returns the seconds waited.
    """
    import psutil

    def cpu_seconds() -> float:
        total = 0.0
        for pid in pids:
            try:
                proc = psutil.Process(pid)
                for p in [proc, *proc.children(recursive=True)]:
                    times = p.cpu_times()
                    total += times.user + times.system
            except psutil.Error:
                continue
        return total

    started = time.monotonic()
    while time.monotonic() - started < timeout:
        before = cpu_seconds()
        time.sleep(window)
        if (cpu_seconds() - before) / window < cores:
            break
    return time.monotonic() - started


def code_version() -> dict[str, Any]:
    """The commit measured, and any uncommitted changes to the pipeline's code (they are measured too)."""

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.SubprocessError):
            return ""

    dirty = git("status", "--porcelain", "--", "tasks", "flows", "integrations", "encord_ingest")
    changed = [line[3:] for line in dirty.splitlines() if line.strip()]
    return {"commit": git("rev-parse", "--short", "HEAD").strip(), "uncommitted": changed}
