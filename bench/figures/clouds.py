"""Listing CPU on GCS and Azure: our store's `list_pages` against the SDK's own listing, same bucket.

The official clients cost tens to hundreds of ms of CPU per 1,000 objects listed (research notes:
azure-storage-blob about 460 ms, google-cloud-storage 21-27 ms), which would cap a whole run at a
few thousand objects/s per core. Both emulators start here, are seeded with the same layout the
moto bucket has, and are stopped at the end.
"""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bench.common import Figure, run_worker
from bench.context import Context
from bench.moto_seeded import layout
from integrations import servers

FIGURES = ("cloud_listing_cpu",)
UPLOADERS = 16


def _seed_gcs(url: str, bucket: str, keys: list[str]) -> None:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    client = storage.Client(project="bench", credentials=AnonymousCredentials(), client_options={"api_endpoint": url})
    target = client.create_bucket(bucket)
    with ThreadPoolExecutor(UPLOADERS) as pool:
        list(pool.map(lambda key: target.blob(key).upload_from_string(b"x" * 15), keys))


def _seed_azure(env: dict[str, str], container: str, keys: list[str]) -> None:
    from azure.storage.blob import ContainerClient

    client = ContainerClient.from_connection_string(env["AZURE_STORAGE_CONNECTION_STRING"], container)
    client.create_container()
    with ThreadPoolExecutor(UPLOADERS) as pool:
        list(pool.map(lambda key: client.upload_blob(key, b"x" * 15), keys))


def _per_1k(run: dict[str, Any]) -> float:
    return 1e6 * run["cpu_seconds"] / max(run["keys"], 1)  # ms per 1,000 objects


def _measure(ctx: Context, cloud: str, keys: list[str]) -> dict[str, Any]:
    bucket = f"bench-{uuid.uuid4().hex[:8]}"
    starter = servers.start_fake_gcs if cloud == "gcs" else servers.start_azurite
    proc = starter()
    ctx.stack.callback(proc.stop)
    env = servers.gcs_env(proc.url) if cloud == "gcs" else servers.azure_env(proc.url)
    ctx.log(f"{cloud}: seeding {len(keys):,} objects")
    if cloud == "gcs":
        _seed_gcs(proc.url, bucket, keys)
    else:
        _seed_azure(env, bucket, keys)
    source = f"gs://{bucket}/" if cloud == "gcs" else f"az://{bucket}/"
    out: dict[str, Any] = run_worker("list_cloud", {"source": source}, env=env)
    out["ours_ms_per_1k"], out["sdk_ms_per_1k"] = _per_1k(out["ours"]), _per_1k(out["sdk"])
    ctx.log(f"  ours {out['ours_ms_per_1k']:.1f} ms CPU per 1,000 objects, the SDK's {out['sdk_ms_per_1k']:.1f} ms")
    proc.stop()
    return out


def run(ctx: Context) -> list[Figure]:
    keys = list(layout(ctx.sizes.cloud_objects, frames_per_camera=100))
    runs = {cloud: _measure(ctx, cloud, keys) for cloud in ("gcs", "azure")}
    if any(r["ours"]["keys"] != len(keys) or r["sdk"]["keys"] != len(keys) for r in runs.values()):
        raise RuntimeError(f"a listing missed objects: {runs}")
    names = {"gcs": "GCS (fake-gcs-server)", "azure": "Azure (Azurite)"}
    detail = "; ".join(
        f"{names[c]} {r['ours_ms_per_1k']:.0f} ms vs the SDK's {r['sdk_ms_per_1k']:.0f} ms "
        f"({r['sdk_ms_per_1k'] / r['ours_ms_per_1k']:.1f}x less)"
        for c, r in runs.items()
    )
    worst = max(r["ours_ms_per_1k"] for r in runs.values())
    return [
        Figure(
            "cloud_listing_cpu",
            f"listing CPU per 1,000 objects on GCS and Azure vs their SDKs ({len(keys):,} objects each)",
            worst,
            "ms CPU / 1k objects (worst cloud)",
            "report",
            None,
            {"detail": detail, "objects": len(keys), **runs},
        )
    ]
