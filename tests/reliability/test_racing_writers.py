"""Racing writers: 2 and 4 processes ingest overlapping streams into one database at once.

The same 10,000 fills reach every writer, each in a different wire format and order:
bot-side ``fill`` frames in execution order, ``order_info`` frames with cumulative
execution records, ``trading_history`` pages newest first, bot-side frames shuffled.
The second writer's stream also carries ``TAMPERED`` of those fill ids with a different
price: one id, two contents.

Pass: exactly 10,000 claims and 10,000 booked fills; every process exits 0 with no
'database is locked' or serialization error; every tampered id is reported as a conflict
by some writer (``ingest --json``'s ``conflicts``) and booked once, with the content its
claim recorded; ``ledger verify`` passes. Small batches make the writers interleave.
"""

from __future__ import annotations

import json
import random
import subprocess
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from ledger.bootstrap import open_ledger
from ledger.domain import Fill, Side
from projections.views import fill_from_row
from reliability._support import Probe, child_env, ledger_cmd, verify_ok

SEED = 424242
SHARED_FILLS = 10_000
TAMPERED = 25
BATCH = "100"
SYMBOLS = (("ADAUSDM", "ADA"), ("NIGHTUSDM", "NIGHT"), ("IAGUSDM", "IAG"))


@dataclass(frozen=True)
class SharedFill:
    fill_id: str
    order_id: str
    symbol: str
    base: str
    side: str
    price: Decimal
    qty: Decimal
    fee: Decimal  # in the asset received: base on buys, USDM on sells
    at: str

    @property
    def fee_asset(self) -> str:
        return self.base if self.side == "buy" else "USDM"


def _shared_fills(rng: random.Random) -> list[SharedFill]:
    fills = []
    for i in range(SHARED_FILLS):
        symbol, base = SYMBOLS[rng.randrange(3)]
        price = Decimal(rng.randint(100, 9000)) / Decimal(10_000)
        qty = Decimal(rng.randint(1, 500))
        side = rng.choice(("buy", "sell"))
        fee = (qty if side == "buy" else qty * price) * Decimal("0.001")
        minute, second = divmod(i, 60)
        fills.append(
            SharedFill(
                fill_id=f"race-{i:05d}",
                order_id=f"ord-{i // 5:05d}",
                symbol=symbol,
                base=base,
                side=side,
                price=price,
                qty=qty,
                fee=fee,
                at=f"2026-03-{20 + minute // 1440:02d}T{(minute // 60) % 24:02d}:{minute % 60:02d}:{second:02d}.000Z",
            )
        )
    return fills


def _bot_frame(f: SharedFill, price: Decimal | None = None) -> str:
    return json.dumps(
        {
            "type": "fill",
            "fillId": f.fill_id,
            "orderId": f.order_id,
            "symbol": f.symbol,
            "side": f.side,
            "price": str(price if price is not None else f.price),
            "quantity": str(f.qty),
            "timestamp": f.at,
            "commission": str(f.fee),
            "commissionAsset": f.fee_asset,
        }
    )


def _order_frames(fills: list[SharedFill]) -> list[str]:
    """One order per (order id), re-sent after every fill with all its records so far."""
    by_order: dict[str, list[SharedFill]] = {}
    for f in fills:
        by_order.setdefault(f.order_id, []).append(f)
    frames = []
    for order_id, group in by_order.items():
        # A cumulative order needs one symbol and side: the records take the first fill's.
        records: list[dict[str, Any]] = []
        for f in group:
            if (f.symbol, f.side) != (group[0].symbol, group[0].side):
                frames.append(_bot_frame(f))  # a different market: sent on its own
                continue
            records.append(
                {
                    "id": f.fill_id,
                    "order_id": order_id,
                    "execution_price": str(f.price),
                    "filled_base_qty": str(f.qty),
                    "filled_quote_qty": str(f.qty * f.price),
                    "commission_unit": f.fee_asset,
                    "commission": str(f.fee),
                    "role": "maker",
                    "created_at": f.at,
                }
            )
            order = {
                "id": order_id,
                "symbol": group[0].symbol,
                "side": group[0].side,
                "status": "open",
                "order_execution_records": list(records),
            }
            frames.append(json.dumps({"type": "Account", "sub_type": "order_info", "order": order}))
    return frames


def _history_frames(fills: list[SharedFill]) -> list[str]:
    """Older ``trading_history`` pages of 20 records, newest page first."""
    pages = []
    for start in range(0, len(fills), 20):
        records = [
            {
                "execution_id": f.fill_id,
                "order_id": f.order_id,
                "symbol": f.symbol,
                "executed_qty": str(f.qty),
                "side": f.side,
                "fee_charged": str(f.fee),
                "fee_unit": f.fee_asset,
                "executed_price": str(f.price),
                "created_time": f.at,
            }
            for f in fills[start : start + 20]
        ]
        pages.append(json.dumps({"type": "trading_history", "records": records}))
    return pages[::-1]


