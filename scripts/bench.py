"""The ledger's benchmark: every figure of issue 5 side by side, measured in one run.

    python scripts/bench.py                                  # quick: 20,000 frames, 3 runs
    python scripts/bench.py --frames 20000,200000,1000000 \\
        --json bench.json --markdown bench.md --plot docs/performance-scaling.png

For each size it generates a deterministic capture (the local exchange's session:
interleaved orders with cumulative execution records, balance snapshots,
verbatim repeats, a few malformed frames) and measures, each as the median of
``--runs`` runs with min–max:

- import: ``ledger ingest`` of the capture into a fresh database (a subprocess;
  every batch is committed durably), frames/s and fills/s, SQLite and PostgreSQL;
- rebuild: ``ledger rebuild`` (log events/s and frames/s) and ``ledger verify``;
- memory: the peak RSS of the import and rebuild processes (``wait4``'s rusage);
- ceilings on the same frames: (a) plain sqlite3 / psycopg inserts of the frame
  texts with a commit every 100 rows, and PostgreSQL COPY; (b) a plain sequential
  read of the stored texts + ``json.loads(parse_float=Decimal)`` + a Decimal
  average-cost fold of the new fills;
- the baseline: the replaced design (aiosqlite, REAL columns, three commits per
  fill) on the capture's first fills, in WAL and in SQLite's default journal mode;
- scaling: the exponent of time against size (a least-squares fit on log–log);
- live (``--no-live`` skips it, ``--live-only`` runs only it): the local exchange sends
  a session's frames on its account websocket at 200 and 2,000 frames/s for
  ``--live-seconds``, stamping each send; ``ledger run``'s follower, in a process of its
  own on a fresh store, stamps the moment each frame is committed durably and
  projected (its listeners run only then); latency p50/p99/max, frames booked against
  sent, frames in flight half-way and at the end; and the floor, one durable commit of
  one frame into a plain table at 200 frames/s.

Ratios are project / baseline and project / ceiling on the same frames. Nothing
here asserts a speed: the figures are for reading (``docs/performance.md``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


DEFAULT_PG_SERVER = os.environ.get("LEDGER_TEST_PG", "postgresql://postgres@127.0.0.1:5432")
MALFORMED_RATE = 0.001
CEILING_COMMIT_EVERY = 100

# Targets of issue 5, for the verdict column (ratios hold across machines).
TARGETS = {
    "import_sqlite_vs_ceiling": 0.50,
    "import_sqlite_vs_baseline_wal": 40.0,
    "import_postgresql_vs_ceiling": 0.40,
    "rebuild_sqlite_vs_ceiling": 0.75,
    "rebuild_postgresql_vs_ceiling": 0.60,
    "peak_rss_mb": 250.0,
    "rebuild_sqlite_1m_seconds": 15.0,
}


# --- running and timing ---------------------------------------------------------------


@dataclass
class Measured:
    seconds: float
    max_rss_mb: float
    output: dict[str, Any]
    #: What the command and its children wrote to files, as the kernel counts what they
    #: send to storage (512-byte blocks; a PostgreSQL server's own writes are not in it).
    written_mb: float = 0.0


#: A tiny process between the benchmark and each measured command. Linux charges a child's
#: peak RSS with the memory of the process it was forked from (until its exec), so the
#: benchmark, which grows with what it has measured, must not be that process.
_SPAWN = """
import json, os, sys, time
started = time.perf_counter()
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
seconds = time.perf_counter() - started
with open(sys.argv[1], "w") as out:
    json.dump({"seconds": seconds, "max_rss_kib": usage.ru_maxrss, "blocks_out": usage.ru_oublock}, out)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def run_ledger(url: str, *args: str) -> Measured:
    """``ledger --db url args --json`` in a child process: wall time, peak RSS, its JSON."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")}
    cmd = [sys.executable, "-m", "ledger.cli", "--db", url, *args, "--json"]
    with (
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
        tempfile.NamedTemporaryFile("r", suffix=".json") as usage,
    ):
        code = subprocess.call(
            [sys.executable, "-c", _SPAWN, usage.name, *cmd],
            stdout=out,
            stderr=err,
            env=env,
            cwd=REPO,
        )
        measured = json.loads(usage.read())
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
    if code not in (0, 1):
        raise RuntimeError(f"{' '.join(args)} failed ({code}): {stderr.strip()[:500]}")
    # ru_maxrss is in KiB on Linux.
    return Measured(
        measured["seconds"],
        measured["max_rss_kib"] / 1024,
        json.loads(stdout),
        measured["blocks_out"] * 512 / 1e6,
    )


def generate_capture(path: Path, frames: int, seed: int) -> None:
    """The session generator in its own process: it keeps the exchange's truth (every fill)
    in memory, which must not inflate the benchmark process (see ``_SPAWN``)."""
    subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from adapters.deltadefi.session import write_capture; "
            "write_capture(sys.argv[1], int(sys.argv[2]), seed=int(sys.argv[3]), "
            "malformed_rate=float(sys.argv[4]))",
            str(path),
            str(frames),
            str(seed),
            str(MALFORMED_RATE),
        ],
        check=True,
        cwd=REPO,
    )


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


def summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def rate(count: int, seconds: list[float]) -> dict[str, float]:
    """count / seconds for each run; the median rate is the rate of the median time."""
    return summary([count / s for s in seconds])


# --- databases ------------------------------------------------------------------------


class Stores:
    """Fresh SQLite files and fresh PostgreSQL databases, each removed after use."""

    def __init__(self, workdir: Path, pg_server: str | None) -> None:
        self.workdir = workdir
        self.pg_server = pg_server

    def kinds(self) -> list[str]:
        return ["sqlite", "postgresql"] if self.pg_server else ["sqlite"]

    def fresh(self, kind: str) -> str:
        if kind == "sqlite":
            return str(self.workdir / f"ledger-{uuid.uuid4().hex[:8]}.sqlite")
        import psycopg
        from psycopg import sql

        name = f"ledger_bench_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(f"{self.pg_server}/postgres", autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return f"{self.pg_server}/{name}"

    def drop(self, url: str) -> None:
        if not url.startswith("postgresql://"):
            for suffix in ("", "-wal", "-shm", "-journal"):
                Path(url + suffix).unlink(missing_ok=True)
            return
        import psycopg
        from psycopg import sql

        name = url.rsplit("/", 1)[1]
        with psycopg.connect(f"{self.pg_server}/postgres", autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


# --- the project: import, rebuild, verify -----------------------------------------------


def bench_project(stores: Stores, kind: str, capture: Path, runs: int) -> dict[str, Any]:
    imports, rebuilds, verifies = [], [], []
    import_rss, rebuild_rss = [], []
    written, file_sizes = [], []
    hashes: set[str] = set()
    out: dict[str, Any] = {}
    for _ in range(runs):
        url = stores.fresh(kind)
        try:
            ingest = run_ledger(url, "ingest", str(capture))
            if kind == "sqlite":
                written.append(ingest.written_mb)
                file_sizes.append(Path(url).stat().st_size / 1e6)
            rebuild = run_ledger(url, "rebuild")
            verify = run_ledger(url, "verify")
        finally:
            stores.drop(url)
        if not verify.output.get("ok"):
            raise RuntimeError(f"ledger verify failed on {kind}: {verify.output}")
        imports.append(ingest.seconds)
        rebuilds.append(rebuild.seconds)
        verifies.append(verify.seconds)
        import_rss.append(ingest.max_rss_mb)
        rebuild_rss.append(rebuild.max_rss_mb)
        hashes.add(rebuild.output["state_hash"])
        out["report"] = ingest.output
        out["log_events"] = rebuild.output["log_position"]
    report = out["report"]
    if len(hashes) != 1:
        raise RuntimeError(f"{kind}: runs disagree on the state hash: {sorted(hashes)}")
    return {
        "frames": report["frames"],
        "fills": report["fills_new"],
        "log_events": out["log_events"],
        "state_hash": hashes.pop(),
        "import_seconds": summary(imports),
        "import_frames_per_s": rate(report["frames"], imports),
        "import_fills_per_s": rate(report["fills_new"], imports),
        "rebuild_seconds": summary(rebuilds),
        "rebuild_events_per_s": rate(out["log_events"], rebuilds),
        "rebuild_frames_per_s": rate(report["frames"], rebuilds),
        "verify_seconds": summary(verifies),
        "import_peak_rss_mb": summary(import_rss),
        "rebuild_peak_rss_mb": summary(rebuild_rss),
        # SQLite only: a server's writes are not the command's.
        **(
            {"import_written_mb": summary(written), "import_file_mb": summary(file_sizes)}
            if written
            else {}
        ),
    }


# --- ceilings ------------------------------------------------------------------------


def capture_lines(capture: Path) -> Iterator[bytes]:
    with capture.open("rb") as handle:
        for line in handle:
            line = line.rstrip(b"\r\n")
            if line.strip():
                yield line


def chunks(lines: Iterator[bytes], size: int) -> Iterator[list[bytes]]:
    chunk: list[bytes] = []
    for line in lines:
        chunk.append(line)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def ceiling_insert_sqlite(path: Path, capture: Path) -> int:
    """(a) The frame texts into a plain table, WAL, synchronous=FULL, commit every 100."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE frames (id INTEGER PRIMARY KEY, raw BLOB NOT NULL)")
    count = 0
    for chunk in chunks(capture_lines(capture), CEILING_COMMIT_EVERY):
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO frames (raw) VALUES (?)", [(raw,) for raw in chunk])
        conn.execute("COMMIT")
        count += len(chunk)
    conn.close()
    return count


