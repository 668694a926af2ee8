"""Balances per asset: the exchange's last word, what the fills since imply, and the drift.

Folded in log order. A snapshot (``balance`` or ``balance_update``) sets
``free``/``locked`` for the assets it lists. Between snapshots each booked fill
moves the expected total: base ``+qty`` on a buy and ``−qty`` on a sell, quote
``−quote amount`` on a buy and ``+quote amount`` on a sell, and the fee comes
off its own asset. When a snapshot arrives for an asset that already had one,
``drift = snapshot total − expected total`` is recorded and the expected total
restarts from the snapshot. A persistent non-zero drift means a missed fill, a
deposit or withdrawal, or a bug.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, localcontext
from typing import Any

from ledger.domain import BalanceLine, Fill, Side
from projections.positions import EXACT, ZERO


@dataclass
class AssetBalance:
    asset: str
    free: Decimal = ZERO
    locked: Decimal = ZERO
    expected_total: Decimal = ZERO
    drift_last: Decimal = ZERO
    drift_sum: Decimal = ZERO
    snapshots: int = 0

    @property
    def total(self) -> Decimal:
        with localcontext(EXACT):
            return self.free + self.locked

    def to_record(self) -> dict[str, Any]:
        return {
            "asset": self.asset,
            "free": str(self.free),
            "locked": str(self.locked),
            "expected_total": str(self.expected_total),
            "drift_last": str(self.drift_last),
            "drift_sum": str(self.drift_sum),
            "snapshots": self.snapshots,
        }

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> AssetBalance:
        return cls(
            asset=rec["asset"],
            free=Decimal(rec["free"]),
            locked=Decimal(rec["locked"]),
            expected_total=Decimal(rec["expected_total"]),
            drift_last=Decimal(rec["drift_last"]),
            drift_sum=Decimal(rec["drift_sum"]),
            snapshots=int(rec["snapshots"]),
        )


class BalanceSheet:
    def __init__(self, assets: dict[str, AssetBalance] | None = None) -> None:
        self.assets: dict[str, AssetBalance] = assets or {}

    def _asset(self, name: str) -> AssetBalance:
        bal = self.assets.get(name)
        if bal is None:
            bal = self.assets[name] = AssetBalance(name)
        return bal

    def apply_snapshot(self, lines: tuple[BalanceLine, ...]) -> set[str]:
        touched = set()
        with localcontext(EXACT):
            for line in lines:
                bal = self._asset(line.asset)
                total = line.free + line.locked
                if bal.snapshots:
                    bal.drift_last = total - bal.expected_total
                    bal.drift_sum += bal.drift_last
                bal.free, bal.locked = line.free, line.locked
                bal.expected_total = total
                bal.snapshots += 1
                touched.add(line.asset)
        return touched

    def apply_fill(self, fill: Fill) -> set[str]:
        """Move the expected totals by a fill; the assets it touched."""
        with localcontext(EXACT):
            return self.apply_fill_exactly(fill)

    def apply_fill_exactly(self, fill: Fill) -> set[str]:
        """``apply_fill`` for a caller that is already in the ``EXACT`` context."""
        base = self._asset(fill.base_asset)
        quote = self._asset(fill.quote_asset)
        if fill.side is Side.BUY:
            base.expected_total += fill.quantity
            quote.expected_total -= fill.quote_amount
        else:
            base.expected_total -= fill.quantity
            quote.expected_total += fill.quote_amount
        fee_bal = self._asset(fill.fee_asset)
        fee_bal.expected_total -= fill.fee
        return {fill.base_asset, fill.quote_asset, fill.fee_asset}
