"""Smoke test of benchmarks/bench_kv.py: a short run with each load generator prints one
well-formed JSON line per (system, api, op, clients), with no failed request.

The figures themselves are machine-dependent and not asserted (docs/performance.md holds a full
run); the rules checked are the benchmark's output contract (issue 14 §4) and that the compiled
generators' answers are really checked: h2load cannot read gRPC trailers, so a store that answered
every call with an error status must show up in ``errors`` (the leader's OK count).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIELDS = {
    "system", "api", "op", "concurrency", "generator", "ops_per_s", "p50_ms", "p99_ms", "errors", "ops",
    "client_cpu", "leader_cpu", "cluster_cpu", "leader_cpu_us_per_op",
}  # fmt: skip


def _run(*args: str) -> list[dict[str, object]]:
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_kv.py"), "--systems", "raftlib", "--seconds", "1",
           "--warmup", "0.5", "--rounds", "1", "--concurrency", "1,4", *args]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "raftlib build: " in proc.stderr
    return [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]


def _check(lines: list[dict[str, object]], generator: str, apis: list[str]) -> None:
    keys = sorted((str(r["api"]), str(r["op"]), int(str(r["concurrency"]))) for r in lines)
    assert keys == sorted((a, o, c) for a in apis for o in ("put", "range") for c in (1, 4))
    for r in lines:
        assert set(r) >= FIELDS, FIELDS - set(r)
        assert r["system"] == "raftlib" and r["generator"] == generator
        assert r["errors"] == 0, r
        assert float(str(r["ops_per_s"])) > 0 and float(str(r["p50_ms"])) > 0, r


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("h2load") is None or shutil.which("wrk") is None,
                    reason="h2load/wrk not installed (scripts/install-loadgen.sh)")  # fmt: skip
def test_native_generators_h2load_and_wrk_print_a_line_per_configuration() -> None:
    _check(_run("--generator", "native"), "native", ["grpc", "gateway"])


@pytest.mark.slow
def test_python_generator_prints_a_line_per_configuration() -> None:
    _check(_run("--generator", "python"), "python", ["grpc", "gateway"])


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("h2load") is None, reason="h2load missing (scripts/install-loadgen.sh)")
def test_h2load_counts_grpc_error_statuses_as_errors() -> None:
    """Puts of an empty key answer INVALID_ARGUMENT in the trailers of an HTTP 200: each one is an
    error, found from the leader's grpc_server_handled_total{grpc_code="OK"}."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import bench_kv

    original = bench_kv.grpc_requests
    try:
        from examples.kvstore.proto.stubs import rpc_pb2

        bench_kv.grpc_requests = lambda op, n: [rpc_pb2.PutRequest(key=b"", value=b"x").SerializeToString()]
        import asyncio
        import tempfile

        sys.path.insert(0, str(ROOT / "tests"))
        from kvcluster import KVCluster

        with tempfile.TemporaryDirectory() as tmp, KVCluster("raftlib", Path(tmp) / "c") as cluster:
            url = cluster.members[cluster.leader()].client_url
            measure = bench_kv.Measure([cluster.members[cluster.leader()].pid or 0], 1.0, None)
            work = Path(tmp) / "load"
            work.mkdir()
            res = asyncio.run(bench_kv.run_h2load(url, "put", 2, 0.0, 100, measure, work))
        assert res["ops"] == 0 and res["errors"] > 0, res
    finally:
        bench_kv.grpc_requests = original
