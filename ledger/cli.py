"""``ledger``: the command line. Every command is one use case call plus rendering."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from eventsourcing.persistence import PersistenceError
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from adapters.deltadefi.frames import normalise_timestamp
from adapters.storage import DatabaseUnavailable, DatabaseURLError, parse_url
from ledger import collector
from ledger.application import AppendReport
from ledger.bootstrap import LedgerServices, open_ledger
from ledger.parse_ahead import ParseAhead
from ledger.settings import LedgerSettings
from projections import reports
from projections.follower import Follower
from projections.forking import can_fork
from projections.runner import Replay, Window, verify
from projections.state import LedgerState

app = typer.Typer(
    help="An exact, replayable ledger for a DeltaDeFi trading account.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
out = Console()
err = Console(stderr=True)


class Method(StrEnum):
    average = "average"
    fifo = "fifo"


class LedgerError(Exception):
    """An error the user can act on: printed as one line, exit 2."""


_state: dict[str, Any] = {}

DbOption = Annotated[
    str | None,
    typer.Option(
        "--db",
        help="Database: a file path or sqlite:///path (SQLite), or postgresql://user@host:port/db. "
        "Default: $LEDGER_DB, else ./ledger.sqlite.",
        show_default=False,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable JSON on stdout.")]
MethodOption = Annotated[Method, typer.Option("--method", help="Position accounting method.")]
AsOfOption = Annotated[
    str | None,
    typer.Option(
        "--as-of",
        help="State as of an RFC 3339 time: fills executed at or before it, "
        "balance snapshots received at or before it.",
    ),
]
AsOfSeqOption = Annotated[
    int | None, typer.Option("--as-of-seq", help="State as of a log position (inclusive).", min=0)
]


@app.callback()
def _main(db: DbOption = None) -> None:
    _state["db"] = db or LedgerSettings().db


#: An input at least this long (about 6,500 frames) is projected by a follower process.
FOLLOWER_MIN_BYTES = 8 * 1024 * 1024
#: Frames per transaction. A file into SQLite: each commit rewrites the index pages its
#: random keys touched, so fewer, larger commits cost less (a 200,000-frame import about
#: 10 % less than at 2,000). PostgreSQL gains nothing from it (no faster in our runs) and
#: its append arrays cost about 100 MB more at 10,000. A pipe may be a live feed, whose
#: frames should not wait long for their commit.
FILE_BATCH = 10_000
BATCH = 2_000


def _db_url() -> str:
    return str(_state.get("db") or LedgerSettings().db)


@contextmanager
def _services() -> Iterator[LedgerServices]:
    services = open_ledger(_db_url())
    try:
        yield services
    finally:
        services.close()


def _print_json(payload: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(payload, indent=2) + "\n")


def _progress(
    label: str, enabled: bool
) -> tuple[Progress | None, Callable[[int, int], None] | None]:
    if not enabled or not err.is_terminal:
        return None, None
    bar = Progress(
        TextColumn(label),
        BarColumn(),
        TextColumn("{task.completed:,}/{task.total:,}"),
        TimeRemainingColumn(),
        console=err,
        transient=True,
    )
    task = bar.add_task(label, total=None)

    def update(done: int, total: int) -> None:
        bar.update(task, completed=done, total=total)

    return bar, update


# --- ingest ---------------------------------------------------------------------------


def _numbered_lines(path: str) -> tuple[str, Iterator[tuple[int, bytes]]]:
    if path == "-":
        stream = sys.stdin.buffer
        return "stdin", _lines(stream)
    file = Path(path)
    if not file.is_file():
        raise LedgerError(f"cannot read {path}: no such file")
    try:
        handle = file.open("rb")
    except OSError as exc:
        raise LedgerError(f"cannot read {path}: {exc.strerror}") from exc
    # A path that is not UTF-8 (surrogate-escaped by Python) is kept as readable escapes:
    # the source is stored as text and hashed into every frame id.
    name = os.fsencode(file.resolve()).decode("utf-8", "backslashreplace")
    return f"file:{name}", _lines(handle)


def _lines(handle: Any) -> Iterator[tuple[int, bytes]]:
    with handle:
        for number, line in enumerate(handle, start=1):
            yield number, line.rstrip(b"\r\n")


@app.command()
def ingest(
    path: Annotated[
        str, typer.Argument(help="A capture: one raw frame per line; '-' reads stdin.")
    ],
    as_json: JsonOption = False,
    batch_size: Annotated[
        int | None,
        typer.Option(
            help=f"Frames per transaction (default {FILE_BATCH:,} for a file into SQLite, "
            f"{BATCH:,} for stdin or PostgreSQL).",
            min=1,
            show_default=False,
        ),
    ] = None,
) -> None:
    """Append a capture to the log (idempotent per line), then bring the projections up to date."""
    if batch_size is None:
        into_sqlite = parse_url(_db_url()).kind == "sqlite"
        batch_size = FILE_BATCH if path != "-" and into_sqlite else BATCH
    source, lines = _numbered_lines(path)
    started = time.perf_counter()
    # A second process, forked before this one opens the database, puts a second CPU to
    # work. For a file it parses the frames for this one and projects the log behind it
    # (see ledger.parse_ahead); for stdin, which may be a live feed, it only projects (see
    # projections.follower), parsing every frame a second time. Neither pays for a short
    # input.
    helper = (
        (os.cpu_count() or 1) > 1
        and can_fork()
        and (path == "-" or Path(path).stat().st_size >= FOLLOWER_MIN_BYTES)
    )
    with contextlib.ExitStack() as stack:
        ahead = stack.enter_context(ParseAhead(_db_url())) if helper and path != "-" else None
        follower = stack.enter_context(Follower(_db_url(), start=helper and ahead is None))
        services = stack.enter_context(_services())
        bar, update = _progress("ingest", not as_json)
        seen = {"frames": 0}

        def on_batch(report: AppendReport) -> None:
            seen["frames"] += report.frames
            if ahead is not None:
                ahead.committed(report)  # the child folds the batch without reading it back
            if not follower.running and (ahead is None or ahead.failure is not None):
                # Projected right after it is appended, while its parses are fresh (see
                # adapters.deltadefi.fast_path), so the views follow the import.
                services.projector.catch_up()
            if update:
                update(seen["frames"], seen["frames"])

        if bar:
            bar.start()
        try:
            reader = services.ledger.reader
            batches = services.ledger.line_batches(lines, source, batch_size)
            planned = (
                ahead.plan(batches, reader)
                if ahead is not None
                else (reader.plan(batch) for batch in batches)
            )
            report = services.ledger.ingest_read(planned, on_batch=on_batch)
            helper_failure = ahead.finish() if ahead is not None else follower.finish()
            if helper_failure is not None and not as_json:
                err.print(
                    f"[yellow]note:[/] the helper process stopped ({helper_failure}); "
                    "parsing and projecting here"
                )
            # A no-op when the helper got to the head; the whole catch-up when it did not.
            services.projector.catch_up()
        finally:
            if bar:
                bar.stop()
    elapsed = time.perf_counter() - started
    if as_json:
        _print_json(report.as_json())
        return
    out.print(
        f"{report.frames:,} frames: {report.appended:,} appended, {report.already_ingested:,} already "
        f"ingested, {report.rejected:,} rejected; fills {report.fills_new:,} new, "
        f"{report.fills_duplicate:,} duplicate; log position {report.log_position:,} ({elapsed:.2f}s)"
    )
    if report.conflicts:
        shown = ", ".join(report.conflicts[:5])
        err.print(
            f"[yellow]warning:[/] {len(report.conflicts)} fill id(s) seen with different content: {shown}"
        )


# --- queries --------------------------------------------------------------------------


@contextmanager
def _state_at(as_of: str | None, as_of_seq: int | None) -> Iterator[tuple[LedgerState, int]]:
    """The projected state now, or replayed as of a time or log position."""
    with _services() as services:
        if as_of is None and as_of_seq is None:
            services.projector.catch_up()
            yield services.projector.load(), services.projector.position
            return
        until = None
        if as_of is not None:
            try:
                until = normalise_timestamp(as_of)
            except ValueError as exc:
                raise LedgerError(f"--as-of: {exc}") from exc
        stop = as_of_seq if as_of_seq is not None else None
        window = Window(stop=stop, fills_until=until, received_until=until)
        with Replay(services.db, window=window) as replay:
            state = replay.run()
            yield state, replay.projector.position


def _table(title: str, columns: list[str], rows: list[list[str]]) -> Table:
    table = Table(title=title, title_justify="left")
    for col in columns:
        table.add_column(
            col, justify="left" if col in ("symbol", "asset", "source", "reason") else "right"
        )
    for row in rows:
        table.add_row(*row)
    return table


def _fees(fees: dict[str, str]) -> str:
    return ", ".join(f"{v} {k}" for k, v in fees.items()) or "-"


@app.command()
def positions(
    method: MethodOption = Method.average,
    as_of: AsOfOption = None,
    as_of_seq: AsOfSeqOption = None,
    as_json: JsonOption = False,
) -> None:
    """Positions per symbol: quantity, average entry, realized P&L, fees."""
    with _state_at(as_of, as_of_seq) as (state, position):
        report = reports.positions_report(state, method.value, position)
    if as_json:
        _print_json(report)
        return
    rows = [
        [
            p["symbol"],
            p["quantity"],
            p["avg_entry_price"],
            p["realized_pnl_gross"],
            p["realized_pnl_net"],
            _fees(p["fees"]),
            str(p["fill_count"]),
        ]
        for p in report["positions"]
    ]
    out.print(
        _table(
            f"Positions ({method.value}) at log position {position:,}",
            ["symbol", "quantity", "avg entry", "realized gross", "realized net", "fees", "fills"],
            rows,
        )
    )
    out.print(f"state hash {report['state_hash']}")


@app.command()
def balances(
    as_of: AsOfOption = None, as_of_seq: AsOfSeqOption = None, as_json: JsonOption = False
) -> None:
    """Balances per asset: the last snapshot, the total the fills since imply, and the drift."""
    with _state_at(as_of, as_of_seq) as (state, position):
        report = reports.balances_report(state, position)
    if as_json:
        _print_json(report)
        return
    rows = [
        [
            b["asset"],
            b["free"],
            b["locked"],
            b["total"],
            b["expected_total"],
            b["drift_last"],
            b["drift_sum"],
        ]
        for b in report["balances"]
    ]
    out.print(
        _table(
            f"Balances at log position {position:,}",
            ["asset", "free", "locked", "total", "expected total", "last drift", "drift sum"],
            rows,
        )
    )


@app.command()
def pnl(
    method: MethodOption = Method.average,
    as_of: AsOfOption = None,
    as_of_seq: AsOfSeqOption = None,
    as_json: JsonOption = False,
) -> None:
    """Realized P&L per symbol and in total: gross, fees, net in the quote asset."""
    with _state_at(as_of, as_of_seq) as (state, position):
        report = reports.pnl_report(state, method.value, position)
    if as_json:
        _print_json(report)
        return
    rows = [
        [
            s["symbol"],
            s["realized_pnl_gross"],
            _fees(s["fees"]),
            s["realized_pnl_net"],
            s["quote_asset"],
        ]
        for s in report["symbols"]
    ]
    totals = report["totals"]
    for quote in totals["realized_pnl_gross"]:
        rows.append(
            [
                "TOTAL",
                totals["realized_pnl_gross"][quote],
                _fees(totals["fees"]),
                totals["realized_pnl_net"][quote],
                quote,
            ]
        )
    out.print(
        _table(
            f"Realized P&L ({method.value}) at log position {position:,}",
            ["symbol", "gross", "fees", "net", "in"],
            rows,
        )
    )


@app.command()
def fills(
    symbol: Annotated[str | None, typer.Option(help="Only this symbol, e.g. ADAUSDM.")] = None,
    limit: Annotated[
        int | None, typer.Option(help="At most this many, oldest first.", min=1)
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Every booked fill, in execution order."""
    with _services() as services:
        services.projector.catch_up()
        report = reports.fills_report(
            services.db, services.projector.position, symbol=symbol, limit=limit
        )
    if as_json:
        _print_json(report)
        return
    rows = [
        [
            f["executed_at"],
            f["fill_id"],
            f["symbol"],
            f["side"],
            f["price"],
            f["quantity"],
            f["quote_amount"],
            f"{f['fee']} {f['fee_asset']}",
            f["role"],
            str(f["log_position"]),
        ]
        for f in report["fills"]
    ]
    out.print(
        _table(
            f"{len(rows):,} fills",
            [
                "executed at",
                "fill id",
                "symbol",
                "side",
                "price",
                "quantity",
                "quote",
                "fee",
                "role",
                "log pos",
            ],
            rows,
        )
    )


