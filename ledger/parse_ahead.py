"""Parsing an import's frames in the process that projects them.

An import of a file is three kinds of work: parsing its frames (pure, and the most
CPU), appending them (a transaction per batch, in order) and projecting the log. A
``projections.follower.Follower`` takes the projecting to a second CPU, but parses
every frame again to do it. ``ParseAhead`` forks a child that does both halves of the
parsing work at once: this process sends it each batch's raw frames, the child sends
back their readings (``FrameReader``: rejection, or fill ids and digests) and then,
between batches, projects what has been committed, from the parses it has just made.
This process reads the file, plans and appends; it parses nothing.

The child need not read the log back to project it: with a later batch, this process
tells it where a committed batch's events landed (``committed``: each appended frame's
log position and stored header, and the positions the batch fills). When those
positions are consecutive, the batch's events are exactly the log's events there, so
the child folds them from the raw frames and parses it holds. Anything else (another
writer's events in between, a batch it no longer holds) it reads from the log.

The child adds no guarantee and removes none. Its readings are the pure function this
process would compute; what is written is decided by the append's plan and the store's
keys here; what is projected, by the projector's tracking. If the child fails, ``plan``
plans the batch here with the caller's ``FrameReader``, and every batch after it. The
child dies with its parent.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from multiprocessing.connection import Connection
from typing import Any, NamedTuple

from adapters.storage import open_database
from ledger.application import (
    AppendReport,
    FrameReader,
    FrameReading,
    IncomingFrame,
    Parser,
    Planned,
)
from ledger.domain import ParsedFrame
from projections.forking import FORK, end_child, parent_gone, start_child
from projections.read_ahead import PageFrame, ReadPage
from projections.runner import PAGE_SIZE, Projector

#: How often the child, with no batch to parse, looks for the appender's last commits.
POLL_S = 0.02
#: Batches whose parses the child keeps for its projector: the one being parsed, the one
#: being appended and the one being projected.
KEEP_BATCHES = 3


class Note(NamedTuple):
    """Where a committed batch landed, as the child is told.

    ``committed``: the log position up to which the appender has committed. When the
    batch's events fill the positions from ``first`` to ``committed`` exactly: the
    batch's number and each appended frame as (log position, number in the batch,
    stored header); else None, and the child reads that part of the log.
    """

    committed: int
    batch: int | None = None
    first: int | None = None
    frames: list[tuple[int, int, bytes]] | None = None


class ParseAhead:
    """A child process that parses batches for this one and projects the log of ``url``.

    Start it before this process opens any database connection (the child is forked).
    Append what ``plan`` yields, then ``finish()`` once the log is complete. Use as a
    context manager so the child never outlives an error.
    """

    def __init__(self, url: str) -> None:
        here, there = FORK.Pipe(duplex=True)
        self._conn = here
        self._process = start_child("ledger-parse-ahead", _parse_and_project, url, there)
        there.close()
        #: Why the child stopped, once it has.
        self.failure: str | None = None
        #: How many pages the child folded from its own parses, without reading the log
        #: (known once ``finish`` has returned without a failure).
        self.pages_folded_unread: int | None = None
        #: Batches sent to the child; a batch's number is the count before it.
        self._sent_batches = 0
        #: The batches ``plan`` handed out and ``committed`` has not yet heard of, in
        #: order: each one's number if the child parsed it, else None.
        self._handed_out: deque[int | None] = deque()
        #: Notes not yet sent to the child.
        self._notes: list[Note] = []

    @property
    def pid(self) -> int | None:
        return self._process.pid

    def plan(
        self, batches: Iterable[list[IncomingFrame]], reader: FrameReader
    ) -> Iterator[list[Planned]]:
        """``reader.plan`` of each batch, with the parsing done by the child: each batch
        is sent before the one before it is handed on, so the child parses it while the
        caller appends that one. Once the child fails, ``reader`` does it here. Tell
        ``committed`` of each batch, in order, once it is committed."""
        sent: tuple[list[IncomingFrame], int] | None = None
        for batch in batches:
            # The batch before's readings are taken before this batch is sent: each side
            # only sends what the other is about to take (two large sends would deadlock).
            done = self._planned(*sent, reader) if sent is not None else None
            number = self._send([frame.raw for frame in batch])
            if done is not None:
                yield done
            sent = (batch, number) if number is not None else None
            if number is None:
                self._handed_out.append(None)
                yield reader.plan(batch)
        if sent is not None:
            yield self._planned(*sent, reader)

    def committed(self, report: AppendReport) -> None:
        """Say where the oldest batch ``plan`` handed out and not yet spoken of landed, once
        it is committed (the child hears of it with the next batch it is sent, when it is
        listening)."""
        number = self._handed_out.popleft() if self._handed_out else None
        landed = report.landed
        note = Note(report.log_position)
        if landed is not None and number is not None and landed.positions:
            positions, first = landed.positions, landed.positions[0]
            if _consecutive(positions):
                frames = [
                    (position, origin, event.state[: event.state.index(b"\n")])
                    for position, origin, event in zip(
                        positions, landed.origins, landed.events, strict=True
                    )
                    if origin >= 0
                ]
                note = Note(positions[-1], number, first, frames)
        self._notes.append(note)

    def _planned(
        self, batch: list[IncomingFrame], number: int, reader: FrameReader
    ) -> list[Planned]:
        readings = self._receive()
        if readings is None:
            self._handed_out.append(None)
            return reader.plan(batch)
        self._handed_out.append(number)
        return [(frame, frame.frame_id(), r) for frame, r in zip(batch, readings, strict=True)]

    def _send(self, raws: Sequence[bytes] | None) -> int | None:
        """Hand the child a batch (None: the end) and the notes not yet sent; the batch's
        number, or None when the child has failed."""
        if self.failure is None:
            notes, self._notes = self._notes, []
            try:
                self._conn.send((None if raws is None else list(raws), notes))
                self._sent_batches += 1
                return self._sent_batches - 1
            except (OSError, ValueError) as exc:
                self.failure = self._last_word() or f"the parsing process is gone ({exc})"
        return None

    def _last_word(self) -> str | None:
        """The reason a failed child sent before it exited, if it sent one (a child that
        finished sends how many pages it folded unread instead)."""
        with contextlib.suppress(EOFError, OSError):
            while self._conn.poll():
                item = self._conn.recv()
                if isinstance(item, str):
                    return item
                if isinstance(item, int):
                    self.pages_folded_unread = item
        return None

    def _receive(self) -> list[FrameReading] | None:
        """The readings of the batch sent first and not yet received; None on failure."""
        if self.failure is not None:
            return None
        try:
            item: Any = self._conn.recv()
        except (EOFError, OSError):
            item = self._last_word() or "the parsing process ended unexpectedly"
        if isinstance(item, str):
            self.failure = item
            return None
        return [FrameReading(rejection, claims) for rejection, claims in item]

    def finish(self, timeout: float | None = None) -> str | None:
        """Tell the child the log is complete and wait for its last catch-up; why it
        failed, if it did (the caller catches up itself anyway)."""
        if self.failure is None:
            self._send(None)
            self._process.join(timeout)
            if self._process.is_alive():
                self.stop()
                return "the parsing process did not finish in time"
            self.failure = self._last_word()
            if self.failure is None and self._process.exitcode != 0:
                self.failure = f"the parsing process exited with code {self._process.exitcode}"
        return self.failure

    def stop(self) -> None:
        """End the child now (its uncommitted page is simply redone by the next catch-up)."""
        end_child(self._process)

    def __enter__(self) -> ParseAhead:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self._conn.close()


def _consecutive(positions: Sequence[int]) -> bool:
    """Whether the positions follow each other, each one more than the one before."""
    if isinstance(positions, range):
        return positions.step == 1
    first = positions[0]
    return all(position == first + i for i, position in enumerate(positions))


class _RecentBatches:
    """The raw frames and parses of the last ``KEEP_BATCHES`` batches: by batch and
    number, for batches whose landing in the log is known (``pages``), and by bytes, for
    frames read back from the log (an index made on the first such read)."""

    def __init__(self, parse: Parser) -> None:
        self._parse = parse
        self._batches: dict[int, tuple[list[bytes], list[ParsedFrame]]] = {}
        self._by_bytes: dict[int, dict[bytes, ParsedFrame]] = {}
        self._number = -1

    def parse_batch(self, raws: list[bytes]) -> list[ParsedFrame]:
        """Parse and keep the next batch (batches are numbered from 0, in order)."""
        self._number += 1
        parses = [self._parse(raw) for raw in raws]
        self._batches[self._number] = (raws, parses)
        self._batches.pop(self._number - KEEP_BATCHES, None)
        self._by_bytes.pop(self._number - KEEP_BATCHES, None)
        return parses

    def __call__(self, raw: bytes) -> ParsedFrame:
        for number in sorted(self._batches, reverse=True):
            index = self._by_bytes.get(number)
            if index is None:
                raws, parses = self._batches[number]
                index = self._by_bytes[number] = dict(zip(raws, parses, strict=True))
            parsed = index.get(raw)
            if parsed is not None:
                return parsed
        return self._parse(raw)

    def pages(self, note: Note, page_size: int) -> list[ReadPage]:
        """The pages of the log a note says a kept batch fills; [] when it says no such
        thing, or the batch is no longer kept."""
        kept = self._batches.get(note.batch) if note.batch is not None else None
        if kept is None or note.first is None or note.frames is None:
            return []
        raws, parses = kept
        pages: list[ReadPage] = []
        after = note.first - 1
        frames: list[PageFrame] = []
        for position, origin, head in note.frames:
            if frames and position - after > page_size:
                pages.append(ReadPage(after, position - 1, frames))
                after, frames = position - 1, []
            frames.append((position, head, raws[origin], parses[origin]))
        pages.append(ReadPage(after, note.committed, frames))
        return pages


class _LandedPages:
    """Pages of the log the child holds, by the position each starts after: the
    projector's ``known`` pages. A page it stepped past is dropped."""

    def __init__(self) -> None:
        self._pages: dict[int, ReadPage] = {}
        #: The log position up to which the appender has said it committed.
        self.committed = 0
        self.folded = 0

    def add(self, note: Note, pages: list[ReadPage]) -> None:
        self.committed = max(self.committed, note.committed)
        for page in pages:
            self._pages[page.after] = page

    def __call__(self, position: int) -> ReadPage | None:
        for stale in [after for after in self._pages if after < position]:
            del self._pages[stale]
        page = self._pages.pop(position, None)
        if page is not None:
            self.folded += 1
        return page


