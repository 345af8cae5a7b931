"""Property tests: the compiled wire codec behaves exactly like the pure reference.

Rule checked: for every input, ``raftlib._core``'s codec functions give the same bytes
(encoding), the same decoded messages (decoding) and the same :class:`CodecError` -- same
message, same partial results (``messages``/``groups``) -- as ``raftlib._pycore``'s, and
neither raises anything but :class:`CodecError` on bad input. Inputs: random valid messages,
messages holding values the format cannot carry, random byte strings, and valid message and
group frames that are mutated, truncated, or given a fixed-up length.
"""

from __future__ import annotations

import os
import struct
import time
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import raftlib._accel as accel
from raftlib import _pycore, codec
from raftlib.core.membership import Membership
from raftlib.core.messages import Message, MessageType, SnapshotMeta
from raftlib.errors import CodecError

try:
    from raftlib import _core
except ImportError:  # not built: the differential tests are skipped
    _core = None

ENTRY_CLASSES: tuple[type, ...] = (_pycore.Entry,) if _core is None else (_pycore.Entry, _core.Entry)
needs_compiled = pytest.mark.skipif(_core is None, reason="raftlib._core is not built (run `make build`)")

EXAMPLES = int(os.environ.get("RAFTLIB_HYPOTHESIS_EXAMPLES", "150"))
SETTINGS = settings(max_examples=2 * EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])

CODEC_NAMES = [
    "encode_message",
    "decode_message",
    "scan_frames",
    "group_tag",
    "encode_group_frame",
    "decode_group_frame",
    "scan_group_frames",
]

MAX_INT = 2**63 - 1
ints = st.integers(min_value=0, max_value=MAX_INT)
node_ids = st.text(max_size=12)
small_bytes = st.binary(max_size=48)
id_sets = st.frozensets(node_ids, max_size=4)
memberships = st.builds(Membership, voters=id_sets, outgoing=id_sets, learners=id_sets, promoting=id_sets)


def messages(entry_cls: Any) -> st.SearchStrategy[Message]:
    """Valid messages whose entries are ``entry_cls`` objects."""
    entries = st.lists(
        st.builds(entry_cls, index=ints, term=ints, data=small_bytes, type=st.integers(0, 255)),
        max_size=6,
    )
    return st.builds(
        Message,
        type=st.sampled_from(list(MessageType)),
        frm=node_ids,
        to=node_ids,
        term=ints,
        log_term=ints,
        index=ints,
        entries=entries,
        commit=ints,
        reject=st.booleans(),
        reject_hint=ints,
        snapshot=st.none() | st.builds(SnapshotMeta, index=ints, term=ints, membership=memberships),
        offset=ints,
        data=small_bytes,
        done=st.booleans(),
        context=small_bytes,
        force=st.booleans(),
        quiet=st.booleans(),
    )


def _entry_cls() -> Any:
    return _core.Entry if _core is not None else _pycore.Entry


def norm(x: Any) -> Any:
    """A comparable form of a decode result: entries of either Entry class become tuples."""
    if isinstance(x, Message):
        return (
            ("type", type(x.type), x.type),
            *((name, norm(getattr(x, name))) for name in Message.__slots__ if name != "type"),
        )
    if isinstance(x, ENTRY_CLASSES):
        return ("Entry", x.index, x.term, x.type, x.data)
    if isinstance(x, (list, tuple)):
        return (type(x).__name__, *map(norm, x))
    return (type(x).__name__, x)


def outcome(fn: Callable[..., Any], *args: Any) -> Any:
    """What ``fn(*args)`` gives: its normalised result, or the CodecError's text and partial results.

    Any other exception propagates (and fails the test): a decoder raises CodecError only.
    """
    try:
        return ("ok", norm(fn(*args)))
    except CodecError as exc:
        return ("CodecError", str(exc), norm(exc.messages), norm(exc.groups))


def same(name: str, *args: Any) -> Any:
    """Run codec function ``name`` of both modules on ``args``; require the same outcome."""
    assert _core is not None
    want = outcome(getattr(_pycore, name), *args)
    got = outcome(getattr(_core, name), *args)
    assert got == want, (name, args)
    return want


