"""Linearizable reads and writes end to end (thesis §6.4 ReadIndex, §6.3 client semantics).

Clients write, compare-and-set and read registers through the simulated cluster while
leaders crash, partitions come and go and messages are lost; every operation is recorded in
a :class:`~raftlib.testing.linearizability.History` and the whole history must be
linearizable. Reads go through ReadIndex (:meth:`SimCluster.read`), on the leader or on
followers (which ask the leader). A control test shows that reading a stale node's state
machine directly is caught.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from raftlib.errors import NotLeader, ProposalDropped
from raftlib.testing import SimCluster
from raftlib.testing.linearizability import History, Op, check


class Registers:
    """Registers keyed by bytes; commands are JSON: write {"k", "v"} or cas {"k", "old", "v"}."""

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}

    def apply(self, command: bytes, index: int) -> Any:
        cmd = json.loads(command)
        key, value = cmd["k"].encode(), cmd["v"].encode()
        if "old" in cmd:
            current = self.data.get(key)
            expect = None if cmd["old"] is None else cmd["old"].encode()
            if current != expect:
                return False
            self.data[key] = value
            return True
        self.data[key] = value
        return True


class Client:
    """One sequential client: at most one operation in flight."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.op: Op | None = None
        self.state: dict[str, Any] = {}
        self.seq = 0


KEYS = [b"x", b"y"]


def issue(c: SimCluster, h: History, cl: Client, rng: Any) -> None:
    cl.seq += 1
    key = rng.choice(KEYS)
    now = c.ticks
    deadline = now + 12
    r = rng.random()
    if r < 0.45:
        op = h.invoke(process=cl.name, kind="read", key=key, at=now)
        node = rng.choice(c.up_ids())
        box: dict[str, Any] = {}

        def done(ok: bool, sm: Any, op: Op = op, key: bytes = key, box: dict[str, Any] = box) -> None:
            if box.get("closed"):
                return
            box["closed"] = True
            if ok:
                h.complete(op, at=c.ticks, result=sm.data.get(key))
            else:
                h.fail(op, at=c.ticks)

        try:
            c.read(node, done)
        except NotLeader:
            h.fail(op, at=now)
            return
        cl.op, cl.state = op, {"box": box, "deadline": deadline}
        return
    value = b"%s-%d" % (cl.name.encode(), cl.seq)
    if r < 0.8:
        op = h.invoke(process=cl.name, kind="write", key=key, value=value, at=now)
        cmd = {"k": key.decode(), "v": value.decode()}
    else:
        old = rng.choice([None, *(b"%s-%d" % (p.encode(), s) for p in ("c0", "c1", "c2") for s in (1, 2, 3))])
        op = h.invoke(process=cl.name, kind="cas", key=key, value=value, expected=old, at=now)
        cmd = {"k": key.decode(), "old": None if old is None else old.decode(), "v": value.decode()}
    lead = c.leader()
    if lead is None:
        h.fail(op, at=now)
        return
    data = json.dumps(cmd).encode()
    try:
        index, term = c.propose(data, lead)
    except (NotLeader, ProposalDropped):
        h.fail(op, at=now)
        return
    cl.op = op
    cl.state = {
        "node": lead,
        "inc": c.nodes[lead].incarnation,
        "index": index,
        "term": term,
        "data": data,
        "deadline": deadline,
    }


def poll(c: SimCluster, h: History, cl: Client) -> None:
    op, st = cl.op, cl.state
    if op is None:
        return
    if "box" in st:  # a read
        if st["box"].get("closed"):
            cl.op = None
        elif c.ticks > st["deadline"]:
            st["box"]["closed"] = True
            h.timeout(op, at=c.ticks)
            cl.op = None
        return
    index, term = st["index"], st["term"]
    committed = c.checker.committed
    node = c.nodes[st["node"]]
    if len(committed) > index and committed[index] != (term, st["data"]):
        h.fail(op, at=c.ticks)  # another entry took the index: ours never applies
        cl.op = None
    elif node.incarnation == st["inc"] and index in node.results and len(committed) > index:
        result = node.results[index]
        if op.kind == "cas":
            h.complete(op, at=c.ticks, ok=bool(result))
        else:
            h.complete(op, at=c.ticks)
        cl.op = None
    elif node.incarnation != st["inc"] or c.ticks > st["deadline"]:
        h.timeout(op, at=c.ticks)  # the client gave up: it may still apply, or not
        cl.op = None


