"""DeltaDeFi's REST API, as the ledger's backfill source (``ledger.live_ports.AccountRest``).

Every request carries the key in the ``X-API-KEY`` header (never in a URL), has
a timeout, and is spaced ``min_interval`` seconds from the previous one (the
exchange publishes no limits: be polite). HTTP 429, 5xx, timeouts and network
errors are retried with exponential backoff and full jitter (a ``Retry-After``
header, when sent, is a floor); 401/403 raise ``AuthenticationError`` at once
with a message that names the key problem but never the key.

Records are handed on verbatim: each order of a page is cut out of the response
text exactly as sent and wrapped as an ``order_info`` frame, and the balance
list as a ``balance`` frame, so REST records enter the log through the same
parser and the same dedup as websocket frames.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import httpx
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)

from ledger.live_ports import AuthenticationError, LiveError, OrderPage, SourceUnavailable
from ledger.logging import get_logger, redact, register_secret

log = get_logger(__name__)

ORDER_KINDS = ("open-orders", "trade-orders")
MAX_PAGE_LIMIT = 250

_ORDER_PREFIX = b'{"type":"Account","sub_type":"order_info","order":'
_BALANCE_PREFIX = b'{"type":"Account","sub_type":"balance","balance":'


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter: wait ~ U(0, min(cap, initial × 2^n))."""

    initial: float = 0.5
    cap: float = 30.0
    max_attempts: int = 8


class _Retryable(Exception):
    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RestClient:
    """An ``AccountRest`` over httpx. Use as an async context manager or call ``aclose``."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = 10.0,
        retry: RetryPolicy = RetryPolicy(),
        min_interval: float = 0.2,
        page_limit: int = MAX_PAGE_LIMIT,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if not api_key:
            raise AuthenticationError(
                "no DeltaDeFi API key: set DELTADEFI_API_KEY (or pass --api-key)"
            )
        register_secret(api_key)  # whatever logs or errors later, never this
        self.base_url = base_url.rstrip("/")
        self.retry = retry
        self.min_interval = min_interval
        self.page_limit = max(1, min(page_limit, MAX_PAGE_LIMIT))
        self._client = httpx.AsyncClient(
            base_url=self.base_url,
            headers={"X-API-KEY": api_key, "Accept": "application/json"},
            timeout=httpx.Timeout(timeout),
            transport=transport,
            follow_redirects=False,
        )
        self._pace = asyncio.Lock()
        self._last_request = 0.0
        #: Requests sent, 429s and 5xx answers seen: for reports and tests.
        self.requests = 0
        self.rate_limited = 0
        self.server_errors = 0

    async def __aenter__(self) -> RestClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()

    # --- the endpoints ------------------------------------------------------------------

    async def balance_frame(self) -> bytes:
        text = await self.get_text("/accounts/balance")
        items, _ = split_listing(text, "/accounts/balance")
        return _BALANCE_PREFIX + ("[" + ",".join(items) + "]").encode() + b"}"

    async def market_symbols(self) -> list[str]:
        text = await self.get_text("/app/market-config")
        try:
            body = json.loads(text, parse_float=Decimal)
        except ValueError as exc:
            raise LiveError("GET /app/market-config: the response is not JSON") from exc
        return market_symbols(body)

    async def order_page(self, kind: str, symbol: str, page: int) -> OrderPage:
        if kind not in ORDER_KINDS:
            raise ValueError(f"unknown order listing {kind!r}")
        path = f"/accounts/{kind}"
        params = {"symbol": symbol, "page": page, "limit": self.page_limit}
        text = await self.get_text(path, params)
        items, meta = split_listing(text, path)
        total_page = meta.get("total_page")
        # Without a page count, a short page is the last one.
        last = page >= total_page if isinstance(total_page, int) else len(items) < self.page_limit
        frames = [_ORDER_PREFIX + item.encode() + b"}" for item in items]
        times = [_order_time(item) for item in items]
        known = [t for t in times if t is not None]
        return OrderPage(
            frames=frames,
            last_page=last,
            total_pages=total_page if isinstance(total_page, int) else None,
            oldest_first=listing_direction(times),
            oldest_update=_fill_time_format(min(known)) if known else None,
        )

    # --- one GET, retried -----------------------------------------------------------------

    async def get_text(self, path: str, params: dict[str, Any] | None = None) -> str:
        """The body of a successful GET; see the module docstring for what is retried."""
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(_Retryable),
            wait=self._wait,
            stop=stop_after_attempt(self.retry.max_attempts),
            before_sleep=self._log_retry,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    return await self._get_once(path, params)
        except _Retryable as exc:
            raise SourceUnavailable(
                f"GET {path} failed {self.retry.max_attempts} times; last: {exc}"
            ) from None
        raise AssertionError("unreachable: tenacity either returns or raises")

    def _wait(self, state: RetryCallState) -> float:
        jitter = wait_random_exponential(multiplier=self.retry.initial, max=self.retry.cap)(state)
        outcome = state.outcome
        exc = outcome.exception() if outcome is not None else None
        if isinstance(exc, _Retryable) and exc.retry_after is not None:
            return min(self.retry.cap, max(jitter, exc.retry_after))
        return float(jitter)

    def _log_retry(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        log.warning(
            "rest.retry",
            attempt=state.attempt_number,
            wait_s=round(state.upcoming_sleep, 3),
            reason=redact(str(exc)),
        )

    async def _get_once(self, path: str, params: dict[str, Any] | None) -> str:
        await self._space_out()
        self.requests += 1
        try:
            response = await self._client.get(path, params=params)
        except httpx.TimeoutException:
            raise _Retryable("timed out") from None
        except httpx.TransportError as exc:
            raise _Retryable(f"network error: {type(exc).__name__}") from None
        status = response.status_code
        if status == 200:
            return response.text
        detail = _error_detail(response)
        if status in (401, 403):
            raise AuthenticationError(
                f"DeltaDeFi refused the API key (HTTP {status} on GET {path}{detail}): the key "
                "is missing, mistyped, expired or revoked; set DELTADEFI_API_KEY (or --api-key) "
                "to a valid key"
            )
        if status == 429:
            self.rate_limited += 1
            raise _Retryable(f"HTTP 429 rate limited{detail}", _retry_after(response))
        if status >= 500:
            self.server_errors += 1
            raise _Retryable(f"HTTP {status}{detail}", _retry_after(response))
        raise LiveError(f"GET {path}: HTTP {status}{detail}")

    async def _space_out(self) -> None:
        if self.min_interval <= 0:
            return
        async with self._pace:
            wait = self._last_request + self.min_interval - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            self._last_request = time.monotonic()


# --- reading responses -------------------------------------------------------------------


def _error_detail(response: httpx.Response) -> str:
    """``: <the server's error text>``, one line, bounded, redacted; or nothing."""
    text = response.text.strip()
    message = ""
    try:
        body = json.loads(text)
    except ValueError:
        message = text
    else:
        if isinstance(body, dict):
            message = str(body.get("error") or body.get("message") or "")
            if body.get("code") is not None:
                message = f"{message} (code {body['code']})".strip()
    message = " ".join(redact(message).split())[:200]
    return f": {message}" if message else ""


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After", "")
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


