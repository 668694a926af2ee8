"""The benchmark still runs: ``scripts/bench.py`` at 2,000 frames, one run, both stores,
and its live section for one second at each rate.

No timing is asserted (speed targets live in the benchmark's own output, never in
tests). What is asserted: the command succeeds, its JSON has every section issue 5
asks for, every measured figure is a positive number, the project agreed with
itself (same state hash on both stores), and the markdown and the plot are written.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

FIGURES = (
    "import_seconds",
    "import_frames_per_s",
    "import_fills_per_s",
    "rebuild_seconds",
    "rebuild_events_per_s",
    "rebuild_frames_per_s",
    "verify_seconds",
    "import_peak_rss_mb",
    "rebuild_peak_rss_mb",
)
CEILINGS = (
    "a_sqlite_insert",
    "b_sqlite_read_decode_fold",
    "a_postgresql_insert",
    "a_postgresql_copy",
    "b_postgresql_read_decode_fold",
)
RATIOS = (
    "import_sqlite_vs_ceiling",
    "import_sqlite_vs_baseline_wal",
    "import_sqlite_vs_baseline_default_journal",
    "rebuild_sqlite_vs_ceiling",
    "import_postgresql_vs_ceiling",
    "import_postgresql_vs_copy",
    "rebuild_postgresql_vs_ceiling",
)


def _positive_stat(stat: dict[str, Any], where: str) -> None:
    assert set(stat) == {"median", "min", "max"}, where
    assert 0 < stat["min"] <= stat["median"] <= stat["max"], (where, stat)


def test_bench_runs_at_2000_frames(tmp_path: Path, pg_server: str) -> None:
    out_json, out_md, out_png = tmp_path / "b.json", tmp_path / "b.md", tmp_path / "b.png"
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "bench.py"),
            "--frames",
            "2000",
            "--runs",
            "1",
            "--baseline-fills",
            "50",
            "--pg-server",
            pg_server,
            "--workdir",
            str(tmp_path / "work"),
            "--json",
            str(out_json),
            "--markdown",
            str(out_md),
            "--plot",
            str(out_png),
            "--live-seconds",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out_json.read_text())

    size = result["sizes"]["2000"]
    assert set(size["project"]) == {"sqlite", "postgresql"}
    for kind, project in size["project"].items():
        assert project["frames"] == 2000
        assert project["fills"] > 0 and project["log_events"] > project["frames"]
        for figure in FIGURES:
            _positive_stat(project[figure], f"{kind}.{figure}")
    # What an import wrote is counted for the embedded store only (a server writes its own),
    # and it is at least the new file it leaves.
    sqlite = size["project"]["sqlite"]
    _positive_stat(sqlite["import_file_mb"], "sqlite.import_file_mb")
    assert sqlite["import_written_mb"]["min"] >= sqlite["import_file_mb"]["max"]
    assert "import_written_mb" not in size["project"]["postgresql"]
    assert size["same_state_hash_on_every_store"] is True
    for name in CEILINGS:
        _positive_stat(size["ceilings"][name]["seconds"], name)
        _positive_stat(size["ceilings"][name]["frames_per_s"], name)
    for name in RATIOS:
        assert size["ratios"][name] > 0, name

    baseline = result["baseline"]
    assert baseline["fills"] == 50
    for journal in ("wal", "delete"):
        _positive_stat(baseline[journal]["fills_per_s"], f"baseline.{journal}")

    assert set(result["scaling"]) == {
        "import_sqlite",
        "rebuild_sqlite",
        "import_postgresql",
        "rebuild_postgresql",
    }  # one size: no exponent to fit, but every series is named
    live = result["live"]
    assert live["measured"] is True and live["rates"] == [200, 2000]
    assert set(live["stores"]) == {"sqlite", "postgresql"}
    for kind, per_rate in live["stores"].items():
        assert set(per_rate) == {"200", "2000"}
        for rate, entry in per_rate.items():
            where = f"live.{kind}.{rate}"
            # One second of sending at the rate, every frame booked (no speed is asserted).
            assert entry["sent"] == [int(rate)] and entry["booked"] == entry["sent"], where
            assert entry["every_frame_booked"] is True, where
            for figure in ("p50_ms", "p99_ms", "max_ms"):
                _positive_stat(entry[figure], f"{where}.{figure}")
            assert (
                entry["p50_ms"]["median"] <= entry["p99_ms"]["median"] <= entry["max_ms"]["median"]
            )
            assert set(live["verdicts"][f"{kind}_{rate}"]) == {
                "p99_target_ms",
                "p99_met",
                "keeps_up",
            }
        _positive_stat(per_rate["200"]["floor"]["p99_ms"], f"live.{kind}.floor")

    table = out_md.read_text()
    assert "| import, SQLite: frames/s |" in table and "ceiling (b)" in table
    assert "| SQLite, 200/s |" in table and "| PostgreSQL, 2,000/s |" in table
    assert out_png.read_bytes().startswith(b"\x89PNG")
    assert proc.stdout == table  # the markdown is also what the command prints
