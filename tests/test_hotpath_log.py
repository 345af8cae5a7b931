"""Unit tests of the hot-path Log and Entry, run against both the pure and the compiled module."""

import pickle

import pytest

from raftlib import _pycore

try:
    from raftlib import _core
except ImportError:  # not built: the compiled parameter is skipped
    _core = None

MODULES = [
    pytest.param(_pycore, id="pure"),
    pytest.param(
        _core,
        id="compiled",
        marks=pytest.mark.skipif(_core is None, reason="raftlib._core is not built (run `make build`)"),
    ),
]


@pytest.fixture(params=MODULES)
def m(request):
    return request.param


def ents(m, *pairs, data=b""):
    """Entries from (index, term) pairs."""
    return [m.Entry(i, t, data) for i, t in pairs]


def run(m, first, terms, data=b""):
    """Contiguous entries from index ``first`` with the given terms."""
    return [m.Entry(first + k, t, data) for k, t in enumerate(terms)]


def make_log(m, terms, snapshot_index=0, snapshot_term=0, data=b""):
    log = m.Log(snapshot_index, snapshot_term)
    log.append(run(m, snapshot_index + 1, terms, data))
    return log


def terms_of(log):
    return [log.term(i) for i in range(log.first_index(), log.last_index() + 1)]


# -- Entry --------------------------------------------------------------------------------------


def test_entry_fields_size_and_repr(m):
    e = m.Entry(3, 2, b"x")
    assert (e.index, e.term, e.type, e.data) == (3, 2, m.ENTRY_NORMAL, b"x")
    assert e.size == 1 + m.ENTRY_OVERHEAD
    assert repr(e) == "Entry(index=3, term=2, type=0, data=b'x')"
    c = m.Entry(4, 2, b"cfg", m.ENTRY_CONF_CHANGE)
    assert c.type == m.ENTRY_CONF_CHANGE
    assert m.Entry(index=1, term=1, data=b"", type=1).type == 1
    assert m.Entry(1, 1).data == b""


def test_entry_equality_and_hash(m):
    a, b = m.Entry(1, 1, b"a"), m.Entry(1, 1, b"a")
    assert a == b and (a != b) is False and hash(a) == hash(b)
    for other in (m.Entry(2, 1, b"a"), m.Entry(1, 2, b"a"), m.Entry(1, 1, b"b"), m.Entry(1, 1, b"a", 1)):
        assert a != other and (a == other) is False
    assert a != (1, 1, 0, b"a")
    assert len({a, b}) == 1


def test_entry_not_equal_to_other_module_entry():
    if _core is None:
        pytest.skip("raftlib._core is not built")
    assert _core.Entry(1, 1) != _pycore.Entry(1, 1)
    assert _pycore.Entry(1, 1) != _core.Entry(1, 1)


def test_entry_is_immutable_and_picklable(m):
    e = m.Entry(5, 3, b"payload", 1)
    with pytest.raises(AttributeError):
        e.term = 9
    e2 = pickle.loads(pickle.dumps(e))
    assert e2 == e and type(e2) is type(e)


@pytest.mark.parametrize(
    ("args", "exc"),
    [
        ((-1, 0), ValueError),
        ((0, -1), ValueError),
        ((1, 1, "text"), TypeError),
        ((1, 1, bytearray(b"x")), TypeError),
        ((1, 1, None), TypeError),
        ((1, 1, b"", -1), ValueError),
        ((1, 1, b"", 256), ValueError),
        ((1.5, 1), TypeError),
    ],
)
def test_entry_validation(m, args, exc):
    with pytest.raises(exc):
        m.Entry(*args)


# -- positions and lookups ----------------------------------------------------------------------


def test_empty_log(m):
    log = m.Log()
    assert (log.snapshot_index, log.snapshot_term) == (0, 0)
    assert (log.first_index(), log.last_index(), log.last_term(), len(log)) == (1, 0, 0, 0)
    assert log.term(0) == 0
    assert log.match_term(0, 0) and not log.match_term(0, 1) and not log.match_term(1, 0)
    with pytest.raises(m.LogIndexError):
        log.term(1)
    with pytest.raises(IndexError):
        log.entry(0)
    assert log.slice(1, 1, 100) == []
    assert log.bytes_between(1, 1) == 0
    assert log.conflict_hint(5, 3) == (0, 0)


