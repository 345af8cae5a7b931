"""A RaftNode in its own OS process, with a small control channel, for process-level tests.

Runs a replicated dict (``bytes`` keys and values) on a real :class:`RaftNode`
with TCP transport and disk storage, and answers newline-delimited JSON
requests on a control address (loopback only)::

    python -m raftlib.testing.procnode --id n1 \\
        --members n1=127.0.0.1:7001,n2=127.0.0.1:7002,n3=127.0.0.1:7003 \\
        --data-dir /tmp/c/n1 --control 127.0.0.1:8001

Requests (one JSON object per line; one JSON answer per line, in order):

* ``{"op": "put", "key": "k", "value": "v"}`` → ``{"ok": true, "index": 12}``
* ``{"op": "get", "key": "k"}`` (linearizable; ``"local": true`` reads locally)
* ``{"op": "dump"}`` → every key, the applied index
* ``{"op": "status"}``, ``{"op": "snapshot"}``, ``{"op": "transfer", "to": "n2"}``
* ``{"op": "add_member", "id": "n4", "address": "127.0.0.1:7004"}``,
  ``{"op": "remove_member", "id": "n4"}``
* ``{"op": "bench", "seconds": 3, "concurrency": 64, "value_bytes": 100}``: a
  write load generated inside this (leader) process; answers writes/s and
  latency percentiles.

Errors come back as ``{"ok": false, "error": "NotLeader", "detail": ..., "leader": ...}``.
The process prints ``READY <control address>`` on stdout once it serves.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import logging
import os
import signal
import struct
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any, BinaryIO

import raftlib
from raftlib.node import NodeConfig, RaftNode
from raftlib.statemachine import SnapshotWriter, StateMachine

_KEYLEN = struct.Struct("<H")
_PAIR = struct.Struct("<II")


def encode_put(key: bytes, value: bytes) -> bytes:
    """The command that sets ``key`` to ``value``."""
    return _KEYLEN.pack(len(key)) + key + value


class DictMachine(StateMachine):
    """A replicated dict; commands come from :func:`encode_put`."""

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}

    def apply(self, command: bytes, index: int) -> Any:
        (n,) = _KEYLEN.unpack_from(command)
        self.data[command[2 : 2 + n]] = command[2 + n :]
        return index

    def snapshot(self) -> SnapshotWriter:
        # Cheap on the loop (a C-level copy of the dict); serialised in a worker thread.
        view = dict(self.data)

        class Writer(SnapshotWriter):
            def write(self, out: BinaryIO) -> None:
                pack = _PAIR.pack
                for k, v in view.items():
                    out.write(pack(len(k), len(v)))
                    out.write(k)
                    out.write(v)

        return Writer()

    def restore_stream(self, stream: BinaryIO) -> None:
        data: dict[bytes, bytes] = {}
        read = stream.read
        size = _PAIR.size
        while head := read(size):
            klen, vlen = _PAIR.unpack(head)
            data[read(klen)] = read(vlen)
        self.data = data


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    i = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[i]


class Control:
    """Serves the control channel of one node."""

    def __init__(self, node: RaftNode, sm: DictMachine) -> None:
        self.node = node
        self.sm = sm

    async def handle(self, req: dict[str, Any]) -> dict[str, Any]:
        op = req.get("op")
        node = self.node
        timeout = float(req.get("timeout", 5.0))
        if op == "put":
            index = await node.propose(
                encode_put(req["key"].encode(), req["value"].encode()), timeout=timeout
            )
            return {"ok": True, "index": index}
        if op == "get":
            if not req.get("local"):
                await node.read_barrier(timeout=timeout)
            value = self.sm.data.get(req["key"].encode())
            return {"ok": True, "value": None if value is None else value.decode()}
        if op == "dump":
            return {
                "ok": True,
                "data": {k.decode(): v.decode() for k, v in self.sm.data.items()},
                "applied": node.status()["applied"],
            }
        if op == "status":
            st = node.status()
            st["metrics"] = dict(node.metrics)
            st["pid"] = os.getpid()
            st["compiled"] = raftlib.COMPILED
            return {"ok": True, "status": st}
        if op == "snapshot":
            meta = await node.snapshot()
            return {"ok": True, "index": meta.index}
        if op == "transfer":
            await node.transfer_leadership(req["to"], timeout=timeout)
            return {"ok": True}
        if op == "add_member":
            await node.add_member(req["id"], req["address"], timeout=timeout)
            return {"ok": True}
        if op == "remove_member":
            await node.remove_member(req["id"], timeout=timeout)
            return {"ok": True}
        if op == "bench":
            return await self.bench(
                float(req.get("seconds", 3)), int(req.get("concurrency", 1)), int(req.get("value_bytes", 100))
            )
        raise ValueError(f"unknown op {op!r}")

    async def bench(self, seconds: float, concurrency: int, value_bytes: int) -> dict[str, Any]:
        """Write as fast as ``concurrency`` sequential writers can for ``seconds``."""
        node = self.node
        value = b"v" * value_bytes
        latencies: list[float] = []
        stop_at = time.perf_counter() + seconds
        counter = 0

        async def writer(w: int) -> None:
            nonlocal counter
            while time.perf_counter() < stop_at:
                counter += 1
                key = b"bench-%d-%d" % (w, counter)
                t0 = time.perf_counter()
                await node.propose(_KEYLEN.pack(len(key)) + key + value)
                latencies.append(time.perf_counter() - t0)

        started = time.perf_counter()
        await asyncio.gather(*(writer(w) for w in range(concurrency)))
        elapsed = time.perf_counter() - started
        latencies.sort()
        return {
            "ok": True,
            "writes": len(latencies),
            "elapsed": elapsed,
            "writes_per_s": len(latencies) / elapsed if elapsed else 0.0,
            "p50_ms": _percentile(latencies, 0.50) * 1000,
            "p99_ms": _percentile(latencies, 0.99) * 1000,
            "fsyncs": node.metrics["fsync_count"],
        }


async def serve_control(
    handle: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]],
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
) -> None:
    """One control connection: a JSON object per line in, ``handle``'s answer per line out."""
    try:
        while True:
            line = await reader.readline()
            if not line:
                return
            try:
                req = json.loads(line)
                if not isinstance(req, dict):
                    raise ValueError("a request is a JSON object")
                resp = await handle(req)
            except raftlib.NotLeader as exc:
                resp = {"ok": False, "error": "NotLeader", "detail": str(exc), "leader": exc.leader_id}
            except (raftlib.RaftError, TimeoutError, ValueError, KeyError, TypeError) as exc:
                resp = {"ok": False, "error": type(exc).__name__, "detail": str(exc)}
            writer.write(json.dumps(resp).encode() + b"\n")
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        return
    finally:
        writer.close()


