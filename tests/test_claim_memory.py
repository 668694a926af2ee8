"""What the append path remembers, and what it must still ask the store.

A claim this process saw committed is not looked up again (the log never forgets a
claim); a live frame's random id is never looked up; everything else is, so a frame
or claim another writer made first is still found, and the store's key still has
the final word."""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from helpers import FILL_CLAIMED, count_topic, frame_lines, make_capture

from adapters.deltadefi.frames import parse
from adapters.storage import Database, open_database
from ledger.application import IncomingFrame, Ledger
from ledger.live import RestFrame


@pytest.fixture
def frames_with_fills(tmp_path: Path) -> list[bytes]:
    capture = tmp_path / "session.jsonl"
    make_capture(capture, 200, seed=5)
    with_fills = [raw for raw in frame_lines(capture) if parse(raw).fills]
    assert len(with_fills) >= 3
    return with_fills


@pytest.fixture
def store(db_url: str) -> Iterator[Database]:
    db = open_database(db_url)
    yield db
    db.close()


@pytest.fixture
def asked(store: Database) -> list[int]:
    """The number of ids in each look-up the store is asked for, in order."""
    sizes: list[int] = []
    existing = store.existing

    def counting(ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, bytes]:
        sizes.append(len(ids))
        return existing(ids)

    store.existing = counting  # type: ignore[method-assign]
    return sizes


def live(raw: bytes) -> IncomingFrame:
    return IncomingFrame(raw=raw, source="ws", received_at="2026-11-24T09:00:00.000000Z")


def test_a_rest_record_returned_again_is_found_in_the_log(
    store: Database, db_url: str, frames_with_fills: list[bytes]
) -> None:
    record = RestFrame(raw=frames_with_fills[0], source="rest", received_at="2026-11-24T09:00:00Z")
    first = Ledger(store, parse).append([record])
    assert first.appended == 1 and first.fills_new == len(parse(record.raw).fills)

    for ledger in (Ledger(store, parse), Ledger(open_database(db_url), parse)):
        again = ledger.append([record])
        assert (again.appended, again.already_ingested, again.fills_new) == (0, 1, 0)


def test_a_fill_another_writer_claimed_is_found_in_the_store(
    db_url: str, store: Database, frames_with_fills: list[bytes]
) -> None:
    raw = frames_with_fills[0]
    fills = len(parse(raw).fills)
    assert Ledger(store, parse).append([live(raw)]).fills_new == fills

    other_process = open_database(db_url)
    try:
        report = Ledger(other_process, parse).append([live(raw)])
    finally:
        other_process.close()
    assert (report.appended, report.fills_new, report.fills_duplicate) == (1, 0, fills)
    assert count_topic(db_url, FILL_CLAIMED) == fills


def test_claims_made_here_and_live_frame_ids_are_not_asked_of_the_store(
    store: Database, asked: list[int], frames_with_fills: list[bytes]
) -> None:
    ledger = Ledger(store, parse)
    raw = frames_with_fills[0]
    ledger.append([live(raw)])
    assert asked == [len(parse(raw).fills)]  # the new fills' claims; not the frame

    asked.clear()
    report = ledger.append([live(raw)])  # the same fills again, in a new live frame
    assert asked == [] and report.fills_duplicate == len(parse(raw).fills)


def _disjoint_pair(frames: list[bytes]) -> tuple[bytes, bytes]:
    """Two frames that share no fill id."""
    first = frames[0]
    ids = {fill.fill_id for fill in parse(first).fills}
    for raw in frames[1:]:
        if not ids & {fill.fill_id for fill in parse(raw).fills}:
            return first, raw
    raise AssertionError("no two frames with distinct fills")


def test_after_a_look_up_that_found_nothing_the_next_batch_needs_none(
    store: Database, asked: list[int], db_url: str, frames_with_fills: list[bytes]
) -> None:
    first, second = _disjoint_pair(frames_with_fills)
    ledger = Ledger(store, parse)
    ledger.append([live(first)])
    assert asked == [len(parse(first).fills)]  # found nothing

    asked.clear()
    report = ledger.append([live(second)])
    assert asked == []
    assert report.fills_new == len(parse(second).fills)
    assert count_topic(db_url, FILL_CLAIMED) == len(parse(first).fills) + len(parse(second).fills)


def test_a_batch_planned_without_a_look_up_that_meets_a_claim_is_planned_again(
    store: Database, db_url: str, frames_with_fills: list[bytes]
) -> None:
    """Another writer claims the fills first: the batch fails whole on the store's key,
    is planned again with the look-up, and books nothing twice."""
    first, second = _disjoint_pair(frames_with_fills)
    ledger = Ledger(store, parse)
    ledger.append([live(first)])  # its look-up found nothing: the next batch skips it

    other_process = open_database(db_url)
    try:
        Ledger(other_process, parse).append([live(second)])
    finally:
        other_process.close()

    fills = len(parse(second).fills)
    report = ledger.append([live(second)])
    assert (report.appended, report.fills_new, report.fills_duplicate) == (1, 0, fills)
    assert count_topic(db_url, FILL_CLAIMED) == len(parse(first).fills) + fills
