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
- scaling: the exponent of time against size (a least-squares fit on log–log).

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
    json.dump({"seconds": seconds, "max_rss_kib": usage.ru_maxrss}, out)
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
    return Measured(measured["seconds"], measured["max_rss_kib"] / 1024, json.loads(stdout))


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
    hashes: set[str] = set()
    out: dict[str, Any] = {}
    for _ in range(runs):
        url = stores.fresh(kind)
        try:
            ingest = run_ledger(url, "ingest", str(capture))
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
    with psycopg.connect(url) as conn, conn.cursor(name="scan") as cur:
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


def live_status() -> dict[str, Any]:
    """Live latency needs the websocket follower and the local exchange (issue 5, item 3)."""
    needed = [REPO / "adapters/deltadefi/stream.py", REPO / "scripts/fake_exchange.py"]
    missing = [str(p.relative_to(REPO)) for p in needed if not p.exists()]
    if missing:
        return {"measured": False, "reason": f"not measured yet: {', '.join(missing)} missing"}
    return {
        "measured": False,
        "reason": "not measured yet: the local exchange and the websocket follower exist, but "
        "this benchmark has no probe yet that times each sent frame to the commit of its "
        "projection",
    }


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
    sizes = sorted({int(s) for s in args.frames.split(",")})
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
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    return finish(result)


def finish(result: dict[str, Any]) -> dict[str, Any]:
    """The figures that span sizes, from the sizes measured so far."""
    sizes = [int(s) for s in result["sizes"]]
    result["scaling"] = scaling(result, sizes) if sizes else {}
    result["live"] = live_status()
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
        head,
        rule,
    ]

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
        f"Live latency: {result['live']['reason']}.",
    ]
    return "\n".join(lines) + "\n"


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
    args = parser.parse_args(argv)
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
