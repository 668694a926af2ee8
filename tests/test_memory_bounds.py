"""Memory that a long-lived ``ledger run`` keeps is bounded (issue 4, the soak).

Each memo cache on the parse and append path is fed more distinct keys than its bound
(the bounds are shrunk for the test, the mechanism is the one in use) and must never
hold more than its bound; a symbol's refold must read its history a page at a time,
in the same order and to the same position as a fold of the whole list.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from adapters.deltadefi import fast_path, frames
from adapters.deltadefi.session import Session
from adapters.storage import SqlCursor
from ledger import application, events
from ledger.application import IncomingFrame
from ledger.bootstrap import open_ledger
from ledger.domain import Fill, Side
from projections import views
from projections.positions import PositionBook
from projections.state import fill_row


def _session_frames(count: int, seed: int = 11) -> list[bytes]:
    return [raw.encode() for raw in Session(seed).frames(count)]


@pytest.fixture
def small_parser_memories(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The parser's memories with small bounds, empty before and after the test."""
    fast_path.forget()
    monkeypatch.setattr(fast_path, "_RECENT_LIMIT", 50)
    monkeypatch.setattr(fast_path, "_MEMO_LIMIT", 120)
    yield
    fast_path.forget()


def test_the_parser_memories_never_exceed_their_bounds(small_parser_memories: None) -> None:
    raws = _session_frames(1500)
    distinct_fills: set[str] = set()
    most = {"recent": 0, "fills": 0, "orders": 0}
    for raw in raws:
        parsed = frames.parse(raw)
        distinct_fills.update(f.fill_id for f in parsed.fills)
        most["recent"] = max(most["recent"], len(fast_path._recent))
        most["fills"] = max(most["fills"], len(fast_path._fills))
        most["orders"] = max(most["orders"], len(fast_path._orders))
    # The session is long enough to overflow every memory many times over...
    assert len(set(raws)) > 10 * 50 and len(distinct_fills) > 5 * 120
    # ...and each was full at some point, yet never held more than its bound.
    assert most == {"recent": 50, "fills": 120, "orders": 120}
    # Answers given from memory are the general reader's (the memo changes no verdict).
    for raw in raws[-50:]:
        assert frames.parse(raw) == frames._refuse_unsafe_text(frames._read(raw))


def test_the_remembered_frames_stay_within_their_byte_budget(
    small_parser_memories: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fast_path, "_RECENT_BUDGET_BYTES", 20_000)
    most = 0
    raws = _session_frames(800, seed=3)
    for raw in raws:
        frames.parse(raw)
        held = sum(len(k) for k in fast_path._recent)
        assert held == fast_path._recent_bytes <= 20_000
        most = max(most, held)
    # It filled to within one frame of the budget, which (not the count, 50) was the bound.
    assert most > 20_000 - max(map(len, raws)) and len(fast_path._recent) < 50
    fast_path.forget()
    assert fast_path._recent_bytes == 0 and not fast_path._recent


def test_a_frame_too_large_to_remember_is_not_kept(small_parser_memories: None) -> None:
    raw = _session_frames(5)[0]
    huge = raw[:-1] + b', "pad": "' + b"x" * fast_path._RECENT_MAX_BYTES + b'"}'
    frames.parse(huge)
    assert fast_path.recall(huge) is None
    frames.parse(raw)
    assert fast_path.recall(raw) is not None


def test_claim_ids_are_remembered_within_a_fixed_bound() -> None:
    info = events.claim_id.cache_info()
    assert info.maxsize is not None and 0 < info.maxsize <= 100_000


class _WatchedDict(dict[str, Any]):
    """A dict that remembers the most entries it ever held, and how often it was emptied."""

    most = 0
    clears = 0

    def __setitem__(self, key: str, value: Any) -> None:
        super().__setitem__(key, value)
        self.most = max(self.most, len(self))

    def clear(self) -> None:
        self.clears += 1
        super().clear()


