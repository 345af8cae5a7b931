"""etcd's authentication and RBAC for the store: users, roles, permissions, simple tokens.

Owns three things:

* :class:`AuthState` -- the *replicated* auth store (enabled flag, auth revision, users with
  hashed passwords and granted roles, roles with READ/WRITE/READWRITE permissions on a key or a
  ``[key, range_end)`` interval). It changes only in :meth:`AuthState.apply`, called from
  :class:`~examples.kvstore.machine.KVMachine` on the Raft apply path (deterministic: no clock,
  no randomness), and it is part of the machine's snapshots (:meth:`dump` / :meth:`load`).
* :class:`TokenTable` -- this member's simple tokens (etcd's ``--auth-token=simple``): random
  strings assigned when an ``authenticate`` command is applied, expiring after
  :data:`TOKEN_TTL` seconds without use on this member's clock. Never in a snapshot.
* :func:`authorize` -- the permission check of every client request, by gateway route name
  (the gRPC layer maps its method names to the same routes), with etcd's exact errors.

Invariant: passwords are hashed (PBKDF2-HMAC-SHA256, per-user salt, :data:`PBKDF2_ITERATIONS`)
on the member that receives UserAdd/UserChangePassword, in a worker thread, before anything is
proposed; Authenticate verifies the password there too (in a thread). No request of the KV hot
path hashes anything; with auth disabled :func:`authorize` is one attribute test.
"""

from __future__ import annotations

import base64
import contextvars
import hashlib
import hmac
import os
import secrets
import string
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from examples.kvstore import codec
from examples.kvstore.errors import (
    FAILED_PRECONDITION,
    INVALID_ARGUMENT,
    PERMISSION_DENIED,
    UNAUTHENTICATED,
    EtcdError,
)

ROOT = "root"
"""The root user and the root role (etcd's rootUser / rootRole)."""
TOKEN_TTL = 300.0
"""Seconds a simple token lives without use (etcd's simpleTokenTTL, 5 minutes)."""
PBKDF2_ITERATIONS = 100_000
"""The hashing cost: about as slow as etcd's bcrypt cost 10 (tens of milliseconds)."""
TOKEN_LETTERS = string.ascii_letters

READ, WRITE, READWRITE = 0, 1, 2
PERM_NAMES = {"READ": READ, "WRITE": WRITE, "READWRITE": READWRITE}

# -- etcd's errors (api/v3rpc/rpctypes/error.go, etcd 3.4) --------------------------------------

MSG_USER_EMPTY = "etcdserver: user name is empty"
MSG_USER_EXISTS = "etcdserver: user name already exists"
MSG_USER_NOT_FOUND = "etcdserver: user name not found"
MSG_ROLE_EXISTS = "etcdserver: role name already exists"
MSG_ROLE_NOT_FOUND = "etcdserver: role name not found"
MSG_ROLE_EMPTY = "etcdserver: role name is empty"
MSG_AUTH_FAILED = "etcdserver: authentication failed, invalid user ID or password"
MSG_PERMISSION_DENIED = "etcdserver: permission denied"
MSG_ROLE_NOT_GRANTED = "etcdserver: role is not granted to the user"
MSG_PERMISSION_NOT_GRANTED = "etcdserver: permission is not granted to the role"
MSG_AUTH_NOT_ENABLED = "etcdserver: authentication is not enabled"
MSG_INVALID_TOKEN = "etcdserver: invalid auth token"
MSG_INVALID_MGMT = "etcdserver: invalid auth management"
MSG_OLD_REVISION = "etcdserver: revision of auth store is old"
MSG_ROOT_USER_MISSING = "etcdserver: root user does not exist"
MSG_ROOT_ROLE_MISSING = "etcdserver: root user does not have root role"
WATCH_DENIED_REASON = "rpc error: code = PermissionDenied desc = etcdserver: permission denied"
"""The cancel_reason etcd puts on a watch created without read permission."""

