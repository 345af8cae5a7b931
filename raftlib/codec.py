"""Binary wire format of :class:`~raftlib.core.messages.Message` (versioned, length-prefixed, bounded).

Every frame starts with an 8-byte header, little endian::

    magic  b"RF"  (2 bytes)
    version       (u8)   WIRE_VERSION (1)
    flags         (u8)   0 for a message; FLAG_HANDSHAKE for the transport's handshake frames
    length        (u32)  number of body bytes that follow

A message body is a fixed 66-byte part (type, flags, the six integer fields and
the lengths of the variable parts), then ``frm``, ``to`` (UTF-8), ``data``,
``context``, the snapshot meta (if any), the entry headers (21 bytes each, all
together) and finally the entry payloads back to back.  See ``docs/transport.md``
for the byte layout table.

**Group frames** (header flag ``FLAG_GROUP``) carry the messages of one Raft group between
two multi-group hosts (``raftlib.transport.mux``): the body is the group id (u8 length +
UTF-8, 0..255 bytes; length 0 is the reserved host-level group ``""``) followed by one or
more complete message frames of that group, back to back. The inner frames are exactly what
:func:`encode` produces, so a sender encodes each message once and a host frames a whole
batch with one header; single-group connections never see them (``FrameDecoder`` refuses
the flag), multi-group connections carry nothing else (``GroupFrameDecoder``).

Decoding is strict: any deviation (bad magic, unknown version or flags, a frame
larger than the configured bound, lengths that do not add up to the body size,
negative integers, invalid UTF-8, duplicate node ids, an unknown message type)
raises :class:`CodecError` and nothing else, whatever the input bytes.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from itertools import accumulate, pairwise
from typing import Generic, TypeVar

from raftlib._accel import Entry
from raftlib.core.membership import Membership
from raftlib.core.messages import Message, MessageType, SnapshotMeta
from raftlib.errors import RaftError

__all__ = [
    "DEFAULT_MAX_FRAME_BYTES",
    "FLAG_GROUP",
    "FLAG_HANDSHAKE",
    "GROUP_FRAME_OVERHEAD",
    "GroupFrameDecoder",
    "HOST_GROUP",
    "HOST_PROTOCOL",
    "MAX_GROUP_ID_BYTES",
    "HEADER_SIZE",
    "MAGIC",
    "WIRE_VERSION",
    "CodecError",
    "FrameDecoder",
    "Handshake",
    "decode",
    "decode_frame",
    "decode_group_frame",
    "encode_group",
    "encode_group_frame",
    "group_header",
    "group_tag",
    "decode_handshake",
    "decode_handshake_ack",
    "encode",
    "encode_handshake",
    "encode_many",
    "encode_handshake_ack",
    "parse_header",
    "ANSWER_ACCEPT",
    "ANSWER_ACCEPT_PROVEN",
    "ANSWER_CHALLENGE",
    "ANSWER_PROOF",
    "ANSWER_REFUSE",
    "AUTH_HMAC_SHA256",
    "AUTH_MAC_BYTES",
    "AUTH_NONCE_BYTES",
    "AUTH_NONE",
    "decode_handshake_answer",
    "encode_handshake_answer",
]

MAGIC = b"RF"
"""First two bytes of every frame."""
WIRE_VERSION = 1
"""The only wire version this module speaks."""
FLAG_HANDSHAKE = 0x01
"""Header flag of the transport's handshake and handshake-answer frames (never a Message)."""
HOST_PROTOCOL = 0x0101
"""Protocol number in the hello of a multi-group host (high byte 1: group frames; low byte: the
wire version). A single-group transport speaks :data:`WIRE_VERSION`; each refuses the other."""
FLAG_GROUP = 0x02
"""Header flag of a group frame: a group id, then one or more message frames of that group."""
HOST_GROUP = ""
"""The reserved group id of host-level messages (liveness, quiescence) between multi-group hosts."""
MAX_GROUP_ID_BYTES = 255
"""Longest group id, in UTF-8 bytes (its length travels as one byte)."""
DEFAULT_MAX_FRAME_BYTES = 16 * 1024 * 1024
"""Default bound on a frame's body (16 MiB: AppendEntries batches and snapshot chunks are ~1 MiB)."""