@app.command()
def rejects(
    limit: Annotated[int | None, typer.Option(help="At most this many.", min=1)] = None,
    as_json: JsonOption = False,
) -> None:
    """Frames kept but not applied, each with its reason and its raw text."""
    with _services() as services:
        services.projector.catch_up()
        report = reports.rejects_report(services.db, limit=limit)
    if as_json:
        _print_json(report)
        return
    rows = [
        [str(r["log_position"]), r["source"], r["reason"], r["raw"][:80]]
        for r in report["rejected"]
    ]
    out.print(
        _table(f"{len(rows):,} rejected frames", ["log pos", "source", "reason", "raw"], rows)
    )


# --- rebuild and verify -----------------------------------------------------------------


@app.command()
def rebuild(as_json: JsonOption = False) -> None:
    """Drop every projection, replay the whole log with today's code, print the state hash."""
    started = time.perf_counter()
    with _services() as services:
        bar, update = _progress("rebuild", not as_json)
        if bar:
            bar.start()
        try:
            state = services.projector.rebuild(update)
        finally:
            if bar:
                bar.stop()
        position = services.projector.position
    elapsed = time.perf_counter() - started
    payload = {
        "log_position": position,
        "state_hash": state.state_hash(),
        "fills": state.fills.count,
        "rejected": state.rejects.count,
        "seconds": round(elapsed, 3),
    }
    if as_json:
        _print_json(payload)
        return
    out.print(
        f"rebuilt {position:,} log events in {elapsed:.2f}s: {state.fills.count:,} fills, "
        f"{state.rejects.count:,} rejected frames\nstate hash {payload['state_hash']}"
    )