def test_empty_log_at_snapshot_point(m):
    log = m.Log(10, 4)
    assert (log.first_index(), log.last_index(), log.last_term(), len(log)) == (11, 10, 4, 0)
    assert log.term(10) == 4
    with pytest.raises(m.LogIndexError):
        log.term(9)
    with pytest.raises(ValueError):
        m.Log(-1, 0)
    with pytest.raises(ValueError):
        m.Log(0, -1)


def test_append_and_lookups(m):
    log = m.Log()
    assert log.append(run(m, 1, [1, 1, 2], b"ab")) == 3
    assert log.append([]) == 3
    assert (log.last_index(), log.last_term(), len(log)) == (3, 2, 3)
    assert terms_of(log) == [1, 1, 2]
    assert log.entry(2) == m.Entry(2, 1, b"ab")
    assert log.match_term(3, 2) and not log.match_term(3, 1)
    assert not log.match_term(4, 2) and not log.match_term(-1, 0)
    assert log.append(tuple(run(m, 4, [3]))) == 4  # any sequence is accepted


def test_index_errors_carry_index_and_range(m):
    log = make_log(m, [1, 1])
    with pytest.raises(m.LogIndexError) as info:
        log.term(7)
    msg = str(info.value)
    assert "7" in msg and "[0, 2]" in msg
    assert isinstance(info.value, IndexError)
    with pytest.raises(m.LogIndexError):
        log.entry(3)
    with pytest.raises(m.LogIndexError):
        log.term(-1)


def test_append_rejects_gaps_and_decreasing_terms(m):
    log = make_log(m, [1, 2, 2])
    for pairs in ([(5, 2)], [(3, 2)], [(4, 1)], [(4, 2), (5, 3), (6, 2)], [(4, 2), (6, 2)]):
        with pytest.raises(ValueError):
            log.append(ents(m, *pairs))
        assert terms_of(log) == [1, 2, 2], pairs  # nothing appended on error
    with pytest.raises(TypeError):
        log.append([(4, 2)])
    with pytest.raises(TypeError):
        log.append([m.Entry(4, 2), "x"])
    assert log.last_index() == 3


# -- maybe_append (§5.3) ------------------------------------------------------------------------


def test_maybe_append_rejects_on_prev_mismatch(m):
    log = make_log(m, [1, 1, 2])
    assert log.maybe_append(3, 1, 0, run(m, 4, [2])) == -1  # wrong term at prev_index
    assert log.maybe_append(5, 2, 0, run(m, 6, [2])) == -1  # prev_index beyond the log
    assert terms_of(log) == [1, 1, 2]


def test_maybe_append_appends_and_returns_last_new_index(m):
    log = make_log(m, [1, 1])
    assert log.maybe_append(2, 1, 0, run(m, 3, [1, 2])) == 4
    assert terms_of(log) == [1, 1, 1, 2]
    assert log.maybe_append(4, 2, 0, []) == 4  # heartbeat


def test_maybe_append_truncates_conflicting_suffix(m):
    log = make_log(m, [1, 1, 2, 2, 2])
    assert log.maybe_append(2, 1, 2, run(m, 3, [3, 3])) == 4
    assert terms_of(log) == [1, 1, 3, 3]


def test_stale_message_does_not_truncate(m):
    log = make_log(m, [1, 1, 2, 2, 2])
    # A delayed, shorter message whose entries all match: no-op, and its last new index.
    assert log.maybe_append(1, 1, 0, run(m, 2, [1, 2])) == 3
    assert terms_of(log) == [1, 1, 2, 2, 2]
    # Duplicate of the whole log.
    assert log.maybe_append(0, 0, 0, run(m, 1, [1, 1, 2, 2, 2])) == 5
    assert log.last_index() == 5


def test_matching_prefix_then_new_entries(m):
    log = make_log(m, [1, 1, 2])
    assert log.maybe_append(1, 1, 0, run(m, 2, [1, 2, 2, 3])) == 5
    assert terms_of(log) == [1, 1, 2, 2, 3]


