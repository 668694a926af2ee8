"""Reading ahead: a replay whose pages are read and parsed by a second process ends in
exactly the state of one that reads them itself."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers import REPO, make_capture

from adapters.deltadefi import fast_path
from adapters.deltadefi.frames import parse
from adapters.storage import open_database
from ledger.application import Ledger
from ledger.domain import ParsedFrame
from ledger.events import FRAME_TOPICS, split_state
from projections import read_ahead, runner
from projections.runner import Projector, Replay, Window, fills_tally


def _ingest(url: str, capture: Path) -> None:
    db = open_database(url)
    try:
        lines = list(enumerate(capture.read_bytes().splitlines(), 1))
        Ledger(db, parse).ingest_lines(lines, "session", batch_size=500)
    finally:
        db.close()


@pytest.fixture
def counted_children(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Read ahead from the first event on, in small pages; count the children started
    (forked or spawned)."""
    monkeypatch.setattr(runner, "READ_AHEAD_MIN_EVENTS", 1)
    started: list[int] = []

    def counted(start: Any) -> Any:
        def counting(*args: Any) -> Any:
            process = start(*args)
            started.append(process.pid)
            return process

        return counting

    monkeypatch.setattr(read_ahead, "start_child", counted(read_ahead.start_child))
    monkeypatch.setattr(read_ahead, "spawn_child", counted(read_ahead.spawn_child))
    return started


