"""Tests of the linearizability checker (raftlib.testing.linearizability)."""

from __future__ import annotations

import doctest
import itertools
import random
import time
from dataclasses import dataclass

import pytest

import raftlib.testing.linearizability as lin
from raftlib.testing.linearizability import History, Op, check


def W(h: History, p: str, key: bytes, value: bytes, t0: float, t1: float | None) -> Op:
    return h.add(process=p, kind="write", key=key, value=value, invoke=t0, complete=t1)


def R(h: History, p: str, key: bytes, result: bytes | None, t0: float, t1: float) -> Op:
    return h.add(process=p, kind="read", key=key, result=result, invoke=t0, complete=t1)


def CAS(
    h: History,
    p: str,
    key: bytes,
    expected: bytes | None,
    new: bytes,
    ok: bool | None,
    t0: float,
    t1: float | None,
) -> Op:
    return h.add(process=p, kind="cas", key=key, expected=expected, value=new, ok=ok, invoke=t0, complete=t1)


# --------------------------------------------------------------------------------------------------
# Linearizable histories


def test_empty_history_is_ok() -> None:
    res = check(History())
    assert res.status == "ok" and res.ops_checked == 0 and res.per_key == {}


def test_sequential_history_of_every_kind_is_ok() -> None:
    h = History()
    R(h, "c1", b"x", None, 0, 1)
    W(h, "c1", b"x", b"1", 2, 3)
    R(h, "c2", b"x", b"1", 4, 5)
    CAS(h, "c1", b"x", b"1", b"2", True, 6, 7)
    CAS(h, "c2", b"x", b"1", b"3", False, 8, 9)
    R(h, "c1", b"x", b"2", 10, 11)
    h.add(process="c2", kind="delete", key=b"x", invoke=12, complete=13)
    R(h, "c1", b"x", None, 14, 15)
    CAS(h, "c2", b"x", None, b"4", True, 16, 17)  # expected None: "key absent"
    R(h, "c1", b"x", b"4", 18, 19)
    res = check(h)
    assert res.status == "ok", res.detail
    assert res.ops_checked == 10
    assert [op.id for op in res.per_key[b"x"].linearization] == list(range(10))


def test_concurrent_writes_linearize_against_invocation_order() -> None:
    # w1 is invoked first but must take effect after w2: r1 sees w2's value, then r2 sees w1's.
    h = History()
    W(h, "c1", b"x", b"a", 0, 10)
    W(h, "c2", b"x", b"b", 1, 10)
    R(h, "c3", b"x", b"b", 2, 3)
    R(h, "c3", b"x", b"a", 4, 5)
    res = check(h)
    assert res.status == "ok", res.detail
    assert [op.value or op.result for op in res.per_key[b"x"].linearization] == [b"b", b"b", b"a", b"a"]


def test_cas_chain_linearizes_in_reverse_invocation_order() -> None:
    h = History()
    CAS(h, "c1", b"x", b"b", b"c", True, 0, 10)
    CAS(h, "c2", b"x", b"a", b"b", True, 1, 10)
    CAS(h, "c3", b"x", None, b"a", True, 2, 10)
    R(h, "c4", b"x", b"c", 11, 12)
    res = check(h)
    assert res.status == "ok", res.detail
    assert [op.process for op in res.per_key[b"x"].linearization] == ["c3", "c2", "c1", "c4"]


def test_touching_intervals_count_as_concurrent() -> None:
    # The write completes at t=1 exactly when the read is invoked: either order is allowed.
    h = History()
    W(h, "c1", b"x", b"1", 0, 1)
    R(h, "c2", b"x", None, 1, 2)
    assert check(h).status == "ok"


def test_live_recording_with_invoke_and_complete() -> None:
    h = History()
    w = h.invoke(process="c1", kind="write", key=b"x", value=b"1", at=0.0)
    r = h.invoke(process="c2", kind="read", key=b"x", at=0.1)
    c = h.invoke(process="c3", kind="cas", key=b"x", expected=b"1", value=b"2", at=0.2)
    h.complete(r, at=0.3, result=b"2")
    h.complete(w, at=0.4)
    h.complete(c, at=0.5, ok=True)
    assert check(h).status == "ok"
    R(h, "c1", b"x", b"1", 1, 2)  # stale: the CAS to b"2" completed at 0.5
    assert check(h).status == "violation"


