"""Hostile frames: generated from the pydantic models' JSON schemas, then mutated.

``frames_from_schema`` walks a model's JSON schema (``$ref``, ``const``, ``anyOf``,
objects, arrays, strings). The parser's own field types (``PlainValidator``) have
empty schemas, so those fields are filled from ``FIELD_HINTS`` by name: plausible
numbers, ids, sides and times, so that a good share of the frames is valid and the
mutations have something to break.

A mutation replaces one leaf (or the whole frame) by one of ``HOSTILE_VALUES``. At a
required amount (``must_reject``) every one of them leaves a frame that cannot be
booked, and the test holds the parser to that. Values that JSON cannot carry (``NaN``, a 10,000-digit integer, deep
nesting) are spliced into the serialised text through placeholders.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

from adapters.deltadefi import frames

MODELS = (
    frames.OrderInfoFrame,
    frames.BalanceFrame,
    frames.DltaPointsFrame,
    frames.TradingHistoryFrame,
    frames.BotFill,
    frames.BalanceUpdateFrame,
)

SYMBOLS = ("ADAUSDM", "NIGHTUSDM", "IAGUSDM", "ADA/USDM", "FOOUSDT")
USDM_UNIT = "c48cbb3d5e57ed56e276bc45f99ab39abe94e6cd7ac39fb402da47ad0014df105553444d"

_decimal_text = st.decimals(
    min_value="0.000001", max_value="1000000", places=6, allow_nan=False, allow_infinity=False
).map(lambda d: format(d.normalize(), "f"))
_amount = st.one_of(_decimal_text, st.integers(1, 10**6), _decimal_text.map(lambda s: RAW(s)))
_time = st.one_of(
    st.sampled_from(["2026-03-20T10:00:00Z", "2026-03-20T10:00:00.123456Z", "2026-03-20 10:00:01"]),
    st.integers(1_700_000_000, 1_800_000_000),
    st.integers(1_700_000_000_000, 1_800_000_000_000),
)
_ident = st.from_regex(r"\A[a-z]{1,3}-[0-9a-f]{1,12}\Z")

FIELD_HINTS: dict[str, st.SearchStrategy[Any]] = {
    "id": _ident,
    "fillId": _ident,
    "execution_id": _ident,
    "side": st.sampled_from(["buy", "sell", "BUY", "Sell"]),
    "execution_price": _amount,
    "filled_base_qty": _amount,
    "filled_quote_qty": _amount,
    "commission": _amount,
    "executed_qty": _amount,
    "executed_price": _amount,
    "fee_charged": _amount,
    "price": _amount,
    "quantity": _amount,
    "free": _amount,
    "locked": _amount,
    "available": _amount,
    "created_at": _time,
    "created_time": _time,
    "timestamp": _time,
    "symbol": st.sampled_from(SYMBOLS),
    "asset": st.sampled_from(["ada", "usdm", "NIGHT", "iag", ""]),
    "commission_unit": st.sampled_from(["lovelace", "", "USDM", USDM_UNIT, "ADA"]),
    "fee_unit": st.sampled_from(["lovelace", "USDM", USDM_UNIT]),
    "commissionAsset": st.sampled_from(["ADA", "USDM", ""]),
    "tradeId": st.one_of(st.none(), _ident, st.integers(0, 10**9)),
    "order_id": _ident,
    "orderId": _ident,
    "role": st.sampled_from(["maker", "taker", ""]),
    "status": st.sampled_from(["open", "closed", "cancelled", "processing"]),
    # Only where the schema does not fix it: the older stream's frame type, an order's type.
    "type": st.sampled_from(["trading_history", "limit", "market"]),
}


@dataclass(frozen=True)
class RAW:
    """A JSON token written into the text as it is (``NaN``, huge numbers, deep nesting)."""

    text: str


def _from_schema(schema: dict[str, Any], defs: dict[str, Any], name: str) -> st.SearchStrategy[Any]:
    if "$ref" in schema:
        return _from_schema(defs[schema["$ref"].split("/")[-1]], defs, name)
    if "const" in schema:
        return st.just(schema["const"])
    if name in FIELD_HINTS:
        return FIELD_HINTS[name]
    if "anyOf" in schema:
        return st.one_of([_from_schema(s, defs, name) for s in schema["anyOf"]])
    kind = schema.get("type")
    if kind == "object":
        props = schema.get("properties", {})
        required = set(schema.get("required", []))
        if not props:
            extra = schema.get("additionalProperties", True)
            values = _from_schema(extra, defs, "") if isinstance(extra, dict) else _json_leaf
            keys = st.sampled_from(["ADA", "USDM", "NIGHT", "delta", "league"]) | st.text(
                max_size=8
            )
            return st.dictionaries(keys, values, max_size=4)
        fixed = {k: _from_schema(v, defs, k) for k, v in props.items() if k in required}
        optional = {k: _from_schema(v, defs, k) for k, v in props.items() if k not in required}
        return st.fixed_dictionaries(fixed, optional=optional)
    if kind == "array":
        return st.lists(_from_schema(schema.get("items", {}), defs, name), max_size=4)
    if kind == "string":
        return st.text(max_size=12)
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    if kind in ("integer", "number"):
        return st.integers(-(10**6), 10**6)
    return _json_leaf


_json_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(-1000, 1000), st.text(max_size=8), _decimal_text
)


def frames_from_schema() -> st.SearchStrategy[dict[str, Any]]:
    """A frame of one of the known formats, built from its model's JSON schema."""
    options = []
    for model in MODELS:
        schema = model.model_json_schema(mode="validation")
        options.append(_from_schema(schema, schema.get("$defs", {}), ""))
    return st.one_of(options)


