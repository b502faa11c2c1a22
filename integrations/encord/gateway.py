"""The only place that talks to Encord, through the real `encord` SDK.

The SDK retries idempotent calls itself but not upload-job starts or folder creation, so every
call here is wrapped in one tenacity policy: exponential backoff with jitter, honouring the
server's Retry-After, for throttling, 5xx and transport failures. Manifests always carry
`skip_duplicate_urls`, which makes a repeated start harmless.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from uuid import UUID

import requests
from encord import EncordUserClient
from encord.exceptions import (
    AuthenticationError,
    AuthorisationError,
    EncordException,
    GenericServerError,
    RateLimitExceededError,
    RequestException,
    UnknownException,
)
from encord.http.constants import RequestsSettings
from encord.orm.dataset import LongPollingStatus
from encord.storage import FoldersSortBy, StorageFolder
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from encord_ingest.errors import ConfigError, CredentialsError, EncordUnavailableError
from integrations.encord.throttle import throttled

log = logging.getLogger("encord_ingest.encord")

DEFAULT_DOMAIN = "https://api.encord.com"
T = TypeVar("T")


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name, "")
    try:
        return float(raw) if raw else default
    except ValueError:
        raise ConfigError(f"{name} must be a number") from None


@dataclass(slots=True)
class EncordSettings:
    """Connection settings; the key text is held only here and never rendered."""

    domain: str = DEFAULT_DOMAIN
    ssh_key: str = field(default="", repr=False)
    read_timeout: float = 180.0
    retry_attempts: int = 8
    retry_initial_wait: float = 1.0
    retry_max_wait: float = 60.0
    poll_seconds: int = 30
    job_timeout: float = 6 * 3600.0

    @classmethod
    def from_env(cls) -> EncordSettings:
        key = os.environ.get("ENCORD_SSH_KEY", "")
        key_file = os.environ.get("ENCORD_SSH_KEY_FILE", "")
        if not key and key_file:
            try:
                key = Path(key_file).expanduser().read_text()
            except OSError:
                raise ConfigError(f"ENCORD_SSH_KEY_FILE {key_file} cannot be read") from None
        if not key:
            raise ConfigError("no Encord key: set ENCORD_SSH_KEY_FILE (path) or ENCORD_SSH_KEY (key text)")
        return cls(
            domain=os.environ.get("ENCORD_DOMAIN") or DEFAULT_DOMAIN,
            ssh_key=key,
            read_timeout=_env_float("ENCORD_INGEST_HTTP_TIMEOUT", 180.0),
            retry_attempts=int(_env_float("ENCORD_INGEST_RETRY_ATTEMPTS", 8)),
            retry_initial_wait=_env_float("ENCORD_INGEST_RETRY_WAIT", 1.0),
            retry_max_wait=_env_float("ENCORD_INGEST_RETRY_MAX_WAIT", 60.0),
            poll_seconds=int(_env_float("ENCORD_INGEST_POLL_SECONDS", 30)),
            job_timeout=_env_float("ENCORD_INGEST_JOB_TIMEOUT", 6 * 3600.0),
        )


def is_transient(exc: BaseException) -> bool:
    """Worth retrying: throttling, server errors, transport failures."""
    return isinstance(
        exc,
        RateLimitExceededError
        | UnknownException
        | GenericServerError
        | RequestException
        | requests.ConnectionError
        | requests.Timeout,
    )


def _short(exc: BaseException) -> str:
    """One line about an SDK error, without the SDK's long hints."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{exc.__class__.__name__}: {text[:160]}" if text else exc.__class__.__name__


@dataclass(slots=True)
class UploadResult:
    """Per-URL outcome of one upload job."""

    status: str
    item_uuids: dict[str, str]
    errors: dict[str, str]
    job_id: str


