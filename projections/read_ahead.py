"""Reading and parsing the log ahead of the fold, in a second process.

A replay of a long log is two kinds of work: reading pages and parsing their frames
(pure, and most of the time), and folding them into the state in log order (not
divisible). ``ReadAhead`` forks a child that reads and parses two pages in three after a
position, with the projector's own parser, handing each to the parent as it is ready;
the parent reads and parses the pages in between itself, and folds every page in
order. (Handing the child every page would leave the parent idle: parsing and
sending a page costs more than folding it.)

What crosses the pipe is a page's parsed frames (fills, snapshot, rejection), and the
stored header and raw bytes of a frame only where the fold reads them: the header of a
rejected frame or a balance snapshot (its source, its time), the raw bytes of a rejected
frame (the fold keeps those). A fill already sent with the same id and execution time
is left out of later frames: cumulative execution records repeat every fill two or
three times, and a repeat is a no-op in the fold (see ``_SentFills``).
The pipe holds about a megabyte (``PIPE_BYTES``), so the child is never more than a few
pages ahead: memory stays bounded.

The child is forked when the process runs a single thread, and spawned otherwise (a
PostgreSQL connection pool runs threads): it then opens the log from its URL and
imports the parser by name, so a parser that cannot be pickled means no read-ahead.

The contract is the projector's, unchanged: a page from the child is exactly the
page the parent would have read and parsed itself. Any doubt (the child failed, the
parent's position moved under it) ends the read-ahead, and the parent carries on
reading for itself from where it is.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.reduction import ForkingPickler
from typing import Any

from adapters.storage import Database
from ledger.domain import ParsedFrame
from ledger.events import FRAME_TOPICS, SCHEMA_VERSION, split_state
from projections.forking import FORK, can_fork, end_child, parent_gone, spawn_child, start_child

Parser = Callable[[bytes], ParsedFrame]
#: One event of a page: (log position, topic, stored state).
Page = tuple[int, str, bytes]
#: One frame of a page, read: (log position, stored header, raw bytes, parsed).
PageFrame = tuple[int, bytes, bytes, ParsedFrame]

#: How a header of the current schema ends (its keys are sorted and "v" is last).
_CURRENT_HEADER_END = f'"v":{SCHEMA_VERSION}}}'.encode()


def read_frames(page: Sequence[Page], parse: Parser) -> list[PageFrame]:
    """The page's frames, each with its header and today's reading of its raw bytes.

    Raises for a header of a schema newer than this code (an older one is upcast)."""
    frames: list[PageFrame] = []
    for position, topic, stored in page:
        if topic in FRAME_TOPICS:
            head, _, raw = stored.partition(b"\n")
            if not head.endswith(_CURRENT_HEADER_END):
                split_state(head)  # an older header is upcast; a newer one is refused here
            frames.append((position, head, raw, parse(raw)))
    return frames


@dataclass(frozen=True)
class ReadPage:
    """A page read ahead: the events after ``after`` up to and including ``end``."""

    after: int
    end: int
    frames: list[PageFrame]


class CannotReadAhead(RuntimeError):
    """No child can be started for this log and parser (a spawned child could not be
    handed them): the caller reads for itself."""


class ReadAhead:
    """Pages of ``log`` after ``after`` (up to ``stop``) read and parsed by a child: the
    first ``CHILD_PAGES`` of every ``CHILD_PAGES + 1``, each page starting where the page
    before it ends.

    ``next()`` returns the child's next page, or None when the child reached the log's
    end as it found it, or failed (the caller then reads for itself). Close it when done.
    Raises ``CannotReadAhead`` when no child can be started.
    """

    def __init__(
        self,
        log: Database,
        parse: Parser,
        *,
        after: int,
        page_size: int,
        stop: int | None,
    ) -> None:
        # The child's own connection, never the parent's (a fork shares their sockets).
        open_log = functools.partial(type(log), log.url)  # type: ignore[call-arg]
        start = start_child if can_fork() else spawn_child
        if start is spawn_child:
            if getattr(parse, "__module__", None) == "__main__":
                raise CannotReadAhead("a spawned child cannot import a parser from __main__")
            try:
                ForkingPickler.dumps((open_log, parse))  # what the spawn will send
            except Exception as exc:
                raise CannotReadAhead(
                    f"a spawned child cannot be handed the parser: {exc}"
                ) from exc
        reader, writer = FORK.Pipe(duplex=False)
        widen_pipe(writer.fileno())
        self._pages = reader
        self._process = start(
            "ledger-read-ahead", _read_ahead, open_log, parse, after, page_size, stop, writer
        )
        writer.close()
        self._open = True

    def next(self) -> ReadPage | None:
        if not self._open:
            return None
        try:
            item: Any = self._pages.recv()
        except (EOFError, OSError):
            item = None
        if not isinstance(item, ReadPage):
            self.close()
            return None
        return item

    def close(self) -> None:
        if not self._open:
            return
        self._open = False
        end_child(self._process)
        self._pages.close()


#: Pages the child reads and parses for each one it leaves to the parent. The parent
#: also folds every page, so it keeps fewer to parse; a page costs the child its
#: pickling too. Two in three beat one in two once the pipe holds several pages
#: (``PIPE_BYTES``); with a default pipe it did not (see docs/performance.md).
CHILD_PAGES = 2

#: What the pipe between child and parent should hold: several pickled pages (a page of
#: 2,000 events is about 300 kB), so neither side waits on the other's every page.
#: A default Linux pipe holds 64 kB: the child then stalls on each page until the parent
#: has taken it.
PIPE_BYTES = 1 << 20
#: ``fcntl`` operations of Linux (``fcntl`` names them from Python 3.10, not everywhere).
_F_SETPIPE_SZ, _F_GETPIPE_SZ = 1031, 1032


def widen_pipe(fd: int, size: int = PIPE_BYTES) -> int:
    """Ask the kernel for a pipe of ``size`` bytes (at most the system's limit) and
    return what the pipe holds now. Best effort: where pipes cannot be resized (not
    Linux, a lower limit, a busy pipe) the pipe keeps its size, which is only slower."""
    try:
        import fcntl

        with contextlib.suppress(OSError, ValueError), open("/proc/sys/fs/pipe-max-size") as limit:
            size = min(size, int(limit.read()))
        with contextlib.suppress(OSError):
            fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", _F_SETPIPE_SZ), size)
        return int(fcntl.fcntl(fd, getattr(fcntl, "F_GETPIPE_SZ", _F_GETPIPE_SZ)))
    except (ImportError, OSError):
        return 0


#: Fills remembered as sent (cleared whole when full: forgetting only re-sends repeats).
SENT_MEMORY = 100_000


class _SentFills:
    """Which fills this stream has sent, to leave their repeats out.

    In the fold a fill is skipped when its id is already booked or it lies outside the
    window, which is decided by its execution time alone. So once a fill with some id
    and execution time has reached the fold, any later fill with that id and that time
    is skipped whatever else it says: leaving it out changes nothing."""

    def __init__(self) -> None:
        self._sent: dict[str, str] = {}
        #: One frame that brings the fold nothing, per kind: a page pickles it once, and
        #: every frame of that kind with nothing for the fold refers to it.
        self._nothing: dict[str, ParsedFrame] = {}

    def fresh(self, parsed: ParsedFrame) -> ParsedFrame:
        """``parsed`` without the fills already sent (the same object when all are new)."""
        fills = parsed.fills
        if fills:
            sent = self._sent
            fresh = tuple([f for f in fills if sent.get(f.fill_id) != f.executed_at])
            if len(sent) + len(fresh) > SENT_MEMORY:
                sent.clear()
            for fill in fresh:
                sent[fill.fill_id] = fill.executed_at
            if len(fresh) == len(fills):
                return parsed
            if fresh or parsed.snapshot is not None or parsed.extra:
                return ParsedFrame(
                    parsed.kind, fresh, parsed.snapshot, parsed.rejection, parsed.extra
                )
        elif parsed.snapshot is not None or parsed.rejection is not None or parsed.extra:
            return parsed
        nothing = self._nothing.get(parsed.kind)
        if nothing is None:
            nothing = self._nothing[parsed.kind] = ParsedFrame(parsed.kind)
        return nothing


def _for_the_fold(frame: PageFrame, sent_fills: _SentFills) -> PageFrame:
    """A frame as the parent's fold needs it (see the module's docstring)."""
    position, head, _raw, parsed = frame
    if parsed.rejection is not None:
        return frame
    return position, head if parsed.snapshot is not None else b"", b"", sent_fills.fresh(parsed)


def _read_ahead(
    parent: int,
    open_log: Callable[[], Database],
    parse: Parser,
    after: int,
    page_size: int,
    stop: int | None,
    pages: Connection,
) -> None:
    try:
        db = open_log()
    except Exception:
        return  # the parent reads for itself
    try:
        sent_fills, sent = _SentFills(), 0
        position = after
        while not parent_gone(parent):
            page = db.read_page(position, page_size, stop=stop)
            if not page:
                pages.send(None)
                return
            frames = [_for_the_fold(frame, sent_fills) for frame in read_frames(page, parse)]
            end = page[-1][0]
            pages.send(ReadPage(position, end, frames))
            position = end
            sent += 1
            if sent % CHILD_PAGES == 0:
                # The next page is the parent's to read and parse: step over it.
                skipped = db.page_end(end, page_size, stop=stop)
                if skipped is None:
                    pages.send(None)
                    return
                position = skipped
    except Exception:  # the parent finds the pipe closed and reads (and fails) for itself
        return
    finally:
        with contextlib.suppress(Exception):
            db.close()
