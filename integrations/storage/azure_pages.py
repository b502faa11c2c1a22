"""List Blobs pages without the Azure SDK's generic XML deserializer.

azure-storage-blob turns every `<Blob>` of a listing page into generated model objects, one
attribute-map lookup per XML element, and then into BlobProperties: about 230 µs of CPU per blob
(measured against Azurite), so one core lists at most ~4,000 blobs/s, 50x the cost of the S3
path. Here the same List Blobs request (built by the SDK's own request builder, sent through the
container client's own pipeline: its credential, retries, API version and transport) comes back
raw, and the five fields an ObjectRef needs are read from each `<Blob>` with regexes. A page
this reader does not vouch for - a blob name Azure had to encode, a blob without the expected
fields, a 403 or 404 (whose error the SDK words best) - makes the caller go on through the SDK
from that marker. A transport fault or a 5xx the pipeline has already retried is raised as the
SDK would raise it, rather than retried all over again.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable
from typing import Any, NamedTuple

from azure.core.exceptions import AzureError, HttpResponseError

from encord_ingest.models import ObjectRef
from integrations.storage.xml_text import xml_text

_BLOB = re.compile(r"<Blob>(.*?)</Blob>", re.S)
# `<Name Encoded="true">` (a name with characters XML cannot carry) does not match: the SDK decodes it
_FIELD = re.compile(r"<(Name|VersionId|Last-Modified|Etag|Content-Length|Content-MD5)>([^<]*)</\1>")
_TAG = re.compile(r"<Tag><Key>([^<]*)</Key><Value(?:\s*/>|>([^<]*)</Value>)</Tag>")
_PREFIX = re.compile(r"<BlobPrefix><Name>([^<]*)</Name></BlobPrefix>")
_NEXT = re.compile(r"<NextMarker>([^<]*)</NextMarker>|<NextMarker\s*/>")
_RFC1123 = re.compile(r"[A-Z][a-z]{2}, (\d{2}) ([A-Z][a-z]{2}) (\d{4}) (\d{2}:\d{2}:\d{2}) GMT")
_MONTH_NAMES = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_MONTHS = {m: f"{i:02d}" for i, m in enumerate(_MONTH_NAMES, 1)}
_NEEDED = ("Name", "Content-Length", "Etag", "Last-Modified")

_RETRIED = {408, 429}  # with 5xx: statuses azure-core's retry policy has already retried
TagsDigest = Callable[[dict[str, str]], str]


class Unreadable(ValueError):
    """The page is not one this reader vouches for: the SDK reads it instead."""


def iso_time(rfc1123: str) -> str:
    """`Thu, 03 Dec 2026 16:29:14 GMT` as the SDK's datetime gives it in isoformat (UTC, seconds)."""
    m = _RFC1123.fullmatch(rfc1123)
    if m is None or m.group(2) not in _MONTHS:
        raise Unreadable(f"unexpected Last-Modified {rfc1123!r}")
    day, month, year, clock = m.groups()
    return f"{year}-{_MONTHS[month]}-{day}T{clock}+00:00"


def _content_id(md5: str) -> str:
    """`md5:` + the Content-MD5 in canonical base64, as the SDK's bytes re-encoded give it."""
    return f"md5:{base64.b64encode(base64.b64decode(md5, validate=True)).decode()}" if md5 else ""


class Page(NamedTuple):
    refs: list[ObjectRef]
    marker: str  # '' on the last page
    prefixes: list[str]  # BlobPrefix names (a listing with a delimiter)


