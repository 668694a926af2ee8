"""The append use case: raw frames in, an immutable log out, each fill claimed once.

``Ledger.append`` takes a batch of raw frames and, in ONE store transaction,
appends every frame not already in the log (verbatim, with source and receive
time) and one ``FillClaimed`` event for every fill id never claimed before. The
pre-filter (one query for the batch's ids) only saves work; the store's primary
key on the claim id has the final word, so a concurrent writer that claims a
fill first makes this transaction fail whole, and the batch is planned again
against the log as it now stands. Nothing is ever updated or deleted.
"""

from __future__ import annotations

import itertools
import json
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import NamedTuple, Protocol, TypeVar

from eventsourcing.persistence import IntegrityError, StoredEvent

from ledger.domain import Fill, ParsedFrame
from ledger.events import (
    FillClaimed,
    FrameReceived,
    claim_id,
    frame_id_for_line,
    line_ordered_frame_id,
)

Parser = Callable[[bytes], ParsedFrame]

MAX_ATTEMPTS = 50
#: How long an append waits for a database that went away (restarting, a cut connection).
RETRY_WINDOW_S = 120.0

T = TypeVar("T")
#: Fill digests remembered across batches (cumulative records repeat the same fills).
DIGEST_MEMORY = 20_000
#: Claims this process saw committed, remembered (fill id -> digest) so that a fill
#: arriving again is not looked up in the store again; cleared whole when full.
CLAIM_MEMORY = 200_000


_formatted_second: tuple[int, str] = (-1, "")


class FrameReading(NamedTuple):
    """What appending a frame needs to know of it: the parser's reason for refusing
    it, or the fills it brings as ``(fill id, digest)`` pairs, in the frame's order."""

    rejection: str | None
    claims: tuple[tuple[str, str], ...] = ()


_NO_CLAIMS = FrameReading(None)

#: A frame of a batch with its id and what appending it needs to know of it.
Planned = tuple["IncomingFrame", uuid.UUID, FrameReading]


class FrameReader:
    """``parse`` then ``FrameReading``: a pure function of the raw bytes, with the fill
    digests remembered (cumulative records repeat the same fills; bounded)."""

    def __init__(self, parse: Parser) -> None:
        self.parse = parse
        self._digests: dict[str, tuple[Fill, tuple[str, str]]] = {}

    def __call__(self, raw: bytes) -> FrameReading:
        return self.reading(self.parse(raw))

    def reading(self, parsed: ParsedFrame) -> FrameReading:
        """The reading of a frame already parsed (by this reader's parser)."""
        if parsed.rejection is not None:
            return FrameReading(parsed.rejection)
        if not parsed.fills:
            return _NO_CLAIMS
        return FrameReading(None, tuple([self.claim(fill) for fill in parsed.fills]))

    def claim(self, fill: Fill) -> tuple[str, str]:
        """``(fill id, fill.digest())``, remembered for the fill object (the fast path
        hands out the same object for a repeated record; cleared whole when full)."""
        entry = self._digests.get(fill.fill_id)
        if entry is not None and entry[0] is fill:
            return entry[1]
        claim = (fill.fill_id, fill.digest())
        if len(self._digests) >= DIGEST_MEMORY:
            self._digests.clear()
        self._digests[fill.fill_id] = (fill, claim)
        return claim

    def plan(self, frames: Sequence[IncomingFrame]) -> list[Planned]:
        """Each frame with its id and its reading: all the append needs of a batch."""
        return [(frame, frame.frame_id(), self(frame.raw)) for frame in frames]


def utc_now() -> str:
    """Now, as ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` (the date and time part is formatted once
    a second: an import asks for the time of every line)."""
    global _formatted_second
    second, fraction = divmod(time.time_ns() // 1000, 1_000_000)
    cached = _formatted_second  # one read: threads may replace it, never half of it
    if cached[0] != second:
        cached = _formatted_second = (
            second,
            time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)),
        )
    return f"{cached[1]}.{fraction:06d}Z"


