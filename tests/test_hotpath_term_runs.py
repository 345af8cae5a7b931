"""Rules of the Log checked where the compiled module's run-length encoded terms could break.

``raftlib._core`` keeps one ``(first index, term)`` run per term change, run 0 starting at the
snapshot point; truncation drops runs, compaction drops whole runs and clips the first one
left, restore starts over with a single run.  An off-by-one in that bookkeeping shows up at
run boundaries, so these tests operate exactly at the first and last index of runs, inside
runs, at the snapshot point and past the last index.

* Unit tests state the expected values and run against both modules (the pure module is the
  specification, so a stated value that it does not satisfy is a wrong test).
* The property test drives the compiled and the pure Log with operations whose indexes are
  drawn from the run boundaries, and requires identical results and states.
"""

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raftlib import _pycore

try:
    from raftlib import _core
except ImportError:  # not built: the compiled parameter and the differential test are skipped
    _core = None

needs_compiled = pytest.mark.skipif(_core is None, reason="raftlib._core is not built (run `make build`)")

MODULES = [
    pytest.param(_pycore, id="pure"),
    pytest.param(_core, id="compiled", marks=needs_compiled),
]

EXAMPLES = int(os.environ.get("RAFTLIB_HYPOTHESIS_EXAMPLES", "150"))
SETTINGS = settings(
    max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=False
)


@pytest.fixture(params=MODULES)
def m(request):
    return request.param


def run(m, first, terms, data=b""):
    """Contiguous entries from index ``first`` with the given terms."""
    return [m.Entry(first + k, t, data) for k, t in enumerate(terms)]


def make_log(m, terms, snapshot_index=0, snapshot_term=0):
    log = m.Log(snapshot_index, snapshot_term)
    log.append(run(m, snapshot_index + 1, terms))
    return log


def terms_from_snapshot(log):
    """Terms of every index the log can answer for, snapshot point first."""
    return [log.term(i) for i in range(log.snapshot_index, log.last_index() + 1)]


def state(log):
    return (
        log.snapshot_index,
        log.snapshot_term,
        log.last_index(),
        log.last_term(),
        len(log),
        terms_from_snapshot(log),
        [
            (e.index, e.term, e.data)
            for e in (log.entry(i) for i in range(log.first_index(), log.last_index() + 1))
        ],
    )


def hint_oracle(snapshot_index, terms, index, term):
    """conflict_hint by its definition (a backwards scan), on an explicit list of terms.

    ``terms[k]`` is the term of index ``snapshot_index + k``.
    """
    idx = min(index, snapshot_index + len(terms) - 1)
    while idx > snapshot_index and terms[idx - snapshot_index] > term:
        idx -= 1
    return idx, terms[idx - snapshot_index]


# Runs used below: indexes 1-2 term 1, 3-5 term 2, 6-7 term 3, 8 term 4.
RUNS = [1, 1, 2, 2, 2, 3, 3, 4]


# -- many term changes -------------------------------------------------------------------------


def test_every_entry_with_a_new_term_keeps_its_own_term(m):
    terms = list(range(1, 301))
    log = make_log(m, terms)
    assert terms_from_snapshot(log) == [0, *terms]
    assert (log.last_index(), log.last_term()) == (300, 300)
    for i in range(1, 301):
        assert log.match_term(i, i) and not log.match_term(i, i - 1) and not log.match_term(i, i + 1)
    # With one run per entry, the hint for term t is the index t itself.
    assert all(log.conflict_hint(300, t) == (t, t) for t in range(0, 301))
    log.compact(150)
    assert (log.snapshot_index, log.snapshot_term) == (150, 150)
    assert terms_from_snapshot(log) == list(range(150, 301))
    log.truncate_after(200)
    assert (log.last_index(), log.last_term()) == (200, 200)
    log.append(run(m, 201, [500, 500, 501]))
    assert terms_from_snapshot(log) == [*range(150, 201), 500, 500, 501]


