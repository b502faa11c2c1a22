"""The ledger: one row per source object, so re-runs import only what is new or changed.

SQLite by default, PostgreSQL with a postgresql:// URL; SQLAlchemy Core keeps one code path.
Every batch writes its rows in one transaction. Rows go `pending` (with the upload job id once
known) before a job starts, so a run killed at any point can be reconciled with Encord instead
of guessed at. A lease per source keeps two runs from registering the same objects at once.
"""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

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
    and_,
    create_engine,
    event,
    func,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from encord_ingest.crashpoints import crash_point
from encord_ingest.errors import ConfigError, LedgerLockedError
from integrations.ledger.seen import SeenWriter

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
    Column("last_seen", String(64), nullable=False, default=""),
    Column("group_key", String(255), nullable=False, default=""),
)

staged = Table(
    "staged",
    metadata,
    Column("url", Text, primary_key=True),
    Column("run_id", String(64), nullable=False),
    Column("group_key", String(255), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("key", Text, nullable=False),
    Column("sort_key", String(255), nullable=False),
    Column("fingerprint", String(64), nullable=False),
    Column("etag", String(200), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("status", String(16), nullable=False),
    Column("data_hash", String(64), nullable=False),
    Column("metadata", Text, nullable=False),
    Column("problem", Text, nullable=False),
)

runs = Table(
    "runs",
    metadata,
    Column("run_id", String(64), primary_key=True),
    Column("source", Text, nullable=False),
    Column("folder", Text, nullable=False, default=""),
    Column("started_at", String(40), nullable=False),
    Column("finished_at", String(40), nullable=True),
    Column("status", String(32), nullable=False),
    Column("summary", JSON, nullable=True),
)

leases = Table(
    "leases",
    metadata,
    Column("source", Text, primary_key=True),
    Column("run_id", String(64), nullable=False),
    Column("host", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("expires_at", String(40), nullable=False),
)

versions = Table("ledger_version", metadata, Column("version", Integer, primary_key=True))


class State:
    REGISTERED = "registered"
    SKIPPED = "skipped"
    FAILED = "failed"
    PENDING = "pending"
    DELETED = "deleted"


SETTLED = (State.REGISTERED, State.SKIPPED)  # at an unchanged fingerprint, nothing more to do


class Row(NamedTuple):
    """What a batch needs of an object's ledger row (a tuple: thousands are read per batch)."""

    url: str
    etag: str
    fingerprint: str
    metadata_hash: str
    data_hash: str
    state: str
    attempts: int
    transient: bool
    job_id: str
    group_key: str = ""
    kind: str = ""

    def done_at(self, fingerprint: str) -> bool:
        """Registered or skipped from exactly these inputs (`Ledger.settled` asks the same in SQL)."""
        return self.fingerprint == fingerprint and self.state in SETTLED

    @property
    def staged_member(self) -> bool:
        """A registered member of a grouped item: settled with its group after the listing."""
        return bool(self.group_key) and self.state == State.REGISTERED


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# -- versioned migrations: each step runs once, in order, inside one transaction ---------------
def _v1(conn: Connection) -> None:
    """The first shape: objects and runs."""
    conn.execute(
        text(
            "CREATE TABLE objects (url TEXT PRIMARY KEY, source TEXT NOT NULL, key TEXT NOT NULL, "
            "etag VARCHAR(200) NOT NULL, size BIGINT NOT NULL, fingerprint VARCHAR(64) NOT NULL, "
            "metadata_hash VARCHAR(64) NOT NULL, data_hash VARCHAR(64) NOT NULL, kind VARCHAR(32) NOT NULL, "
            "state VARCHAR(16) NOT NULL, attempts INTEGER NOT NULL, last_error TEXT NOT NULL, "
            "transient BOOLEAN NOT NULL, job_id VARCHAR(64) NOT NULL, run_id VARCHAR(64) NOT NULL, "
            "updated_at VARCHAR(40) NOT NULL)"
        )
    )
    conn.execute(text("CREATE INDEX ix_objects_source ON objects (source)"))
    conn.execute(text("CREATE INDEX ix_objects_state ON objects (state)"))
    conn.execute(
        text(
            "CREATE TABLE runs (run_id VARCHAR(64) PRIMARY KEY, source TEXT NOT NULL, folder TEXT NOT NULL, "
            "started_at VARCHAR(40) NOT NULL, finished_at VARCHAR(40), status VARCHAR(32) NOT NULL, summary JSON)"
        )
    )


def _v2(conn: Connection) -> None:
    """Deleted-object detection (last_seen) and per-source leases."""
    conn.execute(text("ALTER TABLE objects ADD COLUMN last_seen VARCHAR(64) NOT NULL DEFAULT ''"))
    conn.execute(text("CREATE INDEX ix_objects_source_seen ON objects (source, last_seen)"))
    metadata.create_all(conn, tables=[leases])


def _v3(conn: Connection) -> None:
    """Grouped items (DICOM series, image groups): members remember their group; a run stages them."""
    conn.execute(text("ALTER TABLE objects ADD COLUMN group_key VARCHAR(255) NOT NULL DEFAULT ''"))
    metadata.create_all(conn, tables=[staged])
    conn.execute(text("CREATE INDEX ix_staged_group ON staged (run_id, group_key, sort_key)"))


def _v4(conn: Connection) -> None:
    """Every run rewrites last_seen of every listed object; an index on it doubled the cost of
    that write and served no query (`unseen` asks for last_seen != run, which no index answers)."""
    conn.execute(text("DROP INDEX IF EXISTS ix_objects_source_seen"))


MIGRATIONS = [_v1, _v2, _v3, _v4]
SCHEMA_VERSION = len(MIGRATIONS)


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


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Ledger:
    """Thread-safe; each `record` call is one transaction (one per batch)."""

    def __init__(self, location: str = DEFAULT_LEDGER) -> None:
        url = engine_url(location)
        self.dialect = "postgresql" if url.startswith("postgresql") else "sqlite"
        kwargs: dict[str, Any] = {}
        if self.dialect == "sqlite":
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        else:
            kwargs["pool_pre_ping"] = True
        self.engine: Engine = create_engine(url, **kwargs)
        if self.dialect == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._write_lock = threading.Lock()
        self._seen: SeenWriter | None = None
        self._seen_lock = threading.Lock()
        try:
            self._migrate()
        except SQLAlchemyError as exc:
            raise ConfigError(f"ledger {self.describe()} cannot be opened: {exc.__class__.__name__}") from None
        self._json_each = self.dialect == "sqlite" and self._has_json_each()

    def _has_json_each(self) -> bool:
        """SQLite builds before 3.38 may lack the JSON functions; those take the IN lists."""
        try:
            with self.engine.connect() as conn:
                conn.exec_driver_sql("SELECT count(*) FROM json_each('[]')")
        except SQLAlchemyError:
            return False
        return True

    def describe(self) -> str:
        """The ledger's location without any password."""
        return self.engine.url.render_as_string(hide_password=True)

    def _migrate(self) -> None:
        with self.engine.begin() as conn:
            if self.dialect == "postgresql":  # one migrator at a time across processes
                conn.execute(text("SELECT pg_advisory_xact_lock(7305611)"))
            metadata.create_all(conn, tables=[versions])
            current = conn.execute(select(func.max(versions.c.version))).scalar() or 0
            if current > SCHEMA_VERSION:
                raise ConfigError(f"ledger schema v{current} is newer than this encord-ingest (v{SCHEMA_VERSION})")
            for version in range(current + 1, SCHEMA_VERSION + 1):
                MIGRATIONS[version - 1](conn)
                conn.execute(versions.insert().values(version=version))

    @property
    def version(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.max(versions.c.version))).scalar() or 0)

    def _insert(self, table: Table) -> Any:
        return (pg_insert if self.dialect == "postgresql" else sqlite_insert)(table)

    # -- objects ----------------------------------------------------------------------------
    def lookup(self, urls: Sequence[str]) -> dict[str, Row]:
        if not urls:
            return {}
        c = objects.c
        cols = (
            c.url, c.etag, c.fingerprint, c.metadata_hash, c.data_hash, c.state, c.attempts, c.transient, c.job_id,
            c.group_key, c.kind,
        )  # fmt: skip
        with self.engine.connect() as conn:
            found = self._in_url_range(conn, [col.name for col in cols], "", (), urls)
            if found is not None:
                return {t[0]: Row(*t[:7], bool(t[7]), *t[8:]) for t in found}
            result = conn.execute(select(*cols).where(c.url.in_(list(urls))))
            return {t[0]: Row(*t) for t in result.tuples()}  # plain tuples: no per-row mapping access

    def settled(self, urls: Sequence[str]) -> set[tuple[str, str]]:
        """(url, fingerprint) of the rows among `urls` that need nothing more at that fingerprint.

        That is `Row.done_at` and not `Row.staged_member`, asked in SQL: a no-change re-run asks
        this for every listed object, so it reads two columns of the rows that qualify instead of
        whole `Row`s.
        """
        if not urls:
            return set()
        c = objects.c
        with self.engine.connect() as conn:
            # `+state` keeps SQLite's planner on the primary key instead of the index on state (15x slower)
            found = self._in_url_range(
                conn,
                ["url", "fingerprint"],
                f"AND +state IN ({', '.join('?' * len(SETTLED))}) AND NOT (group_key != '' AND +state = ?)",
                (*SETTLED, State.REGISTERED),
                urls,
            )
            if found is not None:
                return set(found)
            q = select(c.url, c.fingerprint).where(
                c.url.in_(list(urls)),
                c.state.in_(SETTLED),
                ~and_(c.group_key != "", c.state == State.REGISTERED),
            )
            return set(conn.execute(q).tuples())

    def _in_url_range(
        self, conn: Connection, columns: Sequence[str], where: str, params: tuple[Any, ...], urls: Sequence[str]
    ) -> list[tuple[Any, ...]] | None:
        """Rows of `urls` (first column: url) by one range scan of the primary key, or None when
        the caller should ask with an IN list instead.

        A batch is mostly one key range: one range scan instead of a 1,000-parameter IN. SQLite
        compares text bytewise, as min/max do here (PostgreSQL's collation may not, so it keeps the
        IN). Too many rows in between: the IN after all. The rows come back as one JSON array per
        column, in one step of SQLite: the DB-API's step per row gives up the GIL each time, and
        while the listing's threads keep it busy, each row waits up to a switch interval (5 ms) to
        get it back - 1,000 rows behind a busy thread took 200 ms instead of 1 ms.
        """
        if self.dialect != "sqlite" or len(urls) <= 16:
            return None
        limit = 4 * len(urls) + 64
        rows = f"SELECT {', '.join(columns)} FROM objects WHERE url >= ? AND url <= ? {where} LIMIT ?"
        args = (min(urls), max(urls), *params, limit)
        cursor = conn.connection.cursor()
        try:
            if self._json_each:
                arrays = ", ".join(f"json_group_array({c})" for c in columns)
                cursor.execute(f"SELECT count(*), {arrays} FROM ({rows})", args)
                count, *texts = cursor.fetchone()
                found: list[tuple[Any, ...]] = list(zip(*map(json.loads, texts), strict=True)) if count else []
            else:
                cursor.execute(rows, args)
                found = cursor.fetchall()
                count = len(found)
        finally:
            cursor.close()
        if count >= limit:
            return None
        wanted = set(urls)
        return [t for t in found if t[0] in wanted]

    def record(self, rows: Iterable[dict[str, Any]], *, seen: Sequence[str] = (), run_id: str = "") -> None:
        """Upsert rows and mark `seen` URLs as listed by `run_id`, in one transaction."""
        rows = list(rows)
        stamp = now()
        columns = [c.name for c in objects.columns]
        defaults = {c.name: c.default.arg for c in objects.columns if c.default is not None}
        full = []
        for row in rows:
            values = {name: row.get(name, defaults.get(name)) for name in columns}
            values["updated_at"] = row.get("updated_at") or stamp
            if run_id and not row.get("last_seen"):
                values["last_seen"] = run_id
            full.append(values)
        with self._write_lock, self.engine.begin() as conn:
            if full:
                stmt = self._insert(objects)
                updatable = {c.name: stmt.excluded[c.name] for c in objects.columns if c.name != "url"}
                conn.execute(stmt.on_conflict_do_update(index_elements=[objects.c.url], set_=updatable), full)
                crash_point("ledger-write")
            written = {r["url"] for r in full}
            rest = [u for u in seen if u not in written]
            for i in range(0, len(rest), 5000):
                chunk = rest[i : i + 5000]
                if self._json_each:  # one parameter instead of thousands to bind and compile
                    conn.exec_driver_sql(
                        "UPDATE objects SET last_seen = ? WHERE url IN (SELECT value FROM json_each(?))",
                        (run_id, json.dumps(chunk)),
                    )
                else:
                    conn.execute(update(objects).where(objects.c.url.in_(chunk)).values(last_seen=run_id))

    def mark_seen(self, urls: Sequence[str], run_id: str) -> None:
        """`record([], seen=urls, run_id=run_id)` on a writer thread; `flush_seen` waits for it."""
        with self._seen_lock:
            if self._seen is None:
                self._seen = SeenWriter(lambda batch, run: self.record([], seen=batch, run_id=run))
        self._seen.mark(urls, run_id)

    def flush_seen(self) -> None:
        """Every `mark_seen` so far is written (or its failure raised here)."""
        if self._seen is not None:
            self._seen.flush()

    def set_job(self, urls: Sequence[str], job_id: str) -> None:
        """Remember which upload job carries these pending rows (the reconciliation handle)."""
        with self._write_lock, self.engine.begin() as conn:
            for i in range(0, len(urls), 5000):
                conn.execute(
                    update(objects)
                    .where(objects.c.url.in_(list(urls[i : i + 5000])))
                    .values(job_id=job_id, updated_at=now())
                )

    def _pages(self, q: Any, chunk: int) -> Iterator[list[dict[str, Any]]]:
        """Rows of `q` (which selects `url`) in URL order, a page at a time, never all at once."""
        last = ""
        while True:
            with self.engine.connect() as conn:
                page = [dict(r._mapping) for r in conn.execute(q.where(objects.c.url > last).limit(chunk))]
            if not page:
                return
            yield page
            last = page[-1]["url"]

    def unseen(self, source: str, run_id: str, chunk: int = 2000) -> Iterator[list[dict[str, Any]]]:
        """Rows of `source` that `run_id` did not list and that are not already marked deleted."""
        c = objects.c
        q = (
            select(c.url, c.key, c.data_hash, c.state)
            .where(and_(c.source == source, c.last_seen != run_id, c.state != State.DELETED))
            .order_by(c.url)
        )
        return self._pages(q, chunk)

    def mark_deleted(self, urls: Sequence[str], run_id: str) -> None:
        with self._write_lock, self.engine.begin() as conn:
            for i in range(0, len(urls), 5000):
                conn.execute(
                    update(objects)
                    .where(objects.c.url.in_(list(urls[i : i + 5000])))
                    .values(state=State.DELETED, run_id=run_id, updated_at=now(), last_error="deleted at the source")
                )

    # -- staging of grouped items ----------------------------------------------------------
    def stage(self, rows: Sequence[dict[str, Any]]) -> None:
        """Group members as this run saw them (one row per file, kept across runs)."""
        if not rows:
            return
        stmt = self._insert(staged)
        updatable = {c.name: stmt.excluded[c.name] for c in staged.columns if c.name != "url"}
        with self._write_lock, self.engine.begin() as conn:
            conn.execute(stmt.on_conflict_do_update(index_elements=[staged.c.url], set_=updatable), list(rows))

    def touch_staged(self, urls: Sequence[str], run_id: str) -> None:
        """Unchanged members join this run's groups without being read again."""
        if not urls:
            return
        with self._write_lock, self.engine.begin() as conn:
            for i in range(0, len(urls), 5000):
                conn.execute(
                    update(staged)
                    .where(staged.c.url.in_(list(urls[i : i + 5000])))
                    .values(run_id=run_id, status="unchanged")
                )

    def set_staged_hash(self, urls: Sequence[str], data_hash: str) -> None:
        with self._write_lock, self.engine.begin() as conn:
            for i in range(0, len(urls), 5000):
                conn.execute(
                    update(staged).where(staged.c.url.in_(list(urls[i : i + 5000]))).values(data_hash=data_hash)
                )

    def staged_groups(
        self, run_id: str, *, whole: bool = False, chunk: int = 1000
    ) -> Iterator[tuple[str, str, list[dict[str, Any]]]]:
        """(group_key, kind, members in order) for every group this run staged, streaming.

        With `whole`, a group includes members staged by earlier runs too: a run that saw only
        some files (event-driven keys, dead-letter retries) must not register a partial group.
        """
        c = staged.c
        last: tuple[str, str] = ("", "")
        while True:
            q = (
                select(c.group_key, c.kind)
                .where(c.run_id == run_id)
                .where((c.group_key > last[0]) | and_(c.group_key == last[0], c.kind > last[1]))
                .group_by(c.group_key, c.kind)
                .order_by(c.group_key, c.kind)
                .limit(chunk)
            )
            with self.engine.connect() as conn:
                keys = [(r.group_key, r.kind) for r in conn.execute(q)]
                for group_key, kind in keys:
                    members_q = select(staged).where(and_(c.group_key == group_key, c.kind == kind))
                    if not whole:
                        members_q = members_q.where(c.run_id == run_id)
                    rows = conn.execute(members_q.order_by(c.sort_key, c.url))
                    yield group_key, kind, [dict(r._mapping) for r in rows]
            if len(keys) < chunk:
                return
            last = keys[-1]

    def failed(self, source: str, chunk: int = 1000) -> Iterator[list[dict[str, Any]]]:
        """Dead-lettered rows of a source, for `--retry-dead-letters`."""
        c = objects.c
        q = select(c.url, c.key).where(and_(c.source == source, c.state == State.FAILED)).order_by(c.url)
        return self._pages(q, chunk)

    # -- runs -------------------------------------------------------------------------------
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

    # -- leases -----------------------------------------------------------------------------
    def acquire(self, source: str, run_id: str, ttl: float = 120.0) -> None:
        """Take the source's lease, or raise LedgerLockedError naming the holder.

        A lease is free when it expired, or when its holder was a process on this host that is gone
        (a killed run need not wait for the expiry).
        """
        host = socket.gethostname()
        expires = (datetime.now(UTC) + timedelta(seconds=ttl)).isoformat(timespec="seconds")
        mine = {"source": source, "run_id": run_id, "host": host, "pid": os.getpid(), "expires_at": expires}
        with self._write_lock, self.engine.begin() as conn:
            held = conn.execute(select(leases).where(leases.c.source == source)).first()
            if held is not None:
                stale = held.expires_at < now() or (held.host == host and not _pid_alive(held.pid))
                if not stale and held.run_id != run_id:
                    raise LedgerLockedError(
                        f"another run ({held.run_id}, pid {held.pid} on {held.host}) is ingesting {source}; "
                        f"its lease lasts until {held.expires_at} - wait for it or stop it"
                    )
                conn.execute(
                    update(leases).where(and_(leases.c.source == source, leases.c.run_id == held.run_id)).values(**mine)
                )
                return
            try:
                conn.execute(leases.insert().values(**mine))
            except IntegrityError:
                raise LedgerLockedError(f"another run took the lease on {source} at the same moment") from None

    def renew(self, source: str, run_id: str, ttl: float = 120.0) -> None:
        expires = (datetime.now(UTC) + timedelta(seconds=ttl)).isoformat(timespec="seconds")
        with self._write_lock, self.engine.begin() as conn:
            conn.execute(
                update(leases)
                .where(and_(leases.c.source == source, leases.c.run_id == run_id))
                .values(expires_at=expires)
            )

    def release(self, source: str, run_id: str) -> None:
        with self._write_lock, self.engine.begin() as conn:
            conn.execute(leases.delete().where(and_(leases.c.source == source, leases.c.run_id == run_id)))

    @contextmanager
    def lease(self, source: str, run_id: str, ttl: float = 120.0) -> Iterator[None]:
        """Hold the source's lease for the block, renewing it from a background thread."""
        self.acquire(source, run_id, ttl)
        stop = threading.Event()

        def renew() -> None:
            while not stop.wait(ttl / 4):
                with suppress(SQLAlchemyError):  # the next renewal tries again; expiry is the safety net
                    self.renew(source, run_id, ttl)

        thread = threading.Thread(target=renew, name="ledger-lease", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(timeout=5)
            # no seen mark may land once another run holds the source (a failed one was the run's to report)
            with suppress(Exception):
                self.flush_seen()
            self.release(source, run_id)

    # -- reporting --------------------------------------------------------------------------
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
        if self._seen is not None:
            self._seen.close()
        self.engine.dispose()


class ScratchLedger(Ledger):
    """A run-private SQLite ledger for staging group members, opened on first use.

    Runs that record nothing still stage grouped items (DICOM series, image groups) somewhere;
    most never meet one, and opening and migrating the file would cost them ~20 ms for nothing.
    """

    def __init__(self, path: str) -> None:  # deliberately not Ledger.__init__: nothing is opened yet
        self._path = path
        self._real: Ledger | None = None
        self.dialect = "sqlite"
        self._write_lock = threading.Lock()
        self._seen = None
        self._seen_lock = threading.Lock()

    def _opened(self) -> Ledger:
        if self._real is None:
            self._real = Ledger(self._path)
        return self._real

    @property  # type: ignore[override]
    def engine(self) -> Engine:
        return self._opened().engine

    def stage(self, rows: Sequence[dict[str, Any]]) -> None:
        if rows:
            super().stage(rows)

    def staged_groups(
        self, run_id: str, *, whole: bool = False, chunk: int = 1000
    ) -> Iterator[tuple[str, str, list[dict[str, Any]]]]:
        if self._real is None:  # nothing was ever staged
            return iter(())
        return super().staged_groups(run_id, whole=whole, chunk=chunk)

    def close(self) -> None:
        if self._real is not None:
            self._real.close()
