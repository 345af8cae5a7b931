"""etcd's JSON gateway encoding: request parsing and response rendering (contract §1, §3).

Parsing follows what etcd 3.4's grpc-gateway does (golang/protobuf ``jsonpb``
over Go's ``encoding/json``):

* the body is one JSON value (anything after it is ignored); an empty body is ``{}``;
  a truncated one is ``unexpected EOF``; a non-object is ``json: cannot unmarshal
  array into Go value of type map[string]json.RawMessage``;
* field names are the proto names or their lowerCamel JSON names; unknown fields are ignored;
  ``null`` leaves a field at its default;
* bytes: standard base64 with padding, decoded exactly like Go's ``base64.StdEncoding``
  (same error offsets, ``\\n``/``\\r`` skipped);
* int64: a JSON integer or a decimal string; floats, bools, ... are Go-style type errors;
* bool: a JSON bool only; enums: the name or the number.

Every error is an :class:`~examples.kvstore.errors.EtcdError` with code 3.

Rendering follows proto3 JSON as etcd emits it: int64 as decimal strings, bytes as
base64, and zero / false / empty fields omitted.
"""

from __future__ import annotations

import base64
import functools
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from examples.kvstore import errors
from examples.kvstore.errors import EtcdError

INT64_MIN = -(1 << 63)
INT64_MAX = (1 << 63) - 1
INT32_MIN = -(1 << 31)
INT32_MAX = (1 << 31) - 1


# ------------------------------------------------------------------------------------- raw JSON


class RawFloat(str):
    """The source text of a JSON number with a fraction or exponent (Go reports it verbatim)."""


class _BadConstant(ValueError):
    pass


def _reject_constant(name: str) -> Any:
    raise _BadConstant(name)


_DECODER = json.JSONDecoder(parse_float=RawFloat, parse_constant=_reject_constant)
_WS = " \t\n\r"


def _quote_char(c: str) -> str:
    """Go's encoding/json ``quoteChar``."""
    if c == "'":
        return "'\\''"
    if c == '"':
        return "'\"'"
    if ord(c) > 0xFF:
        c = c.encode("utf-8")[:1].decode("latin-1")
    s = json.dumps(c) if c.isprintable() and ord(c) < 0x80 else _go_quote(c)
    return "'" + s[1:-1] + "'"


def _go_quote(c: str) -> str:
    o = ord(c)
    table = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\v": "\\v"}
    if c in table:
        return '"' + table[c] + '"'
    if o < 0x20 or o == 0x7F:
        return f'"\\x{o:02x}"'
    return '"' + c + '"'


def _container_at(doc: str, pos: int) -> str:
    """The innermost container ('{' or '[') open at ``pos`` (a small scanner, strings skipped)."""
    stack: list[str] = []
    in_str = False
    esc = False
    for ch in doc[:pos]:
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch in "{[":
            stack.append(ch)
        elif ch in "}]" and stack:
            stack.pop()
    return stack[-1] if stack else ""


def _syntax_error(doc: str, exc: json.JSONDecodeError) -> EtcdError:
    msg, pos = exc.msg, exc.pos
    rest = doc[pos:].lstrip(_WS) if pos < len(doc) else ""
    if msg.startswith("Unterminated string") or not rest:
        return errors.unexpected_eof()
    c = doc[pos] if pos < len(doc) else ""
    if msg.startswith("Invalid control character"):
        return errors.invalid_argument(f"invalid character {_quote_char(c)} in string literal")
    if msg.startswith("Invalid \\escape") or msg.startswith("Invalid \\uXXXX"):
        bad = doc[pos + 1] if pos + 1 < len(doc) else c
        return errors.invalid_argument(f"invalid character {_quote_char(bad)} in string escape code")
    if msg.startswith("Expecting property name"):
        return errors.invalid_argument(
            f"invalid character {_quote_char(c)} looking for beginning of object key string"
        )
    if msg.startswith("Expecting ':'"):
        return errors.invalid_argument(f"invalid character {_quote_char(c)} after object key")
    if msg.startswith("Expecting ','"):
        where = "after object key:value pair" if _container_at(doc, pos) == "{" else "after array element"
        return errors.invalid_argument(f"invalid character {_quote_char(c)} {where}")
    return errors.invalid_argument(f"invalid character {_quote_char(c)} looking for beginning of value")


