"""Concurrent writers on one database: every fill is booked exactly once.

Real OS processes run ``ledger ingest`` at the same time against one SQLite file or one
PostgreSQL database; only the store's uniqueness constraint stands between them.
"""

from __future__ import annotations

import json
import multiprocessing
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from helpers import (
    FILL_CLAIMED,
    count_topic,
    ledger_json,
    make_capture,
    query,
    signed_quantities,
    start_ledger,
)

from adapters.deltadefi.frames import parse
from adapters.deltadefi.session import ExchangeTruth, Session
from adapters.storage import Database, open_database
from ledger.bootstrap import open_ledger
from ledger.events import FRAME_TOPICS
from projections.runner import Projector, verify
from projections.views import PROJECTION_NAME

FRAMES = 3000
BATCH = "50"  # many small transactions, so the two writers interleave


def _ingest_at_once(db: str, captures: Sequence[Path]) -> list[dict[str, Any]]:
    """Start one ``ledger ingest`` per capture at the same moment; wait for all."""
    procs = [
        start_ledger(db, "ingest", str(path), "--batch-size", BATCH, "--json") for path in captures
    ]
    reports = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=180)
        assert proc.returncode == 0, stderr.decode(errors="replace")
        assert b"Traceback" not in stderr
        reports.append(json.loads(stdout))
    return reports


def _assert_booked_exactly_once(db: str, truth: ExchangeTruth) -> None:
    booked = [f["fill_id"] for f in ledger_json(db, "fills")["fills"]]
    assert len(booked) == len(set(booked))
    assert set(booked) == set(truth.fills)
    assert count_topic(db, FILL_CLAIMED) == len(truth.fills)

    positions = ledger_json(db, "positions")["positions"]
    quantities = {p["symbol"]: p["quantity"] for p in positions}
    assert quantities == {s: str(q) for s, q in signed_quantities(truth).items()}

    verified = ledger_json(db, "verify")
    assert verified["ok"] is True, verified["differences"]


def test_two_processes_ingesting_one_capture_book_each_fill_once(
    db_url: str, tmp_path: Path
) -> None:
    capture = tmp_path / "session.jsonl"
    truth = make_capture(capture, FRAMES, seed=31, malformed_rate=0.005)

    reports = _ingest_at_once(db_url, [capture, capture])

    for report in reports:
        assert report["frames"] == FRAMES
        assert report["appended"] + report["already_ingested"] == FRAMES
    # Each line was appended by exactly one of the two, and each fill claimed by exactly one.
    assert sum(r["appended"] for r in reports) == FRAMES
    assert sum(r["fills_new"] for r in reports) == len(truth.fills)
    frames_in_log = query(
        db_url, "SELECT COUNT(*) FROM stored_events WHERE topic IN (?, ?)", FRAME_TOPICS
    )[0][0]
    assert frames_in_log == FRAMES
    _assert_booked_exactly_once(db_url, truth)


def test_two_processes_ingesting_copies_of_a_capture_book_each_fill_once(
    db_url: str, tmp_path: Path
) -> None:
    """The real dedup test: two files hold the same frames, so every frame is a new log
    entry (its id includes its source) but every fill id collides with the other writer's."""
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    truth = make_capture(first, FRAMES, seed=32, malformed_rate=0.005)
    shutil.copyfile(first, second)

    reports = _ingest_at_once(db_url, [first, second])

    for report in reports:
        assert report["appended"] == FRAMES
        assert report["already_ingested"] == 0
        assert report["conflicts"] == 0
    assert sum(r["fills_new"] for r in reports) == len(truth.fills)
    frames_in_log = query(
        db_url, "SELECT COUNT(*) FROM stored_events WHERE topic IN (?, ?)", FRAME_TOPICS
    )[0][0]
    assert frames_in_log == 2 * FRAMES
    _assert_booked_exactly_once(db_url, truth)


class _LogThatLetsAnotherProjectorIn:
    """The real log, except that just before its first page is read, another projector
    catches up and more frames are appended: the window in which two ``ledger`` processes
    projecting at the same time interleave. Everything else is the real database."""

    def __init__(self, db: Database, meanwhile: Callable[[], None]) -> None:
        self._db = db
        self._meanwhile = meanwhile
        self.fired = False

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._db, name)
        # The page readers (``read``, ``read_page``, ...), not the ``reading()`` transaction.
        if not name.startswith("read") or name == "reading" or not callable(attr):
            return attr

        def read_after_the_other_projector(*args: Any, **kwargs: Any) -> Any:
            if not self.fired:
                self.fired = True
                self._meanwhile()
            return attr(*args, **kwargs)

        return read_after_the_other_projector


def test_a_projector_that_fell_behind_does_not_overwrite_newer_views(db_url: str) -> None:
    frames = [line.encode() for line in Session(33).frames(400)]
    services = open_ledger(db_url)
    try:
        services.ledger.ingest_lines(enumerate(frames[:200], start=1), "file:race")

        def another_process_projects_and_ingests() -> None:
            Projector(services.db, parse=parse).catch_up()
            rest = ((n, raw) for n, raw in enumerate(frames, start=1) if n > 200)
            services.ledger.ingest_lines(rest, "file:race")

        log = _LogThatLetsAnotherProjectorIn(services.db, another_process_projects_and_ingests)
        late = Projector(log, services.db, parse=parse)  # type: ignore[arg-type]
        late.catch_up()
        assert log.fired, "the projector read its page some other way: the race never ran"
        Projector(services.db, parse=parse).catch_up()

        result = verify(services.db)
        assert result.ok, result.differences
        assert result.log_position == services.db.head()
    finally:
        services.close()


def _open_and_close(path: str, errors: Any) -> None:
    try:
        open_database(path).close()
    except Exception as exc:  # the test reports every error a child saw
        errors.put(f"{type(exc).__name__}: {exc}")


def test_processes_opening_one_new_sqlite_file_at_once_all_succeed(tmp_path: Path) -> None:
    """Six processes open the same new file together, 10 times over. SQLite answers
    some of these races at once rather than waiting (the switch to WAL, a stale read of
    the schema): without a retry about one round in three failed with 'database is
    locked' or a tracking-row IntegrityError."""
    context = multiprocessing.get_context("spawn")
    errors = context.Queue()
    for round_ in range(10):
        path = str(tmp_path / f"new-{round_}.sqlite")
        procs = [context.Process(target=_open_and_close, args=(path, errors)) for _ in range(6)]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join(timeout=120)
        assert [proc.exitcode for proc in procs] == [0] * 6
    seen = []
    while not errors.empty():
        seen.append(errors.get())
    assert seen == []
    services = open_ledger(str(tmp_path / "new-0.sqlite"))
    try:
        assert services.db.tracking_position(PROJECTION_NAME) == 0
        assert services.db.read_page(0, 10) == []
    finally:
        services.close()
