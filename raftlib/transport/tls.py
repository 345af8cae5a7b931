"""TLS settings of the TCP transport: mutual authentication against the cluster's own CA,
and the rule binding a peer's certificate to the member it claims to be.

Both sides present a certificate and require one from the other side
(``CERT_REQUIRED`` both ways); the cluster CA given in ``ca_file`` is the only
trust root (system CAs are not loaded). Python's hostname checking is off: the
transport checks the certificate's names itself, after the TLS handshake, against
the member the connection is with (``peer_identity``):

* ``"node_id"`` (default): the node id claimed in the transport handshake (acceptor
  side) or dialled (dialler side) must equal, exactly and case-sensitively, one of the
  certificate's subjectAltName DNS or URI entries; a certificate with no
  subjectAltName at all is matched on its subject CN(s) instead.
* ``"address"`` (etcd's peer check): the host of that member's configured address
  must be named by the certificate: an IP literal must equal a SAN IP entry, a host
  name must equal a SAN DNS entry (ASCII case-insensitive, no wildcards); without any
  SAN, the CN must equal the host.
* ``"none"``: any certificate signed by the cluster CA is accepted for any member.

Invariant: when ``verify_peer`` is on, no connection carries messages before the
peer's certificate has been matched against the member it is with.
"""

from __future__ import annotations

import ipaddress
import ssl
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from raftlib.errors import ConfigError
from raftlib.transport.base import parse_address

__all__ = ["PEER_IDENTITY_RULES", "TlsConfig", "certificate_names"]

PEER_IDENTITY_RULES = ("node_id", "address", "none")
"""Values of :attr:`TlsConfig.peer_identity`."""


@dataclass(frozen=True)
class TlsConfig:
    """Certificate, key and CA files (PEM) for mutual TLS between nodes.

    ``verify_peer=False`` turns off certificate verification in both directions
    (the channel is still encrypted but anyone may connect): for experiments only;
    the ``peer_identity`` check is then skipped too (there is no verified name).

    ``peer_identity`` says which name a peer's certificate must carry: ``"node_id"``
    (default), ``"address"`` or ``"none"`` (see the module docstring for the exact rules).
    """

    cert_file: str
    key_file: str
    ca_file: str
    verify_peer: bool = True
    peer_identity: str = "node_id"

    def __post_init__(self) -> None:
        if self.peer_identity not in PEER_IDENTITY_RULES:
            raise ConfigError(
                f"peer_identity must be one of {', '.join(PEER_IDENTITY_RULES)}, not {self.peer_identity!r}"
            )

    def check_peer_certificate(
        self, cert: Mapping[str, Any] | None, node_id: str, address: str
    ) -> str | None:
        """Why the verified certificate ``cert`` does not name member ``node_id`` at ``address``
        (``None`` when it does, or when there is nothing to check).

        ``cert`` is the dict of :meth:`ssl.SSLSocket.getpeercert` (what an asyncio
        transport returns for ``get_extra_info("peercert")``).
        """
        if not self.verify_peer or self.peer_identity == "none":
            return None
        if not cert:
            return "the peer presented no verified certificate"
        san, cns = certificate_names(cert)
        shown = (
            ", ".join(f"{k}:{v}" for k, v in san) if san else ", ".join(f"CN={c}" for c in cns) or "no names"
        )
        if self.peer_identity == "node_id":
            # With any subjectAltName the CN is ignored (RFC 6125 6.4.4).
            ok = any(k in ("DNS", "URI") and v == node_id for k, v in san) if san else node_id in cns
            if not ok:
                return f"its certificate ({shown}) does not name node {node_id!r}"
            return None
        host = parse_address(address)[0]
        try:
            ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(host)
        except ValueError:
            ip = None
        if san:
            if ip is not None:
                ok = any(k == "IP Address" and _same_ip(v, ip) for k, v in san)
            else:
                ok = any(k == "DNS" and v.lower() == host.lower() for k, v in san)
        else:
            ok = any((_same_ip(c, ip) if ip is not None else c.lower() == host.lower()) for c in cns)
        if not ok:
            return f"its certificate ({shown}) does not name host {host!r} of node {node_id!r} ({address})"
        return None

    def _configure(self, ctx: ssl.SSLContext) -> ssl.SSLContext:
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self.cert_file, self.key_file)
        if self.verify_peer:
            ctx.load_verify_locations(cafile=self.ca_file)
            ctx.verify_mode = ssl.CERT_REQUIRED
        else:
            warnings.warn(
                "TlsConfig(verify_peer=False): peers are not authenticated", RuntimeWarning, stacklevel=3
            )
            ctx.verify_mode = ssl.CERT_NONE
        return ctx

    def server_context(self) -> ssl.SSLContext:
        """The listener's context: presents our certificate, requires one signed by the CA."""
        return self._configure(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))

    def client_context(self) -> ssl.SSLContext:
        """The dialling side's context: presents our certificate, requires the CA's signature.

        Hostname checking is off (peers are named by node id in the handshake).
        """
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        return self._configure(ctx)


def _same_ip(text: str, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    try:
        return ipaddress.ip_address(text.strip()) == ip
    except ValueError:
        return False


def certificate_names(cert: Mapping[str, Any]) -> tuple[list[tuple[str, str]], list[str]]:
    """The subjectAltName entries (``(kind, value)``, kinds as :mod:`ssl` names them:
    ``"DNS"``, ``"URI"``, ``"IP Address"``, ...) and the subject common names of a
    certificate dict from :meth:`ssl.SSLSocket.getpeercert`."""
    san = [(str(k), str(v)) for k, v in cert.get("subjectAltName", ())]
    cns = [str(v) for rdn in cert.get("subject", ()) for k, v in rdn if k == "commonName"]
    return san, cns
