"""The projections' tables: what is written, and how it is read back.

Portable SQL (``?`` parameters, ``ON CONFLICT`` upserts) that runs unchanged on
SQLite and PostgreSQL. Every amount is TEXT holding the exact ``Decimal``:
never a floating-point column.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from decimal import Decimal
from typing import Any

from adapters.storage import Database, SqlCursor
from ledger.domain import Fill, Side
from projections.balances import AssetBalance, BalanceSheet
from projections.positions import Position, PositionBook
from projections.state import LedgerState, Tally

PROJECTION_NAME = "ledger-views"

_TABLES = [
    "CREATE TABLE IF NOT EXISTS ledger_fills ("
    " fill_id TEXT PRIMARY KEY, order_id TEXT NOT NULL, symbol TEXT NOT NULL,"
    " base_asset TEXT NOT NULL, quote_asset TEXT NOT NULL, side TEXT NOT NULL,"
    " price TEXT NOT NULL, quantity TEXT NOT NULL, quote_amount TEXT NOT NULL,"
    " fee TEXT NOT NULL, fee_asset TEXT NOT NULL, role TEXT NOT NULL,"
    " executed_at TEXT NOT NULL, log_position BIGINT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS ledger_fills_by_symbol ON ledger_fills (symbol, executed_at, fill_id)",
    "CREATE TABLE IF NOT EXISTS ledger_positions (symbol TEXT PRIMARY KEY, record TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS ledger_balances (asset TEXT PRIMARY KEY, record TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS ledger_rejects ("
    " log_position BIGINT PRIMARY KEY, source TEXT NOT NULL, reason TEXT NOT NULL, raw {blob} NOT NULL)",
    "CREATE TABLE IF NOT EXISTS ledger_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    # A symbol's position exactly after its fill (executed_at, fill_id): where a refold
    # may start (projections/checkpoints.py). Derived like every view, not in the state hash.
    "CREATE TABLE IF NOT EXISTS ledger_position_checkpoints ("
    " symbol TEXT NOT NULL, executed_at TEXT NOT NULL, fill_id TEXT NOT NULL,"
    " record TEXT NOT NULL, PRIMARY KEY (symbol, executed_at, fill_id))",
]

_VIEW_TABLES = (
    "ledger_fills",
    "ledger_positions",
    "ledger_balances",
    "ledger_rejects",
    "ledger_meta",
    "ledger_position_checkpoints",
)

FILL_COLUMN_NAMES = (
    *("fill_id", "order_id", "symbol", "base_asset", "quote_asset", "side", "price"),
    *("quantity", "quote_amount", "fee", "fee_asset", "role", "executed_at", "log_position"),
)
FILL_COLUMNS = ", ".join(FILL_COLUMN_NAMES)


def create_tables(db: Database) -> None:
    blob = "BYTEA" if db.kind == "postgresql" else "BLOB"
    with db.transaction() as cur:
        db.lock_schema(cur)
        for statement in _TABLES:
            cur.execute(statement.replace("{blob}", blob))


def clear(cur: SqlCursor, db: Database) -> None:
    """Drop every projected row and the tracking position: the next catch-up starts at zero."""
    for table in _VIEW_TABLES:
        # bandit B608: table from the constant _VIEW_TABLES.
        cur.execute(f"DELETE FROM {table}")  # nosec B608
    db.reset_tracking(cur, PROJECTION_NAME)


def load_state(cur: SqlCursor) -> LedgerState:
    state = LedgerState()
    cur.execute("SELECT record FROM ledger_positions")
    positions = {}
    for (record,) in cur.fetchall():
        pos = Position.from_record(json.loads(record))
        positions[pos.symbol] = pos
    state.book = PositionBook(positions)
    cur.execute("SELECT record FROM ledger_balances")
    assets = {}
    for (record,) in cur.fetchall():
        bal = AssetBalance.from_record(json.loads(record))
        assets[bal.asset] = bal
    state.balances = BalanceSheet(assets)
    meta = read_meta(cur)
    if "fills" in meta:
        state.fills = Tally.from_record(json.loads(meta["fills"]))
    if "rejects" in meta:
        state.rejects = Tally.from_record(json.loads(meta["rejects"]))
    state.frames = int(meta.get("frames", "0"))
    return state


def read_meta(cur: SqlCursor) -> dict[str, str]:
    cur.execute("SELECT key, value FROM ledger_meta")
    return {k: v for k, v in cur.fetchall()}


def booked_among(cur: SqlCursor, fill_ids: Sequence[str]) -> set[str]:
    return {
        r[0] for r in cur.rows_where_in("SELECT fill_id FROM ledger_fills", "fill_id", fill_ids)
    }


def insert_fills(cur: SqlCursor, rows: Sequence[tuple[str, ...]]) -> None:
    cur.insert_rows("ledger_fills", FILL_COLUMN_NAMES, [(*row[:13], int(row[13])) for row in rows])


def insert_rejects(cur: SqlCursor, rows: Sequence[tuple[int, str, str, bytes]]) -> None:
    cur.executemany(
        "INSERT INTO ledger_rejects (log_position, source, reason, raw) VALUES (?,?,?,?)", rows
    )


#: Rows read at a time when a symbol's whole history is replayed (``fills_of_symbol``).
SYMBOL_PAGE = 2000


def fills_of_symbol(
    cur: SqlCursor,
    symbol: str,
    page: int = SYMBOL_PAGE,
    *,
    after: tuple[str, str] | None = None,
) -> Iterator[Fill]:
    """A symbol's fills in execution order, read ``page`` rows at a time (keyset paging on
    the ``ledger_fills_by_symbol`` index), so a refold holds one page, not the history.
    ``after``: only the fills whose sort key (executed_at, fill_id) is greater than it.

    Each page is fetched whole before it is yielded: ``cur`` may run other statements
    between pages, but the caller must consume the iterator before using ``cur`` again."""
    while True:
        if after is None:
            cur.execute(
                # bandit B608: constant columns.
                f"SELECT {FILL_COLUMNS} FROM ledger_fills WHERE symbol = ? "  # nosec B608
                "ORDER BY executed_at, fill_id LIMIT ?",
                (symbol, page),
            )
        else:
            cur.execute(
                # bandit B608: constant columns.
                f"SELECT {FILL_COLUMNS} FROM ledger_fills WHERE symbol = ? "  # nosec B608
                "AND (executed_at, fill_id) > (?, ?) ORDER BY executed_at, fill_id LIMIT ?",
                (symbol, *after, page),
            )
        rows = cur.fetchall()
        for row in rows:
            yield fill_from_row(row)
        if len(rows) < page:
            return
        after = (rows[-1][12], rows[-1][0])


# --- position checkpoints (see projections/checkpoints.py) -----------------------------


def save_checkpoint(cur: SqlCursor, position: Position) -> None:
    """Store ``position`` as the checkpoint at its last fill's sort key."""
    executed_at, fill_id = position.last_key
    cur.execute(
        "INSERT INTO ledger_position_checkpoints (symbol, executed_at, fill_id, record)"
        " VALUES (?, ?, ?, ?) ON CONFLICT (symbol, executed_at, fill_id)"
        " DO UPDATE SET record = excluded.record",
        (position.symbol, executed_at, fill_id, json.dumps(position.to_record(), sort_keys=True)),
    )


