"""``python -m examples.kvstore``: run one member with etcd's command-line flags.

With no flags this is a single-member store on 127.0.0.1:2379 (peer port 2380)
keeping its data in ``./default.etcd``, like ``etcd`` run bare. A 3-member
cluster, one command per member (see docs/kvstore.md)::

    python -m examples.kvstore --name m0 --data-dir m0.etcd \\
        --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \\
        --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \\
        --initial-cluster m0=http://127.0.0.1:2380,m1=http://127.0.0.1:2480,m2=http://127.0.0.1:2580 \\
        --initial-cluster-token demo --initial-cluster-state new

Flags are accepted with one or two dashes and as ``--flag value`` or
``--flag=value``, as Go's flag package does. A bad value prints a message and
exits with status 2.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import signal
import sys
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from examples.kvstore.server import ClientTls, ServerConfig

LOG_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING, "error": logging.ERROR}


class FlagError(ValueError):
    """A flag value etcd would refuse."""


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "t", "true"):
        return True
    if value in ("0", "f", "false"):
        return False
    raise argparse.ArgumentTypeError(f"invalid boolean value {text!r}")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid integer value {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def parse_urls(text: str, flag: str) -> list[str]:
    """A comma-separated list of http(s)://host:port URLs."""
    urls = [u.strip() for u in text.split(",") if u.strip()]
    if not urls:
        raise FlagError(f"{flag}: no URL given")
    for u in urls:
        parts = urlsplit(u)
        if parts.scheme not in ("http", "https"):
            raise FlagError(f"{flag}: URL scheme must be http or https: {u!r}")
        try:
            port = parts.port
        except ValueError:
            raise FlagError(f"{flag}: invalid port in {u!r}") from None
        if not parts.hostname or port is None:
            raise FlagError(f"{flag}: URL must be scheme://host:port: {u!r}")
        if parts.path not in ("", "/"):
            raise FlagError(f"{flag}: URL must not have a path: {u!r}")
    return urls


def parse_initial_cluster(text: str) -> dict[str, list[str]]:
    """``name=url,name=url`` (a name may repeat to give several peer URLs)."""
    out: dict[str, list[str]] = {}
    for item in (p.strip() for p in text.split(",")):
        if not item:
            continue
        name, sep, url = item.partition("=")
        if not sep or not name:
            raise FlagError(f"--initial-cluster: expected name=URL, got {item!r}")
        out.setdefault(name, []).extend(parse_urls(url, "--initial-cluster"))
    if not out:
        raise FlagError("--initial-cluster is empty")
    return out


