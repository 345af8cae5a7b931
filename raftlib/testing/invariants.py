"""Raft's safety properties, checked while a simulation runs.

:class:`InvariantChecker` watches every Ready, every completed write, every
applied entry, and every node touched by an event. Most checks are
incremental (constant work per event); a full sweep of every log runs every
``full_check_every`` events and at :meth:`SimCluster.check_invariants`.

The rules (Raft paper §5, Figure 3, and the durability rules of the design):

``election-safety``
    At most one leader per term, over the whole history (§5.2).
``single-vote``
    A node's durable vote never changes within a term (§5.2).
``log-matching``
    Two entries with the same index and term hold the same data and are
    preceded by the same entries (§5.3). Checked incrementally: every
    ``(index, term)`` that ever appears in a log is recorded with its data and
    the term of the entry before it; by induction this is the whole property.
``leader-completeness``
    A node that becomes leader holds every entry committed so far (§5.4).
``committed-agreement``
    Every node's committed prefix agrees with the cluster's committed log.
``commit-durability``
    When an index first becomes committed, a majority of the voters of the
    configuration in force on the committing node hold that entry in durable
    storage (ack only after fsync, §3 of the design); in a joint configuration
    a majority of both ``voters`` and ``outgoing``. Learners never count.
    A configuration is in force on a node once the node has applied its entry
    (as in etcd's raft); the checker rebuilds the configuration history from
    the committed log itself, independently of the cores.
``election-quorum``
    A node that becomes leader of a term holds durable votes for that term
    from a majority of the voters of the configuration in force on it (of both
    sets when joint): learners' and strangers' votes never elect anyone.
``learner-never-campaigns``
    A node that is not a voter of the configuration in force on it (a learner,
    a node that joined and has no configuration yet, a removed node) never
    becomes pre-candidate, candidate or leader.
``state-machine-safety``
    No two nodes apply different entries at the same index; entries are
    applied in order, and only once committed (§5.4.3).
``commit-monotonic``
    A node's commit index never decreases while it runs, and its durable
    commit index never decreases across restarts; the durable term neither.
``applied-le-commit``
    A node never reports an applied index beyond its commit index, nor a
    commit index beyond its last log index.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from raftlib._accel import ENTRY_CONF_CHANGE
from raftlib.core.confchange import ConfChange, apply_change
from raftlib.core.membership import Membership
from raftlib.errors import ConfChangeError

__all__ = ["InvariantChecker", "InvariantViolation", "SimulationError", "SimTimeout"]


class SimulationError(AssertionError):
    """A simulated run failed; the message says how to replay it.

    ``seed`` is the cluster's seed, ``replay`` a constructor call that
    reproduces the run, ``trace`` the last events before the failure.
    """

    def __init__(
        self, detail: str, *, seed: int | None = None, replay: str = "", trace: Sequence[str] = ()
    ) -> None:
        self.detail = detail
        self.seed = seed
        self.replay = replay
        self.trace = list(trace)
        super().__init__(detail)

    def __str__(self) -> str:
        out = [self.detail]
        if self.seed is not None:
            out.append(f"seed: {self.seed}")
        if self.replay:
            out.append(f"replay: {self.replay}")
        if self.trace:
            out.append(f"last {len(self.trace)} events:")
            out.extend("  " + line for line in self.trace)
        return "\n".join(out)


class SimTimeout(SimulationError):
    """``run_until`` ran out of virtual time (or of events) before its condition held."""


class InvariantViolation(SimulationError):
    """A Raft safety rule was broken. ``rule`` names it; ``nodes`` and ``indexes`` locate it."""

    def __init__(
        self, rule: str, detail: str, *, nodes: Iterable[str] = (), indexes: Iterable[int] = ()
    ) -> None:
        self.rule = rule
        self.nodes = list(nodes)
        self.indexes = list(indexes)
        where = []
        if self.nodes:
            where.append("nodes " + ", ".join(self.nodes))
        if self.indexes:
            where.append("index " + ", ".join(str(i) for i in self.indexes))
        super().__init__(
            f"invariant {rule!r} violated" + (f" ({'; '.join(where)})" if where else "") + f": {detail}"
        )


def _entries_of(raw: Any) -> list[Any]:
    """The whole in-memory log of a core, as a list of entries."""
    first, last = raw.first_index(), raw.last_index()
    if last < first:
        return []
    return list(raw.entries(first, last + 1))


class InvariantChecker:
    """Incremental checks of Raft's safety rules across a whole simulated history.

    The simulator calls the ``on_*`` hooks; the checker only reads the cores
    through their public introspection (``role``, ``term``, ``commit_index``,
    ``entries`` ...), never changes them.
    """

    def __init__(
        self, voters: Sequence[str], *, full_check_every: int = 500, check_votes: bool = False
    ) -> None:
        self.voters = list(voters)
        """The initial voters (the configuration before any change is committed)."""
        self.quorum = len(self.voters) // 2 + 1
        self.full_check_every = full_check_every
        self.check_votes = check_votes
        """Check ``election-quorum`` (needs every durable vote to pass through :meth:`on_persist`)."""
        self.configs: list[tuple[int, Membership]] = [(0, Membership(frozenset(self.voters)))]
        """The cluster's configuration history: ``(index of its entry, configuration)``, from the
        committed log (index 0: the initial voters)."""
        self._applied_seen: dict[str, int] = {}
        """node -> its applied index when the checker last looked at it (end of the last event)."""
        self.votes: dict[int, dict[str, Any]] = {}
        """term -> {node: the node it durably voted for in that term}."""
        self.leaders: dict[int, str] = {}
        """term -> the node that led it."""
        self.committed: list[tuple[int, bytes]] = [(0, b"")]
        """The cluster's committed log: ``committed[i] = (term, data)``; index 0 is a sentinel."""
        self.seen: dict[tuple[int, int], tuple[bytes, int]] = {}
        """``(index, term) -> (data, term of index-1)`` for every entry ever in any log."""
        self.applied: dict[int, tuple[int, bytes]] = {}
        """index -> (term, data) applied by the first node that applied it."""
        self._role: dict[str, Any] = {}
        self._commit: dict[str, int] = {}
        self._next_apply: dict[str, int] = {}
        self._durable_commit: dict[str, int] = {}
        self._durable_term: dict[str, int] = {}
        self._durable_vote: dict[str, tuple[int, Any]] = {}
        self._events = 0
        self.storages: dict[str, Any] = {}
        """id -> durable storage (objects with ``hard_state`` and ``entries``), set by the simulator."""
        self.cores: dict[str, Any] = {}
        """id -> running core, or absent while the node is down; set by the simulator."""

    # ------------------------------------------------------------ lifecycle
    def on_start(self, node_id: str, raw: Any) -> None:
        """A node (re)started: per-lifetime tracking begins again."""
        self.cores[node_id] = raw
        self._role[node_id] = None
        self._commit[node_id] = raw.commit_index
        self._next_apply[node_id] = raw.applied_index + 1
        self._applied_seen[node_id] = raw.applied_index

    def on_crash(self, node_id: str) -> None:
        self.cores.pop(node_id, None)
        self._role.pop(node_id, None)

    # --------------------------------------------------------------- hooks
    def on_ready(self, node_id: str, raw: Any, rd: Any) -> None:
        """A Ready was handed out: record and check every entry it makes appear in a log."""
        if rd.entries:
            first = rd.entries[0].index
            prev_term = self._term_at(raw, first - 1, node_id)
            expect = first
            for e in rd.entries:
                if e.index != expect:
                    raise InvariantViolation(
                        "log-matching",
                        f"Ready entries are not contiguous: expected index {expect}, got {e.index}",
                        nodes=[node_id],
                        indexes=[e.index],
                    )
                self._record(node_id, e.index, e.term, bytes(e.data), prev_term)
                prev_term = e.term
                expect += 1
        hs = rd.hard_state
        if hs is not None:
            stored = self.storages[node_id].hard_state if node_id in self.storages else None
            if stored is not None:
                if hs.term < stored.term:
                    raise InvariantViolation(
                        "commit-monotonic",
                        f"hard state term goes back from {stored.term} to {hs.term}",
                        nodes=[node_id],
                    )
                if hs.term == stored.term and stored.vote is not None and hs.vote != stored.vote:
                    raise InvariantViolation(
                        "single-vote",
                        f"vote in term {hs.term} changes from {stored.vote!r} to {hs.vote!r}",
                        nodes=[node_id],
                    )

    def on_persist(self, node_id: str, storage: Any) -> None:
        """A write became durable."""
        hs = storage.hard_state
        prev_commit = self._durable_commit.get(node_id, 0)
        if hs.commit < prev_commit:
            raise InvariantViolation(
                "commit-monotonic",
                f"durable commit index goes back from {prev_commit} to {hs.commit}",
                nodes=[node_id],
                indexes=[hs.commit],
            )
        prev_term = self._durable_term.get(node_id, 0)
        if hs.term < prev_term:
            raise InvariantViolation(
                "commit-monotonic", f"durable term goes back from {prev_term} to {hs.term}", nodes=[node_id]
            )
        prev_vote = self._durable_vote.get(node_id)
        if (
            prev_vote is not None
            and prev_vote[0] == hs.term
            and prev_vote[1] is not None
            and hs.vote != prev_vote[1]
        ):
            raise InvariantViolation(
                "single-vote",
                f"durable vote in term {hs.term} changes from {prev_vote[1]!r} to {hs.vote!r}",
                nodes=[node_id],
            )
        if hs.commit > storage.last_index():
            raise InvariantViolation(
                "applied-le-commit",
                f"durable commit {hs.commit} beyond the durable log's last index {storage.last_index()}",
                nodes=[node_id],
                indexes=[hs.commit],
            )
        self._durable_commit[node_id] = hs.commit
        self._durable_term[node_id] = hs.term
        self._durable_vote[node_id] = (hs.term, hs.vote)
        if hs.vote is not None:
            self.votes.setdefault(hs.term, {})[node_id] = hs.vote

    def on_apply(self, node_id: str, raw: Any, entry: Any) -> None:
        """A committed entry is about to be applied to ``node_id``'s state machine."""
        idx, term, data = entry.index, entry.term, bytes(entry.data)
        expect = self._next_apply.get(node_id, 1)
        if idx != expect:
            raise InvariantViolation(
                "state-machine-safety",
                f"applies index {idx}, expected {expect} (out of order or twice)",
                nodes=[node_id],
                indexes=[idx],
            )
        self._next_apply[node_id] = idx + 1
        if idx > raw.commit_index:
            raise InvariantViolation(
                "state-machine-safety",
                f"applies index {idx} beyond its commit index {raw.commit_index}",
                nodes=[node_id],
                indexes=[idx],
            )
        first = self.applied.get(idx)
        if first is None:
            self.applied[idx] = (term, data)
        elif first != (term, data):
            raise InvariantViolation(
                "state-machine-safety",
                f"applies (term {term}, {data!r}) at {idx} where another node applied "
                f"(term {first[0]}, {first[1]!r})",
                nodes=[node_id],
                indexes=[idx],
            )
        if idx < len(self.committed) and self.committed[idx] != (term, data):
            c = self.committed[idx]
            raise InvariantViolation(
                "state-machine-safety",
                f"applies (term {term}, {data!r}) at {idx}, but the committed entry is "
                f"(term {c[0]}, {c[1]!r})",
                nodes=[node_id],
                indexes=[idx],
            )

    def on_install(self, node_id: str, meta: Any) -> None:
        """A node installed a snapshot from the leader: it now reflects everything up to its index."""
        idx, term = meta.index, meta.term
        if idx >= len(self.committed):
            raise InvariantViolation(
                "state-machine-safety",
                f"installs a snapshot at index {idx}, beyond the cluster's committed index "
                f"{len(self.committed) - 1}",
                nodes=[node_id],
                indexes=[idx],
            )
        if self.committed[idx][0] != term:
            raise InvariantViolation(
                "state-machine-safety",
                f"installs a snapshot at index {idx} term {term}; the committed entry there has term "
                f"{self.committed[idx][0]}",
                nodes=[node_id],
                indexes=[idx],
            )
        self._next_apply[node_id] = max(self._next_apply.get(node_id, 1), idx + 1)

    def observe(self, node_id: str) -> None:
        """Check one running node now (the simulator calls this before compacting its log)."""
        raw = self.cores.get(node_id)
        if raw is not None:
            self._check_node(node_id, raw)

    def after_event(self, node_ids: Iterable[str]) -> None:
        """Check the nodes an event touched (stepped, ticked, persisted)."""
        for node_id in node_ids:
            raw = self.cores.get(node_id)
            if raw is not None:
                self._check_node(node_id, raw)
        self._events += 1
        if self.full_check_every and self._events % self.full_check_every == 0:
            self.check_all()

    # -------------------------------------------------------------- checks
    def _term_at(self, raw: Any, index: int, node_id: str) -> int:
        if index <= 0:
            return 0
        try:
            return int(raw.term_at(index))
        except Exception as e:
            raise InvariantViolation(
                "log-matching",
                f"cannot read the term of index {index}: {e!r}",
                nodes=[node_id],
                indexes=[index],
            ) from e

    def _record(self, node_id: str, index: int, term: int, data: bytes, prev_term: int) -> None:
        key = (index, term)
        known = self.seen.get(key)
        if known is None:
            self.seen[key] = (data, prev_term)
            return
        if known[0] != data:
            raise InvariantViolation(
                "log-matching",
                f"entry (index {index}, term {term}) holds {data!r} here, {known[0]!r} elsewhere",
                nodes=[node_id],
                indexes=[index],
            )
        if known[1] != prev_term:
            raise InvariantViolation(
                "log-matching",
                f"entry (index {index}, term {term}) is preceded by term {prev_term} here, "
                f"by term {known[1]} elsewhere",
                nodes=[node_id],
                indexes=[index - 1, index],
            )

    def _check_node(self, node_id: str, raw: Any) -> None:
        role = raw.role
        term = raw.term
        if role is not self._role.get(node_id):
            if role.name in ("PRE_CANDIDATE", "CANDIDATE", "LEADER"):
                conf = self.config_for(node_id)
                if not conf.is_voter(node_id):
                    raise InvariantViolation(
                        "learner-never-campaigns",
                        f"becomes {role.name.lower()} in term {term} but is not a voter of the "
                        f"configuration in force on it ({conf.describe()})",
                        nodes=[node_id],
                    )
            if role.name == "LEADER":
                holder = self.leaders.get(term)
                if holder is None:
                    self.leaders[term] = node_id
                    self._check_leader_completeness(node_id, raw)
                    if self.check_votes:
                        self._check_election_quorum(node_id, term)
                elif holder != node_id:
                    raise InvariantViolation(
                        "election-safety",
                        f"{holder} and {node_id} are both leaders of term {term}",
                        nodes=[holder, node_id],
                    )
            self._role[node_id] = role
        commit = raw.commit_index
        prev = self._commit.get(node_id, 0)
        if commit != prev:
            if commit < prev:
                raise InvariantViolation(
                    "commit-monotonic",
                    f"commit index goes back from {prev} to {commit}",
                    nodes=[node_id],
                    indexes=[prev, commit],
                )
            last = raw.last_index()
            if commit > last:
                raise InvariantViolation(
                    "applied-le-commit",
                    f"commit index {commit} beyond last log index {last}",
                    nodes=[node_id],
                    indexes=[commit],
                )
            self._commit[node_id] = commit
            self._observe_commit(node_id, raw, commit)
        self._applied_seen[node_id] = self.applied_of(node_id)
        applied = raw.applied_index
        if applied > commit:
            raise InvariantViolation(
                "applied-le-commit",
                f"applied index {applied} beyond commit index {commit}",
                nodes=[node_id],
                indexes=[applied, commit],
            )

    def _observe_commit(self, node_id: str, raw: Any, commit: int) -> None:
        known = len(self.committed) - 1
        if commit <= known:
            want = self.committed[commit][0]
            got = self._term_at(raw, commit, node_id)
            if got != want:
                raise InvariantViolation(
                    "committed-agreement",
                    f"commits index {commit} with term {got}; the cluster committed term {want} there",
                    nodes=[node_id],
                    indexes=[commit],
                )
            return
        # This node is the first to commit (known, commit]: extend the cluster's committed log.
        first = raw.first_index()
        if known + 1 < first:
            raise InvariantViolation(
                "committed-agreement",
                f"commits up to {commit} but its log starts at {first}, above the cluster's "
                f"committed index {known}: it holds a snapshot of entries never committed",
                nodes=[node_id],
                indexes=[known, commit],
            )
        got_prefix = self._term_at(raw, known, node_id)
        if got_prefix != self.committed[known][0]:
            raise InvariantViolation(
                "committed-agreement",
                f"has term {got_prefix} at committed index {known}, the cluster committed term "
                f"{self.committed[known][0]}",
                nodes=[node_id],
                indexes=[known],
            )
        for e in raw.entries(known + 1, commit + 1):
            self.committed.append((e.term, bytes(e.data)))
            self._check_durable_quorum(node_id, e.index, e.term)
            if e.type == ENTRY_CONF_CHANGE:
                self._record_config(e.index, bytes(e.data))

    # --------------------------------------------------------- configurations
    def applied_of(self, node_id: str) -> int:
        """The index ``node_id``'s state machine reflects, as the checker saw it applied."""
        return self._next_apply.get(node_id, 1) - 1

    def config_at(self, index: int) -> Membership:
        """The configuration in force once the committed log is applied up to ``index``."""
        found = self.configs[0][1]
        for at, conf in self.configs:
            if at > index:
                break
            found = conf
        return found

    def config_for(self, node_id: str) -> Membership:
        """The configuration in force on ``node_id`` (by the index it has applied)."""
        return self.config_at(self.applied_of(node_id))

    @property
    def current_config(self) -> Membership:
        """The configuration of the latest committed configuration entry."""
        return self.configs[-1][1]

    def _record_config(self, index: int, data: bytes) -> None:
        try:
            conf = apply_change(self.configs[-1][1], ConfChange.decode(data))
        except ConfChangeError:
            return  # applied as a no-op by every node alike
        self.configs.append((index, conf))

    def _holders(self, index: int, term: int) -> list[str]:
        out = []
        for vid, st in self.storages.items():
            if st.term_at(index) == term or (st.snapshot is not None and st.snapshot.index >= index):
                out.append(vid)
        return out

    def _check_durable_quorum(self, node_id: str, index: int, term: int) -> None:
        # The node may have applied configuration entries within the event that committed
        # `index` (before or after counting): any configuration in force on it during the
        # event will do, the one in force when the event began first.
        lo = self._applied_seen.get(node_id, self.applied_of(node_id))
        hi = self.applied_of(node_id)
        confs = [self.config_at(lo)] + [c for at, c in self.configs if lo < at <= hi]
        held = set(self._holders(index, term))
        for conf in confs:
            if all(len(held & v) > len(v) // 2 for v in (conf.voters, conf.outgoing) if v):
                return
        conf = confs[-1]
        for voters in (conf.voters, conf.outgoing):
            if not voters:
                continue
            have = sorted(held & voters)
            need = len(voters) // 2 + 1
            if len(have) < need:
                raise InvariantViolation(
                    "commit-durability",
                    f"{node_id} commits index {index} (term {term}) but only {have or 'no voter'} of "
                    f"{sorted(voters)} hold it durably; a quorum is {need} ({conf.describe()})",
                    nodes=[node_id, *(h for h in have if h != node_id)],
                    indexes=[index],
                )

    def _check_election_quorum(self, node_id: str, term: int) -> None:
        conf = self.config_for(node_id)
        granted = {v for v, to in self.votes.get(term, {}).items() if to == node_id}
        for voters in (conf.voters, conf.outgoing):
            if not voters:
                continue
            have = sorted(granted & voters)
            need = len(voters) // 2 + 1
            if len(have) < need:
                raise InvariantViolation(
                    "election-quorum",
                    f"becomes leader of term {term} with durable votes from {have or 'no voter'} of "
                    f"{sorted(voters)} (all votes for it: {sorted(granted)}); a quorum is {need} "
                    f"({conf.describe()})",
                    nodes=[node_id],
                )

    def _check_leader_completeness(self, node_id: str, raw: Any) -> None:
        last = raw.last_index()
        # Entries below the log's first index are covered by the leader's own snapshot,
        # which only ever holds committed entries (checked when it is installed).
        for idx in range(max(1, raw.first_index()), len(self.committed)):
            term = self.committed[idx][0]
            got = self._term_at(raw, idx, node_id) if idx <= last else None
            if got != term:
                raise InvariantViolation(
                    "leader-completeness",
                    f"becomes leader of term {raw.term} without committed index {idx} (term {term}); "
                    f"its log has {'nothing' if got is None else f'term {got}'} there",
                    nodes=[node_id],
                    indexes=[idx],
                )

    def check_all(self) -> None:
        """Full sweep: every running log and every durable log against everything recorded."""
        for node_id, raw in list(self.cores.items()):
            self._check_node(node_id, raw)
            log = [(e.index, e.term, bytes(e.data)) for e in _entries_of(raw)]
            before = None
            if log:
                try:
                    before = 0 if log[0][0] == 1 else int(raw.term_at(log[0][0] - 1))
                except Exception:  # compacted: unknown
                    before = None
            self._check_log(node_id, log, "in memory", before)
        for node_id, st in self.storages.items():
            log = [(e.index, e.term, bytes(e.data)) for e in st.entries]
            self._check_log(node_id, log, "durable", st.term_at(st.first - 1))

    def _check_log(
        self, node_id: str, log: list[tuple[int, int, bytes]], where: str, prev_term: int | None
    ) -> None:
        """``prev_term``: the term just before the log's first entry, when known."""
        prev_index = None
        for idx, term, data in log:
            if prev_index is not None and idx != prev_index + 1:
                raise InvariantViolation(
                    "log-matching",
                    f"{where} log jumps from index {prev_index} to {idx}",
                    nodes=[node_id],
                    indexes=[idx],
                )
            known: tuple[bytes, int | None] | None = self.seen.get((idx, term))
            if known is None and where == "in memory":
                # Not handed out yet: a proposal or an append waiting for the next Ready.
                if prev_term is not None:
                    self._record(node_id, idx, term, data, prev_term)
                    known = self.seen[(idx, term)]
                else:
                    known = (data, None)
            if known is None:
                raise InvariantViolation(
                    "log-matching",
                    f"{where} log holds (index {idx}, term {term}) that no Ready ever handed out",
                    nodes=[node_id],
                    indexes=[idx],
                )
            if known[0] != data or (None not in (prev_term, known[1]) and known[1] != prev_term):
                raise InvariantViolation(
                    "log-matching",
                    f"{where} log entry (index {idx}, term {term}) differs from the same entry elsewhere",
                    nodes=[node_id],
                    indexes=[idx],
                )
            prev_term, prev_index = term, idx
