"""NodeConfig and LeaderChange: what a user tunes on a node, and what it reports about leadership.

Owns the runtime's tunables and the deadlines derived from them. Invariant: every
deadline a caller gets by default is finite (``request_timeout``,
``forward_timeout``); only an explicit ``math.inf`` waits without limit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from raftlib.core import Config
from raftlib.errors import ConfigError
from raftlib.transport.base import parse_address
from raftlib.transport.tls import TlsConfig


@dataclass
class NodeConfig:
    """Tunables of a :class:`~raftlib.RaftNode` (times in seconds, counts in ticks/entries/bytes).

    >>> NodeConfig(tick_interval=0.05).default_request_timeout()  # 5 s + two election timeouts
    6.0
    """

    tick_interval: float = 0.1
    """Seconds per logical tick: the heartbeat interval is ``heartbeat_tick`` ticks."""
    election_tick: int = 10
    heartbeat_tick: int = 1
    pre_vote: bool = True
    check_quorum: bool = True
    skip_redundant_heartbeats: bool = True
    """No periodic heartbeat to a follower that was just sent an AppendEntries (``raftlib.core.Config``)."""
    read_only: str = "safe"
    forward_proposals: bool = False
    """Proposals on a follower travel to the leader instead of raising NotLeader."""
    max_msg_bytes: int = 1 << 20
    max_msg_entries: int = 4096
    max_inflight: int = 256
    max_uncommitted_bytes: int = 64 << 20
    snapshot_entries: int = 10_000
    snapshot_trailing_entries: int = 5_000
    snapshot_chunk_bytes: int = 1 << 20
    auto_snapshot: bool = True
    """Take a snapshot and compact the log when ``snapshot_entries`` were applied."""
    fsync: bool = True
    """Never turn off in production: acknowledged writes could be lost on power failure."""
    inline_sync_below: float = 0.002
    """Write and fsync the log on the event loop itself while recent writes took less than this
    many seconds on average (default 2 ms): on a fast disk one write costs less than handing it
    to the I/O thread and back (two thread wake-ups and a GIL hand-over, often 0.5 ms or more on
    a busy machine). Slower writes go to the I/O thread, so the loop keeps serving while the
    disk works. ``0`` always uses the I/O thread."""
    async_storage_writes: bool = True
    """Pipeline the storage stage (thesis §10.2.1, etcd's async storage writes): the node takes
    the next Ready while earlier WAL writes are in flight, and every Ready that arrives during
    a write shares the next one (one fsync). Acknowledgements still leave only after their
    entries are durable, the leader counts itself only for durable entries, and entries are
    applied only once committed and durable here. ``False``: one Ready at a time."""
    request_timeout: float | None = None
    """Default deadline of ``propose()``, ``read_barrier()``, ``wait_applied()`` and membership
    calls. ``None`` (the default) means etcd's rule of thumb: 5 s plus two election timeouts
    (7 s with the default ticks). ``math.inf`` waits without a deadline (a call still ends when
    its leader steps down or the node stops)."""
    forward_timeout: float | None = None
    """How long a follower waits for the leader to answer a forwarded proposal (where the entry
    landed) before failing it with ``ProposalDropped("forward_lost", may_still_commit=True)``.
    ``None``: two election timeouts."""
    cluster_id: str = "raftlib"
    """Peers of another cluster are refused at the handshake."""
    tls: TlsConfig | None = None
    """A ``raftlib.transport.tls.TlsConfig`` for mutually authenticated peer TLS."""
    rng_seed: int | None = None
    peer_secret: bytes | str | None = field(default=None, repr=False)
    """Shared secret (>= 16 bytes, the same on every member) peers prove by HMAC challenge/response
    at the transport handshake; never sent, never in repr. None: cluster id only. See docs/transport.md."""

    admin_address: str | None = None
    """``host:port`` of the node's admin endpoint (``python -m raftlib status``, docs/admin.md),
    authenticated like peers (``peer_secret``, ``tls``; with neither: loopback clients only).
    None: no endpoint."""

    def election_timeout(self) -> float:
        """Seconds of one (minimal) election timeout."""
        return self.election_tick * self.tick_interval

    def default_request_timeout(self) -> float:
        """The deadline calls get when they pass none (``request_timeout``, resolved)."""
        if self.request_timeout is not None:
            return self.request_timeout
        return 5.0 + 2 * self.election_timeout()

    def default_forward_timeout(self) -> float:
        return self.forward_timeout if self.forward_timeout is not None else 2 * self.election_timeout()

    def validate(self) -> None:
        """Raise :class:`~raftlib.ConfigError` naming the first invalid value."""
        if not self.inline_sync_below >= 0:  # (NaN fails too)
            raise ConfigError(f"inline_sync_below must be >= 0 seconds, not {self.inline_sync_below}")
        if not self.tick_interval > 0 or math.isinf(self.tick_interval):
            raise ConfigError(f"tick_interval must be a positive number of seconds, not {self.tick_interval}")
        for name in ("request_timeout", "forward_timeout"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ConfigError(f"{name} must be > 0 seconds (math.inf: no deadline), not {value}")
        if self.admin_address is not None:
            try:
                parse_address(self.admin_address)
            except ValueError as exc:
                raise ConfigError(f"admin_address: {exc}") from None
        if self.forward_timeout is not None and math.isinf(self.forward_timeout):
            raise ConfigError("forward_timeout must be finite: a lost forward would otherwise wait forever")

    def raft_config(self, node_id: str, voters: list[str], join: bool) -> Config:
        return Config(
            node_id,
            voters=[] if join else voters,
            join=join,
            election_tick=self.election_tick,
            heartbeat_tick=self.heartbeat_tick,
            pre_vote=self.pre_vote,
            check_quorum=self.check_quorum,
            skip_redundant_heartbeats=self.skip_redundant_heartbeats,
            read_only=self.read_only,
            forward_proposals=self.forward_proposals,
            async_storage_writes=self.async_storage_writes,
            max_msg_bytes=self.max_msg_bytes,
            max_msg_entries=self.max_msg_entries,
            max_inflight=self.max_inflight,
            max_uncommitted_bytes=self.max_uncommitted_bytes,
            snapshot_entries=self.snapshot_entries,
            snapshot_trailing_entries=self.snapshot_trailing_entries,
            snapshot_chunk_bytes=self.snapshot_chunk_bytes,
        )


@dataclass(frozen=True)
class LeaderChange:
    """An observed change of leadership: ``leader`` is None while there is none."""

    leader: str | None
    term: int
    address: str | None = None
