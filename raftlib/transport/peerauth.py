"""Peer authentication by a cluster-wide shared secret (HMAC-SHA256 challenge/response).

Owns: validating the configured secret, deriving the MAC key from it, and the two proofs
exchanged in the TCP transport's handshake (``docs/transport.md`` section 3, "Shared
secret"). The transport owns the frames and their order.

Invariant: the secret itself never leaves the process. On the wire travel only two fresh
random nonces (one chosen by each side) and two HMAC-SHA256 values over a transcript that
binds the role (dialler or acceptor), the cluster id, both node ids and both nonces. A
proof therefore answers one connection's challenge only: replaying it on another
connection (new nonce) or reflecting it back to its sender (other role) fails, and proofs
are compared in constant time (:func:`hmac.compare_digest`).
"""

from __future__ import annotations

import hashlib
import hmac
import os

from raftlib.codec import AUTH_MAC_BYTES, AUTH_NONCE_BYTES
from raftlib.errors import ConfigError

__all__ = ["MIN_SECRET_BYTES", "MAX_SECRET_BYTES", "PeerSecret", "check_peer_secret"]

MIN_SECRET_BYTES = 16
"""Shortest secret accepted: an observer who records a handshake can test guesses offline."""
MAX_SECRET_BYTES = 4096
"""Longest secret accepted (a larger value is almost surely the wrong file)."""

_KEY_LABEL = b"raftlib peer secret v1"
_TRANSCRIPT_LABEL = b"raftlib-peer-auth-v1"
DIALLER = b"dialler"
"""Role label of the proof the connecting side sends."""
ACCEPTOR = b"acceptor"
"""Role label of the proof the listening side sends."""


def check_peer_secret(secret: object) -> bytes | None:
    """Validate a configured peer secret; return it as bytes (``None`` stays ``None``).

    A ``str`` is taken as its UTF-8 bytes. Raises :class:`~raftlib.errors.ConfigError`
    for any other type, and for a secret shorter than :data:`MIN_SECRET_BYTES` or
    longer than :data:`MAX_SECRET_BYTES` bytes.
    """
    if secret is None:
        return None
    if isinstance(secret, str):
        raw = secret.encode("utf-8")
    elif isinstance(secret, (bytes, bytearray, memoryview)):
        raw = bytes(secret)
    else:
        raise ConfigError(f"peer_secret must be bytes, str or None, not {type(secret).__name__}")
    if not raw:
        raise ConfigError("peer_secret is empty (give None for no shared secret)")
    if len(raw) < MIN_SECRET_BYTES:
        raise ConfigError(
            f"peer_secret is {len(raw)} bytes; use at least {MIN_SECRET_BYTES} random bytes "
            "(e.g. the output of `openssl rand -hex 32`)"
        )
    if len(raw) > MAX_SECRET_BYTES:
        raise ConfigError(f"peer_secret is {len(raw)} bytes; at most {MAX_SECRET_BYTES} are accepted")
    return raw


def _field(b: bytes) -> bytes:
    return len(b).to_bytes(4, "little") + b


class PeerSecret:
    """The MAC key derived from a shared secret, and the proofs of one handshake.

    The key is HMAC-SHA256(secret, label), so the raw secret is held only long
    enough to derive it. ``repr`` never shows key material.
    """

    __slots__ = ("_key",)

    def __init__(self, secret: bytes | str) -> None:
        raw = check_peer_secret(secret)
        assert raw is not None
        self._key = hmac.new(raw, _KEY_LABEL, hashlib.sha256).digest()

    def __repr__(self) -> str:
        return "PeerSecret(<hidden>)"

    @staticmethod
    def new_nonce() -> bytes:
        """A fresh random nonce (from the OS's CSPRNG)."""
        return os.urandom(AUTH_NONCE_BYTES)

    def proof(
        self,
        role: bytes,
        cluster_id: str,
        dialler: str,
        acceptor: str,
        dialler_nonce: bytes,
        acceptor_nonce: bytes,
    ) -> bytes:
        """HMAC-SHA256 over the handshake transcript, for ``role`` (:data:`DIALLER` or :data:`ACCEPTOR`)."""
        msg = b"".join(
            (
                _TRANSCRIPT_LABEL,
                _field(role),
                _field(cluster_id.encode("utf-8")),
                _field(dialler.encode("utf-8")),
                _field(acceptor.encode("utf-8")),
                _field(dialler_nonce),
                _field(acceptor_nonce),
            )
        )
        mac = hmac.new(self._key, msg, hashlib.sha256).digest()
        assert len(mac) == AUTH_MAC_BYTES
        return mac

    def verify(
        self,
        mac: bytes,
        role: bytes,
        cluster_id: str,
        dialler: str,
        acceptor: str,
        dialler_nonce: bytes,
        acceptor_nonce: bytes,
    ) -> bool:
        """Whether ``mac`` is the proof for this transcript (constant-time comparison)."""
        expected = self.proof(role, cluster_id, dialler, acceptor, dialler_nonce, acceptor_nonce)
        return hmac.compare_digest(mac, expected)
