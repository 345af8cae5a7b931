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

The hot paths (:func:`encode`, :func:`decode`, the stream scans of :class:`FrameDecoder`
and :class:`GroupFrameDecoder`, :func:`group_tag`, :func:`encode_group_frame`,
:func:`decode_group_frame`) come from :mod:`raftlib._accel`: compiled in ``raftlib._core``
when it is built, else the pure reference in ``raftlib._pycore``. Both produce the same bytes
and raise the same :class:`CodecError` (same message) for the same input.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Generic, TypeVar

from raftlib._accel import (
    decode_group_frame as _decode_group_frame,
)
from raftlib._accel import (
    decode_message,
    encode_group_frame,
    encode_message,
    group_tag,
    scan_frames,
    scan_group_frames,
)
from raftlib._pycore import id_bytes
from raftlib.core.messages import Message
from raftlib.errors import CodecError

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

_Item = TypeVar("_Item")


encode = encode_message
"""Encode a message as one complete frame (header + body); see :func:`raftlib._pycore.encode_message`.

Raises :class:`CodecError` if the message cannot be represented (a negative or too large
integer, a non-``str`` node id, non-bytes payloads, snapshot meta without a membership...).
Compiled when the hot path is (:mod:`raftlib._accel`); the output is the same bytes either way.
"""

decode = decode_message
"""Decode one message body (the bytes after the frame header) into a :class:`Message`.

Raises :class:`CodecError`, and nothing else, for any malformed input.
"""


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
        return scan_frames(data, self.max_frame_bytes)


def group_header(body_len: int) -> bytes:
    """The 8-byte header of a group frame whose body (tag + message frames) is ``body_len`` bytes.

    A transport may queue ``group_header(n)``, the tag and the message frames as separate
    parts and write them with one join, copying each message's bytes only once.
    """
    return _HEADER.pack(MAGIC, WIRE_VERSION, FLAG_GROUP, body_len)


def encode_group(group_id: str, messages: Sequence[Message]) -> bytes:
    """Encode ``messages`` (at least one) of group ``group_id`` as one group frame."""
    return encode_group_frame(group_tag(group_id), [encode(m) for m in messages])


def decode_group_frame(
    frame: bytes | bytearray | memoryview, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
) -> tuple[str, list[Message]]:
    """Decode one complete group frame (header + body, nothing more) into ``(group id, messages)``.

    Raises :class:`CodecError`, and nothing else, for any malformed input.
    """
    return _decode_group_frame(frame, max_frame_bytes)


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
        return scan_group_frames(data, self.max_frame_bytes)


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
    c = id_bytes(hs.cluster_id, "cluster id")
    s = id_bytes(hs.sender, "sender")
    r = id_bytes(hs.receiver, "receiver")
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
