"""Compatibility: ``raftlib.node`` names, now defined in :mod:`raftlib.runtime`.

``from raftlib.node import RaftNode, NodeConfig`` keeps working; new code imports
from ``raftlib`` itself.
"""

from raftlib.runtime.config import LeaderChange, NodeConfig
from raftlib.runtime.node import RaftNode, install_uvloop

__all__ = ["LeaderChange", "NodeConfig", "RaftNode", "install_uvloop"]
