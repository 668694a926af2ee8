"""Parsing every DeltaDeFi frame format, and every reason a frame is rejected.

The frames below are shaped exactly as the project notes describe the wire: the
current account stream (``order_info``, ``balance``, ``dlta_points``), the older
``trading_history`` records and the bot-side ``fill`` / ``balance_update`` messages.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from adapters.deltadefi.frames import normalise_timestamp, parse
from ledger.application import IncomingFrame
from ledger.bootstrap import open_ledger
from ledger.domain import BalanceLine, Fill, ParsedFrame, Side
from ledger.events import FRAME_TOPICS, split_state

USDM_UNIT = "c48cbb3d5e57ed56e276bc45f99ab39abe94e6cd7ac39fb402da47ad0014df105553444d"
NIGHT_UNIT = "0691b2fecca1ac4f53cb6dfb00b7013e561d1f34403b957cbb5af1fa4e49474854"

# --- real frames ---------------------------------------------------------------------

#: A buy on ADA/USDM, partly filled by two executions; fees in lovelace (ADA received).
ORDER_INFO_BUY: dict[str, Any] = {
    "type": "Account",
    "sub_type": "order_info",
    "order": {
        "id": "0f6b1f7e-3c2a-4a55-9f0e-6b2f8d1c9a01",
        "account_id": "a3e1c5d2-8b7f-4e6a-9c0d-1f2e3d4c5b6a",
        "status": "open",
        "symbol": "ADAUSDM",
        "base_qty": "1000",
        "quote_qty": "452.3",
        "side": "buy",
        "price": "0.4523",
        "type": "limit",
        "locked_base_qty": "0",
        "locked_quote_qty": "180.92",
        "executed_base_qty": "600",
        "executed_quote_qty": "271.38",
        "ob_open_order_base_qty": "400",
        "commission_unit": "lovelace",
        "commission": "600000",
        "commission_rate_bp": 10,
        "executed_price": "0.4523",
        "created_at": "2026-03-20T09:00:00.123Z",
        "updated_at": "2026-03-20T09:00:02.456Z",
        "order_execution_records": [
            {
                "id": "5d2c8a91-0e4b-4f6d-8a7c-3b9e1f0d2c11",
                "order_id": "0f6b1f7e-3c2a-4a55-9f0e-6b2f8d1c9a01",
                "account_id": "a3e1c5d2-8b7f-4e6a-9c0d-1f2e3d4c5b6a",
                "execution_price": "0.4523",
                "filled_base_qty": "400",
                "filled_quote_qty": "180.92",
                "commission_unit": "lovelace",
                "commission": "400000",
                "role": "maker",
                "counter_party_order_id": "9a8b7c6d-5e4f-4a3b-2c1d-0e9f8a7b6c5d",
                "created_at": "2026-03-20T09:00:01.000Z",
            },
            {
                "id": "7e3d9ba2-1f5c-4a7e-9b8d-4c0f2a1e3d22",
                "order_id": "0f6b1f7e-3c2a-4a55-9f0e-6b2f8d1c9a01",
                "account_id": "a3e1c5d2-8b7f-4e6a-9c0d-1f2e3d4c5b6a",
                "execution_price": "0.4523",
                "filled_base_qty": "200",
                "filled_quote_qty": "90.46",
                "commission_unit": "lovelace",
                "commission": "199999",
                "role": "taker",
                "counter_party_order_id": "1b2c3d4e-5f6a-4b7c-8d9e-0f1a2b3c4d5e",
                "created_at": "2026-03-20T09:00:02.456Z",
            },
        ],
    },
}

#: A cancelled sell on NIGHT/USDM that still carries a fill; fee in USDM by policy id.
ORDER_INFO_SELL: dict[str, Any] = {
    "type": "Account",
    "sub_type": "order_info",
    "order": {
        "id": "ord-night-77",
        "account_id": "acct-1",
        "status": "cancelled",
        "symbol": "NIGHTUSDM",
        "base_qty": "5000",
        "quote_qty": "260",
        "side": "sell",
        "price": "0.052",
        "type": "limit",
        "locked_base_qty": "0",
        "locked_quote_qty": "0",
        "executed_base_qty": "1234.5",
        "executed_quote_qty": "64.194",
        "ob_open_order_base_qty": "0",
        "commission_unit": USDM_UNIT,
        "commission": "0.064194",
        "commission_rate_bp": 10,
        "executed_price": "0.052",
        "created_at": "2026-03-20T10:00:00Z",
        "updated_at": "2026-03-20T10:05:00Z",
        "order_execution_records": [
            {
                "id": "exe-night-1",
                "order_id": "ord-night-77",
                "account_id": "acct-1",
                "execution_price": "0.052",
                "filled_base_qty": "1234.5",
                "filled_quote_qty": "64.194",
                "commission_unit": USDM_UNIT,
                "commission": "0.064194",
                "role": "taker",
                "counter_party_order_id": "cp-9",
                "created_at": "2026-03-20T10:01:30.5Z",
            }
        ],
    },
}

#: Balances as the wire sends them: JSON numbers (floats), mixed-case assets, "" for ADA's unit.
BALANCE_RAW = (
    b'{"type":"Account","sub_type":"balance","balance":['
    b'{"asset":"usdm","asset_unit":"' + USDM_UNIT.encode() + b'","free":1153.006812,"locked":0},'
    b'{"asset":"ada","asset_unit":"","free":20000.1,"locked":12.5},'
    b'{"asset":"Night","asset_unit":"' + NIGHT_UNIT.encode() + b'","free":0.3,"locked":1e2}]}'
)

DLTA_POINTS: dict[str, Any] = {
    "type": "Account",
    "sub_type": "dlta_points",
    "dlta_points": {
        "delta": 3,
        "new_total": 120,
        "season_points": 40,
        "source_type": "trade",
        "source_ref": "exe-night-1",
        "league": "gold",
    },
}

TRADING_HISTORY: dict[str, Any] = {
    "type": "trading_history",
    "trading_history": [
        {
            "execution_id": "hist-1",
            "order_id": "ord-h-1",
            "status": "closed",
            "symbol": "ADAUSDM",
            "executed_qty": "150",
            "side": "sell",
            "type": "limit",
            "fee_charged": "0.06765",
            "fee_unit": "USDM",
            "executed_price": "0.451",
            "created_time": "2025-11-02T14:30:00Z",
        },
        {
            "execution_id": "hist-2",
            "order_id": "ord-h-2",
            "status": "closed",
            "symbol": "ADAUSDM",
            "executed_qty": "100",
            "side": "buy",
            "type": "market",
            "fee_charged": "100000",
            "fee_unit": "lovelace",
            "executed_price": "0.449",
            "created_time": "2025-11-02T14:31:00Z",
        },
    ],
}

BOT_FILL: dict[str, Any] = {
    "type": "fill",
    "fillId": "bot-fill-42",
    "orderId": "bot-ord-7",
    "symbol": "ADAUSDM",
    "side": "BUY",
    "price": "0.4501",
    "quantity": "250",
    "timestamp": 1773997230250,
    "commission": "0.25",
    "commissionAsset": "ada",
    "isMaker": True,
    "tradeId": 991,
}

BALANCE_UPDATE: dict[str, Any] = {
    "type": "balance_update",
    "balances": {"ADA": {"available": "19850.25", "locked": "0"}, "usdm": {"available": 1200.5}},
}


def raw(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def mutated(frame: dict[str, Any], change: Callable[[dict[str, Any]], None]) -> bytes:
    copied = copy.deepcopy(frame)
    change(copied)
    return raw(copied)


# --- every format ---------------------------------------------------------------------


def test_order_info_books_each_execution_record_with_symbol_and_side_from_the_order() -> None:
    parsed = parse(raw(ORDER_INFO_BUY))

    assert parsed.rejection is None
    assert parsed.kind == "order_info"
    assert parsed.snapshot is None
    assert parsed.fills == (
        Fill(
            fill_id="5d2c8a91-0e4b-4f6d-8a7c-3b9e1f0d2c11",
            order_id="0f6b1f7e-3c2a-4a55-9f0e-6b2f8d1c9a01",
            symbol="ADAUSDM",
            base_asset="ADA",
            quote_asset="USDM",
            side=Side.BUY,
            price=Decimal("0.4523"),
            quantity=Decimal("400"),
            quote_amount=Decimal("180.92"),
            fee=Decimal("0.4"),
            fee_asset="ADA",
            role="maker",
            executed_at="2026-03-20T09:00:01.000000Z",
        ),
        Fill(
            fill_id="7e3d9ba2-1f5c-4a7e-9b8d-4c0f2a1e3d22",
            order_id="0f6b1f7e-3c2a-4a55-9f0e-6b2f8d1c9a01",
            symbol="ADAUSDM",
            base_asset="ADA",
            quote_asset="USDM",
            side=Side.BUY,
            price=Decimal("0.4523"),
            quantity=Decimal("200"),
            quote_amount=Decimal("90.46"),
            fee=Decimal("0.199999"),
            fee_asset="ADA",
            role="taker",
            executed_at="2026-03-20T09:00:02.456000Z",
        ),
    )


def test_order_info_quote_amount_is_taken_as_reported_not_recomputed() -> None:
    frame = copy.deepcopy(ORDER_INFO_BUY)
    frame["order"]["order_execution_records"][0]["filled_quote_qty"] = "180.919999"
    (first, _) = parse(raw(frame)).fills
    assert first.quote_amount == Decimal("180.919999")


def test_cancelled_order_carries_its_fill_and_policy_unit_fee_is_the_quote_on_a_sell() -> None:
    (fill,) = parse(raw(ORDER_INFO_SELL)).fills
    assert (fill.symbol, fill.base_asset, fill.quote_asset) == ("NIGHTUSDM", "NIGHT", "USDM")
    assert fill.side is Side.SELL
    assert fill.order_id == "ord-night-77"
    assert fill.quantity == Decimal("1234.5")
    assert (fill.fee, fill.fee_asset) == (Decimal("0.064194"), "USDM")
    assert fill.executed_at == "2026-03-20T10:01:30.500000Z"


def test_execution_record_without_its_own_order_id_takes_the_parent_order_id() -> None:
    frame = copy.deepcopy(ORDER_INFO_SELL)
    del frame["order"]["order_execution_records"][0]["order_id"]
    (fill,) = parse(raw(frame)).fills
    assert fill.order_id == "ord-night-77"


@pytest.mark.parametrize("records", [[], None])
def test_order_without_executions_is_accepted_and_books_nothing(records: Any) -> None:
    frame = copy.deepcopy(ORDER_INFO_BUY)
    frame["order"]["order_execution_records"] = records
    parsed = parse(raw(frame))
    assert (parsed.kind, parsed.rejection, parsed.fills) == ("order_info", None, ())


def test_balance_snapshot_reads_wire_floats_as_exact_decimals_and_upper_cases_assets() -> None:
    parsed = parse(BALANCE_RAW)
    assert parsed.rejection is None
    assert parsed.kind == "balance"
    assert parsed.fills == ()
    assert parsed.snapshot == (
        BalanceLine("ADA", Decimal("20000.1"), Decimal("12.5")),
        BalanceLine("NIGHT", Decimal("0.3"), Decimal("1E+2")),
        BalanceLine("USDM", Decimal("1153.006812"), Decimal("0")),
    )
    # Exact, not float-rounded: 0.3 as a float is 0.29999999999999998889776975...
    assert parsed.snapshot is not None
    assert str(parsed.snapshot[1].free) == "0.3"
    assert all(isinstance(line.free, Decimal) for line in parsed.snapshot)


def test_balance_snapshot_listing_an_asset_twice_is_rejected() -> None:
    frame = (
        b'{"type":"Account","sub_type":"balance","balance":['
        b'{"asset":"ada","free":1,"locked":0},{"asset":"ADA","free":2,"locked":0}]}'
    )
    parsed = parse(frame)
    assert parsed.rejection == "balance: balance lists ADA twice"


def test_dlta_points_are_kept_and_not_booked() -> None:
    parsed = parse(raw(DLTA_POINTS))
    assert (parsed.kind, parsed.rejection, parsed.fills, parsed.snapshot) == (
        "dlta_points",
        None,
        (),
        None,
    )


def test_older_trading_history_records_are_fills_priced_times_quantity() -> None:
    parsed = parse(raw(TRADING_HISTORY))
    assert parsed.rejection is None
    assert parsed.kind == "trading_history"
    sell, buy = parsed.fills
    assert (sell.fill_id, sell.order_id, sell.side) == ("hist-1", "ord-h-1", Side.SELL)
    assert sell.quote_amount == Decimal("67.650")
    assert (sell.fee, sell.fee_asset) == (Decimal("0.06765"), "USDM")
    assert sell.executed_at == "2025-11-02T14:30:00.000000Z"
    assert (buy.fee, buy.fee_asset) == (Decimal("0.1"), "ADA")
    assert buy.quote_amount == Decimal("44.900")


def test_trading_history_inside_an_account_frame_is_read_too() -> None:
    frame = {
        "type": "Account",
        "sub_type": "trading_history",
        "data": TRADING_HISTORY["trading_history"],
    }
    assert [f.fill_id for f in parse(raw(frame)).fills] == ["hist-1", "hist-2"]


def test_older_formats_compute_price_times_quantity_without_rounding() -> None:
    frame = copy.deepcopy(BOT_FILL)
    frame["price"], frame["quantity"] = "0.4512345678901234", "123456.1234567890123"
    (fill,) = parse(raw(frame)).fills
    # 16 + 19 significant digits: the default 28-digit context would round this product.
    assert fill.quote_amount == Decimal("55707.67052141391753772496281111782")


def test_bot_fill_message() -> None:
    (fill,) = parse(raw(BOT_FILL)).fills
    assert fill == Fill(
        fill_id="bot-fill-42",
        order_id="bot-ord-7",
        symbol="ADAUSDM",
        base_asset="ADA",
        quote_asset="USDM",
        side=Side.BUY,
        price=Decimal("0.4501"),
        quantity=Decimal("250"),
        quote_amount=Decimal("112.5250"),
        fee=Decimal("0.25"),
        fee_asset="ADA",
        role="maker",
        executed_at="2026-03-20T09:00:30.250000Z",
    )


def test_bot_fill_without_commission_books_a_zero_fee_in_the_asset_received() -> None:
    frame = {k: v for k, v in BOT_FILL.items() if k not in ("commission", "commissionAsset")}
    frame["side"] = "sell"
    (fill,) = parse(raw(frame)).fills
    assert (fill.fee, fill.fee_asset) == (Decimal(0), "USDM")


def test_bot_fill_with_a_commission_but_no_asset_charges_the_asset_received() -> None:
    frame = {k: v for k, v in BOT_FILL.items() if k != "commissionAsset"}
    frame["side"], frame["commission"] = "sell", "0.18"
    (fill,) = parse(raw(frame)).fills
    assert (fill.fee, fill.fee_asset) == (Decimal("0.18"), "USDM")


def test_order_info_with_json_numbers_for_money_reads_them_exactly() -> None:
    """Quantities and prices are strings on the wire, but a JSON number must read the same."""
    text = json.dumps(ORDER_INFO_BUY)
    for key, value in (("execution_price", "0.4523"), ("filled_quote_qty", "180.92")):
        quoted = f'"{key}": "{value}"'
        assert quoted in text
        text = text.replace(quoted, f'"{key}": {value}')  # 0.4523 is not exact as a float
    assert parse(text.encode()).fills == parse(raw(ORDER_INFO_BUY)).fills


@pytest.mark.parametrize(
    ("value", "normal"),
    [
        ("2026-03-20T09:00:01Z", "2026-03-20T09:00:01.000000Z"),
        ("2026-03-20T09:00:01.5Z", "2026-03-20T09:00:01.500000Z"),
        ("2026-03-20T11:00:01.123+02:00", "2026-03-20T09:00:01.123000Z"),
        ("2026-03-20T09:00:01", "2026-03-20T09:00:01.000000Z"),
        (1773997201, "2026-03-20T09:00:01.000000Z"),
        (1773997201250, "2026-03-20T09:00:01.250000Z"),
        ("1773997201250", "2026-03-20T09:00:01.250000Z"),
        (Decimal("1773997201.5"), "2026-03-20T09:00:01.500000Z"),
    ],
)
def test_executed_times_are_normalised_so_text_order_is_time_order(value: Any, normal: str) -> None:
    assert normalise_timestamp(value) == normal


@pytest.mark.parametrize("value", ["yesterday", "", True, None, [], "2026-13-01T00:00:00Z"])
def test_a_time_that_cannot_be_read_is_an_error(value: Any) -> None:
    with pytest.raises(ValueError):
        normalise_timestamp(value)


def test_bot_balance_update_is_a_snapshot() -> None:
    parsed = parse(raw(BALANCE_UPDATE))
    assert parsed.rejection is None
    assert parsed.kind == "balance_update"
    assert parsed.snapshot == (
        BalanceLine("ADA", Decimal("19850.25"), Decimal("0")),
        BalanceLine("USDM", Decimal("1200.5"), Decimal("0")),
    )


@pytest.mark.parametrize(
    "frame",
    [
        {"type": "heartbeat", "ts": 1773997230},
        {"type": "Account", "sub_type": "order_book_update", "bids": [], "asks": []},
        {"type": "Account", "sub_type": "new_thing_2027", "payload": {"price": "NaN"}},
    ],
)
def test_unknown_but_well_formed_type_is_kept_and_ignored(frame: dict[str, Any]) -> None:
    parsed = parse(raw(frame))
    assert (parsed.kind, parsed.rejection, parsed.fills, parsed.snapshot) == (
        "unknown",
        None,
        (),
        None,
    )


# --- every rejection ------------------------------------------------------------------


def _set_record(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(frame: dict[str, Any]) -> None:
        frame["order"]["order_execution_records"][1][key] = value

    return change


def _del_record(key: str) -> Callable[[dict[str, Any]], None]:
    def change(frame: dict[str, Any]) -> None:
        del frame["order"]["order_execution_records"][1][key]

    return change


def _set_order(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(frame: dict[str, Any]) -> None:
        frame["order"][key] = value

    return change


def _bot(**changes: Any) -> bytes:
    frame = {**BOT_FILL, **changes}
    return raw({k: v for k, v in frame.items() if v is not _DROP})


def _history(**changes: Any) -> bytes:
    record = {**TRADING_HISTORY["trading_history"][0], **changes}
    return raw({"type": "trading_history", "trading_history": [record]})


_DROP = object()


def _balance_entry(free: str, locked: str = "0") -> bytes:
    return (
        b'{"type":"Account","sub_type":"balance","balance":[{"asset":"ada","asset_unit":"",'
        + f'"free":{free},"locked":{locked}'.encode()
        + b"}]}"
    )


REJECTED: list[tuple[str, bytes, str]] = [
    # (case, raw frame, a fragment the one-line reason must contain)
    ("truncated JSON", b'{"type":"Account","sub_type":"order_info","order":{"id":', "invalid JSON"),
    ("trailing garbage", b'{"type":"fill"} x', "invalid JSON"),
    ("not UTF-8", b'{"type":"fill","fillId":"\xff\xfe"}', "not valid UTF-8"),
    ("Latin-1 bytes", '{"type":"heartbeat","who":"Jos\u00e9"}'.encode("latin-1"), "UTF-8"),
    ("JSON array", b"[1, 2, 3]", "not a JSON object"),
    ("JSON string", b'"order_info"', "not a JSON object"),
    ("JSON number", b"42", "not a JSON object"),
    ("JSON null", b"null", "not a JSON object"),
    ("object without type", b'{"sub_type":"balance","balance":[]}', "no frame type"),
    (
        "missing execution id",
        mutated(ORDER_INFO_BUY, _del_record("id")),
        "order_execution_records.1.id",
    ),
    ("empty execution id", mutated(ORDER_INFO_BUY, _set_record("id", "")), "must not be empty"),
    ("blank execution id", mutated(ORDER_INFO_BUY, _set_record("id", "   ")), "must not be empty"),
    ("missing order id", mutated(ORDER_INFO_BUY, lambda f: f["order"].pop("id")), "order.id"),
    ("empty order id", mutated(ORDER_INFO_BUY, _set_order("id", "")), "must not be empty"),
    ("empty fillId", _bot(fillId=""), "fillId: must not be empty"),
    ("missing fillId", _bot(fillId=_DROP), "fillId"),
    ("empty execution_id", _history(execution_id=""), "must not be empty"),
    ("side hold", mutated(ORDER_INFO_BUY, _set_order("side", "hold")), "side must be buy or sell"),
    ("side missing", mutated(ORDER_INFO_BUY, lambda f: f["order"].pop("side")), "order.side"),
    ("bot side long", _bot(side="long"), "side must be buy or sell"),
    ("history side number", _history(side=1), "side must be buy or sell"),
    ("price zero", mutated(ORDER_INFO_BUY, _set_record("execution_price", "0")), "must be > 0"),
    (
        "price negative",
        mutated(ORDER_INFO_BUY, _set_record("execution_price", "-0.45")),
        "must be > 0",
    ),
    ("bot price zero", _bot(price="0.0"), "price: must be > 0"),
    ("history price negative", _history(executed_price="-1"), "must be > 0"),
    ("quantity zero", mutated(ORDER_INFO_BUY, _set_record("filled_base_qty", "0")), "must be > 0"),
    (
        "quantity negative",
        mutated(ORDER_INFO_BUY, _set_record("filled_base_qty", "-200")),
        "must be > 0",
    ),
    ("bot quantity zero", _bot(quantity=0), "quantity: must be > 0"),
    ("history quantity zero", _history(executed_qty="0"), "must be > 0"),
    (
        "negative commission",
        mutated(ORDER_INFO_BUY, _set_record("commission", "-1")),
        "must be >= 0",
    ),
    ("negative bot commission", _bot(commission="-0.25"), "must be >= 0"),
    ("negative history fee", _history(fee_charged="-0.1"), "must be >= 0"),
    ("negative free", _balance_entry("-5"), "must be >= 0"),
    ("negative locked", _balance_entry("5", "-0.000001"), "must be >= 0"),
    (
        "negative available",
        raw({"type": "balance_update", "balances": {"ADA": {"available": "-1"}}}),
        "must be >= 0",
    ),
    ("price text", mutated(ORDER_INFO_BUY, _set_record("execution_price", "abc")), "not a number"),
    (
        "price with comma",
        mutated(ORDER_INFO_BUY, _set_record("execution_price", "0,45")),
        "not a number",
    ),
    ("price empty", mutated(ORDER_INFO_BUY, _set_record("execution_price", "")), "not a number"),
    ("price boolean", mutated(ORDER_INFO_BUY, _set_record("execution_price", True)), "boolean"),
    ("price null", mutated(ORDER_INFO_BUY, _set_record("execution_price", None)), "not a number"),
    ("price list", mutated(ORDER_INFO_BUY, _set_record("execution_price", ["1"])), "not a number"),
    ("NaN literal", _balance_entry("NaN"), "NaN is not a number JSON allows"),
    ("Infinity literal", _balance_entry("Infinity"), "Infinity is not a number JSON allows"),
    (
        "-Infinity literal",
        _balance_entry("0", "-Infinity"),
        "-Infinity is not a number JSON allows",
    ),
    (
        "NaN in a fill",
        b'{"type":"fill","fillId":"f","symbol":"ADAUSDM","side":"buy","price":NaN,"quantity":1,"timestamp":1}',
        "NaN",
    ),
    ("NaN string", mutated(ORDER_INFO_BUY, _set_record("filled_base_qty", "NaN")), "not a number"),
    ("nan string", _bot(price="nan"), "not a number"),
    (
        "Infinity string",
        mutated(ORDER_INFO_BUY, _set_record("execution_price", "Infinity")),
        "not a number",
    ),
    ("inf string", _history(fee_charged="inf"), "not a number"),
    (
        "-Infinity string",
        raw({"type": "balance_update", "balances": {"ADA": {"available": "-Infinity"}}}),
        "not a number",
    ),
    ("huge exponent", _balance_entry("1e999999"), "out of range"),
    ("too many digits", _bot(price="0." + "1" * 70), "significant digits"),
    (
        "unsplittable symbol",
        mutated(ORDER_INFO_BUY, _set_order("symbol", "FOOBAR")),
        "cannot split symbol 'FOOBAR'",
    ),
    ("symbol is only a quote", _bot(symbol="USDM"), "cannot split symbol"),
    ("symbol base equals quote", _history(symbol="ADA/ADA"), "cannot split symbol"),
    ("empty symbol", mutated(ORDER_INFO_BUY, _set_order("symbol", "")), "cannot split symbol"),
    (
        "unknown commission unit",
        mutated(ORDER_INFO_BUY, _set_record("commission_unit", "satoshi")),
        "unknown commission unit 'satoshi'",
    ),
    ("commission in an unrelated asset", _bot(commissionAsset="BTC"), "unknown commission unit"),
    (
        "bad hex unit",
        _history(fee_unit="c48cbb3d5e57ed56e276bc45f99ab39abe94e6cd7ac39fb402da47zz"),
        "unknown commission unit",
    ),
    (
        "same fill twice in one frame",
        mutated(ORDER_INFO_BUY, _set_record("id", "5d2c8a91-0e4b-4f6d-8a7c-3b9e1f0d2c11")),
        "appears twice",
    ),
    (
        "balance is not a list",
        raw({"type": "Account", "sub_type": "balance", "balance": {"ada": 1}}),
        "balance",
    ),
    (
        "dlta_points not an object",
        raw({"type": "Account", "sub_type": "dlta_points", "dlta_points": 3}),
        "dlta_points",
    ),
    (
        "bad executed time",
        mutated(ORDER_INFO_BUY, _set_record("created_at", "yesterday")),
        "not an RFC 3339 time",
    ),
    ("deeply nested", b"[" * 100_000 + b"]" * 100_000, ""),
]


@pytest.mark.parametrize(
    ("frame", "fragment"), [c[1:] for c in REJECTED], ids=[c[0] for c in REJECTED]
)
def test_frame_is_rejected_whole_with_a_one_line_reason(frame: bytes, fragment: str) -> None:
    parsed = parse(frame)
    assert parsed.rejection is not None, parsed
    assert fragment in parsed.rejection
    assert parsed.rejected
    assert parsed.fills == ()
    assert parsed.snapshot is None
    assert "\n" not in parsed.rejection and "\r" not in parsed.rejection
    assert 0 < len(parsed.rejection) <= 300


def test_one_bad_record_rejects_the_whole_frame_so_the_good_record_is_not_booked() -> None:
    bad_second = mutated(ORDER_INFO_BUY, _set_record("filled_base_qty", "-200"))
    parsed = parse(bad_second)
    assert parsed.rejection == (
        "order_info: order.order_execution_records.1.filled_base_qty: must be > 0"
    )
    assert parsed.fills == ()


def test_reason_never_smuggles_a_multi_line_value() -> None:
    parsed = parse(_bot(symbol="ADA\nUSDM FOO\r\nBAR" + "X" * 500))
    assert parsed.rejection is not None
    assert "\n" not in parsed.rejection and len(parsed.rejection) <= 300


def test_reject_helper_collapses_whitespace_and_bounds_length() -> None:
    parsed = ParsedFrame.reject("first line\nsecond\tline  " + "y" * 400)
    assert parsed.rejection is not None
    assert parsed.rejection.startswith("first line second line yyy")
    assert parsed.rejection.endswith("...") and len(parsed.rejection) == 300


# --- through the real log: rejected frames lose nothing and book nothing ------------------


def test_rejected_frames_are_kept_byte_for_byte_and_book_nothing(tmp_path: Path) -> None:
    not_utf8 = b'{"type":"fill","fillId":"x\xff\xfe","side":"buy"}'
    half_bad = mutated(ORDER_INFO_BUY, _set_record("commission", "-1"))
    good = raw(ORDER_INFO_SELL)
    lines = [not_utf8, half_bad, b"   ", good, b"[1]", raw({"type": "heartbeat"})]
    services = open_ledger(str(tmp_path / "ledger.sqlite"))
    try:
        report = services.ingest_and_project(enumerate(lines, start=1), "capture.jsonl")
        assert (report.frames, report.appended, report.rejected) == (5, 5, 3)
        assert report.fills_new == 1  # only the good sell: the half-bad order books nothing

        with services.db.reading() as cur:
            cur.execute("SELECT reason, raw FROM ledger_rejects ORDER BY log_position")
            rejects = [(reason, bytes(blob)) for reason, blob in cur.fetchall()]
            cur.execute("SELECT fill_id FROM ledger_fills")
            booked = [row[0] for row in cur.fetchall()]
        assert [blob for _, blob in rejects] == [not_utf8, half_bad, b"[1]"]
        assert rejects[0][0] == "not valid UTF-8"
        assert booked == ["exe-night-1"]

        # The log itself holds the exact bytes too (the projections are only a view).
        logged = [
            split_state(note.state)[1]
            for note in services.db.read(0, 100)
            if note.topic in FRAME_TOPICS
        ]
        assert logged == [not_utf8, half_bad, good, b"[1]", raw({"type": "heartbeat"})]
    finally:
        services.close()


def test_live_frame_that_is_not_utf8_is_kept_exactly(tmp_path: Path) -> None:
    frame = b"\x80\x81 binary \x00 junk"
    services = open_ledger(str(tmp_path / "ledger.sqlite"))
    try:
        report = services.ledger.append(
            [IncomingFrame(raw=frame, source="wss live", received_at="2026-03-20T09:00:00.000000Z")]
        )
        services.projector.catch_up()
        assert report.rejected == 1
        with services.db.reading() as cur:
            cur.execute("SELECT source, reason, raw FROM ledger_rejects")
            ((source, reason, blob),) = cur.fetchall()
        assert (source, reason, bytes(blob)) == ("wss live", "not valid UTF-8", frame)
    finally:
        services.close()
