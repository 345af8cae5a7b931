"""The Raft protocol as a deterministic, sans-IO state machine.

Nothing in this package performs I/O, reads a clock or draws from global
randomness: time is ``tick()``, randomness an injected ``random.Random``.
"""

from raftlib.core.confchange import Change, ChangeKind, ConfChange, Transition
from raftlib.core.config import Config
from raftlib.core.membership import Membership
from raftlib.core.messages import (
    Entry,
    HardState,
    Message,
    MessageType,
    ProposalResult,
    ReadState,
    Role,
    SnapshotChunk,
    SnapshotMeta,
    SoftState,
)
from raftlib.core.progress import Progress, ProgressState
from raftlib.core.rawnode import RawNode, Ready
from raftlib.core.storage_state import PersistentState

__all__ = [
    "Change",
    "ChangeKind",
    "ConfChange",
    "Config",
    "Entry",
    "HardState",
    "Membership",
    "Message",
    "MessageType",
    "PersistentState",
    "Progress",
    "ProgressState",
    "ProposalResult",
    "RawNode",
    "ReadState",
    "Ready",
    "Role",
    "SnapshotChunk",
    "SnapshotMeta",
    "SoftState",
    "Transition",
]
