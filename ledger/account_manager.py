"""``AccountManager``: the old bot-facing class, backed by the ledger.

Bots written against the previous ``AccountManager`` keep their calls::

    manager = AccountManager(client=None, db="ledger.sqlite")   # key from DELTADEFI_API_KEY
    manager.add_fill_callback(on_fill)                          # sync or async
    await manager.start()                                       # follows the account live
    manager.balance_tracker.get_balance("ADA")
    manager.fill_reconciler.process_fill({"fillId": ..., ...})  # False for a duplicate
    await manager.stop()

Underneath, everything is the ledger: ``start`` runs the same ``Follower`` as
``ledger run``; ``process_fill`` appends the fill as a frame (source ``bot``)
through the same append path, so its answer comes from the store's claim and a
duplicate is refused even after a restart; ``processed_fills`` is the store's
set of booked fills, not a set in memory; balances and positions are the
projections.

Callbacks: fill callbacks run once per fill this process books (never for a
duplicate), balance callbacks after every commit that moved balances, position
callbacks once per symbol whose position moved. They run after the commit, so a
callback that raises (or an async one that fails) is logged and never blocks
or undoes booking. A fill booked just before a crash may miss its callback
(callbacks are at most once; the ledger is exactly once).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from ledger.application import AppendReport, IncomingFrame, utc_now
from ledger.bootstrap import LedgerServices, open_ledger
from ledger.domain import Fill
from ledger.events import claim_id
from ledger.live import Follower, LiveLedger, follow_until_stopped
from ledger.live_bootstrap import LiveConfig, close_follower, fill_symbols, open_follower
from ledger.logging import get_logger, redact
from ledger.settings import DeltaDeFiSettings, LedgerSettings
from projections.state import LedgerState

log = get_logger(__name__)

Callback = Callable[[Any], Any]
USD_STABLECOINS = frozenset({"USDM", "USDC", "USDCX", "USDT"})
SOURCE_BOT = "bot"


@dataclass(frozen=True)
class BalanceView:
    asset: str
    free: Decimal
    locked: Decimal

    @property
    def total(self) -> Decimal:
        return self.free + self.locked

    @property
    def available(self) -> Decimal:
        """The old name for ``free``."""
        return self.free


class BalanceTracker:
    """Balances from the projections: the exchange's last snapshot per asset."""

    def __init__(self, manager: AccountManager) -> None:
        self._manager = manager

    def get_balance(self, asset: str) -> BalanceView | None:
        return self.get_all_balances().get(asset.strip().upper())

    def get_all_balances(self) -> dict[str, BalanceView]:
        state = self._manager._state()
        return {
            asset: BalanceView(asset, bal.free, bal.locked)
            for asset, bal in sorted(state.balances.assets.items())
        }

    def get_total_value_usd(
        self, prices: Mapping[str, Decimal | str | float] | None = None
    ) -> Decimal:
        """Σ total × USD price. USD stablecoins count 1 unless priced; unpriced assets are left out."""
        priced = {k.upper(): Decimal(str(v)) for k, v in (prices or {}).items()}
        value = Decimal(0)
        for asset, balance in self.get_all_balances().items():
            price = priced.get(asset, Decimal(1) if asset in USD_STABLECOINS else None)
            if price is not None:
                value += balance.total * price
        return value


class ProcessedFills:
    """The fills the ledger has booked, read from the store (survives restarts)."""

    def __init__(self, manager: AccountManager) -> None:
        self._manager = manager

    def __contains__(self, fill_id: object) -> bool:
        if not isinstance(fill_id, str):
            return False
        store = self._manager._require_store()
        return bool(store.run_blocking(lambda: store.ledger.store.existing([claim_id(fill_id)])))

    def __len__(self) -> int:
        return self._manager._state().fills.count

    def __iter__(self) -> Iterator[str]:
        services = self._manager._require_services()
        with services.db.reading() as cur:
            cur.execute("SELECT fill_id FROM ledger_fills ORDER BY executed_at, fill_id")
            rows = cur.fetchall()
        return iter([str(r[0]) for r in rows])


class FillReconciler:
    def __init__(self, manager: AccountManager) -> None:
        self._manager = manager

    @property
    def processed_fills(self) -> ProcessedFills:
        return self._manager.processed_fills

    def process_fill(self, fill: Mapping[str, Any] | str | bytes) -> bool:
        """Book a fill reported by the bot; ``True`` if it was new, ``False`` if the ledger
        already had it (from the stream, REST, or an earlier ``process_fill``, in any process).

        Accepts the bot-side ``{"fillId", "orderId", "symbol", "side", "price", "quantity",
        "timestamp", "commission", "commissionAsset", "isMaker"}`` dict (``type`` optional),
        a ``trading_history`` record, any frame dict, or a raw frame. A fill the parser
        refuses is kept in the log as rejected and raises ``ValueError`` with the reason.
        """
        raw = _fill_frame(fill)
        manager = self._manager
        store = manager._require_store()
        frame = IncomingFrame(raw=raw, source=SOURCE_BOT, received_at=utc_now())
        report = store.append_blocking([frame])
        manager._after_commit([frame], report)
        if report.rejected:
            reason = store.ledger.parse(raw).rejection
            raise ValueError(f"fill rejected: {reason}")
        return report.fills_new > 0