def test_check_accepts_an_iterable_of_ops() -> None:
    h = History()
    W(h, "c1", b"x", b"1", 0, 1)
    R(h, "c1", b"x", b"1", 2, 3)
    bad = R(h, "c1", b"x", None, 4, 5)
    assert check(op for op in h.ops if op is not bad).status == "ok"
    assert check(h.ops).status == "violation"


# --------------------------------------------------------------------------------------------------
# Violations


def test_stale_read_is_a_violation() -> None:
    h = History()
    W(h, "c1", b"x", b"1", 0, 1)
    W(h, "c1", b"x", b"2", 2, 3)
    R(h, "c2", b"x", b"1", 4, 5)  # invoked after write 2 completed
    res = check(h)
    assert res.status == "violation" and res.key == b"x"


def test_lost_write_is_a_violation() -> None:
    h = History()
    W(h, "c1", b"x", b"old", 0, 1)
    W(h, "c1", b"x", b"new", 2, 3)  # acknowledged ...
    R(h, "c2", b"x", b"old", 2.5, 3.5)  # (fine: concurrent with the write)
    R(h, "c2", b"x", b"old", 4, 5)  # ... but never visible
    R(h, "c3", b"x", b"old", 6, 7)
    res = check(h)
    assert res.status == "violation"
    # The two reads before t=4 are explainable; the one at [4, 5] is not.
    assert "#3 c2 read(b'x') -> b'old' [4, 5]" in res.detail


def test_cas_succeeding_twice_from_same_expected_is_a_violation() -> None:
    h = History()
    W(h, "c1", b"x", b"a", 0, 1)
    CAS(h, "c2", b"x", b"a", b"b", True, 2, 5)
    CAS(h, "c3", b"x", b"a", b"c", True, 2, 5)
    res = check(h)
    assert res.status == "violation", res.detail


def test_cas_succeeding_twice_is_fine_if_the_value_came_back() -> None:
    h = History()
    W(h, "c1", b"x", b"a", 0, 1)
    CAS(h, "c2", b"x", b"a", b"b", True, 2, 5)
    CAS(h, "c3", b"x", b"a", b"c", True, 2, 5)
    W(h, "c4", b"x", b"a", 2, 5)  # a concurrent write restores b"a" in between
    assert check(h).status == "ok"


def test_failed_cas_must_see_a_different_value() -> None:
    h = History()
    W(h, "c1", b"x", b"a", 0, 1)
    CAS(h, "c2", b"x", b"a", b"b", False, 2, 3)  # nothing else ran: it should have succeeded
    assert check(h).status == "violation"


def test_read_of_a_value_never_written_is_a_violation() -> None:
    h = History()
    W(h, "c1", b"x", b"1", 0, 1)
    R(h, "c2", b"x", b"ghost", 0, 2)
    res = check(h)
    assert res.status == "violation"
    assert "ghost" in res.detail


def test_read_seeing_a_write_before_it_was_invoked_is_a_violation() -> None:
    h = History()
    R(h, "c1", b"x", b"1", 0, 1)
    W(h, "c2", b"x", b"1", 2, 3)
    assert check(h).status == "violation"


def test_violation_explanation_is_readable() -> None:
    h = History()
    W(h, "writer", b"x", b"1", 0, 1)
    W(h, "writer", b"x", b"2", 2, 3)
    R(h, "reader", b"x", b"1", 4, 5)
    res = check(h)
    lines = res.detail.splitlines()
    assert lines[0] == "key b'x' is not linearizable: no order of its 3 ops explains every result."
    assert "Longest linearizable prefix found: 2 of 3 ops:" in lines
    assert "  #1 writer write(b'x', b'2') -> ok [2, 3]" in lines
    assert "State after that prefix: b'2'." in lines
    assert lines[-1] == "  #2 reader read(b'x') -> b'1' [4, 5]"
    assert str(res).startswith("linearizability: violation (3 ops, 1 keys,")
    assert not res and not res.ok