class EncordGateway:
    def __init__(self, settings: EncordSettings, *, sleep: Callable[[float], None] = time.sleep) -> None:
        self.settings = settings
        self._sleep = sleep
        try:
            self.client = EncordUserClient.create_with_ssh_private_key(
                ssh_private_key=settings.ssh_key,
                domain=settings.domain.rstrip("/"),
                requests_settings=RequestsSettings(
                    max_retries=3, backoff_factor=0.5, connect_timeout=15, read_timeout=int(settings.read_timeout)
                ),
            )
        except ValueError:
            raise ConfigError("the Encord key is not an OpenSSH Ed25519 private key (ssh-keygen -t ed25519)") from None

    # -- retry policy -------------------------------------------------------------------------
    def _wait(self, state: RetryCallState) -> float:
        backoff = wait_exponential_jitter(initial=self.settings.retry_initial_wait, max=self.settings.retry_max_wait)(
            state
        )
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, RateLimitExceededError) and exc.retry_after:
            return max(float(exc.retry_after), backoff)
        return backoff

    def call(self, what: str, fn: Callable[[], T], *, hold: bool = False) -> T:
        """Run one SDK call under the retry policy; map final failures to our errors.

        Each attempt first passes the shared Prefect limits, if configured (`throttle`); `hold`
        (upload-job starts and polls) also takes a slot of the concurrency limit.
        """

        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            log.warning("%s failed (%s); retry %d", what, _short(exc) if exc else "?", state.attempt_number)

        retrying = Retrying(
            retry=retry_if_exception(is_transient),
            wait=self._wait,
            stop=stop_after_attempt(self.settings.retry_attempts),
            sleep=self._sleep,
            before_sleep=before_sleep,
            reraise=True,
        )
        try:
            return retrying(throttled(fn, hold=hold))
        except AuthenticationError:
            raise CredentialsError(
                f"Encord rejected the credentials at {self.settings.domain} while trying to {what}: "
                "check ENCORD_SSH_KEY_FILE and ENCORD_DOMAIN"
            ) from None
        except AuthorisationError:
            raise CredentialsError(
                f"Encord refused access while trying to {what}: the key's user lacks permission, "
                "or the folder or item no longer exists"
            ) from None
        except EncordException as exc:
            if is_transient(exc):
                raise EncordUnavailableError(
                    f"Encord kept failing to {what} after {self.settings.retry_attempts} attempts: {_short(exc)}"
                ) from None
            raise
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise EncordUnavailableError(f"Encord unreachable at {self.settings.domain}: {_short(exc)}") from None

    # -- set-up -------------------------------------------------------------------------------
    def integration_id(self, title: str) -> str:
        found = self.call(
            "list cloud integrations",
            lambda: self.client.get_cloud_integrations(filter_integration_titles=[title]),
        )
        exact = [i for i in found if i.title == title]
        if not exact:
            everything = self.call("list cloud integrations", self.client.get_cloud_integrations)
            names = ", ".join(sorted(i.title for i in everything)) or "none"
            raise ConfigError(f"no Encord cloud integration titled {title!r} (available: {names})")
        return str(exact[0].id)

    def find_folder(self, name: str) -> StorageFolder | None:
        def search() -> StorageFolder | None:
            for folder in self.client.find_storage_folders(search=name, order=FoldersSortBy.NAME, page_size=1000):
                if folder.name == name:
                    return folder
            return None

        return self.call(f"find folder {name!r}", search)

    def ensure_folder(self, name: str, description: str = "") -> StorageFolder:
        """Find the folder by exact name, or create it; a retried create is re-checked first."""

        def find_or_create() -> StorageFolder:
            for folder in self.client.find_storage_folders(search=name, order=FoldersSortBy.NAME, page_size=1000):
                if folder.name == name:
                    return folder
            return self.client.create_storage_folder(name, description or "registered by encord-ingest")

        return self.call(f"create folder {name!r}", find_or_create)

    def get_folder(self, uuid: str) -> StorageFolder:
        return self.call("open folder", lambda: self.client.get_storage_folder(UUID(uuid)))

    # -- uploads ------------------------------------------------------------------------------
    def start_upload(self, folder: StorageFolder, integration_id: str, manifest: dict[str, Any]) -> str:
        job = self.call(
            "start an upload job",
            lambda: folder.add_private_data_to_folder_start(integration_id, manifest, ignore_errors=True),
            hold=True,
        )
        return str(job)

    def wait_upload(self, folder: StorageFolder, job_id: str, urls_by_title: dict[str, str]) -> UploadResult:
        """Poll until the job ends; long-polls of `poll_seconds` keep each request short."""
        deadline = time.monotonic() + self.settings.job_timeout
        job = UUID(job_id)
        # the server holds a long-poll up to `poll` seconds: keep that under the HTTP read timeout
        poll = max(1, min(self.settings.poll_seconds, int(self.settings.read_timeout) - 1))
        while True:
            state = self.call(
                "poll an upload job",
                lambda: folder.add_private_data_to_folder_get_result(job, timeout_seconds=poll),
                hold=True,
            )
            if state.status != LongPollingStatus.PENDING:
                break
            if time.monotonic() > deadline:
                raise EncordUnavailableError(
                    f"upload job {job_id} still pending after {self.settings.job_timeout:.0f}s"
                )
        errors: dict[str, str] = {}
        for unit in state.unit_errors:
            for url in unit.object_urls:
                errors[url] = unit.error
        uuids: dict[str, str] = {}
        for named in state.items_with_names:
            url = urls_by_title.get(named.name)
            if url is not None:
                uuids[url] = str(named.item_uuid)
        return UploadResult(status=state.status.value, item_uuids=uuids, errors=errors, job_id=job_id)

    def flag_items(self, item_uuids: list[str], key: str, value: Any = True) -> None:
        """Set one clientMetadata key on existing items, keeping the rest of their metadata."""
        from encord.http.bundle import Bundle

        if not item_uuids:
            return

        def run() -> None:
            for i in range(0, len(item_uuids), 500):
                items = self.client.get_storage_items(item_uuids[i : i + 500])
                with Bundle() as bundle:
                    for item in items:
                        merged = {**(item.client_metadata or {}), key: value}
                        item.update(client_metadata=merged, bundle=bundle)

        self.call(f"flag {len(item_uuids)} items", run)

    def find_items(self, folder: StorageFolder, urls_by_title: dict[str, str]) -> dict[str, str]:
        """Item uuids by URL for items already in the folder, searched by title (one query each)."""

        def search() -> dict[str, str]:
            found: dict[str, str] = {}
            for title, url in urls_by_title.items():
                for item in folder.list_items(search=title, include_client_metadata=False, page_size=100):
                    if item.url == url or (item.name == title and not item.url):
                        found[url] = str(item.uuid)
                        break
            return found

        return self.call(f"look up {len(urls_by_title)} items by URL", search) if urls_by_title else {}

    def update_metadata(self, metadata_by_item: dict[str, dict[str, Any]]) -> None:
        """Metadata-only update of existing items: one bulk read, one bundled patch."""
        from encord.http.bundle import Bundle

        if not metadata_by_item:
            return

        def run() -> None:
            items = self.client.get_storage_items(list(metadata_by_item))
            with Bundle() as bundle:
                for item in items:
                    item.update(client_metadata=metadata_by_item[str(item.uuid)], bundle=bundle)

        self.call(f"update metadata of {len(metadata_by_item)} items", run)


