"""etcd's gRPC wire contract: the .proto files beside this module and their generated Python stubs.

The ``.proto`` files carry over etcd v3.5's package, message, field and service names and numbers
(etcdserverpb, mvccpb, authpb, v3electionpb, v3lockpb) without the gateway and gogoproto
annotations. The stubs (``*_pb2.py``, ``*_pb2_grpc.py``) are build products, not committed:
:func:`ensure_generated` writes them with ``grpc_tools.protoc`` when one is missing or older than
its ``.proto``, or when the installed grpcio-tools/protobuf are not those that made them.
``make build`` calls it, and importing :mod:`examples.kvstore.proto.stubs` calls it too, so a
fresh clone works either way.

Invariant: the stubs on disk always come from one protoc run over all the files (written to a
temporary directory, then moved into place one by one under a lock), so two processes generating
at once never leave a half-written module behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parent
ROOT = PROTO_DIR.parent.parent.parent
"""The repository root: the protos import each other as ``examples/kvstore/proto/<name>.proto``."""
PROTOS = ("kv.proto", "auth.proto", "rpc.proto", "v3election.proto", "v3lock.proto")
ETCD_API_VERSION = "3.5"
"""The etcd release whose API the .proto files follow."""


class StubGenerationError(RuntimeError):
    """protoc failed (or grpcio-tools is missing); the message says which and how to fix it."""


def _outputs(proto: str) -> list[Path]:
    stem = proto[: -len(".proto")]
    return [PROTO_DIR / f"{stem}_pb2.py", PROTO_DIR / f"{stem}_pb2_grpc.py"]


STAMP = PROTO_DIR / ".generated-with"
"""The grpcio-tools and protobuf versions the stubs on disk were generated with."""


def _toolchain() -> str:
    import importlib.metadata as metadata

    try:
        return f"grpcio-tools {metadata.version('grpcio-tools')}, protobuf {metadata.version('protobuf')}"
    except metadata.PackageNotFoundError:
        return "unknown"


def stale() -> list[str]:
    """The .proto files whose stubs are missing, older than the file, or made by other tool versions."""
    if not STAMP.exists() or STAMP.read_text() != _toolchain():
        return list(PROTOS)
    out = []
    for proto in PROTOS:
        src = (PROTO_DIR / proto).stat().st_mtime
        if any(not p.exists() or p.stat().st_mtime < src for p in _outputs(proto)):
            out.append(proto)
    return out


def ensure_generated() -> None:
    """Generate the stubs if any is missing or stale (a no-op otherwise)."""
    if not stale():
        return
    with open(PROTO_DIR / ".generate.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if stale():  # another process may have generated them while we waited
                _generate()
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _generate() -> None:
    try:
        from grpc_tools import protoc  # type: ignore[import-untyped]
    except ImportError as exc:
        raise StubGenerationError(
            "grpcio-tools is not installed: pip install -e '.[kv]' (make build) to generate the gRPC stubs"
        ) from exc
    import importlib.resources

    include = str(importlib.resources.files("grpc_tools") / "_proto")
    with tempfile.TemporaryDirectory(prefix="kvstore-proto-") as tmp:
        args = [
            "grpc_tools.protoc",
            f"-I{ROOT}",
            f"-I{include}",
            f"--python_out={tmp}",
            f"--grpc_python_out={tmp}",
            *(str(Path("examples/kvstore/proto") / p) for p in PROTOS),
        ]
        with contextlib.chdir(ROOT) if hasattr(contextlib, "chdir") else _chdir(ROOT):
            status = protoc.main(args)
        if status != 0:
            raise StubGenerationError(f"protoc failed with status {status} on {PROTO_DIR}/*.proto")
        generated = Path(tmp) / "examples" / "kvstore" / "proto"
        for proto in PROTOS:
            for target in _outputs(proto):
                staged = target.with_suffix(".py.tmp")
                shutil.copyfile(generated / target.name, staged)
                os.replace(staged, target)
        STAMP.write_text(_toolchain())


@contextlib.contextmanager
def _chdir(path: Path):  # type: ignore[no-untyped-def]
    """contextlib.chdir for Python 3.10."""
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)