GROUP_FRAME_OVERHEAD = 1 + MAX_GROUP_ID_BYTES + 8
"""Bytes a group frame's body may exceed ``max_frame_bytes`` by: its group id and one inner
frame header, so that one maximal message always fits in a group frame of its own."""

_MAX_INT = 2**63 - 1
_HEADER = struct.Struct("<2sBBI")
HEADER_SIZE = _HEADER.size
"""Size of the frame header (8 bytes)."""

# type, msg flags, term, log_term, index, commit, reject_hint, offset,
# len(frm), len(to), len(data), len(context), number of entries
_FIXED = struct.Struct("<BBqqqqqqHHIII")
_ENTRY = struct.Struct("<qqBI")  # index, term, type, len(data)
_SNAP = struct.Struct("<qqIIII")  # index, term, |voters|, |outgoing|, |learners|, |promoting|
_U16 = struct.Struct("<H")
_HANDSHAKE = struct.Struct("<HHHH")  # protocol version, len(cluster id), len(sender), len(receiver)
_ACK = struct.Struct("<BH")  # status (0 ok), len(reason)
_AUTH = struct.Struct("<BB")  # hello's optional auth extension: scheme, len(nonce)

AUTH_NONE = 0
"""Hello without authentication (no shared secret configured): the extension is absent."""
AUTH_HMAC_SHA256 = 1
"""Hello of a dialler that proves the cluster's shared secret by HMAC-SHA256 challenge/response."""
AUTH_NONCE_BYTES = 32
"""Size of each side's random nonce in the shared-secret handshake."""
AUTH_MAC_BYTES = 32
"""Size of an HMAC-SHA256 proof."""
_MAX_NONCE_BYTES = 64

ANSWER_ACCEPT = 0
"""Handshake answer: accepted (body: no data)."""
ANSWER_REFUSE = 1
"""Handshake answer: refused (data: the reason, UTF-8); either side may send it, then closes."""
ANSWER_CHALLENGE = 2
"""Acceptor's challenge to a dialler that offered HMAC-SHA256 (data: the acceptor's nonce)."""
ANSWER_PROOF = 3
"""Dialler's proof of the shared secret (data: its MAC over the transcript)."""
ANSWER_ACCEPT_PROVEN = 4
"""Acceptor accepts the dialler's proof and proves the secret in turn (data: its MAC)."""
_ANSWER_SIZES = {
    ANSWER_CHALLENGE: AUTH_NONCE_BYTES,
    ANSWER_PROOF: AUTH_MAC_BYTES,
    ANSWER_ACCEPT_PROVEN: AUTH_MAC_BYTES,
}

_F_REJECT = 0x01
_F_DONE = 0x02
_F_FORCE = 0x04
_F_SNAPSHOT = 0x08
_F_QUIET = 0x10
_F_ALL = _F_REJECT | _F_DONE | _F_FORCE | _F_SNAPSHOT | _F_QUIET

_Item = TypeVar("_Item")

_TYPES: dict[int, MessageType] = {int(t): t for t in MessageType}

_entry_structs: dict[int, struct.Struct] = {}
_ENTRY_STRUCT_CACHE_MAX = 512


class CodecError(RaftError, ValueError):
    """A frame or message cannot be encoded or decoded (malformed, oversized, unknown version...).

    When raised by :meth:`FrameDecoder.feed`, ``messages`` holds the valid
    messages that preceded the bad frame in the same call (a receiver may still
    deliver them before closing the stream); when raised by
    :meth:`GroupFrameDecoder.feed`, ``groups`` holds the valid ``(group id,
    messages)`` pairs that preceded it.
    """

    messages: tuple[Message, ...] = ()
    groups: tuple[tuple[str, list[Message]], ...] = ()


def _entries_struct(n: int) -> struct.Struct:
    """A Struct packing ``n`` entry headers in one call (cached for the usual batch sizes)."""
    s = _entry_structs.get(n)
    if s is None:
        s = struct.Struct("<" + "qqBI" * n)
        if len(_entry_structs) < _ENTRY_STRUCT_CACHE_MAX:
            _entry_structs[n] = s
    return s


def _id_bytes(node_id: object, what: str) -> bytes:
    if type(node_id) is not str:
        raise CodecError(f"{what} must be a str node id, not {type(node_id).__name__}")
    b = node_id.encode("utf-8")
    if len(b) > 0xFFFF:
        raise CodecError(f"{what} is longer than 65535 bytes")
    return b


