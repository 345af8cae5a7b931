"""Deterministic simulation for testing Raft and the state machines built on it.

>>> from raftlib.testing import SimCluster
>>> c = SimCluster(3, seed=7)
>>> leader = c.wait_leader()
>>> index, term = c.replicate(b"hello")
>>> c.wait_applied(index)
>>> all(c.state_machine(i).data == [b"hello"] for i in c.ids)
True

See docs/testing.md.
"""

from raftlib.testing.cluster import SimCluster, SimNode, SimStorage
from raftlib.testing.invariants import InvariantChecker, InvariantViolation, SimTimeout, SimulationError
from raftlib.testing.network import SimNetwork
from raftlib.testing.statemachine import RecordingStateMachine, StateMachine

__all__ = [
    "InvariantChecker",
    "InvariantViolation",
    "RecordingStateMachine",
    "SimCluster",
    "SimNetwork",
    "SimNode",
    "SimStorage",
    "SimTimeout",
    "SimulationError",
    "StateMachine",
]
