"""The AccountManager facade: the old bot-facing calls, answered by the ledger."""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import structlog
from live_helpers import FAST, REPO, caught_up, ledger_env, local_exchange, new_key, truth

from adapters.deltadefi.exchange import Faults
from ledger.account_manager import AccountManager
from ledger.bootstrap import open_ledger
from ledger.live_bootstrap import LiveConfig
from ledger.logging import configure_logging

BOT_FILL = {
    "fillId": "bot-fill-0001",
    "orderId": "ord-1",
    "symbol": "ADAUSDM",
    "side": "buy",
    "price": "0.4512",
    "quantity": "150",
    "timestamp": "2026-03-20T10:00:00Z",
    "commission": "0.15",
    "commissionAsset": "ADA",
    "isMaker": True,
}


@pytest.fixture
def log_buffer() -> Iterator[io.StringIO]:
    buffer = io.StringIO()
    configure_logging("info", "json", stream=buffer)
    yield buffer
    structlog.reset_defaults()
    import logging

    for handler in list(logging.getLogger().handlers):
        logging.getLogger().removeHandler(handler)


def test_callbacks_fire_once_per_new_fill_and_failures_never_block_booking(
    tmp_path: Path, log_buffer: io.StringIO
) -> None:
    key = new_key()
    db = str(tmp_path / "ledger.sqlite")
    faults = Faults(drop_every=150, lose_on_drop=10, repeat_rate=0.05, seed=2)
    with local_exchange(key, frames=1500, seed=2, rate=1500, faults=faults) as ex:

        async def main() -> dict[str, Any]:
            config = LiveConfig(api_key=key, ws_url=ex.ws_url, rest_url=ex.rest_url, **FAST)
            manager = AccountManager(client=config, db=db)
            sync_seen: Counter[str] = Counter()
            async_seen: Counter[str] = Counter()
            balance_updates: list[dict[str, Any]] = []
            position_updates: list[dict[str, Any]] = []

            async def on_fill_async(fill: dict[str, Any]) -> None:
                await asyncio.sleep(0)
                async_seen[fill["fill_id"]] += 1

            def broken(fill: dict[str, Any]) -> None:
                raise RuntimeError("a bug in the bot's callback")

            async def broken_async(fill: dict[str, Any]) -> None:
                raise RuntimeError("a bug in the bot's async callback")

            manager.add_fill_callback(broken)
            manager.add_fill_callback(lambda fill: sync_seen.update([fill["fill_id"]]))
            manager.add_fill_callback(broken_async)
            manager.add_fill_callback(on_fill_async)
            manager.add_balance_callback(balance_updates.append)
            manager.add_position_callback(position_updates.append)
            await manager.start()
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 60
            while loop.time() < deadline and not await asyncio.to_thread(caught_up, db, ex):
                await asyncio.sleep(0.1)
            summary = manager.get_account_summary()
            refreshed = await manager.refresh_balances()
            executed = truth(ex)["fills"]
            some_id = sorted(executed)[0]
            record = executed[some_id]
            duplicate = manager.fill_reconciler.process_fill(
                {
                    "fillId": some_id,
                    "symbol": record["symbol"],
                    "side": record["side"],
                    "price": record["execution_price"],
                    "quantity": record["filled_base_qty"],
                    "timestamp": record["created_at"],
                }
            )
            await asyncio.sleep(0.05)
            processed = len(manager.processed_fills)
            known = some_id in manager.processed_fills
            await manager.stop()
            return {
                "sync": sync_seen,
                "async": async_seen,
                "balances": balance_updates,
                "positions": position_updates,
                "summary": summary,
                "refreshed": refreshed,
                "duplicate": duplicate,
                "processed": processed,
                "known": known,
            }

        got = asyncio.run(main())
        want = truth(ex)
    once_each = Counter(dict.fromkeys(want["fills"], 1))
    assert got["sync"] == once_each
    assert got["async"] == once_each
    assert got["duplicate"] is False and got["known"] is True
    assert got["processed"] == len(want["fills"])
    logged = [
        json.loads(line) for line in log_buffer.getvalue().splitlines() if line.startswith("{")
    ]
    failures = [e for e in logged if e.get("event") == "callback.failed"]
    assert len(failures) == 2 * len(want["fills"])  # each broken callback, once per fill
    assert {
        "RuntimeError: a bug in the bot's callback" in e.get("exception", "") for e in failures
    } == {
        True,
        False,
    }

    summary = got["summary"]
    assert summary["fills_processed"] == len(want["fills"])
    assert summary["websocket_connected"] is True
    assert {
        a: {"free": b["free"], "locked": b["locked"]} for a, b in summary["balances"].items()
    } == want["balances"]
    assert set(summary["positions"]) == {r["symbol"] for r in want["fills"].values()}
    assert set(summary["drift"]) == set(want["balances"])
    assert {a: {"free": b.free, "locked": b.locked} for a, b in got["refreshed"].items()} == want[
        "balances"
    ]
    assert got["balances"] and all("USDM" in update for update in got["balances"])
    assert {p["symbol"] for p in got["positions"]} == set(summary["positions"])


