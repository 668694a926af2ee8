"""The position folds: average cost, FIFO lots, fees and net P&L, worked by hand."""

from __future__ import annotations

from collections import deque
from decimal import Decimal

import pytest

from ledger.domain import Fill, Side
from projections.positions import AverageCost, FifoLots, Position, PositionBook

D = Decimal


def average_after(*steps: tuple[str, str]) -> AverageCost:
    book = AverageCost()
    for qty, price in steps:
        book.apply(D(qty), D(price))
    return book


def fifo_after(*steps: tuple[str, str]) -> FifoLots:
    lots = FifoLots()
    for qty, price in steps:
        lots.apply(D(qty), D(price))
    return lots


def fill(
    fill_id: str,
    side: str,
    qty: str,
    price: str,
    *,
    fee: str = "0",
    fee_asset: str = "",
    at: str = "2026-03-20T09:00:00.000000Z",
    symbol: str = "ADAUSDM",
) -> Fill:
    base, quote = {"ADAUSDM": ("ADA", "USDM"), "NIGHTUSDM": ("NIGHT", "USDM")}[symbol]
    return Fill(
        fill_id=fill_id,
        order_id="ord-1",
        symbol=symbol,
        base_asset=base,
        quote_asset=quote,
        side=Side(side),
        price=D(price),
        quantity=D(qty),
        quote_amount=D(qty) * D(price),
        fee=D(fee),
        fee_asset=fee_asset or (base if side == "buy" else quote),
        role="maker",
        executed_at=at,
    )


# --- average cost -------------------------------------------------------------------------


def test_adding_keeps_a_weighted_average() -> None:
    book = average_after(("10", "100"), ("30", "110"))
    assert book.quantity == 40
    assert book.average == D("107.5")  # (10x100 + 30x110) / 40
    assert book.realized == 0


def test_reducing_a_long_realizes_against_the_average_and_keeps_it() -> None:
    book = average_after(("10", "100"), ("10", "110"), ("-5", "120"))
    assert book.quantity == 15
    assert book.realized == D("75")  # 5 x (120 - 105)
    assert book.average == D("105")


def test_reducing_a_long_at_a_loss() -> None:
    book = average_after(("4", "2.5"), ("-3", "2"))
    assert book.realized == D("-1.5")
    assert book.average == D("2.5")


def test_short_realizes_the_negative() -> None:
    book = average_after(("-10", "100"), ("4", "90"))
    assert book.quantity == -6
    assert book.realized == D("40")  # a short gains when it buys back cheaper
    assert book.average == D("100")
    book.apply(D("6"), D("105"))
    assert book.realized == D("10")  # 40 - 6 x 5
    assert book.quantity == 0


def test_adding_to_a_short_keeps_a_weighted_average() -> None:
    book = average_after(("-10", "100"), ("-30", "80"))
    assert (book.quantity, book.average) == (D(-40), D("85"))


def test_flip_long_to_short_opens_the_remainder_at_the_fill_price() -> None:
    # +10 then sell 15 leaves -5, opened at the fill price.
    book = average_after(("10", "100"), ("-15", "120"))
    assert book.quantity == -5
    assert book.average == D("120")
    assert book.realized == D("200")  # the 10 closed: 10 x (120 - 100)
    assert book.cost == D("600")


def test_flip_short_to_long_opens_the_remainder_at_the_fill_price() -> None:
    book = average_after(("-3", "50"), ("8", "40"))
    assert book.quantity == 5
    assert book.average == D("40")
    assert book.realized == D("30")  # 3 x (50 - 40) on a short


def test_flat_resets_the_average_to_zero() -> None:
    book = average_after(("10", "100"), ("-10", "90"))
    assert book.quantity == 0
    assert book.average == 0
    assert book.cost == 0
    assert book.realized == D("-100")
    # Reopening starts from the new price alone, not a blend with the old average.
    book.apply(D("2"), D("7"))
    assert book.average == D("7")


