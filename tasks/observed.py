"""What clientMetadata a run actually sent, per key, so schema verification can compare it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tasks.validate import type_name

MAX_VALUES = 256
MAX_LENGTHS = 16


@dataclass(slots=True)
class KeyStats:
    count: int = 0
    types: set[str] = field(default_factory=set)
    values: set[str] = field(default_factory=set)
    lengths: set[int] = field(default_factory=set)

    def add(self, value: Any, times: int = 1) -> None:
        self.count += times
        if type(value) is str:  # by far the most common: keep it cheap
            self.types.add("string")
            if len(self.values) < MAX_VALUES and len(value) <= 200:
                self.values.add(value)
            return
        kind = type_name(value)
        self.types.add(kind)
        if kind == "array" and len(self.lengths) < MAX_LENGTHS:
            self.lengths.add(len(value))

    def merge(self, other: KeyStats) -> None:
        self.count += other.count
        self.types |= other.types
        self.values |= set(list(other.values)[: max(0, MAX_VALUES - len(self.values))])
        self.lengths |= set(list(other.lengths)[: max(0, MAX_LENGTHS - len(self.lengths))])


@dataclass(slots=True)
class Observed:
    """Bounded per-key statistics: counts, JSON types, some string values and array lengths."""

    keys: dict[str, KeyStats] = field(default_factory=dict)

    def observe(self, metadata: dict[str, Any], times: int = 1) -> None:
        """`metadata` as sent by `times` items (callers count repeats of one dict once)."""
        for key, value in metadata.items():
            stats = self.keys.get(key)
            if stats is None:
                stats = self.keys[key] = KeyStats()
            stats.add(value, times)

    def merge(self, other: Observed) -> None:
        for key, stats in other.keys.items():
            mine = self.keys.get(key)
            if mine is None:
                self.keys[key] = KeyStats(stats.count, set(stats.types), set(stats.values), set(stats.lengths))
            else:
                mine.merge(stats)
