"""``ledger status``: the live path's health, read back from the log and the projections.

Everything here is derived from data: the ``Connected``/``Disconnected``/
``BackfillCompleted`` events the follower appended, the newest frame's receive
time, and the projected fills and balances. "Connected" means the newest
connection event is a ``Connected`` whose process (same host) is still alive: a
follower killed with ``kill -9`` leaves a ``Connected`` behind but no process.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from ledger.events import (
    CONNECTION_TOPICS,
    FRAME_TOPICS,
    TOPIC_BACKFILL_COMPLETED,
    TOPIC_CONNECTED,
    TOPIC_DISCONNECTED,
    split_state,
)

_PAGE = 1000


class LogReader(Protocol):
    def read(
        self, after: int, limit: int, topics: Sequence[str] = (), stop: int | None = None
    ) -> Sequence[Any]: ...

    def head(self) -> int: ...


@dataclass
class LiveStatus:
    connected: bool
    connection: str
    last_frame_at: str | None = None
    last_frame_age_s: float | None = None
    last_frame_source: str | None = None
    runs: int = 0
    connects: int = 0
    reconnects: int = 0
    disconnects: int = 0
    close_codes: dict[str, int] = field(default_factory=dict)
    backfills: int = 0
    gaps_healed: int = 0
    fills_healed: int = 0
    last_backfill_at: str | None = None
    fills_booked: int = 0
    drift: dict[str, dict[str, str]] = field(default_factory=dict)
    log_position: int = 0

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def read_status(
    log: LogReader,
    *,
    fills_booked: int,
    drift: dict[str, dict[str, str]],
    now: datetime | None = None,
) -> LiveStatus:
    """Fold the log's connection events and its newest frame into a ``LiveStatus``."""
    moment = now or datetime.now(UTC)
    head = log.head()
    status = LiveStatus(connected=False, connection="never connected", log_position=head)
    status.fills_booked = fills_booked
    status.drift = drift
    runs: set[str] = set()
    last: tuple[str, dict[str, Any]] | None = None
    after = 0
    while True:
        page = log.read(after, _PAGE, topics=CONNECTION_TOPICS)
        for note in page:
            head_fields, _ = split_state(note.state)
            runs.add(str(head_fields.get("run", "")))
            if note.topic == TOPIC_CONNECTED:
                status.connects += 1
                if int(head_fields.get("n", 1)) > 1:
                    status.reconnects += 1
                last = (note.topic, head_fields)
            elif note.topic == TOPIC_DISCONNECTED:
                status.disconnects += 1
                code = str(head_fields.get("code", "?"))
                status.close_codes[code] = status.close_codes.get(code, 0) + 1
                last = (note.topic, head_fields)
            elif note.topic == TOPIC_BACKFILL_COMPLETED:
                status.backfills += 1
                recovered = int(head_fields.get("fills_recovered", 0))
                status.fills_healed += recovered
                status.gaps_healed += recovered > 0
                status.last_backfill_at = str(head_fields.get("at", ""))
        if len(page) < _PAGE:
            break
        after = page[-1].id
    status.runs = len(runs - {""})
    status.connected, status.connection = _connection(last)
    _newest_frame(log, head, status, moment)
    return status


def _connection(last: tuple[str, dict[str, Any]] | None) -> tuple[bool, str]:
    if last is None:
        return False, "never connected"
    topic, fields = last
    at = fields.get("at", "?")
    if topic == TOPIC_DISCONNECTED:
        return (
            False,
            f"disconnected at {at} (code {fields.get('code')}, {fields.get('reason') or 'no reason'})",
        )
    pid, host = fields.get("pid"), fields.get("host")
    if isinstance(pid, int) and host == socket.gethostname() and not _alive(pid):
        return False, f"not running: the process that connected at {at} (pid {pid}) is gone"
    where = f"pid {pid}" if host == socket.gethostname() else f"pid {pid} on {host}"
    return True, f"connected since {at} ({where})"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _newest_frame(log: LogReader, head: int, status: LiveStatus, now: datetime) -> None:
    window = 256
    while True:
        after = max(0, head - window)
        frames = log.read(after, window, topics=FRAME_TOPICS)
        if frames:
            fields, _ = split_state(frames[-1].state)
            at = str(fields.get("at", ""))
            status.last_frame_at = at or None
            status.last_frame_source = str(fields.get("src", "")) or None
            try:
                received = datetime.fromisoformat(at.replace("Z", "+00:00"))
            except ValueError:
                return
            status.last_frame_age_s = round((now - received).total_seconds(), 3)
            return
        if after == 0:
            return
        window *= 8
