"""Helper processes started by a projecting process, and tied to its life.

The projections use a second CPU by forking: the child starts with the parent's code
and parser already loaded (no interpreter start-up, no pickling of the parser), opens
its own database connection, and talks back through a pipe. A process with threads
must not fork; where a helper is worth its start-up, it is spawned instead (a new
interpreter). A child must never outlive its parent, or ``kill -9`` of a command would
leave half of it running.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import sys
import threading
import types
from collections.abc import Callable
from multiprocessing.process import BaseProcess
from typing import Any

from ledger import collector

_PR_SET_PDEATHSIG = 1

FORK = multiprocessing.get_context("fork")
SPAWN = multiprocessing.get_context("spawn")


def can_fork() -> bool:
    """True while this process runs a single thread. A fork copies only the calling
    thread: a lock another thread held at that moment (logging's, the import lock, a
    connection pool's) stays locked forever in the child. With threads about (a
    PostgreSQL connection pool's workers, an event loop's executor, a test's local
    exchange) the work is done in this process instead."""
    return threading.active_count() == 1


def start_child(name: str, target: Callable[..., None], *args: Any) -> BaseProcess:
    """Fork a daemon child running ``target(parent_pid, *args)``; it dies with this process.

    Only when ``can_fork()``. Fork before this process opens connections it will keep
    using, or at least never use the inherited ones in the child: the child opens its own.
    """
    if not can_fork():
        raise RuntimeError("refusing to fork a process that runs several threads")
    process = FORK.Process(
        target=_run_tied, args=(os.getpid(), target, args), name=name, daemon=True
    )
    process.start()
    return process


def spawn_child(name: str, target: Callable[..., None], *args: Any) -> BaseProcess:
    """``start_child`` for a process that must not fork (it runs threads): the child is a
    new interpreter, so ``target`` and ``args`` must pickle by reference to modules other
    than ``__main__``, and it imports what it needs before it starts work (a few hundred
    milliseconds). It dies with this process too.

    The child does not import this process's main script: multiprocessing would run it
    again there, and a bot's script without an ``if __name__ == "__main__"`` guard would
    start a second bot."""
    process = SPAWN.Process(
        target=_run_tied, args=(os.getpid(), target, args), name=name, daemon=True
    )
    main = sys.modules["__main__"]
    # What the child is told to import as its main module is read from here by start().
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        process.start()
    finally:
        sys.modules["__main__"] = main
    return process


def end_child(process: BaseProcess) -> None:
    """Kill ``process`` if it still runs, and reap it."""
    if process.is_alive():
        process.kill()
    process.join()


def parent_gone(parent: int) -> bool:
    return os.getppid() != parent


def _run_tied(parent: int, target: Callable[..., None], args: tuple[Any, ...]) -> None:
    # Linux SIGKILLs this child when its parent dies. Elsewhere a child checks
    # ``parent_gone`` between units of work.
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if parent_gone(parent):  # the parent died before the request was made
        os._exit(0)
    # The parent's Ctrl-C is the parent's to handle; the child stops when told or orphaned.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A spawned child starts with the default collector; a forked one freezes what it
    # inherited, so that collections leave the parent's pages unwritten.
    collector.for_throughput()
    target(parent, *args)
