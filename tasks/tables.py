"""`table:URL` metadata: a CSV/JSONL/Parquet table joined to the listing without Python dicts per row.

The table is loaded once into an on-disk DuckDB database sorted by key, so a row's position is
its rank in key order. A batch of listed keys is contiguous in key order, so a sample of every
`stride`-th key, kept in memory, turns the batch's first and last key into a range of positions:
one query reads that range (pruned by DuckDB's zone maps), with no count query before it. The
sample is bounded (`MAX_SAMPLE` keys), whatever the table's size. A listing's next batches follow
in key order, so that query reads ahead: a window of rows reaching several batches beyond, kept
as Arrow columns, from which those batches are sliced without a query each (a DuckDB query costs
about 1 ms of fixed CPU, as much as converting the 1,000 rows it returns).
"""

from __future__ import annotations

import tempfile
import threading
from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from itertools import compress, repeat
from pathlib import Path
from typing import Any

import duckdb

from encord_ingest.errors import ConfigError
from tasks.schema import key_problem

KEY_COLUMN = "__key"
ROW_COLUMN = "__row"  # rank in key order from 0, where rowid is not (never seen)
MIN_STRIDE = 64  # rows per sampled key: a batch reads at most 2 * stride rows beyond its own
# Column types whose cells Arrow gives back as the very Python values DuckDB's own rows would hold
# (str, int, float, bool); a table with any other type is read row by row.
ARROW_SAFE = frozenset(
    ["VARCHAR", "BOOLEAN", "TINYINT", "SMALLINT", "INTEGER", "BIGINT", "UTINYINT", "USMALLINT", "UINTEGER",
     "UBIGINT", "FLOAT", "DOUBLE"]
)  # fmt: skip
READ_AHEAD = 8  # a window reads this many batch spans beyond the batch that missed it
MAX_WINDOWS = 4  # windows kept, most recent first: one per listing shard walking its part of the table
MAX_WINDOW_ROWS = 65_536  # a window reads at most this many rows beyond its batch's own
MAX_SAMPLE = 50_000  # sampled keys at most (a few MB); bigger tables sample every rows / MAX_SAMPLE-th key


