"""The batteries' state machines without a cluster: the value codec, deterministic apply,
snapshot/restore round trips, and each object against a plain-Python reference (hypothesis)."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raftlib import valuecodec
from raftlib.recipes import (
    CommandError,
    CommandFailed,
    Counter,
    Election,
    InvalidLease,
    LockNotHeld,
    Locks,
    PayloadTooLarge,
    Queue,
    QueueEmpty,
    QueueFull,
    RecipeError,
    ReplDict,
    Replicated,
    ReplicatedStateMachine,
    ReplSet,
    UnknownCommand,
    UnsupportedVersion,
    replicated,
)
from raftlib.sessions import plain_entry
from raftlib.valuecodec import CodecError, decode, encode

# -- the codec ------------------------------------------------------------------------------------

finite = st.floats(allow_nan=False, allow_infinity=False)
scalars = st.none() | st.booleans() | st.integers() | finite | st.text()
hashables = st.recursive(
    scalars | st.binary(max_size=8), lambda c: st.tuples(c, c) | st.frozensets(c, max_size=3), max_leaves=6
)
values = st.recursive(
    scalars | st.binary(max_size=16),
    lambda c: (
        st.lists(c, max_size=4)
        | st.tuples(c, c)
        | st.dictionaries(hashables, c, max_size=4)
        | st.dictionaries(st.text(max_size=4), c, max_size=4)
        | st.sets(hashables, max_size=3)
    ),
    max_leaves=20,
)


def same(a: Any, b: Any) -> bool:
    """Equal and of the same types all the way down (1 == True == 1.0 is not enough)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return bool(a == b)


@given(values)
@settings(max_examples=300, deadline=None)
def test_codec_round_trip_keeps_values_and_types(v: Any) -> None:
    assert same(decode(encode(v)), v)


def test_codec_refuses_unknown_versions_oversize_payloads_and_foreign_types() -> None:
    with pytest.raises(UnsupportedVersion) as err:
        decode(b"\x02[]")
    assert err.value.version == 2
    with pytest.raises(PayloadTooLarge) as too_big:
        encode("x" * 100, max_bytes=50)
    assert too_big.value.limit == 50 and too_big.value.size > 50
    with pytest.raises(PayloadTooLarge):
        decode(b"\x01" + b" " * 100, max_bytes=50)
    for bad in (object(), float("nan"), {1: object()}, type("S", (str,), {})("sub")):
        with pytest.raises(CodecError):
            encode(bad)
    with pytest.raises(CodecError, match="unknown tag"):
        decode(b'\x01{"$zz":1}')
    with pytest.raises(CodecError, match="nested deeper"):
        encode(list(itertools.accumulate(range(40), lambda acc, _: [acc], initial=[]))[-1])
    with pytest.raises(CodecError):
        decode(b"")
    for constant in (b"NaN", b"[Infinity]", b"-Infinity"):
        with pytest.raises(CodecError, match="finite"):
            decode(b"\x01" + constant)
    with pytest.raises(CodecError):
        encode([1, float("inf")])
    with pytest.raises(CodecError):
        decode(b"\x01{not json")


def test_codec_parses_exactly_what_the_json_parser_accepts() -> None:
    # decode's one-value fast path must agree with the full parser: whitespace around the value
    # is accepted, trailing data, a missing value, a truncated one and a lone surrogate are not.
    assert decode(b'\x01 [1, {"a": []}] \n') == [1, {"a": []}]
    assert decode(b"\x01{}") == {} and decode(b"\x01[{}]") == [{}]
    for bad in (b"\x01[1] [2]", b"\x01[1]x", b"\x01", b"\x01 ", b"\x01[1,", b"\x01\xff"):
        with pytest.raises(CodecError):
            decode(bad)
    with pytest.raises(CodecError, match="not valid Unicode"):
        encode(["ok", "\ud800"])  # UTF-8 has no lone surrogates: refused as a codec error
    assert encode({}) == b"\x01{}" and encode({"$x": 1}) == b'\x01{"$d":[["$x",1]]}'
    # Tags and the depth bound are honoured however the text is written, and the untagged
    # fast path (no non-empty object) gives the same values as the full walk.
    assert decode(b'\x01{"\\u0024b":"AAE="}') == b"\x00\x01"
    assert decode(b'\x01 {"$t":[1]}') == (1,)
    assert decode(b'\x01["{\\"$t\\":[1]}",{},[]]') == ['{"$t":[1]}', {}, []]
    deep = b"\x01" + b"[" * 33 + b"]" * 33
    with pytest.raises(CodecError, match="deeper"):
        decode(deep)
    assert decode(b"\x01" + b"[" * 32 + b"]" * 32) == list(
        itertools.accumulate(range(31), lambda acc, _: [acc], initial=[]))[-1]


