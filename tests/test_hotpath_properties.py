"""Property tests: the compiled hot path behaves exactly like the pure reference.

* Random operation sequences are applied to a compiled and a pure :class:`Log`
  (and :class:`QuorumTracker`); every operation must give the same result or raise
  the same exception type, and the whole observable state must agree afterwards.
* The quorum functions of both modules are checked against brute-force oracles.
* The pure Log is also checked against a naive model (a dict index -> term) for
  the §5.3 follower rules.
"""

import itertools
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raftlib import _pycore

try:
    from raftlib import _core
except ImportError:  # not built: the differential tests are skipped
    _core = None

needs_compiled = pytest.mark.skipif(_core is None, reason="raftlib._core is not built (run `make build`)")
MODULES = [_pycore] if _core is None else [_pycore, _core]

EXAMPLES = int(os.environ.get("RAFTLIB_HYPOTHESIS_EXAMPLES", "150"))
SETTINGS = settings(
    max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=False
)


# -- oracles -------------------------------------------------------------------------------------


def oracle_committed(matches):
    """max i such that at least a majority of matches are >= i, by trying every candidate."""
    if not matches:
        return _pycore.MAX_INDEX
    majority = len(matches) // 2 + 1
    return max(i for i in [0, *matches] if sum(1 for x in matches if x >= i) >= majority)


def oracle_wins(votes):
    return not votes or sum(1 for v in votes if v == 1) >= len(votes) // 2 + 1


def oracle_joint_vote(incoming, outgoing):
    """Enumerate every completion of the pending votes: WON if all win, LOST if none does."""
    pending = [i for i, v in enumerate(incoming + outgoing) if v == -1]
    outcomes = set()
    for fill in itertools.product((0, 1), repeat=len(pending)):
        votes = list(incoming + outgoing)
        for i, v in zip(pending, fill, strict=True):
            votes[i] = v
        a, b = votes[: len(incoming)], votes[len(incoming) :]
        outcomes.add(oracle_wins(a) and oracle_wins(b))
    if outcomes == {True}:
        return _pycore.VOTE_WON
    if outcomes == {False}:
        return _pycore.VOTE_LOST
    return _pycore.VOTE_PENDING


matches_st = st.lists(st.integers(0, 20), max_size=9)
votes_st = st.lists(st.sampled_from([-1, 0, 1]), max_size=7)


@pytest.mark.parametrize("m", MODULES, ids=lambda m: m.__name__)
@SETTINGS
@given(matches=matches_st, outgoing=matches_st)
def test_committed_index_matches_oracle(m, matches, outgoing):
    assert m.committed_index(matches) == oracle_committed(matches)
    expected = min(oracle_committed(matches), oracle_committed(outgoing))
    assert m.joint_committed_index(matches, outgoing) == expected


@pytest.mark.parametrize("m", MODULES, ids=lambda m: m.__name__)
@SETTINGS
@given(incoming=votes_st, outgoing=votes_st)
def test_vote_result_matches_oracle(m, incoming, outgoing):
    assert m.vote_result(incoming) == oracle_joint_vote(incoming, [])
    assert m.joint_vote_result(incoming, outgoing) == oracle_joint_vote(incoming, outgoing)


# -- differential Log ---------------------------------------------------------------------------


def outcome(fn):
    """The result of ``fn()`` in a comparable form, or the type of the exception it raised."""
    try:
        result = fn()
    except (ValueError, IndexError, TypeError) as exc:
        kind = IndexError if isinstance(exc, IndexError) else type(exc)
        if isinstance(exc, IndexError):
            # LogIndexError is a distinct class per module; compare its name.
            return ("raise", kind, type(exc).__name__)
        return ("raise", kind)
    if isinstance(result, list):
        return [(e.index, e.term, e.type, e.data) for e in result]
    if hasattr(result, "data"):  # an Entry of either module
        return ("entry", result.index, result.term, result.type, result.data)
    return result


def snapshot_of(log):
    return (
        log.snapshot_index,
        log.snapshot_term,
        log.first_index(),
        log.last_index(),
        log.last_term(),
        len(log),
        [log.term(i) for i in range(log.snapshot_index, log.last_index() + 1)],
        [
            (e.index, e.term, e.type, e.data)
            for e in (log.entry(i) for i in range(log.first_index(), log.last_index() + 1))
        ],
    )


