"""The benchmarks still run (tiny sizes; no timing assertions - figures come from bench/)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_bench(script: str, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_scale_bench_runs_and_verifies_tables(tmp_path: Path) -> None:
    out = tmp_path / "scale.json"
    run_bench(
        "scale.py",
        *("--nodes", "8", "--pods-per-node", "5", "--churn-rate", "10", "--duration", "2"),
        *("--workers", "2", "--naive-agents", "4", "--output", str(out)),
        timeout=240,
    )
    result = json.loads(out.read_text())
    assert result["sync_tables_exact"] == "8/8"
    assert result["churn_tables_exact"] == "8/8"
    assert result["api_bytes_ratio_naive_over_collector"] > 0


def test_reducer_bench_runs(tmp_path: Path) -> None:
    proc = run_bench(
        "reducer.py",
        *("--nodes", "50", "--pods-per-node", "10", "--changes", "2000", "--runs", "1"),
        timeout=120,
    )
    assert "changes_per_s_median" in proc.stdout
