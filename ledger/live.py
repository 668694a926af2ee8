"""The follow use case: a live account stream into the log, every gap healed from REST.

Guarantees (each checked by tests/test_live.py against a local exchange):

- A received frame is appended to the log (source ``ws``) before anything else
  happens with it: capture, callbacks and projections come after the commit,
  and an error in any of them never loses the frame. A failed commit is retried
  with backoff, the frames kept in memory meanwhile.
- Fills are booked by the store's claim at append, so a fill seen on the
  websocket, in a repeat and again in a REST backfill is booked once.
- After every connect, on a timer (``heal_interval``) and on request, the REST
  backfill pages each symbol's open and historic orders, from the listing's
  newest end, until a page holds only execution ids already booked and, while a
  gap is open, reaches orders last updated before the gap began; then it takes a
  balance snapshot. Its records enter the log as frames (source ``rest``) through
  the same parser and dedup: each order re-wrapped verbatim as an ``order_info``
  frame. An order whose exact text is already in the log is not appended again
  (content-addressed id).
- A REST balance snapshot is booked in the stream's order: after every websocket
  frame received before its response, before any received after. The last
  snapshot in the log is the newest one seen, never an older stream snapshot
  that was still waiting to be committed.
- A gap begins after the newest fill the websocket delivered before a disconnect
  (not any fill: a backfill running at the time may already have booked later
  ones). It is closed by a backfill that ran entirely after it with no new gap
  opening meanwhile. A new run starts with the gap since the last one plus every
  gap an earlier run left open, read back from the log.
- The connection's history is data: ``Connected`` (``gap_since``: the gap still open
  when it connected, so a run killed before healing it passes it on), ``Disconnected``
  (close code, who closed, ``gap_since``) and ``BackfillCompleted`` (fills recovered,
  ``gap_healed``) events in the log.
- ``run`` returns within seconds of ``stop`` being set: the reader is stopped,
  every frame already received is committed, a ``Disconnected`` is recorded,
  projections are caught up.

Every write goes through ``LiveLedger``: one thread, in order, so the websocket
and the backfill never race each other for the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
import time
import uuid
from collections import deque
from collections.abc import Callable, Coroutine, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from ledger.application import AppendReport, IncomingFrame, Ledger, utc_now
from ledger.events import (
    TOPIC_BACKFILL_COMPLETED,
    TOPIC_CONNECTED,
    TOPIC_DISCONNECTED,
    ConnectionEvent,
    claim_id,
)
from ledger.live_ports import (
    AccountRest,
    AuthenticationError,
    FrameStream,
    LiveError,
    StreamClosed,
    StreamEvent,
    StreamFrame,
    StreamOpened,
)
from ledger.logging import get_logger, redact, redact_bytes

log = get_logger(__name__)
T = TypeVar("T")

SOURCE_WS = "ws"
#: A gap that reaches back to the beginning (no fill had arrived on the stream before it).
GAP_FROM_START = ""
SOURCE_REST = "rest"
ORDER_KINDS = ("open-orders", "trade-orders")
_NS_REST = uuid.UUID("0b6f1f9e-5a55-4d6c-9f1e-7d1c2b3a4e50")


@dataclass(frozen=True)
class RestFrame(IncomingFrame):
    """A record from a REST backfill. Its id is its content: the same order text is
    appended once however many backfills return it."""

    def frame_id(self) -> uuid.UUID:
        digest = hashlib.blake2b(self.raw, digest_size=16).hexdigest()
        return uuid.uuid5(_NS_REST, f"{self.source}\n{digest}")


# --- the one door to the store -------------------------------------------------------------


class LiveLedger:
    """Appends, events and projection catch-up, run one at a time on one thread.

    ``catch_up`` brings the projections to the log head; a failure there is logged
    and retried after the next append (the log, not the views, is the truth).
    """

    def __init__(
        self,
        ledger: Ledger,
        catch_up: Callable[[], object],
        known_symbols: Callable[[], Iterable[str]] = lambda: (),
        stream_watermark: Callable[[], str | None] = lambda: None,
        open_gap_start: Callable[[], str | None] = lambda: None,
    ) -> None:
        self.ledger = ledger
        self._catch_up = catch_up
        self._known_symbols = known_symbols
        self._stream_watermark = stream_watermark
        self._open_gap_start = open_gap_start
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledger-writer")

    async def _run(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    def _append_and_project(self, frames: Sequence[IncomingFrame]) -> AppendReport:
        report = self.ledger.append(frames)
        self._project()
        return report

    def _project(self) -> None:
        try:
            self._catch_up()
        except Exception as exc:
            log.error("projections.catch_up_failed", error=redact(f"{type(exc).__name__}: {exc}"))

    async def append(self, frames: Sequence[IncomingFrame]) -> AppendReport:
        return await self._run(lambda: self._append_and_project(frames))

    def append_blocking(self, frames: Sequence[IncomingFrame]) -> AppendReport:
        """The same as ``append`` for synchronous callers (never from the writer thread)."""
        return self._executor.submit(self._append_and_project, frames).result()

    async def record(self, event: ConnectionEvent) -> None:
        await self._run(lambda: self.ledger.store.append([event.to_stored()]))

    async def fills_and_claims(
        self, frames: Sequence[IncomingFrame]
    ) -> tuple[set[str], set[str], str | None]:
        """The fill ids these frames carry, which of them the log has already booked, and
        the oldest execution time among them (parsed on the writer thread: a page of
        orders is too much work for the event loop)."""

        def work() -> tuple[set[str], set[str], str | None]:
            fills = [f for frame in frames for f in self.ledger.parse(frame.raw).fills]
            ids = {f.fill_id for f in fills}
            by_claim = {claim_id(i): i for i in ids}
            found = self.ledger.store.existing(list(by_claim)) if by_claim else {}
            oldest = min((f.executed_at for f in fills), default=None)
            return ids, {by_claim[c] for c in found}, oldest

        return await self._run(work)

    async def stream_watermark(self) -> str | None:
        """The execution time of the newest fill that arrived on the websocket (``None``:
        none yet). REST fills don't count: a backfill may book fills from after a gap
        while the gap's start is still unhealed."""
        return await self._run(self._stream_watermark)

    async def open_gap_start(self) -> str | None:
        """Where the oldest gap not healed by an earlier run begins (see ``GAP_FROM_START``)."""
        return await self._run(self._open_gap_start)

    async def symbols(self) -> set[str]:
        return set(await self._run(lambda: list(self._known_symbols())))

    async def project(self) -> None:
        await self._run(self._project)

    def run_blocking(self, fn: Callable[[], T]) -> T:
        return self._executor.submit(fn).result()

    def close(self) -> None:
        self._executor.shutdown(wait=True)


