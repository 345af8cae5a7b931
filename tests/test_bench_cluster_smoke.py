"""Smoke test of benchmarks/bench_cluster.py's plumbing: tiny durations, one round, one concurrency.

It starts real 3-process clusters of both systems (6-15 s, so it is marked slow: `make test-slow`), and
is skipped when PySyncObj is not installed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("pysyncobj")

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "bench_cluster.py"


@pytest.mark.slow  # 6-15 s on the shared 2-CPU VM: two 3-process clusters
def test_bench_cluster_runs_and_reports(tmp_path: Path) -> None:
    args = [sys.executable, str(SCRIPT), "--seconds", "0.3", "--warmup", "0.1", "--rounds", "1",
            "--concurrency", "4", "--pso-variants", "nobatch"]
    plot = tmp_path / "plot.png"
    try:
        import matplotlib  # noqa: F401

        args += ["--plot", str(plot)]
    except ImportError:
        plot = None
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(x) for x in proc.stdout.splitlines() if x.strip()]
    assert [x["system"] for x in lines] == ["raftlib", "pysyncobj"]
    raft, pso = lines
    for x in lines:
        assert x["concurrency"] == 4 and x["value_bytes"] == 100
        assert x["writes_per_s"] > 0 and 0 < x["p50_ms"] <= x["p99_ms"]
    assert raft["durable"] is True and pso["durable"] is False
    assert raft["ratio"] == pytest.approx(raft["writes_per_s"] / pso["writes_per_s"], rel=0.01)
    assert pso["config"] == "nobatch" and set(pso["variants"]) == {"nobatch"}
    assert "identical on 3 replicas" in proc.stderr
    if plot is not None:
        assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_pysyncobj_node_percentile_matches_procnode() -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import pysyncobj_node
    finally:
        sys.path.pop(0)
    from raftlib.testing.procnode import _percentile

    values = sorted([0.5, 0.1, 0.9, 0.3, 0.7, 0.2])
    for q in (0.0, 0.5, 0.99, 1.0):
        assert pysyncobj_node._percentile(values, q) == _percentile(values, q)