def test_recorded_errors_travel_as_their_own_class() -> None:
    err = decode(encode(LockNotHeld("nope", "k", "o", 3)))
    assert type(err) is LockNotHeld and err.details == ("k", "o", 3)
    generic = decode(b'\x01{"$e":["from_a_newer_build","m",[]]}')
    assert type(generic) is CommandError and generic.message == "m"


# -- a group driven entry by entry ------------------------------------------------------------------


class Driver:
    """Feeds a group entries as the node would, one log index at a time."""

    def __init__(self, group: ReplicatedStateMachine) -> None:
        self.group = group
        self.index = 0
        self.time = 1_000_000.0

    def __call__(self, name: str, method: str, *args: Any, **kwargs: Any) -> Any:
        self.index += 1
        self.time += 0.001
        payload = encode([name, method, list(args), kwargs])
        return self.group.apply(plain_entry(payload, self.time), self.index)


def fresh() -> tuple[ReplicatedStateMachine, Driver]:
    g = ReplicatedStateMachine()
    for obj in (ReplDict("d"), Counter("c"), ReplSet("s"), Queue("q", maxsize=3), Locks("l"), Election("e")):
        g.add(obj)
    return g, Driver(g)


def snapshot_bytes(g: ReplicatedStateMachine) -> bytes:
    w = g.snapshot()
    try:
        return b"".join(w.chunks())
    finally:
        w.release()


def restored(data: bytes) -> ReplicatedStateMachine:
    twin, _ = fresh()
    twin.restore(data)
    return twin


ops = st.lists(
    st.one_of(
        st.tuples(st.just("put"), st.sampled_from("abcd"), st.integers(0, 3)),
        st.tuples(st.just("delete"), st.sampled_from("abcd")),
        st.tuples(st.just("cas"), st.sampled_from("abcd"), st.integers(0, 3), st.integers(0, 3)),
        st.tuples(st.just("put_if_absent"), st.sampled_from("abcd"), st.integers(0, 3)),
        st.tuples(st.just("update"), st.dictionaries(st.sampled_from("abcd"), st.integers(0, 3), max_size=3)),
        st.tuples(st.just("clear")),
    ),
    max_size=40,
)


def reference(model: dict[str, int], op: tuple[Any, ...]) -> Any:
    name, *args = op
    if name == "put":
        old = model.get(args[0])
        model[args[0]] = args[1]
        return old
    if name == "delete":
        return model.pop(args[0], None) is not None or False
    if name == "cas":
        if args[0] in model and model[args[0]] == args[1]:
            model[args[0]] = args[2]
            return True
        return False
    if name == "put_if_absent":
        if args[0] in model:
            return False
        model[args[0]] = args[1]
        return True
    if name == "update":
        model.update(args[0])
        return len(model)
    n = len(model)
    model.clear()
    return n


@given(ops, st.integers(0, 40))
@settings(max_examples=150, deadline=None)
def test_repl_dict_behaves_like_a_python_dict_and_survives_a_snapshot_anywhere(
    script: list[tuple[Any, ...]], cut: int
) -> None:
    g, drive = fresh()
    model: dict[str, int] = {}
    d = g.objects["d"]
    assert isinstance(d, ReplDict)
    for i, op in enumerate(script):
        if i == cut:  # restore a twin from a snapshot here and carry on with it
            g = restored(snapshot_bytes(g))
            drive.group = g
            d = g.objects["d"]
            assert isinstance(d, ReplDict)
        assert drive("d", *op) == reference(model, op)
        assert d.to_dict() == model


