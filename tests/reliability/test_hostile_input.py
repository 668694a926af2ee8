"""Hostile input: schema-generated frames, mutated, and raw bytes, on both stores.

Pass, for every line: no exception and no hang; a blank line is no frame; any other
line is in the log verbatim, and it is either booked (every fill it carries is claimed
and booked, with the content its claim recorded) or kept as rejected with a one-line,
printable reason and applied to nothing (no claim points at it, no fill is booked from
it); a frame whose bytes are not UTF-8 or whose text was cut short is rejected, and one
whose required amount was replaced by a hostile value is rejected (or, if its type is one
nobody reads, kept and ignored). Where the parser has a fast path, it
gives the general reader's answer. A fixed corpus of the worst cases (a 50 MB line,
10^6-character strings, 10^5-deep nesting, 1 MB of random bytes) goes through the
``ledger`` command in its own process, whose peak RSS is bounded.
"""

from __future__ import annotations

import json
import random
import time
import uuid
from collections.abc import Iterator
from itertools import count
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.deltadefi import frames
from ledger.bootstrap import LedgerServices, open_ledger
from ledger.domain import ParsedFrame, has_unsafe_text
from ledger.events import claim_id, line_ordered_frame_id
from reliability import hostile
from reliability._support import (
    LONG,
    Probe,
    ledger_cmd,
    run_json,
    run_measured,
    verify_ok,
)

EXAMPLES = 300 if LONG else 60
_sources = count()

try:  # the speed work's fast path for order_info frames, when present
    from adapters.deltadefi import fast_path
except ImportError:  # pragma: no cover
    fast_path = None  # type: ignore[assignment]


@st.composite
def hostile_lines(draw: st.DrawFn) -> tuple[bytes, bool]:
    """One line of a capture and whether it must be rejected."""
    kind = draw(
        st.sampled_from(
            ["valid", "valid", "mutated", "mutated", "mutated", "bytes", "blank", "utf8", "cut"]
        )
    )
    if kind == "bytes":
        return draw(st.binary(min_size=1, max_size=300)).replace(b"\n", b" "), False
    if kind == "blank":
        return draw(st.sampled_from([b"", b" ", b"\t", b"  \t "])), False
    frame = draw(hostile.frames_from_schema())
    if kind == "valid":
        return hostile.serialise(frame), False
    if kind == "utf8":
        text = hostile.serialise(frame)
        at = draw(st.integers(0, len(text)))
        return text[:at] + draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80"])) + text[
            at:
        ], True
    if kind == "cut":
        text = hostile.serialise(frame)
        return text[: draw(st.integers(1, len(text) - 1))], True
    paths = hostile.leaf_paths(frame)
    path = draw(st.sampled_from(paths)) if paths else ()
    _, value = draw(st.sampled_from(hostile.HOSTILE_VALUES))
    mutated = hostile.replace_at(frame, path, value)
    return hostile.serialise(mutated), hostile.must_reject(path)


def _general_reader(raw: bytes) -> ParsedFrame:
    """``frames.parse`` with the fast path switched off: the reference answer."""
    assert fast_path is not None
    enabled = fast_path.ENABLED
    fast_path.ENABLED = False
    fast_path.forget()
    try:
        return frames.parse(raw)
    finally:
        fast_path.ENABLED = enabled
        fast_path.forget()


