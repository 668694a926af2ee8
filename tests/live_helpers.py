"""Helpers of the live-path tests: a local exchange in a thread, the follower on loopback,
and direct reads of what the ledger stored (plain sqlite3, independent of the code under test)."""

from __future__ import annotations

import asyncio
import io
import json
import os
import secrets
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

from adapters.deltadefi.exchange import (
    ExchangeThread,
    Faults,
    FrameSource,
    LocalExchange,
    SessionSource,
)
from ledger.bootstrap import open_ledger
from ledger.live import Follower, FollowStats
from ledger.live_bootstrap import LiveConfig, follow_account

REPO = Path(__file__).resolve().parent.parent
LEDGER = [sys.executable, "-m", "ledger.cli"]
#: How long ``follow_in_process`` lets a stopped follower take to return.
STOP_WITHIN_S = 60.0

#: Short backoff, keepalive and heal intervals: the tests run in seconds.
FAST: dict[str, Any] = {
    "retry_initial": 0.02,
    "retry_cap": 0.3,
    "ping_interval": 1.0,
    "ping_timeout": 1.0,
    "close_timeout": 0.3,
    "heal_interval": 0.5,
    "rest_min_interval": 0.0,
    "rest_retry_initial": 0.01,
    "rest_retry_cap": 0.2,
}


def new_key() -> str:
    return "ddk_" + secrets.token_hex(20)


@contextmanager
def local_exchange(
    key: str,
    *,
    frames: int = 2000,
    seed: int = 7,
    rate: float = 1500.0,
    faults: Faults | None = None,
    source: Callable[[], FrameSource] | None = None,
    oldest_first: bool = False,
) -> Iterator[ExchangeThread]:
    def build() -> LocalExchange:
        chosen = source() if source else SessionSource(frames, seed)
        return LocalExchange(
            chosen,
            key,
            rate=rate,
            faults=faults or Faults(),
            keep_frames=True,
            list_oldest_first=oldest_first,
        )

    with ExchangeThread(build) as ex:
        yield ex


def truth(ex: ExchangeThread) -> dict[str, Any]:
    return ex.call(lambda e: e.truth())


def booked_fills(db: str) -> dict[str, dict[str, str]]:
    """The fills projection, read straight from the SQLite file."""
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT fill_id, symbol, side, price, quantity, quote_amount FROM ledger_fills"
        ).fetchall()
    return {
        r[0]: {"symbol": r[1], "side": r[2], "price": r[3], "quantity": r[4], "quote": r[5]}
        for r in rows
    }


def claims(db: str) -> int:
    with sqlite3.connect(db) as conn:
        (count,) = conn.execute(
            "SELECT COUNT(*) FROM stored_events WHERE topic = 'ledger.events:FillClaimed'"
        ).fetchone()
    return int(count)


def balances(db: str) -> dict[str, dict[str, Decimal]]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT asset, record FROM ledger_balances").fetchall()
    out = {}
    for asset, record in rows:
        rec = json.loads(record)
        out[asset] = {"free": Decimal(rec["free"]), "locked": Decimal(rec["locked"])}
    return out


def balance_frames(db: str) -> list[tuple[str, str]]:
    """Every ``balance`` frame in log order, as (source, received at)."""
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT state FROM stored_events WHERE topic = 'ledger.events:FrameReceived'"
            " ORDER BY rowid"
        ).fetchall()
    found = []
    for (state,) in rows:
        head, _, raw = bytes(state).partition(b"\n")
        if json.loads(raw).get("sub_type") == "balance":
            fields = json.loads(head)
            found.append((fields["src"], fields["at"]))
    return found


def events(db: str, topic: str) -> list[dict[str, Any]]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT state FROM stored_events WHERE topic = ? ORDER BY rowid", (topic,)
        ).fetchall()
    return [json.loads(bytes(state).partition(b"\n")[0]) for (state,) in rows]


