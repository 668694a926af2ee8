"""A stateful model of the ledger: random sequences of what really happens to it.

Rules: a new fill (a bot-side ``fill`` frame, or the next execution of an open order,
re-sent cumulatively as ``order_info`` does), a verbatim duplicate, a reconnect that
replays the last frames in one batch under a new connection, a restart (the database
closed and opened again), a rebuild, a late fill healed from REST (an older
``trading_history`` record, executed before fills already booked), and a balance
snapshot (sometimes off by a deposit).

After every step, against an independent model folded with ``Fraction``:
- the booked fill ids are the model's, each once;
- per symbol, quantity = sum of signed fills, for both methods; FIFO's realized P&L and
  average entry equal the model's exactly; average cost's realized P&L equals FIFO's
  whenever the position is flat (and is within 1e-40 of the model's always);
- per asset, expected total and last drift follow the booking rules (log order);
- the tracking position is the log head after catch-up; a fresh replay equals the stored
  projections (``verify``), and a rebuild gives the incremental state hash.
"""

from __future__ import annotations

import json
import tempfile
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)
from psycopg import sql

from ledger.application import IncomingFrame
from ledger.bootstrap import LedgerServices, open_ledger
from projections import checkpoints
from projections.runner import verify
from reliability._support import LONG

MARKETS = {"ADAUSDM": ("ADA", "USDM"), "NIGHTUSDM": ("NIGHT", "USDM")}
START = datetime(2026, 3, 20, 9, 0, tzinfo=UTC)

prices = st.decimals(min_value="0.0100", max_value="2.0000", places=4)
quantities = st.decimals(min_value="1", max_value="500", places=2)


@dataclass(frozen=True)
class ModelFill:
    fill_id: str
    symbol: str
    side: str
    price: Decimal
    qty: Decimal
    fee: Decimal  # in the asset received
    at: datetime

    @property
    def base(self) -> str:
        return MARKETS[self.symbol][0]

    @property
    def quote(self) -> str:
        return MARKETS[self.symbol][1]

    @property
    def signed(self) -> Fraction:
        return Fraction(self.qty) if self.side == "buy" else -Fraction(self.qty)

    @property
    def at_text(self) -> str:
        return self.at.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"

    @property
    def key(self) -> tuple[str, str]:
        return (self.at.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), self.fill_id)


@dataclass
class Model:
    """What the ledger must say, computed the simplest way there is."""

    fills: dict[str, ModelFill] = field(default_factory=dict)
    expected: dict[str, Fraction] = field(default_factory=dict)
    snapshots: dict[str, int] = field(default_factory=dict)
    drift_last: dict[str, Fraction] = field(default_factory=dict)

    def book(self, fill: ModelFill) -> None:
        if fill.fill_id in self.fills:
            return
        self.fills[fill.fill_id] = fill
        sign = 1 if fill.side == "buy" else -1
        for asset, delta in (
            (fill.base, sign * Fraction(fill.qty)),
            (fill.quote, -sign * Fraction(fill.qty) * Fraction(fill.price)),
            (fill.base if fill.side == "buy" else fill.quote, -Fraction(fill.fee)),
        ):
            self.expected[asset] = self.expected.get(asset, Fraction(0)) + delta

    def snapshot(self, totals: dict[str, Fraction]) -> None:
        for asset, total in totals.items():
            if self.snapshots.get(asset):
                self.drift_last[asset] = total - self.expected.get(asset, Fraction(0))
            self.expected[asset] = total
            self.snapshots[asset] = self.snapshots.get(asset, 0) + 1

    def fifo(self, symbol: str) -> tuple[Fraction, Fraction, Fraction]:
        """(quantity, realized, average entry of the open lots) in execution order."""
        lots: deque[list[Fraction]] = deque()
        realized = Fraction(0)
        for f in sorted(
            (f for f in self.fills.values() if f.symbol == symbol), key=lambda f: f.key
        ):
            remaining, price = f.signed, Fraction(f.price)
            while remaining and lots and (lots[0][0] > 0) != (remaining > 0):
                take = min(abs(lots[0][0]), abs(remaining))
                direction = 1 if lots[0][0] > 0 else -1
                realized += direction * take * (price - lots[0][1])
                lots[0][0] -= direction * take
                remaining += direction * take
                if lots[0][0] == 0:
                    lots.popleft()
            if remaining:
                lots.append([remaining, price])
        quantity = sum((q for q, _ in lots), Fraction(0))
        held = sum((abs(q) for q, _ in lots), Fraction(0))
        average = sum((abs(q) * p for q, p in lots), Fraction(0)) / held if held else Fraction(0)
        return quantity, realized, average

    def average_cost_realized(self, symbol: str) -> Fraction:
        quantity, cost, realized = Fraction(0), Fraction(0), Fraction(0)
        for f in sorted(
            (f for f in self.fills.values() if f.symbol == symbol), key=lambda f: f.key
        ):
            signed, price = f.signed, Fraction(f.price)
            if quantity == 0 or (quantity > 0) == (signed > 0):
                quantity += signed
                cost += abs(signed) * price
                continue
            closing = min(abs(quantity), abs(signed))
            released = cost * closing / abs(quantity)
            realized += (1 if quantity > 0 else -1) * (closing * price - released)
            cost -= released
            new = quantity + signed
            if new == 0:
                cost = Fraction(0)
            elif (new > 0) != (quantity > 0):
                cost = abs(new) * price
            quantity = new
        return realized


