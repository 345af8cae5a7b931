"""Transports move messages between Raft nodes: TCP (optionally mutual TLS) and in-memory (tests)."""

from raftlib.transport.base import STAT_NAMES, OnMessage, Transport, parse_address
from raftlib.transport.memory import MemoryNetwork, MemoryTransport
from raftlib.transport.tcp import REFUSAL_REASONS, TcpTransport
from raftlib.transport.tls import TlsConfig

__all__ = [
    "STAT_NAMES",
    "MemoryNetwork",
    "MemoryTransport",
    "OnMessage",
    "REFUSAL_REASONS",
    "TcpTransport",
    "TlsConfig",
    "Transport",
    "parse_address",
]
