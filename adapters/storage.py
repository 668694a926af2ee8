"""Database URL -> the eventsourcing recorders the ledger runs on, SQLite or PostgreSQL.

One ``Database`` interface, two implementations; everything above this module is
the same code for both. The event log is the eventsourcing library's application
sequence (``stored_events``); projection positions are its tracking table; the
projections' own tables live beside them so that a page of views and its
tracking position commit in one transaction.

URLs: a plain path or ``sqlite:///path`` is a SQLite file (created 0600, WAL);
``postgresql://user[:password]@host[:port]/dbname`` is PostgreSQL (the database
is created on first use when the server allows it).
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import sqlite3
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from eventsourcing.persistence import (
    IntegrityError,
    Notification,
    PersistenceError,
    StoredEvent,
    Tracking,
)

SQLITE_LOCK_TIMEOUT_S = 60
#: SQLSTATEs of a server shutting down, crashed, or still starting: worth waiting for.
_SERVER_GOING_AWAY = {"57P01", "57P02", "57P03"}
#: The advisory lock that serialises table creation between processes (PostgreSQL).
SCHEMA_LOCK_KEY = 0x6C6564676572  # "ledger"


class DatabaseURLError(ValueError):
    """A database URL this ledger cannot use."""


class DatabaseUnavailable(RuntimeError):
    """The database could not be opened or reached."""


@dataclass(frozen=True)
class DatabaseURL:
    kind: str  # "sqlite" | "postgresql"
    path: str = ""
    host: str = ""
    port: int = 5432
    user: str = ""
    password: str = ""
    dbname: str = ""

    def redacted(self) -> str:
        """The URL without its password, fit for messages and logs."""
        if self.kind == "sqlite":
            return self.path
        return f"postgresql://{self.user}@{self.host}:{self.port}/{self.dbname}"


def parse_url(url: str) -> DatabaseURL:
    text = url.strip()
    if not text:
        raise DatabaseURLError("empty database URL")
    if text.startswith(("postgresql://", "postgres://")):
        parts = urlsplit(text)
        dbname = parts.path.lstrip("/")
        if not parts.hostname or not dbname:
            raise DatabaseURLError(
                "a PostgreSQL URL needs a host and a database: postgresql://user@host:5432/dbname"
            )
        try:
            port = parts.port or 5432
        except ValueError as exc:
            raise DatabaseURLError("invalid port in the PostgreSQL URL") from exc
        return DatabaseURL(
            kind="postgresql",
            host=parts.hostname,
            port=port,
            user=unquote(parts.username or "postgres"),
            password=unquote(parts.password or ""),
            dbname=unquote(dbname),
        )
    if text.startswith("sqlite://"):
        path = text[len("sqlite://") :]
        # sqlite:///relative.sqlite and sqlite:////absolute/path.sqlite, as SQLAlchemy reads them.
        if path.startswith("/"):
            path = path[1:]
        if not path:
            raise DatabaseURLError("a SQLite URL needs a file: sqlite:///path/to/ledger.sqlite")
        return DatabaseURL(kind="sqlite", path=path)
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", text):
        scheme = text.split("://", 1)[0]
        raise DatabaseURLError(
            f"unsupported database scheme {scheme!r}: use a file path, sqlite:/// or postgresql://"
        )
    return DatabaseURL(kind="sqlite", path=text)


#: The fewest rows ``SqlCursor.insert_rows`` sends by ``COPY`` (a live batch's few go faster as
#: one pipelined ``executemany``: ``COPY`` waits for the server's go-ahead first).
COPY_FROM_ROWS = 100


#: ``rows_where_in`` on PostgreSQL plans a query of this many values or fewer afresh each run.
UNPREPARED_MAX_VALUES = 100


class SqlCursor:
    """A cursor that speaks one dialect of parameters (``?``) and returns tuples."""

    def __init__(self, raw: Any, paramstyle: str) -> None:
        self.raw = raw
        self._pg = paramstyle == "format"

    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s") if self._pg else sql

    def execute(self, sql: str, params: Sequence[Any] = (), *, binary: bool = False) -> None:
        """``binary``: PostgreSQL sends the results in binary (a bytea arrives as its bytes,
        not as hex text to decode); SQLite has one form only."""
        if binary and self._pg:
            self.raw.execute(self._sql(sql), params, binary=True)
        else:
            self.raw.execute(self._sql(sql), params)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            self.raw.executemany(self._sql(sql), rows)

    def rows_where_in(
        self, select: str, column: str, values: Sequence[Any]
    ) -> list[tuple[Any, ...]]:
        """The rows of ``select`` (a query with no WHERE) whose ``column`` is one of
        ``values``: on PostgreSQL one query, the values sent as one binary array; on
        SQLite in chunks of 500 ``?`` marks."""
        if not values:
            return []
        if self._pg:
            # A few values are never prepared: psycopg prepares a query run often, and
            # PostgreSQL may then keep a generic plan made while the table was small (a
            # sequential scan) for as long as no ANALYZE changes its statistics, which
            # without autovacuum is for ever; the booked-fills query of a live session, a
            # few ids a batch, then scanned a growing table every batch. (Many values, a page
            # of a replay, measured no worse prepared, and planning them costs more.)
            # bandit B608: ``select`` and ``column`` are the caller's constants.
            self.raw.execute(
                f"{select} WHERE {column} = ANY(%b)",  # nosec B608
                (list(values),),
                prepare=False if len(values) <= UNPREPARED_MAX_VALUES else None,
            )
            return self.fetchall()
        rows: list[tuple[Any, ...]] = []
        for chunk in _chunks(list(values), 500):
            marks = ",".join("?" * len(chunk))
            # bandit B608: as above; the values are bound parameters.
            self.raw.execute(f"{select} WHERE {column} IN ({marks})", chunk)  # nosec B608
            rows.extend(self.fetchall())
        return rows

    def insert_rows(
        self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]
    ) -> None:
        """Insert ``rows`` (values for ``columns``) into ``table``: with ``COPY`` on
        PostgreSQL when there are many (it costs a fraction of an insert per row, but a
        round trip more), otherwise as one ``executemany``. Either way a row that breaks a
        constraint fails the statement."""
        if not rows:
            return
        names = ", ".join(columns)
        if self._pg and len(rows) >= COPY_FROM_ROWS:
            # bandit B608: table and columns are the caller's constants, values go by COPY.
            with self.raw.copy(f"COPY {table} ({names}) FROM STDIN") as copy:  # nosec B608
                for row in rows:
                    copy.write_row(row)
            return
        marks = ",".join("?" * len(columns))
        # bandit B608: as above; the values are bound parameters.
        self.executemany(f"INSERT INTO {table} ({names}) VALUES ({marks})", rows)  # nosec B608

    def fetchall(self) -> list[tuple[Any, ...]]:
        return [self._row(r) for r in self.raw.fetchall()]

    def fetchone(self) -> tuple[Any, ...] | None:
        row = self.raw.fetchone()
        return None if row is None else self._row(row)

    def _row(self, row: Any) -> tuple[Any, ...]:
        return tuple(row.values()) if isinstance(row, dict) else tuple(row)


class Database:
    """The ledger's port onto one database. See the module docstring."""

    kind: str
    #: The column that numbers the log (the eventsourcing recorder's notification id).
    _position_column: str
    url: DatabaseURL

    def reopen(self) -> Database:
        """A new, independent connection to the same database (for a forked child, which
        must not use its parent's connections)."""
        return type(self)(self.url)  # type: ignore[call-arg]

    recorder: Any
    tracking_recorder: Any
    tracking_table: str

    def append(self, events: Sequence[StoredEvent]) -> Sequence[int]:
        """Append events in one transaction; all or nothing.

        Raises ``IntegrityError`` when any event's id is already in the log.
        """
        ids = self.recorder.insert_events(list(events))
        return list(ids or [])

    def existing(self, ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, bytes]:
        """Which of these event ids are already in the log, with their stored state."""
        found: dict[uuid.UUID, bytes] = {}
        # Events are only ever added: an id found stays found, so no snapshot is needed.
        with self.reading(snapshot=False) as cur:
            rows = cur.rows_where_in(
                "SELECT originator_id, originator_version, state FROM stored_events",
                "originator_id",
                [self._id_param(i) for i in ids],
            )
        for oid, version, state in rows:
            if version == 1:  # every event is version 1 of its own originator
                found[oid if isinstance(oid, uuid.UUID) else uuid.UUID(str(oid))] = bytes(state)
        return found

    @staticmethod
    def _id_param(event_id: uuid.UUID) -> Any:
        """An event id as this store's ``originator_id`` column takes it."""
        return event_id

    def read(
        self, after: int, limit: int, topics: Sequence[str] = (), stop: int | None = None
    ) -> Sequence[Notification]:
        """Up to ``limit`` events with log position > ``after`` (and <= ``stop``), in order."""
        return list(
            self.recorder.select_notifications(
                after, limit, stop=stop, topics=list(topics), inclusive_of_start=False
            )
        )

    def read_page(
        self, after: int, limit: int, stop: int | None = None
    ) -> list[tuple[int, str, bytes]]:
        """Up to ``limit`` events after ``after`` (and <= ``stop``) as ``(position, topic, state)``.

        The projector's page: one query, no per-row objects, nothing it does not use.
        """
        col = self._position_column
        sql, params = self._page_query(f"{col}, topic, state", after, limit, stop)
        with self.reading(snapshot=False) as cur:
            cur.execute(sql, params, binary=True)
            return [(int(pos), topic, bytes(state)) for pos, topic, state in cur.fetchall()]

    def page_end(self, after: int, limit: int, stop: int | None = None) -> int | None:
        """Where ``read_page(after, limit, stop)`` would end, without reading the events
        (None for an empty page)."""
        sql, params = self._page_query(f"{self._position_column} AS p", after, limit, stop)
        with self.reading(snapshot=False) as cur:
            # bandit B608: the inner query is built from class constants (see _page_query).
            cur.execute(f"SELECT MAX(p) FROM ({sql}) AS page", params)  # nosec B608
            row = cur.fetchone()
        return int(row[0]) if row and row[0] is not None else None

    def _page_query(
        self, columns: str, after: int, limit: int, stop: int | None
    ) -> tuple[str, list[int]]:
        """The query of one page of the log, in log order, selecting ``columns``."""
        col = self._position_column
        # bandit B608: column names are class constants; values are bound parameters.
        sql = f"SELECT {columns} FROM stored_events WHERE {col} > ?"  # nosec B608
        params = [after]
        if stop is not None:
            sql += f" AND {col} <= ?"
            params.append(stop)
        sql += f" ORDER BY {col} LIMIT ?"
        params.append(limit)
        return sql, params

    def head(self) -> int:
        """The log position of the newest event (0 for an empty log)."""
        return int(self.recorder.max_notification_id() or 0)

    @contextmanager
    def transaction(self, *, durable: bool = True) -> Iterator[SqlCursor]:
        """One read-write transaction, committed at the end of the block.

        ``durable=False`` is for what the log can rebuild (the projections): the commit
        is just as atomic and visible, and survives the process being killed, but it
        does not wait for the disk, so a power cut may take it back. The projector's
        tracking position is in the same transaction, so it is then simply redone.
        """
        raise NotImplementedError
        yield  # pragma: no cover

    @contextmanager
    def reading(self, *, snapshot: bool = True) -> Iterator[SqlCursor]:
        """A read-only transaction. ``snapshot=False`` is for a block of ONE query, which
        sees one state of the database anyway (it saves a round trip on PostgreSQL)."""
        raise NotImplementedError
        yield  # pragma: no cover

    def is_transient(self, exc: BaseException) -> bool:
        """Whether ``exc`` is the database going away for a while (a restart, a cut
        connection), so the same work may be tried again. Never on SQLite: a file does
        not go away, and its locks are already waited on (``SQLITE_LOCK_TIMEOUT_S``)."""
        return False

    def lock_schema(self, cursor: SqlCursor) -> None:
        """Serialise this transaction's ``CREATE ... IF NOT EXISTS`` with other processes'.

        A no-op on SQLite, whose write lock already does it."""

    def record_tracking(self, cursor: SqlCursor, name: str, position: int) -> None:
        self.tracking_recorder._insert_tracking(cursor.raw, Tracking(name, position))

    def tracking_position_in(self, cursor: SqlCursor, name: str) -> int:
        """The tracking position as seen by ``cursor``'s transaction."""
        # bandit B608: the table name is a class constant; the value is a bound parameter.
        cursor.execute(
            f"SELECT notification_id FROM {self.tracking_table} WHERE application_name = ?",  # nosec B608
            (name,),
        )
        row = cursor.fetchone()
        return int(row[0]) if row and row[0] is not None else 0

    def tracking_position(self, name: str) -> int:
        return int(self.tracking_recorder.max_tracking_id(name) or 0)

    def reset_tracking(self, cursor: SqlCursor, name: str) -> None:
        # bandit B608: the table name is a class constant; the name is a bound parameter.
        cursor.execute(f"DELETE FROM {self.tracking_table} WHERE application_name = ?", (name,))  # nosec B608

    def close(self) -> None:
        raise NotImplementedError


