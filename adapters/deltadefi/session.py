"""A generated market-making session, in DeltaDeFi's real frame shapes.

Deterministic for a seed. Orders on ADAUSDM, NIGHTUSDM and IAGUSDM fill in
several steps; every update re-sends all execution records so far (cumulative,
as the exchange does), some frames are repeated verbatim, balance snapshots
arrive now and then (consistent with the fills, so drift is zero), and, when
asked, a few malformed frames are mixed in. ``Session.truth`` keeps what the
exchange knows: every fill exactly once and the final balances.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_DOWN, Decimal
from typing import Any

MARKETS: dict[str, tuple[str, str, Decimal]] = {
    # symbol: (base, quote, mid price)
    "ADAUSDM": ("ADA", "USDM", Decimal("0.4500")),
    "NIGHTUSDM": ("NIGHT", "USDM", Decimal("0.0520")),
    "IAGUSDM": ("IAG", "USDM", Decimal("0.2800")),
}
UNITS = {
    "ADA": "",
    "USDM": "c48cbb3d5e57ed56e276bc45f99ab39abe94e6cd7ac39fb402da47ad0014df105553444d",
    "NIGHT": "0691b2fecca1ac4f53cb6dfb00b7013e561d1f34403b957cbb5af1fa4e49474854",
    "IAG": "5d16cc1a177b5d9ba9cfa9793b07e60f1fb70fea1f8aef064415d114494147",
}
FEE_RATE = Decimal("0.001")  # 10 bp


@dataclass
class ExchangeTruth:
    fills: dict[str, dict[str, Any]] = field(default_factory=dict)
    balances: dict[str, Decimal] = field(default_factory=dict)


@dataclass
class _OpenOrder:
    order: dict[str, Any]
    remaining: Decimal
    records: list[dict[str, Any]]


class Session:
    """Yields raw frames (JSON text) of one account's session."""

    def __init__(
        self,
        seed: int = 7,
        *,
        start: datetime | None = None,
        duplicate_rate: float = 0.05,
        malformed_rate: float = 0.0,
        snapshot_every: int = 25,
    ) -> None:
        # bandit B311: a reproducible test session, not cryptography.
        self.rng = random.Random(seed)  # nosec B311
        self.clock = start or datetime(2026, 3, 20, 9, 0, tzinfo=UTC)
        self.duplicate_rate = duplicate_rate
        self.malformed_rate = malformed_rate
        self.snapshot_every = snapshot_every
        self.truth = ExchangeTruth(
            balances={
                "ADA": Decimal("20000"),
                "USDM": Decimal("10000"),
                "NIGHT": Decimal("50000"),
                "IAG": Decimal("8000"),
            }
        )
        self._seq = 0
        self._open: list[_OpenOrder] = []
        self._last: str | None = None
        self._since_snapshot = 0

    # --- ids and time ---------------------------------------------------------------

    def _id(self, prefix: str) -> str:
        self._seq += 1
        return f"{prefix}-{self._seq:08d}-{self.rng.getrandbits(32):08x}"

    def _tick(self) -> str:
        self.clock += timedelta(milliseconds=self.rng.randint(5, 900))
        return self.clock.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"

    # --- frames ------------------------------------------------------------------------

    def frames(self, count: int) -> Iterator[str]:
        """``count`` frames (lines of a capture), ending with a balance snapshot."""
        produced = 0
        while produced < count - 1:
            frame = self._next_frame()
            yield frame
            produced += 1
            if produced < count - 1 and self._last and self.rng.random() < self.duplicate_rate:
                yield self._last
                produced += 1
        yield self.balance_frame()

    def _next_frame(self) -> str:
        if self.malformed_rate and self.rng.random() < self.malformed_rate:
            return self._malformed()
        self._since_snapshot += 1
        if self._since_snapshot >= self.snapshot_every:
            self._since_snapshot = 0
            return self.balance_frame()
        if self.rng.random() < 0.01:
            return json.dumps(
                {
                    "type": "Account",
                    "sub_type": "dlta_points",
                    "dlta_points": {
                        "delta": 3,
                        "new_total": 120,
                        "season_points": 40,
                        "source_type": "trade",
                        "source_ref": self._id("t"),
                        "league": "gold",
                    },
                }
            )
        if not self._open or (len(self._open) < 6 and self.rng.random() < 0.3):
            self._open.append(self._new_order())
            entry = self._open[-1]
            frame = self._order_frame(entry)
        else:
            entry = self.rng.choice(self._open)
            self._fill_step(entry)
            frame = self._order_frame(entry)
            if entry.remaining == 0 or (entry.records and self.rng.random() < 0.05):
                entry.order["status"] = "closed" if entry.remaining == 0 else "cancelled"
                self._open.remove(entry)
                frame = self._order_frame(entry)
        self._last = frame
        return frame

    def _new_order(self) -> _OpenOrder:
        symbol = self.rng.choice(sorted(MARKETS))
        base, quote, mid = MARKETS[symbol]
        side = self.rng.choice(("buy", "sell"))
        drift = Decimal(self.rng.randint(-40, 40)) / Decimal(1000)
        price = (mid * (1 + drift)).quantize(Decimal("0.0001"))
        qty = Decimal(self.rng.randint(10, 400))
        now = self._tick()
        order = {
            "id": self._id("ord"),
            "account_id": "acct-demo",
            "status": "open",
            "symbol": symbol,
            "base_qty": str(qty),
            "quote_qty": str(qty * price),
            "side": side,
            "price": str(price),
            "type": "limit",
            "locked_base_qty": "0",
            "locked_quote_qty": "0",
            "executed_base_qty": "0",
            "executed_quote_qty": "0",
            "ob_open_order_base_qty": str(qty),
            "commission_unit": "lovelace"
            if base == "ADA" and side == "buy"
            else UNITS[quote if side == "sell" else base],
            "commission": "0",
            "commission_rate_bp": 10,
            "executed_price": "0",
            "created_at": now,
            "updated_at": now,
            "order_execution_records": [],
        }
        return _OpenOrder(order=order, remaining=qty, records=[])

    def _fill_step(self, entry: _OpenOrder) -> None:
        order = entry.order
        base, quote, _ = MARKETS[order["symbol"]]
        qty = min(entry.remaining, Decimal(self.rng.randint(1, 200)))
        price = Decimal(order["price"])
        quote_amount = (qty * price).quantize(Decimal("0.000001"))
        received = base if order["side"] == "buy" else quote
        fee_amount = ((qty if received == base else quote_amount) * FEE_RATE).quantize(
            Decimal("0.000001"), rounding=ROUND_DOWN
        )
        if received == "ADA":
            unit, commission = "lovelace", str(int(fee_amount * 1_000_000))
        else:
            unit, commission = UNITS[received], str(fee_amount)
        record = {
            "id": self._id("exe"),
            "order_id": order["id"],
            "account_id": "acct-demo",
            "execution_price": str(price),
            "filled_base_qty": str(qty),
            "filled_quote_qty": str(quote_amount),
            "commission_unit": unit,
            "commission": commission,
            "role": self.rng.choice(("maker", "taker")),
            "counter_party_order_id": self._id("cp"),
            "created_at": self._tick(),
        }
        entry.records.append(record)
        entry.remaining -= qty
        order["executed_base_qty"] = str(Decimal(order["executed_base_qty"]) + qty)
        order["updated_at"] = record["created_at"]
        self._book_truth(record, order["symbol"], order["side"], fee_amount, received)

    def _book_truth(
        self, record: dict[str, Any], symbol: str, side: str, fee: Decimal, fee_asset: str
    ) -> None:
        base, quote, _ = MARKETS[symbol]
        qty, quote_amount = Decimal(record["filled_base_qty"]), Decimal(record["filled_quote_qty"])
        sign = 1 if side == "buy" else -1
        bal = self.truth.balances
        bal[base] = bal.get(base, Decimal(0)) + sign * qty
        bal[quote] = bal.get(quote, Decimal(0)) - sign * quote_amount
        bal[fee_asset] -= fee
        self.truth.fills[record["id"]] = {"symbol": symbol, "side": side, **record}

    def _order_frame(self, entry: _OpenOrder) -> str:
        order = dict(entry.order)
        order["order_execution_records"] = list(entry.records)
        return json.dumps({"type": "Account", "sub_type": "order_info", "order": order})

    def balance_frame(self) -> str:
        # Balances are JSON numbers on the wire; write the number tokens exactly.
        lines = ",".join(
            f'{{"asset":"{asset.lower()}","asset_unit":"{UNITS[asset]}",'
            f'"free":{format(amount.normalize(), "f")},"locked":0}}'
            for asset, amount in sorted(self.truth.balances.items())
        )
        return f'{{"type":"Account","sub_type":"balance","balance":[{lines}]}}'

    def _malformed(self) -> str:
        choice = self.rng.randrange(4)
        if choice == 0:
            return '{"type":"Account","sub_type":"order_info","order":{"id":'
        if choice == 1:
            return json.dumps(
                {
                    "type": "fill",
                    "fillId": "",
                    "symbol": "ADAUSDM",
                    "side": "buy",
                    "price": "0.4",
                    "quantity": "1",
                    "timestamp": 1,
                }
            )
        if choice == 2:
            return json.dumps(
                {
                    "type": "Account",
                    "sub_type": "balance",
                    "balance": [{"asset": "ada", "free": -5, "locked": 0}],
                }
            )
        return "[1, 2, 3]"


def write_capture(
    path: str, frames: int, seed: int = 7, malformed_rate: float = 0.0
) -> ExchangeTruth:
    session = Session(seed, malformed_rate=malformed_rate)
    with open(path, "w", encoding="utf-8") as out:
        for frame in session.frames(frames):
            out.write(frame + "\n")
    return session.truth
