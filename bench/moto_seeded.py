"""A moto S3 server in its own process, its bucket filled straight into moto's in-memory backend.

Seeding 100k objects over HTTP runs at ~200 puts/s; writing FakeKeys directly is ~50x faster.
Clients then talk to it over HTTP from other processes, as they would to S3.

Stock moto rescans and re-sorts the whole bucket for every ListObjectsV2 page and serialises
each key through dateutil: about 1.2 s per 1,000-key page at 100k keys (~1k objects/s), and
0.1-0.3 s for a delimiter listing of the root, so every listing client measures moto, not
itself. Unless ``--stock`` is given, ListObjectsV2 requests (plain, and with a delimiter) are
answered from a sorted snapshot of the bucket with the XML moto writes; everything else (HEAD,
GET, other listings, writes) is moto's.
``GET /_bench/latency?seconds=S`` adds S seconds to each such page from then on, like the
~0.1-0.3 s a real S3 ListObjectsV2 page takes.

Prints ``ready http://127.0.0.1:PORT seeded=N seconds=S`` and serves until SIGTERM.

    python bench/moto_seeded.py --bucket bench --objects 100000 [--sidecar-every 10] [--stock]
"""

from __future__ import annotations

import argparse
import base64
import bisect
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from urllib.parse import parse_qs, quote
from xml.sax.saxutils import escape

ACCOUNT = "123456789012"  # moto's default account
PARTITION = "aws"
REGION = "us-east-1"
MAX_KEYS = 1000

StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


def layout(objects: int, frames_per_camera: int = 1000, cameras_per_site: int = 10) -> Iterator[str]:
    """`site{s}/cam{c}/frame_{i:07d}.jpg` keys in listing order, `frames_per_camera` per folder."""
    n = 0
    site = 0
    while True:
        for cam in range(cameras_per_site):
            for frame in range(frames_per_camera):
                if n >= objects:
                    return
                yield f"site{site:03d}/cam{cam:02d}/frame_{frame:07d}.jpg"
                n += 1
        site += 1


def _backend() -> Any:
    from moto.s3.models import s3_backends

    return s3_backends[ACCOUNT][PARTITION]


def seed(bucket: str, objects: int, sidecar_every: int = 0) -> int:
    """Create the bucket and put `objects` keys (plus sidecars) into the backend; returns keys written."""
    backend = _backend()
    backend.create_bucket(bucket, REGION)
    body = b"\xff\xd8\xff\xe0 bench jpeg"
    written = 0
    for i, key in enumerate(layout(objects)):
        backend.put_object(bucket, key, body, disable_notification=True)
        written += 1
        if sidecar_every and i % sidecar_every == 0:
            meta = json.dumps({"operator": f"op{i % 7}", "score": i % 100}).encode()
            backend.put_object(bucket, key + ".metadata.json", meta, disable_notification=True)
            written += 1
    return written


class _Snapshot:
    """Sorted key names and their pre-rendered <Contents> elements (plain and url-encoded)."""

    def __init__(self, bucket: Any) -> None:
        self.count = len(bucket.keys)
        self.names = sorted(bucket.keys.keys())
        self.plain: list[str] = []
        self.url: list[str] = []
        for name in self.names:
            key = bucket.keys[name]
            tail = (
                f"</Key><LastModified>{key.last_modified_ISO8601}</LastModified><ETag>{escape(key.etag)}</ETag>"
                f"<Size>{key.size}</Size><StorageClass>{key.storage_class}</StorageClass></Contents>"
            )
            self.plain.append(f"<Contents><Key>{escape(name)}{tail}")
            self.url.append(f"<Contents><Key>{escape(quote(name))}{tail}")