@dataclass
class Streams:
    paths: list[Path]
    fills: list[SharedFill]
    tampered: set[str]
    #: How many frames, over all the writers' streams, carry a tampered id (any content).
    tampered_occurrences: int


def _write_streams(folder: Path, writers: int) -> Streams:
    rng = random.Random(SEED)
    fills = _shared_fills(rng)
    tampered = {f.fill_id for f in rng.sample(fills, TAMPERED)}
    shuffled = fills[:]
    rng.shuffle(shuffled)
    streams = [
        [_bot_frame(f) for f in fills],
        _order_frames(fills)
        + [_bot_frame(f, f.price + Decimal("0.0001")) for f in fills if f.fill_id in tampered],
        _history_frames(fills),
        [_bot_frame(f) for f in shuffled],
    ]
    # The tampered copies go first in the second stream, so they race the originals.
    second = streams[1]
    streams[1] = second[-TAMPERED:] + second[:-TAMPERED]
    paths = []
    occurrences = 0
    for k in range(writers):
        path = folder / f"writer-{k}.jsonl"
        path.write_text("\n".join(streams[k]) + "\n")
        paths.append(path)
        occurrences += sum(1 for frame in streams[k] for t in tampered if f'"{t}"' in frame)
    return Streams(paths, fills, tampered, occurrences)


def _ingest_at_once(url: str, captures: list[Path]) -> list[dict[str, Any]]:
    procs = [
        subprocess.Popen(
            ledger_cmd(url, "ingest", str(c), "--json", "--batch-size", BATCH),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=child_env(),
        )
        for c in captures
    ]
    reports = []
    for proc in procs:
        out, err = proc.communicate(timeout=400)
        text = err.decode(errors="replace")
        assert proc.returncode == 0, text
        for bad in ("database is locked", "could not serialize", "Traceback", "deadlock"):
            assert bad not in text, text
        reports.append(json.loads(out))
    return reports


def _claim_digests(probe: Probe) -> dict[str, str]:
    rows = probe._query(
        "SELECT state FROM stored_events WHERE topic = " + ("%s" if probe.pg else "?"),
        ("ledger.events:FillClaimed",),
    )
    heads = [json.loads(bytes(r[0]).partition(b"\n")[0]) for r in rows]
    return {h["fill"]: h["digest"] for h in heads}


def _assert_conflicts_name_exactly_the_tampered_ids(url: str, streams: Streams) -> None:
    """One more source with both contents of every tampered id and the original of every
    other: the append use case must name each tampered id once, and nothing else."""
    frames = [_bot_frame(f) for f in streams.fills]
    frames += [
        _bot_frame(f, f.price + Decimal("0.0001"))
        for f in streams.fills
        if f.fill_id in streams.tampered
    ]
    services = open_ledger(url)
    try:
        report = services.ledger.ingest_lines(
            enumerate((line.encode() for line in frames), start=1), "check:conflicts"
        )
    finally:
        services.close()
    assert report.fills_new == 0
    assert sorted(report.conflicts) == sorted(streams.tampered)


@pytest.mark.parametrize("writers", [2, 4])
def test_racing_writers_book_each_shared_fill_once(
    db_url: str, writers: int, tmp_path: Path
) -> None:
    streams = _write_streams(tmp_path, writers)
    reports = _ingest_at_once(db_url, streams.paths)

    probe = Probe(db_url)
    try:
        assert probe.claim_count() == SHARED_FILLS
        rows = probe._query(
            "SELECT fill_id, order_id, symbol, base_asset, quote_asset, side, price, quantity,"
            " quote_amount, fee, fee_asset, role, executed_at, log_position FROM ledger_fills"
        )
        digests = _claim_digests(probe)
    finally:
        probe.close()
    booked: list[Fill] = [fill_from_row(r) for r in rows]
    ids = [f.fill_id for f in booked]
    assert len(ids) == len(set(ids)) == SHARED_FILLS
    # Booked with the content its claim recorded, whichever copy won.
    assert all(f.digest() == digests[f.fill_id] for f in booked)
    assert all(f.side in (Side.BUY, Side.SELL) for f in booked)

    conflicts = sum(r["conflicts"] for r in reports)
    # Each tampered id reaches some writer after the other content was claimed; only a
    # frame carrying a tampered id can conflict, and not the one that won the claim.
    assert TAMPERED <= conflicts <= streams.tampered_occurrences - TAMPERED, reports
    assert sum(r["fills_new"] for r in reports) == SHARED_FILLS
    verify_ok(db_url)
    _assert_conflicts_name_exactly_the_tampered_ids(db_url, streams)
    print(
        f"\nFIGURES racing-writers: {writers} writers, {SHARED_FILLS} shared fills, "
        f"conflicts reported {conflicts} for {TAMPERED} tampered ids, "
        f"frames {[r['frames'] for r in reports]}"
    )