def _bot_frame(f: ModelFill) -> bytes:
    return json.dumps(
        {
            "type": "fill",
            "fillId": f.fill_id,
            "orderId": f"bot-{f.fill_id}",
            "symbol": f.symbol,
            "side": f.side,
            "price": str(f.price),
            "quantity": str(f.qty),
            "timestamp": f.at_text,
            "commission": str(f.fee),
            "commissionAsset": f.base if f.side == "buy" else f.quote,
        }
    ).encode()


def _order_frame(order_id: str, fills: list[ModelFill]) -> bytes:
    first = fills[0]
    records = [
        {
            "id": f.fill_id,
            "order_id": order_id,
            "execution_price": str(f.price),
            "filled_base_qty": str(f.qty),
            "filled_quote_qty": str(f.qty * f.price),
            "commission_unit": "lovelace"
            if f.base == "ADA" and f.side == "buy"
            else (f.base if f.side == "buy" else f.quote),
            "commission": str(f.fee * 1_000_000)
            if f.base == "ADA" and f.side == "buy"
            else str(f.fee),
            "role": "maker",
            "created_at": f.at_text,
        }
        for f in fills
    ]
    order = {
        "id": order_id,
        "symbol": first.symbol,
        "side": first.side,
        "status": "open",
        "order_execution_records": records,
    }
    return json.dumps({"type": "Account", "sub_type": "order_info", "order": order}).encode()


def _history_frame(f: ModelFill) -> bytes:
    record = {
        "execution_id": f.fill_id,
        "order_id": f"rest-{f.fill_id}",
        "symbol": f.symbol,
        "executed_qty": str(f.qty),
        "side": f.side,
        "fee_charged": str(f.fee),
        "fee_unit": f.base if f.side == "buy" else f.quote,
        "executed_price": str(f.price),
        "created_time": f.at_text,
    }
    return json.dumps({"type": "trading_history", "records": [record]}).encode()


def _snapshot_frame(totals: dict[str, Fraction]) -> bytes:
    lines = ",".join(
        f'{{"asset":"{asset.lower()}","free":{_plain(total)},"locked":0}}'
        for asset, total in sorted(totals.items())
    )
    return f'{{"type":"Account","sub_type":"balance","balance":[{lines}]}}'.encode()


def _plain(value: Fraction) -> str:
    exact = Decimal(value.numerator) / Decimal(value.denominator)
    assert Fraction(exact) == value, "a snapshot total must be a finite decimal"
    return format(exact, "f")


