"""The store's own gRPC server: HTTP/2 (RFC 9113) and HPACK (RFC 7541) on asyncio, serving grpc's
method handlers (see :mod:`examples.kvstore.h2grpc.server` for why it is not grpc.aio's server).

* :mod:`~examples.kvstore.h2grpc.hpack`: header compression;
* :mod:`~examples.kvstore.h2grpc.connection`: one HTTP/2 connection: frames, streams, flow control;
* :mod:`~examples.kvstore.h2grpc.server`: the gRPC layer: calls, status, the servicer context.
"""

from examples.kvstore.h2grpc.server import CallContext, GrpcServer

__all__ = ["CallContext", "GrpcServer"]