def _encode_ids(ids: frozenset[str], parts: list[bytes]) -> None:
    for node_id in sorted(ids):
        b = _id_bytes(node_id, "membership node id")
        parts.append(_U16.pack(len(b)))
        parts.append(b)


def encode(msg: Message) -> bytes:
    """Encode ``msg`` as one complete frame (header + body).

    Raises :class:`CodecError` if the message cannot be represented (a
    negative or too large integer, a non-``str`` node id, non-bytes payloads,
    snapshot meta without a membership...).
    """
    try:
        frm = _id_bytes(msg.frm, "frm")
        to = _id_bytes(msg.to, "to")
        data = msg.data
        context = msg.context
        if not isinstance(data, bytes) or not isinstance(context, bytes):
            raise CodecError("data and context must be bytes")
        entries = msg.entries
        n = len(entries)
        flags = 0
        if msg.reject:
            flags |= _F_REJECT
        if msg.done:
            flags |= _F_DONE
        if msg.force:
            flags |= _F_FORCE
        if msg.quiet:
            flags |= _F_QUIET
        if min(msg.term, msg.log_term, msg.index, msg.commit, msg.reject_hint, msg.offset) < 0:
            raise CodecError("negative integer field")
        snap = msg.snapshot
        if snap is not None:
            flags |= _F_SNAPSHOT
            if snap.index < 0 or snap.term < 0:
                raise CodecError("negative snapshot index or term")
        parts: list[bytes] = [
            b"",  # frame header, filled in below
            _FIXED.pack(
                int(msg.type),
                flags,
                msg.term,
                msg.log_term,
                msg.index,
                msg.commit,
                msg.reject_hint,
                msg.offset,
                len(frm),
                len(to),
                len(data),
                len(context),
                n,
            ),
            frm,
            to,
            data,
            context,
        ]
        if snap is not None:
            mem = snap.membership
            if not isinstance(mem, Membership):
                raise CodecError("snapshot meta without a membership")
            parts.append(
                _SNAP.pack(
                    snap.index,
                    snap.term,
                    len(mem.voters),
                    len(mem.outgoing),
                    len(mem.learners),
                    len(mem.promoting),
                )
            )
            _encode_ids(mem.voters, parts)
            _encode_ids(mem.outgoing, parts)
            _encode_ids(mem.learners, parts)
            _encode_ids(mem.promoting, parts)
        if n:
            datas = [e.data for e in entries]
            flat: list[int] = [0] * (4 * n)
            flat[0::4] = [e.index for e in entries]
            flat[1::4] = [e.term for e in entries]
            flat[2::4] = [e.type for e in entries]
            flat[3::4] = map(len, datas)
            parts.append(_entries_struct(n).pack(*flat))
            parts.extend(datas)
        body_len = sum(map(len, parts))
        parts[0] = _HEADER.pack(MAGIC, WIRE_VERSION, 0, body_len)
        return b"".join(parts)
    except CodecError:
        raise
    except (struct.error, TypeError, ValueError, AttributeError, OverflowError) as exc:
        raise CodecError(f"cannot encode {msg!r}: {exc}") from exc


def _decode_ids(mv: memoryview, pos: int, count: int, end: int) -> tuple[frozenset[str], int]:
    ids: list[str] = []
    for _ in range(count):
        if pos + 2 > end:
            raise CodecError("truncated membership")
        (ln,) = _U16.unpack_from(mv, pos)
        pos += 2
        if pos + ln > end:
            raise CodecError("truncated membership node id")
        ids.append(str(mv[pos : pos + ln], "utf-8"))
        pos += ln
    s = frozenset(ids)
    if len(s) != count:
        raise CodecError("duplicate node id in membership")
    return s, pos


