"""What observers cost: process CPU time per proposal, with no observer, a no-op one, the Prometheus one.

One RaftNode alone in its cluster (memory transport and storage, so the figure is the node's own
CPU, not the disk's), ``--concurrency`` closed-loop proposers of 1-byte commands on a state
machine that does nothing. Each mode runs in a fresh process; the modes alternate for
``--rounds`` rounds and the median is reported (the machine's noise is a few %).

Output: one JSON object per line on stdout (``mode``, ``concurrency``, ``proposals``,
``us_cpu_per_proposal_median``, ``us_cpu_per_proposal_min``). docs/observability.md quotes it::

    .venv/bin/python benchmarks/bench_observe.py [--rounds 6] [--proposals 96000] [--concurrency 64]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from typing import Any

MODES = ("none", "noop", "prometheus")


async def measure(mode: str, proposals: int, concurrency: int) -> float:
    """CPU seconds per proposal of one node in ``mode``."""
    import raftlib
    from raftlib import NodeConfig, RaftNode, StateMachine
    from raftlib.storage import MemoryStorage
    from raftlib.transport.memory import MemoryNetwork, MemoryTransport

    class Nothing(StateMachine):
        def apply(self, command: bytes, index: int) -> Any:
            return None

        def snapshot(self) -> bytes:
            return b""

        def restore(self, data: bytes) -> None:
            pass

    observers: list[raftlib.Observer] = []
    if mode == "noop":
        observers = [raftlib.Observer()]
    elif mode == "prometheus":
        from prometheus_client import CollectorRegistry

        from raftlib.prometheus import RaftMetrics

        observers = [RaftMetrics(CollectorRegistry()).observer()]
    node = RaftNode(
        "n1",
        {"n1": "mem://n1"},
        Nothing(),
        config=NodeConfig(tick_interval=0.01, election_tick=10, heartbeat_tick=1),
        transport=MemoryTransport("n1", MemoryNetwork()),
        storage=MemoryStorage(),
        observers=observers,
    )
    async with node:
        await node.wait_leader(5)

        async def proposer(n: int) -> None:
            for _ in range(n):
                await node.propose(b"x")

        await asyncio.gather(*(proposer(100) for _ in range(concurrency)))  # warm-up
        each = max(1, proposals // concurrency)
        started = time.process_time()
        await asyncio.gather(*(proposer(each) for _ in range(concurrency)))
        return (time.process_time() - started) / (each * concurrency)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--proposals", type=int, default=96_000)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--one", choices=MODES, help=argparse.SUPPRESS)  # a child process: one measure
    args = ap.parse_args()
    if args.rounds < 1 or args.proposals < 1 or args.concurrency < 1:
        ap.error("--rounds, --proposals and --concurrency must be positive")
    if args.one:
        print(asyncio.run(measure(args.one, args.proposals, args.concurrency)))
        return
    results: dict[str, list[float]] = {m: [] for m in MODES}
    for _ in range(args.rounds):
        for mode in MODES:
            out = subprocess.run(
                [sys.executable, __file__, "--one", mode, "--proposals", str(args.proposals),
                 "--concurrency", str(args.concurrency)],
                capture_output=True, text=True, check=True, timeout=600,
            )
            results[mode].append(float(out.stdout.strip()) * 1e6)
    for mode, us in results.items():
        print(json.dumps({
            "mode": mode,
            "concurrency": args.concurrency,
            "proposals": args.proposals,
            "us_cpu_per_proposal_median": round(statistics.median(us), 3),
            "us_cpu_per_proposal_min": round(min(us), 3),
        }))


if __name__ == "__main__":
    main()
