"""The events in the ledger's log, and how each is stored.

The log is an eventsourcing application sequence: every event is one
``StoredEvent`` with a topic and a ``state`` blob, numbered by the store in
commit order (its notification id is the event's *log position*).

Stored form. A frame's raw bytes are kept exactly once, unescaped: ``state`` is a
one-line JSON header, a newline, then the raw bytes as received (not necessarily
UTF-8). Other events are the header alone. The header's ``v`` is the schema
version; ``decode`` upcasts older versions, so old logs stay readable.

Identity. Every event is version 1 of its own originator, so the store's
``(originator_id, originator_version)`` primary key makes an id unique:
- a frame read from a file is identified by (source, line, content): importing the
  same capture twice appends nothing. Its id is ``line_ordered_frame_id``, which
  grows with the line number, so that an import adds to one end of the key's index;
  a capture first imported before those ids existed keeps ``frame_id_for_line``;
- a fill claim is ``uuid5(fill id)``: a second claim of a fill fails inside the
  store's transaction, whichever process makes it. That is the dedup guarantee.
"""

from __future__ import annotations

import functools
import hashlib
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from eventsourcing.persistence import StoredEvent

SCHEMA_VERSION = 1

_NS_FRAME = uuid.UUID("6f1c8d4e-7f43-4f0a-9a59-2d1e3c0b5a11")
_NS_FILL = uuid.UUID("b3a0f0de-1b6e-4b7c-8d0e-4c5f6a7b8c9d")

TOPIC_FRAME_RECEIVED = "ledger.events:FrameReceived"
TOPIC_FRAME_REJECTED = "ledger.events:FrameRejected"
TOPIC_FILL_CLAIMED = "ledger.events:FillClaimed"
TOPIC_CONNECTED = "ledger.events:Connected"
TOPIC_DISCONNECTED = "ledger.events:Disconnected"
TOPIC_BACKFILL_COMPLETED = "ledger.events:BackfillCompleted"

FRAME_TOPICS = (TOPIC_FRAME_RECEIVED, TOPIC_FRAME_REJECTED)
CONNECTION_TOPICS = (TOPIC_CONNECTED, TOPIC_DISCONNECTED, TOPIC_BACKFILL_COMPLETED)


def frame_id_for_line(source: str, line: int, raw: bytes) -> uuid.UUID:
    """The id a frame read from a file had before ``line_ordered_frame_id``: a name-based
    UUID (version 5) of its source, line and content, so the ids of a capture's lines
    lie all over the key's index."""
    digest = hashlib.blake2b(raw, digest_size=16).hexdigest()
    return uuid5(_NS_FRAME_BYTES, f"{source}\n{line}\n{digest}")


#: The most lines a capture may have for ``line_ordered_frame_id`` (40 bits).
MAX_ORDERED_LINE = (1 << 40) - 1


def line_ordered_frame_id(source: str, line: int, raw: bytes) -> uuid.UUID:
    """The id of a frame read from a file: the same line of the same capture is one
    frame, and one capture's ids grow with the line number.

    A random key makes every batch of an import write into pages all over the key's
    index, and each commit writes each page it touched again: the cost of a batch then
    grows with the log. Ids in line order go to one end of it.

    A version 8 UUID (RFC 9562), from the high bits down: 32 bits of a digest of the
    source, the line number (40 bits, split around the version and variant bits), and
    50 bits of a digest of the content, which tell a changed line from the one
    imported before.
    """
    if not 0 <= line <= MAX_ORDERED_LINE:
        raise ValueError(f"line {line} is outside 0..{MAX_ORDERED_LINE}")
    content = int.from_bytes(hashlib.blake2b(raw, digest_size=8).digest(), "big")
    return uuid.UUID(
        int=_source_bits(source)
        | (line >> 24) << 80
        | ((line >> 12) & 0xFFF) << 64
        | (line & 0xFFF) << 50
        | (content & _CONTENT_MASK)
        | _VERSION_8_AND_VARIANT
    )


@functools.lru_cache(maxsize=256)
def _source_bits(source: str) -> int:
    """A capture's 32 bits of ``line_ordered_frame_id``, in place."""
    digest = hashlib.blake2b(source.encode(), digest_size=4, person=b"ledger-source").digest()
    return int.from_bytes(digest, "big") << 96


@functools.lru_cache(maxsize=65_536)
def claim_id(fill_id: str) -> uuid.UUID:
    """The id of the one claim a fill id can ever have (remembered: cumulative records
    ask for the same fills' claims again and again)."""
    return uuid5(_NS_FILL_BYTES, fill_id)