def _decode(mv: memoryview) -> Message:
    end = len(mv)
    if end < _FIXED.size:
        raise CodecError(f"message body too short ({end} bytes)")
    (
        mtype,
        flags,
        term,
        log_term,
        index,
        commit,
        reject_hint,
        offset,
        frm_len,
        to_len,
        data_len,
        ctx_len,
        n,
    ) = _FIXED.unpack_from(mv, 0)
    typ = _TYPES.get(mtype)
    if typ is None:
        raise CodecError(f"unknown message type {mtype}")
    if flags & ~_F_ALL:
        raise CodecError(f"unknown message flags 0x{flags:02x}")
    if min(term, log_term, index, commit, reject_hint, offset) < 0:
        raise CodecError("negative integer field")
    pos = _FIXED.size
    if pos + frm_len + to_len + data_len + ctx_len + n * _ENTRY.size > end:
        raise CodecError("message body truncated")
    frm = str(mv[pos : pos + frm_len], "utf-8")
    pos += frm_len
    to = str(mv[pos : pos + to_len], "utf-8")
    pos += to_len
    data = mv[pos : pos + data_len].tobytes()
    pos += data_len
    context = mv[pos : pos + ctx_len].tobytes()
    pos += ctx_len
    snapshot = None
    if flags & _F_SNAPSHOT:
        if pos + _SNAP.size > end:
            raise CodecError("truncated snapshot meta")
        s_index, s_term, nv, no, nl, np_ = _SNAP.unpack_from(mv, pos)
        if s_index < 0 or s_term < 0:
            raise CodecError("negative snapshot index or term")
        pos += _SNAP.size
        if pos + 2 * (nv + no + nl + np_) > end:
            raise CodecError("truncated membership")
        voters, pos = _decode_ids(mv, pos, nv, end)
        outgoing, pos = _decode_ids(mv, pos, no, end)
        learners, pos = _decode_ids(mv, pos, nl, end)
        promoting, pos = _decode_ids(mv, pos, np_, end)
        snapshot = SnapshotMeta(s_index, s_term, Membership(voters, outgoing, learners, promoting))
    entries: list[Entry] = []
    if n:
        hdr_end = pos + n * _ENTRY.size
        if hdr_end > end:
            raise CodecError("truncated entry headers")
        v = _entries_struct(n).unpack_from(mv, pos)
        ends = list(accumulate(v[3::4], initial=hdr_end))
        if ends[-1] != end:
            raise CodecError("entry payload lengths do not match the body size")
        datas = [mv[a:b].tobytes() for a, b in pairwise(ends)]
        entries = list(map(Entry, v[0::4], v[1::4], datas, v[2::4]))
    elif pos != end:
        raise CodecError(f"{end - pos} unexpected trailing bytes in message body")
    return Message(
        typ,
        frm,
        to,
        term,
        log_term,
        index,
        entries,
        commit,
        bool(flags & _F_REJECT),
        reject_hint,
        snapshot,
        offset,
        data,
        bool(flags & _F_DONE),
        context,
        bool(flags & _F_FORCE),
        bool(flags & _F_QUIET),
    )


def decode(frame_body: bytes | bytearray | memoryview) -> Message:
    """Decode one message body (the bytes after the frame header).

    Raises :class:`CodecError`, and nothing else, for any malformed input.
    """
    try:
        with memoryview(frame_body) as mv:
            if mv.format != "B" or mv.ndim != 1:
                raise CodecError("message body must be a flat byte buffer")
            return _decode(mv)
    except CodecError:
        raise
    except (struct.error, ValueError, TypeError, UnicodeDecodeError, IndexError, OverflowError) as exc:
        raise CodecError(f"malformed message body: {exc}") from exc


def parse_header(header: bytes | bytearray | memoryview, max_frame_bytes: int) -> tuple[int, int]:
    """Validate an 8-byte frame header; return ``(flags, body_length)``.

    Raises :class:`CodecError` on bad magic, an unknown version or flags, or a
    body longer than ``max_frame_bytes`` (checked before any body is read).
    """
    if len(header) < HEADER_SIZE:
        raise CodecError("truncated frame header")
    magic, version, flags, length = _HEADER.unpack_from(header, 0)
    if magic != MAGIC:
        raise CodecError(f"bad magic {bytes(magic)!r}")
    if version != WIRE_VERSION:
        raise CodecError(f"unknown wire version {version}")
    if flags & ~FLAG_HANDSHAKE:
        raise CodecError(f"unknown frame flags 0x{flags:02x}")
    if length > max_frame_bytes:
        raise CodecError(f"frame of {length} bytes exceeds the limit of {max_frame_bytes}")
    return flags, length


def decode_frame(
    frame: bytes | bytearray | memoryview, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
) -> Message:
    """Decode one complete message frame (header + body, nothing more)."""
    flags, length = parse_header(frame, max_frame_bytes)
    if flags:
        raise CodecError("handshake frame where a message was expected")
    if len(frame) != HEADER_SIZE + length:
        raise CodecError(f"frame length {len(frame)} does not match its header ({HEADER_SIZE + length})")
    return decode(memoryview(frame)[HEADER_SIZE:])


