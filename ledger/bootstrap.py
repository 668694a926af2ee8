"""Wiring: a database URL in, the ledger's use cases ready to call.

The one place that knows every layer: the append use case gets the DeltaDeFi
parser and the store; the projector gets the same store for its views.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from adapters.deltadefi.frames import parse
from adapters.storage import Database, open_database
from ledger.application import AppendReport, Ledger
from projections.runner import Projector


@dataclass
class LedgerServices:
    db: Database
    ledger: Ledger
    projector: Projector

    def ingest_and_project(
        self,
        lines: Iterable[tuple[int, bytes]],
        source: str,
        *,
        on_batch: Callable[[AppendReport], None] | None = None,
        batch_size: int = 2000,
    ) -> AppendReport:
        def project_batch(report: AppendReport) -> None:
            # Each batch is projected right after it is appended, while its parses are fresh.
            self.projector.catch_up()
            if on_batch:
                on_batch(report)

        report = self.ledger.ingest_lines(
            lines, source, on_batch=project_batch, batch_size=batch_size
        )
        self.projector.catch_up()
        return report

    def close(self) -> None:
        self.db.close()


def open_ledger(url: str) -> LedgerServices:
    db = open_database(url)
    return LedgerServices(db=db, ledger=Ledger(db, parse), projector=Projector(db, parse=parse))
