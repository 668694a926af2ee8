"""The command line's garbage collector settings: far fewer collections, still collected."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from helpers import REPO

PROBE = textwrap.dedent(
    """
    import gc, json, weakref
    from ledger.collector import YOUNG_THRESHOLD, for_throughput

    for_throughput()

    class Node:
        pass

    def cycle():
        a, b = Node(), Node()
        a.other, b.other = b, a
        return weakref.ref(a)

    # Three thresholds' worth of cycles, each unreachable once made.
    refs = [cycle() for _ in range(3 * YOUNG_THRESHOLD)]
    print(json.dumps({
        "threshold": gc.get_threshold()[0],
        "frozen": gc.get_freeze_count(),
        "collected": sum(ref() is None for ref in refs),
        "made": len(refs),
    }))
    """
)


def test_young_collections_are_rarer_and_cyclic_garbage_is_still_collected() -> None:
    # A process of its own: the settings are the whole interpreter's.
    out = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=REPO, capture_output=True, check=True, text=True
    ).stdout
    seen = json.loads(out)
    assert seen["threshold"] == 100_000
    assert seen["frozen"] > 1000  # the modules' objects, imported before the call
    # Cycles pile up to about a threshold's worth before a collection frees them.
    assert seen["collected"] >= seen["made"] // 2