class _StreamDecoder(Generic[_Item]):
    """Buffering and failure rules of an incremental frame decoder; subclasses scan frames.

    ``feed`` returns what the new bytes complete, in order. After a :class:`CodecError`
    the stream is out of sync: the decoder stays failed and every later ``feed`` raises.
    """

    __slots__ = ("_buf", "_error", "max_frame_bytes")

    def __init__(self, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        self.max_frame_bytes = max_frame_bytes
        self._buf = bytearray()
        self._error: str | None = None

    @property
    def buffered(self) -> int:
        """Bytes held waiting for the rest of a frame."""
        return len(self._buf)

    def feed(self, data: bytes | bytearray | memoryview) -> list[_Item]:
        """Add ``data`` to the stream; return what it completes."""
        if self._error is not None:
            raise CodecError(f"decoder failed earlier: {self._error}")
        try:
            if self._buf:
                self._buf += data
                out, used = self._scan(self._buf)
                del self._buf[:used]
            else:
                out, used = self._scan(data)
                if used < len(data):
                    self._buf += memoryview(data)[used:]
            return out
        except CodecError as exc:
            # Keep only the text: the exception's traceback may still reference views of
            # the old buffer, so it is replaced rather than cleared in place.
            self._error = str(exc)
            self._buf = bytearray()
            raise

    def _scan(self, data: bytes | bytearray | memoryview) -> tuple[list[_Item], int]:
        raise NotImplementedError


class FrameDecoder(_StreamDecoder[Message]):
    """Incremental decoder of a byte stream of message frames.

    ``feed`` returns the messages completed by the new bytes, in order. Frame
    headers are validated as soon as they arrive, so an oversized frame is
    refused before its body is buffered. After a :class:`CodecError` the stream
    is out of sync: the decoder stays failed and every later ``feed`` raises.
    """

    __slots__ = ()

    def _scan(self, data: bytes | bytearray | memoryview) -> tuple[list[Message], int]:
        out: list[Message] = []
        pos = 0
        total = len(data)
        max_bytes = self.max_frame_bytes
        with memoryview(data) as mv:
            try:
                while total - pos >= HEADER_SIZE:
                    flags, length = parse_header(mv[pos : pos + HEADER_SIZE], max_bytes)
                    if flags:
                        raise CodecError("unexpected handshake frame in a message stream")
                    start = pos + HEADER_SIZE
                    if total - start < length:
                        break
                    out.append(decode(mv[start : start + length]))
                    pos = start + length
            except CodecError as exc:
                exc.messages = tuple(out)
                raise
        return out, pos


def group_tag(group_id: str) -> bytes:
    """The wire form of a group id in a group frame: u8 length + UTF-8 (``""`` is ``b"\\x00"``).

    Raises :class:`CodecError` for a non-``str`` id, one that cannot be encoded in
    UTF-8 (lone surrogates) or one longer than :data:`MAX_GROUP_ID_BYTES` bytes.
    Transports compute it once per group and reuse it for every frame.
    """
    if type(group_id) is not str:
        raise CodecError(f"group id must be a str, not {type(group_id).__name__}")
    try:
        b = group_id.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise CodecError(f"group id {group_id!r} is not valid UTF-8: {exc}") from None
    if len(b) > MAX_GROUP_ID_BYTES:
        raise CodecError(f"group id is {len(b)} bytes; at most {MAX_GROUP_ID_BYTES} are allowed")
    return bytes((len(b),)) + b


def encode_group_frame(tag: bytes, frames: Sequence[bytes]) -> bytes:
    """One group frame: header (flag :data:`FLAG_GROUP`), ``tag`` (from :func:`group_tag`),
    then ``frames`` (message frames from :func:`encode`, at least one) back to back.

    The caller keeps the body within the receiver's bound (``max_frame_bytes`` +
    :data:`GROUP_FRAME_OVERHEAD`); nothing is re-encoded here, only joined.
    """
    if len(frames) == 1:
        f = frames[0]
        return b"".join((_HEADER.pack(MAGIC, WIRE_VERSION, FLAG_GROUP, len(tag) + len(f)), tag, f))
    if not frames:
        raise CodecError("a group frame carries at least one message")
    return b"".join([group_header(len(tag) + sum(map(len, frames))), tag, *frames])


def group_header(body_len: int) -> bytes:
    """The 8-byte header of a group frame whose body (tag + message frames) is ``body_len`` bytes.

    A transport may queue ``group_header(n)``, the tag and the message frames as separate
    parts and write them with one join, copying each message's bytes only once.
    """
    return _HEADER.pack(MAGIC, WIRE_VERSION, FLAG_GROUP, body_len)


def encode_group(group_id: str, messages: Sequence[Message]) -> bytes:
    """Encode ``messages`` (at least one) of group ``group_id`` as one group frame."""
    return encode_group_frame(group_tag(group_id), [encode(m) for m in messages])


def _decode_group_body(mv: memoryview, pos: int, end: int, max_frame_bytes: int) -> tuple[str, list[Message]]:
    """Decode the group frame body ``mv[pos:end]``: the group id, then message frames up to its exact end."""
    if pos >= end:
        raise CodecError("empty group frame body")
    gend = pos + 1 + mv[pos]
    if gend > end:
        raise CodecError("truncated group id")
    group = str(mv[pos + 1 : gend], "utf-8")
    if gend == end:
        raise CodecError(f"group frame for {group!r} carries no message")
    pos = gend
    out: list[Message] = []
    unpack = _HEADER.unpack_from
    while pos < end:
        if end - pos < HEADER_SIZE:
            raise CodecError("truncated message header in a group frame")
        magic, version, flags, length = unpack(mv, pos)
        if magic != MAGIC or version != WIRE_VERSION or flags:
            raise CodecError(
                f"bad message header in a group frame (magic {bytes(magic)!r}, version {version}, "
                f"flags 0x{flags:02x})"
            )
        if length > max_frame_bytes:
            raise CodecError(
                f"message of {length} bytes in a group frame exceeds the limit {max_frame_bytes}"
            )
        start = pos + HEADER_SIZE
        pos = start + length
        if pos > end:
            raise CodecError("message runs past the end of its group frame")
        out.append(_decode(mv[start:pos]))
    return group, out


def decode_group_frame(
    frame: bytes | bytearray | memoryview, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
) -> tuple[str, list[Message]]:
    """Decode one complete group frame (header + body, nothing more) into ``(group id, messages)``.

    Raises :class:`CodecError`, and nothing else, for any malformed input.
    """
    try:
        with memoryview(frame) as mv:
            if mv.format != "B" or mv.ndim != 1:
                raise CodecError("a frame must be a flat byte buffer")
            length = _parse_group_header(mv, 0, max_frame_bytes)
            if len(mv) != HEADER_SIZE + length:
                raise CodecError(f"frame length {len(mv)} does not match its header ({HEADER_SIZE + length})")
            return _decode_group_body(mv, HEADER_SIZE, len(mv), max_frame_bytes)
    except CodecError:
        raise
    except (struct.error, ValueError, TypeError, UnicodeDecodeError, IndexError, OverflowError) as exc:
        raise CodecError(f"malformed group frame: {exc}") from exc


def _parse_group_header(mv: memoryview, pos: int, max_frame_bytes: int) -> int:
    """Check the header at ``pos`` is a group frame's within bounds; return its body length."""
    if len(mv) - pos < HEADER_SIZE:
        raise CodecError("truncated frame header")
    magic, version, flags, length = _HEADER.unpack_from(mv, pos)
    if magic != MAGIC:
        raise CodecError(f"bad magic {bytes(magic)!r}")
    if version != WIRE_VERSION:
        raise CodecError(f"unknown wire version {version}")
    if flags != FLAG_GROUP:
        raise CodecError(f"frame flags 0x{flags:02x} where a group frame was expected")
    if length > max_frame_bytes + GROUP_FRAME_OVERHEAD:
        raise CodecError(
            f"group frame of {length} bytes exceeds the limit of {max_frame_bytes + GROUP_FRAME_OVERHEAD}"
        )
    return int(length)


class GroupFrameDecoder(_StreamDecoder[tuple[str, list[Message]]]):
    """Incremental decoder of a multi-group connection's byte stream (group frames only).

    ``feed`` returns the ``(group id, messages)`` pairs completed by the new
    bytes, in stream order. A group frame's body may be up to ``max_frame_bytes``
    + :data:`GROUP_FRAME_OVERHEAD` bytes and each message in it up to
    ``max_frame_bytes``; headers are checked as soon as they arrive, so an
    oversized frame is refused before its body is buffered. A plain message
    frame, a handshake frame or any malformed byte raises :class:`CodecError`
    (and nothing else); the decoder then stays failed, like :class:`FrameDecoder`.
    """

    __slots__ = ()

    def _scan(self, data: bytes | bytearray | memoryview) -> tuple[list[tuple[str, list[Message]]], int]:
        out: list[tuple[str, list[Message]]] = []
        pos = 0
        total = len(data)
        max_bytes = self.max_frame_bytes
        with memoryview(data) as mv:
            try:
                try:
                    unpack = _HEADER.unpack_from
                    limit = max_bytes + GROUP_FRAME_OVERHEAD
                    while total - pos >= HEADER_SIZE:
                        magic, version, flags, length = unpack(mv, pos)
                        if magic != MAGIC or version != WIRE_VERSION or flags != FLAG_GROUP or length > limit:
                            _parse_group_header(mv, pos, max_bytes)  # raises, naming what is wrong
                        start = pos + HEADER_SIZE
                        end = start + length
                        if end > total:
                            break
                        out.append(_decode_group_body(mv, start, end, max_bytes))
                        pos = end
                except CodecError:
                    raise
                except (
                    struct.error,
                    ValueError,
                    TypeError,
                    UnicodeDecodeError,
                    IndexError,
                    OverflowError,
                ) as exc:
                    raise CodecError(f"malformed group frame: {exc}") from exc
            except CodecError as exc:
                exc.groups = tuple(out)
                raise
        return out, pos


class Handshake:
    """First frame on a transport connection: who connects to whom, in which cluster.

    ``auth``/``nonce``: :data:`AUTH_NONE` and ``b""`` when the dialler has no
    shared secret; :data:`AUTH_HMAC_SHA256` and its fresh random nonce when it
    means to prove one (the acceptor then answers with a challenge).
    """

    __slots__ = ("auth", "cluster_id", "nonce", "protocol", "receiver", "sender")

    def __init__(
        self,
        cluster_id: str,
        sender: str,
        receiver: str,
        protocol: int = WIRE_VERSION,
        *,
        auth: int = AUTH_NONE,
        nonce: bytes = b"",
    ) -> None:
        self.cluster_id = cluster_id
        self.sender = sender
        self.receiver = receiver
        self.protocol = protocol
        self.auth = auth
        self.nonce = nonce

    def _key(self) -> tuple[str, str, str, int, int, bytes]:
        return (self.cluster_id, self.sender, self.receiver, self.protocol, self.auth, self.nonce)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Handshake) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        auth = f", auth={self.auth}, nonce={self.nonce.hex()}" if self.auth or self.nonce else ""
        return (
            f"Handshake(cluster_id={self.cluster_id!r}, sender={self.sender!r}, "
            f"receiver={self.receiver!r}, protocol={self.protocol}{auth})"
        )


