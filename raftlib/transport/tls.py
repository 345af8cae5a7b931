"""TLS settings of the TCP transport: mutual authentication against the cluster's own CA.

Both sides present a certificate and require one from the other side
(``CERT_REQUIRED`` both ways); the cluster CA given in ``ca_file`` is the only
trust root (system CAs are not loaded). Hostname checking is off: peers are
identified by node id in the transport handshake, and membership of the cluster
is proven by holding a certificate the cluster CA signed.
"""

from __future__ import annotations

import ssl
import warnings
from dataclasses import dataclass

__all__ = ["TlsConfig"]


@dataclass(frozen=True)
class TlsConfig:
    """Certificate, key and CA files (PEM) for mutual TLS between nodes.

    ``verify_peer=False`` turns off certificate verification in both directions
    (the channel is still encrypted but anyone may connect): for experiments only.
    """

    cert_file: str
    key_file: str
    ca_file: str
    verify_peer: bool = True

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
