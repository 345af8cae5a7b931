"""Micro-benchmarks of the wire codec (raftlib.codec): encode and decode throughput.

Cases: the hot AppendEntries (64 entries of 100 bytes), an empty heartbeat, an
append ack, and a 1 MiB snapshot chunk. For each, the best of ``--repeat`` runs
of ``n`` encodes (or ``n`` decodes through a :class:`FrameDecoder` fed one
concatenated stream, which is what a TCP receiver does) is timed with
``time.perf_counter``. One JSON object per case and direction goes to stdout::

    {"case": ..., "op": "encode"|"decode", "msgs_per_s": ..., "mb_per_s": ..., "frame_bytes": ...,
     "compiled_entry": true|false}

``--scale 0.1`` runs everything ten times smaller (a smoke test).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

try:
    import raftlib  # noqa: F401
except ImportError:  # run from a source tree without installing: use the checkout
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from raftlib._accel import COMPILED, Entry
from raftlib.codec import FrameDecoder, encode
from raftlib.core.membership import Membership
from raftlib.core.messages import Message, MessageType, SnapshotMeta


def cases() -> dict[str, tuple[Message, int]]:
    """name -> (message, messages per timed run)."""
    ents = [Entry(1000 + i, 7, bytes([i]) * 100) for i in range(64)]
    append = Message(MessageType.APPEND, "n1", "n2", 7, log_term=7, index=999, entries=ents, commit=990)
    heartbeat = Message(MessageType.HEARTBEAT, "n1", "n2", 7, commit=990)
    ack = Message(MessageType.APPEND_RESP, "n2", "n1", 7, index=1063)
    meta = SnapshotMeta(5000, 6, Membership(frozenset({"n1", "n2", "n3"})))
    chunk = Message(MessageType.SNAPSHOT, "n1", "n2", 7, snapshot=meta, offset=0, data=b"s" * (1 << 20))
    return {
        "append_64x100B": (append, 5000),
        "heartbeat": (heartbeat, 50000),
        "append_resp": (ack, 50000),
        "snapshot_chunk_1MiB": (chunk, 200),
    }


def best_of(repeat: int, fn: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--scale", type=float, default=1.0)
    args = ap.parse_args(argv)
    for name, (msg, n) in cases().items():
        n = max(1, int(n * args.scale))
        frame = encode(msg)
        size = len(frame)
        batch = [msg] * n
        stream = frame * n

        def run_encode(batch: list[Message] = batch) -> None:
            for m in batch:
                encode(m)

        def run_decode(stream: bytes = stream, n: int = n) -> None:
            out = FrameDecoder(max_frame_bytes=16 << 20).feed(stream)
            assert len(out) == n

        assert FrameDecoder().feed(frame) == [msg]
        for op, fn in (("encode", run_encode), ("decode", run_decode)):
            t = best_of(args.repeat, fn)
            row = {
                "case": name,
                "op": op,
                "msgs_per_s": round(n / t),
                "mb_per_s": round(n * size / t / 1e6, 1),
                "frame_bytes": size,
                "compiled_entry": COMPILED,
            }
            print(json.dumps(row), flush=True)
            line = f"{name:22s} {op:6s} {row['msgs_per_s']:>10,} msg/s {row['mb_per_s']:>9} MB/s"
            print(line, file=sys.stderr)


if __name__ == "__main__":
    main()