def test_failed_op_is_dropped() -> None:
    h = History()
    W(h, "c1", b"x", b"1", 0, 1)
    op = h.invoke(process="c2", kind="write", key=b"x", value=b"2", at=2)
    h.fail(op, at=3)  # e.g. NotLeader before proposing
    R(h, "c1", b"x", b"1", 4, 5)
    assert check(h).status == "ok"
    R(h, "c1", b"x", b"2", 6, 7)  # a failed write was observed: it did happen after all
    assert check(h).status == "violation"


# --------------------------------------------------------------------------------------------------
# Unknown outcomes


@pytest.mark.parametrize("seen", [b"1", b"2"])
def test_unknown_write_may_or_may_not_have_happened(seen: bytes) -> None:
    h = History()
    W(h, "c1", b"x", b"1", 0, 1)
    W(h, "c2", b"x", b"2", 2, None)  # timed out
    R(h, "c3", b"x", seen, 3, 4)
    R(h, "c3", b"x", seen, 5, 6)
    res = check(h)
    assert res.status == "ok", res.detail
    took_effect = any(op.process == "c2" for op in res.per_key[b"x"].linearization)
    assert took_effect == (seen == b"2")


def test_unknown_write_that_must_have_happened() -> None:
    h = History()
    W(h, "c1", b"x", b"1", 0, 1)
    t = h.invoke(process="c2", kind="write", key=b"x", value=b"2", at=2)
    h.timeout(t, at=3)
    R(h, "c2", b"x", b"2", 100, 101)  # the same process carries on after its timeout
    res = check(h)
    assert res.status == "ok", res.detail
    assert t in res.per_key[b"x"].linearization


def test_unknown_write_can_take_effect_long_after_it_timed_out() -> None:
    h = History()
    W(h, "c2", b"x", b"late", 0, None)
    R(h, "c1", b"x", None, 10, 11)
    R(h, "c1", b"x", b"late", 20, 21)
    assert check(h).status == "ok"


def test_unknown_write_contradicted_by_later_reads() -> None:
    # Reads see the timed-out write's value, then the older value again: no consistent order.
    h = History()
    W(h, "c1", b"x", b"1", 0, 1)
    W(h, "c2", b"x", b"2", 2, None)
    R(h, "c3", b"x", b"2", 3, 4)
    R(h, "c3", b"x", b"1", 5, 6)
    res = check(h)
    assert res.status == "violation"
    assert res.key == b"x"


def test_unknown_write_seen_before_it_was_invoked_is_a_violation() -> None:
    h = History()
    R(h, "c1", b"x", b"2", 0, 1)
    W(h, "c2", b"x", b"2", 2, None)
    assert check(h).status == "violation"


def test_unknown_cas_applies_only_if_expected_matches() -> None:
    h = History()
    W(h, "c1", b"x", b"a", 0, 1)
    CAS(h, "c2", b"x", b"a", b"b", None, 2, None)
    R(h, "c3", b"x", b"b", 3, 4)
    assert check(h).status == "ok"  # the unknown CAS happened

    h = History()
    W(h, "c1", b"x", b"z", 0, 1)
    CAS(h, "c2", b"x", b"a", b"b", None, 2, None)
    R(h, "c3", b"x", b"b", 3, 4)
    assert check(h).status == "violation"  # it could not have succeeded from b"z"


def test_unknown_read_constrains_nothing() -> None:
    h = History()
    W(h, "c1", b"x", b"1", 0, 1)
    r = h.invoke(process="c2", kind="read", key=b"x", at=2)
    h.timeout(r)
    res = check(h)
    assert res.status == "ok" and res.ops_checked == 1


def test_ops_still_pending_are_treated_as_unknown() -> None:
    h = History()
    h.invoke(process="c1", kind="write", key=b"x", value=b"1", at=0)
    R(h, "c2", b"x", b"1", 1, 2)
    assert check(h).status == "ok"


