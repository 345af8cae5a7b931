# cython: language_level=3
# cython: boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True
# cython: binding=False, embedsignature=True, auto_pickle=False
"""Compiled hot path of raftlib (Cython).

This module mirrors :mod:`raftlib._pycore` name for name and behaviour for
behaviour; ``_pycore`` is the readable reference and the test-suite checks the
two against each other on random operation sequences.  What differs is where
the data lives:

* :class:`Log` keeps its terms run-length encoded -- one ``(first index, term)``
  pair per term change, searched by bisection -- and the running totals of entry
  sizes in an ``int64_t`` array, both C arrays grown geometrically with
  ``PyMem_Realloc``; so term lookups, the AppendEntries consistency check,
  conflict back-tracking and byte-budgeted slicing touch no Python objects.  The
  :class:`Entry` objects (payloads) are kept in a Python list alongside, only to
  be handed back.
* :class:`QuorumTracker` keeps match indexes and votes in C arrays and computes
  the committed index with a small insertion sort on a scratch buffer.

Integers crossing the API are C ``int64_t`` (``Py_ssize_t`` for slots): values
outside that range raise :class:`OverflowError` here where the pure module
would accept them.  Indexes and terms of a Raft log never get near it.
"""

cimport cython
from cpython.bytes cimport PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from libc.stdint cimport int64_t
from libc.stdlib cimport qsort
from libc.string cimport memmove, memset

import operator

#: Entry type of an ordinary state-machine command.
ENTRY_NORMAL = 0
#: Entry type of a membership (configuration) change.
ENTRY_CONF_CHANGE = 1
#: Bytes charged per entry on top of ``len(data)`` when applying byte budgets.
ENTRY_OVERHEAD = 24
#: Largest representable index; also the committed index of an empty configuration.
MAX_INDEX = 2**63 - 1
#: Largest allowed entry type (types are small ints so that a codec can use one byte).
MAX_ENTRY_TYPE = 255

#: The election has neither been won nor lost yet.
VOTE_PENDING = 0
#: Too many voters rejected: a majority can no longer be reached.
VOTE_LOST = 1
#: A majority granted the vote.
VOTE_WON = 2

cdef enum:
    C_ENTRY_OVERHEAD = 24
    C_MAX_ENTRY_TYPE = 255
    C_VOTE_PENDING = 0
    C_VOTE_LOST = 1
    C_VOTE_WON = 2
    MIN_CAPACITY = 16
    MIN_RUNS = 8
    SMALL_SORT = 32

cdef int64_t C_MAX_INDEX = 0x7FFFFFFFFFFFFFFF


class LogIndexError(IndexError):
    """An index outside the range a :class:`Log` can answer for."""


cdef int _index_error(str what, object index, object lo, object hi) except -1:
    raise LogIndexError(f"{what} {index} is outside the valid range [{lo}, {hi}]")


# ---------------------------------------------------------------------------------------------
# Entry
# ---------------------------------------------------------------------------------------------

@cython.final
cdef class Entry:
    """One log entry.

    Entries are immutable value objects: two entries are equal when their index,
    term, type and data are all equal.  ``size`` is what byte budgets charge
    for the entry: ``len(data) + ENTRY_OVERHEAD``.
    """

    cdef readonly int64_t index
    cdef readonly int64_t term
    cdef readonly int type
    cdef readonly bytes data

    def __cinit__(self):
        # Never leave ``data`` NULL/None, even for Entry.__new__(Entry).
        self.data = b""

    def __init__(self, index, term, bytes data=b"", type=ENTRY_NORMAL):
        # operator.index mirrors the pure module: floats and other non-integers raise TypeError.
        cdef int64_t c_index = operator.index(index)
        cdef int64_t c_term = operator.index(term)
        t = operator.index(type)
        if c_index < 0:
            raise ValueError(f"Entry index must be >= 0, got {c_index}")
        if c_term < 0:
            raise ValueError(f"Entry term must be >= 0, got {c_term}")
        if not 0 <= t <= C_MAX_ENTRY_TYPE:
            raise ValueError(f"Entry type must be in [0, {C_MAX_ENTRY_TYPE}], got {t}")
        if data is None:
            raise TypeError("Entry data must be bytes, not NoneType")
        self.index = c_index
        self.term = c_term
        self.type = t
        self.data = data

    @property
    def size(self):
        """Bytes charged for this entry by byte budgets: ``len(data) + ENTRY_OVERHEAD``."""
        return PyBytes_GET_SIZE(self.data) + C_ENTRY_OVERHEAD

    def __eq__(self, other):
        if not isinstance(other, Entry):
            return NotImplemented
        cdef Entry o = <Entry>other
        return (self.index == o.index and self.term == o.term and self.type == o.type
                and self.data == o.data)

    def __ne__(self, other):
        if not isinstance(other, Entry):
            return NotImplemented
        cdef Entry o = <Entry>other
        return not (self.index == o.index and self.term == o.term and self.type == o.type
                    and self.data == o.data)

    def __hash__(self):
        return hash((self.index, self.term, self.type, self.data))

    def __repr__(self):
        return f"Entry(index={self.index}, term={self.term}, type={self.type}, data={self.data!r})"

    def __reduce__(self):
        return (Entry, (self.index, self.term, self.data, self.type))


