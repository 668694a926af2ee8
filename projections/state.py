"""The whole projected state, its canonical dump and its state hash.

Positions and balances are small and held whole; booked fills and rejected
frames can be millions, so they are summarised here by a count and an
order-independent digest (the sum, modulo 2**256, of each row's hash). The state
hash is the sha256 of the canonical JSON dump, so any two stores that projected
the same log agree on it, whichever pages they projected it in.

Log positions are left out of the digests: they are the store's numbering, not
the ledger's content, and PostgreSQL's sequence skips the numbers of a
transaction that was rolled back or killed, so the same events in the same
order can sit at different positions. (The stored fill rows keep their
positions, and ``verify`` compares those rows whole.)
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from ledger.domain import Fill
from projections.balances import BalanceSheet
from projections.positions import PositionBook

_MOD = 2**256


def row_hash(fields: tuple[str, ...]) -> int:
    return int.from_bytes(hashlib.sha256("\x1f".join(fields).encode()).digest(), "big")


def hashed_fill(row: tuple[str, ...]) -> tuple[str, ...]:
    """What the state hash covers of a ``fill_row``: all of it but the log position."""
    return row[:-1]


def hashed_reject(source: str, reason: str) -> tuple[str, ...]:
    """What the state hash covers of a rejected frame (not its log position)."""
    return (source, reason)


def fill_row(fill: Fill, log_position: int) -> tuple[str, ...]:
    """A booked fill as the text columns it is stored and hashed by."""
    return (
        fill.fill_id,
        fill.order_id,
        fill.symbol,
        fill.base_asset,
        fill.quote_asset,
        fill.side.value,
        str(fill.price),
        str(fill.quantity),
        str(fill.quote_amount),
        str(fill.fee),
        fill.fee_asset,
        fill.role,
        fill.executed_at,
        str(log_position),
    )


@dataclass
class Tally:
    """A count and an order-independent digest of a growing set of rows."""

    count: int = 0
    digest: int = 0

    def add(self, fields: tuple[str, ...]) -> None:
        self.count += 1
        self.digest = (self.digest + row_hash(fields)) % _MOD

    def to_record(self) -> dict[str, Any]:
        return {"count": self.count, "digest": f"{self.digest:064x}"}

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> Tally:
        return cls(int(rec["count"]), int(rec["digest"], 16))


@dataclass
class LedgerState:
    book: PositionBook = field(default_factory=PositionBook)
    balances: BalanceSheet = field(default_factory=BalanceSheet)
    fills: Tally = field(default_factory=Tally)
    rejects: Tally = field(default_factory=Tally)
    frames: int = 0

    def canonical(self) -> dict[str, Any]:
        return {
            "positions": {s: p.to_record() for s, p in sorted(self.book.positions.items())},
            "balances": {a: b.to_record() for a, b in sorted(self.balances.assets.items())},
            "fills": self.fills.to_record(),
            "rejects": self.rejects.to_record(),
            "frames": self.frames,
        }

    def state_hash(self) -> str:
        return state_hash(self.canonical())


def state_hash(canonical: dict[str, Any]) -> str:
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def differences(ours: dict[str, Any], theirs: dict[str, Any]) -> list[str]:
    """Names of what differs between two canonical dumps, e.g. ``positions.ADAUSDM``."""
    found = []
    for section in sorted(set(ours) | set(theirs)):
        a, b = ours.get(section), theirs.get(section)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict) and section in ("positions", "balances"):
            for key in sorted(set(a) | set(b)):
                if a.get(key) != b.get(key):
                    found.append(f"{section}.{key}")
        else:
            found.append(section)
    return found