def test_unobservable_unknown_writes_do_not_blow_up_a_violation_search() -> None:
    # 30 concurrent timed-out writes nobody reads would make 2**30 subsets to consider.
    h = History()
    for i in range(30):
        W(h, f"p{i}", b"x", b"lost%d" % i, i, None)
    R(h, "r", b"x", None, 0, 1)
    R(h, "r", b"x", b"ghost", 100, 101)
    res = check(h, time_budget=5)
    assert res.status == "violation"


# --------------------------------------------------------------------------------------------------
# Keys, budget, malformed input


def test_violation_is_reported_with_its_key() -> None:
    h = History()
    for key in (b"a", b"b", b"c"):
        W(h, f"writer-{key!r}", key, b"1", 0, 1)
        W(h, f"writer-{key!r}", key, b"2", 2, 3)
    R(h, "c2", b"a", b"2", 4, 5)
    R(h, "c2", b"b", b"1", 6, 7)  # stale, on key b only
    R(h, "c2", b"c", b"2", 8, 9)
    res = check(h)
    assert res.status == "violation"
    assert res.key == b"b"
    assert res.detail.startswith("key b'b'")
    assert {k: r.status for k, r in res.per_key.items()} == {b"a": "ok", b"b": "violation", b"c": "ok"}
    assert res.ops_checked == 9


def _hard_history(n: int) -> History:
    """n fully concurrent writes, then a read of a value none wrote: an exponential search."""
    h = History()
    for i in range(n):
        W(h, f"p{i}", b"x", b"v%d" % i, 0, 100)
    R(h, "reader", b"x", b"v0", 200, 201)  # fine so far...
    R(h, "reader", b"x", b"v1", 300, 301)  # ...but v1 cannot come back after v0 was read
    return h


def test_time_budget_gives_unknown_quickly() -> None:
    h = _hard_history(60)
    budget = 0.2
    started = time.monotonic()
    res = check(h, time_budget=budget)
    took = time.monotonic() - started
    assert res.status == "unknown"
    assert res.key == b"x"
    assert "time budget" in res.detail
    assert took < 2 * budget + 0.5, took


def test_budget_leaves_later_keys_unchecked_but_keeps_found_violations() -> None:
    h = History()
    W(h, "a", b"bad", b"1", 0, 1)
    R(h, "a", b"bad", b"2", 2, 3)
    for i in range(60):
        W(h, f"p{i}", b"hard", b"v%d" % i, 0, 100)
    R(h, "reader", b"hard", b"v0", 200, 201)
    R(h, "reader", b"hard", b"v1", 300, 301)
    W(h, "a", b"later", b"1", 4, 5)
    res = check(h, time_budget=0.2)
    assert res.status == "violation" and res.key == b"bad"
    assert res.per_key[b"hard"].status == "unknown"
    assert res.per_key[b"later"].status == "unknown"
    assert "not checked" in res.per_key[b"later"].detail


def test_small_hard_history_is_decided_without_budget() -> None:
    res = check(_hard_history(10), time_budget=None)
    assert res.status == "violation"


def test_malformed_histories_are_rejected() -> None:
    h = History()
    op = W(h, "c1", b"x", b"1", 0, 1)
    with pytest.raises(ValueError, match="completed twice"):
        h.complete(op, at=2)
    with pytest.raises(ValueError, match="completed twice"):
        h.timeout(op)

    op = h.invoke(process="c2", kind="write", key=b"x", value=b"1", at=5)
    with pytest.raises(ValueError, match="before its invocation"):
        h.complete(op, at=4)

    with pytest.raises(ValueError, match="unknown operation kind 'incr'"):
        h.invoke(process="c3", kind="incr", key=b"x", at=0)  # type: ignore[arg-type]

    with pytest.raises(ValueError, match="still in flight"):
        h.invoke(process="c2", kind="read", key=b"x", at=6)

    h2 = History()
    W(h2, "c1", b"x", b"1", 0, 10)
    with pytest.raises(ValueError, match="must not overlap"):
        R(h2, "c1", b"x", b"1", 5, 11)

    r = h2.invoke(process="c9", kind="read", key=b"x", at=0)
    with pytest.raises(ValueError, match="needs result="):
        h2.complete(r, at=1)
    c = h2.invoke(process="c8", kind="cas", key=b"x", expected=None, value=b"1", at=0)
    with pytest.raises(ValueError, match="needs ok="):
        h2.complete(c, at=1)
    w = h2.invoke(process="c7", kind="write", key=b"x", value=b"1", at=0)
    with pytest.raises(ValueError, match="use fail"):
        h2.complete(w, at=1, ok=False)

    other = History()
    foreign = W(other, "c1", b"x", b"1", 0, 1)
    with pytest.raises(ValueError, match="does not belong"):
        History().complete(foreign, at=2)


