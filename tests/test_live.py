"""The live path against the local DeltaDeFi exchange on loopback, through ``ledger run``'s code.

Every test checks the ledger against the exchange's own truth: every fill it executed
(lost frames included) and its final balances. In-process tests call ``follow_account``,
the function ``ledger run`` calls; the others run the ``ledger run`` command itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import signal
import sqlite3
import subprocess
import time
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from live_helpers import (
    FAST,
    LEDGER,
    balance_frames,
    balances,
    booked_fills,
    caught_up,
    caught_up_at,
    claims,
    events,
    follow_in_process,
    ledger_env,
    ledger_view,
    local_exchange,
    new_key,
    run_args,
    start_ledger,
    truth,
    wait_until,
)
from typer.testing import CliRunner

from adapters.deltadefi.exchange import Faults
from adapters.deltadefi.rest import RestClient, RetryPolicy
from ledger.bootstrap import open_ledger
from ledger.cli import app
from ledger.live import Follower, FollowStats, cancel_and_wait
from ledger.live_bootstrap import LiveConfig, close_follower, follow_account, open_follower
from ledger.live_ports import AuthenticationError, SourceUnavailable
from projections import reports
from projections.runner import verify

CONNECTED = "ledger.events:Connected"
DISCONNECTED = "ledger.events:Disconnected"
BACKFILL = "ledger.events:BackfillCompleted"


def assert_matches_exchange(db: str, want: dict[str, Any]) -> None:
    """Booked fills are the exchange's fills exactly, once each, with the same content;
    balances are its final balances; the projections equal a fresh replay of the log."""
    fills = booked_fills(db)
    executed = want["fills"]
    missing, extra = set(executed) - set(fills), set(fills) - set(executed)
    assert not missing and not extra, f"missing {sorted(missing)[:5]}, extra {sorted(extra)[:5]}"
    assert claims(db) == len(executed), "a fill was claimed twice"
    for fill_id, record in executed.items():
        got = fills[fill_id]
        assert (got["symbol"], got["side"]) == (record["symbol"], record["side"])
        assert Decimal(got["price"]) == Decimal(record["execution_price"])
        assert Decimal(got["quantity"]) == Decimal(record["filled_base_qty"])
        assert Decimal(got["quote"]) == Decimal(record["filled_quote_qty"])
    assert balances(db) == want["balances"]
    services = open_ledger(db)
    try:
        result = verify(services.db)
    finally:
        services.close()
    assert result.ok, result.differences


def test_twenty_disconnects_with_frames_lost_book_every_fill_exactly_once(tmp_path: Path) -> None:
    key = new_key()
    db = str(tmp_path / "ledger.sqlite")
    capture = tmp_path / "capture.jsonl"
    faults = Faults(drop_every=80, lose_on_drop=15, repeat_rate=0.05, seed=11)
    with local_exchange(key, frames=6000, seed=11, rate=1500, faults=faults) as ex:
        stats, _ = follow_in_process(
            db, ex, key, until=lambda: caught_up(db, ex), timeout=90, capture=capture
        )
        want = truth(ex)
        sent = ex.call(lambda e: e.stats.as_json())
    assert sent["drops"] >= 20, sent
    assert sent["lost"] >= 20 * 15, sent  # at least the blackout after every drop
    assert_matches_exchange(db, want)

    disconnects = events(db, DISCONNECTED)
    assert len(disconnects) >= 21  # every drop, and the final stop
    assert {d["code"] for d in disconnects} >= {1012, 1006, 1000}
    backfills = events(db, BACKFILL)
    healed = sum(b["fills_recovered"] for b in backfills)
    assert 0 < healed <= stats.fills_healed  # a backfill cut short by the stop has no event
    assert stats.fills_new == len(want["fills"])
    assert stats.fills_duplicate > 0  # cumulative records, repeats, REST overlapping the stream

    # The capture replays into the same fills with `ledger ingest`.
    replay = str(tmp_path / "replay.sqlite")
    result = CliRunner().invoke(app, ["--db", replay, "ingest", str(capture), "--json"])
    assert result.exit_code == 0, result.output
    assert set(booked_fills(replay)) == set(want["fills"])

    # `ledger status` reads the same history back from the log.
    status = CliRunner().invoke(app, ["--db", db, "status", "--json"])
    assert status.exit_code == 0, status.output
    report = json.loads(status.output)
    assert report["connected"] is False and "code 1000" in report["connection"]
    assert report["connects"] == stats.connects and report["reconnects"] == stats.connects - 1
    assert report["gaps_healed"] == stats.gaps_healed and report["fills_healed"] == healed
    assert report["fills_booked"] == len(want["fills"])
    assert report["last_frame_age_s"] is not None and report["last_frame_age_s"] < 60

    print(
        "\ndisconnect test figures: "
        + json.dumps(
            {
                "frames_generated": sent["generated"],
                "frames_sent": sent["sent"],
                "frames_lost": sent["lost"],
                "drops": sent["drops"],
                "frames_received_ws": stats.frames_ws,
                "fills_executed": len(want["fills"]),
                "fills_healed_from_rest": healed,
                "fills_booked": len(booked_fills(db)),
            }
        )
    )


def _final_state(db: str) -> dict[str, Any]:
    """What an uninterrupted run must also end with: fills (content), positions, P&L, balances."""
    services = open_ledger(db)
    try:
        services.projector.catch_up()
        state = services.projector.load()
        fills = reports.fills_report(services.db, 0)["fills"]
        return {
            "fills": sorted((f | {"log_position": 0}).items() for f in fills),
            "positions": {
                m: reports.positions_report(state, m, 0)["positions"] for m in ("average", "fifo")
            },
            "pnl": reports.pnl_report(state, "average", 0)["totals"],
            "balances": [
                (b["asset"], b["free"], b["locked"], b["total"])
                for b in reports.balances_report(state, 0)["balances"]
            ],
        }
    finally:
        services.close()


def test_kill_9_mid_session_then_restart_ends_as_an_uninterrupted_run(tmp_path: Path) -> None:
    key = new_key()
    db = str(tmp_path / "ledger.sqlite")
    env = ledger_env(key, DELTADEFI_REST_MIN_INTERVAL="0")
    faults = Faults(drop_every=400, lose_on_drop=10, repeat_rate=0.02, seed=5)
    with local_exchange(key, frames=3000, seed=5, rate=800, faults=faults) as ex:
        first = start_ledger(db, run_args(ex), env, tmp_path)
        try:
            assert wait_until(lambda: Path(db).exists() and len(_safe_fills(db)) >= 100, 20)
        finally:
            first.kill()  # SIGKILL: no clean-up at all
            first.wait(10)
        assert first.returncode == -signal.SIGKILL
        time.sleep(0.4)  # frames sent meanwhile reach nobody
        second = start_ledger(db, run_args(ex), env, tmp_path)
        try:
            assert wait_until(lambda: caught_up(db, ex), 60), "the restart did not catch up"
        finally:
            asked = time.monotonic()
            second.send_signal(signal.SIGTERM)
            _, stderr = second.communicate(timeout=10)
            stop_seconds = time.monotonic() - asked
        want = truth(ex)
        lossless = ex.call(lambda e: list(e.generated_frames))
    assert second.returncode == 0, stderr.decode()
    assert stop_seconds < 5, f"SIGTERM took {stop_seconds:.1f}s"
    assert b"Traceback" not in stderr
    assert_matches_exchange(db, want)
    # The last connection event is the clean stop, and two runs are on record.
    last = events(db, DISCONNECTED)[-1]
    assert (last["code"], last["reason"], last["by"]) == (1000, "stopped", "client")
    assert len({e["run"] for e in events(db, CONNECTED)}) == 2

    # An uninterrupted run: every frame the exchange generated, none lost, ingested once.
    reference = str(tmp_path / "reference.sqlite")
    capture = tmp_path / "lossless.jsonl"
    capture.write_bytes(
        b"".join((f if isinstance(f, bytes) else f.encode()) + b"\n" for f in lossless)
    )
    result = CliRunner().invoke(app, ["--db", reference, "ingest", str(capture), "--json"])
    assert result.exit_code == 0, result.output
    assert _final_state(db) == _final_state(reference)


def settled(db: str, ex: Any) -> bool:
    """Caught up, and a backfill has completed with every known gap healed."""
    return caught_up(db, ex) and any(e.get("gap_healed") for e in events(db, BACKFILL))


def _safe_fills(db: str) -> dict[str, Any]:
    try:
        return booked_fills(db)
    except sqlite3.OperationalError:
        return {}


def test_stop_commits_every_received_frame(tmp_path: Path) -> None:
    """Stopped mid-stream, the follower has committed every frame it received."""
    key = new_key()
    db = str(tmp_path / "ledger.sqlite")
    # A 20-second stream, stopped after 2: the stop must land mid-stream even when a
    # loaded machine makes connecting and stopping slow.
    with local_exchange(key, frames=20_000, seed=3, rate=1000) as ex:
        started = time.monotonic()
        stats, _ = follow_in_process(
            db, ex, key, until=lambda: time.monotonic() - started > 2.0, timeout=15
        )
        still_streaming = not ex.call(lambda e: e.finished.is_set())
    assert still_streaming
    with sqlite3.connect(db) as conn:
        (ws_frames,) = conn.execute(
            "SELECT COUNT(*) FROM stored_events WHERE topic LIKE 'ledger.events:Frame%' "
            'AND CAST(state AS TEXT) LIKE \'%"src":"ws"%\''
        ).fetchone()
    assert stats.frames_ws > 500
    assert ws_frames == stats.frames_ws
    assert stats.uncommitted == 0


def test_a_rest_balance_snapshot_is_booked_behind_the_stream_frames_received_before_it(
    tmp_path: Path,
) -> None:
    """A slow writer leaves websocket frames waiting in the inbox while a backfill takes a
    REST balance snapshot. Booked ahead of them, the snapshot would be undone by the older
    stream snapshots among them (CI saw a run end on one). It is booked where it arrived:
    along the log, the balance snapshots of both sources run in the order received."""
    key = new_key()
    db = str(tmp_path / "ledger.sqlite")

    async def slow_listener(frames: Any, report: Any) -> None:
        await asyncio.sleep(0.05)  # the writer falls behind; the reader goes on receiving

    def started(follower: Follower) -> None:
        follower.listeners.append(slow_listener)

    with local_exchange(key, frames=3000, seed=13, rate=1000) as ex:
        follow_in_process(db, ex, key, until=lambda: caught_up(db, ex), timeout=60, started=started)
        want = truth(ex)
    received = balance_frames(db)
    # The connect's backfill and at least one on the timer took a snapshot.
    assert sum(src == "rest" for src, _ in received) >= 2, received
    backwards = [(a, b) for a, b in itertools.pairwise(received) if b[1] < a[1]]
    assert not backwards, backwards[:3]
    assert_matches_exchange(db, want)


def test_a_backfill_cancelled_while_its_event_is_written_is_still_counted(
    tmp_path: Path,
) -> None:
    """A stop can cancel a backfill just as its ``BackfillCompleted`` reaches the log. The
    write runs to its end, and the heal is counted with it, never without it: the run's
    figures and ``ledger status`` (read from the log) must agree (CI saw them differ)."""
    services = open_ledger(str(tmp_path / "ledger.sqlite"))
    config = LiveConfig(api_key=new_key(), ws_url="ws://127.0.0.1:9", rest_url="http://127.0.0.1:9")
    follower = open_follower(services, config)
    counted: list[int] = []

    async def main() -> bool:
        event = follower._event(BACKFILL, fills_recovered=1)
        task = asyncio.create_task(follower._record(event, then=lambda: counted.append(1)))
        await asyncio.sleep(0)  # the write is handed to the writer thread
        # The loop stalls while the thread finishes the write: the cancellation arrives
        # with the write done but its result not yet delivered.
        time.sleep(0.3)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await close_follower(follower)
        return task.cancelled()

    try:
        cancelled = asyncio.run(main())
    finally:
        services.close()
    assert cancelled  # the caller still learns of its cancellation
    assert len(events(str(tmp_path / "ledger.sqlite"), BACKFILL)) == 1
    assert counted == [1]


def test_a_task_that_loses_its_cancellation_is_cancelled_again() -> None:
    """On Python 3.11 ``asyncio.wait_for`` returns its inner result when that and a
    cancellation arrive together: the healer can lose the stop's cancellation and go on
    for ever. ``run`` must still return, so the stop cancels again after a grace period."""

    async def main() -> tuple[bool, float]:
        cancels = 0

        async def loses_its_first_cancellation() -> None:
            nonlocal cancels
            while True:
                try:
                    await asyncio.sleep(3600)
                except asyncio.CancelledError:
                    cancels += 1
                    if cancels > 1:
                        raise

        task = asyncio.create_task(loses_its_first_cancellation())
        await asyncio.sleep(0)
        started = time.monotonic()
        # Bounded here, so that a stop that never returns fails instead of hanging.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(cancel_and_wait([task], grace=0.2), timeout=10)
        return task.cancelled() and cancels == 2, time.monotonic() - started

    ended_cancelled, seconds = asyncio.run(main())
    assert ended_cancelled
    assert seconds < 5


def test_429_storms_are_retried_and_the_gaps_still_heal(tmp_path: Path) -> None:
    key = new_key()
    db = str(tmp_path / "ledger.sqlite")
    # After every 2 answers, a storm of 5 consecutive 429s (with a Retry-After floor), and a
    # 503 every 8th request; connections drop and lose frames so healing is needed.
    faults = Faults(
        drop_every=200,
        lose_on_drop=20,
        rate_limit_every=2,
        rate_limit_burst=5,
        retry_after=0.01,
        server_error_every=8,
        seed=9,
    )
    with local_exchange(key, frames=1500, seed=9, rate=1500, faults=faults) as ex:
        stats, follower = follow_in_process(
            db, ex, key, until=lambda: caught_up(db, ex), timeout=60
        )
        want = truth(ex)
        figures = ex.call(lambda e: e.stats.as_json())
    assert figures["rest_rate_limited"] >= 10 and figures["rest_server_errors"] >= 1, figures
    assert stats.fills_healed > 0
    assert_matches_exchange(db, want)
    assert isinstance(follower.rest, RestClient) and follower.rest.rate_limited >= 10


def test_rest_gives_up_after_its_attempts_with_a_clear_error(tmp_path: Path) -> None:
    key = new_key()
    faults = Faults(rate_limit_every=1, rate_limit_burst=50)
    with local_exchange(key, frames=10, faults=faults) as ex:

        async def fetch() -> None:
            async with RestClient(
                ex.rest_url, key, min_interval=0, retry=RetryPolicy(0.001, 0.01, 4)
            ) as client:
                await client.balance_frame()  # the 1st answer is fine
                await client.balance_frame()  # then 4 attempts, all 429

        with pytest.raises(SourceUnavailable, match=r"failed 4 times; last: HTTP 429"):
            asyncio.run(fetch())


def test_a_refused_key_stops_ledger_run_with_a_clear_message(tmp_path: Path) -> None:
    key, wrong = new_key(), new_key()
    db = str(tmp_path / "ledger.sqlite")
    # A careless server that echoes the key it got in its error bodies.
    with local_exchange(key, frames=100, faults=Faults(echo_key_on_401=True)) as ex:
        run = start_ledger(db, run_args(ex), ledger_env(wrong), tmp_path)
        out, err = run.communicate(timeout=30)

        async def rest_401() -> str:
            async with RestClient(ex.rest_url, wrong, min_interval=0) as client:
                try:
                    await client.balance_frame()
                except AuthenticationError as exc:
                    return str(exc)
            return "no error"

        rest_message = asyncio.run(rest_401())
        unauthorized = ex.call(lambda e: e.stats.unauthorized)
    assert run.returncode == 2
    lines = [line for line in err.decode().splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err.decode()
    assert "refused the API key (HTTP 401" in lines[0] and "DELTADEFI_API_KEY" in lines[0]
    assert "401" in rest_message and "refused the API key" in rest_message
    for text in (out.decode(), err.decode(), rest_message):
        assert wrong not in text and key not in text
    assert unauthorized >= 2


def test_a_stuck_connection_is_detected_by_keepalive_and_replaced(tmp_path: Path) -> None:
    key = new_key()
    db = str(tmp_path / "ledger.sqlite")
    # The first connection goes silent after 100 frames: no frames, no pongs, socket open.
    faults = Faults(stall_connection=1, stall_after=100, stall_timeout=30)
    with local_exchange(key, frames=2500, seed=4, rate=1000, faults=faults) as ex:
        stats, _ = follow_in_process(
            db,
            ex,
            key,
            until=lambda: caught_up(db, ex),
            timeout=60,
            ping_interval=0.2,
            ping_timeout=0.3,
        )
        want = truth(ex)
        figures = ex.call(lambda e: e.stats.as_json())
    assert figures["stalls"] == 1 and figures["connections"] >= 2
    first_close = events(db, DISCONNECTED)[0]
    assert (first_close["code"], first_close["by"]) == (1011, "client")
    assert "keepalive" in first_close["reason"]
    connects = events(db, CONNECTED)
    gap = _seconds(connects[1]["at"]) - _seconds(connects[0]["at"])
    assert gap < 5, f"the stuck connection was replaced only after {gap:.1f}s"
    assert stats.fills_healed > 0  # what was sent into the silence came back from REST
    assert_matches_exchange(db, want)


def _seconds(stamp: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def test_ledger_demo_runs_the_live_path_and_checks_itself(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["demo", "--frames", "1200", "--rate", "1200", "--json"])
    assert result.exit_code == 0, result.output
    facts = json.loads(result.output)
    assert facts["same_fills"] and facts["balances_match"]
    assert facts["fills_booked"] == facts["fills_executed_by_exchange"] > 0
    assert facts["disconnects"] >= 3 and facts["rest_429"] > 0
    assert facts["frames_lost_in_transit"] > 0 and facts["fills_healed_from_rest"] > 0
    assert Path(facts["db"]).exists()


def test_sigint_stops_ledger_run_within_5s_with_every_received_frame_committed(
    tmp_path: Path,
) -> None:
    key = new_key()
    db = str(tmp_path / "ledger.sqlite")
    with local_exchange(key, frames=30_000, seed=8, rate=2000) as ex:
        run = start_ledger(
            db, run_args(ex, "--json"), ledger_env(key, DELTADEFI_REST_MIN_INTERVAL="0"), tmp_path
        )
        try:
            assert wait_until(lambda: len(_safe_fills(db)) > 200, 20)
            status = CliRunner().invoke(app, ["--db", db, "status", "--json"])
        finally:
            asked = time.monotonic()
            run.send_signal(signal.SIGINT)
            out, err = run.communicate(timeout=10)
            stop_seconds = time.monotonic() - asked
        streaming = not ex.call(lambda e: e.finished.is_set())
    assert streaming  # it was stopped mid-stream
    assert run.returncode == 0, err.decode()
    assert stop_seconds < 5, f"SIGINT took {stop_seconds:.1f}s"
    live = json.loads(status.output)
    assert live["connected"] is True and f"pid {run.pid}" in live["connection"]
    stats = json.loads(out.decode())
    with sqlite3.connect(db) as conn:
        (ws_frames,) = conn.execute(
            "SELECT COUNT(*) FROM stored_events WHERE topic LIKE 'ledger.events:Frame%' "
            'AND CAST(state AS TEXT) LIKE \'%"src":"ws"%\''
        ).fetchone()
    assert ws_frames == stats["frames_ws"] > 200 and stats["uncommitted"] == 0
    last = events(db, DISCONNECTED)[-1]
    assert (last["code"], last["reason"]) == (1000, "stopped")
    after = CliRunner().invoke(app, ["--db", db, "status", "--json"])
    assert json.loads(after.output)["connected"] is False


def test_ledger_run_gives_up_after_max_attempts_with_a_clear_message(tmp_path: Path) -> None:
    import socket

    with socket.socket() as probe:  # a loopback port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    key = new_key()
    done = subprocess.run(
        [
            *LEDGER,
            "--db",
            str(tmp_path / "ledger.sqlite"),
            "run",
            "--ws-url",
            f"ws://127.0.0.1:{port}",
            "--rest-url",
            f"http://127.0.0.1:{port}",
            "--retry-initial",
            "0.01",
            "--retry-max",
            "3",
        ],
        capture_output=True,
        cwd=tmp_path,
        env=ledger_env(key),
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    message = done.stderr.decode().strip().splitlines()[-1]
    assert message.startswith("error: could not connect to ws://127.0.0.1:")
    assert "after 3 attempts" in message and "api_key=***" in message
    assert key not in done.stderr.decode() + done.stdout.decode()


def test_a_backfill_stops_paging_at_the_first_page_of_booked_fills(tmp_path: Path) -> None:
    """With every fill booked, each listing is read one page deep, however long it is."""
    key = new_key()
    db = str(tmp_path / "ledger.sqlite")
    with local_exchange(key, frames=2500, seed=6, rate=0) as ex:
        follow_in_process(
            db, ex, key, until=lambda: settled(db, ex), timeout=60, rest_page_limit=25
        )
        before = len(events(db, BACKFILL))
        follow_in_process(
            db,
            ex,
            key,
            until=lambda: len(events(db, BACKFILL)) > before,
            timeout=20,
            rest_page_limit=25,
        )
        orders = ex.call(lambda e: Counter(o["symbol"] for o in e.book.orders.values()))
    quiet = events(db, BACKFILL)[before]
    assert quiet["fills_recovered"] == 0
    assert min(orders.values()) > 4 * 25  # every historic listing has 5+ pages...
    assert quiet["pages"] <= 2 * len(orders)  # ...but each listing was read one page deep


@pytest.mark.postgres
def test_the_live_path_on_postgresql(pg_url: str) -> None:
    key = new_key()
    faults = Faults(drop_every=120, lose_on_drop=10, repeat_rate=0.05, seed=21)
    # 3 s of stream: a slow reconnect (a loaded machine) costs lost frames, not drops.
    with local_exchange(key, frames=1500, seed=21, rate=500, faults=faults) as ex:
        stats, _ = follow_in_process(
            pg_url, ex, key, until=lambda: caught_up_at(pg_url, ex), timeout=60
        )
        want = truth(ex)
        drops = ex.call(lambda e: e.stats.drops)
    fills, found = ledger_view(pg_url)
    assert drops >= 5 and stats.fills_healed > 0
    assert fills == set(want["fills"]) and found == want["balances"]
    assert stats.fills_new == len(want["fills"])
    services = open_ledger(pg_url)
    try:
        assert verify(services.db).ok
    finally:
        services.close()


def test_the_exchange_can_replay_a_capture(tmp_path: Path) -> None:
    """Driven by a capture instead of a generated session; its REST answers come from the
    frames it replayed, lost ones included."""
    from adapters.deltadefi.exchange import CaptureSource
    from adapters.deltadefi.session import write_capture

    capture = tmp_path / "session.jsonl"
    session_truth = write_capture(str(capture), 1200, seed=17)
    key = new_key()
    db = str(tmp_path / "ledger.sqlite")
    faults = Faults(drop_every=150, lose_on_drop=20, seed=17)
    with local_exchange(key, rate=1500, faults=faults, source=lambda: CaptureSource(capture)) as ex:
        follow_in_process(db, ex, key, until=lambda: caught_up(db, ex), timeout=60)
        want = truth(ex)
        lost = ex.call(lambda e: e.stats.lost)
    assert lost >= 20
    assert set(want["fills"]) == set(session_truth.fills)
    assert_matches_exchange(db, want)
    assert {a: v["free"] + v["locked"] for a, v in balances(db).items()} == session_truth.balances


def test_a_server_that_accepts_then_drops_at_once_is_backed_off() -> None:
    """Reconnects to a flapping server grow like failed attempts, not a tight loop."""
    from websockets.asyncio.server import ServerConnection, serve

    from adapters.deltadefi.stream import AccountStream, Backoff
    from ledger.live_ports import StreamOpened

    async def main() -> int:
        async def drop(ws: ServerConnection) -> None:
            await ws.close(1011, "flapping")

        async with serve(drop, "127.0.0.1", 0) as server:
            port = next(iter(server.sockets)).getsockname()[1]
            stream = AccountStream(f"ws://127.0.0.1:{port}", new_key(), backoff=Backoff(0.05, 5.0))
            opened = 0

            async def count() -> None:
                nonlocal opened
                async for event in stream.events():
                    opened += isinstance(event, StreamOpened)

            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(count(), timeout=2.0)
        return opened

    opened = asyncio.run(main())
    # Without backoff this loop would reconnect ~80 times (about 25 ms apart on average).
    assert 2 <= opened <= 15, opened


def _last_backfill_healed(db: str) -> bool:
    backfills = events(db, BACKFILL)
    return bool(backfills) and bool(backfills[-1]["gap_healed"])


def test_an_oldest_first_listing_is_walked_from_its_newest_end(tmp_path: Path) -> None:
    """The listings' sort order is undocumented: if page 1 holds the oldest orders, the
    backfill must start from the last page, or it would stop before the new fills."""
    key = new_key()
    db = str(tmp_path / "ledger.sqlite")
    faults = Faults(drop_every=100, lose_on_drop=20, seed=31)
    with local_exchange(
        key, frames=2000, seed=31, rate=1500, faults=faults, oldest_first=True
    ) as ex:
        # Settled, and the last backfill healed every gap: a gap left open (one that opened
        # while the last backfill ran) would rightly send the next run's first backfill back
        # to it, deep into the listings.
        stats, _ = follow_in_process(
            db,
            ex,
            key,
            until=lambda: settled(db, ex) and _last_backfill_healed(db),
            timeout=45,
            rest_page_limit=25,
        )
        want = truth(ex)
        before = len(events(db, BACKFILL))
        follow_in_process(
            db,
            ex,
            key,
            until=lambda: len(events(db, BACKFILL)) > before,
            timeout=20,
            rest_page_limit=25,
        )
    assert stats.fills_healed > 0
    assert_matches_exchange(db, want)
    quiet = events(db, BACKFILL)[before]
    # Per listing: page 1 (to learn the direction), then the last page, already booked, and
    # at most one page before it when the last is short. Walked from the oldest end, each
    # listing would take all of its pages.
    assert quiet["fills_recovered"] == 0 and quiet["pages"] <= 3 * 2 * len(quiet["symbols"])


def test_a_backfill_reaches_back_past_the_gap_while_the_stream_keeps_flowing(
    tmp_path: Path,
) -> None:
    """Small pages and a fast stream: by the time a backfill reads page 1 the newest orders
    are already booked from the websocket, but the gap lies deeper; it must still heal."""
    key = new_key()
    db = str(tmp_path / "ledger.sqlite")
    faults = Faults(drop_every=100, lose_on_drop=20, seed=33)
    with local_exchange(key, frames=2000, seed=33, rate=1500, faults=faults) as ex:
        stats, _ = follow_in_process(
            db,
            ex,
            key,
            until=lambda: caught_up(db, ex),
            timeout=30,
            rest_page_limit=5,
            heal_interval=3,
        )
        want = truth(ex)
    assert stats.fills_healed > 0
    assert_matches_exchange(db, want)


def test_gaps_a_run_could_not_heal_are_healed_by_the_next_run(tmp_path: Path) -> None:
    """Run 1 loses frames and cannot reach REST at all; run 2 must reach back to run 1's
    oldest gap (recorded in its Disconnected events), not just to where run 1 stopped."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe.getsockname()[1]}"
    key = new_key()
    db = str(tmp_path / "ledger.sqlite")
    faults = Faults(drop_every=100, lose_on_drop=20, seed=41)
    with local_exchange(key, frames=1500, seed=41, rate=1500, faults=faults) as ex:
        first, _ = follow_in_process(
            db,
            ex,
            key,
            until=lambda: ex.call(lambda e: e.finished.is_set()),
            timeout=30,
            rest_url=dead,
            rest_retry_max=1,
        )
        assert first.heals == 0 and first.heals_failed > 0
        booked_by_first = len(booked_fills(db))
        assert booked_by_first < len(truth(ex)["fills"])
        gaps = [e["gap_since"] for e in events(db, DISCONNECTED)]
        second, _ = follow_in_process(
            db,
            ex,
            key,
            until=lambda: caught_up(db, ex),
            timeout=30,
            rest_page_limit=5,
            heal_interval=30,
        )
        want = truth(ex)
    assert gaps and all(isinstance(g, str) for g in gaps)
    assert second.frames_ws == 0  # the session was over: every missing fill came from REST
    assert_matches_exchange(db, want)
    assert len(booked_fills(db)) > booked_by_first