def _pg_scratch(pg_server: str) -> tuple[str, Callable[[], None]]:
    stores = Stores(Path("."), pg_server)
    url = stores.fresh("postgresql")
    return url, lambda: stores.drop(url)


def ceiling_insert_postgres(url: str, capture: Path, copy: bool) -> int:
    """(a) The frame texts into a plain table: INSERTs with a commit every 100, or one COPY."""
    import psycopg

    count = 0
    with psycopg.connect(url) as conn:
        conn.execute("CREATE TABLE frames (id BIGSERIAL PRIMARY KEY, raw BYTEA NOT NULL)")
        conn.commit()
        with conn.cursor() as cur:
            if copy:
                with cur.copy("COPY frames (raw) FROM STDIN") as pipe:
                    for raw in capture_lines(capture):
                        pipe.write_row((raw,))
                        count += 1
                conn.commit()
                return count
            for chunk in chunks(capture_lines(capture), CEILING_COMMIT_EVERY):
                cur.executemany("INSERT INTO frames (raw) VALUES (%s)", [(raw,) for raw in chunk])
                conn.commit()
                count += len(chunk)
    return count


def average_cost(
    held: Decimal, average: Decimal, signed: Decimal, price: Decimal
) -> tuple[Decimal, Decimal, Decimal]:
    """The replaced design's average-cost step: (new quantity, new average, realized)."""
    if held == 0 or (held > 0) == (signed > 0):
        quantity = held + signed
        return quantity, (abs(held) * average + abs(signed) * price) / abs(quantity), Decimal(0)
    closing = min(abs(held), abs(signed))
    realized = closing * (price - average) * (1 if held > 0 else -1)
    quantity = held + signed
    if quantity == 0:
        return quantity, Decimal(0), realized
    if (quantity > 0) != (held > 0):
        return quantity, price, realized
    return quantity, average, realized


class Fold:
    """(b) A bare Decimal average-cost fold of the new fills of decoded frames."""

    def __init__(self) -> None:
        self.seen: set[str] = set()
        self.books: dict[str, tuple[Decimal, Decimal, Decimal]] = {}

    def frame(self, raw: bytes) -> None:
        try:
            obj = json.loads(raw, parse_float=Decimal)
        except ValueError:
            return
        order = obj.get("order") if isinstance(obj, dict) else None
        if not isinstance(order, dict):
            return
        sign = 1 if order.get("side") == "buy" else -1
        symbol = order.get("symbol")
        for rec in order.get("order_execution_records") or ():
            fill_id = rec.get("id")
            if fill_id in self.seen:
                continue
            self.seen.add(fill_id)
            held, average, realized = self.books.get(symbol, (Decimal(0),) * 3)
            qty, avg, gain = average_cost(
                held,
                average,
                sign * Decimal(rec["filled_base_qty"]),
                Decimal(rec["execution_price"]),
            )
            self.books[symbol] = (qty, avg, realized + gain)


