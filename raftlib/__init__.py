"""raftlib: Raft consensus for asyncio, with a compiled hot path.

``raftlib.COMPILED`` tells whether the Cython hot path is in use (set
``RAFTLIB_PURE=1`` to force the pure-Python reference implementation).
"""

from raftlib._accel import COMPILED
from raftlib.core import (
    Config,
    Entry,
    HardState,
    Message,
    MessageType,
    PersistentState,
    RawNode,
    Ready,
    Role,
    SoftState,
)
from raftlib.errors import (
    ConfChangeError,
    ConfChangeInProgress,
    ConfigError,
    LeadershipTransferError,
    NodeStopped,
    NotLeader,
    ProposalDropped,
    RaftError,
    StateMachineError,
    StorageCorrupted,
    UncommittedLimitExceeded,
)
from raftlib.node import LeaderChange, NodeConfig, RaftNode, install_uvloop
from raftlib.sessions import (
    Session,
    SessionCallTimeout,
    SessionExpired,
    SessionStateMachine,
    TooManyPendingResponses,
)
from raftlib.statemachine import SnapshotWriter, StateMachine
from raftlib.valuecodec import CommandError

__version__ = "0.1.0"

__all__ = [
    "COMPILED",
    "CommandError",
    "ConfChangeError",
    "ConfChangeInProgress",
    "Config",
    "ConfigError",
    "LeadershipTransferError",
    "Entry",
    "HardState",
    "LeaderChange",
    "NodeConfig",
    "NodeStopped",
    "RaftNode",
    "Session",
    "SessionCallTimeout",
    "SessionExpired",
    "SessionStateMachine",
    "SnapshotWriter",
    "StateMachine",
    "StateMachineError",
    "install_uvloop",
    "Message",
    "MessageType",
    "NotLeader",
    "PersistentState",
    "ProposalDropped",
    "RaftError",
    "RawNode",
    "Ready",
    "Role",
    "SoftState",
    "StorageCorrupted",
    "TooManyPendingResponses",
    "UncommittedLimitExceeded",
    "__version__",
]
