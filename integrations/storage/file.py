"""A local folder as an object store, for `manifest` dry runs, tests and file:// sources."""

from __future__ import annotations

import mimetypes
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

from encord_ingest.errors import SourceNotFoundError
from encord_ingest.models import ObjectRef
from integrations.storage.base import ObjectInfo, paged


class FileStore:
    """Keys are POSIX paths relative to `root`; listing order equals S3's byte order."""

    scheme = "file"

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.bucket = str(self.root)

    @staticmethod
    def _ref(key: str, entry: os.DirEntry[str]) -> ObjectRef:
        st = entry.stat()
        return ObjectRef(
            key=key, size=st.st_size, etag=f"{st.st_mtime_ns:x}-{st.st_size:x}", last_modified=str(st.st_mtime_ns)
        )

    def _walk(self, directory: Path, rel: str) -> Iterator[ObjectRef]:
        try:
            scanned = list(os.scandir(directory))
        except FileNotFoundError:
            return
        # A directory sorts as "name/" so the walk yields keys in global lexicographic order.
        scanned.sort(key=lambda e: e.name + "/" if e.is_dir(follow_symlinks=False) else e.name)
        for entry in scanned:
            key = f"{rel}{entry.name}"
            if entry.is_dir(follow_symlinks=False):
                yield from self._walk(Path(entry.path), key + "/")
            elif entry.is_file():
                yield self._ref(key, entry)

    def _start(self, prefix: str) -> tuple[Path, str]:
        head, _, _ = prefix.rpartition("/")
        return (self.root / head if head else self.root), (head + "/" if head else "")

    def list_pages(self, prefix: str, *, page_size: int = 1000) -> Iterator[list[ObjectRef]]:
        directory, rel = self._start(prefix)
        yield from paged((ref for ref in self._walk(directory, rel) if ref.key.startswith(prefix)), page_size)

    def list_level(self, prefix: str) -> Iterator[tuple[list[str], list[ObjectRef]]]:
        directory, rel = self._start(prefix)
        try:
            scanned = sorted(os.scandir(directory), key=lambda e: e.name)
        except FileNotFoundError:
            return
        prefixes: list[str] = []
        objects: list[ObjectRef] = []
        for entry in scanned:
            key = f"{rel}{entry.name}"
            if not key.startswith(prefix):
                continue
            if entry.is_dir(follow_symlinks=False):
                prefixes.append(key + "/")
            elif entry.is_file():
                objects.append(self._ref(key, entry))
        yield prefixes, objects

    def read_bytes(self, key: str, *, max_bytes: int | None = None) -> bytes:
        with open(self.root / key, "rb") as fh:
            return fh.read() if max_bytes is None else fh.read(max_bytes)

    def read_range(self, key: str, start: int, length: int) -> bytes:
        with open(self.root / key, "rb") as fh:
            fh.seek(start)
            return fh.read(max(0, length))

    def head(self, key: str) -> ObjectInfo:
        content_type = mimetypes.guess_type(key)[0] or "application/octet-stream"
        return ObjectInfo(content_type=content_type, metadata={})

    def download_to(self, key: str, path: Path) -> None:
        shutil.copyfile(self.root / key, path)

    def url_for(self, key: str) -> str:
        return "file://" + quote(f"{self.root.as_posix()}/{key}")

    def check_access(self, prefix: str) -> None:
        if not self.root.is_dir():
            raise SourceNotFoundError(f"local folder {self.root} does not exist")