class LedgerMachine(RuleBasedStateMachine):
    """Subclassed per store: ``new_url()`` gives a fresh, empty database."""

    def new_url(self) -> str:
        raise NotImplementedError

    def drop(self) -> None:
        """Remove the database made by ``new_url``."""

    @initialize()
    def open(self) -> None:
        self.url = self.new_url()
        self.services: LedgerServices = open_ledger(self.url)
        self.model = Model()
        self.sent: list[bytes] = []
        #: What each frame sent means to the model: ("fills", [...]) or ("snapshot", totals).
        self.meaning: dict[bytes, tuple[str, Any]] = {}
        self.orders: dict[str, list[ModelFill]] = {}
        self.clock = START
        self.serial = 0
        self.connection = 0

    def teardown(self) -> None:
        if hasattr(self, "services"):
            self.services.close()
            self.drop()

    # --- delivering frames --------------------------------------------------------------

    def _deliver(self, frames: list[bytes]) -> None:
        """Append ``frames`` (one batch), catch up, and apply each to the model in order:
        a fill is booked once, a balance frame is the exchange's word every time."""
        source = f"live:conn-{self.connection}"
        now = self.clock.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        report = self.services.ledger.append(
            [IncomingFrame(raw=raw, source=source, received_at=now) for raw in frames]
        )
        assert report.rejected == 0 and not report.conflicts, report
        self.sent.extend(frames)
        self.services.projector.catch_up()
        for raw in frames:
            kind, payload = self.meaning[raw]
            if kind == "snapshot":
                self.model.snapshot(payload)
            else:
                for fill in payload:
                    self.model.book(fill)

    def _next_fill(
        self, symbol: str, side: str, price: Decimal, qty: Decimal, at: datetime
    ) -> ModelFill:
        self.serial += 1
        fee = (qty if side == "buy" else qty * price) * Decimal("0.001")
        return ModelFill(f"f{self.serial:05d}", symbol, side, price, qty, fee, at)

    @rule(
        symbol=st.sampled_from(sorted(MARKETS)),
        side=st.sampled_from(["buy", "sell"]),
        price=prices,
        qty=quantities,
        as_order=st.booleans(),
        order_slot=st.integers(0, 2),
    )
    def ingest_new(
        self, symbol: str, side: str, price: Decimal, qty: Decimal, as_order: bool, order_slot: int
    ) -> None:
        self.clock += timedelta(seconds=1)
        fill = self._next_fill(symbol, side, price, qty, self.clock)
        if not as_order:
            frame = _bot_frame(fill)
        else:
            order_id = f"order-{symbol}-{side}-{order_slot}"
            self.orders.setdefault(order_id, []).append(fill)
            frame = _order_frame(order_id, self.orders[order_id])
            self.meaning[frame] = ("fills", list(self.orders[order_id]))
        self.meaning.setdefault(frame, ("fills", [fill]))
        self._deliver([frame])

    @rule(data=st.data())
    def ingest_duplicate(self, data: st.DataObject) -> None:
        if self.sent:
            self._deliver([data.draw(st.sampled_from(self.sent))])

    @rule(count=st.integers(1, 8))
    def reconnect_replay(self, count: int) -> None:
        self.connection += 1
        self._deliver(self.sent[-count:])

    @rule()
    def restart(self) -> None:
        self.services.close()
        self.services = open_ledger(self.url)
        self.services.projector.catch_up()

    @rule()
    def rebuild(self) -> None:
        before = self.services.projector.load().state_hash()
        after = self.services.projector.rebuild().state_hash()
        assert after == before

    @rule(
        symbol=st.sampled_from(sorted(MARKETS)),
        side=st.sampled_from(["buy", "sell"]),
        price=prices,
        qty=quantities,
        back=st.integers(1, 40),
    )
    def late_fill_from_rest(
        self, symbol: str, side: str, price: Decimal, qty: Decimal, back: int
    ) -> None:
        # Executed before fills already booked (placed there, later history refolded).
        at = self.clock - timedelta(seconds=back, milliseconds=500)
        fill = self._next_fill(symbol, side, price, qty, at)
        frame = _history_frame(fill)
        self.meaning[frame] = ("fills", [fill])
        self._deliver([frame])

    @rule(deposit=st.sampled_from([Decimal(0), Decimal(0), Decimal("5.5")]))
    def balance_snapshot(self, deposit: Decimal) -> None:
        assets = sorted({a for pair in MARKETS.values() for a in pair})
        totals = {
            a: max(self.model.expected.get(a, Fraction(0)) + Fraction(deposit), Fraction(0))
            for a in assets
        }
        frame = _snapshot_frame(totals)
        self.meaning[frame] = ("snapshot", totals)
        self._deliver([frame])

    # --- invariants ---------------------------------------------------------------------

    @invariant()
    def books_exactly_the_models_fills(self) -> None:
        if not hasattr(self, "services"):
            return
        with self.services.db.reading() as cur:
            cur.execute("SELECT fill_id FROM ledger_fills")
            booked = [r[0] for r in cur.fetchall()]
        assert len(booked) == len(set(booked))
        assert set(booked) == set(self.model.fills)

    @invariant()
    def positions_follow_the_booking_rules(self) -> None:
        if not hasattr(self, "services"):
            return
        positions = self.services.projector.load().book.positions
        symbols = {f.symbol for f in self.model.fills.values()}
        assert set(positions) == symbols
        for symbol in symbols:
            pos = positions[symbol]
            total = sum(
                (f.signed for f in self.model.fills.values() if f.symbol == symbol), Fraction(0)
            )
            quantity, realized, average = self.model.fifo(symbol)
            assert quantity == total
            assert Fraction(pos.average.quantity) == Fraction(pos.fifo.quantity) == total
            assert Fraction(pos.fifo.realized) == realized
            if pos.fifo.lots:
                assert abs(Fraction(pos.fifo.average) - average) < Fraction(1, 10**40)
            reference = self.model.average_cost_realized(symbol)
            assert abs(Fraction(pos.average.realized) - reference) < Fraction(1, 10**40)
            if total == 0:
                assert pos.average.realized == pos.fifo.realized

    @invariant()
    def balances_follow_the_booking_rules(self) -> None:
        if not hasattr(self, "services"):
            return
        assets = self.services.projector.load().balances.assets
        for asset, expected in self.model.expected.items():
            assert Fraction(assets[asset].expected_total) == expected, asset
            assert Fraction(assets[asset].drift_last) == self.model.drift_last.get(asset, 0)

    @invariant()
    def projections_are_caught_up_and_match_a_replay(self) -> None:
        if not hasattr(self, "services"):
            return
        assert self.services.projector.position == self.services.db.head()
        result = verify(self.services.db)
        assert result.ok, result.differences


