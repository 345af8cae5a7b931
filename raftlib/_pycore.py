"""Pure-Python reference implementation of raftlib's hot path.

This module is the *specification* of the compiled extension ``raftlib._core``:
both expose exactly the same names with the same semantics, and the test-suite
runs the same random operation sequences against both and requires identical
results.  It is also the fallback when the extension is not built (or when the
environment variable ``RAFTLIB_PURE=1`` is set, see :mod:`raftlib._accel`).

Keep this code clear rather than clever: it is what a reader should consult to
understand what the compiled code does.

Contents:

* :class:`Entry` -- one log entry (index, term, type, payload).
* :class:`Log` -- the in-memory log: entries ``(snapshot_index, last_index]`` plus
  the (index, term) of the compacted prefix, with the follower-side
  AppendEntries consistency check (Raft paper section 5.3), fast conflict
  back-tracking, byte-budgeted slicing and the section 5.4.1 up-to-date rule.
* :func:`committed_index`, :func:`joint_committed_index`, :func:`vote_result`,
  :func:`joint_vote_result` -- quorum arithmetic for simple and joint
  (C_old,new) configurations.
* :class:`QuorumTracker` -- slot-addressed match indexes and votes kept by a
  leader or candidate.
* the wire codec's hot paths (:func:`encode_message`, :func:`decode_message`,
  :func:`scan_frames`, :func:`group_tag`, :func:`encode_group_frame`,
  :func:`decode_group_frame`, :func:`scan_group_frames`), which
  :mod:`raftlib.codec` re-exports under its public names.
"""

from __future__ import annotations

import builtins
import functools
import operator
import struct
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from itertools import accumulate, pairwise
from typing import TYPE_CHECKING, Any, NoReturn

from raftlib.errors import CodecError

if TYPE_CHECKING:
    from raftlib.core.membership import Membership
    from raftlib.core.messages import Message, MessageType, SnapshotMeta

__all__ = [
    "ENTRY_CONF_CHANGE",
    "ENTRY_NORMAL",
    "ENTRY_OVERHEAD",
    "MAX_INDEX",
    "VOTE_LOST",
    "VOTE_PENDING",
    "VOTE_WON",
    "Entry",
    "Log",
    "LogIndexError",
    "QuorumTracker",
    "committed_index",
    "decode_group_frame",
    "decode_message",
    "encode_group_frame",
    "encode_message",
    "group_tag",
    "joint_committed_index",
    "joint_vote_result",
    "scan_frames",
    "scan_group_frames",
    "vote_result",
]

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


class LogIndexError(IndexError):
    """An index outside the range a :class:`Log` can answer for."""


def _index_error(what: str, index: int, lo: int, hi: int) -> NoReturn:
    raise LogIndexError(f"{what} {index} is outside the valid range [{lo}, {hi}]")


class Entry:
    """One log entry.

    Entries are immutable value objects: two entries are equal when their index,
    term, type and data are all equal.  ``size`` is what byte budgets charge
    for the entry: ``len(data) + ENTRY_OVERHEAD``.
    """

    __slots__ = ("data", "index", "term", "type")

    index: int
    term: int
    type: int
    data: bytes

    def __init__(self, index: int, term: int, data: bytes = b"", type: int = ENTRY_NORMAL) -> None:
        index = operator.index(index)
        term = operator.index(term)
        type = operator.index(type)
        if index < 0:
            raise ValueError(f"Entry index must be >= 0, got {index}")
        if term < 0:
            raise ValueError(f"Entry term must be >= 0, got {term}")
        if not 0 <= type <= MAX_ENTRY_TYPE:
            raise ValueError(f"Entry type must be in [0, {MAX_ENTRY_TYPE}], got {type}")
        if not isinstance(data, bytes):
            raise TypeError(f"Entry data must be bytes, not {data.__class__.__name__}")
        setter = object.__setattr__
        setter(self, "index", index)
        setter(self, "term", term)
        setter(self, "type", type)
        setter(self, "data", data)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"Entry is immutable (cannot set {name!r})")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"Entry is immutable (cannot delete {name!r})")

    @property
    def size(self) -> int:
        """Bytes charged for this entry by byte budgets: ``len(data) + ENTRY_OVERHEAD``."""
        return len(self.data) + ENTRY_OVERHEAD

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Entry):
            return NotImplemented
        return (
            self.index == other.index
            and self.term == other.term
            and self.type == other.type
            and self.data == other.data
        )

    def __ne__(self, other: object) -> bool:
        if not isinstance(other, Entry):
            return NotImplemented
        return not self == other

    def __hash__(self) -> int:
        return hash((self.index, self.term, self.type, self.data))

    def __repr__(self) -> str:
        return f"Entry(index={self.index}, term={self.term}, type={self.type}, data={self.data!r})"

    def __reduce__(self) -> tuple[builtins.type[Entry], tuple[int, int, bytes, int]]:
        return (Entry, (self.index, self.term, self.data, self.type))


def _as_entry_list(entries: Iterable[Entry]) -> list[Entry]:
    """Materialise ``entries`` as a list, checking that every item is an :class:`Entry`."""
    result = entries if isinstance(entries, list) else list(entries)
    for e in result:
        if not isinstance(e, Entry):
            raise TypeError(f"expected Entry, got {e.__class__.__name__}")
    return result


