"""Running the projections over the log: catch up, rebuild, replay, verify.

The projector reads the log a page at a time from its tracking position,
re-reads every frame with today's parser, folds it into the state and writes
the page's view rows and the new tracking position in one transaction: each
event is applied exactly once, and a crash loses at most an uncommitted page
that the next catch-up redoes. Two projectors racing on one database are safe:
the tracking row is written first and only moves forward, so the loser's page
fails, it reloads the state and carries on; a projector whose loaded state is
older than the stored views (another one committed a shorter page meanwhile)
fails its page the same way.

A fill is booked the first time its id appears in the log (in log order). The
append path claims fills with the same rule, so booked fills and claims agree.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import localcontext
from pathlib import Path
from typing import Any

from eventsourcing.persistence import IntegrityError

from adapters.deltadefi.frames import parse as parse_frame
from adapters.deltadefi.frames import read as read_frame
from adapters.storage import Database, SqlCursor, SQLiteDatabase, parse_url
from ledger.domain import Fill, ParsedFrame
from ledger.events import split_state
from projections import checkpoints, views
from projections.positions import EXACT
from projections.read_ahead import CannotReadAhead, PageFrame, ReadAhead, ReadPage, read_frames
from projections.state import (
    LedgerState,
    Tally,
    differences,
    fill_row,
    hashed_fill,
    hashed_reject,
)

Parser = Callable[[bytes], ParsedFrame]
Progress = Callable[[int, int], None]
#: The page of the log right after a position, if this process already holds it exactly
#: (its every event, read and parsed as ``read_frames`` would), else None.
KnownPages = Callable[[int], ReadPage | None]

#: Consecutive refusals of one page (no other projector advancing) before giving up.
MAX_REFUSALS = 20

PAGE_SIZE = 2000
#: How long a catch-up waits for a database that went away (restarting, a cut connection).
RETRY_WINDOW_S = 120.0
#: A catch-up at least this many events behind reads and parses ahead in a second process.
READ_AHEAD_MIN_EVENTS = 20_000


@dataclass(frozen=True)
class Window:
    """Which part of the log a replay sees: everything, or the state as of a point.

    ``stop``: log positions up to and including it. ``fills_until``: fills executed
    at or before this RFC 3339 time. ``received_until``: balance snapshots received
    at or before it.
    """

    stop: int | None = None
    fills_until: str | None = None
    received_until: str | None = None


class Projector:
    def __init__(
        self,
        log: Database,
        views_db: Database | None = None,
        *,
        parse: Parser = parse_frame,
        window: Window = Window(),
        page_size: int = PAGE_SIZE,
        read_ahead: bool = False,
        known: KnownPages | None = None,
    ) -> None:
        """``read_ahead``: let long catch-ups parse in a second process (see
        ``projections.read_ahead``); for one-off replays, not for a process that forks
        children of its own. ``known``: pages of the log this process already holds,
        read and parsed, offered before each read of the log (see ``KnownPages``)."""
        self.log = log
        self.read_ahead = read_ahead
        self.known = known
        self._committed: tuple[LedgerState, int] | None = None
        self.views_db = views_db or log
        self.parse = parse
        self.window = window
        self.page_size = page_size
        views.create_tables(self.views_db)

    @property
    def position(self) -> int:
        return self.views_db.tracking_position(views.PROJECTION_NAME)

    def load_at_position(self) -> tuple[LedgerState, int]:
        """The stored state and the tracking position it belongs to, read in one snapshot."""
        with self.views_db.reading() as cur:
            return views.load_state(cur), self.views_db.tracking_position_in(
                cur, views.PROJECTION_NAME
            )

    def load(self) -> LedgerState:
        with self.views_db.reading() as cur:
            return views.load_state(cur)

    def catch_up(self, progress: Progress | None = None, *, until: int | None = None) -> int:
        """Apply every event after the tracking position (up to and including ``until``,
        when given); return the new position.

        A transient database failure (a restart, a cut connection) is waited out for up
        to ``RETRY_WINDOW_S`` from the first one: every committed page is durable, so the
        catch-up simply starts again from the tracking position.
        """
        deadline = None
        delay = 0.05
        while True:
            try:
                return self._catch_up(progress, until)
            except Exception as exc:
                if not (self.log.is_transient(exc) or self.views_db.is_transient(exc)):
                    raise
                deadline = deadline or time.monotonic() + RETRY_WINDOW_S
                if time.monotonic() > deadline:
                    raise
            time.sleep(delay)
            delay = min(delay * 2, 2.0)

    def _catch_up(self, progress: Progress | None, until: int | None) -> int:
        # The state this projector committed last time, if it did: a later catch-up (the
        # live path makes one per batch) need not read it back. Taken, not shared: any
        # failure below leaves no cached state, and the next catch-up loads afresh. A
        # stale one (another projector moved the views on) is refused by the same checks
        # as a state loaded a moment too early.
        cached, self._committed = self._committed, None
        state, position = cached if cached is not None else self.load_at_position()
        stop = self.window.stop
        if until is not None:
            stop = until if stop is None else min(stop, until)
        # The head is only needed to read ahead or show progress: the live path, one
        # catch-up per batch, saves the query (a round trip on PostgreSQL).
        head = position
        if stop is not None:
            head = stop
        elif progress is not None or self.read_ahead:
            head = self.log.head()
        ahead = self._read_ahead(position, head, stop)
        # A catch-up long enough to read ahead parses each frame once: the memory of
        # recent parses would only cost time (see ``replay_parser``).
        parse = replay_parser(self.parse) if ahead else self.parse
        waiting: ReadPage | None = None  # the child's next page, once received
        refused = 0
        try:
            while True:
                # Our own read came back short of a page: that was the head (when read).
                at_head = False
                if ahead and waiting is None:
                    waiting = ahead.next()
                if waiting is not None and waiting.after == position:
                    end, frames = waiting.end, waiting.frames
                    waiting = None
                else:
                    if waiting is None or waiting.after < position:
                        # The child is done, failed, or out of step: read for ourselves.
                        if ahead:
                            ahead.close()
                        ahead, waiting = None, None
                    # Otherwise this is a page the child stepped over.
                    known = self.known(position) if self.known is not None else None
                    if known is not None and (stop is None or known.end <= stop):
                        end, frames = known.end, known.frames
                    else:
                        events = self.log.read_page(position, self.page_size, stop=stop)
                        if not events:
                            self._committed = (state, position)
                            return position
                        at_head = len(events) < self.page_size
                        # Parsed before the write transaction opens: parsing is pure, and on
                        # SQLite the transaction holds the one write lock the appender waits
                        # for.
                        end, frames = events[-1][0], read_frames(events, parse)
                try:
                    with self.views_db.transaction(durable=False) as cur:
                        self.views_db.record_tracking(cur, views.PROJECTION_NAME, end)
                        # The tracking row is locked now. If another projector moved the views
                        # on since we loaded them (to a position short of this page's end, so
                        # the tracking write alone did not fail), our state is stale: start
                        # again.
                        if int(views.read_meta(cur).get("frames", "0")) != state.frames:
                            raise IntegrityError(
                                "the views moved on since this projector loaded them"
                            )
                        self._apply_page(cur, state, frames)
                except IntegrityError:
                    # Another projector committed this page first: take its word and go on.
                    # A page refused again and again with no one advancing is a bug, not a
                    # race.
                    state, now_at = self.load_at_position()
                    advanced = now_at > position
                    position = now_at
                    refused = 0 if advanced else refused + 1
                    if refused > MAX_REFUSALS:
                        raise
                    continue
                refused = 0
                position = end
                if progress:
                    progress(position, max(head, position))
                if at_head:
                    # No need to ask again: events appended since are the next call's.
                    self._committed = (state, position)
                    return position
        finally:
            if ahead:
                ahead.close()

    def _read_ahead(self, position: int, head: int, stop: int | None) -> ReadAhead | None:
        """A child reading and parsing ahead, when there is enough log to be worth it."""
        if not self.read_ahead or head - position < READ_AHEAD_MIN_EVENTS:
            return None
        try:
            return ReadAhead(
                self.log,
                replay_parser(self.parse),
                after=position,
                page_size=self.page_size,
                stop=stop,
            )
        except CannotReadAhead:
            return None  # a parser a spawned child cannot import: read in process

    def rebuild(self, progress: Progress | None = None) -> LedgerState:
        """Drop every projection and replay the whole log from zero (reading ahead in a
        second process when the log is long)."""
        self._committed = None
        with self.views_db.transaction(durable=False) as cur:
            views.clear(cur, self.views_db)
        read_ahead, self.read_ahead = self.read_ahead, True
        try:
            self.catch_up(progress)
        finally:
            self.read_ahead = read_ahead
        return self.load()

    # --- folding one page ----------------------------------------------------------

    def _apply_page(self, cur: SqlCursor, state: LedgerState, frames: Sequence[PageFrame]) -> None:
        window = self.window
        candidate_ids = sorted({f.fill_id for *_, p in frames for f in p.fills})
        booked = views.booked_among(cur, candidate_ids) if candidate_ids else set()

        new_rows: list[tuple[str, ...]] = []
        rejects: list[tuple[int, str, str, bytes]] = []
        symbols: set[str] = set()
        assets: set[str] = set()
        stale: set[str] = set()
        # Per symbol with fills in the page: its fill count before the page (for the
        # in-order checkpoints), and for a stale one the smallest late sort key.
        counts_before: dict[str, int] = {}
        earliest_late: dict[str, tuple[str, str]] = {}
        # One exact context for the whole page: entering one per fill cost as much as
        # folding the fill's average cost.
        with localcontext(EXACT):
            for position, head, raw, parsed in frames:
                state.frames += 1
                if parsed.rejection is not None:
                    source = str(_header(head).get("src", ""))
                    rejects.append((position, source, parsed.rejection, raw))
                    state.rejects.add(hashed_reject(source, parsed.rejection))
                    continue
                if parsed.snapshot is not None and (
                    window.received_until is None
                    or str(_header(head).get("at", "")) <= window.received_until
                ):
                    assets |= state.balances.apply_snapshot(parsed.snapshot)
                for fill in parsed.fills:
                    if fill.fill_id in booked or not _in_window(fill, window):
                        continue
                    booked.add(fill.fill_id)
                    row = fill_row(fill, position)
                    new_rows.append(row)
                    state.fills.add(hashed_fill(row))
                    assets |= state.balances.apply_fill_exactly(fill)
                    symbol = fill.symbol
                    if symbol not in counts_before:
                        symbols.add(symbol)
                        held = state.book.positions.get(symbol)
                        counts_before[symbol] = held.fill_count if held is not None else 0
                    if symbol in stale or not state.book.book_exactly(fill):
                        stale.add(symbol)
                        key = fill.sort_key
                        if symbol not in earliest_late or key < earliest_late[symbol]:
                            earliest_late[symbol] = key

        views.insert_fills(cur, new_rows)
        views.insert_rejects(cur, rejects)
        for symbol in sorted(stale):
            # A fill arrived out of execution order: fold that symbol's history again,
            # from its last checkpoint before the earliest late fill.
            checkpoints.refold(cur, state.book, symbol, earliest_late[symbol])
            del counts_before[symbol]
        checkpoints.checkpoint_booked(cur, state.book, counts_before)
        views.save_state(cur, state, symbols, assets)


def replay_parser(parse: Parser) -> Parser:
    """The parser to read many pages with. ``frames.parse`` remembers its answers for
    the most recent frames, which pays when a catch-up reads back a batch this process
    has just parsed to append it, and costs about 4 µs a frame otherwise; ``frames.read``
    is the same function without that memory."""
    return read_frame if parse is parse_frame else parse


def _header(head: bytes) -> dict[str, Any]:
    """A frame's stored header, upcast (only read when a fold needs its source or time)."""
    return split_state(head)[0]


