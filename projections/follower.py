"""Projecting in a second process while the log is being written.

An import is two kinds of work: reading and appending frames, and folding the log
into the projections. They need not wait for each other: the projector only ever
reads committed events after its tracking position, so it can follow the log while
the appender writes it, each on its own CPU. ``Follower`` runs a ``Projector`` in a
forked child process that catches up again and again until told the log is
complete, then catches up a last time and exits.

The follower adds no guarantee and removes none: the projector's tracking write
already makes two projectors on one database safe, and the caller catches up once
more itself after ``finish`` (a no-op when the child got there), so a follower that
died or was never started only costs time. The child dies with its parent: ``kill -9``
of an import stops its projecting too.
"""

from __future__ import annotations

import contextlib
from multiprocessing.connection import Connection
from typing import Any

from adapters.storage import open_database
from projections.forking import FORK, can_fork, end_child, parent_gone, start_child
from projections.runner import Projector

#: How often an idle follower looks for new events (it is also woken by ``finish``).
POLL_S = 0.02


class Follower:
    """A projector following the log of ``url`` in a child process.

    Start it before this process opens any database connection (the child is forked);
    ``finish()`` says the log is complete and waits for the child to catch up. Use as a
    context manager so the child never outlives an error in the parent.
    """

    def __init__(self, url: str, *, start: bool = True) -> None:
        self._done = FORK.Event()
        reader, writer = FORK.Pipe(duplex=False)
        self._errors = reader
        #: None when not asked to ``start`` or when this process may not fork (see
        #: ``can_fork``): the caller then does all the projecting itself.
        self._process = (
            start_child("ledger-projector", _follow, url, self._done, writer)
            if start and can_fork()
            else None
        )
        writer.close()

    @property
    def running(self) -> bool:
        return self._process is not None

    def finish(self, timeout: float | None = None) -> str | None:
        """Tell the child the log is complete and wait for it; the child's error, if any."""
        if self._process is None:
            return None
        self._done.set()
        self._process.join(timeout)
        if self._process.is_alive():
            self.stop()
            return "the projector process did not finish in time"
        with contextlib.suppress(EOFError):  # EOF: the child closed its end saying nothing
            if self._errors.poll():
                return str(self._errors.recv())
        if self._process.exitcode != 0:
            return f"the projector process exited with code {self._process.exitcode}"
        return None

    def stop(self) -> None:
        """End the child now (its uncommitted page is simply redone by the next catch-up)."""
        if self._process is not None:
            end_child(self._process)

    def __enter__(self) -> Follower:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self._errors.close()


def _follow(parent: int, url: str, done: Any, errors: Connection) -> None:
    try:
        db = open_database(url)
        try:
            projector = Projector(db)
            while True:
                last_call = done.is_set()
                projector.catch_up()
                if last_call or parent_gone(parent):
                    return
                done.wait(POLL_S)
        finally:
            db.close()
    except Exception as exc:  # reported to the parent, which catches up itself
        with contextlib.suppress(Exception):
            errors.send(f"{type(exc).__name__}: {exc}"[:500])
        raise SystemExit(1) from None
