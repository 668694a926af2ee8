"""Asset names, on-chain units and trading symbols, normalised one way.

Decisions (see the project notes): asset symbols are upper case; ``lovelace``
and ``""`` mean ADA and a lovelace amount is divided by 1,000,000; a symbol is
split with known market-config pairs, else by the longest known quote suffix,
and a symbol that cannot be split is an error, never a guess.
"""

from __future__ import annotations

import re
from decimal import Context, Decimal

LOVELACE_PER_ADA = Decimal(1_000_000)
#: Dividing by a power of ten is exact if the context is wide enough; 28 digits is not.
_EXACT = Context(prec=1000)

#: Quote assets DeltaDeFi lists, longest first so ``USDCX`` wins over ``USDC``.
QUOTE_SUFFIXES: tuple[str, ...] = ("USDCX", "USDM", "USDC", "USDT", "ADA")

#: Pairs known from ``/app/market-config``: symbol -> (base, quote).
KNOWN_PAIRS: dict[str, tuple[str, str]] = {
    "ADAUSDM": ("ADA", "USDM"),
    "NIGHTUSDM": ("NIGHT", "USDM"),
    "IAGUSDM": ("IAG", "USDM"),
}

_ASSET = re.compile(r"^[A-Z0-9]{1,32}$")
# A Cardano native-asset unit: a 56-hex-digit policy id, then an optional dot and hex asset name.
_POLICY_UNIT = re.compile(r"^[0-9a-f]{56}(\.?[0-9a-f]{0,64})$")


class UnitError(ValueError):
    """A symbol, asset or unit that cannot be read without guessing."""


def normalise_asset(name: str) -> str:
    asset = name.strip().upper()
    if not _ASSET.match(asset):
        raise UnitError(f"invalid asset name {name!r}")
    return asset


def split_symbol(symbol: str) -> tuple[str, str, str]:
    """``ADAUSDM`` -> ``("ADAUSDM", "ADA", "USDM")``; also accepts ``ADA/USDM`` and ``ADA-USDM``."""
    raw = symbol.strip().upper()
    for sep in ("/", "-", "_"):
        if sep in raw:
            base, _, quote = raw.partition(sep)
            if _ASSET.match(base) and _ASSET.match(quote) and base != quote:
                return base + quote, base, quote
            raise UnitError(f"cannot split symbol {symbol!r}")
    if raw in KNOWN_PAIRS:
        base, quote = KNOWN_PAIRS[raw]
        return raw, base, quote
    for quote in QUOTE_SUFFIXES:
        if raw.endswith(quote) and len(raw) > len(quote):
            base = raw[: -len(quote)]
            if _ASSET.match(base):
                return raw, base, quote
    raise UnitError(f"cannot split symbol {symbol!r}")


def fee_in_asset(amount: Decimal, unit: str, received_asset: str) -> tuple[Decimal, str]:
    """Read a commission given in ``unit`` as an amount of an asset.

    ``lovelace`` is converted to ADA; an asset name is taken as it is; a policy-id
    unit is the asset received, because DeltaDeFi charges fees in the asset the
    trade delivers (base on buys, quote on sells). Anything else is an error.
    """
    asset, in_lovelace = fee_asset(unit, received_asset)
    return (lovelace_to_ada(amount) if in_lovelace else amount), asset


def lovelace_to_ada(amount: Decimal) -> Decimal:
    """An amount of lovelace in ADA, exactly."""
    # The context's own method: entering a context costs more than the division.
    return _EXACT.divide(amount, LOVELACE_PER_ADA)


def fee_asset(unit: str, received_asset: str) -> tuple[str, bool]:
    """The asset a commission given in ``unit`` is paid in, and whether its amount is
    in lovelace (to be divided by 1,000,000): ``fee_in_asset`` without the amount."""
    text = unit.strip()
    if text.lower() == "lovelace":
        return "ADA", True
    if text == "":
        return "ADA", False
    if _POLICY_UNIT.match(text.lower()):
        return received_asset, False
    upper = text.upper()
    if _ASSET.match(upper) and (upper in QUOTE_SUFFIXES or upper == received_asset):
        return upper, False
    if _ASSET.match(upper) and upper in {b for b, _ in KNOWN_PAIRS.values()}:
        return upper, False
    raise UnitError(f"unknown commission unit {unit!r}")
