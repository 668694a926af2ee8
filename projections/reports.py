"""Read models as plain dicts: the shapes ``--json`` prints and the tables render.

Every amount is a string in plain decimal notation (no exponent), exact except
the average entry price, which is a quotient and shown to 18 decimal places.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from adapters.storage import Database
from projections import views
from projections.state import LedgerState

_PRICE_PLACES = Decimal("1e-18")


def plain(value: Decimal) -> str:
    """Exact plain notation: ``Decimal('1E+2')`` -> ``'100'``, ``Decimal('1.50')`` -> ``'1.5'``."""
    if value == 0:
        return "0"
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def price(value: Decimal) -> str:
    return plain(value.quantize(_PRICE_PLACES, rounding=ROUND_HALF_EVEN))


def positions_report(state: LedgerState, method: str, log_position: int) -> dict[str, Any]:
    rows = []
    for symbol, pos in sorted(state.book.positions.items()):
        rows.append(
            {
                "symbol": symbol,
                "base_asset": pos.base_asset,
                "quote_asset": pos.quote_asset,
                "quantity": plain(pos.quantity),
                "avg_entry_price": price(pos.avg_entry_price(method)),
                "realized_pnl_gross": plain(pos.realized_gross(method)),
                "realized_pnl_net": plain(pos.realized_net(method)),
                "fees": {a: plain(v) for a, v in sorted(pos.fees.items())},
                "fill_count": pos.fill_count,
                "buy_quantity": plain(pos.buy_quantity),
                "sell_quantity": plain(pos.sell_quantity),
            }
        )
    return {
        "method": method,
        "log_position": log_position,
        "state_hash": state.state_hash(),
        "positions": rows,
    }


def balances_report(state: LedgerState, log_position: int) -> dict[str, Any]:
    rows = [
        {
            "asset": asset,
            "free": plain(b.free),
            "locked": plain(b.locked),
            "total": plain(b.total),
            "expected_total": plain(b.expected_total),
            "drift_last": plain(b.drift_last),
            "drift_sum": plain(b.drift_sum),
        }
        for asset, b in sorted(state.balances.assets.items())
    ]
    return {"log_position": log_position, "balances": rows}


def pnl_report(state: LedgerState, method: str, log_position: int) -> dict[str, Any]:
    symbols = []
    gross: dict[str, Decimal] = {}
    net: dict[str, Decimal] = {}
    fees: dict[str, Decimal] = {}
    for symbol, pos in sorted(state.book.positions.items()):
        g, n = pos.realized_gross(method), pos.realized_net(method)
        symbols.append(
            {
                "symbol": symbol,
                "quote_asset": pos.quote_asset,
                "realized_pnl_gross": plain(g),
                "realized_pnl_net": plain(n),
                "fees": {a: plain(v) for a, v in sorted(pos.fees.items())},
            }
        )
        gross[pos.quote_asset] = gross.get(pos.quote_asset, Decimal(0)) + g
        net[pos.quote_asset] = net.get(pos.quote_asset, Decimal(0)) + n
        for asset, amount in pos.fees.items():
            fees[asset] = fees.get(asset, Decimal(0)) + amount
    return {
        "method": method,
        "log_position": log_position,
        "symbols": symbols,
        "totals": {
            "realized_pnl_gross": {k: plain(v) for k, v in sorted(gross.items())},
            "realized_pnl_net": {k: plain(v) for k, v in sorted(net.items())},
            "fees": {k: plain(v) for k, v in sorted(fees.items())},
        },
    }


def fills_report(
    db: Database, log_position: int, *, symbol: str | None = None, limit: int | None = None
) -> dict[str, Any]:
    # bandit B608: a constant column list.
    sql = f"SELECT {views.FILL_COLUMNS} FROM ledger_fills"  # nosec B608
    params: list[Any] = []
    if symbol:
        sql += " WHERE symbol = ?"
        params.append(symbol.upper())
    sql += " ORDER BY executed_at, fill_id"
    if limit:
        sql += " LIMIT ?"
        params.append(limit)
    with db.reading() as cur:
        cur.execute(sql, params)
        rows: Sequence[tuple[Any, ...]] = cur.fetchall()
    fills = []
    for r in rows:
        fill = views.fill_from_row(r)
        fills.append(
            {
                "fill_id": fill.fill_id,
                "order_id": fill.order_id,
                "symbol": fill.symbol,
                "side": fill.side.value,
                "price": plain(fill.price),
                "quantity": plain(fill.quantity),
                "quote_amount": plain(fill.quote_amount),
                "fee": plain(fill.fee),
                "fee_asset": fill.fee_asset,
                "role": fill.role,
                "executed_at": fill.executed_at,
                "log_position": int(r[13]),
            }
        )
    return {"log_position": log_position, "fills": fills}


def rejects_report(db: Database, *, limit: int | None = None) -> dict[str, Any]:
    sql = "SELECT log_position, source, reason, raw FROM ledger_rejects ORDER BY log_position"
    params: list[Any] = []
    if limit:
        sql += " LIMIT ?"
        params.append(limit)
    with db.reading() as cur:
        cur.execute(sql, params)
        rows = cur.fetchall()
    return {
        "rejected": [
            {
                "log_position": int(pos),
                "source": source,
                "reason": reason,
                "raw": bytes(raw).decode("utf-8", errors="backslashreplace"),
            }
            for pos, source, reason, raw in rows
        ]
    }
