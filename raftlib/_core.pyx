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
* The wire codec's hot paths (message encode/decode, the stream scans, group
  frames) read and write the frame bytes directly, building :class:`Entry`
  objects without going through their Python constructor; unusual inputs are
  handed to ``_pycore``'s reference codec (see the section's comment).

Integers crossing the API are C ``int64_t`` (``Py_ssize_t`` for slots): values
outside that range raise :class:`OverflowError` here where the pure module
would accept them.  Indexes and terms of a Raft log never get near it.
"""

cimport cython
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from cpython.unicode cimport PyUnicode_AsUTF8AndSize, PyUnicode_DecodeUTF8
from libc.stdint cimport int64_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport qsort
from libc.string cimport memcpy, memmove, memset

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


# ---------------------------------------------------------------------------------------------
# Wire codec (raftlib.codec's hot paths)
# ---------------------------------------------------------------------------------------------
#
# Same functions, results and errors (same messages) as the wire codec section of
# raftlib._pycore, which documents the byte layout; the test-suite checks the two against each
# other on random messages and random, mutated and truncated byte strings.  Frames are read and
# written with explicit little-endian byte arithmetic on the buffer; every length read from the
# input is checked against the buffer before use.  Inputs off the usual path (buffers that are
# not flat bytes, a non-int bound, a message holding anything but the exact expected types or
# any value the format cannot carry) are handed to the reference implementation, which then
# gives the reference answer: every encoding error comes from there.

from raftlib import _pycore
from raftlib.errors import CodecError

cdef enum:
    HEADER_SIZE = 8
    FIXED_SIZE = 66
    ENTRY_HEADER_SIZE = 21
    SNAP_SIZE = 32
    F_REJECT = 0x01
    F_DONE = 0x02
    F_FORCE = 0x04
    F_SNAPSHOT = 0x08
    F_QUIET = 0x10
    F_ALL = 0x1F
    WIRE_VERSION = 1
    FLAG_HANDSHAKE = 0x01
    FLAG_GROUP = 0x02
    MAX_GROUP_ID_BYTES = 255
    GROUP_FRAME_OVERHEAD = 1 + 255 + 8

cdef int64_t C_MAX_U16 = 0xFFFF
cdef int64_t C_MAX_U32 = 0xFFFFFFFF
# Bounds outside which a max_frame_bytes is handed to the reference (int64 arithmetic stays exact).
cdef int64_t C_MAX_BOUND = 1 << 62

cdef tuple _DECODE_ERRORS = _pycore._DECODE_ERRORS

# The message classes, imported on first use (raftlib.core imports this module).
cdef object _Message = None
cdef object _MessageType = None
cdef object _SnapshotMeta = None
cdef object _Membership = None
cdef list _TYPE_BY_CODE = None      # 256 items: the MessageType of each code, or None


cdef int _load_types() except -1:
    global _Message, _MessageType, _SnapshotMeta, _Membership, _TYPE_BY_CODE
    message, types, snapshot_meta, membership = _pycore._wire_types()
    by_code = [None] * 256
    for code, t in types.items():
        if 0 <= code <= 255:
            by_code[code] = t
    _TYPE_BY_CODE = by_code
    _MessageType = type(next(iter(types.values())))
    _SnapshotMeta = snapshot_meta
    _Membership = membership
    _Message = message
    return 0


cdef inline uint16_t _rd16(const unsigned char* p) noexcept nogil:
    return <uint16_t>(p[0] | (<uint16_t>p[1] << 8))


cdef inline uint32_t _rd32(const unsigned char* p) noexcept nogil:
    return (<uint32_t>p[0] | (<uint32_t>p[1] << 8) | (<uint32_t>p[2] << 16)
            | (<uint32_t>p[3] << 24))


cdef inline int64_t _rdi64(const unsigned char* p) noexcept nogil:
    cdef uint64_t v = 0
    cdef int i
    for i in range(7, -1, -1):
        v = (v << 8) | p[i]
    return <int64_t>v


cdef inline void _wr16(unsigned char* p, uint64_t v) noexcept nogil:
    p[0] = <unsigned char>(v & 0xFF)
    p[1] = <unsigned char>((v >> 8) & 0xFF)


cdef inline void _wr32(unsigned char* p, uint64_t v) noexcept nogil:
    cdef int i
    for i in range(4):
        p[i] = <unsigned char>((v >> (8 * i)) & 0xFF)


cdef inline void _wr64(unsigned char* p, int64_t sv) noexcept nogil:
    cdef uint64_t v = <uint64_t>sv
    cdef int i
    for i in range(8):
        p[i] = <unsigned char>((v >> (8 * i)) & 0xFF)


cdef inline void _wr_header(unsigned char* p, int flags, uint64_t length) noexcept nogil:
    p[0] = 82  # "R"
    p[1] = 70  # "F"
    p[2] = WIRE_VERSION
    p[3] = <unsigned char>flags
    _wr32(p + 4, length)


cdef inline bint _is_flat(object data):
    """Whether ``data`` is a flat, contiguous byte buffer this module reads directly."""
    cdef type t = type(data)
    if t is bytes or t is bytearray:
        return True
    if t is memoryview:
        try:
            return data.format == "B" and data.ndim == 1 and data.c_contiguous
        except ValueError:  # a released view: the reference says what to do
            return False
    return False


cdef inline bint _is_bound(object max_frame_bytes):
    return type(max_frame_bytes) is int and -C_MAX_BOUND < max_frame_bytes < C_MAX_BOUND


# -- encoding ----------------------------------------------------------------------------------

cdef inline bint _nonneg_i64(object x, int64_t* out):
    """Store ``x`` in ``out`` if it is an exact int in [0, 2**63); False otherwise (or raises)."""
    if type(x) is not int:
        return False
    cdef int64_t v = x  # OverflowError beyond int64: the caller hands the message to the reference
    if v < 0:
        return False
    out[0] = v
    return True


cdef inline int _flag(object x, int bit) except -2:
    """``bit`` if ``x`` is True, 0 if False, -1 for anything else (handed to the reference)."""
    if x is True:
        return bit
    if x is False:
        return 0
    return -1


cdef list _sorted_ids(object ids, int64_t* size):
    """The ids of a membership set sorted, adding their wire size to ``size``; None if unusual."""
    if type(ids) is not frozenset:
        return None
    cdef list out = sorted(ids)
    cdef Py_ssize_t ln
    for node_id in out:
        if type(node_id) is not str:
            return None
        PyUnicode_AsUTF8AndSize(node_id, &ln)
        if ln > C_MAX_U16:
            return None
        size[0] += 2 + ln
    return out


cdef unsigned char* _write_ids(unsigned char* w, list ids):
    cdef Py_ssize_t ln
    cdef const char* s
    for node_id in ids:
        s = PyUnicode_AsUTF8AndSize(node_id, &ln)
        _wr16(w, <uint64_t>ln)
        memcpy(w + 2, s, ln)
        w += 2 + ln
    return w


cdef object _encode_fast(object msg):
    """The frame of ``msg``, or None when it holds anything unusual (the reference decides)."""
    if type(msg) is not _Message:
        return None
    cdef int64_t term, log_term, index, commit, reject_hint, offset, s_index = 0, s_term = 0
    cdef int64_t body, n, i, v
    cdef Py_ssize_t frm_len, to_len, ln
    cdef const char* frm_p
    cdef const char* to_p
    cdef int flags = 0, f, mt
    cdef Entry e
    cdef unsigned char* w
    cdef list voters = None, outgoing = None, learners = None, promoting = None
    t = msg.type
    if type(t) is not _MessageType and type(t) is not int:
        return None
    if not 0 <= t <= 255:
        return None
    mt = t
    frm = msg.frm
    to = msg.to
    if type(frm) is not str or type(to) is not str:
        return None
    frm_p = PyUnicode_AsUTF8AndSize(frm, &frm_len)
    to_p = PyUnicode_AsUTF8AndSize(to, &to_len)
    if frm_len > C_MAX_U16 or to_len > C_MAX_U16:
        return None
    data = msg.data
    context = msg.context
    if type(data) is not bytes or type(context) is not bytes:
        return None
    entries = msg.entries
    if type(entries) is not list:
        return None
    # A snapshot of the list: nothing can change it between the sizing and the writing passes
    # (an allocation may run arbitrary finalizers).
    cdef tuple ents = tuple(<list>entries)
    for f in (_flag(msg.reject, F_REJECT), _flag(msg.done, F_DONE), _flag(msg.force, F_FORCE),
              _flag(msg.quiet, F_QUIET)):
        if f < 0:
            return None
        flags |= f
    if not (_nonneg_i64(msg.term, &term) and _nonneg_i64(msg.log_term, &log_term)
            and _nonneg_i64(msg.index, &index) and _nonneg_i64(msg.commit, &commit)
            and _nonneg_i64(msg.reject_hint, &reject_hint) and _nonneg_i64(msg.offset, &offset)):
        return None
    n = len(ents)
    if PyBytes_GET_SIZE(data) > C_MAX_U32 or PyBytes_GET_SIZE(context) > C_MAX_U32 or n > C_MAX_U32:
        return None
    body = FIXED_SIZE + frm_len + to_len + PyBytes_GET_SIZE(data) + PyBytes_GET_SIZE(context)
    snap = msg.snapshot
    if snap is not None:
        if type(snap) is not _SnapshotMeta:
            return None
        if not (_nonneg_i64(snap.index, &s_index) and _nonneg_i64(snap.term, &s_term)):
            return None
        mem = snap.membership
        if type(mem) is not _Membership:
            return None
        flags |= F_SNAPSHOT
        body += SNAP_SIZE
        voters = _sorted_ids(mem.voters, &body)
        outgoing = _sorted_ids(mem.outgoing, &body)
        learners = _sorted_ids(mem.learners, &body)
        promoting = _sorted_ids(mem.promoting, &body)
        if voters is None or outgoing is None or learners is None or promoting is None:
            return None
    body += n * ENTRY_HEADER_SIZE
    for item in ents:
        if type(item) is not Entry:
            return None
        ln = PyBytes_GET_SIZE((<Entry>item).data)
        if ln > C_MAX_U32:
            return None
        body += ln
    if body > C_MAX_U32:
        return None
    out = PyBytes_FromStringAndSize(NULL, HEADER_SIZE + body)
    w = <unsigned char*>PyBytes_AS_STRING(out)
    _wr_header(w, 0, <uint64_t>body)
    w += HEADER_SIZE
    w[0] = <unsigned char>mt
    w[1] = <unsigned char>flags
    _wr64(w + 2, term)
    _wr64(w + 10, log_term)
    _wr64(w + 18, index)
    _wr64(w + 26, commit)
    _wr64(w + 34, reject_hint)
    _wr64(w + 42, offset)
    _wr16(w + 50, <uint64_t>frm_len)
    _wr16(w + 52, <uint64_t>to_len)
    _wr32(w + 54, <uint64_t>PyBytes_GET_SIZE(data))
    _wr32(w + 58, <uint64_t>PyBytes_GET_SIZE(context))
    _wr32(w + 62, <uint64_t>n)
    w += FIXED_SIZE
    memcpy(w, frm_p, frm_len)
    w += frm_len
    memcpy(w, to_p, to_len)
    w += to_len
    memcpy(w, PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))
    w += PyBytes_GET_SIZE(data)
    memcpy(w, PyBytes_AS_STRING(context), PyBytes_GET_SIZE(context))
    w += PyBytes_GET_SIZE(context)
    if snap is not None:
        _wr64(w, s_index)
        _wr64(w + 8, s_term)
        _wr32(w + 16, <uint64_t>len(voters))
        _wr32(w + 20, <uint64_t>len(outgoing))
        _wr32(w + 24, <uint64_t>len(learners))
        _wr32(w + 28, <uint64_t>len(promoting))
        w += SNAP_SIZE
        w = _write_ids(w, voters)
        w = _write_ids(w, outgoing)
        w = _write_ids(w, learners)
        w = _write_ids(w, promoting)
    for i in range(n):
        e = <Entry>ents[i]
        _wr64(w, e.index)
        _wr64(w + 8, e.term)
        w[16] = <unsigned char>e.type
        _wr32(w + 17, <uint64_t>PyBytes_GET_SIZE(e.data))
        w += ENTRY_HEADER_SIZE
    for i in range(n):
        e = <Entry>ents[i]
        ln = PyBytes_GET_SIZE(e.data)
        memcpy(w, PyBytes_AS_STRING(e.data), ln)
        w += ln
    return out


def encode_message(msg):
    """Encode ``msg`` as one complete frame (header + body).

    Raises :class:`CodecError` if the message cannot be represented (a
    negative or too large integer, a non-``str`` node id, non-bytes payloads,
    snapshot meta without a membership...).
    """
    if _Message is None:
        _load_types()
    try:
        frame = _encode_fast(msg)
    except Exception:
        frame = None  # e.g. an id that is not valid UTF-8, an int beyond int64: see the reference
    if frame is None:
        return _pycore.encode_message(msg)
    return frame


# -- decoding ----------------------------------------------------------------------------------

cdef inline str _utf8(const unsigned char* p, Py_ssize_t n):
    return PyUnicode_DecodeUTF8(<char*>p, n, NULL)


cdef frozenset _decode_ids(const unsigned char* p, Py_ssize_t* pos, int64_t count, Py_ssize_t end):
    cdef list ids = []
    cdef Py_ssize_t q = pos[0], ln
    cdef int64_t k
    for k in range(count):
        if q + 2 > end:
            raise CodecError("truncated membership")
        ln = _rd16(p + q)
        q += 2
        if q + ln > end:
            raise CodecError("truncated membership node id")
        ids.append(_utf8(p + q, ln))
        q += ln
    cdef frozenset s = frozenset(ids)
    if len(s) != count:
        raise CodecError("duplicate node id in membership")
    pos[0] = q
    return s


cdef object _decode_body(const unsigned char* p, Py_ssize_t end):
    """Decode the message body ``p[0:end]``; CodecError, or an error the caller wraps in one."""
    cdef int mtype, flags
    cdef int64_t term, log_term, index, commit, reject_hint, offset, s_index, s_term
    cdef int64_t frm_len, to_len, data_len, ctx_len, n, nv, no, nl, np_, acc, i
    cdef int64_t e_index, e_term
    cdef Py_ssize_t pos, hdr, dpos, ln
    cdef const unsigned char* q
    cdef Entry e
    if end < FIXED_SIZE:
        raise CodecError(f"message body too short ({end} bytes)")
    mtype = p[0]
    flags = p[1]
    term = _rdi64(p + 2)
    log_term = _rdi64(p + 10)
    index = _rdi64(p + 18)
    commit = _rdi64(p + 26)
    reject_hint = _rdi64(p + 34)
    offset = _rdi64(p + 42)
    frm_len = _rd16(p + 50)
    to_len = _rd16(p + 52)
    data_len = _rd32(p + 54)
    ctx_len = _rd32(p + 58)
    n = _rd32(p + 62)
    typ = _TYPE_BY_CODE[mtype]
    if typ is None:
        raise CodecError(f"unknown message type {mtype}")
    if flags & ~F_ALL:
        raise CodecError(f"unknown message flags 0x{flags:02x}")
    if term < 0 or log_term < 0 or index < 0 or commit < 0 or reject_hint < 0 or offset < 0:
        raise CodecError("negative integer field")
    pos = FIXED_SIZE
    if pos + frm_len + to_len + data_len + ctx_len + n * ENTRY_HEADER_SIZE > end:
        raise CodecError("message body truncated")
    frm = _utf8(p + pos, frm_len)
    pos += frm_len
    to = _utf8(p + pos, to_len)
    pos += to_len
    data = PyBytes_FromStringAndSize(<char*>p + pos, data_len)
    pos += data_len
    context = PyBytes_FromStringAndSize(<char*>p + pos, ctx_len)
    pos += ctx_len
    snapshot = None
    if flags & F_SNAPSHOT:
        if pos + SNAP_SIZE > end:
            raise CodecError("truncated snapshot meta")
        s_index = _rdi64(p + pos)
        s_term = _rdi64(p + pos + 8)
        nv = _rd32(p + pos + 16)
        no = _rd32(p + pos + 20)
        nl = _rd32(p + pos + 24)
        np_ = _rd32(p + pos + 28)
        if s_index < 0 or s_term < 0:
            raise CodecError("negative snapshot index or term")
        pos += SNAP_SIZE
        if pos + 2 * (nv + no + nl + np_) > end:
            raise CodecError("truncated membership")
        voters = _decode_ids(p, &pos, nv, end)
        outgoing = _decode_ids(p, &pos, no, end)
        learners = _decode_ids(p, &pos, nl, end)
        promoting = _decode_ids(p, &pos, np_, end)
        snapshot = _SnapshotMeta(s_index, s_term, _Membership(voters, outgoing, learners, promoting))
    cdef list entries = []
    if n:
        hdr = pos
        if hdr + n * ENTRY_HEADER_SIZE > end:
            raise CodecError("truncated entry headers")
        # The payloads must fill the body exactly (a running total past the end cannot come back).
        acc = hdr + n * ENTRY_HEADER_SIZE
        for i in range(n):
            acc += _rd32(p + hdr + i * ENTRY_HEADER_SIZE + 17)
            if acc > end:
                break
        if acc != end:
            raise CodecError("entry payload lengths do not match the body size")
        dpos = hdr + n * ENTRY_HEADER_SIZE
        for i in range(n):
            q = p + hdr + i * ENTRY_HEADER_SIZE
            e_index = _rdi64(q)
            e_term = _rdi64(q + 8)
            ln = _rd32(q + 17)
            # The checks (and messages) of Entry(): they cannot be skipped, indexes are signed.
            if e_index < 0:
                raise ValueError(f"Entry index must be >= 0, got {e_index}")
            if e_term < 0:
                raise ValueError(f"Entry term must be >= 0, got {e_term}")
            e = Entry.__new__(Entry)
            e.index = e_index
            e.term = e_term
            e.type = q[16]
            e.data = PyBytes_FromStringAndSize(<char*>p + dpos, ln)
            dpos += ln
            entries.append(e)
    elif pos != end:
        raise CodecError(f"{end - pos} unexpected trailing bytes in message body")
    return _Message(
        typ,
        frm,
        to,
        term,
        log_term,
        index,
        entries,
        commit,
        (flags & F_REJECT) != 0,
        reject_hint,
        snapshot,
        offset,
        data,
        (flags & F_DONE) != 0,
        context,
        (flags & F_FORCE) != 0,
        (flags & F_QUIET) != 0,
    )


def decode_message(frame_body):
    """Decode one message body (the bytes after the frame header).

    Raises :class:`CodecError`, and nothing else, for any malformed input.
    """
    cdef Py_buffer view
    if not _is_flat(frame_body):
        return _pycore.decode_message(frame_body)
    if _Message is None:
        _load_types()
    PyObject_GetBuffer(frame_body, &view, PyBUF_SIMPLE)
    try:
        return _decode_body(<const unsigned char*>view.buf, view.len)
    except CodecError:
        raise
    except _DECODE_ERRORS as exc:
        raise CodecError(f"malformed message body: {exc}") from exc
    finally:
        PyBuffer_Release(&view)


cdef int _bad_message_header(const unsigned char* h, int64_t max_frame_bytes) except -1:
    """Raise the CodecError of a message frame header that is not a message's within bounds."""
    cdef int64_t length = _rd32(h + 4)
    if h[0] != 82 or h[1] != 70:
        magic = PyBytes_FromStringAndSize(<char*>h, 2)
        raise CodecError(f"bad magic {magic!r}")
    if h[2] != WIRE_VERSION:
        raise CodecError(f"unknown wire version {h[2]}")
    if h[3] & ~FLAG_HANDSHAKE:
        raise CodecError(f"unknown frame flags 0x{h[3]:02x}")
    if length > max_frame_bytes:
        raise CodecError(f"frame of {length} bytes exceeds the limit of {max_frame_bytes}")
    raise CodecError("unexpected handshake frame in a message stream")