def test_listeners_hear_of_each_batch_in_order_once_it_is_durable_and_projected(
    db_url: str,
) -> None:
    """On PostgreSQL the next batch is appended while the last one is projected: the
    listeners must still hear of every batch once, in commit order, and only when a
    separate reader already sees it in the log and in the projections."""
    key = new_key()
    reader = open_ledger(db_url)
    # (batch's log position, its websocket frames, log head, projections' position) when heard
    heard: list[tuple[int, int, int, int]] = []

    def listener(frames: Any, report: Any) -> None:
        ws = sum(1 for f in frames if f.source == "ws")
        heard.append((report.log_position, ws, reader.db.head(), reader.projector.position))

    def started(follower: Follower) -> None:
        follower.listeners.append(listener)

    try:
        with local_exchange(key, frames=400, seed=5, rate=2000) as ex:
            config = LiveConfig(api_key=key, ws_url=ex.ws_url, rest_url=ex.rest_url, **FAST)

            async def main() -> FollowStats:
                services = open_ledger(db_url)
                stop = asyncio.Event()
                task = asyncio.create_task(
                    follow_account(services, config, stop=stop, started=started)
                )
                try:
                    await asyncio.to_thread(ex.wait_finished, 30)
                    deadline = time.monotonic() + 30
                    while sum(n for _, n, _, _ in heard) < 400 and time.monotonic() < deadline:
                        await asyncio.sleep(0.05)
                finally:
                    stop.set()
                try:
                    return await task
                finally:
                    services.close()

            stats = asyncio.run(main())
    finally:
        reader.close()
    assert stats.frames_ws == 400
    assert sum(n for _, n, _, _ in heard) == 400  # each websocket frame's batch, once
    positions = [p for p, *_ in heard]
    assert positions == sorted(positions), "listeners heard of batches out of commit order"
    for position, _, head, views in heard:
        assert head >= position, "a listener heard of a batch before its commit"
        assert views >= position, "a listener heard of a batch before the projections had it"