def _frame(flags: int, body: bytes) -> bytes:
    return _HEADER.pack(MAGIC, WIRE_VERSION, flags, len(body)) + body


def encode_handshake(hs: Handshake) -> bytes:
    """Encode a handshake as one complete frame (header flag :data:`FLAG_HANDSHAKE`).

    Without authentication the body is exactly the version-1 hello; with it, the
    auth extension (scheme u8, len(nonce) u8, nonce) follows the three ids.
    """
    c = _id_bytes(hs.cluster_id, "cluster id")
    s = _id_bytes(hs.sender, "sender")
    r = _id_bytes(hs.receiver, "receiver")
    body = _HANDSHAKE.pack(hs.protocol, len(c), len(s), len(r)) + c + s + r
    if hs.auth != AUTH_NONE or hs.nonce:
        if not 0 < hs.auth <= 0xFF:
            raise CodecError(f"bad auth scheme {hs.auth!r}")
        if type(hs.nonce) is not bytes or not 0 < len(hs.nonce) <= _MAX_NONCE_BYTES:
            raise CodecError(f"an authenticating hello needs a nonce of 1..{_MAX_NONCE_BYTES} bytes")
        body += _AUTH.pack(hs.auth, len(hs.nonce)) + hs.nonce
    return _frame(FLAG_HANDSHAKE, body)