@pytest.fixture
def child_pages(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The end position of every page the parent received from a child."""
    received: list[int] = []
    real = read_ahead.ReadAhead.next

    def counting(self: read_ahead.ReadAhead) -> read_ahead.ReadPage | None:
        page = real(self)
        if page is not None:
            received.append(page.end)
        return page

    monkeypatch.setattr(read_ahead.ReadAhead, "next", counting)
    return received


def test_a_rebuild_read_ahead_equals_one_read_in_process(
    db_url: str, tmp_path: Path, counted_children: list[int], child_pages: list[int]
) -> None:
    capture = tmp_path / "session.jsonl"
    make_capture(capture, 3000, seed=11, malformed_rate=0.02)
    _ingest(db_url, capture)
    db = open_database(db_url)
    try:
        in_process = Projector(db, page_size=300)
        expected = in_process.catch_up(), in_process.load().canonical(), fills_tally(db)
        assert counted_children == []

        fast_path.forget()
        ahead = Projector(db, page_size=300)
        state = ahead.rebuild()
        # A replay parses each frame once: it keeps no memory of recent parses.
        raws = [
            stored.partition(b"\n")[2]
            for _, topic, stored in db.read_page(0, 100_000)
            if topic in FRAME_TOPICS
        ]
        assert raws and not any(fast_path.recall(raw) for raw in raws)
        # On PostgreSQL the child is spawned: the connection pool runs worker threads,
        # and a process with threads is never forked (projections.forking.can_fork).
        assert len(counted_children) == 1
        # The child read the first CHILD_PAGES of every CHILD_PAGES + 1, to the end.
        ends, at = [], 0
        while page := db.read_page(at, 300, stop=None):
            at = page[-1][0]
            ends.append(at)
        every = read_ahead.CHILD_PAGES + 1
        assert child_pages == [end for i, end in enumerate(ends) if i % every < every - 1]
        assert (ahead.position, state.canonical(), fills_tally(db)) == expected
        # Rejected frames kept their raw bytes through the pipe.
        with db.reading() as cur:
            cur.execute("SELECT COUNT(*), SUM(LENGTH(raw)) FROM ledger_rejects")
            count, raw_bytes = cur.fetchone()
        assert count > 0 and raw_bytes > 0
    finally:
        db.close()


def test_a_windowed_replay_read_ahead_stops_where_it_is_told(
    sqlite_url: str,
    tmp_path: Path,
    counted_children: list[int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The CLI's ``--as-of-seq`` path: a replay into a scratch database up to a position."""
    capture = tmp_path / "session.jsonl"
    make_capture(capture, 2000, seed=12)
    _ingest(sqlite_url, capture)
    db = open_database(sqlite_url)
    try:
        stop = db.head() // 2
        with Replay(db, window=Window(stop=stop)) as replay:
            replay.projector.page_size = 250
            ahead = replay.run()
            assert replay.projector.position == stop
        assert len(counted_children) == 1
        monkeypatch.setattr(runner, "READ_AHEAD_MIN_EVENTS", 10**12)
        with Replay(db, window=Window(stop=stop)) as replay:
            assert replay.run().state_hash() == ahead.state_hash()
        assert len(counted_children) == 1
    finally:
        db.close()


def test_a_replay_as_of_a_time_reads_ahead_to_the_state_of_one_read_in_process(
    sqlite_url: str,
    tmp_path: Path,
    counted_children: list[int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The CLI's ``--as-of`` path: the fold reads a balance snapshot's time from its
    stored header, so the child must send the headers of snapshots (and of rejected
    frames, for their source), though it leaves out every other frame's."""
    capture = tmp_path / "session.jsonl"
    make_capture(capture, 3000, seed=15, malformed_rate=0.02)
    _ingest(sqlite_url, capture)
    db = open_database(sqlite_url)
    try:
        received = [
            split_state(stored)[0]["at"]
            for _, topic, stored in db.read_page(0, 100_000)
            if topic in FRAME_TOPICS and b'"balance"' in stored
        ]
        window = Window(received_until=received[len(received) // 2])

        def replayed() -> dict[str, Any]:
            with Replay(db, window=window) as replay:
                replay.projector.page_size = 250
                state = replay.run().canonical()
                with replay.views_db.reading() as cur:
                    cur.execute("SELECT COUNT(*), MIN(source) FROM ledger_rejects")
                    count, source = cur.fetchone()
                assert count > 0 and source  # every rejected frame kept its source
            return state

        ahead = replayed()
        assert len(counted_children) == 1
        monkeypatch.setattr(runner, "READ_AHEAD_MIN_EVENTS", 10**12)
        assert replayed() == ahead
        assert len(counted_children) == 1
        with Replay(db) as everything:
            assert everything.run().canonical()["balances"] != ahead["balances"]
    finally:
        db.close()


def test_a_failing_child_hands_the_work_back_to_the_parent(
    sqlite_url: str, tmp_path: Path, counted_children: list[int]
) -> None:
    capture = tmp_path / "session.jsonl"
    make_capture(capture, 1500, seed=13)
    _ingest(sqlite_url, capture)
    parent = os.getpid()
    calls = {"n": 0}

    def parse_failing_in_the_child(raw: bytes) -> ParsedFrame:
        if os.getpid() != parent:
            calls["n"] += 1
            if calls["n"] > 400:  # a page or so in, the child breaks down
                raise RuntimeError("the child's parser broke")
        return parse(raw)

    db = open_database(sqlite_url)
    try:
        expected = Projector(db).rebuild().state_hash()
        broken = Projector(db, parse=parse_failing_in_the_child, page_size=200)
        assert broken.rebuild().state_hash() == expected
        assert broken.position == db.head()
        assert len(counted_children) == 2  # each rebuild read ahead
    finally:
        db.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="pipes are resized on Linux")
def test_the_pipe_from_the_child_holds_several_pages(sqlite_url: str, tmp_path: Path) -> None:
    """A default pipe (64 kB) holds less than one pickled page, so the child would stall
    on every page until the parent takes it."""
    import fcntl

    limit = int(Path("/proc/sys/fs/pipe-max-size").read_text())
    expected = min(read_ahead.PIPE_BYTES, limit)
    capture = tmp_path / "session.jsonl"
    make_capture(capture, 200, seed=14)
    _ingest(sqlite_url, capture)
    db = open_database(sqlite_url)
    try:
        ahead = read_ahead.ReadAhead(db, parse, after=0, page_size=50, stop=None)
        try:
            held = fcntl.fcntl(ahead._pages.fileno(), fcntl.F_GETPIPE_SZ)
            assert held >= expected > 64 * 1024
            page = ahead.next()
            assert page is not None and page.after == 0 and page.frames
        finally:
            ahead.close()
    finally:
        db.close()


@pytest.mark.postgres
def test_a_spawned_child_does_not_run_the_callers_script_again(pg_url: str, tmp_path: Path) -> None:
    """A bot's script without an ``if __name__ == "__main__"`` guard rebuilds on PostgreSQL,
    where the read-ahead child is spawned: its top-level code runs once, not again in the
    child (multiprocessing's spawn would import the main script there), and the child still
    reads ahead."""
    capture = tmp_path / "session.jsonl"
    make_capture(capture, 1500, seed=14)
    _ingest(pg_url, capture)
    script = tmp_path / "unguarded_bot.py"
    script.write_text(
        "import sys\n"
        "print('bot started', flush=True)\n"
        "from adapters.storage import open_database\n"
        "from projections import read_ahead, runner\n"
        "runner.READ_AHEAD_MIN_EVENTS = 1\n"
        "pages = []\n"
        "real = read_ahead.ReadAhead.next\n"
        "def counting(self):\n"
        "    page = real(self)\n"
        "    if page is not None:\n"
        "        pages.append(page.end)\n"
        "    return page\n"
        "read_ahead.ReadAhead.next = counting\n"
        f"db = open_database({pg_url!r})\n"
        "state = runner.Projector(db, page_size=200).rebuild()\n"
        "db.close()\n"
        "print('pages from the child', len(pages), flush=True)\n"
        "print('hash', state.state_hash(), flush=True)\n"
    )
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("bot started") == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    child_pages = int(done.stdout.split("pages from the child ")[1].split()[0])
    assert child_pages >= 2, done.stdout
    db = open_database(pg_url)
    try:
        assert f"hash {Projector(db).rebuild().state_hash()}" in done.stdout
    finally:
        db.close()
