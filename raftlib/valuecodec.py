"""The value codec of replicated commands, their results and recipe snapshots.

Owns the bytes that client sessions and the batteries (:mod:`raftlib.recipes`) put in the log:
a one-byte version, then JSON in which the values JSON cannot hold are tagged objects. Nothing
is ever unpickled: decoding builds only the types listed below, so a log entry cannot run code.

Invariants: ``decode(encode(v)) == v`` (same types) for every encodable ``v``; an encoding is at
most ``max_bytes`` long and at most :data:`MAX_DEPTH` containers deep, in both directions;
an unknown version byte or tag is refused with :class:`UnsupportedVersion` / :class:`CodecError`.

Encodable: ``None``, ``bool``, ``int``, ``float`` (finite), ``str``, ``bytes``, ``list``,
``tuple``, ``dict`` (any encodable hashable keys), ``set``, ``frozenset`` and
:class:`CommandError` instances (a replicated command's recorded failure). Subclasses of these
(an ``IntEnum``, an ``OrderedDict``) are refused rather than silently changed into their base.
"""

from __future__ import annotations

import base64
import json
import json.encoder
from collections.abc import Callable
from typing import Any, ClassVar

from raftlib.errors import RaftError

VERSION = 1
"""The codec version written as the first byte of every encoding."""

MAX_BYTES = 1 << 20
"""Default bound of one encoding (commands and results): 1 MiB."""

MAX_DEPTH = 32
"""Nesting bound: deeper values are refused (bounded recursion on decode)."""

_VERSION_BYTE = bytes([VERSION])
_SCALARS = frozenset((str, int, float, bool, type(None)))


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a finite number")


# One encoder and decoder for every call: json.dumps/loads with options build new ones each time.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def _make_iterencode() -> Callable[[Any, int], Any] | None:
    # JSONEncoder.encode builds a new C encoder on every call; build it once. No circular-reference
    # markers: _tag builds fresh containers and refuses nesting beyond MAX_DEPTH, so there are none.
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # no C accelerator: JSONEncoder.encode's pure-Python path
        return None
    e = _ENCODER
    iterencode: Callable[[Any, int], Any] = make(
        None, e.default, json.encoder.encode_basestring, e.indent, e.key_separator, e.item_separator,
        e.sort_keys, e.skipkeys, e.allow_nan,
    )
    return iterencode


_ITERENCODE = _make_iterencode()
_SCAN: Callable[[str, int], tuple[Any, int]] = _DECODER.scan_once  # type: ignore[attr-defined]


class CodecError(RaftError, ValueError):
    """A value cannot be encoded, or bytes are not a valid encoding."""


class UnsupportedVersion(CodecError):
    """The encoding was written by a codec version this one does not know (``version``)."""

    def __init__(self, version: int) -> None:
        self.version = version
        super().__init__(f"value encoded with codec version {version}; this build reads version {VERSION}")