def draw_run(data, first, prev_term, max_len=6):
    """Specs (index, term, data, type) of a plausible run, occasionally malformed."""
    n = data.draw(st.integers(0, max_len), label="n")
    specs = []
    term = prev_term
    for k in range(n):
        term += data.draw(st.sampled_from([0, 0, 0, 1, 2]), label="bump")
        specs.append((first + k, term, data.draw(st.binary(max_size=40), label="data"), k % 2))
    if specs and data.draw(st.integers(0, 9), label="corrupt") == 0:
        i = data.draw(st.integers(0, len(specs) - 1), label="at")
        idx, term, payload, typ = specs[i]
        if data.draw(st.booleans(), label="how"):
            specs[i] = (idx + 1, term, payload, typ)  # gap
        else:
            specs[i] = (idx, max(0, term - 3), payload, typ)  # decreasing term
    return specs


def build(m, specs):
    return [m.Entry(i, t, d, ty) for i, t, d, ty in specs]


def any_index(data, log):
    return data.draw(st.integers(log.snapshot_index - 2, log.last_index() + 3), label="index")


@needs_compiled
@SETTINGS
@given(data=st.data())
def test_compiled_log_matches_pure_log(data):
    si = data.draw(st.integers(0, 5), label="snapshot_index")
    st_ = data.draw(st.integers(0, 3), label="snapshot_term")
    pure, comp = _pycore.Log(si, st_), _core.Log(si, st_)
    ops = [
        "append",
        "maybe_append",
        "maybe_append",
        "maybe_append",
        "compact",
        "truncate_after",
        "restore",
        "slice",
        "bytes_between",
        "term",
        "match_term",
        "entry",
        "conflict_hint",
        "is_up_to_date",
        "find_conflict",
    ]
    for _ in range(data.draw(st.integers(1, 40), label="steps")):
        op = data.draw(st.sampled_from(ops), label="op")
        last, snap = pure.last_index(), pure.snapshot_index
        if op == "append":
            specs = draw_run(data, last + 1, pure.last_term())
            calls = [(log, "append", (build(mod, specs),)) for log, mod in ((pure, _pycore), (comp, _core))]
        elif op in ("maybe_append", "find_conflict"):
            prev = data.draw(st.integers(max(0, snap - 1), last + 1), label="prev")
            if snap <= prev <= last and data.draw(st.integers(0, 4), label="mismatch"):
                prev_term = pure.term(prev)
            else:
                prev_term = data.draw(st.integers(0, 8), label="prev_term")
            specs = draw_run(data, prev + 1, prev_term)
            committed = data.draw(st.integers(0, max(0, last)), label="committed")
            calls = []
            for log, mod in ((pure, _pycore), (comp, _core)):
                batch = build(mod, specs)
                if op == "maybe_append":
                    calls.append((log, "maybe_append", (prev, prev_term, committed, batch)))
                else:
                    calls.append((log, "find_conflict", (batch,)))
        elif op == "restore":
            args = (data.draw(st.integers(0, 30), label="si"), data.draw(st.integers(0, 6), label="st"))
            calls = [(log, op, args) for log in (pure, comp)]
        elif op in ("slice", "bytes_between"):
            lo = any_index(data, pure)
            hi = data.draw(st.integers(lo - 1, last + 2), label="hi")
            args = (lo, hi, data.draw(st.integers(-1, 300), label="max_bytes")) if op == "slice" else (lo, hi)
            calls = [(log, op, args) for log in (pure, comp)]
        elif op in ("match_term", "conflict_hint", "is_up_to_date"):
            args = (any_index(data, pure), data.draw(st.integers(0, 9), label="term"))
            calls = [(log, op, args) for log in (pure, comp)]
        else:  # compact, truncate_after, term, entry
            args = (any_index(data, pure),)
            calls = [(log, op, args) for log in (pure, comp)]
        results = [
            outcome(lambda log=log, name=name, args=args: getattr(log, name)(*args))
            for log, name, args in calls
        ]
        assert results[0] == results[1], (op, calls[0][2], results)
        assert snapshot_of(pure) == snapshot_of(comp), op
        # Byte accounting must agree with the entries themselves.
        if len(pure):
            expected = sum(pure.entry(i).size for i in range(pure.first_index(), pure.last_index() + 1))
            assert comp.bytes_between(comp.first_index(), comp.last_index() + 1) == expected


