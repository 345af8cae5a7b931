"""Tunables of the Raft core, validated once at construction."""

from __future__ import annotations

from dataclasses import dataclass, field

from raftlib.errors import ConfigError


@dataclass(slots=True)
class Config:
    """Configuration of one Raft core.

    Time is counted in ticks: the driver calls ``tick()`` at a fixed interval
    (``RaftNode`` uses 100 ms by default), so ``election_tick=10`` means an
    election timeout of 10 to 20 ticks (randomised per term, §5.2).

    >>> cfg = Config("n1", voters=["n1", "n2", "n3"])
    >>> cfg.election_tick, cfg.pre_vote, cfg.check_quorum
    (10, True, True)
    """

    id: str
    voters: list[str] = field(default_factory=list)
    """The initial voters, used when the node starts with no persisted configuration."""
    join: bool = False
    """The node joins an existing cluster: it starts with no configuration and
    learns it from the leader (log or snapshot). It never campaigns before."""
    election_tick: int = 10
    """Base election timeout in ticks; the actual timeout is drawn from [election_tick, 2*election_tick)."""
    heartbeat_tick: int = 1
    """A leader sends heartbeats every ``heartbeat_tick`` ticks; must be < election_tick."""
    max_msg_bytes: int = 1 << 20
    """Byte budget of the entries in one AppendEntries (at least one entry is always sent)."""
    max_msg_entries: int = 4096
    """Entry-count bound of one AppendEntries."""
    max_inflight: int = 256
    """Pipelining window: AppendEntries in flight to one follower without an ack."""
    max_uncommitted_bytes: int = 64 << 20
    """Back-pressure bound on the leader's uncommitted entry bytes; 0 means unlimited."""
    max_apply_bytes: int = 64 << 20
    """Byte budget of the committed entries handed out by one Ready."""
    pre_vote: bool = True
    """Thesis §9.6: ask whether an election could be won before raising the term."""
    check_quorum: bool = True
    """A leader steps down when it has not heard from a quorum within an election timeout."""
    skip_redundant_heartbeats: bool = True
    """A leader leaves out the periodic heartbeat to a follower in steady replication that it
    sent an AppendEntries since the last heartbeat, carrying at least the commit index the
    heartbeat would (§5.2: any AppendEntries maintains its authority). Heartbeats of read
    rounds, and every heartbeat in lease mode, still go out. Off: etcd's behaviour."""
    read_only: str = "safe"
    """How ``read_index`` confirms leadership: "safe" (a heartbeat round with a quorum,
    thesis §6.4) or "lease" (no round trip while the leader's lease holds; needs
    ``check_quorum`` and clocks whose drift is small against the election timeout)."""
    forward_proposals: bool = False
    """Followers forward ``propose_with_context`` to the leader instead of refusing."""
    async_storage_writes: bool = False
    """The driver may take the next Ready while earlier writes are in flight, confirming each
    with ``RawNode.persisted()`` (thesis §10.2.1); committed entries are handed out for
    application only once durable locally. Off: the classic one-Ready-at-a-time contract."""
    snapshot_entries: int = 10_000
    """``should_snapshot()`` is true once this many entries were applied since the last snapshot."""
    snapshot_bytes: int = 64 << 20
    """... or once the log holds this many bytes since the last snapshot."""
    snapshot_trailing_entries: int = 5_000
    """Entries kept behind a snapshot when compacting, so slightly slow followers
    catch up from the log rather than by snapshot."""
    snapshot_chunk_bytes: int = 1 << 20
    """Size of the snapshot chunks a driver reads per SNAPSHOT message."""
    snapshot_retry_ticks: int = 5
    """Resend an unanswered snapshot chunk after this many ticks."""
    promote_max_lag: int = 64
    """A member added with ADD_MEMBER is promoted once its match is within this
    many entries of the leader's commit index."""

    def validate(self) -> None:
        """Raise :class:`ConfigError` on an impossible setting."""
        if not isinstance(self.id, str) or not self.id:
            raise ConfigError("id must be a non-empty string")
        if self.heartbeat_tick < 1:
            raise ConfigError(f"heartbeat_tick must be >= 1, got {self.heartbeat_tick}")
        if self.election_tick <= self.heartbeat_tick:
            raise ConfigError(
                f"election_tick ({self.election_tick}) must be greater than "
                f"heartbeat_tick ({self.heartbeat_tick})"
            )
        if self.max_msg_bytes < 1:
            raise ConfigError(f"max_msg_bytes must be >= 1, got {self.max_msg_bytes}")
        if self.max_msg_entries < 1:
            raise ConfigError(f"max_msg_entries must be >= 1, got {self.max_msg_entries}")
        if self.max_inflight < 1:
            raise ConfigError(f"max_inflight must be >= 1, got {self.max_inflight}")
        if self.max_uncommitted_bytes < 0:
            raise ConfigError("max_uncommitted_bytes must be >= 0 (0 means unlimited)")
        if self.max_apply_bytes < 1:
            raise ConfigError(f"max_apply_bytes must be >= 1, got {self.max_apply_bytes}")
        if self.join and self.voters:
            raise ConfigError("a joining node (join=True) must not list voters: it learns them")
        if self.read_only not in ("safe", "lease"):
            raise ConfigError(f"read_only must be 'safe' or 'lease', got {self.read_only!r}")
        if self.read_only == "lease" and not self.check_quorum:
            raise ConfigError("read_only='lease' needs check_quorum=True (the lease is its guarantee)")
        for name in ("snapshot_entries", "snapshot_bytes", "snapshot_chunk_bytes", "snapshot_retry_ticks"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("snapshot_trailing_entries", "promote_max_lag"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if len(set(self.voters)) != len(self.voters):
            raise ConfigError(f"duplicate ids in voters: {self.voters}")
        for v in self.voters:
            if not isinstance(v, str) or not v:
                raise ConfigError(f"voter ids must be non-empty strings, got {v!r}")