_CODES = {
    MSG_USER_EMPTY: INVALID_ARGUMENT,
    MSG_USER_EXISTS: FAILED_PRECONDITION,
    MSG_USER_NOT_FOUND: FAILED_PRECONDITION,
    MSG_ROLE_EXISTS: FAILED_PRECONDITION,
    MSG_ROLE_NOT_FOUND: FAILED_PRECONDITION,
    MSG_ROLE_EMPTY: INVALID_ARGUMENT,
    MSG_AUTH_FAILED: INVALID_ARGUMENT,
    MSG_PERMISSION_DENIED: PERMISSION_DENIED,
    MSG_ROLE_NOT_GRANTED: FAILED_PRECONDITION,
    MSG_PERMISSION_NOT_GRANTED: FAILED_PRECONDITION,
    MSG_AUTH_NOT_ENABLED: FAILED_PRECONDITION,
    MSG_INVALID_TOKEN: UNAUTHENTICATED,
    MSG_INVALID_MGMT: INVALID_ARGUMENT,
    MSG_OLD_REVISION: INVALID_ARGUMENT,
    MSG_ROOT_USER_MISSING: FAILED_PRECONDITION,
    MSG_ROOT_ROLE_MISSING: FAILED_PRECONDITION,
}


def auth_error(message: str) -> EtcdError:
    """The :class:`EtcdError` etcd sends with ``message`` (one of the ``MSG_*`` above)."""
    return EtcdError(_CODES[message], message)


# -- passwords ------------------------------------------------------------------------------------


def hash_password(password: str, salt: bytes | None = None, iterations: int = PBKDF2_ITERATIONS) -> str:
    """``pbkdf2_sha256$<iterations>$<salt b64>$<hash b64>``; slow on purpose: call in a thread."""
    salt = os.urandom(16) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    return f"pbkdf2_sha256${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def check_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches a :func:`hash_password` string (constant-time compare)."""
    try:
        scheme, iterations, salt, digest = stored.split("$")
        if scheme != "pbkdf2_sha256":
            return False
        got = hashlib.pbkdf2_hmac("sha256", password.encode(), base64.b64decode(salt), int(iterations))
        return hmac.compare_digest(got, base64.b64decode(digest))
    except (ValueError, TypeError):
        return False


# -- permissions ----------------------------------------------------------------------------------

Interval = tuple[bytes, "bytes | None"]
"""``[start, end)``; ``end`` None means no upper bound (etcd's range_end ``"\\0"``)."""


def interval(key: bytes, range_end: bytes) -> Interval:
    """etcd's reading of (key, range_end): one key, a range, or everything from ``key`` on."""
    if not range_end:
        return key, key + b"\0"
    if range_end == b"\0":
        return key, None
    return key, range_end


def _covered(want: Interval, have: list[Interval]) -> bool:
    """Whether ``want`` lies inside the union of ``have`` (etcd merges adjacent intervals too)."""
    start, end = want
    if end is not None and end <= start:
        return True  # an empty range needs nothing
    for s, e in sorted(have, key=lambda iv: iv[0]):
        if s > start:
            return False
        if e is None:
            return True
        if e > start:
            start = e
            if end is not None and start >= end:
                return True
    return False


@dataclass
class User:
    """A user of the auth store: its password hash ("" when it has none) and granted roles."""

    password: str
    roles: list[str]
    no_password: bool = False