cdef list _as_entry_list(object entries):
    """Materialise ``entries`` as a list, checking that every item is an :class:`Entry`."""
    cdef list result = entries if type(entries) is list else list(entries)
    for e in result:
        if type(e) is not Entry:
            raise TypeError(f"expected Entry, got {e.__class__.__name__}")
    return result


cdef int _check_run(list entries, int64_t first_index, int64_t prev_term) except -1:
    """Require contiguous indexes from ``first_index`` and non-decreasing terms from ``prev_term``."""
    cdef Py_ssize_t i
    cdef Entry e
    cdef int64_t expected = first_index
    cdef int64_t term = prev_term
    for i in range(len(entries)):
        e = <Entry>entries[i]
        if e.index != expected:
            raise ValueError(f"entries are not contiguous: expected index {expected}, got {e.index}")
        if e.term < term:
            raise ValueError(f"entry {e.index} has term {e.term} lower than the preceding term {term}")
        expected += 1
        term = e.term
    return 0


# ---------------------------------------------------------------------------------------------
# Log
# ---------------------------------------------------------------------------------------------

cdef struct TermRun:
    # Every index from ``start`` up to the next run's start - 1 (for the last run: up to the
    # log's last index) has term ``term``.
    int64_t start
    int64_t term


@cython.boundscheck(False)
@cython.wraparound(False)
cdef inline Py_ssize_t _run_of(const TermRun* runs, Py_ssize_t n, int64_t index) noexcept nogil:
    """The run holding ``index``: the largest ``k < n`` with ``runs[k].start <= index``.

    Requires ``n >= 1`` and ``runs[0].start <= index``.  The last run is tried first (in
    Raft most lookups are near the tail of the log), then the others are bisected.
    """
    cdef Py_ssize_t base, half, size
    if runs[n - 1].start <= index:
        return n - 1
    # The answer is in [base, base + size): a branch-free bisection (the update is a cmov).
    base = 0
    size = n - 1
    while size > 1:
        half = size >> 1
        if runs[base + half].start <= index:
            base += half
        size -= half
    return base


@cython.boundscheck(False)
@cython.wraparound(False)
cdef inline Py_ssize_t _run_near(const TermRun* runs, Py_ssize_t n, Py_ssize_t k,
                                 int64_t index) noexcept nogil:
    """:func:`_run_of` given ``k < n``, the run of a previous lookup.

    O(1) when ``index`` is in run ``k`` or the next one (a walk over consecutive
    indexes), a bisection otherwise.  Same requirements as :func:`_run_of`.
    """
    if runs[k].start <= index:
        if k + 1 == n or index < runs[k + 1].start:
            return k
        if k + 2 == n or index < runs[k + 2].start:
            return k + 1
    return _run_of(runs, n, index)


@cython.boundscheck(False)
@cython.wraparound(False)
cdef inline Py_ssize_t _last_run_with_term_at_most(const TermRun* runs, Py_ssize_t n,
                                                   int64_t term) noexcept nogil:
    """The largest ``k < n`` with ``runs[k].term <= term``, or -1 (run terms strictly increase)."""
    cdef Py_ssize_t lo = 0, hi = n, mid
    while lo < hi:
        mid = (lo + hi) >> 1
        if runs[mid].term <= term:
            lo = mid + 1
        else:
            hi = mid
    return lo - 1


