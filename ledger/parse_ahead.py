"""Parsing an import's frames in the process that projects them.

An import of a file is three kinds of work: parsing its frames (pure, and the most
CPU), appending them (a transaction per batch, in order) and projecting the log. A
``projections.follower.Follower`` takes the projecting to a second CPU, but parses
every frame again to do it. ``ParseAhead`` forks a child that does both halves of the
parsing work at once: this process sends it each batch's raw frames, the child sends
back their readings (``FrameReader``: rejection, or fill ids and digests) and then,
between batches, projects what has been committed, from the parses it has just made.
This process reads the file, plans and appends; it parses nothing.

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
from typing import Any

from adapters.storage import open_database
from ledger.application import FrameReader, FrameReading, IncomingFrame, Parser, Planned
from ledger.domain import ParsedFrame
from projections.forking import FORK, end_child, parent_gone, start_child
from projections.runner import Projector

#: How often the child, with no batch to parse, looks for the appender's last commits.
POLL_S = 0.02
#: Batches whose parses the child keeps for its projector: the one being parsed, the one
#: being appended and the one being projected.
KEEP_BATCHES = 3


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

    @property
    def pid(self) -> int | None:
        return self._process.pid

    def plan(
        self, batches: Iterable[list[IncomingFrame]], reader: FrameReader
    ) -> Iterator[list[Planned]]:
        """``reader.plan`` of each batch, with the parsing done by the child: each batch
        is sent before the one before it is handed on, so the child parses it while the
        caller appends that one. Once the child fails, ``reader`` does it here."""
        sent: list[IncomingFrame] | None = None
        for batch in batches:
            # The batch before's readings are taken before this batch is sent: each side
            # only sends what the other is about to take (two large sends would deadlock).
            done = self._planned(sent, reader) if sent is not None else None
            ahead = self._send([frame.raw for frame in batch])
            if done is not None:
                yield done
            sent = batch if ahead else None
            if not ahead:
                yield reader.plan(batch)
        if sent is not None:
            yield self._planned(sent, reader)

    def _planned(self, batch: list[IncomingFrame], reader: FrameReader) -> list[Planned]:
        readings = self._receive()
        if readings is None:
            return reader.plan(batch)
        return [(frame, frame.frame_id(), r) for frame, r in zip(batch, readings, strict=True)]

    def _send(self, raws: Sequence[bytes]) -> bool:
        """Hand a batch to the child; False when the child has failed."""
        if self.failure is None:
            try:
                self._conn.send(list(raws))
                return True
            except (OSError, ValueError) as exc:
                self.failure = self._last_word() or f"the parsing process is gone ({exc})"
        return False

    def _last_word(self) -> str | None:
        """The reason a failed child sent before it exited, if it sent one."""
        with contextlib.suppress(EOFError, OSError):
            while self._conn.poll():
                item = self._conn.recv()
                if isinstance(item, str):
                    return item
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
            with contextlib.suppress(OSError, ValueError):
                self._conn.send(None)
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


class _RecentParses:
    """Parses of the last ``KEEP_BATCHES`` batches, by raw bytes: the projector reads
    back from the log the very frames parsed a moment before."""

    def __init__(self, parse: Parser) -> None:
        self._parse = parse
        self._batches: deque[dict[bytes, ParsedFrame]] = deque(maxlen=KEEP_BATCHES)

    def start_batch(self) -> None:
        self._batches.append({})

    def parse_and_keep(self, raw: bytes) -> ParsedFrame:
        parsed = self._parse(raw)
        self._batches[-1][raw] = parsed
        return parsed

    def __call__(self, raw: bytes) -> ParsedFrame:
        for batch in reversed(self._batches):
            parsed = batch.get(raw)
            if parsed is not None:
                return parsed
        return self._parse(raw)


def _parse_and_project(parent: int, url: str, conn: Connection) -> None:
    # Not ``frames.parse``: this process keeps its own memory of recent parses.
    from adapters.deltadefi.frames import read

    try:
        parses = _RecentParses(read)
        reader = FrameReader(parses.parse_and_keep)
        db = open_database(url)
        try:
            projector = Projector(db, parse=parses)
            while not parent_gone(parent):
                # A waiting appender first; projecting only while it appends.
                if conn.poll(POLL_S):
                    raws = conn.recv()
                    if raws is None:
                        projector.catch_up()
                        return
                    parses.start_batch()
                    # Plain tuples: they pickle about ten times faster than readings.
                    conn.send([tuple(reader(raw)) for raw in raws])
                projector.catch_up()
        finally:
            db.close()
    except Exception as exc:  # reported to the parent, which parses and projects itself
        with contextlib.suppress(Exception):
            conn.send(f"{type(exc).__name__}: {exc}"[:500])
        raise SystemExit(1) from None