class SQLiteDatabase(Database):
    kind = "sqlite"
    tracking_table = "tracking"
    _position_column = "rowid"

    def __init__(self, url: DatabaseURL) -> None:

        self.url = url
        path = Path(url.path)
        if not path.parent.exists():
            raise DatabaseUnavailable(
                f"cannot open {url.path}: folder {path.parent} does not exist"
            )
        if not path.exists():
            # Created owner-only; SQLite gives its -wal and -shm files the same mode.
            try:
                os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
            except OSError as exc:
                raise DatabaseUnavailable(f"cannot create {url.path}: {exc.strerror}") from exc
        _choose_page_size(path)
        self._relaxed: Any = None
        self._connect()
        self._create_tables(url)

    def _connect(self) -> None:
        """A fresh connection pool and recorders for the file."""
        from eventsourcing.sqlite import (
            SQLiteApplicationRecorder,
            SQLiteDatastore,
            SQLiteTrackingRecorder,
        )

        self.datastore = SQLiteDatastore(
            str(Path(self.url.path)),
            lock_timeout=SQLITE_LOCK_TIMEOUT_S,
            pool_size=4,
            max_overflow=4,
        )
        _set_synchronous(self.datastore, "FULL")
        self.recorder = SQLiteApplicationRecorder(self.datastore)
        self.tracking_recorder = SQLiteTrackingRecorder(self.datastore)

    def _create_tables(self, url: DatabaseURL) -> None:
        """Make the tables, racing other processes opening the same new file.

        SQLite answers some of those races at once instead of waiting out the lock:
        switching a new file to WAL, and a ``CREATE ... IF NOT EXISTS`` whose read of the
        schema went stale when another process created the table first (the transaction
        cannot upgrade to a write lock). Both mean "look again", so the whole step is
        retried until ``SQLITE_LOCK_TIMEOUT_S``; the loser then finds the tables made."""
        deadline = time.monotonic() + SQLITE_LOCK_TIMEOUT_S
        attempt = 0
        while True:
            try:
                self.recorder.create_table()
                self.tracking_recorder.create_table()
                return
            except (PersistenceError, sqlite3.Error) as exc:
                racing = isinstance(exc, IntegrityError) or _is_sqlite_busy(exc)
                if not racing or time.monotonic() > deadline:
                    raise DatabaseUnavailable(f"cannot open {url.path}: {exc}") from exc
            attempt += 1
            time.sleep(random.uniform(0.01, min(0.5, 0.02 * 2**attempt)))  # nosec B311
            # The pool may keep its writer slot taken after such a failure ("Timed out
            # waiting for return of writer" on the next attempt): start over with a new one.
            with suppress(Exception):
                self.datastore.close()
            self._connect()

    def append(self, events: Sequence[StoredEvent]) -> Sequence[int]:
        """One transaction, one ``executemany`` (the library's recorder runs one statement
        per event to collect each rowid). Rowids are handed out as max + 1 while this
        transaction holds SQLite's write lock, so the batch's positions are consecutive."""
        rows = [
            (
                e.originator_id.hex if isinstance(e.originator_id, uuid.UUID) else e.originator_id,
                e.originator_version,
                e.topic,
                e.state,
            )
            for e in events
        ]
        if not rows:
            return []
        with self.transaction() as cur:
            cur.raw.executemany("INSERT INTO stored_events VALUES (?,?,?,?)", rows)
            cur.raw.execute("SELECT last_insert_rowid()")
            last = int(cur.raw.fetchone()[0])
        return range(last - len(rows) + 1, last + 1)

    @staticmethod
    def _id_param(event_id: uuid.UUID) -> Any:
        return event_id.hex  # the library's SQLite table keeps ids as 32 hex digits

    @contextmanager
    def transaction(self, *, durable: bool = True) -> Iterator[SqlCursor]:
        datastore = self.datastore if durable else self._relaxed_datastore()
        with datastore.transaction(commit=True) as cur:
            yield SqlCursor(cur, "qmark")

    def _relaxed_datastore(self) -> Any:
        """Connections whose commits do not fsync (``synchronous=NORMAL``: in WAL mode a
        commit is atomic and survives a crash of the process, and the next ``FULL``
        commit or checkpoint writes it to disk). The pragma is per connection and cannot
        change inside a transaction, so these are a pool of their own."""
        if self._relaxed is None:
            from eventsourcing.sqlite import SQLiteDatastore

            relaxed = SQLiteDatastore(
                self.url.path, lock_timeout=SQLITE_LOCK_TIMEOUT_S, pool_size=2, max_overflow=2
            )
            _set_synchronous(relaxed, "NORMAL")
            self._relaxed = relaxed
        return self._relaxed

    @contextmanager
    def reading(self, *, snapshot: bool = True) -> Iterator[SqlCursor]:
        # A SQLite read transaction is always one snapshot.
        with self.datastore.transaction(commit=False) as cur:
            yield SqlCursor(cur, "qmark")

    def close(self) -> None:
        for datastore in (self.datastore, self._relaxed):
            if datastore is not None:
                with suppress(Exception):
                    datastore.close()