async def start_control(
    address: str, handle: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
) -> asyncio.Server:
    """Listen for control connections on ``host:port``."""
    host, _, port = address.rpartition(":")
    return await asyncio.start_server(functools.partial(serve_control, handle), host, int(port))


async def serve_until_signalled(server: asyncio.Server, address: str) -> None:
    """Say ``READY <address>`` on stdout, serve until SIGTERM or SIGINT, then close ``server``."""
    print(f"READY {address}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        server.close()
        await server.wait_closed()


def _parse_members(text: str) -> dict[str, str]:
    members: dict[str, str] = {}
    for part in text.split(","):
        name, sep, address = part.partition("=")
        if not sep or not name or not address:
            raise argparse.ArgumentTypeError(f"bad member {part!r}: expected id=host:port")
        members[name] = address
    return members


async def run(args: argparse.Namespace) -> None:
    sm = DictMachine()
    tls = None
    if args.tls_cert:
        from raftlib.transport.tls import TlsConfig

        tls = TlsConfig(args.tls_cert, args.tls_key, args.tls_ca)
    config = NodeConfig(
        tick_interval=args.tick,
        cluster_id=args.cluster_id,
        tls=tls,
        fsync=not args.no_fsync,
        forward_proposals=args.forward,
        snapshot_entries=args.snapshot_entries,
    )
    node = RaftNode(args.id, args.members, sm, data_dir=args.data_dir, config=config, join=args.join)
    await node.start()
    control = Control(node, sm)
    server = await start_control(args.control, control.handle)
    try:
        await serve_until_signalled(server, args.control)
    finally:
        await node.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="a RaftNode process with a control channel")
    parser.add_argument("--id", required=True)
    parser.add_argument("--members", type=_parse_members, required=True)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--control", required=True, help="host:port of the control channel")
    parser.add_argument("--cluster-id", default="raftlib")
    parser.add_argument("--tick", type=float, default=0.05)
    parser.add_argument("--join", action="store_true")
    parser.add_argument("--forward", action="store_true")
    parser.add_argument("--no-fsync", action="store_true")
    parser.add_argument("--snapshot-entries", type=int, default=10_000)
    parser.add_argument("--tls-cert")
    parser.add_argument("--tls-key")
    parser.add_argument("--tls-ca")
    parser.add_argument("--uvloop", action="store_true")
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    if args.uvloop:
        raftlib.install_uvloop()
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
