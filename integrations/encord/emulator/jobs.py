"""Background processing of upload jobs: existence checks, item creation, duplicate skipping, unit errors.

One worker thread drains a queue so job start returns at once and polling sees PENDING -> DONE/ERROR,
like Encord's asynchronous upload jobs.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from typing import Any

from .config import EmulatorConfig
from .faults import TRANSIENT_ITEM_ERROR, FaultInjector
from .manifest import Unit, json_size
from .objects import check_objects
from .state import DONE, ERROR, PENDING, Item, State, UploadJob, now_iso

log = logging.getLogger(__name__)
_CHUNK = 500
_MAX_URLS_IN_ERROR = 5


class JobWorker:
    """Owns the worker thread; start()/stop() are tied to the app lifespan."""

    def __init__(self, state: State, config: EmulatorConfig, faults: FaultInjector) -> None:
        self._state = state
        self._config = config
        self._faults = faults
        self._queue: queue.Queue[UploadJob | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    def start(self) -> None:
        if self._thread is None:
            self._stopping.clear()
            self._thread = threading.Thread(target=self._run, name="encord-emulator-jobs", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._stopping.set()
            self._queue.put(None)
            self._thread.join(timeout=10)
            self._thread = None

    def submit(self, job: UploadJob) -> None:
        self._queue.put(job)

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            try:
                self._wait_until_due(job)
                self._process(job)
            except Exception as exc:  # keep the worker alive; surface the failure on the job
                log.exception("upload job %s crashed", job.uuid)
                with self._state.lock:
                    job.unit_errors.append(_unit_error([], f"Internal emulator error: {exc}", "Processing job"))
                    job.error += job.pending
                    job.pending = 0
                    job.status = ERROR
                    job.manifest = None
                    job.finished.set()

    def _wait_until_due(self, job: UploadJob) -> None:
        while not job.cancel_requested and (delay := job.not_before - time.monotonic()) > 0:
            if self._stopping.wait(min(delay, 0.2)):
                return

    def _process(self, job: UploadJob) -> None:
        with self._state.lock:
            manifest = job.manifest
            if job.status != PENDING or job.cancel_requested or manifest is None or self._stopping.is_set():
                return
        urls = [url for unit in manifest.units for url in unit.urls]
        existence = check_objects(urls, self._config.head_threshold)
        for start in range(0, len(manifest.units), _CHUNK):
            with self._state.lock:
                if job.cancel_requested or self._state.jobs.get(job.uuid) is not job:
                    return
                for unit in manifest.units[start : start + _CHUNK]:
                    self._apply(job, unit, existence, manifest.skip_duplicate_urls, manifest.upsert_metadata)
        with self._state.lock:
            if job.status == PENDING and not job.cancel_requested:
                job.status = ERROR if job.error and not job.ignore_errors else DONE
                job.manifest = None
                job.finished.set()

    def _apply(self, job: UploadJob, unit: Unit, existence: dict[str, str | None], skip: bool, upsert: bool) -> None:
        """Create (or skip/upsert) one unit; the caller holds the state lock."""
        error = self._unit_failure(job, unit, existence)
        job.pending -= 1
        if error is not None:
            job.error += 1
            job.unit_errors.append(_unit_error(unit.urls, error, f"Registering {unit.kind} '{unit.title}'"))
            return
        folder = self._state.folders[job.folder]
        existing_id = folder.url_index.get(unit.urls[0]) if skip else None
        if existing_id is not None and existing_id in self._state.items:
            existing = self._state.items[existing_id]
            if upsert:
                self._state.set_item_metadata(existing, unit.client_metadata)
            job.items_with_names.append((existing.uuid, existing.title))
        else:
            stamp = now_iso()
            item = Item(
                uuid=str(uuid.uuid4()),
                folder=folder.uuid,
                kind=unit.kind,
                urls=unit.urls,
                title=unit.title,
                client_metadata=unit.client_metadata,
                created_at=stamp,
                last_edited_at=stamp,
                integration=job.integration,
                media=unit.media,
            )
            self._state.add_item(folder, item)
            job.items_with_names.append((item.uuid, item.title))
        job.done += 1

    def _unit_failure(self, job: UploadJob, unit: Unit, existence: dict[str, str | None]) -> str | None:
        if self._faults.item_fault():
            return TRANSIENT_ITEM_ERROR
        problems = [e for url in unit.urls if (e := existence.get(url)) is not None]
        if problems:
            extra = len(problems) - _MAX_URLS_IN_ERROR
            text = "; ".join(problems[:_MAX_URLS_IN_ERROR])
            return text + (f"; and {extra} more" if extra > 0 else "")
        size = json_size(unit.client_metadata)
        if size > self._config.metadata_limit_bytes:
            return (
                f"Invalid clientMetadata: {size} bytes exceeds the size limit of "
                f"{self._config.metadata_limit_bytes} bytes"
            )
        if job.folder not in self._state.folders:
            return "Folder not found: it was deleted while the upload job was running"
        return None


def _unit_error(urls: list[str], error: str, action: str) -> dict[str, Any]:
    return {
        "objectUrls": list(urls),
        "error": error,
        "subtaskUuid": str(uuid.uuid4()),
        "actionDescription": action,
    }