class PayloadTooLarge(CodecError):
    """An encoding is longer than the bound (``size`` > ``limit`` bytes)."""

    def __init__(self, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__(f"encoded value is {size} bytes, the limit is {limit}")


class CommandError(RaftError):
    """A replicated command failed deterministically; the failure is recorded like a result.

    Raised on the caller's side. Every member reached the same outcome, so the state is
    consistent; a retried duplicate gets the same error. Subclasses pass ``code=`` (a stable
    short word that travels in the log and in snapshots) and build themselves from
    ``(message, *details)``; ``details`` must be encodable.
    """

    code: ClassVar[str] = "command_failed"
    _registry: ClassVar[dict[str, type[CommandError]]] = {}

    def __init_subclass__(cls, code: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if code is not None:
            if code in CommandError._registry and CommandError._registry[code] is not cls:
                raise TypeError(f"error code {code!r} is already used by {CommandError._registry[code]}")
            cls.code = code
            CommandError._registry[code] = cls

    def __init__(self, message: str, *details: Any) -> None:
        self.message = message
        self.details = details
        super().__init__(message)

    def __eq__(self, other: object) -> bool:
        return (
            type(other) is type(self)
            and isinstance(other, CommandError)
            and (other.message, other.details) == (self.message, self.details)
        )

    def __hash__(self) -> int:
        return hash((type(self), self.message))

    @classmethod
    def from_wire(cls, message: str, details: list[Any]) -> CommandError:
        """Rebuild the error from its recorded form (override when ``__init__`` differs)."""
        err = cls.__new__(cls)
        CommandError.__init__(err, message, *details)
        return err


CommandError._registry["command_failed"] = CommandError


def _tag(v: Any, depth: int) -> Any:
    t = type(v)
    if t in _SCALARS:
        return v  # a non-finite float is refused by the encoder (allow_nan=False)
    if depth >= MAX_DEPTH:
        raise CodecError(f"value nested deeper than {MAX_DEPTH} levels")
    d = depth + 1
    if t is list:
        return [x if type(x) in _SCALARS else _tag(x, d) for x in v]
    if t is dict:
        if not v:
            return {}
        if all(type(k) is str and not k.startswith("$") for k in v):
            return {k: _tag(x, d) for k, x in v.items()}
        return {"$d": [[_tag(k, d), _tag(x, d)] for k, x in v.items()]}
    if t is bytes:
        return {"$b": base64.b64encode(v).decode("ascii")}
    if t is tuple:
        return {"$t": [_tag(x, d) for x in v]}
    if t is set:
        return {"$s": [_tag(x, d) for x in v]}
    if t is frozenset:
        return {"$f": [_tag(x, d) for x in v]}
    if isinstance(v, CommandError):
        return {"$e": [v.code, v.message, [_tag(x, d) for x in v.details]]}
    raise CodecError(f"cannot encode a value of type {t.__qualname__} (allowed: None, bool, int, float, "
                     "str, bytes, list, tuple, dict, set, frozenset, CommandError)")


def _untag(v: Any, depth: int) -> Any:
    t = type(v)
    if t in _SCALARS:
        return v
    if depth >= MAX_DEPTH:
        raise CodecError(f"encoding nested deeper than {MAX_DEPTH} levels")
    d = depth + 1
    if t is list:
        return [x if type(x) in _SCALARS else _untag(x, d) for x in v]
    if t is not dict:
        raise CodecError(f"unexpected JSON value of type {t.__name__}")
    if not v:
        return {}
    if len(v) != 1 or not next(iter(v)).startswith("$"):
        return {k: _untag(x, d) for k, x in v.items()}
    (tag, body), = v.items()
    try:
        if tag == "$b":
            return base64.b64decode(body, validate=True)
        if tag == "$t":
            return tuple(_untag(x, d) for x in body)
        if tag == "$d":
            return {_untag(k, d): _untag(x, d) for k, x in body}
        if tag == "$s":
            return {_untag(x, d) for x in body}
        if tag == "$f":
            return frozenset(_untag(x, d) for x in body)
        if tag == "$e":
            code, message, details = body
            cls = CommandError._registry.get(code, CommandError)
            return cls.from_wire(str(message), [_untag(x, d) for x in details])
    except CodecError:
        raise
    except (TypeError, ValueError) as exc:
        raise CodecError(f"malformed {tag} value: {exc}") from exc
    raise CodecError(f"unknown tag {tag!r} (written by a newer codec?)")


def encode(value: Any, max_bytes: int = MAX_BYTES) -> bytes:
    """Encode ``value``; raises :class:`CodecError` or :class:`PayloadTooLarge`."""
    tagged = _tag(value, 0)
    try:
        text = "".join(_ITERENCODE(tagged, 0)) if _ITERENCODE is not None else _ENCODER.encode(tagged)
        data = _VERSION_BYTE + text.encode()
    except UnicodeEncodeError as exc:  # a lone surrogate: not UTF-8, so not JSON text
        raise CodecError(f"cannot encode a str that is not valid Unicode: {exc}") from exc
    except ValueError as exc:  # NaN, an infinity, an int beyond the int-to-str limit
        raise CodecError(f"cannot encode the value: {exc}") from exc
    if len(data) > max_bytes:
        raise PayloadTooLarge(len(data), max_bytes)
    return data


def decode(data: bytes | bytearray | memoryview, max_bytes: int = MAX_BYTES) -> Any:
    """Decode an encoding.

    Raises :class:`UnsupportedVersion`, :class:`PayloadTooLarge` or :class:`CodecError`.
    """
    if len(data) > max_bytes:
        raise PayloadTooLarge(len(data), max_bytes)
    if not data:
        raise CodecError("empty encoding (no version byte)")
    if data[0] != VERSION:
        raise UnsupportedVersion(data[0])
    try:
        text = bytes(data[1:]).decode("utf-8")
        try:  # what encode writes: one value, no whitespace around it
            raw, end = _SCAN(text, 0)
        except StopIteration:
            end = -1
        if end != len(text):  # whitespace, trailing data or no value: the full parser decides
            raw = _DECODER.decode(text)
    except (ValueError, RecursionError) as exc:
        raise CodecError(f"not a valid encoding: {exc}") from exc
    if "{" not in text.replace("{}", "") and text.count("[") + text.count("{") <= MAX_DEPTH:
        # No '{' opens a non-empty object, so there is no tag to undo, and there are too few
        # containers to nest too deep: _untag would return an equal copy. (A brace or bracket
        # inside a str only sends the text the long way.) Recipe commands take this path.
        return raw
    return _untag(raw, 0)


__all__ = [
    "MAX_BYTES",
    "MAX_DEPTH",
    "VERSION",
    "CodecError",
    "CommandError",
    "PayloadTooLarge",
    "UnsupportedVersion",
    "decode",
    "encode",
]
