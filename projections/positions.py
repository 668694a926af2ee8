"""Positions per symbol: average cost and FIFO lots, folded exactly in ``Decimal``.

Booking rules (project notes): a buy adds its base quantity, a sell subtracts it;
fees never change the position. Realized P&L on a reduction is
``closed × (price − average)`` for a long and the negative for a short; adding
keeps a weighted average; a fill that crosses zero closes the old side and opens
the remainder at the fill price; a flat position has average 0.

Average cost is carried as an exact cost basis (``|quantity| × average``) and
the whole basis is released when a position closes, so whenever a position is
flat its total realized P&L is exactly proceeds − cost, the same figure FIFO
gives. Only the displayed average is a quotient.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from decimal import Context, Decimal, localcontext
from typing import Any

from ledger.domain import Fill, Side

#: Sums, differences and products: so wide that they never round for any number the
#: parser accepts, so the only rounded figures are the quotients below.
EXACT = Context(prec=1000)
#: Quotients (a displayed average, a partial release of the cost basis): 60 digits.
QUOTIENT = Context(prec=60)
ZERO = Decimal(0)


@dataclass
class AverageCost:
    """Signed quantity, exact cost basis, realized gross P&L."""

    quantity: Decimal = ZERO
    cost: Decimal = ZERO  # |quantity| x average entry price, always >= 0
    realized: Decimal = ZERO

    @property
    def average(self) -> Decimal:
        if self.quantity == 0:
            return ZERO
        with localcontext(QUOTIENT):
            return self.cost / abs(self.quantity)

    def apply(self, signed_qty: Decimal, price: Decimal) -> None:
        with localcontext(EXACT):
            self.apply_exactly(signed_qty, price)

    def apply_exactly(self, signed_qty: Decimal, price: Decimal) -> None:
        """``apply`` for a caller that is already in the ``EXACT`` context."""
        # Signs are compared with ZERO inline: these are the fold's hottest lines.
        held = self.quantity
        long = held > ZERO
        if not held or (signed_qty > ZERO if long else signed_qty < ZERO):
            self.quantity = held + signed_qty
            self.cost += abs(signed_qty) * price
            return
        held_size, size = abs(held), abs(signed_qty)
        closing = size if size < held_size else held_size  # min(), ties to the first
        # Closing everything releases the whole basis: no quotient, no rounding. A partial
        # release is rounded, but every sum below is exact, so the rounding cancels when
        # the rest of the basis is released.
        if closing == held_size:
            released = self.cost
        else:
            with localcontext(QUOTIENT):
                released = self.cost * closing / held_size
        # For a long, P&L = closed x price - cost released; for a short, the negative.
        gain = closing * price - released
        self.realized += gain if long else -gain
        self.cost -= released
        quantity = self.quantity = held + signed_qty
        if not quantity:
            self.cost = ZERO
        elif (quantity > ZERO) != long:
            self.cost = abs(quantity) * price


@dataclass
class FifoLots:
    """Open lots, oldest first, each ``[signed quantity, price]``."""

    lots: deque[tuple[Decimal, Decimal]] = field(default_factory=deque)
    realized: Decimal = ZERO

    @property
    def quantity(self) -> Decimal:
        with localcontext(EXACT):
            return sum((q for q, _ in self.lots), ZERO)

    @property
    def average(self) -> Decimal:
        with localcontext(EXACT):
            qty = sum((abs(q) for q, _ in self.lots), ZERO)
            if qty == 0:
                return ZERO
            basis = sum((abs(q) * p for q, p in self.lots), ZERO)
        with localcontext(QUOTIENT):
            return basis / qty

    def apply(self, signed_qty: Decimal, price: Decimal) -> None:
        with localcontext(EXACT):
            self.apply_exactly(signed_qty, price)

    def apply_exactly(self, signed_qty: Decimal, price: Decimal) -> None:
        """``apply`` for a caller that is already in the ``EXACT`` context."""
        remaining = signed_qty
        lots = self.lots
        while remaining and lots:
            lot_qty, lot_price = lots[0]
            lot_long = lot_qty > ZERO
            if lot_qty and lot_long == (remaining > ZERO):
                break  # the same side: the rest opens a lot
            lot_size, size = abs(lot_qty), abs(remaining)
            take = size if size < lot_size else lot_size  # min(), ties to the first
            gain = take * (price - lot_price)
            if lot_long:
                self.realized += gain
                left = lot_qty - take
                remaining += take
            else:
                self.realized -= gain
                left = lot_qty + take
                remaining -= take
            if left:
                lots[0] = (left, lot_price)
            else:
                lots.popleft()
        if remaining:
            lots.append((remaining, price))


@dataclass
class Position:
    """Everything the ledger knows about one symbol's trading, both methods side by side."""

    symbol: str
    base_asset: str
    quote_asset: str
    average: AverageCost = field(default_factory=AverageCost)
    fifo: FifoLots = field(default_factory=FifoLots)
    fees: dict[str, Decimal] = field(default_factory=dict)
    fees_in_quote: Decimal = ZERO
    fill_count: int = 0
    buy_quantity: Decimal = ZERO
    sell_quantity: Decimal = ZERO
    last_key: tuple[str, str] = ("", "")

    def apply(self, fill: Fill) -> None:
        """Fold one fill in; the caller guarantees execution order (see ``is_in_order``)."""
        with localcontext(EXACT):
            self.apply_exactly(fill)

    def apply_exactly(self, fill: Fill) -> None:
        """``apply`` for a caller that is already in the ``EXACT`` context. (Entering a
        context costs about as much as folding a fill's average cost: a caller folding
        many fills enters it once.)"""
        signed = fill.quantity if fill.side is Side.BUY else -fill.quantity
        self.average.apply_exactly(signed, fill.price)
        self.fifo.apply_exactly(signed, fill.price)
        self.fees[fill.fee_asset] = self.fees.get(fill.fee_asset, ZERO) + fill.fee
        if fill.fee_asset == self.quote_asset:
            self.fees_in_quote += fill.fee
        elif fill.fee_asset == self.base_asset:
            self.fees_in_quote += fill.fee * fill.price
        if signed > ZERO:
            self.buy_quantity += fill.quantity
        else:
            self.sell_quantity += fill.quantity
        self.fill_count += 1
        self.last_key = fill.sort_key

    def is_in_order(self, fill: Fill) -> bool:
        return fill.sort_key > self.last_key

    @property
    def quantity(self) -> Decimal:
        return self.average.quantity

    def realized_gross(self, method: str) -> Decimal:
        return self.fifo.realized if method == "fifo" else self.average.realized

    def realized_net(self, method: str) -> Decimal:
        with localcontext(EXACT):
            return self.realized_gross(method) - self.fees_in_quote

    def avg_entry_price(self, method: str) -> Decimal:
        return self.fifo.average if method == "fifo" else self.average.average

    # --- persistence: an exact, canonical, JSON-able form --------------------------

    def to_record(self) -> dict[str, Any]:
        return {
            "symbol": self.symbol,
            "base_asset": self.base_asset,
            "quote_asset": self.quote_asset,
            "quantity": str(self.average.quantity),
            "cost": str(self.average.cost),
            "realized_average": str(self.average.realized),
            "lots": [[str(q), str(p)] for q, p in self.fifo.lots],
            "realized_fifo": str(self.fifo.realized),
            "fees": {k: str(v) for k, v in sorted(self.fees.items())},
            "fees_in_quote": str(self.fees_in_quote),
            "fill_count": self.fill_count,
            "buy_quantity": str(self.buy_quantity),
            "sell_quantity": str(self.sell_quantity),
            "last_key": list(self.last_key),
        }

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> Position:
        return cls(
            symbol=rec["symbol"],
            base_asset=rec["base_asset"],
            quote_asset=rec["quote_asset"],
            average=AverageCost(
                Decimal(rec["quantity"]), Decimal(rec["cost"]), Decimal(rec["realized_average"])
            ),
            fifo=FifoLots(
                deque((Decimal(q), Decimal(p)) for q, p in rec["lots"]),
                Decimal(rec["realized_fifo"]),
            ),
            fees={k: Decimal(v) for k, v in rec["fees"].items()},
            fees_in_quote=Decimal(rec["fees_in_quote"]),
            fill_count=int(rec["fill_count"]),
            buy_quantity=Decimal(rec["buy_quantity"]),
            sell_quantity=Decimal(rec["sell_quantity"]),
            last_key=(rec["last_key"][0], rec["last_key"][1]),
        )