def test_conflict_at_committed_index_raises(m):
    log = make_log(m, [1, 1, 2, 2])
    with pytest.raises(ValueError):
        log.maybe_append(2, 1, 3, run(m, 3, [3]))
    assert terms_of(log) == [1, 1, 2, 2]
    # Just above the committed index is fine.
    assert log.maybe_append(2, 1, 2, run(m, 3, [3])) == 3
    assert terms_of(log) == [1, 1, 3]


def test_maybe_append_validates_entries(m):
    log = make_log(m, [1, 1])
    with pytest.raises(ValueError):
        log.maybe_append(2, 1, 0, run(m, 4, [1]))  # not starting at prev_index + 1
    with pytest.raises(ValueError):
        log.maybe_append(2, 1, 0, ents(m, (3, 1), (5, 1)))  # gap
    with pytest.raises(ValueError):
        log.maybe_append(2, 1, 0, ents(m, (3, 2), (4, 1)))  # decreasing term
    with pytest.raises(ValueError):
        log.maybe_append(2, 1, 0, ents(m, (3, 0)))  # term below prev_term
    with pytest.raises(TypeError):
        log.maybe_append(2, 1, 0, [None])
    assert terms_of(log) == [1, 1]


def test_maybe_append_at_snapshot_point(m):
    log = make_log(m, [1, 1, 2, 2], snapshot_index=0)
    log.compact(3)
    assert log.maybe_append(3, 2, 3, run(m, 4, [2, 3])) == 5
    assert (log.term(3), terms_of(log)) == (2, [2, 3])
    assert log.maybe_append(2, 1, 3, run(m, 3, [2, 2])) == -1  # prev below the snapshot: unknown


def test_find_conflict(m):
    log = make_log(m, [1, 1, 2], snapshot_index=0)
    assert log.find_conflict([]) == 0
    assert log.find_conflict(run(m, 1, [1, 1, 2])) == 0
    assert log.find_conflict(run(m, 2, [1, 2, 3])) == 4
    assert log.find_conflict(run(m, 2, [1, 3])) == 3
    log.compact(2)
    # Entries at or below the snapshot index count as matching, whatever their term.
    assert log.find_conflict(run(m, 1, [9, 9, 2])) == 0


# -- conflict_hint ------------------------------------------------------------------------------


def test_conflict_hint(m):
    log = make_log(m, [1, 1, 1, 4, 4, 5, 5, 6, 6, 6])
    assert log.conflict_hint(10, 6) == (10, 6)
    assert log.conflict_hint(10, 5) == (7, 5)
    assert log.conflict_hint(10, 4) == (5, 4)
    assert log.conflict_hint(10, 3) == (3, 1)
    assert log.conflict_hint(10, 0) == (0, 0)
    assert log.conflict_hint(6, 4) == (5, 4)
    assert log.conflict_hint(100, 9) == (10, 6)  # clamped to last_index
    log.compact(4)
    assert log.conflict_hint(10, 3) == (4, 4)  # stops at the snapshot point
    assert log.conflict_hint(4, 0) == (4, 4)
    with pytest.raises(m.LogIndexError):
        log.conflict_hint(3, 1)


# -- slice and bytes_between --------------------------------------------------------------------


def test_slice_byte_budget(m):
    log = make_log(m, [1] * 10, data=b"x" * 6)  # size 30 each
    size = 6 + m.ENTRY_OVERHEAD
    assert [e.index for e in log.slice(1, 11, 10**9)] == list(range(1, 11))
    assert [e.index for e in log.slice(1, 11, 3 * size)] == [1, 2, 3]
    assert [e.index for e in log.slice(1, 11, 3 * size + size - 1)] == [1, 2, 3]
    assert [e.index for e in log.slice(4, 6, 100 * size)] == [4, 5]
    assert [e.index for e in log.slice(4, 11, m.MAX_INDEX)] == list(range(4, 11))
    assert log.slice(5, 5, 0) == []


def test_slice_always_returns_one_entry(m):
    log = make_log(m, [1, 1], data=b"y" * 1000)
    assert [e.index for e in log.slice(1, 3, 0)] == [1]
    assert [e.index for e in log.slice(2, 3, 1)] == [2]
    assert [e.index for e in log.slice(1, 3, -5)] == [1]