_PROCESS = """
import asyncio, json, sys
from ledger.account_manager import AccountManager

async def main():
    manager = AccountManager(db=sys.argv[1], follow=False)
    calls = []
    manager.add_fill_callback(calls.append)
    await manager.start()
    answers = [manager.fill_reconciler.process_fill(json.loads(arg)) for arg in sys.argv[2:]]
    result = {
        "answers": answers,
        "callbacks": [c["fill_id"] for c in calls],
        "processed": len(manager.processed_fills),
        "known": [json.loads(a)["fillId"] in manager.processed_fills for a in sys.argv[2:]],
    }
    await manager.stop()
    print(json.dumps(result))

asyncio.run(main())
"""


def _in_new_process(db: str, *fills: dict[str, Any]) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", _PROCESS, db, *(json.dumps(f) for f in fills)],
        capture_output=True,
        cwd=REPO,
        env=ledger_env(),
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    return json.loads(done.stdout.decode().strip().splitlines()[-1])


def test_process_fill_of_a_duplicate_returns_false_after_a_process_restart(tmp_path: Path) -> None:
    db = str(tmp_path / "ledger.sqlite")
    second = BOT_FILL | {"fillId": "bot-fill-0002", "quantity": "20", "side": "sell"}
    first_run = _in_new_process(db, BOT_FILL, BOT_FILL)
    assert first_run == {
        "answers": [True, False],
        "callbacks": ["bot-fill-0001"],
        "processed": 1,
        "known": [True, True],
    }
    restarted = _in_new_process(db, BOT_FILL, second)
    assert restarted == {
        "answers": [False, True],
        "callbacks": ["bot-fill-0002"],
        "processed": 2,
        "known": [True, True],
    }


def test_a_fill_the_parser_refuses_raises_and_is_kept_as_rejected(tmp_path: Path) -> None:
    db = str(tmp_path / "ledger.sqlite")

    async def main() -> None:
        async with AccountManager(db=db, follow=False) as manager:
            with pytest.raises(ValueError, match=r"fill rejected: .*price"):
                manager.fill_reconciler.process_fill(BOT_FILL | {"price": "-1"})
            assert len(manager.processed_fills) == 0

    asyncio.run(main())
    services = open_ledger(db)
    try:
        services.projector.catch_up()
        with services.db.reading() as cur:
            cur.execute("SELECT source, reason FROM ledger_rejects")
            rows = cur.fetchall()
    finally:
        services.close()
    assert len(rows) == 1 and rows[0][0] == "bot" and "price" in rows[0][1]


def test_balance_tracker_reads_the_projected_balances(tmp_path: Path) -> None:
    db = str(tmp_path / "ledger.sqlite")
    services = open_ledger(db)
    snapshot = (
        b'{"type":"Account","sub_type":"balance","balance":['
        b'{"asset":"ada","asset_unit":"","free":1000.5,"locked":20},'
        b'{"asset":"usdm","asset_unit":"x","free":300.25,"locked":0},'
        b'{"asset":"night","asset_unit":"y","free":50,"locked":0}]}'
    )
    services.ingest_and_project([(1, snapshot)], "file:test")
    services.close()

    async def main() -> dict[str, Any]:
        async with AccountManager(db=db, follow=False) as manager:
            tracker = manager.balance_tracker
            ada = tracker.get_balance("ada")
            assert ada is not None
            return {
                "ada": (ada.free, ada.available, ada.locked, ada.total),
                "missing": tracker.get_balance("IAG"),
                "all": sorted(tracker.get_all_balances()),
                "usd": tracker.get_total_value_usd({"ADA": "0.5"}),
                "summary": manager.get_account_summary(),
            }

    got = asyncio.run(main())
    assert got["ada"] == (Decimal("1000.5"), Decimal("1000.5"), Decimal(20), Decimal("1020.5"))
    assert got["missing"] is None
    assert got["all"] == ["ADA", "NIGHT", "USDM"]
    # ADA 1020.5 × 0.5 + USDM 300.25 × 1 (a stablecoin); NIGHT has no price: left out.
    assert got["usd"] == Decimal("810.5")
    assert got["summary"]["websocket_connected"] is False
    assert got["summary"]["fills_processed"] == 0


def test_a_client_object_supplies_the_key_and_urls_and_never_shows_the_key() -> None:
    key = new_key()
    client = SimpleNamespace(api_key=key, base_url="http://127.0.0.1:9", ws_url="ws://127.0.0.1:9")
    manager = AccountManager(client=client, db="unused.sqlite")
    assert manager.config is not None
    assert manager.config.rest_url == "http://127.0.0.1:9"
    assert manager.config.ws_url == "ws://127.0.0.1:9"
    assert key not in repr(manager.config)
    with pytest.raises(RuntimeError, match="not started"):
        manager.get_account_summary()