class AuthState:
    """The replicated auth store (see the module docstring)."""

    def __init__(self) -> None:
        self.enabled = False
        self.revision = 0
        self.users: dict[str, User] = {}
        self.roles: dict[str, list[dict[str, Any]]] = {}
        self._cache: dict[tuple[str, int], list[Interval]] = {}

    # -- checks (read only) ------------------------------------------------------------------

    def intervals(self, name: str, want: int) -> list[Interval]:
        """Every interval on which ``name``'s roles give ``want`` (READ or WRITE)."""
        found = self._cache.get((name, want))
        if found is None:
            found = []
            user = self.users.get(name)
            for role in user.roles if user else ():
                for perm in self.roles.get(role, ()):
                    if perm["permType"] in (want, READWRITE):
                        found.append(interval(perm["key"], perm["range_end"]))
            self._cache[(name, want)] = found
        return found

    def check_op(self, name: str, key: bytes, range_end: bytes, want: int) -> None:
        """etcd's isOpPermitted: raise ``permission denied`` unless ``name`` may do ``want``."""
        if not self.enabled:
            return
        if not name:
            raise auth_error(MSG_USER_EMPTY)
        user = self.users.get(name)
        if user is None:
            raise auth_error(MSG_PERMISSION_DENIED)
        if ROOT in user.roles:
            return
        if not _covered(interval(key, range_end), self.intervals(name, want)):
            raise auth_error(MSG_PERMISSION_DENIED)

    def check_admin(self, name: str) -> None:
        """etcd's IsAdminPermitted: the user must hold the root role."""
        if not self.enabled:
            return
        if not name:
            raise auth_error(MSG_USER_EMPTY)
        user = self.users.get(name)
        if user is None:
            raise auth_error(MSG_USER_NOT_FOUND)
        if ROOT not in user.roles:
            raise auth_error(MSG_PERMISSION_DENIED)

    # -- reads -------------------------------------------------------------------------------

    def user_get(self, name: str) -> dict[str, Any]:
        user = self.users.get(name)
        if user is None:
            raise auth_error(MSG_USER_NOT_FOUND)
        return {"roles": list(user.roles)} if user.roles else {}

    def role_get(self, name: str) -> dict[str, Any]:
        perms = self.roles.get(name)
        if perms is None:
            raise auth_error(MSG_ROLE_NOT_FOUND)
        if name == ROOT:
            return {"perm": [{"permType": "READWRITE", "key": "", "range_end": codec.b64(b"\0")}]}
        out = [
            {
                "permType": ("READ", "WRITE", "READWRITE")[p["permType"]],
                "key": codec.b64(p["key"]),
                "range_end": codec.b64(p["range_end"]),
            }
            for p in perms
        ]
        return {"perm": out} if out else {}

    # -- apply (deterministic) -------------------------------------------------------------------

    def apply(self, req: dict[str, Any], tokens: TokenTable | None = None) -> dict[str, Any]:
        """Apply one auth command (``req["a"]`` names it); the response body without header.
        Raises EtcdError (nothing changed then)."""
        action = req.get("a")
        handler = getattr(self, f"_apply_{action}", None)
        if handler is None:
            raise EtcdError(INVALID_ARGUMENT, f"etcdserver: unknown auth command {action!r}")
        out: dict[str, Any] = handler(req, tokens)
        return out

    def _bump(self) -> None:
        self.revision += 1
        self._cache.clear()

    def _apply_enable(self, req: dict[str, Any], tokens: TokenTable | None) -> dict[str, Any]:
        if self.enabled:
            return {}
        root = self.users.get(ROOT)
        if root is None:
            raise auth_error(MSG_ROOT_USER_MISSING)
        if ROOT not in root.roles:
            raise auth_error(MSG_ROOT_ROLE_MISSING)
        self.enabled = True
        self._bump()
        return {}

    def _apply_disable(self, req: dict[str, Any], tokens: TokenTable | None) -> dict[str, Any]:
        if self.enabled:
            self.enabled = False
            self._bump()
            if tokens is not None:
                tokens.clear()
        return {}

    def _apply_authenticate(self, req: dict[str, Any], tokens: TokenTable | None) -> dict[str, Any]:
        if not self.enabled:
            raise auth_error(MSG_AUTH_NOT_ENABLED)
        name = req["name"]
        if name not in self.users:
            raise auth_error(MSG_AUTH_FAILED)
        if tokens is not None:
            tokens.assign(req["token"], name, self.revision)
        return {"token": req["token"]}

    def _apply_user_add(self, req: dict[str, Any], tokens: TokenTable | None) -> dict[str, Any]:
        name = req["name"]
        if not name:
            raise auth_error(MSG_USER_EMPTY)
        if name in self.users:
            raise auth_error(MSG_USER_EXISTS)
        self.users[name] = User(req.get("password", ""), [], bool(req.get("no_password")))
        self._bump()
        return {}

    def _apply_user_delete(self, req: dict[str, Any], tokens: TokenTable | None) -> dict[str, Any]:
        name = req["name"]
        if self.enabled and name == ROOT:
            raise auth_error(MSG_INVALID_MGMT)
        if name not in self.users:
            raise auth_error(MSG_USER_NOT_FOUND)
        del self.users[name]
        self._bump()
        if tokens is not None:
            tokens.invalidate_user(name)
        return {}

    def _apply_user_changepw(self, req: dict[str, Any], tokens: TokenTable | None) -> dict[str, Any]:
        user = self.users.get(req["name"])
        if user is None:
            raise auth_error(MSG_USER_NOT_FOUND)
        user.password = req["password"]
        self._bump()
        if tokens is not None:
            tokens.invalidate_user(req["name"])
        return {}

    def _apply_user_grant(self, req: dict[str, Any], tokens: TokenTable | None) -> dict[str, Any]:
        user = self.users.get(req["user"])
        if user is None:
            raise auth_error(MSG_USER_NOT_FOUND)
        role = req["role"]
        if role != ROOT and role not in self.roles:
            raise auth_error(MSG_ROLE_NOT_FOUND)
        if role not in user.roles:
            user.roles = sorted([*user.roles, role])
            self._bump()
        return {}

    def _apply_user_revoke(self, req: dict[str, Any], tokens: TokenTable | None) -> dict[str, Any]:
        name, role = req["name"], req["role"]
        if self.enabled and name == ROOT and role == ROOT:
            raise auth_error(MSG_INVALID_MGMT)
        user = self.users.get(name)
        if user is None:
            raise auth_error(MSG_USER_NOT_FOUND)
        if role not in user.roles:
            raise auth_error(MSG_ROLE_NOT_GRANTED)
        user.roles = [r for r in user.roles if r != role]
        self._bump()
        return {}

    def _apply_role_add(self, req: dict[str, Any], tokens: TokenTable | None) -> dict[str, Any]:
        name = req["name"]
        if not name:
            raise auth_error(MSG_ROLE_EMPTY)
        if name in self.roles:
            raise auth_error(MSG_ROLE_EXISTS)
        self.roles[name] = []
        self._bump()
        return {}

    def _apply_role_delete(self, req: dict[str, Any], tokens: TokenTable | None) -> dict[str, Any]:
        name = req["role"]
        if self.enabled and name == ROOT:
            raise auth_error(MSG_INVALID_MGMT)
        if name not in self.roles:
            raise auth_error(MSG_ROLE_NOT_FOUND)
        del self.roles[name]
        for user in self.users.values():
            if name in user.roles:
                user.roles = [r for r in user.roles if r != name]
        self._bump()
        return {}

    def _apply_role_grant(self, req: dict[str, Any], tokens: TokenTable | None) -> dict[str, Any]:
        perms = self.roles.get(req["name"])
        if perms is None:
            raise auth_error(MSG_ROLE_NOT_FOUND)
        perm = req["perm"]
        new = {"permType": int(perm["permType"]), "key": perm["key"], "range_end": perm["range_end"]}
        kept = [p for p in perms if (p["key"], p["range_end"]) != (new["key"], new["range_end"])]
        kept.append(new)
        kept.sort(key=lambda p: (p["key"], p["range_end"]))
        self.roles[req["name"]] = kept
        self._bump()
        return {}

    def _apply_role_revoke(self, req: dict[str, Any], tokens: TokenTable | None) -> dict[str, Any]:
        perms = self.roles.get(req["role"])
        if perms is None:
            raise auth_error(MSG_ROLE_NOT_FOUND)
        target = (req["key"], req["range_end"])
        kept = [p for p in perms if (p["key"], p["range_end"]) != target]
        if len(kept) == len(perms):
            raise auth_error(MSG_PERMISSION_NOT_GRANTED)
        self.roles[req["role"]] = kept
        self._bump()
        return {}

    # -- snapshots -------------------------------------------------------------------------------

    def dump(self) -> dict[str, Any]:
        """The state as JSON-able data (bytes in base64), sorted: the snapshot's ``"auth"``."""
        return {
            "enabled": self.enabled,
            "revision": self.revision,
            "users": [[name, u.password, u.roles, u.no_password] for name, u in sorted(self.users.items())],
            "roles": [
                [name, [[p["permType"], codec.b64(p["key"]), codec.b64(p["range_end"])] for p in perms]]
                for name, perms in sorted(self.roles.items())
            ],
        }

    @classmethod
    def load(cls, data: dict[str, Any] | None) -> AuthState:
        """The inverse of :meth:`dump`; ``None`` (a snapshot from before auth) is a fresh, disabled store."""
        state = cls()
        if not data:
            return state
        state.enabled = bool(data["enabled"])
        state.revision = int(data["revision"])
        for name, password, roles, no_password in data["users"]:
            state.users[name] = User(password, list(roles), bool(no_password))
        for name, perms in data["roles"]:
            state.roles[name] = [
                {"permType": int(t), "key": base64.b64decode(k), "range_end": base64.b64decode(e)}
                for t, k, e in perms
            ]
        return state


