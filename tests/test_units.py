"""Asset names, commission units and symbol splitting: the project's Decisions, one by one."""

from __future__ import annotations

from decimal import Decimal

import pytest

from adapters.deltadefi.units import (
    KNOWN_PAIRS,
    QUOTE_SUFFIXES,
    UnitError,
    fee_in_asset,
    normalise_asset,
    split_symbol,
)

USDM_UNIT = "c48cbb3d5e57ed56e276bc45f99ab39abe94e6cd7ac39fb402da47ad0014df105553444d"
POLICY = "c48cbb3d5e57ed56e276bc45f99ab39abe94e6cd7ac39fb402da47ad"


@pytest.mark.parametrize(
    ("name", "asset"),
    [("ada", "ADA"), ("usdm", "USDM"), ("Night", "NIGHT"), (" iag ", "IAG"), ("USDCX", "USDCX")],
)
def test_asset_names_are_upper_cased(name: str, asset: str) -> None:
    assert normalise_asset(name) == asset


@pytest.mark.parametrize("name", ["", "   ", "ada usdm", "usd.m", "x" * 33, "ädä"])
def test_asset_name_that_is_not_a_symbol_is_an_error(name: str) -> None:
    with pytest.raises(UnitError, match="invalid asset name"):
        normalise_asset(name)


@pytest.mark.parametrize(
    ("symbol", "split"),
    [
        ("ADAUSDM", ("ADAUSDM", "ADA", "USDM")),
        ("NIGHTUSDM", ("NIGHTUSDM", "NIGHT", "USDM")),
        ("IAGUSDM", ("IAGUSDM", "IAG", "USDM")),
        ("adausdm", ("ADAUSDM", "ADA", "USDM")),
        # Unknown pairs: the longest known quote suffix wins.
        ("SNEKUSDCX", ("SNEKUSDCX", "SNEK", "USDCX")),
        ("SNEKUSDC", ("SNEKUSDC", "SNEK", "USDC")),
        ("MINUSDT", ("MINUSDT", "MIN", "USDT")),
        ("SNEKADA", ("SNEKADA", "SNEK", "ADA")),
        ("USDMADA", ("USDMADA", "USDM", "ADA")),
        # Explicit separators.
        ("ADA/USDM", ("ADAUSDM", "ADA", "USDM")),
        ("ada-usdm", ("ADAUSDM", "ADA", "USDM")),
        ("NIGHT_USDCX", ("NIGHTUSDCX", "NIGHT", "USDCX")),
    ],
)
def test_symbol_splitting(symbol: str, split: tuple[str, str, str]) -> None:
    assert split_symbol(symbol) == split


def test_usdcx_wins_over_usdc_because_it_is_the_longer_suffix() -> None:
    # "XUSDCX" could be X/USDCX or XUSDC/X... only a known quote suffix counts, longest first.
    assert split_symbol("XUSDCX") == ("XUSDCX", "X", "USDCX")
    assert QUOTE_SUFFIXES.index("USDCX") < QUOTE_SUFFIXES.index("USDC")


def test_known_pairs_come_first() -> None:
    for symbol, (base, quote) in KNOWN_PAIRS.items():
        assert split_symbol(symbol) == (symbol, base, quote)


@pytest.mark.parametrize(
    "symbol",
    [
        "FOOBAR",
        "USDM",
        "ADA",
        "",
        "BTCEUR",
        "ADA/",
        "/USDM",
        "ADA/ADA",
        "ADA/US DM",
        "A.B-USDM",
        "ÄDAUSDM",
    ],
)
def test_unsplittable_symbol_is_an_error_never_a_guess(symbol: str) -> None:
    with pytest.raises(UnitError, match="cannot split symbol"):
        split_symbol(symbol)


@pytest.mark.parametrize(
    ("amount", "unit", "received", "expected"),
    [
        # lovelace is an amount in lovelace: / 1,000,000, booked in ADA.
        ("400000", "lovelace", "ADA", ("0.4", "ADA")),
        ("1", "lovelace", "ADA", ("0.000001", "ADA")),
        ("199999", "Lovelace", "ADA", ("0.199999", "ADA")),
        ("0", "lovelace", "ADA", ("0", "ADA")),
        # Exact even where a 28-digit context would round.
        (
            "123456789012345678901234567890",
            "lovelace",
            "ADA",
            ("123456789012345678901234.56789", "ADA"),
        ),
        # "" is ADA's unit in balances; a commission in it is already whole ADA.
        ("0.25", "", "ADA", ("0.25", "ADA")),
        # A policy-id unit (with or without a dot, with or without a name) is the asset received.
        ("0.064194", USDM_UNIT, "USDM", ("0.064194", "USDM")),
        ("0.064194", USDM_UNIT.upper(), "USDM", ("0.064194", "USDM")),
        ("1.5", POLICY + ".4e49474854", "NIGHT", ("1.5", "NIGHT")),
        ("1.5", POLICY, "IAG", ("1.5", "IAG")),
        # An asset name is that asset.
        ("0.06765", "USDM", "USDM", ("0.06765", "USDM")),
        ("0.25", "ada", "ADA", ("0.25", "ADA")),
        ("2", "night", "NIGHT", ("2", "NIGHT")),
        ("2", "SNEK", "SNEK", ("2", "SNEK")),
    ],
)
def test_commission_units(amount: str, unit: str, received: str, expected: tuple[str, str]) -> None:
    fee, asset = fee_in_asset(Decimal(amount), unit, received)
    assert (fee, asset) == (Decimal(expected[0]), expected[1])


@pytest.mark.parametrize(
    "unit",
    ["satoshi", "BTC", "wei", POLICY[:-1], POLICY + "zz", "usd m", "x" * 40],
)
def test_unknown_commission_unit_is_an_error(unit: str) -> None:
    with pytest.raises(UnitError, match="unknown commission unit"):
        fee_in_asset(Decimal("1"), unit, "ADA")
