"""etcd's authentication and RBAC for the store: users, roles, permissions, simple and JWT tokens.

Owns four things:

* :class:`AuthState` -- the *replicated* auth store (enabled flag, auth revision, users with
  hashed passwords and granted roles, roles with READ/WRITE/READWRITE permissions on a key or a
  ``[key, range_end)`` interval). It changes only in :meth:`AuthState.apply`, called from
  :class:`~examples.kvstore.machine.KVMachine` on the Raft apply path (deterministic: no clock,
  no randomness), and it is part of the machine's snapshots (:meth:`dump` / :meth:`load`).
* :class:`TokenTable` -- this member's simple tokens (etcd's ``--auth-token=simple``): random
  strings assigned when an ``authenticate`` command is applied, expiring after
  :data:`TOKEN_TTL` seconds without use on this member's clock. Never in a snapshot.
* :class:`JWTTokens` -- etcd's ``--auth-token=jwt,...`` (:func:`parse_auth_token`): stateless
  signed tokens carrying the user name, the auth revision at Authenticate and an expiry, which
  every member holding the key verifies (HS256/HS384/HS512 with the standard library).
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
import json
import math
import os
import re
import secrets
import string
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

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

    def check_op(
        self, name: str, key: bytes, range_end: bytes, want: int, revision: int | None = None
    ) -> None:
        """etcd's isOpPermitted: raise ``permission denied`` unless ``name`` may do ``want``.
        ``revision``: the auth revision the credentials carry (a JWT's claim); one older than the
        store's is ``revision of auth store is old``, as in etcd (clientv3 then authenticates
        again). None skips that check."""
        if not self.enabled:
            return
        if not name or revision == 0:
            raise auth_error(MSG_USER_EMPTY)
        if revision is not None and revision < self.revision:
            raise auth_error(MSG_OLD_REVISION)
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
        """A simple token (``req["token"]``) is recorded in every member's table; with JWT the
        command carries no token (``""``) and the answer holds the auth revision the receiving
        member signs into the token (etcd's Authenticate assigns at apply, at the current revision)."""
        if not self.enabled:
            raise auth_error(MSG_AUTH_NOT_ENABLED)
        name = req["name"]
        if name not in self.users:
            raise auth_error(MSG_AUTH_FAILED)
        token = req.get("token", "")
        if tokens is not None and token:
            tokens.assign(token, name, self.revision)
        return {"token": token, "authRevision": self.revision}

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


class TokenProvider(Protocol):
    """What :func:`user_of` asks of a token provider (etcd's TokenProvider.info)."""

    def info(self, token: str, revision: int) -> tuple[str, int] | None:
        """The (user, auth revision) a token stands for, or None when it is unknown, expired or
        forged. ``revision`` is the store's current auth revision (what a simple token carries)."""
        ...


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

    def info(self, token: str, revision: int) -> tuple[str, int] | None:
        """A live token's user and the current auth revision (as etcd's simple tokens: their
        staleness is the request's, checked when the command is applied)."""
        name = self.user_of(token)
        return None if name is None else (name, revision)

    def invalidate_user(self, name: str) -> None:
        for token in [t for t, (n, _) in self.tokens.items() if n == name]:
            del self.tokens[token]

    def clear(self) -> None:
        self.tokens.clear()


# -- JWT tokens (--auth-token jwt,...) ---------------------------------------------------------------

JWT_TTL = 300.0
"""Seconds a JWT is valid after Authenticate when ``ttl`` is not given (etcd's DefaultTTL, 5 minutes)."""
HMAC_METHODS: dict[str, Callable[..., Any]] = {
    "HS256": hashlib.sha256,
    "HS384": hashlib.sha384,
    "HS512": hashlib.sha512,
}
"""The sign methods this store implements: HMAC with the shared secret in the priv-key file."""
KEY_PAIR_METHODS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512"}
)
"""etcd's public-key methods: they need an RSA/ECDSA library, which this store does not use."""
JWT_OPTIONS = ("sign-method", "pub-key", "priv-key", "ttl")
"""etcd's jwt options (server/auth/options.go)."""
MAX_KEY_FILE = 1 << 20
"""The largest key file read (a key is far smaller; this refuses a device or a wrong path)."""

MSG_INVALID_AUTH_OPTS = "auth: invalid auth options"
MSG_INVALID_AUTH_METHOD = "auth: invalid auth signature method"
MSG_MISSING_KEY = "auth: missing key data"


class AuthTokenError(ValueError):
    """A bad ``--auth-token`` value (the member refuses to start, exit status 2)."""


_GO_DURATION_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|\u00b5s|\u03bcs|ms|s|m|h)")
_GO_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "\u00b5s": 1e-6,
    "\u03bcs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}


def parse_go_duration(text: str) -> float:
    """Seconds in a Go duration (``time.ParseDuration``: ``300s``, ``5m``, ``1h30m``, ``1.5h``,
    ``500ms``, ``0``); ValueError otherwise."""
    rest = text
    sign = 1.0
    if rest[:1] in ("+", "-"):
        sign = -1.0 if rest[0] == "-" else 1.0
        rest = rest[1:]
    if rest == "0":
        return 0.0
    if not rest:
        raise ValueError(f"invalid duration {text!r}")
    total, pos = 0.0, 0
    while pos < len(rest):
        m = _GO_DURATION_PART.match(rest, pos)
        if m is None:
            raise ValueError(f"invalid duration {text!r}")
        total += float(m.group(1)) * _GO_UNITS[m.group(2)]
        pos = m.end()
    return sign * total