class Store:
    """The ledger under test plus a plain-SQL view of its log."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.services: LedgerServices = open_ledger(url)
        self.probe = Probe(url)
        self.mark = "%s" if self.probe.pg else "?"

    def event(self, event_id: uuid.UUID) -> tuple[int, str, bytes] | None:
        column = "notification_id" if self.probe.pg else "rowid"
        key: Any = event_id if self.probe.pg else event_id.hex
        rows = self.probe._query(
            f"SELECT {column}, topic, state FROM stored_events WHERE originator_id = {self.mark}",
            (key,),
        )
        return (int(rows[0][0]), str(rows[0][1]), bytes(rows[0][2])) if rows else None

    def reject_row(self, position: int) -> tuple[str, bytes] | None:
        rows = self.probe._query(
            f"SELECT reason, raw FROM ledger_rejects WHERE log_position = {self.mark}", (position,)
        )
        return (str(rows[0][0]), bytes(rows[0][1])) if rows else None

    def booked_position(self, fill_id: str) -> int | None:
        rows = self.probe._query(
            f"SELECT log_position FROM ledger_fills WHERE fill_id = {self.mark}", (fill_id,)
        )
        return int(rows[0][0]) if rows else None

    def close(self) -> None:
        self.probe.close()
        self.services.close()


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    opened = Store(db_url)
    yield opened
    opened.close()


def _check_line(store: Store, source: str, number: int, raw: bytes, must_reject: bool) -> None:
    fid = line_ordered_frame_id(source, number, raw)
    stored = store.event(fid)
    if not raw.strip():
        assert stored is None, "a blank line became a frame"
        return
    assert stored is not None, f"line {number} is not in the log"
    position, topic, state = stored
    head_bytes, _, kept = state.partition(b"\n")
    head = json.loads(head_bytes)
    assert kept == raw, "the frame was not kept verbatim"
    assert (head["src"], head["line"]) == (source, number)

    parsed = frames.parse(raw)
    if fast_path is not None:
        reference = _general_reader(raw)
        assert parsed.rejected == reference.rejected
        assert parsed.fills == reference.fills and parsed.snapshot == reference.snapshot
    if must_reject:
        # Rejected, or (a frame type nobody reads, e.g. an older-format page whose "type"
        # was generated as "market") kept, ignored and booking nothing.
        assert parsed.rejected or (parsed.kind == "unknown" and not parsed.fills), (
            f"booked a frame it must reject: {raw[:200]!r}"
        )
    assert topic.endswith("FrameRejected") == parsed.rejected

    if parsed.rejection is not None:
        reason = parsed.rejection
        assert reason and "\n" not in reason and len(reason) <= 300
        assert not has_unsafe_text(reason)
        row = store.reject_row(position)
        assert row is not None and row[0] == reason and row[1] == raw
        return
    for fill in parsed.fills:
        claim = store.event(claim_id(fill.fill_id))
        assert claim is not None, f"fill {fill.fill_id!r} was not claimed"
        claim_head = json.loads(claim[2])
        booked_at = store.booked_position(fill.fill_id)
        assert booked_at is not None, f"fill {fill.fill_id!r} is claimed but not booked"
        if claim_head["frame"] == fid.hex:
            assert booked_at == position
            assert claim_head["digest"] == fill.digest()


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)
@given(lines=st.lists(hostile_lines(), min_size=1, max_size=6), batch=st.integers(1, 4))
def test_hostile_lines_are_booked_whole_or_rejected_whole(
    store: Store, lines: list[tuple[bytes, bool]], batch: int
) -> None:
    source = f"hostile:{next(_sources)}"
    numbered = [(n, raw) for n, (raw, _) in enumerate(lines, start=1)]
    started = time.monotonic()
    store.services.ledger.ingest_lines(numbered, source, batch_size=batch)
    store.services.projector.catch_up()
    assert time.monotonic() - started < 60, "a handful of frames took over a minute"
    for (number, raw), (_, must_reject) in zip(numbered, lines, strict=True):
        _check_line(store, source, number, raw, must_reject)
    # Bookkeeping: the projections never fall behind the log.
    assert store.services.projector.position == store.services.db.head()


def test_a_bad_record_rejects_its_whole_order(store: Store) -> None:
    """Five good execution records and one with a price of zero: nothing is booked."""
    records = [
        {
            "id": f"partial-{i}",
            "execution_price": "0.5" if i != 3 else "0",
            "filled_base_qty": "10",
            "filled_quote_qty": "5",
            "commission_unit": "lovelace",
            "commission": "10000",
            "created_at": f"2026-03-20T10:00:0{i}Z",
        }
        for i in range(6)
    ]
    order = {
        "id": "o-partial",
        "symbol": "ADAUSDM",
        "side": "buy",
        "order_execution_records": records,
    }
    raw = json.dumps({"type": "Account", "sub_type": "order_info", "order": order}).encode()
    report = store.services.ledger.ingest_lines([(1, raw)], "hostile:partial")
    store.services.projector.catch_up()
    assert (report.rejected, report.fills_new) == (1, 0)
    assert all(store.booked_position(f"partial-{i}") is None for i in range(6))
    assert all(store.event(claim_id(f"partial-{i}")) is None for i in range(6))
    _check_line(store, "hostile:partial", 1, raw, True)


# --- the worst cases, through the command line, memory measured --------------------------

BIG_LINE_MB = 50


def _worst_case_capture(path: Path, rng: random.Random) -> dict[str, Any]:
    """Good frames around the worst lines we can think of; returns what to expect."""
    good = [
        {
            "type": "fill",
            "fillId": f"good-{i}",
            "symbol": "ADAUSDM",
            "side": "buy" if i % 2 else "sell",
            "price": "0.45",
            "quantity": str(i + 1),
            "timestamp": f"2026-03-20T10:00:{i:02d}Z",
            "commission": "0.001",
            "commissionAsset": "ADA" if i % 2 else "USDM",
        }
        for i in range(40)
    ]
    big_id = "z" * 1_000_000
    hostile_lines = [
        # A 50 MB line: a valid fill whose order id is one huge string.
        json.dumps(
            {**good[0], "fillId": "big-line", "orderId": "o" * (BIG_LINE_MB << 20)}
        ).encode(),
        json.dumps({**good[1], "fillId": big_id}).encode(),
        # A megabyte of a field no model reads: ignored, the fill is booked.
        json.dumps({**good[2], "fillId": "extra-field", "note": "r" * 10**6}).encode(),
        b'{"type":"fill","fillId":"deep","price":' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        b'{"type":"fill","fillId":"nan","symbol":"ADAUSDM","side":"buy","price":NaN,"quantity":1,"timestamp":1}',
        b'{"type":"fill","fillId":"big","symbol":"ADAUSDM","side":"buy","price":'
        + b"9" * 10**6
        + b',"quantity":1,"timestamp":1}',
        b"\xff\xfe\x00garbage",
        b"",
        b"   ",
    ]
    noise = bytes(rng.getrandbits(8) for _ in range(1 << 20))
    lines = [json.dumps(g).encode() for g in good[:20]]
    lines += hostile_lines
    lines += noise.split(b"\n")
    lines += [json.dumps(g).encode() for g in good[20:]]
    path.write_bytes(b"\n".join(lines) + b"\n")
    expected_frames = sum(1 for line in lines if line.rstrip(b"\r").strip())
    return {"frames": expected_frames, "good": {g["fillId"] for g in good}}


def test_worst_case_capture_through_the_cli_in_bounded_memory(db_url: str, tmp_path: Path) -> None:
    capture = tmp_path / "worst.jsonl"
    expected = _worst_case_capture(capture, random.Random(4))
    size_mb = capture.stat().st_size / 2**20
    result = run_measured(
        ledger_cmd(db_url, "ingest", str(capture), "--json", "--batch-size", "50"), timeout=300
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["frames"] == report["appended"] == expected["frames"]
    probe = Probe(db_url)
    try:
        booked = set(probe.fill_ids())
        assert probe.event_count() == expected["frames"] + len(booked)
    finally:
        probe.close()
    assert expected["good"] <= booked
    # 50 MB of order id is odd, but the fill is valid; so is an unknown megabyte field.
    assert {"big-line", "extra-field"} <= booked
    assert not booked & {"deep", "nan", "big", "z" * 1_000_000}
    peak_mb = result.max_rss_kb / 1024
    # The line is read, kept and parsed as a few copies (bytes, text, the stored state;
    # PostgreSQL's driver also writes the bytea as hex text inside a composite value):
    # a small multiple of the largest line, and nothing that grows with the stream.
    assert peak_mb < 250 + 12 * BIG_LINE_MB, f"peak RSS {peak_mb:.0f} MB"
    verify_ok(db_url)
    incremental = run_json(db_url, "positions")["state_hash"]
    assert run_json(db_url, "rebuild")["state_hash"] == incremental
    print(
        f"\nFIGURES hostile-cli: {size_mb:.0f} MB capture, {report['frames']} frames, "
        f"{report['rejected']} rejected, peak RSS {peak_mb:.0f} MB"
    )
