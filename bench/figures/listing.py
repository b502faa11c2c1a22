"""Listing + classify + manifest on moto vs a bare paginated listing of the same bucket.

Measured twice: with moto answering pages as fast as it can (the pipeline's own cost is all that
is left), and with an S3-like delay per page (does the pipeline hide the listing's latency?).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import requests

from bench.common import BUCKET, PATH_METADATA, Figure, aws_worker_env, rate, run_worker
from bench.context import Context

FIGURES = ("listing_vs_bare", "listing_vs_bare_s3_latency")
TARGET = 0.9
BARE_FIELDS = ("boto3", "obstore", "obstore_runs_s", "obstore_error", "key_fidelity")
# What is timed of the pipeline: from the end of pre-flight (clients built, credentials checked),
# as the bare listers are timed from after building their client. Pre-flight is reported beside it.
TIMED = "listing_seconds"
RUNS = 3  # fresh processes for the zero-latency pipeline run, best taken (bench.context does so for obstore)
PAGE_LATENCY = 0.1  # seconds per 1,000-key page; real S3 takes roughly 0.1-0.3 s


def set_page_latency(url: str, seconds: float) -> None:
    requests.get(f"{url}/_bench/latency", params={"seconds": str(seconds)}, timeout=10).raise_for_status()


def _pipeline(url: str) -> dict[str, Any]:
    args = {"source": f"s3://{BUCKET}/", "metadata": [PATH_METADATA]}
    return run_worker("manifest", args, env=aws_worker_env(url))


@contextlib.contextmanager
def page_latency(url: str, seconds: float) -> Iterator[None]:
    """Within the block, every plain listing page from the bench moto server takes `seconds` longer."""
    set_page_latency(url, seconds)
    try:
        yield
    finally:
        set_page_latency(url, 0.0)


def bare_with_latency(ctx: Context) -> dict[str, Any]:
    """A bare listing by the fastest client with PAGE_LATENCY per page (measured once per run)."""

    def measure() -> dict[str, Any]:
        url = ctx.moto().url
        client = ctx.bare_listing()["fastest"]
        with page_latency(url, PAGE_LATENCY):
            ctx.log(f"bare {client} listing with {PAGE_LATENCY:g}s per page (S3-like)")
            bare = run_worker(f"list_{client}", {"endpoint": url, "bucket": BUCKET})
        ctx.log(f"  {bare['keys']:,} keys in {bare['seconds']:.1f}s")
        return {**bare, "client": client}

    return ctx.once("bare_latency", measure)


def _with_latency(ctx: Context, url: str) -> dict[str, Any]:
    """Bare obstore and the pipeline again, each page delayed by PAGE_LATENCY on the server."""
    if ctx.stock_moto:
        return {"skipped": "stock moto is slower than S3 already"}
    bare = bare_with_latency(ctx)
    with page_latency(url, PAGE_LATENCY):
        ctx.log(f"manifest pipeline with {PAGE_LATENCY:g}s per page")
        ours = _pipeline(url)
    ratio = rate(ours["listed"], ours[TIMED]) / rate(bare["keys"], bare["seconds"])
    ctx.log(f"  bare {bare['seconds']:.1f}s, pipeline {ours[TIMED]:.1f}s: {ratio:.2f}x")
    return {"page_latency_s": PAGE_LATENCY, "ratio": ratio, "bare": bare, "ours": ours}


def _reader_alone(url: str) -> dict[str, Any]:
    """Our S3 reader without the pipeline's work, best of RUNS: how much of the pipeline's time is listing."""
    runs = [run_worker("list_store", {"source": f"s3://{BUCKET}/"}, env=aws_worker_env(url)) for _ in range(RUNS)]
    return min(runs, key=lambda r: r["seconds"])


def run(ctx: Context) -> list[Figure]:
    moto = ctx.moto()
    bare = ctx.bare_listing()
    reader = _reader_alone(moto.url)
    ctx.log(f"our S3 reader alone (list_pages, one lister): {reader['keys']:,} keys in {reader['seconds']:.2f}s")
    ctx.log("manifest pipeline over moto (real `manifest` path, boto3 listing inside S3Store), best of 3")
    runs = [_pipeline(moto.url) for _ in range(RUNS)]  # as many as the bare obstore listing gets
    ours = min(runs, key=lambda r: r[TIMED])
    seconds = ", ".join(f"{r[TIMED]:.2f}" for r in runs)
    ctx.log(f"pipeline: {ours['listed']:,} objects in {ours[TIMED]:.2f}s + {ours['preflight_seconds']:.2f}s "
            f"pre-flight (runs: {seconds})")  # fmt: skip
    ours_rate = rate(ours["listed"], ours[TIMED])
    with_preflight = rate(ours["listed"], ours["seconds"]) / rate(bare["keys"], bare["fastest_seconds"])
    base_rate = rate(bare["keys"], bare["fastest_seconds"])
    boto3_rate = rate(bare["boto3"]["keys"], bare["boto3"]["seconds"])
    ratio = ours_rate / base_rate
    latency = _with_latency(ctx, moto.url)
    detail = f"ours {ours_rate:,.0f}/s vs bare {bare['fastest']} {base_rate:,.0f}/s (bare boto3 {boto3_rate:,.0f}/s)"
    detail += f"; {with_preflight:.2f}x with our {ours['preflight_seconds']:.2f}s pre-flight counted"
    reader_rate = rate(reader["keys"], reader["seconds"])
    detail += f"; our S3 reader alone {reader_rate:,.0f}/s ({reader_rate / base_rate:.2f}x bare {bare['fastest']})"
    if "ratio" in latency:
        detail += f"; at {PAGE_LATENCY:g}s/page {latency['ratio']:.2f}x"
    fidelity = bare.get("key_fidelity")
    if fidelity:
        detail += (
            f"; obstore lists {fidelity['total'] - fidelity['obstore_exact']} of {fidelity['total']} valid odd keys "
            f"wrong (boto3 {fidelity['total'] - fidelity['boto3_exact']})"
        )
    extra = {
        "detail": detail,
        "objects": ours["listed"],
        "baseline_client": bare["fastest"],
        "baseline_objects_per_s": base_rate,
        "ours_objects_per_s": ours_rate,
        "vs_bare_boto3": ours_rate / boto3_rate,
        "ours": ours,
        "ours_runs_s": [r[TIMED] for r in runs],
        "ratio_with_preflight": with_preflight,
        "reader_alone": {**reader, "vs_baseline": reader_rate / base_rate},
        "bare": {k: v for k, v in bare.items() if k in BARE_FIELDS},
        "s3_like_latency": latency,
        "server": "moto 5.2.5 " + ("(stock listing)" if ctx.stock_moto else "(bench/moto_seeded.py fast listing)"),
    }
    figures = [
        Figure(
            "listing_vs_bare",
            f"listing + classify + manifest vs bare {bare['fastest']} listing (moto, {ours['listed']:,})",
            ratio,
            "x",
            f">= {TARGET}x",
            ratio >= TARGET,
            extra,
        )
    ]
    if "ratio" in latency:
        bare_l, ours_l = latency["bare"], latency["ours"]
        figures.append(
            Figure(
                "listing_vs_bare_s3_latency",
                f"the same with {PAGE_LATENCY:g}s per page (S3-like), vs bare {bare_l['client']}",
                latency["ratio"],
                "x",
                f">= {TARGET}x",
                latency["ratio"] >= TARGET,
                {
                    "detail": f"ours {ours_l['listed']:,} in {ours_l[TIMED]:.1f}s vs bare {bare_l['client']} "
                    f"{bare_l['keys']:,} in {bare_l['seconds']:.1f}s",
                    **latency,
                },
            )
        )
    return figures
