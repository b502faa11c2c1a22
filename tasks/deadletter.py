"""Dead letters: one JSON line per object that could not be registered, with the rule it broke."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

from encord_ingest.models import Rejection


class DeadLetters:
    """Append-only JSONL, created on the first letter so a clean run leaves no file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.count = 0
        self.sample: list[dict] = []
        self._lock = threading.Lock()

    def write(self, rejections: Iterable[Rejection]) -> None:
        lines = []
        stamp = datetime.now(UTC).isoformat(timespec="seconds")
        for r in rejections:
            record = {**r.as_dict(), "at": stamp}
            lines.append(json.dumps(record, ensure_ascii=False))
            if len(self.sample) < 50:
                self.sample.append(record)
        if not lines:
            return
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as fh:
                fh.write("\n".join(lines) + "\n")
            self.count += len(lines)

    @property
    def location(self) -> str | None:
        return str(self.path) if self.count else None
