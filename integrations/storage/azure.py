"""Azure Blob Storage (and Azurite via its connection string) through azure-storage-blob.

Encord is given `https://ACCOUNT.blob.core.windows.net/CONTAINER/KEY`; the account part comes from the
container client's own URL, so Azurite's path-style endpoint works the same way, and a SAS never leaks into it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from azure.core.exceptions import AzureError, ClientAuthenticationError, HttpResponseError, ResourceNotFoundError

from encord_ingest.errors import AbortError, ConfigError, CredentialsError, SourceNotFoundError
from encord_ingest.models import ObjectRef
from integrations.storage import azure_pages
from integrations.storage.base import ObjectInfo

CONNECTION_STRING_ENV = "AZURE_STORAGE_CONNECTION_STRING"
_POOL = 32  # above the default 16 I/O threads, so urllib3 never discards connections
_CONTAINER_MISSING = {"ContainerNotFound", "ContainerBeingDeleted"}
_ACCOUNT_NAME = re.compile(r"[a-z0-9]{3,24}")


def connection_string_account(conn: str) -> str:
    """AccountName from a connection string (empty when it has none, e.g. a SAS-only string)."""
    for part in conn.split(";"):
        name, _, value = part.partition("=")
        if name.strip().lower() == "accountname":
            return value.strip()
    return ""


def _transport() -> Any:
    """A requests transport whose pool fits our thread count; retries stay with the Azure pipeline."""
    import requests
    from azure.core.pipeline.transport import RequestsTransport
    from requests.adapters import HTTPAdapter
    from urllib3.util.retry import Retry

    session = requests.Session()
    adapter = HTTPAdapter(
        pool_connections=_POOL,
        pool_maxsize=_POOL,
        max_retries=Retry(total=False, redirect=False, raise_on_status=False),
    )
    for scheme in ("https://", "http://"):
        session.mount(scheme, adapter)
    return RequestsTransport(session=session, session_owner=True)


def _credential(account: str) -> Any:
    """Key or SAS from the environment, else azure-identity when it is installed (it is not a dependency)."""
    if key := os.environ.get("AZURE_STORAGE_KEY"):
        return {"account_name": account, "account_key": key}
    if sas := os.environ.get("AZURE_STORAGE_SAS_TOKEN"):
        return sas.lstrip("?")
    try:
        from azure.identity import DefaultAzureCredential  # type: ignore[import-not-found]
    except ImportError:
        raise ConfigError(
            f"no credentials for Azure storage account {account!r}: set AZURE_STORAGE_CONNECTION_STRING, "
            "or AZURE_STORAGE_KEY / AZURE_STORAGE_SAS_TOKEN, or install azure-identity"
        ) from None
    return DefaultAzureCredential()


def container_client(container: str, account: str = "") -> Any:
    """The ContainerClient for `container`: connection string first (the standard), else `--account`."""
    from azure.storage.blob import ContainerClient

    conn = os.environ.get(CONNECTION_STRING_ENV, "")
    if conn:
        named = connection_string_account(conn)
        if account and named and account != named:
            raise ConfigError(f"--account {account} does not match the account in {CONNECTION_STRING_ENV} ({named})")
        try:
            return ContainerClient.from_connection_string(conn, container, transport=_transport())
        except ValueError:
            raise ConfigError(f"{CONNECTION_STRING_ENV} is malformed") from None  # never echo it: it holds the key
    account = account or os.environ.get("AZURE_STORAGE_ACCOUNT", "")  # the az CLI's variable
    if not account:
        raise ConfigError(f"az:// sources need {CONNECTION_STRING_ENV} or --account NAME")
    if not _ACCOUNT_NAME.fullmatch(account):
        raise ConfigError(f"{account!r} is not an Azure storage account name (3-24 lowercase letters and digits)")
    return ContainerClient(
        f"https://{account}.blob.core.windows.net", container, credential=_credential(account), transport=_transport()
    )


def _ref(blob: Any) -> ObjectRef:
    """Content-MD5 (when the blob has one) names the bytes: setting metadata changes the ETag."""
    modified = blob.last_modified
    md5 = blob.content_settings.content_md5 if blob.content_settings is not None else None
    tags = getattr(blob, "tags", None)
    return ObjectRef(
        key=blob.name,
        size=int(blob.size or 0),
        etag=str(blob.etag or "").strip('"'),
        version=str(blob.version_id or ""),
        last_modified=modified.isoformat() if modified is not None else "",
        content_id=f"md5:{base64.b64encode(bytes(md5)).decode()}" if md5 else "",
        tags=_tags_digest(tags) if tags else "",
    )


def _tags_digest(tags: dict[str, str]) -> str:
    text = json.dumps(sorted(tags.items()), ensure_ascii=False)
    return "tags:" + hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


class AzureStore:
    """One container. Azure SDK clients are thread-safe, so the worker threads share this one."""

    scheme = "az"

    def __init__(self, container: str, *, account: str = "", client: Any | None = None) -> None:
        self.bucket = container
        self.container = client or container_client(container, account)
        parts = urlsplit(self.container.url)
        self._base = urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))  # no SAS query
        # Index tags in the listing, so a tag edit (which changes neither ETag nor time) is seen. Only
        # when they are a metadata source (`object`): reading them needs the SAS's "t" permission.
        self.list_tags = False
        self.raw = azure_pages.raw_pages(self.container, _tags_digest)

    def _include(self) -> list[str] | None:
        return ["tags"] if self.list_tags else None

    def _translate(self, exc: Exception, key: str | None) -> Exception:
        """Map Azure errors to our hierarchy; `key` is None for container-level calls.

        Messages carry the container, the key and Azure's error code, never the service's text or a URL
        (either may hold a SAS token).
        """
        code = str(getattr(exc, "error_code", None) or "")
        status = getattr(exc, "status_code", None)
        if isinstance(exc, ResourceNotFoundError) or status == 404:
            if key is not None and code not in _CONTAINER_MISSING:
                return FileNotFoundError(f"{self.url_for(key)} does not exist")
            return SourceNotFoundError(f"Azure container {self.bucket!r} does not exist")
        if isinstance(exc, ClientAuthenticationError) or status in (401, 403):
            return CredentialsError(
                f"Azure rejected the credentials for container {self.bucket!r} ({code or type(exc).__name__})"
            )
        if isinstance(exc, HttpResponseError):
            return AbortError(f"Azure error on {self.bucket!r}: {status} {code}".rstrip())
        if isinstance(exc, AzureError):
            return AbortError(f"Azure unreachable for container {self.bucket!r}: {type(exc).__name__}")
        return exc

    def list_pages(self, prefix: str, *, page_size: int = 1000) -> Iterator[list[ObjectRef]]:
        try:
            for _, refs in self._pages(prefix, page_size, None):
                if refs:
                    yield refs
        except AzureError as exc:
            raise self._translate(exc, None) from None

    def list_level(self, prefix: str) -> Iterator[tuple[list[str], list[ObjectRef]]]:
        """One level below `prefix` (a flat container is listed whole here)."""
        try:
            yield from self._pages(prefix, None, "/")
        except AzureError as exc:
            raise self._translate(exc, None) from None

    def _pages(
        self, prefix: str, page_size: int | None, delimiter: str | None
    ) -> Iterator[tuple[list[str], list[ObjectRef]]]:
        """(prefixes, blobs) per page: lean pages (`azure_pages`) while they come back plain, then
        the SDK from that marker (`list_blobs`, or `walk_blobs` with a delimiter)."""
        from azure.storage.blob import BlobPrefix

        marker: str | None = None
        include = self._include()
        while self.raw is not None:
            page = self.raw.page(prefix, marker, page_size, include, delimiter)
            if page is None:
                break
            marker = page.marker
            yield page.prefixes, page.refs
            if not marker:
                return
        start = prefix or None
        if delimiter is None:
            pages = self.container.list_blobs(name_starts_with=start, results_per_page=page_size, include=include)
        else:
            pages = self.container.walk_blobs(name_starts_with=start, delimiter=delimiter, include=include)
        for sdk_page in pages.by_page(continuation_token=marker):
            prefixes: list[str] = []
            objects: list[ObjectRef] = []
            for item in sdk_page:
                if isinstance(item, BlobPrefix):
                    prefixes.append(item.name)
                else:
                    objects.append(_ref(item))
            yield prefixes, objects

    def read_bytes(self, key: str, *, max_bytes: int | None = None) -> bytes:
        if max_bytes is not None:
            return self.read_range(key, 0, max_bytes)
        try:
            return bytes(self.container.get_blob_client(key).download_blob().readall())
        except AzureError as exc:
            raise self._translate(exc, key) from None

    def read_range(self, key: str, start: int, length: int) -> bytes:
        if length <= 0:
            return b""
        blob = self.container.get_blob_client(key)
        try:
            return bytes(blob.download_blob(offset=start, length=length).readall())
        except HttpResponseError as exc:
            if exc.status_code == 416:
                return b""  # a range on an empty blob is a 416, not an empty body
            raise self._translate(exc, key) from None
        except AzureError as exc:
            raise self._translate(exc, key) from None

    def head(self, key: str) -> ObjectInfo:
        """Blob metadata merged with its index tags (tags win); the tags call only when the blob has tags."""
        blob = self.container.get_blob_client(key)
        try:
            props = blob.get_blob_properties()
            metadata = dict(props.metadata or {})
            if props.tag_count:
                metadata.update(blob.get_blob_tags())
        except AzureError as exc:
            raise self._translate(exc, key) from None
        return ObjectInfo(content_type=props.content_settings.content_type or "", metadata=metadata)

    def download_to(self, key: str, path: Path) -> None:
        try:
            with path.open("wb") as fh:
                self.container.get_blob_client(key).download_blob().readinto(fh)
        except AzureError as exc:
            path.unlink(missing_ok=True)
            raise self._translate(exc, key) from None

    def url_for(self, key: str) -> str:
        return f"{self._base}/{quote(key, safe='/')}"

    def check_access(self, prefix: str) -> None:
        """One listing call as the run will make it (with index tags when they are listed)."""
        try:
            pages = self.container.list_blobs(
                name_starts_with=prefix or None, results_per_page=1, include=self._include()
            ).by_page()
            list(next(pages, []))
        except AzureError as exc:
            error = self._translate(exc, None)
            if self.list_tags and isinstance(error, CredentialsError):
                raise CredentialsError(
                    f"{error} while listing with index tags (read by --metadata object): a SAS needs the "
                    "'t' (tags) permission besides 'r' and 'l'"
                ) from None
            raise error from None