def test_a_partial_close_of_a_non_terminating_average_still_closes_exactly() -> None:
    # Average 5/3: a partial release is a rounded quotient, but the whole basis is
    # released when the position closes, so realized is exactly proceeds - cost.
    book = average_after(("1", "1"), ("2", "2"), ("-1", "5"), ("-2", "5"))
    assert book.quantity == 0
    assert book.realized == D("10")  # 15 - 5


def test_a_partial_close_then_a_full_close_realizes_exactly_proceeds_minus_cost() -> None:
    # Average 408/67 does not terminate: the partial release is a rounded quotient, and
    # the basis left after it (408 - 30.4477...) has more digits than a 60-digit context
    # holds. Sums must not round, or the flat total misses proceeds - cost by 1E-58.
    steps = (("36", "1"), ("31", "12"), ("-5", "7"), ("-62", "7"))
    book = average_after(*steps)
    lots = fifo_after(*steps)
    assert book.quantity == lots.quantity == 0
    assert book.realized == lots.realized == D("61")  # 469 - 408


def test_flat_realized_is_exact_after_large_earlier_profits() -> None:
    steps = (
        ("1000000", "0.4512"),
        ("-1000000", "987654.3219"),
        ("3", "0.7"),
        ("7", "0.45"),
        ("-1", "0.5"),
        ("-3", "0.61"),
        ("-6", "0.39"),
    )
    book = average_after(*steps)
    lots = fifo_after(*steps)
    assert book.quantity == lots.quantity == 0
    proceeds = D("987654321900") + D("0.5") + D("1.83") + D("2.34")
    cost = D("451200") + D("2.1") + D("3.15")
    assert book.realized == lots.realized == proceeds - cost


# --- FIFO ------------------------------------------------------------------------------


def test_fifo_consumes_the_oldest_lot_first() -> None:
    lots = fifo_after(("5", "1"), ("5", "2"), ("-7", "3"))
    assert lots.realized == D("12")  # 5 x (3 - 1) + 2 x (3 - 2)
    assert list(lots.lots) == [(D("3"), D("2"))]
    assert lots.quantity == 3
    assert lots.average == D("2")


def test_fifo_and_average_differ_while_open_and_agree_once_flat() -> None:
    steps = [("5", "1"), ("5", "2"), ("-7", "3")]
    book, lots = average_after(*steps), fifo_after(*steps)
    assert (book.realized, lots.realized) == (D("10.5"), D("12"))
    book.apply(D("-3"), D("3"))
    lots.apply(D("-3"), D("3"))
    assert book.realized == lots.realized == D("15")


def test_fifo_flip_opens_a_short_lot_at_the_fill_price() -> None:
    lots = fifo_after(("10", "100"), ("-15", "120"))
    assert list(lots.lots) == [(D("-5"), D("120"))]
    assert lots.realized == D("200")


def test_fifo_short_lots() -> None:
    lots = fifo_after(("-2", "10"), ("-2", "12"), ("3", "11"))
    assert lots.realized == D("-1")  # short: 2 x (10 - 11) + 1 x (12 - 11)
    assert list(lots.lots) == [(D("-1"), D("12"))]
    assert lots.average == D("12")


def test_fifo_empty_average_is_zero() -> None:
    assert FifoLots().average == 0
    assert fifo_after(("1", "2"), ("-1", "3")).lots == deque()


# --- a position: fills, fees, net -----------------------------------------------------------


def test_fees_do_not_move_the_position_and_are_tracked_per_asset() -> None:
    pos = Position("ADAUSDM", "ADA", "USDM")
    pos.apply(fill("f1", "buy", "100", "0.5", fee="0.1", at="2026-03-20T09:00:01.000000Z"))
    pos.apply(fill("f2", "sell", "40", "0.6", fee="0.024", at="2026-03-20T09:00:02.000000Z"))
    assert pos.quantity == 60
    assert pos.fees == {"ADA": D("0.1"), "USDM": D("0.024")}
    assert (pos.buy_quantity, pos.sell_quantity, pos.fill_count) == (D(100), D(40), 2)
    assert pos.realized_gross("average") == D("4")  # 40 x (0.6 - 0.5)
    # Net, in the quote asset: gross - quote fees - base fees x the paying fill's price.
    assert pos.realized_net("average") == D("4") - D("0.024") - D("0.1") * D("0.5")
    assert pos.realized_net("fifo") == D("4") - D("0.074")


