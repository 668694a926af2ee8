"""The ``ledger`` command as a user runs it: a real process, real databases.

Covers ``ingest`` (JSON report, idempotency, stdin, blank lines), the JSON shapes of the
read commands (issue 2, requirement 8), ``--method fifo``, ``--as-of``/``--as-of-seq``,
``rebuild``, ``verify`` against tampered projections, and the one-line errors.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    execute,
    frame_lines,
    ledger_json,
    make_capture,
    ok,
    query,
    run_ledger,
    signed_quantities,
)

PLAIN_DECIMAL = re.compile(r"^-?\d+(\.\d+)?$")

INGEST_KEYS = {
    "frames",
    "appended",
    "already_ingested",
    "fills_new",
    "fills_duplicate",
    "rejected",
    "log_position",
}
#: Fields the CLI prints beyond issue 2's shapes (additions, never replacements).
INGEST_EXTRA = {"conflicts"}
POSITION_KEYS = {
    "symbol",
    "base_asset",
    "quote_asset",
    "quantity",
    "avg_entry_price",
    "realized_pnl_gross",
    "realized_pnl_net",
    "fees",
    "fill_count",
    "buy_quantity",
    "sell_quantity",
}
BALANCE_KEYS = {
    "asset",
    "free",
    "locked",
    "total",
    "expected_total",
    "drift_last",
    "drift_sum",
}
PNL_SYMBOL_KEYS = {"symbol", "realized_pnl_gross", "realized_pnl_net", "fees"}
PNL_SYMBOL_EXTRA = {"quote_asset"}
PNL_TOTAL_KEYS = {"realized_pnl_gross", "realized_pnl_net", "fees"}
REJECT_KEYS = {"log_position", "source", "reason", "raw"}
FILL_KEYS = {
    "fill_id",
    "order_id",
    "symbol",
    "side",
    "price",
    "quantity",
    "quote_amount",
    "fee",
    "fee_asset",
    "role",
    "executed_at",
    "log_position",
}

#: Lines that must be kept as rejected frames, each for its own reason.
BAD_LINES = [
    b'{"type":"Account","sub_type":"order_info","order":{"id":',  # not JSON
    b"[1, 2, 3]",  # JSON, not an object
    b'\xff\xfe{"type":"fill"}',  # not UTF-8
    b'{"type":"fill","fillId":"bad-side","symbol":"NIGHTUSDM","side":"hold","price":"1",'
    b'"quantity":"1","timestamp":"2026-03-20T10:00:09Z"}',  # side not buy/sell
]
UNKNOWN_TYPE = b'{"type":"heartbeat","n":1}'  # well-formed, unknown: kept, not rejected


def _keys(obj: dict[str, Any], required: set[str], extra: set[str] | None = None) -> None:
    """``obj`` has exactly the ``required`` keys, plus at most the named ``extra`` ones."""
    assert required <= obj.keys(), f"missing {required - obj.keys()}"
    unexpected = obj.keys() - required - (extra or set())
    assert not unexpected, f"unexpected {unexpected}"


def _is_amount(text: Any) -> bool:
    return isinstance(text, str) and bool(PLAIN_DECIMAL.match(text))


def _amounts(obj: dict[str, Any], names: set[str]) -> None:
    for name in names:
        assert _is_amount(obj[name]), f"{name}={obj[name]!r} is not a plain decimal string"


def _fees(fees: Any) -> None:
    assert isinstance(fees, dict)
    for asset, amount in fees.items():
        assert asset.isupper() and _is_amount(amount), (asset, amount)


def _with_bad_lines(path: Path) -> None:
    with path.open("ab") as out:
        for line in [*BAD_LINES, UNKNOWN_TYPE]:
            out.write(line + b"\n")


# --- ingest ----------------------------------------------------------------------------


def test_ingest_json_report_and_idempotency(db_url: str, tmp_path: Path) -> None:
    capture = tmp_path / "session.jsonl"
    truth = make_capture(capture, 300, seed=61)
    _with_bad_lines(capture)
    frames = len(frame_lines(capture))

    first = ledger_json(db_url, "ingest", str(capture))
    _keys(first, INGEST_KEYS, INGEST_EXTRA)
    assert all(type(v) is int for v in first.values())
    assert first["frames"] == frames
    assert first["appended"] == frames
    assert first["already_ingested"] == 0
    assert first["fills_new"] == len(truth.fills)
    assert first["fills_duplicate"] > 0  # order_info re-sends every execution so far
    assert first["rejected"] == len(BAD_LINES)
    assert first["log_position"] > frames  # frames and one claim per fill

    again = ledger_json(db_url, "ingest", str(capture))
    assert again["frames"] == frames
    assert again["already_ingested"] == frames
    assert again["appended"] == 0
    assert again["fills_new"] == 0
    assert again["rejected"] == 0
    assert again["log_position"] == first["log_position"]


def test_ingest_dash_reads_stdin_and_blank_lines_are_not_frames(tmp_path: Path) -> None:
    capture = tmp_path / "session.jsonl"
    truth = make_capture(capture, 300, seed=62)
    lines = frame_lines(capture)
    padded = b"\n" + b"\n   \n".join(lines[:100]) + b"\n\t\n\r\n" + b"\n\n".join(lines[100:])

    from_file = str(tmp_path / "file.sqlite")
    from_stdin = str(tmp_path / "stdin.sqlite")
    ok(run_ledger(from_file, "ingest", str(capture)))
    report = ledger_json(from_stdin, "ingest", "-", stdin=padded)
    assert report["frames"] == len(lines) == 300
    assert report["appended"] == 300
    assert report["fills_new"] == len(truth.fills)
    # Same frames in the same order: the same state, whatever the blank lines around them.
    assert ledger_json(from_stdin, "positions") == ledger_json(from_file, "positions")

    again = ledger_json(from_stdin, "ingest", "-", stdin=padded)
    assert again["already_ingested"] == 300
    assert again["appended"] == 0


# --- the read commands' JSON -----------------------------------------------------------


@pytest.fixture(scope="module")
def session_db(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path, Any]:
    """A SQLite ledger holding a generated session plus the bad lines."""
    folder = tmp_path_factory.mktemp("session")
    capture = folder / "session.jsonl"
    truth = make_capture(capture, 1500, seed=63)
    _with_bad_lines(capture)
    db = str(folder / "ledger.sqlite")
    ok(run_ledger(db, "ingest", str(capture)))
    return db, capture, truth


def test_positions_json_shape(session_db: tuple[str, Path, Any]) -> None:
    db, _, truth = session_db
    for method in ("average", "fifo"):
        report = ledger_json(db, "positions", "--method", method)
        _keys(report, {"method", "log_position", "state_hash", "positions"})
        assert report["method"] == method
        assert type(report["log_position"]) is int and report["log_position"] > 0
        assert re.fullmatch(r"[0-9a-f]{64}", report["state_hash"])
        expected = {s: str(q) for s, q in signed_quantities(truth).items()}
        assert {p["symbol"]: p["quantity"] for p in report["positions"]} == expected
        for pos in report["positions"]:
            _keys(pos, POSITION_KEYS)
            _amounts(
                pos, POSITION_KEYS - {"symbol", "base_asset", "quote_asset", "fees", "fill_count"}
            )
            _fees(pos["fees"])
            assert type(pos["fill_count"]) is int
            assert pos["symbol"] == pos["base_asset"] + pos["quote_asset"]
            bought, sold = Decimal(pos["buy_quantity"]), Decimal(pos["sell_quantity"])
            assert bought - sold == Decimal(pos["quantity"])
    assert sum(p["fill_count"] for p in report["positions"]) == len(truth.fills)


def test_balances_json_shape(session_db: tuple[str, Path, Any]) -> None:
    db, _, truth = session_db
    report = ledger_json(db, "balances")
    _keys(report, {"log_position", "balances"})
    assert {b["asset"] for b in report["balances"]} == set(truth.balances)
    for bal in report["balances"]:
        _keys(bal, BALANCE_KEYS)
        _amounts(bal, BALANCE_KEYS - {"asset"})
        assert Decimal(bal["total"]) == Decimal(bal["free"]) + Decimal(bal["locked"])
        # The capture ends with a snapshot consistent with every fill: no drift.
        assert Decimal(bal["total"]) == truth.balances[bal["asset"]]
        assert Decimal(bal["expected_total"]) == truth.balances[bal["asset"]]
        assert Decimal(bal["drift_sum"]) == 0


def test_pnl_json_shape(session_db: tuple[str, Path, Any]) -> None:
    db, _, _ = session_db
    report = ledger_json(db, "pnl")
    _keys(report, {"log_position", "symbols", "totals"}, {"method"})
    gross: dict[str, Decimal] = {}
    for sym in report["symbols"]:
        _keys(sym, PNL_SYMBOL_KEYS, PNL_SYMBOL_EXTRA)
        _amounts(sym, {"realized_pnl_gross", "realized_pnl_net"})
        _fees(sym["fees"])
        quote = sym.get("quote_asset", "USDM")
        gross[quote] = gross.get(quote, Decimal(0)) + Decimal(sym["realized_pnl_gross"])
    totals = report["totals"]
    _keys(totals, PNL_TOTAL_KEYS)
    for name in PNL_TOTAL_KEYS:
        _fees(totals[name])
    assert {q: Decimal(v) for q, v in totals["realized_pnl_gross"].items()} == gross


def test_rejects_json_keeps_every_bad_frame_with_its_raw_text(
    session_db: tuple[str, Path, Any],
) -> None:
    db, capture, _ = session_db
    report = ledger_json(db, "rejects")
    _keys(report, {"rejected"})
    rejected = report["rejected"]
    assert len(rejected) == len(BAD_LINES)
    for row, line in zip(rejected, BAD_LINES, strict=True):
        _keys(row, REJECT_KEYS)
        assert type(row["log_position"]) is int
        assert row["source"] == f"file:{capture.resolve()}"
        assert row["reason"] and "\n" not in row["reason"]
        assert row["raw"] == line.decode("utf-8", errors="backslashreplace")
    assert [r["log_position"] for r in rejected] == sorted(r["log_position"] for r in rejected)


def test_fills_json_lists_every_fill_once(session_db: tuple[str, Path, Any]) -> None:
    db, _, truth = session_db
    fills = ledger_json(db, "fills")["fills"]
    assert sorted(f["fill_id"] for f in fills) == sorted(truth.fills)
    for fill in fills:
        _keys(fill, FILL_KEYS)
        _amounts(fill, {"price", "quantity", "quote_amount", "fee"})
        exchange = truth.fills[fill["fill_id"]]
        assert (fill["symbol"], fill["side"]) == (exchange["symbol"], exchange["side"])
        assert Decimal(fill["quantity"]) == Decimal(exchange["filled_base_qty"])
        assert Decimal(fill["price"]) == Decimal(exchange["execution_price"])


# --- average cost and FIFO, exactly, and the state at a point -------------------------


def _bot_fill(
    fill_id: str, side: str, price: str, qty: str, fee: str, asset: str, second: int
) -> bytes:
    return json.dumps(
        {
            "type": "fill",
            "fillId": fill_id,
            "orderId": f"o-{fill_id}",
            "symbol": "NIGHTUSDM",
            "side": side,
            "price": price,
            "quantity": qty,
            "timestamp": f"2026-03-20T10:00:{second:02d}Z",
            "commission": fee,
            "commissionAsset": asset,
            "isMaker": True,
        }
    ).encode()


#: Buys of 10 @ 1 and 10 @ 2, a sell of 15 @ 3, a sell of 5 @ 2 (flat), a buy of 10 @ 5,
#: then a sell of 15 @ 6 that flips the position to -5 opened at 6. Numbers are written
#: with exponents on purpose: the output must still be plain notation.
TRADES = [
    _bot_fill("t1", "buy", "1.0", "1E+1", "1E-2", "NIGHT", 1),
    _bot_fill("t2", "buy", "2", "10", "0.01", "NIGHT", 2),
    _bot_fill("t3", "sell", "3", "15", "0.045", "USDM", 3),
    _bot_fill("t4", "sell", "2", "5", "0.01", "USDM", 4),
    _bot_fill("t5", "buy", "5", "10", "0.01", "NIGHT", 5),
    _bot_fill("t6", "sell", "6", "15", "0.09", "USDM", 6),
]


@pytest.fixture(scope="module")
def trades_db(tmp_path_factory: pytest.TempPathFactory) -> str:
    folder = tmp_path_factory.mktemp("trades")
    capture = folder / "trades.jsonl"
    capture.write_bytes(b"\n".join(TRADES) + b"\n")
    db = str(folder / "ledger.sqlite")
    ok(run_ledger(db, "ingest", str(capture)))
    return db


def _night(report: dict[str, Any]) -> dict[str, Any]:
    (position,) = [p for p in report["positions"] if p["symbol"] == "NIGHTUSDM"]
    assert isinstance(position, dict)
    return position


def test_average_cost_and_fifo_exactly(trades_db: str) -> None:
    seq = {f["fill_id"]: f["log_position"] for f in ledger_json(trades_db, "fills")["fills"]}

    # After t3: average 1.5 -> 15 x (3 - 1.5) = 22.5; FIFO 10 x (3-1) + 5 x (3-2) = 25.
    average = _night(ledger_json(trades_db, "positions", "--as-of-seq", str(seq["t3"])))
    fifo = _night(
        ledger_json(trades_db, "positions", "--method", "fifo", "--as-of-seq", str(seq["t3"]))
    )
    assert (average["quantity"], fifo["quantity"]) == ("5", "5")
    assert (average["avg_entry_price"], fifo["avg_entry_price"]) == ("1.5", "2")
    assert (average["realized_pnl_gross"], fifo["realized_pnl_gross"]) == ("22.5", "25")
    # Net = gross - quote fees - base fees x the price of the fill that paid them.
    assert average["realized_pnl_net"] == "22.425"  # 22.5 - 0.045 - (0.01x1 + 0.01x2)
    assert fifo["realized_pnl_net"] == "24.925"

    # After t4 the position is flat: both methods agree on the realized total.
    for method in ("average", "fifo"):
        flat = _night(
            ledger_json(trades_db, "positions", "--method", method, "--as-of-seq", str(seq["t4"]))
        )
        assert (flat["quantity"], flat["avg_entry_price"]) == ("0", "0")
        assert flat["realized_pnl_gross"] == "25"

    # At the end: t6 closes the 10 long (+10) and opens 5 short at 6.
    for method in ("average", "fifo"):
        end = _night(ledger_json(trades_db, "positions", "--method", method))
        assert end["quantity"] == "-5"
        assert end["avg_entry_price"] == "6"
        assert end["realized_pnl_gross"] == "35"
        assert end["realized_pnl_net"] == "34.775"  # 35 - 0.145 USDM - 0.08 NIGHT in USDM
        assert end["fees"] == {"NIGHT": "0.03", "USDM": "0.145"}
        assert (end["buy_quantity"], end["sell_quantity"], end["fill_count"]) == ("30", "35", 6)

    pnl = ledger_json(trades_db, "pnl", "--method", "fifo")
    assert pnl["totals"]["realized_pnl_gross"] == {"USDM": "35"}
    assert pnl["totals"]["fees"] == {"NIGHT": "0.03", "USDM": "0.145"}
    t1 = next(f for f in ledger_json(trades_db, "fills")["fills"] if f["fill_id"] == "t1")
    assert (t1["quantity"], t1["price"], t1["fee"], t1["quote_amount"]) == ("10", "1", "0.01", "10")


def test_as_of_time_is_the_state_at_that_time(trades_db: str) -> None:
    seq = {f["fill_id"]: f["log_position"] for f in ledger_json(trades_db, "fills")["fills"]}
    by_time = ledger_json(
        trades_db, "positions", "--method", "fifo", "--as-of", "2026-03-20T10:00:03Z"
    )
    by_seq = ledger_json(trades_db, "positions", "--method", "fifo", "--as-of-seq", str(seq["t3"]))
    assert by_time["positions"] == by_seq["positions"]
    assert _night(by_time)["realized_pnl_gross"] == "25"
    before = ledger_json(trades_db, "pnl", "--as-of", "2026-03-20T09:59:59Z")
    assert before["symbols"] == []
    after = ledger_json(trades_db, "positions", "--as-of", "2026-03-21T00:00:00+00:00")
    assert after["positions"] == ledger_json(trades_db, "positions")["positions"]


def test_as_of_seq_equals_ingesting_only_the_prefix(db_url: str, tmp_path: Path) -> None:
    capture = tmp_path / "session.jsonl"
    make_capture(capture, 800, seed=64)
    lines = frame_lines(capture)
    prefix = tmp_path / "prefix.jsonl"
    prefix.write_bytes(b"\n".join(lines[:500]) + b"\n")

    ok(run_ledger(db_url, "ingest", str(capture)))
    prefix_db = str(tmp_path / "prefix.sqlite")
    at = ledger_json(prefix_db, "ingest", str(prefix))["log_position"]

    for command in (("positions",), ("balances",), ("pnl", "--method", "fifo")):
        then = ledger_json(db_url, *command, "--as-of-seq", str(at))
        assert then == ledger_json(prefix_db, *command), command
    now = ledger_json(db_url, "positions")
    assert now["log_position"] > at
    assert now["state_hash"] != ledger_json(prefix_db, "positions")["state_hash"]


def test_as_of_time_equals_ingesting_the_fills_until_then(tmp_path: Path) -> None:
    """Fills executed at or before T: the same as a ledger that only saw the frames up to
    the last one executed by T (the session's clock only moves forward)."""
    capture = tmp_path / "session.jsonl"
    make_capture(capture, 800, seed=65)
    lines = frame_lines(capture)
    cut = 450
    executed = [
        rec["created_at"]
        for line in lines[:cut]
        for rec in json.loads(line).get("order", {}).get("order_execution_records", [])
    ]
    until = max(executed)
    prefix = tmp_path / "prefix.jsonl"
    prefix.write_bytes(b"\n".join(lines[:cut]) + b"\n")

    db_url = str(tmp_path / "ledger.sqlite")  # PostgreSQL's replay path: the --as-of-seq test
    ok(run_ledger(db_url, "ingest", str(capture)))
    prefix_db = str(tmp_path / "prefix.sqlite")
    ok(run_ledger(prefix_db, "ingest", str(prefix)))

    for method in ("average", "fifo"):
        then = ledger_json(db_url, "positions", "--method", method, "--as-of", until)
        assert (
            then["positions"]
            == ledger_json(prefix_db, "positions", "--method", method)["positions"]
        )
    then_pnl = ledger_json(db_url, "pnl", "--as-of", until)
    prefix_pnl = ledger_json(prefix_db, "pnl")
    assert (then_pnl["symbols"], then_pnl["totals"]) == (
        prefix_pnl["symbols"],
        prefix_pnl["totals"],
    )


# --- rebuild and verify ------------------------------------------------------------------


def test_rebuild_prints_the_incremental_state_hash(session_db: tuple[str, Path, Any]) -> None:
    db, _, _ = session_db
    incremental = ledger_json(db, "positions")["state_hash"]
    text = ok(run_ledger(db, "rebuild"))
    assert f"state hash {incremental}" in text
    assert ledger_json(db, "rebuild")["state_hash"] == incremental
    assert ledger_json(db, "positions")["state_hash"] == incremental


def _verify_fails_naming(db: str, expected: str) -> None:
    """``verify`` exits 1 and names exactly the one tampered projection."""
    result = run_ledger(db, "verify", "--json")
    assert result.returncode == 1
    assert b"Traceback" not in result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is False
    assert report["stored_hash"] != report["replayed_hash"] or expected.startswith("fills")
    assert len(report["differences"]) == 1, report["differences"]
    assert report["differences"][0].startswith(expected)


def _tamper_position(db: str) -> str:
    symbol, record = query(db, "SELECT symbol, record FROM ledger_positions ORDER BY symbol")[0]
    changed = json.loads(record)
    changed["fill_count"] += 1
    execute(
        db, "UPDATE ledger_positions SET record = ? WHERE symbol = ?", (json.dumps(changed), symbol)
    )
    return f"positions.{symbol}"


def _tamper_balance(db: str) -> str:
    asset, record = query(db, "SELECT asset, record FROM ledger_balances ORDER BY asset")[0]
    changed = json.loads(record)
    changed["free"] = str(Decimal(changed["free"]) + 1)
    execute(
        db, "UPDATE ledger_balances SET record = ? WHERE asset = ?", (json.dumps(changed), asset)
    )
    return f"balances.{asset}"


def _delete_a_fill(db: str) -> str:
    (fill_id,) = query(db, "SELECT fill_id FROM ledger_fills ORDER BY fill_id LIMIT 1")[0]
    assert execute(db, "DELETE FROM ledger_fills WHERE fill_id = ?", (fill_id,)) == 1
    return "fills"


def _move_a_fill(db: str) -> str:
    (fill_id,) = query(db, "SELECT fill_id FROM ledger_fills ORDER BY fill_id LIMIT 1")[0]
    sql = "UPDATE ledger_fills SET log_position = log_position + 1 WHERE fill_id = ?"
    assert execute(db, sql, (fill_id,)) == 1
    return "fills"


def test_verify_passes_then_names_each_tampered_projection(db_url: str, tmp_path: Path) -> None:
    capture = tmp_path / "session.jsonl"
    make_capture(capture, 300, seed=66)
    ok(run_ledger(db_url, "ingest", str(capture)))
    assert "ok:" in ok(run_ledger(db_url, "verify"))

    # The human form: exit 1, one line on stderr naming what differs.
    name = _tamper_position(db_url)
    result = run_ledger(db_url, "verify")
    assert result.returncode == 1
    message = result.stderr.decode().strip()
    assert len(message.splitlines()) == 1, message
    assert name in message
    assert b"Traceback" not in result.stdout + result.stderr
    _verify_fails_naming(db_url, name)

    # Each tampering is found on its own; `rebuild` puts the projections right again.
    for tamper in (_tamper_balance, _delete_a_fill, _move_a_fill):
        ok(run_ledger(db_url, "rebuild"))
        _verify_fails_naming(db_url, tamper(db_url))
    ok(run_ledger(db_url, "rebuild"))
    assert ledger_json(db_url, "verify")["ok"] is True


# --- errors: one line, non-zero, never a traceback -------------------------------------


def _errors(tmp_path: Path) -> dict[str, tuple[str, list[str]]]:
    db = str(tmp_path / "ledger.sqlite")
    not_a_db = tmp_path / "notes.txt"
    return {
        "bad flag": (db, ["positions", "--bogus"]),
        "bad flag value": (db, ["positions", "--method", "lifo"]),
        "bad command": (db, ["frobnicate"]),
        "missing file": (db, ["ingest", str(tmp_path / "missing.jsonl")]),
        "unreadable file (a folder)": (db, ["ingest", str(tmp_path)]),
        "bad URL scheme": ("mysql://root@127.0.0.1/ledger", ["positions"]),
        "unreachable database": ("postgresql://postgres@127.0.0.1:1/x", ["positions"]),
        "SQLite folder missing": (str(tmp_path / "no" / "such" / "ledger.sqlite"), ["balances"]),
        "not a database": (str(not_a_db), ["positions"]),
        "bad --as-of": (db, ["positions", "--as-of", "yesterday"]),
        "negative --as-of-seq": (db, ["pnl", "--as-of-seq", "-1"]),
    }


ERROR_CASES = list(_errors(Path("/nonexistent")))


@pytest.mark.parametrize("case", ERROR_CASES)
def test_errors_are_one_line_and_non_zero(case: str, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a database\n")
    db, args = _errors(tmp_path)[case]
    result = run_ledger(db, *args)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert b"Traceback" not in output
    message = result.stderr.decode().strip()
    assert len(message.splitlines()) == 1, message
    assert message.startswith("error: ")
    assert result.stdout == b""