def test_check_validates_overlap_in_histories_built_out_of_order() -> None:
    h = History()
    a = h.invoke(process="c1", kind="write", key=b"x", value=b"1", at=0)
    h.complete(a, at=10)
    # Bypass invoke's own check by recording the ops on different processes, then merge.
    b = h.invoke(process="c2", kind="read", key=b"x", at=5)
    h.complete(b, at=6, result=b"1")
    b.process = "c1"
    with pytest.raises(ValueError, match="overlaps"):
        check(h)


def test_process_may_continue_after_a_timeout() -> None:
    h = History()
    a = h.invoke(process="c1", kind="write", key=b"x", value=b"1", at=0)
    h.timeout(a)
    b = h.invoke(process="c1", kind="read", key=b"x", at=1)
    h.complete(b, at=2, result=None)
    assert check(h).status == "ok"


def test_module_doctests() -> None:
    result = doctest.testmod(lin, raise_on_error=False)
    assert result.attempted > 20
    assert result.failed == 0


# --------------------------------------------------------------------------------------------------
# Randomized: histories from a real register run are linearizable; one corruption is caught.


@dataclass
class _Planned:
    process: str
    kind: str
    key: bytes
    invoke: float
    complete: float | None  # None: timed out
    point: float | None  # the instant it takes effect; None: never
    value: bytes | None = None
    expected: bytes | None = None
    ok: bool | None = None
    result: bytes | None = None


def generate(
    seed: int,
    n_ops: int = 60,
    n_keys: int = 2,
    n_procs: int = 4,
    p_timeout: float = 0.05,
) -> History:
    """Run a real sequential register with random concurrency windows and record the history.

    Each op takes effect at a random instant inside its interval (or, when it times out, at any
    instant after its invocation, or never), so the history is linearizable by construction.
    """
    rng = random.Random(seed)
    keys = [b"k%d" % i for i in range(n_keys)]
    clocks = [rng.random() for _ in range(n_procs)]
    planned: list[_Planned] = []
    for _ in range(n_ops):
        p = rng.randrange(n_procs)
        invoke = clocks[p] + rng.expovariate(2.0)
        duration = rng.expovariate(0.5)
        kind = rng.choices(["read", "write", "cas", "delete"], [40, 30, 25, 5])[0]
        key = rng.choice(keys)
        if rng.random() < p_timeout:
            complete = None
            # Unknown outcome: never, or at any time after the invocation (maybe long after).
            point = None if kind == "read" or rng.random() < 0.5 else invoke + rng.expovariate(0.1)
        else:
            complete = invoke + duration
            point = rng.uniform(invoke, complete)
        clocks[p] = invoke + duration
        planned.append(_Planned(f"p{p}", kind, key, invoke, complete, point))

    # Apply the ops in the order they take effect; choose inputs then, so CAS often succeeds.
    store: dict[bytes, bytes | None] = {}
    written: dict[bytes, list[bytes]] = {k: [] for k in keys}
    counter = 0
    for op in sorted(planned, key=lambda o: o.point if o.point is not None else float("inf")):
        current = store.get(op.key)
        counter += 1
        if op.kind in ("write", "cas"):
            op.value = b"v%d" % counter
        if op.kind == "cas":
            pool = [current, None, *written[op.key][-3:]]
            op.expected = current if rng.random() < 0.6 else rng.choice(pool)
        if op.point is None:
            continue
        if op.kind == "read":
            op.result = current
        elif op.kind == "write":
            store[op.key] = op.value
            written[op.key].append(op.value)  # type: ignore[arg-type]
        elif op.kind == "delete":
            store[op.key] = None
        else:
            op.ok = current == op.expected
            if op.ok:
                store[op.key] = op.value
                written[op.key].append(op.value)  # type: ignore[arg-type]

    h = History()
    for op in sorted(planned, key=lambda o: o.invoke):
        h.add(
            process=op.process,
            kind=op.kind,  # type: ignore[arg-type]
            key=op.key,
            invoke=op.invoke,
            complete=op.complete,
            value=op.value,
            expected=op.expected,
            ok=op.ok if op.kind == "cas" and op.complete is not None else None,
            **({"result": op.result} if op.kind == "read" and op.complete is not None else {}),
        )
    return h


