"""Crash consistency of ``ledger run``: ``kill -9`` the live follower at seeded moments while
one long session streams on, restart it each time, and end with the exchange's books.

The local exchange (``adapters.deltadefi.exchange``) runs in this process, on its own
event loop, on a free loopback port, and streams ONE seeded generated session for the
whole test; it keeps generating while the ledger is dead, so every frame generated
meanwhile reaches nobody and only the REST backfill can heal it. Its faults are on too:
each connection is dropped after ``DROP_EVERY`` frames and the next ``LOSE_ON_DROP``
frames reach nobody; frames repeat; a few are malformed; one connection stalls (no
frames, no pongs); REST answers 429 storms and 503s.

``ledger run`` is a real subprocess on a real SQLite file or PostgreSQL database. Each run
is killed with SIGKILL at a seeded moment of one of three kinds, taken in a seeded order:

- ``start-up``: a seeded delay after the spawn (imports, opening the store, creating the
  tables, reading back the open gaps, connecting);
- ``backfill``: once the exchange has answered a seeded number of this run's REST
  requests (the backfill after a connect is paging, committing pages, snapshotting);
- ``stream``: once the log head has passed a seeded number of new events.

Each trigger is followed by a seeded jitter (up to 50 ms), so the kill lands anywhere:
mid-transaction, between batches, while projecting. Then the same command is run again.
After the last kill the session is let finish and the last run follows until its books
hold every fill the exchange executed; it is then stopped cleanly (SIGTERM, exit 0).

Pass: the booked fill ids are exactly the exchange's truth (every fill it ever generated,
lost ones included), each once: one ``FillClaimed`` per fill in the log, one row per fill
in the fills view; ``ledger verify`` passes (a replay from zero gives the same state hash);
and the books equal a clean run's.

The clean run is ``ledger ingest`` of the lossless session: every frame the exchange
generated, once, in order (the test checks that the exchange generated exactly those
frames). Its WHOLE state hash cannot equal the followed run's, and for legitimate
reasons, so the test does not compare it:

- ``frames`` counts logged frames: the followed log lacks the frames lost on drops and
  while the ledger was dead, and holds REST pages (orders re-wrapped as ``order_info``),
  REST balance snapshots and repeated websocket frames (a websocket frame has no identity
  but its arrival) that the clean run never saw;
- ``rejects`` digests the malformed frames: the followed run misses those that were lost
  and logs a repeated one twice;
- ``balances`` holds each asset's last accepted snapshot, the number of snapshots and the
  drift: the followed run's last snapshot is the REST one taken by the final backfill
  (locked 0, the exchange's balances now), the clean run's is the session's last frame.

What must be equal is compared exactly: the state hash's ``positions`` section (both
methods, FIFO lots, realized P&L, fees, fill counts, the last fill folded) and its
``fills`` section (the count and order-independent digest of every booked fill's content
but its log position); the ``positions``, ``pnl`` (both methods) and ``fills`` views
(log positions aside); and per asset the expected total (last snapshot + fills since),
which must equal both the clean run's and the exchange's balance.

Default: ``KILLS`` = 12 on each store. ``LEDGER_LONG_TESTS=1``: 50 on each store, over a
proportionally longer session. Reproducible from ``SEED`` (the kill schedule and the
session; thread and process timing still move each kill by milliseconds).
"""

from __future__ import annotations

import json
import random
import secrets
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from adapters.deltadefi.exchange import ExchangeThread, Faults, LocalExchange, SessionSource
from adapters.deltadefi.session import write_capture
from ledger.bootstrap import open_ledger
from ledger.live_bootstrap import open_gap_start, stream_watermark
from reliability._support import (
    LONG,
    Probe,
    child_env,
    kill9,
    ledger_cmd,
    run_json,
    verify_ok,
)

SEED = 20261124
KILLS = 50 if LONG else 12
RATE = 250.0  # frames per second, generated whether or not anyone listens
#: Seconds of session per kill: long enough that the kills end before the session does.
SECONDS_PER_KILL = 3.0
FRAMES = int(RATE * SECONDS_PER_KILL * (KILLS + 2))
MALFORMED = 0.002
DROP_EVERY = 500
LOSE_ON_DROP = 20
MODES = ("start-up", "backfill", "stream")
#: A trigger that does not come within this long (e.g. the session is over, so no stream
#: progress) kills anyway: every planned kill lands.
TRIGGER_TIMEOUT = 8.0
CATCH_UP_TIMEOUT = 120.0

