"""Micro-benchmarks of raftlib's hot path: compiled ``raftlib._core`` vs pure ``raftlib._pycore``.

Each case drives the public API exactly the way the Raft core calls it from
Python (one call per message / ack / lookup), on inputs built outside the timed
region, and takes the best of ``--repeat`` runs measured with
``time.perf_counter``.  One JSON object per case goes to stdout::

    {"name": ..., "ops": ..., "compiled_ops_per_s": ..., "pure_ops_per_s": ..., "ratio": ...}

and a human-readable table to stderr.  ``--scale 0.1`` runs everything ten
times smaller (a smoke test).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

# Measure the checkout this file belongs to.  Run as a script, sys.path[0] is benchmarks/, so a plain
# import would resolve through site-packages -- with an editable install made from another worktree,
# that worktree's code (and its compiled extension) would be measured instead.
_CHECKOUT = Path(__file__).resolve().parent.parent
if (_CHECKOUT / "raftlib" / "__init__.py").is_file():
    sys.path.insert(0, str(_CHECKOUT))

from raftlib import _pycore  # noqa: E402

try:
    from raftlib import _core
except ImportError:  # pragma: no cover - the benchmark needs the extension
    _core = None

Timed = Callable[[], None]


Case = Callable[[ModuleType, float], tuple[int, Callable[[], Timed]]]


def best_of(repeat: int, make_runs: list[Callable[[], Timed]]) -> list[float]:
    """Best wall time of ``repeat`` runs of each ``make_runs[i]()`` (prepared outside the timing).

    The implementations are interleaved within each repetition so that a noisy
    (shared) machine disturbs both alike.
    """
    best = [float("inf")] * len(make_runs)
    for _ in range(repeat):
        for k, make_run in enumerate(make_runs):
            run = make_run()
            t0 = time.perf_counter()
            run()
            best[k] = min(best[k], time.perf_counter() - t0)
    return best


# -- follower append ---------------------------------------------------------------------------


Message = tuple[int, int, int, list[tuple[int, int]]]


def follower_schedule(n_entries: int, batch: int, seed: int) -> list[Message]:
    """AppendEntries (prev_index, prev_term, committed, [(index, term), ...]) as a leader sends them.

    About every 100th message overlaps the tail and carries a higher term (a new
    leader overwriting a few uncommitted entries); the committed index trails
    the log by at least a batch.
    """
    rng = random.Random(seed)
    terms = [0]  # index -> term of the follower log after each message
    term = 1
    msgs = []
    sent = 0
    while sent < n_entries:
        last = len(terms) - 1
        if last > 2 * batch and rng.randrange(100) == 0:
            term += 1
            prev = last - rng.randint(2, 8)
        else:
            prev = last
        committed = max(0, last - 2 * batch)
        specs = [(prev + 1 + k, term) for k in range(batch)]
        msgs.append((prev, terms[prev], committed, specs))
        del terms[prev + 1 :]
        terms.extend(t for _, t in specs)
        sent += batch
    return msgs


def case_follower_append(mod: ModuleType, scale: float) -> tuple[int, Callable[[], Timed]]:
    schedule = follower_schedule(int(1_000_000 * scale), 64, seed=1)
    payload = b"x" * 16
    messages = [
        (prev, prev_term, committed, [mod.Entry(i, t, payload) for i, t in specs])
        for prev, prev_term, committed, specs in schedule
    ]
    n_ops = sum(len(m[3]) for m in messages)

    def make_run() -> Timed:
        log = mod.Log()

        def run() -> None:
            maybe_append = log.maybe_append
            for prev, prev_term, committed, entries in messages:
                if maybe_append(prev, prev_term, committed, entries) < 0:
                    raise AssertionError("benchmark schedule was rejected")

        return run

    return n_ops, make_run


# -- term lookups -------------------------------------------------------------------------------


def case_term_lookup(mod: ModuleType, scale: float) -> tuple[int, Callable[[], Timed]]:
    n = int(1_000_000 * scale)
    log = mod.Log()
    chunk = 10_000
    for start in range(1, n + 1, chunk):
        log.append([mod.Entry(i, 1 + i // 50_000) for i in range(start, min(n, start + chunk - 1) + 1)])
    rng = random.Random(2)
    indexes = [rng.randint(1, n) for _ in range(n)]

    def make_run() -> Timed:
        def run() -> None:
            term = log.term
            for i in indexes:
                term(i)

        return run

    return n, make_run


# -- commit index -------------------------------------------------------------------------------


def case_commit_index(mod: ModuleType, voters: int, scale: float) -> tuple[int, Callable[[], Timed]]:
    n = int(1_000_000 * scale)
    rng = random.Random(3 + voters)
    slots = [rng.randrange(voters) for _ in range(n)]
    indexes = list(range(1, n + 1))  # acks carry ever larger match indexes
    pairs = list(zip(slots, indexes, strict=True))

    def make_run() -> Timed:
        tracker = mod.QuorumTracker(voters)
        tracker.set_config(range(voters))

        def run() -> None:
            ack = tracker.set_match_and_commit
            for slot, index in pairs:
                ack(slot, index)

        return run

    return n, make_run


CASES: dict[str, Case] = {
    "follower_append_1M_batch64": case_follower_append,
    "term_lookup_1M": case_term_lookup,
    "commit_index_3_voters": lambda m, s: case_commit_index(m, 3, s),
    "commit_index_5_voters": lambda m, s: case_commit_index(m, 5, s),
    "commit_index_7_voters": lambda m, s: case_commit_index(m, 7, s),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=3, help="repetitions per case (best is kept)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every case's size")
    parser.add_argument("cases", nargs="*", help=f"cases to run (default: all): {', '.join(CASES)}")
    args = parser.parse_args(argv)
    unknown = set(args.cases) - set(CASES)
    if unknown:
        parser.error(f"unknown case(s): {', '.join(sorted(unknown))}")
    if _core is None:
        print("raftlib._core is not built: run `make build` first", file=sys.stderr)
        return 2
    print(f"measuring {_core.__file__} against {_pycore.__file__}", file=sys.stderr)
    rows: list[dict[str, Any]] = []
    for name in args.cases or list(CASES):
        n_c, run_c = CASES[name](_core, args.scale)
        n_p, run_p = CASES[name](_pycore, args.scale)
        assert n_c == n_p
        t_c, t_p = best_of(args.repeat, [run_c, run_p])
        row = {
            "name": name,
            "ops": n_c,
            "compiled_ops_per_s": round(n_c / t_c),
            "pure_ops_per_s": round(n_p / t_p),
            "ratio": round(t_p / t_c, 2),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(f"\n{'case':<28} {'compiled ops/s':>15} {'pure ops/s':>13} {'ratio':>7}", file=sys.stderr)
    for r in rows:
        print(
            f"{r['name']:<28} {r['compiled_ops_per_s']:>15,} {r['pure_ops_per_s']:>13,} {r['ratio']:>6.1f}x",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
