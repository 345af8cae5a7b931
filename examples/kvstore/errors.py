"""etcd errors as the v3 JSON gateway reports them (contract §5).

Every gateway error body is ``{"error": msg, "message": msg, "code": <grpc code>}``
and its HTTP status follows from the gRPC code the way grpc-gateway v1 (vendored
in etcd 3.4) maps it. :class:`EtcdError` carries all three; the module-level
constructors build the exact messages etcd 3.4 sends (``etcdserver: `` prefixed
exactly where etcd's ``rpctypes`` prefix them).
"""

from __future__ import annotations

from typing import Any

# gRPC status codes (google.golang.org/grpc/codes).
OK = 0
CANCELED = 1
UNKNOWN = 2
INVALID_ARGUMENT = 3
DEADLINE_EXCEEDED = 4
NOT_FOUND = 5
ALREADY_EXISTS = 6
PERMISSION_DENIED = 7
RESOURCE_EXHAUSTED = 8
FAILED_PRECONDITION = 9
ABORTED = 10
OUT_OF_RANGE = 11
UNIMPLEMENTED = 12
INTERNAL = 13
UNAVAILABLE = 14
DATA_LOSS = 15
UNAUTHENTICATED = 16

#: grpc-gateway v1 ``runtime.HTTPStatusFromCode``.
HTTP_STATUS: dict[int, int] = {
    OK: 200,
    CANCELED: 408,
    UNKNOWN: 500,
    INVALID_ARGUMENT: 400,
    DEADLINE_EXCEEDED: 504,
    NOT_FOUND: 404,
    ALREADY_EXISTS: 409,
    PERMISSION_DENIED: 403,
    RESOURCE_EXHAUSTED: 429,
    FAILED_PRECONDITION: 412,
    ABORTED: 409,
    OUT_OF_RANGE: 400,
    UNIMPLEMENTED: 501,
    INTERNAL: 500,
    UNAVAILABLE: 503,
    DATA_LOSS: 500,
    UNAUTHENTICATED: 401,
}


def http_status_for(grpc_code: int) -> int:
    """The HTTP status grpc-gateway v1 uses for ``grpc_code`` (500 for unknown codes)."""
    return HTTP_STATUS.get(grpc_code, 500)


class EtcdError(Exception):
    """An error with etcd's gRPC code, HTTP status and exact message.

    ``EtcdError(grpc_code, message)``; ``http_status`` is derived from the code
    unless given. ``compact_revision`` is set on "required revision has been
    compacted" errors raised by ``history()`` (the watch cancel reports it).
    """

    def __init__(self, grpc_code: int, message: str, http_status: int | None = None) -> None:
        super().__init__(message)
        self.grpc_code: int = grpc_code
        self.message: str = message
        self.http_status: int = http_status if http_status is not None else http_status_for(grpc_code)
        self.compact_revision: int = 0

    @property
    def code(self) -> int:
        """Alias of ``grpc_code``."""
        return self.grpc_code

    def body(self) -> dict[str, Any]:
        """The gateway's JSON error body: ``{"error": msg, "message": msg, "code": grpc_code}``."""
        return {"error": self.message, "message": self.message, "code": self.grpc_code}

    def __repr__(self) -> str:
        return f"EtcdError({self.grpc_code}, {self.message!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, EtcdError):
            return NotImplemented
        return (self.grpc_code, self.message, self.http_status) == (
            other.grpc_code,
            other.message,
            other.http_status,
        )

    def __hash__(self) -> int:
        return hash((self.grpc_code, self.message))


# -- messages (etcd 3.4 api/v3rpc/rpctypes and mvcc) ------------------------------------------------

MSG_EMPTY_KEY = "etcdserver: key is not provided"
MSG_KEY_NOT_FOUND = "etcdserver: key not found"
MSG_VALUE_PROVIDED = "etcdserver: value is provided"
MSG_LEASE_PROVIDED = "etcdserver: lease is provided"
MSG_TOO_MANY_OPS = "etcdserver: too many operations in txn request"
MSG_DUPLICATE_KEY = "etcdserver: duplicate key given in txn request"
MSG_COMPACTED = "etcdserver: mvcc: required revision has been compacted"
MSG_FUTURE_REV = "etcdserver: mvcc: required revision is a future revision"
MSG_NO_SPACE = "etcdserver: mvcc: database space exceeded"
MSG_LEASE_NOT_FOUND = "etcdserver: requested lease not found"
MSG_LEASE_EXISTS = "etcdserver: lease already exists"
MSG_LEASE_TTL_TOO_LARGE = "etcdserver: too large lease TTL"
MSG_REQUEST_TOO_LARGE = "etcdserver: request is too large"
MSG_TOO_MANY_REQUESTS = "etcdserver: too many requests"
MSG_NO_LEADER = "etcdserver: no leader"
MSG_NOT_LEADER = "etcdserver: not leader"
MSG_LEADER_CHANGED = "etcdserver: leader changed"
MSG_STOPPED = "etcdserver: server stopped"
MSG_TIMEOUT = "etcdserver: request timed out"
MSG_TIMEOUT_LEADER_FAIL = "etcdserver: request timed out, possibly due to previous leader failure"
MSG_TIMEOUT_CONN_LOST = "etcdserver: request timed out, possibly due to connection lost"
MSG_UNHEALTHY = "etcdserver: unhealthy cluster"
MSG_MEMBER_NOT_FOUND = "etcdserver: member not found"
MSG_MEMBER_EXIST = "etcdserver: member ID already exist"
MSG_PEER_URL_EXIST = "etcdserver: Peer URLs already exists"
MSG_MEMBER_BAD_URLS = "etcdserver: given member URLs are invalid"
MSG_UNEXPECTED_EOF = "unexpected EOF"