def scan_frames(data, max_frame_bytes):
    """Decode the complete message frames at the start of ``data``: ``(messages, bytes used)``.

    The stream scan of :class:`raftlib.codec.FrameDecoder`: stops at the first
    incomplete frame; a bad header (checked as soon as its 8 bytes are there,
    so an oversized frame is refused before its body arrives), a handshake frame
    or a malformed body raises :class:`CodecError` with ``messages`` set to the
    messages decoded before it.
    """
    cdef Py_buffer view
    cdef const unsigned char* p
    cdef Py_ssize_t pos = 0, start, total
    cdef int64_t length, limit
    cdef list out = []
    if not (_is_flat(data) and _is_bound(max_frame_bytes)):
        return _pycore.scan_frames(data, max_frame_bytes)
    if _Message is None:
        _load_types()
    limit = max_frame_bytes
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        p = <const unsigned char*>view.buf
        total = view.len
        try:
            while total - pos >= HEADER_SIZE:
                length = _rd32(p + pos + 4)
                if (p[pos] != 82 or p[pos + 1] != 70 or p[pos + 2] != WIRE_VERSION or p[pos + 3]
                        or length > limit):
                    _bad_message_header(p + pos, limit)
                start = pos + HEADER_SIZE
                if total - start < length:
                    break
                out.append(_decode_body(p + start, length))
                pos = start + length
        except CodecError:
            raise
        except _DECODE_ERRORS as exc:
            raise CodecError(f"malformed message body: {exc}") from exc
    except CodecError as exc:
        exc.messages = tuple(out)
        raise
    finally:
        PyBuffer_Release(&view)
    return out, pos


