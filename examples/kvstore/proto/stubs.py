"""The generated etcd stubs, generated first if needed: ``from examples.kvstore.proto.stubs import rpc_pb2``.

Importing this module guarantees the stubs exist and match the .proto files
(see :func:`examples.kvstore.proto.ensure_generated`).
"""

from __future__ import annotations

from examples.kvstore.proto import ensure_generated

ensure_generated()

from examples.kvstore.proto import (  # noqa: E402  (generated just above)
    auth_pb2,
    kv_pb2,
    rpc_pb2,
    rpc_pb2_grpc,
    v3election_pb2,
    v3election_pb2_grpc,
    v3lock_pb2,
    v3lock_pb2_grpc,
)

__all__ = [
    "auth_pb2",
    "kv_pb2",
    "rpc_pb2",
    "rpc_pb2_grpc",
    "v3election_pb2",
    "v3election_pb2_grpc",
    "v3lock_pb2",
    "v3lock_pb2_grpc",
]