FRAME_TOPICS = ("ledger.events:FrameReceived", "ledger.events:FrameRejected")


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """``ledger ingest`` of the whole session, lossless, on SQLite: the reference books."""
    folder = tmp_path_factory.mktemp("clean-run")
    capture = folder / "session.jsonl"
    truth = write_capture(str(capture), FRAMES, seed=SEED, malformed_rate=MALFORMED)
    url = str(folder / "ledger.sqlite")
    report = run_json(url, "ingest", str(capture))
    assert report["rejected"] > 0, "the session should carry a few malformed frames"
    return {
        "capture": capture,
        "fills": set(truth.fills),
        "books": _books(url),
        "views": _views(url),
    }


# --- reading the books ------------------------------------------------------------------


def _books(url: str) -> dict[str, Any]:
    """The state hash's sections that must equal a clean run's, and per-asset expected totals."""
    services = open_ledger(url)
    try:
        services.projector.catch_up()
        state = services.projector.load()
        canonical = state.canonical()
        return {
            "positions": canonical["positions"],
            "fills": canonical["fills"],
            "expected_totals": {
                asset: b.expected_total for asset, b in sorted(state.balances.assets.items())
            },
            "last_snapshot": {
                asset: (b.free, b.locked) for asset, b in sorted(state.balances.assets.items())
            },
        }
    finally:
        services.close()


def _views(url: str) -> dict[str, Any]:
    """The positions, P&L and fills read models through the CLI, log positions aside."""
    views: dict[str, Any] = {}
    for method in ("average", "fifo"):
        views[f"positions-{method}"] = run_json(url, "positions", "--method", method)["positions"]
        views[f"pnl-{method}"] = run_json(url, "pnl", "--method", method)["totals"]
    views["fills"] = sorted(
        json.dumps({k: v for k, v in f.items() if k != "log_position"}, sort_keys=True)
        for f in run_json(url, "fills")["fills"]
    )
    return views


# --- the run, killed --------------------------------------------------------------------


def _exchange(key: str, faults: Faults | None = None) -> ExchangeThread:
    faults = faults or Faults(
        drop_every=DROP_EVERY,
        lose_on_drop=LOSE_ON_DROP,
        repeat_rate=0.02,
        stall_connection=4,
        stall_after=150,
        stall_timeout=5.0,
        rate_limit_every=60,
        rate_limit_burst=2,
        retry_after=0.05,
        server_error_every=35,
        seed=SEED,
    )

    def build() -> LocalExchange:
        source = SessionSource(FRAMES, SEED, malformed_rate=MALFORMED)
        return LocalExchange(source, key, rate=RATE, faults=faults, keep_frames=True)

    return ExchangeThread(build)


def _run_cmd(url: str, ex: ExchangeThread) -> list[str]:
    return ledger_cmd(
        url,
        "run",
        "--ws-url", ex.ws_url,
        "--rest-url", ex.rest_url,
        "--retry-initial", "0.02",
        "--retry-cap", "0.5",
        "--heal-interval", "2",
        "--ping-interval", "1",
        "--ping-timeout", "1",
        "--log-format", "json",
        "--log-level", "warning",
    )  # fmt: skip


