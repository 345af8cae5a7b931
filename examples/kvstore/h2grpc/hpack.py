"""HPACK (RFC 7541): the header compression of HTTP/2, as a gRPC server needs it.

Owns: decoding a peer's header blocks (static table, the connection's dynamic table, Huffman
strings) and encoding this server's own headers.  The server encodes only literal fields that are
never added to the peer's table (RFC 7541 §6.2.2) and static-table references, so it keeps no
encoder state and the peer's SETTINGS_HEADER_TABLE_SIZE never matters to it.

Invariant: a :class:`Decoder` sees every header block of its connection, in order (§2.2: the
dynamic table is connection state); a block that does not decode is a connection error
(COMPRESSION_ERROR), after which the decoder must not be used again.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import deque
from functools import lru_cache

__all__ = ["Decoder", "HpackError", "encode_header", "encode_indexed", "huffman_decode"]


class HpackError(ValueError):
    """A header block that does not decode (a COMPRESSION_ERROR of the connection)."""


# §A: the static table, index 1..61.
STATIC_TABLE: tuple[tuple[str, str], ...] = (
    (":authority", ""), (":method", "GET"), (":method", "POST"), (":path", "/"),
    (":path", "/index.html"), (":scheme", "http"), (":scheme", "https"), (":status", "200"),
    (":status", "204"), (":status", "206"), (":status", "304"), (":status", "400"),
    (":status", "404"), (":status", "500"), ("accept-charset", ""), ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""), ("accept-ranges", ""), ("accept", ""), ("access-control-allow-origin", ""),
    ("age", ""), ("allow", ""), ("authorization", ""), ("cache-control", ""),
    ("content-disposition", ""), ("content-encoding", ""), ("content-language", ""), ("content-length", ""),
    ("content-location", ""), ("content-range", ""), ("content-type", ""), ("cookie", ""),
    ("date", ""), ("etag", ""), ("expect", ""), ("expires", ""),
    ("from", ""), ("host", ""), ("if-match", ""), ("if-modified-since", ""),
    ("if-none-match", ""), ("if-range", ""), ("if-unmodified-since", ""), ("last-modified", ""),
    ("link", ""), ("location", ""), ("max-forwards", ""), ("proxy-authenticate", ""),
    ("proxy-authorization", ""), ("range", ""), ("referer", ""), ("refresh", ""),
    ("retry-after", ""), ("server", ""), ("set-cookie", ""), ("strict-transport-security", ""),
    ("transfer-encoding", ""), ("user-agent", ""), ("vary", ""), ("via", ""),
    ("www-authenticate", ""),
)  # fmt: skip
STATIC_NAME_INDEX: dict[str, int] = {}
for _i, (_name, _) in enumerate(STATIC_TABLE, start=1):
    STATIC_NAME_INDEX.setdefault(_name, _i)

# §B: the Huffman code's length in bits for each symbol 0..256 (256 is EOS).  The code is canonical
# (codes of one length are consecutive, in symbol order, and each length starts where the shorter
# ones end), so these lengths define it; tests/test_h2grpc.py checks RFC 7541's examples (§C.4, §C.6).
_CODE_LENGTHS = bytes.fromhex(
    "0d171c1c1c1c1c1c1c181e1c1c1e1c1c1c1c1c1c1c1c1e1c1c1c1c1c1c1c1c1c060a0a0c0d06080b0a0a080b0806"
    "06060505050606060606060607080f060c0a0d06070707070707070707070707070707070707070707070807080d"
    "130d0e060f05060506050606060507070606060506070605050607070707070f0b0e0d1c14161414161616171617"
    "17171717181718181617181717171715161716171718161514161617171517161618151617171515161517161717"
    "14161616171616171a1a1413161716191a1a1a1b1b1a181913151a1b1b1a1b1815151a1a1c1b1b1b141814151615"
    "15171616191918181a171a1b1a1a1b1b1b1b1b1c1b1b1b1b1b1a1e"
)
assert len(_CODE_LENGTHS) == 257
EOS = 256
_MAX_BITS = 30


def _canonical() -> tuple[list[int], list[int], list[tuple[int, int, int]]]:
    """(code of each symbol, symbols in code order, per length: (length, first code, offset))."""
    order = sorted(range(257), key=lambda s: (_CODE_LENGTHS[s], s))
    codes = [0] * 257
    per_length: list[tuple[int, int, int]] = []
    code = -1
    prev = _CODE_LENGTHS[order[0]]
    for i, sym in enumerate(order):
        length = _CODE_LENGTHS[sym]
        code = (code + 1) << (length - prev) if i else 0
        prev = length
        codes[sym] = code
        if not per_length or per_length[-1][0] != length:
            per_length.append((length, code, i))
    return codes, order, per_length


_CODES, _SYMBOLS, _PER_LENGTH = _canonical()
# For each code length L: every 30-bit window below LIMIT (left-aligned end of L's codes) starts with
# a code of length <= L, so the first length whose limit exceeds the window is the symbol's.
_LIMITS: list[tuple[int, int, int, int]] = []
for _idx, (_len, _first, _offset) in enumerate(_PER_LENGTH):
    _count = (_PER_LENGTH[_idx + 1][2] if _idx + 1 < len(_PER_LENGTH) else 257) - _offset
    _LIMITS.append(((_first + _count) << (_MAX_BITS - _len), _len, _first, _offset))


_LIMIT_KEYS = [entry[0] for entry in _LIMITS]


def huffman_decode(data: bytes) -> bytes:
    """The octets a Huffman-coded string literal stands for (§5.2), in time linear in its length.

    Raises :class:`HpackError` for EOS inside the string, padding longer than 7 bits, or padding that
    is not the most significant bits of EOS (all ones)."""
    out = bytearray()
    acc = 0  # the ``have`` bits read and not decoded yet (never more than 37)
    have = 0
    pos = 0
    n = len(data)
    while True:
        while have < _MAX_BITS and pos < n:
            acc = (acc << 8) | data[pos]
            pos += 1
            have += 8
        if not have:
            break
        if have >= _MAX_BITS:
            window = acc >> (have - _MAX_BITS)
        else:  # the end: followed by one-bits, which read as the (all-ones) EOS prefix
            pad = _MAX_BITS - have
            window = (acc << pad) | ((1 << pad) - 1)
        # the first length whose limit exceeds the window (the last limit, 2^30, exceeds them all)
        _, length, first, offset = _LIMITS[bisect_right(_LIMIT_KEYS, window)]
        if length > have:  # only padding is left (no code is a run of fewer than 8 ones)
            break
        sym = _SYMBOLS[offset + (window >> (_MAX_BITS - length)) - first]
        if sym == EOS:
            raise HpackError("EOS in a Huffman-coded string")
        out.append(sym)
        have -= length
        acc &= (1 << have) - 1
    if have > 7:
        raise HpackError("Huffman padding longer than 7 bits")
    if acc != (1 << have) - 1:
        raise HpackError("Huffman padding is not the EOS prefix")
    return bytes(out)


_CACHED_LENGTH = 128
"""Huffman strings up to this many octets are decoded through a cache (values clients repeat
without indexing them); longer ones are not kept, so the cache's 4096 entries hold at most about
1.5 MB (128 octets coded, 204 decoded, each)."""
_huffman_cached = lru_cache(maxsize=4096)(huffman_decode)


def huffman_encode(data: bytes) -> bytes:
    """``data`` Huffman-coded, padded with the EOS prefix (for tests; the server sends raw strings)."""
    acc = 0
    nbits = 0
    for b in data:
        acc = (acc << _CODE_LENGTHS[b]) | _CODES[b]
        nbits += _CODE_LENGTHS[b]
    pad = -nbits % 8
    acc = (acc << pad) | ((1 << pad) - 1)
    return acc.to_bytes((nbits + pad) // 8, "big")


def _decode_int(block: bytes, pos: int, prefix_bits: int) -> tuple[int, int]:
    """§5.1: an integer with an N-bit prefix starting at block[pos]; (value, next position)."""
    max_prefix = (1 << prefix_bits) - 1
    value = block[pos] & max_prefix
    pos += 1
    if value < max_prefix:
        return value, pos
    shift = 0
    while True:
        if pos >= len(block):
            raise HpackError("truncated integer")
        b = block[pos]
        pos += 1
        value += (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, pos
        if shift > 28:
            raise HpackError("integer overflow")


def _encode_int(value: int, prefix_bits: int, first: int) -> bytes:
    """§5.1: ``value`` with an N-bit prefix; ``first`` holds the representation's flag bits."""
    max_prefix = (1 << prefix_bits) - 1
    if value < max_prefix:
        return bytes((first | value,))
    out = bytearray((first | max_prefix,))
    value -= max_prefix
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _encode_string(s: bytes) -> bytes:
    return _encode_int(len(s), 7, 0) + s  # H = 0: raw octets