def drop_checkpoints_from(cur: SqlCursor, symbol: str, key: tuple[str, str]) -> None:
    """Forget ``symbol``'s checkpoints at or after ``key``: a fill there changed history."""
    cur.execute(
        "DELETE FROM ledger_position_checkpoints WHERE symbol = ?"
        " AND (executed_at, fill_id) >= (?, ?)",
        (symbol, *key),
    )


def checkpoint_before(cur: SqlCursor, symbol: str, key: tuple[str, str]) -> Position | None:
    """``symbol``'s newest checkpoint strictly before ``key``, or None."""
    cur.execute(
        "SELECT executed_at, fill_id, record FROM ledger_position_checkpoints"
        " WHERE symbol = ? AND (executed_at, fill_id) < (?, ?)"
        " ORDER BY executed_at DESC, fill_id DESC LIMIT 1",
        (symbol, *key),
    )
    row = cur.fetchone()
    if row is None:
        return None
    position = Position.from_record(json.loads(row[2]))
    if position.symbol != symbol or position.last_key != (row[0], row[1]):
        raise ValueError(f"checkpoint {row[0]} {row[1]} of {symbol} does not match its record")
    return position


def fill_from_row(r: Sequence[Any]) -> Fill:
    return Fill(
        fill_id=r[0],
        order_id=r[1],
        symbol=r[2],
        base_asset=r[3],
        quote_asset=r[4],
        side=Side(r[5]),
        price=Decimal(r[6]),
        quantity=Decimal(r[7]),
        quote_amount=Decimal(r[8]),
        fee=Decimal(r[9]),
        fee_asset=r[10],
        role=r[11],
        executed_at=r[12],
    )


def save_state(
    cur: SqlCursor, state: LedgerState, symbols: Iterable[str], assets: Iterable[str]
) -> None:
    _upsert(
        cur,
        "ledger_positions",
        "symbol",
        [
            (s, json.dumps(state.book.positions[s].to_record(), sort_keys=True))
            for s in sorted(symbols)
            if s in state.book.positions
        ],
    )
    _upsert(
        cur,
        "ledger_balances",
        "asset",
        [
            (a, json.dumps(state.balances.assets[a].to_record(), sort_keys=True))
            for a in sorted(assets)
        ],
    )
    _upsert(
        cur,
        "ledger_meta",
        "key",
        [
            ("fills", json.dumps(state.fills.to_record())),
            ("rejects", json.dumps(state.rejects.to_record())),
            ("frames", str(state.frames)),
        ],
    )


def _upsert(cur: SqlCursor, table: str, key: str, rows: Sequence[tuple[str, str]]) -> None:
    value = "value" if table == "ledger_meta" else "record"
    cur.executemany(
        # bandit B608: table/key/value are literals from save_state.
        f"INSERT INTO {table} ({key}, {value}) VALUES (?, ?) "  # nosec B608
        f"ON CONFLICT ({key}) DO UPDATE SET {value} = excluded.{value}",
        rows,
    )