@cython.final
cdef class Log:
    """Entries ``(snapshot_index, last_index]`` plus the snapshot point of the compacted prefix.

    Terms are kept run-length encoded (one ``(first index, term)`` pair per term
    change) and the running totals of entry sizes per entry, both in C arrays;
    the :class:`Entry` objects are kept in a list alongside.
    """

    cdef int64_t _snap_index
    # Terms of the indexes [snapshot_index, last_index], run-length encoded: _runs[0:_nruns],
    # capacity _rcap.  Invariants: 1 <= _nruns; _runs[0].start == _snap_index and
    # _runs[0].term is the snapshot term; starts strictly increase and the last one is
    # <= last_index (no run is empty); terms strictly increase (a run is opened only when the
    # term changes, and terms never decrease along a log).
    cdef TermRun* _runs
    cdef Py_ssize_t _nruns
    cdef Py_ssize_t _rcap
    # _cum[i] is the total size of every entry before the i-th held one (absolute: not rebased
    # on compaction), for 0 <= i <= _n; capacity _cap + 1.
    cdef int64_t* _cum
    cdef Py_ssize_t _n
    cdef Py_ssize_t _cap
    cdef list _entries

    def __cinit__(self):
        self._runs = <TermRun*>PyMem_Malloc(MIN_RUNS * sizeof(TermRun))
        self._cum = <int64_t*>PyMem_Malloc((MIN_CAPACITY + 1) * sizeof(int64_t))
        if self._runs == NULL or self._cum == NULL:
            raise MemoryError()  # __dealloc__ frees whichever was allocated
        self._rcap = MIN_RUNS
        self._nruns = 1
        self._runs[0].start = 0
        self._runs[0].term = 0
        self._cap = MIN_CAPACITY
        self._n = 0
        self._cum[0] = 0
        self._entries = []

    def __dealloc__(self):
        PyMem_Free(self._runs)
        PyMem_Free(self._cum)

    def __init__(self, snapshot_index=0, snapshot_term=0):
        self.restore(snapshot_index, snapshot_term)

    # -- storage management ------------------------------------------------------------------

    cdef int _resize(self, Py_ssize_t cap) except -1:
        cdef int64_t* cum = <int64_t*>PyMem_Realloc(self._cum, (cap + 1) * sizeof(int64_t))
        if cum == NULL:
            raise MemoryError()
        self._cum = cum
        self._cap = cap
        return 0

    cdef inline int _reserve(self, Py_ssize_t extra) except -1:
        cdef Py_ssize_t need = self._n + extra
        cdef Py_ssize_t cap = self._cap
        if need <= cap:
            return 0
        while cap < need:
            cap *= 2
        return self._resize(cap)

    cdef int _resize_runs(self, Py_ssize_t cap) noexcept:
        """Reallocate the run array for ``cap >= _nruns`` runs.

        Returns -1 on failure, with nothing changed and no exception set (the caller decides).
        """
        cdef TermRun* runs = <TermRun*>PyMem_Realloc(self._runs, cap * sizeof(TermRun))
        if runs == NULL:
            return -1
        self._runs = runs
        self._rcap = cap
        return 0

    cdef int _maybe_shrink(self) except -1:
        # Give memory back after a large compaction/truncation/restore (hysteresis of 4x).
        cdef Py_ssize_t cap
        if self._rcap > 4 * MIN_RUNS and self._nruns < self._rcap // 4:
            # A failed shrink leaves the larger (valid) block in place: nothing to report.
            self._resize_runs(max(<Py_ssize_t>MIN_RUNS, 2 * self._nruns))
        if self._cap > 4 * MIN_CAPACITY and self._n < self._cap // 4:
            cap = max(<Py_ssize_t>MIN_CAPACITY, 2 * self._n)
            return self._resize(cap)
        return 0

    cdef inline int64_t _last_index(self) noexcept:
        return self._snap_index + self._n

    cdef inline int64_t _last_term(self) noexcept:
        return self._runs[self._nruns - 1].term

    cdef inline int64_t _term_at(self, int64_t index) noexcept:
        # Caller guarantees snapshot_index <= index <= last_index.
        return self._runs[_run_of(self._runs, self._nruns, index)].term

    cdef inline bint _match(self, int64_t index, int64_t term) noexcept:
        if index < self._snap_index or index > self._snap_index + self._n:
            return False
        return self._term_at(index) == term

    cdef int _extend(self, list batch, Py_ssize_t start) except -1:
        """Append the already-validated ``batch[start:]``, extending the C arrays.

        All or nothing: on :class:`MemoryError` the log is unchanged.
        """
        cdef Py_ssize_t i, n = len(batch)
        cdef Py_ssize_t k
        cdef Py_ssize_t nruns0 = self._nruns
        cdef int64_t term
        cdef Entry e
        if start >= n:
            return 0
        self._reserve(n - start)
        k = self._n
        term = self._runs[self._nruns - 1].term
        for i in range(start, n):
            e = <Entry>batch[i]
            if e.term != term:
                # A term change opens a run (the batch is validated: contiguous, terms non-decreasing).
                if self._nruns == self._rcap and self._resize_runs(2 * self._rcap) < 0:
                    self._nruns = nruns0  # _n and _entries are not updated yet
                    raise MemoryError()
                self._runs[self._nruns].start = e.index
                self._runs[self._nruns].term = e.term
                self._nruns += 1
                term = e.term
            self._cum[k + 1] = self._cum[k] + PyBytes_GET_SIZE(e.data) + C_ENTRY_OVERHEAD
            k += 1
        self._n = k
        if start == 0:
            self._entries.extend(batch)
        else:
            self._entries.extend(batch[start:])
        return 0

    cdef int _truncate(self, int64_t index) except -1:
        # Caller guarantees snapshot_index <= index <= last_index.
        cdef Py_ssize_t keep = <Py_ssize_t>(index - self._snap_index)
        if keep < self._n:
            # Drop the runs that start after ``index``; the run holding it becomes the last one.
            self._nruns = _run_of(self._runs, self._nruns, index) + 1
            self._n = keep
            del self._entries[keep:]
            self._maybe_shrink()
        return 0

    # -- positions ---------------------------------------------------------------------------

    @property
    def snapshot_index(self):
        """Index of the last entry folded into the snapshot (0 when there is none)."""
        return self._snap_index

    @property
    def snapshot_term(self):
        """Term of the entry at :attr:`snapshot_index`."""
        return self._runs[0].term

    def first_index(self):
        """Index of the first entry the log may hold: ``snapshot_index + 1``."""
        return self._snap_index + 1

    def last_index(self):
        """Index of the last entry (``snapshot_index`` when the log holds no entry)."""
        return self._snap_index + self._n

    def last_term(self):
        """Term of the last entry (``snapshot_term`` when the log holds no entry)."""
        return self._last_term()

    def __len__(self):
        """Number of entries held (compacted entries are not counted)."""
        return self._n

    def __repr__(self):
        return (f"Log(snapshot_index={self._snap_index}, snapshot_term={self._runs[0].term}, "
                f"last_index={self._last_index()}, last_term={self._last_term()})")

    # -- lookups -----------------------------------------------------------------------------

    @cython.always_allow_keywords(False)  # METH_O: the cheapest CPython calling convention
    def term(self, int64_t index):
        """Term of the entry at ``index``; ``snapshot_term`` at ``snapshot_index``.

        Raises :class:`LogIndexError` outside ``[snapshot_index, last_index]``.
        (Positional-only in the compiled module.)
        """
        if index < self._snap_index or index > self._snap_index + self._n:
            _index_error("term: index", index, self._snap_index, self._last_index())
        # The snapshot point is the start of run 0: no special case.
        return self._runs[_run_of(self._runs, self._nruns, index)].term

    def match_term(self, int64_t index, int64_t term):
        """True iff the log holds ``index`` (or it is the snapshot point) with this ``term``.

        Never raises: an index outside ``[snapshot_index, last_index]`` simply does not match.
        """
        return self._match(index, term)

    def entry(self, int64_t index):
        """The entry at ``index``; :class:`LogIndexError` outside ``(snapshot_index, last_index]``."""
        if index <= self._snap_index or index > self._snap_index + self._n:
            _index_error("entry: index", index, self._snap_index + 1, self._last_index())
        return self._entries[<Py_ssize_t>(index - self._snap_index - 1)]

    def is_up_to_date(self, int64_t last_index, int64_t last_term):
        """§5.4.1 up-to-date rule: is a log ending at ``(last_index, last_term)`` at least as up-to-date?

        "If the logs have last entries with different terms, then the log with
        the later term is more up-to-date.  If the logs end with the same term,
        then whichever log is longer is more up-to-date."
        """
        cdef int64_t our_term = self._last_term()
        return last_term > our_term or (last_term == our_term and last_index >= self._last_index())

    # -- appending ---------------------------------------------------------------------------

    def append(self, entries):
        """Leader-side append; returns the new last index.

        ``entries`` must start at ``last_index + 1``, be contiguous, and have
        terms that never decrease (starting from ``last_term``).  On a violation
        :class:`ValueError` is raised and nothing is appended.  A leader never
        overwrites or deletes its own entries (Leader Append-Only, §5.3), so this
        method never truncates.
        """
        cdef list batch = _as_entry_list(entries)
        _check_run(batch, self._last_index() + 1, self._last_term())
        self._extend(batch, 0)
        return self._last_index()

    def find_conflict(self, entries):
        """Index of the first entry of ``entries`` that the log does not already hold, 0 if none.

        An entry conflicts when its index is past ``last_index`` or when the log
        holds a different term at its index (§5.3).  Entries at or below
        ``snapshot_index`` are treated as matching: they are compacted, hence
        committed, and a committed entry is never contradicted by a legitimate
        leader (Leader Completeness, §5.4).
        """
        cdef list batch = _as_entry_list(entries)
        cdef Py_ssize_t i
        cdef Py_ssize_t k = 0  # run of the previous lookup (the entries are usually consecutive)
        cdef Entry e
        cdef int64_t last = self._last_index()
        for i in range(len(batch)):
            e = <Entry>batch[i]
            if e.index > last:
                return e.index
            if e.index > self._snap_index:
                k = _run_near(self._runs, self._nruns, k, e.index)
                if self._runs[k].term != e.term:
                    return e.index
        return 0

    def maybe_append(self, int64_t prev_index, int64_t prev_term, int64_t committed, entries):
        """Follower side of AppendEntries; returns the last new index, or -1 to reject.

        ``committed`` is *this* (follower's) commit index, used as a safety net.

        * §5.3: "Reply false if log doesn't contain an entry at prevLogIndex whose
          term matches prevLogTerm" -- then -1 is returned and the log is unchanged.
        * ``entries`` must be contiguous from ``prev_index + 1`` with non-decreasing
          terms (:class:`ValueError` otherwise, log unchanged).
        * §5.3: "If an existing entry conflicts with a new one (same index but
          different terms), delete the existing entry and all that follow it";
          then "append any new entries not already in the log".  Entries that
          already match are *not* rewritten, so a stale or duplicated message
          whose entries all match never truncates the log.
        * Overwriting an entry at or below ``committed`` would violate State
          Machine Safety: :class:`ValueError` is raised instead (log unchanged).

        The return value is ``prev_index + len(entries)``: the index up to which
        the follower's log is now known to match the leader's.
        """
        cdef list batch
        cdef Py_ssize_t i, n
        cdef Py_ssize_t k = 0  # run of the previous lookup
        cdef Entry e
        cdef int64_t expected, term, conflict, last, snap
        if not self._match(prev_index, prev_term):
            return -1
        batch = _as_entry_list(entries)
        n = len(batch)
        last = self._snap_index + self._n
        snap = self._snap_index
        expected = prev_index + 1
        term = prev_term
        conflict = 0
        # One pass: validate the run (contiguous, non-decreasing terms) and find the first conflict.
        for i in range(n):
            e = <Entry>batch[i]
            if e.index != expected:
                raise ValueError(f"entries are not contiguous: expected index {expected}, got {e.index}")
            if e.term < term:
                raise ValueError(f"entry {e.index} has term {e.term} lower than the preceding term {term}")
            if conflict == 0:
                if expected > last:
                    conflict = expected
                elif expected > snap:
                    k = _run_near(self._runs, self._nruns, k, expected)
                    if self._runs[k].term != e.term:
                        conflict = expected
            term = e.term
            expected += 1
        if conflict:
            if conflict <= last:
                if conflict <= committed:
                    raise ValueError(
                        f"entry {conflict} conflicts with a committed entry (committed={committed})")
                # §5.3: delete the existing entry and all that follow it.
                self._truncate(conflict - 1)
            self._extend(batch, <Py_ssize_t>(conflict - prev_index - 1))
        return prev_index + n

    def conflict_hint(self, int64_t index, int64_t term):
        """Fast back-tracking hint for a rejected AppendEntries (etcd's findConflictByTerm).

        Returns ``(idx, term(idx))`` for the largest ``idx <= min(index, last_index)``
        whose term is ``<= term``, stopping at the snapshot point (returning
        ``(snapshot_index, snapshot_term)``) when no entry above it qualifies.
        Every entry between the hint and ``index`` has a term greater than
        ``term``, so none of them can match the other log at ``(index, term)``
        and the leader may skip them all at once (thesis §5.3 optimisation).

        Raises :class:`LogIndexError` if ``index < snapshot_index``.

        Terms never decrease along the log (enforced by :meth:`append` and
        :meth:`maybe_append`), so the run terms strictly increase and this is a
        binary search over the runs rather than the reference's backwards scan;
        the result is the same: ``top`` itself if its run qualifies, else the last
        index of the last qualifying run before it, else the snapshot point.
        """
        if index < self._snap_index:
            _index_error("conflict_hint: index", index, self._snap_index, MAX_INDEX)
        cdef int64_t top = index if index < self._last_index() else self._last_index()
        cdef Py_ssize_t k = _run_of(self._runs, self._nruns, top)
        if self._runs[k].term <= term:
            return (top, self._runs[k].term)
        cdef Py_ssize_t j = _last_run_with_term_at_most(self._runs, k, term)
        if j < 0:
            # Even the snapshot point's run has a greater term: stop at the snapshot point.
            return (self._snap_index, self._runs[0].term)
        return (self._runs[j + 1].start - 1, self._runs[j].term)

    # -- reading ranges ----------------------------------------------------------------------

    cdef int _check_range(self, str what, int64_t lo, int64_t hi) except -1:
        if lo > hi:
            raise ValueError(f"{what}: lo ({lo}) > hi ({hi})")
        if lo <= self._snap_index:
            _index_error(f"{what}: lo", lo, self._snap_index + 1, self._last_index() + 1)
        if hi > self._last_index() + 1:
            _index_error(f"{what}: hi", hi, self._snap_index + 1, self._last_index() + 1)
        return 0

    def slice(self, int64_t lo, int64_t hi, int64_t max_bytes):
        """Entries ``[lo, hi)`` whose cumulative :attr:`Entry.size` stays ``<= max_bytes``.

        At least one entry is returned when ``lo < hi``, however large it is, so
        that replication always makes progress.  Raises :class:`ValueError` if
        ``lo > hi`` and :class:`LogIndexError` if ``lo <= snapshot_index`` or
        ``hi > last_index + 1``.  O(log n + k): binary search over the prefix sums.
        """
        self._check_range("slice", lo, hi)
        cdef Py_ssize_t start = <Py_ssize_t>(lo - self._snap_index - 1)
        cdef Py_ssize_t stop = <Py_ssize_t>(hi - self._snap_index - 1)
        if start == stop:
            return []
        cdef int64_t base = self._cum[start]
        # Largest k in [start + 1, stop] with _cum[k] - base <= max_bytes (differences never overflow).
        cdef Py_ssize_t a = start + 1
        cdef Py_ssize_t b = stop + 1
        cdef Py_ssize_t mid
        while a < b:
            mid = (a + b) >> 1
            if self._cum[mid] - base <= max_bytes:
                a = mid + 1
            else:
                b = mid
        cdef Py_ssize_t k = a - 1
        if k < start + 1:
            k = start + 1
        return self._entries[start:k]

    def bytes_between(self, int64_t lo, int64_t hi):
        """Total :attr:`Entry.size` of the entries ``[lo, hi)`` (same range rules as :meth:`slice`)."""
        self._check_range("bytes_between", lo, hi)
        return self._cum[hi - self._snap_index - 1] - self._cum[lo - self._snap_index - 1]

    # -- shrinking ---------------------------------------------------------------------------

    def truncate_after(self, int64_t index):
        """Drop every entry after ``index`` (``index`` in ``[snapshot_index, last_index]``).

        Only for followers resolving a conflict and for recovery: a leader never
        truncates its own log.
        """
        if index < self._snap_index or index > self._last_index():
            _index_error("truncate_after: index", index, self._snap_index, self._last_index())
        self._truncate(index)

    def compact(self, int64_t index):
        """Discard the entries up to and including ``index``, which a snapshot now covers.

        ``index`` must be in ``[snapshot_index, last_index]`` (:class:`ValueError`
        otherwise); the new snapshot point is ``(index, term(index))``.  A no-op
        when ``index == snapshot_index``.
        """
        if index < self._snap_index or index > self._last_index():
            raise ValueError(f"compact: index {index} is outside the valid range "
                             f"[{self._snap_index}, {self._last_index()}]")
        if index == self._snap_index:
            return
        # Drop the runs wholly before ``index`` and clip the one holding it: it becomes run 0,
        # starting at the new snapshot point with the snapshot term.
        cdef Py_ssize_t k = _run_of(self._runs, self._nruns, index)
        if k:
            memmove(self._runs, self._runs + k, (self._nruns - k) * sizeof(TermRun))
            self._nruns -= k
        self._runs[0].start = index
        cdef Py_ssize_t drop = <Py_ssize_t>(index - self._snap_index)
        cdef Py_ssize_t keep = self._n - drop
        memmove(self._cum, self._cum + drop, (keep + 1) * sizeof(int64_t))
        del self._entries[:drop]
        self._n = keep
        self._snap_index = index
        self._maybe_shrink()

    def restore(self, snapshot_index, snapshot_term):
        """Drop everything: become an empty log at the snapshot point ``(snapshot_index, snapshot_term)``."""
        cdef int64_t si = operator.index(snapshot_index)
        cdef int64_t st = operator.index(snapshot_term)
        if si < 0 or st < 0:
            raise ValueError(f"snapshot index and term must be >= 0, got ({si}, {st})")
        self._entries = []
        self._n = 0
        self._cum[0] = 0
        self._nruns = 1
        self._runs[0].start = si
        self._runs[0].term = st
        self._snap_index = si
        self._maybe_shrink()