@pytest.mark.parametrize("m", MODULES, ids=lambda m: m.__name__)
@SETTINGS
@given(data=st.data())
def test_follower_log_matches_naive_model(m, data):
    """§5.3 rules against a dict model: reject on mismatch, truncate only on real conflicts."""
    log = m.Log()
    model = {0: 0}  # index -> term
    committed = 0
    for _ in range(data.draw(st.integers(1, 25), label="steps")):
        last = max(model)
        prev = data.draw(st.integers(0, last + 1), label="prev")
        prev_term = model.get(prev, 0) if data.draw(st.integers(0, 3), label="ok") else 99
        specs = draw_run(data, prev + 1, prev_term)
        c = committed
        res = outcome(
            lambda specs=specs, prev=prev, prev_term=prev_term, c=c: log.maybe_append(
                prev, prev_term, c, build(m, specs)
            )
        )
        # Model.
        ok_run = all(s[0] == prev + 1 + k for k, s in enumerate(specs)) and all(
            b[1] >= a[1] for a, b in zip([(prev, prev_term)] + [s[:2] for s in specs], specs, strict=False)
        )
        if model.get(prev) != prev_term:
            assert res == -1
            continue
        if not ok_run:
            assert res == ("raise", ValueError)
            continue
        conflict = next((s[0] for s in specs if model.get(s[0]) != s[1]), 0)
        if conflict and conflict in model and conflict <= c:
            assert res == ("raise", ValueError)
            continue
        assert res == prev + len(specs)
        if conflict:
            for i in [i for i in model if i >= conflict]:
                del model[i]
            for s in specs:
                if s[0] >= conflict:
                    model[s[0]] = s[1]
        assert {i: log.term(i) for i in range(0, log.last_index() + 1)} == model
        committed = data.draw(st.integers(committed, max(model)), label="advance commit")


# -- differential QuorumTracker -----------------------------------------------------------------


@needs_compiled
@SETTINGS
@given(data=st.data())
def test_compiled_tracker_matches_pure_tracker(data):
    n = data.draw(st.integers(0, 6), label="n_slots")
    trackers = [_pycore.QuorumTracker(n), _core.QuorumTracker(n)]
    slot_st = st.integers(-1, 9)
    for _ in range(data.draw(st.integers(1, 40), label="steps")):
        op = data.draw(
            st.sampled_from(
                [
                    "set_config",
                    "set_match",
                    "set_match_and_commit",
                    "set_match_and_commit",
                    "match",
                    "committed",
                    "reset_matches",
                    "record_vote",
                    "reset_votes",
                    "vote_result",
                    "votes",
                ]
            ),
            label="op",
        )
        if op == "set_config":
            args = (
                data.draw(st.lists(st.integers(-1, 8), max_size=7), label="incoming"),
                data.draw(st.lists(st.integers(0, 8), max_size=5, unique=True), label="outgoing"),
            )
        elif op in ("set_match", "set_match_and_commit"):
            args = (data.draw(slot_st, label="slot"), data.draw(st.integers(-1, 50), label="index"))
        elif op == "match":
            args = (data.draw(slot_st, label="slot"),)
        elif op == "record_vote":
            args = (data.draw(slot_st, label="slot"), data.draw(st.booleans(), label="granted"))
        else:
            args = ()
        results = [outcome(lambda t=t, op=op, args=args: getattr(t, op)(*args)) for t in trackers]
        assert results[0] == results[1], (op, args, results)
        pure, comp = trackers
        assert pure.n_slots == comp.n_slots
        assert [pure.match(s) for s in range(pure.n_slots)] == [comp.match(s) for s in range(comp.n_slots)]
        assert (pure.committed(), pure.vote_result(), pure.votes()) == (
            comp.committed(),
            comp.vote_result(),
            comp.votes(),
        )


@pytest.mark.parametrize("m", MODULES, ids=lambda m: m.__name__)
@SETTINGS
@given(data=st.data())
def test_tracker_matches_oracles(m, data):
    n = data.draw(st.integers(1, 9), label="n")
    t = m.QuorumTracker(n)
    incoming = data.draw(st.lists(st.integers(0, n - 1), unique=True, max_size=n), label="incoming")
    outgoing = data.draw(st.lists(st.integers(0, n - 1), unique=True, max_size=n), label="outgoing")
    t.set_config(incoming, outgoing)
    matches = data.draw(st.lists(st.integers(0, 30), min_size=n, max_size=n), label="matches")
    for slot, idx in enumerate(matches):
        t.set_match(slot, idx)
    expected = min(
        oracle_committed([matches[s] for s in incoming]), oracle_committed([matches[s] for s in outgoing])
    )
    assert t.committed() == expected
    votes = [-1] * n
    for slot in data.draw(st.lists(st.integers(0, n - 1), max_size=2 * n), label="voters"):
        granted = data.draw(st.booleans(), label="granted")
        t.record_vote(slot, granted)
        if votes[slot] == -1:
            votes[slot] = int(granted)
    assert t.vote_result() == oracle_joint_vote([votes[s] for s in incoming], [votes[s] for s in outgoing])
    union = set(incoming) | set(outgoing)
    assert t.votes() == (sum(votes[s] == 1 for s in union), sum(votes[s] == 0 for s in union))