def decode_json(raw: bytes | str) -> Any:
    """Decode a request body like Go's ``json.Decoder.Decode`` as the gateway uses it.

    An empty (or all-whitespace) body is ``{}``; only the first JSON value counts
    (trailing bytes are ignored); floats are kept as :class:`RawFloat` so errors can
    quote them verbatim; integers are exact Python ints. Raises :class:`EtcdError`
    (code 3) with Go's message on a syntax error.
    """
    doc = raw.decode("utf-8", "replace") if isinstance(raw, bytes | bytearray | memoryview) else raw
    start = len(doc) - len(doc.lstrip(_WS))
    if start == len(doc):
        return {}
    try:
        value, _end = _DECODER.raw_decode(doc, start)
    except _BadConstant as exc:
        bad = _quote_char(str(exc)[:1])
        raise errors.invalid_argument(f"invalid character {bad} looking for beginning of value") from None
    except json.JSONDecodeError as exc:
        raise _syntax_error(doc, exc) from None
    except RecursionError:
        raise errors.invalid_argument("exceeded max depth") from None
    return value


def decode_json_stream(raw: bytes | str) -> list[Any]:
    """All JSON values of a body, one after another (the keepalive stream form).

    Raises on a syntax error after the first value only if no value was decoded.
    """
    doc = raw.decode("utf-8", "replace") if isinstance(raw, bytes | bytearray | memoryview) else raw
    out: list[Any] = []
    pos = 0
    while True:
        while pos < len(doc) and doc[pos] in _WS:
            pos += 1
        if pos >= len(doc):
            break
        try:
            value, pos = _DECODER.raw_decode(doc, pos)
        except (json.JSONDecodeError, _BadConstant) as exc:
            if out:
                break
            if isinstance(exc, json.JSONDecodeError):
                raise _syntax_error(doc, exc) from None
            raise errors.invalid_argument("invalid character looking for beginning of value") from None
        out.append(value)
    return out