@dataclass(slots=True)
class _Window:
    """Rows read ahead: sample span [start, stop] of the table, from row position `first` on."""

    start: int
    stop: int
    first: int
    data: Any  # a pyarrow Table, or a list of columns


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
        self.columns = [c for c in columns if c not in drop and c not in (KEY_COLUMN, ROW_COLUMN)]
        for column in self.columns:
            problem = key_problem(column)
            if problem:
                raise ConfigError(f"metadata table {self.label}: column {column!r}: {problem}")
        select = ", ".join(f'"{c}"' for c in self.columns)
        select = f", {select}" if select else ""
        source = (
            f"(SELECT {key_expr} AS {KEY_COLUMN}{select} FROM {reader}) "
            f"WHERE {KEY_COLUMN} IS NOT NULL AND {KEY_COLUMN} <> ''"
        )
        try:
            self._con.execute(f"CREATE TABLE meta AS SELECT * FROM {source} ORDER BY {KEY_COLUMN}")
            unordered = not self._stored_in_key_order()
            if unordered:  # the rank numbered explicitly: a window sort, about as long as the load again
                self._con.execute(
                    f"CREATE OR REPLACE TABLE meta AS SELECT row_number() OVER (ORDER BY {KEY_COLUMN}) - 1 AS "
                    f"{ROW_COLUMN}, * FROM {source} ORDER BY {KEY_COLUMN}"
                )
            self._order = ROW_COLUMN if unordered else "rowid"
        except duckdb.Error as exc:
            first = str(exc).splitlines()[0][:200]
            raise ConfigError(f"metadata table {self.label} cannot be loaded: {first}") from None
        self.rows = self._con.execute("SELECT count(*) FROM meta").fetchone()[0]
        stride = max(MIN_STRIDE, -(-self.rows // MAX_SAMPLE))
        position = self._order
        sample = self._con.execute(
            f"SELECT {position}, {KEY_COLUMN} FROM meta WHERE {position} % {stride} = 0 OR {position} = ? "
            f"ORDER BY {position}",
            [self.rows - 1],
        ).fetchall()
        self._sample_rows = [r for r, _ in sample]
        self._max_window_strides = max(1, MAX_WINDOW_ROWS // stride)
        self._windows: list[_Window] = []
        self._sample_keys = [k for _, k in sample]
        types = dict(self._con.execute("SELECT column_name, column_type FROM (DESCRIBE meta)").fetchall())
        self._by_arrow = all(types[c] in ARROW_SAFE for c in self.columns)
        self._select = ", ".join(f'"{c}"' for c in [KEY_COLUMN, *self.columns])

    def _stored_in_key_order(self) -> bool:
        """DuckDB stores a CREATE TABLE AS's rows in its ORDER BY's order, so a row's rowid is its
        rank by key; checked once per load (a fraction of it) rather than assumed."""
        unordered = self._con.execute(
            f"SELECT count(*) FROM (SELECT {KEY_COLUMN} AS k, lag({KEY_COLUMN}) OVER (ORDER BY rowid) AS p "
            "FROM meta) WHERE p > k"
        ).fetchone()[0]
        return not unordered

    def _span(self, lo: str, hi: str) -> tuple[int, int]:
        """Indices into the sample whose rows bound every row with a key in [lo, hi]: -1 and
        len(sample) stand for the table's first and last row."""
        i = bisect_left(self._sample_keys, lo) - 1  # a sampled key below lo: no row before it is wanted
        j = bisect_right(self._sample_keys, hi)  # a sampled key above hi: no row after it is wanted
        return i, j

    def _position(self, index: int) -> int:
        if index < 0:
            return 0
        return self._sample_rows[index] if index < len(self._sample_rows) else self.rows - 1

    def _window(self, i: int, j: int) -> _Window:
        """The cached window holding sample span (i, j), else a new one read from the table that
        reaches READ_AHEAD spans beyond it: the next batches of a listing walk on in key order."""
        for n, window in enumerate(self._windows):
            if window.start <= i and j <= window.stop:
                if n:
                    self._windows.insert(0, self._windows.pop(n))
                return window
        strides = max(1, j - i)
        stop = min(len(self._sample_rows), j + max(0, min(READ_AHEAD * strides, self._max_window_strides - strides)))
        first, last = self._position(i), self._position(stop)
        data = self._read(f"{self._order} BETWEEN ? AND ?", [first, last])
        window = _Window(i, stop, first, data)
        self._windows.insert(0, window)
        del self._windows[MAX_WINDOWS:]
        return window

    def _columns(self, keys: list[str], wanted: set[str]) -> list[list[Any]]:
        """Key column first, then the table's columns, for rows that may hold these keys."""
        i, j = self._span(min(keys), max(keys))
        first, last = self._position(i), self._position(j)
        if last - first >= 4 * len(wanted) + 1000:  # keys far apart in the table: only their rows
            with self._lock:
                data = self._read(f"{KEY_COLUMN} IN (SELECT unnest(?::VARCHAR[]))", [sorted(wanted)])
            return self._pylists(data, 0, None)
        with self._lock:
            window = self._window(i, j)
        return self._pylists(window.data, first - window.first, last - first + 1)

    def _read(self, where: str, params: list[Any]) -> Any:
        """The selected rows as an Arrow table (a column at a time: no Python tuple per row on the
        way) where the types allow, else as a list of columns; the caller holds the lock."""
        sql = f"SELECT {self._select} FROM meta WHERE {where}"
        if self._by_arrow:
            return self._con.sql(sql, params=params).to_arrow_table()
        return [list(c) for c in zip(*self._con.execute(sql, params).fetchall(), strict=True)]

    def _pylists(self, data: Any, offset: int, count: int | None) -> list[list[Any]]:
        """Python lists of `count` rows (all if None) from `offset` on, of what `_read` gave."""
        if self._by_arrow:
            return [c.to_pylist() for c in data.slice(offset, count).columns]
        return [c[offset : None if count is None else offset + count] for c in data]

    def lookup(self, keys: list[str]) -> dict[str, dict[str, Any] | DuplicateRows]:
        """Rows for these keys (absent keys are absent); NULL cells are left out."""
        if not keys or not self.rows:
            return {}
        wanted = set(keys)
        columns = self._columns(keys, wanted)
        if not columns:
            return {}
        names = self.columns
        keep = list(map(wanted.__contains__, columns[0]))
        hit_keys = list(compress(columns[0], keep))
        rows = list(compress(zip(*columns[1:], strict=True), keep)) if names else [()] * len(hit_keys)
        out: dict[str, dict[str, Any] | DuplicateRows]
        out = dict(zip(hit_keys, map(dict, map(zip, repeat(names), rows)), strict=True))
        if len(out) == len(hit_keys) and not any(None in column for column in columns[1:]):
            return out  # the common batch: one row per key, no NULL cells
        out = {}
        for key, row in zip(hit_keys, rows, strict=True):
            values = {n: v for n, v in zip(names, row, strict=True) if v is not None}
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