class TokenTable:
    """This member's simple tokens: token -> (user, auth revision at assignment, expiry)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, ttl: float = TOKEN_TTL) -> None:
        self.clock = clock
        self.ttl = ttl
        self.tokens: dict[str, tuple[str, float]] = {}
        self._sweep_at = 1024

    @staticmethod
    def new_token() -> str:
        """etcd's simple token shape: 16 random letters (the receiving member adds ``.<n>``)."""
        return "".join(secrets.choice(TOKEN_LETTERS) for _ in range(16))

    def assign(self, token: str, name: str, revision: int) -> None:
        now = self.clock()
        self.tokens[token] = (name, now + self.ttl)
        if len(self.tokens) >= self._sweep_at:  # expired tokens go in bulk, amortised O(1)
            for old in [t for t, (_, expiry) in self.tokens.items() if expiry <= now]:
                del self.tokens[old]
            self._sweep_at = max(1024, 2 * len(self.tokens))

    def user_of(self, token: str) -> str | None:
        """The user of a live token (its TTL restarts, as etcd's resetSimpleToken), else None."""
        entry = self.tokens.get(token)
        if entry is None:
            return None
        now = self.clock()
        if entry[1] <= now:
            del self.tokens[token]
            return None
        self.tokens[token] = (entry[0], now + self.ttl)
        return entry[0]

    def invalidate_user(self, name: str) -> None:
        for token in [t for t, (n, _) in self.tokens.items() if n == name]:
            del self.tokens[token]

    def clear(self) -> None:
        self.tokens.clear()


