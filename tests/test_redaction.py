"""The API key never appears in any output: log lines (library records and tracebacks
included), error messages, captures, the database, or anything a command prints."""

from __future__ import annotations

import io
import json
import logging
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest
import structlog
from live_helpers import REPO, ledger_env, local_exchange, new_key, run_args, start_ledger

from adapters.deltadefi.exchange import Faults, SessionSource
from ledger.logging import configure_logging, get_logger, redact, register_secret


def forms(key: str) -> list[str]:
    return [key, quote(key, safe=""), quote_plus(key)]


def assert_absent(key: str, text: str | bytes, where: str) -> None:
    blob = text if isinstance(text, bytes) else text.encode()
    for form in forms(key):
        assert form.encode() not in blob, f"the key appears in {where}"


@pytest.fixture
def log_buffer() -> Iterator[io.StringIO]:
    buffer = io.StringIO()
    configure_logging("debug", "console", stream=buffer)
    yield buffer
    structlog.reset_defaults()
    for handler in list(logging.getLogger().handlers):
        logging.getLogger().removeHandler(handler)


def test_log_lines_and_tracebacks_are_redacted(log_buffer: io.StringIO) -> None:
    key = "ddk/" + new_key() + "+=&"  # characters that URL-encoding changes
    register_secret(key)
    unregistered = new_key()
    log = get_logger("test.redaction")
    log.info(
        "connecting", url=f"wss://stream.example/accounts/stream?api_key={quote(key, safe='')}"
    )
    log.info(f"a message that embeds {key}")
    log.warning("nested", data={"headers": {"X-API-KEY": key}, "keys": [key, quote_plus(key)]})
    log.info("credential shapes", url=f"https://h/?a=1&api_key={unregistered}&b=2")
    log.info("header shape", header=f"X-API-KEY: {unregistered}")
    logging.getLogger("websockets.client").debug("> GET /accounts/stream?api_key=%s HTTP/1.1", key)
    try:
        raise RuntimeError(f"failed while using {key}")
    except RuntimeError:
        log.exception("with a traceback")
    try:
        raise ValueError(f"stdlib path {key}")
    except ValueError:
        logging.getLogger("some.library").exception("library traceback")
    output = log_buffer.getvalue()
    for needle in (
        "connecting",
        "embeds",
        "nested",
        "with a traceback",
        "library traceback",
        "GET",
    ):
        assert needle in output  # the lines are written...
    assert "Traceback (most recent call last)" in output and "RuntimeError" in output
    assert_absent(key, output, "log output")  # ...with the key masked
    assert unregistered not in output
    assert output.count("***") >= 9
    assert redact(f"?api_key={key}") == "?api_key=***"


def test_an_uncaught_exception_prints_a_redacted_traceback() -> None:
    key = new_key()
    code = (
        "import sys\n"
        "from ledger.logging import install_excepthook, register_secret\n"
        "register_secret(sys.argv[1]); install_excepthook()\n"
        "raise RuntimeError('bad key ' + sys.argv[1])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, key], capture_output=True, cwd=REPO, timeout=30, check=False
    )
    assert done.returncode == 1
    assert b"Traceback" in done.stderr and b"RuntimeError: bad key ***" in done.stderr
    assert_absent(key, done.stderr, "the traceback")


class EchoingSession(SessionSource):
    """A session in which the exchange once echoes the key inside a frame."""

    def __init__(self, key: str) -> None:
        super().__init__(1200, seed=13)
        self.key = key

    def frames(self) -> Iterator[str | bytes]:
        for index, frame in enumerate(super().frames()):
            if index == 40:
                yield json.dumps(
                    {
                        "type": "Account",
                        "sub_type": "dlta_points",
                        "dlta_points": {"delta": 1, "source_type": "api", "source_ref": self.key},
                    }
                )
            yield frame


def test_ledger_run_never_writes_the_key_anywhere(tmp_path: Path) -> None:
    key = new_key()
    db = str(tmp_path / "ledger.sqlite")
    capture = tmp_path / "capture.jsonl"
    faults = Faults(
        drop_every=200, lose_on_drop=10, rate_limit_every=3, rate_limit_burst=2, seed=13
    )
    env = ledger_env(key, DELTADEFI_REST_MIN_INTERVAL="0")
    with local_exchange(key, rate=800, faults=faults, source=lambda: EchoingSession(key)) as ex:
        run = start_ledger(
            db,
            run_args(
                ex, "--duration", "2.5", "--capture", str(capture), "--log-level", "debug", "--json"
            ),
            env,
            tmp_path,
        )
        out, err = run.communicate(timeout=60)
        wrong = subprocess.run(
            [sys.executable, "-m", "ledger.cli", "--db", db, *run_args(ex)],
            capture_output=True,
            cwd=tmp_path,
            env=ledger_env(key + "-revoked", LEDGER_DEBUG="1"),
            timeout=60,
            check=False,
        )
    assert run.returncode == 0, err.decode()
    stats = json.loads(out.decode())
    assert stats["secrets_masked"] >= 1 and stats["fills_new"] > 0
    assert b"stream.connected" in err and b"rest.retry" in err  # debug logs were written
    assert wrong.returncode == 2 and b"refused the API key" in wrong.stderr

    outputs: dict[str, bytes] = {
        "ledger run stdout": out,
        "ledger run stderr": err,
        "the 401 run's output": wrong.stdout + wrong.stderr,
        "the capture": capture.read_bytes(),
    }
    for path in tmp_path.glob("ledger.sqlite*"):
        outputs[path.name] = path.read_bytes()
    with sqlite3.connect(db) as conn:
        outputs["the database dump"] = "\n".join(conn.iterdump()).encode()
    for command in (["status", "--json"], ["rejects", "--json"], ["fills", "--json"], ["balances"]):
        shown = subprocess.run(
            [sys.executable, "-m", "ledger.cli", "--db", db, *command],
            capture_output=True,
            cwd=tmp_path,
            env=ledger_env(key),
            timeout=60,
            check=False,
        )
        assert shown.returncode == 0, shown.stderr.decode()
        outputs[f"ledger {command[0]}"] = shown.stdout + shown.stderr
    assert len(outputs["the capture"].splitlines()) > 100
    for where, blob in outputs.items():
        assert_absent(key, blob, where)
        assert_absent(key + "-revoked", blob, where)
