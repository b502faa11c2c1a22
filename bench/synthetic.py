"""A zero-I/O object store for pushing the pipeline at CPU speed, and a hook to run it through the real code.

`SyntheticStore` answers the `ObjectStore` protocol from a generator: keys like
`site007/cam03/frame_0000042.jpg` in listing order, optionally a `KEY.metadata.json` sidecar beside
every Nth object. `synthetic_sources()` makes `open_source("synthetic://N")` return one, so the real
`manifest` command path (`tasks.manifest_only.write_manifests`) runs unchanged on it.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock
from urllib.parse import parse_qs, urlparse

from encord_ingest.models import ObjectRef
from integrations.storage import Source
from integrations.storage.base import ObjectInfo, paged

SCHEME = "synthetic"
MODIFIED = "2026-01-01T00:00:00+00:00"
ETAG = "0123456789abcdef0123456789abcdef"


PER_SITE = 10_000  # frames_per_camera * cameras_per_site below


def synthetic_keys(objects: int, start: int = 0, stop: int | None = None) -> Iterator[tuple[int, str]]:
    """(index, data key) in listing order for indexes [start, stop) (the layout bench/moto_seeded.py seeds)."""
    for n in range(start, min(objects, objects if stop is None else stop)):
        site, rest = divmod(n, PER_SITE)
        cam, frame = divmod(rest, 1000)
        yield n, f"site{site:03d}/cam{cam:02d}/frame_{frame:07d}.jpg"


def _site_range(objects: int, prefix: str) -> tuple[int, int]:
    """Indexes whose keys can start with `prefix`: one site's for `siteNNN/...`, else all of them."""
    if prefix.startswith("site") and prefix[4:7].isdigit() and prefix[7:8] == "/":
        site = int(prefix[4:7])
        return site * PER_SITE, (site + 1) * PER_SITE
    return 0, objects


class SyntheticStore:
    """`objects` data keys plus a sidecar beside every `sidecar_every`-th (0: none), generated on demand."""

    scheme = "s3"

    def __init__(self, objects: int, *, sidecar_every: int = 0, bucket: str = "synthetic") -> None:
        self.objects = objects
        self.sidecar_every = sidecar_every
        self.bucket = bucket

    def refs(self, prefix: str = "") -> Iterator[ObjectRef]:
        every = self.sidecar_every
        for i, key in synthetic_keys(self.objects, *_site_range(self.objects, prefix)):
            if not key.startswith(prefix):
                continue
            yield ObjectRef(key, 1024 + i % 4096, ETAG, "", MODIFIED)
            if every and i % every == 0:
                yield ObjectRef(key + ".metadata.json", 40, ETAG, "", MODIFIED)

    def list_pages(self, prefix: str, *, page_size: int = 1000) -> Iterator[list[ObjectRef]]:
        yield from paged(self.refs(prefix), page_size)

    def list_level(self, prefix: str) -> Iterator[tuple[list[str], list[ObjectRef]]]:
        if prefix:  # a scan; the pipeline's fan-out asks for the root level only
            children: dict[str, None] = {}
            direct = []
            for ref in self.refs(prefix):
                head, sep, _ = ref.key[len(prefix) :].partition("/")
                if sep:
                    children.setdefault(prefix + head + "/", None)
                else:
                    direct.append(ref)
            yield list(children), direct
            return
        sites = (self.objects + PER_SITE - 1) // PER_SITE
        yield [f"site{site:03d}/" for site in range(sites)], []

    def read_bytes(self, key: str, *, max_bytes: int | None = None) -> bytes:
        n = int(key.rsplit("_", 1)[1].split(".", 1)[0])
        return json.dumps({"operator": f"op{n % 7}", "score": n % 100}).encode()

    def read_range(self, key: str, start: int, length: int) -> bytes:
        return b""

    def head(self, key: str) -> ObjectInfo:
        return ObjectInfo("image/jpeg", {})

    def download_to(self, key: str, path: Path) -> None:
        raise FileNotFoundError(key)

    def url_for(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def check_access(self, prefix: str) -> None:
        return None


def synthetic_url(objects: int, *, sidecar_every: int = 0) -> str:
    return f"{SCHEME}://bench/?objects={objects}&sidecar_every={sidecar_every}"


def _open(real: Callable[..., Source]) -> Callable[..., Source]:
    def open_source(url: str, **kwargs: Any) -> Source:
        if not url.startswith(f"{SCHEME}://"):
            return real(url, **kwargs)
        query = {k: int(v[0]) for k, v in parse_qs(urlparse(url).query).items()}
        store = SyntheticStore(query.get("objects", 0), sidecar_every=query.get("sidecar_every", 0))
        return Source(url=url, store=store, prefix="")

    return open_source


@contextlib.contextmanager
def synthetic_sources() -> Iterator[None]:
    """Within the block, the pipeline opens `synthetic://` source URLs as SyntheticStores."""
    import tasks.run

    with mock.patch.object(tasks.run, "open_source", _open(tasks.run.open_source)):
        yield