def test_the_append_path_digest_memory_never_exceeds_its_bound(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(application, "DIGEST_MEMORY", 40)
    services = open_ledger(sqlite_url)
    digests = services.ledger.reader._digests = _WatchedDict()
    try:
        raws = _session_frames(600, seed=5)
        for start in range(0, len(raws), 25):
            batch = [
                IncomingFrame(raw=raw, source="test", received_at="2026-03-20T09:00:00Z", line=n)
                for n, raw in enumerate(raws[start : start + 25], start=start + 1)
            ]
            services.ledger.append(batch)
        assert services.ledger.append([]).log_position > 0
        assert digests.most == 40 and digests.clears > 0  # it filled, and was cleared, not grown
    finally:
        services.close()


# --- refolds stream a symbol's history --------------------------------------------------


def _fill(n: int, at: str, side: str = "buy") -> Fill:
    qty, price = Decimal(1 + n % 7), Decimal("0.45") + Decimal(n % 5) / 100
    return Fill(
        fill_id=f"f-{n:05d}",
        order_id=f"o-{n // 3}",
        symbol="ADAUSDM",
        base_asset="ADA",
        quote_asset="USDM",
        side=Side(side),
        price=price,
        quantity=qty,
        quote_amount=qty * price,
        fee=Decimal("0.001"),
        fee_asset="ADA" if side == "buy" else "USDM",
        role="maker",
        executed_at=at,
    )


class _CountingCursor:
    """A cursor that remembers the largest result it handed out."""

    def __init__(self, inner: SqlCursor) -> None:
        self.inner = inner
        self.largest = 0

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        self.inner.execute(sql, params)

    def fetchall(self) -> list[tuple[Any, ...]]:
        rows = self.inner.fetchall()
        self.largest = max(self.largest, len(rows))
        return rows


def test_a_refold_reads_a_page_at_a_time_in_execution_order(db_url: str, tmp_path: Path) -> None:
    # 103 fills of one symbol, many sharing an execution time (ties are ordered by fill id),
    # inserted out of order; one fill of another symbol that must not be read.
    fills = [
        _fill(n, f"2026-03-20T09:00:{n // 4:02d}.000000Z", "buy" if n % 3 else "sell")
        for n in range(103)
    ]
    other = replace(
        _fill(999, "2026-03-20T09:00:00.000000Z"), symbol="NIGHTUSDM", base_asset="NIGHT"
    )
    services = open_ledger(db_url)
    try:
        with services.db.transaction() as cur:
            rows = [fill_row(f, n + 1) for n, f in enumerate(reversed(fills))]
            views.insert_fills(cur, [*rows, fill_row(other, 500)])
        with services.db.reading() as cur:
            counting = _CountingCursor(cur)
            streamed = list(views.fills_of_symbol(counting, "ADAUSDM", page=10))  # type: ignore[arg-type]
            assert counting.largest == 10
            whole = list(views.fills_of_symbol(cur, "ADAUSDM", page=1000))
            book_streamed, book_whole = PositionBook(), PositionBook()
            book_streamed.refold("ADAUSDM", views.fills_of_symbol(cur, "ADAUSDM", page=7))
            book_whole.refold("ADAUSDM", whole)
    finally:
        services.close()
    expected = sorted(fills, key=lambda f: (f.executed_at, f.fill_id))
    assert streamed == whole == expected
    assert (
        book_streamed.positions["ADAUSDM"].to_record()
        == book_whole.positions["ADAUSDM"].to_record()
    )
    assert book_whole.positions["ADAUSDM"].fill_count == 103


def test_a_refold_of_nothing_removes_the_position() -> None:
    book = PositionBook()
    book.book(_fill(1, "2026-03-20T09:00:00.000000Z"))
    book.refold("ADAUSDM", iter(()))
    assert "ADAUSDM" not in book.positions
