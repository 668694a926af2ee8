"""Crash consistency: ``kill -9`` the ingest process at seeded moments, restart, converge.

One long generated stream is ingested with a small batch size. Kill points are seeded
positions in the run's progress (log head while appending, then the projections'
tracking position while they catch up), each followed by a seeded jitter of up to
50 ms so the SIGKILL lands anywhere: mid-transaction, between batches, while
projecting, during start-up. After every kill the same command is simply run again.

Pass: the booked fill ids are exactly the exchange's, each once (one claim per fill in
the log, one row per fill in the views); the log holds exactly as many events as a clean
run's; every read model (positions both ways, P&L, balances, fills, rejects; log
positions aside, see ``views_without_positions``) and the state hash equal the clean
run's; ``ledger verify`` passes.

Default: 12 kills on each store. ``LEDGER_LONG_TESTS=1``: the full 50 on a 40,000-frame
stream. Reproducible from ``SEED``.
"""

from __future__ import annotations

import random
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from reliability._support import (
    LONG,
    Probe,
    child_env,
    kill9,
    ledger_cmd,
    run_json,
    state_hash,
    verify_ok,
    views_without_positions,
)

SEED = 20260320
FRAMES = 40_000 if LONG else 16_000
KILLS = 50 if LONG else 12
BATCH = 200


@pytest.fixture(scope="module")
def clean_run(
    capture_factory: Callable[..., Any], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """One uninterrupted run of the capture on SQLite: the reference."""
    capture, truth = capture_factory(FRAMES, SEED, 0.002)
    url = str(tmp_path_factory.mktemp("clean") / "ledger.sqlite")
    report = run_json(url, "ingest", str(capture), "--batch-size", str(BATCH))
    probe = Probe(url)
    reference = {
        "capture": capture,
        "truth": truth,
        "report": report,
        "head": probe.head(),
        "events": probe.event_count(),
        "hash": state_hash(url),
        "views": views_without_positions(url),
    }
    probe.close()
    assert report["rejected"] > 0, "the stream should carry a few malformed frames"
    assert set(Probe(url).fill_ids()) == set(truth.fills)
    return reference


def _ingest_with_kills(
    url: str, capture: Path, targets: list[int], rng: random.Random, log: Path
) -> tuple[int, int]:
    """Run ingest again and again, killing it when progress passes each target.

    Returns (kills made, runs started).
    """
    probe = Probe(url)
    kills = runs = 0
    cmd = ledger_cmd(url, "ingest", str(capture), "--json", "--batch-size", str(BATCH))
    try:
        for target in targets:
            runs += 1
            with log.open("ab") as err:
                proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=child_env())
            deadline = time.monotonic() + 300
            while proc.poll() is None and time.monotonic() < deadline:
                if probe.head() + probe.tracking() >= target:
                    time.sleep(rng.uniform(0, 0.05))
                    if proc.poll() is None:
                        kill9(proc)
                        kills += 1
                    break
                time.sleep(0.005)
            else:
                if proc.poll() is None:
                    kill9(proc)
                    raise AssertionError("an ingest run hung")
            if proc.returncode == 0:
                break  # the stream finished before the target: no later target is reachable
            assert proc.returncode == -9, f"ingest failed by itself: see {log}"
    finally:
        probe.close()
    return kills, runs


def test_kill9_during_ingest_converges_to_the_clean_run(
    db_url: str, clean_run: dict[str, Any], tmp_path: Path
) -> None:
    rng = random.Random(SEED)
    span = 2 * clean_run["head"]  # appending to the head, then projecting up to it
    # Spread the targets over the run, never in its last 2 %: each kill must land.
    targets = sorted(rng.randrange(1, int(span * 0.98)) for _ in range(KILLS))
    kills, runs = _ingest_with_kills(
        db_url, clean_run["capture"], targets, rng, tmp_path / "ingest-stderr.log"
    )
    run_json(db_url, "ingest", str(clean_run["capture"]), "--batch-size", str(BATCH))

    assert kills >= KILLS - 1, f"only {kills} of {KILLS} kills landed in {runs} runs"
    truth = clean_run["truth"]
    probe = Probe(db_url)
    try:
        booked = probe.fill_ids()
        assert len(booked) == len(set(booked)) == len(truth.fills)
        assert set(booked) == set(truth.fills)
        assert probe.claim_count() == len(truth.fills)
        assert probe.event_count() == clean_run["events"]
        gaps = probe.head() - probe.event_count()
    finally:
        probe.close()
    assert views_without_positions(db_url) == clean_run["views"]
    # Log positions are not hashed, so this holds even where PostgreSQL's sequence
    # skipped the numbers of a killed transaction.
    assert state_hash(db_url) == clean_run["hash"]
    if gaps:
        assert db_url.startswith("postgresql://"), "SQLite log positions have gaps"
    verify_ok(db_url)
    print(
        f"\nFIGURES kill9-ingest: {kills} kills in {runs} runs, {FRAMES} frames, "
        f"{len(truth.fills)} fills, {clean_run['events']} events, position gaps {gaps}"
    )