def test_a_gap_opened_during_a_backfill_is_where_the_next_one_stops(tmp_path: Path) -> None:
    """Drops come faster than slow (rate-limited) backfills finish. A backfill heals every
    gap open when it began, so the next one must page back only to the first gap that
    opened while it ran, not to the oldest gap again: otherwise each backfill reaches
    further back than the last, until one never ends (a 300 frames/s soak saw 8 pages
    grow to 136)."""
    key = new_key()
    db = str(tmp_path / "ledger.sqlite")
    faults = Faults(
        drop_every=60,
        lose_on_drop=10,
        rate_limit_every=3,
        rate_limit_burst=1,
        retry_after=0.15,
        seed=41,
    )
    with local_exchange(key, frames=2500, seed=41, rate=500, faults=faults) as ex:
        follow_in_process(db, ex, key, until=lambda: caught_up(db, ex), timeout=90)
        want = truth(ex)
    assert_matches_exchange(db, want)
    backfills = events(db, BACKFILL)
    overtaken = [
        (earlier, later)
        for earlier, later in itertools.pairwise(backfills)
        if not earlier["gap_healed"] and earlier["gap_since"] is not None
    ]
    # The scenario happened: backfills overtaken by a drop while they ran.
    assert len(overtaken) >= 3, [b["gap_healed"] for b in backfills]
    for earlier, later in overtaken:
        assert later["gap_since"] is not None
        assert later["gap_since"] > earlier["gap_since"], (earlier, later)
