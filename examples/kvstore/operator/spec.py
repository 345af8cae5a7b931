"""The declarative cluster spec: TOML (stdlib ``tomllib``; ``tomli`` on 3.10) or YAML (PyYAML).

Example (every key but ``name`` has a default)::

    name = "demo"
    size = 3
    data_root = "demo-cluster"        # relative paths are relative to the spec file
    client_ports = [32379, 32399]     # ranges the operator picks free ports from ...
    peer_ports = [32400, 32420]
    # addresses = [{client = "127.0.0.1:2379", peer = "127.0.0.1:2380"}, ...]   # ... or explicit slots
    grace_period = 10.0               # seconds a member may stay down before it is replaced
    heartbeat_interval = 100          # ms, passed to every member
    election_timeout = 1000
    extra_args = []                   # more member flags; changing them triggers a rolling restart

    [backup]
    interval = 300                    # seconds between snapshots (0 or no table: no backups)
    directory = "demo-backups"        # (default: <name>-backups next to the spec; never under data_root)
    retention = 5

    [tls]                             # optional, all paths
    cert_file = "..."; key_file = "..."; trusted_ca_file = "..."
    peer_cert_file = "..."; peer_key_file = "..."; peer_trusted_ca_file = "..."
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class SpecError(ValueError):
    """The spec is malformed; the message names the key and what is wrong with it."""


@dataclass(frozen=True)
class BackupPolicy:
    interval: float = 0.0
    """Seconds between backups; 0 disables periodic backups."""
    directory: Path = Path("backups")
    retention: int = 5


@dataclass(frozen=True)
class TlsSpec:
    cert_file: str = ""
    key_file: str = ""
    trusted_ca_file: str = ""
    peer_cert_file: str = ""
    peer_key_file: str = ""
    peer_trusted_ca_file: str = ""

    @property
    def client_https(self) -> bool:
        return bool(self.cert_file)

    @property
    def peer_https(self) -> bool:
        return bool(self.peer_cert_file)

    def member_args(self) -> list[str]:
        out: list[str] = []
        for key in (
            "cert_file",
            "key_file",
            "trusted_ca_file",
            "peer_cert_file",
            "peer_key_file",
            "peer_trusted_ca_file",
        ):
            value = getattr(self, key)
            if value:
                out += [f"--{key.replace('_', '-')}", value]
        if self.cert_file and self.trusted_ca_file:
            out += ["--client-cert-auth"]
        return out


@dataclass(frozen=True)
class Address:
    host: str
    client_port: int
    peer_port: int


@dataclass(frozen=True)
class ClusterSpec:
    name: str
    size: int = 3
    data_root: Path = Path(".")
    host: str = "127.0.0.1"
    client_ports: tuple[int, int] | None = None
    peer_ports: tuple[int, int] | None = None
    addresses: tuple[Address, ...] = ()
    allow_even_size: bool = False
    grace_period: float = 10.0
    heartbeat_interval: int = 100
    election_timeout: int = 1000
    startup_timeout: float = 30.0
    """How long a newly added learner may take to answer before it is given up (removed)."""
    max_lag: int = 1000
    """A learner is promoted once its applied index is within this many entries of the leader's commit."""
    reconcile_interval: float = 1.0
    extra_args: tuple[str, ...] = ()
    tls: TlsSpec = field(default_factory=TlsSpec)
    backup: BackupPolicy = field(default_factory=BackupPolicy)
    source: str = ""

    def member_args(self) -> list[str]:
        """The flags every member gets besides its identity and addresses."""
        return [
            "--heartbeat-interval", str(self.heartbeat_interval),
            "--election-timeout", str(self.election_timeout),
            *self.tls.member_args(),
            *self.extra_args,
        ]  # fmt: skip

    @property
    def config_hash(self) -> str:
        """Identifies the member configuration; a member started with another one is restarted."""
        return hashlib.sha256(json.dumps(self.member_args()).encode()).hexdigest()[:12]

    @property
    def quorum(self) -> int:
        return self.size // 2 + 1

    @property
    def client_scheme(self) -> str:
        return "https" if self.tls.client_https else "http"

    @property
    def peer_scheme(self) -> str:
        return "https" if self.tls.peer_https else "http"

    @property
    def state_file(self) -> Path:
        return self.data_root / "operator-state.json"


_KNOWN = {
    "name",
    "size",
    "data_root",
    "host",
    "client_ports",
    "peer_ports",
    "addresses",
    "allow_even_size",
    "grace_period",
    "heartbeat_interval",
    "election_timeout",
    "max_lag",
    "reconcile_interval",
    "extra_args",
    "tls",
    "backup",
}


