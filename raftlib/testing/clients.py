"""Simulated clients of a register store, recording a history for the linearizability checker.

:class:`RegisterMachine` is a replicated state machine holding a few registers
(``bytes -> bytes``) with *write* and *compare-and-set* commands; ``apply``
returns whether the command took effect. :class:`Workload` drives a number of
sequential :class:`SimClient` s against a :class:`~raftlib.testing.SimCluster`,
each bound to one node, and records every operation in a
:class:`~raftlib.testing.linearizability.History`:

* **writes and CAS** are proposed on the leader (``forward=False``) or through
  the client's own node with ``propose_with_context`` (``forward=True``, which
  needs ``config={"forward_proposals": True}``); the client then waits until
  the node it proposed through has applied its entry at ``(index, term)`` and
  takes the CAS outcome from ``apply``'s return value. A refusal before
  anything was appended (``NotLeader``, a refused forwarded proposal) is a
  definite failure; another entry committed at the index means the operation
  never applies; anything else that does not finish within ``timeout`` ticks
  (lost messages, a crash, a partition) is an *unknown* outcome.
* **reads** go through ReadIndex on the client's node (:meth:`SimCluster.read`;
  with ``config={"read_only": "lease"}`` the leader answers from its lease), or,
  with ``read_mode="stale"``, read the node's local state machine directly
  without asking anyone: a deliberately broken mode that the checker must catch.

Every command carries ``(client, seq)``; the state machine executes each at
most once (a forwarded proposal duplicated by the network, or retried, must
not take effect twice — thesis §6.3), and answers a duplicate with the first
outcome.

>>> from raftlib.testing import SimCluster
>>> from raftlib.testing.linearizability import check
>>> c = SimCluster(3, seed=5, state_machine_factory=RegisterMachine)
>>> w = Workload(c, clients=3)
>>> _ = c.wait_leader()
>>> w.run(40)
>>> w.finish()
>>> check(w.history).status
'ok'
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from raftlib.errors import NotLeader, ProposalDropped
from raftlib.testing.cluster import SimCluster
from raftlib.testing.linearizability import History, Op

__all__ = ["RegisterMachine", "SimClient", "Workload", "encode_cas", "encode_write"]


def encode_write(key: bytes, value: bytes, client: str = "", seq: int = 0) -> bytes:
    """A write command: ``key := value``."""
    return json.dumps({"k": key.hex(), "v": value.hex(), "c": client, "s": seq}, sort_keys=True).encode()


def encode_cas(key: bytes, expected: bytes | None, value: bytes, client: str = "", seq: int = 0) -> bytes:
    """A compare-and-set command: ``if key == expected: key := value`` (``None``: absent)."""
    old = None if expected is None else expected.hex()
    cmd: dict[str, Any] = {"k": key.hex(), "v": value.hex(), "o": old, "c": client, "s": seq}
    return json.dumps(cmd, sort_keys=True).encode()


class RegisterMachine:
    """Registers ``bytes -> bytes`` with write and CAS; ``apply`` returns True when it took effect.

    >>> sm = RegisterMachine()
    >>> sm.apply(encode_write(b"x", b"1", "a", 1), 1), sm.apply(encode_cas(b"x", b"2", b"3", "a", 2), 2)
    (True, False)
    >>> sm.apply(encode_cas(b"x", b"1", b"3", "a", 3), 3), sm.get(b"x")
    (True, b'3')
    >>> sm.apply(encode_cas(b"x", b"1", b"3", "a", 3), 4), sm.get(b"x")  # a duplicate: same answer
    (True, b'3')
    >>> sm.apply(encode_write(b"x", b"9", "a", 1), 5), sm.get(b"x")  # superseded: never executed
    (False, b'3')
    """

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}
        self.sessions: dict[str, tuple[int, bool]] = {}
        """client -> (highest seq executed, its outcome)."""

    def get(self, key: bytes) -> bytes | None:
        return self.data.get(key)

    def apply(self, command: bytes, index: int) -> bool:
        cmd = json.loads(command)
        client, seq = cmd.get("c", ""), int(cmd.get("s", 0))
        if client:
            last = self.sessions.get(client)
            if last is not None and seq <= last[0]:
                # Already executed (or superseded by a later operation of the same client).
                return last[1] if seq == last[0] else False
        key, value = bytes.fromhex(cmd["k"]), bytes.fromhex(cmd["v"])
        ok = True
        if "o" in cmd:
            expected = None if cmd["o"] is None else bytes.fromhex(cmd["o"])
            ok = self.data.get(key) == expected
        if ok:
            self.data[key] = value
        if client:
            self.sessions[client] = (seq, ok)
        return ok

    def snapshot(self) -> bytes:
        return json.dumps(
            {
                "d": sorted([k.hex(), v.hex()] for k, v in self.data.items()),
                "s": sorted([c, s, ok] for c, (s, ok) in self.sessions.items()),
            }
        ).encode()

    def restore(self, data: bytes) -> None:
        obj = json.loads(data)
        self.data = {bytes.fromhex(k): bytes.fromhex(v) for k, v in obj["d"]}
        self.sessions = {c: (int(s), bool(ok)) for c, s, ok in obj["s"]}


@dataclass
class SimClient:
    """One sequential client bound to one node: at most one operation in flight."""

    name: str
    node: str
    seq: int = 0
    next_at: float = 0.0
    """Virtual time (ticks) before which the client stays idle (a back-off after a refusal)."""
    op: Op | None = None
    state: dict[str, Any] = field(default_factory=dict)


@dataclass
class WorkloadStats:
    """How the operations of a :class:`Workload` ended."""

    invoked: int = 0
    ok: int = 0
    failed: int = 0
    unknown: int = 0
    reads_ok: int = 0
    cas_ok: int = 0


class Workload:
    """Sequential clients issuing reads, writes and CAS against a :class:`SimCluster`.

    ``clients`` clients are bound round-robin to the cluster's nodes (``c0`` to the first
    node, ...). ``read_mode`` is ``"read_index"`` (linearizable: ReadIndex, or the leader's
    lease under ``config={"read_only": "lease"}``) or ``"stale"`` (the bound node's local
    state, no check at all). ``forward`` proposes through the client's node instead of the
    leader. ``timeout`` (ticks) turns an operation that has not finished into an unknown
    outcome; a client whose operation was refused waits ``backoff`` ticks before the next.
    Use :meth:`step` between your own faults (or :meth:`run`), then :meth:`finish`.
    """

    def __init__(
        self,
        cluster: SimCluster,
        *,
        clients: int = 3,
        keys: tuple[bytes, ...] = (b"x", b"y"),
        read_mode: str = "read_index",
        forward: bool = False,
        timeout: float = 12.0,
        backoff: float = 2.0,
        read_ratio: float = 0.45,
        cas_ratio: float = 0.25,
    ) -> None:
        if read_mode not in ("read_index", "stale"):
            raise ValueError(f"read_mode must be 'read_index' or 'stale', got {read_mode!r}")
        self.c = cluster
        self.rng = cluster.rng
        self.history = History()
        ids = list(cluster.ids)
        self.clients = [SimClient(f"c{i}", ids[i % len(ids)]) for i in range(clients)]
        self.keys = keys
        self.read_mode = read_mode
        self.forward = forward
        self.timeout = timeout
        self.backoff = backoff
        self.read_ratio = read_ratio
        self.cas_ratio = cas_ratio
        self.stats = WorkloadStats()
        self._written: dict[bytes, list[bytes]] = {k: [] for k in keys}

    # ------------------------------------------------------------ driving
    def step(self) -> None:
        """Poll every client; an idle client issues its next operation."""
        for cl in self.clients:
            self._poll(cl)
            if cl.op is None and self.c.ticks >= cl.next_at:
                self._issue(cl)

    def run(self, ticks: float, dt: float = 0.5) -> None:
        """Step the clients every ``dt`` ticks for ``ticks`` ticks."""
        end = self.c.ticks + ticks
        while self.c.ticks < end:
            self.step()
            self.c.run(dt)

    def finish(self, drain: float = 50.0, dt: float = 0.5) -> None:
        """Stop issuing; wait up to ``drain`` ticks for operations in flight, then time the rest out."""
        end = self.c.ticks + drain
        while self.c.ticks < end and any(cl.op is not None for cl in self.clients):
            for cl in self.clients:
                self._poll(cl)
            self.c.run(dt)
        for cl in self.clients:
            self._poll(cl)
            if cl.op is not None:
                self._unknown(cl)

    # ------------------------------------------------------------ outcomes
    def _done(self, cl: SimClient, **kw: Any) -> None:
        assert cl.op is not None
        self.history.complete(cl.op, at=self.c.ticks, **kw)
        self.stats.ok += 1
        if cl.op.kind == "read":
            self.stats.reads_ok += 1
        elif cl.op.kind == "cas" and kw.get("ok"):
            self.stats.cas_ok += 1
        cl.op, cl.state = None, {}

    def _failed(self, cl: SimClient) -> None:
        assert cl.op is not None
        self.history.fail(cl.op, at=self.c.ticks)
        self.stats.failed += 1
        cl.next_at = self.c.ticks + self.backoff
        cl.op, cl.state = None, {}

    def _unknown(self, cl: SimClient) -> None:
        assert cl.op is not None
        self.history.timeout(cl.op, at=self.c.ticks)
        self.stats.unknown += 1
        if "box" in cl.state:
            cl.state["box"]["closed"] = True
        cl.op, cl.state = None, {}

    # ------------------------------------------------------------ issuing
    def _issue(self, cl: SimClient) -> None:
        c, rng = self.c, self.rng
        cl.seq += 1
        key = rng.choice(self.keys)
        now = c.ticks
        r = rng.random()
        self.stats.invoked += 1
        if r < self.read_ratio:
            cl.op = self.history.invoke(process=cl.name, kind="read", key=key, at=now)
            cl.state = {"deadline": now + self.timeout}
            self._start_read(cl, key)
            return
        value = b"%s-%d" % (cl.name.encode(), cl.seq)
        if r < self.read_ratio + self.cas_ratio:
            expected = rng.choice([None, *self._written[key][-3:]])
            cl.op = self.history.invoke(
                process=cl.name, kind="cas", key=key, value=value, expected=expected, at=now
            )
            data = encode_cas(key, expected, value, cl.name, cl.seq)
        else:
            cl.op = self.history.invoke(process=cl.name, kind="write", key=key, value=value, at=now)
            data = encode_write(key, value, cl.name, cl.seq)
        self._written[key].append(value)
        cl.state = {"deadline": now + self.timeout, "data": data}
        if self.forward:
            self._propose_forwarded(cl, data)
        else:
            self._propose_on_leader(cl, data)

    def _start_read(self, cl: SimClient, key: bytes) -> None:
        c = self.c
        if not c.is_up(cl.node):
            self._failed(cl)
            return
        if self.read_mode == "stale":
            # Deliberately wrong: whatever this node has applied, without asking the leader.
            self._done(cl, result=c.state_machine(cl.node).get(key))
            return
        box: dict[str, Any] = {}
        op = cl.op

        def served(ok: bool, sm: Any) -> None:
            if box.get("closed") or cl.op is not op:
                return
            box["closed"] = True
            if ok:
                self._done(cl, result=sm.get(key))
            else:
                self._failed(cl)  # not confirmed: the read observed nothing

        cl.state["box"] = box
        try:
            c.read(cl.node, served)
        except NotLeader:
            box["closed"] = True
            self._failed(cl)

    def _propose_on_leader(self, cl: SimClient, data: bytes) -> None:
        c = self.c
        lead = c.leader()
        if lead is None:
            self._failed(cl)
            return
        try:
            index, term = c.propose(data, lead)
        except (NotLeader, ProposalDropped):
            self._failed(cl)
            return
        cl.state.update(node=lead, inc=c.nodes[lead].incarnation, index=index, term=term)

    def _propose_forwarded(self, cl: SimClient, data: bytes) -> None:
        c = self.c
        op = cl.op

        def placed(pr: Any) -> None:
            if cl.op is not op:
                return
            if pr.error is not None:
                self._failed(cl)  # refused before anything was appended
            else:
                cl.state.update(index=pr.index, term=pr.term)

        if not c.is_up(cl.node):
            self._failed(cl)
            return
        try:
            c.propose_with_context(data, cl.node, placed)
        except (NotLeader, ProposalDropped):
            if cl.op is op:
                self._failed(cl)
            return
        if cl.op is op:
            cl.state.update(node=cl.node, inc=c.nodes[cl.node].incarnation)

    # ------------------------------------------------------------ polling
    def _poll(self, cl: SimClient) -> None:
        op, st = cl.op, cl.state
        if op is None:
            return
        c = self.c
        if op.kind == "read":
            if c.ticks > st["deadline"]:
                self._unknown(cl)
            return
        if "index" not in st:  # a forwarded proposal not placed yet
            if c.ticks > st["deadline"]:
                self._unknown(cl)
            return
        index, term = st["index"], st["term"]
        committed = c.checker.committed if c.checker is not None else None
        node = c.nodes[st["node"]]
        if committed is not None and len(committed) > index and committed[index] != (term, st["data"]):
            self._failed(cl)  # another entry took the index: ours never applies there
        elif node.up and node.incarnation == st["inc"] and index in node.results:
            if committed is not None and committed[index] != (term, st["data"]):
                self._failed(cl)
            elif op.kind == "cas":
                self._done(cl, ok=bool(node.results[index]))
            else:
                self._done(cl)
        elif node.incarnation != st["inc"] or c.ticks > st["deadline"]:
            self._unknown(cl)  # gave up: it may still apply later, or never
