"""Shared helpers of the integration tests: the real ``ledger`` command, real databases.

The command runs as its own OS process (``python -m ledger.cli``), exactly as a user runs
it, so these tests see its exit codes, its stdout/stderr and its effect on the database.
The database helpers talk to the same SQLite file or PostgreSQL database directly, to look
at (or tamper with) what the command stored.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg

from adapters.deltadefi.session import ExchangeTruth, write_capture

LEDGER = [sys.executable, "-m", "ledger.cli"]
REPO = Path(__file__).resolve().parent.parent
COMMAND_TIMEOUT_S = 180
FILL_CLAIMED = "ledger.events:FillClaimed"


def ledger_env() -> dict[str, str]:
    """The environment the command runs in: no stray ``LEDGER_DB``, no debug tracebacks."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")}
    env["PYTHONUNBUFFERED"] = "1"
    env["COLUMNS"] = "200"
    return env


def ledger_command(db: str | None, *args: str) -> list[str]:
    return [*LEDGER, *(["--db", db] if db is not None else []), *args]


def run_ledger(
    db: str | None,
    *args: str,
    stdin: bytes | None = None,
    cwd: Path | None = None,
    timeout: float = COMMAND_TIMEOUT_S,
) -> subprocess.CompletedProcess[bytes]:
    """Run ``ledger [--db DB] ARGS`` to completion, whatever its exit code."""
    return subprocess.run(
        ledger_command(db, *args),
        input=stdin,
        capture_output=True,
        cwd=cwd or REPO,
        env=ledger_env(),
        timeout=timeout,
        check=False,
    )


def start_ledger(db: str, *args: str) -> subprocess.Popen[bytes]:
    """Start ``ledger --db DB ARGS`` without waiting for it."""
    return subprocess.Popen(
        ledger_command(db, *args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=REPO,
        env=ledger_env(),
    )


def ok(result: subprocess.CompletedProcess[bytes]) -> str:
    """The stdout of a command that must have succeeded (else fail with its stderr)."""
    assert result.returncode == 0, (
        f"exit {result.returncode}: {result.stderr.decode(errors='replace')}"
    )
    assert b"Traceback" not in result.stderr
    return result.stdout.decode()


def ledger_json(db: str | None, *args: str, stdin: bytes | None = None) -> dict[str, Any]:
    """Run a command with ``--json`` and return what it printed, parsed."""
    value = json.loads(ok(run_ledger(db, *args, "--json", stdin=stdin)))
    assert isinstance(value, dict)
    return value


def state_hash(db: str) -> str:
    return str(ledger_json(db, "positions")["state_hash"])


def make_capture(
    path: Path, frames: int, *, seed: int, malformed_rate: float = 0.0
) -> ExchangeTruth:
    """A generated session in DeltaDeFi's frame shapes; ``truth`` knows every fill once."""
    return write_capture(str(path), frames, seed=seed, malformed_rate=malformed_rate)


def frame_lines(path: Path) -> list[bytes]:
    """The frames of a capture: its non-blank lines."""
    return [line for line in path.read_bytes().split(b"\n") if line.strip()]


def signed_quantities(truth: ExchangeTruth) -> dict[str, Decimal]:
    """Σ signed base quantity per symbol, from what the exchange executed."""
    totals: dict[str, Decimal] = {}
    for fill in truth.fills.values():
        sign = 1 if fill["side"] == "buy" else -1
        qty = Decimal(fill["filled_base_qty"])
        totals[fill["symbol"]] = totals.get(fill["symbol"], Decimal(0)) + sign * qty
    return totals


# --- looking into the database directly -------------------------------------------------


def is_postgres(db: str) -> bool:
    return db.startswith(("postgresql://", "postgres://"))


def query(db: str, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    """Run one read-only statement (``?`` parameters) and return all its rows."""
    if is_postgres(db):
        with psycopg.connect(db, connect_timeout=5) as conn:
            return [tuple(r) for r in conn.execute(sql.replace("?", "%s"), params).fetchall()]
    lite = sqlite3.connect(db, timeout=30)
    try:
        return [tuple(r) for r in lite.execute(sql, params).fetchall()]
    finally:
        lite.close()


def execute(db: str, sql: str, params: Sequence[Any] = ()) -> int:
    """Run one writing statement and commit it; return the number of rows it touched."""
    if is_postgres(db):
        with psycopg.connect(db, connect_timeout=5) as conn:
            cur = conn.execute(sql.replace("?", "%s"), params)
            return cur.rowcount
    lite = sqlite3.connect(db, timeout=30)
    try:
        with lite:
            return lite.execute(sql, params).rowcount
    finally:
        lite.close()


def log_rows(db: str) -> int:
    """How many events the log holds (0 while the tables do not exist yet)."""
    try:
        return int(query(db, "SELECT COUNT(*) FROM stored_events")[0][0])
    except (sqlite3.Error, psycopg.Error):
        return 0


def dump_log(db: str) -> list[tuple[int, str, int, str, bytes]]:
    """Every stored event, byte for byte, in log order."""
    # The log position is PostgreSQL's notification_id column, SQLite's rowid.
    position = "notification_id" if is_postgres(db) else "rowid"
    rows = query(
        db,
        f"SELECT {position}, originator_id, originator_version, topic, state "
        f"FROM stored_events ORDER BY {position}",
    )
    return [(int(n), str(o).replace("-", ""), int(v), str(t), bytes(s)) for n, o, v, t, s in rows]


def count_topic(db: str, topic: str) -> int:
    return int(query(db, "SELECT COUNT(*) FROM stored_events WHERE topic = ?", (topic,))[0][0])