class LogStore(Protocol):
    """What the append use case needs of a store (see ``adapters.storage.Database``)."""

    def append(self, events: Sequence[StoredEvent]) -> Sequence[int]: ...
    def existing(self, ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, bytes]: ...
    def head(self) -> int: ...


@dataclass(frozen=True)
class IncomingFrame:
    """One raw frame as it arrived. ``line`` is set for frames read from a file;
    ``hashed_id`` for a file whose lines the log holds under ``frame_id_for_line``
    (see ``Ledger.keeps_hashed_ids``)."""

    raw: bytes
    source: str
    received_at: str
    line: int | None = None
    hashed_id: bool = False

    def frame_id(self) -> uuid.UUID:
        if self.line is None:
            return uuid.uuid4()
        if self.hashed_id:
            return frame_id_for_line(self.source, self.line, self.raw)
        return line_ordered_frame_id(self.source, self.line, self.raw)

    def may_be_in_log(self) -> bool:
        """False only when ``frame_id`` is new every time (random: a live frame), so the
        log cannot hold it yet and the store need not be asked. A subclass with ids of
        its own (a REST record's is its content) is always asked about."""
        return self.line is not None or type(self).frame_id is not IncomingFrame.frame_id


@dataclass(frozen=True)
class Landed:
    """Where a committed batch's events are in the log: ``events[i]`` is at log position
    ``positions[i]`` and stores the batch's frame number ``origins[i]`` (-1: a fill
    claim). What a projector fed by the same pipeline needs to fold the batch without
    reading it back (see ``ledger.parse_ahead``)."""

    positions: Sequence[int]
    events: Sequence[StoredEvent]
    origins: Sequence[int]


@dataclass
class AppendReport:
    frames: int = 0
    appended: int = 0
    already_ingested: int = 0
    fills_new: int = 0
    fills_duplicate: int = 0
    rejected: int = 0
    log_position: int = 0
    conflicts: list[str] = field(default_factory=list)
    #: The fills this batch claimed, with their digests (per batch only: totals don't
    #: accumulate them).
    claims: dict[str, str] = field(default_factory=dict)
    #: Where this batch's events landed, once committed (per batch only).
    landed: Landed | None = None

    @property
    def booked_fill_ids(self) -> list[str]:
        return list(self.claims)

    def add(self, other: AppendReport) -> None:
        self.frames += other.frames
        self.appended += other.appended
        self.already_ingested += other.already_ingested
        self.fills_new += other.fills_new
        self.fills_duplicate += other.fills_duplicate
        self.rejected += other.rejected
        self.log_position = max(self.log_position, other.log_position)
        self.conflicts.extend(other.conflicts)

    def as_json(self) -> dict[str, object]:
        return {
            "frames": self.frames,
            "appended": self.appended,
            "already_ingested": self.already_ingested,
            "fills_new": self.fills_new,
            "fills_duplicate": self.fills_duplicate,
            "rejected": self.rejected,
            "conflicts": len(self.conflicts),
            "log_position": self.log_position,
        }