def _json_kind(value: Any) -> str:
    """How Go's encoding/json names a JSON value in an UnmarshalTypeError."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, str) and not isinstance(value, RawFloat):
        return "string"
    if isinstance(value, int | float | RawFloat):
        return "number"
    if isinstance(value, list):
        return "array"
    return "object"


def _number_text(value: Any) -> str:
    if isinstance(value, RawFloat):
        return str.__str__(value)
    if isinstance(value, float):
        text = repr(value)
        return text
    return str(value)


# ----------------------------------------------------------------------------------- base64 (Go)

_STD_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_DECODE_MAP = {c: i for i, c in enumerate(_STD_ALPHABET)}
_FAST_B64 = re.compile(r"\A(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?\Z")


def b64decode_go(text: str) -> bytes:
    """Decode standard padded base64 exactly as Go's ``base64.StdEncoding.Decode``.

    ``\\n`` and ``\\r`` are skipped anywhere; any other error raises
    ``illegal base64 data at input byte N`` with Go's offset N (an offset into the
    string's UTF-8 bytes). Trailing bits are not checked (Go's non-strict mode).
    """
    if _FAST_B64.match(text):
        return base64.b64decode(text)
    src = text.encode("utf-8", "surrogatepass")
    n = len(src)
    out = bytearray()
    si = 0
    while si < n:
        # Go's decodeQuantum
        dbuf = [0, 0, 0, 0]
        dlen = 4
        j = 0
        pad_end = False
        while j < 4:
            if si == n:
                if j == 0:
                    return bytes(out)
                raise errors.illegal_base64(si - j)
            ch = src[si]
            si += 1
            val = _DECODE_MAP.get(chr(ch)) if ch < 0x80 else None
            if val is not None:
                dbuf[j] = val
                j += 1
                continue
            if ch in (0x0A, 0x0D):
                continue
            if ch != 0x3D:  # '='
                raise errors.illegal_base64(si - 1)
            # padding
            if j in (0, 1):
                raise errors.illegal_base64(si - 1)
            if j == 2:
                while si < n and src[si] in (0x0A, 0x0D):
                    si += 1
                if si == n:
                    raise errors.illegal_base64(n)
                if src[si] != 0x3D:
                    raise errors.illegal_base64(si - 1)
                si += 1
            while si < n and src[si] in (0x0A, 0x0D):
                si += 1
            if si < n:
                raise errors.illegal_base64(si)
            dlen = j
            pad_end = True
            break
        v = (dbuf[0] << 18) | (dbuf[1] << 12) | (dbuf[2] << 6) | dbuf[3]
        chunk = bytes(((v >> 16) & 0xFF, (v >> 8) & 0xFF, v & 0xFF))
        out += chunk[: dlen - 1]
        if pad_end:
            break
    return bytes(out)


def b64(data: bytes) -> str:
    """Standard base64 with padding (how etcd renders bytes)."""
    return base64.b64encode(data).decode("ascii")


# ------------------------------------------------------------------------------ scalar parsing

_INT_TEXT = re.compile(r"-?(?:0|[1-9][0-9]*)")
_NUM_TEXT = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")


def parse_int(value: Any, go_type: str = "int64", lo: int = INT64_MIN, hi: int = INT64_MAX) -> int:
    """An int64 request field: a JSON integer or a decimal string (jsonpb strips the quotes)."""
    if value is None:
        return 0
    if isinstance(value, bool):
        raise errors.cannot_unmarshal("bool", go_type)
    if isinstance(value, int):
        if lo <= value <= hi:
            return value
        raise errors.cannot_unmarshal(f"number {value}", go_type)
    if isinstance(value, RawFloat | float):
        raise errors.cannot_unmarshal(f"number {_number_text(value)}", go_type)
    if isinstance(value, str):
        return _parse_int_text(value, go_type, lo, hi)
    raise errors.cannot_unmarshal(_json_kind(value), go_type)


def _parse_int_text(text: str, go_type: str, lo: int, hi: int) -> int:
    s = text.strip(_WS)
    if not s:
        raise errors.invalid_argument("unexpected end of JSON input")
    m = _NUM_TEXT.match(s)
    if m and m.end() == len(s):
        if _INT_TEXT.fullmatch(s):
            v = int(s)
            if lo <= v <= hi:
                return v
        raise errors.cannot_unmarshal(f"number {s}", go_type)
    if m:
        bad = _quote_char(s[m.end()])
        raise errors.invalid_argument(f"invalid character {bad} after top-level value")
    for word, kind in (("true", "bool"), ("false", "bool"), ("null", "")):
        if s == word:
            if not kind:
                return 0
            raise errors.cannot_unmarshal(kind, go_type)
    if s[0] == '"':
        raise errors.cannot_unmarshal("string", go_type)
    if s[0] == "-" and len(s) > 1:
        raise errors.invalid_argument(f"invalid character {_quote_char(s[1])} in numeric literal")
    raise errors.invalid_argument(f"invalid character {_quote_char(s[0])} looking for beginning of value")


def parse_bool(value: Any) -> bool:
    """A bool request field: JSON ``true``/``false`` only (``null`` is false)."""
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    raise errors.cannot_unmarshal(_json_kind(value), "bool")


def parse_bytes(value: Any) -> bytes:
    """A bytes request field: padded standard base64 (``null`` or absent: empty)."""
    if value is None:
        return b""
    if isinstance(value, str) and not isinstance(value, RawFloat):
        return b64decode_go(value)
    if isinstance(value, list):  # Go decodes a JSON array of numbers into []byte
        out = bytearray()
        for item in value:
            if item is None:
                out.append(0)
                continue
            out.append(parse_int(item, "uint8", 0, 255))
        return bytes(out)
    raise errors.cannot_unmarshal(_json_kind(value), "[]uint8")


@dataclass(frozen=True)
class Enum:
    """A proto enum: its Go type name and its value names in number order."""

    go_type: str
    names: tuple[str, ...]

    def parse(self, value: Any) -> int:
        """The enum's number from its name or number (any int32 number is accepted)."""
        if value is None:
            return 0
        if isinstance(value, str) and not isinstance(value, RawFloat):
            try:
                return self.names.index(value)
            except ValueError:
                raise errors.unknown_enum(value, self.go_type) from None
        return parse_int(value, self.go_type, INT32_MIN, INT32_MAX)

    def name(self, number: int) -> str:
        """The name of ``number`` (its decimal text when unknown, as jsonpb writes it)."""
        return self.names[number] if 0 <= number < len(self.names) else str(number)


