"""The follower: projections caught up by a second process while this one appends."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

from helpers import make_capture, ok, run_ledger, start_ledger

from adapters.deltadefi.frames import parse
from adapters.storage import open_database
from ledger.application import Ledger
from projections.follower import Follower
from projections.runner import Projector, verify


def _lines(path: Path) -> list[tuple[int, bytes]]:
    return list(enumerate(path.read_bytes().splitlines(), 1))


def test_a_follower_brings_the_projections_to_the_log_head(db_url: str, tmp_path: Path) -> None:
    capture = tmp_path / "session.jsonl"
    make_capture(capture, 1500, seed=3)
    with Follower(db_url) as follower:
        db = open_database(db_url)
        try:
            report = Ledger(db, parse).ingest_lines(_lines(capture), "session", batch_size=100)
            assert follower.finish(timeout=120) is None
            projector = Projector(db)
            # The child got there: nothing is left for this process to project.
            assert projector.position == db.head() == report.log_position
            assert verify(db).ok
        finally:
            db.close()


def test_a_follower_that_cannot_open_the_database_says_why(tmp_path: Path) -> None:
    with Follower(str(tmp_path / "no-such-folder" / "ledger.sqlite")) as follower:
        error = follower.finish(timeout=60)
    assert error is not None
    assert "does not exist" in error


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found += [int(child) for child in text]
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_the_follower_of_a_killed_import_exits_and_the_rerun_converges(
    sqlite_url: str, tmp_path: Path
) -> None:
    """``kill -9`` of ``ledger ingest`` kills its projector process too (at once, as if it
    were one process), and the same command run again finishes the job."""
    capture = tmp_path / "session.jsonl"
    make_capture(capture, 12_000, seed=5)
    proc = start_ledger(sqlite_url, "ingest", str(capture), "--batch-size", "200", "--json")
    follower_pid = None
    deadline = time.monotonic() + 60
    while follower_pid is None and time.monotonic() < deadline:
        children = _children(proc.pid)
        follower_pid = children[0] if children else None
        time.sleep(0.01)
    assert follower_pid is not None, "ledger ingest started no projector process"
    time.sleep(0.5)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 5
    while _alive(follower_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(follower_pid), "the orphaned projector is still running"
    ok(run_ledger(sqlite_url, "ingest", str(capture), "--json"))
    assert '"ok": true' in ok(run_ledger(sqlite_url, "verify", "--json"))


def test_a_process_running_threads_projects_in_process(sqlite_url: str, tmp_path: Path) -> None:
    """A fork copies one thread: a lock held by another would stay locked in the child
    for ever. With a second thread running, no child is started and the caller's own
    catch-up does the projecting."""
    capture = tmp_path / "session.jsonl"
    make_capture(capture, 300, seed=4)
    stop = threading.Event()
    other = threading.Thread(target=stop.wait, daemon=True)
    other.start()
    try:
        with Follower(sqlite_url) as follower:
            assert not follower.running
            db = open_database(sqlite_url)
            try:
                Ledger(db, parse).ingest_lines(_lines(capture), "session")
                assert follower.finish(timeout=10) is None
                projector = Projector(db)
                assert projector.position == 0  # nobody projected yet
                assert projector.catch_up() == db.head()
            finally:
                db.close()
    finally:
        stop.set()
        other.join()