def decode_handshake(body: bytes | bytearray | memoryview) -> Handshake:
    """Decode a handshake body; raises :class:`CodecError` on anything malformed."""
    try:
        with memoryview(body) as mv:
            if len(mv) < _HANDSHAKE.size:
                raise CodecError("truncated handshake")
            proto, lc, ls, lr = _HANDSHAKE.unpack_from(mv, 0)
            pos = _HANDSHAKE.size
            end = pos + lc + ls + lr
            if end > len(mv):
                raise CodecError("handshake lengths do not match its size")
            c = str(mv[pos : pos + lc], "utf-8")
            pos += lc
            s = str(mv[pos : pos + ls], "utf-8")
            pos += ls
            r = str(mv[pos : pos + lr], "utf-8")
            if end == len(mv):
                return Handshake(c, s, r, proto)
            if len(mv) - end < _AUTH.size:
                raise CodecError("handshake lengths do not match its size")
            auth, ln = _AUTH.unpack_from(mv, end)
            if auth == AUTH_NONE or not 0 < ln <= _MAX_NONCE_BYTES or end + _AUTH.size + ln != len(mv):
                raise CodecError("malformed handshake auth extension")
            nonce = bytes(mv[end + _AUTH.size :])
            return Handshake(c, s, r, proto, auth=auth, nonce=nonce)
    except CodecError:
        raise
    except (struct.error, ValueError, TypeError, UnicodeDecodeError) as exc:
        raise CodecError(f"malformed handshake: {exc}") from exc