def read_peer_secret(path: str) -> bytes:
    """The shared peer secret in ``path``, without surrounding whitespace (a final newline)."""
    from raftlib.errors import ConfigError
    from raftlib.transport.peerauth import check_peer_secret

    try:
        with open(path, "rb") as f:
            raw = f.read(64 * 1024).strip()
    except OSError as exc:
        raise FlagError(f"--peer-shared-secret-file: cannot read {path!r}: {exc.strerror or exc}") from None
    try:
        secret = check_peer_secret(raw)
    except ConfigError as exc:
        raise FlagError(f"--peer-shared-secret-file {path!r}: {exc}") from None
    assert secret is not None
    return secret


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m examples.kvstore",
        description="An etcd-compatible key-value store member on raftlib (etcd's flags).",
    )

    def flag(name: str, **kw: Any) -> None:
        p.add_argument(f"--{name}", f"-{name}", dest=name.replace("-", "_"), **kw)

    flag("name", default="default", help="human-readable name of this member (default: default)")
    flag("data-dir", default=None, help="path to the data directory (default: ${name}.etcd)")
    flag("listen-client-urls", default="http://127.0.0.1:2379", help="URLs to listen on for client traffic")
    flag("listen-client-http-urls", default="", help="URLs for the JSON gateway alone (client URLs: gRPC)")
    flag("advertise-client-urls", default=None, help="client URLs of this member to advertise to the cluster")
    flag("listen-peer-urls", default="http://127.0.0.1:2380", help="URLs to listen on for peer traffic")
    flag("initial-advertise-peer-urls", default=None, help="peer URLs of this member to advertise")
    flag("initial-cluster", default=None, help="initial cluster configuration: name=peerURL,...")
    flag("initial-cluster-state", default="new", choices=["new", "existing"], help="new or existing")
    flag("initial-cluster-token", default="etcd-cluster", help="initial cluster token")
    flag("heartbeat-interval", type=_positive_int, default=100, help="time (in ms) of a heartbeat interval")
    flag("election-timeout", type=_positive_int, default=1000, help="time (in ms) for an election to timeout")
    flag("snapshot-count", type=_positive_int, default=100_000, help="committed entries between snapshots")
    flag("max-request-bytes", type=_positive_int, default=1_572_864, help="maximum client request size")
    flag("request-timeout", type=_positive_float, default=7.0, help="(extension) seconds before 'timed out'")
    flag("cert-file", default="", help="path to the client server TLS cert file")
    flag("key-file", default="", help="path to the client server TLS key file")
    flag("trusted-ca-file", default="", help="path to the client server TLS trusted CA cert file")
    flag("client-cert-auth", type=_bool, nargs="?", const=True, default=False, help="require client certs")
    flag("peer-cert-file", default="", help="path to the peer server TLS cert file")
    flag("peer-key-file", default="", help="path to the peer server TLS key file")
    flag("peer-trusted-ca-file", default="", help="path to the peer server TLS trusted CA file")
    flag("peer-client-cert-auth", type=_bool, nargs="?", const=True, default=True, help="(always on)")
    flag(
        "peer-shared-secret-file",
        default="",
        help="(extension) file holding the secret every member proves to its peers (>= 16 bytes)",
    )
    flag(
        "auth-token",
        default="simple",
        help="auth token type and options: simple, or jwt,sign-method=HS256,priv-key=FILE[,ttl=5m] "
        "(HS256, HS384, HS512; priv-key holds the shared secret)",
    )
    flag("auth-token-ttl", type=_positive_int, default=300, help="lifetime in seconds of a simple token")
    flag("unsafe-no-fsync", type=_bool, nargs="?", const=True, default=False, help="disable fsync (unsafe)")
    flag(
        "restore-snapshot",
        default=None,
        help="(extension) seed a new member's keys from a /v3/maintenance/snapshot file "
        "(with --initial-cluster-state new; ignored once the data dir holds a member)",
    )
    flag("log-level", default="info", choices=sorted(LOG_LEVELS), help="debug, info, warn or error")
    return p