# --- configuration and figures ---------------------------------------------------------------


@dataclass(frozen=True)
class FollowOptions:
    heal_interval: float = 60.0
    capture: Path | None = None
    max_pages: int = 1000  # the API serves pages 1..1000
    batch_size: int = 1000
    commit_retry_cap: float = 5.0
    stop_commit_timeout: float = 2.0


@dataclass
class HealReport:
    trigger: str
    symbols: list[str] = field(default_factory=list)
    pages: int = 0
    orders: int = 0
    frames_appended: int = 0
    fills_recovered: int = 0
    rejected: int = 0
    seconds: float = 0.0


@dataclass
class FollowStats:
    run: str = field(default_factory=lambda: uuid.uuid4().hex)
    frames_ws: int = 0
    frames_rest: int = 0
    appended: int = 0
    already_ingested: int = 0
    fills_new: int = 0
    fills_duplicate: int = 0
    fills_healed: int = 0
    rejected: int = 0
    conflicts: int = 0
    connects: int = 0
    disconnects: int = 0
    heals: int = 0
    heals_failed: int = 0
    gaps_healed: int = 0  # heals that recovered at least one fill
    secrets_masked: int = 0
    uncommitted: int = 0
    connected: bool = False
    last_frame_at: str | None = None
    close_codes: dict[str, int] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