@app.command(name="verify")
def verify_cmd(as_json: JsonOption = False) -> None:
    """Replay the log from zero and compare with the stored projections; exit 1 on any difference."""
    with _services() as services:
        result = verify(services.db)
    payload = {
        "ok": result.ok,
        "log_position": result.log_position,
        "stored_hash": result.stored_hash,
        "replayed_hash": result.replayed_hash,
        "differences": result.differences,
    }
    if as_json:
        _print_json(payload)
    elif result.ok:
        out.print(
            f"ok: projections at log position {result.log_position:,} match a fresh replay "
            f"(state hash {result.stored_hash})"
        )
    else:
        err.print(
            f"MISMATCH at log position {result.log_position:,}: {', '.join(result.differences)}",
            soft_wrap=True,
        )
    if not result.ok:
        raise typer.Exit(1)


# --- live: run, status, demo ------------------------------------------------------------------


@app.command()
def run(
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key",
            help="DeltaDeFi API key. Default: $DELTADEFI_API_KEY (or .env); prefer the "
            "environment, a flag is visible to other users in the process list.",
            show_default=False,
        ),
    ] = None,
    ws_url: Annotated[
        str | None,
        typer.Option(
            help="Websocket base URL. Default: $DELTADEFI_WS_URL, else wss://stream.deltadefi.io.",
            show_default=False,
        ),
    ] = None,
    rest_url: Annotated[
        str | None,
        typer.Option(
            help="REST base URL. Default: $DELTADEFI_REST_URL, else https://api.deltadefi.io.",
            show_default=False,
        ),
    ] = None,
    capture: Annotated[
        Path | None,
        typer.Option(help="Append every received frame to this file, one JSONL line each."),
    ] = None,
    duration: Annotated[
        float | None, typer.Option(help="Stop after this many seconds.", min=0.0)
    ] = None,
    heal_interval: Annotated[
        float | None,
        typer.Option(
            help="Seconds between REST backfills (besides one after every connect). Default 60.",
            min=0.05,
            show_default=False,
        ),
    ] = None,
    retry_initial: Annotated[
        float | None,
        typer.Option(
            help="Initial reconnect delay, seconds ($DELTADEFI_WEBSOCKET_RETRY_DELAY, default 1).",
            min=0.001,
            show_default=False,
        ),
    ] = None,
    retry_cap: Annotated[
        float | None,
        typer.Option(
            help="Longest reconnect delay, seconds (default 60).", min=0.001, show_default=False
        ),
    ] = None,
    retry_max: Annotated[
        int | None,
        typer.Option(
            help="Consecutive failed connection attempts before giving up "
            "($DELTADEFI_WEBSOCKET_RETRY_MAX; default 0: retry forever).",
            min=0,
            show_default=False,
        ),
    ] = None,
    ping_interval: Annotated[
        float | None,
        typer.Option(
            help="Keepalive ping interval, seconds (default 20).", min=0.01, show_default=False
        ),
    ] = None,
    ping_timeout: Annotated[
        float | None,
        typer.Option(
            help="A connection whose pong is this late is stuck and replaced (default 20).",
            min=0.01,
            show_default=False,
        ),
    ] = None,
    idle_timeout: Annotated[
        float | None,
        typer.Option(
            help="Also replace a connection silent for this long (default: off).", min=0.01
        ),
    ] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
    log_format: Annotated[str, typer.Option(help="console or json.")] = "console",
    as_json: JsonOption = False,
) -> None:
    """Follow the account live: every frame into the log, every gap healed from REST.

    Stops cleanly on SIGINT/SIGTERM (or after --duration) with every received frame committed.
    """
    from ledger.live_bootstrap import LiveConfig, follow_account
    from ledger.live_ports import LiveError
    from ledger.logging import configure_logging
    from ledger.settings import DeltaDeFiSettings

    if log_format not in ("console", "json"):
        raise LedgerError("--log-format must be console or json")
    try:
        configure_logging(log_level, log_format)
    except ValueError as exc:
        raise LedgerError(f"--log-level: {exc}") from exc
    config = LiveConfig.from_settings(
        DeltaDeFiSettings(),
        api_key=api_key,
        ws_url=ws_url,
        rest_url=rest_url,
        capture=capture,
        heal_interval=heal_interval,
        retry_initial=retry_initial,
        retry_cap=retry_cap,
        retry_max=retry_max,
        ping_interval=ping_interval,
        ping_timeout=ping_timeout,
        idle_timeout=idle_timeout,
    )
    import asyncio

    with _services() as services:
        try:
            stats = asyncio.run(follow_account(services, config, duration=duration))
        except LiveError as exc:
            raise LedgerError(str(exc)) from None
    if as_json:
        _print_json(stats.as_json())
        return
    out.print(
        f"stopped: {stats.frames_ws:,} frames received, {stats.frames_rest:,} records from REST; "
        f"fills {stats.fills_new:,} booked, {stats.fills_duplicate:,} duplicates ignored; "
        f"{stats.connects:,} connections, {stats.heals:,} backfills ({stats.gaps_healed:,} healed a gap, "
        f"{stats.fills_healed:,} fills recovered)"
    )


