"""Nemesis: inject faults into a namespaced cluster on a schedule, heal, and time the recovery.

Faults (names usable in ``--faults``):

* ``partition-halves``  members shuffled and cut into a minority and a majority;
* ``partition-leader``  the current leader isolated from every other member;
* ``partition-bridge``  two halves that see only one common "bridge" member (Jepsen's bridge);
* ``partition-ring``    (5+ members) each member sees only its ring neighbours: every member sees a
                        majority, no two the same one (Jepsen's majorities ring);
* ``kill``              ``kill -9`` of a member (the leader half of the time), restarted on the same
                        data dir when healed;
* ``pause``             SIGSTOP of a member (the leader half of the time), SIGCONT when healed;
* ``membership``        (optional) remove a member from the cluster, then add it back with an
                        empty data dir when healed;
* ``isolate-follower``  (the stale-read control) a follower cut off from every other member.

The schedule alternates quiet periods and faults; every heal is followed by a probe that times
how long the cluster takes to accept a write again (on a probe key outside the checked history).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

PARTITIONS = ("partition-halves", "partition-leader", "partition-bridge", "partition-ring")
DEFAULT_FAULTS = (*PARTITIONS, "kill", "pause")
ALL_FAULTS = (*DEFAULT_FAULTS, "membership", "isolate-follower")


class ClusterControl(Protocol):
    size: int

    def leader(self, timeout: float = ...) -> int | None: ...
    def kill(self, i: int) -> None: ...
    def restart(self, i: int) -> None: ...
    def pause(self, i: int) -> None: ...
    def resume(self, i: int) -> None: ...
    def partition(self, groups: Sequence[Sequence[int]]) -> None: ...
    def connectivity(self, sees: dict[int, set[int]]) -> None: ...
    def heal_network(self) -> None: ...
    def remove_member(self, i: int) -> None: ...
    def add_member_back(self, i: int) -> None: ...
    def probe_write(self, timeout: float) -> bool: ...


@dataclass
class FaultRecord:
    name: str
    start: float                      # seconds since the run started
    end: float | None = None
    detail: str = ""
    recovery: float | None = None     # seconds from heal until a write succeeded (None: not within bound)
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"fault": self.name, "start": round(self.start, 2),
                "end": None if self.end is None else round(self.end, 2), "detail": self.detail,
                "recovery_s": None if self.recovery is None else round(self.recovery, 2),
                **({"error": self.error} if self.error else {})}


@dataclass
class Nemesis:
    cluster: ClusterControl
    rng: random.Random
    faults: Sequence[str] = DEFAULT_FAULTS
    quiet: tuple[float, float] = (2.0, 4.0)
    hold: tuple[float, float] = (3.0, 6.0)
    recovery_bound: float = 10.0
    log: Callable[[str], None] = print
    records: list[FaultRecord] = field(default_factory=list)
    t0: float = field(default_factory=time.monotonic)
    _undo: list[Callable[[], None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        unknown = set(self.faults) - set(ALL_FAULTS)
        if unknown:
            raise ValueError(f"unknown faults {sorted(unknown)}; known: {', '.join(ALL_FAULTS)}")
        self.faults = [f for f in self.faults if f != "partition-ring" or self.cluster.size >= 5]

    def now(self) -> float:
        return time.monotonic() - self.t0

    # ------------------------------------------------------------------------------- faults

    def _victim(self, prefer_leader: bool) -> int:
        if prefer_leader:
            lead = self.cluster.leader(timeout=2.0)
            if lead is not None:
                return lead
        return self.rng.randrange(self.cluster.size)

    def inject(self, name: str) -> FaultRecord:
        c, rng, n = self.cluster, self.rng, self.cluster.size
        rec = FaultRecord(name, self.now())
        members = list(range(n))
        if name == "partition-halves":
            rng.shuffle(members)
            groups = [sorted(members[: n // 2]), sorted(members[n // 2:])]
            c.partition(groups)
            rec.detail = f"groups {groups}"
            self._undo.append(c.heal_network)
        elif name in ("partition-leader", "isolate-follower"):
            lead = c.leader(timeout=2.0)
            if name == "partition-leader":
                victim = lead if lead is not None else rng.randrange(n)
            else:
                victim = rng.choice([m for m in members if m != lead])
            c.partition([[victim], [m for m in members if m != victim]])
            rec.detail = f"isolated m{victim} (leader was {'m' + str(lead) if lead is not None else '?'})"
            self._undo.append(c.heal_network)
        elif name == "partition-bridge":
            rng.shuffle(members)
            bridge, rest = members[0], members[1:]
            a, b = sorted(rest[: len(rest) // 2]), sorted(rest[len(rest) // 2:])
            sees = {m: set(a) | {bridge} for m in a} | {m: set(b) | {bridge} for m in b}
            sees[bridge] = set(members)
            c.connectivity(sees)
            rec.detail = f"{a} <- m{bridge} -> {b}"
            self._undo.append(c.heal_network)
        elif name == "partition-ring":
            rng.shuffle(members)
            sees = {m: {m, members[(k - 1) % n], members[(k + 1) % n]} for k, m in enumerate(members)}
            c.connectivity(sees)
            rec.detail = f"ring {members}"
            self._undo.append(c.heal_network)
        elif name == "kill":
            victim = self._victim(rng.random() < 0.5)
            c.kill(victim)
            rec.detail = f"kill -9 m{victim}"
            self._undo.append(lambda: c.restart(victim))
        elif name == "pause":
            victim = self._victim(rng.random() < 0.5)
            c.pause(victim)
            rec.detail = f"SIGSTOP m{victim}"
            self._undo.append(lambda: c.resume(victim))
        elif name == "membership":
            victim = self._victim(rng.random() < 0.3)
            c.remove_member(victim)
            rec.detail = f"removed m{victim}"
            self._undo.append(lambda: c.add_member_back(victim))
        else:
            raise ValueError(name)
        self.records.append(rec)
        self.log(f"[nemesis {rec.start:6.1f}s] {name}: {rec.detail}")
        return rec

    def heal(self) -> None:
        """Undo every active fault (in reverse order); errors are recorded, not raised."""
        while self._undo:
            undo = self._undo.pop()
            try:
                undo()
            except Exception as e:  # keep healing the rest
                self.log(f"[nemesis] heal step failed: {e}")
                if self.records:
                    self.records[-1].error = f"heal: {e}"
        for rec in self.records:
            if rec.end is None:
                rec.end = self.now()

    def measure_recovery(self) -> float | None:
        """Seconds until a probe write succeeds (None if not within the bound)."""
        start = time.monotonic()
        while time.monotonic() - start < self.recovery_bound:
            if self.cluster.probe_write(timeout=1.0):
                return time.monotonic() - start
            time.sleep(0.05)
        return None

    # ----------------------------------------------------------------------------- schedule

    async def run(self, duration: float, stop: asyncio.Event | None = None) -> None:
        """Quiet, fault, hold, heal (+ recovery probe), ... until `duration` seconds have passed."""
        end = self.t0 + duration
        stop = stop or asyncio.Event()

        async def sleep_until(t: float) -> bool:
            delay = t - time.monotonic()
            if delay <= 0:
                return True
            try:
                await asyncio.wait_for(stop.wait(), delay)
                return False
            except (TimeoutError, asyncio.TimeoutError):
                return True

        try:
            while time.monotonic() < end:
                if not await sleep_until(min(end, time.monotonic() + self.rng.uniform(*self.quiet))):
                    break
                if time.monotonic() + 1.0 >= end:
                    break
                name = self.rng.choice(list(self.faults))
                try:
                    rec = await asyncio.to_thread(self.inject, name)
                except Exception as e:  # a fault that could not be injected is logged
                    self.log(f"[nemesis] {name} failed: {e}")
                    self.records.append(FaultRecord(name, self.now(), self.now(), error=str(e)))
                    await asyncio.to_thread(self.heal)
                    continue
                await sleep_until(min(end, time.monotonic() + self.rng.uniform(*self.hold)))
                await asyncio.to_thread(self.heal)
                rec.recovery = await asyncio.to_thread(self.measure_recovery)
                took = f"{rec.recovery:.2f} s" if rec.recovery is not None else "NOT within bound"
                self.log(f"[nemesis {self.now():6.1f}s] healed {name}; writes accepted again after {took}")
        finally:
            await asyncio.to_thread(self.heal)