@given(st.lists(st.one_of(st.tuples(st.just("push"), st.integers()), st.tuples(st.just("pop"))), max_size=30))
@settings(max_examples=100, deadline=None)
def test_queue_is_a_bounded_fifo(script: list[tuple[Any, ...]]) -> None:
    g, drive = fresh()
    model: list[int] = []
    for op in script:
        result = drive("q", *op)
        if op[0] == "push":
            if len(model) >= 3:
                assert isinstance(result, QueueFull)
            else:
                model.append(op[1])
                assert result == len(model)
        elif model:
            assert result == model.pop(0)
        else:
            assert isinstance(result, QueueEmpty)
    assert g.objects["q"].items() == model  # type: ignore[attr-defined]


@given(st.lists(st.tuples(st.sampled_from(["add", "discard"]), st.sampled_from([1, "x", (1, 2), b"b"]))))
@settings(max_examples=100, deadline=None)
def test_repl_set_behaves_like_a_python_set(script: list[tuple[str, Any]]) -> None:
    g, drive = fresh()
    model: set[Any] = set()
    for method, item in script:
        expected = (item not in model) if method == "add" else (item in model)
        getattr(model, method)(item)
        assert drive("s", method, item) == expected
    assert restored(snapshot_bytes(g)).objects["s"].members() == model  # type: ignore[attr-defined]


def test_counter_adds_sets_and_compares() -> None:
    g, drive = fresh()
    assert drive("c", "add", 5) == 5
    assert drive("c", "add", -2) == 3
    assert drive("c", "set", 10) == 3
    assert drive("c", "compare_and_set", 9, 0) is False
    assert drive("c", "compare_and_set", 10, 11) is True
    assert isinstance(drive("c", "add", "1"), CommandError)
    assert restored(snapshot_bytes(g)).objects["c"].value == 11  # type: ignore[attr-defined]


def test_lock_tokens_are_grant_indexes_and_only_the_holder_may_refresh_or_release() -> None:
    g, drive = fresh()
    locks = g.objects["l"]
    assert isinstance(locks, Locks)
    t1 = drive("l", "try_acquire", "k", "alice", 5.0)
    assert t1 == drive.index
    assert drive("l", "try_acquire", "k", "bob", 5.0) is None
    assert drive("l", "try_acquire", "k", "alice", 5.0) == t1  # re-entrant: a refresh
    assert isinstance(drive("l", "release", "k", "bob", t1), LockNotHeld)
    assert isinstance(drive("l", "refresh", "k", "alice", t1 - 1), LockNotHeld)  # stale token
    assert drive("l", "refresh", "k", "alice", t1) == t1
    assert drive("l", "release", "k", "alice", t1) is None
    t2 = drive("l", "try_acquire", "k", "bob", 5.0)
    assert t2 > t1
    assert isinstance(drive("l", "try_acquire", "", "bob", 5.0), InvalidLease)
    assert isinstance(drive("l", "try_acquire", "k2", "bob", -1), InvalidLease)


def test_an_expiry_applies_only_to_the_grant_and_refresh_it_was_decided_for() -> None:
    g, drive = fresh()
    locks = g.objects["l"]
    assert isinstance(locks, Locks)
    token = drive("l", "try_acquire", "k", "alice", 5.0)
    holder = locks.holder("k")
    assert holder is not None and holder.epoch == 0
    drive("l", "refresh", "k", "alice", token)  # a refresh landed before the expiry
    assert drive("l", "expire", "k", token, 0) is False
    assert locks.holder("k") is not None
    assert drive("l", "expire", "k", token, 1) is True
    assert locks.holder("k") is None


