"""Google Cloud Storage (and fake-gcs-server via STORAGE_EMULATOR_HOST) through google-cloud-storage."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from google.api_core import exceptions as gexc
from google.auth import exceptions as auth_exc
from requests import RequestException
from requests.adapters import HTTPAdapter

from encord_ingest.errors import AbortError, CredentialsError, SourceNotFoundError
from encord_ingest.models import ObjectRef
from integrations.storage.base import ObjectInfo, from_start

# Only what ObjectRef needs: real GCS then sends (and the client parses) a fraction of each page.
_LIST_FIELDS = "items(name,size,etag,generation,updated),prefixes,nextPageToken"
_POOL = 32  # above the default 16 I/O threads, so urllib3 never discards connections
_ERRORS = (gexc.GoogleAPIError, auth_exc.GoogleAuthError, RequestException)


# The SDK's own pattern (google.cloud._helpers._RFC3339_NANOS), matched the same way (at the start)
_RFC3339 = re.compile(r"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?Z")


def _ref(blob: Any) -> ObjectRef:
    """From the SDK's Blob: the reference `_item_ref` is held to (the listing tests, bench/worker.py)."""
    updated = blob.updated
    return ObjectRef(
        key=blob.name,
        size=int(blob.size or 0),
        etag=str(blob.etag or ""),
        version=str(blob.generation or ""),
        last_modified=updated.isoformat() if updated is not None else "",
        content_id=f"gen:{blob.generation}" if blob.generation else "",  # the ETag changes on metadata edits
    )


def updated_iso(value: str | None) -> str:
    """`Blob.updated.isoformat()` without a Blob and without the SDK's strptime (8 µs a key here):
    the same truncation of nanoseconds to microseconds, and the SDK's own error for anything else."""
    if value is None:
        return ""
    m = _RFC3339.match(value)
    if m is None:
        from google.cloud._helpers import _rfc3339_nanos_to_datetime

        return str(_rfc3339_nanos_to_datetime(value).isoformat())  # raises the SDK's ValueError
    whole, fraction = m.groups()
    micros = int(fraction.ljust(9, "0")) // 1000 if fraction else 0
    return datetime.fromisoformat(whole).replace(microsecond=micros, tzinfo=UTC).isoformat()


def _item_ref(item: dict[str, Any]) -> ObjectRef:
    """`_ref(Blob(item))` from a listing page's JSON item, without building the Blob (the SDK makes
    one per listed object, with its properties and ACL helpers: most of the listing's CPU)."""
    generation = int(item["generation"]) if item.get("generation") is not None else None
    return ObjectRef(
        key=item["name"],
        size=int(item.get("size") or 0),
        etag=str(item.get("etag") or ""),
        version=str(generation or ""),
        last_modified=updated_iso(item.get("updated")),
        content_id=f"gen:{generation}" if generation else "",
    )


def _client() -> Any:
    """storage.Client from the standard environment; with STORAGE_EMULATOR_HOST it needs no credentials."""
    from google.cloud import storage

    try:
        client = storage.Client()
    except auth_exc.DefaultCredentialsError:
        raise CredentialsError(
            "no Google credentials found: set GOOGLE_APPLICATION_CREDENTIALS or run "
            "`gcloud auth application-default login`"
        ) from None
    adapter = HTTPAdapter(pool_connections=_POOL, pool_maxsize=_POOL)
    for scheme in ("https://", "http://"):
        client._http.mount(scheme, adapter)  # the client's requests session; no public knob for its pool
    return client