_DECODER = json.JSONDecoder(parse_float=Decimal)
_WS = " \t\n\r"


def _skip(text: str, i: int) -> int:
    while i < len(text) and text[i] in _WS:
        i += 1
    return i


def _array_items(text: str, i: int) -> tuple[list[str], int]:
    """The raw text of each element of the array opening at ``text[i]``; and its end."""
    items: list[str] = []
    i = _skip(text, i + 1)
    if i < len(text) and text[i] == "]":
        return items, i + 1
    while True:
        _, end = _DECODER.raw_decode(text, i)
        items.append(text[i:end])
        i = _skip(text, end)
        if i < len(text) and text[i] == ",":
            i = _skip(text, i + 1)
            continue
        if i < len(text) and text[i] == "]":
            return items, i + 1
        raise ValueError(f"expected ',' or ']' at offset {i}")


def split_listing(text: str, what: str = "response") -> tuple[list[str], dict[str, Any]]:
    """A listing body -> (each record's exact text, the other top-level fields).

    Accepts ``{"data": [...], "total_count": n, "total_page": n}`` and a bare list.
    """
    try:
        i = _skip(text, 0)
        if text[i : i + 1] == "[":
            items, end = _array_items(text, i)
            if _skip(text, end) != len(text):
                raise ValueError("trailing data")
            return items, {}
        if text[i : i + 1] != "{":
            raise ValueError("not a JSON object or list")
        meta: dict[str, Any] = {}
        items = []
        i = _skip(text, i + 1)
        if text[i : i + 1] == "}":
            return items, meta
        while True:
            key, i = _DECODER.raw_decode(text, i)
            i = _skip(text, i)
            if text[i : i + 1] != ":":
                raise ValueError(f"expected ':' at offset {i}")
            i = _skip(text, i + 1)
            if key == "data" and text[i : i + 1] == "[":
                items, i = _array_items(text, i)
            else:
                meta[str(key)], i = _DECODER.raw_decode(text, i)
            i = _skip(text, i)
            if text[i : i + 1] == ",":
                i = _skip(text, i + 1)
                continue
            if text[i : i + 1] == "}":
                return items, meta
            raise ValueError(f"expected ',' or '}}' at offset {i}")
    except (ValueError, IndexError) as exc:
        raise LiveError(f"GET {what}: malformed JSON ({exc})") from None


def _order_time(item: str) -> datetime | None:
    """An order's ``updated_at`` (else ``created_at``) as an aware UTC time, if readable."""
    try:
        order = json.loads(item)
        stamp = str(order.get("updated_at") or order.get("created_at"))
        moment = datetime.fromisoformat(stamp.replace("Z", "+00:00").replace("z", "+00:00"))
    except (ValueError, AttributeError, TypeError):
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _fill_time_format(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def listing_direction(times: list[datetime | None]) -> bool | None:
    """``True`` if a page runs oldest first, ``False`` if newest first, ``None`` if unclear
    (judged by its first and last orders' update times)."""
    if len(times) < 2:
        return None
    first, last = times[0], times[-1]
    if first is None or last is None or first == last:
        return None
    return first < last


def market_symbols(body: Any) -> list[str]:
    """Trading-pair symbols from a market-config body, tolerant of its wrapping.

    Each pair is ``{"symbol": "ADAUSDM", ...}`` or carries ``base_token``/``quote_token``
    objects with a ``symbol``; the list may be bare or under ``trading_pairs``,
    ``data``, ``markets`` or ``pairs``.
    """
    pairs: Any = body
    if isinstance(body, dict):
        for key in ("trading_pairs", "data", "markets", "pairs"):
            if isinstance(body.get(key), list):
                pairs = body[key]
                break
    if not isinstance(pairs, list):
        return []
    found: set[str] = set()
    for pair in pairs:
        if not isinstance(pair, dict):
            continue
        symbol = pair.get("symbol")
        if not isinstance(symbol, str) or not symbol.strip():
            base, quote = pair.get("base_token"), pair.get("quote_token")
            if isinstance(base, dict) and isinstance(quote, dict):
                symbol = f"{base.get('symbol', '')}{quote.get('symbol', '')}"
        if isinstance(symbol, str) and symbol.strip().isalnum():
            found.add(symbol.strip().upper())
    return sorted(found)
