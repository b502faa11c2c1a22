"""Existence checks for object URLs in S3, GCS, Azure Blob and the local file system.

Few URLs per bucket are HEADed (concurrently); many URLs in one bucket trigger a single paginated listing of
their common prefix and a set-membership test. Nothing is cached: objects may appear between jobs.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import unquote, urlparse

_HEAD_WORKERS = 16
_LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "0.0.0.0"})


@dataclass(frozen=True)
class ObjectRef:
    """A parsed object URL: provider, container (bucket) and key; account_url only for Azure."""

    provider: str
    container: str
    key: str
    account_url: str = ""


class UnsupportedUrl(ValueError):
    """The URL is not one of s3://, gs://, Azure blob http(s):// or file://."""


class ContainerMissing(Exception):
    """The bucket / container does not exist."""


def _azure_blob_endpoint_host() -> str | None:
    conn = os.environ.get("AZURE_STORAGE_CONNECTION_STRING", "")
    for part in conn.split(";"):
        name, _, value = part.partition("=")
        if name.strip().lower() == "blobendpoint" and value:
            return urlparse(value.strip()).hostname
    return None


def parse_url(url: str) -> ObjectRef:
    """Split an object URL into provider/container/key, raising UnsupportedUrl for anything else."""
    parsed = urlparse(url)
    scheme = parsed.scheme.lower()
    if scheme in ("s3", "gs"):
        # Bucket URLs carry the raw key: '?' and '#' are key characters here, not a query or fragment.
        bucket, _, key = url.partition("://")[2].partition("/")
        if not bucket or not key:
            raise UnsupportedUrl(f"unsupported URL: {url} (no bucket or key)")
        return ObjectRef("s3" if scheme == "s3" else "gcs", bucket, key)
    if scheme == "file":
        path = unquote(parsed.path)
        if not path.startswith("/"):
            raise UnsupportedUrl(f"unsupported URL: {url} (file URLs must be absolute)")
        return ObjectRef("file", "", path)
    if scheme in ("http", "https") and parsed.hostname:
        host = parsed.hostname.lower()
        segments = parsed.path.lstrip("/")
        if host.endswith(".blob.core.windows.net"):
            container, _, blob = segments.partition("/")
            account_url = f"{scheme}://{parsed.netloc}"
        elif host in _LOCAL_HOSTS or host == _azure_blob_endpoint_host():
            account, _, rest = segments.partition("/")
            container, _, blob = rest.partition("/")
            account_url = f"{scheme}://{parsed.netloc}/{account}"
        else:
            raise UnsupportedUrl(f"unsupported URL: {url} (http(s) URLs must be Azure blob URLs)")
        if not container or not blob:
            raise UnsupportedUrl(f"unsupported URL: {url} (no container or blob name)")
        return ObjectRef("azure", unquote(container), unquote(blob), account_url)
    raise UnsupportedUrl(f"unsupported URL: {url} (expected s3://, gs://, Azure blob http(s):// or file://)")


class _Backend(Protocol):
    def head(self, key: str) -> bool: ...

    def list_prefix(self, prefix: str) -> Iterator[str]: ...


class _S3:
    def __init__(self, bucket: str) -> None:
        import boto3

        region = os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION") or "us-east-1"
        self._client: Any = boto3.client("s3", region_name=region)
        self._bucket = bucket

    def head(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self._client.head_object(Bucket=self._bucket, Key=key)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in ("404", "NoSuchKey", "NotFound"):
                return False
            if code == "NoSuchBucket":
                raise ContainerMissing(self._bucket) from exc
            raise
        return True

    def list_prefix(self, prefix: str) -> Iterator[str]:
        from botocore.exceptions import ClientError

        paginator = self._client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self._bucket, Prefix=prefix):
                for obj in page.get("Contents", []):
                    yield obj["Key"]
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "NoSuchBucket":
                raise ContainerMissing(self._bucket) from exc
            raise