# -- per-request checks ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Credentials:
    """What a request says about its user: a token (``token``/``authorization`` metadata or the
    gateway's ``Authorization`` header) and, with --client-cert-auth, the client certificate's CN."""

    token: str | None = None
    common_name: str | None = None


NO_CREDENTIALS = Credentials()

CHECKED: contextvars.ContextVar[tuple[str, int] | None] = contextvars.ContextVar(
    "kvstore_auth_checked", default=None
)
"""(user, auth revision) of the request being served, once :func:`authorize` let it through;
:meth:`KVMachine._command <examples.kvstore.machine.KVMachine>` stamps it on the proposed command
and apply refuses the command with ``revision of auth store is old`` when the auth store changed
in between (etcd's check of the request header's auth revision)."""

ADMIN_ROUTES = frozenset(
    {
        "kv/compaction",
        "cluster/member/add",
        "cluster/member/remove",
        "cluster/member/promote",
        "cluster/member/update",
        "maintenance/snapshot",
        "maintenance/transfer-leadership",
        "maintenance/defragment",
        "maintenance/hash",
        "maintenance/hashkv",
        "auth/enable",
        "auth/disable",
        "auth/user/add",
        "auth/user/get",
        "auth/user/list",
        "auth/user/delete",
        "auth/user/changepw",
        "auth/user/grant",
        "auth/user/revoke",
        "auth/role/add",
        "auth/role/get",
        "auth/role/list",
        "auth/role/delete",
        "auth/role/grant",
        "auth/role/revoke",
    }
)


def _field(body: dict[str, Any], name: str) -> Any:
    """A request field under its proto name or its JSON (lowerCamel) name, as the gateway accepts
    both: a check must see every spelling the request parser sees."""
    value = body.get(name)
    if value is None and "_" in name:
        value = body.get(codec._camel(name))
    return value


def _bytes(body: dict[str, Any], name: str) -> bytes:
    value = _field(body, name)
    if not value:
        return b""
    try:
        return base64.b64decode(value)
    except (ValueError, TypeError):
        return b""  # the request's own parsing reports the bad base64


def prefix_end(prefix: bytes) -> bytes:
    """clientv3.GetPrefixRangeEnd: the first key after every key starting with ``prefix``."""
    b = bytearray(prefix)
    for i in range(len(b) - 1, -1, -1):
        if b[i] < 0xFF:
            b[i] += 1
            return bytes(b[: i + 1])
    return b"\0"


def user_of(state: AuthState, tokens: TokenTable, creds: Credentials) -> str:
    """etcd's AuthInfoFromCtx: the token's user; else the certificate's CN; else
    ``user name is empty``. An unknown or expired token is ``invalid auth token``."""
    if creds.token:
        name = tokens.user_of(creds.token)
        if name is None:
            raise auth_error(MSG_INVALID_TOKEN)
        return name
    if creds.common_name:
        return creds.common_name
    raise auth_error(MSG_USER_EMPTY)


