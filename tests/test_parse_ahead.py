"""Parsing ahead: an import whose frames are parsed, and whose log is projected, by a
second process writes exactly what an import parsed in one process writes."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import dump_log, make_capture

from adapters.deltadefi.frames import parse
from adapters.storage import Database, open_database
from ledger.application import AppendReport, IncomingFrame, Ledger, numbered_batches
from ledger.parse_ahead import ParseAhead
from projections.runner import Projector, verify

RECEIVED_AT = "2026-11-24T09:00:00.000000Z"


def _batches(capture: Path, size: int) -> Iterator[list[IncomingFrame]]:
    lines = enumerate(capture.read_bytes().split(b"\n"), start=1)
    return numbered_batches(lines, "file:session", size, lambda: RECEIVED_AT)


@contextlib.contextmanager
def _parsing_ahead(url: str) -> Iterator[tuple[ParseAhead, Database, Ledger]]:
    """A parsing child for ``url``, and this process's database and ledger."""
    with ParseAhead(url) as ahead:
        db = open_database(url)
        try:
            yield ahead, db, Ledger(db, parse)
        finally:
            db.close()


@pytest.fixture
def imported_here(tmp_path: Path, capture: Path) -> tuple[str, AppendReport]:
    """The capture imported in this process alone: the database and the report."""
    url = str(tmp_path / "here.sqlite")
    db = open_database(url)
    try:
        ledger = Ledger(db, parse)
        report = ledger.ingest_read(ledger.reader.plan(b) for b in _batches(capture, 150))
        Projector(db).catch_up()
        return url, report
    finally:
        db.close()


@pytest.fixture
def capture(tmp_path: Path) -> Path:
    path = tmp_path / "session.jsonl"
    make_capture(path, 1200, seed=11, malformed_rate=0.02)
    return path


def test_a_log_parsed_ahead_is_byte_for_byte_the_log_parsed_here(
    db_url: str, capture: Path, imported_here: tuple[str, AppendReport]
) -> None:
    here, expected = imported_here

    with _parsing_ahead(db_url) as (ahead, db, ledger):
        report = ledger.ingest_read(
            ahead.plan(_batches(capture, 150), ledger.reader), on_batch=ahead.committed
        )
        assert ahead.finish(timeout=120) is None
        projector = Projector(db)
        # The child projected the whole log: nothing is left for this process. It
        # folded the batches from its own parses, told where each landed.
        assert projector.position == db.head() == report.log_position
        assert ahead.pages_folded_unread == 8  # every batch, one page each
        assert verify(db).ok

    assert report.as_json() == expected.as_json()
    assert report.rejected > 0 and report.fills_duplicate > 0
    ahead_log = [row[1:] for row in dump_log(db_url)]
    assert ahead_log == [row[1:] for row in dump_log(here)]


def test_when_the_parsing_process_dies_the_import_parses_here(
    sqlite_url: str, capture: Path, imported_here: tuple[str, AppendReport]
) -> None:
    here, expected = imported_here

    with ParseAhead(sqlite_url) as ahead:
        db = open_database(sqlite_url)
        try:
            ledger = Ledger(db, parse)
            batches = ahead.plan(_batches(capture, 150), ledger.reader)
            total = AppendReport()
            for number, batch in enumerate(batches):
                total.add(ledger.append_read(batch))
                if number == 1:
                    assert ahead.pid is not None
                    os.kill(ahead.pid, signal.SIGKILL)
            assert ahead.failure is not None
            assert ahead.finish(timeout=10) == ahead.failure
            Projector(db).catch_up()
            assert verify(db).ok
        finally:
            db.close()

    assert total.as_json() | {"log_position": 0} == expected.as_json() | {"log_position": 0}
    assert [row[1:] for row in dump_log(sqlite_url)] == [row[1:] for row in dump_log(here)]


def test_a_parsing_process_that_cannot_open_the_database_says_why(
    sqlite_url: str, tmp_path: Path, capture: Path
) -> None:
    with ParseAhead(str(tmp_path / "no-such-folder" / "ledger.sqlite")) as ahead:
        db = open_database(sqlite_url)
        try:
            ledger = Ledger(db, parse)
            report = ledger.ingest_read(ahead.plan(_batches(capture, 150), ledger.reader))
        finally:
            db.close()
        error = ahead.finish(timeout=10)
    assert error is not None and "does not exist" in error
    assert report.frames == len(
        [line for line in capture.read_bytes().split(b"\n") if line.strip()]
    )


def test_another_writers_frames_between_batches_are_read_from_the_log(
    db_url: str, capture: Path, imported_here: tuple[str, AppendReport]
) -> None:
    here, _ = imported_here
    with _parsing_ahead(db_url) as (ahead, db, ledger):
        other = Ledger(db, parse)
        for number, batch in enumerate(ahead.plan(_batches(capture, 150), ledger.reader)):
            ahead.committed(ledger.append_read(batch))
            if number % 3 == 1:
                # Another writer's frame lands between two of this import's batches.
                other.append(
                    [IncomingFrame(b'{"type":"Account","sub_type":"x"}', "ws", RECEIVED_AT)]
                )
        assert ahead.finish(timeout=120) is None
        assert Projector(db).position == db.head()
        assert ahead.pages_folded_unread is not None and ahead.pages_folded_unread > 0
        assert verify(db).ok
    # The import's own frames and claims, in order, are the ones imported in one process.
    mine = [
        row[1:] for row in dump_log(db_url) if b"file:session" in row[-1] or b'"fill"' in row[-1]
    ]
    assert mine == [row[1:] for row in dump_log(here)]


def test_a_caller_may_say_a_batch_committed_after_taking_the_next_one(
    sqlite_url: str, capture: Path
) -> None:
    with _parsing_ahead(sqlite_url) as (ahead, db, ledger):
        held: AppendReport | None = None
        for batch in ahead.plan(_batches(capture, 150), ledger.reader):
            report = ledger.append_read(batch)
            if held is not None:
                ahead.committed(held)  # one batch late: notes still name the right batch
            held = report
        assert held is not None
        ahead.committed(held)
        assert ahead.finish(timeout=120) is None
        assert ahead.pages_folded_unread == 8
        assert verify(db).ok
