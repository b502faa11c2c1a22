"""The ledger: one row per source object, so re-runs import only what is new or changed.

SQLite by default, PostgreSQL with a postgresql:// URL; SQLAlchemy Core keeps one code path.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
    func,
    select,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from encord_ingest.errors import ConfigError

DEFAULT_LEDGER = ".encord-ingest/ledger.db"

metadata = MetaData()

objects = Table(
    "objects",
    metadata,
    Column("url", Text, primary_key=True),
    Column("source", Text, nullable=False, index=True),
    Column("key", Text, nullable=False),
    Column("etag", String(200), nullable=False, default=""),
    Column("size", BigInteger, nullable=False, default=0),
    Column("fingerprint", String(64), nullable=False, default=""),
    Column("metadata_hash", String(64), nullable=False, default=""),
    Column("data_hash", String(64), nullable=False, default=""),
    Column("kind", String(32), nullable=False, default=""),
    Column("state", String(16), nullable=False, index=True),
    Column("attempts", Integer, nullable=False, default=0),
    Column("last_error", Text, nullable=False, default=""),
    Column("transient", Boolean, nullable=False, default=False),
    Column("job_id", String(64), nullable=False, default=""),
    Column("run_id", String(64), nullable=False, default=""),
    Column("updated_at", String(40), nullable=False),
)

runs = Table(
    "runs",
    metadata,
    Column("run_id", String(64), primary_key=True),
    Column("source", Text, nullable=False),
    Column("folder", Text, nullable=False, default=""),
    Column("started_at", String(40), nullable=False),
    Column("finished_at", String(40), nullable=True),
    Column("status", String(16), nullable=False),
    Column("summary", JSON, nullable=True),
)

versions = Table("ledger_version", metadata, Column("version", Integer, primary_key=True))

SCHEMA_VERSION = 1


class State:
    REGISTERED = "registered"
    SKIPPED = "skipped"
    FAILED = "failed"


@dataclass(slots=True, frozen=True)
class Row:
    url: str
    etag: str
    fingerprint: str
    metadata_hash: str
    data_hash: str
    state: str
    attempts: int
    transient: bool


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def engine_url(location: str) -> str:
    if location.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg://" + location.split("://", 1)[1]
    if location.startswith(("postgresql+", "sqlite:")):
        return location
    if "://" in location:
        raise ConfigError(f"--ledger {location.split('://', 1)[0]}://...: use a file path or postgresql://")
    Path(location).expanduser().parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{Path(location).expanduser()}"


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cur = dbapi_connection.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


class Ledger:
    """Thread-safe; each `record` call is one transaction (one per batch)."""

    def __init__(self, location: str = DEFAULT_LEDGER) -> None:
        url = engine_url(location)
        self.dialect = "postgresql" if url.startswith("postgresql") else "sqlite"
        kwargs: dict[str, Any] = {"future": True}
        if self.dialect == "sqlite":
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        else:
            kwargs["pool_pre_ping"] = True
        self.engine: Engine = create_engine(url, **kwargs)
        if self.dialect == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._write_lock = threading.Lock()
        try:
            self._migrate()
        except SQLAlchemyError as exc:
            raise ConfigError(f"ledger {self.describe()} cannot be opened: {exc.__class__.__name__}") from None

    def describe(self) -> str:
        """The ledger's location without any password."""
        return self.engine.url.render_as_string(hide_password=True)

    def _migrate(self) -> None:
        with self.engine.begin() as conn:
            metadata.create_all(conn, tables=[versions])
            current = conn.execute(select(func.max(versions.c.version))).scalar() or 0
            if current > SCHEMA_VERSION:
                raise ConfigError(f"ledger schema v{current} is newer than this encord-ingest (v{SCHEMA_VERSION})")
            if current < 1:
                metadata.create_all(conn, tables=[objects, runs])
                conn.execute(versions.insert().values(version=1))

    def _insert(self, table: Table) -> Any:
        return (pg_insert if self.dialect == "postgresql" else sqlite_insert)(table)

    def lookup(self, urls: Sequence[str]) -> dict[str, Row]:
        if not urls:
            return {}
        c = objects.c
        cols = (c.url, c.etag, c.fingerprint, c.metadata_hash, c.data_hash, c.state, c.attempts, c.transient)
        with self.engine.connect() as conn:
            result = conn.execute(select(*cols).where(c.url.in_(list(urls))))
            return {r.url: Row(*r) for r in result}

    def record(self, rows: Iterable[dict[str, Any]]) -> None:
        rows = list(rows)
        if not rows:
            return
        stamp = now()
        for row in rows:
            row.setdefault("updated_at", stamp)
        stmt = self._insert(objects)
        updatable = {c.name: stmt.excluded[c.name] for c in objects.columns if c.name != "url"}
        stmt = stmt.on_conflict_do_update(index_elements=[objects.c.url], set_=updatable)
        columns = [c.name for c in objects.columns]
        defaults = {c.name: c.default.arg for c in objects.columns if c.default is not None}
        full = [{name: row.get(name, defaults.get(name)) for name in columns} for row in rows]
        with self._write_lock, self.engine.begin() as conn:
            conn.execute(stmt, full)

    def start_run(self, run_id: str, source: str, folder: str) -> None:
        with self._write_lock, self.engine.begin() as conn:
            conn.execute(
                runs.insert().values(run_id=run_id, source=source, folder=folder, started_at=now(), status="running")
            )

    def finish_run(self, run_id: str, status: str, summary: dict[str, Any]) -> None:
        with self._write_lock, self.engine.begin() as conn:
            conn.execute(
                runs.update().where(runs.c.run_id == run_id).values(finished_at=now(), status=status, summary=summary)
            )

    def counts_by_state(self, source: str | None = None) -> dict[str, int]:
        q = select(objects.c.state, func.count()).group_by(objects.c.state)
        if source:
            q = q.where(objects.c.source == source)
        with self.engine.connect() as conn:
            return {state: n for state, n in conn.execute(q)}

    def recent_runs(self, limit: int = 10) -> list[dict[str, Any]]:
        q = select(runs).order_by(runs.c.started_at.desc()).limit(limit)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(q)]

    def dead_letters(self, limit: int = 20, source: str | None = None) -> list[dict[str, Any]]:
        c = objects.c
        q = select(c.url, c.last_error, c.attempts, c.run_id, c.updated_at).where(c.state == State.FAILED)
        if source:
            q = q.where(c.source == source)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(q.order_by(c.updated_at.desc()).limit(limit))]

    def close(self) -> None:
        self.engine.dispose()