def _check_run(entries: list[Entry], first_index: int, prev_term: int) -> None:
    """Require ``entries`` to be contiguous from ``first_index`` with non-decreasing terms.

    Terms never decrease along a Raft log (a leader only appends entries of its
    own, current, term), so a run that breaks this is malformed input.
    """
    expected = first_index
    term = prev_term
    for e in entries:
        if e.index != expected:
            raise ValueError(f"entries are not contiguous: expected index {expected}, got {e.index}")
        if e.term < term:
            raise ValueError(f"entry {e.index} has term {e.term} lower than the preceding term {term}")
        expected += 1
        term = e.term


class Log:
    """Entries ``(snapshot_index, last_index]`` plus the snapshot point of the compacted prefix.

    The log keeps, alongside the entries, the running total of their sizes so
    that :meth:`slice` and :meth:`bytes_between` can apply byte budgets without
    re-summing entries.
    """

    __slots__ = ("_cum", "_entries", "_snapshot_index", "_snapshot_term")

    def __init__(self, snapshot_index: int = 0, snapshot_term: int = 0) -> None:
        self._entries: list[Entry] = []
        # _cum[i] is the total size of every entry appended before self._entries[i]
        # (absolute, i.e. it is not rebased on compaction): len(_cum) == len(_entries) + 1.
        self._cum: list[int] = [0]
        self._snapshot_index = 0
        self._snapshot_term = 0
        self.restore(snapshot_index, snapshot_term)

    # -- positions ---------------------------------------------------------------------------

    @property
    def snapshot_index(self) -> int:
        """Index of the last entry folded into the snapshot (0 when there is none)."""
        return self._snapshot_index

    @property
    def snapshot_term(self) -> int:
        """Term of the entry at :attr:`snapshot_index`."""
        return self._snapshot_term

    def first_index(self) -> int:
        """Index of the first entry the log may hold: ``snapshot_index + 1``."""
        return self._snapshot_index + 1

    def last_index(self) -> int:
        """Index of the last entry (``snapshot_index`` when the log holds no entry)."""
        return self._snapshot_index + len(self._entries)

    def last_term(self) -> int:
        """Term of the last entry (``snapshot_term`` when the log holds no entry)."""
        if self._entries:
            return self._entries[-1].term
        return self._snapshot_term

    def __len__(self) -> int:
        """Number of entries held (compacted entries are not counted)."""
        return len(self._entries)

    def __repr__(self) -> str:
        return (
            f"Log(snapshot_index={self._snapshot_index}, snapshot_term={self._snapshot_term}, "
            f"last_index={self.last_index()}, last_term={self.last_term()})"
        )

    # -- lookups -----------------------------------------------------------------------------

    def term(self, index: int) -> int:
        """Term of the entry at ``index``; ``snapshot_term`` at ``snapshot_index``.

        Raises :class:`LogIndexError` outside ``[snapshot_index, last_index]``.
        """
        offset = index - self._snapshot_index
        if offset == 0:
            return self._snapshot_term
        if 0 < offset <= len(self._entries):
            return self._entries[offset - 1].term
        _index_error("term: index", index, self._snapshot_index, self.last_index())

    def match_term(self, index: int, term: int) -> bool:
        """True iff the log holds ``index`` (or it is the snapshot point) with this ``term``.

        Never raises: an index outside ``[snapshot_index, last_index]`` simply does not match.
        """
        if self._snapshot_index <= index <= self.last_index():
            return self.term(index) == term
        return False

    def entry(self, index: int) -> Entry:
        """The entry at ``index``; :class:`LogIndexError` outside ``(snapshot_index, last_index]``."""
        offset = index - self._snapshot_index
        if 0 < offset <= len(self._entries):
            return self._entries[offset - 1]
        _index_error("entry: index", index, self._snapshot_index + 1, self.last_index())

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """§5.4.1 up-to-date rule: is a log ending at ``(last_index, last_term)`` at least as up-to-date?

        "If the logs have last entries with different terms, then the log with
        the later term is more up-to-date.  If the logs end with the same term,
        then whichever log is longer is more up-to-date."
        """
        our_term = self.last_term()
        return last_term > our_term or (last_term == our_term and last_index >= self.last_index())

    # -- appending ---------------------------------------------------------------------------

    def _extend(self, entries: list[Entry]) -> None:
        """Append already-validated entries and extend the running size totals."""
        self._entries.extend(entries)
        sums = accumulate((e.size for e in entries), initial=self._cum[-1])
        next(sums)  # the initial value is already the last element of _cum
        self._cum.extend(sums)

    def append(self, entries: Sequence[Entry]) -> int:
        """Leader-side append; returns the new last index.

        ``entries`` must start at ``last_index + 1``, be contiguous, and have
        terms that never decrease (starting from ``last_term``).  On a violation
        :class:`ValueError` is raised and nothing is appended.  A leader never
        overwrites or deletes its own entries (Leader Append-Only, §5.3), so this
        method never truncates.
        """
        batch = _as_entry_list(entries)
        _check_run(batch, self.last_index() + 1, self.last_term())
        self._extend(batch)
        return self.last_index()

    def find_conflict(self, entries: Sequence[Entry]) -> int:
        """Index of the first entry of ``entries`` that the log does not already hold, 0 if none.

        An entry conflicts when its index is past ``last_index`` or when the log
        holds a different term at its index (§5.3).  Entries at or below
        ``snapshot_index`` are treated as matching: they are compacted, hence
        committed, and a committed entry is never contradicted by a legitimate
        leader (Leader Completeness, §5.4).
        """
        for e in _as_entry_list(entries):
            if e.index > self.last_index():
                return e.index
            if e.index > self._snapshot_index and self.term(e.index) != e.term:
                return e.index
        return 0

    def maybe_append(self, prev_index: int, prev_term: int, committed: int, entries: Sequence[Entry]) -> int:
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
        if not self.match_term(prev_index, prev_term):
            return -1
        batch = _as_entry_list(entries)
        _check_run(batch, prev_index + 1, prev_term)
        conflict = self.find_conflict(batch)
        if conflict:
            if conflict <= self.last_index():
                if conflict <= committed:
                    raise ValueError(
                        f"entry {conflict} conflicts with a committed entry (committed={committed})"
                    )
                self.truncate_after(conflict - 1)
            self._extend(batch[conflict - prev_index - 1 :])
        return prev_index + len(batch)

    def conflict_hint(self, index: int, term: int) -> tuple[int, int]:
        """Fast back-tracking hint for a rejected AppendEntries (etcd's findConflictByTerm).

        Returns ``(idx, term(idx))`` for the largest ``idx <= min(index, last_index)``
        whose term is ``<= term``, stopping at the snapshot point (returning
        ``(snapshot_index, snapshot_term)``) when no entry above it qualifies.
        Every entry between the hint and ``index`` has a term greater than
        ``term``, so none of them can match the other log at ``(index, term)``
        and the leader may skip them all at once (thesis §5.3 optimisation).

        Raises :class:`LogIndexError` if ``index < snapshot_index``.
        """
        if index < self._snapshot_index:
            _index_error("conflict_hint: index", index, self._snapshot_index, MAX_INDEX)
        idx = min(index, self.last_index())
        while idx > self._snapshot_index and self.term(idx) > term:
            idx -= 1
        return idx, self.term(idx)

    # -- reading ranges ----------------------------------------------------------------------

    def _check_range(self, what: str, lo: int, hi: int) -> None:
        if lo > hi:
            raise ValueError(f"{what}: lo ({lo}) > hi ({hi})")
        if lo <= self._snapshot_index:
            _index_error(f"{what}: lo", lo, self._snapshot_index + 1, self.last_index() + 1)
        if hi > self.last_index() + 1:
            _index_error(f"{what}: hi", hi, self._snapshot_index + 1, self.last_index() + 1)

    def slice(self, lo: int, hi: int, max_bytes: int) -> list[Entry]:
        """Entries ``[lo, hi)`` whose cumulative :attr:`Entry.size` stays ``<= max_bytes``.

        At least one entry is returned when ``lo < hi``, however large it is, so
        that replication always makes progress.  Raises :class:`ValueError` if
        ``lo > hi`` and :class:`LogIndexError` if ``lo <= snapshot_index`` or
        ``hi > last_index + 1``.
        """
        self._check_range("slice", lo, hi)
        start = lo - self._snapshot_index - 1
        stop = hi - self._snapshot_index - 1
        if start == stop:
            return []
        # The largest k in (start, stop] with _cum[k] - _cum[start] <= max_bytes, at least start + 1.
        limit = self._cum[start] + max_bytes
        k = bisect_right(self._cum, limit, start + 1, stop + 1) - 1
        return self._entries[start : max(k, start + 1)]

    def bytes_between(self, lo: int, hi: int) -> int:
        """Total :attr:`Entry.size` of the entries ``[lo, hi)`` (same range rules as :meth:`slice`)."""
        self._check_range("bytes_between", lo, hi)
        return self._cum[hi - self._snapshot_index - 1] - self._cum[lo - self._snapshot_index - 1]

    # -- shrinking ---------------------------------------------------------------------------

    def truncate_after(self, index: int) -> None:
        """Drop every entry after ``index`` (``index`` in ``[snapshot_index, last_index]``).

        Only for followers resolving a conflict and for recovery: a leader never
        truncates its own log.
        """
        if not self._snapshot_index <= index <= self.last_index():
            _index_error("truncate_after: index", index, self._snapshot_index, self.last_index())
        keep = index - self._snapshot_index
        del self._entries[keep:]
        del self._cum[keep + 1 :]

    def compact(self, index: int) -> None:
        """Discard the entries up to and including ``index``, which a snapshot now covers.

        ``index`` must be in ``[snapshot_index, last_index]`` (:class:`ValueError`
        otherwise); the new snapshot point is ``(index, term(index))``.  A no-op
        when ``index == snapshot_index``.
        """
        if not self._snapshot_index <= index <= self.last_index():
            raise ValueError(
                f"compact: index {index} is outside the valid range "
                f"[{self._snapshot_index}, {self.last_index()}]"
            )
        if index == self._snapshot_index:
            return
        new_term = self.term(index)
        drop = index - self._snapshot_index
        del self._entries[:drop]
        del self._cum[:drop]
        self._snapshot_index = index
        self._snapshot_term = new_term

    def restore(self, snapshot_index: int, snapshot_term: int) -> None:
        """Drop everything: become an empty log at the snapshot point ``(snapshot_index, snapshot_term)``."""
        snapshot_index = operator.index(snapshot_index)
        snapshot_term = operator.index(snapshot_term)
        if snapshot_index < 0 or snapshot_term < 0:
            raise ValueError(f"snapshot index and term must be >= 0, got ({snapshot_index}, {snapshot_term})")
        self._entries = []
        self._cum = [0]
        self._snapshot_index = snapshot_index
        self._snapshot_term = snapshot_term