def test_lease_deadlines_are_local_and_the_leader_proposes_expiry_when_due(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import raftlib.recipes.lock as lock_module

    now = [100.0]
    monkeypatch.setattr(lock_module.time, "monotonic", lambda: now[0])
    g, drive = fresh()
    locks = g.objects["l"]
    assert isinstance(locks, Locks)
    token = drive("l", "try_acquire", "k", "alice", 2.0)
    assert locks.due_commands() == []
    now[0] = 102.5
    assert locks.due_commands() == [("expire", ["k", token, 0])]
    locks.on_promoted()  # a new leader gives every lease a full TTL from its own clock
    assert locks.due_commands() == []
    now[0] = 104.6
    assert locks.due_commands() == [("expire", ["k", token, 0])]


def test_the_deadline_heap_of_a_member_that_never_leads_stays_bounded_and_still_expires(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A follower applies every grant and refresh but never pops its heap (only the leader's
    # due_commands does): stale entries are dropped, the live leases keep their deadlines.
    import raftlib.recipes.lock as lock_module

    now = [100.0]
    monkeypatch.setattr(lock_module.time, "monotonic", lambda: now[0])
    g, drive = fresh()
    locks = g.objects["l"]
    assert isinstance(locks, Locks)
    kept = drive("l", "try_acquire", "kept", "carol", 2.0)
    for _ in range(2000):
        token = drive("l", "try_acquire", "k", "alice", 30.0)
        drive("l", "refresh", "k", "alice", token)
        drive("l", "release", "k", "alice", token)
    assert len(locks._heap) <= 2 * len(locks.held()) + 64
    now[0] = 102.5  # the one lease still held is due, whatever was dropped
    assert locks.due_commands() == [("expire", ["kept", kept, 0])]


def test_every_object_round_trips_through_a_snapshot() -> None:
    g, drive = fresh()
    drive("d", "update", {"a": 1, (1, 2): b"x", "nested": {"k": [1, 2.5, None]}})
    for i in range(2500):  # more than one snapshot record
        drive("d", "put", f"k{i}", i)
    drive("c", "add", 7)
    drive("s", "add", frozenset({1, 2}))
    drive("q", "push", "first")
    drive("q", "push", ("second", 2))
    drive("l", "try_acquire", "k", "alice", 9.0)
    drive("e", "try_acquire", "leader", "n1", 3.0)
    twin = restored(snapshot_bytes(g))
    assert twin.objects["d"].to_dict() == g.objects["d"].to_dict()  # type: ignore[attr-defined]
    assert twin.objects["c"].value == 7  # type: ignore[attr-defined]
    assert twin.objects["s"].members() == {frozenset({1, 2})}  # type: ignore[attr-defined]
    assert twin.objects["q"].items() == ["first", ("second", 2)]  # type: ignore[attr-defined]
    assert twin.objects["l"].held() == g.objects["l"].held()  # type: ignore[attr-defined]
    assert twin.objects["e"].leader().owner == "n1"  # type: ignore[attr-defined]
    assert snapshot_bytes(twin) == snapshot_bytes(g)


def test_get_returns_a_registered_object_of_the_asked_type() -> None:
    g, _ = fresh()
    assert g.get("d", ReplDict) is g.objects["d"]
    with pytest.raises(RecipeError, match="is a ReplDict, not a Counter"):
        g.get("d", Counter)
    with pytest.raises(RecipeError, match="no object named 'x'"):
        g.get("x", Counter)


def test_a_snapshot_restores_only_onto_the_same_objects() -> None:
    g, drive = fresh()
    drive("c", "add", 1)
    other = ReplicatedStateMachine()
    other.add(Counter("c"))
    with pytest.raises(RecipeError, match="same objects"):
        other.restore(snapshot_bytes(g))
    renamed = ReplicatedStateMachine()
    for obj in (ReplDict("d"), ReplDict("c"), ReplSet("s"), Queue("q"), Locks("l"), Election("e")):
        renamed.add(obj)
    with pytest.raises(RecipeError, match="is a Counter in the snapshot"):
        renamed.restore(snapshot_bytes(g))


def test_unknown_objects_methods_and_garbage_are_recorded_errors_not_crashes() -> None:
    g, drive = fresh()
    assert isinstance(drive("nope", "put", 1, 2), UnknownCommand)
    assert isinstance(drive("d", "__init__", "x"), UnknownCommand)
    assert isinstance(drive("d", "get", "x"), UnknownCommand)  # a local read is not a command
    assert isinstance(g.apply(plain_entry(b"\x01[1,2]"), 99), CommandError)
    assert isinstance(g.apply(plain_entry(b"\x07future"), 100), CommandError)


# -- your own objects ---------------------------------------------------------------------------------


class Inventory(Replicated):
    """A user-defined object: stock per item, never negative."""

    version = 2

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.stock: dict[str, int] = {}

    @replicated
    def receive(self, item: str, n: int) -> int:
        self.stock[item] = self.stock.get(item, 0) + n
        return self.stock[item]

    @replicated
    def ship(self, item: str, n: int = 1) -> int:
        have = self.stock.get(item, 0)
        if have < n:
            raise CommandError(f"only {have} {item} in stock", item, have)
        self.stock[item] = have - n
        return self.stock[item]

    @replicated
    def buggy(self) -> None:
        raise ZeroDivisionError("oops")

    def snapshot_state(self) -> Any:
        return dict(self.stock)

    def restore_state(self, state: Any, version: int) -> None:
        self.stock = dict(state) if version >= 2 else {k: int(v) for k, v in state}


def test_decorated_methods_become_commands_and_failures_are_recorded() -> None:
    g = ReplicatedStateMachine()
    inv = g.add(Inventory("inv"))
    drive = Driver(g)
    assert set(Inventory.commands) == {"receive", "ship", "buggy"}
    assert drive("inv", "receive", "apple", 3) == 3
    assert drive("inv", "ship", "apple", n=2) == 1
    err = drive("inv", "ship", "apple", 5)
    assert type(err) is CommandError and err.details == ("apple", 1)
    failed = drive("inv", "buggy")
    assert isinstance(failed, CommandFailed) and failed.details == ("ZeroDivisionError",)
    assert inv.stock == {"apple": 1}
    twin = ReplicatedStateMachine()
    twin.add(Inventory("inv"))
    twin.restore(snapshot_bytes(g))
    assert twin.objects["inv"].stock == {"apple": 1}  # type: ignore[attr-defined]


async def test_calling_a_command_checks_arguments_and_needs_a_connection() -> None:
    g = ReplicatedStateMachine()
    inv = g.add(Inventory("inv"))
    # Arguments are checked against the signature before anything is sent: too few, too many,
    # an unknown keyword; then valid calls (positional or keyword) get as far as the connection.
    for args, kwargs in (((), {}), (("apple", 1, 2), {}), (("apple",), {"m": 1}), (("apple", 1), {"n": 1})):
        with pytest.raises(TypeError, match=r"Inventory\.ship"):
            await inv.ship(*args, **kwargs)
    for args, kwargs in ((("apple",), {}), (("apple", 2), {}), ((), {"item": "apple", "n": 2})):
        with pytest.raises(RecipeError, match="not connected"):
            await inv.ship(*args, **kwargs)
    with pytest.raises(RecipeError, match="already registered"):
        g.add(Inventory("inv"))

    async def coro(self: Any) -> None: ...

    with pytest.raises(TypeError, match="plain function"):
        replicated(coro)  # it would run inside apply


def test_snapshot_of_a_newer_object_version_is_refused() -> None:
    g = ReplicatedStateMachine()
    g.add(Inventory("inv"))
    data = snapshot_bytes(g)

    class OldInventory(Inventory):
        version = 1

    old = ReplicatedStateMachine()
    obj = OldInventory("inv")
    old.add(obj)
    type(obj).__qualname__ = "Inventory"
    try:
        with pytest.raises(RecipeError, match="version 2"):
            old.restore(data)
    finally:
        OldInventory.__qualname__ = "OldInventory"


def test_deterministic_apply_two_groups_fed_the_same_entries_agree() -> None:
    a, drive_a = fresh()
    b, drive_b = fresh()
    script = [("d", "put", "x", 1), ("q", "push", 1), ("l", "try_acquire", "k", "o", 1.0), ("s", "add", "m"),
              ("c", "add", 2), ("q", "pop"), ("d", "cas", "x", 1, 2), ("l", "release", "k", "o", 3)]
    for name, method, *args in script:
        assert repr(drive_a(name, method, *args)) == repr(drive_b(name, method, *args))
    assert snapshot_bytes(a) == snapshot_bytes(b)
    assert valuecodec.VERSION == 1