@dataclass(frozen=True)
class JWTOptions:
    """A parsed ``--auth-token jwt,...``: the sign method, its key and the token lifetime."""

    method: str
    key: bytes = field(repr=False)
    ttl: float = JWT_TTL


def parse_auth_token(text: str) -> JWTOptions | None:
    """etcd's ``--auth-token``: ``simple`` (None: simple tokens) or
    ``jwt,sign-method=HS256,priv-key=FILE[,pub-key=FILE][,ttl=DURATION]``. The key files are read
    here. Raise :class:`AuthTokenError` with a clear message (and etcd's error text) otherwise."""
    parts = text.split(",")
    kind = parts[0]
    options: dict[str, str] = {}
    for part in parts[1:]:
        pair = part.split("=")
        if len(pair) != 2:
            raise AuthTokenError(
                f"--auth-token: invalid option {part!r}, want name=value ({MSG_INVALID_AUTH_OPTS})"
            )
        if pair[0] in options:
            raise AuthTokenError(f"--auth-token: option {pair[0]!r} given twice ({MSG_INVALID_AUTH_OPTS})")
        options[pair[0]] = pair[1]
    if kind == "simple":
        if options:
            raise AuthTokenError(
                f"--auth-token: simple takes no options (got {', '.join(options)}); "
                "its lifetime is --auth-token-ttl"
            )
        return None
    if kind != "jwt":
        raise AuthTokenError(
            f"--auth-token: unknown token type {kind!r}: want simple or jwt,... ({MSG_INVALID_AUTH_OPTS})"
        )
    unknown = [name for name in options if name not in JWT_OPTIONS]
    if unknown:
        raise AuthTokenError(
            f"--auth-token: unknown jwt option(s) {', '.join(unknown)}: "
            f"the options are {', '.join(JWT_OPTIONS)} ({MSG_INVALID_AUTH_OPTS})"
        )
    ttl = JWT_TTL
    if options.get("ttl"):
        try:
            ttl = parse_go_duration(options["ttl"])
        except ValueError:
            raise AuthTokenError(
                f"--auth-token: ttl {options['ttl']!r} is not a duration (Go syntax: 300s, 5m, 1h30m) "
                f"({MSG_INVALID_AUTH_OPTS})"
            ) from None
        if ttl <= 0:
            raise AuthTokenError(f"--auth-token: ttl {options['ttl']!r} must be positive")

    method = options.get("sign-method", "")
    supported = ", ".join(HMAC_METHODS)
    if method in KEY_PAIR_METHODS:
        raise AuthTokenError(
            f"--auth-token: sign-method {method} needs an RSA/ECDSA library (the 'cryptography' "
            f"package), which this store does not use: use {supported} with a shared secret in priv-key"
        )
    if method not in HMAC_METHODS:
        got = f"sign-method {method!r}" if method else "no sign-method"
        raise AuthTokenError(f"--auth-token: {got}: want one of {supported} ({MSG_INVALID_AUTH_METHOD})")

    def read(option: str) -> bytes:
        """The whole file, as etcd reads it (a final newline is part of an HMAC secret)."""
        path = options[option]
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_KEY_FILE + 1)
        except OSError as exc:
            reason = exc.strerror or exc
            raise AuthTokenError(
                f"--auth-token: cannot read {option} {path!r}: {reason} ({MSG_INVALID_AUTH_OPTS})"
            ) from None
        if len(data) > MAX_KEY_FILE:
            raise AuthTokenError(f"--auth-token: {option} {path!r} is larger than {MAX_KEY_FILE} bytes")
        return data

    keys = {name: read(name) for name in ("pub-key", "priv-key") if options.get(name)}
    key = keys.get("priv-key", b"")
    if not key:
        raise AuthTokenError(
            f"--auth-token: sign-method {method} needs priv-key=FILE holding the shared secret "
            f"(a non-empty file; {MSG_MISSING_KEY})"
        )
    return JWTOptions(method, key, ttl)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


_B64URL = re.compile(r"[A-Za-z0-9_-]*")


def _b64url_decode(text: str) -> bytes:
    """Go's base64.RawURLEncoding: the URL alphabet, no padding (ValueError otherwise)."""
    if not _B64URL.fullmatch(text) or len(text) % 4 == 1:
        raise ValueError("not unpadded base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _go_json(value: dict[str, Any]) -> bytes:
    """``value`` as Go's json.Marshal writes a map: sorted keys, no spaces, UTF-8, ``<>&`` and
    U+2028/U+2029 escaped (so tokens are byte for byte etcd's)."""
    text = json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    for char, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                          ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):  # fmt: skip
        text = text.replace(char, escaped)
    return text.encode()