def test_many_term_changes_survive_growing_and_shrinking_the_run_array(m):
    log = m.Log()
    index = 0
    for size in [1, 2, 3, 50, 7, 1000, 1, 3937]:  # 5001 entries, a new term on every one
        log.append(run(m, index + 1, range(index + 1, index + 1 + size)))
        index += size
    assert terms_from_snapshot(log) == list(range(0, 5002))
    log.compact(4990)  # leaves 12 runs of thousands: the run array shrinks
    assert (log.snapshot_index, log.snapshot_term, len(log)) == (4990, 4990, 11)
    assert terms_from_snapshot(log) == list(range(4990, 5002))
    log.truncate_after(4995)
    assert (log.last_index(), log.last_term()) == (4995, 4995)
    log.append(run(m, 4996, [6000] * 20 + [6001]))
    assert terms_from_snapshot(log) == [*range(4990, 4996), *([6000] * 20), 6001]
    log.restore(0, 0)
    log.append(run(m, 1, [1, 2, 2, 3]))
    assert terms_from_snapshot(log) == [0, 1, 2, 2, 3]


# -- truncation ----------------------------------------------------------------------------------


def test_truncation_at_the_last_index_of_a_run_drops_the_later_runs(m):
    log = make_log(m, RUNS)
    log.truncate_after(5)
    assert (log.last_index(), log.last_term()) == (5, 2)
    assert terms_from_snapshot(log) == [0, 1, 1, 2, 2, 2]
    assert not log.match_term(6, 3)
    log.append(run(m, 6, [2, 5]))  # the same term continues the run, a higher one opens a run
    assert terms_from_snapshot(log) == [0, 1, 1, 2, 2, 2, 2, 5]
    assert log.conflict_hint(7, 4) == (6, 2)


def test_truncation_at_the_first_index_of_a_run_keeps_only_that_entry_of_it(m):
    log = make_log(m, RUNS)
    log.truncate_after(6)
    assert (log.last_index(), log.last_term()) == (6, 3)
    assert terms_from_snapshot(log) == [0, 1, 1, 2, 2, 2, 3]
    log.truncate_after(3)
    assert (log.last_index(), log.last_term()) == (3, 2)
    log.append(run(m, 4, [2]))
    assert terms_from_snapshot(log) == [0, 1, 1, 2, 2]


def test_truncation_inside_a_run_keeps_its_head(m):
    log = make_log(m, RUNS)
    log.truncate_after(4)
    assert (log.last_index(), log.last_term()) == (4, 2)
    assert terms_from_snapshot(log) == [0, 1, 1, 2, 2]
    with pytest.raises(ValueError):
        log.append(run(m, 5, [1]))  # below the last term: the run of term 2 is still the last one


def test_truncation_to_the_snapshot_point_leaves_the_snapshot_term(m):
    log = make_log(m, [3, 3, 4, 6], snapshot_index=5, snapshot_term=3)
    log.truncate_after(5)
    assert (len(log), log.last_index(), log.last_term(), log.term(5)) == (0, 5, 3, 3)
    with pytest.raises(ValueError):
        log.append(run(m, 6, [2]))
    log.append(run(m, 6, [3, 4]))
    assert terms_from_snapshot(log) == [3, 3, 4]


# -- compaction ----------------------------------------------------------------------------------


def test_compaction_at_the_last_index_of_a_run_starts_the_next_run_after_the_snapshot(m):
    log = make_log(m, RUNS)
    log.compact(5)
    assert (log.snapshot_index, log.snapshot_term) == (5, 2)
    assert terms_from_snapshot(log) == [2, 3, 3, 4]
    assert log.conflict_hint(8, 3) == (7, 3)
    assert log.conflict_hint(8, 2) == (5, 2)
    assert log.conflict_hint(8, 1) == (5, 2)  # stops at the snapshot point


