"""A readable timeline of a simulated 3-node Raft cluster.

Run it with ``python -m raftlib.testing.demo`` (or ``make demo``); ``--seed N``
picks another (deterministic) run. Time is virtual, in ticks (one tick is
100 ms in a real deployment with the default settings).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from raftlib.testing import SimCluster


class KV:
    """A tiny key-value state machine: commands are ``b"key=value"``."""

    def __init__(self) -> None:
        self.data: dict[str, str] = {}

    def apply(self, command: bytes, index: int) -> Any:
        key, _, value = command.decode().partition("=")
        self.data[key] = value
        return value


class Timeline:
    def __init__(self, c: SimCluster, out: Any) -> None:
        self.c = c
        self.out = out

    def say(self, text: str) -> None:
        print(f"[t={self.c.ticks:6.1f}] {text}", file=self.out)

    def commits(self) -> str:
        c = self.c
        return "  ".join(f"{i}:{c.raw(i).commit_index if c.is_up(i) else 'down'}" for i in c.ids)

    def put(self, command: bytes) -> None:
        c = self.c
        lead = c.leader()
        index, term = c.propose(command, lead)
        self.say(f"client -> {lead}: {command.decode():<10} accepted at index {index}, term {term}")
        c.wait_applied(index, node_ids=c.up_ids())
        self.say(f"  committed and applied everywhere up; commit index  {self.commits()}")


def main(argv: list[str] | None = None, out: Any = None) -> int:
    out = out or sys.stdout
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args(argv)

    c = SimCluster(3, seed=args.seed, state_machine_factory=KV, persist_delay=(1, 3))
    t = Timeline(c, out)
    print(
        f"raftlib simulator demo: 3 nodes, seed {args.seed}, election timeout 10-20 ticks, "
        f"heartbeat every tick",
        file=out,
    )
    t.say(f"cluster {' '.join(c.ids)} starts; nobody leads; every node waits for an election timeout")

    leader = c.wait_leader()
    t.say(f"{leader} wins the election for term {c.raw(leader).term} (PreVote first, then the vote)")
    c.run_until(lambda: all(c.raw(i).leader == leader and c.raw(i).commit_index >= 1 for i in c.ids), 20)
    t.say(f"every node follows {leader}; its no-op entry commits: commit index  {t.commits()}")

    for cmd in (b"x=1", b"y=2", b"x=3"):
        t.put(cmd)

    old = leader
    t.say(f"CRASH {old} (the leader); its disk keeps {c.nodes[old].storage.last_index()} entries")
    c.crash(old)
    new = c.wait_leader(max_ticks=100)
    t.say(f"{new} wins term {c.raw(new).term}: followers noticed the silence after an election timeout")

    for cmd in (b"z=4", b"y=5"):
        t.put(cmd)

    lead_log = len(c.log(new))
    t.say(
        f"RESTART {old} from its disk: term {c.nodes[old].storage.hard_state.term}, "
        f"log {c.nodes[old].storage.last_index()} entries (leader has {lead_log})"
    )
    c.restart(old)
    c.run_until(lambda: c.log(old) == c.log(new) and c.nodes[old].applied == c.raw(new).commit_index, 50)
    t.say(
        f"{old} follows {c.raw(old).leader} in term {c.raw(old).term} and catches up: "
        f"log {len(c.log(old))} entries, commit index  {t.commits()}"
    )

    t.put(b"done=yes")

    print("", file=out)
    print("log (index, term, command) on every node:", file=out)
    for idx, term, data in c.log(new):
        print(f"  {idx:3} t{term}  {data.decode() or '(no-op of a new leader)'}", file=out)
    logs_agree = all(c.log(i) == c.log(new) for i in c.ids)
    states = [c.state_machine(i).data for i in c.ids]
    sms_agree = all(s == states[0] for s in states)
    c.check_invariants()
    print(f"logs identical on all nodes: {logs_agree}", file=out)
    print(f"state machines identical:    {sms_agree}  {states[0]}", file=out)
    print(
        f"invariants checked after each of {c.events} events: election safety, log matching, "
        f"leader completeness, state machine safety, commit monotonicity",
        file=out,
    )
    return 0 if logs_agree and sms_agree else 1


if __name__ == "__main__":
    raise SystemExit(main())
