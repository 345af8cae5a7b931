"""A linearizability checker for histories of key/register operations.

Record what clients did (invocations, completions, failures, timeouts) in a :class:`History`, then
ask :func:`check` whether some total order of the operations explains every observed result while
respecting real time. Each key is an independent register holding ``bytes`` or ``None`` (absent);
the operations are ``read``, ``write``, ``delete`` (a write of ``None``) and ``cas``
(compare-and-set).

>>> from raftlib.testing.linearizability import History, check
>>> h = History()
>>> w = h.invoke(process="c1", kind="write", key=b"x", value=b"1", at=0.0)
>>> r = h.invoke(process="c2", kind="read", key=b"x", at=0.5)
>>> h.complete(w, at=1.0)
>>> h.complete(r, at=2.0, result=b"1")
>>> check(h).status
'ok'

The search is Wing & Gong's algorithm with Lowe's memoisation of visited configurations and
P-compositionality (each key is checked on its own); see ``docs/linearizability.md``.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

__all__ = [
    "CheckResult",
    "History",
    "KeyResult",
    "Op",
    "OpKind",
    "OpStatus",
    "Status",
    "check",
]

OpKind = Literal["read", "write", "delete", "cas"]
"""The kinds of operation the register model understands."""

OpStatus = Literal["pending", "ok", "failed", "unknown"]
"""Where an operation stands: in flight, completed, definitely not applied, or outcome unknown."""

Status = Literal["ok", "violation", "unknown"]
"""A verdict: linearizable, not linearizable, or undecided (time budget exhausted)."""

_KINDS: Final = frozenset({"read", "write", "delete", "cas"})


class _Missing:
    """Sentinel type: "no argument given" (``None`` is a meaningful read result)."""

    def __repr__(self) -> str:
        return "<missing>"


_MISSING: Final = _Missing()


class Op:
    """One client operation of a :class:`History` (the handle :meth:`History.invoke` returns).

    Attributes: ``id`` (position in the history), ``process``, ``kind``, ``key``, ``value`` (the
    value written, or a CAS's new value), ``expected`` (a CAS's expected value), ``invoked`` and
    ``completed`` (timestamps; ``completed`` is ``None`` until the op completes, and stays ``None``
    for a timeout), ``status``, ``result`` (what a read observed) and ``ok`` (a CAS's outcome).

    >>> h = History()
    >>> op = h.invoke(process="c1", kind="cas", key=b"k", expected=None, value=b"v", at=1)
    >>> h.complete(op, at=2, ok=True)
    >>> str(op)
    "#0 c1 cas(b'k', None -> b'v') -> True [1, 2]"
    """

    __slots__ = (
        "completed",
        "expected",
        "id",
        "invoked",
        "key",
        "kind",
        "ok",
        "process",
        "result",
        "status",
        "value",
    )

    def __init__(
        self,
        id: int,
        process: Hashable,
        kind: OpKind,
        key: Hashable,
        value: bytes | None,
        expected: bytes | None,
        invoked: float,
    ) -> None:
        self.id = id
        self.process = process
        self.kind: OpKind = kind
        self.key = key
        self.value = value
        self.expected = expected
        self.invoked = invoked
        self.completed: float | None = None
        self.status: OpStatus = "pending"
        self.result: bytes | None = None
        self.ok: bool | None = None

    def describe_call(self) -> str:
        """The invocation as text, e.g. ``write(b'x', b'1')``.

        >>> h = History()
        >>> h.invoke(process=1, kind="read", key=b"x", at=0).describe_call()
        "read(b'x')"
        """
        if self.kind == "read" or self.kind == "delete":
            return f"{self.kind}({self.key!r})"
        if self.kind == "write":
            return f"write({self.key!r}, {self.value!r})"
        return f"cas({self.key!r}, {self.expected!r} -> {self.value!r})"

    def describe_outcome(self) -> str:
        """The outcome as text: a read's value, a CAS's ``True``/``False``, ``ok``, ``?`` or ``failed``.

        >>> h = History()
        >>> op = h.invoke(process=1, kind="write", key=b"x", value=b"1", at=0)
        >>> h.timeout(op)
        >>> op.describe_outcome()
        '? (unknown)'
        """
        if self.status == "pending":
            return "? (pending)"
        if self.status == "unknown":
            return "? (unknown)"
        if self.status == "failed":
            return "failed"
        if self.kind == "read":
            return repr(self.result)
        if self.kind == "cas":
            return repr(self.ok)
        return "ok"

    def __str__(self) -> str:
        end = "?" if self.completed is None else f"{self.completed:g}"
        closing = ")" if self.completed is None else "]"
        return (
            f"#{self.id} {self.process} {self.describe_call()} -> {self.describe_outcome()} "
            f"[{self.invoked:g}, {end}{closing}"
        )

    def __repr__(self) -> str:
        return f"<Op {self}>"


class History:
    """A record of client operations on independent registers, for :func:`check`.

    Record live (``invoke`` then ``complete``/``fail``/``timeout``) or after the fact with
    :meth:`add`. Timestamps may come from any monotonic clock (only their order matters); an op
    that completes at the same instant another is invoked is treated as concurrent with it.

    * ``complete`` -- the op took effect; a read gives ``result=`` (``None`` = key absent), a CAS
      gives ``ok=``.
    * ``fail`` -- the op definitely did *not* take effect (e.g. ``NotLeader`` before proposing);
      it is dropped from the history.
    * ``timeout`` -- the outcome is unknown: the op may take effect at any time after its
      invocation, or never. An unknown read constrains nothing. Ops still pending when the
      history is checked are treated the same way.

    A process may not have two operations in flight; after a timeout it may continue.

    >>> h = History()
    >>> a = h.invoke(process="c1", kind="write", key=b"x", value=b"1", at=0)
    >>> h.complete(a, at=1)
    >>> b = h.invoke(process="c1", kind="write", key=b"x", value=b"2", at=2)
    >>> h.timeout(b)                        # may or may not have happened
    >>> h.add(process="c2", kind="read", key=b"x", invoke=3, complete=4, result=b"2")
    <Op #2 c2 read(b'x') -> b'2' [3, 4]>
    >>> check(h).status                     # the timed-out write must have happened: fine
    'ok'
    """

    def __init__(self) -> None:
        self._ops: list[Op] = []
        self._in_flight: dict[Hashable, Op] = {}
        self._last: dict[Hashable, Op] = {}

    @property
    def ops(self) -> Sequence[Op]:
        """All operations recorded so far (including failed ones), in invocation-call order.

        >>> History().ops
        []
        """
        return self._ops

    def __len__(self) -> int:
        return len(self._ops)

    def invoke(
        self,
        *,
        process: Hashable,
        kind: OpKind,
        key: Hashable,
        at: float,
        value: bytes | None = None,
        expected: bytes | None = None,
    ) -> Op:
        """Record the invocation of an operation at time ``at`` and return its handle.

        ``value`` is what a write stores or a CAS installs; ``expected`` is what a CAS compares
        against (``None`` = "key absent"). A ``delete`` is a write of ``None``.

        >>> h = History()
        >>> op = h.invoke(process="c1", kind="write", key=b"x", value=b"1", at=10.0)
        >>> op.status
        'pending'
        """
        if kind not in _KINDS:
            raise ValueError(f"unknown operation kind {kind!r} (expected one of {sorted(_KINDS)})")
        if kind == "read" and (value is not None or expected is not None):
            raise ValueError("a read takes no value or expected")
        if kind == "write" and expected is not None:
            raise ValueError("a write takes no expected (did you mean kind='cas'?)")
        if kind == "delete" and (value is not None or expected is not None):
            raise ValueError("a delete takes no value or expected")
        in_flight = self._in_flight.get(process)
        if in_flight is not None:
            raise ValueError(
                f"process {process!r} invoked {kind} at {at!r} while op #{in_flight.id} "
                f"({in_flight.describe_call()}, invoked at {in_flight.invoked!r}) is still in flight: "
                "operations of one process must not overlap"
            )
        last = self._last.get(process)
        if last is not None:
            if at < last.invoked:
                raise ValueError(
                    f"process {process!r} invoked at {at!r}, before its previous op #{last.id} "
                    f"(invoked at {last.invoked!r})"
                )
            if last.completed is not None and at < last.completed:
                raise ValueError(
                    f"process {process!r} invoked at {at!r}, before its previous op #{last.id} "
                    f"completed (at {last.completed!r}): operations of one process must not overlap"
                )
        op = Op(len(self._ops), process, kind, key, value, expected, at)
        self._ops.append(op)
        self._in_flight[process] = op
        self._last[process] = op
        return op

    def _finish(self, op: Op, at: float | None, status: OpStatus) -> None:
        if op.id >= len(self._ops) or self._ops[op.id] is not op:
            raise ValueError(f"op {op} does not belong to this history")
        if op.status != "pending":
            raise ValueError(f"op {op} completed twice (it is already {op.status})")
        if at is not None and at < op.invoked:
            raise ValueError(f"op #{op.id} completes at {at!r}, before its invocation at {op.invoked!r}")
        op.completed = at
        op.status = status
        if self._in_flight.get(op.process) is op:
            del self._in_flight[op.process]

    def complete(
        self,
        op: Op,
        *,
        at: float,
        ok: bool | None = None,
        result: bytes | _Missing | None = _MISSING,
    ) -> None:
        """Record that ``op`` completed at ``at`` with its outcome.

        A read needs ``result=`` (``None`` means the key was absent); a CAS needs ``ok=`` (whether
        the swap happened); a write or delete needs nothing (``ok=False`` is refused: use
        :meth:`fail` if it definitely did not happen, :meth:`timeout` if you do not know).

        >>> h = History()
        >>> r = h.invoke(process="c1", kind="read", key=b"x", at=0)
        >>> h.complete(r, at=1, result=None)
        >>> r.status, r.result
        ('ok', None)
        """
        if op.kind == "read":
            if isinstance(result, _Missing):
                raise ValueError(f"completing read #{op.id} needs result= (None means absent)")
            if ok is not None:
                raise ValueError(f"read #{op.id} completes with result=, not ok=")
        elif op.kind == "cas":
            if not isinstance(ok, bool):
                raise ValueError(f"completing cas #{op.id} needs ok=True or ok=False")
            if not isinstance(result, _Missing):
                raise ValueError(f"cas #{op.id} completes with ok=, not result=")
        else:
            if ok is False:
                raise ValueError(
                    f"{op.kind} #{op.id} completed with ok=False: use fail() if it definitely did not "
                    "take effect, or timeout() if its outcome is unknown"
                )
            if not isinstance(result, _Missing):
                raise ValueError(f"{op.kind} #{op.id} takes no result=")
        self._finish(op, at, "ok")
        if op.kind == "read":
            assert not isinstance(result, _Missing)
            op.result = result
        elif op.kind == "cas":
            op.ok = ok

    def fail(self, op: Op, *, at: float | None = None) -> None:
        """Record that ``op`` definitely did not take effect; the checker ignores it.

        >>> h = History()
        >>> op = h.invoke(process="c1", kind="write", key=b"x", value=b"1", at=0)
        >>> h.fail(op, at=1)
        >>> op.status
        'failed'
        """
        self._finish(op, at, "failed")

    def timeout(self, op: Op, *, at: float | None = None) -> None:
        """Record that ``op``'s outcome is unknown (it may take effect any time later, or never).

        ``at`` is accepted for the record but ignored by the checker: the op's interval stays
        open to the end of time. The process may invoke its next op afterwards.

        >>> h = History()
        >>> op = h.invoke(process="c1", kind="write", key=b"x", value=b"1", at=0)
        >>> h.timeout(op, at=5)
        >>> op.status, op.completed
        ('unknown', None)
        """
        self._finish(op, at, "unknown")
        op.completed = None

    def add(
        self,
        *,
        process: Hashable,
        kind: OpKind,
        key: Hashable,
        invoke: float,
        complete: float | None,
        value: bytes | None = None,
        expected: bytes | None = None,
        ok: bool | None = None,
        result: bytes | _Missing | None = _MISSING,
    ) -> Op:
        """Record a whole operation at once; ``complete=None`` records a timeout.

        >>> h = History()
        >>> h.add(process="c1", kind="write", key=b"x", value=b"1", invoke=0, complete=1)
        <Op #0 c1 write(b'x', b'1') -> ok [0, 1]>
        >>> h.add(process="c2", kind="cas", key=b"x", expected=b"1", value=b"2", invoke=0.5, complete=None)
        <Op #1 c2 cas(b'x', b'1' -> b'2') -> ? (unknown) [0.5, ?)>
        """
        op = self.invoke(process=process, kind=kind, key=key, at=invoke, value=value, expected=expected)
        if complete is None:
            self.timeout(op)
        else:
            self.complete(op, at=complete, ok=ok, result=result)
        return op

    def validate(self) -> None:
        """Raise ``ValueError`` if operations of one process overlap in time.

        :meth:`invoke` already refuses most malformed input as it is recorded; this re-checks the
        whole history (``check`` calls it).

        >>> History().validate()
        """
        by_process: dict[Hashable, list[Op]] = {}
        for op in self._ops:
            by_process.setdefault(op.process, []).append(op)
        for process, ops in by_process.items():
            ops = sorted(ops, key=lambda o: (o.invoked, o.id))
            for prev, nxt in itertools.pairwise(ops):
                if prev.status == "pending":
                    raise ValueError(
                        f"process {process!r}: op #{prev.id} is still pending when op #{nxt.id} is invoked"
                    )
                if prev.completed is not None and nxt.invoked < prev.completed:
                    raise ValueError(
                        f"process {process!r}: op #{nxt.id} (invoked at {nxt.invoked!r}) overlaps "
                        f"op #{prev.id} (completed at {prev.completed!r})"
                    )

    def keys(self) -> list[Hashable]:
        """The keys touched, in order of first invocation.

        >>> h = History()
        >>> _ = h.invoke(process=1, kind="read", key=b"b", at=0)
        >>> _ = h.invoke(process=2, kind="read", key=b"a", at=0)
        >>> h.keys()
        [b'b', b'a']
        """
        return list(dict.fromkeys(op.key for op in self._ops))


@dataclass
class KeyResult:
    """The verdict for one key.

    ``linearization`` is a witness order when ``status == "ok"`` (ops that timed out and were
    judged never to have taken effect are absent from it); ``detail`` explains a violation.

    >>> h = History()
    >>> _ = h.add(process=1, kind="write", key=b"x", value=b"1", invoke=0, complete=1)
    >>> kr = check(h).per_key[b"x"]
    >>> kr.status, [op.id for op in kr.linearization]
    ('ok', [0])
    """

    key: Hashable
    status: Status
    ops: int
    detail: str = ""
    linearization: list[Op] = field(default_factory=list)
    elapsed: float = 0.0


@dataclass
class CheckResult:
    """The verdict of :func:`check` on a whole history.

    ``status`` is ``"violation"`` if any key is not linearizable (``key``/``detail`` name the
    first such key), else ``"unknown"`` if the time budget ran out (``key`` is the key being
    checked), else ``"ok"``. ``per_key`` holds each key's :class:`KeyResult`.

    >>> h = History()
    >>> _ = h.add(process=1, kind="read", key=b"x", invoke=0, complete=1, result=b"ghost")
    >>> res = check(h)
    >>> res.status, res.key, bool(res)
    ('violation', b'x', False)
    """

    status: Status
    key: Hashable | None = None
    detail: str = ""
    ops_checked: int = 0
    per_key: dict[Hashable, KeyResult] = field(default_factory=dict)
    elapsed: float = 0.0

    @property
    def ok(self) -> bool:
        """True when the history is linearizable.

        >>> CheckResult(status="ok").ok
        True
        """
        return self.status == "ok"

    def __bool__(self) -> bool:
        return self.status == "ok"

    def __str__(self) -> str:
        head = f"linearizability: {self.status} ({self.ops_checked} ops, {len(self.per_key)} keys, "
        head += f"{self.elapsed:.3f}s)"
        return head + ("\n" + self.detail if self.detail else "")


# ---------------------------------------------------------------------------------------------------
# The search.

# Step codes of the register model.
_READ: Final = 0  # requires state == a
_WRITE: Final = 1  # state := a
_CAS_OK: Final = 2  # requires state == b; state := a
_CAS_FAIL: Final = 3  # requires state != b

_BUDGET_CHECK_EVERY: Final = 2048
_MAX_LISTED: Final = 12


class _BudgetExhausted(Exception):
    pass


@dataclass
class _KeyOutcome:
    linearizable: bool
    order: list[int]  # op indexes (witness, or longest linearizable prefix)
    state: int  # the state id after `order`


def _relevant(ops: Iterable[Op]) -> list[Op]:
    """The ops that constrain the search: drop failed ops and reads with unknown outcome."""
    kept = []
    for op in ops:
        if op.status == "failed":
            continue
        if op.kind == "read" and op.status != "ok":
            continue
        kept.append(op)
    return kept


def _prune_unobservable(ops: list[Op]) -> list[Op]:
    """Drop unknown-outcome writes whose effect nothing could depend on.

    An unknown-outcome write (or CAS) of value v may be left out of any linearization when no op
    can observe v: no read returns v, no CAS expects v, and there is no failed CAS at all (a failed
    CAS observes "not e", which an extra write could make true). Removing the op from a
    linearization then only changes states that nobody reads, so it is safe to drop it up front.
    """
    observed: set[bytes | None] = set()
    failed_cas = False
    for op in ops:
        if op.kind == "read":
            observed.add(op.result)
        elif op.kind == "cas":
            observed.add(op.expected)
            if op.status == "ok" and op.ok is False:
                failed_cas = True
    if failed_cas:
        return ops
    kept = []
    for op in ops:
        if op.status != "ok" and op.kind != "read":
            new = None if op.kind == "delete" else op.value
            if new not in observed:
                continue
        kept.append(op)
    return kept


def _search(ops: list[Op], deadline: float | None) -> _KeyOutcome:
    """Wing & Gong's search with Lowe's memoisation over one key's ops; see the module docs.

    Completed ops live in a doubly linked list of call and return events in time order; an op may
    be linearized next only if its call precedes the first return still in the list (the first
    op not yet linearized that has returned must go before anything invoked after it returned).
    Ops with an unknown outcome have no return event: they sit in a second list and are tried only
    after the completed candidates, and linearizing them is optional.

    The memo records visited configurations (completed ops linearized, state) with the set of
    unknown-outcome ops already used. A configuration is skipped if one with the same completed
    set and state but a *subset* of those unknown-outcome ops was seen: that one had every option
    this one has.
    """
    n = len(ops)
    # Intern values as small ints: state 0 is "absent"; state 1 stands for every value that no op
    # can observe (no read returns it, no CAS expects it): such states are indistinguishable.
    observed: set[bytes | None] = {None}
    for op in ops:
        if op.kind == "read":
            observed.add(op.result)
        elif op.kind == "cas":
            observed.add(op.expected)
    ids: dict[bytes | None, int] = {None: 0}
    unobservable = 1

    def intern(v: bytes | None) -> int:
        if v not in observed:
            return unobservable
        i = ids.get(v)
        if i is None:
            i = ids[v] = len(ids) + 1
        return i

    code = [0] * n
    arg_a = [0] * n
    arg_b = [0] * n
    for i, op in enumerate(ops):
        if op.kind == "read":
            code[i], arg_a[i] = _READ, intern(op.result)
        elif op.kind == "write":
            code[i], arg_a[i] = _WRITE, intern(op.value)
        elif op.kind == "delete":
            code[i], arg_a[i] = _WRITE, 0
        elif op.status == "ok" and op.ok is False:
            code[i], arg_b[i] = _CAS_FAIL, intern(op.expected)
        else:  # a successful CAS, or an unknown one (which matters only if it succeeded)
            code[i], arg_a[i], arg_b[i] = _CAS_OK, intern(op.value), intern(op.expected)
    state_bits = max(1, (len(ids) + 1).bit_length())

    done = [i for i, op in enumerate(ops) if op.status == "ok"]  # completed: op index by slot
    open_ = [i for i, op in enumerate(ops) if op.status != "ok"]  # unknown outcome
    nd, no = len(done), len(open_)

    # Global event order; at equal times calls sort before returns (touching intervals overlap).
    # Main-list nodes: 2k is done[k]'s call, 2k+1 its return, 2*nd the head. Open-list nodes: j is
    # open_[j]'s call, no the head.
    events: list[tuple[float, int, int, int]] = []  # (time, call 0 / return 1, main 0 / open 1, node)
    for k, i in enumerate(done):
        completed_at = ops[i].completed
        assert completed_at is not None
        events.append((ops[i].invoked, 0, 0, 2 * k))
        events.append((completed_at, 1, 0, 2 * k + 1))
    for j, i in enumerate(open_):
        events.append((ops[i].invoked, 0, 1, j))
    events.sort()
    rank = [0] * (2 * nd)
    open_rank = [0] * no
    head = 2 * nd
    nxt = [-1] * (2 * nd + 1)
    prv = [-1] * (2 * nd + 1)
    open_head = no
    onxt = [-1] * (no + 1)
    oprv = [-1] * (no + 1)
    last = head
    open_order: list[int] = []
    for position, (_, _, which, node) in enumerate(events):
        if which == 0:
            rank[node] = position
            nxt[last], prv[node], last = node, last, node
        else:
            open_rank[node] = position
            open_order.append(node)

    # Open ops with the same effect are interchangeable (none has a return to order it): only the
    # first not yet linearized of each class, in invocation order, is ever tried. The open list
    # holds just those class heads, in invocation order.
    classes: dict[tuple[int, int, int], int] = {}
    open_class = [0] * no
    successor = [-1] * no  # the next member of the same class
    class_last: list[int] = []
    olast = open_head
    for node in open_order:
        i = open_[node]
        c = open_class[node] = classes.setdefault((code[i], arg_a[i], arg_b[i]), len(classes))
        if c == len(class_last):
            class_last.append(node)
            onxt[olast], oprv[node], olast = node, olast, node
        else:
            successor[class_last[c]] = node
            class_last[c] = node

    state = 0
    lin_done = 0  # bitset over slots of `done`
    lin_open = 0  # bitset over slots of `open_`
    remaining = nd
    # Frames: (node, state before, bound) where node >= 0 is a main-list call and node < 0 is
    # open-list node -node-1; bound is the rank of the first return when an open op was tried.
    stack: list[tuple[int, int, int]] = []
    seen: dict[int, tuple[int, ...]] = {}
    best: list[tuple[int, int, int]] = []
    best_state = 0
    entry = nxt[head]  # position in the main list, or -1 while scanning the open list
    oentry = -1  # position in the open list
    bound = 0
    steps = 0
    monotonic = time.monotonic

    def op_index(frame: tuple[int, int, int]) -> int:
        return done[frame[0] >> 1] if frame[0] >= 0 else open_[-frame[0] - 1]

    while remaining:
        steps += 1
        if deadline is not None and steps % _BUDGET_CHECK_EVERY == 0 and monotonic() > deadline:
            raise _BudgetExhausted
        if entry >= 0:
            if entry & 1:  # the first return still in the list: now try the open ops before it
                bound = rank[entry]
                entry = -1
                oentry = onxt[open_head]
                continue
            k = entry >> 1
            i = done[k]
            c = code[i]
            if c == _READ:
                good, new_state = state == arg_a[i], state
            elif c == _WRITE:
                good, new_state = True, arg_a[i]
            elif c == _CAS_OK:
                good, new_state = state == arg_b[i], arg_a[i]
            else:
                good, new_state = state != arg_b[i], state
            if good:
                new_done = lin_done | (1 << k)
                config = (new_done << state_bits) | new_state
                used = seen.get(config)
                if used is None:
                    seen[config] = (lin_open,)
                elif all(u & ~lin_open for u in used):  # no subset of lin_open seen: not dominated
                    seen[config] = (*[u for u in used if lin_open & ~u], lin_open)
                else:
                    used = ()
                if used != ():
                    stack.append((entry, state, 0))
                    state = new_state
                    lin_done = new_done
                    p, q = prv[entry], nxt[entry]  # lift the call and its return out of the list
                    nxt[p] = q
                    if q != -1:
                        prv[q] = p
                    r = entry + 1
                    p, q = prv[r], nxt[r]
                    nxt[p] = q
                    if q != -1:
                        prv[q] = p
                    remaining -= 1
                    entry = nxt[head]
                    continue
                if c in (_READ, _CAS_FAIL):  # see the note where such ops are backtracked
                    entry = -1
                    oentry = -1
                    continue
            entry = nxt[entry]
            continue
        if oentry != -1 and open_rank[oentry] < bound:
            j = oentry
            i = open_[j]
            # An open op is a write or a CAS. Two open ops in a row where the second is a write:
            # the first is pointless (nobody saw its effect and it was optional), so skip that order.
            good = (not stack or stack[-1][0] >= 0) if code[i] == _WRITE else state == arg_b[i]
            if good:
                new_state = arg_a[i]
                new_open = lin_open | (1 << j)
                config = (lin_done << state_bits) | new_state
                used = seen.get(config)
                if used is None:
                    seen[config] = (new_open,)
                elif all(u & ~new_open for u in used):  # no subset of new_open seen: not dominated
                    seen[config] = (*[u for u in used if new_open & ~u], new_open)
                else:
                    used = ()
                if used != ():
                    stack.append((-j - 1, state, bound))
                    state = new_state
                    lin_open = new_open
                    p, q = oprv[j], onxt[j]  # replace j by its successor in the open list
                    onxt[p] = q
                    if q != -1:
                        oprv[q] = p
                    s2 = successor[j]
                    if s2 != -1:
                        r2 = open_rank[s2]
                        while q != -1 and open_rank[q] < r2:
                            p, q = q, onxt[q]
                        onxt[p], oprv[s2], onxt[s2] = s2, p, q
                        if q != -1:
                            oprv[q] = s2
                    entry = nxt[head]
                    continue
            oentry = onxt[oentry]
            continue
        # No candidate left: backtrack.
        if len(stack) > len(best):
            best = stack.copy()
            best_state = state
        if not stack:
            return _KeyOutcome(False, [op_index(f) for f in best], best_state)
        node, state, bound = stack.pop()
        if node >= 0:
            k = node >> 1
            lin_done ^= 1 << k
            r = node + 1
            p, q = prv[r], nxt[r]
            nxt[p] = r
            if q != -1:
                prv[q] = r
            p, q = prv[node], nxt[node]
            nxt[p] = node
            if q != -1:
                prv[q] = node
            remaining += 1
            if code[done[k]] == _READ or code[done[k]] == _CAS_FAIL:
                # It left the state alone and could go first: nothing else at this configuration
                # can succeed where linearizing it right away failed. Keep backtracking.
                entry = -1
                oentry = -1
            else:
                entry = nxt[node]
        else:
            j = -node - 1
            lin_open ^= 1 << j
            s2 = successor[j]
            if s2 != -1:
                p, q = oprv[s2], onxt[s2]
                onxt[p] = q
                if q != -1:
                    oprv[q] = p
            p, q = oprv[j], onxt[j]
            onxt[p] = j
            if q != -1:
                oprv[q] = j
            entry = -1
            oentry = onxt[j]

    return _KeyOutcome(True, [op_index(f) for f in stack], state)


def _event_key(op: Op) -> tuple[float, int, int]:
    """Sort key of an op's return event (unknown outcomes return at +infinity)."""
    return (float("inf") if op.completed is None else op.completed, 1, op.id)


def _explain(key: Hashable, ops: list[Op], outcome: _KeyOutcome) -> str:
    """A readable account of why ``ops`` (one key's) are not linearizable."""
    prefix = [ops[i] for i in outcome.order]
    placed = set(outcome.order)
    state_value = _state_value_after(prefix)
    rest = [op for i, op in enumerate(ops) if i not in placed]
    blocking = min((op for op in rest if op.status == "ok"), key=_event_key)
    assert blocking.completed is not None
    candidates = [op for op in rest if op.invoked <= blocking.completed]
    lines = [
        f"key {key!r} is not linearizable: no order of its {len(ops)} ops explains every result.",
        f"Longest linearizable prefix found: {len(prefix)} of {len(ops)} ops"
        + (f" (last {_MAX_LISTED} shown):" if len(prefix) > _MAX_LISTED else ":"),
    ]
    if len(prefix) > _MAX_LISTED:
        lines.append("  ...")
    lines.extend(f"  {op}" for op in prefix[-_MAX_LISTED:])
    if not prefix:
        lines.append("  (none)")
    lines.append(f"State after that prefix: {state_value!r}.")
    lines.append(
        f"Op #{blocking.id} completed before any op not yet placed could start, so one of these had to be "
        "next, and none is consistent with that state:"
    )
    lines.extend(f"  {op}" for op in candidates[:_MAX_LISTED])
    if len(candidates) > _MAX_LISTED:
        lines.append(f"  ... and {len(candidates) - _MAX_LISTED} more")
    return "\n".join(lines)


def _state_value_after(prefix: list[Op]) -> bytes | None:
    state: bytes | None = None
    for op in prefix:
        if op.kind == "write":
            state = op.value
        elif op.kind == "delete":
            state = None
        elif op.kind == "cas" and not (op.status == "ok" and op.ok is False):
            state = op.value
    return state


def _check_key(key: Hashable, ops: list[Op], deadline: float | None) -> KeyResult:
    started = time.monotonic()
    relevant = _prune_unobservable(_relevant(ops))
    try:
        outcome = _search(relevant, deadline)
    except _BudgetExhausted:
        return KeyResult(
            key,
            "unknown",
            len(relevant),
            f"key {key!r}: time budget exhausted while checking its {len(relevant)} ops",
            elapsed=time.monotonic() - started,
        )
    elapsed = time.monotonic() - started
    if outcome.linearizable:
        return KeyResult(key, "ok", len(relevant), "", [relevant[i] for i in outcome.order], elapsed)
    return KeyResult(key, "violation", len(relevant), _explain(key, relevant, outcome), elapsed=elapsed)


def check(history: History | Iterable[Op], time_budget: float | None = 10.0) -> CheckResult:
    """Check whether ``history`` is linearizable with respect to independent registers.

    Each key is checked on its own (linearizability is compositional). ``time_budget`` bounds the
    wall-clock time in seconds (``None``: no bound); when it runs out the result is ``"unknown"``
    and ``key`` names the key being checked, unless a violation was already found. Raises
    ``ValueError`` for a malformed history.

    >>> h = History()
    >>> _ = h.add(process="c1", kind="write", key=b"x", value=b"1", invoke=0, complete=1)
    >>> _ = h.add(process="c2", kind="read", key=b"x", invoke=2, complete=3, result=None)
    >>> res = check(h)
    >>> res.status, res.key
    ('violation', b'x')
    >>> print(res.detail.splitlines()[0])
    key b'x' is not linearizable: no order of its 2 ops explains every result.
    """
    started = time.monotonic()
    deadline = None if time_budget is None else started + time_budget
    if isinstance(history, History):
        history.validate()
        ops: Sequence[Op] = history.ops
    else:
        ops = list(history)
    by_key: dict[Hashable, list[Op]] = {}
    for op in ops:
        by_key.setdefault(op.key, []).append(op)

    per_key: dict[Hashable, KeyResult] = {}
    exhausted = False
    for key, key_ops in by_key.items():
        if exhausted:
            per_key[key] = KeyResult(key, "unknown", 0, f"key {key!r}: not checked (time budget exhausted)")
            continue
        res = _check_key(key, key_ops, deadline)
        per_key[key] = res
        if res.status == "unknown":
            exhausted = True

    result = CheckResult("ok", ops_checked=sum(r.ops for r in per_key.values()), per_key=per_key)
    for status in ("violation", "unknown"):
        first = next((r for r in per_key.values() if r.status == status), None)
        if first is not None:
            result.status = first.status
            result.key = first.key
            result.detail = first.detail
            break
    result.elapsed = time.monotonic() - started
    return result