def empty_key() -> EtcdError:
    """``etcdserver: key is not provided`` (code 3)."""
    return EtcdError(INVALID_ARGUMENT, MSG_EMPTY_KEY)


def key_not_found() -> EtcdError:
    """``etcdserver: key not found`` (code 3): ignore_value/ignore_lease on a missing key, empty RequestOp."""
    return EtcdError(INVALID_ARGUMENT, MSG_KEY_NOT_FOUND)


def value_provided() -> EtcdError:
    """``etcdserver: value is provided`` (code 3): ignore_value with a value."""
    return EtcdError(INVALID_ARGUMENT, MSG_VALUE_PROVIDED)


def lease_provided() -> EtcdError:
    """``etcdserver: lease is provided`` (code 3): ignore_lease with a lease."""
    return EtcdError(INVALID_ARGUMENT, MSG_LEASE_PROVIDED)


def too_many_ops() -> EtcdError:
    """``etcdserver: too many operations in txn request`` (code 3)."""
    return EtcdError(INVALID_ARGUMENT, MSG_TOO_MANY_OPS)


def duplicate_key() -> EtcdError:
    """``etcdserver: duplicate key given in txn request`` (code 3)."""
    return EtcdError(INVALID_ARGUMENT, MSG_DUPLICATE_KEY)


def compacted(compact_revision: int = 0) -> EtcdError:
    """``etcdserver: mvcc: required revision has been compacted`` (code 11, HTTP 400)."""
    err = EtcdError(OUT_OF_RANGE, MSG_COMPACTED)
    err.compact_revision = compact_revision
    return err


def future_revision() -> EtcdError:
    """``etcdserver: mvcc: required revision is a future revision`` (code 11, HTTP 400)."""
    return EtcdError(OUT_OF_RANGE, MSG_FUTURE_REV)


def lease_not_found() -> EtcdError:
    """``etcdserver: requested lease not found`` (code 5, HTTP 404)."""
    return EtcdError(NOT_FOUND, MSG_LEASE_NOT_FOUND)


def lease_exists() -> EtcdError:
    """``etcdserver: lease already exists`` (code 9, HTTP 412)."""
    return EtcdError(FAILED_PRECONDITION, MSG_LEASE_EXISTS)


def lease_ttl_too_large() -> EtcdError:
    """``etcdserver: too large lease TTL`` (code 11, HTTP 400)."""
    return EtcdError(OUT_OF_RANGE, MSG_LEASE_TTL_TOO_LARGE)


def request_too_large() -> EtcdError:
    """``etcdserver: request is too large`` (code 3): the proposal exceeds --max-request-bytes."""
    return EtcdError(INVALID_ARGUMENT, MSG_REQUEST_TOO_LARGE)


def message_too_large(size: int, limit: int) -> EtcdError:
    """``grpc: received message larger than max (N vs. M)`` (code 8, HTTP 429)."""
    return EtcdError(RESOURCE_EXHAUSTED, f"grpc: received message larger than max ({size} vs. {limit})")


def too_many_requests() -> EtcdError:
    """``etcdserver: too many requests`` (code 8, HTTP 429)."""
    return EtcdError(RESOURCE_EXHAUSTED, MSG_TOO_MANY_REQUESTS)


def no_leader() -> EtcdError:
    """``etcdserver: no leader`` (code 14, HTTP 503)."""
    return EtcdError(UNAVAILABLE, MSG_NO_LEADER)


def not_leader() -> EtcdError:
    """``etcdserver: not leader`` (code 9, HTTP 412)."""
    return EtcdError(FAILED_PRECONDITION, MSG_NOT_LEADER)


def leader_changed() -> EtcdError:
    """``etcdserver: leader changed`` (code 14, HTTP 503)."""
    return EtcdError(UNAVAILABLE, MSG_LEADER_CHANGED)


def stopped() -> EtcdError:
    """``etcdserver: server stopped`` (code 14, HTTP 503)."""
    return EtcdError(UNAVAILABLE, MSG_STOPPED)


def timed_out() -> EtcdError:
    """``etcdserver: request timed out`` (code 14, HTTP 503): etcd's answer after ~7 s without quorum."""
    return EtcdError(UNAVAILABLE, MSG_TIMEOUT)


def unexpected_eof() -> EtcdError:
    """``unexpected EOF`` (code 3): a truncated JSON body."""
    return EtcdError(INVALID_ARGUMENT, MSG_UNEXPECTED_EOF)


def illegal_base64(offset: int) -> EtcdError:
    """``illegal base64 data at input byte N`` (code 3), N as Go's base64.StdEncoding reports it."""
    return EtcdError(INVALID_ARGUMENT, f"illegal base64 data at input byte {offset}")


def unknown_enum(raw: str, enum: str) -> EtcdError:
    """``unknown value "X" for enum etcdserverpb.T`` (code 3)."""
    return EtcdError(INVALID_ARGUMENT, f'unknown value "{raw}" for enum {enum}')


def cannot_unmarshal(what: str, go_type: str) -> EtcdError:
    """``json: cannot unmarshal <what> into Go value of type <go_type>`` (code 3).

    ``what`` is ``string``, ``number``, ``number 1.5``, ``bool``, ``array`` or ``object``.
    """
    return EtcdError(INVALID_ARGUMENT, f"json: cannot unmarshal {what} into Go value of type {go_type}")


def invalid_argument(message: str) -> EtcdError:
    """Any other code-3 message (e.g. Go's ``invalid character 'x' looking for beginning of value``)."""
    return EtcdError(INVALID_ARGUMENT, message)
