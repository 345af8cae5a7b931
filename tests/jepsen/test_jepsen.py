"""Jepsen-style tests of examples.kvstore over real partitions (network namespaces + iptables).

Slow: run by ``make test-slow`` (the short CI version: RAFTLIB_JEPSEN_RUNS runs of
RAFTLIB_JEPSEN_DURATION seconds, default 3 x 60 s, plus the stale-read control), ``make jepsen-short``
(the same, alone) and ``make jepsen`` (longer runs, 5-member clusters too).  Skipped, with the
reason, when not root, when ``ip``/``iptables`` are missing or namespaces cannot be created.

Environment: RAFTLIB_JEPSEN_RUNS, RAFTLIB_JEPSEN_DURATION (s), RAFTLIB_JEPSEN_MEMBERS (e.g. "3,5":
cycled over the runs), RAFTLIB_JEPSEN_SEED (first seed), RAFTLIB_JEPSEN_FAULTS (comma list, default
partitions + kill + pause), RAFTLIB_JEPSEN_LOG (append one JSON summary per run to this file).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from . import netns
from .nemesis import DEFAULT_FAULTS
from .runner import RunConfig, RunResult, run_once

RUNS = int(os.environ.get("RAFTLIB_JEPSEN_RUNS", "3"))
DURATION = float(os.environ.get("RAFTLIB_JEPSEN_DURATION", "60"))
MEMBERS = [int(x) for x in os.environ.get("RAFTLIB_JEPSEN_MEMBERS", "3").split(",") if x]
SEED0 = int(os.environ.get("RAFTLIB_JEPSEN_SEED", "1"))
FAULTS = [f for f in os.environ.get("RAFTLIB_JEPSEN_FAULTS", ",".join(DEFAULT_FAULTS)).split(",") if f]
LOG = os.environ.get("RAFTLIB_JEPSEN_LOG")

pytestmark = pytest.mark.slow

_reason: list[str | None] = []


def _skip_unless_possible() -> None:
    if not _reason:
        _reason.append(netns.unavailable_reason())
    if _reason[0]:
        pytest.skip(f"Jepsen-style tests need real network namespaces: {_reason[0]}")


def _record(kind: str, res: RunResult) -> None:
    d = res.as_dict()
    line = {"test": kind, "when": time.strftime("%Y-%m-%dT%H:%M:%S"), **d}
    short = (f"[jepsen {kind}] seed {res.config['seed']} members {res.config['members']} "
             f"{res.config['duration']}s: ops {sum(res.ops.values())} {res.ops} faults "
             f"{[f['fault'] + ':' + str(f['recovery_s']) for f in res.faults]} check {res.check_status} "
             f"(in {res.check_elapsed_s} s) final recovery {res.final_recovery_s} "
             f"max recovery {res.max_recovery_s}")
    print(short)
    if LOG:
        Path(LOG).parent.mkdir(parents=True, exist_ok=True)
        with open(LOG, "a") as f:
            f.write(json.dumps(line, default=str) + "\n")


CASES = [(SEED0 + k, MEMBERS[k % len(MEMBERS)]) for k in range(RUNS)]


@pytest.mark.parametrize(("seed", "members"), CASES, ids=[f"seed{s}-{m}members" for s, m in CASES])
def test_linearizable_under_faults(seed: int, members: int) -> None:
    """Partitions, kill -9 + restart, pauses: the history stays linearizable and the cluster recovers."""
    _skip_unless_possible()
    res = run_once(RunConfig(seed=seed, members=members, duration=DURATION, faults=FAULTS))
    _record("faults", res)
    assert res.faults, "the nemesis injected no fault"
    assert sum(res.ops.values()) > 100, f"too few operations: {res.ops}"
    assert res.passed, "\n".join(res.problems) + "\n" + res.check_detail


def test_stale_reads_are_caught() -> None:
    """Teeth: the same machinery with serializable (local) reads must produce a violation.

    A follower is isolated for several seconds at a time while the majority keeps accepting writes;
    the clients bound to it keep reading locally, so they see stale values after newer writes were
    acknowledged.  If the checker does not flag that, the test above is not strong enough.
    """
    _skip_unless_possible()
    results = []
    for seed in (SEED0 + 100, SEED0 + 101, SEED0 + 102):
        res = run_once(RunConfig(seed=seed, members=3, duration=min(DURATION, 30.0),
                                 faults=["isolate-follower"], serializable_reads=True,
                                 quiet=(1.0, 2.0), hold=(5.0, 8.0)))
        _record("stale-read-control", res)
        results.append(res)
        if res.check_status == "violation":
            break
    statuses = [r.check_status for r in results]
    assert "violation" in statuses, (
        f"serializable reads from an isolated follower were never caught as non-linearizable: {statuses}")
    caught = next(r for r in results if r.check_status == "violation")
    print(caught.check_detail[:3000])