_NS_FRAME_BYTES = _NS_FRAME.bytes
_NS_FILL_BYTES = _NS_FILL.bytes
#: The bits of a UUID's version and variant fields, and those fields' values in a
#: version 5 (RFC 4122) UUID.
_VERSION_AND_VARIANT_MASK = (0xF000 << 64) | (0xC000 << 48)
_VERSION_5_AND_VARIANT = (0x5000 << 64) | (0x8000 << 48)
_VERSION_8_AND_VARIANT = (0x8000 << 64) | (0x8000 << 48)
_CONTENT_MASK = (1 << 50) - 1


def uuid5(namespace: bytes, name: str) -> uuid.UUID:
    """``uuid.uuid5(UUID(bytes=namespace), name)``: the same id, for half the time (an
    import derives one or two for every frame)."""
    digest = hashlib.sha1(namespace + name.encode(), usedforsecurity=False).digest()
    value = int.from_bytes(digest[:16], "big")
    return uuid.UUID(int=(value & ~_VERSION_AND_VARIANT_MASK) | _VERSION_5_AND_VARIANT)


@dataclass(frozen=True, slots=True)
class FrameReceived:
    """A raw frame, exactly as received, with where and when it came from.

    ``rejection`` is the reason the parser of the day gave for refusing it at
    append time (the projections re-read it with today's parser anyway).
    """

    frame_id: uuid.UUID
    raw: bytes
    received_at: str
    source: str
    line: int | None = None
    rejection: str | None = None

    @property
    def topic(self) -> str:
        return TOPIC_FRAME_REJECTED if self.rejection is not None else TOPIC_FRAME_RECEIVED

    def header(self) -> dict[str, Any]:
        head: dict[str, Any] = {"v": SCHEMA_VERSION, "at": self.received_at, "src": self.source}
        if self.line is not None:
            head["line"] = self.line
        if self.rejection is not None:
            head["reason"] = self.rejection
        return head

    def to_stored(self) -> StoredEvent:
        # The header spelled out: the same bytes as _header_bytes(self.header()) (sorted
        # keys, compact separators, ASCII escapes), without a generic encoder per frame.
        parts = ['{"at":', _json_text(self.received_at)]
        if self.line is not None:
            parts += [',"line":', str(int(self.line))]
        if self.rejection is not None:
            parts += [',"reason":', _json_text(self.rejection)]
        parts += [',"src":', _json_text(self.source), f',"v":{SCHEMA_VERSION}}}\n']
        state = "".join(parts).encode() + self.raw
        return StoredEvent(self.frame_id, 1, self.topic, state)


@dataclass(frozen=True, slots=True)
class FillClaimed:
    """The first and only booking claim on a fill id, made by the frame that brought it."""

    fill_id: str
    frame_id: uuid.UUID
    digest: str

    def header(self) -> dict[str, Any]:
        return {
            "v": SCHEMA_VERSION,
            "fill": self.fill_id,
            "frame": self.frame_id.hex,
            "digest": self.digest,
        }

    def to_stored(self) -> StoredEvent:
        # Spelled out: the same bytes as _header_bytes(self.header()).
        state = (
            f'{{"digest":{_json_text(self.digest)},"fill":{_json_text(self.fill_id)},'
            f'"frame":"{self.frame_id.hex}","v":{SCHEMA_VERSION}}}'
        ).encode()
        return StoredEvent(claim_id(self.fill_id), 1, TOPIC_FILL_CLAIMED, state)


@dataclass(frozen=True, slots=True)
class ConnectionEvent:
    """Connected, Disconnected or BackfillCompleted: the live path's history, as data."""

    topic: str
    at: str
    details: dict[str, Any]
    event_id: uuid.UUID

    def to_stored(self) -> StoredEvent:
        head = {"v": SCHEMA_VERSION, "at": self.at, **self.details}
        return StoredEvent(self.event_id, 1, self.topic, _header_bytes(head))


#: A JSON string literal exactly as ``json.dumps`` writes one (ASCII, escaped).
_json_text: Callable[[str], str] = json.encoder.encode_basestring_ascii


def _header_bytes(head: dict[str, Any]) -> bytes:
    return json.dumps(head, separators=(",", ":"), sort_keys=True).encode()


def split_state(state: bytes) -> tuple[dict[str, Any], bytes]:
    """A stored state -> (upcast header, raw bytes). Raw is empty for non-frame events."""
    head_bytes, _, raw = state.partition(b"\n")
    head: dict[str, Any] = json.loads(head_bytes)
    return upcast(head), raw


def upcast(head: dict[str, Any]) -> dict[str, Any]:
    """Bring a header of any earlier schema version to the current one."""
    version = head.get("v", 1)
    if version > SCHEMA_VERSION:
        raise ValueError(f"event schema v{version} is newer than this code (v{SCHEMA_VERSION})")
    # v1 is current: nothing to do yet. Add `if version == 1: ...; version = 2` steps here.
    return head
