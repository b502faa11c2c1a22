"""Seedable fault injection: request-level faults for /v2/public/* and per-item faults inside upload jobs."""

from __future__ import annotations

import random
import threading
from collections import Counter

from .config import ITEM_FAULT_KIND, REQUEST_FAULT_KINDS, FaultConfig

TRANSIENT_ITEM_ERROR = "Transient error while processing the item (emulated fault); retrying may succeed."


class FaultInjector:
    """Decides faults with one RNG under a lock so a seed reproduces the same sequence of decisions."""

    def __init__(self, config: FaultConfig) -> None:
        self._lock = threading.Lock()
        self._config = config
        self._rng = random.Random(config.seed)
        self._injected: Counter[str] = Counter()

    @property
    def config(self) -> FaultConfig:
        with self._lock:
            return self._config

    def replace(self, config: FaultConfig) -> None:
        """Swap in a new config, restart the RNG from its seed and the counters (max_faults is per config)."""
        with self._lock:
            self._config = config
            self._rng = random.Random(config.seed)
            self._injected.clear()

    def injected(self) -> dict[str, int]:
        with self._lock:
            return dict(self._injected)

    def _budget_left(self) -> bool:
        limit = self._config.max_faults
        return limit is None or sum(self._injected.values()) < limit

    def request_fault(self) -> str | None:
        """Return the request-level fault kind to inject for this request, or None."""
        with self._lock:
            kinds = sorted(k for k in self._config.kinds if k in REQUEST_FAULT_KINDS)
            if not kinds or self._config.rate <= 0 or not self._budget_left():
                return None
            if self._rng.random() >= self._config.rate:
                return None
            kind = self._rng.choice(kinds)
            self._injected[kind] += 1
            return kind

    def item_fault(self) -> bool:
        """True when this upload item should fail with a transient error."""
        with self._lock:
            if ITEM_FAULT_KIND not in self._config.kinds or self._config.rate <= 0 or not self._budget_left():
                return False
            if self._rng.random() >= self._config.rate:
                return False
            self._injected[ITEM_FAULT_KIND] += 1
            return True
