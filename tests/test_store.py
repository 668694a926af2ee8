"""The log on real stores: SQLite and PostgreSQL agree, the store enforces fill dedup,
and nothing once written is ever changed."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from eventsourcing.persistence import IntegrityError
from helpers import (
    FILL_CLAIMED,
    count_topic,
    dump_log,
    frame_lines,
    ledger_json,
    make_capture,
    ok,
    run_ledger,
)
from hypothesis import given
from hypothesis import strategies as st

from adapters.deltadefi.frames import parse
from adapters.storage import COPY_FROM_ROWS, Database, open_database
from ledger import events
from ledger.application import Ledger, numbered_batches
from ledger.events import (
    FRAME_TOPICS,
    MAX_ORDERED_LINE,
    FillClaimed,
    FrameReceived,
    claim_id,
    frame_id_for_line,
    line_ordered_frame_id,
    split_state,
)

QUERIES = [
    ("positions",),
    ("positions", "--method", "fifo"),
    ("balances",),
    ("pnl",),
    ("fills",),
    ("rejects",),
]


def test_event_ids_are_the_ones_earlier_versions_derived() -> None:
    # Written down from the code before ids were derived by ``events.uuid5``: a capture
    # imported again, or a fill claimed again, must meet the very same keys.
    assert frame_id_for_line("file:session", 7, b'{"type":"Account"}') == uuid.UUID(
        "b00af9b3-c7fd-5455-a9af-3ded1cec22d5"
    )
    assert claim_id("exe-1") == uuid.UUID("271a2faf-fdb8-5191-8064-cf39e1c08372")


@given(source=st.text(), line=st.integers(min_value=0), raw=st.binary(), fill_id=st.text())
def test_event_ids_are_rfc_4122_name_based_uuids(
    source: str, line: int, raw: bytes, fill_id: str
) -> None:
    digest = hashlib.blake2b(raw, digest_size=16).hexdigest()
    expected = uuid.uuid5(events._NS_FRAME, f"{source}\n{line}\n{digest}")
    assert frame_id_for_line(source, line, raw) == expected
    assert claim_id.__wrapped__(fill_id) == uuid.uuid5(events._NS_FILL, fill_id)


def test_line_ordered_frame_ids_do_not_change_between_versions() -> None:
    # Written down when these ids came: a capture imported again must meet the same keys.
    assert line_ordered_frame_id("file:session", 7, b'{"type":"Account"}') == uuid.UUID(
        "f9abad8d-0000-8000-801e-72a332c6deaf"
    )


@given(
    source=st.text(),
    lines=st.lists(st.integers(0, MAX_ORDERED_LINE), min_size=2, max_size=5, unique=True),
    raw=st.binary(),
)
def test_a_captures_frame_ids_grow_with_the_line_number(
    source: str, lines: list[int], raw: bytes
) -> None:
    """In the order the key's index keeps them: as UUIDs, as bytes (PostgreSQL's uuid)
    and as hex text (SQLite's column)."""
    ids = [line_ordered_frame_id(source, line, raw) for line in sorted(lines)]
    assert ids == sorted(ids)
    assert [i.bytes for i in ids] == sorted(i.bytes for i in ids)
    assert [i.hex for i in ids] == sorted(i.hex for i in ids)
    assert all(i.version == 8 and i.variant == uuid.RFC_4122 for i in ids)


def test_a_frame_id_tells_a_changed_line_and_another_capture_apart() -> None:
    line = line_ordered_frame_id("file:a", 7, b'{"n":1}')
    assert line == line_ordered_frame_id("file:a", 7, b'{"n":1}')
    assert line != line_ordered_frame_id("file:a", 7, b'{"n":2}')
    assert line != line_ordered_frame_id("file:b", 7, b'{"n":1}')
    with pytest.raises(ValueError):
        line_ordered_frame_id("file:a", MAX_ORDERED_LINE + 1, b"{}")


def test_a_capture_imported_with_the_earlier_ids_is_still_known_by_them(db_url: str) -> None:
    """A log that holds a capture under ``frame_id_for_line`` ids (imported before ids
    came in line order) appends nothing when it is imported again; another capture gets
    line-ordered ids."""
    old = [(n, b'{"type":"fill","n":%d}' % n) for n in range(1, 31)]
    new = [(n, b'{"type":"fill","m":%d}' % n) for n in range(1, 31)]
    db = open_database(db_url)
    try:
        ledger = Ledger(db, parse)
        earlier = numbered_batches(old, "file:old", 10, hashed_ids=True)
        assert ledger.ingest_read(ledger.reader.plan(batch) for batch in earlier).appended == 30
        assert db.existing([frame_id_for_line("file:old", 30, old[-1][1])])

        again = ledger.ingest_lines([(0, b"  "), *old], "file:old", batch_size=7)
        assert (again.appended, again.already_ingested) == (0, 30)

        assert ledger.ingest_lines(new, "file:new", batch_size=7).appended == 30
        assert db.existing([line_ordered_frame_id("file:new", 30, new[-1][1])])
        assert not db.existing([frame_id_for_line("file:new", 30, new[-1][1])])
        assert ledger.ingest_lines(new, "file:new").appended == 0
    finally:
        db.close()


@pytest.mark.postgres
def test_same_stream_gives_identical_state_on_sqlite_and_postgresql(
    sqlite_url: str, pg_url: str, tmp_path: Path
) -> None:
    capture = tmp_path / "session.jsonl"
    truth = make_capture(capture, 2000, seed=21, malformed_rate=0.01)

    reports = [ledger_json(db, "ingest", str(capture)) for db in (sqlite_url, pg_url)]
    assert reports[0] == reports[1]
    assert reports[0]["fills_new"] == len(truth.fills)
    assert reports[0]["rejected"] > 0  # the malformed frames are part of the compared state

    for query in QUERIES:
        on_sqlite = ledger_json(sqlite_url, *query)
        on_postgres = ledger_json(pg_url, *query)
        assert on_sqlite == on_postgres, f"`ledger {' '.join(query)}` differs between stores"

    incremental = ledger_json(sqlite_url, "positions")["state_hash"]
    assert ledger_json(pg_url, "positions")["state_hash"] == incremental
    for db in (sqlite_url, pg_url):
        assert ledger_json(db, "rebuild")["state_hash"] == incremental
        verified = ledger_json(db, "verify")
        assert verified["ok"] is True
        assert verified["replayed_hash"] == incremental
    booked = {f["fill_id"] for f in ledger_json(pg_url, "fills")["fills"]}
    assert booked == set(truth.fills)


def _frame(raw: bytes) -> FrameReceived:
    return FrameReceived(
        frame_id=uuid.uuid4(), raw=raw, received_at="2026-03-20T09:00:00.000000Z", source="test"
    )


def test_the_store_itself_refuses_a_second_claim_of_a_fill(db_url: str) -> None:
    """The dedup guarantee is the store's primary key, not the application's pre-check:
    a second claim of a fill id fails its whole transaction, frame included."""
    db = open_database(db_url)
    try:
        first = _frame(b'{"first":1}')
        db.append([first.to_stored(), FillClaimed("exe-1", first.frame_id, "d1").to_stored()])
        head = db.head()

        second = _frame(b'{"second":2}')
        with pytest.raises(IntegrityError):
            db.append([second.to_stored(), FillClaimed("exe-1", second.frame_id, "d1").to_stored()])

        assert db.head() == head
        assert db.existing([second.frame_id]) == {}  # all or nothing: the frame went too
        claims = db.existing([claim_id("exe-1")])
        head_line = claims[claim_id("exe-1")].partition(b"\n")[0]
        assert first.frame_id.hex.encode() in head_line  # the first claim stands, unchanged

        third = _frame(b'{"third":3}')
        db.append([third.to_stored(), FillClaimed("exe-2", third.frame_id, "d2").to_stored()])
        assert db.head() > head
    finally:
        db.close()
    assert count_topic(db_url, FILL_CLAIMED) == 2


def test_the_log_is_append_only(db_url: str, tmp_path: Path) -> None:
    """Re-ingesting, ingesting more, rebuilding and verifying never touch a stored event."""
    first = tmp_path / "first.jsonl"
    make_capture(first, 400, seed=22, malformed_rate=0.03)
    with first.open("ab") as out:  # bytes that are not UTF-8 must be kept exactly too
        out.write(b'\xff\xfe{"type":"fill"}\n')

    ok(run_ledger(db_url, "ingest", str(first)))
    before = dump_log(db_url)

    # Every line is in the log verbatim, once: the raw bytes after the one-line header.
    raws = [split_state(state)[1] for _, _, _, topic, state in before if topic in FRAME_TOPICS]
    assert raws == frame_lines(first)

    assert ledger_json(db_url, "ingest", str(first))["appended"] == 0
    assert dump_log(db_url) == before

    second = tmp_path / "second.jsonl"  # the same session, longer, from another file
    make_capture(second, 600, seed=22, malformed_rate=0.03)
    assert ledger_json(db_url, "ingest", str(second))["appended"] == 600
    grown = dump_log(db_url)
    assert len(grown) > len(before)
    assert grown[: len(before)] == before

    ok(run_ledger(db_url, "rebuild"))
    ok(run_ledger(db_url, "verify"))
    ledger_json(db_url, "rejects")
    assert dump_log(db_url) == grown


def test_the_log_commits_durably_and_the_projections_need_not(db_url: str) -> None:
    """The log's commits wait for the disk (SQLite ``synchronous=FULL``, PostgreSQL's
    default ``synchronous_commit``); a ``durable=False`` transaction, the projections',
    does not, yet its commit is just as visible to every other connection at once."""
    db = open_database(db_url)
    try:
        with db.transaction() as cur:
            cur.execute("CREATE TABLE IF NOT EXISTS probe (v TEXT)")
            if db.kind == "sqlite":
                cur.execute("PRAGMA synchronous")
                assert cur.fetchone()[0] == 2  # FULL
            else:
                cur.execute("SHOW synchronous_commit")
                assert cur.fetchone()[0] == "on"
        with db.transaction(durable=False) as cur:
            if db.kind == "sqlite":
                cur.execute("PRAGMA synchronous")
                assert cur.fetchone()[0] == 1  # NORMAL
            else:
                cur.execute("SHOW synchronous_commit")
                assert cur.fetchone()[0] == "off"
            cur.execute("INSERT INTO probe VALUES (?)", ("relaxed",))
        other = open_database(db_url)
        try:
            with other.reading() as cur:
                cur.execute("SELECT v FROM probe")
                assert cur.fetchall() == [("relaxed",)]
        finally:
            other.close()
        with db.transaction() as cur:  # back to durable on the same database object
            if db.kind == "sqlite":
                cur.execute("PRAGMA synchronous")
                assert cur.fetchone()[0] == 2
            else:
                cur.execute("SHOW synchronous_commit")
                assert cur.fetchone()[0] == "on"
    finally:
        db.close()


def test_a_new_sqlite_file_gets_large_pages_and_an_old_one_keeps_its_own(tmp_path: Path) -> None:
    import sqlite3

    from adapters.storage import SQLITE_PAGE_SIZE

    def page_size(path: Path) -> int:
        with sqlite3.connect(path) as conn:
            return int(conn.execute("PRAGMA page_size").fetchone()[0])

    new = tmp_path / "new.sqlite"
    open_database(str(new)).close()
    assert page_size(new) == SQLITE_PAGE_SIZE != 4096

    old = tmp_path / "old.sqlite"
    with sqlite3.connect(old) as conn:
        conn.execute("PRAGMA page_size = 4096")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("CREATE TABLE earlier (x)")
    open_database(str(old)).close()
    assert page_size(old) == 4096


@pytest.mark.parametrize("count", [3, COPY_FROM_ROWS + 7])
def test_inserted_rows_arrive_whole_and_a_broken_key_fails_them_all(
    db_url: str, count: int
) -> None:
    """``insert_rows``, a few rows (``executemany``) or many (``COPY`` on PostgreSQL): every
    value as given, and a row that repeats a key fails the statement, in either form."""
    db = open_database(db_url)
    table = f"probe_rows_{count}"
    rows = [(f"id-{i:04d}", "0.000123" if i % 2 else "12345.6", i) for i in range(count)]
    try:
        with db.transaction(durable=False) as cur:
            cur.execute(f"DROP TABLE IF EXISTS {table}")
            cur.execute(f"CREATE TABLE {table} (k TEXT PRIMARY KEY, amount TEXT, n BIGINT)")
            cur.insert_rows(table, ("k", "amount", "n"), rows)
        with db.reading() as cur:
            cur.execute(f"SELECT k, amount, n FROM {table} ORDER BY k")
            assert cur.fetchall() == rows
        with pytest.raises(IntegrityError), db.transaction(durable=False) as cur:
            cur.insert_rows(table, ("k", "amount", "n"), [("id-new", "1", -1), rows[-1]])
        with db.reading() as cur:
            cur.execute(f"SELECT COUNT(*) FROM {table}")
            assert cur.fetchone() == (count,)
    finally:
        with db.transaction(durable=False) as cur:
            cur.execute(f"DROP TABLE IF EXISTS {table}")
        db.close()


@pytest.mark.postgres
def test_rows_where_in_is_planned_for_the_table_as_it_is_now(pg_url: str) -> None:
    """The booked-fills query must not keep a plan made while its table was small.

    psycopg prepares a query from its fifth run, and PostgreSQL then keeps the prepared
    statement's generic plan until an ANALYZE changes the table's statistics (never, with
    autovacuum off, as on these machines). Made for a table of a few pages, that plan is a
    sequential scan: a live session's projecting slowed with every fill booked (up to
    100 ms a query, seen with auto_explain) and fell behind at 2,000 frames/s. So a query
    of a few values (a live batch's) is never prepared: each run is planned for the table
    as it is."""
    table = "probe_plans"
    with _keys_table(pg_url, table, [f"k{i}" for i in range(50)]) as db, db.reading() as cur:
        for _ in range(10):
            assert cur.rows_where_in(f"SELECT k FROM {table}", "k", ["k1", "x"]) == [("k1",)]
        cur.execute(
            "SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE ?",
            (f"%{table}%",),
        )
        assert cur.fetchone() == (0,)


@contextmanager
def _keys_table(url: str, table: str, keys: list[str]) -> Iterator[Database]:
    """The store at ``url`` with a table ``table`` of one text key column holding
    ``keys``, dropped afterwards."""
    db = open_database(url)
    try:
        with db.transaction(durable=False) as cur:
            cur.execute(f"DROP TABLE IF EXISTS {table}")
            cur.execute(f"CREATE TABLE {table} (k TEXT PRIMARY KEY)")
            cur.insert_rows(table, ("k",), [(k,) for k in keys])
        yield db
    finally:
        with db.transaction(durable=False) as cur:
            cur.execute(f"DROP TABLE IF EXISTS {table}")
        db.close()


def test_rows_where_in_finds_exactly_the_rows_among_many_values(db_url: str) -> None:
    """``rows_where_in``: one binary array on PostgreSQL, chunks of 500 on SQLite; either
    way the rows whose key is among the values, over several chunks, and nothing else."""
    table = "probe_where_in"
    keys = [f"fill-{i:05d}" for i in range(1500)]
    asked = [*keys, "fill-absent", 'it\'s "quoted", {braced}']
    with _keys_table(db_url, table, keys[::3]) as db, db.reading() as cur:
        found = {r[0] for r in cur.rows_where_in(f"SELECT k FROM {table}", "k", asked)}
        assert cur.rows_where_in(f"SELECT k FROM {table}", "k", []) == []
    assert found == set(keys[::3])