# -- group frames ------------------------------------------------------------------------------

def group_tag(group_id):
    """The wire form of a group id in a group frame: u8 length + UTF-8 (``""`` is ``b"\\x00"``).

    Raises :class:`CodecError` for a non-``str`` id, one that cannot be encoded in
    UTF-8 (lone surrogates) or one longer than 255 bytes (``MAX_GROUP_ID_BYTES``).
    Transports compute it once per group and reuse it for every frame.
    """
    cdef Py_ssize_t ln
    cdef const char* s
    if type(group_id) is not str:
        return _pycore.group_tag(group_id)
    try:
        s = PyUnicode_AsUTF8AndSize(group_id, &ln)
    except UnicodeEncodeError:
        return _pycore.group_tag(group_id)
    if ln > MAX_GROUP_ID_BYTES:
        return _pycore.group_tag(group_id)
    out = PyBytes_FromStringAndSize(NULL, 1 + ln)
    cdef unsigned char* w = <unsigned char*>PyBytes_AS_STRING(out)
    w[0] = <unsigned char>ln
    memcpy(w + 1, s, ln)
    return out


def encode_group_frame(tag, frames):
    """One group frame: header (flag ``FLAG_GROUP``), ``tag`` (from :func:`group_tag`),
    then ``frames`` (message frames from ``encode``, at least one) back to back.

    The caller keeps the body within the receiver's bound (``max_frame_bytes`` +
    ``GROUP_FRAME_OVERHEAD``); nothing is re-encoded here, only joined.
    """
    cdef int64_t body
    cdef Py_ssize_t ln
    cdef unsigned char* w
    cdef type ft = type(frames)
    if type(tag) is not bytes or (ft is not list and ft is not tuple) or not frames:
        return _pycore.encode_group_frame(tag, frames)
    body = PyBytes_GET_SIZE(tag)
    for f in frames:
        if type(f) is not bytes:
            return _pycore.encode_group_frame(tag, frames)
        body += PyBytes_GET_SIZE(f)
    if body > C_MAX_U32:
        return _pycore.encode_group_frame(tag, frames)
    out = PyBytes_FromStringAndSize(NULL, HEADER_SIZE + body)
    w = <unsigned char*>PyBytes_AS_STRING(out)
    _wr_header(w, FLAG_GROUP, <uint64_t>body)
    w += HEADER_SIZE
    memcpy(w, PyBytes_AS_STRING(tag), PyBytes_GET_SIZE(tag))
    w += PyBytes_GET_SIZE(tag)
    for f in frames:
        ln = PyBytes_GET_SIZE(f)
        memcpy(w, PyBytes_AS_STRING(f), ln)
        w += ln
    return out