def txn_checks(body: dict[str, Any], out: list[tuple[bytes, bytes, int]]) -> None:
    """Every (key, range_end, READ/WRITE) a TxnRequest body touches, compares included."""
    for cmp in _field(body, "compare") or ():
        if isinstance(cmp, dict):
            out.append((_bytes(cmp, "key"), _bytes(cmp, "range_end"), READ))
    for branch in ("success", "failure"):
        for op in _field(body, branch) or ():
            if not isinstance(op, dict):
                continue
            if isinstance(_field(op, "request_range"), dict):
                r = _field(op, "request_range")
                out.append((_bytes(r, "key"), _bytes(r, "range_end"), READ))
            elif isinstance(_field(op, "request_put"), dict):
                r = _field(op, "request_put")
                out.append((_bytes(r, "key"), b"", WRITE))
                if _field(r, "prev_kv"):
                    out.append((_bytes(r, "key"), b"", READ))
            elif isinstance(_field(op, "request_delete_range"), dict):
                r = _field(op, "request_delete_range")
                out.append((_bytes(r, "key"), _bytes(r, "range_end"), WRITE))
                if _field(r, "prev_kv"):
                    out.append((_bytes(r, "key"), _bytes(r, "range_end"), READ))
            elif isinstance(_field(op, "request_txn"), dict):
                txn_checks(_field(op, "request_txn"), out)


def checks_for(route: str, body: dict[str, Any]) -> list[tuple[bytes, bytes, int]] | None:
    """The key permissions ``route`` needs, or None when it needs no key permission."""
    if route == "kv/range":
        return [(_bytes(body, "key"), _bytes(body, "range_end"), READ)]
    if route in ("kv/put", "kv/deleterange"):
        end = b"" if route == "kv/put" else _bytes(body, "range_end")
        out = [(_bytes(body, "key"), end, WRITE)]
        if _field(body, "prev_kv"):
            out.append((_bytes(body, "key"), end, READ))
        return out
    if route == "kv/txn":
        found: list[tuple[bytes, bytes, int]] = []
        txn_checks(body, found)
        return found
    if route == "watch":
        cr = _field(body, "create_request")
        if isinstance(cr, dict):
            return [(_bytes(cr, "key"), _bytes(cr, "range_end"), READ)]
        return None
    if route in ("lock/lock", "election/campaign"):
        prefix = _bytes(body, "name") + b"/"
        return [(prefix, prefix_end(prefix), READ), (prefix, prefix_end(prefix), WRITE)]
    if route in ("election/leader", "election/observe"):
        prefix = _bytes(body, "name") + b"/"
        return [(prefix, prefix_end(prefix), READ)]
    if route == "lock/unlock":
        return [(_bytes(body, "key"), b"", WRITE)]
    if route in ("election/proclaim", "election/resign"):
        leader = _field(body, "leader")
        return [(_bytes(leader, "key") if isinstance(leader, dict) else b"", b"", WRITE)]
    return None


def authorize(
    state: AuthState,
    tokens: TokenTable,
    route: str,
    body: dict[str, Any],
    creds: Credentials,
    lease_keys: Callable[[int], list[bytes]] | None = None,
) -> None:
    """Raise etcd's error unless the request on ``route`` (a gateway route, e.g. ``kv/put``)
    with JSON ``body`` is permitted to the user of ``creds``. Nothing to do when auth is off."""
    if not state.enabled:
        return
    CHECKED.set(None)
    if route in ADMIN_ROUTES:
        name = user_of(state, tokens, creds)
        state.check_admin(name)
        CHECKED.set((name, state.revision))
        return
    if route in ("lease/revoke", "kv/lease/revoke", "lease/timetolive", "kv/lease/timetolive"):
        # etcd checks write (revoke) or read (timetolive) permission on every attached key.
        name = user_of(state, tokens, creds)
        want = WRITE if route.endswith("revoke") else READ
        try:
            lease_id = int(body.get("ID", 0))
        except (TypeError, ValueError):
            return  # the request's own parsing reports it
        for key in lease_keys(lease_id) if lease_keys else ():
            state.check_op(name, key, b"", want)
        CHECKED.set((name, state.revision))
        return
    try:
        needed = checks_for(route, body)
    except (TypeError, AttributeError, ValueError):
        # A body whose shape the walk cannot follow (the request parser would refuse it too):
        # fail closed rather than let an unchecked request through.
        user_of(state, tokens, creds)
        raise auth_error(MSG_PERMISSION_DENIED) from None
    if needed is None:
        return
    name = user_of(state, tokens, creds)
    for key, end, want in needed:
        state.check_op(name, key, end, want)
    CHECKED.set((name, state.revision))


__all__ = [
    "ROOT",
    "AuthState",
    "Credentials",
    "TokenTable",
    "auth_error",
    "authorize",
    "check_password",
    "hash_password",
]
