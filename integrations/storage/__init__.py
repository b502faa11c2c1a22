"""Open a SOURCE URL as (store, prefix): s3://, gs://, az://, file:// or a plain local path."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from encord_ingest.errors import UsageError
from integrations.storage.base import ObjectInfo, ObjectStore

__all__ = ["ObjectInfo", "ObjectStore", "Source", "open_source", "parse_source"]


@dataclass(slots=True, frozen=True)
class SourceSpec:
    scheme: str
    bucket: str
    prefix: str
    account: str = ""


@dataclass(slots=True)
class Source:
    """An opened source: listing starts at `prefix`; relative keys are measured from it."""

    url: str
    store: ObjectStore
    prefix: str
    scope: str = ""  # a shard of the source: its own ledger id (lease, rows, runs), e.g. "#prefix:a/"

    @property
    def id(self) -> str:
        """The source as the ledger keys it: scheme://bucket/prefix (+ shard scope), however the user spelled it."""
        return self.store.url_for(self.prefix) + self.scope

    def relative(self, key: str) -> str:
        return key[len(self.prefix) :] if key.startswith(self.prefix) else key


def parse_source(url: str, *, account: str = "") -> SourceSpec:
    """Validate the URL's shape without touching the network."""
    parsed = urlparse(url)
    scheme = parsed.scheme.lower()
    if scheme in ("", "file") or (len(scheme) == 1 and url[1:3] == ":\\"):
        path = Path(unquote(parsed.path) if scheme == "file" else url).expanduser()
        return SourceSpec("file", str(path.resolve()), "")
    if scheme not in ("s3", "gs", "az"):
        raise UsageError(f"unsupported source {url!r}: use s3://, gs://, az://, file:// or a local path")
    bucket = parsed.netloc
    if not bucket:
        raise UsageError(f"source {url!r} names no bucket (expected {scheme}://BUCKET/PREFIX)")
    prefix = unquote(parsed.path.lstrip("/"))
    return SourceSpec(scheme, bucket, prefix, account)


def open_source(url: str, *, account: str = "") -> Source:
    """Build the store for a source URL; clients come from the standard environment."""
    spec = parse_source(url, account=account)
    store: ObjectStore
    if spec.scheme == "file":
        from integrations.storage.file import FileStore

        store = FileStore(Path(spec.bucket))
    elif spec.scheme == "s3":
        from integrations.storage.s3 import S3Store

        store = S3Store(spec.bucket)
    elif spec.scheme == "gs":
        from integrations.storage.gcs import GCSStore

        store = GCSStore(spec.bucket)
    else:
        from integrations.storage.azure import AzureStore

        store = AzureStore(spec.bucket, account=spec.account)
    return Source(url=url, store=store, prefix=spec.prefix)