def parse_page(body: str, tags_digest: TagsDigest, *, delimited: bool = False) -> Page:
    """The blobs (and, with a delimiter, the prefixes) of one List Blobs page, in order."""
    if "<EnumerationResults" not in body:
        raise Unreadable("not a List Blobs page")
    prefixes = [xml_text(name) for name in _PREFIX.findall(body)]
    if len(prefixes) != body.count("<BlobPrefix>") or (prefixes and not delimited):
        raise Unreadable("unexpected <BlobPrefix> elements")
    times: dict[str, str] = {}  # a page's blobs often share a modification second
    refs: list[ObjectRef] = []
    blocks = _BLOB.findall(body)
    if body.count("<Blob>") != len(blocks):
        raise Unreadable("unbalanced <Blob> elements")
    for block in blocks:
        fields: dict[str, str] = {}
        for name, value in _FIELD.findall(block):
            fields.setdefault(name, value)  # the blob's own element comes first
        try:
            name, size, etag, modified = map(fields.__getitem__, _NEEDED)
        except KeyError as missing:
            raise Unreadable(f"a blob without {missing}") from None
        when = times.get(modified)
        if when is None:
            when = times[modified] = iso_time(modified)
        tags = ""
        if "<Tags>" in block:
            found = _TAG.findall(block)
            if len(found) != block.count("<Tag>"):
                raise Unreadable("a <Tag> not in the expected form")
            pairs = {xml_text(k): xml_text(v) for k, v in found}
            tags = tags_digest(pairs) if pairs else ""
        refs.append(
            ObjectRef(
                key=xml_text(name),
                size=int(size),
                etag=xml_text(etag).strip('"'),
                version=xml_text(fields.get("VersionId", "")),
                last_modified=when,
                content_id=_content_id(fields.get("Content-MD5", "")),
                tags=tags,
            )
        )
    marker = _NEXT.search(body[body.rfind("</Blobs>") :] if blocks or prefixes else body)
    if marker is None:
        raise Unreadable("no NextMarker element")
    return Page(refs, xml_text(marker.group(1) or ""), prefixes)


class RawPages:
    """Flat listing pages of one container client, read here while they come back plain."""

    def __init__(self, container: Any, tags_digest: TagsDigest) -> None:
        from azure.storage.blob._generated.operations import _container_operations as operations

        self.generated = container._client  # the SDK's generated client, over the container's pipeline
        self.flat = operations.build_list_blob_flat_segment_request
        self.hierarchy = operations.build_list_blob_hierarchy_segment_request
        self.tags_digest = tags_digest
        self.lean = 0  # pages read here
        self.declined = 0  # pages handed to the SDK

    def page(
        self,
        prefix: str,
        marker: str | None,
        page_size: int | None,
        include: list[str] | None,
        delimiter: str | None = None,
    ) -> Page | None:
        """The page at `marker` (flat, or one level below `prefix` with a delimiter), or None: go
        on through the SDK from that marker."""
        config = self.generated._config
        args: dict[str, Any] = {"url": config.url, "version": config.version, "prefix": prefix or None}
        args.update(marker=marker or None, maxresults=page_size, include=include)
        request = self.flat(**args) if delimiter is None else self.hierarchy(delimiter=delimiter, **args)
        try:
            # streamed: azure-core would otherwise parse every XML body into an ElementTree first
            response = self.generated._send_request(request, stream=True)
            try:
                status, body = response.status_code, response.read()
            finally:
                response.close()
        except AzureError:
            raise  # the pipeline has retried it already; the SDK would only retry it all again
        except Exception:
            return self._decline()
        if status in _RETRIED or status >= 500:  # still failing after the pipeline's retries
            raise HttpResponseError(response=response)
        if status != 200:  # 403, 404, ...: the SDK's own error, with its code
            return self._decline()
        try:
            parsed = parse_page(body.decode("utf-8-sig"), self.tags_digest, delimited=delimiter is not None)
        except Exception:  # Unreadable, or anything odd in reading it: the SDK reads this page instead
            return self._decline()
        self.lean += 1
        return parsed

    def _decline(self) -> None:
        self.declined += 1
        return None


def raw_pages(container: Any, tags_digest: TagsDigest) -> RawPages | None:
    """The lean reader for this client, or None where the SDK's internals are not as expected."""
    try:
        raw = RawPages(container, tags_digest)
        raw.generated._config.url, raw.generated._config.version  # noqa: B018 - probed, not used
        raw.generated._send_request  # noqa: B018
    except (ImportError, AttributeError):
        return None
    return raw