class FolderUploader:
    """Uploads manifests into one folder through one integration: start, then poll to the end."""

    def __init__(self, gateway: EncordGateway, folder: StorageFolder, integration_id: str) -> None:
        self.gateway = gateway
        self.folder = folder
        self.integration_id = integration_id

    def start(self, manifest: dict[str, Any]) -> str:
        return self.gateway.start_upload(self.folder, self.integration_id, manifest)

    def wait(self, job_id: str, urls_by_title: dict[str, str]) -> UploadResult:
        """The job's outcome per URL. Items a finished job does not name (e.g. duplicates it
        skipped) are looked up in the folder by title, so they are not mistaken for failures."""
        result = self.gateway.wait_upload(self.folder, job_id, urls_by_title)
        if result.status in ("DONE", "ERROR"):
            missing = {t: u for t, u in urls_by_title.items() if u not in result.item_uuids and u not in result.errors}
            if missing:
                result.item_uuids.update(self.gateway.find_items(self.folder, missing))
        return result

    def resolve(self, job_id: str, urls_by_title: dict[str, str]) -> UploadResult:
        """What happened to objects a killed run left pending: by job id, else by URL in the folder."""
        if job_id:
            return self.wait(job_id, urls_by_title)
        found = self.gateway.find_items(self.folder, urls_by_title)
        return UploadResult(status="UNKNOWN", item_uuids=found, errors={}, job_id="")

    def update_metadata(self, metadata_by_item: dict[str, dict[str, Any]]) -> None:
        self.gateway.update_metadata(metadata_by_item)

    def flag_items(self, item_uuids: list[str], key: str) -> None:
        self.gateway.flag_items(item_uuids, key)


def connect(folder_name: str, integration_title: str) -> FolderUploader:
    """Credentials from the environment, integration by title, folder by name (created if missing)."""
    gateway = EncordGateway(EncordSettings.from_env())
    integration_id = gateway.integration_id(integration_title)
    folder = gateway.ensure_folder(folder_name)
    return FolderUploader(gateway, folder, integration_id)