class Ledger:
    def __init__(self, store: LogStore, parse: Parser) -> None:
        self.store = store
        self.parse = parse
        self.reader = FrameReader(parse)
        #: Claims known to be in the store. Nothing is ever deleted from the log, so a
        #: claim seen committed stays claimed: skipping it is safe, and an id not in
        #: here is asked of the store, whose key has the final word anyway.
        self._claimed: dict[str, str] = {}
        #: True while the last look-up found none of its batch's ids in the store (a new
        #: capture, a live session's new fills): the next batch is then planned without
        #: one. The store's key still has the final word: a batch that meets an id already
        #: there fails whole, and is planned again with the look-up.
        self._expect_new = False

    def append(self, frames: Sequence[IncomingFrame]) -> AppendReport:
        """Append a batch in one transaction; see the module docstring."""
        return self.append_read(self.reader.plan(frames))

    def append_read(self, planned: Sequence[Planned]) -> AppendReport:
        """``append`` of frames already read (each with its id and ``FrameReading``, as
        ``FrameReader.plan`` makes them, possibly in another process)."""
        if not planned:
            return AppendReport(log_position=self.store.head())
        for _ in range(MAX_ATTEMPTS):
            events, origins, report = self._retry_transient(lambda: self._plan(planned))
            try:
                return self._commit(events, origins, report)
            except IntegrityError:
                # Some of these ids are in the log already (a concurrent writer got them in
                # first, or a batch planned without the look-up met them): plan again.
                self._expect_new = False
                continue
        raise RuntimeError(f"could not append a batch after {MAX_ATTEMPTS} attempts")

    def _commit(
        self, events: list[StoredEvent], origins: list[int], report: AppendReport
    ) -> AppendReport:
        """Append a planned batch; IntegrityError when another writer claimed first."""
        if not events:
            report.log_position = self._retry_transient(self.store.head)
            return report
        # After a lost connection the batch may have committed after all: then the
        # retry fails on the ids it wrote, and the batch is planned again.
        positions = self._retry_transient(partial(self.store.append, events))
        report.log_position = (
            max(positions) if positions else self._retry_transient(self.store.head)
        )
        report.landed = Landed(positions, events, origins)
        self._remember_claims(report.claims)
        return report

    def _remember_claims(self, claims: Mapping[str, str]) -> None:
        if len(self._claimed) + len(claims) > CLAIM_MEMORY:
            self._claimed.clear()
        self._claimed.update(claims)

    def _retry_transient(self, call: Callable[[], T]) -> T:
        """``call()``, tried again for up to ``RETRY_WINDOW_S`` while the store calls its
        failure transient (the database restarting, a connection cut), so a batch import
        outlives a database restart instead of dying with it."""
        is_transient = getattr(self.store, "is_transient", None)
        deadline = time.monotonic() + RETRY_WINDOW_S
        delay = 0.05
        while True:
            try:
                return call()
            except Exception as exc:
                if is_transient is None or not is_transient(exc) or time.monotonic() > deadline:
                    raise
            time.sleep(delay)
            delay = min(delay * 2, 2.0)

    def _plan(
        self, planned: Sequence[Planned]
    ) -> tuple[list[StoredEvent], list[int], AppendReport]:
        """The events that would append this batch, the number in the batch of the frame
        each stores (-1 for a claim), and what they would do."""
        # Claims already known to be made need no query; neither do ids of live frames
        # (random, never seen before). One query for every other id the batch could append,
        # unless the last one found nothing (see ``_expect_new``).
        remembered = self._claimed
        known_digests: dict[str, str | None] = {}
        ids = dict.fromkeys(fid for frame, fid, _ in planned if frame.may_be_in_log())
        for *_, reading in planned:
            for fill_id, _digest in reading.claims:
                if fill_id in known_digests:
                    continue
                digest = remembered.get(fill_id)
                if digest is not None:
                    known_digests[fill_id] = digest
                else:
                    ids[claim_id(fill_id)] = None
        known: dict[uuid.UUID, bytes] = {}
        if ids and not self._expect_new:
            known = self.store.existing(list(ids))
            self._expect_new = not known
        #: Fill id -> the digest claimed by this batch.
        claimed_here: dict[str, str] = {}
        events: list[StoredEvent] = []
        origins: list[int] = []
        report = AppendReport(frames=len(planned))
        seen_frames: set[uuid.UUID] = set()
        for number, (frame, fid, reading) in enumerate(planned):
            if fid in known or fid in seen_frames:
                report.already_ingested += 1
                continue
            seen_frames.add(fid)
            event = FrameReceived(
                frame_id=fid,
                raw=frame.raw,
                received_at=frame.received_at,
                source=frame.source,
                line=frame.line,
                rejection=reading.rejection,
            )
            events.append(event.to_stored())
            origins.append(number)
            report.appended += 1
            if reading.rejection is not None:
                report.rejected += 1
                continue
            for fill_id, digest in reading.claims:
                earlier = claimed_here.get(fill_id)
                if earlier is None:
                    if fill_id not in known_digests:
                        stored = _claim_digest(known.get(claim_id(fill_id)))
                        if stored is not None:
                            self._remember_claims({fill_id: stored})
                        known_digests[fill_id] = stored
                    earlier = known_digests[fill_id]
                    if earlier is None:
                        events.append(FillClaimed(fill_id, fid, digest).to_stored())
                        origins.append(-1)
                        claimed_here[fill_id] = digest
                        report.claims[fill_id] = digest
                        report.fills_new += 1
                        continue
                report.fills_duplicate += 1
                if earlier != digest:
                    report.conflicts.append(fill_id)
        return events, origins, report

    def ingest_lines(
        self,
        lines: Iterable[tuple[int, bytes]],
        source: str,
        *,
        batch_size: int = 2000,
        received_at: Callable[[], str] = utc_now,
        on_batch: Callable[[AppendReport], None] | None = None,
    ) -> AppendReport:
        """Append numbered lines of a capture, a batch per transaction, in order.

        Blank lines are not frames. Each line's id is derived from (source, line
        number, content), so re-ingesting a capture appends nothing and an import
        killed half-way completes when run again. ``on_batch`` sees each batch's
        report once the batch is committed.
        """
        batches = self.line_batches(lines, source, batch_size, received_at)
        return self.ingest_read((self.reader.plan(batch) for batch in batches), on_batch=on_batch)

    def line_batches(
        self,
        lines: Iterable[tuple[int, bytes]],
        source: str,
        size: int,
        received_at: Callable[[], str] = utc_now,
    ) -> Iterator[list[IncomingFrame]]:
        """``numbered_batches`` of a capture, with the ids this log knows its lines by."""
        first, lines = first_frame_line(lines)
        hashed = first is not None and self.keeps_hashed_ids(source, *first)
        return numbered_batches(lines, source, size, received_at, hashed_ids=hashed)

    def keeps_hashed_ids(self, source: str, line: int, raw: bytes) -> bool:
        """Whether the log holds this capture's first frame line under the id it had
        before ids came in line order (``events.frame_id_for_line``): its lines then
        keep those ids, so that importing it again still appends nothing. (Had that
        first line been changed since, every line would get a new id and its frame be
        appended again; each fill would still be claimed once.)"""
        old_id = frame_id_for_line(source, line, raw)
        return bool(self._retry_transient(lambda: self.store.existing([old_id])))

    def ingest_read(
        self,
        batches: Iterable[Sequence[Planned]],
        *,
        on_batch: Callable[[AppendReport], None] | None = None,
    ) -> AppendReport:
        """``ingest_lines`` of batches already read (see ``append_read``)."""
        total = AppendReport()
        for batch in batches:
            report = self.append_read(batch)
            total.add(report)
            if on_batch:
                on_batch(report)
            del report  # and its events (``landed``), before the next batch is planned
        if total.log_position == 0:
            total.log_position = self.store.head()
        return total


