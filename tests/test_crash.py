"""``kill -9`` in the middle of an import: a re-run finishes it, to the same state as one
clean run. Real ``ledger ingest`` processes, killed with SIGKILL at two points: while the
log is being appended to, and (in the re-run) while the projections are catching up."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from helpers import (
    FILL_CLAIMED,
    count_topic,
    execute,
    is_postgres,
    ledger_json,
    log_rows,
    make_capture,
    start_ledger,
)

from adapters.deltadefi.session import ExchangeTruth

FRAMES = 20_000
KILL_AFTER_ROWS = 2_000  # the log head has moved: several batches are committed
POLL_S = 0.005
WAIT_S = 120


@dataclass(frozen=True)
class CleanRun:
    capture: Path
    truth: ExchangeTruth
    state_hash: str
    log_rows: int


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory: pytest.TempPathFactory) -> CleanRun:
    """One capture, and the state one uninterrupted ``ledger ingest`` makes of it."""
    folder = tmp_path_factory.mktemp("crash")
    capture = folder / "session.jsonl"
    truth = make_capture(capture, FRAMES, seed=41, malformed_rate=0.001)
    db = str(folder / "clean.sqlite")
    report = ledger_json(db, "ingest", str(capture))
    assert report["appended"] == FRAMES
    assert report["fills_new"] == len(truth.fills)
    return CleanRun(capture, truth, ledger_json(db, "positions")["state_hash"], log_rows(db))


class LogProbe:
    """Watches an import from outside: events in the log, the projections' position.

    One open connection, a fresh snapshot per question, so polling is cheap and quick.
    """

    def __init__(self, db: str) -> None:
        self.db = db
        self._conn: Any = None
        position = "notification_id" if is_postgres(db) else "rowid"
        tracking = "notification_tracking" if is_postgres(db) else "tracking"
        self._sql = (
            f"SELECT (SELECT COUNT(*) FROM stored_events), (SELECT MAX({position}) FROM "
            f"stored_events), (SELECT MAX(notification_id) FROM {tracking} "
            "WHERE application_name = 'ledger-views')"
        )

    def _connect(self) -> Any:
        if is_postgres(self.db):
            return psycopg.connect(self.db, autocommit=True, connect_timeout=5)
        if not Path(self.db).exists():  # never create the ledger's file ourselves
            raise FileNotFoundError(self.db)
        return sqlite3.connect(self.db, isolation_level=None, timeout=30)

    def read(self) -> tuple[int, int, int]:
        """(events in the log, log head, projected position); zeros before the tables exist."""
        try:
            if self._conn is None:
                self._conn = self._connect()
            row = self._conn.execute(self._sql).fetchone()
        except (OSError, sqlite3.Error, psycopg.Error):
            return 0, 0, 0
        return int(row[0] or 0), int(row[1] or 0), int(row[2] or 0)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()


def _kill_when(
    proc: subprocess.Popen[bytes], probe: LogProbe, ready: Callable[[int, int, int], bool]
) -> bool:
    """SIGKILL ``proc`` as soon as ``ready(*probe.read())`` holds. False if it finished first."""
    deadline = time.monotonic() + WAIT_S
    try:
        while not ready(*probe.read()):
            if proc.poll() is not None:
                assert proc.returncode == 0, proc.returncode
                return False
            assert time.monotonic() < deadline, "the command made no progress"
            time.sleep(POLL_S)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        return proc.returncode == -signal.SIGKILL
    finally:
        proc.communicate(timeout=30)


def _mid_projection(_rows: int, head: int, projected: int) -> bool:
    return 0 < projected < head


def test_kill_9_during_an_import_then_rerun_gives_the_clean_state(
    db_url: str, clean_run: CleanRun
) -> None:
    capture = str(clean_run.capture)
    ingest = ("ingest", capture, "--batch-size", "100", "--json")
    probe = LogProbe(db_url)
    try:
        # 1. Killed while appending: part of the log is there, nothing half-written.
        killed = _kill_when(
            start_ledger(db_url, *ingest), probe, lambda rows, *_: rows >= KILL_AFTER_ROWS
        )
        assert killed, "the import finished before it could be killed"
        partial, head, projected = probe.read()
        assert KILL_AFTER_ROWS <= partial < clean_run.log_rows
        assert projected <= head
        if is_postgres(db_url):
            # A transaction killed after its INSERT leaves its sequence numbers unused: the
            # log positions after it differ from a clean run's. Make sure this run has a gap.
            execute(
                db_url,
                "SELECT nextval('stored_events_notification_id_seq') FROM generate_series(1, 50)",
            )

        # 2. The re-run makes progress and is killed while the projections are behind the
        #    log. Should it finish first (a loaded machine), a rebuild is killed mid-way.
        def rerun_progressed(rows: int, head: int, projected: int) -> bool:
            return rows >= partial + KILL_AFTER_ROWS and _mid_projection(rows, head, projected)

        #    The import's projector process may commit the page it is on as it dies with
        #    its parent, and a page commits in milliseconds: a kill only counts if it left
        #    the projections behind.
        def left_behind(killed: bool) -> bool:
            _, head, projected = probe.read()
            return killed and 0 < projected < head

        behind = left_behind(_kill_when(start_ledger(db_url, *ingest), probe, rerun_progressed))
        for _ in range(6):
            if behind:
                break
            behind = left_behind(
                _kill_when(start_ledger(db_url, "rebuild", "--json"), probe, _mid_projection)
            )
        assert behind, "no kill landed while the projections were catching up"
        rows, head, projected = probe.read()
        assert partial < rows <= clean_run.log_rows
        assert 0 < projected < head

        # 3. A third run appends the rest, if any, and finishes the projections.
        report = ledger_json(db_url, "ingest", capture)
        rows, head, projected = probe.read()
    finally:
        probe.close()

    assert report["frames"] == FRAMES
    assert report["appended"] + report["already_ingested"] == FRAMES
    assert rows == clean_run.log_rows
    assert projected == head

    assert ledger_json(db_url, "positions")["state_hash"] == clean_run.state_hash
    if is_postgres(db_url):
        assert head > rows  # the log has a gap, yet the state hash is the clean run's
    assert count_topic(db_url, FILL_CLAIMED) == len(clean_run.truth.fills)
    booked = [f["fill_id"] for f in ledger_json(db_url, "fills")["fills"]]
    assert sorted(booked) == sorted(clean_run.truth.fills)
    verified = ledger_json(db_url, "verify")
    assert verified["ok"] is True, verified["differences"]