def test_slice_and_bytes_between_errors(m):
    log = make_log(m, [1, 1, 1], snapshot_index=0)
    log.compact(1)
    with pytest.raises(ValueError):
        log.slice(3, 2, 100)
    with pytest.raises(m.LogIndexError):
        log.slice(1, 3, 100)  # lo <= snapshot_index
    with pytest.raises(m.LogIndexError):
        log.slice(2, 5, 100)  # hi > last_index + 1
    with pytest.raises(ValueError):
        log.bytes_between(3, 2)
    with pytest.raises(m.LogIndexError):
        log.bytes_between(0, 2)


def test_bytes_between_after_compaction_and_truncation(m):
    log = m.Log()
    log.append([m.Entry(i, 1, b"z" * i) for i in range(1, 9)])
    o = m.ENTRY_OVERHEAD
    assert log.bytes_between(1, 9) == sum(range(1, 9)) + 8 * o
    log.compact(3)
    assert log.bytes_between(4, 6) == 4 + 5 + 2 * o
    log.truncate_after(6)
    log.append([m.Entry(7, 2, b"")])
    assert log.bytes_between(4, 8) == 4 + 5 + 6 + 4 * o
    assert log.bytes_between(8, 8) == 0


# -- shrinking ----------------------------------------------------------------------------------


def test_truncate_after(m):
    log = make_log(m, [1, 2, 3], snapshot_index=2, snapshot_term=1)
    log.truncate_after(4)
    assert (log.last_index(), log.last_term()) == (4, 2)
    log.truncate_after(2)
    assert (log.last_index(), log.last_term(), len(log)) == (2, 1, 0)
    for bad in (1, 3):
        with pytest.raises(IndexError):
            log.truncate_after(bad)


def test_compact_then_term_lookups(m):
    log = make_log(m, [1, 1, 2, 3, 3])
    log.compact(3)
    assert (log.snapshot_index, log.snapshot_term, log.first_index(), len(log)) == (3, 2, 4, 2)
    assert log.term(3) == 2 and log.term(4) == 3 and log.last_term() == 3
    with pytest.raises(m.LogIndexError):
        log.term(2)
    with pytest.raises(m.LogIndexError):
        log.entry(3)
    assert log.entry(4) == m.Entry(4, 3)
    log.compact(3)  # no-op
    assert log.snapshot_index == 3
    for bad in (2, 6):
        with pytest.raises(ValueError):
            log.compact(bad)
    log.compact(5)
    assert (log.snapshot_index, log.snapshot_term, log.last_index(), log.last_term()) == (5, 3, 5, 3)
    log.append(run(m, 6, [3, 4]))
    assert terms_of(log) == [3, 4]


def test_restore(m):
    log = make_log(m, [1, 1, 2])
    log.restore(100, 7)
    assert (log.snapshot_index, log.snapshot_term, log.last_index(), log.last_term(), len(log)) == (
        100,
        7,
        100,
        7,
        0,
    )
    with pytest.raises(ValueError):
        log.append(run(m, 101, [6]))
    assert log.append(run(m, 101, [7, 8])) == 102
    with pytest.raises(ValueError):
        log.restore(-1, 0)


def test_large_log_grows_and_shrinks(m):
    log = m.Log()
    n = 5000
    log.append([m.Entry(i, 1 + i // 1000) for i in range(1, n + 1)])
    assert log.term(1) == 1 and log.term(n) == 1 + n // 1000
    log.compact(n - 10)
    assert len(log) == 10 and log.term(n - 5) == 1 + (n - 5) // 1000
    log.restore(10, 1)
    log.append([m.Entry(i, 1) for i in range(11, 2000)])
    assert log.last_index() == 1999 and log.term(1500) == 1


# -- §5.4.1 up-to-date rule ---------------------------------------------------------------------


def test_is_up_to_date(m):
    log = make_log(m, [1, 1, 2])
    assert log.is_up_to_date(3, 2)  # same last entry
    assert log.is_up_to_date(5, 2)  # same term, longer
    assert not log.is_up_to_date(2, 2)  # same term, shorter
    assert log.is_up_to_date(1, 3)  # later term wins regardless of length
    assert not log.is_up_to_date(10, 1)  # earlier term loses regardless of length
    assert m.Log(5, 3).is_up_to_date(5, 3)
    assert not m.Log(5, 3).is_up_to_date(4, 3)
