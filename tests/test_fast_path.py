"""The order_info fast path answers exactly as the general reader, or not at all.

``fast_path.read_order_info`` must return the very ``ParsedFrame`` the general reader
(``frames._read`` then the unsafe-text check) returns for the same bytes, or ``None``.
Checked on a generated session, on mutations of its frames (bytes flipped, inserted,
deleted: the cases where two JSON parsers are most likely to disagree), and on
hand-made edge cases; and the memories are bounded.
"""

from __future__ import annotations

import random
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.deltadefi import fast_path, frames
from adapters.deltadefi.session import Session

SESSION = [line.encode() for line in Session(seed=11, malformed_rate=0.01).frames(1500)]
ORDER_FRAMES = [raw for raw in SESSION if b'"order_info"' in raw]


def general(raw: bytes) -> frames.ParsedFrame:
    return frames._refuse_unsafe_text(frames._read(raw))


def same(fast: frames.ParsedFrame, slow: frames.ParsedFrame) -> bool:
    """Equal, and written alike: ``Decimal("1.50") == Decimal("1.5")``, but the views
    and the state hash keep the text, so the exponent must match too."""
    return fast == slow and repr(fast) == repr(slow)


def test_the_fast_path_is_on_and_mirrors_the_models() -> None:
    assert fast_path.ENABLED


def test_every_frame_of_a_session_gets_the_general_answer() -> None:
    fast_answers = 0
    for raw in SESSION:
        fast = fast_path.read_order_info(raw)
        if fast is not None:
            fast_answers += 1
            assert same(fast, general(raw)), raw[:120]
        assert frames.parse(raw) == general(raw)
    assert fast_answers >= len(ORDER_FRAMES) * 0.9  # the hot path is actually taken


ALPHABET = b' \t{}[]:,"\\0123456789.eE+-abcdefnrstuNIaiy/\x00\x7f\xc3\xa9\xff'


@settings(max_examples=400, deadline=None)
@given(
    index=st.integers(0, len(ORDER_FRAMES) - 1),
    edits=st.lists(
        st.tuples(st.integers(0, 2), st.integers(0, 10**6), st.sampled_from(list(ALPHABET))),
        min_size=1,
        max_size=4,
    ),
)
def test_a_mutated_frame_gets_the_general_answer_or_none(
    index: int, edits: list[tuple[int, int, int]]
) -> None:
    data = bytearray(ORDER_FRAMES[index])
    for op, at, byte in edits:
        at %= len(data) + 1
        if op == 0 and at < len(data):
            data[at] = byte
        elif op == 1 and at < len(data):
            del data[at]
        else:
            data.insert(at, byte)
    raw = bytes(data)
    fast = fast_path.read_order_info(raw)
    if fast is not None:
        assert same(fast, general(raw))


def _order(records: str, **order: str) -> bytes:
    fields = {"id": '"o1"', "symbol": '"ADAUSDM"', "side": '"buy"', **order}
    body = ",".join(f'"{k}":{v}' for k, v in fields.items())
    return (
        f'{{"type":"Account","sub_type":"order_info","order":{{{body},'
        f'"order_execution_records":[{records}]}}}}'
    ).encode()


RECORD = (
    '{"id":"e1","execution_price":"0.45","filled_base_qty":"10","filled_quote_qty":"4.5",'
    '"commission_unit":"lovelace","commission":"10000","role":"maker",'
    '"created_at":"2026-03-20T09:00:00.101Z"}'
)


