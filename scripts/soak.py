"""Soak: ``ledger run`` against the local exchange with every fault on, then the books
checked against the exchange's own truth.

    python scripts/soak.py                      # 10 minutes on a fresh SQLite file
    python scripts/soak.py --minutes 30 --db postgresql://postgres@127.0.0.1:5432/soak

Faults, all on: the exchange closes every connection after ``--drop-every`` frames and
the frames generated right after a drop reach nobody (only a REST backfill can heal
them); it repeats frames, mixes in malformed ones, lets one connection go silent (no
frames, no pongs), and answers REST with 429 storms and 503s. On top of that the ledger
process is killed with SIGKILL ``--kills`` times, evenly spread, and started again.

When the session is over and the ledger has caught up (or ``--settle`` seconds have
passed), ``ledger run`` is stopped with SIGINT and checked: the booked fill ids must be
exactly the exchange's, each once; per asset, the last accepted snapshot plus every fill
since must equal the exchange's balance (and free/locked its last snapshot, unless the
generated session overdrew an asset: the parser rightly rejects negative balances);
``ledger verify`` must pass. Printed: frames/s, reconnects, gaps healed, fills booked, peak RSS,
and the RSS curve of the longest-lived ``ledger run`` process (see ``RssMonitor.curve``), then
one JSON line. Exit 0 when every check passes.

Memory: the process's bounded memories (the parser's recent frames and fill memo, the append
path's claim ids and digests) fill within minutes at a few hundred frames a second, so after
``--warmup`` minutes its resident set should stay level. The curve says whether it does: RSS at
each minute, and how much the high-water mark rose in each third of the time after the warm-up
(a leak keeps rising in the last third; a filling cache does not). ``--kill-window 0.2`` puts
the kills in the first fifth of the session, so the last process lives long enough to show it.

Everything runs on loopback, bounded in time, and stops by itself.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from adapters.deltadefi.exchange import (  # noqa: E402
    ExchangeThread,
    Faults,
    LocalExchange,
    SessionSource,
)
from ledger.bootstrap import open_ledger  # noqa: E402


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=10.0, help="length of the session")
    p.add_argument("--rate", type=float, default=100.0, help="frames per second")
    p.add_argument("--db", default=None, help="database URL (default: a fresh SQLite file)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--kills", type=int, default=2, help="SIGKILLs of ledger run, spread evenly")
    p.add_argument(
        "--kill-window",
        type=float,
        default=1.0,
        help="spread the kills over this fraction of the session (from its start)",
    )
    p.add_argument(
        "--warmup", type=float, default=3.0, help="minutes of a process's life the curve skips"
    )
    p.add_argument("--drop-every", type=int, default=1500)
    p.add_argument("--lose-on-drop", type=int, default=15)
    p.add_argument("--settle", type=float, default=180.0, help="seconds to catch up at the end")
    p.add_argument("--workdir", type=Path, default=None)
    return p.parse_args(argv)


@dataclass
class RssMonitor:
    """VmRSS/VmHWM of the ``ledger run`` processes, sampled once a second."""

    samples: list[tuple[float, int, int]] = field(default_factory=list)  # (t, pid, kB)
    peaks: dict[int, int] = field(default_factory=dict)  # pid -> VmHWM kB

    def sample(self, pid: int) -> None:
        try:
            text = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            return
        values = {
            line.split(":")[0]: int(line.split()[1])
            for line in text.splitlines()
            if line.startswith(("VmRSS", "VmHWM"))
        }
        if "VmRSS" in values:
            self.samples.append((time.monotonic(), pid, values["VmRSS"]))
            self.peaks[pid] = max(self.peaks.get(pid, 0), values.get("VmHWM", 0))

    def peak_mb(self) -> float:
        return max(self.peaks.values(), default=0) / 1024

    def longest(self) -> list[tuple[float, int]]:
        """(seconds since it started, kB) of the longest-lived process."""
        by_pid: dict[int, list[tuple[float, int]]] = {}
        for t, pid, kb in self.samples:
            by_pid.setdefault(pid, []).append((t, kb))
        if not by_pid:
            return []
        series = max(by_pid.values(), key=lambda s: s[-1][0] - s[0][0])
        return [(t - series[0][0], kb) for t, kb in series]

    def growth_mb(self) -> tuple[float, float, float]:
        """RSS of the longest-lived process after its first quarter, and at its end."""
        series = self.longest()
        if not series:
            return 0.0, 0.0, 0.0
        life = series[-1][0]
        after = [kb for t, kb in series if t >= life / 4] or [series[-1][1]]
        return after[0] / 1024, series[-1][1] / 1024, life / 60

    def curve(self, warmup_min: float) -> dict[str, Any]:
        """The longest-lived process's RSS over time, in MB.

        ``per_minute``: RSS at each whole minute of its life. After ``warmup_min`` the rest of
        its life is cut in thirds; for each, ``mean`` RSS, ``max`` RSS and ``hwm_rise``: how far
        its maximum rose above every sample before it (the warm-up included). Memory that
        levels off shows a last-third rise near zero; a leak rises in every third alike.
        """
        series = self.longest()
        if not series:
            return {}
        life = series[-1][0]
        per_minute = [
            round(next(kb for t, kb in reversed(series) if t <= m * 60) / 1024, 1)
            for m in range(int(life // 60) + 1)
        ]
        start = min(warmup_min * 60, life / 2)
        span = (life - start) / 3
        thirds: list[dict[str, float]] = []
        high = max((kb for t, kb in series if t < start), default=series[0][1])
        for i in range(3):
            lo, hi = start + i * span, start + (i + 1) * span
            window = [kb for t, kb in series if lo <= t <= hi] or [high]
            thirds.append(
                {
                    "from_min": round(lo / 60, 1),
                    "to_min": round(hi / 60, 1),
                    "mean": round(sum(window) / len(window) / 1024, 1),
                    "max": round(max(window) / 1024, 1),
                    "hwm_rise": round(max(0, max(window) - high) / 1024, 1),
                }
            )
            high = max(high, *window)
        return {
            "life_min": round(life / 60, 1),
            "warmup_min": round(start / 60, 1),
            "per_minute": per_minute,
            "thirds": thirds,
            "last_vs_first_third_mean": round(thirds[2]["mean"] - thirds[0]["mean"], 1),
        }


def _curve_text(curve: dict[str, Any]) -> str:
    """The RSS curve as a few printed lines (empty when there were no samples)."""
    if not curve:
        return ""
    thirds = "; ".join(
        f"{t['from_min']:g}-{t['to_min']:g} min mean {t['mean']} max {t['max']} "
        f"(high-water +{t['hwm_rise']})"
        for t in curve["thirds"]
    )
    return (
        f"RSS of the longest-lived process ({curve['life_min']} min), MB per minute: "
        f"{' '.join(f'{v:g}' for v in curve['per_minute'])}\n"
        f"after {curve['warmup_min']} min of warm-up, by thirds: {thirds}; "
        f"last third's mean - first third's mean: {curve['last_vs_first_third_mean']:+} MB\n"
    )


def _ledger(db: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "ledger.cli", "--db", db, *args]


def _run_args(ex: ExchangeThread) -> list[str]:
    return [
        "run", "--ws-url", ex.exchange.ws_url, "--rest-url", ex.exchange.rest_url,
        "--retry-initial", "0.05", "--retry-cap", "2", "--heal-interval", "5",
        "--ping-interval", "3", "--ping-timeout", "3", "--log-format", "json",
        "--log-level", "warning",
    ]  # fmt: skip


def _view(db: str) -> tuple[list[str], dict[str, Any]]:
    """Booked fill ids, and per asset the last snapshot's free/locked and the expected total."""
    services = open_ledger(db)
    try:
        with services.db.reading() as cur:
            cur.execute("SELECT fill_id FROM ledger_fills")
            fills = [str(r[0]) for r in cur.fetchall()]
        state = services.projector.load()
        balances = {
            a: {"free": b.free, "locked": b.locked, "expected_total": b.expected_total}
            for a, b in state.balances.assets.items()
        }
        return fills, balances
    finally:
        services.close()