cdef tuple _decode_group_body(const unsigned char* p, Py_ssize_t pos, Py_ssize_t end,
                              int64_t max_frame_bytes):
    """Decode the group frame body ``p[pos:end]``: the group id, then message frames up to its exact end."""
    cdef Py_ssize_t gend, start
    cdef int64_t length
    if pos >= end:
        raise CodecError("empty group frame body")
    gend = pos + 1 + p[pos]
    if gend > end:
        raise CodecError("truncated group id")
    group = _utf8(p + pos + 1, gend - pos - 1)
    if gend == end:
        raise CodecError(f"group frame for {group!r} carries no message")
    pos = gend
    cdef list out = []
    while pos < end:
        if end - pos < HEADER_SIZE:
            raise CodecError("truncated message header in a group frame")
        length = _rd32(p + pos + 4)
        if p[pos] != 82 or p[pos + 1] != 70 or p[pos + 2] != WIRE_VERSION or p[pos + 3]:
            magic = PyBytes_FromStringAndSize(<char*>p + pos, 2)
            raise CodecError(
                f"bad message header in a group frame (magic {magic!r}, version {p[pos + 2]}, "
                f"flags 0x{p[pos + 3]:02x})"
            )
        if length > max_frame_bytes:
            raise CodecError(
                f"message of {length} bytes in a group frame exceeds the limit {max_frame_bytes}"
            )
        start = pos + HEADER_SIZE
        pos = start + length
        if pos > end:
            raise CodecError("message runs past the end of its group frame")
        out.append(_decode_body(p + start, length))
    return group, out