@app.command()
def status(as_json: JsonOption = False) -> None:
    """The live path's health: connected?, last frame age, reconnects, gaps healed, fills, drift."""
    from ledger.live_status import read_status

    with _services() as services:
        services.projector.catch_up()
        state = services.projector.load()
        drift = {
            asset: {"last": reports.plain(b.drift_last), "net": reports.plain(b.drift_sum)}
            for asset, b in sorted(state.balances.assets.items())
        }
        report = read_status(services.db, fills_booked=state.fills.count, drift=drift)
    if as_json:
        _print_json(report.as_json())
        return
    age = "-" if report.last_frame_age_s is None else f"{report.last_frame_age_s:,.1f}s ago"
    codes = ", ".join(f"{code}×{n}" for code, n in sorted(report.close_codes.items())) or "none"
    drift_text = (
        ", ".join(f"{a} {d['last']} (net {d['net']})" for a, d in report.drift.items()) or "-"
    )
    out.print(f"connection      {'yes' if report.connected else 'no'}: {report.connection}")
    out.print(
        f"last frame      {age} ({report.last_frame_at or 'never'}, {report.last_frame_source or '-'})"
    )
    out.print(
        f"connections     {report.connects:,} ({report.reconnects:,} reconnects, {report.runs:,} runs)"
    )
    out.print(f"disconnects     {report.disconnects:,} (close codes: {codes})")
    out.print(
        f"backfills       {report.backfills:,}; gaps healed {report.gaps_healed:,} "
        f"({report.fills_healed:,} fills recovered), last {report.last_backfill_at or 'never'}"
    )
    out.print(f"fills booked    {report.fills_booked:,}")
    out.print(f"drift (last)    {drift_text}")
    out.print(f"log position    {report.log_position:,}")


