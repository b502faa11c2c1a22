"""What the benchmark suites share within one run: sizes, the selected figures, servers, cached baselines."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console

from bench.common import BUCKET, BenchError, Sizes, run_worker, start_seeded_moto
from integrations.servers import Proc


@dataclass
class Context:
    sizes: Sizes
    selected: set[str]
    stock_moto: bool = False
    console: Console = field(default_factory=lambda: Console(stderr=True))
    stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    cache: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)

    def wants(self, *names: str) -> bool:
        return any(n in self.selected for n in names)

    def log(self, message: str) -> None:
        self.console.print(f"[dim]{time.monotonic() - self.started:6.1f}s[/] {message}", highlight=False)

    def once(self, key: str, make: Callable[[], Any]) -> Any:
        if key not in self.cache:
            self.cache[key] = make()
        return self.cache[key]

    def moto(self) -> Proc:
        """The seeded moto server, started on first use and shared by every suite of the run."""

        def start() -> Proc:
            n = self.sizes.moto_objects
            self.log(f"seeding moto with {n:,} objects ({'stock listing' if self.stock_moto else 'fast listing'})")
            proc = start_seeded_moto(n, stock=self.stock_moto)
            self.stack.callback(proc.stop)
            seeded, seconds = proc.seeded, proc.seed_seconds  # type: ignore[attr-defined]
            self.log(f"moto ready at {proc.url}: {seeded:,} keys in {seconds:.1f}s ({seeded / seconds:,.0f} keys/s)")
            return proc

        return self.once("moto", start)

    def bare_listing(self) -> dict[str, Any]:
        """Bare listings of the moto bucket with boto3 (once) and obstore (best of 3); the faster is the baseline."""

        def measure() -> dict[str, Any]:
            moto = self.moto()
            args = {"endpoint": moto.url, "bucket": BUCKET}
            out: dict[str, Any] = {}
            try:
                runs = [run_worker("list_obstore", args) for _ in range(3)]
                out["obstore"] = min(runs, key=lambda r: r["seconds"])
                out["obstore_runs_s"] = [r["seconds"] for r in runs]
                self.log(f"bare obstore listing: {out['obstore']['keys']:,} keys in {out['obstore']['seconds']:.2f}s")
            except BenchError as exc:  # obstore is optional (see constraints.txt); boto3 then is the baseline
                out["obstore_error"] = str(exc).splitlines()[0]
                self.log(f"[yellow]obstore listing unavailable: {out['obstore_error']}[/]")
            if "obstore" in out:  # is it a client a registration pipeline could list a real bucket with?
                out["key_fidelity"] = run_worker("key_fidelity", {"endpoint": moto.url})
                fid = out["key_fidelity"]
                self.log(f"valid S3 keys listed unchanged: obstore {fid['obstore_exact']}/{fid['total']}, "
                         f"boto3 {fid['boto3_exact']}/{fid['total']}")  # fmt: skip
            out["boto3"] = run_worker("list_boto3", args)
            self.log(f"bare boto3 listing: {out['boto3']['keys']:,} keys in {out['boto3']['seconds']:.2f}s")
            clients = [c for c in ("obstore", "boto3") if c in out]
            fastest = min(clients, key=lambda c: out[c]["seconds"])
            out["fastest"] = fastest
            out["fastest_seconds"] = out[fastest]["seconds"]
            out["keys"] = out[fastest]["keys"]
            return out

        return self.once("bare", measure)