def config_from_args(argv: Sequence[str] | None = None) -> tuple[ServerConfig, str]:
    """Parse etcd's flags into a :class:`ServerConfig` (and the log level); FlagError on bad values."""
    parser = build_parser()
    a = parser.parse_args(argv)
    listen_client = parse_urls(a.listen_client_urls, "--listen-client-urls")
    listen_client_http = []
    if a.listen_client_http_urls:
        listen_client_http = parse_urls(a.listen_client_http_urls, "--listen-client-http-urls")
    advertise_client = (
        parse_urls(a.advertise_client_urls, "--advertise-client-urls")
        if a.advertise_client_urls
        else listen_client
    )
    listen_peer = parse_urls(a.listen_peer_urls, "--listen-peer-urls")
    advertise_peer = (
        parse_urls(a.initial_advertise_peer_urls, "--initial-advertise-peer-urls")
        if a.initial_advertise_peer_urls
        else listen_peer
    )
    cluster = parse_initial_cluster(a.initial_cluster) if a.initial_cluster else {a.name: advertise_peer}
    if a.name not in cluster:
        raise FlagError(f"--initial-cluster has no entry for --name {a.name!r} (it has {', '.join(cluster)})")
    if sorted(cluster[a.name]) != sorted(advertise_peer):
        raise FlagError(
            f"--initial-cluster must include {a.name}={','.join(advertise_peer)} "
            f"(the --initial-advertise-peer-urls), got {','.join(cluster[a.name])}"
        )
    if 5 * a.heartbeat_interval > a.election_timeout:
        raise FlagError(
            f"--election-timeout[{a.election_timeout}ms] should be at least as 5 times as "
            f"--heartbeat-interval[{a.heartbeat_interval}ms]"
        )
    if a.election_timeout > 50_000:
        raise FlagError(
            f"--election-timeout[{a.election_timeout}ms] is too long, and should be set less than 50000ms"
        )
    if a.restore_snapshot:
        if a.initial_cluster_state != "new":
            raise FlagError("--restore-snapshot needs --initial-cluster-state new")
        import os.path

        if not os.path.isfile(a.restore_snapshot):
            raise FlagError(f"--restore-snapshot: no such file {a.restore_snapshot!r}")
    client_tls = None
    if a.cert_file or a.key_file:
        if not (a.cert_file and a.key_file):
            raise FlagError("--cert-file and --key-file must be given together")
        if a.client_cert_auth and not a.trusted_ca_file:
            raise FlagError("--client-cert-auth needs --trusted-ca-file")
        client_tls = ClientTls(a.cert_file, a.key_file, a.trusted_ca_file or None, a.client_cert_auth)
    if any(u.startswith("https:") for u in listen_client + listen_client_http) and client_tls is None:
        raise FlagError("https client URLs need --cert-file and --key-file")
    peer_tls = None
    if a.peer_cert_file or a.peer_key_file or a.peer_trusted_ca_file:
        if not (a.peer_cert_file and a.peer_key_file and a.peer_trusted_ca_file):
            raise FlagError(
                "peer TLS is mutual in raftlib: give --peer-cert-file, --peer-key-file "
                "and --peer-trusted-ca-file"
            )
        from raftlib.transport import TlsConfig

        # etcd's peer check: a member's certificate must name the host of its peer URL.
        peer_tls = TlsConfig(
            a.peer_cert_file, a.peer_key_file, a.peer_trusted_ca_file, peer_identity="address"
        )
    if any(u.startswith("https:") for u in listen_peer) and peer_tls is None:
        raise FlagError("https peer URLs need --peer-cert-file, --peer-key-file and --peer-trusted-ca-file")
    from examples.kvstore.auth import AuthTokenError, parse_auth_token

    try:
        parse_auth_token(a.auth_token)  # the member parses it again; refuse it here, with exit 2
    except AuthTokenError as exc:
        raise FlagError(str(exc)) from None
    config = ServerConfig(
        name=a.name,
        data_dir=a.data_dir or f"{a.name}.etcd",
        listen_client_urls=listen_client,
        listen_client_http_urls=listen_client_http,
        advertise_client_urls=advertise_client,
        listen_peer_urls=listen_peer,
        initial_advertise_peer_urls=advertise_peer,
        initial_cluster=cluster,
        initial_cluster_state=a.initial_cluster_state,
        initial_cluster_token=a.initial_cluster_token,
        heartbeat_interval_ms=a.heartbeat_interval,
        election_timeout_ms=a.election_timeout,
        snapshot_count=a.snapshot_count,
        max_request_bytes=a.max_request_bytes,
        request_timeout=a.request_timeout,
        client_tls=client_tls,
        peer_tls=peer_tls,
        peer_secret=read_peer_secret(a.peer_shared_secret_file) if a.peer_shared_secret_file else None,
        fsync=not a.unsafe_no_fsync,
        auth_token=a.auth_token,
        auth_token_ttl=float(a.auth_token_ttl),
        restore_snapshot=a.restore_snapshot,
    )
    return config, a.log_level


async def run(config: ServerConfig) -> None:
    """Serve until SIGINT or SIGTERM, then stop cleanly."""
    from examples.kvstore.server import KVServer

    server = KVServer(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await server.start()
    print(
        f"kvstore member {config.name} ({server.member_id:x}) ready: "
        f"clients {', '.join(server.client_urls)}, peers {', '.join(config.listen_peer_urls)}",
        file=sys.stderr,
        flush=True,
    )
    try:
        await stop.wait()
    finally:
        await server.stop()


GC_YOUNG_THRESHOLD = 20_000
"""Net new container objects between two young-generation collections (CPython's default: 700)."""


def tune_gc() -> None:
    """Collect the young generation every 20,000 net new objects instead of every 700.

    A member under load keeps hundreds of requests in flight and grows its MVCC history by two
    tracked objects per write, so with the default the leader collected about a hundred times a
    second and ran a full collection every few seconds (38 ms at 154,000 objects). Measured with
    benchmarks/bench_kv.py at 256 clients: 6-10 % more puts and ranges per second and half the
    p99 of ranges. Reference cycles still get collected, just in larger batches (a few MB).
    """
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, gen1, gen2)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        config, level = config_from_args(argv)
    except FlagError as exc:
        print(f"kvstore: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=LOG_LEVELS[level], stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    import raftlib

    raftlib.install_uvloop()
    tune_gc()
    try:
        asyncio.run(run(config))
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        print(f"kvstore: {exc}", file=sys.stderr)
        return 1
    except raftlib.ConfigError as exc:
        print(f"kvstore: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
