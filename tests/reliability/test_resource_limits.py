"""Resource limits: a full disk, a read-only database, a long log rebuilt in bounded memory.

Disk full: the SQLite file lives on a tiny tmpfs (or, where this process may not mount,
under a file-size rlimit, which fails writes with EFBIG the same way). Read-only: that
tmpfs remounted read-only; on PostgreSQL, the database set to read-only transactions.
Pass: one ``error: ...`` line on stderr, no traceback, a non-zero exit; afterwards (disk
grown, write access back) the same command completes, the file passes SQLite's
integrity check, the booked fills are the exchange's, the state hash is a clean run's
and ``ledger verify`` passes.

Rebuild memory: the peak RSS of ``ledger rebuild`` on a log 4x longer may grow by a few
MB at most (the log is streamed a page at a time, never loaded). With
``LEDGER_LONG_TESTS=1`` a 1,000,000-frame log is rebuilt and its peak RSS printed.
"""

from __future__ import annotations

import random
import resource
import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from reliability._support import (
    LONG,
    Probe,
    child_env,
    ledger_cmd,
    run_json,
    run_ledger,
    run_measured,
    state_hash,
    verify_ok,
)

FRAMES = 6000
SEED = 5


class SmallFilesystem:
    """A tmpfs of a few MB mounted for one test (root and CAP_SYS_ADMIN needed)."""

    def __init__(self, where: Path, size: str) -> None:
        self.where = where
        where.mkdir()
        self._mount("-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(where))

    def _mount(self, *args: str) -> None:
        subprocess.run(["mount", *args], check=True, capture_output=True, timeout=30)

    def remount(self, options: str) -> None:
        self._mount("-o", f"remount,{options}", str(self.where))

    def close(self) -> None:
        subprocess.run(["umount", "-l", str(self.where)], capture_output=True, timeout=30)


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[SmallFilesystem | None]:
    try:
        fs = SmallFilesystem(tmp_path / "small", "3m")
    except (subprocess.CalledProcessError, FileNotFoundError, PermissionError):
        yield None  # no mount here: the tests fall back (disk full) or skip (read-only)
        return
    yield fs
    fs.close()


def _one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode != 0, "the command succeeded"
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


def _limit_file_size(limit: int) -> Callable[[], None]:
    def apply() -> None:
        import signal

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a kill
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


@pytest.fixture(scope="module")
def reference(
    capture_factory: Callable[..., Any], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    capture, truth = capture_factory(FRAMES, SEED)
    url = str(tmp_path_factory.mktemp("reference") / "ledger.sqlite")
    run_json(url, "ingest", str(capture))
    return {"capture": capture, "truth": truth, "hash": state_hash(url)}


def _assert_recovered(url: str, reference: dict[str, Any]) -> None:
    run_json(url, "ingest", str(reference["capture"]), "--batch-size", "200")
    if not url.startswith("postgresql://"):
        with sqlite3.connect(url) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    probe = Probe(url)
    try:
        assert sorted(probe.fill_ids()) == sorted(reference["truth"].fills)
    finally:
        probe.close()
    assert state_hash(url) == reference["hash"]
    verify_ok(url)


def test_disk_full_is_one_line_and_loses_nothing(
    small_fs: SmallFilesystem | None, tmp_path: Path, reference: dict[str, Any]
) -> None:
    capture = str(reference["capture"])
    if small_fs is not None:
        url = str(small_fs.where / "ledger.sqlite")
        proc = run_ledger(url, "ingest", capture, "--batch-size", "200", check=False)
    else:
        url = str(tmp_path / "ledger.sqlite")
        proc = subprocess.run(
            ledger_cmd(url, "ingest", capture, "--batch-size", "200"),
            capture_output=True,
            text=True,
            timeout=300,
            env=child_env(),
            preexec_fn=_limit_file_size(3 << 20),  # only sets an rlimit in the child
        )
    message = _one_line_error(proc)
    assert "full" in message or "too large" in message.lower() or "disk" in message, message
    # Full, the ledger still answers: what was committed is consistent and verifiable.
    before = Probe(url)
    try:
        assert 0 < before.claim_count() < len(reference["truth"].fills)
    finally:
        before.close()
    verify_ok(url)
    if small_fs is not None:
        small_fs.remount("size=200m")
    _assert_recovered(url, reference)
    print(f"\nFIGURES disk-full: {message!r}, recovered to the clean run's hash")


def test_read_only_sqlite_is_one_line_and_usable_afterwards(
    small_fs: SmallFilesystem | None, reference: dict[str, Any], capture_factory: Callable[..., Any]
) -> None:
    if small_fs is None:
        pytest.skip("cannot mount a filesystem here to make read-only")
    small_fs.remount("size=200m")
    url = str(small_fs.where / "ledger.sqlite")
    first, _ = capture_factory(1500, SEED + 1)
    run_json(url, "ingest", str(first))
    small_fs.remount("ro")
    message = _one_line_error(run_ledger(url, "ingest", str(reference["capture"]), check=False))
    small_fs.remount("rw")
    verify_ok(url)
    assert run_json(url, "ingest", str(first))["appended"] == 0  # the first import is whole
    print(f"\nFIGURES read-only sqlite: {message!r}")


@pytest.mark.postgres
def test_read_only_postgresql_is_one_line_and_usable_afterwards(
    pg_url: str, reference: dict[str, Any], capture_factory: Callable[..., Any]
) -> None:
    first, _ = capture_factory(1500, SEED + 1)
    run_json(pg_url, "ingest", str(first))
    server, dbname = pg_url.rsplit("/", 1)
    with psycopg.connect(f"{server}/postgres", autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{dbname}" SET default_transaction_read_only = on')
    try:
        message = _one_line_error(
            run_ledger(pg_url, "ingest", str(reference["capture"]), check=False)
        )
        assert "read-only" in message
    finally:
        with psycopg.connect(f"{server}/postgres", autocommit=True) as conn:
            conn.execute(f'ALTER DATABASE "{dbname}" RESET default_transaction_read_only')
    verify_ok(pg_url)
    assert run_json(pg_url, "ingest", str(first))["appended"] == 0
    print(f"\nFIGURES read-only postgresql: {message!r}")


# --- rebuild in bounded memory -------------------------------------------------------------


def write_compact_capture(path: Path, frames: int, seed: int) -> int:
    """Bot-side fills on three markets, each position kept small (as a market maker's is),
    and a balance snapshot every 100 frames. Returns the number of fills."""
    rng = random.Random(seed)
    markets = (("ADAUSDM", "ADA"), ("NIGHTUSDM", "NIGHT"), ("IAGUSDM", "IAG"))
    held = [0, 0, 0]
    fills = 0
    snapshot = (
        '{"type":"Account","sub_type":"balance","balance":[{"asset":"ada","free":1000,'
        '"locked":0},{"asset":"usdm","free":500.25,"locked":0}]}\n'
    )
    with path.open("w") as out:
        for i in range(frames):
            if i % 100 == 99:
                out.write(snapshot)
                continue
            k = i % 3
            symbol, base = markets[k]
            side = "sell" if held[k] > 0 else "buy"
            qty = rng.randint(1, 50)
            held[k] += qty if side == "buy" else -qty
            second, milli = divmod(i, 1000)
            out.write(
                f'{{"type":"fill","fillId":"c{i:08d}","orderId":"o{i // 4:08d}",'
                f'"symbol":"{symbol}","side":"{side}","price":"0.{rng.randint(1000, 9999)}",'
                f'"quantity":"{qty}","timestamp":"2026-03-20T{9 + second // 3600:02d}:'
                f'{second // 60 % 60:02d}:{second % 60:02d}.{milli:03d}Z","commission":"0.001",'
                f'"commissionAsset":"{base if side == "buy" else "USDM"}"}}\n'
            )
            fills += 1
    return fills


def _rebuild_peak_mb(tmp_path: Path, frames: int) -> tuple[float, float, int]:
    capture = tmp_path / f"compact-{frames}.jsonl"
    fills = write_compact_capture(capture, frames, seed=frames)
    url = str(tmp_path / f"compact-{frames}.sqlite")
    run_json(url, "ingest", str(capture), timeout=3600)
    result = run_measured(ledger_cmd(url, "rebuild", "--json"), timeout=3600)
    assert result.returncode == 0, result.stderr
    import json

    payload = json.loads(result.stdout)
    assert payload["fills"] == fills
    return result.max_rss_kb / 1024, float(payload["seconds"]), fills


def test_rebuild_memory_does_not_grow_with_the_log(tmp_path: Path) -> None:
    small, _, _ = _rebuild_peak_mb(tmp_path, 10_000)
    large, seconds, fills = _rebuild_peak_mb(tmp_path, 40_000)
    assert large - small < 16, f"peak RSS {small:.0f} MB -> {large:.0f} MB for 4x the log"
    print(
        f"\nFIGURES rebuild-rss: 10,000 frames {small:.0f} MB, 40,000 frames {large:.0f} MB "
        f"({fills} fills rebuilt in {seconds:.1f}s)"
    )


@pytest.mark.skipif(not LONG, reason="long variant: set LEDGER_LONG_TESTS=1")
def test_million_frame_rebuild_in_bounded_memory(tmp_path: Path) -> None:
    peak, seconds, fills = _rebuild_peak_mb(tmp_path, 1_000_000)
    assert peak < 200, f"peak RSS {peak:.0f} MB"
    print(f"\nFIGURES rebuild-1M: {fills} fills, peak RSS {peak:.0f} MB, {seconds:.0f}s")
