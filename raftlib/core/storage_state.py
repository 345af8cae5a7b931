"""What a core is restarted from: the state its driver made durable."""

from __future__ import annotations

from dataclasses import dataclass, field

from raftlib.core.messages import Entry, HardState, SnapshotMeta


@dataclass(slots=True)
class PersistentState:
    """Durable state handed to a restarting core.

    ``entries`` are contiguous and start right after the snapshot (at index 1
    without one); everything up to ``snapshot.index`` is covered by the
    snapshot, whose configuration is ``snapshot.membership``. Without a
    snapshot the configuration starts as ``Config.voters`` and is rebuilt by
    replaying the configuration-change entries.
    """

    hard_state: HardState = field(default_factory=HardState)
    entries: list[Entry] = field(default_factory=list)
    snapshot: SnapshotMeta | None = None