def _load_text(path: Path) -> dict[str, Any]:
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        try:
            import yaml  # type: ignore[import-untyped]
        except ImportError:
            raise SpecError(
                f"{path}: YAML specs need PyYAML (pip install pyyaml), or write the spec in TOML"
            ) from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise SpecError(f"{path}: not valid YAML: {exc}") from None
    else:
        if sys.version_info >= (3, 11):
            import tomllib
        else:  # pragma: no cover - 3.10
            try:
                import tomli as tomllib
            except ImportError:
                raise SpecError(
                    f"{path}: TOML specs need Python 3.11+ or the tomli package (pip install tomli)"
                ) from None
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise SpecError(f"{path}: not valid TOML: {exc}") from None
    if not isinstance(data, dict):
        raise SpecError(f"{path}: the spec must be a table/mapping at the top level")
    return data


def load_spec(path: str | Path) -> ClusterSpec:
    """Read and validate a spec file; relative paths in it are relative to the file's directory."""
    p = Path(path)
    try:
        data = _load_text(p)
    except OSError as exc:
        raise SpecError(f"cannot read spec {p}: {exc.strerror or exc}") from None
    return parse_spec(data, base=p.resolve().parent, source=str(p))


def _int(data: dict[str, Any], key: str, default: int, minimum: int) -> int:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(f"{key}: expected an integer, got {value!r}")
    if value < minimum:
        raise SpecError(f"{key}: must be at least {minimum}, got {value}")
    return value


def _float(data: dict[str, Any], key: str, default: float, minimum: float) -> float:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SpecError(f"{key}: expected a number of seconds, got {value!r}")
    if value < minimum:
        raise SpecError(f"{key}: must be at least {minimum}, got {value}")
    return float(value)