def mutate(frame: bytes, data: st.DataObject, header_at: list[int]) -> bytes:
    """``frame`` with a few random flips, sets, truncations, insertions and deletions.

    Sometimes a length field (at one of ``header_at``) is fixed up afterwards, so that the
    body parser, not just the header check, sees the damage.
    """
    buf = bytearray(frame)
    for _ in range(data.draw(st.integers(1, 5))):
        if not buf:
            break
        kind = data.draw(st.sampled_from(["flip", "set", "truncate", "insert", "delete"]))
        pos = data.draw(st.integers(0, len(buf) - 1))
        if kind == "flip":
            buf[pos] ^= 1 << data.draw(st.integers(0, 7))
        elif kind == "set":
            buf[pos] = data.draw(st.sampled_from([0, 1, 0x7F, 0x80, 0xFF]))
        elif kind == "truncate":
            del buf[pos:]
        elif kind == "insert":
            buf[pos:pos] = data.draw(st.binary(min_size=1, max_size=8))
        else:
            del buf[pos : pos + data.draw(st.integers(1, 8))]
    if header_at and data.draw(st.booleans()):
        at = data.draw(st.sampled_from(header_at))
        if len(buf) >= at + 8:
            struct.pack_into("<I", buf, at + 4, len(buf) - at - 8)
    return bytes(buf)


def check_all_decoders(buf: bytes, max_frame_bytes: int) -> None:
    """Every decoding entry point agrees on ``buf`` (as bytes, bytearray and memoryview)."""
    for form in (buf, bytearray(buf), memoryview(buf)):
        same("decode_message", form)
        same("scan_frames", form, max_frame_bytes)
        same("decode_group_frame", form, max_frame_bytes)
        same("scan_group_frames", form, max_frame_bytes)
    if len(buf) >= 8:
        same("decode_message", buf[8:])


def test_codec_reexports_the_selected_implementation() -> None:
    """Rule: raftlib.codec's hot paths are the ones raftlib._accel selected (compiled or pure)."""
    assert codec.encode is accel.encode_message is accel.impl.encode_message
    assert codec.decode is accel.decode_message is accel.impl.decode_message
    assert codec.group_tag is accel.impl.group_tag
    assert codec.encode_group_frame is accel.impl.encode_group_frame
    assert codec.CodecError is CodecError
    for name in CODEC_NAMES:
        assert getattr(accel, name) is getattr(accel.impl, name), name
        assert getattr(_pycore, name).__doc__, name


def test_pure_codec_constants_agree_with_the_codec() -> None:
    """Rule: the pure codec's private copies of the wire constants are the documented ones."""
    assert _pycore._MAGIC == codec.MAGIC
    assert _pycore._WIRE_VERSION == codec.WIRE_VERSION
    assert _pycore._FLAG_GROUP == codec.FLAG_GROUP
    assert _pycore._MAX_GROUP_ID_BYTES == codec.MAX_GROUP_ID_BYTES
    assert _pycore._GROUP_FRAME_OVERHEAD == codec.GROUP_FRAME_OVERHEAD
    assert _pycore._HEADER_SIZE == codec.HEADER_SIZE


@needs_compiled
def test_compiled_module_has_the_codec_names() -> None:
    for name in CODEC_NAMES:
        assert callable(getattr(_core, name)), name
        assert getattr(_core, name).__doc__, name


@needs_compiled
@SETTINGS
@given(st.data())
def test_compiled_encode_gives_the_reference_bytes(data: st.DataObject) -> None:
    """Rule: byte-for-byte identical frames for valid messages, and the same decode of them."""
    msg = data.draw(messages(_entry_cls()))
    frame = _core.encode_message(msg)
    assert frame == _pycore.encode_message(msg)
    # Messages holding the pure Entry take the reference path of the compiled module.
    pure_entries = [_pycore.Entry(e.index, e.term, e.data, e.type) for e in msg.entries]
    msg2 = Message(**{n: getattr(msg, n) for n in Message.__slots__ if n != "entries"}, entries=pure_entries)
    assert _core.encode_message(msg2) == frame
    assert same("decode_message", frame[8:])[0] == "ok"
    assert same("scan_frames", frame + frame[:5], 1 << 20)[0] == "ok"


odd_ints = st.sampled_from([-1, -(2**63), 2**63, 2**64, True, False, 1.0, None, "1"])


