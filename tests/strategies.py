"""Shared test data: DeltaDeFi frames in their real wire shapes, hypothesis strategies
that generate fills and streams of frames carrying them, and an exact oracle.

The oracle is written independently of ``projections/``: it folds with ``Fraction``
(so it never rounds) and states the booking rules of ``docs/booking.md`` directly.
"""

from __future__ import annotations

import itertools
import json
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Context, Decimal, localcontext
from fractions import Fraction
from typing import Any

from hypothesis import strategies as st

UNITS: dict[str, str] = {
    "ADA": "",
    "USDM": "c48cbb3d5e57ed56e276bc45f99ab39abe94e6cd7ac39fb402da47ad0014df105553444d",
    "NIGHT": "0691b2fecca1ac4f53cb6dfb00b7013e561d1f34403b957cbb5af1fa4e49474854",
    "SNEK": "279c909f348e533da5808898f87f9a14bb2c3dfbbacccd631d927a3f.534e454b",
}

#: symbol -> (base, quote). SNEKADA is not a known pair: it splits by its ``ADA`` suffix.
MARKETS: dict[str, tuple[str, str]] = {
    "ADAUSDM": ("ADA", "USDM"),
    "NIGHTUSDM": ("NIGHT", "USDM"),
    "SNEKADA": ("SNEK", "ADA"),
}

START = datetime(2026, 3, 20, 9, 0, tzinfo=UTC)


def plain(value: Decimal) -> str:
    """A decimal in plain notation, as the exchange writes numbers."""
    return format(value, "f")


def rfc3339(moment: datetime) -> str:
    """The exchange's form: milliseconds and a ``Z``."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def normalised(moment: datetime) -> str:
    """The ledger's form of an executed time (see ``ledger.domain.Fill``)."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# --- one fill, and the frames that can carry it -------------------------------------


@dataclass(frozen=True)
class FillSpec:
    """A fill as the exchange knows it. ``fee`` is in whole units of the asset received."""

    fill_id: str
    order_id: str
    symbol: str
    side: str
    price: Decimal
    quantity: Decimal
    fee: Decimal
    executed_at: datetime
    role: str = "maker"

    @property
    def base(self) -> str:
        return MARKETS[self.symbol][0]

    @property
    def quote(self) -> str:
        return MARKETS[self.symbol][1]

    @property
    def fee_asset(self) -> str:
        """DeltaDeFi charges the fee in the asset received: base on buys, quote on sells."""
        return self.base if self.side == "buy" else self.quote

    @property
    def signed(self) -> Decimal:
        return self.quantity if self.side == "buy" else -self.quantity

    @property
    def quote_amount(self) -> Decimal:
        """price x quantity, exactly (the wide context never rounds these sizes)."""
        with localcontext(Context(prec=200)):
            return self.price * self.quantity

    @property
    def sort_key(self) -> tuple[str, str]:
        return (normalised(self.executed_at), self.fill_id)

    def commission(self) -> tuple[str, str]:
        """(unit, amount) as the wire carries them: ADA in lovelace, others by policy id."""
        if self.fee_asset == "ADA":
            return "lovelace", str(int(self.fee * 1_000_000))
        return UNITS[self.fee_asset], plain(self.fee)


def execution_record(fill: FillSpec) -> dict[str, Any]:
    unit, amount = fill.commission()
    return {
        "id": fill.fill_id,
        "order_id": fill.order_id,
        "account_id": "acct-7f3a",
        "execution_price": plain(fill.price),
        "filled_base_qty": plain(fill.quantity),
        "filled_quote_qty": plain(fill.quote_amount),
        "commission_unit": unit,
        "commission": amount,
        "role": fill.role,
        "counter_party_order_id": f"cp-{fill.fill_id}",
        "created_at": rfc3339(fill.executed_at),
    }


@dataclass(frozen=True)
class OrderSpec:
    order_id: str
    symbol: str
    side: str
    fills: tuple[FillSpec, ...]