@pytest.mark.parametrize(
    "raw",
    [
        _order(RECORD),
        _order(RECORD.replace('"0.45"', "0.45")),  # a JSON float: exactness is the reader's job
        _order(RECORD.replace('"0.45"', '"NaN"')),
        _order(RECORD, extra="NaN"),  # NaN in an ignored field: the stdlib refuses it
        _order(RECORD, extra="Infinity"),
        # The word after another place of its first letter (the symbol's).
        _order(RECORD, symbol='"NIGHTUSDM"', extra="NaN"),
        _order(RECORD, symbol='"IAGUSDM"', extra="[1,-Infinity]"),
        _order(RECORD.replace('"e1"', '"e\\u0000"')),  # a NUL in a fill id
        _order(RECORD.replace('"e1"', '"\\ud800"')),  # a lone surrogate
        _order(RECORD.replace('"e1"', '" "')),  # empty after stripping
        _order(RECORD.replace('"e1"', "17")),  # an integer id
        _order(f"{RECORD},{RECORD}"),  # the same fill twice in one frame
        _order(RECORD, symbol='"XYZ"'),  # cannot be split
        _order(RECORD, side='"BUY "'),
        _order(RECORD.replace('"lovelace"', '"bogus"')),
        _order(RECORD.replace("2026-03-20T09:00:00.101Z", "2026-13-20T09:00:00Z")),
        _order(RECORD.replace("2026-03-20T09:00:00.101Z", "0999-01-01T00:30:00+01:00")),
        _order(RECORD.replace('"10"', '"1' + "0" * 70 + '"')),
        _order(RECORD.replace('"10"', '"1_0"')),
        _order(RECORD.replace('"10"', '"10.50"')),  # trailing zeros are kept
        _order(RECORD.replace('"10"', '"0"')),  # must be positive
        _order(RECORD.replace('"4.5"', '"0.0"')),  # may be zero
        _order(RECORD.replace('"10"', '"1e1"')),
        _order(RECORD.replace('"10"', '" 10"')),
        _order(RECORD.replace('"10"', '"+10"')),
        _order(RECORD.replace('"10"', '".5"')),
        _order(RECORD.replace('"10"', '"10."')),
        _order(RECORD.replace('"10"', '"\\u0661"')),  # an Arabic-Indic one
        _order(RECORD.replace('"10"', '"' + "9" * 31 + '"')),
        _order(RECORD.replace("09:00:00.101Z", "09:00:00.101000Z")),
        _order(RECORD.replace("09:00:00.101Z", "09:00:00Z")),
        _order(RECORD.replace("09:00:00.101Z", "09:00:00.101z")),
        _order(RECORD.replace("09:00:00.101Z", "09:00:00.101+00:00")),
        _order(RECORD.replace("2026-03-20T09", "2026-02-30T09")),
        _order(RECORD.replace("2026-03-20T09", "2026-03-20T24")),
        _order(RECORD.replace("T09:00:00.101Z", "T09:60:00.101Z")),
        _order(RECORD.replace("T09:00:00.101Z", "T09:00:60.101Z")),
        _order(RECORD.replace("2026-03-20T09", "2028-02-29T09")),  # a leap day
        _order(RECORD.replace("2026-03-20T09", "2100-02-29T09")),  # not a leap day
        _order(RECORD.replace("2026-03-20T09", "0999-03-20T09")),
        _order(RECORD.replace('"lovelace"', '"USDM"')),
        _order(RECORD.replace('"lovelace"', '"' + "ab" * 28 + '"')),
        _order(RECORD.replace('"lovelace"', '""')),
        _order(RECORD).replace(b'"type":"Account"', b'"type":"Account","type":"fill"'),
        _order(RECORD) + b" x",
        _order(RECORD).replace(b'"maker"', '"m\u00e9"'.encode()),
        _order(""),
        _order(RECORD).replace(
            b',"order_execution_records":[', b',"order_execution_records":null,"x":['
        ),
    ],
)
def test_edge_cases_get_the_general_answer_or_none(raw: bytes) -> None:
    fast = fast_path.read_order_info(raw)
    if fast is not None:
        assert same(fast, general(raw))
    assert frames.parse(raw) == general(raw)


def test_money_stays_exact() -> None:
    record = RECORD.replace('"0.45"', '"0.1000000000000000055511151231257827"')
    parsed = frames.parse(_order(record))
    assert parsed.fills[0].price == Decimal("0.1000000000000000055511151231257827")


def test_memories_are_bounded() -> None:
    rng = random.Random(5)
    for _ in range(3):
        for raw in SESSION:
            frames.parse(raw + b" " * rng.randint(0, 3))
    assert len(fast_path._recent) <= fast_path._RECENT_LIMIT
    assert len(fast_path._fills) <= fast_path._MEMO_LIMIT
    fast_path.forget()
    assert not fast_path._recent and not fast_path._fills and not fast_path._orders


@given(
    st.lists(st.sampled_from([b"N", b"NaN", b"Na", b"I", b"Infinit", b"Infinity", b"x"])),
    st.sampled_from([b"NaN", b"Infinity"]),
)
def test_a_word_is_found_wherever_it_is(parts: list[bytes], word: bytes) -> None:
    raw = b"".join(parts)
    assert fast_path._holds(raw, word) == (word in raw)