def _parse_and_project(parent: int, url: str, conn: Connection) -> None:
    # Not ``frames.parse``: this process keeps its own memory of recent parses.
    from adapters.deltadefi.frames import read

    try:
        batches = _RecentBatches(read)
        reader = FrameReader(read)
        landed = _LandedPages()
        db = open_database(url)
        try:
            projector = Projector(db, parse=batches, known=landed)
            while not parent_gone(parent):
                # A waiting appender first; projecting only while it appends.
                if conn.poll(POLL_S):
                    raws, notes = conn.recv()
                    for note in notes:
                        landed.add(note, batches.pages(note, PAGE_SIZE))
                    if raws is None:
                        projector.catch_up()
                        conn.send(landed.folded)
                        return
                    parses = batches.parse_batch(raws)
                    # Plain tuples: they pickle about ten times faster than readings.
                    conn.send([tuple(reader.reading(parsed)) for parsed in parses])
                # Only as far as the appender has said: the batches it has not spoken of
                # yet are folded from the parses kept here once it has.
                projector.catch_up(until=landed.committed)
        finally:
            db.close()
    except Exception as exc:  # reported to the parent, which parses and projects itself
        with contextlib.suppress(Exception):
            conn.send(f"{type(exc).__name__}: {exc}"[:500])
        raise SystemExit(1) from None