class PostgresDatabase(Database):
    kind = "postgresql"
    tracking_table = "notification_tracking"
    _position_column = "notification_id"

    def __init__(self, url: DatabaseURL) -> None:
        from eventsourcing.postgres import (
            PostgresApplicationRecorder,
            PostgresDatastore,
            PostgresTrackingRecorder,
        )

        self.url = url
        _create_database_if_missing(url)
        self.datastore = PostgresDatastore(
            dbname=url.dbname,
            host=url.host,
            port=url.port,
            user=url.user,
            password=url.password,
            connect_timeout=5,
            pool_size=2,
            max_overflow=4,
            # No ping before each use (a round trip per transaction, most of a live
            # batch's latency): a connection the server dropped fails its first
            # statement instead, the pool discards it, and every caller retries a
            # transient failure (``is_transient``) on a fresh one.
            pre_ping=False,
            lock_timeout=30,
            pool_open_timeout=10,
        )
        self.recorder = PostgresApplicationRecorder(self.datastore)
        self.tracking_recorder = PostgresTrackingRecorder(self.datastore)
        try:
            with _schema_lock(url):
                self.recorder.create_table()
                self.tracking_recorder.create_table()
        except PersistenceError as exc:
            raise DatabaseUnavailable(f"cannot use {url.redacted()}: {_first_line(exc)}") from exc

    def lock_schema(self, cursor: SqlCursor) -> None:
        cursor.execute("SELECT pg_advisory_xact_lock(?)", (SCHEMA_LOCK_KEY,))

    def is_transient(self, exc: BaseException) -> bool:
        """A lost or refused connection (no SQLSTATE, or class 08), the server shutting
        down or starting up (57P01-57P03), no pooled connection in time: yes. A constraint,
        a full disk, a read-only database, a lock timeout: no."""
        import psycopg

        seen: BaseException | None = exc
        while seen is not None:
            if isinstance(seen, (psycopg.OperationalError, psycopg.InterfaceError)):
                state = seen.sqlstate
                return state is None or state.startswith("08") or state in _SERVER_GOING_AWAY
            seen = seen.__cause__ or seen.__context__
        return False

    def append(self, events: Sequence[StoredEvent]) -> Sequence[int]:
        """One transaction: the recorder's table lock and NOTIFY, then one INSERT of four
        arrays (``unnest``) with RETURNING, in a plain transaction.

        Why not the library's recorder: it builds an array of a composite type, which
        psycopg writes as escaped text row by row in Python (most of an import's time on
        PostgreSQL), and it sends it in pipeline mode, which deadlocks once a batch
        carries more than a few megabytes (the server waits in ClientRead for the rest
        of the statement, the client for a result: found with a 10 MB frame, and 2,000
        frames of 5 kB hang the same way). Plain arrays of uuid, bigint, text and bytea
        go out in psycopg's binary formats (``%b``). The EXCLUSIVE table lock keeps commit order
        equal to notification-id order, as the recorder does, so no reader skips a gap.
        """
        events = list(events)
        if not events:
            return []
        from psycopg.sql import SQL, Identifier

        # BEGIN, the lock statements and the NOTIFY in one round trip.
        opening = [
            *self.recorder.lock_table_statements,
            SQL("NOTIFY {0}").format(Identifier(self.recorder.channel_name)),
        ]
        with self._transaction(opening) as curs:
            curs.execute(
                "INSERT INTO stored_events (originator_id, originator_version, topic, state) "
                # %b: the arrays go out in binary. Text would escape every element in
                # Python (a bytea as hex): ten times the cost, a quarter of an import.
                "SELECT * FROM unnest(%b::uuid[], %b::bigint[], %b::text[], %b::bytea[]) "
                "RETURNING notification_id",
                (
                    [e.originator_id for e in events],
                    [e.originator_version for e in events],
                    [e.topic for e in events],
                    [e.state for e in events],
                ),
            )
            return [int(row["notification_id"]) for row in curs.fetchall()]

    @contextmanager
    def transaction(self, *, durable: bool = True) -> Iterator[SqlCursor]:
        opening = [] if durable else ["SET LOCAL synchronous_commit TO OFF"]
        with self._transaction(opening) as cur:
            yield SqlCursor(cur, "format")

    @contextmanager
    def reading(self, *, snapshot: bool = True) -> Iterator[SqlCursor]:
        """A read-only transaction on ONE snapshot (REPEATABLE READ): a reader that runs
        several queries never sees half of another process's commit. ``snapshot=False``
        is for a single query, which is its own snapshot: it runs on its own, with no
        BEGIN and no ROLLBACK (two round trips fewer)."""
        if not snapshot:
            with self.datastore.cursor() as cur:
                yield SqlCursor(cur, "format")
            return
        with self._transaction(["SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"]) as cur:
            yield SqlCursor(cur, "format")

    @contextmanager
    def _transaction(self, opening: Sequence[Any]) -> Iterator[Any]:
        """A transaction whose BEGIN goes out with ``opening`` (statements without
        parameters) in one round trip, and which ends in COMMIT even when it only read.

        Why not ``Connection.transaction()``: it sends BEGIN on its own (a round trip of
        its own, most of a live batch's latency being round trips), and a read-only
        transaction ends in ROLLBACK, on which psycopg drops every prepared statement of
        the connection, so hot statements were prepared again and again. The pool's
        connections are in autocommit mode, where psycopg leaves BEGIN and COMMIT to us.
        """
        from psycopg.sql import SQL

        statements = [SQL(o) if isinstance(o, str) else o for o in ("BEGIN", *opening)]
        with self.datastore.get_connection() as conn:
            cur = conn.cursor()
            cur.execute(SQL("; ").join(statements))
            try:
                yield cur
            except BaseException:
                with suppress(Exception):
                    cur.execute("ROLLBACK")
                raise
            cur.execute("COMMIT")
            if cur.statusmessage != "COMMIT":
                # A statement failed and someone swallowed the error: nothing was written.
                raise PersistenceError(f"the transaction was not committed ({cur.statusmessage})")

    def close(self) -> None:
        with suppress(Exception):
            self.datastore.close()


