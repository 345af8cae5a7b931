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
        if len(set(self.voters)) != len(self.voters):
            raise ConfigError(f"duplicate ids in voters: {self.voters}")
        for v in self.voters:
            if not isinstance(v, str) or not v:
                raise ConfigError(f"voter ids must be non-empty strings, got {v!r}")
