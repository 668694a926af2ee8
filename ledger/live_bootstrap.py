"""Wiring for the live path: settings in, a ``Follower`` on real adapters out.

The live path's composition root, beside ``ledger.bootstrap`` (which wires the
store and the projections): the websocket follower and the REST client from
``adapters.deltadefi``, the ledger's single writer, the projector's catch-up.
The API key is registered for redaction here, before anything can log it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from adapters.deltadefi.rest import RestClient, RetryPolicy
from adapters.deltadefi.stream import AccountStream, Backoff, Keepalive
from ledger.bootstrap import LedgerServices
from ledger.events import (
    CONNECTION_TOPICS,
    FRAME_TOPICS,
    TOPIC_BACKFILL_COMPLETED,
    TOPIC_CONNECTED,
    TOPIC_DISCONNECTED,
    split_state,
)
from ledger.live import (
    GAP_FROM_START,
    SOURCE_WS,
    Follower,
    FollowOptions,
    FollowStats,
    LiveLedger,
    follow_until_stopped,
)
from ledger.live_ports import AuthenticationError
from ledger.logging import register_secret
from ledger.settings import DeltaDeFiSettings


@dataclass(frozen=True)
class LiveConfig:
    """Everything a live run needs. ``repr`` never shows the key."""

    api_key: str
    ws_url: str = "wss://stream.deltadefi.io"
    rest_url: str = "https://api.deltadefi.io"
    retry_initial: float = 1.0
    retry_cap: float = 60.0
    retry_max: int | None = None
    ping_interval: float = 20.0
    ping_timeout: float = 20.0
    idle_timeout: float | None = None
    close_timeout: float = 2.0
    heal_interval: float = 60.0
    rest_timeout: float = 10.0
    rest_retry_max: int = 8
    rest_retry_initial: float = 0.5
    rest_retry_cap: float = 30.0
    rest_min_interval: float = 0.2
    rest_page_limit: int = 250  # orders per page (the API allows 1..250)
    capture: Path | None = None

    def __repr__(self) -> str:
        return f"LiveConfig(ws_url={self.ws_url!r}, rest_url={self.rest_url!r}, api_key=***)"

    @classmethod
    def from_settings(cls, settings: DeltaDeFiSettings, **overrides: Any) -> LiveConfig:
        """Settings (environment, ``.env``), then the non-``None`` overrides (flags)."""
        key = settings.api_key.get_secret_value() if settings.api_key else ""
        config = cls(
            api_key=key,
            ws_url=settings.ws_url,
            rest_url=settings.rest_url,
            retry_initial=settings.websocket_retry_delay,
            retry_cap=settings.websocket_retry_cap,
            retry_max=settings.retry_max_attempts,
            ping_interval=settings.ping_interval,
            ping_timeout=settings.ping_timeout,
            heal_interval=settings.heal_interval,
            rest_timeout=settings.rest_timeout,
            rest_retry_max=settings.rest_retry_max,
            rest_min_interval=settings.rest_min_interval,
        )
        chosen = {k: v for k, v in overrides.items() if v is not None}
        if chosen.get("retry_max") == 0:
            chosen["retry_max"] = None
        config = replace(config, **chosen)
        register_secret(config.api_key)
        return config


def open_follower(services: LedgerServices, config: LiveConfig) -> Follower:
    """A follower of ``config``'s account writing into ``services``' ledger."""
    if not config.api_key:
        raise AuthenticationError("no DeltaDeFi API key: set DELTADEFI_API_KEY (or pass --api-key)")
    register_secret(config.api_key)
    stream = AccountStream(
        config.ws_url,
        config.api_key,
        backoff=Backoff(config.retry_initial, config.retry_cap, config.retry_max),
        keepalive=Keepalive(
            ping_interval=config.ping_interval,
            ping_timeout=config.ping_timeout,
            idle_timeout=config.idle_timeout,
            close_timeout=config.close_timeout,
        ),
    )
    rest = RestClient(
        config.rest_url,
        config.api_key,
        timeout=config.rest_timeout,
        retry=RetryPolicy(config.rest_retry_initial, config.rest_retry_cap, config.rest_retry_max),
        min_interval=config.rest_min_interval,
        page_limit=config.rest_page_limit,
    )
    store = LiveLedger(
        services.ledger,
        services.projector.catch_up,
        known_symbols=lambda: fill_symbols(services),
        stream_watermark=lambda: stream_watermark(services),
        open_gap_start=lambda: open_gap_start(services),
    )
    return Follower(
        store,
        stream,
        rest,
        FollowOptions(heal_interval=config.heal_interval, capture=config.capture),
    )


def fill_symbols(services: LedgerServices) -> list[str]:
    """Symbols the log has booked fills on (from the fills projection)."""
    with services.db.reading() as cur:
        cur.execute("SELECT DISTINCT symbol FROM ledger_fills")
        return [str(row[0]) for row in cur.fetchall()]


def stream_watermark(services: LedgerServices, max_scan: int = 200_000) -> str | None:
    """The execution time of the newest fill among the frames that came from the websocket,
    read from the log's tail backwards (``None`` if none did within ``max_scan`` events)."""
    db, parse = services.db, services.ledger.parse
    stop, window = db.head(), 2000
    while stop > 0 and db.head() - stop < max_scan:
        after = max(0, stop - window)
        newest = ""
        for note in db.read(after, window, topics=FRAME_TOPICS, stop=stop):
            head, raw = split_state(note.state)
            if head.get("src") == SOURCE_WS:
                for fill in parse(raw).fills:
                    newest = max(newest, fill.executed_at)
        if newest:
            return newest
        stop, window = after, window * 2
    return None


def open_gap_start(services: LedgerServices) -> str:
    """Where a new run's first backfill must reach back to: the oldest gap an earlier run
    left unhealed (the ``gap_since`` of its ``Connected`` and ``Disconnected`` events after
    the last backfill that healed every gap), and the gap since the last run (after the
    newest fill the stream delivered)."""
    starts: list[str] = []
    db, after = services.db, 0
    while True:
        page = db.read(after, 1000, topics=CONNECTION_TOPICS)
        for note in page:
            head, _ = split_state(note.state)
            if note.topic == TOPIC_BACKFILL_COMPLETED and head.get("gap_healed"):
                starts = []
            elif note.topic in (TOPIC_CONNECTED, TOPIC_DISCONNECTED) and isinstance(
                head.get("gap_since"), str
            ):
                # A Connected carries the gap its run started with: a run killed before its
                # backfill healed that gap leaves no Disconnected behind to say so.
                starts.append(head["gap_since"])
        if len(page) < 1000:
            break
        after = page[-1].id
    mark = stream_watermark(services)
    starts.append(GAP_FROM_START if mark is None else mark)
    return min(starts)


async def close_follower(follower: Follower) -> None:
    await follower.rest.aclose()
    follower.store.close()


async def follow_account(
    services: LedgerServices,
    config: LiveConfig,
    *,
    duration: float | None = None,
    stop: asyncio.Event | None = None,
    started: Callable[[Follower], None] | None = None,
) -> FollowStats:
    """``ledger run``: follow until SIGINT/SIGTERM, ``duration`` seconds or ``stop``; close.

    ``started`` sees the follower before it runs (tests read its figures).
    """
    follower = open_follower(services, config)
    if started:
        started(follower)
    try:
        return await follow_until_stopped(follower, duration=duration, stop=stop)
    finally:
        await close_follower(follower)