class _Gcs:
    def __init__(self, bucket: str) -> None:
        from google.cloud import storage

        if os.environ.get("STORAGE_EMULATOR_HOST"):
            from google.auth.credentials import AnonymousCredentials

            project = os.environ.get("GOOGLE_CLOUD_PROJECT", "emulator")
            self._client: Any = storage.Client(project=project, credentials=AnonymousCredentials())
        else:
            self._client = storage.Client()
        self._bucket = bucket

    def head(self, key: str) -> bool:
        return bool(self._client.bucket(self._bucket).blob(key).exists())

    def list_prefix(self, prefix: str) -> Iterator[str]:
        from google.api_core.exceptions import NotFound

        try:
            for blob in self._client.list_blobs(self._bucket, prefix=prefix):
                yield blob.name
        except NotFound as exc:
            raise ContainerMissing(self._bucket) from exc


class _Azure:
    def __init__(self, account_url: str, container: str) -> None:
        from azure.storage.blob import BlobServiceClient

        conn = os.environ.get("AZURE_STORAGE_CONNECTION_STRING")
        service = BlobServiceClient.from_connection_string(conn) if conn else BlobServiceClient(account_url)
        self._container: Any = service.get_container_client(container)
        self._name = container

    def head(self, key: str) -> bool:
        return bool(self._container.get_blob_client(key).exists())

    def list_prefix(self, prefix: str) -> Iterator[str]:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            for blob in self._container.list_blobs(name_starts_with=prefix):
                yield blob.name
        except ResourceNotFoundError as exc:
            raise ContainerMissing(self._name) from exc


class _File:
    def head(self, key: str) -> bool:
        return os.path.exists(key)

    def list_prefix(self, prefix: str) -> Iterator[str]:  # pragma: no cover - files are always HEADed
        raise NotImplementedError


def _backend(ref: ObjectRef) -> _Backend:
    if ref.provider == "s3":
        return _S3(ref.container)
    if ref.provider == "gcs":
        return _Gcs(ref.container)
    if ref.provider == "azure":
        return _Azure(ref.account_url, ref.container)
    return _File()


def _common_prefix(keys: set[str]) -> str:
    """Character-wise common prefix: the lexicographic min and max bound every other key."""
    low, high = min(keys), max(keys)
    size = 0
    while size < min(len(low), len(high)) and low[size] == high[size]:
        size += 1
    return low[:size]


def _missing(url: str) -> str:
    return f"Object not found in bucket: {url}"


def _check_group(refs: dict[str, ObjectRef], head_threshold: int) -> dict[str, str | None]:
    """Check the URLs of one container; backend failures mark every URL of the group as failed."""
    first = next(iter(refs.values()))
    try:
        backend = _backend(first)
        keys = {ref.key for ref in refs.values()}
        if first.provider == "file":
            found = {k for k in keys if backend.head(k)}  # local stat calls: a thread pool only adds overhead
        elif len(keys) <= head_threshold:
            with ThreadPoolExecutor(max_workers=min(_HEAD_WORKERS, len(keys))) as pool:
                found = {k for k, ok in zip(keys, pool.map(backend.head, keys), strict=True) if ok}
        else:
            prefix = _common_prefix(keys)
            found = {k for k in backend.list_prefix(prefix) if k in keys}
    except ContainerMissing as exc:
        return {url: f"{_missing(url)} (bucket/container {exc} not found)" for url in refs}
    except Exception as exc:
        return {url: f"Could not check object {url}: {type(exc).__name__}: {exc}" for url in refs}
    return {url: None if ref.key in found else _missing(url) for url, ref in refs.items()}


def check_objects(urls: Iterable[str], head_threshold: int = 32) -> dict[str, str | None]:
    """Map each URL to None when its object exists, else to an error ("not found" / "unsupported URL")."""
    result: dict[str, str | None] = {}
    groups: dict[tuple[str, str, str], dict[str, ObjectRef]] = defaultdict(dict)
    for url in dict.fromkeys(urls):
        try:
            ref = parse_url(url)
        except UnsupportedUrl as exc:
            result[url] = str(exc)
            continue
        groups[(ref.provider, ref.account_url, ref.container)][url] = ref
    for refs in groups.values():
        result.update(_check_group(refs, head_threshold))
    return result