cdef int _bad_group_header(const unsigned char* h, int64_t max_frame_bytes) except -1:
    """Raise the CodecError of a header that is not a group frame's within bounds."""
    cdef int64_t length = _rd32(h + 4)
    if h[0] != 82 or h[1] != 70:
        magic = PyBytes_FromStringAndSize(<char*>h, 2)
        raise CodecError(f"bad magic {magic!r}")
    if h[2] != WIRE_VERSION:
        raise CodecError(f"unknown wire version {h[2]}")
    if h[3] != FLAG_GROUP:
        raise CodecError(f"frame flags 0x{h[3]:02x} where a group frame was expected")
    if length > max_frame_bytes + GROUP_FRAME_OVERHEAD:
        raise CodecError(
            f"group frame of {length} bytes exceeds the limit of {max_frame_bytes + GROUP_FRAME_OVERHEAD}"
        )
    return 0


cdef inline bint _is_group_header(const unsigned char* h, int64_t max_frame_bytes) noexcept:
    return (h[0] == 82 and h[1] == 70 and h[2] == WIRE_VERSION and h[3] == FLAG_GROUP
            and _rd32(h + 4) <= max_frame_bytes + GROUP_FRAME_OVERHEAD)


def decode_group_frame(frame, max_frame_bytes):
    """Decode one complete group frame (header + body, nothing more) into ``(group id, messages)``.

    Raises :class:`CodecError`, and nothing else, for any malformed input.
    """
    cdef Py_buffer view
    cdef const unsigned char* p
    cdef int64_t limit, length
    if not (_is_flat(frame) and _is_bound(max_frame_bytes)):
        return _pycore.decode_group_frame(frame, max_frame_bytes)
    if _Message is None:
        _load_types()
    limit = max_frame_bytes
    PyObject_GetBuffer(frame, &view, PyBUF_SIMPLE)
    try:
        p = <const unsigned char*>view.buf
        if view.len < HEADER_SIZE:
            raise CodecError("truncated frame header")
        if not _is_group_header(p, limit):
            _bad_group_header(p, limit)
        length = _rd32(p + 4)
        if view.len != HEADER_SIZE + length:
            raise CodecError(f"frame length {view.len} does not match its header ({HEADER_SIZE + length})")
        return _decode_group_body(p, HEADER_SIZE, view.len, limit)
    except CodecError:
        raise
    except _DECODE_ERRORS as exc:
        raise CodecError(f"malformed group frame: {exc}") from exc
    finally:
        PyBuffer_Release(&view)