# --- mutations ----------------------------------------------------------------------


#: Paths (``*`` = any list index) of amounts that must be positive numbers: a frame
#: whose value there is anything else cannot be booked.
POSITIVE_AMOUNTS = {
    ("price",),
    ("quantity",),
    ("order", "order_execution_records", "*", "execution_price"),
    ("order", "order_execution_records", "*", "filled_base_qty"),
    ("records", "*", "executed_qty"),
    ("records", "*", "executed_price"),
}

HOSTILE_VALUES: list[tuple[str, Any]] = [
    ("null", None),
    ("true", True),
    ("list", [1, 2]),
    ("object", {"a": 1}),
    ("word", "abc"),
    ("zero", "0"),
    ("negative", "-1"),
    ("nan-token", RAW("NaN")),
    ("infinity-token", RAW("Infinity")),
    ("minus-infinity-token", RAW("-Infinity")),
    ("nan-text", "NaN"),
    ("huge-exponent", RAW("1e999999999")),
    ("tiny-exponent", RAW("1e-999999999")),
    ("10k-digit-integer", RAW("9" * 10_000)),
    ("10k-digit-text", "9" * 10_000),
    ("deep-nesting", RAW("[" * 100_000 + "]" * 100_000)),
    ("megabyte-string", "x" * 1_000_000),
    ("nul", "a\u0000b"),
    ("lone-surrogate", "a\ud800b"),
    ("bidi-and-emoji", "\u202e\U0001f4a5"),
]


def leaf_paths(obj: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value in a JSON object (the containers themselves included)."""
    paths = [prefix] if prefix else []
    if isinstance(obj, dict):
        for key, value in obj.items():
            paths += leaf_paths(value, (*prefix, key))
    elif isinstance(obj, list):
        for index, value in enumerate(obj):
            paths += leaf_paths(value, (*prefix, index))
    return paths


def replace_at(obj: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(obj, dict):
        return {k: (replace_at(v, rest, value) if k == head else v) for k, v in obj.items()}
    return [replace_at(v, rest, value) if i == head else v for i, v in enumerate(obj)]


def must_reject(path: tuple[Any, ...]) -> bool:
    """Whether every value in ``HOSTILE_VALUES`` at ``path`` leaves a frame that cannot be
    booked: a required amount that is no longer a positive, finite, sanely sized number."""
    pattern = tuple("*" if isinstance(step, int) else step for step in path)
    return pattern in POSITIVE_AMOUNTS


def serialise(obj: Any) -> bytes:
    """JSON text with every ``RAW`` token spliced in as it is."""
    raws: list[str] = []

    def default(value: Any) -> Any:
        if isinstance(value, RAW):
            raws.append(value.text)
            return f"\u0000RAW{len(raws) - 1}\u0000"
        raise TypeError(type(value).__name__)

    text = json.dumps(obj, default=default, ensure_ascii=False)
    for index, token in enumerate(raws):
        text = text.replace(f'"\\u0000RAW{index}\\u0000"', token, 1)
    return text.encode("utf-8", "surrogatepass")