def test_compaction_at_the_first_index_of_a_run_clips_it_to_the_snapshot_point(m):
    log = make_log(m, RUNS)
    log.compact(6)
    assert (log.snapshot_index, log.snapshot_term) == (6, 3)
    assert terms_from_snapshot(log) == [3, 3, 4]
    assert log.conflict_hint(8, 3) == (7, 3)
    assert log.conflict_hint(7, 2) == (6, 3)
    assert log.match_term(6, 3) and not log.match_term(5, 2)


def test_compaction_inside_a_run_clips_it(m):
    log = make_log(m, RUNS)
    log.compact(4)
    assert (log.snapshot_index, log.snapshot_term) == (4, 2)
    assert terms_from_snapshot(log) == [2, 2, 3, 3, 4]
    assert log.conflict_hint(8, 2) == (5, 2)
    assert log.conflict_hint(8, 1) == (4, 2)
    log.compact(5)  # now exactly at the end of the clipped run
    assert (log.snapshot_index, log.snapshot_term) == (5, 2)
    assert terms_from_snapshot(log) == [2, 3, 3, 4]


def test_compaction_of_the_whole_log_keeps_the_last_term_as_the_snapshot_term(m):
    log = make_log(m, RUNS)
    log.compact(8)
    assert (log.snapshot_index, log.snapshot_term, len(log)) == (8, 4, 0)
    assert (log.last_index(), log.last_term()) == (8, 4)
    assert log.conflict_hint(20, 0) == (8, 4)


def test_append_after_compaction_to_empty_continues_from_the_snapshot_point(m):
    log = make_log(m, RUNS)
    log.compact(8)
    with pytest.raises(ValueError):
        log.append(run(m, 9, [3]))  # below the snapshot term
    assert log.append(run(m, 9, [4, 4, 7])) == 11
    assert terms_from_snapshot(log) == [4, 4, 4, 7]
    assert log.conflict_hint(11, 5) == (10, 4)
    assert log.conflict_hint(11, 3) == (8, 4)
    log.compact(11)
    assert log.maybe_append(11, 7, 11, run(m, 12, [7, 8])) == 13
    assert terms_from_snapshot(log) == [7, 7, 8]


def test_compaction_past_the_last_index_is_refused_and_changes_nothing(m):
    log = make_log(m, RUNS)
    before = state(log)
    with pytest.raises(ValueError):
        log.compact(9)
    with pytest.raises(ValueError):
        log.compact(100)
    assert state(log) == before
    log.compact(3)
    with pytest.raises(ValueError):
        log.compact(2)  # below the snapshot point
    assert (log.snapshot_index, log.snapshot_term) == (3, 2)


def test_restoring_a_snapshot_beyond_the_log_forgets_every_run(m):
    log = make_log(m, RUNS)
    log.restore(20, 6)
    assert (log.snapshot_index, log.snapshot_term, len(log)) == (20, 6, 0)
    assert (log.last_index(), log.last_term()) == (20, 6)
    with pytest.raises(m.LogIndexError):
        log.term(8)
    assert not log.match_term(8, 4)
    log.append(run(m, 21, [6, 9]))
    assert terms_from_snapshot(log) == [6, 6, 9]
    assert log.conflict_hint(22, 5) == (20, 6)
    assert log.conflict_hint(22, 8) == (21, 6)


def test_entries_with_the_snapshot_term_continue_the_snapshot_run(m):
    log = make_log(m, [3, 3, 4], snapshot_index=5, snapshot_term=3)
    assert terms_from_snapshot(log) == [3, 3, 3, 4]
    assert log.conflict_hint(8, 3) == (7, 3)
    log.compact(6)
    assert (log.snapshot_index, log.snapshot_term) == (6, 3)
    assert terms_from_snapshot(log) == [3, 3, 4]


# -- conflict hints ------------------------------------------------------------------------------


