"""Seen marks written behind the listing instead of in its way.

A no-change re-run's only write is marking every listed object seen (deletion detection): about
1.7 µs of SQLite work per object, as much as the rest of screening a batch. The thread screening
batches hands the URLs to a writer thread and goes on; SQLite runs without the GIL, so the write
overlaps the listing. Whatever queues up while one write runs goes out as the next single write.
`flush` waits for everything handed over and raises the first failure, so a run never judges what
is gone from the source on marks that were not written.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Sequence

MAX_PENDING = 8  # batches handed over and not yet written: the screening thread waits beyond this
MAX_WRITE = 20_000  # URLs at most in one write


class SeenWriter:
    """Calls `write(urls, run_id)` on its own thread, in order; thread-safe."""

    def __init__(self, write: Callable[[list[str], str], None]) -> None:
        self._write = write
        self._queue: queue.Queue[tuple[list[str], str] | None] = queue.Queue(maxsize=MAX_PENDING)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="ledger-seen", daemon=True)
        self._thread.start()

    def mark(self, urls: Sequence[str], run_id: str) -> None:
        """Hand `urls` over; raises at once if an earlier write failed."""
        self._raise()
        if urls:
            self._queue.put((list(urls), run_id))

    def flush(self) -> None:
        """Return once every URL handed over is written; raise the first write's failure."""
        self._queue.join()
        self._raise()

    def close(self) -> None:
        """Write what was handed over, then stop the thread (errors are `flush`'s to report)."""
        self._queue.put(None)
        self._thread.join(timeout=60)

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
            self._write(urls, run_id)
        except BaseException as exc:  # handed to the screening thread by mark and flush
            self._error = exc