def caught_up(db: str, ex: ExchangeThread) -> bool:
    """The exchange has sent its whole session and the ledger holds exactly its fills and
    balances. (Once ``finished``, frames may still wait in a connection's queue, an older
    balance snapshot among them: booked after the check, it would undo the match.)"""
    if not ex.call(lambda e: e.sent_everything()):
        return False
    if not Path(db).exists():
        return False
    try:
        want = truth(ex)
        return set(booked_fills(db)) == set(want["fills"]) and balances(db) == want["balances"]
    except sqlite3.OperationalError:  # tables not created yet
        return False


def follow_in_process(
    db: str,
    ex: ExchangeThread,
    key: str,
    *,
    until: Callable[[], bool],
    timeout: float = 60.0,
    started: Callable[[Follower], None] | None = None,
    **overrides: Any,
) -> tuple[FollowStats, Follower]:
    """Run ``follow_account`` (what ``ledger run`` runs) until ``until()`` holds or ``timeout``
    (``started`` is handed the follower before it runs)."""
    settings = {"ws_url": ex.ws_url, "rest_url": ex.rest_url, **FAST, **overrides}
    config = LiveConfig(api_key=key, **settings)
    holder: dict[str, Follower] = {}

    def hand_over(follower: Follower) -> None:
        holder["f"] = follower
        if started is not None:
            started(follower)

    async def main() -> FollowStats:
        services = open_ledger(db)
        stop = asyncio.Event()
        task = asyncio.create_task(follow_account(services, config, stop=stop, started=hand_over))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            while not task.done() and loop.time() < deadline:
                if await asyncio.to_thread(until):
                    break
                await asyncio.sleep(0.1)
        finally:
            stop.set()
        try:
            # ``run`` returns within seconds of a stop (its contract): a follower that does
            # not is a failure with its tasks' stacks, never a test that hangs.
            done, _ = await asyncio.wait({task}, timeout=STOP_WITHIN_S)
            if not done:
                stacks = io.StringIO()
                for pending in asyncio.all_tasks():
                    if pending is not asyncio.current_task():
                        pending.print_stack(file=stacks)
                task.cancel()
                raise AssertionError(
                    f"follow_account did not return within {STOP_WITHIN_S} s of the stop:\n"
                    + stacks.getvalue()
                )
            return task.result()
        finally:
            services.close()

    stats = asyncio.run(main())
    return stats, holder["f"]


def ledger_env(key: str | None = None, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("LEDGER_", "DELTADEFI_", "WEBSOCKET_"))
    }
    env["PYTHONUNBUFFERED"] = "1"
    env["COLUMNS"] = "200"
    if key is not None:
        env["DELTADEFI_API_KEY"] = key
    env.update(extra)
    return env


def run_args(ex: ExchangeThread, *extra: str) -> list[str]:
    """``ledger run`` flags for the local exchange, with the fast test intervals."""
    return [
        "run",
        "--ws-url",
        ex.ws_url,
        "--rest-url",
        ex.rest_url,
        "--retry-initial",
        "0.02",
        "--retry-cap",
        "0.3",
        "--heal-interval",
        "0.5",
        "--ping-interval",
        "1",
        "--ping-timeout",
        "1",
        *extra,
    ]


def start_ledger(
    db: str, args: list[str], env: dict[str, str], cwd: Path
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [*LEDGER, "--db", db, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=cwd,
        env=env,
    )


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def ledger_view(url: str) -> tuple[set[str], dict[str, dict[str, Decimal]]]:
    """Booked fill ids and balances through the ledger's own read side (any store)."""
    services = open_ledger(url)
    try:
        with services.db.reading() as cur:
            cur.execute("SELECT fill_id FROM ledger_fills")
            fills = {str(r[0]) for r in cur.fetchall()}
        state = services.projector.load()
        found = {
            asset: {"free": b.free, "locked": b.locked}
            for asset, b in state.balances.assets.items()
        }
        return fills, found
    finally:
        services.close()


def caught_up_at(url: str, ex: ExchangeThread) -> bool:
    """``caught_up`` for a database of either kind."""
    if not ex.call(lambda e: e.sent_everything()):
        return False
    want = truth(ex)
    fills, found = ledger_view(url)
    return fills == set(want["fills"]) and found == want["balances"]