LAYOUTS = [
    ([], 0, 0),
    ([], 7, 3),
    ([1], 0, 0),
    (RUNS, 0, 0),
    ([1, 1, 1, 4, 4, 5, 5, 6, 6, 6], 0, 0),
    ([2, 3, 4, 5, 6, 7], 0, 0),  # a new term on every entry
    ([3, 3, 5, 5, 5, 8], 10, 3),  # the first entries share the snapshot term
    ([4, 4, 5, 9, 9, 9, 9, 10], 4, 2),
]


@pytest.mark.parametrize(("terms", "si", "st_"), LAYOUTS)
def test_conflict_hint_is_the_last_index_up_to_index_whose_term_is_at_most_term(m, terms, si, st_):
    log = make_log(m, terms, si, st_)
    explicit = [st_, *terms]
    for index in range(si, si + len(terms) + 3):
        for term in range(0, max(explicit) + 2):
            assert log.conflict_hint(index, term) == hint_oracle(si, explicit, index, term), (index, term)
    with pytest.raises(m.LogIndexError):
        log.conflict_hint(si - 1, 0)


def test_conflict_hint_skips_every_run_of_a_higher_term_at_once(m):
    # A follower that saw two leaders after term 1 (terms 4 and 5) rejects a probe at (9, 3): the hint
    # jumps back over both runs to the last entry of term 1, not to the start of the last run.
    log = make_log(m, [1, 1, 1, 4, 4, 4, 4, 5, 5])
    assert log.conflict_hint(9, 3) == (3, 1)
    assert log.conflict_hint(9, 4) == (7, 4)
    assert log.conflict_hint(6, 4) == (6, 4)


# -- the follower's consistency check and conflicts ----------------------------------------------


def test_conflict_inside_a_run_replaces_the_rest_of_it(m):
    log = make_log(m, [1, 1, 2, 2, 2, 3])
    assert log.maybe_append(3, 2, 0, run(m, 4, [4, 4])) == 5
    assert terms_from_snapshot(log) == [0, 1, 1, 2, 4, 4]
    assert log.conflict_hint(5, 3) == (3, 2)


def test_conflict_at_the_first_index_of_a_run_replaces_that_run(m):
    log = make_log(m, [1, 1, 2, 2, 2, 3])
    assert log.maybe_append(2, 1, 0, run(m, 3, [5])) == 3
    assert terms_from_snapshot(log) == [0, 1, 1, 5]
    assert log.last_term() == 5


def test_matching_entries_across_runs_change_nothing(m):
    log = make_log(m, RUNS)
    before = state(log)
    assert log.maybe_append(0, 0, 0, run(m, 1, RUNS)) == 8
    assert log.maybe_append(4, 2, 0, run(m, 5, [2, 3, 3])) == 7  # starts inside a run, ends inside one
    assert log.maybe_append(8, 4, 8, []) == 8
    assert state(log) == before
    assert log.maybe_append(5, 3, 0, run(m, 6, [3])) == -1  # prev term is that of the next run


def test_find_conflict_looks_terms_up_across_runs_in_any_order(m):
    log = make_log(m, RUNS)
    assert log.find_conflict(run(m, 1, RUNS)) == 0
    assert log.find_conflict(run(m, 4, [2, 2, 3, 3, 4, 4])) == 9  # all match, then past the end
    assert log.find_conflict(run(m, 4, [2, 2, 4])) == 6  # first entry of the next run differs
    # find_conflict does not require contiguous entries: lookups may jump backwards between runs.
    e = m.Entry
    assert log.find_conflict([e(8, 4), e(1, 1), e(6, 3), e(2, 1), e(5, 3)]) == 5
    assert log.find_conflict([e(8, 4), e(1, 1), e(7, 3), e(3, 2)]) == 0


# -- differential: compiled vs pure at run boundaries --------------------------------------------


def outcome(fn):
    """The result of ``fn()`` in a comparable form, or the kind of exception it raised."""
    try:
        result = fn()
    except IndexError as exc:
        return ("raise", IndexError, type(exc).__name__)
    except (ValueError, TypeError) as exc:
        return ("raise", type(exc))
    if isinstance(result, list):
        return [(e.index, e.term, e.type, e.data) for e in result]
    return result