class GCSStore:
    """One bucket. The client (a requests session) is shared by the worker threads."""

    scheme = "gs"

    def __init__(self, bucket: str, client: Any | None = None) -> None:
        self.bucket = bucket
        self.client = client or _client()
        self._bucket = self.client.bucket(bucket)

    def _translate(self, exc: Exception, key: str | None) -> Exception:
        """Map google errors to our hierarchy; `key` is None for bucket-level calls.

        Messages carry the bucket, the key and an HTTP status, never the service's text (it may name accounts).
        """
        if isinstance(exc, auth_exc.GoogleAuthError):
            return CredentialsError(
                f"Google credentials for bucket {self.bucket!r} could not be used ({type(exc).__name__})"
            )
        if isinstance(exc, gexc.NotFound):
            if key is not None:
                return FileNotFoundError(f"gs://{self.bucket}/{key} does not exist")
            return SourceNotFoundError(f"GCS bucket {self.bucket!r} does not exist")
        if isinstance(exc, gexc.Unauthorized | gexc.Forbidden):
            return CredentialsError(f"GCS rejected the credentials for bucket {self.bucket!r} ({exc.code})")
        if isinstance(exc, gexc.GoogleAPICallError):
            return AbortError(f"GCS error on {self.bucket!r}: {exc.code} {type(exc).__name__}")
        if isinstance(exc, gexc.GoogleAPIError | RequestException):
            return AbortError(f"GCS unreachable for bucket {self.bucket!r}: {type(exc).__name__}")
        return exc

    def list_pages(self, prefix: str, *, page_size: int = 1000) -> Iterator[list[ObjectRef]]:
        blobs = self.client.list_blobs(self.bucket, prefix=prefix or None, page_size=page_size, fields=_LIST_FIELDS)
        try:
            for page in blobs.pages:  # its raw JSON: the page makes Blobs only when iterated
                refs = list(map(_item_ref, page.raw_page.get("items", ())))
                if refs:
                    yield refs
        except _ERRORS as exc:
            raise self._translate(exc, None) from None

    def list_from(
        self, prefix: str, start: str | None, *, delimited: bool = False, page_size: int = 1000
    ) -> Iterator[tuple[list[str], list[ObjectRef]]]:
        """`list_level` (delimited) or `list_pages` from the first key (or prefix) >= `start`
        (GCS's startOffset is inclusive). Pages are yielded even when empty."""
        blobs = self.client.list_blobs(
            self.bucket, prefix=prefix or None, page_size=page_size, fields=_LIST_FIELDS,
            start_offset=start or None, delimiter="/" if delimited else None,
        )  # fmt: skip
        try:
            for page in blobs.pages:
                raw = page.raw_page
                yield from_start(list(raw.get("prefixes", ())), list(map(_item_ref, raw.get("items", ()))), start)
        except _ERRORS as exc:
            raise self._translate(exc, None) from None

    def list_level(self, prefix: str) -> Iterator[tuple[list[str], list[ObjectRef]]]:
        return self.list_from(prefix, None, delimited=True)

    def read_bytes(self, key: str, *, max_bytes: int | None = None) -> bytes:
        if max_bytes is not None:
            return self.read_range(key, 0, max_bytes)
        try:
            return bytes(self._bucket.blob(key).download_as_bytes())
        except _ERRORS as exc:
            raise self._translate(exc, key) from None

    def read_range(self, key: str, start: int, length: int) -> bytes:
        if length <= 0:
            return b""
        try:
            return bytes(self._bucket.blob(key).download_as_bytes(start=start, end=start + length - 1))
        except gexc.RequestRangeNotSatisfiable:
            return b""  # a range on an empty object is a 416, not an empty body
        except _ERRORS as exc:
            raise self._translate(exc, key) from None

    def head(self, key: str) -> ObjectInfo:
        try:
            blob = self._bucket.get_blob(key)
        except _ERRORS as exc:
            raise self._translate(exc, key) from None
        if blob is None:
            raise FileNotFoundError(f"gs://{self.bucket}/{key} does not exist")
        return ObjectInfo(content_type=blob.content_type or "", metadata=dict(blob.metadata or {}))

    def download_to(self, key: str, path: Path) -> None:
        try:
            self._bucket.blob(key).download_to_filename(str(path))
        except _ERRORS as exc:
            raise self._translate(exc, key) from None

    def url_for(self, key: str) -> str:
        return f"gs://{self.bucket}/{key}"

    def check_access(self, prefix: str) -> None:
        try:
            next(iter(self.client.list_blobs(self.bucket, prefix=prefix or None, max_results=1).pages), None)
        except _ERRORS as exc:
            raise self._translate(exc, None) from None
