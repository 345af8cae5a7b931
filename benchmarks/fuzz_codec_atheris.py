"""Coverage-guided fuzzing of the wire codec and the handshake with atheris (`make fuzz`).

    pip install atheris
    python benchmarks/fuzz_codec_atheris.py -max_total_time=60

Properties checked for every input: `FrameDecoder.feed`, `decode_frame`, `decode_handshake` and
`decode_handshake_ack` raise nothing but `CodecError`; a message that decodes re-encodes to a frame
that decodes to an equal message; feeding the input in two pieces gives the same messages as in one.
"""

from __future__ import annotations

import contextlib
import sys

import atheris

with atheris.instrument_imports():
    from raftlib.codec import (
        HEADER_SIZE,
        CodecError,
        FrameDecoder,
        decode_frame,
        decode_handshake,
        decode_handshake_ack,
        encode,
    )


def one_input(data: bytes) -> None:
    if not data:
        return
    split = data[0] % (len(data) + 1)
    body = data[1:]
    try:
        whole = FrameDecoder(1 << 20).feed(body)
    except CodecError as e:
        whole = list(e.messages)
        bad = True
    else:
        bad = False
    dec = FrameDecoder(1 << 20)
    try:
        parts = dec.feed(body[:split]) + dec.feed(body[split:])
    except CodecError as e:
        parts = list(e.messages)
        assert bad or split, "a split changed the outcome"
    if not bad:
        assert [repr(m) for m in parts] == [repr(m) for m in whole]
    for m in whole:
        again = decode_frame(encode(m))
        assert repr(again) == repr(m), (m, again)
    for fn in (decode_handshake, decode_handshake_ack):
        with contextlib.suppress(CodecError):
            fn(body[HEADER_SIZE:] if split % 2 else body)
    with contextlib.suppress(CodecError):
        decode_frame(body)


def main() -> None:
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
