"""Database faults mid-stream: PostgreSQL crashed (``pg_ctl stop -m immediate``) and
restarted, and the connection cut by a proxy (every socket reset, new ones refused a while).

A capture is streamed into ``ledger ingest -`` through a pipe. Part-way, the fault; then the
rest of the stream. Pass: the same process carries on by itself and exits 0; every line
is in the log once, every fill booked once (the exchange's set); ``ledger verify``
passes; and the projections reach the log head within 10 s of the database coming back.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from reliability._support import LONG, Probe, child_env, ledger_cmd, state_hash, verify_ok
from reliability.faults import CuttingProxy, PrivatePostgres

FRAMES = 3000
SEED = 77
CATCH_UP_LIMIT_S = 10.0


@pytest.fixture
def private_pg() -> Iterator[PrivatePostgres]:
    try:
        pg = PrivatePostgres()
    except (FileNotFoundError, RuntimeError) as exc:
        pytest.fail(f"cannot make a private PostgreSQL cluster: {exc}")
    try:
        pg.start()
        yield pg
    finally:
        pg.close()


class StreamedIngest:
    """``ledger ingest -`` fed line by line from a thread."""

    def __init__(self, url: str, capture: Path, log: Path) -> None:
        self.lines = capture.read_bytes().splitlines(keepends=True)
        self.log = log
        self._err = log.open("wb")
        self.proc = subprocess.Popen(
            ledger_cmd(url, "ingest", "-", "--json", "--batch-size", "50"),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._err,
            env=child_env(),
        )
        self.fed = 0

    def feed(self, until: int, pause_every: int = 100, pause: float = 0.02) -> None:
        assert self.proc.stdin is not None
        while self.fed < min(until, len(self.lines)):
            self.proc.stdin.write(self.lines[self.fed])
            self.fed += 1
            if self.fed % pause_every == 0:
                self.proc.stdin.flush()
                time.sleep(pause)
        self.proc.stdin.flush()

    def finish(self, timeout: float) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.feed(len(self.lines))
        self.proc.stdin.close()
        self.proc.wait(timeout=timeout)
        out = self.proc.stdout.read()
        self._err.close()
        assert self.proc.returncode == 0, f"ingest exited {self.proc.returncode}"
        report: dict[str, Any] = json.loads(out)
        return report


def _wait_for_commits(probe: Probe, at_least: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while probe.head() < at_least:
        assert time.monotonic() < deadline, "nothing was committed"
        time.sleep(0.05)


def _assert_exactly_once(url: str, truth: Any, report: dict[str, Any], frames: int) -> None:
    probe = Probe(url)
    try:
        booked = probe.fill_ids()
        assert len(booked) == len(set(booked)) and set(booked) == set(truth.fills)
        assert probe.claim_count() == len(truth.fills)
        assert probe.event_count() == frames + len(truth.fills)
        assert probe.tracking() == probe.head()
    finally:
        probe.close()
    assert report["frames"] == frames
    verify_ok(url)


def _caught_up_after(
    url: str, since: float, ingest: StreamedIngest
) -> tuple[float, dict[str, Any]]:
    """Finish the stream; return the seconds from ``since`` until the projections stood at
    the final log head, and the ingest's report."""
    outcome: dict[str, Any] = {}

    def finish() -> None:
        try:
            outcome["report"] = ingest.finish(120)
        except BaseException as exc:  # reported below, in the test's thread
            outcome["error"] = exc

    finisher = threading.Thread(target=finish)
    finisher.start()
    probe = Probe(url)
    try:
        while finisher.is_alive():
            time.sleep(0.05)
        if "error" in outcome:
            raise AssertionError(f"{outcome['error']}: {ingest.log.read_text()[-1500:]}")
        while probe.tracking() != probe.head():
            time.sleep(0.05)
        return time.monotonic() - since, outcome["report"]
    finally:
        finisher.join(130)
        probe.close()


def test_postgresql_crash_mid_stream(
    private_pg: PrivatePostgres, capture_factory: Callable[..., Any], tmp_path: Path
) -> None:
    capture, truth = capture_factory(FRAMES, SEED)
    url = private_pg.url()
    ingest = StreamedIngest(url, capture, tmp_path / "ingest.log")
    probe = Probe(url)
    crashes = 3 if LONG else 1
    try:
        for k in range(crashes):
            ingest.feed(int(len(ingest.lines) * (k + 1) / (crashes + 2)))
            _wait_for_commits(probe, 1)
            probe.close()
            private_pg.crash()
            time.sleep(2.0)  # down for a while: the ingest must wait, not give up
            private_pg.start()
        up = time.monotonic()
    finally:
        probe.close()
    seconds, report = _caught_up_after(url, up, ingest)
    _assert_exactly_once(url, truth, report, FRAMES)
    assert seconds < CATCH_UP_LIMIT_S, f"projections at the head {seconds:.1f}s after restart"
    print(
        f"\nFIGURES pg-crash: {crashes} immediate restart(s) mid-stream, {FRAMES} frames, "
        f"{len(truth.fills)} fills once each, projections at head {seconds:.1f}s after the "
        f"database came back (incl. the rest of the stream)"
    )


def test_connection_cut_by_a_proxy_mid_stream(
    pg_url: str, capture_factory: Callable[..., Any], tmp_path: Path
) -> None:
    capture, truth = capture_factory(FRAMES, SEED)
    server, dbname = pg_url.rsplit("/", 1)
    host_port = server.rsplit("@", 1)[1]
    host, port = host_port.split(":")
    proxy = CuttingProxy(host, int(port))
    url = f"postgresql://postgres@127.0.0.1:{proxy.port}/{dbname}"
    cuts = 4 if LONG else 2
    try:
        ingest = StreamedIngest(url, capture, tmp_path / "ingest.log")
        probe = Probe(pg_url)  # straight to the server: the probe is not under test
        try:
            for k in range(cuts):
                ingest.feed(int(len(ingest.lines) * (k + 1) / (cuts + 2)))
                _wait_for_commits(probe, 1)
                proxy.cut(refuse_for=1.5)
                time.sleep(1.5)
            up = time.monotonic()
        finally:
            probe.close()
        seconds, report = _caught_up_after(pg_url, up, ingest)
    finally:
        proxy.close()
    assert proxy.cuts == cuts
    _assert_exactly_once(pg_url, truth, report, FRAMES)
    assert seconds < CATCH_UP_LIMIT_S
    # The same stream on a calm database gives the same state.
    calm = str(tmp_path / "calm.sqlite")
    calm_ingest = StreamedIngest(calm, capture, tmp_path / "calm.log")
    calm_ingest.finish(120)
    assert state_hash(pg_url) == state_hash(calm)
    print(
        f"\nFIGURES proxy-cut: {cuts} cuts (RST + 1.5 s refused) mid-stream, {FRAMES} frames, "
        f"{len(truth.fills)} fills once each, at head {seconds:.1f}s after the link came back"
    )