def scan_group_frames(data, max_frame_bytes):
    """Decode the complete group frames at the start of ``data``: ``(groups, bytes used)``.

    The stream scan of :class:`raftlib.codec.GroupFrameDecoder`: stops at the
    first incomplete frame; a bad header (checked as soon as it is there) or a
    malformed body raises :class:`CodecError` with ``groups`` set to the
    ``(group id, messages)`` pairs decoded before it.
    """
    cdef Py_buffer view
    cdef const unsigned char* p
    cdef Py_ssize_t pos = 0, start, end, total
    cdef int64_t limit
    cdef list out = []
    if not (_is_flat(data) and _is_bound(max_frame_bytes)):
        return _pycore.scan_group_frames(data, max_frame_bytes)
    if _Message is None:
        _load_types()
    limit = max_frame_bytes
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        p = <const unsigned char*>view.buf
        total = view.len
        try:
            while total - pos >= HEADER_SIZE:
                if not _is_group_header(p + pos, limit):
                    _bad_group_header(p + pos, limit)
                start = pos + HEADER_SIZE
                end = start + _rd32(p + pos + 4)
                if end > total:
                    break
                out.append(_decode_group_body(p, start, end, limit))
                pos = end
        except CodecError:
            raise
        except _DECODE_ERRORS as exc:
            raise CodecError(f"malformed group frame: {exc}") from exc
    except CodecError as exc:
        exc.groups = tuple(out)
        raise
    finally:
        PyBuffer_Release(&view)
    return out, pos