class KilledRuns:
    """Starts ``ledger run`` again and again and SIGKILLs each run at its seeded moment."""

    def __init__(self, url: str, ex: ExchangeThread, key: str, log: Path) -> None:
        self.url = url
        self.ex = ex
        self.cmd = _run_cmd(url, ex)
        self.env = child_env(DELTADEFI_API_KEY=key, DELTADEFI_REST_MIN_INTERVAL="0")
        self.log = log
        self.probe = Probe(url)
        self.kills: dict[str, int] = {mode: 0 for mode in MODES}
        self.timeouts = 0

    def start(self) -> subprocess.Popen[bytes]:
        with self.log.open("ab") as out:
            return subprocess.Popen(self.cmd, stdout=out, stderr=out, env=self.env)

    def _rest_requests(self) -> int:
        return self.ex.call(lambda e: e.stats.rest_requests)

    def _trigger(self, mode: str, rng: random.Random) -> Callable[[], bool]:
        """A predicate that turns true at this run's seeded moment."""
        spawned = time.monotonic()
        if mode == "start-up":
            delay = rng.uniform(0.05, 1.5)
            return lambda: time.monotonic() - spawned >= delay
        if mode == "backfill":
            target = self._rest_requests() + rng.randint(1, 8)
            return lambda: self._rest_requests() >= target
        target = self.probe.head() + rng.randint(20, 1200)
        return lambda: self.probe.head() >= target

    def kill_once(self, mode: str, rng: random.Random) -> None:
        proc = self.start()
        try:
            fired = self._trigger(mode, rng)
            jitter = rng.uniform(0, 0.05)
            deadline = time.monotonic() + TRIGGER_TIMEOUT
            while not fired():
                if proc.poll() is not None:
                    raise AssertionError(
                        f"ledger run exited by itself ({proc.returncode}): see {self.log}"
                    )
                if time.monotonic() > deadline:
                    self.timeouts += 1
                    break
                time.sleep(0.005)
            time.sleep(jitter)
            assert proc.poll() is None, f"ledger run exited by itself: see {self.log}"
        finally:
            kill9(proc)
        assert proc.returncode == -signal.SIGKILL
        self.kills[mode] += 1

    def _caught_up(self, want: set[str], balances: dict[str, dict[str, Decimal]]) -> bool:
        """Every fill booked, and a snapshot taken after the session's end: each asset's
        expected total is the exchange's balance, and so is its last snapshot where the
        exchange's balance is valid (an earlier snapshot plus the fills since can add up
        to the same total before the final one is logged)."""
        if set(self.probe.fill_ids()) != want:
            return False
        found = self.probe.balances()
        totals = {a: b["free"] + b["locked"] for a, b in balances.items()}
        if {a: Decimal(r["expected_total"]) for a, r in found.items()} != totals:
            return False
        return all(
            (Decimal(found[a]["free"]), Decimal(found[a]["locked"])) == (b["free"], b["locked"])
            for a, b in balances.items()
            if b["free"] >= 0 and b["locked"] >= 0
        )

    def follow_to_the_end(self, want: set[str]) -> float:
        """The last run: until the session is over and the books hold every fill and the
        final balances; then stopped cleanly. Returns the seconds it took after the
        session ended."""
        proc = self.start()
        try:
            assert self.ex.wait_finished(FRAMES / RATE + 120), "the session did not finish"
            ended = time.monotonic()
            balances = self.ex.call(lambda e: e.truth())["balances"]
            deadline = ended + CATCH_UP_TIMEOUT
            while not self._caught_up(want, balances):
                assert proc.poll() is None, f"ledger run exited by itself: see {self.log}"
                assert time.monotonic() < deadline, (
                    f"not caught up {CATCH_UP_TIMEOUT:.0f}s after the session ended: "
                    f"{len(want - set(self.probe.fill_ids()))} fills missing"
                )
                time.sleep(0.2)
            caught_up = time.monotonic() - ended
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0, f"the clean stop failed: see {self.log}"
            return caught_up
        finally:
            if proc.poll() is None:
                kill9(proc)
            self.probe.close()


