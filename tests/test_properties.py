"""Property tests: generated fills, delivered the messy ways a real stream delivers them,
through the real append path and projector on a real SQLite file.

Every example gets its own database file (hypothesis runs many examples inside one
test call, so function-scoped fixtures would be shared between them). Examples are
few and derandomized so the file is quick and repeatable.
"""

from __future__ import annotations

import random
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from strategies import (
    BAD_FRAMES,
    MARKETS,
    FillSpec,
    Item,
    OraclePosition,
    OrderSpec,
    Stream,
    batch_splits,
    bot_fill,
    execution_order,
    fill_lists,
    oracle_balances,
    oracle_positions,
    order_info,
    orders_from,
    prices,
    quantities,
    streams,
    trading_history,
)

from adapters.deltadefi.frames import parse
from adapters.deltadefi.session import Session
from ledger.application import AppendReport, IncomingFrame
from ledger.bootstrap import LedgerServices, open_ledger
from projections import checkpoints
from projections.positions import AverageCost, FifoLots, Position
from projections.runner import Projector, verify
from projections.state import LedgerState

#: No "explain" phase: when a property fails, the shrunk example is what matters, and
#: explaining it costs minutes on a busy machine.
PHASES = (Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink)

DB_EXAMPLES = settings(
    max_examples=50,
    deadline=None,
    derandomize=True,
    database=None,
    phases=PHASES,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

#: Average cost keeps an exact basis but a partial close releases a 60-digit quotient:
#: while a position is open its realized figure may differ from the exact one by this much.
OPEN_TOLERANCE = Fraction(1, 10**30)

RECEIVED_AT = "2026-03-20T12:00:00.000000Z"


@pytest.fixture(autouse=True, scope="module")
def small_checkpoints() -> Iterator[None]:
    """Position checkpoints every 2 fills (module-wide: hypothesis examples share fixtures),
    so the generated streams' late fills refold from checkpoints, not only from zero."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(checkpoints, "CHECKPOINT_EVERY", 2)
        yield


@contextmanager
def fresh_ledger() -> Iterator[LedgerServices]:
    with tempfile.TemporaryDirectory(prefix="ledger-prop-") as folder:
        services = open_ledger(str(Path(folder) / "ledger.sqlite"))
        try:
            yield services
        finally:
            services.close()


def ingest_capture(
    services: LedgerServices,
    frames: Sequence[bytes],
    start: int,
    stop: int,
    source: str = "capture.jsonl",
) -> AppendReport:
    """Append lines ``start..stop`` of a capture (numbered from 1), as ``ledger ingest`` does."""
    numbered = [(n + 1, frames[n]) for n in range(start, stop)]
    return services.ledger.ingest_lines(numbered, source, received_at=lambda: RECEIVED_AT)


def append_live(services: LedgerServices, frames: Sequence[bytes]) -> AppendReport:
    """Append frames as a live connection does: no line numbers, one transaction."""
    return services.ledger.append(
        [IncomingFrame(raw=f, source="wss", received_at=RECEIVED_AT) for f in frames]
    )


def booked_fills(items: Sequence[Item]) -> dict[str, FillSpec]:
    """The fills the booking rule books: each id the first time a good frame carries it."""
    booked: dict[str, FillSpec] = {}
    for item in items:
        if not item.bad:
            for fill in item.fills:
                booked.setdefault(fill.fill_id, fill)
    return booked


def fill_ids_in_db(services: LedgerServices) -> list[str]:
    with services.db.reading() as cur:
        cur.execute("SELECT fill_id FROM ledger_fills ORDER BY fill_id")
        return [row[0] for row in cur.fetchall()]


def assert_positions_match(positions: Mapping[str, Position], fills: Sequence[FillSpec]) -> None:
    """The projected positions against the exact oracle, field by field."""
    oracle = oracle_positions(fills)
    assert set(positions) == set(oracle)
    for symbol, pos in positions.items():
        want: OraclePosition = oracle[symbol]
        signed = sum((f.signed for f in fills if f.symbol == symbol), Decimal(0))
        assert pos.quantity == signed, symbol  # quantity == sum of signed fills
        assert pos.average.quantity == pos.fifo.quantity == signed, symbol
        assert Fraction(pos.fifo.realized) == want.realized_fifo, symbol
        assert [(Fraction(q), Fraction(p)) for q, p in pos.fifo.lots] == [
            (q, p) for q, p in want.lots
        ], symbol
        assert {a: Fraction(v) for a, v in pos.fees.items()} == want.fees, symbol
        assert Fraction(pos.fees_in_quote) == want.fees_in_quote, symbol
        assert (Fraction(pos.buy_quantity), Fraction(pos.sell_quantity)) == (
            want.buys,
            want.sells,
        ), symbol
        assert pos.fill_count == want.count, symbol
        if signed == 0:
            # Flat: both methods give exactly proceeds - cost, as Decimal ==.
            assert pos.average.realized == pos.fifo.realized, symbol
            assert Fraction(pos.average.realized) == want.realized_average, symbol
            assert pos.average.average == 0 and pos.average.cost == 0, symbol
        else:
            assert abs(Fraction(pos.average.realized) - want.realized_average) < OPEN_TOLERANCE
            assert abs(Fraction(pos.average.average) - want.average) < OPEN_TOLERANCE


# --- the pure folds, step by step -----------------------------------------------------------

steps = st.lists(
    st.one_of(
        st.tuples(st.sampled_from((1, -1)), quantities, prices),
        # "close": a fill of exactly the opposite of what is held, so flat happens often.
        st.tuples(st.just(0), st.just(Decimal(0)), prices),
    ),
    min_size=1,
    max_size=40,
)


@settings(max_examples=300, deadline=None, derandomize=True, database=None, phases=PHASES)
@given(steps)
def test_average_and_fifo_agree_on_quantity_always_and_on_realized_whenever_flat(
    moves: list[tuple[int, Decimal, Decimal]],
) -> None:
    average, fifo, oracle = AverageCost(), FifoLots(), OraclePosition("B", "Q")
    for sign, qty, price in moves:
        signed = -average.quantity if sign == 0 else sign * qty
        if signed == 0:
            continue
        average.apply(signed, price)
        fifo.apply(signed, price)
        oracle.apply(Fraction(signed), Fraction(price))
        assert average.quantity == fifo.quantity == oracle.quantity
        assert Fraction(fifo.realized) == oracle.realized_fifo
        if average.quantity == 0:
            assert average.realized == fifo.realized
            assert Fraction(average.realized) == oracle.realized_average
            assert average.average == 0 == fifo.average
        else:
            assert abs(Fraction(average.realized) - oracle.realized_average) < OPEN_TOLERANCE
            assert abs(Fraction(average.average) - oracle.average) < OPEN_TOLERANCE
            # The open position's sign and cost basis are consistent.
            assert average.cost >= 0


# --- through the log ---------------------------------------------------------------------------


@DB_EXAMPLES
@given(stream=streams(bad=True), data=st.data())
def test_duplicated_cumulative_interleaved_frames_book_exactly_the_unique_fills(
    stream: Stream, data: st.DataObject
) -> None:
    splits = data.draw(batch_splits(len(stream.items)))
    live = data.draw(st.booleans())
    frames = stream.frames
    with fresh_ledger() as services:
        total = AppendReport()
        for start, stop in splits:
            report = (
                append_live(services, frames[start:stop])
                if live
                else ingest_capture(services, frames, start, stop)
            )
            total.add(report)
            services.projector.catch_up()
        state = services.projector.load()
        booked = fill_ids_in_db(services)
        rejects = _count_rejects(services)

    carried = [f for item in stream.items if not item.bad for f in item.fills]
    assert total.appended == len(frames)
    assert total.fills_new == len(stream.fill_ids)
    assert total.fills_duplicate == len(carried) - len(stream.fill_ids)
    assert total.conflicts == []
    assert total.rejected == rejects == sum(item.bad for item in stream.items)
    assert booked == sorted(stream.fill_ids)
    assert state.fills.count == len(stream.fill_ids)
    assert_positions_match(state.book.positions, stream.fills)


def _count_rejects(services: LedgerServices) -> int:
    with services.db.reading() as cur:
        cur.execute("SELECT COUNT(*) FROM ledger_rejects")
        row = cur.fetchone()
    assert row is not None
    return int(row[0])


@DB_EXAMPLES
@given(stream=streams(snapshots=True, bad=True), data=st.data())
def test_rebuilt_state_hash_equals_the_incremental_one(stream: Stream, data: st.DataObject) -> None:
    splits = data.draw(batch_splits(len(stream.items)))
    page_size = data.draw(st.integers(1, 9))
    frames = stream.frames
    with fresh_ledger() as services:
        projector = Projector(services.db, parse=parse, page_size=page_size)
        for start, stop in splits:
            ingest_capture(services, frames, start, stop)
            projector.catch_up()
        incremental = projector.load().state_hash()

        # Ingesting the same capture again appends nothing and changes nothing.
        again = ingest_capture(services, frames, 0, len(frames))
        assert (again.appended, again.already_ingested) == (0, len(frames))
        projector.catch_up()
        assert projector.load().state_hash() == incremental

        check = verify(services.db)
        assert check.ok, check.differences
        assert check.stored_hash == incremental == check.replayed_hash

        rebuilt = projector.rebuild().state_hash()
        assert rebuilt == incremental
        assert services.projector.load().state_hash() == incremental

    # One clean run of the whole capture, in one batch, lands on the same hash.
    with fresh_ledger() as services:
        services.ingest_and_project(enumerate(frames, start=1), "capture.jsonl")
        assert services.projector.load().state_hash() == incremental


@DB_EXAMPLES
@given(stream=streams(flatten=True), data=st.data())
def test_positions_follow_the_booking_rules_after_every_catch_up(
    stream: Stream, data: st.DataObject
) -> None:
    splits = data.draw(batch_splits(len(stream.items)))
    frames = stream.frames
    with fresh_ledger() as services:
        for start, stop in splits:
            ingest_capture(services, frames, start, stop)
            services.projector.catch_up()
            so_far = list(booked_fills(stream.items[:stop]).values())
            assert_positions_match(services.projector.load().book.positions, so_far)
        final = services.projector.load()
    # Every symbol was closed out at the end: all flat, both methods agree exactly.
    for symbol, pos in final.book.positions.items():
        assert pos.quantity == 0, symbol
        assert pos.realized_gross("average") == pos.realized_gross("fifo"), symbol
        assert pos.realized_net("average") == pos.realized_net("fifo"), symbol
        proceeds = sum(
            (
                Fraction(f.quote_amount)
                for f in stream.fills
                if f.symbol == symbol and f.side == "sell"
            ),
            Fraction(0),
        )
        cost = sum(
            (
                Fraction(f.quote_amount)
                for f in stream.fills
                if f.symbol == symbol and f.side == "buy"
            ),
            Fraction(0),
        )
        assert Fraction(pos.realized_gross("fifo")) == proceeds - cost, symbol


@DB_EXAMPLES
@given(stream=streams(snapshots=True, bad=True), data=st.data())
def test_balances_follow_the_booking_rules(stream: Stream, data: st.DataObject) -> None:
    splits = data.draw(batch_splits(len(stream.items)))
    frames = stream.frames
    with fresh_ledger() as services:
        for start, stop in splits:
            append_live(services, frames[start:stop])
            services.projector.catch_up()
            _assert_balances(services.projector.load(), stream.items[:stop])


def _assert_balances(state: LedgerState, items: Sequence[Item]) -> None:
    want = oracle_balances(items)
    got = state.balances.assets
    assert set(got) == set(want)
    for asset, bal in got.items():
        expected = want[asset]
        assert (Fraction(bal.free), Fraction(bal.locked)) == (expected.free, expected.locked), asset
        assert Fraction(bal.expected_total) == expected.expected_total, asset
        assert Fraction(bal.drift_last) == expected.drift_last, asset
        assert Fraction(bal.drift_sum) == expected.drift_sum, asset
        assert bal.snapshots == expected.snapshots, asset


@st.composite
def late_deliveries(draw: st.DrawFn) -> tuple[list[bytes], list[bytes], list[FillSpec]]:
    """The same fills as single-fill frames, once in execution order and once shuffled."""
    fills = draw(fill_lists(min_fills=2, max_fills=16))
    orders = draw(orders_from(fills))
    fills = execution_order(f for order in orders for f in order.fills)
    frames = []
    for fill in fills:
        fmt = draw(st.sampled_from(("order_info", "history", "bot")))
        if fmt == "order_info":
            frames.append(_single_record_order(orders, fill))
        elif fmt == "history":
            frames.append(trading_history([fill]))
        else:
            frames.append(bot_fill(fill))
    shuffled = draw(st.permutations(frames))
    return frames, list(shuffled), fills


def _single_record_order(orders: Sequence[OrderSpec], fill: FillSpec) -> bytes:
    """An ``order_info`` frame of the fill's order carrying just this one record."""
    order = next(o for o in orders if fill in o.fills)
    return order_info(OrderSpec(order.order_id, order.symbol, order.side, (fill,)), 1)


@DB_EXAMPLES
@given(deliveries=late_deliveries(), data=st.data())
def test_late_fills_give_the_same_positions_as_the_in_order_stream(
    deliveries: tuple[list[bytes], list[bytes], list[FillSpec]], data: st.DataObject
) -> None:
    in_order, shuffled, fills = deliveries
    states = []
    for frames in (in_order, shuffled):
        splits = data.draw(batch_splits(len(frames)))
        with fresh_ledger() as services:
            for start, stop in splits:
                ingest_capture(services, frames, start, stop)
                services.projector.catch_up()
            states.append(services.projector.load())
    ordered, late = (s.canonical() for s in states)
    assert late["positions"] == ordered["positions"]
    assert late["balances"] == ordered["balances"]
    assert_positions_match(states[1].book.positions, fills)


@settings(max_examples=12, deadline=None, derandomize=True, database=None, phases=PHASES)
@given(
    seed=st.integers(0, 10_000),
    repeats=st.lists(st.integers(0, 10_000), max_size=30),
    shuffle=st.randoms(use_true_random=False),
)
def test_generated_sessions_book_each_exchange_fill_once_however_delivered(
    seed: int, repeats: list[int], shuffle: random.Random
) -> None:
    session = Session(seed, duplicate_rate=0.1, snapshot_every=20)
    frames = [f.encode() for f in session.frames(300)]
    frames += [frames[r % len(frames)] for r in repeats]  # reconnect replays, verbatim
    frames += list(BAD_FRAMES)
    shuffle.shuffle(frames)
    with fresh_ledger() as services:
        report = services.ingest_and_project(enumerate(frames, start=1), "session.jsonl")
        booked = fill_ids_in_db(services)
    assert booked == sorted(session.truth.fills)
    assert report.fills_new == len(session.truth.fills)
    assert report.rejected == len(BAD_FRAMES)


def test_markets_used_by_the_strategies_split_as_declared() -> None:
    # Guards the strategies themselves: their symbols must mean what the oracle assumes.
    from adapters.deltadefi.units import split_symbol

    for symbol, (base, quote) in MARKETS.items():
        assert split_symbol(symbol) == (symbol, base, quote)
