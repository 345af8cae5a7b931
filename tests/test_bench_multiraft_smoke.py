"""Smoke test of benchmarks/bench_multiraft.py: a --quick --memory run prints one well-formed
JSON line per system and group count, replicas checked, and the targets judged on stderr.

The figures themselves are machine-dependent and not asserted (the lead's full run reports
them); the rules checked are the output contract of the benchmark (issue 12, section 6).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

import raftlib

ROOT = Path(__file__).resolve().parent.parent
RAFT_FIELDS = {
    "system", "groups", "writers", "writes_per_s", "p50_ms", "p99_ms", "fsyncs_per_s_per_host",
    "idle_cpu_per_host", "idle_cpu_mean", "idle_cpu_max", "rss_mb_per_host", "compiled",
    "writes_ratio_vs_1_group", "fsync_ratio_vs_1_group", "ratio_vs_pysyncobj", "leaders_per_host",
    "quiesced_per_host", "checked_keys",
}


@pytest.mark.slow
def test_quick_run_prints_a_complete_line_per_system_and_group_count() -> None:
    has_pso = importlib.util.find_spec("pysyncobj") is not None
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_multiraft.py"), "--quick", "--memory"]
    if not has_pso:
        cmd.append("--no-pysyncobj")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
    raft = {r["groups"]: r for r in lines if r["system"] == "raftlib"}
    assert sorted(raft) == [1, 10], "one raftlib line per group count of --quick"
    for g, r in raft.items():
        assert set(r) >= RAFT_FIELDS, f"missing fields: {RAFT_FIELDS - set(r)}"
        assert r["writers"] == 64 and r["writes_per_s"] > 0
        assert 0 < r["p50_ms"] <= r["p99_ms"]
        assert r["fsyncs_per_s_per_host"] > 0 and all(f > 0 for f in r["fsyncs_per_s_by_host"]), (
            "every host writes (the followers too) during the measured window")
        assert len(r["idle_cpu_per_host"]) == 3 and all(c >= 0 for c in r["idle_cpu_per_host"])
        assert len(r["rss_mb_per_host"]) == 3 and all(m > 0 for m in r["rss_mb_per_host"])
        assert sum(r["leaders_per_host"]) == g, "every group had a leader"
        assert r["quiesced_per_host"] == [g, g, g], "the idle window starts once every group quiesced"
        assert r["idle_fsyncs_per_host"] == [0, 0, 0], "quiesced groups write nothing"
        assert r["checked_keys"] >= r["writes"]
        assert r["compiled"] is raftlib.COMPILED
    assert raft[1]["writes_ratio_vs_1_group"] == 1.0 and raft[10]["writes_ratio_vs_1_group"] > 0
    assert "idle groups cost" in proc.stderr and ("PASS" in proc.stderr or "FAIL" in proc.stderr)
    if not raftlib.COMPILED:
        assert "NOT in use" in proc.stderr, "a pure-Python run is flagged loudly"
    pso = {r["groups"]: r for r in lines if r["system"] == "pysyncobj"}
    if has_pso:
        assert sorted(pso) == [1, 10]
        for g, r in pso.items():
            if "stopped" in r:
                continue
            assert r["writes_per_s"] > 0 and len(r["idle_cpu_per_host"]) == 3
            assert sum(r["leaders_per_host"]) == g
            assert raft[g]["ratio_vs_pysyncobj"] == pytest.approx(
                raft[g]["writes_per_s"] / r["writes_per_s"], rel=1e-2)
    else:
        assert not pso
