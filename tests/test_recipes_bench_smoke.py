"""Smoke test of benchmarks/bench_recipes.py's plumbing: tiny durations, one concurrency.

It starts four real 3-process clusters (raftlib and PySyncObj, dict and lock: 10-20 s on the
shared VM), so it is marked slow (`make test-slow`), and is skipped when PySyncObj is not installed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("pysyncobj")

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "bench_recipes.py"


@pytest.mark.slow
def test_bench_recipes_runs_both_recipes_and_reports_json_lines() -> None:
    args = [sys.executable, str(SCRIPT), "--seconds", "0.3", "--warmup", "0.1", "--concurrency", "4",
            "--pso-variants", "nobatch"]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=180, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(x) for x in proc.stdout.splitlines() if x.strip()]
    assert [(x["recipe"], x["system"]) for x in lines] == [
        ("dict", "raftlib"), ("dict", "pysyncobj"), ("lock", "raftlib"), ("lock", "pysyncobj"),
    ]
    for x in lines:
        assert x["concurrency"] == 4
        assert x["ops_per_s"] > 0 and 0 < x["p50_ms"] <= x["p99_ms"]
    for raft, pso in (lines[0:2], lines[2:4]):
        assert raft["ratio"] == pytest.approx(raft["ops_per_s"] / pso["ops_per_s"], rel=0.01)
        assert isinstance(raft["compiled"], bool)
