"""Transports move messages between Raft nodes: TCP (optionally mutual TLS) and in-memory (tests),
for one group per process or many groups per host (``mux``: one connection per peer host)."""

from raftlib.transport.base import STAT_NAMES, OnMessage, Transport, parse_address
from raftlib.transport.memory import MemoryNetwork, MemoryTransport
from raftlib.transport.memory_host import MemoryHostNetwork, MemoryHostTransport
from raftlib.transport.mux import GroupTransport, HostTransport
from raftlib.transport.tcp import REFUSAL_REASONS, TcpTransport
from raftlib.transport.tls import TlsConfig

__all__ = [
    "STAT_NAMES",
    "GroupTransport",
    "HostTransport",
    "MemoryHostNetwork",
    "MemoryHostTransport",
    "MemoryNetwork",
    "MemoryTransport",
    "OnMessage",
    "REFUSAL_REASONS",
    "TcpTransport",
    "TlsConfig",
    "Transport",
    "parse_address",
]
