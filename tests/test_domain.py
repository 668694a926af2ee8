"""The domain's values: immutable, and made the way their dataclass declares."""

from __future__ import annotations

import dataclasses
import inspect
import pickle
from decimal import Decimal

import pytest

from ledger.domain import BalanceLine, Fill, ParsedFrame, Side

FILL = Fill(
    fill_id="exe-1",
    order_id="ord-1",
    symbol="ADAUSDM",
    base_asset="ADA",
    quote_asset="USDM",
    side=Side.BUY,
    price=Decimal("0.4347"),
    quantity=Decimal("10"),
    quote_amount=Decimal("4.347"),
    fee=Decimal("0.01"),
    fee_asset="ADA",
    role="maker",
    executed_at="2026-03-20T09:00:00.921000Z",
)


@pytest.mark.parametrize("cls", [Fill, BalanceLine, ParsedFrame])
def test_the_constructor_takes_the_dataclass_fields_in_order(cls: type) -> None:
    parameters = list(inspect.signature(cls).parameters.values())
    fields = dataclasses.fields(cls)
    assert [p.name for p in parameters] == [f.name for f in fields]
    for p, f in zip(parameters, fields, strict=True):
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        assert (p.default is inspect.Parameter.empty) == required, f.name


def test_values_stay_frozen_and_compare_by_value() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        FILL.price = Decimal(1)  # type: ignore[misc]
    again = Fill(*(getattr(FILL, f.name) for f in dataclasses.fields(Fill)))
    assert again == FILL and hash(again) == hash(FILL)
    assert pickle.loads(pickle.dumps(FILL)) == FILL
    assert dataclasses.replace(FILL, role="taker").role == "taker"


def test_defaults_and_default_factories() -> None:
    one, two = ParsedFrame("order_info"), ParsedFrame(kind="order_info")
    assert (one.fills, one.snapshot, one.rejection, one.extra) == ((), None, None, {})
    assert one == two and one.extra is not two.extra  # each frame its own dict
    given = {"note": "x"}
    assert ParsedFrame("unknown", extra=given).extra is given
    assert ParsedFrame("order_info", (FILL,)).fills == (FILL,)