def _range(data: dict[str, Any], key: str) -> tuple[int, int] | None:
    value = data.get(key)
    if value is None:
        return None
    if (
        not isinstance(value, list)
        or len(value) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        raise SpecError(f"{key}: expected [first, last] port numbers, got {value!r}")
    lo, hi = value
    if not 1 <= lo <= hi <= 65535:
        raise SpecError(f"{key}: expected 1 <= first <= last <= 65535, got [{lo}, {hi}]")
    return lo, hi


def _hostport(text: Any, what: str) -> tuple[str, int]:
    if not isinstance(text, str) or ":" not in text:
        raise SpecError(f"{what}: expected host:port, got {text!r}")
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise SpecError(f"{what}: expected host:port, got {text!r}")
    return host, int(port)


def parse_spec(data: dict[str, Any], base: Path = Path("."), source: str = "<spec>") -> ClusterSpec:
    """Validate a decoded spec; raises :class:`SpecError` with the offending key."""
    unknown = sorted(set(data) - _KNOWN)
    if unknown:
        raise SpecError(f"unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(_KNOWN))})")
    name = data.get("name")
    if not isinstance(name, str) or not name or not all(c.isalnum() or c in "-_" for c in name):
        raise SpecError(f"name: expected a non-empty string of letters, digits, '-' and '_', got {name!r}")
    size = _int(data, "size", 3, 1)
    allow_even = data.get("allow_even_size", False)
    if not isinstance(allow_even, bool):
        raise SpecError(f"allow_even_size: expected true or false, got {allow_even!r}")
    if size % 2 == 0 and not allow_even:
        raise SpecError(
            f"size: {size} is even; an even cluster tolerates no more failures than {size - 1} members "
            "(set allow_even_size = true to insist)"
        )
    root = data.get("data_root", f"{name}-cluster")
    if not isinstance(root, str) or not root:
        raise SpecError(f"data_root: expected a path, got {root!r}")
    host = data.get("host", "127.0.0.1")
    if not isinstance(host, str) or not host:
        raise SpecError(f"host: expected a host name or address, got {host!r}")
    client_ports = _range(data, "client_ports")
    peer_ports = _range(data, "peer_ports")
    if (client_ports is None) != (peer_ports is None):
        raise SpecError("client_ports and peer_ports must be given together")
    if client_ports and peer_ports:
        if not (client_ports[1] < peer_ports[0] or peer_ports[1] < client_ports[0]):
            raise SpecError(f"client_ports {list(client_ports)} and peer_ports {list(peer_ports)} overlap")
        room = min(client_ports[1] - client_ports[0], peer_ports[1] - peer_ports[0]) + 1
        if room < size + 1:
            raise SpecError(
                f"client_ports/peer_ports: room for {room} member(s); give at least size + 1 = {size + 1} "
                "ports in each range (a replacement needs fresh ports)"
            )
    addresses: list[Address] = []
    raw_addresses = data.get("addresses", [])
    if not isinstance(raw_addresses, list):
        raise SpecError(f"addresses: expected a list of {{client, peer}} tables, got {raw_addresses!r}")
    for i, item in enumerate(raw_addresses):
        if not isinstance(item, dict) or set(item) != {"client", "peer"}:
            raise SpecError(f'addresses[{i}]: expected {{client = "host:port", peer = "host:port"}}')
        ch, cp = _hostport(item["client"], f"addresses[{i}].client")
        ph, pp = _hostport(item["peer"], f"addresses[{i}].peer")
        if ch != ph:
            raise SpecError(f"addresses[{i}]: client and peer must be on the same host ({ch} vs {ph})")
        addresses.append(Address(ch, cp, pp))
    if addresses:
        if client_ports:
            raise SpecError("give either addresses or client_ports/peer_ports, not both")
        if len(addresses) < size + 1:
            raise SpecError(
                f"addresses: {len(addresses)} slot(s) for size {size}; give at least size + 1 = {size + 1} "
                "(a replacement member needs a free slot)"
            )
        ports = [a.client_port for a in addresses] + [a.peer_port for a in addresses]
        if len(set(ports)) != len(ports):
            raise SpecError("addresses: a port is used twice")
    heartbeat = _int(data, "heartbeat_interval", 100, 1)
    election = _int(data, "election_timeout", 1000, 1)
    if election < 5 * heartbeat:
        raise SpecError(
            f"election_timeout ({election} ms) must be at least 5 x heartbeat_interval ({heartbeat} ms)"
        )
    extra = data.get("extra_args", [])
    if not isinstance(extra, list) or not all(isinstance(a, str) for a in extra):
        raise SpecError(f"extra_args: expected a list of strings, got {extra!r}")
    reserved = {
        "--name",
        "--data-dir",
        "--listen-client-urls",
        "--advertise-client-urls",
        "--listen-peer-urls",
        "--initial-advertise-peer-urls",
        "--initial-cluster",
        "--initial-cluster-state",
        "--initial-cluster-token",
        "--restore-snapshot",
    }
    for a in extra:
        if a.split("=", 1)[0] in reserved or a.split("=", 1)[0].lstrip("-") in {r[2:] for r in reserved}:
            raise SpecError(f"extra_args: {a} is set by the operator")
    tls_data = data.get("tls", {})
    if not isinstance(tls_data, dict):
        raise SpecError("tls: expected a table")
    tls_fields = set(TlsSpec.__dataclass_fields__)
    if set(tls_data) - tls_fields:
        raise SpecError(f"tls: unknown key(s) {', '.join(sorted(set(tls_data) - tls_fields))}")
    tls_values: dict[str, str] = {}
    for key, value in tls_data.items():
        if not isinstance(value, str):
            raise SpecError(f"tls.{key}: expected a path")
        path = Path(value) if Path(value).is_absolute() else base / value
        if not path.is_file():
            raise SpecError(f"tls.{key}: no such file {path}")
        tls_values[key] = str(path)
    tls = TlsSpec(**tls_values)
    if bool(tls.cert_file) != bool(tls.key_file):
        raise SpecError("tls: cert_file and key_file go together")
    if any((tls.peer_cert_file, tls.peer_key_file, tls.peer_trusted_ca_file)) and not all(
        (tls.peer_cert_file, tls.peer_key_file, tls.peer_trusted_ca_file)
    ):
        raise SpecError(
            "tls: peer TLS is mutual: give peer_cert_file, peer_key_file and peer_trusted_ca_file"
        )
    backup_data = data.get("backup", {})
    if not isinstance(backup_data, dict):
        raise SpecError("backup: expected a table")
    if set(backup_data) - {"interval", "directory", "retention"}:
        raise SpecError(
            f"backup: unknown key(s) {sorted(set(backup_data) - {'interval', 'directory', 'retention'})}"
        )
    root_path = Path(root) if Path(root).is_absolute() else base / root
    bdir = backup_data.get("directory", f"{name}-backups")
    if not isinstance(bdir, str) or not bdir:
        raise SpecError(f"backup.directory: expected a path, got {bdir!r}")
    backup = BackupPolicy(
        interval=_float(backup_data, "interval", 0.0, 0.0),
        directory=Path(bdir) if Path(bdir).is_absolute() else base / bdir,
        retention=_int(backup_data, "retention", 5, 1),
    )
    return ClusterSpec(
        name=name,
        size=size,
        data_root=root_path,
        host=host,
        client_ports=client_ports,
        peer_ports=peer_ports,
        addresses=tuple(addresses),
        allow_even_size=allow_even,
        grace_period=_float(data, "grace_period", 10.0, 0.0),
        heartbeat_interval=heartbeat,
        election_timeout=election,
        startup_timeout=_float(data, "startup_timeout", 30.0, 0.0),
        max_lag=_int(data, "max_lag", 1000, 0),
        reconcile_interval=_float(data, "reconcile_interval", 1.0, 0.05),
        extra_args=tuple(extra),
        tls=tls,
        backup=backup,
        source=source,
    )