def _fill_frame(fill: Mapping[str, Any] | str | bytes) -> bytes:
    if isinstance(fill, bytes):
        return fill
    if isinstance(fill, str):
        return fill.encode()
    if not isinstance(fill, Mapping):
        raise TypeError(f"a fill is a dict or a raw frame, not {type(fill).__name__}")
    body = dict(fill)
    if "type" not in body:
        if "fillId" in body:
            body["type"] = "fill"
        elif "execution_id" in body:
            body = {"type": "trading_history", "trading_history": [body]}
    # Decimals travel as strings, which the parser reads exactly.
    return json.dumps(body, default=_json_default, separators=(",", ":")).encode()


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return format(value, "f")
    return str(value)


class AccountManager:
    """See the module docstring. ``client`` is ``None`` (settings from ``DELTADEFI_*``),
    a ``LiveConfig``, or any object with an ``api_key`` (and optionally ``ws_url``,
    ``rest_url``/``base_url``) such as the SDK's client."""

    def __init__(
        self,
        client: Any = None,
        db: str | None = None,
        *,
        settings: DeltaDeFiSettings | None = None,
        follow: bool = True,
        method: str = "average",
    ) -> None:
        self.db_url = db or LedgerSettings().db
        self.config = _config_from(client, settings)
        self.follow = follow
        self.method = method
        self.balance_tracker = BalanceTracker(self)
        self.fill_reconciler = FillReconciler(self)
        self.processed_fills = ProcessedFills(self)
        self.error: BaseException | None = None
        self._fill_callbacks: list[Callback] = []
        self._balance_callbacks: list[Callback] = []
        self._position_callbacks: list[Callback] = []
        self._services: LedgerServices | None = None
        self._store: LiveLedger | None = None
        self._follower: Follower | None = None
        self._task: asyncio.Task[Any] | None = None
        self._stop = asyncio.Event()
        self._pending: set[asyncio.Task[Any]] = set()
        self._last_update: str | None = None

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Open the ledger and, when a key is configured, follow the account live."""
        if self._services is not None:
            return
        self._services = await asyncio.to_thread(open_ledger, self.db_url)
        services = self._services
        if self.follow and self.config is not None and self.config.api_key:
            self._follower = open_follower(services, self.config)
            self._store = self._follower.store
            self._follower.listeners.append(self._after_commit)
            self._stop = asyncio.Event()
            self._task = asyncio.create_task(self._follow(self._follower), name="account-manager")
        else:
            self._store = LiveLedger(
                services.ledger, services.projector.catch_up, lambda: fill_symbols(services)
            )
            await self._store.project()

    async def _follow(self, follower: Follower) -> None:
        try:
            await follow_until_stopped(follower, stop=self._stop, install_signal_handlers=False)
        except Exception as exc:
            self.error = exc
            log.error("account_manager.follow_failed", error=redact(str(exc)))

    async def stop(self) -> None:
        """Stop following (every received frame committed), let callbacks finish, close."""
        self._stop.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout=10)
            except TimeoutError:
                log.error("account_manager.stop_timeout")
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
            self._task = None
        if self._pending:
            await asyncio.wait(set(self._pending), timeout=2)
            for task in self._pending:
                task.cancel()
        if self._follower is not None:
            await close_follower(self._follower)
            self._follower = None
        elif self._store is not None:
            self._store.close()
        self._store = None
        if self._services is not None:
            self._services.close()
            self._services = None

    async def __aenter__(self) -> AccountManager:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def refresh_balances(self) -> dict[str, BalanceView]:
        """Take a balance snapshot from REST now (needs a key) and return the balances."""
        if self._follower is None:
            raise RuntimeError(
                "refresh_balances needs a live AccountManager (an API key and start())"
            )
        await self._follower.snapshot_balances()
        return self.balance_tracker.get_all_balances()

    # --- reading ---------------------------------------------------------------------------

    @property
    def websocket_connected(self) -> bool:
        return bool(self._follower and self._follower.stats.connected)

    def get_account_summary(self) -> dict[str, Any]:
        state = self._state()
        return {
            "balances": {
                asset: {"free": b.free, "locked": b.locked, "total": b.total}
                for asset, b in sorted(state.balances.assets.items())
            },
            "positions": {
                symbol: self._position_view(state, symbol)
                for symbol in sorted(state.book.positions)
            },
            "websocket_connected": self.websocket_connected,
            "fills_processed": state.fills.count,
            "last_update": self._last_update,
            "drift": {asset: b.drift_last for asset, b in sorted(state.balances.assets.items())},
        }

    def _position_view(self, state: LedgerState, symbol: str) -> dict[str, Any]:
        pos = state.book.positions[symbol]
        return {
            "symbol": symbol,
            "quantity": pos.quantity,
            "avg_entry_price": pos.avg_entry_price(self.method),
            "realized_pnl": pos.realized_gross(self.method),
            "realized_pnl_net": pos.realized_net(self.method),
            "fees": dict(pos.fees),
            "fill_count": pos.fill_count,
        }

    def _require_services(self) -> LedgerServices:
        if self._services is None:
            raise RuntimeError("AccountManager is not started: await manager.start() first")
        return self._services

    def _require_store(self) -> LiveLedger:
        if self._store is None:
            raise RuntimeError("AccountManager is not started: await manager.start() first")
        return self._store

    def _state(self) -> LedgerState:
        return self._require_services().projector.load()

    # --- callbacks ---------------------------------------------------------------------------

    def add_fill_callback(self, callback: Callback) -> None:
        self._fill_callbacks.append(callback)

    def add_balance_callback(self, callback: Callback) -> None:
        self._balance_callbacks.append(callback)

    def add_position_callback(self, callback: Callback) -> None:
        self._position_callbacks.append(callback)

    def _after_commit(self, frames: Sequence[IncomingFrame], report: AppendReport) -> None:
        """Runs after every commit of this process (live path or ``process_fill``)."""
        if report.appended:
            self._last_update = utc_now()
        booked = set(report.booked_fill_ids)
        parse = self._require_store().ledger.parse
        fills: dict[str, Fill] = {}
        snapshot = False
        for frame in frames:
            parsed = parse(frame.raw)
            snapshot |= parsed.snapshot is not None and not parsed.rejected
            for fill in parsed.fills:
                if fill.fill_id in booked and fill.fill_id not in fills:
                    fills[fill.fill_id] = fill
        if not fills and not snapshot:
            return
        for fill in fills.values():
            self._fire(self._fill_callbacks, _fill_view(fill))
        if not (self._balance_callbacks or self._position_callbacks):
            return
        state = self._state()
        if self._balance_callbacks:
            balances = {
                asset: BalanceView(asset, b.free, b.locked)
                for asset, b in sorted(state.balances.assets.items())
            }
            self._fire(self._balance_callbacks, balances)
        for symbol in sorted({f.symbol for f in fills.values()}):
            if symbol in state.book.positions:
                self._fire(self._position_callbacks, self._position_view(state, symbol))

    def _fire(self, callbacks: Sequence[Callback], payload: Any) -> None:
        for callback in list(callbacks):
            name = getattr(callback, "__qualname__", repr(callback))
            try:
                result = callback(payload)
            except Exception:
                log.exception("callback.failed", callback=name)
                continue
            if inspect.isawaitable(result):
                self._schedule(result, name)

    def _schedule(self, awaitable: Any, name: str) -> None:
        async def guarded() -> None:
            try:
                await awaitable
            except Exception:
                log.exception("callback.failed", callback=name)

        try:
            task = asyncio.get_running_loop().create_task(guarded())
        except RuntimeError:
            asyncio.run(guarded())  # called from synchronous code with no loop running
            return
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)


def _fill_view(fill: Fill) -> dict[str, Any]:
    return {
        "fill_id": fill.fill_id,
        "order_id": fill.order_id,
        "symbol": fill.symbol,
        "side": fill.side.value,
        "price": fill.price,
        "quantity": fill.quantity,
        "quote_amount": fill.quote_amount,
        "fee": fill.fee,
        "fee_asset": fill.fee_asset,
        "role": fill.role,
        "executed_at": fill.executed_at,
    }


def _config_from(client: Any, settings: DeltaDeFiSettings | None) -> LiveConfig | None:
    if isinstance(client, LiveConfig):
        return client
    base = settings or DeltaDeFiSettings()
    if client is None:
        return LiveConfig.from_settings(base) if base.api_key else None
    key: Any = getattr(client, "api_key", None)
    if key is not None and hasattr(key, "get_secret_value"):
        key = key.get_secret_value()
    overrides = {
        "api_key": key,
        "ws_url": getattr(client, "ws_url", None),
        "rest_url": getattr(client, "rest_url", None) or getattr(client, "base_url", None),
    }
    config = LiveConfig.from_settings(base, **overrides)
    return config if config.api_key else None