def _number(value: Any) -> float | None:
    """A JSON number claim (Go decodes numbers to float64; a bool or a string is no number)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


class JWTTokens:
    """etcd's JWT token provider (server/auth/jwt.go), HMAC methods only.

    :meth:`assign` signs ``{"exp", "revision", "username"}`` (exp: Unix seconds, now + ttl) with
    the configured method; :meth:`info` accepts a token whose header names that method, whose
    signature verifies with the key, whose ``exp`` (and ``nbf``/``iat`` when present) allow the
    current second, and whose ``username`` is a string and ``revision`` a number. Nothing is
    stored: every member configured with the same key accepts the token, before and after a
    restart, until it expires. ``clock`` is wall-clock Unix time (as JWT's ``exp``)."""

    def __init__(self, options: JWTOptions, clock: Callable[[], float] = time.time) -> None:
        if options.method not in HMAC_METHODS:
            raise AuthTokenError(f"unsupported JWT sign method {options.method!r}")
        if not options.key:
            raise AuthTokenError(MSG_MISSING_KEY)
        self.method = options.method
        self.ttl = options.ttl
        self.clock = clock
        self._key = options.key
        self._digest = HMAC_METHODS[options.method]
        self._header = _b64url(_go_json({"alg": self.method, "typ": "JWT"}))

    def _sign(self, signing_input: bytes) -> bytes:
        return hmac.new(self._key, signing_input, self._digest).digest()

    def assign(self, name: str, revision: int) -> str:
        """A signed token for ``name`` at auth ``revision`` (etcd's tokenJWT.assign)."""
        claims = {"exp": math.floor(self.clock() + self.ttl), "revision": revision, "username": name}
        signing_input = f"{self._header}.{_b64url(_go_json(claims))}"
        return f"{signing_input}.{_b64url(self._sign(signing_input.encode()))}"

    def info(self, token: str, revision: int) -> tuple[str, int] | None:
        """(user, the token's auth revision) of a valid token, else None (etcd's tokenJWT.info).
        ``revision`` is unused: a JWT carries its own."""
        try:
            header_b64, claims_b64, signature_b64 = token.split(".")
            header = json.loads(_b64url_decode(header_b64))
            claims = json.loads(_b64url_decode(claims_b64))
            signature = _b64url_decode(signature_b64)
        except ValueError:  # segments, base64, JSON, UTF-8 (UnicodeDecodeError is a ValueError)
            return None
        if not isinstance(header, dict) or header.get("alg") != self.method or not isinstance(claims, dict):
            return None
        now = math.floor(self.clock())
        for claim, valid in (
            ("exp", lambda t: now < t),
            ("nbf", lambda t: now >= t),
            ("iat", lambda t: now >= t),
        ):
            if claim in claims:
                moment = _number(claims[claim])
                if moment is None or (moment != 0 and not valid(moment)):
                    return None
        expected = self._sign(f"{header_b64}.{claims_b64}".encode())
        if not hmac.compare_digest(signature, expected):
            return None
        name, rev = claims.get("username"), _number(claims.get("revision"))
        if not isinstance(name, str) or rev is None or rev < 0:
            return None
        return name, int(rev)


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


def user_of(state: AuthState, tokens: TokenProvider, creds: Credentials) -> tuple[str, int]:
    """etcd's AuthInfoFromCtx: (user, auth revision) of the token -- the current revision for a
    simple token, the signed one for a JWT --; else the certificate's CN at the current revision;
    else ``user name is empty``. An unknown, expired or forged token is ``invalid auth token``."""
    if creds.token:
        found = tokens.info(creds.token, state.revision)
        if found is None:
            raise auth_error(MSG_INVALID_TOKEN)
        return found
    if creds.common_name:
        return creds.common_name, state.revision
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
    tokens: TokenProvider,
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
        # etcd's IsAdminPermitted does not look at the credentials' auth revision: a JWT from
        # before an auth change still manages the store (the check at apply uses the current one).
        name, _ = user_of(state, tokens, creds)
        state.check_admin(name)
        CHECKED.set((name, state.revision))
        return
    if route in ("lease/revoke", "kv/lease/revoke", "lease/timetolive", "kv/lease/timetolive"):
        # etcd checks write (revoke) or read (timetolive) permission on every attached key.
        name, revision = user_of(state, tokens, creds)
        want = WRITE if route.endswith("revoke") else READ
        try:
            lease_id = int(body.get("ID", 0))
        except (TypeError, ValueError):
            return  # the request's own parsing reports it
        keys = lease_keys(lease_id) if lease_keys else []
        for key in keys:
            state.check_op(name, key, b"", want, revision)
        CHECKED.set((name, revision if keys else state.revision))
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
    name, revision = user_of(state, tokens, creds)
    for key, end, want in needed:
        state.check_op(name, key, end, want, revision)
    CHECKED.set((name, revision))


__all__ = [
    "ROOT",
    "AuthState",
    "AuthTokenError",
    "Credentials",
    "JWTOptions",
    "JWTTokens",
    "TokenProvider",
    "TokenTable",
    "auth_error",
    "authorize",
    "check_password",
    "hash_password",
    "parse_auth_token",
    "parse_go_duration",
]