@app.command()
def demo(
    frames: Annotated[int, typer.Option(help="Frames in the generated session.", min=100)] = 3000,
    seed: Annotated[int, typer.Option(help="Seed of the generated session.")] = 7,
    rate: Annotated[
        float, typer.Option(help="Frames per second the exchange sends.", min=10)
    ] = 600.0,
    as_json: JsonOption = False,
) -> None:
    """Zero set-up: a local DeltaDeFi exchange with faults on (dropped and stalled connections,
    lost and repeated frames, 429 storms), followed live into a fresh SQLite ledger; then
    balances, positions, P&L and the facts. Exits 1 unless the booked fills are exactly the
    exchange's fills and the balances its balances."""
    import asyncio

    from ledger.live_demo import run_demo
    from ledger.logging import configure_logging

    configure_logging("error")
    workdir = Path(tempfile.mkdtemp(prefix="ledger-demo-"))
    if not as_json:
        out.print(
            f"[bold]demo[/]: a local exchange on 127.0.0.1 streams a {frames:,}-frame session with "
            f"faults on; following it live into {workdir / 'ledger.sqlite'} ..."
        )
    result = asyncio.run(run_demo(workdir, frames=frames, seed=seed, rate=rate))
    _state["db"] = str(result.db_path)
    facts = result.facts()
    if as_json:
        _print_json(
            {
                **facts,
                "db": str(result.db_path),
                "drift": {
                    a: {k: reports.plain(v) for k, v in d.items()} for a, d in result.drift.items()
                },
                "missing": result.missing[:20],
                "unexpected": result.unexpected[:20],
                "balance_mismatches": result.balance_mismatches,
            }
        )
    else:
        balances()
        positions()
        pnl()
        _print_demo_facts(result)
    if not result.ok:
        raise typer.Exit(1)