class FastList:
    """WSGI middleware: plain ListObjectsV2 from a snapshot, rebuilt when the key count changes."""

    def __init__(self, app: WsgiApp) -> None:
        self.app = app
        self.lock = threading.Lock()
        self.snapshots: dict[str, _Snapshot] = {}
        self.served = 0
        self.latency = 0.0

    def snapshot(self, name: str) -> _Snapshot | None:
        backend = _backend()
        bucket = backend.buckets.get(name)
        if bucket is None:
            return None
        with self.lock:
            snap = self.snapshots.get(name)
            if snap is None or snap.count != len(bucket.keys):
                snap = self.snapshots[name] = _Snapshot(bucket)
            return snap

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        query = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
        name = path.strip("/")
        if path == "/_bench/latency":
            self.latency = float(query.get("seconds", ["0"])[0])
            body = f'{{"latency": {self.latency}}}'.encode()
            start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
            return [body]
        if environ.get("REQUEST_METHOD") != "GET" or query.get("list-type") != ["2"] or not name or "/" in name:
            return self.app(environ, start_response)
        snap = self.snapshot(name)
        if snap is None:
            return self.app(environ, start_response)
        body = self.render(name, snap, query)
        self.served += 1
        if self.latency:
            time.sleep(self.latency)
        start_response("200 OK", [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))])
        return [body]

    @staticmethod
    def render(bucket: str, snap: _Snapshot, query: dict[str, list[str]]) -> bytes:
        prefix = query.get("prefix", [""])[0]
        delimiter = query.get("delimiter", [""])[0]
        max_keys = min(int(query.get("max-keys", [str(MAX_KEYS)])[0]), MAX_KEYS)
        token = query.get("continuation-token", [""])[0]
        start_after = query.get("start-after", [""])[0]
        encoding = query.get("encoding-type", [""])[0]
        lo = bisect.bisect_left(snap.names, prefix)
        after = base64.urlsafe_b64decode(token.encode()).decode() if token else start_after
        if after:
            lo = max(lo, bisect.bisect_right(snap.names, after))
        hi = bisect.bisect_left(snap.names, prefix + "\U0010ffff") if prefix else len(snap.names)
        fragments = snap.url if encoding == "url" else snap.plain
        if delimiter:
            contents, folders, last, truncated = _level(snap, lo, hi, prefix, delimiter, max_keys, after)
            rendered = [fragments[i] for i in contents]
            count = len(contents) + len(folders)
        else:
            end = min(hi, lo + max_keys)
            truncated = end < hi
            rendered, folders, count = fragments[lo:end], [], end - lo
            last = snap.names[end - 1] if end > lo else ""

        def text(value: str) -> str:
            return escape(quote(value) if encoding == "url" else value)

        parts = [
            '<?xml version="1.0" encoding="utf-8"?>\n'
            '<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
            f"<IsTruncated>{'true' if truncated else 'false'}</IsTruncated>",
            *rendered,
            f"<Name>{escape(bucket)}</Name>",
            f"<Prefix>{text(prefix)}</Prefix>" if prefix else "<Prefix/>",
            f"<Delimiter>{escape(delimiter)}</Delimiter>" if delimiter else "",
            f"<MaxKeys>{max_keys}</MaxKeys>",
            *(f"<CommonPrefixes><Prefix>{text(folder)}</Prefix></CommonPrefixes>" for folder in folders),
            "<EncodingType>url</EncodingType>" if encoding == "url" else "",
            f"<KeyCount>{count}</KeyCount>",
        ]
        if truncated:
            next_token = base64.urlsafe_b64encode(last.encode()).decode()
            parts.append(f"<NextContinuationToken>{next_token}</NextContinuationToken>")
        if start_after and not token:
            parts.append(f"<StartAfter>{escape(start_after)}</StartAfter>")
        parts.append("</ListBucketResult>")
        return "".join(parts).encode()


def _level(
    snap: _Snapshot, lo: int, hi: int, prefix: str, delimiter: str, max_keys: int, after: str
) -> tuple[list[int], list[str], str, bool]:
    """One delimiter level from the snapshot: (indexes of keys, common prefixes, last name, truncated).

    Keys and prefixes count alike against `max_keys`, as S3 counts them; the keys under a common
    prefix are skipped with a bisection, so the root level of a big bucket costs a few steps per
    folder. A continuation that falls inside a folder already returned resumes after that folder.
    """
    names = snap.names
    contents: list[int] = []
    folders: list[str] = []
    last = ""
    i = lo
    while i < hi:
        name = names[i]
        cut = name.find(delimiter, len(prefix))
        if cut < 0:
            if len(contents) + len(folders) == max_keys:
                return contents, folders, last, True
            contents.append(i)
            last = name
            i += 1
            continue
        folder = name[: cut + len(delimiter)]
        i = bisect.bisect_left(names, folder + "\U0010ffff", i, hi)
        if after and folder <= after:  # resumed inside (or right after) this folder: already returned
            continue
        if len(contents) + len(folders) == max_keys:
            return contents, folders, last, True
        folders.append(folder)
        last = folder
    return contents, folders, last, False


def serve(port: int, fast: bool, warm: list[str]) -> tuple[Any, str, FastList | None]:
    """Start moto's WSGI app (wrapped in FastList unless `fast` is False) on a background thread."""
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import make_server

    app: Any = DomainDispatcherApplication(create_backend_app)
    fast_list = FastList(app) if fast else None
    if fast_list is not None:
        for bucket in warm:
            fast_list.snapshot(bucket)
    server = make_server("127.0.0.1", port, fast_list or app, True, request_handler=MotoRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    host, real_port = server.server_address[:2]
    return server, f"http://{host}:{real_port}", fast_list


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--bucket", default="bench")
    parser.add_argument("--objects", type=int, default=100_000)
    parser.add_argument("--sidecar-every", type=int, default=0, help="a KEY.metadata.json beside every Nth object")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--stock", action="store_true", help="serve every listing through moto itself (slow)")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    written = seed(args.bucket, args.objects, args.sidecar_every)
    server, url, _ = serve(args.port, not args.stock, [args.bucket])
    seconds = time.perf_counter() - started
    sys.stdout.write(f"ready {url} seeded={written} seconds={seconds:.3f}\n")
    sys.stdout.flush()
    # Nothing to keep: exit at once (tearing down 100k FakeKeys one by one takes seconds).
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
