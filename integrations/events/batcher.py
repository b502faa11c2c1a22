"""Collect keys per bucket for a short window, then emit one event per batch of keys.

A burst of uploads must become a few flow runs with many keys each, not one run per object.
A batch is cut when its window ends, when it holds `max_keys` keys, or when its key list would
pass `max_bytes` as JSON (Prefect caps flow-run parameters at 512 KB). Each `add` returns the
futures of the batches its keys went into; they resolve once Prefect accepted the event, so
callers acknowledge their senders only after that (at-least-once delivery).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from integrations.events.emit import BucketRef, build_event

log = logging.getLogger("encord_ingest.events")

DEFAULT_WINDOW = 2.0
DEFAULT_MAX_KEYS = 1000
DEFAULT_MAX_BYTES = 256 * 1024  # half of Prefect's 512 KB parameter cap, leaving room for the rest


@dataclass
class _Pending:
    ref: BucketRef
    deadline: float
    keys: dict[str, None] = field(default_factory=dict)
    size: int = 2  # "[]"
    future: Future[int] = field(default_factory=Future)


class Batcher:
    """Thread-safe; a background thread emits batches whose window has ended."""

    def __init__(
        self,
        emit: Callable[[list[dict[str, Any]]], None],
        *,
        window: float = DEFAULT_WINDOW,
        max_keys: int = DEFAULT_MAX_KEYS,
        max_bytes: int = DEFAULT_MAX_BYTES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_keys < 1 or max_bytes < 1024:
            raise ValueError("max_keys must be >= 1 and max_bytes >= 1024")
        self._emit = emit
        self.window = window
        self.max_keys = max_keys
        self.max_bytes = max_bytes
        self._clock = clock
        self._open: dict[BucketRef, _Pending] = {}
        self._ready: list[_Pending] = []
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="events-batcher", daemon=True)
        self._thread.start()
        self.emitted_events = 0
        self.emitted_keys = 0

    def add(self, ref: BucketRef, keys: Sequence[str]) -> list[Future[int]]:
        """Queue keys; the returned futures give the batch size, or raise EmitError."""
        futures: list[Future[int]] = []
        with self._cond:
            if self._closed:
                raise RuntimeError("batcher is closed")
            for key in keys:
                pending = self._open.get(ref)
                if pending is not None and key in pending.keys:
                    if pending.future not in futures:
                        futures.append(pending.future)
                    continue
                cost = len(json.dumps(key).encode()) + 1
                if pending is not None and (len(pending.keys) >= self.max_keys or pending.size + cost > self.max_bytes):
                    self._ready.append(self._open.pop(ref))
                    pending = None
                if pending is None:
                    pending = self._open[ref] = _Pending(ref, self._clock() + self.window)
                pending.keys[key] = None
                pending.size += cost
                if pending.future not in futures:
                    futures.append(pending.future)
            self._cond.notify()
        return futures

    def flush(self) -> None:
        """Emit everything now (shutdown, tests)."""
        with self._cond:
            self._ready.extend(self._open.values())
            self._open.clear()
            batches, self._ready = self._ready, []
        self._send(batches)

    def close(self) -> None:
        self.flush()
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout=10)

    def _due(self) -> tuple[list[_Pending], float | None]:
        now = self._clock()
        for ref in [r for r, p in self._open.items() if p.deadline <= now]:
            self._ready.append(self._open.pop(ref))
        batches, self._ready = self._ready, []
        nxt = min((p.deadline for p in self._open.values()), default=None)
        return batches, (None if nxt is None else max(0.0, nxt - now))

    def _run(self) -> None:
        while True:
            with self._cond:
                batches, wait = self._due()
                if not batches:
                    if self._closed:
                        return
                    self._cond.wait(timeout=wait if wait is not None else 1.0)
                    continue
            self._send(batches)

    def _send(self, batches: list[_Pending]) -> None:
        for pending in batches:
            keys = list(pending.keys)
            try:
                self._emit([build_event(pending.ref, keys)])
            except Exception as exc:
                log.warning("could not emit %d key(s) of %s: %s", len(keys), pending.ref.url, exc)
                pending.future.set_exception(exc)
                continue
            self.emitted_events += 1
            self.emitted_keys += len(keys)
            log.info("emitted 1 event with %d key(s) of %s", len(keys), pending.ref.url)
            pending.future.set_result(len(keys))