def _writes_value(op: Op) -> bool:
    return op.status == "ok" and (op.kind in ("write", "delete") or (op.kind == "cas" and op.ok is True))


def corrupt(h: History, rng: random.Random) -> Op | None:
    """Change one completed read's result to a value it cannot have seen; return that read.

    Prefer a subtle stale read (a value that was definitely overwritten before the read began),
    else a value nobody wrote.
    """
    reads = [op for op in h.ops if op.kind == "read" and op.status == "ok"]
    if not reads:
        return None
    rng.shuffle(reads)
    for r in reads:
        writers = [op for op in h.ops if op.key == r.key and _writes_value(op) and op.kind != "delete"]
        overwriters = [op for op in h.ops if op.key == r.key and _writes_value(op)]
        for w in writers:
            assert w.completed is not None
            if w.value == r.result:
                continue
            if any(
                w.completed < o.invoked and o.completed is not None and o.completed < r.invoked
                for o in overwriters
            ):
                r.result = w.value  # stale: w's value was overwritten before r was invoked
                return r
    r = reads[0]
    r.result = b"never-written"
    return r


SEEDS = range(200)


@pytest.mark.parametrize("seed", SEEDS)
def test_random_register_runs_are_linearizable_and_corruptions_are_caught(seed: int) -> None:
    rng = random.Random(seed)
    h = generate(seed, n_ops=rng.randrange(10, 80), n_keys=rng.randrange(1, 4), n_procs=rng.randrange(2, 7))
    res = check(h, time_budget=5)
    assert res.status == "ok", f"seed {seed}: {res}"
    victim = corrupt(h, rng)
    if victim is None:
        return
    res = check(h, time_budget=5)
    assert res.status == "violation", f"seed {seed}: corrupted {victim} but {res}"
    assert res.key == victim.key


def test_generator_produces_concurrency_and_timeouts() -> None:
    # The randomized test is only meaningful if its histories overlap and include unknown outcomes.
    h = generate(1, n_ops=400, n_keys=3, n_procs=8, p_timeout=0.1)
    ops = sorted(h.ops, key=lambda o: o.invoked)
    overlapping = sum(1 for a, b in itertools.pairwise(ops) if a.completed is None or b.invoked < a.completed)
    assert overlapping > len(ops) // 2
    assert sum(op.status == "unknown" for op in ops) > 10
    assert sum(op.kind == "cas" and op.ok is True for op in ops) > 10
    assert sum(op.kind == "cas" and op.ok is False for op in ops) > 5


# --------------------------------------------------------------------------------------------------
# Performance