def boundary_indexes(log):
    """Indexes next to every run boundary of ``log``, plus the ends of its range and just past them."""
    snap, last = log.snapshot_index, log.last_index()
    starts = [snap] + [i for i in range(snap + 1, last + 1) if log.term(i) != log.term(i - 1)]
    ends = [s - 1 for s in starts[1:]] + [last]
    near = {x + d for x in starts + ends for d in (-1, 0, 1)}
    return sorted(near | {last + 2, last + 5})


def draw_terms(data, first_term, label, max_runs=6):
    """Terms of a sequence of runs of 1-4 entries starting at ``first_term`` (the first run may
    continue it), each later run a term higher."""
    terms = []
    term = first_term + data.draw(st.integers(0, 1), label=f"{label} first bump")
    for r in range(data.draw(st.integers(0, max_runs), label=f"{label} runs")):
        if r:
            term += data.draw(st.integers(1, 3), label=f"{label} bump")
        terms += [term] * data.draw(st.integers(1, 4), label=f"{label} run length")
    return terms


@needs_compiled
@SETTINGS
@given(data=st.data())
def test_compiled_log_matches_pure_log_at_run_boundaries(data):
    si = data.draw(st.integers(0, 4), label="snapshot_index")
    st_ = data.draw(st.integers(0, 3), label="snapshot_term")
    pure, comp = _pycore.Log(si, st_), _core.Log(si, st_)
    terms = draw_terms(data, st_, "initial", max_runs=10)
    # Append in batches of random sizes, so that runs also span batches.
    k = 0
    while k < len(terms):
        size = data.draw(st.integers(1, 5), label="batch")
        for log, mod in ((pure, _pycore), (comp, _core)):
            log.append(run(mod, si + 1 + k, terms[k : k + size]))
        k += size
    assert state(pure) == state(comp)
    ops = ["compact", "truncate_after", "append", "maybe_append", "maybe_append", "restore"]
    ops += ["conflict_hint", "find_conflict", "term", "match_term"]
    for _ in range(data.draw(st.integers(1, 20), label="steps")):
        op = data.draw(st.sampled_from(ops), label="op")
        at = data.draw(st.sampled_from(boundary_indexes(pure)), label="index")
        last, snap = pure.last_index(), pure.snapshot_index
        if op in ("append", "maybe_append", "find_conflict"):
            prev = at if op != "append" else last
            known = snap <= prev <= last
            if known and data.draw(st.integers(0, 3), label="prev matches"):
                prev_term = pure.term(prev)
            else:
                prev_term = data.draw(st.integers(0, 12), label="prev_term")
            new_terms = draw_terms(data, prev_term, "batch", max_runs=3)
            committed = data.draw(st.integers(0, max(0, last)), label="committed")
            args = {}
            for mod in (_pycore, _core):
                batch = run(mod, prev + 1, new_terms)
                args[mod] = {
                    "append": (batch,),
                    "maybe_append": (prev, prev_term, committed, batch),
                    "find_conflict": (batch,),
                }[op]
            calls = [(pure, args[_pycore]), (comp, args[_core])]
        elif op == "restore":
            args = (max(0, at), data.draw(st.integers(0, 12), label="term"))
            calls = [(pure, args), (comp, args)]
        elif op in ("conflict_hint", "match_term"):
            args = (at, data.draw(st.integers(0, 12), label="term"))
            calls = [(pure, args), (comp, args)]
        else:  # compact, truncate_after, term
            calls = [(pure, (at,)), (comp, (at,))]
        results = [outcome(lambda log=log, op=op, a=a: getattr(log, op)(*a)) for log, a in calls]
        assert results[0] == results[1], (op, calls[0][1], results)
        assert state(pure) == state(comp), (op, calls[0][1])
