"""Named points where a test can kill the process for real, to prove runs resume without loss.

`ENCORD_INGEST_CRASH_AT=NAME` (or `NAME:N` for the N-th time the point is reached) makes the
process SIGKILL itself there, exactly as an OOM killer or a lost machine would. Unset, it costs
one dictionary lookup.
"""

from __future__ import annotations

import os
import signal
import threading

_lock = threading.Lock()
_hits: dict[str, int] = {}


def crash_point(name: str) -> None:
    spec = os.environ.get("ENCORD_INGEST_CRASH_AT")
    if not spec:
        return
    target, _, nth = spec.partition(":")
    if target != name:
        return
    with _lock:
        _hits[name] = _hits.get(name, 0) + 1
        if _hits[name] >= int(nth or 1):
            os.kill(os.getpid(), signal.SIGKILL)