def test_a_fee_in_a_third_asset_is_shown_but_not_netted() -> None:
    pos = Position("NIGHTUSDM", "NIGHT", "USDM")
    pos.apply(fill("f1", "buy", "10", "0.05", fee="0.3", fee_asset="ADA", symbol="NIGHTUSDM"))
    assert pos.fees == {"ADA": D("0.3")}
    assert pos.fees_in_quote == 0


def test_average_and_fifo_side_by_side_in_one_position() -> None:
    pos = Position("ADAUSDM", "ADA", "USDM")
    for n, (side, qty, price) in enumerate(
        [("buy", "5", "1"), ("buy", "5", "2"), ("sell", "7", "3")]
    ):
        pos.apply(fill(f"f{n}", side, qty, price, at=f"2026-03-20T09:00:0{n}.000000Z"))
    assert pos.avg_entry_price("average") == D("1.5")
    assert pos.avg_entry_price("fifo") == D("2")
    assert (pos.realized_gross("average"), pos.realized_gross("fifo")) == (D("10.5"), D("12"))


def test_record_round_trip_is_exact() -> None:
    pos = Position("ADAUSDM", "ADA", "USDM")
    pos.apply(fill("f1", "buy", "3", "1.1", fee="0.003", at="2026-03-20T09:00:01.000000Z"))
    pos.apply(fill("f2", "sell", "1", "1.3", fee="0.0013", at="2026-03-20T09:00:02.000000Z"))
    again = Position.from_record(pos.to_record())
    assert again == pos
    assert again.to_record() == pos.to_record()


# --- execution order ---------------------------------------------------------------------


def test_book_refuses_a_late_fill_and_refold_places_it_where_it_belongs() -> None:
    early = fill("a", "buy", "10", "100", at="2026-03-20T09:00:01.000000Z")
    late = fill("b", "sell", "15", "120", at="2026-03-20T09:00:02.000000Z")
    middle = fill("c", "buy", "10", "90", at="2026-03-20T09:00:01.500000Z")
    book = PositionBook()
    assert book.book(early) and book.book(late)
    assert not book.book(middle)  # older than the symbol's last fill
    assert book.positions["ADAUSDM"].fill_count == 2  # ...and not folded in
    book.refold("ADAUSDM", [early, middle, late])

    in_order = PositionBook()
    for f in (early, middle, late):
        assert in_order.book(f)
    assert book.positions["ADAUSDM"].to_record() == in_order.positions["ADAUSDM"].to_record()
    pos = book.positions["ADAUSDM"]
    assert pos.quantity == 5
    assert pos.realized_gross("average") == D("375")  # 15 x (120 - 95)


def test_equal_executed_times_are_ordered_by_fill_id() -> None:
    at = "2026-03-20T09:00:01.000000Z"
    book = PositionBook()
    assert book.book(fill("b", "buy", "1", "1", at=at))
    assert not book.book(fill("a", "buy", "1", "2", at=at))
    assert book.book(fill("c", "buy", "1", "3", at=at))


def test_refold_with_no_fills_drops_the_symbol() -> None:
    book = PositionBook()
    book.book(fill("a", "buy", "1", "1"))
    book.refold("ADAUSDM", [])
    assert book.positions == {}


@pytest.mark.parametrize("method", ["average", "fifo"])
def test_empty_position_reports_zeros(method: str) -> None:
    pos = Position("ADAUSDM", "ADA", "USDM")
    assert (pos.quantity, pos.avg_entry_price(method), pos.realized_net(method)) == (
        D(0),
        D(0),
        D(0),
    )
