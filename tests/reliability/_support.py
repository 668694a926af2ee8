"""Helpers for the reliability campaign: captures, the CLI as a subprocess, raw probes.

Everything here looks at the databases with plain SQL (``sqlite3``/``psycopg``), not
through the ledger's own code, so an assertion made with it does not trust what it tests.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

REPO = Path(__file__).resolve().parents[2]

#: Long variants (the full 50 kill points, the 1,000,000-frame rebuild, ...) run only when set.
LONG = os.environ.get("LEDGER_LONG_TESTS", "") == "1"

CLAIM_TOPIC = "ledger.events:FillClaimed"


def ledger_cmd(url: str, *args: str) -> list[str]:
    """The ``ledger`` command line, run by this interpreter (the venv the tests run in)."""
    return [sys.executable, "-m", "ledger.cli", "--db", url, *args]


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def run_ledger(
    url: str,
    *args: str,
    timeout: float = 300,
    check: bool = True,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        ledger_cmd(url, *args),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env=env or child_env(),
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"ledger {' '.join(args)} exited {proc.returncode}: {proc.stderr.strip()[-2000:]}"
        )
    return proc


def run_json(url: str, *args: str, timeout: float = 300) -> dict[str, Any]:
    proc = run_ledger(url, *args, "--json", timeout=timeout)
    payload: dict[str, Any] = json.loads(proc.stdout)
    return payload


def state_hash(url: str) -> str:
    return str(run_json(url, "positions")["state_hash"])


def views_without_positions(url: str) -> dict[str, Any]:
    """Every read model, minus the store-assigned log positions.

    PostgreSQL numbers the log from a sequence: a transaction rolled back after its
    INSERT (a kill between INSERT and COMMIT, a lost race) leaves a gap, so two logs with
    the same events in the same order can differ in their numbers. Everything else
    must be identical.
    """
    views: dict[str, Any] = {}
    for method in ("average", "fifo"):
        report = run_json(url, "positions", "--method", method)
        views[f"positions-{method}"] = report["positions"]
        views[f"pnl-{method}"] = run_json(url, "pnl", "--method", method)["totals"]
    views["balances"] = run_json(url, "balances")["balances"]
    views["fills"] = [
        {k: v for k, v in f.items() if k != "log_position"} for f in run_json(url, "fills")["fills"]
    ]
    views["rejects"] = [
        {k: v for k, v in r.items() if k != "log_position"}
        for r in run_json(url, "rejects")["rejected"]
    ]
    return views


def verify_ok(url: str) -> dict[str, Any]:
    proc = run_ledger(url, "verify", "--json", check=False)
    payload: dict[str, Any] = json.loads(proc.stdout)
    assert proc.returncode == 0 and payload["ok"], f"verify failed: {payload} {proc.stderr}"
    return payload


# --- raw probes -----------------------------------------------------------------------


class Probe:
    """Reads log head, tracking position and booked fills with plain SQL, read-only."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.pg = url.startswith("postgresql://")
        self._conn: Any = None

    def _connect(self) -> Any:
        if self._conn is None:
            if self.pg:
                self._conn = psycopg.connect(self.url, autocommit=True, connect_timeout=5)
            else:
                self._conn = sqlite3.connect(
                    f"file:{self.url}?mode=ro", uri=True, isolation_level=None, timeout=30
                )
        return self._conn

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        try:
            cur = self._connect().execute(sql, params)
            return list(cur.fetchall())
        except (sqlite3.OperationalError, psycopg.Error):
            # The table may not exist yet, or the server is restarting: report nothing.
            self.close()
            return []

    def head(self) -> int:
        column = "notification_id" if self.pg else "rowid"
        rows = self._query(f"SELECT max({column}) FROM stored_events")
        return int(rows[0][0] or 0) if rows else 0

    def tracking(self) -> int:
        table = "notification_tracking" if self.pg else "tracking"
        rows = self._query(f"SELECT max(notification_id) FROM {table}")
        return int(rows[0][0] or 0) if rows else 0

    def fill_ids(self) -> list[str]:
        return [str(r[0]) for r in self._query("SELECT fill_id FROM ledger_fills")]

    def claim_count(self) -> int:
        mark = "%s" if self.pg else "?"
        rows = self._query(
            f"SELECT count(*) FROM stored_events WHERE topic = {mark}", (CLAIM_TOPIC,)
        )
        return int(rows[0][0]) if rows else 0

    def event_count(self) -> int:
        rows = self._query("SELECT count(*) FROM stored_events")
        return int(rows[0][0]) if rows else 0

    def count_topics(self, *topics: str) -> int:
        """Events in the log with any of these topics."""
        mark = "%s" if self.pg else "?"
        marks = ", ".join([mark] * len(topics))
        rows = self._query(
            f"SELECT count(*) FROM stored_events WHERE topic IN ({marks})", tuple(topics)
        )
        return int(rows[0][0]) if rows else 0

    def balances(self) -> dict[str, dict[str, Any]]:
        """The balances view: per asset its record (free, locked, expected_total, ...)."""
        return {
            str(asset): json.loads(record)
            for asset, record in self._query("SELECT asset, record FROM ledger_balances")
        }

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None


# --- processes ------------------------------------------------------------------------


@dataclass
class ChildResult:
    returncode: int
    stdout: str
    stderr: str
    max_rss_kb: int


def run_measured(
    cmd: list[str], *, timeout: float, env: dict[str, str] | None = None
) -> ChildResult:
    """Run a command and return its own peak RSS (``wait4``), not the test process's."""
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=REPO,
        env=env or child_env(),
    )
    deadline = time.monotonic() + timeout
    # Drain the pipes in a thread so a chatty child cannot block on a full pipe.
    import threading

    chunks: dict[str, bytes] = {}

    def drain(name: str, stream: Any) -> None:
        chunks[name] = stream.read()

    threads = [
        threading.Thread(target=drain, args=("out", proc.stdout)),
        threading.Thread(target=drain, args=("err", proc.stderr)),
    ]
    for t in threads:
        t.start()
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            proc.kill()
            pid, status, usage = os.wait4(proc.pid, 0)
            for t in threads:
                t.join()
            raise AssertionError(f"{cmd[:6]} did not finish in {timeout}s")
        time.sleep(0.05)
    proc.returncode = os.waitstatus_to_exitcode(status)
    for t in threads:
        t.join()
    return ChildResult(
        proc.returncode,
        chunks.get("out", b"").decode(errors="replace"),
        chunks.get("err", b"").decode(errors="replace"),
        int(usage.ru_maxrss),
    )


def kill9(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
