"""Thread-safe in-memory state of one emulated Encord organisation.

uvicorn runs sync endpoints in a thread pool and uploads run in a worker thread, so every access goes through
``State.lock``. Records use slots to keep ~100k items cheap.
"""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from .manifest import Manifest

PENDING, DONE, ERROR, CANCELLED = "PENDING", "DONE", "ERROR", "CANCELLED"
_LIST_CACHE_SIZE = 16


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


class NotFound(KeyError):
    """A folder, item or job does not exist."""


@dataclass(slots=True)
class Folder:
    uuid: str
    name: str
    description: str
    parent: str | None
    client_metadata: str | None
    created_at: str
    last_edited_at: str
    item_ids: dict[str, None] = field(default_factory=dict)  # insertion-ordered set
    url_index: dict[str, str] = field(default_factory=dict)  # first file URL -> first item with it
    version: int = 0


@dataclass(slots=True)
class Item:
    uuid: str
    folder: str
    kind: str
    urls: list[str]
    title: str
    client_metadata: dict[str, Any]
    created_at: str
    last_edited_at: str
    integration: str | None
    media: dict[str, Any]


@dataclass
class UploadJob:
    uuid: str
    folder: str
    integration: str | None
    ignore_errors: bool
    file_name: str | None
    manifest: Manifest | None
    not_before: float  # time.monotonic() before which the worker must not start it
    status: str = PENDING
    items_with_names: list[tuple[str, str]] = field(default_factory=list)
    unit_errors: list[dict[str, Any]] = field(default_factory=list)
    pending: int = 0
    done: int = 0
    error: int = 0
    cancelled: int = 0
    cancel_requested: bool = False
    finished: threading.Event = field(default_factory=threading.Event)


