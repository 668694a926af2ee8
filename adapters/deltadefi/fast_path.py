"""The hot path for ``order_info`` frames: the same answer as ``frames.parse``, several times faster.

Almost every frame a market maker receives is an ``order_info`` update whose
execution records are cumulative: the same records arrive again and again. The
general reader decodes JSON with the standard library and then runs pydantic
over Python objects, calling a Python validator for every number, id and time
of every record of every frame. Here pydantic-core validates the frame's shape
straight from the JSON bytes (in Rust, skipping the fields booking ignores), and
each distinct execution record is turned into a ``Fill`` once, then remembered. Ids
and the order's side go through the very field validators the ``frames`` models
use; amounts and times are read by lean readers that accept only the plain forms
the exchange writes (``"0.4347"``, ``"2026-03-20T09:00:00.921Z"``), for which the
models' validators give the same value, and doubt everything else.

The contract: ``read_order_info(raw)`` returns either ``None`` ("ask the general
reader") or exactly the ``ParsedFrame`` that the general reader would return.
It never rejects anything itself: any doubt (a JSON number where text is
expected, NaN, non-ASCII bytes, an invalid field, a duplicated fill id) means
``None``, and the general reader gives the verdict and its reason. Money stays
exact because every amount reaches ``Decimal`` from its JSON *string*; a JSON
float in a money field is not text, so it takes the general path, which reads
it with ``parse_float=Decimal``.

The fields mirrored below are checked against the ``frames`` models at import
time; if the models change shape the fast path turns itself off (``ENABLED``)
rather than answer differently.

``recall``/``remember`` keep the answers for the most recent distinct frames: the
append path parses a batch, and the projector, catching up right after it in the
same process, reads the very same bytes back from the log. Every memory here is
bounded, and each is a memory of a pure function of its key under the code
running now (``forget`` empties them, for a caller that changes parsing tables
at run time).
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from datetime import date
from decimal import Decimal
from typing import Any, Literal, NotRequired, TypeVar

from pydantic import PlainValidator, TypeAdapter, ValidationError
from typing_extensions import TypedDict

from adapters.deltadefi import frames
from adapters.deltadefi.units import fee_asset, lovelace_to_ada, split_symbol
from ledger.domain import Fill, ParsedFrame, Side


class _RecordJSON(TypedDict):
    id: str
    order_id: NotRequired[str]
    execution_price: str
    filled_base_qty: str
    filled_quote_qty: str
    commission_unit: str
    commission: str
    role: NotRequired[str]
    created_at: str


class _OrderJSON(TypedDict):
    id: str
    symbol: str
    side: str
    status: NotRequired[str]
    order_execution_records: NotRequired[list[_RecordJSON] | None]


class _FrameJSON(TypedDict):
    type: Literal["Account"]
    sub_type: Literal["order_info"]
    order: _OrderJSON


_FRAME = TypeAdapter(_FrameJSON)


def _validator(model: Any, name: str) -> Any:
    """The ``PlainValidator`` function of a ``frames`` model field (None for a plain field)."""
    for meta in model.model_fields[name].metadata:
        if isinstance(meta, PlainValidator):
            return meta.func
    return None


def _plain_text(model: Any, name: str, default: str | None) -> bool:
    """A field of plain ``str`` type, required (``default`` None) or with this default."""
    field = model.model_fields[name]
    if field.annotation is not str or field.metadata:
        return False
    return bool(field.is_required() if default is None else field.default == default)


def _mirrors_models() -> bool:
    """True while the ``frames`` models have exactly the shape this module mirrors."""
    rec, order, frame = frames.ExecutionRecord, frames.Order, frames.OrderInfoFrame
    return bool(
        set(frame.model_fields) == {"type", "sub_type", "order"}
        and set(order.model_fields) == set(_OrderJSON.__annotations__)
        and set(rec.model_fields) == set(_RecordJSON.__annotations__)
        and frame.model_config.get("extra") == "ignore"
        and order.model_config.get("extra") == "ignore"
        and rec.model_config.get("extra") == "ignore"
        and _plain_text(rec, "order_id", "")
        and _plain_text(rec, "role", "")
        and _plain_text(rec, "commission_unit", None)
        and _plain_text(order, "symbol", None)
        and _plain_text(order, "status", "")
        and _validator(rec, "id") is not None
        # The fields read here by lean readers of their plain forms: exactly the rules
        # those readers mirror (see ``_amount``, ``_positive_amount``, ``_time``).
        and _validator(rec, "execution_price") is frames._positive
        and _validator(rec, "filled_base_qty") is frames._positive
        and _validator(rec, "filled_quote_qty") is frames._non_negative
        and _validator(rec, "commission") is frames._non_negative
        and _validator(rec, "created_at") is frames.normalise_timestamp
        and _validator(order, "id") is not None
        and _validator(order, "side") is not None
    )


ENABLED = _mirrors_models()

_fill_id = _validator(frames.ExecutionRecord, "id")
_order_id = _validator(frames.Order, "id")
_side = _validator(frames.Order, "side")

T = TypeVar("T")

#: Bounded memories of pure functions of their keys: cleared whole when full.
_MEMO_LIMIT = 20_000
_orders: dict[tuple[str, str, str], tuple[str, str, str, str, Side]] = {}
_fills: dict[tuple[Any, ...], Fill] = {}


_RECENT_LIMIT = 4096
_RECENT_MAX_BYTES = 64 * 1024
#: The remembered frames' bytes, all together: without it 4,096 frames of up to 64 kB
#: could keep 256 MB alive; typical frames (about 1.2 kB) stay far below it.
_RECENT_BUDGET_BYTES = 16 * 1024 * 1024
_recent: OrderedDict[bytes, ParsedFrame] = OrderedDict()
_recent_bytes = 0
_recent_lock = threading.Lock()


def recall(raw: bytes) -> ParsedFrame | None:
    """The answer given for these exact bytes recently, if it is still remembered."""
    return _recent.get(raw)


def remember(raw: bytes, parsed: ParsedFrame) -> None:
    """Keep ``parsed`` as the answer for ``raw``; the oldest answers go when the memory
    holds ``_RECENT_LIMIT`` frames or ``_RECENT_BUDGET_BYTES`` of them."""
    global _recent_bytes
    if len(raw) > _RECENT_MAX_BYTES:
        return
    with _recent_lock:  # the byte count must match the entries (``recall`` needs no lock)
        if raw in _recent:
            return
        while _recent and (
            len(_recent) >= _RECENT_LIMIT or _recent_bytes + len(raw) > _RECENT_BUDGET_BYTES
        ):
            old, _ = _recent.popitem(last=False)
            _recent_bytes -= len(old)
        _recent[raw] = parsed
        _recent_bytes += len(raw)


def forget() -> None:
    """Empty every memory of this module."""
    global _recent_bytes
    with _recent_lock:
        _recent.clear()
        _recent_bytes = 0
    _orders.clear()
    _fills.clear()
    _fee_assets.clear()
    _amounts.clear()
    _days.clear()


def _keep(memo: dict[Any, T], key: Any, value: T) -> T:
    """Remember ``value`` under ``key`` in a bounded memory (emptied whole when full)."""
    if len(memo) >= _MEMO_LIMIT:
        memo.clear()
    memo[key] = value
    return value


def _order_context(order_id: str, symbol: str, side: str) -> tuple[str, str, str, str, Side]:
    key = (order_id, symbol, side)
    context = _orders.get(key)
    if context is None:
        # The order's own fields first, as the model validates them; then the symbol.
        checked_id, checked_side = _order_id(order_id), _side(side)
        context = _keep(_orders, key, (checked_id, *split_symbol(symbol), checked_side))
    return context


class _Doubt(Exception):
    """Internal: a field not in the plain form read here; the general reader decides."""


#: An amount as the exchange writes it: ASCII digits with at most one point, no sign,
#: exponent or space, and short enough for every range and digit check of
#: ``frames._decimal`` to pass. For such a text the general reader's ``Decimal`` is
#: ``Decimal(text)``; any other form (zero included, where it must be positive) is
#: left to it.
_PLAIN_AMOUNT = re.compile(r"[0-9]{1,30}(?:\.[0-9]{1,30})?")
#: An RFC 3339 UTC time as the exchange writes it: milli- or microseconds, a ``Z``,
#: years 1000 to 9999 and hours 00 to 23. Once the calendar accepts it,
#: ``frames.normalise_timestamp`` only pads the fraction to six digits.
_PLAIN_TIME = re.compile(
    r"[1-9][0-9]{3}-[0-9]{2}-[0-9]{2}T(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]"
    r"\.(?:[0-9]{3}|[0-9]{6})Z"
)
_fee_assets: dict[tuple[str, str], tuple[str, bool]] = {}
#: Amount texts already read (prices and quantities repeat from fill to fill).
_amounts: dict[str, Decimal] = {}
#: Calendar dates already checked (``YYYY-MM-DD``).
_days: dict[str, bool] = {}


def _amount(text: str) -> Decimal:
    number = _amounts.get(text)
    if number is None:
        if _PLAIN_AMOUNT.fullmatch(text) is None:
            raise _Doubt
        number = _keep(_amounts, text, Decimal(text))
    return number


def _positive_amount(text: str) -> Decimal:
    number = _amount(text)
    if not number:
        raise _Doubt
    return number


def _time(text: str) -> str:
    if _PLAIN_TIME.fullmatch(text) is None:
        raise _Doubt
    # The pattern bounds the hour, minute and second; only the date is left to check.
    day = text[:10]
    if day not in _days:
        date.fromisoformat(day)  # the calendar's check (no 30 February): ValueError
        _keep(_days, day, True)
    return text if len(text) == 27 else text[:-1] + "000Z"


def _fee(commission: str, unit: str, received: str) -> tuple[Decimal, str]:
    amount = _amount(commission)
    key = (unit, received)
    rule = _fee_assets.get(key)
    if rule is None:
        rule = _keep(_fee_assets, key, fee_asset(unit, received))
    asset, in_lovelace = rule
    return (lovelace_to_ada(amount) if in_lovelace else amount), asset


def _fill(context: tuple[str, str, str, str, Side], rec: _RecordJSON) -> Fill:
    order_id, symbol, base, quote, side = context
    fee, fee_asset_ = _fee(
        rec["commission"], rec["commission_unit"], base if side is Side.BUY else quote
    )
    fill = Fill(
        fill_id=_fill_id(rec["id"]),
        order_id=rec.get("order_id", "") or order_id,
        symbol=symbol,
        base_asset=base,
        quote_asset=quote,
        side=side,
        price=_positive_amount(rec["execution_price"]),
        quantity=_positive_amount(rec["filled_base_qty"]),
        quote_amount=_amount(rec["filled_quote_qty"]),
        fee=fee,
        fee_asset=fee_asset_,
        role=rec.get("role", ""),
        executed_at=_time(rec["created_at"]),
    )
    # The reader's own last check (text no store can keep), once per distinct record.
    if frames.unsafe_text_field(fill) is not None:
        raise _Doubt
    return fill


def _holds(raw: bytes, word: bytes) -> bool:
    """``word in raw``, for a word whose first letter is rare in frames: each place of
    that letter is found by a memchr and the word compared there. Twice as fast as
    ``in`` on the exchange's frames (at most one ``N`` or ``I`` each, in a symbol)."""
    first = word[:1]
    at = raw.find(first)
    while at >= 0:
        if raw.startswith(word, at):
            return True
        at = raw.find(first, at + 1)
    return False


