"""The runtime: where the event loop, files and sockets meet the sans-IO core.

One concept a file (docs/architecture.md):

* ``config.py``: :class:`NodeConfig` (tunables, default deadlines) and :class:`LeaderChange`;
* ``node.py``: :class:`RaftNode`, one group's member: the ready/advance loop and the public API;
* ``requests.py``: callers waiting on the node (proposals, forwards, reads, applied-index
  waiters) and the rules that make every wait end;
* ``persist.py``: the storage stage (WAL writes and fsync, inline or in the I/O thread);
* ``snapshots.py``: the snapshot file layout, capture and restore;
* ``host.py``: :class:`RaftHost`, many groups in one process (shared listener, WAL, ticker),
  quiescence and the leader balancer;
* ``membership.py``: membership changes from the node API (several in one step, forwarded
  from followers, leadership moved off a leader being removed first).
"""

from raftlib.runtime.config import LeaderChange, NodeConfig
from raftlib.runtime.host import RaftHost
from raftlib.runtime.node import RaftNode, install_uvloop

__all__ = ["LeaderChange", "NodeConfig", "RaftHost", "RaftNode", "install_uvloop"]
