"""Secrets and permissions: owner-only SQLite files, no database password in any output,
and SQL that is parameterised (bandit clean, with a canary proving bandit would object).

The API key's own redaction (logs, tracebacks, captures, the database) is tested with
the live path; here, the database URL's password, which every command takes.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from reliability._support import REPO, child_env, ledger_cmd, run_ledger
from reliability.faults import free_port

PASSWORD = "S3cret-Passw0rd-do-not-print"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_sqlite_database_wal_and_shm_are_created_owner_only(tmp_path: Path) -> None:
    """Even under umask 000 (everything world-writable by default)."""
    db = tmp_path / "ledger.sqlite"
    script = textwrap.dedent(
        f"""
        import json, os, stat
        os.umask(0)
        from ledger.bootstrap import open_ledger
        from projections.runner import verify
        services = open_ledger({str(db)!r})
        frame = b'{{"type":"fill","fillId":"p1","symbol":"ADAUSDM","side":"buy","price":"0.5",' \\
            b'"quantity":"2","timestamp":"2026-03-20T10:00:00Z"}}'
        services.ledger.ingest_lines([(1, frame)], "perm")
        services.projector.catch_up()
        assert verify(services.db).ok
        modes = {{}}
        for suffix in ("", "-wal", "-shm"):
            path = {str(db)!r} + suffix
            modes[suffix or "db"] = stat.S_IMODE(os.stat(path).st_mode) if os.path.exists(path) else None
        print(json.dumps(modes))
        services.close()
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, env=child_env(),
        timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    modes = json.loads(proc.stdout)
    assert modes["db"] == 0o600
    assert modes["-wal"] == 0o600 and modes["-shm"] == 0o600, modes
    # And through the command line, under umask 000 as well.
    cli_db = tmp_path / "cli.sqlite"
    subprocess.run(
        ledger_cmd(str(cli_db), "balances"), check=True, capture_output=True, cwd=REPO,
        env=child_env(), preexec_fn=lambda: os.umask(0), timeout=120,
    )  # fmt: skip
    assert _mode(cli_db) == 0o600
    assert all(_mode(p) == 0o600 for p in tmp_path.glob("cli.sqlite-*"))


@pytest.mark.parametrize("command", [["balances"], ["ingest", "-"], ["verify"], ["rebuild"]])
def test_database_password_never_printed(command: list[str], tmp_path: Path) -> None:
    closed = free_port()  # nothing listens there
    for url in (
        f"postgresql://ledger:{PASSWORD}@127.0.0.1:{closed}/ledger",
        f"postgresql://ledger:{PASSWORD}@127.0.0.1:{closed}",  # not even a database name
        f"postgres://ledger:{PASSWORD}@127.0.0.1:not-a-port/ledger",
    ):
        # On the command line, in the environment, and in a .env file.
        for args, env, cwd in (
            (ledger_cmd(url, *command), child_env(), REPO),
            (ledger_cmd("", *command)[:3] + command, child_env(LEDGER_DB=url), REPO),
            (ledger_cmd("", *command)[:3] + command, child_env(), tmp_path),
        ):
            (tmp_path / ".env").write_text(f"LEDGER_DB={url}\n")
            proc = subprocess.run(
                args, input=b"", capture_output=True, cwd=cwd, env=env, timeout=120
            )
            output = proc.stdout + proc.stderr
            assert proc.returncode != 0, output
            assert PASSWORD.encode() not in output, output
            assert b"Traceback" not in output
            assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_password_of_a_reachable_server_never_printed(pg_server: str) -> None:
    """The server answers (role unknown): its refusal is shown, the password is not."""
    host = pg_server.split("@", 1)[1]
    url = f"postgresql://no_such_role_here:{PASSWORD}@{host}/ledger"
    proc = run_ledger(url, "balances", check=False)
    assert proc.returncode != 0
    assert PASSWORD not in proc.stdout + proc.stderr
    assert "no_such_role_here" in proc.stderr  # the message still says what is wrong


BANDIT = Path(sys.executable).with_name("bandit")


@pytest.mark.skipif(not BANDIT.exists(), reason="bandit is in the dev extras")
def test_sql_is_parameterised_bandit_clean(tmp_path: Path) -> None:
    proc = subprocess.run(
        [str(BANDIT), "-q", "-r", "ledger", "projections", "adapters"],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout
    # The canary: the check can fail. Text spliced into SQL is what bandit must report.
    canary = tmp_path / "canary.py"
    canary.write_text(
        "def fills(cur, symbol):\n"
        "    cur.execute(f\"SELECT * FROM ledger_fills WHERE symbol = '{symbol}'\")\n"
    )
    proc = subprocess.run(
        [str(BANDIT), "-q", str(canary)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 1 and "B608" in proc.stdout
