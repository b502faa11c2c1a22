"""`table:URL` metadata: a CSV/JSONL/Parquet table joined to the listing without Python dicts per row.

The table is loaded once into an on-disk DuckDB database sorted by key. A batch of listed keys
is contiguous in key order, so one range query (pruned by DuckDB's zone maps) returns its rows.
"""

from __future__ import annotations

import tempfile
import threading
from pathlib import Path
from typing import Any

import duckdb

from encord_ingest.errors import ConfigError
from tasks.schema import key_problem

KEY_COLUMN = "__key"


class DuplicateRows:
    """Marker for a key that has more than one row in the table."""

    def __init__(self, count: int) -> None:
        self.count = count


def _reader(path: Path) -> str:
    name = path.name.lower()
    quoted = "'" + str(path).replace("'", "''") + "'"
    if name.endswith((".csv", ".tsv", ".csv.gz", ".tsv.gz")):
        return f"read_csv({quoted}, header=true, all_varchar=true, auto_detect=true)"
    if name.endswith((".jsonl", ".ndjson", ".json", ".jsonl.gz", ".ndjson.gz")):
        return f"read_json({quoted}, format='newline_delimited')"
    if name.endswith(".parquet"):
        return f"read_parquet({quoted})"
    raise ConfigError(f"metadata table {path.name}: unknown format (use .csv, .tsv, .jsonl or .parquet)")


class MetadataTable:
    """Rows keyed by full object key; `lookup` is safe to call from several threads."""

    def __init__(self, path: Path, *, label: str, url_base: str = "") -> None:
        self.label = label
        self._dir = tempfile.TemporaryDirectory(prefix="encord-ingest-table-")
        self._con = duckdb.connect(str(Path(self._dir.name) / "table.duckdb"))
        self._con.execute("SET memory_limit='128MB'")  # spills to its temp directory beyond this
        self._con.execute("SET threads=2")
        self._con.execute(f"SET temp_directory='{self._dir.name}'")
        self._lock = threading.Lock()
        self._load(path, url_base)

    def _load(self, path: Path, url_base: str) -> None:
        reader = _reader(path)
        try:
            columns = [d[0] for d in self._con.execute(f"DESCRIBE SELECT * FROM {reader}").fetchall()]
        except duckdb.Error as exc:
            first = str(exc).splitlines()[0][:200]
            raise ConfigError(f"metadata table {self.label} cannot be read: {first}") from None
        if "key" in columns:
            key_expr = 'CAST("key" AS VARCHAR)'
            drop = ["key"]
        elif "url" in columns:
            base = url_base.replace("'", "''")
            key_expr = (
                f"CASE WHEN starts_with(CAST(\"url\" AS VARCHAR), '{base}') "
                f'THEN substr(CAST("url" AS VARCHAR), {len(url_base) + 1}) END'
            )
            drop = ["url"]
        else:
            raise ConfigError(f"metadata table {self.label} needs a 'key' or 'url' column; it has {columns}")
        self.columns = [c for c in columns if c not in drop and c != KEY_COLUMN]
        for column in self.columns:
            problem = key_problem(column)
            if problem:
                raise ConfigError(f"metadata table {self.label}: column {column!r}: {problem}")
        select = ", ".join(f'"{c}"' for c in self.columns)
        select = f", {select}" if select else ""
        try:
            self._con.execute(
                f"CREATE TABLE meta AS SELECT * FROM (SELECT {key_expr} AS {KEY_COLUMN}{select} FROM {reader}) "
                f"WHERE {KEY_COLUMN} IS NOT NULL AND {KEY_COLUMN} <> '' ORDER BY {KEY_COLUMN}"
            )
        except duckdb.Error as exc:
            first = str(exc).splitlines()[0][:200]
            raise ConfigError(f"metadata table {self.label} cannot be loaded: {first}") from None
        self.rows = self._con.execute("SELECT count(*) FROM meta").fetchone()[0]

    def lookup(self, keys: list[str]) -> dict[str, dict[str, Any] | DuplicateRows]:
        """Rows for these keys (absent keys are absent); NULL cells are left out."""
        if not keys:
            return {}
        wanted = set(keys)
        lo, hi = min(keys), max(keys)
        with self._lock:
            count = self._con.execute(
                f"SELECT count(*) FROM meta WHERE {KEY_COLUMN} BETWEEN ? AND ?", [lo, hi]
            ).fetchone()[0]
            if count <= 4 * len(wanted) + 1000:
                cur = self._con.execute(f"SELECT * FROM meta WHERE {KEY_COLUMN} BETWEEN ? AND ?", [lo, hi])
            else:
                cur = self._con.execute(
                    f"SELECT * FROM meta WHERE {KEY_COLUMN} IN (SELECT unnest(?::VARCHAR[]))", [sorted(wanted)]
                )
            names = [d[0] for d in cur.description]
            fetched = cur.fetchall()
        out: dict[str, dict[str, Any] | DuplicateRows] = {}
        for row in fetched:
            key = row[0]
            if key not in wanted:
                continue
            values = {n: v for n, v in zip(names[1:], row[1:], strict=True) if v is not None}
            previous = out.get(key)
            if previous is None:
                out[key] = values
            else:
                count = previous.count + 1 if isinstance(previous, DuplicateRows) else 2
                out[key] = DuplicateRows(count)
        return out

    def close(self) -> None:
        with self._lock:
            self._con.close()
        self._dir.cleanup()