def _in_window(fill: Fill, window: Window) -> bool:
    return window.fills_until is None or fill.executed_at <= window.fills_until


# --- replays into a scratch database: point-in-time answers and verification ------


class Replay:
    """The log replayed from zero into a throwaway SQLite file (bounded memory)."""

    def __init__(
        self, log: Database, *, window: Window = Window(), parse: Parser = parse_frame
    ) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="ledger-replay-")
        self.views_db = SQLiteDatabase(parse_url(str(Path(self._dir.name) / "replay.sqlite")))
        self.projector = Projector(log, self.views_db, parse=parse, window=window, read_ahead=True)

    def run(self, progress: Progress | None = None) -> LedgerState:
        self.projector.catch_up(progress)
        return self.projector.load()

    def close(self) -> None:
        self.views_db.close()
        self._dir.cleanup()

    def __enter__(self) -> Replay:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class Verification:
    ok: bool
    log_position: int
    stored_hash: str
    replayed_hash: str
    differences: list[str]


def verify(
    log: Database, *, parse: Parser = parse_frame, progress: Progress | None = None
) -> Verification:
    """Replay the log up to the stored projections' position and compare, section by section."""
    stored_projector = Projector(log, parse=parse)
    position = stored_projector.position
    stored = stored_projector.load()
    with Replay(log, window=Window(stop=position), parse=parse) as replay:
        replayed = replay.run(progress)
        diffs = differences(stored.canonical(), replayed.canonical())
        # The stored rows themselves, log positions included, against the replay's rows.
        if not diffs and fills_tally(log) != fills_tally(replay.views_db):
            diffs = ["fills (the stored rows disagree with a fresh replay)"]
    return Verification(not diffs, position, stored.state_hash(), replayed.state_hash(), diffs)


def fills_tally(db: Database, batch: int = 5000) -> Tally:
    """Count and digest the stored fill rows themselves, a batch at a time."""
    tally = Tally()
    last = ""
    while True:
        with db.reading() as cur:
            cur.execute(
                # bandit B608: constant columns, bound values.
                f"SELECT {views.FILL_COLUMNS} FROM ledger_fills WHERE fill_id > ? ORDER BY fill_id LIMIT ?",  # nosec B608
                (last, batch),
            )
            rows = cur.fetchall()
        if not rows:
            return tally
        for row in rows:
            tally.add(tuple(str(v) for v in row))
        last = rows[-1][0]
