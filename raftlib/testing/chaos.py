"""Random fault schedules for a :class:`~raftlib.testing.SimCluster`.

:func:`chaos` interleaves partitions, crashes, restarts and client proposals,
all drawn from the cluster's own seeded random generator (so a run is replayed
by its seed), then heals everything and checks that the cluster makes progress
again: a leader is elected and a new command commits on every node within a
bounded number of ticks. Safety is checked throughout by the cluster's
invariant checker.

>>> from raftlib.testing import SimCluster
>>> from raftlib.testing.chaos import chaos
>>> c = SimCluster(5, seed=3, drop=0.05, persist_delay=(0, 3))
>>> report = chaos(c, rounds=10)
>>> report.final_index > 0
True
"""

from __future__ import annotations

from dataclasses import dataclass

from raftlib.errors import NotLeader, ProposalDropped
from raftlib.testing.cluster import SimCluster

__all__ = ["ChaosReport", "chaos"]


@dataclass
class ChaosReport:
    """What a :func:`chaos` run did."""

    proposals: int = 0
    """Proposals a leader accepted (they may or may not have committed)."""
    crashes: int = 0
    partitions: int = 0
    final_index: int = 0
    """Index of the command committed after the faults stopped."""
    recovery_ticks: float = 0.0
    """Ticks from the end of the faults until that command was applied everywhere."""


def chaos(
    c: SimCluster,
    *,
    rounds: int = 20,
    max_down: int | None = None,
    round_ticks: tuple[int, int] = (2, 15),
    recovery_ticks: float = 300,
) -> ChaosReport:
    """Run ``rounds`` rounds of random faults and proposals, then heal and check progress.

    ``max_down`` bounds the nodes down at once (default: a minority). Raises
    :class:`~raftlib.testing.SimTimeout` if the healed cluster does not commit
    a new command on every node within ``recovery_ticks``.
    """
    rng = c.rng
    n = len(c.ids)
    if max_down is None:
        max_down = (n - 1) // 2
    rep = ChaosReport()
    for _ in range(rounds):
        r = rng.random()
        up = c.up_ids()
        down = [i for i in c.ids if i not in up]
        if r < 0.15:
            k = rng.randint(1, n - 1)
            shuffled = list(c.ids)
            rng.shuffle(shuffled)
            c.partition(shuffled[:k], shuffled[k:])
            rep.partitions += 1
        elif r < 0.25:
            c.isolate(rng.choice(c.ids))
            rep.partitions += 1
        elif r < 0.4:
            c.heal()
        elif r < 0.55 and len(down) < max_down:
            lead = c.leader()
            c.crash(lead if lead is not None and rng.random() < 0.5 else rng.choice(up))
            rep.crashes += 1
        elif r < 0.7 and down:
            c.restart(rng.choice(down))
        for _ in range(rng.randint(0, 4)):
            try:
                c.propose(b"chaos-%d" % rep.proposals)
                rep.proposals += 1
            except (NotLeader, ProposalDropped):
                pass
        c.run(rng.randint(*round_ticks))
    # Stop the faults and demand progress.
    start = c.ticks
    c.heal()
    c.network.set_faults(drop=0.0, duplicate=0.0, long_delay_prob=0.0)
    for i in c.ids:
        if not c.is_up(i):
            c.restart(i)
    index, _ = c.replicate(b"after-chaos", max_ticks=recovery_ticks)
    c.wait_applied(index, node_ids=c.ids, max_ticks=max(1.0, recovery_ticks - (c.ticks - start)))
    c.check_invariants()
    c.check_agreement()
    rep.final_index = index
    rep.recovery_ticks = c.ticks - start
    return rep
