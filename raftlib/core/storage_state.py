"""What a core is restarted from: the state its driver made durable."""

from __future__ import annotations

from dataclasses import dataclass, field

from raftlib.core.messages import Entry, HardState


@dataclass(slots=True)
class PersistentState:
    """Durable state handed to a restarting core.

    ``entries`` are contiguous and start at ``snapshot_index + 1``; everything
    up to ``snapshot_index`` (whose term was ``snapshot_term``) is covered by a
    snapshot of the state machine.
    """

    hard_state: HardState = field(default_factory=HardState)
    entries: list[Entry] = field(default_factory=list)
    snapshot_index: int = 0
    snapshot_term: int = 0
    voters: list[str] | None = None
    """The configuration in force at ``snapshot_index``; None means Config.voters."""
