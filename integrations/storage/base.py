"""The one interface every object store offers the pipeline.

Listing is a generator of pages so no caller ever holds a whole bucket; reads are by key.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any, Protocol

from encord_ingest.models import ObjectRef


@dataclass(slots=True, frozen=True)
class ObjectInfo:
    """What a HEAD tells beyond the listing: content type and the user metadata."""

    content_type: str
    metadata: dict[str, str]


class ObjectStore(Protocol):
    """A bucket (or local folder) seen as sorted keys."""

    scheme: str
    bucket: str

    def list_pages(self, prefix: str, *, page_size: int = 1000) -> Iterator[list[ObjectRef]]:
        """Objects under `prefix` in key order, one list per service page."""
        ...

    def list_level(self, prefix: str) -> Iterator[tuple[list[str], list[ObjectRef]]]:
        """One delimiter level, page by page: child prefixes and the objects directly under `prefix`."""
        ...

    def read_bytes(self, key: str, *, max_bytes: int | None = None) -> bytes:
        """The object's body, or its first `max_bytes` bytes."""
        ...

    def read_range(self, key: str, start: int, length: int) -> bytes:
        """Up to `length` bytes from offset `start` (fewer at the end of the object)."""
        ...

    def head(self, key: str) -> ObjectInfo:
        """Content type and user metadata of one object."""
        ...

    def download_to(self, key: str, path: Path) -> None:
        """Stream one object to a local file."""
        ...

    def url_for(self, key: str) -> str:
        """The URL Encord is given for this object (its integration resolves it)."""
        ...

    def check_access(self, prefix: str) -> None:
        """Raise SourceNotFoundError / CredentialsError early, before anything is submitted."""
        ...


def from_start(prefixes: list[str], refs: list[ObjectRef], start: str | None) -> tuple[list[str], list[ObjectRef]]:
    """A listing page without the names below `start`: what a service listed before it (S3's
    StartAfter, given a string just below `start`) or in spite of it (a startOffset ignored)."""
    if start and ((refs and refs[0].key < start) or (prefixes and prefixes[0] < start)):
        return [p for p in prefixes if p >= start], [r for r in refs if r.key >= start]
    return prefixes, refs


def paged(refs: Iterable[ObjectRef], page_size: int) -> Iterator[list[ObjectRef]]:
    """Pages of `page_size` refs for stores whose listing is not paged by a service."""
    it = iter(refs)
    while page := list(islice(it, page_size)):
        yield page


class RangeFile(io.RawIOBase):
    """A read-only, seekable file over `store.read_range`, so readers never download whole files."""

    def __init__(self, store: ObjectStore, key: str, size: int) -> None:
        super().__init__()
        self.store, self.key, self.size, self.pos = store, key, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        want = min(len(view), self.size - self.pos)
        if want <= 0:
            return 0
        data = self.store.read_range(self.key, self.pos, want)
        view[: len(data)] = data
        self.pos += len(data)
        return len(data)
