"""Encord's rate limits, shared by every worker through Prefect global concurrency limits.

Twenty workers each retrying 429s on their own still overload the API; a limit on the Prefect
server is one budget for all of them. Opt-in, so runs without such limits never talk to Prefect
for this: `ENCORD_INGEST_API_RATE_LIMIT` names a limit with slot decay that every SDK call
(each attempt, retries included) takes a token from; `ENCORD_INGEST_API_CONCURRENCY` names a
limit that upload-job starts and polls hold a slot of. Each name is checked once per process;
a missing one is reported once and ignored. `ensure_limits` creates them (deployments/bootstrap.py).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import TypeVar

log = logging.getLogger("encord_ingest.encord")

RATE_ENV = "ENCORD_INGEST_API_RATE_LIMIT"
CONCURRENCY_ENV = "ENCORD_INGEST_API_CONCURRENCY"
DEFAULT_RATE_NAME = "encord-api-rps"
DEFAULT_CONCURRENCY_NAME = "encord-api"
T = TypeVar("T")

_checked: dict[str, bool] = {}
_lock = threading.Lock()


def _usable(name: str, *, needs_decay: bool) -> bool:
    """Whether the limit exists on the Prefect server (asked once per process and name)."""
    with _lock:
        if name in _checked:
            return _checked[name]
        from prefect.client.orchestration import get_client
        from prefect.exceptions import ObjectNotFound
        from prefect.settings import PREFECT_API_URL

        ok = False
        try:
            if not PREFECT_API_URL.value():
                log.warning("Encord API limit %r ignored: PREFECT_API_URL is not set", name)
            else:
                with get_client(sync_client=True) as client:
                    limit = client.read_global_concurrency_limit_by_name(name)
                if needs_decay and not limit.slot_decay_per_second:
                    log.warning("Encord API limit %r ignored: it has no slot decay, so it is no rate", name)
                else:
                    ok = True
        except ObjectNotFound:
            log.warning("Encord API limit %r does not exist on the Prefect server: not throttling on it", name)
        except Exception as exc:  # never fail a run over an optional limit
            log.warning("Encord API limit %r unavailable (%s): not throttling on it", name, exc.__class__.__name__)
        _checked[name] = ok
        return ok


def throttled(fn: Callable[[], T], *, hold: bool = False) -> Callable[[], T]:
    """`fn` under the configured limits: a rate token per call, a concurrency slot when `hold`."""
    rate = os.environ.get(RATE_ENV, "").strip()
    slots = os.environ.get(CONCURRENCY_ENV, "").strip() if hold else ""
    if not rate and not slots:
        return fn

    def run() -> T:
        from prefect.concurrency.sync import concurrency, rate_limit

        if rate and _usable(rate, needs_decay=True):
            rate_limit(rate, occupy=1)
        if slots and _usable(slots, needs_decay=False):
            with concurrency(slots, occupy=1):
                return fn()
        return fn()

    return run


def ensure_limits(
    *,
    rate: float,
    concurrency: int,
    rate_name: str = DEFAULT_RATE_NAME,
    concurrency_name: str = DEFAULT_CONCURRENCY_NAME,
) -> list[str]:
    """Create or update both limits: `rate` calls per second (burst of one second), `concurrency` jobs."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, GlobalConcurrencyLimitUpdate
    from prefect.exceptions import ObjectNotFound

    wanted = [
        (rate_name, max(1, round(rate)), float(rate)),
        (concurrency_name, max(1, concurrency), 0.0),
    ]
    done: list[str] = []
    with get_client(sync_client=True) as client:
        for name, limit, decay in wanted:
            try:
                client.read_global_concurrency_limit_by_name(name)
                client.update_global_concurrency_limit(
                    name, GlobalConcurrencyLimitUpdate(limit=limit, slot_decay_per_second=decay, active=True)
                )
                done.append(f"updated global concurrency limit {name} (limit {limit}, decay {decay})")
            except ObjectNotFound:
                client.create_global_concurrency_limit(
                    GlobalConcurrencyLimitCreate(name=name, limit=limit, slot_decay_per_second=decay)
                )
                done.append(f"created global concurrency limit {name} (limit {limit}, decay {decay})")
    return done