# ---------------------------------------------------------------------------------------------
# Quorum arithmetic
# ---------------------------------------------------------------------------------------------

cdef int _cmp_desc(const void* a, const void* b) noexcept nogil:
    cdef int64_t x = (<const int64_t*>a)[0]
    cdef int64_t y = (<const int64_t*>b)[0]
    return (x < y) - (x > y)


cdef inline int64_t _kth_largest(int64_t* buf, Py_ssize_t n) noexcept:
    """Sort ``buf[:n]`` descending in place and return the ``n // 2``-th element (n > 0).

    With n voters a majority is n // 2 + 1, so the (n // 2)-th largest match
    index (0-based) is the largest index that a majority has reached.
    """
    cdef Py_ssize_t i, j
    cdef int64_t x
    if n <= SMALL_SORT:
        for i in range(1, n):
            x = buf[i]
            j = i - 1
            while j >= 0 and buf[j] < x:
                buf[j + 1] = buf[j]
                j -= 1
            buf[j + 1] = x
    else:
        qsort(buf, n, sizeof(int64_t), _cmp_desc)
    return buf[n // 2]


cdef int64_t _committed_of(object matches) except? -1:
    cdef object seq = matches if (type(matches) is list or type(matches) is tuple) else list(matches)
    cdef Py_ssize_t n = len(seq)
    cdef Py_ssize_t i
    cdef int64_t small[SMALL_SORT]
    cdef int64_t* buf = small
    cdef int64_t result
    if n == 0:
        return C_MAX_INDEX
    if n > SMALL_SORT:
        buf = <int64_t*>PyMem_Malloc(n * sizeof(int64_t))
        if buf == NULL:
            raise MemoryError()
    try:
        for i in range(n):
            buf[i] = seq[i]
        result = _kth_largest(buf, n)
    finally:
        if buf != small:
            PyMem_Free(buf)
    return result


def committed_index(matches):
    """The largest index acknowledged by a majority of voters, given their match indexes.

    That is the ``n // 2``-th largest match index for ``n`` voters (a majority is
    ``n // 2 + 1``).  An empty configuration returns :data:`MAX_INDEX`: by
    convention it does not constrain a joint configuration.
    """
    return _committed_of(matches)


def joint_committed_index(incoming, outgoing):
    """Committed index of a joint configuration C_old,new: it needs majorities of both (thesis §4.3)."""
    cdef int64_t a = _committed_of(incoming)
    cdef int64_t b = _committed_of(outgoing)
    return a if a < b else b


cdef inline int _tally(Py_ssize_t n, Py_ssize_t granted, Py_ssize_t pending) noexcept:
    # §5.2: a candidate wins with votes from a majority; it has lost once granted + pending
    # can no longer reach a majority.  An empty configuration wins.
    cdef Py_ssize_t majority = n // 2 + 1
    if n == 0 or granted >= majority:
        return C_VOTE_WON
    if granted + pending < majority:
        return C_VOTE_LOST
    return C_VOTE_PENDING


cdef int _vote_result_of(object votes) except -1:
    cdef Py_ssize_t granted = 0, pending = 0, n = 0
    for v in votes:
        if v == 1:
            granted += 1
        elif v == 0:
            pass
        elif v == -1:
            pending += 1
        else:
            raise ValueError(f"a vote must be 1 (granted), 0 (rejected) or -1 (pending), got {v!r}")
        n += 1
    return _tally(n, granted, pending)


cdef inline int _joint(int a, int b) noexcept:
    if a == C_VOTE_LOST or b == C_VOTE_LOST:
        return C_VOTE_LOST
    if a == C_VOTE_WON and b == C_VOTE_WON:
        return C_VOTE_WON
    return C_VOTE_PENDING


def vote_result(votes):
    """Outcome of an election given one vote per voter: 1 granted, 0 rejected, -1 not yet answered.

    :data:`VOTE_WON` once a majority granted (§5.2), :data:`VOTE_LOST` once a
    majority can no longer be reached, :data:`VOTE_PENDING` otherwise.  An empty
    configuration wins (it does not constrain a joint configuration).
    """
    return _vote_result_of(votes)


def joint_vote_result(incoming, outgoing):
    """Election outcome in a joint configuration: won in both, lost if lost in either."""
    cdef int a = _vote_result_of(incoming)
    cdef int b = _vote_result_of(outgoing)
    return _joint(a, b)


cdef tuple _check_slot_list(str name, object slots):
    cdef tuple result = tuple([operator.index(s) for s in slots])
    for s in result:
        if s < 0:
            raise ValueError(f"{name}: slot numbers must be >= 0, got {s}")
    if len(set(result)) != len(result):
        raise ValueError(f"{name}: duplicate slot in {result}")
    return result


@cython.final
cdef class QuorumTracker:
    """Slot-addressed match indexes and votes for a simple or joint configuration.

    The leader updates one slot per acknowledgement and asks for the committed
    index; a candidate records votes and asks for the election result.  Slots
    are small ints ``0..n_slots-1`` assigned by the caller (the core maps node
    ids to slots).  Slots in neither voter set (learners) are tracked but never
    counted.
    """

    cdef int64_t* _matches
    cdef signed char* _votes       # -1 pending, 0 rejected, 1 granted
    cdef char* _voter              # 1 if the slot is in either voter set
    cdef Py_ssize_t _n
    cdef Py_ssize_t* _inc
    cdef Py_ssize_t _n_inc
    cdef Py_ssize_t* _out
    cdef Py_ssize_t _n_out
    cdef int64_t* _scratch         # room for max(_n_inc, _n_out) values

    def __cinit__(self):
        self._matches = NULL
        self._votes = NULL
        self._voter = NULL
        self._inc = NULL
        self._out = NULL
        self._scratch = NULL
        self._n = self._n_inc = self._n_out = 0

    def __dealloc__(self):
        PyMem_Free(self._matches)
        PyMem_Free(self._votes)
        PyMem_Free(self._voter)
        PyMem_Free(self._inc)
        PyMem_Free(self._out)
        PyMem_Free(self._scratch)

    def __init__(self, n_slots):
        cdef Py_ssize_t n = operator.index(n_slots)
        if n < 0:
            raise ValueError(f"n_slots must be >= 0, got {n}")
        self._grow(n)

    cdef int _grow(self, Py_ssize_t n) except -1:
        """Make room for ``n`` slots (new slots: match 0, no vote, not a voter)."""
        if n <= self._n:
            return 0
        cdef Py_ssize_t cap = n if n > 0 else 1
        cdef int64_t* m = <int64_t*>PyMem_Realloc(self._matches, cap * sizeof(int64_t))
        if m == NULL:
            raise MemoryError()
        self._matches = m
        cdef signed char* v = <signed char*>PyMem_Realloc(self._votes, cap)
        if v == NULL:
            raise MemoryError()
        self._votes = v
        cdef char* f = <char*>PyMem_Realloc(self._voter, cap)
        if f == NULL:
            raise MemoryError()
        self._voter = f
        memset(self._matches + self._n, 0, (n - self._n) * sizeof(int64_t))
        memset(self._votes + self._n, -1, n - self._n)
        memset(self._voter + self._n, 0, n - self._n)
        self._n = n
        return 0

    cdef inline int _check_slot(self, Py_ssize_t slot) except -1:
        if slot < 0 or slot >= self._n:
            raise IndexError(f"slot {slot} is outside the valid range [0, {self._n - 1}]")
        return 0

    @property
    def n_slots(self):
        """Number of slots currently tracked."""
        return self._n

    def set_config(self, incoming, outgoing=()):
        """Set the voters: slot numbers of the incoming and (when joint) outgoing configurations.

        A slot may be in both; slots in neither never count.  Slots beyond
        :attr:`n_slots` grow the tracker (new slots start with match 0 and no vote).
        Matches and votes already recorded are kept.
        """
        cdef tuple inc = _check_slot_list("incoming", incoming)
        cdef tuple out = _check_slot_list("outgoing", outgoing)
        cdef Py_ssize_t n_inc = len(inc), n_out = len(out), i
        self._grow(max(inc + out, default=-1) + 1)
        cdef Py_ssize_t* pi = <Py_ssize_t*>PyMem_Malloc((n_inc + 1) * sizeof(Py_ssize_t))
        cdef Py_ssize_t* po = <Py_ssize_t*>PyMem_Malloc((n_out + 1) * sizeof(Py_ssize_t))
        cdef int64_t* scratch = <int64_t*>PyMem_Malloc((max(n_inc, n_out) + 1) * sizeof(int64_t))
        if pi == NULL or po == NULL or scratch == NULL:
            PyMem_Free(pi)
            PyMem_Free(po)
            PyMem_Free(scratch)
            raise MemoryError()
        memset(self._voter, 0, self._n)
        for i in range(n_inc):
            pi[i] = inc[i]
            self._voter[pi[i]] = 1
        for i in range(n_out):
            po[i] = out[i]
            self._voter[po[i]] = 1
        PyMem_Free(self._inc)
        PyMem_Free(self._out)
        PyMem_Free(self._scratch)
        self._inc, self._n_inc = pi, n_inc
        self._out, self._n_out = po, n_out
        self._scratch = scratch

    def set_match(self, Py_ssize_t slot, int64_t index):
        """Record that the log of the voter in ``slot`` matches ours up to ``index``."""
        self._check_slot(slot)
        if index < 0:
            raise ValueError(f"match index must be >= 0, got {index}")
        self._matches[slot] = index

    def match(self, Py_ssize_t slot):
        """The match index recorded for ``slot``."""
        self._check_slot(slot)
        return self._matches[slot]

    cdef int64_t _committed(self) noexcept:
        cdef Py_ssize_t i
        cdef int64_t a = C_MAX_INDEX, b = C_MAX_INDEX
        if self._n_inc:
            for i in range(self._n_inc):
                self._scratch[i] = self._matches[self._inc[i]]
            a = _kth_largest(self._scratch, self._n_inc)
        if self._n_out:
            for i in range(self._n_out):
                self._scratch[i] = self._matches[self._out[i]]
            b = _kth_largest(self._scratch, self._n_out)
        return a if a < b else b

    def committed(self):
        """Largest index replicated on a majority of the incoming (and outgoing, if joint) voters."""
        return self._committed()

    def set_match_and_commit(self, Py_ssize_t slot, int64_t index):
        """:meth:`set_match` then :meth:`committed`: the leader's per-acknowledgement hot path."""
        if slot < 0 or slot >= self._n:
            raise IndexError(f"slot {slot} is outside the valid range [0, {self._n - 1}]")
        if index < 0:
            raise ValueError(f"match index must be >= 0, got {index}")
        self._matches[slot] = index
        return self._committed()

    def reset_matches(self):
        """Forget all match indexes (a new leader starts with every match at 0)."""
        if self._n:
            memset(self._matches, 0, self._n * sizeof(int64_t))

    def record_vote(self, Py_ssize_t slot, bint granted):
        """Record the vote of ``slot``; the first answer wins, like in Raft (a voter votes once per term)."""
        self._check_slot(slot)
        if self._votes[slot] == -1:
            self._votes[slot] = 1 if granted else 0

    def reset_votes(self):
        """Forget all votes (start of a new election)."""
        if self._n:
            memset(self._votes, -1, self._n)

    cdef int _result_of(self, Py_ssize_t* slots, Py_ssize_t n) noexcept:
        cdef Py_ssize_t i, granted = 0, pending = 0
        cdef signed char v
        for i in range(n):
            v = self._votes[slots[i]]
            if v == 1:
                granted += 1
            elif v == -1:
                pending += 1
        return _tally(n, granted, pending)

    def vote_result(self):
        """:func:`joint_vote_result` over the configured voters."""
        return _joint(self._result_of(self._inc, self._n_inc), self._result_of(self._out, self._n_out))

    def votes(self):
        """``(granted, rejected)`` counted over the configured voters (union of both sets)."""
        cdef Py_ssize_t i, granted = 0, rejected = 0
        for i in range(self._n):
            if self._voter[i]:
                if self._votes[i] == 1:
                    granted += 1
                elif self._votes[i] == 0:
                    rejected += 1
        return (granted, rejected)
