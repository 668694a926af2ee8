"""Position checkpoints: where a late fill's refold starts.

A fill executed before its symbol's last booked one (a REST heal brings them) is
placed where it belongs by folding the symbol again. Folding from the first fill
costs the whole history per page that carries late fills: quadratic in a long log.
So every ``CHECKPOINT_EVERY`` fills the projector stores the symbol's position
(``ledger_position_checkpoints``: the sort key of the last fill folded in and the
position's record, which holds everything, lots, fees and counts included), and a
refold caused by late fills whose earliest sort key is ``k``

- drops the symbol's checkpoints at or after ``k`` (they no longer describe history),
- starts from the newest checkpoint before ``k`` (or from nothing, when there is none),
- folds only the stored fills after that checkpoint, in execution order, storing new
  checkpoints as it passes multiples of ``CHECKPOINT_EVERY``.

A checkpoint is the position exactly after the fill whose key it is stored under: any
checkpoint before ``k`` is still right, since every fill the page added has a key of at
least ``k``. Checkpoints are derived data like every view: written in the page's
transaction, dropped by ``rebuild``, and left out of the state hash (two stores that
projected the same log in different pages hold them at different keys).
"""

from __future__ import annotations

from collections.abc import Mapping

from adapters.storage import SqlCursor
from projections import views
from projections.positions import PositionBook

#: Fills between two checkpoints of a symbol. A late fill's refold reads at most about
#: this many fills more than the ones after it (in-order booking checkpoints at page ends,
#: so up to a page's fills more); each checkpoint costs one row as large as the position's
#: record (its open FIFO lots included), at most one per symbol per page while booking.
CHECKPOINT_EVERY = 1000


def refold(cur: SqlCursor, book: PositionBook, symbol: str, earliest_late: tuple[str, str]) -> None:
    """Refold ``symbol`` after fills whose smallest sort key is ``earliest_late`` were
    inserted into ``ledger_fills`` (in this transaction) out of execution order."""
    every = CHECKPOINT_EVERY
    views.drop_checkpoints_from(cur, symbol, earliest_late)
    start = views.checkpoint_before(cur, symbol, earliest_late)
    fills = views.fills_of_symbol(cur, symbol, after=start.last_key if start else None)
    # fills_of_symbol fetches each page whole before yielding it, so ``cur`` is free to
    # write a checkpoint between two fills.
    book.refold(
        symbol,
        fills,
        start=start,
        every=every,
        checkpoint=lambda pos: views.save_checkpoint(cur, pos),
    )


def checkpoint_booked(cur: SqlCursor, book: PositionBook, counts_before: Mapping[str, int]) -> None:
    """After a page booked fills in order: checkpoint each symbol whose ``fill_count``
    passed a multiple of ``CHECKPOINT_EVERY`` in the page (``counts_before``: the counts
    when the page began), at the page's last fill of that symbol."""
    every = CHECKPOINT_EVERY
    for symbol, before in sorted(counts_before.items()):
        pos = book.positions.get(symbol)
        if pos is not None and pos.fill_count // every > before // every:
            views.save_checkpoint(cur, pos)