class State:
    """Folders, items, upload jobs, metadata schema, Active resyncs and request counters."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.folders: dict[str, Folder] = {}
        self.items: dict[str, Item] = {}
        self.jobs: dict[str, UploadJob] = {}
        self.schema: dict[str, Any] | None = None
        self.schema_v1: dict[str, Any] | None = None
        self.resyncs: list[dict[str, Any]] = []
        self.requests: Counter[str] = Counter()
        self.metadata_updates = 0
        self._list_cache: dict[tuple[Any, ...], list[str]] = {}

    def reset(self) -> None:
        """Drop everything a test or a run created; running jobs notice they were discarded."""
        with self.lock:
            for job in self.jobs.values():
                job.cancel_requested = True
                job.finished.set()
            self.folders.clear()
            self.items.clear()
            self.jobs.clear()
            self.schema = None
            self.schema_v1 = None
            self.resyncs.clear()
            self.requests.clear()
            self.metadata_updates = 0
            self._list_cache.clear()

    def count_request(self, key: str) -> None:
        with self.lock:
            self.requests[key] += 1

    # folders -----------------------------------------------------------------------------------------------
    def create_folder(self, name: str, description: str, parent: str | None, client_metadata: str | None) -> Folder:
        with self.lock:
            if parent is not None and parent not in self.folders:
                raise NotFound(parent)
            stamp = now_iso()
            folder = Folder(str(uuid.uuid4()), name, description, parent, client_metadata, stamp, stamp)
            self.folders[folder.uuid] = folder
            return folder

    def folder(self, folder_id: str) -> Folder:
        with self.lock:
            folder = self.folders.get(folder_id)
            if folder is None:
                raise NotFound(folder_id)
            return folder

    def ancestors(self, folder: Folder) -> list[Folder]:
        """Folders from the root down to the direct parent."""
        with self.lock:
            chain: list[Folder] = []
            parent = folder.parent
            while parent is not None and parent in self.folders:
                chain.append(self.folders[parent])
                parent = self.folders[parent].parent
            return chain[::-1]

    def list_folders(
        self, *, parent: str | None, recursive: bool, search: str | None, order: str, desc: bool
    ) -> list[Folder]:
        with self.lock:
            if recursive:
                folders = [f for f in self.folders.values() if parent is None or self._is_below(f, parent)]
            else:
                folders = [f for f in self.folders.values() if f.parent == parent]
        if search:
            needle = search.lower()
            folders = [f for f in folders if needle in f.name.lower()]
        key = (lambda f: f.created_at) if order == "createdAt" else (lambda f: f.name.lower())
        return sorted(folders, key=key, reverse=desc)

    def _is_below(self, folder: Folder, ancestor: str | None) -> bool:
        parent = folder.parent
        while parent is not None:
            if parent == ancestor:
                return True
            parent = self.folders[parent].parent if parent in self.folders else None
        return False

    def update_folder(self, folder_id: str, patch: dict[str, Any]) -> Folder:
        with self.lock:
            folder = self.folder(folder_id)
            if patch.get("name") is not None:
                folder.name = patch["name"]
            if patch.get("description") is not None:
                folder.description = patch["description"]
            if "client_metadata" in patch:
                folder.client_metadata = patch["client_metadata"]
            folder.last_edited_at = now_iso()
            return folder

    def delete_folder(self, folder_id: str) -> None:
        with self.lock:
            folder = self.folder(folder_id)
            for child in [f.uuid for f in self.folders.values() if f.parent == folder_id]:
                self.delete_folder(child)
            for item_id in folder.item_ids:
                self.items.pop(item_id, None)
            del self.folders[folder_id]
            self._list_cache.clear()

    # items -------------------------------------------------------------------------------------------------
    def item(self, item_id: str) -> Item:
        with self.lock:
            item = self.items.get(item_id)
            if item is None:
                raise NotFound(item_id)
            return item

    def add_item(self, folder: Folder, item: Item) -> None:
        """Insert an item (caller holds the lock)."""
        self.items[item.uuid] = item
        folder.item_ids[item.uuid] = None
        folder.url_index.setdefault(item.urls[0], item.uuid)
        folder.version += 1

    def set_item_metadata(self, item: Item, metadata: dict[str, Any]) -> None:
        with self.lock:
            item.client_metadata = metadata
            item.last_edited_at = now_iso()
            self.metadata_updates += 1
            folder = self.folders.get(item.folder)
            if folder is not None:
                folder.version += 1

    def rename_item(self, item: Item, name: str) -> None:
        with self.lock:
            item.title = name
            item.last_edited_at = now_iso()
            folder = self.folders.get(item.folder)
            if folder is not None:
                folder.version += 1

    def delete_items(self, folder_id: str, item_ids: list[str]) -> int:
        with self.lock:
            folder = self.folder(folder_id)
            removed = 0
            for item_id in item_ids:
                item = self.items.get(item_id)
                if item is None or item.folder != folder_id:
                    continue
                del self.items[item_id]
                folder.item_ids.pop(item_id, None)
                if folder.url_index.get(item.urls[0]) == item_id:
                    del folder.url_index[item.urls[0]]
                removed += 1
            folder.version += 1
            return removed

    def list_item_ids(
        self, folder_id: str, *, search: str | None, kinds: frozenset[str], order: str, desc: bool
    ) -> list[str]:
        """Filtered, sorted item ids of a folder; cached per folder version so paging stays cheap."""
        with self.lock:
            folder = self.folder(folder_id)
            key = (folder_id, folder.version, search or "", kinds, order, desc)
            cached = self._list_cache.get(key)
            if cached is not None:
                return cached
            items = [self.items[i] for i in folder.item_ids]
        if search:
            needle = search.lower()
            items = [i for i in items if needle in i.title.lower()]
        if kinds:
            items = [i for i in items if i.kind in kinds]
        if order == "createdAt":
            ordered = items[::-1] if desc else items
        else:
            ordered = sorted(items, key=lambda i: i.title.lower(), reverse=desc)
        ids = [i.uuid for i in ordered]
        with self.lock:
            if len(self._list_cache) >= _LIST_CACHE_SIZE:
                self._list_cache.pop(next(iter(self._list_cache)))
            self._list_cache[key] = ids
        return ids

    # upload jobs -------------------------------------------------------------------------------------------
    def add_job(self, job: UploadJob) -> None:
        with self.lock:
            self.jobs[job.uuid] = job

    def job(self, folder_id: str, job_id: str) -> UploadJob:
        with self.lock:
            job = self.jobs.get(job_id)
            if job is None or job.folder != folder_id:
                raise NotFound(job_id)
            return job

    def cancel_job(self, job: UploadJob) -> int:
        """Cancel what has not been processed yet; returns the number of cancelled units."""
        with self.lock:
            if job.status != PENDING:
                return 0
            job.cancel_requested = True
            cancelled = job.pending
            job.cancelled += cancelled
            job.pending = 0
            job.status = CANCELLED
            job.manifest = None
            job.finished.set()
            return cancelled