@pytest.mark.parametrize("seed", range(50))
def test_register_history_is_linearizable_under_faults_6_4(seed: int) -> None:
    """Thesis §6.4: with reads through ReadIndex and writes acknowledged once applied, every
    client history is linearizable despite leader crashes, partitions and message loss."""
    c = SimCluster(
        3 if seed % 2 else 5,
        seed=seed,
        state_machine_factory=Registers,
        drop=0.03,
        delay=(1, 8),
        persist_delay=(0, 3),
    )
    rng = c.rng
    h = History()
    clients = [Client(f"c{i}") for i in range(3)]
    c.wait_leader()
    for step in range(200):
        r = rng.random()
        if step % 20 == 10:
            if r < 0.3 and c.leader():
                c.isolate(c.leader())
            elif r < 0.6 and c.leader() and len(c.up_ids()) == len(c.ids):
                c.crash(c.leader())
            else:
                c.heal()
                for i in c.ids:
                    if not c.is_up(i):
                        c.restart(i)
        for cl in clients:
            poll(c, h, cl)
            if cl.op is None:
                issue(c, h, cl, rng)
        c.run(0.5)
    c.heal()
    for i in c.ids:
        if not c.is_up(i):
            c.restart(i)
    for _ in range(100):
        for cl in clients:
            poll(c, h, cl)
        c.run(0.5)
    for cl in clients:
        if cl.op is not None:
            h.timeout(cl.op, at=c.ticks)
    done = [op for op in h.ops if op.status == "ok"]
    assert len(done) >= 25, len(done)
    assert sum(1 for op in done if op.kind == "read") >= 10
    result = check(h)
    assert result.status == "ok", result


def test_stale_direct_reads_are_caught_but_read_index_reads_are_not_stale() -> None:
    """Control: a leader cut off from the majority still believes it leads (CheckQuorum off).
    Reading its state machine directly returns a value another leader already overwrote: not
    linearizable, and the checker says so. The same read through ReadIndex is never confirmed
    by the cut-off leader, so it cannot return the stale value."""
    c = SimCluster(5, seed=4, state_machine_factory=Registers, config={"check_quorum": False})
    old = c.wait_leader()
    h = History()
    w1 = h.invoke(process="a", kind="write", key=b"x", value=b"1", at=c.ticks)
    idx, _ = c.replicate(json.dumps({"k": "x", "v": "1"}).encode())
    c.wait_applied(idx)
    h.complete(w1, at=c.ticks)
    c.isolate(old)
    new = c.run_until(lambda: next((i for i in c.ids if i != old and i in c.leaders()), None), 100)
    w2 = h.invoke(process="a", kind="write", key=b"x", value=b"2", at=c.ticks)
    idx, _ = c.propose(json.dumps({"k": "x", "v": "2"}).encode(), new)
    c.wait_committed(idx)
    c.wait_applied(idx, node_ids=[new])
    h.complete(w2, at=c.ticks)
    assert c.raw(old).role.name == "LEADER"  # stale, but does not know it

    answers: list[Any] = []
    r = h.invoke(process="b", kind="read", key=b"x", at=c.ticks)
    c.read(old, lambda ok, sm: answers.append((ok, sm.data.get(b"x") if ok else None)))
    c.run(30)
    assert answers == [] or answers[0][0] is False  # ReadIndex: no quorum, no answer
    h.timeout(r, at=c.ticks)
    assert check(h).status == "ok"

    stale = c.state_machine(old).data.get(b"x")
    assert stale == b"1"
    h.add(process="c", kind="read", key=b"x", invoke=c.ticks, complete=c.ticks + 1, result=stale)
    assert check(h).status == "violation"
