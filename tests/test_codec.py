"""Tests of the wire format (raftlib.codec): exact round-trips, strict bounded decoding."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raftlib.codec import (
    DEFAULT_MAX_FRAME_BYTES,
    FLAG_GROUP,
    FLAG_HANDSHAKE,
    GROUP_FRAME_OVERHEAD,
    HEADER_SIZE,
    HOST_GROUP,
    MAGIC,
    MAX_GROUP_ID_BYTES,
    WIRE_VERSION,
    CodecError,
    FrameDecoder,
    GroupFrameDecoder,
    Handshake,
    decode,
    decode_frame,
    decode_group_frame,
    decode_handshake,
    decode_handshake_ack,
    encode,
    encode_group,
    encode_group_frame,
    encode_handshake,
    encode_handshake_ack,
    encode_many,
    group_tag,
)
from raftlib.core.membership import Membership
from raftlib.core.messages import Entry, Message, MessageType, SnapshotMeta
from raftlib.errors import RaftError

MAX_INT = 2**63 - 1

node_ids = st.text(min_size=0, max_size=12)
ints = st.integers(min_value=0, max_value=MAX_INT)
small_bytes = st.binary(max_size=64)
id_sets = st.frozensets(node_ids, max_size=5)

entries_st = st.lists(
    st.builds(
        Entry,
        index=ints,
        term=ints,
        data=small_bytes,
        type=st.integers(min_value=0, max_value=255),
    ),
    max_size=8,
)
memberships = st.builds(Membership, voters=id_sets, outgoing=id_sets, learners=id_sets, promoting=id_sets)
snapshots = st.none() | st.builds(SnapshotMeta, index=ints, term=ints, membership=memberships)

messages = st.builds(
    Message,
    type=st.sampled_from(list(MessageType)),
    frm=node_ids,
    to=node_ids,
    term=ints,
    log_term=ints,
    index=ints,
    entries=entries_st,
    commit=ints,
    reject=st.booleans(),
    reject_hint=ints,
    snapshot=snapshots,
    offset=ints,
    data=small_bytes,
    done=st.booleans(),
    context=small_bytes,
    force=st.booleans(),
    quiet=st.booleans(),
)


def full_message(mtype: MessageType) -> Message:
    """A message of ``mtype`` with every field set to a non-default value."""
    return Message(
        mtype,
        "n1",
        "n2-é",
        7,
        log_term=6,
        index=42,
        entries=[Entry(43, 7, b"cmd", 0), Entry(44, 7, b"\x00" * 100, 1), Entry(45, 7, b"", 0)],
        commit=41,
        reject=True,
        reject_hint=40,
        snapshot=SnapshotMeta(
            30,
            5,
            Membership(
                frozenset({"n1", "n2-é", "n3"}),
                frozenset({"n1", "n4"}),
                frozenset({"n5"}),
                frozenset({"n5"}),
            ),
        ),
        offset=1 << 40,
        data=b"chunk-data",
        done=True,
        context=b"ctx\xff",
        force=True,
        quiet=True,
    )


@pytest.mark.parametrize("mtype", list(MessageType), ids=lambda t: t.name)
def test_every_message_type_round_trips_with_every_field_set(mtype: MessageType) -> None:
    msg = full_message(mtype)
    frame = encode(msg)
    got = decode_frame(frame)
    assert got == msg
    # Field by field, so that a failing field is named, and the types are exact.
    for name in Message.__slots__:
        assert getattr(got, name) == getattr(msg, name), name
    assert type(got.type) is MessageType
    assert all(type(e) is Entry for e in got.entries)
    assert isinstance(got.data, bytes) and isinstance(got.context, bytes)


def test_default_message_round_trips_and_is_small() -> None:
    msg = Message(MessageType.HEARTBEAT, "a", "b", 1, commit=5)
    frame = encode(msg)
    assert decode_frame(frame) == msg
    assert len(frame) == HEADER_SIZE + 66 + 2  # fixed part + "a" + "b"


def test_frame_header_layout() -> None:
    frame = encode(Message(MessageType.VOTE, "a", "b", 3))
    magic, version, flags, length = struct.unpack_from("<2sBBI", frame)
    assert (magic, version, flags) == (MAGIC, WIRE_VERSION, 0)
    assert length == len(frame) - HEADER_SIZE
    assert decode(frame[HEADER_SIZE:]) == Message(MessageType.VOTE, "a", "b", 3)


def test_append_with_64_entries_of_100_bytes_round_trips() -> None:
    ents = [Entry(i, 3, bytes([i]) * 100) for i in range(1, 65)]
    msg = Message(MessageType.APPEND, "l", "f", 3, log_term=3, index=0, entries=ents, commit=10)
    frame = encode(msg)
    assert len(frame) < 64 * (100 + 21) + 100
    assert decode_frame(frame) == msg


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(messages)
def test_arbitrary_messages_round_trip(msg: Message) -> None:
    assert decode_frame(encode(msg)) == msg


@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(messages, min_size=1, max_size=4), st.data())
def test_stream_of_frames_decodes_the_same_however_it_is_split(
    msgs: list[Message], data: st.DataObject
) -> None:
    stream = encode_many(msgs)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    dec = FrameDecoder()
    out: list[Message] = []
    prev = 0
    for cut in [*cuts, len(stream)]:
        out += dec.feed(stream[prev:cut])
        prev = cut
    assert out == msgs
    assert dec.buffered == 0


def test_split_at_every_byte_boundary() -> None:
    msgs = [full_message(t) for t in MessageType]
    stream = encode_many(msgs)
    for cut in range(len(stream) + 1):
        dec = FrameDecoder()
        out = dec.feed(stream[:cut]) + dec.feed(stream[cut:])
        assert out == msgs, cut
    # and one byte at a time, as bytes, bytearray and memoryview
    for conv in (bytes, bytearray, memoryview):
        dec = FrameDecoder()
        out = []
        for i in range(len(stream)):
            out += dec.feed(conv(stream[i : i + 1]))
        assert out == msgs


def test_oversized_frame_is_rejected_from_the_header_alone() -> None:
    dec = FrameDecoder(max_frame_bytes=1000)
    header = struct.pack("<2sBBI", MAGIC, WIRE_VERSION, 0, 1001)
    with pytest.raises(CodecError, match="exceeds"):
        dec.feed(header)  # no body byte was sent
    assert dec.buffered == 0
    # a frame exactly at the limit is fine
    msg = Message(MessageType.APPEND, "a", "b", 1, entries=[Entry(1, 1, b"x" * 500)])
    frame = encode(msg)
    assert FrameDecoder(max_frame_bytes=len(frame) - HEADER_SIZE).feed(frame) == [msg]
    with pytest.raises(CodecError):
        FrameDecoder(max_frame_bytes=len(frame) - HEADER_SIZE - 1).feed(frame[:HEADER_SIZE])


def test_default_max_frame_is_16_mib() -> None:
    assert DEFAULT_MAX_FRAME_BYTES == 16 * 1024 * 1024
    assert FrameDecoder().max_frame_bytes == DEFAULT_MAX_FRAME_BYTES
    header = struct.pack("<2sBBI", MAGIC, WIRE_VERSION, 0, DEFAULT_MAX_FRAME_BYTES + 1)
    with pytest.raises(CodecError):
        FrameDecoder().feed(header)


def test_decoder_stays_failed_after_an_error() -> None:
    dec = FrameDecoder()
    with pytest.raises(CodecError, match="magic"):
        dec.feed(b"XX" + b"\x00" * 10)
    with pytest.raises(CodecError, match="failed earlier"):
        dec.feed(encode(Message(MessageType.VOTE, "a", "b", 1)))


def test_codec_error_is_a_raft_error_and_a_value_error() -> None:
    assert issubclass(CodecError, RaftError)
    assert issubclass(CodecError, ValueError)


def _frame_with_body(body: bytes) -> bytes:
    return struct.pack("<2sBBI", MAGIC, WIRE_VERSION, 0, len(body)) + body


def _fixed(**kw: int) -> bytes:
    vals = dict(
        type=1, flags=0, term=1, log_term=0, index=0, commit=0, hint=0, offset=0, lf=1, lt=1, ld=0, lc=0, n=0
    )
    vals.update(kw)
    return struct.pack("<BBqqqqqqHHIII", *vals.values())


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (b"XY" + encode(Message(MessageType.VOTE, "a", "b", 1))[2:], "magic"),
        (b"RF\x02\x00" + encode(Message(MessageType.VOTE, "a", "b", 1))[4:], "version"),
        (b"RF\x01\x80" + encode(Message(MessageType.VOTE, "a", "b", 1))[4:], "flags"),
        (_frame_with_body(_fixed(type=99) + b"ab"), "unknown message type"),
        (_frame_with_body(_fixed(type=0) + b"ab"), "unknown message type"),
        (_frame_with_body(_fixed(flags=0x40) + b"ab"), "flags"),
        (_frame_with_body(_fixed(term=-1) + b"ab"), "negative"),
        (_frame_with_body(_fixed(index=-5) + b"ab"), "negative"),
        (_frame_with_body(_fixed() + b"a"), "truncated"),
        (_frame_with_body(_fixed() + b"abc"), "trailing"),
        (_frame_with_body(_fixed() + b"\xff\xfe"), "utf-8"),
        (_frame_with_body(_fixed(flags=0x08) + b"ab"), "snapshot"),  # snapshot meta without membership
        (_frame_with_body(_fixed(n=1) + b"ab" + struct.pack("<qqBI", -1, 1, 0, 0)), "Entry index"),
        (_frame_with_body(_fixed(n=1) + b"ab" + struct.pack("<qqBI", 1, 1, 0, 5) + b"xy"), "entry payload"),
        (_frame_with_body(_fixed(n=2) + b"ab" + struct.pack("<qqBI", 1, 1, 0, 0)), "truncated"),
        (
            _frame_with_body(
                _fixed(flags=0x08) + b"ab" + struct.pack("<qqIIII", 1, 1, 2, 0, 0, 0) + b"\x01\x00a\x01\x00a"
            ),
            "duplicate",
        ),
        (_frame_with_body(b"\x05"), "too short"),
        (encode_handshake(Handshake("c", "a", "b")), "handshake"),
    ],
)
def test_malformed_frames_raise_codec_error(frame: bytes, reason: str) -> None:
    with pytest.raises(CodecError, match=reason):
        decode_frame(frame)
    with pytest.raises(CodecError):
        FrameDecoder().feed(frame)


@pytest.mark.parametrize(
    "msg",
    [
        Message(MessageType.VOTE, "a", "b", -1),
        Message(MessageType.VOTE, "a", "b", 1, index=2**63),
        Message(MessageType.VOTE, 1, "b", 1),  # type: ignore[arg-type]  # a node id that is not a str
        Message(MessageType.VOTE, "a", None, 1),  # type: ignore[arg-type]
        Message(MessageType.VOTE, "a", "b", 1, data="text"),  # type: ignore[arg-type]
        Message(MessageType.SNAPSHOT, "a", "b", 1, snapshot=SnapshotMeta(1, 1, None)),  # type: ignore[arg-type]
        Message(
            MessageType.SNAPSHOT,
            "a",
            "b",
            1,
            snapshot=SnapshotMeta(1, 1, Membership(frozenset({3}))),  # type: ignore[arg-type]
        ),
        Message(MessageType.VOTE, "a" * 70000, "b", 1),
    ],
)
def test_unencodable_messages_raise_codec_error(msg: Message) -> None:
    with pytest.raises(CodecError):
        encode(msg)


@settings(max_examples=1000)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_only_ever_raise_codec_error(data: bytes) -> None:
    for fn in (decode, decode_handshake, decode_handshake_ack):
        with contextlib.suppress(CodecError):
            fn(data)
    with contextlib.suppress(CodecError):
        FrameDecoder(max_frame_bytes=1 << 16).feed(data)
    with contextlib.suppress(CodecError):
        decode_frame(data)


@settings(max_examples=1000)
@given(st.binary(max_size=300))
def test_arbitrary_bodies_behind_a_valid_header_only_raise_codec_error(body: bytes) -> None:
    with contextlib.suppress(CodecError):
        FrameDecoder().feed(_frame_with_body(body))


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(messages, st.data())
def test_mutated_valid_frames_decode_or_raise_codec_error(msg: Message, data: st.DataObject) -> None:
    frame = bytearray(encode(msg))
    n_mut = data.draw(st.integers(1, 6))
    for _ in range(n_mut):
        kind = data.draw(st.sampled_from(["flip", "set", "truncate", "insert", "delete"]))
        if not frame:
            break
        pos = data.draw(st.integers(0, len(frame) - 1))
        if kind == "flip":
            frame[pos] ^= 1 << data.draw(st.integers(0, 7))
        elif kind == "set":
            frame[pos] = data.draw(st.integers(0, 255))
        elif kind == "truncate":
            del frame[pos:]
        elif kind == "insert":
            frame[pos:pos] = data.draw(st.binary(min_size=1, max_size=8))
        else:
            del frame[pos : pos + data.draw(st.integers(1, 8))]
    # Fix up the length sometimes, so that the body parser (not just the header check) sees it.
    if data.draw(st.booleans()) and len(frame) >= HEADER_SIZE:
        struct.pack_into("<I", frame, 4, len(frame) - HEADER_SIZE)
    try:
        for m in FrameDecoder().feed(bytes(frame)):
            assert isinstance(m, Message)
            # Whatever decodes must re-encode (it holds only valid field values).
            assert decode_frame(encode(m)) == m
    except CodecError:
        pass


def test_handshake_round_trip_and_answer() -> None:
    hs = Handshake("cluster-1", "n1", "n2")
    frame = encode_handshake(hs)
    assert frame[3] == 1  # handshake flag
    assert decode_handshake(frame[HEADER_SIZE:]) == hs
    assert decode_handshake_ack(encode_handshake_ack(True)[HEADER_SIZE:]) == (True, "")
    assert decode_handshake_ack(encode_handshake_ack(False, "wrong cluster")[HEADER_SIZE:]) == (
        False,
        "wrong cluster",
    )
    with pytest.raises(CodecError):
        decode_handshake(frame[HEADER_SIZE:-1])


def test_codec_error_carries_the_messages_decoded_before_the_bad_frame() -> None:
    good = [Message(MessageType.VOTE, "a", "b", i) for i in range(3)]
    with pytest.raises(CodecError) as info:
        FrameDecoder().feed(encode_many(good) + b"XX" + b"\x00" * 20)
    assert list(info.value.messages) == good


# ------------------------------------------------------------------ group frames (multi-group hosts)

group_ids = st.text(max_size=40).filter(lambda g: len(g.encode("utf-8", "surrogatepass")) <= 255)


def _valid_group_id(g: str) -> bool:
    try:
        return len(g.encode("utf-8")) <= MAX_GROUP_ID_BYTES
    except UnicodeEncodeError:
        return False


def test_group_frame_layout_is_a_tagged_run_of_ordinary_message_frames() -> None:
    msgs = [Message(MessageType.HEARTBEAT, "h1", "h2", 1, commit=i) for i in range(3)]
    frame = encode_group("g-7", msgs)
    magic, version, flags, length = struct.unpack_from("<2sBBI", frame)
    assert (magic, version, flags) == (MAGIC, WIRE_VERSION, FLAG_GROUP)
    assert length == len(frame) - HEADER_SIZE
    assert frame[HEADER_SIZE] == 3 and frame[HEADER_SIZE + 1 : HEADER_SIZE + 4] == b"g-7"
    # The inner frames are byte for byte what encode() makes: one encoding per message.
    assert frame[HEADER_SIZE + 4 :] == encode_many(msgs)
    assert decode_group_frame(frame) == ("g-7", msgs)


def test_the_host_group_is_the_empty_id() -> None:
    assert HOST_GROUP == "" and group_tag("") == b"\x00"
    m = Message(MessageType.HEARTBEAT, "h1", "h2", 0)
    assert decode_group_frame(encode_group("", [m])) == ("", [m])


@pytest.mark.parametrize(
    "bad",
    ["x" * 256, "é" * 128, "\udc80", 7, None, b"g1"],
    ids=["256-bytes", "256-utf8-bytes", "lone-surrogate", "int", "none", "bytes"],
)
def test_bad_group_ids_cannot_be_encoded(bad: object) -> None:
    with pytest.raises(CodecError):
        group_tag(bad)  # type: ignore[arg-type]


def test_a_group_id_of_exactly_255_bytes_is_allowed() -> None:
    g = "ab" * 127 + "c"
    m = Message(MessageType.VOTE, "a", "b", 1)
    assert decode_group_frame(encode_group(g, [m])) == (g, [m])


def test_a_group_frame_carries_at_least_one_message() -> None:
    with pytest.raises(CodecError):
        encode_group("g1", [])
    empty = struct.pack("<2sBBI", MAGIC, WIRE_VERSION, FLAG_GROUP, 3) + b"\x02g1"
    with pytest.raises(CodecError, match="no message"):
        decode_group_frame(empty)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.tuples(group_ids, st.lists(messages, min_size=1, max_size=3)), min_size=1, max_size=4),
    st.data(),
)
def test_group_stream_decodes_the_same_however_it_is_split(
    batches: list[tuple[str, list[Message]]], data: st.DataObject
) -> None:
    batches = [(g, ms) for g, ms in batches if _valid_group_id(g)]
    stream = b"".join(encode_group(g, ms) for g, ms in batches)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=5)))
    dec = GroupFrameDecoder()
    got: list[tuple[str, list[Message]]] = []
    prev = 0
    for c in [*cuts, len(stream)]:
        got.extend(dec.feed(stream[prev:c]))
        prev = c
    assert got == batches
    assert dec.buffered == 0


def test_a_plain_or_handshake_frame_is_refused_on_a_group_stream() -> None:
    m = Message(MessageType.VOTE, "a", "b", 1)
    with pytest.raises(CodecError, match="group frame was expected"):
        GroupFrameDecoder().feed(encode(m))
    with pytest.raises(CodecError):
        GroupFrameDecoder().feed(encode_handshake(Handshake("c", "a", "b")))
    # ... and a group frame on a single-group stream (TcpTransport's FrameDecoder).
    with pytest.raises(CodecError, match="unknown frame flags"):
        FrameDecoder().feed(encode_group("g1", [m]))


def test_inner_frames_must_be_plain_message_frames_within_the_bound() -> None:
    m = Message(MessageType.APPEND, "a", "b", 1, entries=[Entry(1, 1, b"x" * 1000)])
    inner = bytearray(encode(m))
    inner[3] = FLAG_HANDSHAKE
    with pytest.raises(CodecError, match="bad message header"):
        decode_group_frame(encode_group_frame(group_tag("g"), [bytes(inner)]))
    with pytest.raises(CodecError, match="exceeds the limit"):
        decode_group_frame(encode_group("g", [m]), max_frame_bytes=500)


def test_oversized_group_frame_is_refused_from_its_header() -> None:
    header = struct.pack("<2sBBI", MAGIC, WIRE_VERSION, FLAG_GROUP, 1024 + GROUP_FRAME_OVERHEAD + 1)
    dec = GroupFrameDecoder(max_frame_bytes=1024)
    with pytest.raises(CodecError, match="exceeds the limit"):
        dec.feed(header)
    # A maximal message still fits in a group frame of its own, whatever its group id.
    m = Message(MessageType.APPEND, "a", "b", 1, data=b"")
    body_len = len(encode(m)) - HEADER_SIZE
    g = "g" * 255
    assert GroupFrameDecoder(max_frame_bytes=body_len).feed(encode_group(g, [m])) == [(g, [m])]


def test_group_codec_error_carries_the_groups_decoded_before_the_bad_frame() -> None:
    good = [
        ("g1", [Message(MessageType.VOTE, "a", "b", 1)]),
        ("g2", [Message(MessageType.VOTE, "a", "b", 2)]),
    ]
    stream = b"".join(encode_group(g, ms) for g, ms in good)
    dec = GroupFrameDecoder()
    with pytest.raises(CodecError) as info:
        dec.feed(stream + b"XX" + b"\x00" * 20)
    assert list(info.value.groups) == good
    with pytest.raises(CodecError, match="failed earlier"):
        dec.feed(stream)


@settings(max_examples=1000)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_only_ever_raise_codec_error_in_the_group_decoders(data: bytes) -> None:
    with contextlib.suppress(CodecError):
        GroupFrameDecoder(max_frame_bytes=1 << 16).feed(data)
    with contextlib.suppress(CodecError):
        decode_group_frame(data)
    header = struct.pack("<2sBBI", MAGIC, WIRE_VERSION, FLAG_GROUP, len(data))
    with contextlib.suppress(CodecError):
        GroupFrameDecoder().feed(header + data)


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(group_ids, st.lists(messages, min_size=1, max_size=3), st.data())
def test_mutated_group_frames_decode_or_raise_codec_error(
    group: str, msgs: list[Message], data: st.DataObject
) -> None:
    if not _valid_group_id(group):
        group = "g"
    frame = bytearray(encode_group(group, msgs))
    for _ in range(data.draw(st.integers(1, 6))):
        if not frame:
            break
        kind = data.draw(st.sampled_from(["flip", "set", "truncate", "insert", "delete"]))
        pos = data.draw(st.integers(0, len(frame) - 1))
        if kind == "flip":
            frame[pos] ^= 1 << data.draw(st.integers(0, 7))
        elif kind == "set":
            frame[pos] = data.draw(st.integers(0, 255))
        elif kind == "truncate":
            del frame[pos:]
        elif kind == "insert":
            frame[pos:pos] = data.draw(st.binary(min_size=1, max_size=8))
        else:
            del frame[pos : pos + data.draw(st.integers(1, 8))]
    if data.draw(st.booleans()) and len(frame) >= HEADER_SIZE:
        struct.pack_into("<I", frame, 4, len(frame) - HEADER_SIZE)
    try:
        for g, ms in GroupFrameDecoder().feed(bytes(frame)):
            # Whatever decodes re-encodes to the same thing (valid ids and field values only).
            assert ms and decode_group_frame(encode_group(g, ms)) == (g, ms)
    except CodecError:
        pass