def ceiling_fold_sqlite(path: Path) -> int:
    conn = sqlite3.connect(path)
    fold, count = Fold(), 0
    for (raw,) in conn.execute("SELECT raw FROM frames ORDER BY id"):
        fold.frame(raw)
        count += 1
    conn.close()
    return count


def ceiling_fold_postgres(url: str) -> int:
    import psycopg

    fold, count = Fold(), 0
    # Binary results, as the ledger's page reads: a bytea's bytes, not hex text to decode.
    with psycopg.connect(url) as conn, conn.cursor(name="scan", binary=True) as cur:
        cur.itersize = 2000
        cur.execute("SELECT raw FROM frames ORDER BY id")
        for (raw,) in cur:
            fold.frame(raw)
            count += 1
    return count


def bench_ceilings(
    workdir: Path, capture: Path, runs: int, pg_server: str | None
) -> dict[str, Any]:
    results: dict[str, list[float]] = {}
    frames = 0
    for _ in range(runs):
        path = workdir / f"ceiling-{uuid.uuid4().hex[:8]}.sqlite"
        try:
            seconds, frames = timed(lambda p=path: ceiling_insert_sqlite(p, capture))
            results.setdefault("a_sqlite_insert", []).append(seconds)
            seconds, _ = timed(lambda p=path: ceiling_fold_sqlite(p))
            results.setdefault("b_sqlite_read_decode_fold", []).append(seconds)
        finally:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
        if pg_server:
            for copy in (False, True):
                url, drop = _pg_scratch(pg_server)
                try:
                    name = "a_postgresql_copy" if copy else "a_postgresql_insert"
                    seconds, _ = timed(lambda u=url, c=copy: ceiling_insert_postgres(u, capture, c))
                    results.setdefault(name, []).append(seconds)
                    if copy:
                        seconds, _ = timed(lambda u=url: ceiling_fold_postgres(u))
                        results.setdefault("b_postgresql_read_decode_fold", []).append(seconds)
                finally:
                    drop()
    return {
        name: {"seconds": summary(values), "frames_per_s": rate(frames, values)}
        for name, values in results.items()
    }


# --- the baseline: the replaced design ------------------------------------------------


@dataclass(frozen=True)
class BaselineFill:
    fill_id: str
    order_id: str
    symbol: str
    side: str
    price: Decimal
    quantity: Decimal
    quote_amount: Decimal
    fee: Decimal
    executed_at: str


def first_fills(capture: Path, limit: int) -> list[BaselineFill]:
    """The capture's first ``limit`` distinct fills, in arrival order."""
    found: dict[str, BaselineFill] = {}
    for raw in capture_lines(capture):
        try:
            obj = json.loads(raw, parse_float=Decimal)
        except ValueError:
            continue
        order = obj.get("order") if isinstance(obj, dict) else None
        if not isinstance(order, dict):
            continue
        for rec in order.get("order_execution_records") or ():
            if rec["id"] not in found:
                found[rec["id"]] = BaselineFill(
                    fill_id=rec["id"],
                    order_id=order["id"],
                    symbol=order["symbol"],
                    side=order["side"],
                    price=Decimal(rec["execution_price"]),
                    quantity=Decimal(rec["filled_base_qty"]),
                    quote_amount=Decimal(rec["filled_quote_qty"]),
                    fee=Decimal(rec["commission"]),
                    executed_at=rec["created_at"],
                )
                if len(found) >= limit:
                    return list(found.values())
    return list(found.values())


_BASELINE_SCHEMA = (
    "CREATE TABLE fills (fill_id TEXT PRIMARY KEY, order_id TEXT, symbol TEXT, side TEXT,"
    " price REAL, quantity REAL, fee REAL, executed_at TEXT)",
    "CREATE TABLE positions (symbol TEXT PRIMARY KEY, quantity REAL, avg_entry_price REAL,"
    " realized_pnl REAL)",
    "CREATE TABLE account_balances (asset TEXT PRIMARY KEY, free REAL, locked REAL)",
)


async def _baseline(path: Path, fills: list[BaselineFill], journal: str) -> None:
    import aiosqlite

    async with aiosqlite.connect(path) as db:
        await db.execute(f"PRAGMA journal_mode={journal}")
        for statement in _BASELINE_SCHEMA:
            await db.execute(statement)
        await db.commit()
        balances: dict[str, Decimal] = {}
        for fill in fills:
            await db.execute(
                "INSERT OR REPLACE INTO fills VALUES (?,?,?,?,?,?,?,?)",
                (
                    fill.fill_id,
                    fill.order_id,
                    fill.symbol,
                    fill.side,
                    float(fill.price),
                    float(fill.quantity),
                    float(fill.fee),
                    fill.executed_at,
                ),
            )
            await db.commit()
            cursor = await db.execute(
                "SELECT quantity, avg_entry_price FROM positions WHERE symbol=?", (fill.symbol,)
            )
            row = await cursor.fetchone()
            held, average = (
                (Decimal(str(row[0])), Decimal(str(row[1]))) if row else (Decimal(0), Decimal(0))
            )
            signed = fill.quantity if fill.side == "buy" else -fill.quantity
            quantity, new_average, realized = average_cost(held, average, signed, fill.price)
            await db.execute(
                "INSERT OR REPLACE INTO positions VALUES (?,?,?,?)",
                (fill.symbol, float(quantity), float(new_average), float(realized)),
            )
            await db.commit()
            base, quote = fill.symbol[:-4], fill.symbol[-4:]
            sign = 1 if fill.side == "buy" else -1
            balances[base] = balances.get(base, Decimal(0)) + sign * fill.quantity
            balances[quote] = balances.get(quote, Decimal(0)) - sign * fill.quote_amount
            for asset in (base, quote):
                await db.execute(
                    "INSERT OR REPLACE INTO account_balances VALUES (?,?,?)",
                    (asset, float(balances[asset]), 0.0),
                )
            await db.commit()


