"""The dashboard a deployed run leaves: the flow-run page, its artifacts, and how it renders.

Needs Debian's `chromium` (CI: `apt-get install -y chromium`). With DASHBOARD_DIR=docs the
screenshots are also copied there (that is how docs/dashboard.png is made). The UI Prefect opens
by default is v2, at /v2.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import tempfile
import zlib
from pathlib import Path
from typing import Any

import requests

from tests.conftest import PrefectStack

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,1000",
    "--virtual-time-budget=15000",
]


def chromium(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    assert exe, "headless Chromium is required: apt-get install -y chromium"
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        return subprocess.run(
            [exe, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True, text=True, timeout=timeout
        )


def png_size_and_colours(path: Path) -> tuple[int, int, int]:
    """Width, height and the number of distinct pixel rows (a blank page has one or two)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, width, height, channels = 8, b"", 0, 0, 4
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        chunk = data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, colour = struct.unpack(">IIBB", chunk[:10])
            assert depth == 8
            channels = {2: 3, 6: 4, 0: 1, 4: 2}[colour]
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    raw = zlib.decompress(idat)
    stride = width * channels + 1
    rows = {raw[i * stride + 1 : (i + 1) * stride] for i in range(height)}
    return width, height, len(rows)


def by_key(artifacts: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {a["key"]: a for a in artifacts if a.get("key")}


def test_flow_run_artifacts_exist_through_the_api(prefect_stack: PrefectStack, scheduled_run: dict[str, Any]) -> None:
    arts = by_key(prefect_stack.artifacts(scheduled_run["id"]))
    assert arts["ingest-progress"]["type"] == "progress" and float(arts["ingest-progress"]["data"]) == 100
    table = arts["ingest-batches"]
    assert table["type"] == "table"
    rows = json.loads(table["data"])
    assert [r["batch"] for r in rows] == [1]
    assert {"items", "registered", "failed", "seconds"} <= set(rows[0]) and rows[0]["registered"] == 3
    summary = arts["ingest-summary"]
    assert summary["type"] == "markdown"
    assert f"Ingest of `s3://{prefect_stack.bucket}/data/`" in summary["data"]
    assert "| listed | registered |" in summary["data"] and "| 3 | 3 |" in summary["data"]
    link = arts["encord-folder"]
    assert link["type"] == "markdown"  # Prefect stores link artifacts as markdown links
    assert f"]({prefect_stack.env['ENCORD_DOMAIN']}/_emulator/state?folder=" in link["data"]
    assert f"Encord folder {prefect_stack.folder}" in link["data"]


def screenshot(url: str, path: Path) -> None:
    done = chromium(f"--screenshot={path}", url)
    assert done.returncode == 0 and path.exists(), done.stderr[-2000:]
    width, height, rows = png_size_and_colours(path)
    assert (width, height) == (1400, 1000)
    assert rows > 100, f"{url} rendered (nearly) blank"
    target = os.environ.get("DASHBOARD_DIR")
    if target:
        shutil.copyfile(path, Path(target) / path.name)


def test_flow_run_page_is_served_and_renders_the_run_with_artifacts(
    prefect_stack: PrefectStack, scheduled_run: dict[str, Any], tmp_path: Path
) -> None:
    server = prefect_stack.server.url
    settings = requests.get(f"{server}/ui-settings", timeout=30).json()
    assert settings["api_url"] == f"{server}/api", "the browser UI must call this server's port"
    page = f"{server}/v2/runs/flow-run/{scheduled_run['id']}?tab=Artifacts"
    res = requests.get(page, headers={"Accept": "text/html"}, timeout=30)
    assert res.status_code == 200 and res.headers["content-type"].startswith("text/html")
    assert "<script" in res.text

    dom = chromium("--dump-dom", page)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert scheduled_run["name"] in dom.stdout, "the page rendered the run (not a blank shell)"
    for key in ("ingest-summary", "ingest-batches", "ingest-progress", "encord-folder"):
        assert key in dom.stdout, f"artifact card {key} not rendered"
    screenshot(page, tmp_path / "dashboard.png")

    summary = by_key(prefect_stack.artifacts(scheduled_run["id"]))["ingest-summary"]
    page = f"{server}/v2/artifacts/artifact/{summary['id']}"
    dom = chromium("--dump-dom", page)
    assert f"s3://{prefect_stack.bucket}/data/" in dom.stdout and "registered" in dom.stdout
    screenshot(page, tmp_path / "dashboard-summary.png")
