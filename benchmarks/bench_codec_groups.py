"""Micro-benchmark behind the group frame design (raftlib.codec, multi-group hosts).

Per message, encode + decode through a stream decoder, for batches of 1, 4 and 16
messages of one group (heartbeats, and 4-entry appends of 100-byte entries), the frames
of a timed run decoded as one stream (as a receiver does), of:

* ``plain``: today's single-group frames and ``FrameDecoder`` (the baseline, no group id);
* ``group_frame``: the chosen design, one group frame (group id once) wrapping the
  ordinary message frames: ``encode_group`` / ``GroupFrameDecoder``;
* ``tag_per_message``: the alternative of a group id in every message frame;
* ``u32_bodies``: the alternative of a group frame whose messages are length-prefixed
  bodies (4 bytes smaller each, but every message re-framed after ``encode``).

The two alternatives are modelled here with the codec's own parts (they are not in the
codec). One JSON object per design, case and batch size::

    {"design": ..., "case": ..., "batch": ..., "encode_us_per_msg": ..., "decode_us_per_msg": ...,
     "bytes_per_msg": ...}
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path

try:
    import raftlib  # noqa: F401
except ImportError:  # run from a source tree without installing: use the checkout
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from raftlib.codec import (
    FLAG_GROUP,
    HEADER_SIZE,
    MAGIC,
    WIRE_VERSION,
    CodecError,
    FrameDecoder,
    GroupFrameDecoder,
    decode,
    encode,
    encode_group_frame,
    group_tag,
)
from raftlib.core.messages import Entry, Message, MessageType

_HEADER = struct.Struct("<2sBBI")
_U32 = struct.Struct("<I")
GROUP = "range-000123"
TAG = group_tag(GROUP)


def enc_plain(msgs: list[Message]) -> bytes:
    return b"".join([encode(m) for m in msgs])


def dec_plain(data: bytes) -> int:
    return len(FrameDecoder().feed(data))


def enc_group(msgs: list[Message]) -> bytes:
    return encode_group_frame(TAG, [encode(m) for m in msgs])


def dec_group(data: bytes) -> int:
    return sum(len(ms) for _, ms in GroupFrameDecoder().feed(data))


def enc_tagged(msgs: list[Message]) -> bytes:
    out = []
    for m in msgs:
        f = encode(m)
        out.append(
            _HEADER.pack(MAGIC, WIRE_VERSION, FLAG_GROUP, len(f) - HEADER_SIZE + len(TAG)) + TAG + f[8:]
        )
    return b"".join(out)


def dec_tagged(data: bytes) -> int:
    mv = memoryview(data)
    pos, n, end = 0, 0, len(mv)
    while pos < end:
        _, _, _, length = _HEADER.unpack_from(mv, pos)
        start = pos + HEADER_SIZE
        gl = mv[start]
        str(mv[start + 1 : start + 1 + gl], "utf-8")
        decode(mv[start + 1 + gl : start + length])
        pos = start + length
        n += 1
    return n


def enc_u32(msgs: list[Message]) -> bytes:
    parts = []
    for m in msgs:
        f = encode(m)
        parts.append(_U32.pack(len(f) - HEADER_SIZE) + f[HEADER_SIZE:])
    body = TAG + b"".join(parts)
    return _HEADER.pack(MAGIC, WIRE_VERSION, FLAG_GROUP, len(body)) + body


def dec_u32(data: bytes) -> int:
    mv = memoryview(data)
    pos, n, total = 0, 0, len(mv)
    while pos < total:
        _, _, _, length = _HEADER.unpack_from(mv, pos)
        end = pos + HEADER_SIZE + length
        pos += HEADER_SIZE
        gl = mv[pos]
        str(mv[pos + 1 : pos + 1 + gl], "utf-8")
        pos += 1 + gl
        while pos < end:
            (ln,) = _U32.unpack_from(mv, pos)
            decode(mv[pos + 4 : pos + 4 + ln])
            pos += 4 + ln
            n += 1
        if pos != end:
            raise CodecError("bad u32 stream")
    return n


DESIGNS: dict[str, tuple[Callable[[list[Message]], bytes], Callable[[bytes], int]]] = {
    "plain": (enc_plain, dec_plain),
    "group_frame": (enc_group, dec_group),
    "tag_per_message": (enc_tagged, dec_tagged),
    "u32_bodies": (enc_u32, dec_u32),
}


def make(case: str, i: int) -> Message:
    if case == "heartbeat":
        return Message(MessageType.HEARTBEAT, "h1", "h2", 5, commit=i)
    ents = [Entry(i * 4 + k + 1, 5, b"x" * 100) for k in range(4)]
    return Message(MessageType.APPEND, "h1", "h2", 5, log_term=5, index=i * 4, entries=ents, commit=i)


def best_of(repeat: int, fn: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=20000, help="messages per timed run")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args(argv)
    for case in ("heartbeat", "append_4x100B"):
        for batch in (1, 4, 16):
            msgs = [make(case, i) for i in range(batch)]
            runs = max(1, args.messages // batch)
            for design, (enc, dec) in DESIGNS.items():
                data = enc(msgs)
                assert dec(data) == batch
                t_enc = best_of(
                    args.repeat, lambda enc=enc, msgs=msgs, runs=runs: [enc(msgs) for _ in range(runs)]
                )
                t_dec = best_of(
                    args.repeat, lambda dec=dec, data=data, runs=runs: [dec(data) for _ in range(runs)]
                )
                total = runs * batch
                row = {
                    "design": design,
                    "case": case,
                    "batch": batch,
                    "encode_us_per_msg": round(t_enc / total * 1e6, 3),
                    "decode_us_per_msg": round(t_dec / total * 1e6, 3),
                    "bytes_per_msg": round(len(data) / batch, 1),
                }
                print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