def order_info(order: OrderSpec, shown: int, *, status: str | None = None) -> bytes:
    """The order as it stands after its first ``shown`` fills: every record so far (cumulative)."""
    records = [execution_record(f) for f in order.fills[:shown]]
    executed = sum((f.quantity for f in order.fills[:shown]), Decimal(0))
    total = sum((f.quantity for f in order.fills), Decimal(0))
    price = order.fills[0].price if order.fills else Decimal("0.45")
    base, quote = MARKETS[order.symbol]
    received = base if order.side == "buy" else quote
    state = status or ("closed" if shown == len(order.fills) and shown else "open")
    body = {
        "id": order.order_id,
        "account_id": "acct-7f3a",
        "status": state,
        "symbol": order.symbol,
        "base_qty": plain(total),
        "quote_qty": plain(total * price),
        "side": order.side,
        "price": plain(price),
        "type": "limit",
        "locked_base_qty": "0",
        "locked_quote_qty": "0",
        "executed_base_qty": plain(executed),
        "executed_quote_qty": plain(sum((f.quote_amount for f in order.fills[:shown]), Decimal(0))),
        "ob_open_order_base_qty": plain(total - executed),
        "commission_unit": "lovelace" if received == "ADA" else UNITS[received],
        "commission": "0",
        "commission_rate_bp": 10,
        "executed_price": plain(price),
        "created_at": rfc3339(START),
        "updated_at": rfc3339(START),
        "order_execution_records": records,
    }
    return json.dumps({"type": "Account", "sub_type": "order_info", "order": body}).encode()


def trading_history(fills: Sequence[FillSpec]) -> bytes:
    """The older stream's ``trading_history`` records."""
    records = []
    for fill in fills:
        unit, amount = fill.commission()
        records.append(
            {
                "execution_id": fill.fill_id,
                "order_id": fill.order_id,
                "status": "closed",
                "symbol": fill.symbol,
                "executed_qty": plain(fill.quantity),
                "side": fill.side,
                "type": "limit",
                "fee_charged": amount,
                "fee_unit": unit,
                "executed_price": plain(fill.price),
                "created_time": rfc3339(fill.executed_at),
            }
        )
    return json.dumps({"type": "trading_history", "trading_history": records}).encode()


def bot_fill(fill: FillSpec) -> bytes:
    """The bot-side ``fill`` message: commission in whole units of a named asset."""
    millis = int((fill.executed_at - datetime(1970, 1, 1, tzinfo=UTC)) / timedelta(milliseconds=1))
    return json.dumps(
        {
            "type": "fill",
            "fillId": fill.fill_id,
            "orderId": fill.order_id,
            "symbol": fill.symbol,
            "side": fill.side,
            "price": plain(fill.price),
            "quantity": plain(fill.quantity),
            "timestamp": millis,
            "commission": plain(fill.fee),
            "commissionAsset": fill.fee_asset,
            "isMaker": fill.role == "maker",
            "tradeId": f"t-{fill.fill_id}",
        }
    ).encode()


def balance(entries: Mapping[str, tuple[Decimal, Decimal]]) -> bytes:
    """A ``balance`` snapshot with ``free``/``locked`` as JSON number tokens, lower-case assets."""
    lines = ",".join(
        f'{{"asset":"{asset.lower()}","asset_unit":"{UNITS.get(asset, "")}",'
        f'"free":{plain(free)},"locked":{plain(locked)}}}'
        for asset, (free, locked) in sorted(entries.items())
    )
    return f'{{"type":"Account","sub_type":"balance","balance":[{lines}]}}'.encode()


def balance_update(entries: Mapping[str, tuple[Decimal, Decimal]]) -> bytes:
    """The bot-side ``balance_update`` message."""
    return json.dumps(
        {
            "type": "balance_update",
            "balances": {
                asset: {"available": plain(free), "locked": plain(locked)}
                for asset, (free, locked) in entries.items()
            },
        }
    ).encode()


# --- a stream: frames in delivery order, each with what it means ----------------------


@dataclass(frozen=True)
class Item:
    """One delivered frame and what it carries (so the oracle never parses)."""

    raw: bytes
    fills: tuple[FillSpec, ...] = ()
    snapshot: Mapping[str, tuple[Decimal, Decimal]] | None = None
    bad: bool = False


@dataclass
class Stream:
    fills: list[FillSpec]
    items: list[Item]

    @property
    def frames(self) -> list[bytes]:
        return [item.raw for item in self.items]

    @property
    def fill_ids(self) -> set[str]:
        return {f.fill_id for f in self.fills}