SORT_ORDER = Enum("etcdserverpb.RangeRequest_SortOrder", ("NONE", "ASCEND", "DESCEND"))
SORT_TARGET = Enum("etcdserverpb.RangeRequest_SortTarget", ("KEY", "VERSION", "CREATE", "MOD", "VALUE"))
COMPARE_RESULT = Enum("etcdserverpb.Compare_CompareResult", ("EQUAL", "GREATER", "LESS", "NOT_EQUAL"))
COMPARE_TARGET = Enum("etcdserverpb.Compare_CompareTarget", ("VERSION", "CREATE", "MOD", "VALUE", "LEASE"))
FILTER_TYPE = Enum("etcdserverpb.WatchCreateRequest_FilterType", ("NOPUT", "NODELETE"))
EVENT_TYPE = Enum("mvccpb.Event_EventType", ("PUT", "DELETE"))


# ---------------------------------------------------------------------------- message parsing


@functools.cache
def _camel(name: str) -> str:
    """proto field name -> its JSON name (cached: called for every field of every request)."""
    parts = name.split("_")
    return parts[0] + "".join(p[:1].upper() + p[1:] for p in parts[1:])


@dataclass(frozen=True)
class Field:
    """One proto field: its name, how to parse one value, and whether it is repeated / in a oneof."""

    name: str
    parse: Callable[[Any], Any]
    repeated: bool = False
    oneof: bool = False

    @property
    def json_name(self) -> str:
        return _camel(self.name)


_MAP_TYPE = "map[string]json.RawMessage"