class PositionBook:
    """All symbols' positions. ``book`` folds fills that arrive in execution order;
    a fill older than its symbol's last one must be refolded with ``refold``."""

    def __init__(self, positions: dict[str, Position] | None = None) -> None:
        self.positions: dict[str, Position] = positions or {}

    def position(self, fill: Fill) -> Position:
        pos = self.positions.get(fill.symbol)
        if pos is None:
            pos = self.positions[fill.symbol] = Position(
                fill.symbol, fill.base_asset, fill.quote_asset
            )
        return pos

    def book(self, fill: Fill) -> bool:
        """Fold ``fill`` in if it is in order; False means the symbol needs ``refold``."""
        with localcontext(EXACT):
            return self.book_exactly(fill)

    def book_exactly(self, fill: Fill) -> bool:
        """``book`` for a caller that is already in the ``EXACT`` context."""
        pos = self.position(fill)
        if not pos.is_in_order(fill):
            return False
        pos.apply_exactly(fill)
        return True

    def refold(
        self,
        symbol: str,
        fills_in_order: Iterable[Fill],
        *,
        start: Position | None = None,
        every: int = 0,
        checkpoint: Callable[[Position], None] | None = None,
    ) -> None:
        """Replace a symbol's position by ``start`` (None: nothing) with ``fills_in_order``
        folded in: with no ``start``, all the symbol's fills; with one, those after its
        ``last_key``. ``checkpoint`` is called with the position each time its
        ``fill_count`` reaches a multiple of ``every`` (0: never).

        The fills are consumed one at a time (they may be streamed from the store: a
        symbol's whole history held at once costs about 1.5 kB a fill)."""
        pos = start
        with localcontext(EXACT):
            for fill in fills_in_order:
                if pos is None:
                    pos = Position(symbol, fill.base_asset, fill.quote_asset)
                pos.apply_exactly(fill)
                if checkpoint is not None and every and pos.fill_count % every == 0:
                    checkpoint(pos)
        if pos is None:
            self.positions.pop(symbol, None)
        else:
            self.positions[symbol] = pos