def _print_demo_facts(result: Any) -> None:
    f = result.facts()
    drift = ", ".join(f"{a} {reports.plain(d['last'])}" for a, d in result.drift.items())
    out.print(
        f"[bold]frames[/]: {f['frames_generated']:,} generated by the exchange, {f['frames_sent']:,} sent "
        f"({f['frames_repeated']:,} repeats), {f['frames_lost_in_transit']:,} lost in transit; "
        f"{f['frames_received_ws']:,} received, {f['records_from_rest']:,} records from REST, "
        f"{f['rejected_frames']:,} malformed kept as rejected"
    )
    out.print(
        f"[bold]faults survived[/]: {f['disconnects']:,} disconnects (close codes "
        f"{', '.join(f'{c}×{n}' for c, n in sorted(f['close_codes'].items()))}), "
        f"{f['rest_429']:,} HTTP 429s, {f['rest_5xx']:,} HTTP 5xx"
    )
    out.print(
        f"[bold]fills[/]: {f['fills_booked']:,} booked, {f['duplicates_ignored']:,} duplicates ignored; "
        f"gaps healed {f['gaps_healed']:,} of {f['backfills']:,} backfills "
        f"({f['fills_healed_from_rest']:,} fills recovered from REST)"
    )
    net_zero = all(d["net"] == 0 for d in result.drift.values())
    if net_zero:
        out.print(
            "[bold]drift[/], net over the session: 0 for every asset (the balance changes between "
            "the exchange's snapshots are exactly the booked fills')"
        )
    else:
        net = ", ".join(f"{a} {reports.plain(d['net'])}" for a, d in result.drift.items())
        out.print(f"[bold]drift[/], net over the session: {net}")
    out.print(
        f"  at the last snapshot: {drift} (a snapshot that already counted fills the ledger "
        "healed from REST only later shows them twice, once each way)"
    )
    same = "exactly the same set" if f["same_fills"] else "[red]MISMATCH[/]"
    out.print(
        f"fills booked {f['fills_booked']:,}; the exchange executed {f['fills_executed_by_exchange']:,}: "
        f"{same}; balances {'match' if f['balances_match'] else '[red]DO NOT MATCH[/]'} the exchange's; "
        f"{f['seconds']:.1f}s"
    )
    for line in result.missing[:5] + result.unexpected[:5] + result.balance_mismatches[:5]:
        err.print(f"  {line}", markup=False)


