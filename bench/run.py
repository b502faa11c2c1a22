"""`make bench`: is the pipeline ever the bottleneck? Prints a table and writes bench/results.json.

    python bench/run.py [--quick] [--only NAME]... [--stock-moto] [--markdown bench/RESULTS.md]

Every figure compares things measured side by side in this one run (absolute times on a shared
machine are noise). The suites start their own servers (seeded moto, the Encord emulator, a
Prefect server) and stop them. `--only` takes figure names (see `--list`); a suite measures
what its selected figures need, e.g. the re-run needs the first run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path
from types import ModuleType
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench.*` and the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rich.console import Console
from rich.table import Table

from bench.common import BENCH, FULL, QUICK, Figure, code_version, machine, rounded
from bench.context import Context
from bench.figures import clouds, e2e, listing, synthetic, tables

# Suites on the shared moto server first (it is stopped before the CPU-bound suites run).
MOTO_SUITES: tuple[ModuleType, ...] = (listing, e2e)
LOCAL_SUITES: tuple[ModuleType, ...] = (synthetic, tables, clouds)
ORDER = (
    "listing_vs_bare",
    "listing_vs_bare_s3_latency",
    "synthetic_per_core",
    "peak_rss_ratio",
    "prefect_tasks_per_1k",
    "rerun_vs_bare",
    "rerun_vs_bare_s3_latency",
    "e2e_registered_per_s",
    "table_join",
    "naive_vs_ours",
    "metadata_changes",
    "cloud_listing_cpu",
)
NOTES = {
    "listing_vs_bare": "`encord-ingest manifest s3://bench/` (real code path, `path:` metadata) against a bare "
    "listing of the same moto bucket by boto3 and by obstore, in fresh processes, best of 3 each; the faster bare "
    "client is the baseline. Each is timed from after building its client: the pipeline from the end of its "
    "pre-flight (clients, credential check), which is reported beside it, with the ratio it would give counted in. "
    "Also our S3 reader alone (`S3Store.list_pages`, one lister, no pairing, classify or manifest), best of 3: the "
    "listing's share of the pipeline's time. Beside it, nine valid S3 keys (a folder marker `dir/`, `/lead`, "
    "`trail/`, `a//b`, `./`, `../`, a control character, `%20`, non-ASCII), each alone in a bucket, listed by "
    "both clients: how many come back unchanged. "
    "moto answers ListObjectsV2 (plain and with a delimiter) from a sorted snapshot (bench/moto_seeded.py; stock "
    "moto rescans the bucket per page and lists ~1k keys/s at 100k, `--stock-moto`). Also measured with 0.1 s "
    "added per page (S3-like).",
    "listing_vs_bare_s3_latency": "the same two runs with 0.1 s added to every listing page by the server "
    "(what a real S3 page costs): does the pipeline hide the listing's latency? (default `--fanout 4`)",
    "synthetic_per_core": "the same `manifest` path over a zero-I/O source (bench/synthetic.py, a sidecar beside "
    "every 10th object), objects per CPU-second of the process.",
    "peak_rss_ratio": "peak RSS (Linux `VmHWM`: the process's own high-water mark; `ru_maxrss` would carry the "
    "parent's across exec) of two fresh `manifest` processes, 1M vs 100k synthetic objects.",
    "prefect_tasks_per_1k": "task runs of the first flow run, read back from the Prefect API after the server "
    "ingested them.",
    "rerun_vs_bare": "the flow again over the unchanged bucket (every object skipped through the ledger, in the "
    "flow: no batch task is made) against the fastest bare listing; beside it, what a flow run that does nothing "
    "takes on the same Prefect server (the part of any re-run no pipeline work can remove: Prefect 3.8 joins its "
    "heartbeat thread at the end of every flow run, and that thread sleeps in 1 s steps), and both runs as the "
    "Prefect server times them (Running to Completed, what the UI shows).",
    "rerun_vs_bare_s3_latency": "the no-change re-run and the fastest bare listing, both with 0.1 s per page.",
    "e2e_registered_per_s": "the Prefect flow (`flows.ingest.ingest`) from moto into the Encord emulator, 100k "
    "objects, local Prefect server; all servers share the 2 cores.",
    "table_join": "`table:` metadata via `MetadataPlan.build` + `MetadataPlan.cheap` per 1,000-object batch over a "
    "1M-object synthetic listing; load + join time, the synthetic listing's own time taken out.",
    "naive_vs_ours": "a hand-written loop: boto3 listing, then `add_private_data_to_folder_start` + "
    "`add_private_data_to_folder_get_result` per object (capped at 500 objects / 30 s), against the flow's rate.",
    "metadata_changes": "after the runs above, a sidecar (`KEY.metadata.json`) is put beside 100 registered "
    "objects spread over the bucket and the flow runs again: the metadata updates the Encord emulator received "
    "(its `/_emulator/counters`), with nothing submitted anew.",
    "cloud_listing_cpu": "fake-gcs-server and Azurite seeded with the same layout (3,000 objects each), then in one "
    "fresh process, alternating, best CPU of 3 each: the store's `list_pages` (GCS: ObjectRefs from the page's JSON; "
    "Azure: the raw List Blobs page read by `azure_pages`) against the SDK's own listing made into the same "
    "ObjectRefs (what the stores did before). Client CPU per 1,000 objects; the emulators' time is not in it.",
}


def _format(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit.startswith("x") or "task runs" in unit:
        return f"{value:.2f}"
    return f"{value:,.0f}"


def _detail(fig: Figure) -> str:
    return str(fig.extra.get("detail", fig.extra.get("error", "")))


def render(figures: list[Figure], console: Console) -> None:
    table = Table(title="encord-ingest benchmarks", show_lines=False)
    for column in ("figure", "value", "unit", "target", "ok", "measured"):
        table.add_column(column, overflow="fold")
    for fig in figures:
        ok = "[green]ok[/]" if fig.ok else ("[red]NOT OK[/]" if fig.ok is False else "-")
        table.add_row(fig.name, _format(fig.value, fig.unit), fig.unit, fig.target, ok, _detail(fig))
    console.print(table)


def markdown(figures: list[Figure], results: dict[str, Any], argv: list[str]) -> str:
    code = results["code"]
    lines = [
        "# Benchmark results",
        "",
        f"`python bench/run.py {' '.join(argv)}`".replace("  ", " ").replace(" `", "`"),
        "",
        f"Machine: {results['machine']}, {results['load_average_end']} at the end. "
        f"Wall time {results['seconds']:.0f} s. Code: {code['commit']}"
        + (f" plus uncommitted changes to {', '.join(code['uncommitted'])}" if code["uncommitted"] else "")
        + ".",
        "",
        "| figure | value | unit | target | ok | measured |",
        "|---|---|---|---|---|---|",
    ]
    for fig in figures:
        ok = "ok" if fig.ok else ("**NOT OK**" if fig.ok is False else "-")
        row = [fig.name, _format(fig.value, fig.unit), fig.unit, fig.target, ok, _detail(fig).replace("|", "/")]
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "How each figure is measured:", ""]
    lines += [f"- `{name}`: {text}" for name, text in NOTES.items() if name in {f.name for f in figures}]
    lines += [
        "",
        "Run it: `make bench` (about 5 minutes on 2 cores), `make bench BENCH_ARGS=--quick` (about 90 s), "
        "`python bench/run.py --only NAME`. Raw numbers for every figure go to `bench/results.json` (not "
        "committed); `python bench/profile.py synthetic|moto|flow|table` prints the hotspots.",
    ]
    return "\n".join(lines) + "\n"


def run_suite(ctx: Context, suite: ModuleType, out: dict[str, Figure]) -> None:
    names = [n for n in suite.FIGURES if n in ctx.selected]
    if not names:
        return
    try:
        for fig in suite.run(ctx):
            out[fig.name] = fig
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        ctx.log(f"[red]{suite.__name__} failed: {exc.__class__.__name__}: {exc}[/]")
        ctx.console.print(traceback.format_exc(), markup=False, highlight=False)
        for name in names:
            out.setdefault(name, Figure(name, name, None, "", "", False, {"error": f"{exc.__class__.__name__}: {exc}"}))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes: a smoke run in about two minutes")
    parser.add_argument("--only", action="append", default=[], metavar="NAME", help="figure(s) to measure")
    parser.add_argument("--list", action="store_true", help="list the figure names and exit")
    parser.add_argument("--stock-moto", action="store_true", help="let moto answer listings itself (very slow)")
    parser.add_argument("--out", type=Path, default=BENCH / "results.json")
    parser.add_argument("--markdown", type=Path, help="also write the table as Markdown (e.g. bench/RESULTS.md)")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a figure misses its target")
    args = parser.parse_args(argv)
    if args.list:
        print("\n".join(ORDER))
        return 0
    selected = {n.strip() for item in args.only for n in item.split(",") if n.strip()} or set(ORDER)
    unknown = selected - set(ORDER)
    if unknown:
        parser.error(f"unknown figure(s) {sorted(unknown)}; known: {', '.join(ORDER)}")

    console = Console(stderr=True)
    sizes = QUICK if args.quick else FULL
    desc = machine()
    started = time.monotonic()
    found: dict[str, Figure] = {}
    ctx = Context(sizes=sizes, selected=selected, stock_moto=args.stock_moto, console=console)
    ctx.log(f"{'quick' if args.quick else 'full'} run of {len(selected)} figure(s) on {desc}")
    phases: list[tuple[ModuleType, ...]] = [MOTO_SUITES, LOCAL_SUITES]
    for phase in phases:
        phase_ctx = Context(
            sizes=sizes, selected=selected, stock_moto=args.stock_moto, console=console, started=ctx.started
        )
        with phase_ctx.stack:
            for suite in phase:
                run_suite(phase_ctx, suite, found)
    figures = [found[n] for n in ORDER if n in found]
    results: dict[str, Any] = {
        "machine": desc,
        "code": code_version(),
        "mode": "quick" if args.quick else "full",
        "seconds": time.monotonic() - started,
        "load_average_end": round(os.getloadavg()[0], 2),
        "figures": {f.name: rounded(f.as_json()) for f in figures},
    }
    args.out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    render(figures, Console() if sys.stdout.isatty() else Console(width=200))
    console.print(f"wrote {args.out} ({results['seconds']:.0f}s)")
    if args.markdown:
        args.markdown.write_text(markdown(figures, results, argv))
        console.print(f"wrote {args.markdown}")
    missed = [f.name for f in figures if not f.ok]
    return 1 if args.strict and missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
