"""`table:` metadata at scale: a 1M-row CSV and Parquet joined to a 1M-object synthetic listing."""

from __future__ import annotations

import tempfile
from pathlib import Path

from bench.common import Figure, rate, run_worker
from bench.context import Context
from bench.synthetic import synthetic_keys

FIGURES = ("table_join",)
TARGET = 100_000


def write_tables(directory: Path, rows: int) -> dict[str, Path]:
    """`key` plus three columns (site, score, captured_at) as CSV and Parquet, one row per synthetic key."""
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    keys = [key for _, key in synthetic_keys(rows)]
    table = pa.table(
        {
            "key": keys,
            "site": [k.split("/", 1)[0] for k in keys],
            "score": [i % 1000 / 10 for i in range(rows)],
            "captured_at": [f"2026-01-{1 + i % 28:02d}T{i % 24:02d}:00:00Z" for i in range(rows)],
        }
    )
    paths = {"csv": directory / "meta.csv", "parquet": directory / "meta.parquet"}
    pcsv.write_csv(table, paths["csv"])
    pq.write_table(table, paths["parquet"])
    return paths


def run(ctx: Context) -> list[Figure]:
    rows = ctx.sizes.table_rows
    with tempfile.TemporaryDirectory(prefix="encord-ingest-bench-table-") as tmp:
        ctx.log(f"writing {rows:,}-row CSV and Parquet tables")
        paths = write_tables(Path(tmp), rows)
        results = {}
        for fmt, path in paths.items():
            ctx.log(f"joining the {fmt} table to {rows:,} listed objects (fresh process)")
            out = run_worker("table_join", {"table": str(path), "objects": rows})
            out["file_mb"] = path.stat().st_size / 1024 / 1024
            net_join = max(0.0, out["join_seconds"] - out["source_seconds"])
            out["objects_per_s"] = rate(out["objects"], out["load_seconds"] + net_join)
            out["gross_objects_per_s"] = rate(out["objects"], out["load_seconds"] + out["join_seconds"])
            out["join_objects_per_s"] = rate(out["objects"], net_join)
            ctx.log(
                f"  load {out['load_seconds']:.1f}s + join {out['join_seconds']:.1f}s "
                f"(of which the synthetic listing {out['source_seconds']:.1f}s), "
                f"{out['matched']:,}/{out['objects']:,} matched, peak RSS {out['peak_rss_mb']:.0f} MB"
            )
            results[fmt] = out
    slowest = min(results, key=lambda f: results[f]["objects_per_s"])
    value = results[slowest]["objects_per_s"]
    complete = all(r["matched"] == r["objects"] and r["columns"] == 3 * r["objects"] for r in results.values())
    peak = max(r["peak_rss_mb"] for r in results.values())
    return [
        Figure(
            "table_join",
            f"metadata table join, {rows:,}-row CSV/Parquet (load + join, slower format: {slowest})",
            value,
            "objects/s",
            f">= {TARGET:,}/s",
            value >= TARGET and complete,
            {
                "detail": ", ".join(f"{f} {r['objects_per_s']:,.0f}/s" for f, r in results.items())
                + f", peak RSS {peak:.0f} MB",
                "peak_rss_mb": peak,
                "all_rows_matched": complete,
                **results,
            },
        )
    ]