#: Frames that must be rejected. Fill ids in them ("bad-…") never appear in good frames.
BAD_FRAMES: tuple[bytes, ...] = (
    b'{"type":"Account","sub_type":"order_info","order":{"id":',
    b"\xff\xfe not utf-8 \x80",
    b"[1, 2, 3]",
    b'{"type":"fill","fillId":"","symbol":"ADAUSDM","side":"buy","price":"0.4",'
    b'"quantity":"1","timestamp":1773997200000}',
    b'{"type":"fill","fillId":"bad-1","symbol":"ADAUSDM","side":"buy","price":"0",'
    b'"quantity":"1","timestamp":1773997200000}',
    b'{"type":"fill","fillId":"bad-2","symbol":"FOOBAR","side":"buy","price":"1",'
    b'"quantity":"1","timestamp":1773997200000}',
    b'{"type":"Account","sub_type":"balance","balance":[{"asset":"ada","free":NaN,"locked":0}]}',
    b'{"type":"Account","sub_type":"balance","balance":[{"asset":"ada","free":-5,"locked":0}]}',
)


# --- strategies -------------------------------------------------------------------------


def _scaled(low: int, high: int, max_places: int) -> st.SearchStrategy[Decimal]:
    return st.builds(
        lambda n, places: Decimal(n).scaleb(-places),
        st.integers(low, high),
        st.integers(0, max_places),
    )


prices = _scaled(1, 2_000_000, 6)
#: Small whole sizes often, so averages that do not terminate (408 / 67) are common too.
quantities = st.one_of(st.integers(1, 100).map(Decimal), _scaled(1, 50_000_000, 6))
#: Whole lovelace, so a fee in ADA is exact on the wire too.
fees = st.integers(0, 2_000_000).map(lambda n: Decimal(n).scaleb(-6))
#: Balance amounts (free, locked): zero included.
amounts = _scaled(0, 10**10, 6)
#: A coarse clock, so equal executed times (ties broken by fill id) are common.
moments = st.integers(0, 40).map(lambda s: START + timedelta(seconds=s))


@st.composite
def fill_lists(
    draw: st.DrawFn,
    *,
    min_fills: int = 1,
    max_fills: int = 14,
    symbols: Sequence[str] = tuple(MARKETS),
    flatten: bool = False,
) -> list[FillSpec]:
    """Fills with unique ids, random sides, sizes and (often equal) executed times.

    ``flatten`` adds, per symbol, a last fill that closes the position exactly.
    """
    count = draw(st.integers(min_fills, max_fills))
    fills: list[FillSpec] = []
    for n in range(count):
        # Ids whose order is unrelated to time, so the tie-break by id does real work.
        fill_id = f"exe-{draw(st.integers(0, 999)):03d}-{n:03d}"
        fills.append(
            FillSpec(
                fill_id=fill_id,
                order_id=f"ord-{n:03d}",
                symbol=draw(st.sampled_from(symbols)),
                side=draw(st.sampled_from(("buy", "sell"))),
                price=draw(prices),
                quantity=draw(quantities),
                fee=draw(fees),
                executed_at=draw(moments),
                role=draw(st.sampled_from(("maker", "taker"))),
            )
        )
    if flatten:
        for k, symbol in enumerate(sorted({f.symbol for f in fills})):
            held = sum((f.signed for f in fills if f.symbol == symbol), Decimal(0))
            if held == 0:
                continue
            fills.append(
                FillSpec(
                    fill_id=f"exe-close-{k}",
                    order_id=f"ord-close-{k}",
                    symbol=symbol,
                    side="sell" if held > 0 else "buy",
                    price=draw(prices),
                    quantity=abs(held),
                    fee=draw(fees),
                    executed_at=START + timedelta(hours=1),
                )
            )
    return fills


@st.composite
def orders_from(draw: st.DrawFn, fills: list[FillSpec]) -> list[OrderSpec]:
    """Group fills into orders: each order one symbol and side, records in order of id."""
    groups: dict[tuple[str, str], list[list[FillSpec]]] = {}
    for fill in fills:
        slots = groups.setdefault((fill.symbol, fill.side), [])
        if not slots or draw(st.booleans()):
            slots.append([])
        slots[-1].append(fill)
    orders: list[OrderSpec] = []
    for (symbol, side), slots in sorted(groups.items()):
        for members in slots:
            order_id = f"ord-{symbol.lower()}-{side}-{len(orders)}"
            orders.append(
                OrderSpec(
                    order_id,
                    symbol,
                    side,
                    tuple(
                        FillSpec(
                            f.fill_id,
                            order_id,
                            f.symbol,
                            f.side,
                            f.price,
                            f.quantity,
                            f.fee,
                            f.executed_at,
                            f.role,
                        )
                        for f in members
                    ),
                )
            )
    return orders


