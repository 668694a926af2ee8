"""Position checkpoints: a late fill refolds its symbol from the last checkpoint before it.

Fills go through the real append path (``trading_history`` frames, as a REST heal brings
them) and the real projector, on a SQLite file and on PostgreSQL, with checkpoints every 5
fills. After each late page the stored position must equal a fold of the symbol's whole
history from zero, every stored checkpoint must be the from-zero fold up to its key, and
at the end the incremental state hash must equal ``rebuild``'s and ``verify`` must agree.
The refold must read only the fills after its checkpoint, not the history.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from strategies import FillSpec, trading_history

from ledger.application import IncomingFrame
from ledger.bootstrap import LedgerServices, open_ledger
from ledger.domain import Fill
from projections import checkpoints, views
from projections.positions import Position, PositionBook
from projections.runner import verify

EVERY = 5
START = datetime(2026, 3, 20, 9, 0, tzinfo=UTC)
SYMBOL = "ADAUSDM"
#: The real query, for the test's own reads while a counting wrapper stands in for it.
FILLS_OF_SYMBOL = views.fills_of_symbol


@pytest.fixture(autouse=True)
def small_checkpoints(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(checkpoints, "CHECKPOINT_EVERY", EVERY)


@pytest.fixture
def services(db_url: str) -> Iterator[LedgerServices]:
    opened = open_ledger(db_url)
    try:
        yield opened
    finally:
        opened.close()


class Fills:
    """Deterministic fills of one account: buys and sells, so lots open and close."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.made = 0

    def at(self, seconds: float, symbol: str = SYMBOL, fill_id: str | None = None) -> FillSpec:
        self.made += 1
        return FillSpec(
            fill_id=fill_id or f"x-{self.rng.randrange(16**8):08x}-{self.made}",
            order_id=f"o-{self.made}",
            symbol=symbol,
            side=self.rng.choice(["buy", "buy", "sell"]),
            price=Decimal(self.rng.randrange(4000, 5000)) / 10000,
            quantity=Decimal(self.rng.randrange(100, 50000)) / 100,
            fee=Decimal(self.rng.randrange(0, 1000)) / 10000,
            executed_at=START + timedelta(seconds=seconds),
        )


def deliver(services: LedgerServices, pages: list[list[FillSpec]]) -> None:
    """Each inner list is one frame, appended and projected as one page."""
    for page in pages:
        raw = trading_history(page)
        services.ledger.append([IncomingFrame(raw=raw, source="rest", received_at="", line=0)])
        services.projector.catch_up()


def stored_fills(services: LedgerServices, symbol: str = SYMBOL) -> list[Fill]:
    with services.db.reading() as cur:
        return list(FILLS_OF_SYMBOL(cur, symbol))


def from_zero(fills: list[Fill]) -> Position:
    book = PositionBook()
    book.refold(SYMBOL, fills)
    return book.positions[SYMBOL]


def stored_checkpoints(services: LedgerServices) -> list[tuple[str, str, dict[str, Any]]]:
    with services.db.reading() as cur:
        cur.execute(
            "SELECT executed_at, fill_id, record FROM ledger_position_checkpoints"
            " WHERE symbol = ? ORDER BY executed_at, fill_id",
            (SYMBOL,),
        )
        return [(at, fid, json.loads(rec)) for at, fid, rec in cur.fetchall()]


def assert_consistent(services: LedgerServices) -> list[tuple[str, str, dict[str, Any]]]:
    """The stored position is the from-zero fold; each checkpoint is the fold to its key."""
    history = stored_fills(services)
    stored = services.projector.load().book.positions[SYMBOL]
    assert stored.to_record() == from_zero(history).to_record()
    assert stored.fill_count == len(history)
    found = stored_checkpoints(services)
    for at, fill_id, record in found:
        upto = [f for f in history if f.sort_key <= (at, fill_id)]
        assert upto and upto[-1].sort_key == (at, fill_id)  # the key of a stored fill
        assert record == from_zero(upto).to_record(), (at, fill_id)
    return found


def test_late_fills_before_between_and_after_checkpoints_fold_like_a_rebuild(
    services: LedgerServices,
) -> None:
    make = Fills(seed=7)
    # 43 fills of ADAUSDM 10 s apart, in pages of 3 and 4; two share a time (ids break the
    # tie); one NIGHTUSDM fill that must be left alone.
    timeline = [make.at(10 * n) for n in range(42)]
    timeline.insert(20, make.at(200, fill_id="x-00000000-tie"))
    night = make.at(15, symbol="NIGHTUSDM")
    pages = [p for i in range(0, 43, 7) for p in (timeline[i : i + 3], timeline[i + 3 : i + 7])]
    pages[1] = [*pages[1], night]
    deliver(services, [p for p in pages if p])
    booked = assert_consistent(services)
    assert len(booked) >= 43 // EVERY - 1  # in-order booking left checkpoints behind
    night_before = services.projector.load().book.positions["NIGHTUSDM"].to_record()

    late_pages = [
        [make.at(5)],  # before the first checkpoint: folded from the first fill
        [make.at(200, fill_id="x-00000000-ti")],  # between checkpoints, tied with two others
        [make.at(405), make.at(133)],  # after the last checkpoint, and one further back
        [make.at(415.5), make.at(416)],  # after every fill but the last
        [make.at(-3), make.at(500)],  # before everything, and a new last fill in the same page
    ]
    for page in late_pages:
        deliver(services, [page])
        found = assert_consistent(services)
        assert found, "the refold left checkpoints behind"
    assert services.projector.load().book.positions["NIGHTUSDM"].to_record() == night_before

    incremental = services.projector.load().state_hash()
    check = verify(services.db)
    assert check.ok, check.differences
    assert check.replayed_hash == incremental
    assert services.projector.rebuild().state_hash() == incremental
    rebuilt = assert_consistent(services)
    assert len(rebuilt) >= len(stored_fills(services)) // EVERY - 1


def test_a_recent_late_fill_reads_only_the_fills_after_its_checkpoint(
    services: LedgerServices, monkeypatch: pytest.MonkeyPatch
) -> None:
    make = Fills(seed=3)
    history = [make.at(10 * n) for n in range(200)]
    deliver(services, [history[i : i + EVERY] for i in range(0, 200, EVERY)])

    reads: list[int] = []

    def counting(*args: Any, **kwargs: Any) -> Iterator[Fill]:
        reads.append(0)
        for fill in FILLS_OF_SYMBOL(*args, **kwargs):
            reads[-1] += 1
            yield fill

    monkeypatch.setattr(views, "fills_of_symbol", counting)

    def bound(late: FillSpec) -> int:
        """A checkpoint at most EVERY fills back, then every fill at or after the late one."""
        key = late.sort_key
        return EVERY + sum(f.sort_key >= key for f in stored_fills(services))

    # A late fill between the last two fills: in-order booking checkpointed every page
    # end (1940 s, 1990 s); the one at 1990 s is dropped, the refold starts at 1940 s and
    # reads 1950 s to 1990 s and the late fill.
    late = make.at(1985)
    deliver(services, [[late]])
    assert reads == [6]
    assert reads[0] <= bound(late)

    # Before every checkpoint: the whole history (the counter counts what a refold reads).
    reads.clear()
    deliver(services, [[make.at(-1)]])
    assert reads == [202]

    # That refold checkpointed every 5th fill (1930 s is the 195th), so the next recent late
    # fill is cheap again: 1940 s to 1990 s and the late fill.
    reads.clear()
    late = make.at(1975)
    deliver(services, [[late]])
    assert reads == [8]
    assert reads[0] <= bound(late)
    assert_consistent(services)