def _is_sqlite_busy(exc: BaseException) -> bool:
    """SQLITE_BUSY or SQLITE_LOCKED, however the library wrapped it."""
    seen: BaseException | None = exc
    while seen is not None:
        text = str(seen).lower()
        if "database is locked" in text or "database table is locked" in text or "busy" in text:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


#: Pages of a new SQLite file. An import's random keys touch index pages all over the
#: file, and each commit writes every page it touched to the WAL: with 16 kB pages the
#: append of a 200,000-frame capture took about a third less time than with the default
#: 4 kB (scripts, docs/performance.md). SQLite keeps a file's page size for life.
SQLITE_PAGE_SIZE = 16_384


def _choose_page_size(path: Path) -> None:
    """Give a new, still empty file its page size, which only its first write can set."""
    if path.stat().st_size != 0:
        return
    # Two processes may create the same file: the second one finds it written and
    # changes nothing (a busy answer is the same race, settled by the first).
    with suppress(sqlite3.Error), contextlib.closing(sqlite3.connect(path, timeout=5)) as conn:
        conn.execute(f"PRAGMA page_size = {SQLITE_PAGE_SIZE}")
        conn.execute("PRAGMA journal_mode = WAL")


def _set_synchronous(datastore: Any, level: str) -> None:
    """Every SQLite connection of ``datastore`` commits with ``synchronous=level``. FULL
    for the log: in WAL mode each commit fsyncs, so a committed batch survives a power
    cut, not just a crash of the process (SQLite's usual default; this makes it
    independent of the build). The pragma cannot be set inside a transaction, so it is
    set as each pooled connection is made (a private hook of the pinned eventsourcing
    version)."""
    pool = datastore.pool
    create = pool._create_connection
    if level not in ("FULL", "NORMAL"):
        raise ValueError(f"unknown synchronous level {level!r}")
    pragma = f"PRAGMA synchronous={level}"

    def create_with_level() -> Any:
        connection = create()
        connection._sqlite_conn.execute(pragma)
        return connection

    pool._create_connection = create_with_level


