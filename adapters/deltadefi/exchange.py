"""A local DeltaDeFi exchange on 127.0.0.1: the account websocket and the REST endpoints.

One port serves both, as ``websockets`` can answer plain HTTP requests during
its handshake: ``/accounts/stream?api_key=…`` upgrades to the account stream;
``GET /accounts/balance``, ``/accounts/trade-orders``, ``/accounts/open-orders``
(``symbol``, ``page`` 1..1000, ``limit`` 1..250; newest update first) and
``/app/market-config`` answer JSON (``list_oldest_first`` reverses the listings: the
real order is undocumented) in DeltaDeFi's shapes, with its error body
``{"error": …, "code": …}``. Both check the API key (401 otherwise).

Frames come from a ``FrameSource`` (a generated session or a capture) at a
steady rate, starting when the first client connects, and are broadcast to
every connected client. The exchange's book is fed by EVERY frame it generates,
delivered or not, so its REST answers are consistent with frames that were lost.

Faults (``Faults``): drop each connection after N frames (alternately a clean
close 1012 and a TCP abort, seen as 1006), lose the frames generated while a
client is down (plus a fixed blackout right after each drop, so losses are
certain), repeat frames, stall one connection (no frames and no pongs: only a
keepalive timeout reveals it), answer 429 storms and 503s on REST.

``LocalExchange`` runs inside an event loop; ``ExchangeThread`` runs one in a
background thread for tests and the command-line wrapper ``scripts/fake_exchange.py``.
"""

from __future__ import annotations

import asyncio
import http
import json
import math
import random
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol, TypeVar
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from adapters.deltadefi.session import MARKETS, UNITS, Session

STREAM_PATH = "/accounts/stream"
OPEN_STATUSES = frozenset({"open", "building", "processing"})
T = TypeVar("T")


# --- exact JSON out ---------------------------------------------------------------------


def dumps_exact(value: Any) -> str:
    """JSON text in which every ``Decimal`` is written as the exact number token it holds."""
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, dict):
        return (
            "{" + ",".join(f"{json.dumps(str(k))}:{dumps_exact(v)}" for k, v in value.items()) + "}"
        )
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(dumps_exact(v) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False)


# --- where frames come from --------------------------------------------------------------


class FrameSource(Protocol):
    def frames(self) -> Iterator[str | bytes]:
        """The session's frames, in order."""
        ...

    def balances(self) -> list[dict[str, Any]] | None:
        """The account's balances right now (``[{asset, asset_unit, free, locked}]``),
        or ``None`` to answer with the last balance frame generated."""
        ...

    def symbols(self) -> list[str]: ...


class SessionSource:
    """A generated market-making session (``adapters.deltadefi.session``)."""

    def __init__(
        self,
        frames: int,
        seed: int = 7,
        *,
        malformed_rate: float = 0.0,
        duplicate_rate: float = 0.05,
        snapshot_every: int = 25,
    ) -> None:
        self.count = frames
        self.session = Session(
            seed,
            malformed_rate=malformed_rate,
            duplicate_rate=duplicate_rate,
            snapshot_every=snapshot_every,
        )

    def frames(self) -> Iterator[str | bytes]:
        yield from self.session.frames(self.count)

    def balances(self) -> list[dict[str, Any]] | None:
        return [
            {
                "asset": asset.lower(),
                "asset_unit": UNITS[asset],
                "free": amount,
                "locked": Decimal(0),
            }
            for asset, amount in sorted(self.session.truth.balances.items())
        ]

    def symbols(self) -> list[str]:
        return sorted(MARKETS)