@needs_compiled
@SETTINGS
@given(st.data())
def test_unencodable_messages_give_the_reference_error(data: st.DataObject) -> None:
    """Rule: a message the format cannot carry raises the same CodecError from both."""
    msg = data.draw(messages(_entry_cls()))
    field = data.draw(
        st.sampled_from(
            [
                "term",
                "log_term",
                "index",
                "commit",
                "reject_hint",
                "offset",
                "frm",
                "to",
                "data",
                "context",
                "reject",
                "done",
                "force",
                "quiet",
                "type",
                "entries",
                "snapshot",
                "snap_index",
                "snap_ids",
            ]
        )
    )
    if field in ("frm", "to"):
        value: Any = data.draw(st.sampled_from([None, 1, b"n1", "\udc80", "x" * 65536, "é" * 40000]))
    elif field in ("data", "context"):
        value = data.draw(st.sampled_from(["text", bytearray(b"x"), None, memoryview(b"x")]))
    elif field in ("reject", "done", "force", "quiet"):
        value = data.draw(st.sampled_from([1, 0, None, "yes", []]))
    elif field == "type":
        value = data.draw(st.sampled_from([0, 5, 255, 256, -1, None, "APPEND", 5.0]))
    elif field == "entries":
        value = data.draw(st.sampled_from([(_entry_cls()(1, 1, b"x"),), [None], [1, 2], None, "ab"]))
    elif field == "snapshot":
        value = data.draw(
            st.sampled_from([SnapshotMeta(1, 1, None), SnapshotMeta(-1, 1, Membership(frozenset())), 5])  # type: ignore[arg-type]
        )
    elif field == "snap_index":
        field, value = "snapshot", SnapshotMeta(data.draw(odd_ints), 1, Membership(frozenset({"a"})))  # type: ignore[arg-type]
    elif field == "snap_ids":
        ids = data.draw(st.sampled_from([frozenset({3}), frozenset({"a", 3}), {"a", "b"}, ["b", "a"], None]))
        field, value = "snapshot", SnapshotMeta(1, 1, Membership(ids))
    else:
        value = data.draw(odd_ints)
    setattr(msg, field, value)
    same("encode_message", msg)


@needs_compiled
@SETTINGS
@given(st.binary(max_size=200), st.sampled_from([0, 40, 1 << 16, -1]))
def test_random_bytes_give_the_reference_result(buf: bytes, max_frame_bytes: int) -> None:
    """Rule: arbitrary bytes decode identically or raise the same CodecError, never anything else."""
    check_all_decoders(buf, max_frame_bytes)


@needs_compiled
@SETTINGS
@given(st.data())
def test_mutated_message_frames_give_the_reference_result(data: st.DataObject) -> None:
    """Rule: damaged message streams (mutated, truncated, re-lengthed) give identical outcomes."""
    msgs = data.draw(st.lists(messages(_entry_cls()), min_size=1, max_size=3))
    frames = [_pycore.encode_message(m) for m in msgs]
    starts = [sum(map(len, frames[:i])) for i in range(len(frames))]
    stream = mutate(b"".join(frames), data, starts)
    check_all_decoders(stream, data.draw(st.sampled_from([1 << 20, 70, 200])))
    for cut in data.draw(st.lists(st.integers(0, len(stream)), max_size=3)):
        same("scan_frames", stream[:cut], 1 << 20)
        same("decode_message", stream[8:cut])


group_ids = st.text(max_size=6) | st.sampled_from(["", "g" * 255, "é" * 127])


@needs_compiled
@SETTINGS
@given(st.data())
def test_mutated_group_frames_give_the_reference_result(data: st.DataObject) -> None:
    """Rule: damaged group streams give identical outcomes, partial groups included."""
    batches = data.draw(
        st.lists(
            st.tuples(group_ids, st.lists(messages(_entry_cls()), min_size=1, max_size=3)),
            min_size=1,
            max_size=3,
        )
    )
    frames = []
    for g, ms in batches:
        tag = _pycore.group_tag(g)
        frames.append(_pycore.encode_group_frame(tag, [_pycore.encode_message(m) for m in ms]))
        assert _core.encode_group_frame(tag, [_core.encode_message(m) for m in ms]) == frames[-1]
    # Header offsets: each group frame's, and each inner message frame's.
    heads: list[int] = []
    pos = 0
    for f in frames:
        heads.append(pos)
        inner = pos + 8 + 1 + f[8]
        while inner < pos + len(f):
            heads.append(inner)
            inner += 8 + struct.unpack_from("<I", f, inner - pos + 4)[0]
        pos += len(f)
    stream = b"".join(frames)
    assert same("scan_group_frames", stream, 1 << 20)[0] == "ok"
    damaged = mutate(stream, data, heads)
    check_all_decoders(damaged, data.draw(st.sampled_from([1 << 20, 300, 60])))
    for cut in data.draw(st.lists(st.integers(0, len(damaged)), max_size=3)):
        same("scan_group_frames", damaged[:cut], 1 << 20)


@needs_compiled
@SETTINGS
@given(
    st.one_of(st.text(max_size=300), st.sampled_from(["\udc80", "a\ud800b", None, 7, b"g"])),
    st.one_of(st.binary(max_size=4), st.sampled_from([bytearray(b"\x01g"), None])),
    st.one_of(
        st.lists(st.binary(max_size=20), max_size=4),
        st.tuples(st.binary(max_size=20)),
        st.sampled_from([[bytearray(b"ab")], [memoryview(b"cd"), b"ef"], [None], (), "ab"]),
    ),
)
def test_group_helpers_give_the_reference_result(group_id: Any, tag: Any, frames: Any) -> None:
    """Rule: group_tag and encode_group_frame match the reference, errors included."""
    same("group_tag", group_id)
    try:
        want: Any = ("ok", _pycore.encode_group_frame(tag, frames))
    except Exception as exc:
        want = (type(exc), str(exc))
    try:
        got: Any = ("ok", _core.encode_group_frame(tag, frames))
    except Exception as exc:
        got = (type(exc), str(exc))
    assert got == want