def test_kill9_during_ledger_run_ends_with_the_exchanges_books(
    db_url: str, clean_run: dict[str, Any], tmp_path: Path
) -> None:
    started = time.monotonic()
    rng = random.Random(SEED)
    # Every kind of moment, in a seeded order; the first run dies while creating the store.
    modes = [MODES[i % len(MODES)] for i in range(KILLS - 1)]
    rng.shuffle(modes)
    modes.insert(0, "start-up")
    key = "ddk_" + secrets.token_hex(20)
    log = tmp_path / "ledger-run.log"

    with _exchange(key) as ex:
        runs = KilledRuns(db_url, ex, key, log)
        for mode in modes:
            runs.kill_once(mode, rng)
        generated_at_last_kill = ex.call(lambda e: e.stats.generated)
        settle = runs.follow_to_the_end(clean_run["fills"])
        truth = ex.call(lambda e: e.truth())
        stats = ex.call(lambda e: e.stats.as_json())
        lossless = ex.call(lambda e: list(e.generated_frames))

    assert generated_at_last_kill < FRAMES, "the session ended before the last kill"
    assert b"Traceback" not in log.read_bytes(), f"a run failed: see {log}"
    assert key.encode() not in log.read_bytes()
    # The reference is the session this exchange generated, frame for frame.
    lines = clean_run["capture"].read_text(encoding="utf-8").splitlines()
    assert lossless == lines
    assert set(truth["fills"]) == clean_run["fills"]
    assert stats["lost"] > 0, "no frame was lost: REST backfill was never needed"

    probe = Probe(db_url)
    try:
        booked = probe.fill_ids()
        assert len(booked) == len(set(booked)), "a fill has two rows"
        assert set(booked) == set(truth["fills"])
        assert probe.claim_count() == len(truth["fills"]), "a fill was claimed twice"
        frames_logged = probe.count_topics(*FRAME_TOPICS)
        holes = probe.head() - probe.event_count()
    finally:
        probe.close()
    if holes:
        assert db_url.startswith("postgresql://"), "SQLite log positions have holes"
    verify_ok(db_url)

    books = _books(db_url)
    reference = clean_run["books"]
    assert books["positions"] == reference["positions"]
    assert books["fills"] == reference["fills"]
    assert _views(db_url) == clean_run["views"]
    exchange_totals = {a: b["free"] + b["locked"] for a, b in truth["balances"].items()}
    assert books["expected_totals"] == exchange_totals
    assert reference["expected_totals"] == exchange_totals
    # The final snapshot is the exchange's balances now, where valid (a generated session
    # can overdraw an asset, and a negative balance is rightly rejected).
    for asset, want in truth["balances"].items():
        if want["free"] >= 0 and want["locked"] >= 0:
            assert books["last_snapshot"][asset] == (want["free"], want["locked"])

    status = run_json(db_url, "status")
    # Runs killed before they connected leave no trace in the connection history.
    assert 1 < status["runs"] <= KILLS + 1
    wall = time.monotonic() - started
    print(
        f"\nFIGURES kill9-run: {KILLS} kills ({', '.join(f'{n} {m}' for m, n in runs.kills.items())};"
        f" {runs.timeouts} by timeout) in {status['runs']} runs, {stats['generated']} frames "
        f"generated, {stats['lost']} lost to every client, {frames_logged} frames logged, "
        f"{len(truth['fills'])} fills, {status['reconnects']} reconnects, {stats['drops']} drops, "
        f"{stats['rest_rate_limited']} HTTP 429, {stats['rest_server_errors']} HTTP 503, "
        f"{status['backfills']} backfills, gaps healed {status['gaps_healed']} "
        f"({status['fills_healed']} fills), position holes {holes}, caught up {settle:.1f}s "
        f"after the session, wall {wall:.0f}s"
    )


def _gap_reading(url: str) -> tuple[str | None, str]:
    """(the stream's watermark, where a new run's backfill would reach back to), in-process."""
    services = open_ledger(url)
    try:
        return stream_watermark(services), open_gap_start(services)
    finally:
        services.close()


def test_a_run_killed_before_its_backfill_passes_its_gap_on(db_url: str, tmp_path: Path) -> None:
    """The regression the long variant found: run A dies; run B starts with A's gap, takes
    new fills from the websocket (the watermark moves past the gap) and dies before its
    backfill healed the gap (here every REST request answers 503). Run C must still reach
    back to A's gap; it used to start from B's watermark, and the fills lost while A was
    dead stayed unbooked for good once they sat deeper than the first page of a listing."""
    key = "ddk_" + secrets.token_hex(20)
    log = tmp_path / "ledger-run.log"
    with _exchange(key, Faults(seed=SEED)) as ex:
        runs = KilledRuns(db_url, ex, key, log)
        proc = runs.start()
        try:
            deadline = time.monotonic() + 30
            while len(runs.probe.fill_ids()) < 50:
                assert proc.poll() is None and time.monotonic() < deadline, f"see {log}"
                time.sleep(0.05)
        finally:
            kill9(proc)
        watermark_a, _ = _gap_reading(db_url)
        assert watermark_a is not None
        ex.call(lambda e: setattr(e, "faults", replace(e.faults, server_error_every=1)))
        booked = len(runs.probe.fill_ids())
        proc = runs.start()
        try:
            deadline = time.monotonic() + 30
            while len(runs.probe.fill_ids()) < booked + 50:
                assert proc.poll() is None and time.monotonic() < deadline, f"see {log}"
                time.sleep(0.05)
        finally:
            kill9(proc)
        runs.probe.close()
        rest = ex.call(lambda e: (e.stats.rest_requests, e.stats.rest_server_errors))
    watermark_b, gap = _gap_reading(db_url)
    assert watermark_b is not None and watermark_b > watermark_a, "B took no fill from the stream"
    assert rest[1] > 0, "B's backfill was never refused"
    assert gap <= watermark_a, f"run C would start from {gap}, after A's gap at {watermark_a}"