def _balances_agree(ledger: dict[str, Any], truth: dict[str, dict[str, Any]]) -> bool:
    """The booking rules hold against the exchange: for every asset, the last snapshot the
    ledger accepted plus every fill since equals the exchange's balance now; and where the
    exchange's own last snapshot is valid (nothing below zero: the generated session is a
    random walk and can overdraw, and the parser rejects a negative balance), free and
    locked are that snapshot's."""
    if set(ledger) != set(truth):
        return False
    for asset, want in truth.items():
        if ledger[asset]["expected_total"] != want["free"] + want["locked"]:
            return False
    if all(v >= 0 for want in truth.values() for v in want.values()):
        return all(
            (ledger[a]["free"], ledger[a]["locked"]) == (w["free"], w["locked"])
            for a, w in truth.items()
        )
    return True


def _frames_logged(db: str) -> int:
    services = open_ledger(db)
    try:
        with services.db.reading() as cur:
            cur.execute(
                "SELECT count(*) FROM stored_events WHERE topic IN (?, ?)",
                ("ledger.events:FrameReceived", "ledger.events:FrameRejected"),
            )
            row = cur.fetchone()
        return int(row[0]) if row else 0
    finally:
        services.close()


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="ledger-soak-"))
    workdir.mkdir(parents=True, exist_ok=True)
    db = args.db or str(workdir / "soak.sqlite")
    key = "soak_" + secrets.token_hex(20)
    frames = int(args.rate * args.minutes * 60)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LEDGER_", "DELTADEFI_"))}
    env |= {"DELTADEFI_API_KEY": key, "PYTHONUNBUFFERED": "1"}
    faults = Faults(
        drop_every=args.drop_every,
        lose_on_drop=args.lose_on_drop,
        repeat_rate=0.02,
        stall_connection=3,
        stall_after=200,
        stall_timeout=20.0,
        rate_limit_every=40,
        rate_limit_burst=3,
        server_error_every=25,
        seed=args.seed,
    )
    print(
        f"soak: {args.minutes:g} min, {frames:,} frames at {args.rate:g}/s, {args.kills} kill(s), "
        f"db {db}, logs in {workdir}",
        flush=True,
    )

    def build() -> LocalExchange:
        source = SessionSource(frames, args.seed, malformed_rate=0.001)
        return LocalExchange(source, key, rate=args.rate, faults=faults)

    monitor = RssMonitor()
    kills_done = 0
    started = time.monotonic()
    with ExchangeThread(build) as ex:
        log_path = workdir / "ledger-run.log"

        def start() -> subprocess.Popen[bytes]:
            with log_path.open("ab") as log:
                return subprocess.Popen(
                    _ledger(db, *_run_args(ex)), stdout=log, stderr=log, cwd=REPO, env=env
                )

        proc = start()
        session_s = frames / args.rate
        kill_span = session_s * min(max(args.kill_window, 0.0), 1.0)
        kill_at = [started + kill_span * (k + 1) / (args.kills + 1) for k in range(args.kills)]
        finished_at: float | None = None
        caught_up = False
        while True:
            now = time.monotonic()
            monitor.sample(proc.pid)
            if proc.poll() is not None:
                print(f"ledger run exited by itself ({proc.returncode}); restarting", flush=True)
                proc = start()
            if kill_at and now >= kill_at[0]:
                kill_at.pop(0)
                proc.send_signal(signal.SIGKILL)
                proc.wait(30)
                kills_done += 1
                proc = start()
            if finished_at is None and ex.call(lambda e: e.finished.is_set()):
                finished_at = time.monotonic()
                print(f"session over after {finished_at - started:,.0f}s; settling", flush=True)
            if finished_at is not None and not kill_at:
                truth = ex.call(lambda e: e.truth())
                try:
                    fills, balances = _view(db)
                except Exception:  # the tables may be mid-creation after a restart
                    fills, balances = [], {}
                if set(fills) == set(truth["fills"]) and _balances_agree(
                    balances, truth["balances"]
                ):
                    caught_up = True
                    break
                if now - finished_at > args.settle:
                    break
            time.sleep(1.0 if finished_at is None else 5.0)
        settle_s = time.monotonic() - (finished_at or started)
        monitor.sample(proc.pid)
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)
        truth = ex.call(lambda e: e.truth())
        exchange_stats = ex.call(lambda e: e.stats.as_json())

    fills, balances = _view(db)
    verified = subprocess.run(
        _ledger(db, "verify", "--json"), capture_output=True, cwd=REPO, env=env, timeout=1800
    )
    status_run = subprocess.run(
        _ledger(db, "status", "--json"), capture_output=True, cwd=REPO, env=env, timeout=600
    )
    status = json.loads(status_run.stdout) if status_run.returncode == 0 else {}
    session_wall = (finished_at or time.monotonic()) - started
    logged = _frames_logged(db)
    first_mb, last_mb, life_min = monitor.growth_mb()
    curve = monitor.curve(args.warmup)
    checks = {
        "fills_exactly_once": len(fills) == len(set(fills)),
        "fills_equal_exchange": set(fills) == set(truth["fills"]),
        "balances_follow_exchange": _balances_agree(balances, truth["balances"]),
        "verify_ok": verified.returncode == 0,
        "caught_up_in_time": caught_up,
        "key_never_logged": key.encode() not in log_path.read_bytes(),
    }
    summary = {
        "minutes": args.minutes,
        "frames_generated": exchange_stats["generated"],
        "frames_logged": logged,
        "frames_per_s": round(logged / session_wall, 1) if session_wall else 0,
        "reconnects": status.get("reconnects"),
        "disconnects": status.get("disconnects"),
        "kills": kills_done,
        "gaps_healed": status.get("gaps_healed"),
        "fills_healed": status.get("fills_healed"),
        "fills_booked": len(set(fills)),
        "fills_exchange": len(truth["fills"]),
        "exchange_overdrawn": sorted(
            a for a, w in truth["balances"].items() if any(v < 0 for v in w.values())
        ),
        "exchange": exchange_stats,
        "settle_s": round(settle_s, 1),
        "peak_rss_mb": round(monitor.peak_mb(), 1),
        "rss_growth_mb": round(last_mb - first_mb, 1),
        "rss_growth_window_min": round(life_min * 0.75, 1),
        "rss_curve": curve,
        "checks": checks,
    }
    verdicts = ", ".join(f"{k} {'ok' if v else 'FAILED'}" for k, v in checks.items())
    print(
        f"frames/s {summary['frames_per_s']:,} ({logged:,} logged, "
        f"{exchange_stats['generated']:,} generated, {exchange_stats['lost']:,} lost on drops)\n"
        f"reconnects {summary['reconnects']}, kills {kills_done}, gaps healed "
        f"{summary['gaps_healed']} ({summary['fills_healed']} fills)\n"
        f"fills booked {len(set(fills)):,} of the exchange's {len(truth['fills']):,}\n"
        f"peak RSS {summary['peak_rss_mb']} MB, RSS growth {summary['rss_growth_mb']} MB over "
        f"the last {summary['rss_growth_window_min']} min of one process\n"
        f"{_curve_text(curve)}"
        f"checks: {verdicts}",
        flush=True,
    )
    print(json.dumps(summary, default=str), flush=True)
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