def read_order_info(raw: bytes) -> ParsedFrame | None:
    """The ``ParsedFrame`` ``frames.parse`` would return for ``raw``, or None to ask it."""
    if (
        not ENABLED
        or b'"order_info"' not in raw
        # The standard library refuses NaN and Infinity (pydantic-core would skip them in an
        # ignored field) and is the judge of non-ASCII text: leave both to it. (A search
        # for one byte is a memchr, several times faster than one for a word: see
        # ``_holds``.)
        or not raw.isascii()
        or _holds(raw, b"NaN")
        or _holds(raw, b"Infinity")
    ):
        return None
    try:
        frame = _FRAME.validate_json(raw)
    except ValidationError:
        return None
    order = frame["order"]
    try:
        context = _order_context(order["id"], order["symbol"], order["side"])
        fills = []
        for rec in order.get("order_execution_records") or ():
            key = (
                context,
                rec["id"],
                rec.get("order_id", ""),
                rec["execution_price"],
                rec["filled_base_qty"],
                rec["filled_quote_qty"],
                rec["commission_unit"],
                rec["commission"],
                rec.get("role", ""),
                rec["created_at"],
            )
            fill = _fills.get(key)
            if fill is None:
                fill = _keep(_fills, key, _fill(context, rec))
            fills.append(fill)
    except Exception:  # a validator's or the symbol's refusal: the general reader says why
        return None
    if len({fill.fill_id for fill in fills}) != len(fills):
        return None
    return ParsedFrame(kind="order_info", fills=tuple(fills))