SETTINGS = settings(
    max_examples=60 if LONG else 20,
    stateful_step_count=40 if LONG else 30,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.fixture(autouse=True)
def small_checkpoints(monkeypatch: pytest.MonkeyPatch) -> None:
    """Position checkpoints after every fill, so late fills from REST refold from them."""
    monkeypatch.setattr(checkpoints, "CHECKPOINT_EVERY", 1)


def test_stateful_model_on_sqlite(tmp_path: Path) -> None:
    class SQLiteMachine(LedgerMachine):
        def new_url(self) -> str:
            return str(Path(tempfile.mkdtemp(dir=tmp_path)) / "ledger.sqlite")

    run_state_machine_as_test(SQLiteMachine, settings=SETTINGS)


@pytest.mark.postgres
def test_stateful_model_on_postgresql(pg_server: str) -> None:
    class PostgresMachine(LedgerMachine):
        def new_url(self) -> str:
            self.dbname = f"ledger_model_{uuid.uuid4().hex[:12]}"
            return f"{pg_server}/{self.dbname}"

        def drop(self) -> None:
            with psycopg.connect(f"{pg_server}/postgres", autocommit=True) as conn:
                conn.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                        sql.Identifier(self.dbname)
                    )
                )

    run_state_machine_as_test(
        PostgresMachine,
        settings=settings(SETTINGS, max_examples=max(4, SETTINGS.max_examples // 3)),
    )