def _connect_params(url: DatabaseURL) -> dict[str, Any]:
    params: dict[str, Any] = {
        "host": url.host,
        "port": url.port,
        "user": url.user,
        "connect_timeout": 5,
    }
    if url.password:
        params["password"] = url.password
    return params


@contextmanager
def _schema_lock(url: DatabaseURL) -> Iterator[None]:
    """Hold the schema advisory lock while creating tables.

    ``CREATE TABLE IF NOT EXISTS`` is not safe against itself in PostgreSQL: two
    processes opening a fresh database at once can both miss the table and one fails
    on ``pg_type_typname_nsp_index``. The lock makes the second wait and then find it.
    """
    import psycopg

    try:
        conn = psycopg.connect(dbname=url.dbname, autocommit=True, **_connect_params(url))
    except psycopg.Error as exc:
        raise DatabaseUnavailable(f"cannot reach {url.redacted()}: {_first_line(exc)}") from exc
    with conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (SCHEMA_LOCK_KEY,))
        yield


def _create_database_if_missing(url: DatabaseURL) -> None:
    import psycopg
    from psycopg import sql

    params = _connect_params(url)
    try:
        with psycopg.connect(dbname=url.dbname, **params):
            return
    except psycopg.OperationalError as exc:
        if "does not exist" not in str(exc):
            raise DatabaseUnavailable(f"cannot reach {url.redacted()}: {_first_line(exc)}") from exc
    try:
        with psycopg.connect(dbname="postgres", autocommit=True, **params) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(url.dbname)))
    except (psycopg.errors.DuplicateDatabase, psycopg.errors.UniqueViolation):
        pass  # another process created it first
    except psycopg.Error as exc:
        raise DatabaseUnavailable(f"cannot create {url.redacted()}: {_first_line(exc)}") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def open_database(url: str) -> Database:
    """Open (and on first use, create) the ledger's tables at ``url``."""
    parsed = parse_url(url)
    if parsed.kind == "postgresql":
        return PostgresDatabase(parsed)
    return SQLiteDatabase(parsed)


__all__ = [
    "Database",
    "DatabaseURL",
    "DatabaseURLError",
    "DatabaseUnavailable",
    "IntegrityError",
    "open_database",
    "parse_url",
]