def _as_object(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise errors.cannot_unmarshal(_json_kind(value), _MAP_TYPE)
    return value


def parse_message(value: Any, fields: tuple[Field, ...]) -> dict[str, Any]:
    """Parse one JSON object into ``{field name: value}`` (absent and null fields are omitted).

    Regular fields are parsed in declaration order, oneof members after them
    (jsonpb's order, so the first error reported is etcd's). The lowerCamel JSON
    name wins over the proto name when both are present.
    """
    obj = _as_object(value)
    out: dict[str, Any] = {}
    by_name, order = _plan(fields)
    # Only the fields the object names are visited (a request sets few of them), in the order above.
    present = {by_name[k] for k in obj if k in by_name}
    for rank in sorted(present) if len(present) > 1 else present:
        f = order[rank]
        jn = f.json_name
        raw = obj[jn] if jn in obj and jn != f.name else obj[f.name]
        if f.repeated:
            if raw is None:
                continue
            if not isinstance(raw, list):
                raise errors.cannot_unmarshal(_json_kind(raw), "[]json.RawMessage")
            out[f.name] = [f.parse(item) for item in raw]
        else:
            if raw is None and not f.oneof:
                continue
            out[f.name] = f.parse(raw)
    return out


_PLANS: dict[int, tuple[tuple[Field, ...], dict[str, int], tuple[Field, ...]]] = {}


def _plan(fields: tuple[Field, ...]) -> tuple[dict[str, int], tuple[Field, ...]]:
    """For a message's fields: {proto or JSON name: rank} and the fields by rank (regular fields
    in declaration order, then the oneof members). Built once per field tuple."""
    cached = _PLANS.get(id(fields))
    if cached is None or cached[0] is not fields:
        order = tuple(f for f in fields if not f.oneof) + tuple(f for f in fields if f.oneof)
        by_name: dict[str, int] = {}
        for rank, f in enumerate(order):
            by_name[f.name] = rank
            by_name[f.json_name] = rank
        cached = _PLANS[id(fields)] = (fields, by_name, order)
    return cached[1], cached[2]


def _msg(fields_fn: Callable[[], tuple[Field, ...]]) -> Callable[[Any], dict[str, Any]]:
    return lambda v: parse_message(v, fields_fn())


RANGE_FIELDS: tuple[Field, ...] = (
    Field("key", parse_bytes),
    Field("range_end", parse_bytes),
    Field("limit", parse_int),
    Field("revision", parse_int),
    Field("sort_order", SORT_ORDER.parse),
    Field("sort_target", SORT_TARGET.parse),
    Field("serializable", parse_bool),
    Field("keys_only", parse_bool),
    Field("count_only", parse_bool),
    Field("min_mod_revision", parse_int),
    Field("max_mod_revision", parse_int),
    Field("min_create_revision", parse_int),
    Field("max_create_revision", parse_int),
)
PUT_FIELDS: tuple[Field, ...] = (
    Field("key", parse_bytes),
    Field("value", parse_bytes),
    Field("lease", parse_int),
    Field("prev_kv", parse_bool),
    Field("ignore_value", parse_bool),
    Field("ignore_lease", parse_bool),
)
DELETE_FIELDS: tuple[Field, ...] = (
    Field("key", parse_bytes),
    Field("range_end", parse_bytes),
    Field("prev_kv", parse_bool),
)
COMPARE_FIELDS: tuple[Field, ...] = (
    Field("result", COMPARE_RESULT.parse),
    Field("target", COMPARE_TARGET.parse),
    Field("key", parse_bytes),
    Field("range_end", parse_bytes),
    Field("version", parse_int, oneof=True),
    Field("create_revision", parse_int, oneof=True),
    Field("mod_revision", parse_int, oneof=True),
    Field("value", parse_bytes, oneof=True),
    Field("lease", parse_int, oneof=True),
)


def _txn_fields() -> tuple[Field, ...]:
    return TXN_FIELDS


def _op_fields() -> tuple[Field, ...]:
    return REQUEST_OP_FIELDS


REQUEST_OP_FIELDS: tuple[Field, ...] = (
    Field("request_range", _msg(lambda: RANGE_FIELDS), oneof=True),
    Field("request_put", _msg(lambda: PUT_FIELDS), oneof=True),
    Field("request_delete_range", _msg(lambda: DELETE_FIELDS), oneof=True),
    Field("request_txn", _msg(_txn_fields), oneof=True),
)
TXN_FIELDS: tuple[Field, ...] = (
    Field("compare", _msg(lambda: COMPARE_FIELDS), repeated=True),
    Field("success", _msg(_op_fields), repeated=True),
    Field("failure", _msg(_op_fields), repeated=True),
)
COMPACTION_FIELDS: tuple[Field, ...] = (Field("revision", parse_int), Field("physical", parse_bool))
LEASE_GRANT_FIELDS: tuple[Field, ...] = (Field("TTL", parse_int), Field("ID", parse_int))
LEASE_ID_FIELDS: tuple[Field, ...] = (Field("ID", parse_int),)
LEASE_TTL_FIELDS: tuple[Field, ...] = (Field("ID", parse_int), Field("keys", parse_bool))
WATCH_CREATE_FIELDS: tuple[Field, ...] = (
    Field("key", parse_bytes),
    Field("range_end", parse_bytes),
    Field("start_revision", parse_int),
    Field("progress_notify", parse_bool),
    Field("filters", FILTER_TYPE.parse, repeated=True),
    Field("prev_kv", parse_bool),
    Field("watch_id", parse_int),
    Field("fragment", parse_bool),
)
WATCH_CANCEL_FIELDS: tuple[Field, ...] = (Field("watch_id", parse_int),)
WATCH_REQUEST_FIELDS: tuple[Field, ...] = (
    Field("create_request", _msg(lambda: WATCH_CREATE_FIELDS), oneof=True),
    Field("cancel_request", _msg(lambda: WATCH_CANCEL_FIELDS), oneof=True),
    Field("progress_request", _msg(lambda: ()), oneof=True),
)


def parse_range(body: Any) -> dict[str, Any]:
    """A RangeRequest."""
    return parse_message(body, RANGE_FIELDS)


def parse_put(body: Any) -> dict[str, Any]:
    """A PutRequest."""
    return parse_message(body, PUT_FIELDS)


def parse_delete(body: Any) -> dict[str, Any]:
    """A DeleteRangeRequest."""
    return parse_message(body, DELETE_FIELDS)


def parse_txn(body: Any) -> dict[str, Any]:
    """A TxnRequest (compares and RequestOps, nested txns included)."""
    return parse_message(body, TXN_FIELDS)


def parse_compaction(body: Any) -> dict[str, Any]:
    """A CompactionRequest."""
    return parse_message(body, COMPACTION_FIELDS)


def parse_lease_grant(body: Any) -> dict[str, Any]:
    """A LeaseGrantRequest (``TTL``, ``ID``)."""
    return parse_message(body, LEASE_GRANT_FIELDS)


def parse_lease_id(body: Any) -> dict[str, Any]:
    """A LeaseRevokeRequest / LeaseKeepAliveRequest (``ID``)."""
    return parse_message(body, LEASE_ID_FIELDS)


def parse_lease_timetolive(body: Any) -> dict[str, Any]:
    """A LeaseTimeToLiveRequest (``ID``, ``keys``)."""
    return parse_message(body, LEASE_TTL_FIELDS)


def parse_watch_request(body: Any) -> dict[str, Any]:
    """A WatchRequest: ``{"create_request": {...}}`` / ``cancel_request`` / ``progress_request``."""
    return parse_message(body, WATCH_REQUEST_FIELDS)


# ----------------------------------------------------------------------------------- rendering


def i64(value: int) -> str:
    """An int64/uint64 response field: a JSON string."""
    return str(int(value))


def omit_zero(fields: dict[str, Any]) -> dict[str, Any]:
    """Drop proto3 default values (0, "0", False, "", b"", None, empty lists/dicts)."""
    empty = (0, "0", False, "", b"", None)
    return {k: v for k, v in fields.items() if v not in empty and v != [] and v != {}}


def render_kv(
    key: bytes,
    create_revision: int,
    mod_revision: int,
    version: int,
    value: bytes,
    lease: int,
    keys_only: bool = False,
) -> dict[str, Any]:
    """A mvccpb.KeyValue in etcd's field order.

    ``value`` is absent when empty (or keys_only), ``lease`` when 0, revisions when 0.
    """
    out: dict[str, Any] = {"key": b64(key)} if key else {}
    if create_revision:
        out["create_revision"] = str(create_revision)
    if mod_revision:
        out["mod_revision"] = str(mod_revision)
    if version:
        out["version"] = str(version)
    if value and not keys_only:
        out["value"] = b64(value)
    if lease:
        out["lease"] = str(lease)
    return out


def render_header(revision: int) -> dict[str, Any]:
    """A sub-response header inside a txn: only ``revision`` (omitted when 0)."""
    return {"revision": str(revision)} if revision else {}
