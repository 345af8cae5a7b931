"""The Raft protocol as a deterministic, sans-IO state machine.

Nothing in this package performs I/O, reads a clock or draws from global
randomness: time is ``tick()``, randomness an injected ``random.Random``.
"""

from raftlib.core.config import Config
from raftlib.core.membership import Membership
from raftlib.core.messages import Entry, HardState, Message, MessageType, Role, SoftState
from raftlib.core.progress import Progress, ProgressState
from raftlib.core.rawnode import RawNode, Ready
from raftlib.core.storage_state import PersistentState

__all__ = [
    "Config",
    "Entry",
    "HardState",
    "Membership",
    "Message",
    "MessageType",
    "PersistentState",
    "Progress",
    "ProgressState",
    "RawNode",
    "Ready",
    "Role",
    "SoftState",
]
