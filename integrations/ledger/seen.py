"""Seen marks written behind the listing instead of in its way.

A no-change re-run's only write is marking every listed object seen (deletion detection): about
1.7 µs of SQLite work per object, as much as the rest of screening a batch. The thread screening
batches hands the URLs to a writer thread and goes on; SQLite runs without the GIL, so the write
overlaps the listing. Whatever queues up while one write runs goes out as the next single write,
and a failed write is tried again (a busy database) before it counts as failed. `flush` waits
for everything handed over and raises the first failure, so a run never judges what is gone
from the source on marks that were not written; the run's driver flushes before it returns, so
no mark lands after the run has let go of its source.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Sequence

from tenacity import Retrying, stop_after_attempt, wait_exponential

log = logging.getLogger("encord_ingest.ledger")

MAX_PENDING = 8  # batches handed over and not yet written: the screening thread waits beyond this
MAX_WRITE = 20_000  # URLs at most in one write
ATTEMPTS = 3  # tries of one write, 0.5 s then 1 s apart
CLOSE_WAIT = 60.0  # seconds `close` waits for the writes under way


class SeenWriter:
    """Calls `write(urls, run_id)` on its own thread, in order; thread-safe."""

    def __init__(self, write: Callable[[list[str], str], None], *, retry_wait: float = 0.5) -> None:
        self._write = write
        self._retry_wait = retry_wait
        self._queue: queue.Queue[tuple[list[str], str] | None] = queue.Queue(maxsize=MAX_PENDING)
        self._error: BaseException | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="ledger-seen", daemon=True)
        self._thread.start()

    def mark(self, urls: Sequence[str], run_id: str) -> None:
        """Hand `urls` over; raises at once if an earlier write failed or the writer is closed."""
        if self._closed:
            raise RuntimeError("seen marks handed over after the ledger was closed")
        self._raise()
        if urls:
            self._queue.put((list(urls), run_id))

    def flush(self) -> None:
        """Return once every URL handed over is written; raise the first write's failure."""
        self._queue.join()
        self._raise()

    def close(self) -> None:
        """Write what was handed over (waiting at most CLOSE_WAIT seconds), then stop the thread."""
        if self._closed:
            return
        self._closed = True
        try:
            self._queue.put(None, timeout=CLOSE_WAIT)
        except queue.Full:
            log.warning("ledger: seen marks still being written after %.0f s; left behind", CLOSE_WAIT)
            return
        self._thread.join(timeout=CLOSE_WAIT)
        if self._error is not None:
            log.warning("ledger: seen marks not written: %s: %s", type(self._error).__name__, self._error)

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                self._queue.task_done()
                return
            urls, run_id = item
            taken = 1
            stop = False
            while len(urls) < MAX_WRITE:  # what queued up meanwhile goes out with it
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                taken += 1
                if more is None:
                    stop = True
                    break
                if more[1] != run_id:  # another run's marks: written on their own
                    self._write_safely(urls, run_id)
                    urls, run_id = more
                    continue
                urls.extend(more[0])
            self._write_safely(urls, run_id)
            for _ in range(taken):
                self._queue.task_done()
            if stop:
                return

    def _write_safely(self, urls: list[str], run_id: str) -> None:
        if self._error is not None:  # after a failure nothing more is written; flush reports it
            return
        try:
            for attempt in Retrying(
                stop=stop_after_attempt(ATTEMPTS), wait=wait_exponential(multiplier=self._retry_wait), reraise=True
            ):
                with attempt:
                    self._write(urls, run_id)
        except BaseException as exc:  # handed to the screening thread by mark and flush
            self._error = exc