def encode_handshake_answer(status: int, data: bytes = b"") -> bytes:
    """Encode a handshake answer frame: status u8 (``ANSWER_*``), len(data) u16, data.

    ``data`` is empty for :data:`ANSWER_ACCEPT`, the UTF-8 reason for
    :data:`ANSWER_REFUSE` (cut to 65535 bytes), and a nonce or MAC of its fixed
    size for the shared-secret steps.
    """
    if status == ANSWER_REFUSE:
        data = data[:0xFFFF]
    elif status == ANSWER_ACCEPT:
        if data:
            raise CodecError("an accept answer carries no data")
    elif _ANSWER_SIZES.get(status) != len(data):
        raise CodecError(f"bad handshake answer: status {status} with {len(data)} bytes of data")
    return _frame(FLAG_HANDSHAKE, _ACK.pack(status, len(data)) + data)


def decode_handshake_answer(body: bytes | bytearray | memoryview) -> tuple[int, bytes]:
    """Decode any handshake answer into ``(status, data)``; sizes are checked per status."""
    try:
        with memoryview(body) as mv:
            if len(mv) < _ACK.size:
                raise CodecError("truncated handshake answer")
            status, ln = _ACK.unpack_from(mv, 0)
            if _ACK.size + ln != len(mv):
                raise CodecError("malformed handshake answer")
            if status == ANSWER_ACCEPT:
                ok = ln == 0
            elif status == ANSWER_REFUSE:
                ok = True
            else:
                ok = _ANSWER_SIZES.get(status) == ln
            if not ok:
                raise CodecError(f"malformed handshake answer (status {status}, {ln} bytes)")
            return status, bytes(mv[_ACK.size :])
    except CodecError:
        raise
    except (struct.error, ValueError, TypeError) as exc:
        raise CodecError(f"malformed handshake answer: {exc}") from exc


def encode_handshake_ack(ok: bool, reason: str = "") -> bytes:
    """Encode the accepting side's answer to a handshake (``ok``, or a reason for refusing)."""
    if ok:
        return encode_handshake_answer(ANSWER_ACCEPT)
    return encode_handshake_answer(ANSWER_REFUSE, reason.encode("utf-8"))


def decode_handshake_ack(body: bytes | bytearray | memoryview) -> tuple[bool, str]:
    """Decode an accept/refuse answer into ``(ok, reason)`` (other statuses are a :class:`CodecError`)."""
    status, data = decode_handshake_answer(body)
    if status not in (ANSWER_ACCEPT, ANSWER_REFUSE):
        raise CodecError(f"expected an accept or refuse answer, got status {status}")
    return status == ANSWER_ACCEPT, str(data, "utf-8", "replace")


def encode_many(messages: Sequence[Message]) -> bytes:
    """Encode several messages into one byte string of consecutive frames."""
    return b"".join([encode(m) for m in messages])
