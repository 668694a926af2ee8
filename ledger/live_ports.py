"""What the live use case needs from the outside world, as plain types and protocols.

The websocket follower and the REST client in ``adapters.deltadefi`` implement
these; ``ledger.live`` depends on nothing else, so it can be driven by any
source (and tests drive it with the real adapters against a local exchange).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import Protocol


class LiveError(Exception):
    """A live-path failure the user must act on. Its message never contains a secret."""


class AuthenticationError(LiveError):
    """The exchange refused the API key (HTTP 401/403)."""


class SourceUnavailable(LiveError):
    """The exchange could not be reached after every allowed attempt."""


# --- the account stream ---------------------------------------------------------------


@dataclass(frozen=True)
class StreamOpened:
    """A websocket connection is open; ``attempt`` counts the tries it took (1 = first)."""

    url: str  # redacted: never carries the key
    attempt: int


@dataclass(frozen=True)
class StreamFrame:
    """One message exactly as received (text frames are their UTF-8 bytes, undecoded)."""

    raw: bytes
    received_at: str


@dataclass(frozen=True)
class StreamClosed:
    """The connection ended. ``by``: ``server`` (it sent a close frame), ``client`` (we
    closed it, e.g. a keepalive ping timed out or we are stopping) or ``network``
    (no close frame at all: code 1006)."""

    code: int
    reason: str
    by: str


StreamEvent = StreamOpened | StreamFrame | StreamClosed


class FrameStream(Protocol):
    def events(self) -> AsyncGenerator[StreamEvent, None]:
        """Connect, yield events, reconnect with backoff, forever.

        Raises ``AuthenticationError`` when the key is refused and
        ``SourceUnavailable`` when the allowed attempts are used up.
        """
        ...


# --- the REST backfill source ------------------------------------------------------------


@dataclass(frozen=True)
class OrderPage:
    """One page of orders, each already wrapped as a raw ``order_info`` frame.

    ``oldest_first`` says which way the listing runs, as far as the page shows
    (``None``: cannot tell); the sort order is undocumented, and the backfill must
    start from the newest end. ``oldest_update`` is the earliest ``updated_at`` on
    the page, as ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` (the form of ``Fill.executed_at``).
    """

    frames: Sequence[bytes]
    last_page: bool
    total_pages: int | None = None
    oldest_first: bool | None = None
    oldest_update: str | None = None


class AccountRest(Protocol):
    async def balance_frame(self) -> bytes:
        """``GET /accounts/balance`` wrapped as a raw ``balance`` frame."""
        ...

    async def market_symbols(self) -> list[str]:
        """The trading pairs from ``/app/market-config`` (e.g. ``ADAUSDM``)."""
        ...

    async def order_page(self, kind: str, symbol: str, page: int) -> OrderPage:
        """``kind`` is ``trade-orders`` or ``open-orders``; pages count from 1."""
        ...

    async def aclose(self) -> None: ...
