"""DeltaDeFi's account websocket, followed for ever (``ledger.live_ports.FrameStream``).

``AccountStream.events()`` connects to ``<ws_url>/accounts/stream?api_key=…``
(connecting subscribes; there is no resume), yields every message as raw bytes,
and on any failure reconnects with exponential backoff and full jitter: before
attempt n+1 it waits U(0, min(cap, initial × 2^n)); after a connection that was
up, the first retry waits U(0, initial); but a connection dropped within seconds
without delivering anything counts as a failure for the next delay, so a server
that accepts and drops at once is backed off too. ``max_attempts`` consecutive
failures end it with ``SourceUnavailable`` (``None``: never). A 401/403 at the handshake
ends it at once with ``AuthenticationError``.

Keepalive: a ping every ``ping_interval`` s; no pong within ``ping_timeout`` s
means the connection is stuck (the peer or a middlebox went silent), so it is
closed (code 1011) and replaced. ``idle_timeout`` (off by default: an idle
account is silent) also replaces a connection that delivers no message for
that long.

The key is in the URL the server needs, so the URL is never logged or put in
an error: ``redacted_url`` masks it.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from urllib.parse import urlencode

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_never,
    wait_random_exponential,
)
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import (
    ConnectionClosed,
    InvalidHandshake,
    InvalidStatus,
    InvalidURI,
)

from ledger.live_ports import (
    AuthenticationError,
    LiveError,
    SourceUnavailable,
    StreamClosed,
    StreamEvent,
    StreamFrame,
    StreamOpened,
)
from ledger.logging import get_logger, redact, register_secret

log = get_logger(__name__)

STREAM_PATH = "/accounts/stream"
#: A connection closed this soon without delivering a message was not really up.
BARREN_SECONDS = 5.0


@dataclass(frozen=True)
class Backoff:
    """Reconnect policy: full-jitter exponential backoff; ``max_attempts=None`` retries forever."""

    initial: float = 1.0
    cap: float = 60.0
    max_attempts: int | None = None


@dataclass(frozen=True)
class Keepalive:
    ping_interval: float = 20.0
    ping_timeout: float = 20.0
    idle_timeout: float | None = None
    open_timeout: float = 10.0
    close_timeout: float = 2.0


def stream_url(ws_url: str, api_key: str) -> str:
    return f"{ws_url.rstrip('/')}{STREAM_PATH}?{urlencode({'api_key': api_key})}"


def redacted_url(ws_url: str) -> str:
    return f"{ws_url.rstrip('/')}{STREAM_PATH}?api_key=***"


class _Transient(Exception):
    """A connection attempt failed in a way worth retrying."""


def _is_transient(exc: BaseException) -> bool:
    return isinstance(exc, _Transient)


class AccountStream:
    def __init__(
        self,
        ws_url: str,
        api_key: str,
        *,
        backoff: Backoff = Backoff(),
        keepalive: Keepalive = Keepalive(),
        max_message_bytes: int = 16 * 2**20,
        clock: Callable[[], str] | None = None,
    ) -> None:
        if not api_key:
            raise AuthenticationError(
                "no DeltaDeFi API key: set DELTADEFI_API_KEY (or pass --api-key)"
            )
        register_secret(api_key)  # whatever logs or errors later, never this
        from ledger.application import utc_now

        self._url = stream_url(ws_url, api_key)
        self.url = redacted_url(ws_url)
        self.backoff = backoff
        self.keepalive = keepalive
        self.max_message_bytes = max_message_bytes
        self._now = clock or utc_now

    async def events(self) -> AsyncGenerator[StreamEvent, None]:
        reconnect = False
        barren = 0  # connections in a row that closed before delivering anything
        while True:
            if reconnect:
                # Even after a clean close, never reconnect in lock-step with other clients;
                # and a server that accepts then drops at once is backed off like a refusal.
                ceiling = min(self.backoff.cap, self.backoff.initial * 2**barren)
                # bandit B311: reconnect jitter, not cryptography.
                await asyncio.sleep(random.uniform(0, ceiling))  # nosec B311
            ws, attempts = await self._connect()
            reconnect = True
            yield StreamOpened(url=self.url, attempt=attempts)
            opened_at = time.monotonic()
            delivered = False
            try:
                while True:
                    event = await self._next(ws)
                    if isinstance(event, StreamClosed):
                        break
                    delivered = True
                    yield event
            except BaseException:
                # The consumer stopped or was cancelled: close cleanly, briefly.
                await self._close(ws, 1000, "client stopping")
                raise
            brief = time.monotonic() - opened_at < BARREN_SECONDS
            barren = min(barren + 1, 30) if brief and not delivered else 0
            yield event

    async def _next(self, ws: ClientConnection) -> StreamFrame | StreamClosed:
        idle = self.keepalive.idle_timeout
        try:
            if idle:
                async with asyncio.timeout(idle):
                    message = await ws.recv(decode=False)
            else:
                message = await ws.recv(decode=False)
        except TimeoutError:
            await self._close(ws, 4000, "idle timeout")
            return StreamClosed(code=4000, reason=f"no message for {idle}s", by="client")
        except ConnectionClosed as exc:
            return _closed(exc)
        raw = message if isinstance(message, bytes) else message.encode()
        return StreamFrame(raw=raw, received_at=self._now())

    async def _close(self, ws: ClientConnection, code: int, reason: str) -> None:
        try:
            async with asyncio.timeout(self.keepalive.close_timeout + 0.5):
                await ws.close(code, reason)
        except (TimeoutError, OSError, ConnectionClosed):
            ws.transport.abort()
        except BaseException:
            ws.transport.abort()
            raise

    async def _connect(self) -> tuple[ClientConnection, int]:
        stop = (
            stop_never
            if self.backoff.max_attempts is None
            else stop_after_attempt(self.backoff.max_attempts)
        )
        retrying = AsyncRetrying(
            retry=retry_if_exception(_is_transient),
            wait=wait_random_exponential(multiplier=self.backoff.initial, max=self.backoff.cap),
            stop=stop,
            before_sleep=self._log_retry,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    ws = await self._open()
                    return ws, attempt.retry_state.attempt_number
        except _Transient as exc:
            raise SourceUnavailable(
                f"could not connect to {self.url} after {self.backoff.max_attempts} attempts; "
                f"last: {exc}"
            ) from None
        raise AssertionError("unreachable: tenacity either returns or raises")

    async def _open(self) -> ClientConnection:
        ka = self.keepalive
        try:
            return await connect(
                self._url,
                open_timeout=ka.open_timeout,
                ping_interval=ka.ping_interval,
                ping_timeout=ka.ping_timeout,
                close_timeout=ka.close_timeout,
                max_size=self.max_message_bytes,
                max_queue=256,
                # The library's own logger would print the request line, key included.
                logger=_QUIET,
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            if status in (401, 403):
                raise AuthenticationError(
                    f"DeltaDeFi refused the API key (HTTP {status} opening {self.url}): the key "
                    "is missing, mistyped, expired or revoked; set DELTADEFI_API_KEY (or "
                    "--api-key) to a valid key"
                ) from None
            raise _Transient(f"HTTP {status} at the websocket handshake") from None
        except InvalidURI:
            raise LiveError(f"invalid websocket URL {self.url}") from None
        except InvalidHandshake as exc:
            raise _Transient(f"handshake failed: {redact(str(exc))[:200]}") from None
        except (OSError, TimeoutError, ConnectionClosed) as exc:
            reason = redact(str(exc))[:200] or type(exc).__name__
            raise _Transient(f"{type(exc).__name__}: {reason}") from None

    def _log_retry(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        log.warning(
            "stream.connect_failed",
            url=self.url,
            attempt=state.attempt_number,
            retry_in_s=round(state.upcoming_sleep, 3),
            reason=redact(str(exc)),
        )


def _closed(exc: ConnectionClosed) -> StreamClosed:
    if exc.rcvd is not None:
        return StreamClosed(code=exc.rcvd.code, reason=exc.rcvd.reason, by="server")
    if exc.sent is not None:
        return StreamClosed(code=exc.sent.code, reason=exc.sent.reason, by="client")
    return StreamClosed(code=1006, reason="connection lost without a close frame", by="network")


def _quiet_logger() -> logging.Logger:
    """A logger that drops the library's records: they can carry the URL, key included,
    and a host application's log handlers would not redact them."""
    quiet = logging.getLogger("ledger.stream.websockets")
    quiet.propagate = False
    quiet.disabled = True
    quiet.addHandler(logging.NullHandler())
    return quiet


_QUIET = _quiet_logger()