# -- quorum arithmetic -------------------------------------------------------------------------


def committed_index(matches: Sequence[int]) -> int:
    """The largest index acknowledged by a majority of voters, given their match indexes.

    That is the ``n // 2``-th largest match index for ``n`` voters (a majority is
    ``n // 2 + 1``).  An empty configuration returns :data:`MAX_INDEX`: by
    convention it does not constrain a joint configuration.
    """
    n = len(matches)
    if n == 0:
        return MAX_INDEX
    return sorted(matches, reverse=True)[n // 2]


def joint_committed_index(incoming: Sequence[int], outgoing: Sequence[int]) -> int:
    """Committed index of a joint configuration C_old,new: it needs majorities of both (thesis §4.3)."""
    return min(committed_index(incoming), committed_index(outgoing))


def vote_result(votes: Sequence[int]) -> int:
    """Outcome of an election given one vote per voter: 1 granted, 0 rejected, -1 not yet answered.

    :data:`VOTE_WON` once a majority granted (§5.2), :data:`VOTE_LOST` once a
    majority can no longer be reached, :data:`VOTE_PENDING` otherwise.  An empty
    configuration wins (it does not constrain a joint configuration).
    """
    granted = rejected = pending = 0
    for v in votes:
        if v == 1:
            granted += 1
        elif v == 0:
            rejected += 1
        elif v == -1:
            pending += 1
        else:
            raise ValueError(f"a vote must be 1 (granted), 0 (rejected) or -1 (pending), got {v!r}")
    majority = len(votes) // 2 + 1
    if granted >= majority or not votes:
        return VOTE_WON
    if granted + pending < majority:
        return VOTE_LOST
    return VOTE_PENDING


def joint_vote_result(incoming: Sequence[int], outgoing: Sequence[int]) -> int:
    """Election outcome in a joint configuration: won in both, lost if lost in either."""
    a = vote_result(incoming)
    b = vote_result(outgoing)
    if a == VOTE_LOST or b == VOTE_LOST:
        return VOTE_LOST
    if a == VOTE_WON and b == VOTE_WON:
        return VOTE_WON
    return VOTE_PENDING


def _check_slot_list(name: str, slots: Iterable[int]) -> tuple[int, ...]:
    result = tuple(operator.index(s) for s in slots)
    for s in result:
        if s < 0:
            raise ValueError(f"{name}: slot numbers must be >= 0, got {s}")
    if len(set(result)) != len(result):
        raise ValueError(f"{name}: duplicate slot in {result}")
    return result


class QuorumTracker:
    """Slot-addressed match indexes and votes for a simple or joint configuration.

    The leader updates one slot per acknowledgement and asks for the committed
    index; a candidate records votes and asks for the election result.  Slots
    are small ints ``0..n_slots-1`` assigned by the caller (the core maps node
    ids to slots).  Slots in neither voter set (learners) are tracked but never
    counted.
    """

    __slots__ = ("_incoming", "_matches", "_outgoing", "_votes")

    def __init__(self, n_slots: int) -> None:
        n_slots = operator.index(n_slots)
        if n_slots < 0:
            raise ValueError(f"n_slots must be >= 0, got {n_slots}")
        self._matches: list[int] = [0] * n_slots
        self._votes: list[int] = [-1] * n_slots
        self._incoming: tuple[int, ...] = ()
        self._outgoing: tuple[int, ...] = ()

    @property
    def n_slots(self) -> int:
        """Number of slots currently tracked."""
        return len(self._matches)

    def _check_slot(self, slot: int) -> None:
        if not 0 <= slot < len(self._matches):
            raise IndexError(f"slot {slot} is outside the valid range [0, {len(self._matches) - 1}]")

    def set_config(self, incoming: Sequence[int], outgoing: Sequence[int] = ()) -> None:
        """Set the voters: slot numbers of the incoming and (when joint) outgoing configurations.

        A slot may be in both; slots in neither never count.  Slots beyond
        :attr:`n_slots` grow the tracker (new slots start with match 0 and no vote).
        Matches and votes already recorded are kept.
        """
        inc = _check_slot_list("incoming", incoming)
        out = _check_slot_list("outgoing", outgoing)
        needed = max(inc + out, default=-1) + 1
        if needed > len(self._matches):
            grow = needed - len(self._matches)
            self._matches.extend([0] * grow)
            self._votes.extend([-1] * grow)
        self._incoming = inc
        self._outgoing = out

    def set_match(self, slot: int, index: int) -> None:
        """Record that the log of the voter in ``slot`` matches ours up to ``index``."""
        self._check_slot(slot)
        if index < 0:
            raise ValueError(f"match index must be >= 0, got {index}")
        self._matches[slot] = index

    def match(self, slot: int) -> int:
        """The match index recorded for ``slot``."""
        self._check_slot(slot)
        return self._matches[slot]

    def committed(self) -> int:
        """Largest index replicated on a majority of the incoming (and outgoing, if joint) voters."""
        m = self._matches
        return joint_committed_index([m[s] for s in self._incoming], [m[s] for s in self._outgoing])

    def set_match_and_commit(self, slot: int, index: int) -> int:
        """:meth:`set_match` then :meth:`committed`: the leader's per-acknowledgement hot path."""
        self.set_match(slot, index)
        return self.committed()

    def reset_matches(self) -> None:
        """Forget all match indexes (a new leader starts with every match at 0)."""
        self._matches = [0] * len(self._matches)

    def record_vote(self, slot: int, granted: bool) -> None:
        """Record the vote of ``slot``; the first answer wins, like in Raft (a voter votes once per term)."""
        self._check_slot(slot)
        if self._votes[slot] == -1:
            self._votes[slot] = 1 if granted else 0

    def reset_votes(self) -> None:
        """Forget all votes (start of a new election)."""
        self._votes = [-1] * len(self._votes)

    def vote_result(self) -> int:
        """:func:`joint_vote_result` over the configured voters."""
        v = self._votes
        return joint_vote_result([v[s] for s in self._incoming], [v[s] for s in self._outgoing])

    def votes(self) -> tuple[int, int]:
        """``(granted, rejected)`` counted over the configured voters (union of both sets)."""
        voters = set(self._incoming) | set(self._outgoing)
        granted = sum(1 for s in voters if self._votes[s] == 1)
        rejected = sum(1 for s in voters if self._votes[s] == 0)
        return granted, rejected


# -- wire codec ---------------------------------------------------------------------------------
#
# The hot paths of raftlib.codec: encoding a Message as one frame, decoding message bodies,
# scanning streams of message frames and of group frames, and the group frame helpers.
# raftlib.codec documents the wire format and re-exports these (through raftlib._accel) under
# its public names; the constants below are copies of the codec's (a test checks they agree),
# because this module cannot import raftlib.codec, which imports it.

_MAGIC = b"RF"
_WIRE_VERSION = 1
_FLAG_GROUP = 0x02
_MAX_GROUP_ID_BYTES = 255
_GROUP_FRAME_OVERHEAD = 1 + _MAX_GROUP_ID_BYTES + 8

_HEADER = struct.Struct("<2sBBI")  # magic, version, frame flags, body length
_HEADER_SIZE = _HEADER.size
# type, msg flags, term, log_term, index, commit, reject_hint, offset,
# len(frm), len(to), len(data), len(context), number of entries
_FIXED = struct.Struct("<BBqqqqqqHHIII")
_ENTRY = struct.Struct("<qqBI")  # index, term, type, len(data)
_SNAP = struct.Struct("<qqIIII")  # index, term, |voters|, |outgoing|, |learners|, |promoting|
_U16 = struct.Struct("<H")

_F_REJECT = 0x01
_F_DONE = 0x02
_F_FORCE = 0x04
_F_SNAPSHOT = 0x08
_F_QUIET = 0x10
_F_ALL = _F_REJECT | _F_DONE | _F_FORCE | _F_SNAPSHOT | _F_QUIET

# What a malformed input may raise below besides CodecError; the public entry points turn
# these into CodecError (so that a decoder raises CodecError and nothing else).
_DECODE_ERRORS = (struct.error, ValueError, TypeError, UnicodeDecodeError, IndexError, OverflowError)

_entry_structs: dict[int, struct.Struct] = {}
_ENTRY_STRUCT_CACHE_MAX = 512


@functools.cache
def _wire_types() -> tuple[type[Message], dict[int, MessageType], type[SnapshotMeta], type[Membership]]:
    """The message classes, imported on first use (raftlib.core imports this module)."""
    from raftlib.core.membership import Membership
    from raftlib.core.messages import Message, MessageType, SnapshotMeta

    return Message, {int(t): t for t in MessageType}, SnapshotMeta, Membership


def _entries_struct(n: int) -> struct.Struct:
    """A Struct packing ``n`` entry headers in one call (cached for the usual batch sizes)."""
    s = _entry_structs.get(n)
    if s is None:
        s = struct.Struct("<" + "qqBI" * n)
        if len(_entry_structs) < _ENTRY_STRUCT_CACHE_MAX:
            _entry_structs[n] = s
    return s


def id_bytes(node_id: object, what: str) -> bytes:
    """A node id's UTF-8 bytes for the wire (at most 65,535); CodecError otherwise."""
    if type(node_id) is not str:
        raise CodecError(f"{what} must be a str node id, not {type(node_id).__name__}")
    b = node_id.encode("utf-8")
    if len(b) > 0xFFFF:
        raise CodecError(f"{what} is longer than 65535 bytes")
    return b


def _encode_ids(ids: frozenset[str], parts: list[bytes]) -> None:
    for node_id in sorted(ids):
        b = id_bytes(node_id, "membership node id")
        parts.append(_U16.pack(len(b)))
        parts.append(b)


def encode_message(msg: Message) -> bytes:
    """Encode ``msg`` as one complete frame (header + body).

    Raises :class:`CodecError` if the message cannot be represented (a
    negative or too large integer, a non-``str`` node id, non-bytes payloads,
    snapshot meta without a membership...).
    """
    try:
        frm = id_bytes(msg.frm, "frm")
        to = id_bytes(msg.to, "to")
        data = msg.data
        context = msg.context
        if not isinstance(data, bytes) or not isinstance(context, bytes):
            raise CodecError("data and context must be bytes")
        entries = msg.entries
        n = len(entries)
        flags = 0
        if msg.reject:
            flags |= _F_REJECT
        if msg.done:
            flags |= _F_DONE
        if msg.force:
            flags |= _F_FORCE
        if msg.quiet:
            flags |= _F_QUIET
        if min(msg.term, msg.log_term, msg.index, msg.commit, msg.reject_hint, msg.offset) < 0:
            raise CodecError("negative integer field")
        snap = msg.snapshot
        if snap is not None:
            flags |= _F_SNAPSHOT
            if snap.index < 0 or snap.term < 0:
                raise CodecError("negative snapshot index or term")
        parts: list[bytes] = [
            b"",  # frame header, filled in below
            _FIXED.pack(
                int(msg.type),
                flags,
                msg.term,
                msg.log_term,
                msg.index,
                msg.commit,
                msg.reject_hint,
                msg.offset,
                len(frm),
                len(to),
                len(data),
                len(context),
                n,
            ),
            frm,
            to,
            data,
            context,
        ]
        if snap is not None:
            mem = snap.membership
            if not isinstance(mem, _wire_types()[3]):
                raise CodecError("snapshot meta without a membership")
            parts.append(
                _SNAP.pack(
                    snap.index,
                    snap.term,
                    len(mem.voters),
                    len(mem.outgoing),
                    len(mem.learners),
                    len(mem.promoting),
                )
            )
            _encode_ids(mem.voters, parts)
            _encode_ids(mem.outgoing, parts)
            _encode_ids(mem.learners, parts)
            _encode_ids(mem.promoting, parts)
        if n:
            datas = [e.data for e in entries]
            flat: list[int] = [0] * (4 * n)
            flat[0::4] = [e.index for e in entries]
            flat[1::4] = [e.term for e in entries]
            flat[2::4] = [e.type for e in entries]
            flat[3::4] = map(len, datas)
            parts.append(_entries_struct(n).pack(*flat))
            parts.extend(datas)
        body_len = sum(map(len, parts))
        parts[0] = _HEADER.pack(_MAGIC, _WIRE_VERSION, 0, body_len)
        return b"".join(parts)
    except CodecError:
        raise
    except (struct.error, TypeError, ValueError, AttributeError, OverflowError) as exc:
        raise CodecError(f"cannot encode {_message_repr(msg)}: {exc}") from exc


def _message_repr(msg: object) -> str:
    """``repr(msg)`` for an error message, even when the message is too broken to print itself."""
    try:
        return repr(msg)
    except Exception:  # e.g. Message.__repr__ of a message whose type is a plain int
        return object.__repr__(msg)


def _decode_ids(mv: memoryview, pos: int, count: int, end: int) -> tuple[frozenset[str], int]:
    ids: list[str] = []
    for _ in range(count):
        if pos + 2 > end:
            raise CodecError("truncated membership")
        (ln,) = _U16.unpack_from(mv, pos)
        pos += 2
        if pos + ln > end:
            raise CodecError("truncated membership node id")
        ids.append(str(mv[pos : pos + ln], "utf-8"))
        pos += ln
    s = frozenset(ids)
    if len(s) != count:
        raise CodecError("duplicate node id in membership")
    return s, pos


def _decode(mv: memoryview) -> Message:
    """Decode the message body ``mv`` (a flat byte buffer, exactly one body)."""
    end = len(mv)
    if end < _FIXED.size:
        raise CodecError(f"message body too short ({end} bytes)")
    (
        mtype,
        flags,
        term,
        log_term,
        index,
        commit,
        reject_hint,
        offset,
        frm_len,
        to_len,
        data_len,
        ctx_len,
        n,
    ) = _FIXED.unpack_from(mv, 0)
    message, types, snapshot_meta, membership = _wire_types()
    typ = types.get(mtype)
    if typ is None:
        raise CodecError(f"unknown message type {mtype}")
    if flags & ~_F_ALL:
        raise CodecError(f"unknown message flags 0x{flags:02x}")
    if min(term, log_term, index, commit, reject_hint, offset) < 0:
        raise CodecError("negative integer field")
    pos = _FIXED.size
    if pos + frm_len + to_len + data_len + ctx_len + n * _ENTRY.size > end:
        raise CodecError("message body truncated")
    frm = str(mv[pos : pos + frm_len], "utf-8")
    pos += frm_len
    to = str(mv[pos : pos + to_len], "utf-8")
    pos += to_len
    data = mv[pos : pos + data_len].tobytes()
    pos += data_len
    context = mv[pos : pos + ctx_len].tobytes()
    pos += ctx_len
    snapshot = None
    if flags & _F_SNAPSHOT:
        if pos + _SNAP.size > end:
            raise CodecError("truncated snapshot meta")
        s_index, s_term, nv, no, nl, np_ = _SNAP.unpack_from(mv, pos)
        if s_index < 0 or s_term < 0:
            raise CodecError("negative snapshot index or term")
        pos += _SNAP.size
        if pos + 2 * (nv + no + nl + np_) > end:
            raise CodecError("truncated membership")
        voters, pos = _decode_ids(mv, pos, nv, end)
        outgoing, pos = _decode_ids(mv, pos, no, end)
        learners, pos = _decode_ids(mv, pos, nl, end)
        promoting, pos = _decode_ids(mv, pos, np_, end)
        snapshot = snapshot_meta(s_index, s_term, membership(voters, outgoing, learners, promoting))
    entries: list[Entry] = []
    if n:
        hdr_end = pos + n * _ENTRY.size
        if hdr_end > end:
            raise CodecError("truncated entry headers")
        v = _entries_struct(n).unpack_from(mv, pos)
        ends = list(accumulate(v[3::4], initial=hdr_end))
        if ends[-1] != end:
            raise CodecError("entry payload lengths do not match the body size")
        datas = [mv[a:b].tobytes() for a, b in pairwise(ends)]
        entries = list(map(Entry, v[0::4], v[1::4], datas, v[2::4]))
    elif pos != end:
        raise CodecError(f"{end - pos} unexpected trailing bytes in message body")
    return message(
        typ,
        frm,
        to,
        term,
        log_term,
        index,
        entries,
        commit,
        bool(flags & _F_REJECT),
        reject_hint,
        snapshot,
        offset,
        data,
        bool(flags & _F_DONE),
        context,
        bool(flags & _F_FORCE),
        bool(flags & _F_QUIET),
    )


def _flat(mv: memoryview, what: str) -> memoryview:
    """``mv`` itself if it is a flat, contiguous byte buffer; :class:`CodecError` otherwise."""
    if mv.format != "B" or mv.ndim != 1 or not mv.c_contiguous:
        raise CodecError(f"{what} must be a flat byte buffer")
    return mv


def decode_message(frame_body: bytes | bytearray | memoryview) -> Message:
    """Decode one message body (the bytes after the frame header).

    Raises :class:`CodecError`, and nothing else, for any malformed input.
    """
    try:
        with memoryview(frame_body) as mv:
            return _decode(_flat(mv, "message body"))
    except CodecError:
        raise
    except _DECODE_ERRORS as exc:
        raise CodecError(f"malformed message body: {exc}") from exc


def _check_header(magic: bytes, version: int, flags: int, length: int, max_frame_bytes: int) -> NoReturn:
    """Refuse a message frame's header (one that is not a message's within bounds), naming why."""
    if magic != _MAGIC:
        raise CodecError(f"bad magic {bytes(magic)!r}")
    if version != _WIRE_VERSION:
        raise CodecError(f"unknown wire version {version}")
    if flags & ~0x01:
        raise CodecError(f"unknown frame flags 0x{flags:02x}")
    if length > max_frame_bytes:
        raise CodecError(f"frame of {length} bytes exceeds the limit of {max_frame_bytes}")
    raise CodecError("unexpected handshake frame in a message stream")


def scan_frames(data: bytes | bytearray | memoryview, max_frame_bytes: int) -> tuple[list[Message], int]:
    """Decode the complete message frames at the start of ``data``: ``(messages, bytes used)``.

    The stream scan of :class:`raftlib.codec.FrameDecoder`: stops at the first
    incomplete frame; a bad header (checked as soon as its 8 bytes are there,
    so an oversized frame is refused before its body arrives), a handshake frame
    or a malformed body raises :class:`CodecError` with ``messages`` set to the
    messages decoded before it.
    """
    out: list[Message] = []
    pos = 0
    try:
        with memoryview(data) as mv:
            total = len(mv)
            unpack = _HEADER.unpack_from
            while total - pos >= _HEADER_SIZE:
                magic, version, flags, length = unpack(mv, pos)
                if magic != _MAGIC or version != _WIRE_VERSION or flags or length > max_frame_bytes:
                    _check_header(magic, version, flags, length, max_frame_bytes)
                start = pos + _HEADER_SIZE
                if total - start < length:
                    break
                out.append(decode_message(mv[start : start + length]))
                pos = start + length
    except CodecError as exc:
        exc.messages = tuple(out)
        raise
    return out, pos


def group_tag(group_id: str) -> bytes:
    """The wire form of a group id in a group frame: u8 length + UTF-8 (``""`` is ``b"\\x00"``).

    Raises :class:`CodecError` for a non-``str`` id, one that cannot be encoded in
    UTF-8 (lone surrogates) or one longer than 255 bytes (``MAX_GROUP_ID_BYTES``).
    Transports compute it once per group and reuse it for every frame.
    """
    if type(group_id) is not str:
        raise CodecError(f"group id must be a str, not {type(group_id).__name__}")
    try:
        b = group_id.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise CodecError(f"group id {group_id!r} is not valid UTF-8: {exc}") from None
    if len(b) > _MAX_GROUP_ID_BYTES:
        raise CodecError(f"group id is {len(b)} bytes; at most {_MAX_GROUP_ID_BYTES} are allowed")
    return bytes((len(b),)) + b


def encode_group_frame(tag: bytes, frames: Sequence[bytes]) -> bytes:
    """One group frame: header (flag ``FLAG_GROUP``), ``tag`` (from :func:`group_tag`),
    then ``frames`` (message frames from ``encode``, at least one) back to back.

    The caller keeps the body within the receiver's bound (``max_frame_bytes`` +
    ``GROUP_FRAME_OVERHEAD``); nothing is re-encoded here, only joined.
    """
    if len(frames) == 1:
        f = frames[0]
        return b"".join((_HEADER.pack(_MAGIC, _WIRE_VERSION, _FLAG_GROUP, len(tag) + len(f)), tag, f))
    if not frames:
        raise CodecError("a group frame carries at least one message")
    body_len = len(tag) + sum(map(len, frames))
    return b"".join([_HEADER.pack(_MAGIC, _WIRE_VERSION, _FLAG_GROUP, body_len), tag, *frames])


def _decode_group_body(mv: memoryview, pos: int, end: int, max_frame_bytes: int) -> tuple[str, list[Message]]:
    """Decode the group frame body ``mv[pos:end]``: the group id, then message frames up to its exact end."""
    if pos >= end:
        raise CodecError("empty group frame body")
    gend = pos + 1 + mv[pos]
    if gend > end:
        raise CodecError("truncated group id")
    group = str(mv[pos + 1 : gend], "utf-8")
    if gend == end:
        raise CodecError(f"group frame for {group!r} carries no message")
    pos = gend
    out: list[Message] = []
    unpack = _HEADER.unpack_from
    while pos < end:
        if end - pos < _HEADER_SIZE:
            raise CodecError("truncated message header in a group frame")
        magic, version, flags, length = unpack(mv, pos)
        if magic != _MAGIC or version != _WIRE_VERSION or flags:
            raise CodecError(
                f"bad message header in a group frame (magic {bytes(magic)!r}, version {version}, "
                f"flags 0x{flags:02x})"
            )
        if length > max_frame_bytes:
            raise CodecError(
                f"message of {length} bytes in a group frame exceeds the limit {max_frame_bytes}"
            )
        start = pos + _HEADER_SIZE
        pos = start + length
        if pos > end:
            raise CodecError("message runs past the end of its group frame")
        out.append(_decode(mv[start:pos]))
    return group, out


def _parse_group_header(mv: memoryview, pos: int, max_frame_bytes: int) -> int:
    """Check the header at ``pos`` is a group frame's within bounds; return its body length."""
    if len(mv) - pos < _HEADER_SIZE:
        raise CodecError("truncated frame header")
    magic, version, flags, length = _HEADER.unpack_from(mv, pos)
    if magic != _MAGIC:
        raise CodecError(f"bad magic {bytes(magic)!r}")
    if version != _WIRE_VERSION:
        raise CodecError(f"unknown wire version {version}")
    if flags != _FLAG_GROUP:
        raise CodecError(f"frame flags 0x{flags:02x} where a group frame was expected")
    if length > max_frame_bytes + _GROUP_FRAME_OVERHEAD:
        raise CodecError(
            f"group frame of {length} bytes exceeds the limit of {max_frame_bytes + _GROUP_FRAME_OVERHEAD}"
        )
    return int(length)


def decode_group_frame(
    frame: bytes | bytearray | memoryview, max_frame_bytes: int
) -> tuple[str, list[Message]]:
    """Decode one complete group frame (header + body, nothing more) into ``(group id, messages)``.

    Raises :class:`CodecError`, and nothing else, for any malformed input.
    """
    try:
        with memoryview(frame) as mv:
            _flat(mv, "a frame")
            length = _parse_group_header(mv, 0, max_frame_bytes)
            if len(mv) != _HEADER_SIZE + length:
                expected = _HEADER_SIZE + length
                raise CodecError(f"frame length {len(mv)} does not match its header ({expected})")
            return _decode_group_body(mv, _HEADER_SIZE, len(mv), max_frame_bytes)
    except CodecError:
        raise
    except _DECODE_ERRORS as exc:
        raise CodecError(f"malformed group frame: {exc}") from exc


def scan_group_frames(
    data: bytes | bytearray | memoryview, max_frame_bytes: int
) -> tuple[list[tuple[str, list[Message]]], int]:
    """Decode the complete group frames at the start of ``data``: ``(groups, bytes used)``.

    The stream scan of :class:`raftlib.codec.GroupFrameDecoder`: stops at the
    first incomplete frame; a bad header (checked as soon as it is there) or a
    malformed body raises :class:`CodecError` with ``groups`` set to the
    ``(group id, messages)`` pairs decoded before it.
    """
    out: list[tuple[str, list[Message]]] = []
    pos = 0
    try:
        try:
            with memoryview(data) as mv:
                total = len(mv)
                unpack = _HEADER.unpack_from
                limit = max_frame_bytes + _GROUP_FRAME_OVERHEAD
                while total - pos >= _HEADER_SIZE:
                    magic, version, flags, length = unpack(mv, pos)
                    if magic != _MAGIC or version != _WIRE_VERSION or flags != _FLAG_GROUP or length > limit:
                        _parse_group_header(mv, pos, max_frame_bytes)  # raises, naming what is wrong
                    start = pos + _HEADER_SIZE
                    end = start + length
                    if end > total:
                        break
                    out.append(_decode_group_body(mv, start, end, max_frame_bytes))
                    pos = end
        except CodecError:
            raise
        except _DECODE_ERRORS as exc:
            raise CodecError(f"malformed group frame: {exc}") from exc
    except CodecError as exc:
        exc.groups = tuple(out)
        raise
    return out, pos
