"""raftlib: Raft consensus for asyncio, with a compiled hot path.

``raftlib.COMPILED`` tells whether the Cython hot path is in use (set
``RAFTLIB_PURE=1`` to force the pure-Python reference implementation).
"""

from raftlib._accel import COMPILED
from raftlib._version import __version__
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
    LeadershipLost,
    LeadershipTransferError,
    NodeStopped,
    NotLeader,
    ProposalDropped,
    RaftError,
    RequestTimeout,
    StateMachineError,
    StorageCorrupted,
    UncommittedLimitExceeded,
)
from raftlib.observe import Observer
from raftlib.runtime import LeaderChange, NodeConfig, RaftHost, RaftNode, install_uvloop
from raftlib.sessions import (
    Session,
    SessionCallTimeout,
    SessionExpired,
    SessionStateMachine,
    TooManyPendingResponses,
)
from raftlib.statemachine import SnapshotWriter, StateMachine
from raftlib.valuecodec import CommandError

__all__ = [
    "COMPILED",
    "CommandError",
    "ConfChangeError",
    "ConfChangeInProgress",
    "Config",
    "ConfigError",
    "LeadershipLost",
    "LeadershipTransferError",
    "Entry",
    "HardState",
    "LeaderChange",
    "NodeConfig",
    "NodeStopped",
    "Observer",
    "RaftHost",
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
    "RequestTimeout",
    "RawNode",
    "Ready",
    "Role",
    "SoftState",
    "StorageCorrupted",
    "TooManyPendingResponses",
    "UncommittedLimitExceeded",
    "__version__",
]