def encode_indexed(index: int) -> bytes:
    """§6.1: an indexed header field (e.g. 8 for ``:status: 200``)."""
    return _encode_int(index, 7, 0x80)


def encode_header(name: str, value: str | bytes) -> bytes:
    """§6.2.2: a literal header field without indexing, by static name index when there is one."""
    raw = value if isinstance(value, bytes) else value.encode("latin-1")
    index = STATIC_NAME_INDEX.get(name)
    if index is not None:
        return _encode_int(index, 4, 0x00) + _encode_string(raw)
    return b"\x00" + _encode_string(name.encode("latin-1")) + _encode_string(raw)


class Decoder:
    """One connection's HPACK decoder (§3): the dynamic table and its size limit.

    ``max_table_size`` is what this server advertised (SETTINGS_HEADER_TABLE_SIZE, 4096 by
    default): the peer may shrink its table below it with a size update, never grow it past it.
    ``max_list_size`` bounds the decoded size of one block (name + value + 32 per field, §4.1)."""

    def __init__(self, max_table_size: int = 4096, max_list_size: int = 65536) -> None:
        self.max_allowed = max_table_size
        self.max_size = max_table_size
        self.size = 0
        self.table: deque[tuple[str, str]] = deque()
        self.max_list_size = max_list_size

    def _get(self, index: int) -> tuple[str, str]:
        if 0 < index <= len(STATIC_TABLE):
            return STATIC_TABLE[index - 1]
        dyn = index - len(STATIC_TABLE) - 1
        if 0 <= dyn < len(self.table):
            return self.table[dyn]
        raise HpackError(f"header index {index} is not in the table")

    def _add(self, name: str, value: str) -> None:
        """§4.4: insert at the front, evicting from the end until the new entry fits."""
        entry = len(name) + len(value) + 32
        while self.table and self.size + entry > self.max_size:
            old_name, old_value = self.table.pop()
            self.size -= len(old_name) + len(old_value) + 32
        if entry <= self.max_size:  # an entry larger than the table empties it and is not added
            self.table.appendleft((name, value))
            self.size += entry

    def _resize(self, size: int) -> None:
        if size > self.max_allowed:
            raise HpackError(f"table size update to {size} exceeds the advertised {self.max_allowed}")
        self.max_size = size
        while self.table and self.size > size:
            old_name, old_value = self.table.pop()
            self.size -= len(old_name) + len(old_value) + 32

    def _string(self, block: bytes, pos: int) -> tuple[str, int]:
        if pos >= len(block):
            raise HpackError("truncated string")
        huffman = block[pos] & 0x80
        length, pos = _decode_int(block, pos, 7)
        end = pos + length
        if end > len(block):
            raise HpackError("truncated string")
        raw = block[pos:end]
        if huffman:
            raw = _huffman_cached(raw) if length <= _CACHED_LENGTH else huffman_decode(raw)
        return raw.decode("latin-1"), end

    def _literal(self, block: bytes, pos: int, prefix_bits: int) -> tuple[str, str, int]:
        """§6.2: a literal field's name (by index, or a string when the index is 0) and value."""
        index, pos = _decode_int(block, pos, prefix_bits)
        if index:
            name = self._get(index)[0]
        else:
            name, pos = self._string(block, pos)
        value, pos = self._string(block, pos)
        return name, value, pos

    def decode(self, block: bytes) -> list[tuple[str, str]]:
        """The header fields of one complete header block, in order."""
        fields: list[tuple[str, str]] = []
        pos = 0
        n = len(block)
        listed = 0
        seen_field = False
        while pos < n:
            b = block[pos]
            if b & 0x80:  # §6.1 indexed
                index, pos = _decode_int(block, pos, 7)
                name, value = self._get(index)
            elif b & 0x40:  # §6.2.1 literal with incremental indexing
                name, value, pos = self._literal(block, pos, 6)
                self._add(name, value)
            elif b & 0x20:  # §6.3 dynamic table size update: only at the start of a block (§4.2)
                if seen_field:
                    raise HpackError("table size update after a header field")
                size, pos = _decode_int(block, pos, 5)
                self._resize(size)
                continue
            else:  # §6.2.2 without indexing (0000) / §6.2.3 never indexed (0001)
                name, value, pos = self._literal(block, pos, 4)
            seen_field = True
            listed += len(name) + len(value) + 32
            if listed > self.max_list_size:
                raise HpackError(f"header list larger than {self.max_list_size} bytes")
            fields.append((name, value))
        return fields