class CaptureSource:
    """The lines of a capture file, replayed as they are (blank lines skipped)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def frames(self) -> Iterator[str | bytes]:
        with self.path.open("rb") as handle:
            for line in handle:
                raw = line.rstrip(b"\r\n")
                if not raw.strip():
                    continue
                try:
                    yield raw.decode("utf-8")
                except UnicodeDecodeError:
                    yield raw

    def balances(self) -> list[dict[str, Any]] | None:
        return None

    def symbols(self) -> list[str]:
        return sorted(MARKETS)


# --- what the exchange knows ---------------------------------------------------------------


@dataclass
class ExchangeBook:
    """Orders, fills and balances as of every frame generated so far, delivered or not."""

    orders: dict[str, dict[str, Any]] = field(default_factory=dict)
    order_seq: dict[str, int] = field(default_factory=dict)
    fills: dict[str, dict[str, Any]] = field(default_factory=dict)
    last_balance: list[Any] | None = None
    unreadable: int = 0
    _seq: int = 0

    def feed(self, raw: str | bytes) -> None:
        try:
            obj = json.loads(raw, parse_float=Decimal)
        except ValueError:
            self.unreadable += 1
            return
        if not isinstance(obj, dict) or obj.get("type") != "Account":
            return
        if obj.get("sub_type") == "order_info" and isinstance(obj.get("order"), dict):
            order = obj["order"]
            order_id = order.get("id")
            if not isinstance(order_id, str) or not order_id:
                self.unreadable += 1
                return
            self._seq += 1
            self.orders[order_id] = order
            self.order_seq[order_id] = self._seq
            for record in order.get("order_execution_records") or []:
                if isinstance(record, dict) and record.get("id"):
                    self.fills[str(record["id"])] = {
                        "symbol": order.get("symbol"),
                        "side": order.get("side"),
                        **record,
                    }
        elif obj.get("sub_type") == "balance" and isinstance(obj.get("balance"), list):
            self.last_balance = obj["balance"]

    def listing(
        self, symbol: str, open_only: bool, oldest_first: bool = False
    ) -> list[dict[str, Any]]:
        """Orders of ``symbol`` by ``updated_at``, most recent first (or last); orders
        updated at the same moment in the order their last frame was generated."""
        chosen = [
            (
                (
                    str(order.get("updated_at") or order.get("created_at") or ""),
                    self.order_seq[oid],
                ),
                order,
            )
            for oid, order in self.orders.items()
            if str(order.get("symbol", "")).upper() == symbol
            and (not open_only or order.get("status") in OPEN_STATUSES)
        ]
        chosen.sort(key=lambda pair: pair[0], reverse=not oldest_first)
        return [order for _, order in chosen]


# --- faults and figures ----------------------------------------------------------------------


@dataclass(frozen=True)
class Faults:
    drop_every: int = 0  # close each connection after sending it this many frames (0: never)
    lose_on_drop: int = 0  # frames generated right after a drop that reach nobody
    repeat_rate: float = 0.0  # chance that a frame is sent twice in a row
    stall_connection: int = 0  # this connection (1 = first) goes silent: no frames, no pongs...
    stall_after: int = 0  # ...after sending this many frames
    stall_timeout: float = 30.0  # a stalled connection is aborted after this long at most
    rate_limit_every: int = 0  # after this many REST answers comes a storm of 429s...
    rate_limit_burst: int = 1  # ...this many in a row
    retry_after: float | None = None  # sent with each 429 when set
    server_error_every: int = 0  # every Nth REST request answers 503
    echo_key_on_401: bool = False  # a careless server: the 401 body repeats the key it got
    seed: int = 0


@dataclass
class ExchangeStats:
    generated: int = 0
    sent: int = 0  # websocket messages sent, repeats included
    repeats: int = 0
    delivered: int = 0  # distinct frames sent at least once
    connections: int = 0
    drops: int = 0
    stalls: int = 0
    rest_requests: int = 0
    rest_rate_limited: int = 0
    rest_server_errors: int = 0
    unauthorized: int = 0
    close_codes: dict[str, int] = field(default_factory=dict)

    @property
    def lost(self) -> int:
        """Frames generated that no client ever received (only REST can recover them)."""
        return self.generated - self.delivered

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "lost": self.lost}


@dataclass(eq=False)
class _Client:
    number: int
    ws: ServerConnection
    queue: asyncio.Queue[tuple[int, str | bytes]] = field(default_factory=asyncio.Queue)


# --- the exchange -----------------------------------------------------------------------------


class LocalExchange:
    def __init__(
        self,
        source: FrameSource,
        api_key: str,
        *,
        rate: float = 1000.0,
        faults: Faults = Faults(),
        host: str = "127.0.0.1",
        port: int = 0,
        start_on_connect: bool = True,
        keep_frames: bool = False,
        list_oldest_first: bool = False,
        on_send: Callable[[int], object] | None = None,
    ) -> None:
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError("the local exchange only listens on loopback")
        self.source = source
        self.api_key = api_key
        self.rate = rate
        self.faults = faults
        self.host = host
        self.port = port
        self.start_on_connect = start_on_connect
        self.list_oldest_first = list_oldest_first
        #: Called with a frame's index right before each websocket send (the benchmark
        #: stamps send times with it, so the frames themselves stay as the session made them).
        self.on_send = on_send
        self.book = ExchangeBook()
        self.stats = ExchangeStats()
        #: Every frame generated, in order (when ``keep_frames``): the lossless session.
        self.generated_frames: list[str | bytes] = []
        self.keep_frames = keep_frames
        self._delivered = bytearray()  # one flag per generated frame: sent at least once
        self._clients: set[_Client] = set()
        self._stalled: set[ServerConnection] = set()
        self._watchers: set[asyncio.Task[None]] = set()
        self._blackout = 0
        # bandit B311: seeded, reproducible fault injection in a test exchange, not cryptography.
        self._rng = random.Random(faults.seed)  # nosec B311
        self._server: Server | None = None
        self._generator: asyncio.Task[None] | None = None
        self._first_client = asyncio.Event()
        self.finished = asyncio.Event()

    # --- lifecycle ---------------------------------------------------------------------------

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    @property
    def rest_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        self._server = await serve(
            self._handle,
            self.host,
            self.port,
            process_request=self._process_request,
            ping_interval=None,
            max_size=2**20,
        )
        sockets = list(self._server.sockets)
        self.port = sockets[0].getsockname()[1]
        self._generator = asyncio.create_task(self._generate(), name="exchange-generator")
        if not self.start_on_connect:
            self._first_client.set()

    async def stop(self) -> None:
        if self._generator:
            self._generator.cancel()
            await asyncio.gather(self._generator, return_exceptions=True)
        for ws in list(self._stalled):
            ws.transport.abort()
        if self._server:
            self._server.close()
            await self._server.wait_closed()

    async def __aenter__(self) -> LocalExchange:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def truth(self) -> dict[str, Any]:
        """Every fill the exchange executed, and its balances now (assets upper case)."""
        return {
            "fills": dict(self.book.fills),
            "balances": _balances_by_asset(self._balance_list()),
        }

    # --- generating frames -----------------------------------------------------------------

    async def _generate(self) -> None:
        await self._first_client.wait()
        loop = asyncio.get_running_loop()
        start = loop.time()
        for index, raw in enumerate(self.source.frames()):
            if self.rate > 0:
                delay = start + index / self.rate - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
            elif index % 64 == 0:
                await asyncio.sleep(0)
            self._publish(index, raw)
        self.finished.set()

    def sent_everything(self) -> bool:
        """The session is over and no connection has a frame still waiting to be sent
        (``finished`` alone only says every frame was generated and queued)."""
        return self.finished.is_set() and all(c.queue.empty() for c in self._clients)

    def _publish(self, index: int, raw: str | bytes) -> None:
        self.stats.generated += 1
        self._delivered.append(0)
        self.book.feed(raw)
        if self.keep_frames:
            self.generated_frames.append(raw)
        if self._blackout > 0:
            self._blackout -= 1
            return
        for client in list(self._clients):
            client.queue.put_nowait((index, raw))
            if self.faults.repeat_rate and self._rng.random() < self.faults.repeat_rate:
                client.queue.put_nowait((index, raw))

    # --- the account websocket ----------------------------------------------------------------

    async def _handle(self, ws: ServerConnection) -> None:
        self.stats.connections += 1
        client = _Client(self.stats.connections, ws)
        for stalled in list(self._stalled):
            # The client has replaced a connection it found stuck.
            stalled.transport.abort()
        self._clients.add(client)
        self._first_client.set()
        watcher = asyncio.create_task(self._forget_when_closed(client))
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)
        sent = 0
        last_index = -1
        try:
            while True:
                index, raw = await client.queue.get()
                if index < 0:
                    return  # the connection closed while waiting for a frame
                if self.on_send is not None:
                    self.on_send(index)
                await ws.send(raw)
                self.stats.sent += 1
                if index == last_index:
                    self.stats.repeats += 1
                last_index = index
                if not self._delivered[index]:
                    self._delivered[index] = 1
                    self.stats.delivered += 1
                sent += 1
                faults = self.faults
                if faults.stall_connection == client.number and sent >= faults.stall_after:
                    self._clients.discard(client)
                    await self._stall(ws)
                    return
                if faults.drop_every and sent >= faults.drop_every:
                    self._clients.discard(client)
                    await self._drop(ws)
                    return
        except ConnectionClosed:
            pass
        finally:
            self._clients.discard(client)

    async def _forget_when_closed(self, client: _Client) -> None:
        await client.ws.wait_closed()
        self._clients.discard(client)
        client.queue.put_nowait((-1, b""))
        code = client.ws.close_code if client.ws.close_code is not None else 1006
        self.stats.close_codes[str(code)] = self.stats.close_codes.get(str(code), 0) + 1

    async def _drop(self, ws: ServerConnection) -> None:
        self.stats.drops += 1
        self._blackout = self.faults.lose_on_drop
        if self.stats.drops % 2:
            await ws.close(1012, "service restart")
        else:
            ws.transport.abort()

    async def _stall(self, ws: ServerConnection) -> None:
        """Go silent: send nothing and read nothing, so the client's pings go unanswered.

        Ends when a new connection replaces this one (it aborts this socket) or after
        ``stall_timeout`` seconds."""
        self.stats.stalls += 1
        ws.transport.pause_reading()
        self._stalled.add(ws)
        try:
            await asyncio.wait_for(ws.wait_closed(), self.faults.stall_timeout)
        except TimeoutError:
            pass
        finally:
            self._stalled.discard(ws)
            ws.transport.abort()

    # --- REST ----------------------------------------------------------------------------------

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        url = urlsplit(request.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        if url.path == STREAM_PATH:
            if query.get("api_key") != self.api_key:
                self.stats.unauthorized += 1
                return self._error(
                    connection, 401, "unauthorized: invalid api key", 4010, query.get("api_key")
                )
            return None
        self.stats.rest_requests += 1
        key = request.headers.get("X-API-KEY")
        if key != self.api_key:
            self.stats.unauthorized += 1
            return self._error(connection, 401, "unauthorized: invalid api key", 4010, key)
        faults = self.faults
        n = self.stats.rest_requests - self.stats.unauthorized
        if faults.rate_limit_every:
            cycle = faults.rate_limit_every + faults.rate_limit_burst
            if (n - 1) % cycle >= faults.rate_limit_every:
                self.stats.rest_rate_limited += 1
                response = self._error(connection, 429, "too many requests", 4290)
                if faults.retry_after is not None:
                    response.headers["Retry-After"] = str(faults.retry_after)
                return response
        if faults.server_error_every and n % faults.server_error_every == 0:
            self.stats.rest_server_errors += 1
            return self._error(connection, 503, "service unavailable", 5030)
        return self._route(connection, url.path, query)

    def _route(self, connection: ServerConnection, path: str, query: dict[str, str]) -> Response:
        if path == "/accounts/balance":
            return self._json(connection, 200, dumps_exact(self._balance_list()))
        if path == "/app/market-config":
            return self._json(connection, 200, dumps_exact(_market_config(self.source.symbols())))
        if path in ("/accounts/trade-orders", "/accounts/open-orders"):
            return self._orders(connection, query, open_only=path.endswith("open-orders"))
        return self._error(connection, 404, f"no such endpoint {path}", 4040)

    def _orders(
        self, connection: ServerConnection, query: dict[str, str], *, open_only: bool
    ) -> Response:
        symbol = query.get("symbol", "").strip().upper()
        if not symbol:
            return self._error(connection, 400, "symbol is required", 4000)
        try:
            page = int(query.get("page", "1"))
            limit = int(query.get("limit", "10"))
        except ValueError:
            return self._error(connection, 400, "page and limit must be integers", 4000)
        if not (1 <= page <= 1000 and 1 <= limit <= 250):
            return self._error(connection, 400, "page must be 1..1000 and limit 1..250", 4000)
        orders = self.book.listing(symbol, open_only, self.list_oldest_first)
        body = {
            "data": orders[(page - 1) * limit : page * limit],
            "total_count": len(orders),
            "total_page": math.ceil(len(orders) / limit),
        }
        return self._json(connection, 200, dumps_exact(body))

    def _balance_list(self) -> list[Any]:
        live = self.source.balances()
        if live is not None:
            return live
        return list(self.book.last_balance or [])

    def _json(self, connection: ServerConnection, status: int, text: str) -> Response:
        response = connection.respond(http.HTTPStatus(status), text)
        del response.headers["Content-Type"]
        response.headers["Content-Type"] = "application/json"
        return response

    def _error(
        self,
        connection: ServerConnection,
        status: int,
        message: str,
        code: int,
        presented_key: str | None = None,
    ) -> Response:
        if status == 401 and self.faults.echo_key_on_401 and presented_key:
            message = f"{message}: {presented_key!r}"
        return self._json(connection, status, json.dumps({"error": message, "code": code}))


def _market_config(symbols: list[str]) -> dict[str, Any]:
    pairs = []
    for symbol in symbols:
        if symbol not in MARKETS:
            continue
        base, quote, _ = MARKETS[symbol]
        pairs.append(
            {
                "symbol": symbol,
                "base_token": {
                    "symbol": base,
                    "unit": "lovelace" if base == "ADA" else UNITS[base],
                    "decimals": 6,
                },
                "quote_token": {"symbol": quote, "unit": UNITS[quote], "decimals": 6},
                "max_qty_dp": 1,
                "price_max_dp": 4,
            }
        )
    return {"trading_pairs": pairs}


def _balances_by_asset(lines: list[Any]) -> dict[str, dict[str, Decimal]]:
    out: dict[str, dict[str, Decimal]] = {}
    for line in lines:
        if not isinstance(line, dict):
            continue
        asset = str(line.get("asset") or "ADA").upper()
        out[asset] = {"free": Decimal(str(line["free"])), "locked": Decimal(str(line["locked"]))}
    return out


# --- in a thread, for tests and the command line ------------------------------------------


class ExchangeThread:
    """A ``LocalExchange`` on its own event loop in a daemon thread.

    ``with ExchangeThread(lambda: LocalExchange(...)) as ex:`` — the exchange is
    built inside its loop; ``ex.call(fn)`` runs ``fn(exchange)`` there and returns
    its result, so reads are consistent snapshots.
    """

    def __init__(self, factory: Callable[[], LocalExchange]) -> None:
        self._factory = factory
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="local-exchange", daemon=True)
        self._ready: Future[LocalExchange] = Future()
        self._stop: asyncio.Event | None = None
        self.exchange: LocalExchange

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._main())
        self._loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        try:
            exchange = self._factory()
            await exchange.start()
        except BaseException as exc:
            self._ready.set_exception(exc)
            return
        self._ready.set_result(exchange)
        try:
            await self._stop.wait()
        finally:
            await exchange.stop()

    def start(self) -> ExchangeThread:
        self._thread.start()
        self.exchange = self._ready.result(timeout=10)
        return self

    def stop(self) -> None:
        if self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=10)

    def __enter__(self) -> ExchangeThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def call(self, fn: Callable[[LocalExchange], T], timeout: float = 10) -> T:
        async def run() -> T:
            return fn(self.exchange)

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout)

    def wait_finished(self, timeout: float) -> bool:
        async def wait() -> bool:
            try:
                await asyncio.wait_for(self.exchange.finished.wait(), timeout)
            except TimeoutError:
                return False
            return True

        return asyncio.run_coroutine_threadsafe(wait(), self._loop).result(timeout + 5)

    @property
    def ws_url(self) -> str:
        return self.exchange.ws_url

    @property
    def rest_url(self) -> str:
        return self.exchange.rest_url
