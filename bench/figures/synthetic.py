"""The manifest path at CPU speed: 1M objects from a zero-I/O source, objects/s per core and peak RSS."""

from __future__ import annotations

from bench.common import PATH_METADATA, Figure, rate, run_worker
from bench.context import Context
from bench.synthetic import synthetic_url

FIGURES = ("synthetic_per_core", "peak_rss_ratio")
PER_CORE_TARGET = 50_000
RSS_RATIO_TARGET = 1.2
RSS_MB_TARGET = 300


def _manifest(ctx: Context, objects: int) -> dict:
    ctx.log(f"synthetic manifest run, {objects:,} objects (fresh process)")
    url = synthetic_url(objects, sidecar_every=ctx.sizes.sidecar_every)
    out = run_worker("manifest", {"source": url, "metadata": [PATH_METADATA]})
    ctx.log(
        f"  {out['listed']:,} objects in {out['seconds']:.1f}s wall, {out['cpu_seconds']:.1f}s CPU, "
        f"peak RSS {out['peak_rss_mb']:.0f} MB"
    )
    return out


def run(ctx: Context) -> list[Figure]:
    sizes = ctx.sizes
    small = _manifest(ctx, sizes.synthetic_small) if ctx.wants("peak_rss_ratio") else None
    big = _manifest(ctx, sizes.synthetic_big)
    figures: list[Figure] = []
    if ctx.wants("synthetic_per_core"):
        per_core = rate(big["listed"], big["cpu_seconds"])
        figures.append(
            Figure(
                "synthetic_per_core",
                f"listing + classify + manifest, {big['listed']:,} synthetic objects (no network)",
                per_core,
                "objects/s per core",
                f">= {PER_CORE_TARGET:,}/s",
                per_core >= PER_CORE_TARGET,
                {
                    "detail": (
                        f"{big['listed']:,} objects: {big['cpu_seconds']:.1f}s CPU, {big['seconds']:.1f}s wall "
                        f"({rate(big['listed'], big['seconds']):,.0f}/s wall)"
                    ),
                    "objects": big["listed"],
                    "wall_objects_per_s": rate(big["listed"], big["seconds"]),
                    "sidecar_every": sizes.sidecar_every,
                    "metadata": [PATH_METADATA],
                    "run": big,
                },
            )
        )
    if small is not None:
        ratio = big["peak_rss_mb"] / small["peak_rss_mb"]
        ok = ratio <= RSS_RATIO_TARGET and big["peak_rss_mb"] <= RSS_MB_TARGET
        figures.append(
            Figure(
                "peak_rss_ratio",
                f"peak RSS at {big['listed']:,} vs {small['listed']:,} objects (fresh processes)",
                ratio,
                "x",
                f"<= {RSS_RATIO_TARGET}x and <= {RSS_MB_TARGET} MB",
                ok,
                {
                    "detail": (
                        f"{big['peak_rss_mb']:.0f} MB at {big['listed']:,} vs "
                        f"{small['peak_rss_mb']:.0f} MB at {small['listed']:,}"
                    ),
                    "big_peak_rss_mb": big["peak_rss_mb"],
                    "small_peak_rss_mb": small["peak_rss_mb"],
                    "big_growth_mb": big["peak_rss_mb"] - big["rss_before_mb"],
                    "small_growth_mb": small["peak_rss_mb"] - small["rss_before_mb"],
                    "big_objects": big["listed"],
                    "small_objects": small["listed"],
                },
            )
        )
    return figures