AppendListener = Callable[[Sequence[IncomingFrame], AppendReport], Any]


@dataclass(frozen=True)
class _Fatal:
    error: BaseException


@dataclass(frozen=True)
class _InStreamOrder:
    """REST frames to commit where they arrived in the stream: after every frame
    received before them (``done`` gets the commit's report)."""

    frames: Sequence[IncomingFrame]
    done: asyncio.Future[AppendReport]


class CaptureFile:
    """``--capture``: every received frame appended as one line (a newline inside a frame,
    which valid JSON only has as whitespace, becomes a space)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._file = os.fdopen(fd, "ab")

    def write(self, frames: Sequence[IncomingFrame]) -> None:
        for frame in frames:
            self._file.write(frame.raw.replace(b"\r", b" ").replace(b"\n", b" ") + b"\n")
        self._file.flush()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._file.flush()
            os.fsync(self._file.fileno())
        self._file.close()


# --- the follower ------------------------------------------------------------------------------


class Follower:
    def __init__(
        self,
        store: LiveLedger,
        stream: FrameStream,
        rest: AccountRest,
        options: FollowOptions = FollowOptions(),
    ) -> None:
        self.store = store
        self.stream = stream
        self.rest = rest
        self.options = options
        self.stats = FollowStats()
        self.listeners: list[AppendListener] = []
        self._inbox: deque[StreamEvent | _Fatal | _InStreamOrder] = deque()
        #: The writer is taking the inbox in order (``run`` has started and not yet drained).
        self._writing = False
        self._inbox_ready = asyncio.Event()
        self._capture = CaptureFile(options.capture) if options.capture else None
        self._heal_wakeup = asyncio.Event()
        self._heal_trigger = "timer"
        self._heal_waiters: list[asyncio.Future[HealReport]] = []
        self._connection_number = 0
        self._stopping = False
        #: Where the oldest gap not yet healed begins: the execution time of the newest fill
        #: the stream delivered before it (``GAP_FROM_START``: none had; ``None``: no gap).
        self._gap_since: str | None = None
        self._gaps = 0
        #: Where each gap counted in ``_gaps`` began, by its number (pruned as heals end).
        self._gap_starts: dict[int, str] = {}
        self.last_heal: HealReport | None = None

    # --- running -----------------------------------------------------------------------

    async def run(
        self, stop: asyncio.Event | None = None, duration: float | None = None
    ) -> FollowStats:
        """Follow until ``stop`` is set or ``duration`` seconds pass; raise on a fatal error
        (a refused key, or the allowed connection attempts used up)."""
        stop = stop or asyncio.Event()
        loop = asyncio.get_running_loop()
        timer = loop.call_later(duration, stop.set) if duration is not None else None
        # Whatever happened since the last run is a gap, as is any gap it left unhealed.
        self._gap_since = await self.store.open_gap_start()
        self._writing = True
        reader = asyncio.create_task(self._read(), name="ledger-ws-reader")
        healer = asyncio.create_task(self._heal_loop(), name="ledger-healer")
        fatal: BaseException | None = None
        try:
            fatal = await self._write_loop(stop)
        finally:
            self._stopping = True
            if timer:
                timer.cancel()
            await cancel_and_wait((reader, healer), grace=self.options.stop_commit_timeout + 1.0)
            await self._drain()
            self._writing = False
            if self.stats.connected:
                await self._disconnected(StreamClosed(1000, "stopped", "client"))
            await self.store.project()
            for waiter in self._heal_waiters:
                if not waiter.done():
                    waiter.cancel()
            if self._capture:
                self._capture.close()
        if fatal is not None:
            raise fatal
        return self.stats

    def _post(self, item: StreamEvent | _Fatal | _InStreamOrder) -> None:
        self._inbox.append(item)
        self._inbox_ready.set()

    async def _read(self) -> None:
        try:
            async with contextlib.aclosing(self.stream.events()) as events:
                async for event in events:
                    self._post(event)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._post(_Fatal(exc))

    async def _write_loop(self, stop: asyncio.Event) -> BaseException | None:
        stopping = asyncio.create_task(stop.wait())
        try:
            while not stop.is_set():
                if not self._inbox:
                    self._inbox_ready.clear()
                    ready = asyncio.create_task(self._inbox_ready.wait())
                    await asyncio.wait({ready, stopping}, return_when=asyncio.FIRST_COMPLETED)
                    ready.cancel()
                    continue
                fatal = await self._handle(self._inbox.popleft())
                if fatal is not None:
                    return fatal
            return None
        finally:
            stopping.cancel()

    async def _handle(self, first: StreamEvent | _Fatal | _InStreamOrder) -> BaseException | None:
        if isinstance(first, _Fatal):
            return first.error
        if isinstance(first, _InStreamOrder):
            await self._commit_posted(first)
            return None
        if isinstance(first, StreamOpened):
            await self._connected(first)
        elif isinstance(first, StreamClosed):
            await self._disconnected(first)
        else:
            batch = [first]
            while (
                self._inbox
                and isinstance(self._inbox[0], StreamFrame)
                and len(batch) < self.options.batch_size
            ):
                frame = self._inbox.popleft()
                # bandit B101: narrows the type for mypy; the loop condition just checked it.
                assert isinstance(frame, StreamFrame)  # nosec B101
                batch.append(frame)
            await self._commit_ws(batch)
        return None

    async def _drain(self) -> None:
        """Commit whatever was received before the stop; record the events among it."""
        while self._inbox:
            event = self._inbox.popleft()
            if not isinstance(event, _Fatal):
                await self._handle(event)

    # --- commits ---------------------------------------------------------------------

    async def _commit_ws(self, events: Sequence[StreamFrame]) -> None:
        frames = [
            IncomingFrame(raw=self._scrub(e.raw), source=SOURCE_WS, received_at=e.received_at)
            for e in events
        ]
        self.stats.frames_ws += len(frames)
        self.stats.last_frame_at = events[-1].received_at
        await self.commit(frames)

    async def _commit_in_stream_order(self, frames: Sequence[IncomingFrame]) -> AppendReport:
        """Commit REST ``frames`` behind every websocket frame received so far (the writer
        takes them from the inbox in turn); directly when no writer is running.

        Once posted, the frames are committed even if the caller is cancelled: the stop
        drains the inbox.
        """
        if not self._writing:
            return await self._commit_rest(frames)
        posted = _InStreamOrder(frames, asyncio.get_running_loop().create_future())
        self._post(posted)
        return await asyncio.shield(posted.done)

    async def _commit_posted(self, posted: _InStreamOrder) -> None:
        try:
            report = await self._commit_rest(posted.frames)
        except asyncio.CancelledError:
            posted.done.cancel()
            raise
        except Exception as exc:
            posted.done.set_exception(exc)
            raise
        if not posted.done.done():
            posted.done.set_result(report)

    async def _commit_rest(self, frames: Sequence[IncomingFrame]) -> AppendReport:
        report = await self.commit(frames)
        self.stats.frames_rest += len(frames)
        return report

    def _scrub(self, raw: bytes) -> bytes:
        clean, masked = redact_bytes(raw)
        if masked:
            # A frame that echoes the API key is kept with the key masked: it must never
            # reach the log, a capture or a callback.
            self.stats.secrets_masked += 1
            log.warning("frame.secret_masked")
        return clean

    async def commit(self, frames: Sequence[IncomingFrame]) -> AppendReport:
        """Append (retrying until it commits), then capture, then tell the listeners.

        Once started, a commit runs to its end even if the caller is cancelled (a stop
        arriving mid-backfill): what is in the log is also in the capture.
        """
        return await self._to_the_end(self._commit(frames))

    async def _to_the_end(self, work: Coroutine[Any, Any, T]) -> T:
        """Await ``work``; if the caller is cancelled meanwhile, let it finish first (up to
        ``stop_commit_timeout``), then pass the cancellation on."""
        task = asyncio.ensure_future(work)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(
                    asyncio.shield(task), timeout=self.options.stop_commit_timeout
                )
            raise

    async def _commit(self, frames: Sequence[IncomingFrame]) -> AppendReport:
        report = await self._append_until_committed(frames)
        self.stats.appended += report.appended
        self.stats.already_ingested += report.already_ingested
        self.stats.fills_new += report.fills_new
        self.stats.fills_duplicate += report.fills_duplicate
        self.stats.rejected += report.rejected
        self.stats.conflicts += len(report.conflicts)
        if report.conflicts:
            log.warning(
                "fills.conflict", fill_ids=report.conflicts[:10], count=len(report.conflicts)
            )
        if self._capture:
            try:
                self._capture.write(frames)
            except OSError as exc:
                log.error("capture.write_failed", error=str(exc))
        for listener in list(self.listeners):
            try:
                result = listener(frames, report)
                if asyncio.iscoroutine(result):
                    await result
            except Exception:
                log.exception("listener.failed")
        return report

    async def _append_until_committed(self, frames: Sequence[IncomingFrame]) -> AppendReport:
        """Retry a failing append with backoff for as long as we run; when stopping, give
        up after a few attempts (and say how many frames are lost) rather than hang."""
        delay = 0.05
        attempt = 0
        while True:
            attempt += 1
            try:
                return await self.store.append(frames)
            except Exception as exc:
                log.error(
                    "log.append_failed",
                    frames=len(frames),
                    attempt=attempt,
                    error=redact(
                        f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                    ),
                )
                if self._stopping and attempt >= 3:
                    self.stats.uncommitted += len(frames)
                    log.error("log.frames_not_committed", frames=len(frames))
                    return AppendReport(frames=len(frames))
                await asyncio.sleep(delay)
                delay = min(self.options.commit_retry_cap, delay * 2)

    # --- connection history ------------------------------------------------------------

    def _event(self, topic: str, **details: Any) -> ConnectionEvent:
        return ConnectionEvent(
            topic=topic,
            at=utc_now(),
            details={"run": self.stats.run, **details},
            event_id=uuid.uuid4(),
        )

    async def _record(
        self, event: ConnectionEvent, *, then: Callable[[], None] | None = None
    ) -> None:
        """Connection history is worth keeping, not worth stopping for: a failed write is
        logged. Once started, the write runs to its end even if the caller is cancelled;
        ``then`` runs once the event is in the log (stats that must agree with the log)."""

        async def write() -> None:
            try:
                await self.store.record(event)
            except Exception as exc:
                log.error(
                    "log.event_failed",
                    topic=event.topic,
                    error=redact(f"{type(exc).__name__}: {exc}"),
                )
                return
            if then is not None:
                then()

        await self._to_the_end(write())

    async def _connected(self, opened: StreamOpened) -> None:
        self._connection_number += 1
        self.stats.connects += 1
        self.stats.connected = True
        await self._record(
            self._event(
                TOPIC_CONNECTED,
                n=self._connection_number,
                attempt=opened.attempt,
                url=opened.url,
                pid=os.getpid(),
                host=socket.gethostname(),
                # The gap this connection's backfill must heal, in the log before any frame
                # of the connection: if this run dies before healing it, the next run reads
                # it back (the stream's watermark will have moved past its start by then).
                gap_since=self._gap_since,
            )
        )
        log.info(
            "stream.connected", url=opened.url, n=self._connection_number, attempt=opened.attempt
        )
        self.request_heal("connect")

    async def _disconnected(self, closed: StreamClosed) -> None:
        self.stats.connected = False
        start = None
        if not self._stopping:
            since = await self.store.stream_watermark()
            start = GAP_FROM_START if since is None else since
            if self._gap_since is None:
                self._gap_since = start
        # Counted only once its start is recorded: a backfill that began meanwhile must not
        # take this gap for healed.
        self._gaps += 1
        if start is not None:
            self._gap_starts[self._gaps] = start
        self.stats.disconnects += 1
        code = str(closed.code)
        self.stats.close_codes[code] = self.stats.close_codes.get(code, 0) + 1
        await self._record(
            self._event(
                TOPIC_DISCONNECTED,
                n=self._connection_number,
                code=closed.code,
                reason=redact(closed.reason)[:200],
                by=closed.by,
                gap_since=self._gap_since,
            )
        )
        log.info(
            "stream.disconnected", code=closed.code, reason=redact(closed.reason), by=closed.by
        )

    # --- healing -------------------------------------------------------------------------

    def request_heal(self, trigger: str) -> None:
        self._heal_trigger = trigger
        self._heal_wakeup.set()

    async def heal_now(self, trigger: str = "manual") -> HealReport:
        """Ask for a backfill and wait for one that starts after this call to finish."""
        waiter: asyncio.Future[HealReport] = asyncio.get_running_loop().create_future()
        self._heal_waiters.append(waiter)
        self.request_heal(trigger)
        return await waiter

    async def _heal_loop(self) -> None:
        interval = self.options.heal_interval
        retry_soon = False
        while True:
            try:
                wait = min(interval, 2.0) if retry_soon else interval
                await asyncio.wait_for(self._heal_wakeup.wait(), timeout=wait)
                trigger = self._heal_trigger
            except TimeoutError:
                trigger = "retry" if retry_soon else "timer"
            self._heal_wakeup.clear()
            waiters, self._heal_waiters = self._heal_waiters, []
            try:
                report = await self.heal(trigger)
            except AuthenticationError as exc:
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_exception(exc)
                self._post(_Fatal(exc))
                return
            except asyncio.CancelledError:
                for waiter in waiters:
                    waiter.cancel()
                raise
            except Exception as exc:
                self.stats.heals_failed += 1
                retry_soon = True
                log.warning(
                    "heal.failed", trigger=trigger, error=redact(f"{type(exc).__name__}: {exc}")
                )
                # The waiters stay for the next attempt.
                self._heal_waiters = waiters + self._heal_waiters
                continue
            retry_soon = False
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(report)

    async def heal(self, trigger: str) -> HealReport:
        """One backfill: every known symbol's orders, page by page, then the balances."""
        started = time.monotonic()
        report = HealReport(trigger=trigger)
        gap_since, gaps = self._gap_since, self._gaps
        symbols = set(await self.store.symbols())
        try:
            symbols |= set(await self.rest.market_symbols())
        except AuthenticationError:
            raise
        except LiveError as exc:
            log.warning("heal.market_config_failed", error=str(exc))
        report.symbols = sorted(symbols)
        for symbol in report.symbols:
            for kind in ORDER_KINDS:
                await self._backfill_listing(kind, symbol, report, gap_since)
        appended = await self.snapshot_balances()
        report.frames_appended += appended.appended
        report.seconds = round(time.monotonic() - started, 3)
        self.stats.heals += 1
        cleared = self._gaps == gaps
        # This backfill paged back to ``gap_since``: every gap open when it began is healed.
        # What is left open starts where the first gap opened while it ran began, not at the
        # old start, or with drops coming faster than backfills every backfill would page
        # back further (seen in a 300 frames/s soak: 8 pages, then 136, then one that never
        # ended).
        later = {n: start for n, start in self._gap_starts.items() if n > gaps}
        self._gap_starts = later
        if cleared:
            self._gap_since = None  # healed, and no new gap opened meanwhile
        elif later and gap_since is not None:
            self._gap_since = later[min(later)]
        await self._record(
            self._event(
                TOPIC_BACKFILL_COMPLETED,
                trigger=trigger,
                fills_recovered=report.fills_recovered,
                frames=report.frames_appended,
                orders=report.orders,
                pages=report.pages,
                rejected=report.rejected,
                symbols=report.symbols,
                gap_since=gap_since,
                gap_healed=cleared,
                seconds=report.seconds,
            ),
            # Counted once its event is in the log, and only then, so the stats and
            # `ledger status` agree even when a stop cancels this backfill mid-write.
            then=self._count_gap_healed if report.fills_recovered else None,
        )
        self.last_heal = report
        log.info(
            "heal.completed",
            trigger=trigger,
            fills_recovered=report.fills_recovered,
            pages=report.pages,
            orders=report.orders,
            seconds=report.seconds,
        )
        return report

    def _count_gap_healed(self) -> None:
        self.stats.gaps_healed += 1

    async def snapshot_balances(self) -> AppendReport:
        """``GET /accounts/balance`` into the log as a ``balance`` frame (source ``rest``)."""
        balance = await self.rest.balance_frame()
        frame = IncomingFrame(raw=self._scrub(balance), source=SOURCE_REST, received_at=utc_now())
        # In stream order: committed straight away, it could land before an older stream
        # snapshot still waiting in the inbox, which would then undo it.
        return await self._commit_in_stream_order([frame])

    async def _backfill_listing(
        self, kind: str, symbol: str, report: HealReport, gap_since: str | None
    ) -> None:
        """Page one listing from its newest end until a page holds only booked fills and,
        when a gap is known, reaches back before it.

        The second condition matters because the stream keeps delivering while a backfill
        runs: the newest pages can be fully booked with the gap deeper down. The listing's
        sort order is undocumented: page 1 tells which way it runs, and an oldest-first
        listing is walked from its last page down.
        """
        first = await self.rest.order_page(kind, symbol, 1)
        report.pages += 1
        backwards = bool(first.oldest_first and first.total_pages and first.total_pages > 1)
        if backwards and first.total_pages:
            pages = list(range(min(first.total_pages, self.options.max_pages), 0, -1))
        else:
            pages = list(range(1, self.options.max_pages + 1))
        for page in pages:
            if page == 1:
                result = first
            else:
                result = await self.rest.order_page(kind, symbol, page)
                report.pages += 1
            if not result.frames:
                return
            now = utc_now()
            frames = [
                RestFrame(raw=self._scrub(raw), source=SOURCE_REST, received_at=now)
                for raw in result.frames
            ]
            fill_ids, booked_before, oldest = await self.store.fills_and_claims(frames)
            appended = await self.commit(frames)
            self.stats.frames_rest += len(frames)
            report.orders += len(frames)
            report.frames_appended += appended.appended
            report.fills_recovered += appended.fills_new
            self.stats.fills_healed += appended.fills_new
            report.rejected += appended.rejected
            all_booked = bool(fill_ids) and fill_ids <= booked_before
            # Past the gap: the page reaches orders last updated before it began (their
            # update times when the listing gives them, else their fills' times).
            reach = result.oldest_update or oldest
            before_gap = gap_since is None or (reach is not None and reach < gap_since)
            if all_booked and before_gap:
                return
            if not backwards and result.last_page:
                return


# --- composing a run -------------------------------------------------------------------------


async def follow_until_stopped(
    follower: Follower,
    *,
    duration: float | None = None,
    install_signal_handlers: bool = True,
    stop: asyncio.Event | None = None,
) -> FollowStats:
    """Run a follower until SIGINT/SIGTERM, ``duration`` or ``stop``; restore the handlers."""
    import signal

    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    if install_signal_handlers:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, stop.set)
                installed.append(sig)
    try:
        return await follower.run(stop, duration)
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


async def cancel_and_wait(tasks: Sequence[asyncio.Task[Any]], *, grace: float) -> None:
    """Cancel ``tasks`` and wait until every one has ended, cancelling again any still
    running ``grace`` seconds later: a cancellation can be lost (on Python 3.11,
    ``asyncio.wait_for`` returns its inner result when that and the cancellation arrive
    together), and a stopped follower must still return."""
    for task in tasks:
        task.cancel()
    pending: set[asyncio.Task[Any]] = set(tasks)
    while pending:
        _, pending = await asyncio.wait(pending, timeout=grace)
        for task in pending:
            log.warning("stop.cancel_again", task=task.get_name())
            task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)  # done: collects their outcomes