def bench_baseline(workdir: Path, capture: Path, fills: int, runs: int) -> dict[str, Any]:
    sample = first_fills(capture, fills)
    out: dict[str, Any] = {"fills": len(sample)}
    for journal in ("wal", "delete"):
        seconds = []
        for _ in range(runs):
            path = workdir / f"baseline-{uuid.uuid4().hex[:8]}.sqlite"
            try:
                elapsed, _ = timed(lambda p=path, j=journal: asyncio.run(_baseline(p, sample, j)))
                seconds.append(elapsed)
            finally:
                for suffix in ("", "-wal", "-shm", "-journal"):
                    Path(f"{path}{suffix}").unlink(missing_ok=True)
        out[journal] = {"seconds": summary(seconds), "fills_per_s": rate(len(sample), seconds)}
    return out


# --- the live path --------------------------------------------------------------------

#: Rates (frames/s) of the live section: the issue's sustained and burst rates.
LIVE_RATES = (200, 2000)
#: Latency targets of issue 5 (p99, seconds) per store at the sustained rate, and for the burst.
LIVE_P99_TARGET = {"sqlite": 0.005, "postgresql": 0.010}
LIVE_BURST_P99_TARGET = 0.050
LIVE_RUN_SLACK_S = 60.0


def _live_follower(argv: list[str]) -> int:
    """The ledger side of one live measurement, in its own process (``--live-follower``).

    Follows the local exchange exactly as ``ledger run`` does (real websocket, real store,
    the connect-time REST backfill) and stamps, with the system-wide monotonic clock, the
    moment each websocket frame is committed AND projected: the follower's listeners run
    after ``LiveLedger.append`` has returned, i.e. after the durable commit and the
    projection catch-up. Stops after ``expected`` websocket frames (or ``timeout`` s)
    and writes the stamps, in arrival order, as JSON.
    """
    url, ws_url, key, expected_s, timeout_s, out = argv
    expected, timeout = int(expected_s), float(timeout_s)

    from ledger import collector
    from ledger.application import AppendReport, IncomingFrame
    from ledger.bootstrap import open_ledger
    from ledger.live import SOURCE_WS, Follower
    from ledger.live_bootstrap import LiveConfig, follow_account
    from ledger.logging import configure_logging

    collector.for_throughput()  # as the command line does (ledger.cli.main)
    configure_logging("warning")
    visible: list[float] = []
    holder: dict[str, Any] = {}

    async def main() -> None:
        services = open_ledger(url)
        stop = asyncio.Event()

        def booked(frames: Any, report: AppendReport) -> None:
            now = time.monotonic()
            visible.extend(
                now for f in frames if isinstance(f, IncomingFrame) and f.source == SOURCE_WS
            )
            if len(visible) >= expected:
                stop.set()

        def started(follower: Follower) -> None:
            holder["follower"] = follower
            follower.listeners.append(booked)

        config = LiveConfig(
            api_key=key,
            ws_url=ws_url,
            rest_url=ws_url.replace("ws://", "http://", 1),
            rest_min_interval=0.0,
            heal_interval=3600.0,  # one backfill at connect, as every run starts with
        )
        try:
            await follow_account(services, config, duration=timeout, stop=stop, started=started)
        finally:
            services.close()

    profile = os.environ.get("BENCH_LIVE_PROFILE")
    if profile:
        # A diagnostic aid: the follower's whole run under cProfile, stats written here.
        import cProfile

        cProfile.runctx(
            "asyncio.run(main())", globals(), {"main": main, "asyncio": asyncio}, profile
        )
    else:
        asyncio.run(main())
    stats = holder["follower"].stats
    Path(out).write_text(
        json.dumps(
            {
                "visible": visible,
                "appended": stats.appended,
                "already_ingested": stats.already_ingested,
                "fills_new": stats.fills_new,
                "uncommitted": stats.uncommitted,
                "connects": stats.connects,
            }
        )
    )
    return 0


def percentile(sorted_values: list[float], q: float) -> float:
    """The nearest-rank percentile (q in 0..1) of an ascending list."""
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[rank - 1]


def backlog_at(sent: list[float], visible: list[float], t: float) -> int:
    """Frames sent by ``t`` and not yet visible at ``t`` (both lists ascending)."""
    import bisect

    return bisect.bisect_right(sent, t) - bisect.bisect_right(visible, t)


