"""Python's cyclic garbage collector, set for a process that reads millions of frames.

CPython runs a young-generation collection every 700 net new container objects (tuples,
dicts, fills), every tenth of those the middle generation too, and now and then the
whole heap: every parse and claim remembered, every position. The ledger's objects are
freed by reference counting as soon as they are done with (frames, fills and pages form
no cycles), so those collections find next to nothing, at a price that grows with the
heap: a rebuild of 200,000 frames spent 1.7 s of its 9 s collecting in the projecting
process, an import 3.1 s in the appending one; and a full collection in the live writer
holds up every frame in flight.

``for_throughput`` keeps the collector, far less eager: what is alive when it is called
(modules, classes, pydantic's schemas) is left out of every later collection, and a
young collection waits for ``YOUNG_THRESHOLD`` net new container objects. Cyclic
garbage, should any appear, is still collected: at most about that many objects of it
wait. Called by the command line and by the processes it starts, not by the library: a
bot embedding the ledger keeps its own settings.
"""

from __future__ import annotations

import gc

#: Net new container objects between two young-generation collections (CPython: 700).
YOUNG_THRESHOLD = 100_000


def for_throughput() -> None:
    """Freeze what is alive now out of later collections and make young ones rarer."""
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