@st.composite
def streams(
    draw: st.DrawFn,
    *,
    flatten: bool = False,
    snapshots: bool = False,
    bad: bool = False,
    max_fills: int = 14,
) -> Stream:
    """A messy delivery of a set of fills, as a real account stream looks.

    Orders are updated cumulatively (every update re-sends all records so far) and
    interleaved with each other; some updates are lost (never the last), so a later
    one is the first to carry several records; frames are repeated verbatim; a reconnect replays
    final orders; some fills also come in older formats (``trading_history``, bot
    ``fill``), sometimes before their ``order_info``. Optionally balance snapshots
    and rejected frames are mixed in.
    """
    fills = draw(fill_lists(max_fills=max_fills, flatten=flatten))
    orders = draw(orders_from(fills))
    fills = [f for order in orders for f in order.fills]
    # Interleave the orders' cumulative updates: the k-th occurrence of i is update k of order i.
    slots = [i for i, order in enumerate(orders) for _ in order.fills]
    slots = draw(st.permutations(slots))
    shown = [0] * len(orders)
    items: list[Item] = []
    for i in slots:
        if shown[i] == 0 and draw(st.booleans()):
            items.append(Item(order_info(orders[i], 0)))  # the order opens before it fills
        shown[i] += 1
        order = orders[i]
        if shown[i] < len(order.fills) and draw(st.integers(0, 2)) == 0:
            continue  # lost while disconnected: a later update carries these records too
        items.append(Item(order_info(order, shown[i]), order.fills[: shown[i]]))
    # A reconnect replays some final orders (cumulative repeats of everything).
    for order in draw(st.lists(st.sampled_from(orders), max_size=3)):
        items.append(Item(order_info(order, len(order.fills)), order.fills))
    # Older formats deliver some fills again, anywhere in the stream.
    for fill in draw(st.lists(st.sampled_from(fills), max_size=4, unique_by=lambda f: f.fill_id)):
        legacy = draw(st.sampled_from(("history", "bot")))
        raw = trading_history([fill]) if legacy == "history" else bot_fill(fill)
        items.insert(draw(st.integers(0, len(items))), Item(raw, (fill,)))
    # Verbatim repeats.
    for _ in range(draw(st.integers(0, 5))):
        source = items[draw(st.integers(0, len(items) - 1))]
        items.insert(draw(st.integers(0, len(items))), source)
    if snapshots:
        assets = sorted({a for f in fills for a in MARKETS[f.symbol]})
        for _ in range(draw(st.integers(1, 4))):
            chosen = draw(st.lists(st.sampled_from(assets), min_size=1, unique=True))
            entries = {a: (draw(amounts), draw(amounts)) for a in chosen}
            raw = balance(entries) if draw(st.booleans()) else balance_update(entries)
            items.insert(draw(st.integers(0, len(items))), Item(raw, snapshot=entries))
    if bad:
        for raw in draw(st.lists(st.sampled_from(BAD_FRAMES), max_size=4)):
            items.insert(draw(st.integers(0, len(items))), Item(raw, bad=True))
    return Stream(fills, items)


@st.composite
def batch_splits(draw: st.DrawFn, size: int) -> list[tuple[int, int]]:
    """Cut ``range(size)`` into consecutive, non-empty ``(start, stop)`` batches at random points."""
    cuts = sorted(set(draw(st.lists(st.integers(1, max(1, size - 1)), max_size=6))))
    bounds = [0, *[c for c in cuts if 0 < c < size], size]
    return list(itertools.pairwise(bounds))


# --- the oracle --------------------------------------------------------------------------