def numbered_batches(
    lines: Iterable[tuple[int, bytes]],
    source: str,
    size: int,
    received_at: Callable[[], str] = utc_now,
    *,
    hashed_ids: bool = False,
) -> Iterator[list[IncomingFrame]]:
    """Numbered lines of a capture as frames, ``size`` to a batch; blank lines skipped.
    ``hashed_ids``: see ``Ledger.keeps_hashed_ids``."""
    batch: list[IncomingFrame] = []
    for number, raw in lines:
        if not raw.strip():
            continue
        batch.append(
            IncomingFrame(
                raw=raw,
                source=source,
                received_at=received_at(),
                line=number,
                hashed_id=hashed_ids,
            )
        )
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def first_frame_line(
    lines: Iterable[tuple[int, bytes]],
) -> tuple[tuple[int, bytes] | None, Iterator[tuple[int, bytes]]]:
    """The first line that is not blank (None if there is none), and all the lines,
    that one included."""
    it = iter(lines)
    for number, raw in it:
        if raw.strip():
            return (number, raw), itertools.chain([(number, raw)], it)
    return None, iter(())


def _claim_digest(state: bytes | None) -> str | None:
    if state is None:
        return None
    head = json.loads(state.partition(b"\n")[0])
    return str(head.get("digest", ""))
