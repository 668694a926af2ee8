"""``ledger demo``: the live path end to end, with zero set-up.

A local DeltaDeFi exchange starts on a free loopback port in this process and
streams a generated market-making session with its faults switched on: dropped
connections (frames lost while the client is away), a stalled connection that
only a keepalive timeout reveals, repeated frames, 429 storms and 503s. The real
follower (the code ``ledger run`` runs) writes it into a fresh SQLite file.
When the session is over, one last backfill runs, the follower stops, and the
booked fills are compared with every fill the exchange executed, and the
balances with its final balances: the demo fails unless both match exactly.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from adapters.deltadefi.exchange import ExchangeStats, Faults, LocalExchange, SessionSource
from ledger.bootstrap import open_ledger
from ledger.live import FollowStats, follow_until_stopped
from ledger.live_bootstrap import LiveConfig, close_follower, open_follower


@dataclass
class DemoResult:
    db_path: Path
    seconds: float
    exchange: ExchangeStats
    follower: FollowStats
    fills_executed: int
    fills_booked: int
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    balance_mismatches: list[str] = field(default_factory=list)
    drift: dict[str, dict[str, Decimal]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.balance_mismatches)

    def facts(self) -> dict[str, Any]:
        ex, fo = self.exchange, self.follower
        return {
            "seconds": round(self.seconds, 2),
            "frames_generated": ex.generated,
            "frames_sent": ex.sent,
            "frames_lost_in_transit": ex.lost,
            "frames_repeated": ex.repeats,
            "frames_received_ws": fo.frames_ws,
            "records_from_rest": fo.frames_rest,
            "connections": fo.connects,
            "disconnects": fo.disconnects,
            "close_codes": fo.close_codes,
            "rest_429": ex.rest_rate_limited,
            "rest_5xx": ex.rest_server_errors,
            "fills_executed_by_exchange": self.fills_executed,
            "fills_booked": self.fills_booked,
            "duplicates_ignored": fo.fills_duplicate,
            "backfills": fo.heals,
            "gaps_healed": fo.gaps_healed,
            "fills_healed_from_rest": fo.fills_healed,
            "rejected_frames": fo.rejected,
            "same_fills": not (self.missing or self.unexpected),
            "balances_match": not self.balance_mismatches,
        }


def demo_faults(seed: int) -> Faults:
    return Faults(
        drop_every=150,
        lose_on_drop=12,
        repeat_rate=0.03,
        stall_connection=4,
        stall_after=60,
        stall_timeout=5.0,
        rate_limit_every=6,
        rate_limit_burst=3,
        server_error_every=23,
        seed=seed,
    )


async def run_demo(
    workdir: Path, *, frames: int = 3000, seed: int = 7, rate: float = 1000.0
) -> DemoResult:
    started = time.perf_counter()
    key = secrets.token_urlsafe(24)  # a throwaway key: the exchange checks it like the real one
    db_path = workdir / "ledger.sqlite"
    exchange = LocalExchange(
        SessionSource(frames, seed, malformed_rate=0.002),
        key,
        rate=rate,
        faults=demo_faults(seed),
    )
    await exchange.start()
    services = open_ledger(str(db_path))
    config = LiveConfig(
        api_key=key,
        ws_url=exchange.ws_url,
        rest_url=exchange.rest_url,
        retry_initial=0.05,
        retry_cap=1.0,
        ping_interval=0.5,
        ping_timeout=0.5,
        close_timeout=0.3,
        heal_interval=2.0,
        rest_min_interval=0.0,
        rest_retry_initial=0.02,
        rest_retry_cap=0.5,
    )
    follower = open_follower(services, config)
    finished = asyncio.create_task(exchange.finished.wait())
    try:
        stop = asyncio.Event()
        run = asyncio.create_task(follow_until_stopped(follower, stop=stop))
        await asyncio.wait({run, finished}, return_when=asyncio.FIRST_COMPLETED)
        if run.done():
            await run  # stopped early: a fatal error (raised here) or a signal
        else:
            # The session is over: one last backfill picks up whatever the faults lost.
            await asyncio.wait_for(follower.heal_now("final"), timeout=30)
            stop.set()
        stats = await run
    finally:
        finished.cancel()
        await close_follower(follower)
        await exchange.stop()
    truth = exchange.truth()
    state = services.projector.load()
    with services.db.reading() as cur:
        cur.execute("SELECT fill_id FROM ledger_fills")
        booked = {str(r[0]) for r in cur.fetchall()}
    services.close()
    executed = set(truth["fills"])
    mismatches = []
    for asset, want in sorted(truth["balances"].items()):
        have = state.balances.assets.get(asset)
        if have is None or (have.free, have.locked) != (want["free"], want["locked"]):
            got = "nothing" if have is None else f"{have.free} free, {have.locked} locked"
            mismatches.append(
                f"{asset}: exchange {want['free']} free, {want['locked']} locked; ledger {got}"
            )
    return DemoResult(
        db_path=db_path,
        seconds=time.perf_counter() - started,
        exchange=exchange.stats,
        follower=stats,
        fills_executed=len(executed),
        fills_booked=len(booked),
        missing=sorted(executed - booked),
        unexpected=sorted(booked - executed),
        balance_mismatches=mismatches,
        drift={
            asset: {"last": b.drift_last, "net": b.drift_sum}
            for asset, b in sorted(state.balances.assets.items())
        },
    )