def test_performance_thousands_of_ops() -> None:
    h = generate(12345, n_ops=3000, n_keys=10, n_procs=10, p_timeout=0.05)
    started = time.monotonic()
    res = check(h, time_budget=30)
    took = time.monotonic() - started
    assert res.status == "ok", res
    assert took < 5.0, f"3000 ops took {took:.2f}s"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("n_ops", "n_keys", "n_procs"),
    [(2000, 5, 10), (5000, 20, 10), (5000, 5, 20), (10000, 10, 10)],
)
def test_performance_sweep(n_ops: int, n_keys: int, n_procs: int) -> None:
    for seed in range(3):
        h = generate(seed, n_ops=n_ops, n_keys=n_keys, n_procs=n_procs, p_timeout=0.05)
        started = time.monotonic()
        res = check(h, time_budget=60)
        took = time.monotonic() - started
        print(f"\n{n_ops} ops {n_keys} keys {n_procs} procs seed {seed}: {res.status} in {took:.3f}s")
        assert res.status == "ok", res
        victim = corrupt(h, random.Random(seed))
        started = time.monotonic()
        res = check(h, time_budget=60)
        took = time.monotonic() - started
        print(f"  corrupted: {res.status} in {took:.3f}s")
        assert res.status == "violation" and victim is not None and res.key == victim.key


# --------------------------------------------------------------------------------------------------
# Against a brute-force reference: random small histories (mostly not linearizable), every order.


def brute_force_linearizable(h: History) -> bool:
    """Try every order (no memo, no pruning): the definition, executed."""
    ops = [op for op in h.ops if op.status != "failed" and not (op.kind == "read" and op.status != "ok")]
    by_key: dict[object, list[Op]] = {}
    for op in ops:
        by_key.setdefault(op.key, []).append(op)

    def step(op: Op, state: bytes | None) -> tuple[bool, bytes | None]:
        if op.kind == "read":
            return op.result == state, state
        if op.kind == "write":
            return True, op.value
        if op.kind == "delete":
            return True, None
        if op.status == "ok" and op.ok is False:
            return state != op.expected, state
        return state == op.expected, op.value

    def search(remaining: list[Op], state: bytes | None) -> bool:
        if all(op.status != "ok" for op in remaining):
            return True  # the rest had unknown outcomes: they never took effect
        for x in remaining:
            if any(
                y.completed is not None and y.completed < x.invoked for y in remaining if y.status == "ok"
            ):
                continue  # some op that returned before x was invoked is not placed yet
            good, new_state = step(x, state)
            if good and search([y for y in remaining if y is not x], new_state):
                return True
        return False

    return all(search(key_ops, None) for key_ops in by_key.values())


def random_small_history(seed: int) -> History:
    rng = random.Random(seed)
    values = [None, b"a", b"b"]
    h = History()
    planned = []
    for p in range(rng.randrange(1, 5)):
        t = rng.randrange(3)
        for _ in range(rng.randrange(1, 4)):
            start = t + rng.randrange(2)
            end = start + rng.randrange(4)
            planned.append((start, p, end))
            t = end
    for start, p, end in sorted(planned):
        kind = rng.choice(["read", "read", "write", "cas", "delete"])
        key = rng.choice([b"x", b"x", b"y"])
        complete: float | None = None if rng.random() < 0.2 else end
        value = rng.choice(values[1:]) if kind in ("write", "cas") else None
        expected = rng.choice(values) if kind == "cas" else None
        op = h.invoke(process=p, kind=kind, key=key, value=value, expected=expected, at=start)  # type: ignore[arg-type]
        if complete is None:
            h.timeout(op)
        elif kind == "read":
            h.complete(op, at=complete, result=rng.choice(values))
        elif kind == "cas":
            h.complete(op, at=complete, ok=rng.random() < 0.5)
        elif rng.random() < 0.1:
            h.fail(op, at=complete)
        else:
            h.complete(op, at=complete)
    return h


def test_agrees_with_brute_force_on_random_small_histories() -> None:
    verdicts = {"ok": 0, "violation": 0}
    for seed in range(1500):
        h = random_small_history(seed)
        res = check(h, time_budget=5)
        expected = "ok" if brute_force_linearizable(h) else "violation"
        assert res.status == expected, f"seed {seed}: checker says {res.status}, brute force {expected}\n" + (
            "\n".join(str(op) for op in h.ops)
        )
        verdicts[res.status] += 1
    assert min(verdicts.values()) > 200, verdicts  # both verdicts well represented
