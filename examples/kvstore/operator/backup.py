"""Backups: the store's snapshot (``/v3/maintenance/snapshot``) saved with a SHA-256 and retention.

A backup is ``<dir>/<cluster>-<UTC time>-r<revision>.snap`` plus ``<same>.snap.sha256`` in
``sha256sum`` format (``sha256sum -c`` checks it). Both are written to temporary names first and
renamed, the checksum last, so a backup without its checksum is incomplete and never restored.
Restoring seeds the first member of a new cluster with ``--restore-snapshot``.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import ssl
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

SNAPSHOT_MAGIC = b"KVS1"


class BackupError(RuntimeError):
    pass


@dataclass(frozen=True)
class BackupInfo:
    path: Path
    sha256: str
    revision: int
    size: int
    time: float


def fetch_snapshot(
    client_url: str, ctx: ssl.SSLContext | None = None, timeout: float = 30.0
) -> tuple[bytes, int]:
    """The member's snapshot bytes and the revision it was taken at."""
    req = urllib.request.Request(client_url + "/v3/maintenance/snapshot", data=b"{}", method="POST")
    chunks: list[bytes] = []
    revision = 0
    remaining = None
    with urllib.request.urlopen(req, timeout=timeout, context=ctx) as resp:
        for line in resp:
            if not line.strip():
                continue
            msg = json.loads(line)
            if "error" in msg:
                raise BackupError(f"snapshot from {client_url} failed: {msg['error']}")
            result = msg.get("result", {})
            revision = int(result.get("header", {}).get("revision", revision) or revision)
            if result.get("blob"):
                chunks.append(base64.b64decode(result["blob"]))
            remaining = int(result.get("remaining_bytes", 0) or 0)
    data = b"".join(chunks)
    if remaining:
        raise BackupError(f"snapshot from {client_url} ended early ({remaining} bytes missing)")
    if not data.startswith(SNAPSHOT_MAGIC):
        raise BackupError(f"snapshot from {client_url} is not a kvstore snapshot")
    return data, revision


def write_backup(directory: Path, cluster: str, data: bytes, revision: int, retention: int) -> BackupInfo:
    directory.mkdir(parents=True, exist_ok=True)
    now = time.time()
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f"{int(now * 1000) % 1000:03d}Z"
    path = directory / f"{cluster}-{stamp}-r{revision}.snap"
    digest = hashlib.sha256(data).hexdigest()
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    sidecar = path.with_name(path.name + ".sha256")
    tmp = sidecar.with_name(sidecar.name + ".tmp")
    tmp.write_text(f"{digest}  {path.name}\n")
    os.replace(tmp, sidecar)
    prune(directory, cluster, retention)
    return BackupInfo(path, digest, revision, len(data), now)


def take_backup(
    client_url: str, directory: Path, cluster: str, retention: int, ctx: ssl.SSLContext | None = None
) -> BackupInfo:
    data, revision = fetch_snapshot(client_url, ctx)
    return write_backup(directory, cluster, data, revision, retention)


def list_backups(directory: Path, cluster: str) -> list[Path]:
    """Complete backups (with their checksum file), oldest first."""
    if not directory.is_dir():
        return []
    snaps = [p for p in directory.glob(f"{cluster}-*.snap") if p.with_name(p.name + ".sha256").exists()]
    return sorted(snaps, key=lambda p: p.name)


def prune(directory: Path, cluster: str, retention: int) -> list[Path]:
    """Delete all but the newest ``retention`` backups; returns the deleted ones."""
    backups = list_backups(directory, cluster)
    doomed = backups[: max(0, len(backups) - retention)]
    for p in doomed:
        with contextlib.suppress(FileNotFoundError):
            p.with_name(p.name + ".sha256").unlink()
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
    return doomed


def verify(path: Path) -> str:
    """Check a backup against its checksum file; returns the SHA-256 or raises BackupError."""
    sidecar = path.with_name(path.name + ".sha256")
    if not path.is_file():
        raise BackupError(f"{path}: no such backup")
    if not sidecar.is_file():
        raise BackupError(f"{path}: no checksum file {sidecar.name} (an incomplete backup?)")
    expected = sidecar.read_text().split()[0].lower() if sidecar.read_text().split() else ""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        head = f.read(len(SNAPSHOT_MAGIC))
        h.update(head)
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    if head != SNAPSHOT_MAGIC:
        raise BackupError(f"{path}: not a kvstore snapshot")
    if h.hexdigest() != expected:
        raise BackupError(f"{path}: checksum mismatch (file {h.hexdigest()}, {sidecar.name} says {expected})")
    return expected