@dataclass
class OraclePosition:
    """One symbol folded exactly with ``Fraction``: average cost and FIFO side by side."""

    base: str
    quote: str
    quantity: Fraction = Fraction(0)
    average: Fraction = Fraction(0)
    realized_average: Fraction = Fraction(0)
    lots: deque[list[Fraction]] = field(default_factory=deque)
    realized_fifo: Fraction = Fraction(0)
    fees: dict[str, Fraction] = field(default_factory=dict)
    fees_in_quote: Fraction = Fraction(0)
    buys: Fraction = Fraction(0)
    sells: Fraction = Fraction(0)
    count: int = 0

    def apply(self, signed: Fraction, price: Fraction) -> None:
        self._average(signed, price)
        self._fifo(signed, price)

    def _average(self, signed: Fraction, price: Fraction) -> None:
        held = self.quantity
        new = held + signed
        if held == 0 or (held > 0) == (signed > 0):
            self.average = (abs(held) * self.average + abs(signed) * price) / abs(new)
        else:
            closed = min(abs(held), abs(signed))
            direction = 1 if held > 0 else -1
            self.realized_average += direction * closed * (price - self.average)
            if new == 0:
                self.average = Fraction(0)
            elif (new > 0) != (held > 0):
                self.average = price  # flipped through zero: the remainder opens at the fill price
        self.quantity = new

    def _fifo(self, signed: Fraction, price: Fraction) -> None:
        remaining = signed
        while remaining and self.lots and (self.lots[0][0] > 0) != (remaining > 0):
            lot = self.lots[0]
            take = min(abs(lot[0]), abs(remaining))
            direction = 1 if lot[0] > 0 else -1
            self.realized_fifo += direction * take * (price - lot[1])
            lot[0] -= direction * take
            remaining += direction * take
            if lot[0] == 0:
                self.lots.popleft()
        if remaining:
            self.lots.append([remaining, price])


def execution_order(fills: Iterable[FillSpec]) -> list[FillSpec]:
    return sorted(fills, key=lambda f: f.sort_key)


def oracle_positions(fills: Iterable[FillSpec]) -> dict[str, OraclePosition]:
    """Every symbol folded in execution order (executed time, then fill id)."""
    book: dict[str, OraclePosition] = {}
    for fill in execution_order(fills):
        pos = book.setdefault(fill.symbol, OraclePosition(fill.base, fill.quote))
        price, qty, fee = Fraction(fill.price), Fraction(fill.quantity), Fraction(fill.fee)
        pos.apply(Fraction(fill.signed), price)
        pos.fees[fill.fee_asset] = pos.fees.get(fill.fee_asset, Fraction(0)) + fee
        pos.fees_in_quote += fee if fill.fee_asset == pos.quote else fee * price
        if fill.side == "buy":
            pos.buys += qty
        else:
            pos.sells += qty
        pos.count += 1
    return book


@dataclass
class OracleBalance:
    free: Fraction = Fraction(0)
    locked: Fraction = Fraction(0)
    expected_total: Fraction = Fraction(0)
    drift_last: Fraction = Fraction(0)
    drift_sum: Fraction = Fraction(0)
    snapshots: int = 0


def oracle_balances(items: Iterable[Item]) -> dict[str, OracleBalance]:
    """Balances in log order: a snapshot sets free/locked and records drift; a fill booked
    for the first time moves the expected totals (notes, "Booking rules")."""
    sheet: dict[str, OracleBalance] = {}
    booked: set[str] = set()
    for item in items:
        if item.bad:
            continue
        for asset, (free, locked) in (item.snapshot or {}).items():
            bal = sheet.setdefault(asset, OracleBalance())
            total = Fraction(free) + Fraction(locked)
            if bal.snapshots:
                bal.drift_last = total - bal.expected_total
                bal.drift_sum += bal.drift_last
            bal.free, bal.locked, bal.expected_total = Fraction(free), Fraction(locked), total
            bal.snapshots += 1
        for fill in item.fills:
            if fill.fill_id in booked:
                continue
            booked.add(fill.fill_id)
            base = sheet.setdefault(fill.base, OracleBalance())
            quote = sheet.setdefault(fill.quote, OracleBalance())
            sign = 1 if fill.side == "buy" else -1
            base.expected_total += sign * Fraction(fill.quantity)
            quote.expected_total -= sign * Fraction(fill.quote_amount)
            sheet[fill.fee_asset].expected_total -= Fraction(fill.fee)
    return sheet
