"""Every DeltaDeFi frame format, validated with pydantic, read into domain values.

``parse(raw)`` is the one entry point: raw bytes in, a ``ParsedFrame`` out. It
never raises for bad input; a frame that cannot be booked whole comes back with a
one-line ``rejection`` and no fills, so nothing is ever half-applied.

Formats (see the project notes):
- ``{"type":"Account","sub_type":"order_info","order":{...}}``: fills are the
  order's cumulative ``order_execution_records``; symbol and side come from the order.
- ``{"type":"Account","sub_type":"balance","balance":[...]}``: a full snapshot.
- ``{"type":"Account","sub_type":"dlta_points",...}``: kept, not booked.
- older ``trading_history`` records, bot-side ``fill`` and ``balance_update``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Context, Decimal, InvalidOperation, localcontext
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    ValidationError,
    field_validator,
)

from adapters.deltadefi.units import UnitError, fee_in_asset, normalise_asset, split_symbol
from ledger.domain import BalanceLine, Fill, ParsedFrame, Side, has_unsafe_text

# --- field types -----------------------------------------------------------------

#: Products of accepted numbers (price x quantity) never round in this context; the
#: default one (28 digits) would.
_EXACT = Context(prec=1000)
#: No exchange figure comes near this; a number with more digits is rejected.
MAX_DIGITS = 60

_NUMBER_TEXT = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")


def _decimal(value: Any) -> Decimal:
    if type(value) is str:  # the wire's usual form, first and cheapest
        return _decimal_text(value)
    if isinstance(value, bool):
        raise ValueError("a boolean is not a number")
    if isinstance(value, Decimal):
        number = value
    elif isinstance(value, int):
        number = Decimal(value)
    elif isinstance(value, str):
        return _decimal_text(value)
    else:
        raise ValueError(f"not a number: {type(value).__name__}")
    if not number.is_finite():
        raise ValueError("not a finite number")
    if abs(number.adjusted()) > 60:
        raise ValueError("number out of range")
    # Bounded digits keep every sum and product in the folds exact (see _EXACT).
    if len("".join(map(str, number.as_tuple().digits)).strip("0")) > MAX_DIGITS:
        raise ValueError(f"more than {MAX_DIGITS} significant digits")
    return number


def _decimal_text(value: str) -> Decimal:
    """``_decimal`` of a ``str``: the same checks in the same order, minus work that cannot
    fail (a text of at most MAX_DIGITS characters cannot hold more significant digits)."""
    text = value.strip()
    if not _NUMBER_TEXT.match(text):
        raise ValueError(f"not a number: {value[:40]!r}")
    try:
        number = Decimal(text)
    except InvalidOperation as exc:
        raise ValueError(f"not a number: {value[:40]!r}") from exc
    if not number.is_finite():
        raise ValueError("not a finite number")
    if abs(number.adjusted()) > 60:
        raise ValueError("number out of range")
    if (
        len(text) > MAX_DIGITS
        and len("".join(map(str, number.as_tuple().digits)).strip("0")) > MAX_DIGITS
    ):
        raise ValueError(f"more than {MAX_DIGITS} significant digits")
    return number


def _positive(value: Any) -> Decimal:
    number = _decimal(value)
    if number <= 0:
        raise ValueError("must be > 0")
    return number


def _non_negative(value: Any) -> Decimal:
    number = _decimal(value)
    if number < 0:
        raise ValueError("must be >= 0")
    return number


def _non_empty_id(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ValueError("must be a string id")
    text = str(value).strip()
    if not text:
        raise ValueError("must not be empty")
    if len(text) > 200:
        raise ValueError("id too long")
    return text


def _side(value: Any) -> Side:
    if isinstance(value, str) and value.strip().lower() in ("buy", "sell"):
        return Side(value.strip().lower())
    raise ValueError("side must be buy or sell")


def normalise_timestamp(value: Any) -> str:
    """RFC 3339 text or epoch seconds/milliseconds -> ``YYYY-MM-DDTHH:MM:SS.ffffffZ``."""
    if isinstance(value, bool):
        raise ValueError("not a timestamp")
    if isinstance(value, (int, Decimal)) or (isinstance(value, str) and value.strip().isdigit()):
        number = Decimal(str(value).strip())
        seconds = number / 1000 if number > 10**11 else number
        try:
            moment = datetime.fromtimestamp(float(seconds), tz=UTC)
        except (OverflowError, OSError, ValueError) as exc:
            raise ValueError("timestamp out of range") from exc
    elif isinstance(value, str):
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            moment = datetime.fromisoformat(text)
        except ValueError as exc:
            raise ValueError(f"not an RFC 3339 time: {value[:40]!r}") from exc
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
    else:
        raise ValueError("not a timestamp")
    utc = moment.astimezone(UTC)
    if utc.year >= 1000:
        # The same text as the strftime below, without its cost ("+00:00" becomes "Z").
        return utc.isoformat(timespec="microseconds")[:-6] + "Z"
    return utc.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


Number = Annotated[Decimal, PlainValidator(_decimal)]
Positive = Annotated[Decimal, PlainValidator(_positive)]
NonNegative = Annotated[Decimal, PlainValidator(_non_negative)]
Id = Annotated[str, PlainValidator(_non_empty_id)]
SideField = Annotated[Side, PlainValidator(_side)]
Timestamp = Annotated[str, PlainValidator(normalise_timestamp)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


# --- current account stream ------------------------------------------------------


class ExecutionRecord(_Model):
    id: Id
    order_id: str = ""
    execution_price: Positive
    filled_base_qty: Positive
    filled_quote_qty: NonNegative
    commission_unit: str
    commission: NonNegative
    role: str = ""
    created_at: Timestamp


class Order(_Model):
    id: Id
    symbol: str
    side: SideField
    status: str = ""
    order_execution_records: list[ExecutionRecord] = Field(default_factory=list)

    @field_validator("order_execution_records", mode="before")
    @classmethod
    def _none_is_empty(cls, value: Any) -> Any:
        return [] if value is None else value


class OrderInfoFrame(_Model):
    type: Literal["Account"]
    sub_type: Literal["order_info"]
    order: Order


class BalanceEntry(_Model):
    asset: str
    asset_unit: str = ""
    free: NonNegative
    locked: NonNegative


class BalanceFrame(_Model):
    type: Literal["Account"]
    sub_type: Literal["balance"]
    balance: list[BalanceEntry]


class DltaPointsFrame(_Model):
    type: Literal["Account"]
    sub_type: Literal["dlta_points"]
    dlta_points: dict[str, Any]


# --- older and bot-side formats ---------------------------------------------------


class TradingHistoryRecord(_Model):
    execution_id: Id
    order_id: str = ""
    status: str = ""
    symbol: str
    executed_qty: Positive
    side: SideField
    type: str = ""
    fee_charged: NonNegative
    fee_unit: str
    executed_price: Positive
    created_time: Timestamp


class TradingHistoryFrame(_Model):
    type: str
    records: list[TradingHistoryRecord]


class BotFill(_Model):
    type: Literal["fill"]
    fillId: Id
    orderId: str = ""
    symbol: str
    side: SideField
    price: Positive
    quantity: Positive
    timestamp: Timestamp
    commission: NonNegative = Decimal(0)
    commissionAsset: str = ""
    isMaker: bool | None = None
    tradeId: str | int | None = None


class BotBalance(_Model):
    available: NonNegative
    locked: NonNegative = Decimal(0)


class BalanceUpdateFrame(_Model):
    type: Literal["balance_update"]
    balances: dict[str, BotBalance]


# --- reading a frame ----------------------------------------------------------------


class _Reject(Exception):
    """Internal: a reason to reject the whole frame."""


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def decode_json(raw: bytes) -> Any:
    """Strict JSON with exact decimals: floats become ``Decimal``, NaN/Infinity are errors."""
    text = raw.decode("utf-8")
    return json.loads(text, parse_float=Decimal, parse_constant=_reject_constant)


def _times(a: Decimal, b: Decimal) -> Decimal:
    with localcontext(_EXACT):
        return a * b


def _received_asset(side: Side, base: str, quote: str) -> str:
    return base if side is Side.BUY else quote


def _fills_from_order(frame: OrderInfoFrame) -> tuple[Fill, ...]:
    order = frame.order
    symbol, base, quote = split_symbol(order.symbol)
    fills = []
    for rec in order.order_execution_records:
        fee, fee_asset = fee_in_asset(
            rec.commission, rec.commission_unit, _received_asset(order.side, base, quote)
        )
        fills.append(
            Fill(
                fill_id=rec.id,
                order_id=rec.order_id or order.id,
                symbol=symbol,
                base_asset=base,
                quote_asset=quote,
                side=order.side,
                price=rec.execution_price,
                quantity=rec.filled_base_qty,
                quote_amount=rec.filled_quote_qty,
                fee=fee,
                fee_asset=fee_asset,
                role=rec.role,
                executed_at=rec.created_at,
            )
        )
    return tuple(fills)


def _fill_from_history(rec: TradingHistoryRecord) -> Fill:
    symbol, base, quote = split_symbol(rec.symbol)
    fee, fee_asset = fee_in_asset(
        rec.fee_charged, rec.fee_unit, _received_asset(rec.side, base, quote)
    )
    return Fill(
        fill_id=rec.execution_id,
        order_id=rec.order_id,
        symbol=symbol,
        base_asset=base,
        quote_asset=quote,
        side=rec.side,
        price=rec.executed_price,
        quantity=rec.executed_qty,
        quote_amount=_times(rec.executed_price, rec.executed_qty),
        fee=fee,
        fee_asset=fee_asset,
        role="",
        executed_at=rec.created_time,
    )


def _fill_from_bot(msg: BotFill) -> Fill:
    symbol, base, quote = split_symbol(msg.symbol)
    received = _received_asset(msg.side, base, quote)
    if not msg.commissionAsset:
        # Bots that leave the asset out mean the exchange's rule: the asset received.
        fee, fee_asset = msg.commission, received
    else:
        fee, fee_asset = fee_in_asset(msg.commission, msg.commissionAsset, received)
    role = "" if msg.isMaker is None else ("maker" if msg.isMaker else "taker")
    return Fill(
        fill_id=msg.fillId,
        order_id=msg.orderId,
        symbol=symbol,
        base_asset=base,
        quote_asset=quote,
        side=msg.side,
        price=msg.price,
        quantity=msg.quantity,
        quote_amount=_times(msg.price, msg.quantity),
        fee=fee,
        fee_asset=fee_asset,
        role=role,
        executed_at=msg.timestamp,
    )


def _snapshot(entries: list[tuple[str, Decimal, Decimal]]) -> tuple[BalanceLine, ...]:
    lines: dict[str, BalanceLine] = {}
    for name, free, locked in entries:
        asset = normalise_asset(name if name.strip() else "ADA")
        if asset in lines:
            raise _Reject(f"balance lists {asset} twice")
        lines[asset] = BalanceLine(asset=asset, free=free, locked=locked)
    return tuple(sorted(lines.values(), key=lambda line: line.asset))


def _history_records(obj: dict[str, Any]) -> list[Any]:
    for key in ("trading_history", "data", "records"):
        value = obj.get(key)
        if isinstance(value, list):
            return value
        if isinstance(value, dict) and isinstance(value.get("data"), list):
            return list(value["data"])
    if "execution_id" in obj:
        return [obj]
    raise _Reject("trading_history: no records")


def _read_account(obj: dict[str, Any]) -> ParsedFrame:
    sub_type = obj.get("sub_type")
    if sub_type == "order_info":
        order_frame = OrderInfoFrame.model_validate(obj)
        return ParsedFrame(kind="order_info", fills=_fills_from_order(order_frame))
    if sub_type == "balance":
        balance_frame = BalanceFrame.model_validate(obj)
        snapshot = _snapshot([(b.asset, b.free, b.locked) for b in balance_frame.balance])
        return ParsedFrame(kind="balance", snapshot=snapshot)
    if sub_type == "dlta_points":
        DltaPointsFrame.model_validate(obj)
        return ParsedFrame(kind="dlta_points")
    if sub_type == "trading_history":
        return _read_history(obj)
    return ParsedFrame(kind="unknown")


def _read_history(obj: dict[str, Any]) -> ParsedFrame:
    history = TradingHistoryFrame.model_validate(
        {"type": obj.get("type", ""), "records": _history_records(obj)}
    )
    return ParsedFrame(
        kind="trading_history", fills=tuple(_fill_from_history(r) for r in history.records)
    )


def _read_balance_update(obj: dict[str, Any]) -> ParsedFrame:
    update = BalanceUpdateFrame.model_validate(obj)
    snapshot = _snapshot([(k, v.available, v.locked) for k, v in update.balances.items()])
    return ParsedFrame(kind="balance_update", snapshot=snapshot)


_BY_TYPE: dict[str, Callable[[dict[str, Any]], ParsedFrame]] = {
    "Account": _read_account,
    "trading_history": _read_history,
    "fill": lambda obj: ParsedFrame(
        kind="fill", fills=(_fill_from_bot(BotFill.model_validate(obj)),)
    ),
    "balance_update": _read_balance_update,
}


def _describe(exc: ValidationError) -> str:
    err = exc.errors(include_url=False, include_input=False)[0]
    where = ".".join(str(p) for p in err["loc"]) or "frame"
    message = str(err["msg"]).removeprefix("Value error, ")
    return f"{where}: {message}"


def read_object(obj: Any) -> ParsedFrame:
    """Interpret an already-decoded JSON value."""
    if not isinstance(obj, dict):
        return ParsedFrame.reject(f"not a JSON object (a JSON {type(obj).__name__})")
    frame_type = obj.get("type")
    if not isinstance(frame_type, str) or not frame_type:
        return ParsedFrame.reject("no frame type")
    reader = _BY_TYPE.get(frame_type)
    if reader is None:
        return ParsedFrame(kind="unknown")
    try:
        parsed = reader(obj)
    except ValidationError as exc:
        return ParsedFrame.reject(f"{obj.get('sub_type') or frame_type}: {_describe(exc)}")
    except (UnitError, _Reject) as exc:
        return ParsedFrame.reject(f"{obj.get('sub_type') or frame_type}: {exc}")
    seen: set[str] = set()
    for fill in parsed.fills:
        if fill.fill_id in seen:
            return ParsedFrame.reject(f"{parsed.kind}: fill {fill.fill_id} appears twice")
        seen.add(fill.fill_id)
    return parsed


def parse(raw: bytes) -> ParsedFrame:
    """Read one raw frame. Never raises for bad input: it rejects it, with a reason.

    The answers for the most recent frames are remembered: the projector, catching up
    right after an append in the same process, reads the very same bytes back."""
    parsed = fast_path.recall(raw)
    if parsed is None:
        parsed = read(raw)
        fast_path.remember(raw, parsed)
    return parsed


def read(raw: bytes) -> ParsedFrame:
    """``parse`` without the memory of recent frames, for a caller that keeps its own."""
    # The fast path's answers are already checked (see adapters.deltadefi.fast_path).
    parsed = fast_path.read_order_info(raw)
    if parsed is None:
        parsed = _refuse_unsafe_text(_read(raw))
    return parsed


def _refuse_unsafe_text(parsed: ParsedFrame) -> ParsedFrame:
    """Reject a frame whose fill carries text no store can keep (a NUL, a control
    character, a lone surrogate) in a field that is stored as text: accepted, it would
    crash the projection of every later page (PostgreSQL refuses NUL in TEXT) or the
    append itself (a surrogate cannot be encoded)."""
    for fill in parsed.fills:
        name = unsafe_text_field(fill)
        if name is not None:
            return ParsedFrame.reject(
                f"{parsed.kind}: {name} holds a control character or invalid unicode"
            )
    return parsed


def unsafe_text_field(fill: Fill) -> str | None:
    """The first of the fill's text fields copied from the frame as it came that holds
    text no store can keep, or None."""
    for name in ("fill_id", "order_id", "role"):
        if has_unsafe_text(getattr(fill, name)):
            return name
    return None


def _read(raw: bytes) -> ParsedFrame:
    try:
        obj = decode_json(raw)
    except UnicodeDecodeError:
        return ParsedFrame.reject("not valid UTF-8")
    except RecursionError:
        return ParsedFrame.reject("invalid JSON: nested too deeply")
    except ValueError as exc:
        return ParsedFrame.reject(f"invalid JSON: {exc}")
    try:
        return read_object(obj)
    except RecursionError:
        return ParsedFrame.reject("frame nested too deeply")


# The hot path for order_info frames is built on the models and validators above.
from adapters.deltadefi import fast_path  # noqa: E402