# --- entry point --------------------------------------------------------------------------


def _fail(message: str, code: int = 2) -> NoReturn:
    from ledger.logging import redact

    # soft_wrap: one line however narrow the terminal (rich would wrap at 80 columns).
    err.print(f"error: {redact(message)}", highlight=False, markup=False, soft_wrap=True)
    raise SystemExit(code)


def _usage_error(exc: Exception) -> tuple[str, int] | None:
    """A bad flag or value (click's ``UsageError``, vendored or not) as one line and its exit code."""
    format_message = getattr(exc, "format_message", None)
    code = getattr(exc, "exit_code", None)
    if not callable(format_message) or not isinstance(code, int):
        return None
    return " ".join(str(format_message()).split()), code


def main() -> None:
    from ledger.logging import install_excepthook

    install_excepthook()  # a traceback (LEDGER_DEBUG=1) is printed with secrets masked
    collector.for_throughput()
    try:
        # Not standalone: click would print a usage error as a multi-line panel; we print one line.
        code = app(standalone_mode=False)
    except typer.Abort:
        _fail("aborted")
    except (LedgerError, DatabaseURLError, DatabaseUnavailable) as exc:
        _fail(str(exc))
    except PersistenceError as exc:
        _fail(f"database error: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
    except KeyboardInterrupt:
        _fail("interrupted")
    except OSError as exc:
        _fail(f"{exc.strerror or exc}")
    except Exception as exc:  # a bug: still one line for the user, the trace on request
        usage = _usage_error(exc)
        if usage is not None:
            message, usage_code = usage
            if not message:  # `ledger` alone: the help was printed already
                raise SystemExit(usage_code) from None
            _fail(message, usage_code)
        if os.environ.get("LEDGER_DEBUG"):
            raise
        _fail(
            f"unexpected {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} "
            "(set LEDGER_DEBUG=1 for the traceback)"
        )
    raise SystemExit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