def live_figures(sent: list[float], visible: list[float]) -> dict[str, Any]:
    """Per-frame latency (the k-th frame sent is the k-th booked: one connection, in order)."""
    n = min(len(sent), len(visible))
    latencies = sorted(visible[k] - sent[k] for k in range(n))
    first, last = sent[0], sent[-1]
    middle = first + (last - first) / 2
    tenth = max(1, n // 10)
    return {
        "sent": len(sent),
        "booked": len(visible),
        "p50_ms": percentile(latencies, 0.50) * 1e3,
        "p99_ms": percentile(latencies, 0.99) * 1e3,
        "max_ms": latencies[-1] * 1e3,
        "achieved_rate": (len(sent) - 1) / (last - first) if last > first else 0.0,
        # Frames in flight (sent, not yet visible) half-way and at the last send: a backlog
        # that grows shows up as end >> middle, and as a later tenth slower than an earlier one.
        "backlog_middle": backlog_at(sent, visible, middle),
        "backlog_end": backlog_at(sent, visible, last),
        "p50_ms_second_tenth": statistics.median(
            visible[k] - sent[k] for k in range(tenth, min(n, 2 * tenth))
        )
        * 1e3,
        "p50_ms_last_tenth": statistics.median(visible[k] - sent[k] for k in range(n - tenth, n))
        * 1e3,
    }


class _PreparedSource:
    """The session's frames generated before the clock starts, so that making them does not
    take CPU from the measurement (the exchange still books each one as it sends it)."""

    def __init__(self, frames: int, seed: int) -> None:
        from adapters.deltadefi.exchange import SessionSource

        self._session = SessionSource(frames, seed=seed)
        self._frames = list(self._session.frames())

    def frames(self) -> Iterator[str | bytes]:
        return iter(self._frames)

    def balances(self) -> list[dict[str, Any]] | None:
        return self._session.balances()

    def symbols(self) -> list[str]:
        return self._session.symbols()


async def _live_once(
    url: str, rate: int, seconds: float, seed: int, out: Path
) -> tuple[list[float], dict[str, Any]]:
    from adapters.deltadefi.exchange import LocalExchange

    frames = max(2, int(rate * seconds))
    key = "ddk_bench_" + uuid.uuid4().hex
    sent: list[float] = []
    # The stamp is taken right before each send, on the exchange's side; the frames go out
    # as the session generated them.
    exchange = LocalExchange(
        _PreparedSource(frames, seed),
        key,
        rate=float(rate),
        on_send=lambda _index: sent.append(time.monotonic()),
    )
    await exchange.start()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LEDGER_", "DELTADEFI_"))}
    timeout = seconds * 3 + LIVE_RUN_SLACK_S
    try:
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            str(Path(__file__).resolve()),
            "--live-follower",
            url,
            exchange.ws_url,
            key,
            str(frames),
            str(timeout),
            str(out),
            cwd=REPO,
            env=env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        _, stderr = await asyncio.wait_for(child.communicate(), timeout + 30)
        if child.returncode != 0:
            raise RuntimeError(f"live follower failed: {stderr.decode()[-800:]}")
    finally:
        await exchange.stop()
    report = json.loads(out.read_text())
    out.unlink()
    if exchange.stats.repeats or exchange.stats.drops or report["connects"] != 1:
        # The k-th frame sent is paired with the k-th booked: one connection, in order.
        raise RuntimeError("the live measurement needs one connection without faults")
    return sent, report


def _paced(frames: list[bytes], rate: float, commit: Callable[[bytes], None]) -> list[float]:
    """``commit(frame)`` for each frame at ``rate`` frames/s; each one's seconds."""
    latencies: list[float] = []
    start = time.monotonic()
    for index, raw in enumerate(frames):
        delay = start + index / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        began = time.monotonic()
        commit(raw)
        latencies.append(time.monotonic() - began)
    return latencies


def live_floor(stores: Stores, kind: str, rate: float, count: int, seed: int) -> dict[str, Any]:
    """The floor under the live latency: ONE durable commit of one frame text into a plain
    table (sqlite3 WAL ``synchronous=FULL``; psycopg, ``synchronous_commit=on``) at the
    sustained rate, nothing else. The ledger commits at least once per batch (the frame and
    its claims), and its projection once more."""
    from adapters.deltadefi.session import Session

    frames = [
        raw.encode() if isinstance(raw, str) else raw
        for raw in Session(seed, snapshot_every=25).frames(count)
    ]
    if kind == "sqlite":
        path = stores.workdir / f"floor-{uuid.uuid4().hex[:8]}.sqlite"
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("CREATE TABLE frames (id INTEGER PRIMARY KEY, raw BLOB NOT NULL)")

            def commit(raw: bytes) -> None:
                conn.execute("BEGIN")
                conn.execute("INSERT INTO frames (raw) VALUES (?)", (raw,))
                conn.execute("COMMIT")

            latencies = _paced(frames, rate, commit)
        finally:
            conn.close()
            stores.drop(str(path))
    else:
        import psycopg

        url = stores.fresh(kind)
        try:
            with psycopg.connect(url) as pg:
                pg.execute("CREATE TABLE frames (id BIGSERIAL PRIMARY KEY, raw BYTEA NOT NULL)")
                pg.commit()

                def commit(raw: bytes) -> None:
                    pg.execute("INSERT INTO frames (raw) VALUES (%s)", (raw,))
                    pg.commit()

                latencies = _paced(frames, rate, commit)
        finally:
            stores.drop(url)
    ordered = sorted(latencies)
    return {
        "p50_ms": percentile(ordered, 0.50) * 1e3,
        "p99_ms": percentile(ordered, 0.99) * 1e3,
        "max_ms": ordered[-1] * 1e3,
    }


def bench_live(
    stores: Stores, rates: list[int], seconds: float, runs: int, seed: int
) -> dict[str, Any]:
    """Each store at each rate, ``runs`` times; medians (min–max) of each run's figures."""
    out: dict[str, Any] = {"measured": True, "seconds": seconds, "rates": rates, "stores": {}}
    for kind in stores.kinds():
        per_rate: dict[str, Any] = {}
        for rate in rates:
            samples: list[dict[str, Any]] = []
            for _ in range(runs):
                url = stores.fresh(kind)
                try:
                    sent, report = asyncio.run(
                        _live_once(url, rate, seconds, seed, stores.workdir / "live-stamps.json")
                    )
                finally:
                    stores.drop(url)
                figures = live_figures(sent, report["visible"])
                figures["uncommitted"] = report["uncommitted"]
                figures["connects"] = report["connects"]
                samples.append(figures)
            stat_keys = [k for k, v in samples[0].items() if isinstance(v, float)]
            entry: dict[str, Any] = {k: summary([s[k] for s in samples]) for k in stat_keys}
            entry["sent"] = [s["sent"] for s in samples]
            entry["booked"] = [s["booked"] for s in samples]
            entry["backlog_middle"] = [s["backlog_middle"] for s in samples]
            entry["backlog_end"] = [s["backlog_end"] for s in samples]
            entry["every_frame_booked"] = all(
                s["booked"] == s["sent"] and not s["uncommitted"] for s in samples
            )
            if rate == min(rates):
                floors = [
                    live_floor(stores, kind, rate, max(2, int(rate * seconds)), seed)
                    for _ in range(runs)
                ]
                entry["floor"] = {k: summary([f[k] for f in floors]) for k in floors[0]}
            per_rate[str(rate)] = entry
            log(
                f"  live {kind} {rate}/s: p50 {entry['p50_ms']['median']:.1f} ms, "
                f"p99 {entry['p99_ms']['median']:.1f} ms, max {entry['max_ms']['median']:.1f} ms, "
                f"booked {entry['booked']} of {entry['sent']}, "
                f"backlog middle {entry['backlog_middle']} end {entry['backlog_end']}"
            )
        out["stores"][kind] = per_rate
    return out


def live_verdicts(live: dict[str, Any]) -> dict[str, Any]:
    """Issue 5's live targets against the medians: sustained p99 per store, burst p99 and
    no growing backlog (the last tenth's median latency within the burst target of the
    second tenth's)."""
    verdicts: dict[str, Any] = {}
    for kind, per_rate in live["stores"].items():
        for rate, entry in per_rate.items():
            p99 = entry["p99_ms"]["median"] / 1e3
            target = LIVE_P99_TARGET[kind] if int(rate) < 1000 else LIVE_BURST_P99_TARGET
            growth = (
                entry["p50_ms_last_tenth"]["median"] - entry["p50_ms_second_tenth"]["median"]
            ) / 1e3
            verdicts[f"{kind}_{rate}"] = {
                "p99_target_ms": target * 1e3,
                "p99_met": p99 <= target,
                "keeps_up": entry["every_frame_booked"] and growth <= LIVE_BURST_P99_TARGET,
            }
    return verdicts


def live_status(reason: str) -> dict[str, Any]:
    return {"measured": False, "reason": reason}


# --- putting it together ----------------------------------------------------------------


def exponent(sizes: list[int], seconds: list[float]) -> float | None:
    """The least-squares slope of log(time) on log(size): ~1 means linear."""
    if len(sizes) < 2:
        return None
    xs, ys = [math.log(s) for s in sizes], [math.log(t) for t in seconds]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den


def ratios(size: dict[str, Any], baseline: dict[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    ceilings = size["ceilings"]
    sqlite = size["project"]["sqlite"]
    med = "median"
    out["import_sqlite_vs_ceiling"] = (
        sqlite["import_frames_per_s"][med] / ceilings["a_sqlite_insert"]["frames_per_s"][med]
    )
    out["import_sqlite_vs_baseline_wal"] = (
        sqlite["import_fills_per_s"][med] / baseline["wal"]["fills_per_s"][med]
    )
    out["import_sqlite_vs_baseline_default_journal"] = (
        sqlite["import_fills_per_s"][med] / baseline["delete"]["fills_per_s"][med]
    )
    out["rebuild_sqlite_vs_ceiling"] = (
        sqlite["rebuild_frames_per_s"][med]
        / ceilings["b_sqlite_read_decode_fold"]["frames_per_s"][med]
    )
    pg = size["project"].get("postgresql")
    if pg:
        out["import_postgresql_vs_ceiling"] = (
            pg["import_frames_per_s"][med] / ceilings["a_postgresql_insert"]["frames_per_s"][med]
        )
        out["import_postgresql_vs_copy"] = (
            pg["import_frames_per_s"][med] / ceilings["a_postgresql_copy"]["frames_per_s"][med]
        )
        out["rebuild_postgresql_vs_ceiling"] = (
            pg["rebuild_frames_per_s"][med]
            / ceilings["b_postgresql_read_decode_fold"]["frames_per_s"][med]
        )
        out["import_postgresql_vs_baseline_wal"] = (
            pg["import_fills_per_s"][med] / baseline["wal"]["fills_per_s"][med]
        )
    return out


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "sqlite": sqlite3.sqlite_version,
    }
    conn = sqlite3.connect(":memory:")
    info["sqlite_synchronous_default"] = conn.execute("PRAGMA synchronous").fetchone()[0]
    conn.close()
    return info


def runs_for(args: argparse.Namespace, frames: int) -> int:
    """Runs at this size: ``--runs``, or ``--large-runs`` from ``--large-from`` frames up."""
    if args.large_runs and frames >= args.large_from:
        return int(args.large_runs)
    return int(args.runs)


def run(
    args: argparse.Namespace, on_size: Callable[[dict[str, Any]], None] | None = None
) -> dict[str, Any]:
    sizes = sorted({int(s) for s in args.frames.split(",") if s.strip()})
    pg_server = None if args.no_postgres else args.pg_server
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="ledger-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    stores = Stores(workdir, pg_server)
    result: dict[str, Any] = {
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "runs": args.runs,
        "machine": machine(),
        "durability": "SQLite WAL with synchronous=FULL (each committed batch fsynced);"
        " PostgreSQL synchronous_commit=on",
        "load_average_at_start": os.getloadavg(),
        "sizes": {},
    }
    try:
        for frames in sizes:
            capture = workdir / f"capture-{frames}.jsonl"
            gen_seconds, _ = timed(lambda c=capture, n=frames: generate_capture(c, n, args.seed))
            log(
                f"{frames:,} frames: capture written in {gen_seconds:.1f}s ({capture.stat().st_size / 1e6:.0f} MB)"
            )
            size: dict[str, Any] = {
                "capture_bytes": capture.stat().st_size,
                "project": {},
            }
            runs = runs_for(args, frames)
            size["runs"] = runs
            for kind in stores.kinds():
                size["project"][kind] = bench_project(stores, kind, capture, runs)
                p = size["project"][kind]
                log(
                    f"  {kind}: import {p['import_frames_per_s']['median']:,.0f} frames/s, "
                    f"rebuild {p['rebuild_events_per_s']['median']:,.0f} events/s"
                )
            hashes = {p["state_hash"] for p in size["project"].values()}
            size["same_state_hash_on_every_store"] = len(hashes) == 1
            size["ceilings"] = bench_ceilings(workdir, capture, runs, pg_server)
            shown = ", ".join(
                f"{name} {c['frames_per_s']['median']:,.0f}/s"
                for name, c in size["ceilings"].items()
            )
            log(f"  ceilings: {shown}")
            if "baseline" not in result:
                result["baseline"] = bench_baseline(
                    workdir, capture, args.baseline_fills, args.runs
                )
                log(
                    f"  baseline: WAL {result['baseline']['wal']['fills_per_s']['median']:,.0f} fills/s, "
                    f"default journal {result['baseline']['delete']['fills_per_s']['median']:,.0f} fills/s"
                )
            size["ratios"] = ratios(size, result["baseline"])
            result["sizes"][str(frames)] = size
            capture.unlink()
            if on_size:
                on_size(result)
        if args.live:
            rates = [int(r) for r in args.live_rates.split(",")]
            live = bench_live(stores, rates, args.live_seconds, args.runs, args.seed)
            live["verdicts"] = live_verdicts(live)
            result["live"] = live
            if on_size:
                on_size(result)
        else:
            result["live"] = live_status("not measured in this run (--no-live)")
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    return finish(result)


def finish(result: dict[str, Any]) -> dict[str, Any]:
    """The figures that span sizes, from the sizes measured so far."""
    sizes = [int(s) for s in result["sizes"]]
    result["scaling"] = scaling(result, sizes) if sizes else {}
    result.setdefault("live", live_status("not measured yet (the run was cut short)"))
    result["load_average_at_end"] = os.getloadavg()
    return result


def scaling(result: dict[str, Any], sizes: list[int]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    kinds = result["sizes"][str(sizes[0])]["project"].keys()
    for kind in kinds:
        for figure in ("import", "rebuild"):
            seconds = [
                result["sizes"][str(n)]["project"][kind][f"{figure}_seconds"]["median"]
                for n in sizes
            ]
            out[f"{figure}_{kind}"] = exponent(sizes, seconds)
    return out


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- output ---------------------------------------------------------------------------


def _cell(stat: dict[str, float], digits: int = 0) -> str:
    fmt = f"{{:,.{digits}f}}"
    return f"{fmt.format(stat['median'])} ({fmt.format(stat['min'])}–{fmt.format(stat['max'])})"


def markdown(result: dict[str, Any]) -> str:
    sizes = list(result["sizes"])

    def column(s: str) -> str:
        runs = result["sizes"][s].get("runs", result["runs"])
        return f"{int(s):,} frames" + (
            "" if runs == result["runs"] else f" ({runs} run{'s' * (runs > 1)})"
        )

    head = "| figure | " + " | ".join(column(s) for s in sizes) + " |"
    rule = "|---|" + "---|" * len(sizes)
    load = [f"{x:.1f}" for x in result["load_average_at_start"]]
    lines = [
        f"Command: `{result['command']}`; each cell is the median of {result['runs']} runs (min–max)"
        " unless its column says otherwise.",
        f"Machine: {result['machine']['cpus']} CPUs, Python {result['machine']['python']}, "
        f"SQLite {result['machine']['sqlite']}; load average at the start {'/'.join(load)}.",
        "",
    ]
    if not sizes:
        return "\n".join(lines + markdown_live(result["live"])) + "\n"
    lines += [head, rule]

    def row(label: str, get: Callable[[dict[str, Any]], str]) -> None:
        cells = []
        for s in sizes:
            try:
                cells.append(get(result["sizes"][s]))
            except KeyError:
                cells.append("–")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")

    for kind, name in (("sqlite", "SQLite"), ("postgresql", "PostgreSQL")):
        if kind not in result["sizes"][sizes[0]]["project"]:
            continue
        row(
            f"import, {name}: frames/s",
            lambda z, k=kind: _cell(z["project"][k]["import_frames_per_s"]),
        )
        row(
            f"import, {name}: fills/s",
            lambda z, k=kind: _cell(z["project"][k]["import_fills_per_s"]),
        )
        row(
            f"import, {name}: seconds",
            lambda z, k=kind: _cell(z["project"][k]["import_seconds"], 2),
        )
        row(
            f"rebuild, {name}: log events/s",
            lambda z, k=kind: _cell(z["project"][k]["rebuild_events_per_s"]),
        )
        row(
            f"rebuild, {name}: frames/s",
            lambda z, k=kind: _cell(z["project"][k]["rebuild_frames_per_s"]),
        )
        row(
            f"rebuild, {name}: seconds",
            lambda z, k=kind: _cell(z["project"][k]["rebuild_seconds"], 2),
        )
        row(
            f"verify, {name}: seconds",
            lambda z, k=kind: _cell(z["project"][k]["verify_seconds"], 2),
        )
        row(
            f"peak RSS, import, {name}: MB",
            lambda z, k=kind: _cell(z["project"][k]["import_peak_rss_mb"]),
        )
        row(
            f"peak RSS, rebuild, {name}: MB",
            lambda z, k=kind: _cell(z["project"][k]["rebuild_peak_rss_mb"]),
        )
        if kind == "sqlite":
            row(
                "disk written by the import, SQLite: MB (the file's size after it)",
                lambda z: (
                    f"{_cell(z['project']['sqlite']['import_written_mb'])} "
                    f"({z['project']['sqlite']['import_file_mb']['median']:,.0f})"
                ),
            )
    ceiling_names = {
        "a_sqlite_insert": "ceiling (a) sqlite3 insert, commit/100: frames/s",
        "a_postgresql_insert": "ceiling (a) psycopg insert, commit/100: frames/s",
        "a_postgresql_copy": "ceiling (a) PostgreSQL COPY: frames/s",
        "b_sqlite_read_decode_fold": "ceiling (b) SQLite read + json.loads + fold: frames/s",
        "b_postgresql_read_decode_fold": "ceiling (b) PostgreSQL read + json.loads + fold: frames/s",
    }
    for key, label in ceiling_names.items():
        row(label, lambda z, k=key: _cell(z["ceilings"][k]["frames_per_s"]))
    base = result["baseline"]
    lines += [
        "",
        f"Baseline (the replaced design, aiosqlite, 3 commits per fill) on the capture's first "
        f"{base['fills']:,} fills: WAL {_cell(base['wal']['fills_per_s'])} fills/s; "
        f"default journal {_cell(base['delete']['fills_per_s'])} fills/s.",
        "",
        "| ratio | " + " | ".join(column(s) for s in sizes) + " | target |",
        "|---|" + "---|" * len(sizes) + "---|",
    ]
    ratio_rows = [
        ("import_sqlite_vs_ceiling", "import SQLite / ceiling (a)", "pct", "≥ 50%"),
        ("import_sqlite_vs_baseline_wal", "import SQLite / baseline WAL (fills/s)", "x", "≥ 40×"),
        (
            "import_sqlite_vs_baseline_default_journal",
            "import SQLite / baseline default journal",
            "x",
            "",
        ),
        ("import_postgresql_vs_ceiling", "import PostgreSQL / ceiling (a) inserts", "pct", "≥ 40%"),
        ("import_postgresql_vs_copy", "import PostgreSQL / COPY", "pct", ""),
        (
            "import_postgresql_vs_baseline_wal",
            "import PostgreSQL / baseline WAL (fills/s)",
            "x",
            "",
        ),
        ("rebuild_sqlite_vs_ceiling", "rebuild SQLite / ceiling (b)", "pct", "≥ 75%"),
        ("rebuild_postgresql_vs_ceiling", "rebuild PostgreSQL / ceiling (b)", "pct", "≥ 60%"),
    ]
    for key, label, unit, target in ratio_rows:
        cells = []
        for s in sizes:
            value = result["sizes"][s]["ratios"].get(key)
            if value is None:
                cells.append("–")
            else:
                cells.append(f"{value:.0%}" if unit == "pct" else f"{value:,.0f}×")
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {target} |")
    lines += ["", "Scaling (exponent of time against size; 1 is linear):", ""]
    for key, value in result["scaling"].items():
        lines.append(f"- {key.replace('_', ', ')}: {'–' if value is None else f'{value:.2f}'}")
    same = all(z["same_state_hash_on_every_store"] for z in result["sizes"].values())
    lines += [
        "",
        f"Same state hash on every store and every run: {'yes' if same else 'NO'}.",
        "",
        *markdown_live(result["live"]),
    ]
    return "\n".join(lines) + "\n"


def markdown_live(live: dict[str, Any]) -> list[str]:
    """The live section: one row per store and rate, medians (min–max) over the runs."""
    if not live.get("measured"):
        return [f"Live latency: {live['reason']}."]
    lines = [
        f"Live latency, frame sent by the local exchange → committed (durable) and projected, "
        f"{live['seconds']:g} s of sending at each rate; milliseconds, median of the runs "
        "(min–max). The floor: one durable commit of one frame into a plain table, at the "
        "sustained rate, nothing else.",
        "",
        "| store, rate | p50 ms | p99 ms | max ms | booked / sent | in flight: middle, end "
        "| p50 ms: 2nd tenth, last tenth | target p99 | met? |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    names = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}
    for kind, per_rate in live["stores"].items():
        for rate, e in per_rate.items():
            verdict = live["verdicts"][f"{kind}_{rate}"]
            met = verdict["p99_met"] and verdict["keeps_up"]
            booked = ", ".join(f"{b:,}/{n:,}" for b, n in zip(e["booked"], e["sent"], strict=True))
            backlog = ", ".join(
                f"{m}→{z}" for m, z in zip(e["backlog_middle"], e["backlog_end"], strict=True)
            )
            lines.append(
                f"| {names[kind]}, {int(rate):,}/s | {_cell(e['p50_ms'], 1)} | {_cell(e['p99_ms'], 1)}"
                f" | {_cell(e['max_ms'], 1)} | {booked} | {backlog}"
                f" | {e['p50_ms_second_tenth']['median']:.1f}, {e['p50_ms_last_tenth']['median']:.1f}"
                f" | ≤ {verdict['p99_target_ms']:g} | {'yes' if met else 'no'} |"
            )
            floor = e.get("floor")
            if floor:
                lines.append(
                    f"| floor: one durable commit, {names[kind]}, {int(rate):,}/s"
                    f" | {_cell(floor['p50_ms'], 1)} | {_cell(floor['p99_ms'], 1)}"
                    f" | {_cell(floor['max_ms'], 1)} | | | | | |"
                )
    return lines


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [int(s) for s in result["sizes"]]
    fig, ax = plt.subplots(figsize=(7.5, 5))
    series: list[tuple[str, Callable[[dict[str, Any]], float], str]] = [
        ("import, SQLite", lambda z: z["project"]["sqlite"]["import_seconds"]["median"], "o-"),
        ("rebuild, SQLite", lambda z: z["project"]["sqlite"]["rebuild_seconds"]["median"], "s-"),
        (
            "ceiling (a) sqlite3 insert",
            lambda z: z["ceilings"]["a_sqlite_insert"]["seconds"]["median"],
            "o:",
        ),
        (
            "ceiling (b) read+decode+fold",
            lambda z: z["ceilings"]["b_sqlite_read_decode_fold"]["seconds"]["median"],
            "s:",
        ),
    ]
    if "postgresql" in result["sizes"][str(sizes[0])]["project"]:
        series += [
            (
                "import, PostgreSQL",
                lambda z: z["project"]["postgresql"]["import_seconds"]["median"],
                "^-",
            ),
            (
                "rebuild, PostgreSQL",
                lambda z: z["project"]["postgresql"]["rebuild_seconds"]["median"],
                "v-",
            ),
        ]
    for label, get, style in series:
        ax.plot(sizes, [get(result["sizes"][str(n)]) for n in sizes], style, label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("frames in the capture")
    ax.set_ylabel("seconds (median)")
    ax.set_title("deltadefi-ledger: time against size")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--live-follower"]:
        return _live_follower(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", default="20000", help="sizes, comma separated")
    parser.add_argument("--runs", type=int, default=3, help="runs per figure (median, min–max)")
    parser.add_argument(
        "--large-runs",
        type=int,
        default=0,
        help="runs at sizes from --large-from up (default: --runs); the table says so",
    )
    parser.add_argument("--large-from", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--baseline-fills", type=int, default=1000, help="fills the baseline books")
    parser.add_argument("--pg-server", default=DEFAULT_PG_SERVER)
    parser.add_argument("--no-postgres", action="store_true", help="SQLite only")
    parser.add_argument("--workdir", help="keep files here (default: a temporary folder)")
    parser.add_argument("--json", dest="json_path", help="write the JSON result here ('-': stdout)")
    parser.add_argument("--markdown", help="write the markdown tables here")
    parser.add_argument("--plot", help="write the time-against-size PNG here")
    parser.add_argument(
        "--no-live", dest="live", action="store_false", help="skip the live-latency section"
    )
    parser.add_argument(
        "--live-only", action="store_true", help="only the live-latency section (no sizes)"
    )
    parser.add_argument(
        "--live-rates", default=",".join(map(str, LIVE_RATES)), help="frames/s, comma separated"
    )
    parser.add_argument(
        "--live-seconds", type=float, default=10.0, help="seconds of sending at each rate"
    )
    args = parser.parse_args(argv)
    if args.live_only:
        args.frames = ""
    if args.runs < 1:
        parser.error("--runs must be at least 1")

    def save(partial: dict[str, Any]) -> None:
        # After every size: a long run that is cut short still leaves what it measured.
        snapshot = finish(json.loads(json.dumps(partial)))
        if args.json_path and args.json_path != "-":
            Path(args.json_path).write_text(json.dumps(snapshot, indent=2) + "\n")
        if args.markdown:
            Path(args.markdown).write_text(markdown(snapshot))
        if args.plot:
            plot(snapshot, Path(args.plot))

    result = run(args, on_size=save)
    text = markdown(result)
    if args.json_path == "-":
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
    else:
        sys.stdout.write(text)
        if args.json_path:
            Path(args.json_path).write_text(json.dumps(result, indent=2) + "\n")
    if args.markdown:
        Path(args.markdown).write_text(text)
    if args.plot:
        plot(result, Path(args.plot))
    return 0


if __name__ == "__main__":
    sys.exit(main())