@needs_compiled
def test_odd_buffers_and_bounds_give_the_reference_result() -> None:
    """Rule: buffers that are not flat bytes, and unusual bounds, give the reference outcome."""
    frame = _pycore.encode_message(Message(MessageType.HEARTBEAT, "a", "b", 1, commit=2))
    group = _pycore.encode_group_frame(_pycore.group_tag("g"), [frame])
    released = memoryview(frame)
    released.release()
    for buf in (memoryview(frame * 2)[::2], memoryview(frame).cast("H"), released):
        same("decode_message", buf)
        same("decode_group_frame", buf, 1 << 20)
    for bound in (2**70, -(2**70), 10**3):
        same("scan_frames", frame, bound)
        same("scan_group_frames", group, bound)
        same("decode_group_frame", group, bound)


@pytest.mark.parametrize("name", ["pure", "compiled"])
def test_hostile_lengths_are_refused_without_allocating(name: str) -> None:
    """Rule: lengths are checked against the buffer before use: a 66-byte body claiming 4 GiB
    payloads and 2**32 - 1 entries is refused at once, by either implementation."""
    mod = _pycore if name == "pure" else _core
    if mod is None:
        pytest.skip("raftlib._core is not built")
    body = bytearray(
        struct.pack(
            "<BBqqqqqqHHIII", 5, 0, 1, 1, 1, 1, 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF
        )
    )
    snap = bytearray(struct.pack("<BBqqqqqqHHIII", 9, 0x08, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0))
    snap += struct.pack("<qqIIII", 1, 1, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF)
    ents = bytearray(struct.pack("<BBqqqqqqHHIII", 5, 0, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 2))
    ents += struct.pack("<qqBI", 1, 1, 0, 0xFFFFFFFF) * 2
    t0 = time.perf_counter()
    for b in (body, snap, ents):
        with pytest.raises(CodecError):
            mod.decode_message(bytes(b))
        with pytest.raises(CodecError):
            mod.scan_frames(struct.pack("<2sBBI", b"RF", 1, 0, len(b)) + b, 1 << 20)
    assert time.perf_counter() - t0 < 1.0


@needs_compiled
def test_compiled_codec_decides_valid_input_without_the_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rule: valid messages and frames, and the usual decoding errors, are handled in compiled
    code (the reference is only for unusual inputs): with the reference unreachable, they still work."""
    ents = [_core.Entry(10 + i, 3, bytes([i]) * i, i % 2) for i in range(5)]
    meta = SnapshotMeta(9, 2, Membership(frozenset({"a", "b"}), frozenset({"c"}), frozenset({"d"})))
    msgs = [
        Message(MessageType.APPEND, "a", "b", 3, log_term=3, index=9, entries=ents, commit=8),
        Message(MessageType.SNAPSHOT, "a", "é", 3, snapshot=meta, data=b"chunk", done=True),
        Message(MessageType.VOTE, "a", "b", 4, force=True, reject=True, quiet=True, context=b"c"),
    ]
    frames = [_pycore.encode_message(m) for m in msgs]
    tag = _pycore.group_tag("g-1")
    group = _pycore.encode_group_frame(tag, frames)
    monkeypatch.setattr(_core, "_pycore", None)
    assert [_core.encode_message(m) for m in msgs] == frames
    assert [_core.decode_message(f[8:]) for f in frames] == msgs
    assert _core.scan_frames(b"".join(frames) + b"RF", 1 << 20) == (msgs, sum(map(len, frames)))
    assert _core.group_tag("g-1") == tag
    assert _core.encode_group_frame(tag, frames) == group
    assert _core.decode_group_frame(group, 1 << 20) == ("g-1", msgs)
    assert _core.scan_group_frames(group * 2, 1 << 20) == ([("g-1", msgs)] * 2, 2 * len(group))
    with pytest.raises(CodecError, match="unknown message type 99"):
        _core.decode_message(b"\x63" + frames[0][9:])
    with pytest.raises(CodecError, match="malformed message body: 'utf-8' codec can't decode"):
        _core.decode_message(frames[0][8:58] + b"\x01\x00" + frames[0][60:74] + b"\xff" + frames[0][75:])
